//! `TaskCell`: one task's shared record, and the state machine that lets
//! workers, stop calls and subscription queues agree on its fate without a
//! common lock.
//!
//! Every task is a cell. A task without upstream ("fast" task) lives only
//! here, in a ready structure and in the registry; a task with upstream or
//! downstream edges also has a graph node (in its slot) and carries the
//! `PROMOTED` bit, which routes its end through the scheduler lock.
//!
//! # Invariants
//!
//! 1. `STOPPED` and `FINISHED` are set at most once and never cleared. A
//!    task ends exactly once: either `FINISHED` (a worker decided its
//!    outcome, or a failure cascade reached it) is set while `STOPPED` is
//!    clear, or `STOPPED` is set while `FINISHED` is clear. Both are set by
//!    compare-and-swap, so exactly one party wins: the winner does the
//!    task's group accounting (group invariant 1).
//! 2. `STOPPED` may also be set after `FINISHED`, only while the pending
//!    count is non-zero: that stops a task whose event waits in a queue.
//! 3. The pending count is the number of subscription queues that hold the
//!    terminal event undelivered. It is raised before the event is queued,
//!    in the same compare-and-swap that sets `FINISHED` (under the emit
//!    lock for a fast task; under the scheduler lock, whose fan-out mirror
//!    only changes under both locks, for a promoted one), and lowered once
//!    per queue by `settle`. A queue
//!    delivers the event only if `STOPPED` was clear when it settled, so a
//!    stop that returns has excluded every later delivery ("no stale events").
//! 4. A task is *live to the owner* until it is stopped, or finished with a
//!    pending count of zero (`is_dead`).
//! 5. `CLAIMED` is set by the one worker that will run the task, and only
//!    if `STOPPED` is clear: a stopped task never starts.
//! 6. `IN_READY` changes only under the scheduler lock. `PROMOTED` is set
//!    under the slot lock (by `state::link`, or at creation), only while
//!    `FINISHED` and `STOPPED` are clear; a promoted task is ended under
//!    the scheduler lock and its slot lock (`end_linked`), so a linker
//!    holding the slot lock sees it either finished or not, and in the
//!    second case is in the snapshot of edges its end releases.
//! 7. A waiter (`TaskHandle::wait`, or its `Future`) registers under the
//!    slot lock and then sets `WAITING`; whoever sets `FINISHED` or
//!    `STOPPED` and sees `WAITING` in the previous state takes the slot lock
//!    and wakes every registered waiter. Both bits live in one atomic word,
//!    so either the waiter sees the end or the ender sees the waiter.
//! 8. A finished task keeps its outcome in the slot for its handles until
//!    the cell is dropped, unless it is stopped afterwards (then handles see
//!    `Stopped`, like everyone else).
//! 9. The work (the task's closure, in the cell) is taken once, by whoever
//!    moves the slot out of `Payload::Pending`: the worker that runs it
//!    (`take_work`, then `run_work`), or whoever ends the task before it
//!    started, as a [`Job`] (`take_job`, `end_linked`) whose drop discards
//!    the closure, and the kwargs and upstream results it would have run
//!    with, once every lock is released (contained: their `Drop`s are user
//!    code). Once a worker claimed the
//!    task, nobody else moves the slot (stops leave a claimed task's work
//!    to its worker), so a worker skips `take_work` for a task without
//!    input (`HAS_INPUT` clear) and runs the work directly; the closure's
//!    own lock makes it run at most once either way.

use std::fmt;

use smallvec::SmallVec;

use crate::group::GroupState;
use crate::kwargs::Kwargs;
use crate::result::TaskResult;
use crate::state::Ids;
use crate::sync::{Arc, AtomicI32, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering, Weak};
use crate::task::TaskContext;
use crate::unwind::Failure;

/// Set once the task was stopped (invariants 1, 2).
const STOPPED: u64 = 1 << 63;
/// Set once the task's outcome was decided (invariant 1).
const FINISHED: u64 = 1 << 62;
/// Set while the task has a graph node (invariant 6).
const PROMOTED: u64 = 1 << 61;
/// Set once a worker took the task to run it (invariant 5).
const CLAIMED: u64 = 1 << 60;
/// Set while the task has a live entry in the locked ready queue.
const IN_READY: u64 = 1 << 59;
/// Set once someone waits for the task's end (invariant 7).
const WAITING: u64 = 1 << 58;
/// Set while its group's limit holds the task back (group invariant 3).
const HELD: u64 = 1 << 57;
/// Set at creation if the task has an input to take when it starts (own
/// kwargs, or upstream tasks whose results it may receive); never changes.
const HAS_INPUT: u64 = 1 << 56;
/// The pending-delivery count (invariant 3).
const PENDING: u64 = HAS_INPUT - 1;
/// The task ended (finished or stopped).
const ENDED: u64 = STOPPED | FINISHED;

/// What a task gets when it starts: its kwargs and its upstream results.
///
/// `repr(C)`, results first: in a [`Node`] they follow `waiting_on`, so a
/// release (which writes both) touches the first two cache lines of the
/// node only.
#[derive(Default)]
#[repr(C)]
pub(crate) struct Input {
    /// Results of completed upstream tasks: (end order, upstream sequence
    /// number, result). Gathered in any order (a result the submitter took
    /// from a finished upstream may arrive after a later one's release).
    pub(crate) upstream: SmallVec<[(u64, u64, TaskResult); 2]>,
    /// Own kwargs; once the task starts, merged with upstream `Kwargs`
    /// results ([`Input::merged`]).
    pub(crate) kwargs: Kwargs,
}

