//! `State`: everything the scheduler lock guards, and its transitions.
//!
//! The task graph (nodes with upstream counts and downstream edges), the
//! ready queue, group counts, subscribers and the worker bookkeeping. No
//! user code runs in here: jobs are handed out to be run unlocked, and jobs
//! of stopped tasks are handed back to be dropped unlocked (their captures'
//! `Drop` is user code).
//!
//! # Invariants
//!
//! 1. `nodes` holds every task that is live to the owner: blocked, queued,
//!    running and not stopped, or finished with its terminal event still
//!    pending in some queue (`Phase::Finished`). A stopped task leaves
//!    `nodes` in the stop call.
//! 2. A `Blocked` node's `waiting_on` is the number of its upstream tasks in
//!    phase `Blocked`, `Queued` or `Running`. It reaches 0 exactly when the
//!    node moves to `Queued` and its id is pushed into `ready`.
//! 3. `queued` is the number of nodes in phase `Queued`. Every such node has
//!    exactly one entry in `ready`; other entries there are stale.
//! 4. `running` counts tasks handed to a worker and not yet finished by it,
//!    including stopped ones still running (their worker is busy).
//! 5. A group's `live` is the number of its member nodes in phases
//!    `Blocked`, `Queued` or `Running`. `GroupFinished` is emitted only when
//!    a completion or failure brings it to 0.
//! 6. Events are queued only here, under the lock, so every subscriber sees
//!    the same order; an upstream's `Completed` is queued before its
//!    downstream can be picked (same critical section as the release).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;

use crate::cell::TaskCell;
use crate::event::Event;
use crate::id::{Group, TaskId};
use crate::kwargs::Kwargs;
use crate::ready::ReadyQueue;
use crate::result::TaskResult;
use crate::subscription::{Envelope, Subscriber};
use crate::sync::{Arc, Condvar};
use crate::task::{Job, NewTask, Notifier, Ready};
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

/// Map from task sequence number to node.
type NodeMap = HashMap<u64, Node, BuildHasherDefault<SeqHasher>>;

/// Where a task is in its life. See invariant 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for `waiting_on` upstream tasks to finish.
    Blocked,
    /// In the ready queue; may start as soon as a worker takes it.
    Queued,
    /// Handed to a worker.
    Running,
    /// Completed or failed; its event still waits in some queue.
    Finished,
}

/// The scheduler's record of one task.
pub(crate) struct Node {
    /// State shared with the task body and the event queues.
    cell: Arc<TaskCell>,
    /// The work, then its outcome.
    work: Work,
    /// Higher runs first.
    priority: i32,
    /// See [`Phase`].
    phase: Phase,
    /// Live upstream tasks (invariant 2).
    waiting_on: u32,
    /// The task's group, if any.
    group: Option<Group>,
    /// Edges, kwargs and upstream results; boxed because most tasks have none.
    links: Option<Box<Links>>,
}

/// What a node holds of its work.
enum Work {
    /// Not started yet.
    Pending(Job),
    /// Handed to a worker (or dropped).
    Taken,
    /// Completed; kept while the event is pending, so that a task added
    /// after it in the meantime still receives its result.
    Completed(TaskResult),
    /// Failed; kept while the event is pending, so that a task added after
    /// it in the meantime fails with it.
    Failed(Arc<Failure>),
}

