//! `TaskManager`: the public handle, and `Shared`, what its clones and the
//! workers share.
//!
//! # How a task travels
//!
//! A task without upstream ("fast") gets its sequence number and a place in
//! the registry under the registry lock and, if its priority is 0, is
//! pushed onto the lock-free FIFO in the same critical section, so FIFO
//! order is id order. Other priorities go through a lock-free inbox that the
//! next holder of the scheduler lock moves into the locked ready queue
//! (every `Shared::lock` drains it first, so decisions under the lock see
//! every task added before); while the manager is paused, when no worker
//! picks, they go straight into the locked queue under the bare lock
//! (`queue_paused`). A worker takes its next task without any lock
//! while the locked queue holds nothing of priority 0 or more (the `hint`)
//! and the inbox is empty; otherwise under the bare lock if the inbox is
//! empty (a pick only removes a task: nothing to drain, dispatch or hand
//! on), or under `Shared::lock`. It ends the task with atomics on its cell
//! plus the short emit lock, queueing a 16-byte envelope (the cell and a
//! kind) from which the receiving subscription builds the `Event`.
//!
//! A task with upstream is added without the scheduler lock too: under the
//! registry lock it gets its sequence number and is linked to its upstream
//! tasks, each under that upstream cell's slot lock (`state::link`), before
//! `spawn` returns, so an upstream ending a moment later releases it with
//! its result. If every upstream had ended it is ready at once and takes
//! the same way as a fast task (FIFO or inbox). A task with edges (it has
//! upstream tasks, or one was added after it before it ended) ends under
//! the scheduler lock, which releases its downstream tasks into the locked
//! ready queue (`state.rs`). A worker that finds that lock taken queues its
//! end instead, and the lock's next holder decides it along with its own
//! (`Shared::end_in_graph_combined`).
//!
//! A worker decides its next task, or goes idle, before the events of the
//! task it just ended can be received, so an owner that reacts to an event
//! by adding a task finds that worker free (immediate start, below).
//!
//! # Why the ordering rules hold on the fast path
//!
//! - Priority: a worker pops the FIFO without the lock only when the hint
//!   says the locked queue's best priority is below 0; otherwise it takes
//!   the lock and, while the locked queue has nothing better than 0, pulls
//!   the FIFO's head into it, so the two are compared by (priority, id).
//!   The hint is stored before the scheduler lock is released, and before
//!   any condvar wait releases it ([`Locked::publish`]), so a pick that
//!   starts after an add returned sees it.
//! - FIFO within a priority: the FIFO is in id order (above); the locked
//!   queue orders by id within a priority.
//! - Pause: a worker that popped the FIFO claims the task, fences, then
//!   reads `processing`; if it is off, the task goes back to the locked
//!   queue (keeping its place by id) and does not start. `pause_processing`
//!   stores `processing` with `SeqCst`, so a claim that the read does not
//!   order after the pause came before it in the `SeqCst` order: the task
//!   started before the pause returned (loom model `loom_claim_vs_pause`).
//! - Inbox: a worker takes the lock-free path only if the inbox's count is
//!   zero and then the hint is below 0; a lock holder moving tasks from the
//!   inbox publishes the hint before lowering the count ([`Inbox`]).
//! - Immediate start: an add that finds an idle worker (or room for a new
//!   one) takes the scheduler lock and hands the best ready task directly
//!   to that worker, so the first task added to an idle pool is the first
//!   to run even if a better one follows a moment later.
//!
//! Two races between submitters and workers are closed by `SeqCst` pairs
//! (each side writes, fences, then reads what the other side writes):
//!
//! 1. A submitter pushes to the FIFO then reads `idle_workers`; a worker
//!    going idle publishes `idle_workers`, then looks for work under the
//!    lock. Either the worker sees the task, or the submitter sees the
//!    idle worker and dispatches.
//! 2. A worker lowers its `busy` count then reads `idle_waiters`;
//!    `wait_idle` raises `idle_waiters` then reads every worker's `busy`
//!    under the lock. (Each worker has its own count, so two workers never
//!    write the same cache line per task; a worker that picks its next
//!    task itself passes the count on without lowering it, see
//!    `Shared::run_task`.) A worker that makes
//!    the manager idle while someone waits takes the lock to wake them.
//!
//! # Lock order
//!
//! scheduler → registry, scheduler → emitter, scheduler → group table,
//! scheduler → a group's `held` queue, scheduler → a cell's slot,
//! emitter → a cell's slot, registry → a cell's slot (`state::link`); a
//! group's member list, a cell's slot and a worker's `Handoff` are leaves,
//! and no thread holds two slot locks at once. The
//! notifier, wakers and task closures' `Drop`s run after every lock is
//! released ([`Locked`]).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use crate::builder::Builder;
use crate::cell::{wake_all, FastEnd, Input, Outcome, TaskCell, Waiter};
use crate::cell::{CellParts, Job, MakeCell};
use crate::error::Error;
use crate::fifo::Fifo;
use crate::group::GroupTable;
use crate::handle::TaskHandle;
use crate::id::{Group, TaskId};
use crate::kwargs::Kwargs;
use crate::registry::Registry;
use crate::state::{self, Env, Ids, Linked, Mode, State, WorkerSlot};
use crate::stats::{Stats, TaskState};
use crate::subscription::{self, Emitter, Envelope, Subscription};
use crate::sync::{
    fence, Arc, AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Condvar, Mutex, MutexGuard, Ordering,
};
use crate::task::{TaskBuilder, TaskContext};
use crate::trace::TaskSpan;
use crate::unwind;
use crate::worker;

/// Process-wide counter that gives each manager its own id space (`std`'s
/// atomic even under loom, which cannot have statics).
static NEXT_MANAGER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The hint's value when the locked ready queue is empty.
const NOTHING_LOCKED: i64 = i64::MIN;

/// Stores `value` unless the atomic already holds it: the mirrors below are
/// written under the scheduler lock on every critical section, mostly with
/// the same value, and a `SeqCst` store is a full barrier.
fn store_if_changed<A: MirrorAtomic>(atomic: &A, value: A::Value) {
    if atomic.get() != value {
        atomic.set(value);
    }
}

/// The atomics [`store_if_changed`] works on.
trait MirrorAtomic {
    /// The value type.
    type Value: PartialEq + Copy;
    /// A relaxed load (only this lock holder writes it).
    fn get(&self) -> Self::Value;
    /// A `SeqCst` store.
    fn set(&self, v: Self::Value);
}

impl MirrorAtomic for AtomicUsize {
    type Value = usize;
    fn get(&self) -> usize {
        self.load(Ordering::Relaxed)
    }
    fn set(&self, v: usize) {
        self.store(v, Ordering::SeqCst);
    }
}

impl MirrorAtomic for AtomicI64 {
    type Value = i64;
    fn get(&self) -> i64 {
        self.load(Ordering::Relaxed)
    }
    fn set(&self, v: i64) {
        self.store(v, Ordering::SeqCst);
    }
}

/// Jobs and outcomes to drop, and waiters to wake, once the lock is
/// released (a job's captures' `Drop`, a result's `Drop` and a waker are
/// user code).
#[derive(Default)]
pub(crate) struct Garbage(Vec<Job>, Vec<Waiter>, Vec<Outcome>);

impl Drop for Garbage {
    #[inline]
    fn drop(&mut self) {
        // Empty on almost every release of the lock.
        if !self.0.is_empty() || !self.1.is_empty() || !self.2.is_empty() {
            self.dispose();
        }
    }
}

impl Garbage {
    /// Drops the jobs and outcomes and wakes the waiters.
    #[cold]
    fn dispose(&mut self) {
        unwind::drop_each(self.0.drain(..));
        unwind::drop_each(self.2.drain(..));
        if !self.1.is_empty() {
            let wakes = std::mem::take(&mut self.1);
            unwind::contain(move || wake_all(wakes));
        }
    }
}

/// Drops the input a task ran with (no lock held). Kwargs and results
/// other than primitives are user values, which a panicking `Drop` must not
/// take the worker down with; a graph task's usual input, primitive
/// upstream results only, needs no containment.
#[inline(never)]
fn drop_input(input: Input) {
    if input.holds_user_values() {
        unwind::contain(move || drop(input));
    }
}

/// Calls the notifier, if one is owed, after every lock is released.
pub(crate) struct Notify<'a>(Option<&'a Mutex<Emitter>>);

impl Drop for Notify<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(emitter) = self.0 {
            notify_if_due(emitter);
        }
    }
}

/// Calls the notifier if an event landed in an empty queue (no lock held).
#[cold]
fn notify_if_due(emitter: &Mutex<Emitter>) {
    let notifier = emitter.lock().take_notify();
    if let Some(n) = notifier {
        // A panicking notifier must not take the worker down (SPEC 7).
        unwind::contain(|| n());
    }
}