impl Input {
    /// `true` if it holds no kwargs and no upstream result.
    pub(crate) fn is_empty(&self) -> bool {
        self.kwargs.is_empty() && self.upstream.is_empty()
    }

    /// `true` if dropping it may run user code: it holds kwargs, or an
    /// upstream result that is not a primitive kept inline.
    pub(crate) fn holds_user_values(&self) -> bool {
        !self.kwargs.is_empty() || self.upstream.iter().any(|(_, _, r)| !r.is_inline())
    }

    /// Records a completed upstream task's result.
    pub(crate) fn absorb(&mut self, order: u64, up: u64, result: TaskResult) {
        self.upstream.push((order, up, result));
    }

    /// Merges the upstream `Kwargs` results into the task's own kwargs in
    /// the order the upstream tasks ended (SPEC 3: the upstream's value wins
    /// on a clash, a later-completing upstream over an earlier one).
    pub(crate) fn merged(mut self) -> Self {
        if self.upstream.iter().any(|(order, ..)| *order != 0) {
            let mut kw: SmallVec<[(u64, u64, &Kwargs); 2]> = self
                .upstream
                .iter()
                .filter_map(|(o, up, r)| r.downcast_ref::<Kwargs>().map(|k| (*o, *up, k)))
                .collect();
            kw.sort_by_key(|(o, up, _)| (*o, *up));
            let mut kwargs = std::mem::take(&mut self.kwargs);
            for (_, _, k) in kw {
                kwargs.merge_from(k);
            }
            self.kwargs = kwargs;
        }
        self
    }
}

/// How a task ended.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// Returned `Ok`.
    Completed(TaskResult),
    /// Returned `Err`, panicked, or was failed by an upstream task.
    Failed(Arc<Failure>),
}

/// Something waiting for a task to end.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// A thread blocked in `TaskHandle::wait`.
    Thread(std::thread::Thread),
    /// A task polling the handle as a `Future`.
    Waker(std::task::Waker),
}

/// What `TaskCell::end_linked` did.
pub(crate) struct LinkedEnd {
    /// Waiters to wake once no lock is held.
    pub(crate) wakes: Wakes,
    /// The task's live downstream tasks when it ended.
    pub(crate) downstream: Cells,
    /// The end's order (see [`end_order`]).
    pub(crate) order: u64,
    /// The work of a task that ended before it ran, to drop unlocked.
    pub(crate) job: Option<Job>,
}

/// Cells reached through edges; most tasks have one or two neighbours.
pub(crate) type Cells = SmallVec<[Arc<TaskCell>; 2]>;

/// Waiters taken from a cell that ended, to wake once no lock is held
/// (a waker is user code).
pub(crate) type Wakes = Vec<Waiter>;

/// Wakes every waiter in `wakes`.
#[inline]
pub(crate) fn wake_all(wakes: Wakes) {
    if wakes.is_empty() {
        return; // nobody waits for almost every task
    }
    for w in wakes {
        w.wake();
    }
}

impl Waiter {
    /// Wakes it.
    fn wake(self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Waker(w) => w.wake(),
        }
    }
}

/// How a task ended, as its handle reports it.
#[derive(Clone)]
pub(crate) enum HandleEnd {
    /// Completed or failed.
    Outcome(Outcome),
    /// Stopped: its outcome, if any, was dropped.
    Stopped,
}

/// The rarely used part of a slot.
#[derive(Default)]
struct Extras {
    /// Registered waiters (invariant 7).
    waiters: Vec<Waiter>,
    /// Progress reports, if the task made any.
    progress: Option<Progress>,
}

/// A task's progress reports.
#[derive(Default)]
struct Progress {
    /// The latest report (fraction, message).
    latest: (f32, String),
    /// Subscriptions holding a progress marker of this task not yet opened
    /// or dropped; a new report queues a marker only in the others, so each
    /// queue holds at most one per task, delivering the latest report when
    /// opened.
    pending: SmallVec<[u64; 2]>,
}

/// A task's place in the dependency graph: present once the task has
/// upstream tasks or a task was added after it before it ended (it is
/// then `PROMOTED`; a task added after it once it finished gets a late
/// edge in the registry instead, registry invariant 4). Read and changed
/// only under the scheduler lock (and the slot lock, which guards it); see
/// `state.rs` for its invariants.
///
/// Edges never keep a task alive: downstream edges are `Weak`, upstream
/// ones sequence numbers looked up in the registry, which holds every live
/// task. An edge to a task that is gone leads nowhere, and no chain of
/// tasks keeps itself alive or drops recursively.
///
/// `repr(C)`, in the order of use: a release reads and writes `waiting_on`
/// and the input's results, the node's first 96 bytes (two or three cache
/// lines, depending on where the node lies); an end reads `waiting_on` and
/// `downstream`. With the compiler's order,
/// `waiting_on` came last and the results in between, and every release of
/// a task (made by the owner, so missing in the worker's cache) cost a line
/// more.
#[derive(Default)]
#[repr(C)]
pub(crate) struct Node {
    /// Upstream tasks not yet ended (state invariant 2).
    pub(crate) waiting_on: u32,
    /// Own kwargs and upstream results gathered while blocked; the worker
    /// takes them when it starts the task.
    pub(crate) input: Input,
    /// Tasks added later with this one upstream, before it finished.
    pub(crate) downstream: SmallVec<[Weak<TaskCell>; 2]>,
    /// Upstream tasks that were live when this task was added, by
    /// sequence number (a stop cascading upstream finds them in the
    /// registry: a reference here would be an atomic write to each
    /// upstream cell when linking).
    pub(crate) upstream: Ids,
}

