//! `State`: what the scheduler lock guards (the task graph, the locked
//! ready queue, the workers), and the graph's transitions.
//!
//! Tasks without upstream normally never come here: they go from the
//! submitter through the lock-free FIFO (or, with another priority than 0,
//! the locked ready queue) to a worker, and end with atomics on their cell
//! (see `cell.rs`). A task gets a graph *node* when it has upstream tasks
//! (at once) or when a task is added after it while it is live
//! (*promotion*); from then on its end goes through this lock.
//!
//! # Invariants
//!
//! 1. `nodes` holds every promoted task not yet ended, and every task with
//!    a node that ended by finishing while its event is pending (so stops
//!    can cascade through it). A stopped task leaves `nodes` in the stop
//!    call. Finished ones leave once delivered (`reap`).
//! 2. A node's `waiting_on` is the number of its upstream tasks that have
//!    not ended. The node is *blocked* while it is positive; it reaches 0
//!    exactly when the node's input is moved into its cell and the cell is
//!    pushed into the ready queue.
//! 3. `queued` is the number of cells with `IN_READY` set; each has exactly
//!    one entry in `ready`. Other entries there are stale and skipped.
//! 4. Events of graph tasks are queued under this lock and the emit lock
//!    together: an upstream's `Completed` is queued before its downstream
//!    tasks are released, in the same critical section.
//!
//! Lock order: scheduler → registry, scheduler → emitter,
//! scheduler → group table. No user code runs under any of them: jobs of
//! tasks that will never run are returned to be dropped after unlocking.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;

use crossbeam_queue::SegQueue;
use smallvec::SmallVec;

use crate::cell::{Ended, Input, Outcome, Payload, StopFound, TaskCell, Waiter};
use crate::event::Event;
use crate::id::{Group, TaskId};
use crate::kwargs::Kwargs;
use crate::registry::Registry;
use crate::stats::{GroupStats, Stats, TaskState};
use crate::subscription::{Emitter, Envelope};
use crate::sync::{Arc, Condvar, Mutex};
use crate::task::Job;
use crate::unwind::Failure;

/// Hashes task sequence numbers: they are unique and dense, so one
/// multiplication spreads them well enough.
#[derive(Default)]
pub(crate) struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Sequence numbers of a node's neighbours: most have one or two.
pub(crate) type Ids = SmallVec<[u64; 2]>;

/// Map from task sequence number to node.
type NodeMap = HashMap<u64, Node, BuildHasherDefault<SeqHasher>>;

/// The graph's record of a task with edges.
struct Node {
    /// The task.
    cell: Arc<TaskCell>,
    /// Upstream tasks not yet ended (invariant 2).
    waiting_on: u32,
    /// Upstream tasks that were live when this task was added.
    upstream: Ids,
    /// Tasks added later with this one upstream.
    downstream: Ids,
    /// Own kwargs and upstream results gathered while blocked.
    input: Input,
}

impl Node {
    /// A node for `cell` with no edges yet.
    fn new(cell: Arc<TaskCell>) -> Self {
        Node {
            cell,
            waiting_on: 0,
            upstream: Ids::new(),
            downstream: Ids::new(),
            input: Input::default(),
        }
    }
}

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
    /// Its terminal event, if anyone subscribed.
    event: Option<Envelope>,
    /// The task.
    cell: Arc<TaskCell>,
}

impl Outgoing {
    /// Queues the event, then ends the task's group membership, emitting
    /// `GroupFinished` right after it if it was the last (emit lock held).
    pub(crate) fn announce(self, em: &mut Emitter) {
        if let Some(env) = self.event {
            em.emit(env);
        }
        if let Some(g) = &self.cell.group {
            if g.end_member() && em.fan_out() > 0 {
                em.emit(Envelope::group_finished(g.key.clone(), &self.cell));
            }
        }
    }
}

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
    /// Graph nodes (invariant 1).
    nodes: NodeMap,
    /// Ready tasks that do not use the FIFO (invariant 3).
    ready: crate::ready::ReadyQueue,
    /// Live entries in `ready` (invariant 3).
    pub(crate) queued: usize,
    /// Finished nodes whose event may be pending, oldest first.
    finished: VecDeque<Arc<TaskCell>>,
    /// Worker threads, by index.
    pub(crate) workers: Vec<WorkerSlot>,
    /// Indices of idle workers, most recently idle last.
    pub(crate) idle: Vec<usize>,
    /// Worker threads not retired (slots in `workers` minus retired ones).
    pub(crate) alive: usize,
    /// Join handles of worker threads not yet joined.
    pub(crate) handles: Vec<std::thread::JoinHandle<()>>,
    /// The manager's id, part of every `TaskId`.
    manager: u64,
    /// How many subscriptions each event goes to (emitter invariant 1).
    pub(crate) fan_out: usize,
    /// Waiters of tasks that ended in this critical section, woken after
    /// the lock is released.
    pub(crate) wakes: Vec<Waiter>,
    /// Ends decided in this critical section, whose events are queued in
    /// every subscription just before the lock is released (after the worker
    /// that decided them has taken its next task or gone idle, so that an
    /// owner who reacts to an event finds that worker free).
    pub(crate) out: Vec<Outgoing>,
}