/// Events decided under the scheduler lock, queued just after it is
/// released. The emit lock is taken before the scheduler lock is released
/// (the events move into `Emitter::deferred`) and held until they are
/// queued, so events enter the queues in the order of the critical sections
/// that decided them (state invariant 4) and with the subscriber list their
/// pending counts were made for (emitter invariant 1), while the next
/// critical section can already start: queueing an event may wake the
/// owner, a system call.
struct Announce<'a>(Option<MutexGuard<'a, Emitter>>);

impl Drop for Announce<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() {
            self.announce();
        }
    }
}

impl Announce<'_> {
    /// Queues the deferred events, then calls the notifier if one is due.
    fn announce(&mut self) {
        if let Some(mut em) = self.0.take() {
            let mut ends = std::mem::take(&mut em.deferred);
            for end in ends.drain(..) {
                end.announce(&mut em);
            }
            em.deferred = ends; // keeps its capacity

            // The notifier, if an event landed in an empty queue, once the
            // emit lock is released (it is user code).
            let notifier = em.take_notify();
            drop(em);
            if let Some(n) = notifier {
                // A panicking notifier must not take the worker down (SPEC 7).
                unwind::contain(|| n());
            }
        }
    }
}

/// The scheduler lock, held. Dropping it publishes the hint and takes the
/// emit lock if events are owed, releases the lock, queues the events and
/// calls the notifier if one is due, then drops collected jobs and wakes
/// waiters (fields drop in declaration order).
pub(crate) struct Locked<'a> {
    /// The lock itself.
    pub(crate) guard: MutexGuard<'a, State>,
    /// Events to queue once the lock is released.
    announce: Announce<'a>,
    /// Where the hint goes on release.
    hint: &'a AtomicI64,
    /// Jobs to drop unlocked.
    garbage: Garbage,
    /// Notifier check to run unlocked.
    notify: Notify<'a>,
    /// The emitter, for `emitted`.
    emitter: &'a Mutex<Emitter>,
}

impl Locked<'_> {
    /// Queues jobs to be dropped after unlocking.
    pub(crate) fn discard(&mut self, jobs: impl IntoIterator<Item = Job>) {
        self.garbage.0.extend(jobs);
    }

    /// [`discard`](Self::discard) for a vector, which becomes the garbage
    /// list itself if that is empty (a stop of 100,000 tasks copies no
    /// jobs).
    pub(crate) fn discard_all(&mut self, jobs: Vec<Job>) {
        if self.garbage.0.is_empty() {
            self.garbage.0 = jobs;
        } else {
            self.garbage.0.extend(jobs);
        }
    }

    /// Returns `true` if work is owed for when the lock is released.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.garbage.0.is_empty()
            || !self.garbage.2.is_empty()
            || !self.guard.discarded.is_empty()
            || self.notify.0.is_some()
            || !self.guard.out.is_empty()
    }
}

impl Locked<'_> {
    /// Makes what this critical section decided visible while the lock is
    /// still held: the hint, then the events, queued while the subscriber
    /// list cannot change (emitter invariant 1). Runs before every condvar
    /// wait (which releases the lock); a release does the same, except that
    /// the events are queued just after it ([`Announce`]).
    pub(crate) fn publish(&mut self) {
        store_if_changed(self.hint, self.guard.best_priority());
        self.garbage.1.append(&mut self.guard.wakes);
        self.garbage.2.append(&mut self.guard.discarded);
        if !self.guard.out.is_empty() {
            let mut taken = None;
            let em = match self.announce.0.as_mut() {
                Some(held) => held,
                None => taken.insert(self.emitter.lock()),
            };
            for end in self.guard.out.drain(..) {
                end.announce(em);
            }
            self.notify.0 = Some(self.emitter);
        }
    }

    /// Takes the emit lock now, for a critical section that ends tasks with
    /// graph nodes, and holds it until their events are queued. An end's
    /// order (`cell::end_order`: which `Kwargs` result wins a clash, which
    /// failure a task added later inherits) is then decided under the same
    /// hold of the emit lock as its event's place in the queues, as on the
    /// fast path. Without it, a fast task could end (order and event) between
    /// a graph end's order and its event, and a task linked meanwhile to
    /// both would merge them in the opposite order to their events.
    pub(crate) fn hold_emit(&mut self) {
        if self.announce.0.is_none() {
            self.announce.0 = Some(self.emitter.lock());
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Before the guard is released (fields drop after this body): the
        // hint, then the emit lock, which `announce` holds while it queues
        // the events after the guard is released.
        store_if_changed(self.hint, self.guard.best_priority());
        if !self.guard.wakes.is_empty() {
            self.garbage.1.append(&mut self.guard.wakes);
        }
        if !self.guard.discarded.is_empty() {
            self.garbage.2.append(&mut self.guard.discarded);
        }
        if !self.guard.out.is_empty() {
            self.defer_events();
        }
    }
}

impl Locked<'_> {
    /// Moves the ends decided here to the emit lock, which `announce` holds
    /// until it has queued their events (and called the notifier).
    fn defer_events(&mut self) {
        // Held already if `hold_emit` was called.
        let mut em = match self.announce.0.take() {
            Some(held) => held,
            None => self.emitter.lock(),
        };
        em.deferred.extend(self.guard.out.drain(..));
        self.announce.0 = Some(em);
    }
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

/// Ready tasks of other priorities than 0 on their way to the locked
/// ready queue.
///
/// A worker picks from the FIFO without the lock only if the inbox is
/// empty and the hint says the locked queue has nothing of priority 0 or
/// more. A lock holder that moves a task from the inbox to the locked queue
/// publishes the hint before `len` stops counting the task, so a worker
/// that sees `len` at 0 (both `SeqCst`) also sees the hint that accounts
/// for it; `queue.is_empty()` alone would let a worker slip between the
/// move and the hint and run a priority-0 task ahead of a better one.
#[derive(Default)]
struct Inbox {
    /// The tasks, oldest first.
    queue: SegQueue<Arc<TaskCell>>,
    /// Tasks pushed (counted before the push) and not yet moved to the
    /// locked queue with the hint published.
    len: AtomicUsize,
}

impl Inbox {
    /// Adds a ready task.
    fn push(&self, cell: Arc<TaskCell>) {
        self.len.fetch_add(1, Ordering::SeqCst);
        self.queue.push(cell);
    }

    /// Returns `true` if no task is on its way to the locked queue.
    fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }
}

/// A worker's next task, if any, and whether the `busy` count of the task
/// it finished passes to it (see `Shared::run_task`).
struct Next {
    /// The claimed task.
    task: Option<Arc<TaskCell>>,
    /// `true` if this worker picked it under the finished task's count;
    /// `false` if the dispatcher assigned it with a count of its own.
    passes_busy: bool,
}

/// How many times a worker whose graph end is queued looks at the taken
/// scheduler lock, spinning briefly in between, before it yields its core
/// between looks (a decision takes a critical section, about a
/// microsecond).
const COMBINE_SPINS: u32 = 16;

/// How many looks, counting the spinning ones, before the worker waits for
/// the lock like any other thread.
const COMBINE_YIELDS: u32 = 64;

/// What `end_in_graph` hands back to the worker that ran the task: its
/// next task, and the cell if the worker still needs it.
type Ended = (Next, Option<Arc<TaskCell>>);

/// A graph end queued for whoever holds the scheduler lock next (see
/// [`Shared::end_in_graph_combined`]).
struct QueuedEnd {
    /// The task, run by worker `w`.
    cell: Arc<TaskCell>,
    /// How it ended.
    outcome: Outcome,
    /// The worker that ran it, which waits for `reply`.
    w: usize,
    /// Where the decision goes.
    reply: Arc<Handoff>,
}

/// A worker's mailbox for the decision on its queued graph end: written
/// once per end by the worker that decided it, after the end's events are
/// queued; read by the worker that ran the task, which waits for it.
#[derive(Default)]
pub(crate) struct Handoff {
    /// `true` while `slot` holds a decision not yet taken.
    ready: AtomicBool,
    /// The decision.
    slot: Mutex<Option<Ended>>,
}

impl Handoff {
    /// Delivers a decision (the owner of the mailbox has one end queued at
    /// most, so the slot is empty).
    fn put(&self, ended: Ended) {
        *self.slot.lock() = Some(ended);
        self.ready.store(true, Ordering::Release);
    }

    /// Takes the decision, if it arrived.
    fn take(&self) -> Option<Ended> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        self.ready.store(false, Ordering::Relaxed);
        self.slot.lock().take()
    }
}