/// What the slot lock guards. `repr(C)`, the outcome first, right after
/// the lock (see `TaskCell`'s layout).
#[repr(C)]
pub(crate) struct Slot<N: ?Sized + NodeStore = dyn NodeStore> {
    /// The work, then the outcome.
    pub(crate) work: Payload,
    /// Waiters and progress; boxed, since most tasks have neither and
    /// every cell pays for the field.
    extras: Option<Box<Extras>>,
    /// The task's graph node, if it has one: in the cell for a task added
    /// with upstream tasks, boxed on demand for one promoted later (most
    /// tasks have none). Last: the unsized field.
    pub(crate) node: N,
}

/// Where a slot keeps its task's graph node: inline (`Node`, a task added
/// with upstream tasks: one allocation for cell and node) or boxed on
/// demand (`Option<Box<Node>>`, a task added without, which a later task
/// may promote).
pub(crate) trait NodeStore: Send {
    /// The node, if there is one.
    fn get(&self) -> Option<&Node>;
    /// The node, if there is one.
    fn get_mut(&mut self) -> Option<&mut Node>;
    /// The node, made empty first if there was none.
    fn get_or_insert(&mut self) -> &mut Node;
}

impl NodeStore for Node {
    fn get(&self) -> Option<&Node> {
        Some(self)
    }
    fn get_mut(&mut self) -> Option<&mut Node> {
        Some(self)
    }
    fn get_or_insert(&mut self) -> &mut Node {
        self
    }
}

impl NodeStore for Option<Box<Node>> {
    fn get(&self) -> Option<&Node> {
        self.as_deref()
    }
    fn get_mut(&mut self) -> Option<&mut Node> {
        self.as_deref_mut()
    }
    fn get_or_insert(&mut self) -> &mut Node {
        self.get_or_insert_with(Box::default)
    }
}

/// The part of a cell that varies with the task: its slot (whose node is
/// inline or boxed, [`NodeStore`]) and its work. Unsized to [`Tail`] in
/// every `TaskCell` the manager holds.
#[repr(C)]
pub(crate) struct CellTail<N: NodeStore, W> {
    /// Whether the work is pending, then the outcome, the waiters and the
    /// node (the slot lock).
    payload: Mutex<Slot<N>>,
    /// The work.
    work: W,
}

/// A [`CellTail`] of any node store and work. The work's operations are
/// its own methods, so that each is one dynamic call.
pub(crate) trait Tail: Send + Sync {
    /// The slot lock and what it guards.
    fn payload(&self) -> &Mutex<Slot>;
    /// [`Work::run`].
    fn run_work(&self, ctx: &TaskContext) -> Option<Result<TaskResult, Failure>>;
    /// [`Work::discard`].
    fn discard_work(&self);
}

impl<N: NodeStore + 'static, W: Work> Tail for CellTail<N, W> {
    fn payload(&self) -> &Mutex<Slot> {
        &self.payload
    }
    fn run_work(&self, ctx: &TaskContext) -> Option<Result<TaskResult, Failure>> {
        self.work.run(ctx)
    }
    fn discard_work(&self) {
        self.work.discard();
    }
}

/// The part of a cell that moves: the work before the task runs, its
/// outcome after.
pub(crate) enum Payload {
    /// Not started: the work (in the cell) is still there.
    Pending {
        /// Kwargs and upstream results, if any.
        input: Option<Box<Input>>,
    },
    /// Running, stopped before it ran, or ended with nobody to tell.
    Empty,
    /// Ended; kept while its event is pending so that a task added after it
    /// in the meantime gets its result (or its failure).
    Done(Outcome, u64),
}

/// How a stop call found a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopFound {
    /// Already stopped, or ended and delivered: not live (nothing changed).
    NotLive,
    /// Ended with its event pending: the event is now dropped.
    Finished,
    /// Had not ended; `claimed` if a worker holds it.
    Unfinished {
        /// A worker is running (or about to run) it.
        claimed: bool,
        /// It had a live entry in the locked ready queue.
        in_ready: bool,
    },
}

/// How a worker's attempt to end a fast task went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FastEnd {
    /// `FINISHED` is set: emit its events.
    Finished,
    /// It was stopped: drop the outcome.
    Stopped,
    /// It has a graph node: end it under the scheduler lock.
    Promoted,
}

/// A task's work, kept in its cell: one allocation per task, not two.
/// Taken once, by the worker that runs the task or by whoever ends it
/// before it started (who owns the cell's `Pending` → `Empty` change).
pub(crate) trait Work: Send + Sync {
    /// Runs the work; `None` if it was taken already.
    fn run(&self, ctx: &TaskContext) -> Option<Result<TaskResult, Failure>>;
    /// Drops the work, if still there (its captures' `Drop` is user code:
    /// no lock may be held).
    fn discard(&self);
}

/// The closure that is a task's work.
pub(crate) struct WorkSlot<F>(Mutex<Option<F>>);

impl<F> WorkSlot<F> {
    /// Wraps `f`.
    pub(crate) fn new(f: F) -> Self {
        WorkSlot(Mutex::new(Some(f)))
    }
}

impl<F> Work for WorkSlot<F>
where
    F: FnOnce(&TaskContext) -> Result<TaskResult, Failure> + Send,
{
    fn run(&self, ctx: &TaskContext) -> Option<Result<TaskResult, Failure>> {
        let f = self.0.lock().take()?;
        Some(f(ctx))
    }

    fn discard(&self) {
        let f = self.0.lock().take();
        drop(f);
    }
}

