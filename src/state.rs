//! `State`: what the scheduler lock guards (the task graph, the locked
//! ready queue, the workers), and the graph's transitions.
//!
//! Tasks without upstream normally never come here: they go from the
//! submitter through the lock-free FIFO (or, with another priority than 0,
//! the locked ready queue) to a worker, and end with atomics on their cell
//! (see `cell.rs`). A task gets a graph *node* (`cell::Node`, kept in its
//! cell) when it has upstream tasks (at once) or when a task is added after
//! it before it ended (*promotion*); from then on its end goes through
//! this lock. Every live task is in the registry, so a task is found by id
//! without hashing, and the graph is walked through the nodes' edges.
//!
//! # Invariants
//!
//! 1. A node is read and changed under its cell's slot lock: by holders of
//!    this lock (ends, releases, stops, cascades) and by a submitter
//!    linking a new task (`link`, which holds the registry lock instead).
//!    A node's edges are kept while its task is live to the owner (so
//!    stops cascade through a finished task whose event is pending); edges
//!    to tasks that are no longer live are skipped, never followed. A task
//!    added after one that had finished, its event pending, gets no edge
//!    in that task's node but a late edge in the registry (registry
//!    invariant 4), which only stop cascades follow.
//! 2. A node's `waiting_on` counts its upstream tasks that have not ended,
//!    plus one that `link` holds until it has seen every upstream task.
//!    The node is *blocked* while it is positive. It reaches 0 exactly once:
//!    when the last count is dropped (by a release under this lock, or by
//!    `link`), and whoever drops it queues the task; or when the task ends
//!    while blocked (a failure cascade), which sets it to 0 so that nobody
//!    queues it. An ended task is never queued by a release.
//! 3. `queued` is the number of cells with `IN_READY` set; each has exactly
//!    one entry in `ready`. Other entries there are stale and skipped.
//! 4. Events of graph tasks are queued under this lock and the emit lock
//!    together: an upstream's `Completed` is queued before its downstream
//!    tasks are released, in the same critical section. A task that `link`
//!    makes ready at once found its upstream tasks ended: their events were
//!    decided before, and its own end takes this lock, so they are queued
//!    first; one failed on arrival is failed under this lock.
//!
//! Lock order: scheduler → registry, scheduler → emitter, scheduler →
//! group table, scheduler → a cell's slot, registry → a cell's slot (one
//! slot at a time). No user code runs under any of them: jobs of tasks that
//! will never run are returned to be dropped after unlocking.

use std::collections::HashMap;

use smallvec::SmallVec;

use crate::cell::Job;
use crate::cell::{Cells, Ended, Input, Node, Outcome, Payload, StopFound, TaskCell, Waiter};
use crate::event::Event;
use crate::fifo::Fifo;
use crate::id::{Group, TaskId};
use crate::kwargs::Kwargs;
use crate::registry::Registry;
use crate::result::TaskResult;
use crate::stats::{GroupStats, Stats, TaskState};
use crate::subscription::{Emitter, Envelope};
use crate::sync::{Arc, Condvar, Mutex, Weak};
use crate::unwind::Failure;

/// Sequence numbers of a new task's upstream tasks: most have one or two.
pub(crate) type Ids = SmallVec<[u64; 2]>;

/// Whether the scheduler starts tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Ready tasks are started as workers become free.
    Processing,
    /// No task is started; running ones finish.
    Paused,
    /// Final: everything stopped, workers exit.
    ShutDown,
}

/// One worker thread's slot.
pub(crate) struct WorkerSlot {
    /// Woken when a task is assigned or the manager shuts down.
    pub(crate) signal: Arc<Condvar>,
    /// A claimed task handed to this worker while it was idle.
    pub(crate) assigned: Option<Arc<TaskCell>>,
    /// `true` while the worker waits for an assignment (it is then in `idle`).
    pub(crate) idle: bool,
    /// `true` once the worker must exit (`set_max_threads` shrank the pool).
    pub(crate) retired: bool,
    /// 1 while the worker picks or runs a task or holds an assignment, for
    /// `wait_idle` (manager race 2); the worker's own cache line.
    pub(crate) busy: Arc<crate::sync::AtomicUsize>,
}