/// What all clones of a manager and its workers share.
///
/// # Layout
///
/// The owner adds tasks (registry lock, sequence counter, the FIFO's back,
/// the inbox) while the workers end them (scheduler lock, emit lock, the
/// hint, the FIFO's front). Each of those sits on cache lines of its own
/// (`CachePadded`), so that one side's writes do not invalidate the line
/// the other side is about to use. The FIFO's two indices share a line
/// (crossbeam-deque's layout; a push reads the front anyway, to see whether
/// the ring is full).
/// Packed together, the registry's lock shared a line with the emit lock
/// and the sequence counter one with the hint, and adding a task missed on
/// lines that a worker ending another had just written (BENCHMARKS.md,
/// item 35). The other fields are read far more often than written.
pub(crate) struct Shared {
    /// The scheduler state: graph, locked ready queue, workers.
    state: CachePadded<Mutex<State>>,
    /// Ready fast tasks of priority 0, in id order (module docs).
    fifo: Fifo,
    /// Ready tasks of other priorities than 0, waiting for the scheduler
    /// lock to enter the locked ready queue (module docs).
    inbox: CachePadded<Inbox>,
    /// Ends of graph tasks waiting for the scheduler lock, decided by the
    /// next worker that holds it (see `end_in_graph_combined`).
    ends: SegQueue<QueuedEnd>,
    /// Fast tasks by id.
    registry: CachePadded<Mutex<Registry>>,
    /// Subscriptions and notifier: the emit lock.
    emitter: CachePadded<Mutex<Emitter>>,
    /// Groups in use.
    groups: GroupTable,
    /// Best priority in the locked ready queue, or `NOTHING_LOCKED`.
    hint: CachePadded<AtomicI64>,
    /// Mirror of `State::idle.len()` (race 1).
    idle_workers: CachePadded<AtomicUsize>,
    /// Mirror of "fewer workers than `max_threads`".
    can_spawn: AtomicBool,
    /// Mirror of `mode == Processing`.
    processing: AtomicBool,

    /// Threads in `wait_idle` (race 2).
    idle_waiters: AtomicUsize,
    /// Set by shut-down; subscriptions check it before delivering.
    pub(crate) closed: Arc<AtomicBool>,
    /// Next task sequence number; written under the registry lock only
    /// (`issue_seq`).
    next_seq: CachePadded<AtomicU64>,
    /// Next number handed out by `next_group_id`.
    next_group: AtomicU64,
    /// This manager's process-unique id (part of every `TaskId`).
    pub(crate) manager_id: u64,
    /// Signalled when the manager may have become idle.
    idle_cv: Condvar,
    /// Most tasks running at once (`set_max_threads` changes it).
    max_threads: AtomicUsize,
    /// Mirror of `State::alive`.
    alive: AtomicUsize,
    /// Worker thread name prefix.
    thread_name: String,
    /// Makes each worker's state (`Builder::worker_state`).
    pub(crate) worker_state: Option<crate::worker_state::Factory>,
}