/// What a new cell is made of besides its work and priority, decided by
/// `Shared::submit` (the sequence number under the registry lock).
pub(crate) struct CellParts {
    /// Sequence number.
    pub(crate) seq: u64,
    /// Its group, joined.
    pub(crate) group: Option<Arc<GroupState>>,
    /// Its kwargs, for a task without upstream.
    pub(crate) input: Option<Box<Input>>,
    /// Its node, for a task with upstream.
    pub(crate) node: Option<Node>,
}

/// Makes a new task's cell (see `TaskBuilder::submit`); called once.
pub(crate) type MakeCell<'a> = &'a mut dyn FnMut(CellParts) -> Arc<TaskCell>;

/// Work that must never run, for tests of the scheduling structures.
#[cfg(test)]
pub(crate) fn never() -> WorkSlot<impl FnOnce(&TaskContext) -> Result<TaskResult, Failure> + Send> {
    WorkSlot::new(|_: &TaskContext| -> Result<TaskResult, Failure> { unreachable!("not run") })
}

/// A fast task's cell with work that must never run, for tests.
#[cfg(test)]
pub(crate) fn test_cell(seq: u64) -> Arc<TaskCell> {
    Arc::new(TaskCell::new(
        seq,
        0,
        None,
        never(),
        None,
        None::<Box<Node>>,
    ))
}

/// The work of a task that will never run, with the input it would have
/// run with: dropping this drops them, so the holder decides where (after
/// every lock is released, contained).
pub(crate) struct Job {
    /// The task; its closure is discarded when the job drops.
    cell: Arc<TaskCell>,
    /// Its kwargs and gathered upstream results, if any (dropped with the
    /// job, after the closure).
    _input: Option<Box<Input>>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.cell.tail.discard_work();
    }
}

impl Slot {
    /// The job of `cell`, a task that will never run, whose pending
    /// payload (just taken out of this slot) held `pending`.
    fn unrun_job(&mut self, cell: &Arc<TaskCell>, pending: Option<Box<Input>>) -> Job {
        Job {
            cell: Arc::clone(cell),
            _input: self.unrun_input(pending),
        }
    }

    /// Takes the input of a task that will never run, whose pending
    /// payload held `pending`: that (a task without upstream keeps its
    /// kwargs there), or what its node gathered (kwargs and upstream
    /// results), so that no user value stays in the cell to be dropped
    /// wherever its last reference goes.
    fn unrun_input(&mut self, pending: Option<Box<Input>>) -> Option<Box<Input>> {
        let node = self.node.get_mut();
        debug_assert!(
            pending.is_none() || node.as_ref().is_none_or(|n| n.input.is_empty()),
            "input in the payload and in the node"
        );
        pending.or_else(|| {
            let node = node?;
            (!node.input.is_empty()).then(|| Box::new(std::mem::take(&mut node.input)))
        })
    }
}

/// One task's shared record; `T` is its tail (slot and work,
/// [`CellTail`]) of concrete types when the cell is made and `dyn Tail`
/// everywhere else. A task added with upstream tasks keeps its graph node
/// in the slot, so its cell and node are one allocation.
///
/// `repr(C)`, in this order: what `state::link` reads and writes in an
/// upstream task that finished (its sequence number, state, late-edge list
/// and slot: 80 bytes from `seq`, the tracing stamp between the group and
/// the slot) lies in two or three cache lines, as in the compiler's order,
/// which put the list head and the slot's end further apart. The worker
/// that ended the task wrote them, so each line is a miss for the owner
/// that links. The group sits with the state, which a group stop reads
/// too. (The stamp first, which made the span 72 bytes, made W5's group
/// stop about 7 ns slower per task and W3 no faster: BENCHMARKS.md item 56.)
#[repr(C)]
pub(crate) struct TaskCell<T: ?Sized + Tail = dyn Tail> {
    /// Sequence number (its `TaskId` within the manager).
    pub(crate) seq: u64,
    /// Flags and pending count (module invariants).
    state: AtomicU64,
    /// The registry's list of edges to tasks added after this one finished
    /// (registry invariant 4); read and written under the registry lock
    /// only.
    pub(crate) late_head: AtomicU32,
    /// Higher runs first; changed by `set_priority` under the scheduler lock.
    priority: AtomicI32,
    /// The task's group, if any (read with the state by stops and ends).
    pub(crate) group: Option<Arc<GroupState>>,
    /// When the task was added, for its tracing span (0: not traced).
    #[cfg(feature = "tracing")]
    pub(crate) queued_at: u64,
    /// The slot and the work (last: the unsized field).
    tail: T,
}

/// Prefetches the cells of `node`'s downstream tasks (`prefetch.rs`).
fn prefetch_edges(node: &Node) {
    for edge in &node.downstream {
        crate::prefetch::cell(edge);
    }
}