/// A task's end decided under the scheduler lock, to be announced when the
/// lock is released ([`Outgoing::announce`]).
pub(crate) struct Outgoing {
    /// The task; `None` once announced.
    cell: Option<Arc<TaskCell>>,
    /// `true` if its terminal event is owed (anyone subscribed; the copies
    /// are counted in the cell).
    event: bool,
}

impl Outgoing {
    /// Ends the task's group membership, then queues its event and, if it
    /// was the group's last live member, `GroupFinished` right after it
    /// (emit lock held; group invariant 1).
    ///
    /// For a task in no group, queueing the event is the last this thread
    /// does with the cell: its reference moves into the envelope, so the
    /// receiver, which opens the cell at once when it keeps up, does not
    /// pull the cell's lines back and forth with a worker still dropping
    /// its references.
    pub(crate) fn announce(mut self, em: &mut Emitter) {
        let cell = self.cell.take().expect("announced once");
        let Some(g) = &cell.group else {
            if self.event {
                em.emit(Envelope::terminal(cell));
            }
            return;
        };
        // Before the event is visible (group invariant 1).
        let last = g.end_member();
        if self.event {
            em.emit(Envelope::terminal(Arc::clone(&cell)));
        }
        if last && em.fan_out() > 0 {
            em.emit(Envelope::group_finished(&cell));
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        // Not announced (only tests drop one so): its envelope settles its
        // copy as a queue that goes away does.
        if let Some(cell) = self.cell.take() {
            if self.event {
                drop(Envelope::terminal(cell));
            }
        }
    }
}

/// Ends decided in one critical section; most decide one or two.
pub(crate) type Outs = SmallVec<[Outgoing; 4]>;

/// The other locked structures a graph transition touches.
pub(crate) struct Env<'a> {
    /// Fast tasks by id (registry lock).
    pub(crate) registry: &'a Mutex<Registry>,
}

/// What a stop did.
#[must_use = "the jobs must be dropped after the lock is released"]
pub(crate) struct Stopped {
    /// How many tasks were stopped.
    pub(crate) count: usize,
    /// Jobs of stopped tasks that never started, to drop unlocked.
    pub(crate) jobs: Vec<Job>,
}

/// Everything the scheduler lock guards.
pub(crate) struct State {
    /// See [`Mode`].
    pub(crate) mode: Mode,
    /// Ready tasks that do not use the FIFO (invariant 3).
    ready: crate::ready::ReadyQueue,
    /// Live entries in `ready` (invariant 3).
    pub(crate) queued: usize,
    /// Worker threads, by index.
    pub(crate) workers: Vec<WorkerSlot>,
    /// Indices of idle workers, most recently idle last.
    pub(crate) idle: Vec<usize>,
    /// Worker threads not retired (slots in `workers` minus retired ones).
    pub(crate) alive: usize,
    /// Join handles of worker threads not yet joined.
    pub(crate) handles: Vec<std::thread::JoinHandle<()>>,
    /// How many subscriptions each event goes to (emitter invariant 1).
    pub(crate) fan_out: usize,
    /// Waiters of tasks that ended in this critical section, woken after
    /// the lock is released.
    pub(crate) wakes: Vec<Waiter>,
    /// Outcomes this critical section let go of (of tasks stopped while
    /// they ran or with their event pending), dropped after the lock is
    /// released: a result may hold the last reference to a value whose
    /// `Drop` is user code.
    pub(crate) discarded: Vec<Outcome>,
    /// Ends decided in this critical section, whose events are queued in
    /// every subscription just before the lock is released (after the worker
    /// that decided them has taken its next task or gone idle, so that an
    /// owner who reacts to an event finds that worker free).
    pub(crate) out: Outs,
}

impl State {
    /// Creates the state of a new manager.
    pub(crate) fn new(mode: Mode) -> Self {
        State {
            mode,
            ready: crate::ready::ReadyQueue::default(),
            queued: 0,
            workers: Vec::new(),
            idle: Vec::new(),
            alive: 0,
            handles: Vec::new(),
            fan_out: 0,
            out: Outs::new(),
            wakes: Vec::new(),
            discarded: Vec::new(),
        }
    }

    /// Returns the highest priority in the locked ready queue, for the
    /// workers' lock-free hint; `i64::MIN` if it is empty.
    pub(crate) fn best_priority(&self) -> i64 {
        self.ready.best_priority().map_or(i64::MIN, i64::from)
    }