impl Shared {
    /// Takes the scheduler lock and applies the inbox, so that every
    /// decision made under the lock sees every task added before it.
    pub(crate) fn lock(&self) -> Locked<'_> {
        self.locked(self.state.lock())
    }

    /// [`lock`](Self::lock) if the scheduler lock is free now.
    fn try_lock(&self) -> Option<Locked<'_>> {
        self.state.try_lock().map(|guard| self.locked(guard))
    }

    /// Wraps the held scheduler lock and applies the inbox (see `lock`).
    fn locked<'a>(&'a self, guard: MutexGuard<'a, State>) -> Locked<'a> {
        let mut st = Locked {
            guard,
            announce: Announce(None),
            hint: &self.hint,
            garbage: Garbage::default(),
            notify: Notify(None),
            emitter: &self.emitter,
        };
        self.drain_inbox(&mut st);
        st
    }

    /// The other locks a graph transition needs.
    pub(crate) fn env(&self) -> Env<'_> {
        Env {
            registry: &self.registry,
        }
    }

    /// Issues the next sequence number. Called under the registry lock,
    /// which every writer of `next_seq` holds: a load and a store do what
    /// an atomic increment would, without a locked instruction (a task's
    /// add makes about twenty, each waiting for the stores before it).
    /// `Release` pairs with the `Acquire` load that checks upstream ids
    /// without the lock.
    fn issue_seq(&self, _locked: &mut Registry) -> u64 {
        let seq = self.next_seq.load(Ordering::Relaxed);
        self.next_seq.store(seq + 1, Ordering::Release);
        seq
    }

    /// Returns `true` if an added task could start at once.
    fn wants_dispatch(&self) -> bool {
        self.processing.load(Ordering::SeqCst)
            && (self.idle_workers.load(Ordering::SeqCst) > 0
                || self.can_spawn.load(Ordering::SeqCst))
    }

    /// Adds a task; see `TaskBuilder::spawn`.
    pub(crate) fn submit(
        self: &Arc<Self>,
        make: MakeCell<'_>,
        priority: i32,
        group: Option<Group>,
        after: SmallVec<[TaskId; 2]>,
        kwargs: Option<Kwargs>,
    ) -> Result<(TaskId, Arc<TaskCell>), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if after.is_empty() {
            return Ok(self.submit_fast(make, priority, group, kwargs));
        }
        let issued = self.next_seq.load(Ordering::Acquire);
        let mut upstream = Ids::new();
        for id in after {
            if id.manager != self.manager_id || id.seq >= issued {
                return Err(Error::UnknownTask { id });
            }
            upstream.push(id.seq);
        }
        upstream.sort_unstable();
        upstream.dedup();
        let group = group.map(|g| self.groups.join(g));
        let node = state::new_node(kwargs, &upstream);
        // Without the scheduler lock (module docs): the edges exist before
        // `spawn` returns, so an upstream ending a moment later releases
        // this task with its result.
        let (cell, linked, released) = {
            let mut registry = self.registry.lock();
            let seq = self.issue_seq(&mut registry);
            let cell = make(CellParts {
                seq,
                group,
                input: None,
                node: Some(node),
            });
            let released = registry.push(Arc::clone(&cell));
            let linked = state::link(&mut registry, &cell, &upstream);
            if matches!(linked, Linked::Ready) && priority == 0 {
                // Under the registry lock, like a fast task: FIFO order is id order.
                registry.fifo.push(Arc::clone(&cell));
            }
            (cell, linked, released)
        };
        GroupTable::add_member(&cell);
        match linked {
            Linked::Ready => {
                if priority != 0 {
                    self.inbox.push(Arc::clone(&cell));
                }
                self.after_inbox_push();
            }
            Linked::Blocked => {}
            Linked::Failed(failure) => {
                let mut st = self.lock();
                st.hold_emit();
                let jobs = st.fail_on_arrival(&cell, failure);
                st.discard(jobs);
            }
        }
        // Registry invariant 3: after every lock, contained.
        released.drop_contained();
        Ok((
            TaskId {
                seq: cell.seq,
                manager: self.manager_id,
            },
            cell,
        ))
    }

    /// After a push to the inbox: takes the lock (which drains the inbox)
    /// if the change may start a task at once (race 1).
    fn after_inbox_push(self: &Arc<Self>) {
        fence(Ordering::SeqCst); // race 1
        if self.wants_dispatch() {
            let mut st = self.lock();
            self.dispatch(&mut st);
        }
    }

    /// Applies the inbox's changes, in order (lock held), then publishes
    /// the hint before the inbox stops counting them (see [`Inbox`]).
    fn drain_inbox(&self, st: &mut Locked<'_>) {
        if self.inbox.is_empty() {
            return; // (a push counts itself first)
        }
        let mut drained = 0;
        while let Some(cell) = self.inbox.queue.pop() {
            drained += 1;
            if st.mode == Mode::ShutDown {
                // Added while shutting down: stopped before it ran; its job
                // is dropped unlocked.
                let (_, wakes) = cell.stop();
                st.wakes.extend(wakes);
                st.discard(cell.take_job());
            } else {
                st.push_arrival(cell);
            }
        }
        if drained > 0 {
            store_if_changed(&*self.hint, st.guard.best_priority());
            self.inbox.len.fetch_sub(drained, Ordering::SeqCst);
        }
    }

    /// Adds a task without upstream (module docs).
    fn submit_fast(
        self: &Arc<Self>,
        make: MakeCell<'_>,
        priority: i32,
        group: Option<Group>,
        kwargs: Option<Kwargs>,
    ) -> (TaskId, Arc<TaskCell>) {
        let group = group.map(|g| self.groups.join(g));
        let input = kwargs.map(|kwargs| {
            Box::new(Input {
                kwargs,
                upstream: SmallVec::new(),
            })
        });
        let (cell, released) = {
            let mut registry = self.registry.lock();
            let seq = self.issue_seq(&mut registry);
            let cell = make(CellParts {
                seq,
                group,
                input,
                node: None,
            });
            let released = registry.push(Arc::clone(&cell));
            if priority == 0 {
                registry.fifo.push(Arc::clone(&cell));
            }
            (cell, released)
        };
        // Registry invariant 3: after every lock, contained.
        released.drop_contained();
        GroupTable::add_member(&cell);
        let id = TaskId {
            seq: cell.seq,
            manager: self.manager_id,
        };
        if priority != 0 && !self.processing.load(Ordering::SeqCst) && self.queue_paused(&cell) {
            return (id, cell);
        }
        if priority != 0 {
            self.inbox.push(Arc::clone(&cell));
        }
        self.after_inbox_push();
        (id, cell)
    }

    /// Queues a ready task straight into the locked queue while the
    /// manager is paused: no worker picks then, so the bare scheduler lock
    /// is free, and this is cheaper than the inbox and its later drain.
    /// Returns `false`, doing nothing, if the manager is not paused under
    /// the lock (the caller takes the inbox path, which handles every mode).
    fn queue_paused(&self, cell: &Arc<TaskCell>) -> bool {
        let mut guard = self.state.lock();
        if guard.mode != Mode::Paused {
            return false;
        }
        // Everything added before is applied first, as by `lock()` (the
        // ready queue orders by priority and id whatever the arrival order,
        // but a stop or `set_priority` of an inbox task must not meet it
        // twice).
        if !self.inbox.is_empty() {
            return false;
        }
        // (A stop that came first took the scheduler lock and found it
        // queued nowhere; it must not be queued now.)
        if guard.push_arrival(Arc::clone(cell)) {
            store_if_changed(&*self.hint, guard.best_priority());
        }
        true
    }

    /// Hands ready tasks to idle workers, starting workers as needed, while
    /// processing is on. A worker is woken only with a task in hand.
    pub(crate) fn dispatch(self: &Arc<Self>, st: &mut Locked<'_>) {
        if st.mode == Mode::Processing {
            let max = self.max_threads.load(Ordering::SeqCst);
            while !st.idle.is_empty() || st.alive < max {
                let Some(cell) = st.pop_ready(&self.fifo) else {
                    break;
                };
                let w = match st.idle.pop() {
                    Some(w) => w,
                    None => match self.spawn_worker(st) {
                        Some(w) => w,
                        None => {
                            st.unclaim(cell);
                            break;
                        }
                    },
                };
                let slot = &mut st.workers[w];
                // Counted busy before the lock is released (race 2).
                slot.busy.fetch_add(1, Ordering::SeqCst);
                slot.idle = false;
                slot.assigned = Some(cell);
                slot.signal.notify_one();
            }
        }
        store_if_changed(&*self.idle_workers, st.idle.len());
        let max = self.max_threads.load(Ordering::SeqCst);
        if self.can_spawn.load(Ordering::Relaxed) != (st.alive < max) {
            self.can_spawn.store(st.alive < max, Ordering::SeqCst);
        }
        store_if_changed(&self.alive, st.alive);
    }

    /// Starts a worker thread for slot `workers.len()`; returns its index.
    fn spawn_worker(self: &Arc<Self>, st: &mut Locked<'_>) -> Option<usize> {
        let w = st.workers.len();
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("{}-{}", self.thread_name, w))
            .spawn(move || worker::run(shared, w));
        match spawned {
            Ok(handle) => {
                st.workers.push(WorkerSlot {
                    signal: Arc::new(Condvar::new()),
                    assigned: None,
                    idle: false,
                    retired: false,
                    busy: Arc::new(AtomicUsize::new(0)),
                });
                st.alive += 1;
                st.handles.push(handle);
                Some(w)
            }
            // Tasks stay queued; the next add or finish tries again.
            Err(_) => None,
        }
    }

    /// Marks worker `w` idle, then gives it work if any arrived meanwhile
    /// (race 1).
    pub(crate) fn go_idle(self: &Arc<Self>, st: &mut Locked<'_>, w: usize) {
        if st.alive > self.max_threads.load(Ordering::SeqCst) {
            // The pool shrank: this worker exits instead of waiting.
            st.workers[w].retired = true;
            st.alive -= 1;
            self.alive.store(st.alive, Ordering::SeqCst);
            return;
        }
        st.workers[w].idle = true;
        st.idle.push(w);
        self.idle_workers.store(st.idle.len(), Ordering::SeqCst);
        fence(Ordering::SeqCst); // race 1
        self.drain_inbox(st);
        self.dispatch(st);
    }

    /// Takes dead cells out of the registry (registry lock only), for an
    /// idle worker about to sleep to drop with no lock held, contained
    /// (registry invariant 3): a burst of tasks followed by silence does
    /// not keep their memory.
    pub(crate) fn take_dead(&self) -> Vec<Arc<TaskCell>> {
        self.registry.lock().take_dead()
    }

    /// Returns `true` if no task is running and none can start.
    fn is_idle(&self, st: &State) -> bool {
        st.workers
            .iter()
            .all(|w| w.busy.load(Ordering::SeqCst) == 0)
            && (st.mode != Mode::Processing
                || (self.fifo.is_empty() && st.queued == 0 && self.inbox.is_empty()))
    }

    /// Takes the next task for a worker that is finishing one, without
    /// the lock when it can (module docs). Returns a claimed cell. The
    /// worker's `busy` count, raised for the task it is finishing, covers
    /// the pick, and passes to the picked task (race 2): see `run_task`.
    pub(crate) fn next_task(self: &Arc<Self>) -> Option<Arc<TaskCell>> {
        if !self.processing.load(Ordering::SeqCst)
            || self.alive.load(Ordering::SeqCst) > self.max_threads.load(Ordering::SeqCst)
        {
            // Paused, or the pool shrank: go through `go_idle`.
            return None;
        }
        self.pick()
    }

    /// The pick of `next_task`.
    fn pick(self: &Arc<Self>) -> Option<Arc<TaskCell>> {
        loop {
            // The inbox first, then the hint (see `Inbox`).
            let inbox_empty = self.inbox.is_empty();
            let hint = self.hint.load(Ordering::SeqCst);
            if hint < 0 && inbox_empty {
                if let Some(cell) = self.fifo.pop() {
                    if !cell.claim() {
                        continue; // stopped while queued, or moved by `set_priority`
                    }
                    // Claimed, then `processing` read: if a pause's store came
                    // first, this sees it and the task does not start; if not,
                    // the task was claimed (started) before the pause returned.
                    fence(Ordering::SeqCst);
                    if !self.processing.load(Ordering::SeqCst) {
                        self.unclaim_paused(cell);
                        return None;
                    }
                    if cell.group.as_ref().is_none_or(|g| g.admit(&cell)) {
                        return Some(cell);
                    }
                    continue; // held by its group's limit
                }
                if hint == NOTHING_LOCKED && self.inbox.is_empty() {
                    return None;
                }
            }
            // The common case takes the bare lock. With the inbox empty
            // (read under the lock; a push counts itself first) there is
            // nothing to apply, and a pick only removes a task: it queues
            // no event, drops no job, wakes nobody, and needs no dispatch
            // (every critical section leaves no idle worker beside a task
            // it could run: race 1). Only the hint changes, published
            // before the lock is released.
            {
                let mut guard = self.state.lock();
                if guard.mode != Mode::Processing {
                    return None;
                }
                if self.inbox.is_empty() {
                    let picked = guard.pop_ready(&self.fifo);
                    store_if_changed(&*self.hint, guard.best_priority());
                    return picked;
                }
            }
            let mut st = self.lock();
            if st.mode != Mode::Processing {
                return None;
            }
            let picked = st.pop_ready(&self.fifo);
            self.dispatch(&mut st);
            return picked;
        }
    }

    /// Puts back a task a worker claimed from the FIFO as the manager was
    /// paused: it keeps its place, by id, in the locked queue. Under the
    /// lock, so that a stop that saw it claimed (and so left its job to the
    /// worker) is seen here, and the job dropped.
    fn unclaim_paused(&self, cell: Arc<TaskCell>) {
        let mut st = self.lock();
        cell.unclaim();
        if cell.is_stopped() || st.mode == Mode::ShutDown {
            st.discard(cell.take_job());
        } else {
            st.push_ready(cell);
        }
    }

    /// Records that a worker stopped picking or running; wakes `wait_idle`
    /// callers if that made the manager idle (race 2).
    pub(crate) fn busy_done(&self, busy: &AtomicUsize) {
        if busy.fetch_sub(1, Ordering::SeqCst) == 1 && self.idle_waiters.load(Ordering::SeqCst) > 0
        {
            let _st = self.state.lock();
            self.idle_cv.notify_all();
        }
    }

    /// Wakes `wait_idle` callers if the manager is idle (lock held).
    fn wake_idle_waiters(&self, st: &State) {
        if self.idle_waiters.load(Ordering::SeqCst) > 0 && self.is_idle(st) {
            self.idle_cv.notify_all();
        }
    }

    /// Runs claimed task `cell` on worker `w` and ends it. Returns the
    /// worker's next task, or `None` once the worker is registered idle.
    ///
    /// The worker settles what it does next *before* the task's events can
    /// be received: an owner that reacts to a `Completed` by adding a task
    /// must find this worker either busy with its next task or idle, never
    /// in between (SPEC 2: a task added while a worker is free starts at
    /// once, ahead of a better task added a moment later).
    ///
    /// The worker's `busy` count is 1 from the hand-out of `cell` (or the
    /// pick that took it) until its events are queued. A next task this
    /// worker picks itself is picked under that count, which then passes to
    /// it without being lowered and raised again; a task the dispatcher
    /// assigns while the worker goes idle comes with its own count, and the
    /// finished task's count is then dropped once its events are queued.
    pub(crate) fn run_task(
        self: &Arc<Self>,
        cell: Arc<TaskCell>,
        w: usize,
        busy: &AtomicUsize,
        handoff: &Arc<Handoff>,
    ) -> Option<Arc<TaskCell>> {
        // A task without input needs no slot lock to start (cell invariant 9);
        // one with downstream tasks takes it to prefetch their cells, as
        // `take_work` does for a task with input.
        let input = if cell.has_input() {
            match cell.take_work() {
                Some(input) => input,
                None => return self.not_started(&cell, w, busy),
            }
        } else {
            if cell.is_promoted() {
                cell.prefetch_downstream();
            }
            None
        };
        let id = TaskId {
            seq: cell.seq,
            manager: self.manager_id,
        };
        let span = TaskSpan::start(&cell);
        // The context holds the worker's reference while the task runs and
        // gives it back (no count changes on the cell's `Arc`).
        let ctx = TaskContext::new(id, cell, input);
        let ran = span.run(|| match ctx.cell().run_work(&ctx) {
            Some(Ok(result)) => Some(Outcome::Completed(result)),
            Some(Err(failure)) => Some(Outcome::Failed(Arc::new(failure))),
            None => None,
        });
        let (cell, input) = ctx.into_parts();
        if let Some(input) = input {
            drop_input(input);
        }
        let Some(outcome) = ran else {
            return self.not_started(&cell, w, busy);
        };
        span.end(&outcome, cell.is_stopped());
        let (next, cell) = if cell.is_promoted() {
            self.end_in_graph_combined(cell, outcome, w, handoff)
        } else {
            let next = self.next_or_idle(w);
            (next, self.end_fast(cell, outcome))
        };
        if let Some(cell) = cell {
            self.release_group_slot(&cell);
        }
        // After the events are queued: `wait_idle` must not see this worker
        // idle before its task's events can be received.
        if !next.passes_busy {
            self.busy_done(busy);
        }
        next.task
    }

    /// A claimed task whose work someone else took before it started
    /// (it was ended meanwhile): nothing to run or announce.
    fn not_started(
        self: &Arc<Self>,
        cell: &Arc<TaskCell>,
        w: usize,
        busy: &AtomicUsize,
    ) -> Option<Arc<TaskCell>> {
        self.release_group_slot(cell);
        let next = self.next_or_idle(w);
        if !next.passes_busy {
            self.busy_done(busy);
        }
        next.task
    }

    /// Takes the worker's next task, or registers it idle (taking a task
    /// the dispatcher hands it while doing so).
    fn next_or_idle(self: &Arc<Self>, w: usize) -> Next {
        if let Some(task) = self.next_task() {
            return Next {
                task: Some(task),
                passes_busy: true,
            };
        }
        let mut st = self.lock();
        self.go_idle(&mut st, w);
        Next {
            task: st.workers[w].assigned.take(),
            passes_busy: false,
        }
    }

    /// Ends a fast task with atomics and the emit lock; hands it to the
    /// graph if it became an upstream while it ran. Returns the cell unless
    /// it went into the event queue (only a cell without a group does: the
    /// caller needs nothing else from it).
    fn end_fast(self: &Arc<Self>, cell: Arc<TaskCell>, outcome: Outcome) -> Option<Arc<TaskCell>> {
        let mut em = self.emitter.lock();
        let n = em.fan_out();
        // Before FINISHED is visible: handles, and a task added after this
        // one, read it (cell invariants 1 and 8, `State::insert`).
        cell.keep_outcome(outcome);
        let (ended, wakes) = cell.end_fast(n);
        match ended {
            FastEnd::Finished => {
                let kept = match &cell.group {
                    Some(g) => {
                        // Before the event is visible (group invariant 1).
                        let last = g.end_member();
                        if n > 0 {
                            em.emit(Envelope::terminal(Arc::clone(&cell)));
                        }
                        if last && n > 0 {
                            em.emit(Envelope::group_finished(&cell));
                        }
                        Some(cell)
                    }
                    None if n > 0 => {
                        em.emit(Envelope::terminal(cell));
                        None
                    }
                    None => Some(cell),
                };
                let notifier = em.take_notify();
                drop(em);
                wake_all(wakes);
                if let Some(n) = notifier {
                    unwind::contain(|| n());
                }
                kept
            }
            FastEnd::Stopped => {
                drop(em);
                // No lock held: its `Drop` is user code, contained.
                unwind::drop_each(cell.clear_outcome());
                Some(cell)
            }
            FastEnd::Promoted => {
                drop(em);
                // Became an upstream while running: end it in the graph,
                // with the outcome it kept.
                let outcome = cell.outcome().expect("kept above; only a stop clears it");
                let (next, cell) = self.end_in_graph(cell, outcome, None);
                debug_assert!(next.task.is_none());
                cell
            }
        }
    }

    /// Ends a task with a graph node under the scheduler lock. With `w`,
    /// worker `w` also takes its next task (or goes idle) in the same
    /// critical section, before the events are queued (see `run_task`), so
    /// a released downstream task runs on the worker that released it.
    ///
    /// Returns the cell if the caller still needs it (a task in a group,
    /// for its group slot). Otherwise this thread's reference is dropped
    /// before the lock is released, so that queueing the event is the last
    /// this thread does with the cell (see `Outgoing::announce`).
    fn end_in_graph(
        self: &Arc<Self>,
        cell: Arc<TaskCell>,
        outcome: Outcome,
        worker: Option<usize>,
    ) -> Ended {
        let mut st = self.lock();
        let ended = self.end_one(&mut st, cell, outcome, worker);
        self.dispatch(&mut st);
        ended
    }

    /// Ends graph task `cell`, run by worker `w`, as [`end_in_graph`]
    /// does, combined with other workers' ends while the scheduler lock is
    /// taken.
    ///
    /// Two workers ending graph tasks back to back would otherwise take
    /// turns on the scheduler lock, each pulling the lock, the ready queue
    /// and the cells the other just wrote across to its own core, and
    /// waiting (spinning, then parking) while the other holds it. Instead,
    /// a worker that finds the lock taken queues its end in `ends` and
    /// waits for the decision in its `handoff`; whoever takes the lock for
    /// an end next decides every queued end in its critical section, one
    /// after the other, exactly as if each worker had taken the lock in
    /// turn: the end's events, then that worker's next task or its going
    /// idle, all decided before the section's events are queued (the
    /// immediate-start rule, see `run_task`).
    ///
    /// Invariants: a queued end is popped only under the scheduler lock,
    /// and whoever pops it decides it in that critical section and delivers
    /// the decision once the section's events are queued, so the waiting
    /// worker lowers its `busy` count (when it has no next task) only after
    /// its task's events can be received (race 2). The waiting worker tries
    /// the lock itself until the decision arrives, so an end queued just
    /// after a decider's last pop is decided by the next holder at the
    /// latest, which is then the waiting worker.
    ///
    /// [`end_in_graph`]: Self::end_in_graph
    fn end_in_graph_combined(
        self: &Arc<Self>,
        cell: Arc<TaskCell>,
        outcome: Outcome,
        w: usize,
        handoff: &Arc<Handoff>,
    ) -> Ended {
        if let Some(st) = self.try_lock() {
            return self
                .decide_ends(st, Some((cell, outcome, w)), handoff)
                .expect("its own end is decided first");
        }
        self.ends.push(QueuedEnd {
            cell,
            outcome,
            w,
            reply: Arc::clone(handoff),
        });
        let mut tries = 0u32;
        loop {
            if let Some(ended) = handoff.take() {
                return ended;
            }
            tries += 1;
            // Look before trying: a failed try writes the lock's line,
            // which its holder needs back to release it.
            let st = if !self.state.is_locked() {
                self.try_lock()
            } else if tries <= COMBINE_SPINS {
                for _ in 0..4 {
                    std::hint::spin_loop();
                }
                None
            } else if tries <= COMBINE_YIELDS {
                // The decider may have lost its core (more threads than
                // cores): let it run.
                std::thread::yield_now();
                None
            } else {
                Some(self.lock())
            };
            if let Some(st) = st {
                if let Some(ended) = self.decide_ends(st, None, handoff) {
                    return ended;
                }
                // Popped by a decider that released the lock just before:
                // its decision is on the way.
                tries = 0;
            }
        }
    }

    /// Decides `own` (the caller's end, if not queued) and then every
    /// queued end, in the held critical section `st`, which it then
    /// releases, queueing the events; then delivers the decisions of other
    /// workers' ends. Returns the decision on the caller's end, whose
    /// mailbox is `handoff`, if this call decided it.
    fn decide_ends(
        self: &Arc<Self>,
        mut st: Locked<'_>,
        own: Option<(Arc<TaskCell>, Outcome, usize)>,
        handoff: &Arc<Handoff>,
    ) -> Option<Ended> {
        let mut mine = own.map(|(cell, outcome, w)| self.end_one(&mut st, cell, outcome, Some(w)));
        let mut others: SmallVec<[(Arc<Handoff>, Ended); 2]> = SmallVec::new();
        while let Some(end) = self.ends.pop() {
            let ended = self.end_one(&mut st, end.cell, end.outcome, Some(end.w));
            if Arc::ptr_eq(&end.reply, handoff) {
                mine = Some(ended);
            } else {
                others.push((end.reply, ended));
            }
        }
        self.dispatch(&mut st);
        drop(st); // queues the events (and calls the notifier, if due)
        for (reply, ended) in others {
            reply.put(ended);
        }
        mine
    }

    /// The end of `end_in_graph`, in a held critical section (dispatch
    /// left to the caller).
    fn end_one(
        self: &Arc<Self>,
        st: &mut Locked<'_>,
        cell: Arc<TaskCell>,
        outcome: Outcome,
        worker: Option<usize>,
    ) -> Ended {
        if outcome.is_ordered() {
            // Its end order is decided here (`hold_emit`). Other ends decide
            // none, and take the emit lock only when the scheduler lock is
            // released: their events still queue in the order of the
            // critical sections (state invariant 4), and the emit lock is
            // not held through the whole section, which every other end
            // waits for.
            st.hold_emit();
        }
        // A stopped task's outcome is dropped after the lock is released
        // (`State::discarded`): no user code runs in this critical section,
        // which may be deciding other workers' ends (`decide_ends`).
        let jobs = st.finish(&cell, outcome);
        if !jobs.is_empty() {
            st.discard(jobs); // a failure cascade's (almost every end has none)
        }
        let cell = cell.group.is_some().then_some(cell);
        let mut next = Next {
            task: None,
            passes_busy: false,
        };
        if let Some(w) = worker {
            if st.mode == Mode::Processing {
                next.task = st.pop_ready(&self.fifo);
            }
            if next.task.is_some() {
                next.passes_busy = true; // picked by this worker (see `run_task`)
            } else {
                self.go_idle(st, w);
                next.task = st.workers[w].assigned.take();
            }
        }
        (next, cell)
    }

    /// Frees the group slot of a task a worker is done with, requeueing a
    /// member its group's limit held back.
    fn release_group_slot(self: &Arc<Self>, cell: &TaskCell) {
        let Some(held) = cell.group.as_ref().and_then(|g| g.release()) else {
            return;
        };
        let mut st = self.lock();
        if st.mode != Mode::ShutDown {
            st.push_ready(held);
            self.dispatch(&mut st);
        }
    }

    /// Queues progress markers for a running task (see `Event::Progress`).
    pub(crate) fn report_progress(&self, cell: &Arc<TaskCell>, fraction: f32, message: String) {
        let mut em = self.emitter.lock();
        em.progress(cell, fraction, message);
        let notifier = em.take_notify();
        drop(em);
        if let Some(n) = notifier {
            unwind::contain(|| n());
        }
    }

    /// Shuts down; joins workers if `join` (skipping the calling thread if
    /// it is one of them).
    fn shut_down(&self, join: bool) {
        let (handles, released) = {
            let mut st = self.lock();
            self.processing.store(false, Ordering::SeqCst);
            self.closed.store(true, Ordering::SeqCst);
            let jobs = st.shut_down(&self.env());
            st.discard(jobs);
            let mut released = self.registry.lock().clear();
            self.groups.clear();
            self.emitter.lock().clear();
            st.fan_out = 0;
            // Every worker exits (joined below unless called from one).
            st.alive = 0;
            self.alive.store(0, Ordering::SeqCst);
            while let Some(cell) = self.fifo.pop() {
                released.push_back(cell);
            }
            for slot in &st.workers {
                slot.signal.notify_one();
            }
            self.idle_cv.notify_all();
            (std::mem::take(&mut st.handles), released)
        };
        // Registry invariant 3: after every lock, contained.
        unwind::drop_each(released);
        if join {
            let me = thread::current().id();
            for h in handles {
                if h.thread().id() != me {
                    // A worker only panics on a bug of ours; nothing to report to.
                    let _ = h.join();
                }
            }
        }
    }
}