impl fmt::Debug for TaskCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCell")
            .field("seq", &self.seq)
            .field("priority", &self.priority())
            .field(
                "state",
                &format_args!("{:#x}", self.state.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

impl<N: NodeStore + 'static, W: Work> TaskCell<CellTail<N, W>> {
    /// Creates the cell of a new task; with a `node` for tasks that get one
    /// at once (those with upstream tasks: `Node`, kept in the cell),
    /// which are then `PROMOTED`, or none (`None::<Box<Node>>`).
    pub(crate) fn new(
        seq: u64,
        priority: i32,
        group: Option<Arc<GroupState>>,
        work: W,
        input: Option<Box<Input>>,
        node: N,
    ) -> Self {
        let promoted = node.get().is_some();
        let has_input = input.is_some() || promoted;
        TaskCell {
            seq,
            priority: AtomicI32::new(priority),
            late_head: AtomicU32::new(crate::registry::NO_LATE),
            #[cfg(feature = "tracing")]
            queued_at: crate::trace::queued_at(),
            group,
            state: AtomicU64::new(
                if promoted { PROMOTED } else { 0 } | if has_input { HAS_INPUT } else { 0 },
            ),
            tail: CellTail {
                payload: Mutex::new(Slot {
                    work: Payload::Pending { input },
                    extras: None,
                    node,
                }),
                work,
            },
        }
    }
}

impl TaskCell {
    /// Takes the slot lock.
    pub(crate) fn slot(&self) -> MutexGuard<'_, Slot> {
        self.tail.payload().lock()
    }

    /// Returns the task's priority.
    pub(crate) fn priority(&self) -> i32 {
        self.priority.load(Ordering::Relaxed)
    }

    /// Changes the task's priority (scheduler lock held).
    pub(crate) fn set_priority(&self, p: i32) {
        self.priority.store(p, Ordering::Relaxed);
    }

    /// Reads the flags.
    fn load(&self) -> u64 {
        self.state.load(Ordering::Acquire)
    }

    /// Applies `f` to the state until a compare-and-swap succeeds or `f`
    /// declines (returns `None`); returns the state `f` last saw.
    fn update(&self, mut f: impl FnMut(u64) -> Option<u64>) -> Result<u64, u64> {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, &mut f)
    }

    /// Returns `true` once the task was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.load() & STOPPED != 0
    }

    /// Returns `true` once the outcome was decided.
    pub(crate) fn is_finished(&self) -> bool {
        self.load() & FINISHED != 0
    }

    /// Returns `true` if the task has a graph node.
    pub(crate) fn is_promoted(&self) -> bool {
        self.load() & PROMOTED != 0
    }

    /// Returns `true` if the task is no longer live to the owner (invariant 4).
    pub(crate) fn is_dead(&self) -> bool {
        let s = self.load();
        s & STOPPED != 0 || (s & FINISHED != 0 && s & PENDING == 0)
    }

    /// Returns `true` if some queue still holds the terminal event.
    #[cfg(test)]
    pub(crate) fn has_pending(&self) -> bool {
        self.load() & PENDING != 0
    }

    /// Takes the task for a worker to run; `false` if it was stopped
    /// (invariant 5).
    pub(crate) fn claim(&self) -> bool {
        // IN_READY: a FIFO entry whose task `set_priority` moved to the
        // locked queue is stale; the locked queue clears it before claiming.
        self.update(|s| (s & (ENDED | CLAIMED | IN_READY | HELD) == 0).then_some(s | CLAIMED))
            .is_ok()
    }

    /// Claims a task taken from the locked ready queue, clearing its
    /// `IN_READY` in the same step (scheduler lock held); `false` if it
    /// cannot run, with `IN_READY` cleared all the same.
    pub(crate) fn claim_from_ready(&self) -> bool {
        let claimed = self
            .update(|s| (s & (ENDED | CLAIMED | HELD) == 0).then_some((s | CLAIMED) & !IN_READY))
            .is_ok();
        if !claimed {
            self.set_in_ready(false);
        }
        claimed
    }

    /// Turns a claim into a hold: the group's limit keeps the task back
    /// (group invariant 3). Under the group's `held` lock.
    pub(crate) fn hold(&self) {
        let _ = self.update(|s| Some((s & !CLAIMED) | HELD));
    }

    /// Ends a hold: the task goes back to the ready queue. Under the
    /// group's `held` lock; `false` if it was not held.
    pub(crate) fn unhold(&self) -> bool {
        self.update(|s| (s & HELD != 0).then_some(s & !HELD))
            .is_ok()
    }

    /// Returns `true` while the task's group's limit holds it back.
    pub(crate) fn is_held(&self) -> bool {
        self.load() & HELD != 0
    }

    /// Moves a task waiting in the FIFO to the locked queue (`set_priority`):
    /// sets `IN_READY` unless a worker claimed it or it ended. Scheduler
    /// lock held.
    pub(crate) fn move_to_ready(&self) -> bool {
        self.update(|s| (s & (ENDED | CLAIMED | IN_READY | HELD) == 0).then_some(s | IN_READY))
            .is_ok()
    }

    /// Returns `true` if a worker took the task and it has not ended.
    pub(crate) fn is_running(&self) -> bool {
        self.load() & (CLAIMED | ENDED) == CLAIMED
    }

    /// Returns `true` if the task ended (finished or stopped).
    pub(crate) fn is_ended(&self) -> bool {
        self.load() & ENDED != 0
    }

    /// Reads, in one load, whether the task ended and whether a worker
    /// holds it: `(ended, running)`. Two separate reads could straddle the
    /// task's end and report a task that already ran as neither.
    pub(crate) fn progress_state(&self) -> (bool, bool) {
        let s = self.load();
        (s & ENDED != 0, s & CLAIMED != 0)
    }

    /// Undoes `claim` for a task no worker could take (under the scheduler lock).
    pub(crate) fn unclaim(&self) {
        self.state.fetch_and(!CLAIMED, Ordering::AcqRel);
    }

    /// Gives a worker the work and input of a claimed task: the input
    /// added with it (a task without upstream) or gathered in its node.
    /// Also prefetches its downstream tasks' cells (see
    /// [`prefetch_downstream`](Self::prefetch_downstream)).
    pub(crate) fn take_work(&self) -> Option<Option<Input>> {
        let mut slot = self.slot();
        if !matches!(slot.work, Payload::Pending { .. }) {
            return None; // taken already, or ended: an outcome stays
        }
        let Payload::Pending { input } = std::mem::replace(&mut slot.work, Payload::Empty) else {
            unreachable!("matched above, slot locked");
        };
        let node = slot.node.get_mut();
        if let Some(node) = &node {
            prefetch_edges(node);
        }
        Some(match (input, node) {
            (Some(input), _) => Some(*input),
            (None, Some(node)) => {
                let input = std::mem::take(&mut node.input);
                (!input.is_empty()).then(|| input.merged())
            }
            (None, None) => None,
        })
    }

    /// Prefetches the cells of the task's downstream tasks, for a worker
    /// about to run it that does not call [`take_work`](Self::take_work):
    /// this task's end releases them under the scheduler lock, and their
    /// cells, written by whoever added them, are likely cold in this
    /// core's caches. Started now, the loads arrive while the task runs
    /// (see `prefetch.rs`).
    pub(crate) fn prefetch_downstream(&self) {
        if let Some(node) = self.slot().node.get() {
            prefetch_edges(node);
        }
    }

    /// Returns `true` if the task was made with an input (own kwargs or
    /// upstream tasks): its worker must take it with `take_work`. A task
    /// without one is started by `run_work` alone (invariant 9: the worker
    /// that claimed it owns its work, and `Pending` stays until the outcome
    /// replaces it).
    pub(crate) fn has_input(&self) -> bool {
        self.load() & HAS_INPUT != 0
    }

    /// Runs the work of a task whose work this worker took (`take_work`).
    pub(crate) fn run_work(&self, ctx: &TaskContext) -> Option<Result<TaskResult, Failure>> {
        self.tail.run_work(ctx)
    }

    /// Takes the work of a task that will never run, to drop unlocked.
    /// (For the rare callers that keep their reference; a stop uses
    /// [`into_job`](Self::into_job).)
    pub(crate) fn take_job(self: &Arc<Self>) -> Option<Job> {
        Arc::clone(self).into_job()
    }

    /// [`take_job`](Self::take_job) with the caller's reference moved into
    /// the job: a stop of many tasks saves a count increment and decrement
    /// on each cell.
    pub(crate) fn into_job(self: Arc<Self>) -> Option<Job> {
        let input = {
            let mut slot = self.slot();
            match std::mem::replace(&mut slot.work, Payload::Empty) {
                Payload::Pending { input } => slot.unrun_input(input),
                other => {
                    slot.work = other; // taken already, or ended: an outcome stays
                    return None;
                }
            }
        };
        Some(Job {
            cell: self,
            _input: input,
        })
    }

    /// Runs `f` on the task's graph node, if it has one (scheduler lock held).
    pub(crate) fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> Option<R> {
        self.slot().node.get_mut().map(f)
    }

    /// Returns the number of upstream tasks the task still waits for.
    pub(crate) fn waiting_on(&self) -> u32 {
        self.with_node(|n| n.waiting_on).unwrap_or(0)
    }

    /// Stops the task if it is live (invariants 1, 2). Called under the
    /// scheduler lock.
    pub(crate) fn stop(&self) -> (StopFound, Wakes) {
        let mut found = StopFound::NotLive;
        let prev = self.update(|s| {
            if s & STOPPED != 0 {
                found = StopFound::NotLive;
                None
            } else if s & FINISHED != 0 {
                if s & PENDING == 0 {
                    found = StopFound::NotLive;
                    None
                } else {
                    found = StopFound::Finished;
                    Some(s | STOPPED)
                }
            } else {
                found = StopFound::Unfinished {
                    claimed: s & CLAIMED != 0,
                    in_ready: s & IN_READY != 0,
                };
                Some((s | STOPPED) & !IN_READY)
            }
        });
        let wakes = prev.map(|prev| self.take_waiters(prev)).unwrap_or_default();
        (found, wakes)
    }

    /// Takes the waiters to wake if `prev`, the state an end replaced, had
    /// any (invariant 7).
    fn take_waiters(&self, prev: u64) -> Wakes {
        if prev & WAITING == 0 {
            return Vec::new();
        }
        let mut slot = self.slot();
        slot.extras
            .as_mut()
            .map(|e| std::mem::take(&mut e.waiters))
            .unwrap_or_default()
    }

    /// Returns how the task ended, or registers `waiter` to be woken when it
    /// does (invariant 7). `None` means "not yet".
    pub(crate) fn poll_end(&self, waiter: Option<Waiter>) -> Option<HandleEnd> {
        let mut slot = self.slot();
        let s = self.load();
        if s & ENDED != 0 {
            return Some(end_of(s, &slot));
        }
        let waiter = waiter?;
        slot.extras
            .get_or_insert_with(Box::default)
            .waiters
            .push(waiter);
        let prev = self.state.fetch_or(WAITING, Ordering::AcqRel);
        // The ender may have ended it before seeing WAITING; it then found no
        // waiter to wake, so answer now. (Its CAS came first: the outcome is
        // in the slot, which we hold.)
        (prev & ENDED != 0).then(|| end_of(prev, &slot))
    }

    /// Marks the outcome decided for a fast task (invariant 1) and, in the
    /// same step, counts the `pending` queues its event is about to enter
    /// (invariant 3), so that it never looks delivered before it is queued.
    pub(crate) fn end_fast(&self, pending: usize) -> (FastEnd, Wakes) {
        let mut result = FastEnd::Finished;
        let prev = self.update(|s| {
            if s & STOPPED != 0 {
                result = FastEnd::Stopped;
                None
            } else if s & PROMOTED != 0 {
                result = FastEnd::Promoted;
                None
            } else {
                result = FastEnd::Finished;
                Some((s | FINISHED) + pending as u64)
            }
        });
        let wakes = prev.map(|prev| self.take_waiters(prev)).unwrap_or_default();
        (result, wakes)
    }

    /// Ends a task with a graph node (scheduler lock held): keeps its
    /// outcome, marks it `FINISHED` counting `pending` queues as `end_fast`
    /// does, and takes a snapshot of its downstream tasks, all under the
    /// slot lock, so that a submitter linking a new task to it (also under
    /// the slot lock, `state::link`) either is in the snapshot or sees it
    /// finished. With `only_blocked`, ends it only if it waits for an
    /// upstream task (a failure cascade: a released task runs).
    ///
    /// Returns `None` if it had ended, or was not blocked.
    pub(crate) fn end_linked(
        self: &Arc<Self>,
        outcome: &Outcome,
        pending: usize,
        only_blocked: bool,
    ) -> Option<LinkedEnd> {
        let mut slot = self.slot();
        let blocked = slot.node.get().is_some_and(|n| n.waiting_on > 0);
        if self.load() & ENDED != 0 || (only_blocked && !blocked) {
            return None;
        }
        let order = end_order(outcome);
        let prev = self
            .update(|s| (s & ENDED == 0).then_some((s | FINISHED) + pending as u64))
            .ok()?; // stopped a moment ago: the stop owns its end
                    // A blocked task's work is still here: it never runs.
        let job = match std::mem::replace(&mut slot.work, Payload::Done(outcome.clone(), order)) {
            Payload::Pending { input } => Some(slot.unrun_job(self, input)),
            _ => None,
        };
        let mut downstream = Cells::new();
        if let Some(node) = slot.node.get_mut() {
            // An ended task is never released (state invariant 2).
            node.waiting_on = 0;
            downstream.extend(node.downstream.iter().filter_map(Weak::upgrade));
        }
        let wakes = if prev & WAITING != 0 {
            slot.extras
                .as_mut()
                .map(|e| std::mem::take(&mut e.waiters))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Some(LinkedEnd {
            wakes,
            downstream,
            order,
            job,
        })
    }

    /// Returns the live tasks added after this one with it upstream.
    pub(crate) fn downstream(&self) -> Cells {
        self.with_node(|n| n.downstream.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Sets `PROMOTED` if the task has not ended; returns the state seen
    /// otherwise. Called under the slot lock (invariant 6).
    pub(crate) fn promote(&self) -> Result<(), Ended> {
        match self.update(|s| (s & (STOPPED | FINISHED) == 0).then_some(s | PROMOTED)) {
            Ok(_) => Ok(()),
            Err(s) if s & STOPPED != 0 => Err(Ended::Stopped),
            Err(s) if s & PENDING != 0 => Err(Ended::FinishedPending),
            Err(_) => Err(Ended::Delivered),
        }
    }

    /// Records an entry in the locked ready queue (under the scheduler lock).
    pub(crate) fn set_in_ready(&self, on: bool) {
        if on {
            self.state.fetch_or(IN_READY, Ordering::AcqRel);
        } else {
            self.state.fetch_and(!IN_READY, Ordering::AcqRel);
        }
    }

    /// Returns `true` if the task has a live entry in the locked ready queue.
    pub(crate) fn is_in_ready(&self) -> bool {
        self.load() & IN_READY != 0
    }

    /// Settles one queue's copy of the terminal event: `true` if the queue
    /// may deliver it (invariant 3).
    pub(crate) fn settle(&self) -> bool {
        let prev = self.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev & PENDING != 0, "settled more copies than were queued");
        prev & STOPPED == 0
    }

    /// Records a progress report; returns the subscriptions (of `subs`)
    /// that hold no marker of this task and must be sent one. Nothing for
    /// an ended task. Called under the emit lock.
    pub(crate) fn queue_progress(
        &self,
        fraction: f32,
        message: String,
        subs: impl Iterator<Item = u64>,
    ) -> SmallVec<[u64; 2]> {
        let mut slot = self.slot();
        let mut need = SmallVec::new();
        if self.is_ended() {
            return need;
        }
        let extras = slot.extras.get_or_insert_with(Box::default);
        let progress = extras.progress.get_or_insert_with(Progress::default);
        progress.latest = (fraction, message);
        for sub in subs {
            if !progress.pending.contains(&sub) {
                progress.pending.push(sub);
                need.push(sub);
            }
        }
        need
    }

    /// Settles subscription `sub`'s progress marker: returns the latest
    /// report to deliver, or `None` if the task was stopped.
    pub(crate) fn settle_progress(&self, sub: u64) -> Option<(f32, String)> {
        let mut slot = self.slot();
        let progress = slot.extras.as_deref_mut()?.progress.as_mut()?;
        progress.pending.retain(|s| *s != sub);
        if self.is_stopped() {
            return None;
        }
        Some(progress.latest.clone())
    }

    /// Keeps the outcome for tasks added after this one while its event is
    /// pending (see [`Payload::Done`]).
    pub(crate) fn keep_outcome(&self, outcome: Outcome) {
        let order = end_order(&outcome);
        self.slot().work = Payload::Done(outcome, order);
    }

    /// Returns the kept outcome, stopped or not.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match &self.slot().work {
            Payload::Done(outcome, _) => Some(outcome.clone()),
            _ => None,
        }
    }

    /// Returns the kept outcome, for the event a subscription builds when
    /// it delivers it; `None` once the task was stopped.
    pub(crate) fn kept_outcome(&self) -> Option<Outcome> {
        self.outcome().filter(|_| !self.is_stopped())
    }

    /// Takes a kept outcome out of the cell (the task was stopped, or nobody
    /// will read it), for the caller to drop once it holds no lock: its
    /// result may hold the last reference to a value whose `Drop` is user
    /// code.
    #[must_use = "the outcome must be dropped after the locks are released"]
    pub(crate) fn clear_outcome(&self) -> Option<Outcome> {
        let mut slot = self.slot();
        match std::mem::replace(&mut slot.work, Payload::Empty) {
            Payload::Done(outcome, _) => Some(outcome),
            other => {
                slot.work = other;
                None
            }
        }
    }
}