    /// Queues a ready cell in the locked ready queue (invariant 3).
    pub(crate) fn push_ready(&mut self, cell: Arc<TaskCell>) {
        cell.set_in_ready(true);
        self.queued += 1;
        self.ready.push(cell.priority(), cell);
    }

    /// Queues a cell that arrives from the FIFO or the inbox, unless it was
    /// stopped meanwhile or `set_priority` queued it here already; `true`
    /// if it was queued.
    pub(crate) fn push_arrival(&mut self, cell: Arc<TaskCell>) -> bool {
        let queue = !cell.is_stopped() && !cell.is_in_ready();
        if queue {
            self.push_ready(cell);
        }
        queue
    }

    /// Takes the best ready task and claims it for a worker. Compares the
    /// FIFO's head (priority 0, oldest first) with the locked queue by
    /// pulling it in whenever the locked queue has nothing better than 0.
    pub(crate) fn pop_ready(&mut self, fifo: &Fifo) -> Option<Arc<TaskCell>> {
        loop {
            // Compare live entries only: a stale head of a higher level
            // would otherwise keep the FIFO's head out of the comparison.
            // (Nothing to compare with an empty FIFO: `pop` skips stale
            // entries itself.) One look at the FIFO: each is a fence.
            if !fifo.is_empty() {
                self.ready.drop_stale(is_live_entry);
                if self.ready.best_priority().is_none_or(|p| p <= 0) {
                    // The FIFO's first live entry, if any, competes by id.
                    while let Some(cell) = fifo.pop() {
                        if self.push_arrival(cell) {
                            break;
                        }
                    }
                }
            }
            let cell = self.ready.pop(is_live_entry)?;
            self.queued -= 1;
            // In the queue and not stopped (stops clear IN_READY under this
            // lock); a member of a group at its limit is held instead.
            if cell.claim_from_ready() && cell.group.as_ref().is_none_or(|g| g.admit(&cell)) {
                self.ready.prefetch_best();
                return Some(cell);
            }
        }
    }

    /// Changes the priority of a task that has not started; `false` if it
    /// started or ended. A queued task takes its new place at once (by its
    /// original id among equal priorities); a blocked one when released.
    pub(crate) fn reprioritize(&mut self, cell: &Arc<TaskCell>, priority: i32) -> bool {
        if cell.is_ended() || cell.is_running() {
            return false;
        }
        if cell.waiting_on() > 0 {
            cell.set_priority(priority);
            return true;
        }
        if cell.is_held() {
            let old = cell.priority();
            cell.set_priority(priority);
            let group = cell.group.as_ref().expect("only group members are held");
            if group.rehold(cell) {
                return true;
            }
            cell.set_priority(old); // released meanwhile: try the other places
        }
        if cell.is_in_ready() {
            // The old entry goes stale: its priority no longer matches.
            cell.set_priority(priority);
            self.ready.push(priority, Arc::clone(cell));
            return true;
        }
        // In the FIFO: mark it moved, so the FIFO entry goes stale.
        if !cell.move_to_ready() {
            return false;
        }
        cell.set_priority(priority);
        self.queued += 1;
        self.ready.push(priority, Arc::clone(cell));
        true
    }

    /// How a live task stands: queued, blocked or running.
    pub(crate) fn classify(&self, cell: &TaskCell) -> Option<TaskState> {
        let (ended, claimed) = cell.progress_state();
        if ended {
            None
        } else if claimed {
            Some(TaskState::Running)
        } else if cell.waiting_on() > 0 {
            Some(TaskState::Blocked)
        } else {
            Some(TaskState::Queued)
        }
    }

    /// Counts every live task by state, overall and per group. O(n).
    pub(crate) fn stats(&self, env: &Env<'_>) -> Stats {
        let mut stats = Stats {
            workers: self.alive,
            ..Stats::default()
        };
        let mut groups: HashMap<Group, GroupStats> = HashMap::new();
        for cell in self.all_live(env) {
            let Some(state) = self.classify(&cell) else {
                continue;
            };
            let group = cell.group.as_ref().map(|g| {
                groups
                    .entry(g.key.clone())
                    .or_insert_with(|| GroupStats::new(g.key.clone()))
            });
            for counts in [Some(&mut stats.tasks), group.map(|g| &mut g.tasks)]
                .into_iter()
                .flatten()
            {
                match state {
                    TaskState::Queued => counts.queued += 1,
                    TaskState::Blocked => counts.blocked += 1,
                    TaskState::Running => counts.running += 1,
                }
            }
        }
        stats.groups = groups.into_values().collect();
        stats.groups.sort_by(|a, b| a.group.cmp(&b.group));
        stats
    }