impl State {
    /// Creates the state of a new manager.
    pub(crate) fn new(mode: Mode, manager: u64) -> Self {
        State {
            mode,
            nodes: NodeMap::default(),
            ready: crate::ready::ReadyQueue::default(),
            queued: 0,
            finished: VecDeque::new(),
            workers: Vec::new(),
            idle: Vec::new(),
            alive: 0,
            handles: Vec::new(),
            manager,
            fan_out: 0,
            out: Vec::new(),
            wakes: Vec::new(),
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

    /// Takes the best ready task and claims it for a worker. Compares the
    /// FIFO's head (priority 0, oldest first) with the locked queue by
    /// pulling it in whenever the locked queue has nothing better than 0.
    pub(crate) fn pop_ready(&mut self, fifo: &SegQueue<Arc<TaskCell>>) -> Option<Arc<TaskCell>> {
        loop {
            // Compare live entries only: a stale head of a higher level
            // would otherwise keep the FIFO's head out of the comparison.
            self.ready.drop_stale(is_live_entry);
            if self.ready.best_priority().is_none_or(|p| p <= 0) {
                // The FIFO's first live entry, if any, competes by id.
                while let Some(cell) = fifo.pop() {
                    // Skip stopped tasks and those `set_priority` moved here.
                    if !cell.is_stopped() && !cell.is_in_ready() {
                        self.push_ready(cell);
                        break;
                    }
                }
            }
            let cell = self.ready.pop(is_live_entry)?;
            cell.set_in_ready(false);
            self.queued -= 1;
            // In the queue and not stopped (stops clear IN_READY under this
            // lock); a member of a group at its limit is held instead.
            if cell.claim() && cell.group.as_ref().is_none_or(|g| g.admit(&cell)) {
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
        if self.nodes.get(&cell.seq).is_some_and(|n| n.waiting_on > 0) {
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
        } else if self.nodes.get(&cell.seq).is_some_and(|n| n.waiting_on > 0) {
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

    /// Returns the cell of the live task `seq`, graph or fast.
    pub(crate) fn find(&self, env: &Env<'_>, seq: u64) -> Option<Arc<TaskCell>> {
        match self.nodes.get(&seq) {
            Some(n) => Some(Arc::clone(&n.cell)),
            None => env.registry.lock().find(seq).cloned(),
        }
    }

    /// Every task live to the owner.
    pub(crate) fn all_live(&self, env: &Env<'_>) -> Vec<Arc<TaskCell>> {
        let mut all: Vec<Arc<TaskCell>> = self
            .nodes
            .values()
            .filter(|n| !n.cell.is_dead())
            .map(|n| Arc::clone(&n.cell))
            .collect();
        all.extend(
            env.registry
                .lock()
                .live()
                .into_iter()
                .filter(|c| !c.is_promoted()),
        );
        all
    }

    /// Adds a task with upstream tasks (its cell is promoted). Upstream
    /// sequence numbers must have been validated as issued by this manager.
    ///
    /// An upstream that ended is satisfied. One that finished while its
    /// event is still pending is satisfied too, but its `Kwargs` result is
    /// merged at once, or, if it failed, the new task fails with it (as it
    /// would have, had it been added a moment earlier). A live fast upstream
    /// is promoted: it gets a node, so its end comes through this lock.
    ///
    /// Returns jobs to drop unlocked (of a task failed on arrival).
    #[must_use = "the jobs must be dropped after the lock is released"]
    pub(crate) fn insert(
        &mut self,
        env: &Env<'_>,
        cell: Arc<TaskCell>,
        kwargs: Kwargs,
        upstream: Ids,
    ) -> Vec<Job> {
        let seq = cell.seq;
        let mut node = Node::new(Arc::clone(&cell));
        node.input.kwargs = kwargs;
        // Upstream tasks that finished but are still live to the owner (their
        // event is pending): applied below in the order they ended.
        let mut ended: SmallVec<[(u64, u64, Outcome); 2]> = SmallVec::new();
        for up in upstream {
            if !self.nodes.contains_key(&up) {
                // A fast task: promote it, or take what it left.
                let Some(up_cell) = env.registry.lock().find(up).cloned() else {
                    continue;
                };
                match up_cell.promote() {
                    Ok(()) => {}
                    Err(Ended::FinishedPending) => {
                        // Keep a node so stop cascades can reach its event.
                        self.finished.push_back(Arc::clone(&up_cell));
                    }
                    Err(Ended::Stopped | Ended::Delivered) => continue,
                }
                self.nodes.insert(up, Node::new(up_cell));
            }
            let up_node = self.nodes.get_mut(&up).expect("inserted above");
            up_node.downstream.push(seq);
            node.upstream.push(up);
            if !up_node.cell.is_finished() {
                node.waiting_on += 1;
                continue;
            }
            if up_node.cell.is_dead() {
                continue; // delivered (or stopped): simply satisfied (SPEC 3)
            }
            if let Some((outcome, order)) = up_node.cell.kept_outcome() {
                ended.push((order, up, outcome));
            }
        }
        ended.sort_by_key(|(order, up, _)| (*order, *up));
        let mut failed = None;
        for (_, up, outcome) in ended {
            match outcome {
                Outcome::Completed(result) => absorb(&mut node.input, up, &result),
                // The first failure wins: as if added a moment earlier.
                Outcome::Failed(f) => {
                    failed.get_or_insert(f);
                }
            }
        }
        let ready = node.waiting_on == 0 && failed.is_none();
        if ready {
            hand_over_input(&mut node);
        }
        self.nodes.insert(seq, node);
        match failed {
            Some(failure) => {
                // Never ran: its job goes back to be dropped unlocked.
                let mut jobs: Vec<Job> = cell.take_job().into_iter().collect();
                jobs.extend(self.fail(seq, failure));
                // `fail` retires the tasks it cascades to; this one is ours.
                self.retire(seq);
                jobs
            }
            None => {
                if ready {
                    self.push_ready(cell);
                }
                Vec::new()
            }
        }
    }

    /// Ends a promoted task that a worker ran, with its outcome: emits its
    /// events, then releases or fails its downstream tasks.
    ///
    /// Returns the jobs of tasks failed by the cascade, to drop unlocked.
    #[must_use = "the jobs must be dropped after the lock is released"]
    pub(crate) fn finish(&mut self, cell: &Arc<TaskCell>, outcome: Outcome) -> Vec<Job> {
        let seq = cell.seq;
        if !self.nodes.contains_key(&seq) {
            // Stopped while running: its node left and its outcome is dropped.
            return Vec::new();
        }
        let jobs = match &outcome {
            Outcome::Completed(result) => {
                if !self.end_and_emit(cell, &outcome) {
                    return Vec::new();
                }
                self.release_downstream(seq, Some(result));
                Vec::new()
            }
            Outcome::Failed(failure) => self.fail(seq, Arc::clone(failure)),
        };
        self.retire(seq);
        self.reap();
        jobs
    }

    /// Releases the downstream tasks of `seq`, which ended; `result` is its
    /// result if it completed (merged into theirs) or `None` if stopped.
    fn release_downstream(&mut self, seq: u64, result: Option<&crate::result::TaskResult>) {
        let Some(node) = self.nodes.get_mut(&seq) else {
            return;
        };
        let downstream = mem::take(&mut node.downstream);
        for &d in &downstream {
            let Some(dn) = self.nodes.get_mut(&d) else {
                continue;
            };
            if dn.waiting_on == 0 || dn.cell.is_stopped() || dn.cell.is_finished() {
                continue;
            }
            if let Some(result) = result {
                absorb(&mut dn.input, seq, result);
            }
            dn.waiting_on -= 1;
            if dn.waiting_on == 0 {
                hand_over_input(dn);
                let cell = Arc::clone(&dn.cell);
                self.push_ready(cell);
            }
        }
        if let Some(node) = self.nodes.get_mut(&seq) {
            node.downstream = downstream;
        }
    }

    /// Fails `seq` and, in order of distance then id, every live task
    /// downstream of it, with the same message and traceback. Events are
    /// queued under the emit lock, each followed by the `GroupFinished` it
    /// causes. Returns the jobs of tasks that never ran.
    fn fail(&mut self, seq: u64, failure: Arc<Failure>) -> Vec<Job> {
        let outcome = Outcome::Failed(failure);
        let mut level = vec![seq];
        let mut seen: HashSet<u64> = HashSet::from([seq]);
        let mut jobs = Vec::new();
        while !level.is_empty() {
            let mut next = Vec::new();
            for &s in &level {
                let cell = Arc::clone(&self.nodes.get(&s).expect("failing tasks have nodes").cell);
                if s != seq {
                    // Blocked downstream tasks never ran.
                    jobs.extend(cell.take_job());
                }
                if !self.end_and_emit(&cell, &outcome) {
                    continue;
                }
                let node = &self.nodes[&s];
                for &d in &node.downstream {
                    let blocked = self.nodes.get(&d).is_some_and(|n| {
                        n.waiting_on > 0 && !n.cell.is_finished() && !n.cell.is_stopped()
                    });
                    if blocked && seen.insert(d) {
                        next.push(d);
                    }
                }
            }
            next.sort_unstable();
            for &s in &level {
                if s != seq {
                    self.retire(s);
                }
            }
            level = next;
        }
        jobs
    }

    /// Ends a promoted task with `outcome` and queues its events in `out`;
    /// `false` if it had ended already.
    fn end_and_emit(&mut self, cell: &Arc<TaskCell>, outcome: &Outcome) -> bool {
        let n = self.fan_out;
        cell.keep_outcome(outcome.clone());
        let Some(wakes) = cell.end_promoted(n) else {
            cell.clear_outcome();
            return false;
        };
        self.wakes.extend(wakes);
        // The group's count is lowered when the event is queued, under the
        // emit lock, as on the fast path (group invariant 1): so a
        // `GroupFinished` never overtakes a member's event.
        let event =
            (n > 0).then(|| Envelope::terminal(terminal_event(cell, outcome, self.manager), cell));
        self.out.push(Outgoing {
            event,
            cell: Arc::clone(cell),
        });
        true
    }

    /// After a node's task finished: keeps the node while its event is
    /// pending, so that stops can still find it (invariant 1).
    fn retire(&mut self, seq: u64) {
        let Some(node) = self.nodes.get(&seq) else {
            return;
        };
        if node.cell.has_pending() && !node.cell.is_stopped() {
            self.finished.push_back(Arc::clone(&node.cell));
        } else {
            self.nodes.remove(&seq);
        }
    }

    /// Removes finished nodes whose events every queue has delivered.
    pub(crate) fn reap(&mut self) {
        while let Some(front) = self.finished.front() {
            if !front.is_dead() {
                break;
            }
            let seq = front.seq;
            self.finished.pop_front();
            if self.nodes.get(&seq).is_some_and(|n| n.cell.is_finished()) {
                self.nodes.remove(&seq);
            }
        }
    }

    /// Stops `seeds` and, following upstream edges if `up` and downstream
    /// edges if `down`, every live task reachable from a stopped one.
    pub(crate) fn stop(&mut self, seeds: Vec<Arc<TaskCell>>, up: bool, down: bool) -> Stopped {
        self.reap();
        // Pass 1: decide the set, stopping each cell as it joins (after
        // this no queue delivers its events: cell invariant 3).
        // A cell reached twice is found not live the second time (it was
        // stopped the first), so diamonds and cycles need no visited set.
        let mut stack = seeds;
        let mut stopped: Vec<(Arc<TaskCell>, StopFound, bool)> = Vec::with_capacity(stack.len());
        let graph = !self.nodes.is_empty();
        while let Some(cell) = stack.pop() {
            let (found, wakes) = cell.stop();
            self.wakes.extend(wakes);
            if found == StopFound::NotLive {
                continue;
            }
            let node = if graph {
                self.nodes.get(&cell.seq)
            } else {
                None
            };
            let has_node = node.is_some();
            if let Some(node) = node {
                let mut push = |s: &u64| {
                    if let Some(n) = self.nodes.get(s) {
                        stack.push(Arc::clone(&n.cell));
                    }
                };
                if up {
                    node.upstream.iter().for_each(&mut push);
                }
                if down {
                    node.downstream.iter().for_each(&mut push);
                }
            }
            stopped.push((cell, found, has_node));
        }
        // Pass 2: undo what each held: its job, its queue entry, its group
        // membership, and its hold on downstream tasks.
        let mut jobs = Vec::new();
        for (cell, found, has_node) in &stopped {
            match *found {
                StopFound::NotLive => unreachable!("filtered in pass 1"),
                StopFound::Finished => cell.clear_outcome(),
                StopFound::Unfinished { claimed, in_ready } => {
                    if !claimed {
                        jobs.extend(cell.take_job());
                    }
                    if in_ready {
                        self.queued -= 1;
                    }
                    if let Some(g) = &cell.group {
                        // Group invariant 1: stops end members silently.
                        g.end_member();
                    }
                    if *has_node {
                        self.release_downstream(cell.seq, None);
                    }
                }
            }
            if *has_node {
                self.nodes.remove(&cell.seq);
            }
        }
        Stopped {
            count: stopped.len(),
            jobs,
        }
    }

    /// Shuts down: stops every task and forgets the graph. Returns the jobs
    /// to drop unlocked.
    pub(crate) fn shut_down(&mut self, env: &Env<'_>) -> Vec<Job> {
        self.mode = Mode::ShutDown;
        let all = self.all_live(env);
        let stopped = self.stop(all, false, false);
        self.nodes.clear();
        self.ready.clear();
        self.finished.clear();
        self.queued = 0;
        stopped.jobs
    }
}

/// An entry of the locked ready queue is live while its cell is in the
/// queue and still has the priority it was queued at (`set_priority`
/// re-queues at the new priority).
fn is_live_entry(cell: &TaskCell, priority: i32) -> bool {
    cell.is_in_ready() && cell.priority() == priority
}

/// Merges an upstream result into a downstream task's input.
fn absorb(input: &mut Input, up: u64, result: &crate::result::TaskResult) {
    if let Some(kw) = result.downcast_ref::<Kwargs>() {
        input.kwargs.merge_from(kw);
    }
    input.upstream.push((up, result.clone()));
}

/// Moves a released node's gathered input into its cell, for the worker.
fn hand_over_input(node: &mut Node) {
    let input = mem::take(&mut node.input);
    if input.kwargs.is_empty() && input.upstream.is_empty() {
        return;
    }
    if let Payload::Pending { input: slot, .. } = &mut node.cell.payload.lock().work {
        *slot = Some(Box::new(input));
    }
}

/// Builds the terminal event of `cell`'s task.
pub(crate) fn terminal_event(cell: &TaskCell, outcome: &Outcome, manager: u64) -> Event {
    let id = TaskId {
        seq: cell.seq,
        manager,
    };
    let group = cell.group.as_ref().map(|g| g.key.clone());
    match outcome {
        Outcome::Completed(result) => Event::Completed {
            id,
            group,
            result: result.clone(),
        },
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

    fn cell(seq: u64) -> Arc<TaskCell> {
        let job: Job = Box::new(|_| unreachable!("not run"));
        Arc::new(TaskCell::new(seq, 0, None, job, None, true))
    }

    #[test]
    fn a_task_failed_on_arrival_leaves_no_node_behind() {
        let registry = Mutex::new(Registry::default());
        let env = Env {
            registry: &registry,
        };
        let fifo = SegQueue::new();
        let mut st = State::new(Mode::Processing, 1);
        let up = cell(0);
        assert!(st
            .insert(&env, Arc::clone(&up), Kwargs::new(), Ids::new())
            .is_empty());
        let running = st.pop_ready(&fifo).expect("ready");
        let failure = Failure {
            message: "boom".into(),
            traceback: "here".into(),
        };
        // No subscriber: a finished task is no longer live, its node goes.
        assert!(st
            .finish(&running, Outcome::Failed(Arc::new(failure)))
            .is_empty());
        assert!(st.nodes.is_empty());
        assert!(
            st.out.iter().all(|o| o.event.is_none()),
            "no event without a subscriber"
        );
        st.out.clear();
        // With a subscriber the failed upstream stays live until delivered,
        // and a task added after it fails at once, with it.
        st.fan_out = 1;
        let up2 = cell(1);
        assert!(st
            .insert(&env, Arc::clone(&up2), Kwargs::new(), Ids::new())
            .is_empty());
        let running = st.pop_ready(&fifo).expect("ready");
        let failure = Failure {
            message: "boom".into(),
            traceback: "here".into(),
        };
        let _ = st.finish(&running, Outcome::Failed(Arc::new(failure)));
        let down = cell(2);
        let jobs = st.insert(
            &env,
            Arc::clone(&down),
            Kwargs::new(),
            [1].into_iter().collect(),
        );
        assert_eq!(
            jobs.len(),
            1,
            "the failed task's job is handed back to drop"
        );
        assert!(down.is_finished());
        assert_eq!(st.out.len(), 2, "two Failed events queued");
        // Delivering both events leaves nothing behind after a reap.
        st.out.clear();
        st.reap();
        assert!(st.nodes.is_empty(), "nodes left: {}", st.nodes.len());
    }
}