/// Returns the position of an end among the ends that matter to tasks
/// added later (a `Kwargs` result to merge, a failure to inherit), so
/// those can be applied in the order the upstream tasks ended (SPEC 3: a
/// later-completing upstream wins); 0 for other results. Process-wide, and
/// not touched by the many tasks with other results.
fn end_order(outcome: &Outcome) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    if outcome.is_ordered() {
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    } else {
        0
    }
}

impl Outcome {
    /// Returns `true` if the order of this end among others matters to
    /// tasks added later: a `Kwargs` result (merged, later ends winning) or
    /// a failure (inherited, the first one winning). See [`end_order`].
    pub(crate) fn is_ordered(&self) -> bool {
        match self {
            Outcome::Completed(r) => r.is::<crate::kwargs::Kwargs>(),
            Outcome::Failed(_) => true,
        }
    }
}

/// How the task of state `s` ended, given its slot.
fn end_of(s: u64, slot: &Slot) -> HandleEnd {
    match (&slot.work, s & STOPPED != 0) {
        (Payload::Done(outcome, _), false) => HandleEnd::Outcome(outcome.clone()),
        _ => HandleEnd::Stopped,
    }
}

/// How an ended task was found by `promote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Stopped.
    Stopped,
    /// Finished, its event still pending: its outcome is kept.
    FinishedPending,
    /// Finished and delivered (or nobody subscribed).
    Delivered,
}