    /// Puts back a claimed cell that no worker could take (a worker thread
    /// failed to start).
    pub(crate) fn unclaim(&mut self, cell: Arc<TaskCell>) {
        cell.unclaim();
        if let Some(g) = &cell.group {
            g.unadmit();
        }
        self.push_ready(cell);
    }

    /// Returns the cell of the live task `seq`.
    pub(crate) fn find(&self, env: &Env<'_>, seq: u64) -> Option<Arc<TaskCell>> {
        env.registry.lock().find(seq).cloned()
    }

    /// Every task live to the owner.
    pub(crate) fn all_live(&self, env: &Env<'_>) -> Vec<Arc<TaskCell>> {
        env.registry.lock().live()
    }

    /// Adds `cell` (made with a node from [`new_node`] for `upstream`) as
    /// `submit` does, except that a ready task goes to the locked queue.
    /// For tests of the graph.
    #[cfg(test)]
    pub(crate) fn insert(
        &mut self,
        env: &Env<'_>,
        cell: &Arc<TaskCell>,
        upstream: &Ids,
    ) -> Vec<Job> {
        let (linked, released) = {
            let mut registry = env.registry.lock();
            let released = registry.push(Arc::clone(cell));
            (link(&mut registry, cell, upstream), released)
        };
        drop(released); // a test's cells: nothing of a user's
        match linked {
            Linked::Ready => {
                self.push_ready(Arc::clone(cell));
                Vec::new()
            }
            Linked::Blocked => Vec::new(),
            Linked::Failed(f) => self.fail_on_arrival(cell, f),
        }
    }

    /// Finishes adding a task whose [`link`] found a failed upstream task
    /// with its event pending: the task fails with it, as it would have had
    /// it been added a moment earlier, unless a cascade failed it already.
    /// Returns the jobs to drop unlocked.
    #[must_use = "the jobs must be dropped after the lock is released"]
    pub(crate) fn fail_on_arrival(
        &mut self,
        cell: &Arc<TaskCell>,
        failure: Arc<Failure>,
    ) -> Vec<Job> {
        self.fail(cell, failure, true)
    }

    /// Ends a promoted task that a worker ran, with its outcome: emits its
    /// events, then releases or fails its downstream tasks.
    ///
    /// Returns the jobs of tasks failed by the cascade, to drop unlocked.
    #[must_use = "the jobs must be dropped after the lock is released"]
    pub(crate) fn finish(&mut self, cell: &Arc<TaskCell>, outcome: Outcome) -> Vec<Job> {
        if cell.is_stopped() {
            // Stopped while running: its outcome is dropped (unlocked), and
            // the stop released its downstream tasks.
            self.discarded.push(outcome);
            return Vec::new();
        }
        match &outcome {
            Outcome::Completed(result) => {
                let mut jobs = Vec::new();
                if let Some((downstream, order)) =
                    self.end_and_emit(cell, &outcome, false, &mut jobs)
                {
                    self.release(cell.seq, downstream, Some((order, result)));
                }
                jobs
            }
            Outcome::Failed(failure) => self.fail(cell, Arc::clone(failure), false),
        }
    }

    /// Fails `cell` and, in order of distance then id, every blocked task
    /// downstream of it, with the same message and traceback. Events are
    /// queued under the emit lock, each followed by the `GroupFinished` it
    /// causes. Returns the jobs of tasks that never ran. With `arriving`,
    /// `cell` is a task being added that never ran (and that a cascade may
    /// have failed already).
    fn fail(&mut self, cell: &Arc<TaskCell>, failure: Arc<Failure>, arriving: bool) -> Vec<Job> {
        let outcome = Outcome::Failed(failure);
        let mut level: Cells = smallvec::smallvec![Arc::clone(cell)];
        let mut jobs = Vec::new();
        let mut first = true;
        while !level.is_empty() {
            let mut next = Cells::new();
            for c in &level {
                // Only blocked tasks fail with it: a released one runs (or
                // ran) with the results it had. The root ran, unless arriving.
                let Some((downstream, _)) =
                    self.end_and_emit(c, &outcome, !first || arriving, &mut jobs)
                else {
                    continue; // reached twice, released, or ended meanwhile
                };
                next.extend(downstream.into_iter().filter(|d| !d.is_ended()));
            }
            next.sort_unstable_by_key(|c| c.seq);
            next.dedup_by_key(|c| c.seq);
            level = next;
            first = false;
        }
        jobs
    }