impl Work {
    /// Takes the job out, if the task has not started.
    fn take_job(&mut self) -> Option<Job> {
        match mem::replace(self, Work::Taken) {
            Work::Pending(job) => Some(job),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// The rarely used part of a node.
#[derive(Default)]
struct Links {
    /// Upstream tasks that were live when this task was added.
    upstream: Vec<u64>,
    /// Tasks added later with this one upstream.
    downstream: Vec<u64>,
    /// Own kwargs, with upstream `Kwargs` results merged in as they complete.
    kwargs: Kwargs,
    /// Results of completed upstream tasks, for `TaskContext::upstream`.
    results: Vec<(u64, TaskResult)>,
}

impl Node {
    /// Returns the links, creating them on first use.
    fn links_mut(&mut self) -> &mut Links {
        self.links.get_or_insert_with(Box::default)
    }

    /// Returns `true` if the task is live to the owner (invariant 1, and the
    /// cell's invariant 3 for finished tasks).
    fn is_live(&self) -> bool {
        self.phase != Phase::Finished || self.cell.has_pending()
    }
}

/// A group's bookkeeping.
#[derive(Debug, Default)]
struct GroupState {
    /// Members not yet finished (invariant 5).
    live: usize,
    /// Member ids; may include ids no longer in `nodes` until compacted.
    members: Vec<u64>,
    /// Length of `members` after the last compaction.
    compacted_len: usize,
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
    /// A task handed to this worker while it was idle.
    pub(crate) assigned: Option<Ready>,
    /// `true` while the worker waits for an assignment (it is then in `idle`).
    pub(crate) idle: bool,
}

/// Everything the scheduler lock guards.
pub(crate) struct State {
    /// See [`Mode`].
    pub(crate) mode: Mode,
    /// The live task graph (invariant 1).
    nodes: NodeMap,
    /// Ready tasks (invariant 3).
    ready: ReadyQueue,
    /// Number of `Queued` nodes (invariant 3).
    pub(crate) queued: usize,
    /// Number of tasks handed to workers and not finished (invariant 4).
    pub(crate) running: usize,
    /// Group bookkeeping (invariant 5).
    groups: HashMap<Group, GroupState>,
    /// Finished tasks whose event may be pending, oldest first, to drop
    /// their nodes once every queue delivered the event.
    finished: VecDeque<Arc<TaskCell>>,
    /// Open subscriptions.
    subscribers: Vec<Subscriber>,
    /// Called when an event lands in an empty queue.
    pub(crate) notifier: Option<Notifier>,
    /// Set when an event landed in an empty queue and the notifier has not
    /// been called for it yet.
    notify_due: bool,
    /// Worker threads, by index.
    pub(crate) workers: Vec<WorkerSlot>,
    /// Indices of idle workers, most recently idle last.
    pub(crate) idle: Vec<usize>,
    /// Join handles of worker threads not yet joined.
    pub(crate) handles: Vec<std::thread::JoinHandle<()>>,
    /// Threads blocked in `wait_idle`.
    pub(crate) idle_waiters: usize,
    /// The manager's id, part of every `TaskId`.
    manager: u64,
}

/// What a stop call did.
#[must_use = "the jobs must be dropped after the lock is released"]
pub(crate) struct Stopped {
    /// How many tasks were stopped.
    pub(crate) count: usize,
    /// Jobs of stopped tasks that never started, to drop unlocked.
    pub(crate) jobs: Vec<Job>,
}

impl State {
    /// Creates the state of a new manager.
    pub(crate) fn new(mode: Mode, manager: u64) -> Self {
        State {
            manager,
            mode,
            nodes: NodeMap::default(),
            ready: ReadyQueue::default(),
            queued: 0,
            running: 0,
            groups: HashMap::new(),
            finished: VecDeque::new(),
            subscribers: Vec::new(),
            notifier: None,
            notify_due: false,
            workers: Vec::new(),
            idle: Vec::new(),
            handles: Vec::new(),
            idle_waiters: 0,
        }
    }

    /// Returns `true` if no task is running and none can start.
    pub(crate) fn is_idle(&self) -> bool {
        self.running == 0 && (self.mode != Mode::Processing || self.queued == 0)
    }

    /// Adds a task. Upstream ids must have been validated as issued by this
    /// manager; those no longer in `nodes` are satisfied. An upstream that
    /// finished but whose event is still pending is satisfied too: its
    /// `Kwargs` result is merged at once, or, if it failed, the new task
    /// fails with it (as it would have, had it been added a moment earlier).
    ///
    /// Returns jobs to drop unlocked (of a task failed on arrival).
    #[must_use = "the jobs must be dropped after the lock is released"]
    pub(crate) fn insert(&mut self, task: NewTask) -> Vec<Job> {
        let NewTask {
            cell,
            job,
            priority,
            group,
            kwargs,
            upstream,
        } = task;
        let seq = cell.seq;
        let mut node = Node {
            cell,
            work: Work::Pending(job),
            priority,
            phase: Phase::Queued,
            waiting_on: 0,
            group: group.clone(),
            links: None,
        };
        if !kwargs.is_empty() {
            node.links_mut().kwargs = kwargs;
        }
        let mut failed_upstream = None;
        for up in upstream {
            let Some(up_node) = self.nodes.get_mut(&up) else {
                continue;
            };
            up_node.links_mut().downstream.push(seq);
            // A finished upstream still gets the edge (stop cascades follow
            // it) but no longer holds this task back.
            match &up_node.work {
                _ if up_node.phase != Phase::Finished => node.waiting_on += 1,
                Work::Completed(result) => {
                    let result = result.clone();
                    let links = node.links_mut();
                    if let Some(kw) = result.downcast_ref::<Kwargs>() {
                        links.kwargs.merge_from(kw);
                    }
                    links.results.push((up, result));
                }
                Work::Failed(f) => failed_upstream = Some(Arc::clone(f)),
                Work::Pending(_) | Work::Taken => {}
            }
            node.links_mut().upstream.push(up);
        }
        if node.waiting_on > 0 {
            node.phase = Phase::Blocked;
        } else {
            self.ready.push(priority, seq);
            self.queued += 1;
        }
        self.nodes.insert(seq, node);
        if let Some(g) = group {
            let gs = self.groups.entry(g.clone()).or_default();
            gs.live += 1;
            gs.members.push(seq);
            if gs.members.len() >= 2 * gs.compacted_len.max(16) {
                self.compact_group(&g);
            }
        }
        match failed_upstream {
            Some(failure) => self.fail(seq, failure),
            None => Vec::new(),
        }
    }

    /// Takes the best ready task and marks it running, if any (the caller
    /// checks that processing is on).
    pub(crate) fn pop_ready(&mut self) -> Option<Ready> {
        let manager = self.manager;
        let nodes = &self.nodes;
        let seq = self
            .ready
            .pop(|seq| nodes.get(&seq).is_some_and(|n| n.phase == Phase::Queued))?;
        let node = self
            .nodes
            .get_mut(&seq)
            .expect("popped entries are live (invariant 3)");
        node.phase = Phase::Running;
        self.queued -= 1;
        self.running += 1;
        let (kwargs, upstream) = match node.links.as_deref_mut() {
            Some(l) => (mem::take(&mut l.kwargs), mem::take(&mut l.results)),
            None => (Kwargs::new(), Vec::new()),
        };
        Some(Ready {
            id: TaskId { seq, manager },
            cell: Arc::clone(&node.cell),
            job: node.work.take_job().expect("a queued task has its job"),
            group: node.group.clone(),
            kwargs,
            upstream,
        })
    }

    /// Records that a worker finished task `seq` with `outcome`, emitting its
    /// events and releasing or failing its downstream tasks.
    ///
    /// Returns the jobs of tasks failed by the cascade, to drop unlocked.
    #[must_use = "the jobs must be dropped after the lock is released"]
    pub(crate) fn finish(&mut self, id: TaskId, outcome: Result<TaskResult, Failure>) -> Vec<Job> {
        self.running -= 1;
        let seq = id.seq;
        match self.nodes.get(&seq) {
            // Stopped while running: its outcome is dropped (invariant 1).
            None => return Vec::new(),
            Some(n) if n.phase != Phase::Running || n.cell.is_stopped() => return Vec::new(),
            Some(_) => {}
        }
        let jobs = match outcome {
            Ok(result) => {
                self.complete(id, result);
                Vec::new()
            }
            Err(failure) => self.fail(seq, Arc::new(failure)),
        };
        self.reap();
        jobs
    }

    /// Completes `seq`: releases its downstream tasks, then emits
    /// `Completed` and maybe `GroupFinished`.
    fn complete(&mut self, id: TaskId, result: TaskResult) {
        let seq = id.seq;
        let node = self.nodes.get_mut(&seq).expect("checked by finish");
        node.phase = Phase::Finished;
        let downstream = node
            .links
            .as_deref_mut()
            .map(|l| mem::take(&mut l.downstream));
        if let Some(downstream) = &downstream {
            let merged = result.downcast_ref::<Kwargs>();
            for d in downstream {
                let Some(dn) = self.nodes.get_mut(d) else {
                    continue;
                };
                if dn.phase != Phase::Blocked {
                    continue;
                }
                let links = dn.links_mut();
                if let Some(kw) = merged {
                    links.kwargs.merge_from(kw);
                }
                links.results.push((seq, result.clone()));
                dn.waiting_on -= 1;
                if dn.waiting_on == 0 {
                    dn.phase = Phase::Queued;
                    self.ready.push(dn.priority, *d);
                    self.queued += 1;
                }
            }
        }
        let node = self.nodes.get_mut(&seq).expect("checked by finish");
        if let (Some(links), Some(downstream)) = (node.links.as_deref_mut(), downstream) {
            links.downstream = downstream;
        }
        node.work = Work::Completed(result.clone());
        let group = node.group.clone();
        let cell = Arc::clone(&node.cell);
        self.emit_terminal(
            Event::Completed {
                id,
                group: group.clone(),
                result,
            },
            &cell,
        );
        self.end_member(group, &cell);
        self.retire(seq, cell);
    }

    /// Fails `seq` and, in order of distance then id, every live task
    /// downstream of it, with the same message and traceback.
    fn fail(&mut self, seq: u64, failure: Arc<Failure>) -> Vec<Job> {
        let manager = self.manager;
        let mut level = vec![seq];
        let mut seen: HashSet<u64> = HashSet::new();
        seen.insert(seq);
        let mut jobs = Vec::new();
        while !level.is_empty() {
            for &seq in &level {
                let node = self.nodes.get_mut(&seq).expect("failing nodes are live");
                if node.phase == Phase::Queued {
                    // Failed on arrival; its ready entry goes stale.
                    self.queued -= 1;
                }
                node.phase = Phase::Finished;
                jobs.extend(node.work.take_job());
                node.work = Work::Failed(Arc::clone(&failure));
                let group = node.group.clone();
                let cell = Arc::clone(&node.cell);
                let event = Event::Failed {
                    id: TaskId { seq, manager },
                    group: group.clone(),
                    message: failure.message.clone(),
                    traceback: failure.traceback.clone(),
                };
                self.emit_terminal(event, &cell);
                self.end_member(group, &cell);
            }
            let mut next = Vec::new();
            for &seq in &level {
                let Some(links) = self.nodes.get(&seq).and_then(|n| n.links.as_deref()) else {
                    continue;
                };
                for &d in &links.downstream {
                    let blocked = self
                        .nodes
                        .get(&d)
                        .is_some_and(|n| n.phase == Phase::Blocked);
                    if blocked && seen.insert(d) {
                        next.push(d);
                    }
                }
            }
            next.sort_unstable();
            for &seq in &level {
                let cell = Arc::clone(&self.nodes[&seq].cell);
                self.retire(seq, cell);
            }
            level = next;
        }
        // Cascade-failed jobs never ran; their captures are user code and
        // are dropped by the caller after unlocking.
        jobs
    }

    /// Accounts for a group member ending by completion or failure; emits
    /// `GroupFinished` if it was the last live one (invariant 5).
    fn end_member(&mut self, group: Option<Group>, cell: &Arc<TaskCell>) {
        let Some(group) = group else { return };
        let Some(gs) = self.groups.get_mut(&group) else {
            return;
        };
        gs.live -= 1;
        if gs.live == 0 {
            self.emit(Envelope::group_finished(
                Event::GroupFinished {
                    group: group.clone(),
                },
                Arc::clone(cell),
            ));
            self.compact_group(&group);
        }
    }

    /// Drops ids of departed tasks from a group's member list, and the group
    /// itself once it has neither live nor pending members. Amortised O(1)
    /// per member: it runs when the list doubled since the last time, or
    /// when the group empties.
    fn compact_group(&mut self, group: &Group) {
        let nodes = &self.nodes;
        let Some(gs) = self.groups.get_mut(group) else {
            return;
        };
        gs.members.retain(|m| nodes.contains_key(m));
        gs.compacted_len = gs.members.len();
        if gs.live == 0 && gs.members.is_empty() {
            self.groups.remove(group);
        }
    }

    /// After a task's terminal event: keeps its node while the event is
    /// pending, so that stops can still find it (invariant 1).
    fn retire(&mut self, seq: u64, cell: Arc<TaskCell>) {
        if cell.has_pending() {
            self.finished.push_back(cell);
        } else {
            self.nodes.remove(&seq);
        }
    }

    /// Removes finished nodes whose events every queue has delivered.
    fn reap(&mut self) {
        while let Some(front) = self.finished.front() {
            if front.has_pending() && !front.is_stopped() {
                break;
            }
            let seq = front.seq;
            self.finished.pop_front();
            if self
                .nodes
                .get(&seq)
                .is_some_and(|n| n.phase == Phase::Finished)
            {
                self.nodes.remove(&seq);
            }
        }
    }

    /// Queues a terminal event of `cell`'s task in every subscription.
    fn emit_terminal(&mut self, event: Event, cell: &Arc<TaskCell>) {
        if self.subscribers.is_empty() {
            return;
        }
        cell.add_pending(self.subscribers.len());
        self.emit(Envelope::terminal(event, Arc::clone(cell)));
    }

    /// Queues `env` in every subscription; drops subscriptions that are gone.
    fn emit(&mut self, env: Envelope) {
        let n = self.subscribers.len();
        if n == 0 {
            return;
        }
        let mut gone = Vec::new();
        let mut env = Some(env);
        for (i, sub) in self.subscribers.iter().enumerate() {
            let this = if i + 1 == n {
                env.take().expect("one envelope per subscriber")
            } else {
                env.as_ref()
                    .expect("one envelope per subscriber")
                    .duplicate()
            };
            match sub.send(this) {
                Ok(true) => self.notify_due = true,
                Ok(false) => {}
                Err(()) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            self.subscribers.remove(i);
        }
    }

    /// Adds a subscription.
    pub(crate) fn subscribe(&mut self, sub: Subscriber) {
        self.subscribers.push(sub);
    }

    /// Returns the notifier if an event landed in an empty queue since the
    /// last call; the caller calls it after releasing the lock.
    pub(crate) fn take_notify(&mut self) -> Option<Notifier> {
        if mem::take(&mut self.notify_due) {
            self.notifier.clone()
        } else {
            None
        }
    }

    /// Returns `true` if `seq` names a task live to the owner.
    fn is_live(&self, seq: u64) -> bool {
        self.nodes.get(&seq).is_some_and(Node::is_live)
    }

    /// Live members of `group`.
    pub(crate) fn group_members(&self, group: &Group) -> Vec<u64> {
        match self.groups.get(group) {
            Some(gs) => gs
                .members
                .iter()
                .copied()
                .filter(|&m| self.is_live(m))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Every live task.
    pub(crate) fn all_live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_live())
            .map(|(&s, _)| s)
            .collect()
    }

    /// Stops `seeds` and, following upstream edges if `up` and downstream
    /// edges if `down`, every live task reachable from a stopped one.
    pub(crate) fn stop(&mut self, seeds: Vec<u64>, up: bool, down: bool) -> Stopped {
        self.reap();
        // Pass 1: decide the set, marking each cell stopped as it joins
        // (after this no queue delivers its events: cell invariant 3).
        let mut stack = seeds;
        let mut stopped: Vec<u64> = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        while let Some(seq) = stack.pop() {
            if !seen.insert(seq) {
                continue;
            }
            let Some(node) = self.nodes.get(&seq) else {
                continue;
            };
            let was_live = match node.phase {
                Phase::Finished => node.cell.stop_undelivered(),
                _ => {
                    node.cell.mark_stopped();
                    true
                }
            };
            if !was_live {
                continue;
            }
            stopped.push(seq);
            if let Some(links) = node.links.as_deref() {
                if up {
                    stack.extend(links.upstream.iter().copied());
                }
                if down {
                    stack.extend(links.downstream.iter().copied());
                }
            }
        }
        // Pass 2: take them out of the graph and release what they held back.
        let mut jobs = Vec::new();
        let mut groups_touched = Vec::new();
        for &seq in &stopped {
            let mut node = self.nodes.remove(&seq).expect("pass 1 found it");
            jobs.extend(node.work.take_job());
            let was_scheduled = match node.phase {
                Phase::Finished => false,
                Phase::Queued => {
                    self.queued -= 1;
                    true
                }
                Phase::Blocked | Phase::Running => true,
            };
            if !was_scheduled {
                continue;
            }
            if let Some(g) = node.group {
                if let Some(gs) = self.groups.get_mut(&g) {
                    gs.live -= 1;
                    if gs.live == 0 || gs.members.len() >= 2 * gs.compacted_len.max(16) {
                        groups_touched.push(g);
                    }
                }
            }
            let Some(links) = node.links else { continue };
            for d in links.downstream {
                let Some(dn) = self.nodes.get_mut(&d) else {
                    continue;
                };
                if dn.phase != Phase::Blocked {
                    continue;
                }
                dn.waiting_on -= 1;
                if dn.waiting_on == 0 {
                    dn.phase = Phase::Queued;
                    self.ready.push(dn.priority, d);
                    self.queued += 1;
                }
            }
        }
        for g in groups_touched {
            self.compact_group(&g);
        }
        Stopped {
            count: stopped.len(),
            jobs,
        }
    }

    /// Shuts down: stops every task, closes every subscription and clears
    /// the queue. Returns the jobs to drop unlocked.
    pub(crate) fn shut_down(&mut self) -> Vec<Job> {
        self.mode = Mode::ShutDown;
        let all = self.all_live();
        let stopped = self.stop(all, false, false);
        // Anything left is finished and delivered, or stopped.
        self.nodes.clear();
        self.ready.clear();
        self.groups.clear();
        self.finished.clear();
        self.subscribers.clear();
        self.queued = 0;
        stopped.jobs
    }

    /// Adds a task submitted through the inbox. A task that raced with
    /// shut-down is stopped instead; its job is returned to drop unlocked.
    pub(crate) fn insert_from_inbox(&mut self, task: NewTask) -> Option<Job> {
        if self.mode == Mode::ShutDown {
            task.cell.mark_stopped();
            return Some(task.job);
        }
        // Inbox tasks have no upstream, so they cannot fail on arrival.
        let failed = self.insert(task);
        debug_assert!(failed.is_empty());
        None
    }
}