#[cfg(test)]
mod tests {
    use super::*;
    fn cell() -> Arc<TaskCell> {
        test_cell(1)
    }

    #[test]
    fn a_stopped_task_is_never_claimed_and_a_claimed_one_is_running() {
        let c = cell();
        assert!(c.claim());
        assert!(!c.claim(), "claimed once only");
        assert_eq!(
            c.stop().0,
            StopFound::Unfinished {
                claimed: true,
                in_ready: false
            }
        );
        assert_eq!(c.end_fast(0).0, FastEnd::Stopped);
        assert!(c.is_dead());
        let c = cell();
        assert_eq!(
            c.stop().0,
            StopFound::Unfinished {
                claimed: false,
                in_ready: false
            }
        );
        assert!(!c.claim());
        assert!(c.take_job().is_some(), "the stopper drops the job");
    }

    #[test]
    fn a_claim_from_the_ready_queue_clears_in_ready_whatever_it_finds() {
        let c = cell();
        c.set_in_ready(true);
        assert!(
            !c.claim(),
            "a plain claim refuses a task the locked queue holds"
        );
        assert!(c.claim_from_ready());
        assert!(!c.is_in_ready() && c.is_running());
        assert!(!c.claim_from_ready(), "claimed once only");
        let c = cell();
        c.set_in_ready(true);
        let _ = c.stop();
        c.set_in_ready(true); // as if the stop had not cleared it
        assert!(!c.claim_from_ready(), "a stopped task is never claimed");
        assert!(!c.is_in_ready());
    }