    /// Ends a promoted task with `outcome` (see `TaskCell::end_linked`)
    /// and queues its events in `out`. Returns its downstream tasks and its
    /// end's order; `None` if it had ended (or, with `only_blocked`, was
    /// not blocked).
    fn end_and_emit(
        &mut self,
        cell: &Arc<TaskCell>,
        outcome: &Outcome,
        only_blocked: bool,
        jobs: &mut Vec<Job>,
    ) -> Option<(Cells, u64)> {
        let n = self.fan_out;
        let end = cell.end_linked(outcome, n, only_blocked)?;
        if !end.wakes.is_empty() {
            self.wakes.extend(end.wakes);
        }
        // A blocked task's job: it never runs.
        if let Some(job) = end.job {
            jobs.push(job);
        }
        let (downstream, order) = (end.downstream, end.order);
        // The group's count is lowered when the event is queued, just
        // before it in the same hold of the emit lock, as on the fast path
        // (group invariant 1): so a `GroupFinished` never overtakes a
        // member's event, and a stop that comes after the event was seen
        // never leaves this member the last one.
        self.out.push(Outgoing {
            cell: Some(Arc::clone(cell)),
            event: n > 0,
        });
        Some((downstream, order))
    }

    /// Releases `downstream`, the downstream tasks of task `seq`, which
    /// ended; `result` is its end's order and result if it completed
    /// (given to them) or `None` if it was stopped.
    fn release(&mut self, seq: u64, downstream: Cells, result: Option<(u64, &TaskResult)>) {
        for d in downstream {
            let released = d
                .with_node(|dn| {
                    if dn.waiting_on == 0 {
                        return false; // ended (failed) or released already
                    }
                    if let Some((order, result)) = result {
                        dn.input.absorb(order, seq, result.clone());
                    }
                    dn.waiting_on -= 1;
                    dn.waiting_on == 0
                })
                .unwrap_or(false);
            // A stopped task is not queued (it ended).
            if released && !d.is_ended() {
                self.push_ready(d);
            }
        }
    }

    /// Stops `seeds` and, following upstream edges if `up` and downstream
    /// edges (late ones too, registry invariant 4) if `down`, every live
    /// task reachable from a stopped one.
    pub(crate) fn stop(
        &mut self,
        env: &Env<'_>,
        seeds: Vec<Arc<TaskCell>>,
        up: bool,
        down: bool,
    ) -> Stopped {
        // Pass 1: decide the set, stopping each cell as it joins (after
        // this no queue delivers its events: cell invariant 3).
        // A cell reached twice is found not live the second time (it was
        // stopped the first), so diamonds and cycles need no visited set.
        let mut stack = seeds;
        let mut stopped: Vec<(Arc<TaskCell>, StopFound)> = Vec::with_capacity(stack.len());
        while let Some(cell) = stack.pop() {
            let (found, wakes) = if down {
                // The registry lock from the stop until the late edges are
                // read (registry invariant 4).
                let registry = env.registry.lock();
                let (found, wakes) = cell.stop();
                if found == StopFound::Finished {
                    stack.extend(registry.late_downstream(&cell));
                }
                (found, wakes)
            } else {
                cell.stop()
            };
            self.wakes.extend(wakes);
            if found == StopFound::NotLive {
                continue;
            }
            if up || down {
                let upstream = cell
                    .with_node(|node| {
                        if down {
                            stack.extend(node.downstream.iter().filter_map(Weak::upgrade));
                        }
                        if up {
                            node.upstream.clone()
                        } else {
                            Ids::new()
                        }
                    })
                    .unwrap_or_default();
                if !upstream.is_empty() {
                    // A live upstream task is registered (registry invariant 2).
                    let registry = env.registry.lock();
                    stack.extend(
                        upstream
                            .iter()
                            .filter_map(|&seq| registry.find(seq).cloned()),
                    );
                }
            }
            stopped.push((cell, found));
        }
        // Pass 2: undo what each held: its queue entry, its group
        // membership, its hold on downstream tasks, and its job.
        let count = stopped.len();
        let mut jobs = Vec::new();
        for (cell, found) in stopped {
            match found {
                StopFound::NotLive => unreachable!("filtered in pass 1"),
                StopFound::Finished => self.discarded.extend(cell.clear_outcome()),
                StopFound::Unfinished { claimed, in_ready } => {
                    if in_ready {
                        self.queued -= 1;
                    }
                    if let Some(g) = &cell.group {
                        // Group invariant 1: stops end members silently.
                        g.end_member();
                    }
                    // Only a promoted task has edges. (A linker promotes
                    // under the slot lock and only a task not yet stopped,
                    // so a task without the bit has none, now or later.)
                    if cell.is_promoted() {
                        self.release(cell.seq, cell.downstream(), None);
                    }
                    // Last: the job takes this reference along.
                    if !claimed {
                        jobs.extend(cell.into_job());
                    }
                }
            }
        }
        Stopped { count, jobs }
    }