/// The last `TaskManager` clone going away shuts the manager down.
struct Handle {
    /// The shared state.
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Don't block: a running task might never return. Workers exit as
        // soon as their current task returns.
        self.shared.shut_down(false);
    }
}

/// A background task manager: a pool of worker threads running prioritised,
/// grouped, dependent tasks whose outcomes are delivered as [`Event`](crate::Event)s
/// to the threads that [`subscribe`](TaskManager::subscribe).
///
/// Cloning is cheap and every clone controls the same manager. All methods
/// may be called from any thread, including from inside a running task.
/// Dropping the last clone shuts the manager down without waiting (see
/// [`shut_down`](TaskManager::shut_down)).
///
/// See the [crate documentation](crate) for a guided tour.
#[derive(Clone)]
pub struct TaskManager {
    /// Shared by all clones; its drop shuts down.
    handle: Arc<Handle>,
}

impl fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("TaskManager")
            .field("id", &shared.manager_id)
            .field("max_threads", &shared.max_threads.load(Ordering::Relaxed))
            .field("processing", &shared.processing.load(Ordering::Relaxed))
            .field("shut_down", &shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for TaskManager {
    fn default() -> Self {
        TaskManager::new()
    }
}

impl TaskManager {
    /// Returns a [`Builder`] with the defaults: `max_threads` 8, processing
    /// off until [`start_processing`](Self::start_processing).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Creates a manager with the defaults: up to 8 worker threads, and
    /// processing off until [`start_processing`](Self::start_processing)
    /// (as in the original toolkit).
    pub fn new() -> TaskManager {
        TaskManager::from_builder(Builder::default())
    }

    /// Creates a manager from a validated builder.
    pub(crate) fn from_builder(b: Builder) -> TaskManager {
        let mode = if b.start_processing {
            Mode::Processing
        } else {
            Mode::Paused
        };
        let manager_id = NEXT_MANAGER.fetch_add(1, Ordering::Relaxed);
        let registry = Registry::default();
        let shared = Shared {
            state: CachePadded::new(Mutex::new(State::new(mode))),
            fifo: registry.fifo.consumer(),
            ends: SegQueue::new(),
            inbox: CachePadded::default(),
            registry: CachePadded::new(Mutex::new(registry)),
            emitter: CachePadded::new(Mutex::new(Emitter::default())),
            groups: GroupTable::default(),
            hint: CachePadded::new(AtomicI64::new(NOTHING_LOCKED)),
            idle_waiters: AtomicUsize::new(0),
            idle_workers: CachePadded::new(AtomicUsize::new(0)),
            can_spawn: AtomicBool::new(true),
            processing: AtomicBool::new(b.start_processing),
            closed: Arc::new(AtomicBool::new(false)),
            next_seq: CachePadded::new(AtomicU64::new(0)),
            next_group: AtomicU64::new(0),
            manager_id,
            idle_cv: Condvar::new(),
            max_threads: AtomicUsize::new(b.max_threads),
            alive: AtomicUsize::new(0),
            thread_name: b.thread_name,
            worker_state: b.worker_state.0,
        };
        TaskManager {
            handle: Arc::new(Handle {
                shared: Arc::new(shared),
            }),
        }
    }

    /// Returns the shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Returns the most tasks that may run at once.
    pub fn max_threads(&self) -> usize {
        self.shared().max_threads.load(Ordering::SeqCst)
    }

    /// Changes how many tasks may run at once. Growing starts workers as
    /// ready tasks need them; shrinking retires idle workers at once and
    /// lets running tasks finish, their workers retiring as they end.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroThreads`] if `n` is 0 (nothing changes).
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::TaskManager;
    ///
    /// let manager = TaskManager::builder().max_threads(2).build()?;
    /// manager.set_max_threads(6)?;
    /// assert_eq!(manager.max_threads(), 6);
    /// assert!(manager.set_max_threads(0).is_err());
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn set_max_threads(&self, n: usize) -> Result<(), Error> {
        if n == 0 {
            return Err(Error::ZeroThreads);
        }
        let shared = self.shared();
        let mut st = shared.lock();
        shared.max_threads.store(n, Ordering::SeqCst);
        while st.alive > n {
            let Some(w) = st.idle.pop() else { break };
            let slot = &mut st.workers[w];
            slot.idle = false;
            slot.retired = true;
            slot.signal.notify_one();
            st.alive -= 1;
        }
        shared.dispatch(&mut st);
        Ok(())
    }

    /// Limits how many tasks of `group` run at once to `n` (at least 1).
    /// Other groups use the free workers meanwhile. The limit stays with the
    /// group, also for tasks added later, until changed with another call or
    /// removed with [`clear_group_limit`](Self::clear_group_limit). Lowering
    /// it lets running tasks finish; a stopped task frees its slot when its
    /// body returns.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroLimit`] if `n` is 0 (nothing changes).
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::{Group, TaskManager};
    /// use std::convert::Infallible;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// // A client library that is not thread safe gets exactly one thread.
    /// let manager = TaskManager::builder().max_threads(4).start_processing(true).build()?;
    /// let db = Group::from("database");
    /// manager.set_group_limit(&db, 1)?;
    /// let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    /// let mut handles = Vec::new();
    /// for _ in 0..8 {
    ///     let (now, most) = (Arc::clone(&now), Arc::clone(&most));
    ///     handles.push(manager.task().group(db.clone()).spawn(move |_| {
    ///         let n = now.fetch_add(1, Ordering::SeqCst) + 1;
    ///         most.fetch_max(n, Ordering::SeqCst);
    ///         now.fetch_sub(1, Ordering::SeqCst);
    ///         Ok::<_, Infallible>(())
    ///     })?);
    /// }
    /// for h in handles {
    ///     h.wait()?;
    /// }
    /// assert_eq!(most.load(Ordering::SeqCst), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_group_limit(&self, group: &Group, n: usize) -> Result<(), Error> {
        if n == 0 {
            return Err(Error::ZeroLimit);
        }
        self.apply_group_limit(group, n);
        Ok(())
    }

    /// Removes the limit of `group` set with
    /// [`set_group_limit`](Self::set_group_limit); held tasks are released.
    pub fn clear_group_limit(&self, group: &Group) {
        self.apply_group_limit(group, 0);
    }

    /// Sets a group's limit (0: none) and requeues what now fits.
    fn apply_group_limit(&self, group: &Group, n: usize) {
        let shared = self.shared();
        let mut st = shared.lock();
        if let Some(state) = shared.groups.set_limit(group, n) {
            while let Some(cell) = state.requeue_one() {
                st.push_ready(cell);
            }
        }
        shared.dispatch(&mut st);
    }

    /// Changes the priority of a task that has not started yet, in
    /// O(log n). A queued task takes its new place at once; among equal
    /// priorities it keeps its original place by the order tasks were
    /// added. A blocked task still waits for its upstream tasks and takes
    /// its place when released. Returns `false` (and changes nothing) if
    /// the task is running, ended, or unknown.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::TaskManager;
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    ///
    /// let manager = TaskManager::builder().max_threads(1).build()?; // paused
    /// let events = manager.subscribe();
    /// let a = manager.add_task(|_| Ok::<_, Infallible>(()))?;
    /// let b = manager.add_task(|_| Ok::<_, Infallible>(()))?;
    /// assert!(manager.set_priority(b.id(), 10)); // the user scrolled to b
    /// manager.start_processing();
    /// let first = events.recv_timeout(Duration::from_secs(10)).unwrap();
    /// assert_eq!(first.task_id(), Some(b.id()));
    /// # let _ = a;
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn set_priority(&self, id: TaskId, priority: i32) -> bool {
        let shared = self.shared();
        if id.manager != shared.manager_id {
            return false;
        }
        let mut st = shared.lock();
        let Some(cell) = st.find(&shared.env(), id.seq) else {
            return false;
        };
        let changed = st.reprioritize(&cell, priority);
        shared.dispatch(&mut st);
        changed
    }

    /// Returns a snapshot of the manager: tasks queued, blocked and
    /// running, overall and per group, and the number of worker threads.
    /// Takes the scheduler lock and counts every live task (O(n)); meant
    /// for dashboards and tests, not for every frame of a busy UI.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::TaskManager;
    /// use std::convert::Infallible;
    ///
    /// let manager = TaskManager::new(); // paused
    /// let a = manager.task().group("views").spawn(|_| Ok::<_, Infallible>(()))?;
    /// manager.task().group("views").after([&a]).spawn(|_| Ok::<_, Infallible>(()))?;
    /// let stats = manager.stats();
    /// assert_eq!((stats.tasks.queued, stats.tasks.blocked, stats.tasks.running), (1, 1, 0));
    /// assert_eq!(stats.groups[0].tasks.blocked, 1);
    /// assert_eq!(stats.workers, 0); // no thread until a task can start
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        let st = shared.lock();
        st.stats(&shared.env())
    }

    /// Returns whether task `id` is queued, blocked or running; `None` once
    /// it ended (completed, failed or stopped), or if this manager never
    /// issued it. O(log n).
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::{TaskManager, TaskState};
    /// use std::convert::Infallible;
    ///
    /// let manager = TaskManager::new(); // paused
    /// let a = manager.add_task(|_| Ok::<_, Infallible>(()))?;
    /// let b = manager.task().after([&a]).spawn(|_| Ok::<_, Infallible>(()))?;
    /// assert_eq!(manager.task_state(a.id()), Some(TaskState::Queued));
    /// assert_eq!(manager.task_state(b.id()), Some(TaskState::Blocked));
    /// manager.start_processing();
    /// b.wait()?;
    /// assert_eq!(manager.task_state(b.id()), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn task_state(&self, id: TaskId) -> Option<TaskState> {
        let shared = self.shared();
        if id.manager != shared.manager_id {
            return None;
        }
        let st = shared.lock();
        let cell = st.find(&shared.env(), id.seq)?;
        st.classify(&cell)
    }

    /// Adds a task with default settings (priority 0, no group, no upstream,
    /// no kwargs). The short form of `task().spawn(f)`; see
    /// [`TaskBuilder::spawn`].
    ///
    /// # Errors
    ///
    /// [`Error::ShutDown`] after shut-down.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::{Event, TaskManager};
    /// use std::time::Duration;
    ///
    /// let manager = TaskManager::builder().start_processing(true).build()?;
    /// let events = manager.subscribe();
    /// let task = manager.add_task(|_| "abc".parse::<u32>())?; // fails: not a number
    /// match events.recv_timeout(Duration::from_secs(10)).unwrap() {
    ///     Event::Failed { id, message, .. } => {
    ///         assert_eq!(id, task.id());
    ///         assert_eq!(message, "invalid digit found in string");
    ///     }
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    #[track_caller]
    pub fn add_task<F, T, E>(&self, f: F) -> Result<TaskHandle<T>, Error>
    where
        F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.task().spawn(f)
    }

    /// Returns a [`TaskBuilder`] to add a task with a priority, group,
    /// upstream tasks or kwargs.
    pub fn task(&self) -> TaskBuilder<'_> {
        TaskBuilder::new(self)
    }

    /// Adds a pass-through task after `upstream`: the short form of
    /// `task().after(upstream).spawn_pass_through()`. It completes with the
    /// merged [`Kwargs`] results of its upstream tasks.
    ///
    /// # Errors
    ///
    /// As [`TaskBuilder::spawn`].
    pub fn add_pass_through_task<I>(&self, upstream: I) -> Result<TaskHandle<Kwargs>, Error>
    where
        I: IntoIterator,
        I::Item: Into<TaskId>,
    {
        self.task().after(upstream).spawn_pass_through()
    }

    /// Returns a fresh numbered group: 0, then 1, 2, ... for each call on
    /// this manager.
    pub fn next_group_id(&self) -> Group {
        Group::from(self.shared().next_group.fetch_add(1, Ordering::Relaxed))
    }

    /// Turns processing on: ready tasks start, highest priority first, as
    /// workers are free. Tasks added while paused were queued in order.
    pub fn start_processing(&self) {
        let shared = self.shared();
        let mut st = shared.lock();
        if st.mode == Mode::Paused {
            st.mode = Mode::Processing;
            shared.processing.store(true, Ordering::SeqCst);
            shared.dispatch(&mut st);
        }
    }

    /// Turns processing off: no task starts, including tasks added while
    /// paused. Running tasks finish and their events are delivered as normal.
    pub fn pause_processing(&self) {
        let shared = self.shared();
        let mut st = shared.lock();
        if st.mode == Mode::Processing {
            st.mode = Mode::Paused;
            shared.processing.store(false, Ordering::SeqCst);
            shared.wake_idle_waiters(&st);
        }
    }

    /// Returns `true` while processing is on.
    pub fn is_processing(&self) -> bool {
        self.shared().processing.load(Ordering::SeqCst)
    }

    /// Stops task `id`, and with `stop_upstream` every live task upstream
    /// of it, with `stop_downstream` every live task downstream, applying
    /// the same rule again from each task stopped (so with both flags the
    /// whole connected part of the live graph stops). Returns how many tasks
    /// were stopped.
    ///
    /// A queued or blocked task never runs. A running task runs on to its
    /// end (its worker stays busy; [`TaskContext::is_stopped`] turns true)
    /// but its outcome is dropped. A task that finished but whose event
    /// still waits in some subscription is stopped too: once this call
    /// returns, no subscription delivers its `Completed`/`Failed`, nor the
    /// `GroupFinished` its end caused. Stopping never emits events.
    ///
    /// Downstream tasks that are not stopped themselves run without the
    /// stopped task's result once their other upstream tasks are done.
    /// Unknown ids, ids of another manager, and tasks whose events were all
    /// delivered stop nothing (returns 0; not an error).
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::TaskManager;
    /// use std::convert::Infallible;
    ///
    /// let manager = TaskManager::new(); // paused
    /// let a = manager.add_task(|_| Ok::<_, Infallible>(()))?;
    /// let b = manager.task().after([&a]).spawn(|_| Ok::<_, Infallible>(()))?;
    /// let c = manager.task().after([&b]).spawn(|_| Ok::<_, Infallible>(()))?;
    /// assert_eq!(manager.stop_task(b.id(), false, true), 2); // b and c
    /// assert_eq!(manager.stop_task(c.id(), true, true), 0);  // already gone
    /// assert_eq!(manager.stop_task(a.id(), false, false), 1);
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn stop_task(&self, id: TaskId, stop_upstream: bool, stop_downstream: bool) -> usize {
        let shared = self.shared();
        if id.manager != shared.manager_id {
            return 0;
        }
        self.stop_with(
            |st, env| st.find(env, id.seq).into_iter().collect(),
            stop_upstream,
            stop_downstream,
        )
    }

    /// Stops every live task of `group`, with the same flags and guarantees
    /// as [`stop_task`](Self::stop_task). Returns how many tasks were
    /// stopped (including those reached through the flags).
    pub fn stop_task_group(
        &self,
        group: &Group,
        stop_upstream: bool,
        stop_downstream: bool,
    ) -> usize {
        let Some(state) = self.shared().groups.get(group) else {
            return 0;
        };
        self.stop_with(|_, _| state.live_members(), stop_upstream, stop_downstream)
    }

    /// Stops every live task, with the guarantees of
    /// [`stop_task`](Self::stop_task). Returns how many tasks were stopped.
    /// The manager stays usable.
    pub fn stop_all_tasks(&self) -> usize {
        self.stop_with(|st, env| st.all_live(env), false, false)
    }

    /// Runs a stop on the seeds chosen by `seeds` under the lock.
    fn stop_with(
        &self,
        seeds: impl FnOnce(&State, &Env<'_>) -> Vec<Arc<TaskCell>>,
        up: bool,
        down: bool,
    ) -> usize {
        let shared = self.shared();
        let mut st = shared.lock();
        let seeds = seeds(&st, &shared.env());
        if seeds.is_empty() {
            return 0;
        }
        let stopped = st.stop(&shared.env(), seeds, up, down);
        st.discard_all(stopped.jobs);
        shared.dispatch(&mut st);
        shared.wake_idle_waiters(&st);
        stopped.count
    }

    /// Blocks until no task is running and none can start (nothing is
    /// ready, or processing is paused), or `timeout` passes. Returns `true`
    /// if the manager is idle. A stopped task that is still running counts
    /// as running. Events may still wait in subscriptions.
    ///
    /// Called from inside a task, it cannot see the manager idle (that task
    /// is running) and returns `false` after `timeout`.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let shared = self.shared();
        let deadline = Instant::now().checked_add(timeout);
        let mut st = shared.lock();
        loop {
            shared.idle_waiters.fetch_add(1, Ordering::SeqCst); // race 2
            if shared.is_idle(&st) {
                shared.idle_waiters.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            // The wait releases the lock: workers must see what taking it did
            // (the inbox moved into the locked queue changes the hint).
            st.publish();
            let timed_out = match deadline {
                Some(d) => shared.idle_cv.wait_until(&mut st.guard, d).timed_out(),
                None => {
                    shared.idle_cv.wait(&mut st.guard);
                    false
                }
            };
            shared.idle_waiters.fetch_sub(1, Ordering::SeqCst);
            if timed_out {
                return shared.is_idle(&st);
            }
        }
    }

    /// Shuts the manager down: stops every task (queued and blocked tasks
    /// never run; the outcomes of running tasks and every event still
    /// queued are dropped), starts nothing more, waits for running tasks to
    /// return and joins every worker thread.
    ///
    /// After it returns no event is delivered (subscriptions report
    /// disconnection), no worker thread exists, and adding a task fails with
    /// [`Error::ShutDown`]. Calling it again is harmless. Called from inside
    /// a task, it does all of this except joining the calling worker, which
    /// exits as soon as its task returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::{Error, TaskManager};
    /// use std::convert::Infallible;
    ///
    /// let manager = TaskManager::builder().start_processing(true).build()?;
    /// manager.add_task(|_| Ok::<_, Infallible>(()))?;
    /// manager.shut_down();
    /// manager.shut_down(); // harmless
    /// assert_eq!(manager.add_task(|_| Ok::<_, Infallible>(())).unwrap_err(), Error::ShutDown);
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn shut_down(&self) {
        self.shared().shut_down(true);
    }

    /// Returns a new [`Subscription`] that receives every event emitted from
    /// now on. Subscribe before adding the tasks you want to hear about.
    /// After shut-down the subscription is disconnected at once.
    pub fn subscribe(&self) -> Subscription {
        let shared = self.shared();
        let (sender, subscription) =
            subscription::pair(Arc::clone(&shared.closed), shared.manager_id);
        let mut st = shared.lock();
        if st.mode != Mode::ShutDown {
            let mut em = shared.emitter.lock();
            em.subscribe(sender);
            st.fan_out = em.fan_out();
        }
        subscription
    }

    /// Sets the function called when an event lands in a subscription queue
    /// that was empty, replacing any previous one.
    ///
    /// It is called from the thread that queued the event (usually a
    /// worker), after the manager's lock is released, so it may call the
    /// manager. It is not called again for events that join a queue not yet
    /// drained to empty (with [`Subscription::try_recv`] or
    /// [`Subscription::try_iter`]), so a busy pool does not flood the event
    /// loop. A panic in it is contained.
    ///
    /// The first event queued after this returns calls the new notifier,
    /// even one that joins a queue holding events queued before (a single
    /// extra call): an event loop that sets its notifier after events
    /// arrived is woken to drain them, and an event queued while no
    /// notifier was set cannot make the next one go unnoticed.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::TaskManager;
    /// use std::convert::Infallible;
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// let manager = TaskManager::builder().start_processing(true).build()?;
    /// let events = manager.subscribe();
    /// let (wake, woken) = mpsc::channel();
    /// manager.set_notifier(move || { let _ = wake.send(()); });
    /// manager.add_task(|_| Ok::<_, Infallible>(()))?;
    /// woken.recv_timeout(Duration::from_secs(10)).expect("notifier was not called");
    /// assert_eq!(events.try_iter().count(), 1);
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn set_notifier<F>(&self, notifier: F)
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.shared()
            .emitter
            .lock()
            .set_notifier(Arc::new(notifier));
    }
}

/// Compile-time proof of the thread-safety promises.
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<TaskManager>();
    is::<TaskHandle<std::rc::Rc<u8>>>();
    is::<crate::Event>();
    is::<crate::TaskResult>();
    is::<Kwargs>();
    is::<Group>();
    is::<TaskId>();
    is::<Error>();
    fn is_send<T: Send>() {}
    is_send::<Subscription>();
}