    #[test]
    fn finish_and_stop_exclude_each_other() {
        let c = cell();
        assert!(c.claim());
        assert_eq!(c.end_fast(0).0, FastEnd::Finished);
        assert!(c.is_dead(), "no queue holds its event");
        assert_eq!(c.stop().0, StopFound::NotLive);
        assert!(!c.is_stopped());
    }

    #[test]
    fn a_queued_copy_is_delivered_or_stopped_never_both() {
        let c = cell();
        assert!(c.claim());
        assert_eq!(c.end_fast(2).0, FastEnd::Finished);
        assert!(!c.is_dead());
        assert!(c.settle(), "first queue delivers");
        assert_eq!(
            c.stop().0,
            StopFound::Finished,
            "second queue still holds it"
        );
        assert!(!c.settle(), "second queue must discard");
        assert_eq!(c.stop().0, StopFound::NotLive);
    }

    #[test]
    fn promotion_only_before_the_end() {
        let c = cell();
        assert_eq!(c.promote(), Ok(()));
        assert_eq!(c.end_fast(1).0, FastEnd::Promoted);
        assert!(!c.has_pending(), "a declined end counts nothing");
        let done = Outcome::Completed(TaskResult::new(()));
        assert!(c.end_linked(&done, 0, false).is_some());
        assert!(c.end_linked(&done, 0, false).is_none(), "ends once");
        assert_eq!(cell().promote(), Ok(()));
        let d = cell();
        assert!(d.claim());
        assert_eq!(d.end_fast(1).0, FastEnd::Finished);
        assert_eq!(d.promote(), Err(Ended::FinishedPending));
        assert!(d.settle());
        assert_eq!(d.promote(), Err(Ended::Delivered));
        let e = cell();
        let _ = e.stop();
        assert_eq!(e.promote(), Err(Ended::Stopped));
    }
}