    /// Shuts down: stops every task and forgets the locked ready queue.
    /// Returns the jobs to drop unlocked.
    pub(crate) fn shut_down(&mut self, env: &Env<'_>) -> Vec<Job> {
        self.mode = Mode::ShutDown;
        let all = self.all_live(env);
        let stopped = self.stop(env, all, false, false);
        self.ready.clear();
        self.queued = 0;
        stopped.jobs
    }
}

/// How [`link`] left a task being added.
pub(crate) enum Linked {
    /// Every upstream task had ended: the task is ready; the caller queues it.
    Ready,
    /// It waits for upstream tasks still live; the last to end releases it.
    Blocked,
    /// An upstream task failed with its event pending: the task must fail
    /// with it ([`State::fail_on_arrival`], under the scheduler lock).
    Failed(Arc<Failure>),
}

/// Makes the graph node of a task added after `upstream`, for
/// [`link`]: its own kwargs, and a count of one per upstream task plus
/// one that [`link`] holds until it has seen every upstream (state
/// invariant 2), so that no upstream ending meanwhile releases it early.
pub(crate) fn new_node(kwargs: Option<Kwargs>, upstream: &Ids) -> Node {
    // Every field spelled out: `..Node::default()` would build a default
    // `Input` and drop it again.
    Node {
        waiting_on: upstream.len() as u32 + 1,
        upstream: SmallVec::new(),
        downstream: SmallVec::new(),
        input: Input {
            kwargs: kwargs.unwrap_or_default(),
            upstream: SmallVec::new(),
        },
    }
}

/// Adds the edges of `cell`, a task just added after `upstream` with a
/// node from [`new_node`], without the scheduler lock: under the registry
/// lock (held by the caller, who took `cell`'s sequence number under it)
/// and each upstream cell's slot lock in turn.
///
/// Per upstream task, under its slot lock: one that is live and has not
/// finished gets an edge to `cell` in its node and keeps its count (its
/// end, which takes a snapshot of its edges under the same lock, releases
/// `cell`); a live fast task is promoted first, so that its end goes
/// through the graph. One that finished with its event pending gets a
/// late edge in the registry (registry invariant 4: stop cascades go
/// through it) and gives its outcome now: a result to merge, or a failure
/// to inherit. One that ended otherwise is simply satisfied (SPEC 3). Then,
/// under `cell`'s slot lock, the counts of the upstream tasks that were
/// satisfied and the one held by this call are dropped; if that reaches
/// zero, `cell` is ready. A failure cascade that reached `cell` meanwhile
/// set its count to zero, and it is then left alone.
pub(crate) fn link(registry: &mut Registry, cell: &Arc<TaskCell>, upstream: &Ids) -> Linked {
    let mut satisfied = 1; // the count held by this call
    let mut given: SmallVec<[(u64, u64, Outcome); 2]> = SmallVec::new();
    let mut edges = Ids::new();
    let mut late = Ids::new();
    let late_room = registry.has_late_room(upstream.len());
    for &seq in upstream {
        let Some(up) = registry.find(seq) else {
            satisfied += 1; // ended and forgotten
            continue;
        };
        let mut slot = up.slot();
        // Stable under the slot lock: a promoted task ends under it, and a
        // fast one is promoted under it only while it has not ended.
        let finished = if up.is_promoted() {
            if up.is_dead() {
                satisfied += 1;
                continue;
            }
            up.is_finished()
        } else {
            match up.promote() {
                Ok(()) => {
                    slot.node.get_or_insert(); // a fast task has none yet
                    false
                }
                Err(Ended::FinishedPending) => true,
                Err(Ended::Stopped | Ended::Delivered) => {
                    satisfied += 1;
                    continue;
                }
            }
        };
        edges.push(seq);
        if finished {
            satisfied += 1;
            if let Payload::Done(outcome, order) = &slot.work {
                given.push((*order, seq, outcome.clone()));
            }
            if late_room {
                late.push(seq); // recorded below, still under the registry lock
                continue;
            }
        }
        // (A finished fast task given a node here for want of room for a
        // late edge is not promoted: its end has happened.)
        slot.node
            .get_or_insert()
            .downstream
            .push(Arc::downgrade(cell));
    }
    for seq in late {
        let added = registry.add_late(seq, cell.seq);
        debug_assert!(added, "found above, lock held; room checked");
    }
    // The first failure (in the order the upstream tasks ended) wins.
    given.sort_by_key(|(order, seq, _)| (*order, *seq));
    let failure = given.iter().find_map(|(_, _, o)| match o {
        Outcome::Failed(f) => Some(Arc::clone(f)),
        Outcome::Completed(_) => None,
    });
    let mut slot = cell.slot();
    let node = slot.node.get_mut().expect("made by new_node");
    node.upstream = edges;
    if node.waiting_on == 0 {
        return Linked::Blocked; // failed by a cascade meanwhile: it ended
    }
    if let Some(f) = failure {
        return Linked::Failed(f); // keeps its count: still blocked
    }
    // Moved, not cloned: each clone or drop of a result's `Arc` is an
    // atomic write to a line the upstream's worker wrote last.
    for (order, seq, outcome) in given {
        if let Outcome::Completed(result) = outcome {
            node.input.absorb(order, seq, result);
        }
    }
    node.waiting_on -= satisfied;
    if node.waiting_on == 0 {
        Linked::Ready
    } else {
        Linked::Blocked
    }
}

/// An entry of the locked ready queue is live while its cell is in the
/// queue and still has the priority it was queued at (`set_priority`
/// re-queues at the new priority).
fn is_live_entry(cell: &TaskCell, priority: i32) -> bool {
    cell.is_in_ready() && cell.priority() == priority
}

/// Builds the terminal event of `cell`'s task from its outcome, which it
/// takes (the receiver's copy: moving it saves two count changes on a
/// result a worker made).
pub(crate) fn terminal_event(cell: &TaskCell, outcome: Outcome, manager: u64) -> Event {
    let id = TaskId {
        seq: cell.seq,
        manager,
    };
    let group = cell.group.as_ref().map(|g| g.key.clone());
    match outcome {
        Outcome::Completed(result) => Event::Completed { id, group, result },
        Outcome::Failed(f) => Event::Failed {
            id,
            group,
            message: f.message.clone(),
            traceback: f.traceback.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::Failure;

    fn boom() -> Outcome {
        Outcome::Failed(Arc::new(Failure {
            message: "boom".into(),
            traceback: "here".into(),
        }))
    }

    /// A registry, a FIFO and a processing scheduler state whose events go
    /// to `fan_out` subscriptions.
    fn scene(fan_out: usize) -> (Mutex<Registry>, Fifo, State) {
        let mut st = State::new(Mode::Processing);
        st.fan_out = fan_out;
        (Mutex::new(Registry::default()), Fifo::default(), st)
    }

    /// Adds task `seq` after `upstream` as `submit` does, but a ready task
    /// goes to the locked queue. Returns its cell and the jobs to drop.
    fn add(
        st: &mut State,
        registry: &Mutex<Registry>,
        seq: u64,
        upstream: &[u64],
    ) -> (Arc<TaskCell>, Vec<Job>) {
        let env = Env { registry };
        let upstream: Ids = upstream.iter().copied().collect();
        let node = new_node(None, &upstream);
        let cell: Arc<TaskCell> = Arc::new(TaskCell::new(
            seq,
            0,
            None,
            crate::cell::never(),
            None,
            node,
        ));
        let jobs = st.insert(&env, &cell, &upstream);
        (cell, jobs)
    }

    /// Takes the next ready task as a worker does: claimed, its work taken.
    fn start(st: &mut State, fifo: &Fifo) -> Option<Arc<TaskCell>> {
        let cell = st.pop_ready(fifo)?;
        assert!(cell.take_work().is_some(), "a ready task has its work");
        Some(cell)
    }

    #[test]
    fn a_task_added_after_a_failed_upstream_with_a_pending_event_fails_at_once() {
        let (registry, fifo, mut st) = scene(0);
        let (up, jobs) = add(&mut st, &registry, 0, &[]);
        assert!(jobs.is_empty());
        let running = start(&mut st, &fifo).expect("ready");
        // No subscriber: a finished task is no longer live.
        assert!(st.finish(&running, boom()).is_empty());
        assert!(up.is_dead());
        assert!(
            st.out.iter().all(|o| !o.event),
            "no event without a subscriber"
        );
        st.out.clear();
        // A task added after it is simply satisfied.
        assert!(add(&mut st, &registry, 1, &[0]).1.is_empty());
        let running = start(&mut st, &fifo).expect("released at once");
        assert_eq!(running.seq, 1);
        let done = Outcome::Completed(TaskResult::new(()));
        assert!(st.finish(&running, done).is_empty());
        st.out.clear();
        // With a subscriber the failed upstream stays live until delivered,
        // and a task added after it fails at once, with it.
        st.fan_out = 1;
        let (up2, jobs) = add(&mut st, &registry, 2, &[]);
        assert!(jobs.is_empty());
        let running = start(&mut st, &fifo).expect("ready");
        let _ = st.finish(&running, boom());
        let (down, jobs) = add(&mut st, &registry, 3, &[2]);
        assert_eq!(
            jobs.len(),
            1,
            "the failed task's job is handed back to drop"
        );
        assert!(down.is_finished());
        assert_eq!(st.out.len(), 2, "two Failed events queued");
        // Delivering both events leaves nothing live.
        st.out.clear();
        assert!(up2.is_dead() && down.is_dead());
        let env = Env {
            registry: &registry,
        };
        assert!(st.all_live(&env).is_empty());
    }

    #[test]
    fn a_failure_cascades_by_distance_then_id_once_per_task() {
        // 0 -> {1, 2}; 1 -> 3; 2 -> 3 (a diamond); 3 -> 4; 2 -> 5.
        let (registry, fifo, mut st) = scene(1);
        let ups: [&[u64]; 6] = [&[], &[0], &[0], &[1, 2], &[3], &[2]];
        let cells: Vec<_> = (0..6)
            .map(|seq| {
                let (cell, jobs) = add(&mut st, &registry, seq, ups[seq as usize]);
                assert!(jobs.is_empty());
                cell
            })
            .collect();
        let running = start(&mut st, &fifo).expect("the root is ready");
        assert_eq!(running.seq, 0);
        assert!(st.pop_ready(&fifo).is_none(), "the others are blocked");
        let jobs = st.finish(&running, boom());
        assert_eq!(jobs.len(), 5, "five blocked tasks never ran");
        let order: Vec<u64> = st
            .out
            .iter()
            .flat_map(|o| o.cell.as_ref())
            .map(|c| c.seq)
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 5, 4]);
        st.out.clear();
        assert!(cells.iter().all(|c| c.is_dead()));
    }

    #[test]
    fn a_task_reached_twice_by_a_cascade_keeps_its_failure() {
        // 0 -> 1 -> 2 and 0 -> 2: task 2 is at distance 1 and 2.
        let (registry, fifo, mut st) = scene(1);
        for (seq, up) in [(0, &[][..]), (1, &[0]), (2, &[0, 1])] {
            assert!(add(&mut st, &registry, seq, up).1.is_empty());
        }
        let running = start(&mut st, &fifo).expect("the root is ready");
        assert_eq!(st.finish(&running, boom()).len(), 2);
        assert_eq!(st.out.len(), 3, "one event each");
        // Its event is pending: a task added after it fails with it.
        let (late, jobs) = add(&mut st, &registry, 3, &[2]);
        assert_eq!(jobs.len(), 1);
        assert!(late.is_finished());
        assert!(st.pop_ready(&fifo).is_none(), "nothing runs");
        st.out.clear();
    }
}
