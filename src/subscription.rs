//! Event queues: fan-out to subscribers, the notifier, and dropping events of
//! tasks stopped after their event was queued.
//!
//! Each subscription is an unbounded channel. Events are pushed under the
//! emit lock ([`Emitter`]), so every subscriber sees the same order, and
//! received on the owner's thread without any lock of ours. What is queued
//! is an [`Envelope`]: the task's [`TaskCell`] and the kind of event.
//! Receiving it *settles* the cell (see the cell's invariants), which
//! either delivers it or, if the task was stopped in the meantime, discards
//! it; the [`Event`] is built then, on the receiving thread, from what the
//! cell keeps. So once a stop call returns, no queue can hand out an event
//! of a task it stopped.
//!
//! # The notifier protocol
//!
//! `armed` is `true` when the receiver may have seen its queue empty. A
//! sender queues first and then swaps `armed` to `false`; it calls the
//! notifier if it was `true`. A receiver that finds the queue empty stores
//! `true` and then looks once more. With both sides `SeqCst`, either the
//! receiver's second look sees the new event or the sender's swap sees
//! `true`: an event never lands unnoticed in a queue its owner believes
//! empty, and a busy pool does not call the notifier per event.
//!
//! The sender's swap comes after its send, so the owner may receive the
//! event and arm its queue before the swap, which then takes that arm: it
//! calls the notifier after the arm, and the owner's next drain re-arms.
//! If no notifier was set, that arm was taken for nothing, so setting one
//! re-arms every queue (`Emitter::set_notifier`).

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError as CbTryRecvError};

use crate::cell::TaskCell;
use crate::event::Event;
use crate::id::TaskId;
use crate::sync::{Arc, AtomicBool, Ordering};
use crate::task::Notifier;

/// What an envelope stands for, and how it settles with its cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `Completed`/`Failed`, counted in the cell's pending count.
    Terminal,
    /// A `GroupFinished`: delivered unless its cell's task was stopped.
    GroupFinished,
    /// A progress marker for the subscription that holds it: delivers the
    /// task's latest progress when opened (coalescing), unless the task was
    /// stopped.
    Progress,
}

/// One queued event, as the task cell it is about and its kind: 16 bytes.
///
/// The [`Event`] itself is built by the receiver when it opens the
/// envelope, from what the cell keeps: a terminal event from the kept
/// outcome (`Payload::Done`, kept until the task is stopped), a group's
/// from the cell's group, progress from the cell's latest report. So the
/// worker that ends a task writes 16 bytes into each queue instead of an
/// 88-byte event, and the queue's memory that travels from the worker's
/// core to the owner's is a fifth of what it was.
pub(crate) struct Envelope {
    /// The task the event is about (for `GroupFinished`, the task whose end
    /// finished the group).
    gate: Arc<TaskCell>,
    /// See [`Kind`].
    kind: Kind,
    /// `true` once the cell was told this copy is gone.
    settled: bool,
}

impl Envelope {
    /// Stands for a task's `Completed`/`Failed`, whose copies the caller
    /// counted in the cell (one per subscriber: `Emitter::fan_out`); the
    /// cell must keep its outcome (`TaskCell::keep_outcome`) first.
    pub(crate) fn terminal(cell: Arc<TaskCell>) -> Self {
        Envelope {
            gate: cell,
            kind: Kind::Terminal,
            settled: false,
        }
    }

    /// Stands for the `GroupFinished` of `cell`'s group, caused by the end
    /// of `cell`'s task.
    pub(crate) fn group_finished(cell: &Arc<TaskCell>) -> Self {
        debug_assert!(cell.group.is_some(), "a group event of a task in no group");
        Envelope {
            gate: Arc::clone(cell),
            kind: Kind::GroupFinished,
            settled: false,
        }
    }

    /// A progress marker of `cell`'s task, recorded in the cell's slot for
    /// the subscription it is sent to (`TaskCell::queue_progress`).
    fn progress(cell: &Arc<TaskCell>) -> Self {
        Envelope {
            gate: Arc::clone(cell),
            kind: Kind::Progress,
            settled: false,
        }
    }

    /// Returns a copy for another queue (the caller counted every copy).
    fn duplicate(&self) -> Self {
        Envelope {
            gate: Arc::clone(&self.gate),
            kind: self.kind,
            settled: false,
        }
    }

    /// Tells the cell this copy is delivered or discarded (once); `true`
    /// if it may be delivered. Progress markers settle when opened.
    fn settle(&mut self) -> bool {
        if std::mem::replace(&mut self.settled, true) {
            return false;
        }
        match self.kind {
            Kind::Terminal => self.gate.settle(),
            Kind::GroupFinished | Kind::Progress => !self.gate.is_stopped(),
        }
    }

    /// Builds the event if it may still be delivered, settling the cell;
    /// `sub` is the subscription that received it.
    fn open(mut self, sub: &Subscription) -> Option<Event> {
        let group = |cell: &TaskCell| cell.group.as_ref().map(|g| g.key.clone());
        match self.kind {
            Kind::Terminal => {
                if !self.settle() {
                    return None;
                }
                // `None` only if a stop came after the settle: the stop
                // cleared the outcome, and the event is dropped as if the
                // stop had come first (cell invariant 3).
                let outcome = self.gate.kept_outcome()?;
                Some(crate::state::terminal_event(
                    &self.gate,
                    outcome,
                    sub.manager,
                ))
            }
            Kind::GroupFinished => self.settle().then(|| Event::GroupFinished {
                group: group(&self.gate).expect("a group event's task is in the group"),
            }),
            Kind::Progress => {
                self.settled = true;
                let (fraction, message) = self.gate.settle_progress(sub.id)?;
                Some(Event::Progress {
                    id: TaskId {
                        seq: self.gate.seq,
                        manager: sub.manager,
                    },
                    group: group(&self.gate),
                    fraction,
                    message,
                })
            }
        }
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        // A queue that goes away without delivering still settles its copy,
        // so the task stops being live once no queue holds its event.
        self.settle();
    }
}

/// The sending half of a subscription, kept in the scheduler state.
#[derive(Debug)]
pub(crate) struct Subscriber {
    /// Where events go.
    tx: Sender<Envelope>,
    /// Identifies the subscription in progress bookkeeping (process-unique).
    id: u64,
    /// A send failed: the subscription was dropped (emitter invariant 1).
    gone: bool,
    /// Notifier protocol flag (see the module docs).
    armed: Arc<AtomicBool>,
}

impl Subscriber {
    /// Queues `env`. Returns `Err` if the subscription was dropped (the
    /// envelope is then discarded, settling its cell), or `Ok(true)` if the
    /// notifier should be called.
    pub(crate) fn send(&self, env: Envelope) -> Result<bool, ()> {
        if self.tx.send(env).is_err() {
            return Err(());
        }
        Ok(self.armed.swap(false, Ordering::SeqCst))
    }
}

/// Everything the emit lock guards: the subscriptions and the notifier.
///
/// Events are queued only under this lock, so every subscription sees the
/// same order.
///
/// # Invariants
///
/// 1. `subscribers` changes only while the scheduler lock is held too
///    (`subscribe`, `prune`, `clear`), so a graph transition can count the
///    copies of a terminal event (`fan_out`) when it decides the outcome and
///    queue them later in the same critical section. A subscription that was
///    dropped stays in the list until pruned; a copy sent to it is dropped,
///    which settles its cell (cell invariant 3).
///
/// Lock order: the scheduler lock may be held while taking this one, never
/// the reverse.
#[derive(Default)]
pub(crate) struct Emitter {
    /// Subscriptions, open or dropped-but-not-pruned (invariant 1).
    subscribers: Vec<Subscriber>,
    /// Called when an event lands in an empty queue.
    notifier: Option<Notifier>,
    /// An event landed in an empty queue since the notifier was last taken.
    notify_due: bool,
    /// Ends decided under the scheduler lock, moved here under both locks
    /// and announced after the scheduler lock is released (`Announce` in
    /// `manager.rs`); empty otherwise. Kept here so its capacity is reused.
    pub(crate) deferred: Vec<crate::state::Outgoing>,
}

impl fmt::Debug for Emitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl Emitter {
    /// Returns how many copies of an event emitted now are queued (invariant 1).
    pub(crate) fn fan_out(&self) -> usize {
        self.subscribers.len()
    }

    /// Queues `env` in every subscription.
    pub(crate) fn emit(&mut self, env: Envelope) {
        let n = self.subscribers.len();
        let mut env = Some(env);
        for (i, sub) in self.subscribers.iter_mut().enumerate() {
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
                Err(()) => sub.gone = true,
            }
        }
    }

    /// Queues progress markers of `cell`'s task in the subscriptions that
    /// hold none (each holds at most one per task; it delivers the latest
    /// report when opened).
    pub(crate) fn progress(&mut self, cell: &Arc<TaskCell>, fraction: f32, message: String) {
        let need = cell.queue_progress(fraction, message, self.subscribers.iter().map(|s| s.id));
        for sub in self.subscribers.iter_mut().filter(|s| need.contains(&s.id)) {
            match sub.send(Envelope::progress(cell)) {
                Ok(true) => self.notify_due = true,
                Ok(false) => {}
                Err(()) => sub.gone = true,
            }
        }
    }

    /// Adds a subscription (scheduler lock held: invariant 1).
    pub(crate) fn subscribe(&mut self, sub: Subscriber) {
        self.prune();
        self.subscribers.push(sub);
    }

    /// Forgets subscriptions found dropped (scheduler lock held: invariant 1).
    pub(crate) fn prune(&mut self) {
        self.subscribers.retain(|s| !s.gone);
    }

    /// Sets the notifier and re-arms every subscription (see
    /// `TaskManager::set_notifier`): the first event queued after this
    /// calls it, whatever the queue holds.
    ///
    /// Why re-arm: a sender queues, then swaps `armed` (module docs). The
    /// owner can receive the event in between and drain to empty, arming
    /// its queue; the late swap then takes that arm. With a notifier set it
    /// calls it (a call after the arm, as the protocol promises); with none
    /// set, the arm was taken for nothing, and without the re-arm the next
    /// event would land unnoticed in a queue its owner drained to empty.
    /// Under the emit lock, so no send's swap is half done.
    pub(crate) fn set_notifier(&mut self, notifier: Notifier) {
        self.notifier = Some(notifier);
        for sub in &self.subscribers {
            sub.armed.store(true, Ordering::SeqCst);
        }
    }

    /// Returns the notifier if an event landed in an empty queue since the
    /// last call; the caller calls it after releasing the lock.
    pub(crate) fn take_notify(&mut self) -> Option<Notifier> {
        if std::mem::take(&mut self.notify_due) {
            self.notifier.clone()
        } else {
            None
        }
    }

    /// Closes every subscription (scheduler lock held: invariant 1).
    pub(crate) fn clear(&mut self) {
        self.subscribers.clear();
    }
}

/// Creates a connected subscriber / subscription pair. `closed` is the
/// manager's shut-down flag, `manager` its id (part of every `TaskId`).
pub(crate) fn pair(closed: Arc<AtomicBool>, manager: u64) -> (Subscriber, Subscription) {
    // Process-wide, so an id is never reused, not even by another manager.
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = crossbeam_channel::unbounded();
    let armed = Arc::new(AtomicBool::new(true));
    (
        Subscriber {
            tx,
            id,
            gone: false,
            armed: Arc::clone(&armed),
        },
        Subscription {
            rx,
            armed,
            closed,
            manager,
            id,
        },
    )
}

/// A queue of [`Event`]s, drained on the thread that owns it.
///
/// Created by [`TaskManager::subscribe`](crate::TaskManager::subscribe). It
/// receives every event the manager emits after it was created, in the order
/// they were emitted, and keeps them until drained, however slow the owner.
/// Events of tasks that are stopped while their event waits here are dropped
/// (see [`TaskManager::stop_task`](crate::TaskManager::stop_task)). Once the
/// manager is shut down, nothing more is delivered and the receive methods
/// report disconnection.
///
/// # Examples
///
/// ```
/// use bgtask::{Event, TaskManager};
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// let manager = TaskManager::builder().start_processing(true).build()?;
/// let events = manager.subscribe();
/// let task = manager.add_task(|_| Ok::<_, Infallible>(2 + 2))?;
/// let event = events.recv_timeout(Duration::from_secs(10)).expect("no event in 10 s");
/// assert_eq!(event.task_id(), Some(task.id()));
/// assert!(events.try_recv().is_err()); // nothing else is queued
/// # Ok::<(), bgtask::Error>(())
/// ```
pub struct Subscription {
    /// Receiving half of the queue.
    rx: Receiver<Envelope>,
    /// Notifier protocol flag (see the module docs).
    armed: Arc<AtomicBool>,
    /// The manager's shut-down flag: once set, nothing is delivered.
    closed: Arc<AtomicBool>,
    /// The manager's id, for the `TaskId`s of the events built here.
    manager: u64,
    /// This subscription's id in the cells' progress bookkeeping.
    id: u64,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Subscription {
            rx,
            armed: _,
            closed,
            manager: _,
            id: _,
        } = self;
        f.debug_struct("Subscription")
            .field("queued", &rx.len())
            .field("closed", &closed.load(Ordering::Relaxed))
            .finish()
    }
}

/// [`Subscription::recv`] found the manager shut down: no event will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the task manager was shut down; no more events will arrive")]
pub struct RecvError;

/// Why [`Subscription::try_recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued right now; try again later.
    #[error("no event is queued yet; try again later")]
    Empty,
    /// The manager was shut down; no event will come.
    #[error("the task manager was shut down; no more events will arrive")]
    Disconnected,
}

/// Why [`Subscription::recv_timeout`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No event arrived within the timeout.
    #[error("no event arrived within the timeout")]
    Timeout,
    /// The manager was shut down; no event will come.
    #[error("the task manager was shut down; no more events will arrive")]
    Disconnected,
}

impl Subscription {
    /// Returns `true` once the manager was shut down.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Returns the next queued event without blocking.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if nothing is queued,
    /// [`TryRecvError::Disconnected`] once the manager was shut down.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        let mut rearmed = false;
        loop {
            if self.is_closed() {
                return Err(TryRecvError::Disconnected);
            }
            match self.rx.try_recv() {
                Ok(env) => {
                    if let Some(event) = env.open(self) {
                        return Ok(event);
                    }
                }
                Err(CbTryRecvError::Empty) if rearmed => return Err(TryRecvError::Empty),
                Err(CbTryRecvError::Empty) => {
                    // Notifier protocol: arm, then look once more.
                    self.armed.store(true, Ordering::SeqCst);
                    rearmed = true;
                }
                Err(CbTryRecvError::Disconnected) => return Err(TryRecvError::Disconnected),
            }
        }
    }

    /// Blocks until an event arrives and returns it.
    ///
    /// # Errors
    ///
    /// [`RecvError`] once the manager was shut down.
    pub fn recv(&self) -> Result<Event, RecvError> {
        loop {
            if self.is_closed() {
                return Err(RecvError);
            }
            let env = self.rx.recv().map_err(|_| RecvError)?;
            if self.is_closed() {
                return Err(RecvError);
            }
            if let Some(event) = env.open(self) {
                return Ok(event);
            }
        }
    }

    /// Blocks until an event arrives or `timeout` passes.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if no event arrived in time,
    /// [`RecvTimeoutError::Disconnected`] once the manager was shut down.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        // The clock is read only if the first look delivers nothing: an
        // owner draining a busy queue does not pay for it per event. (The
        // deadline then counts from the end of that look, one envelope
        // after the call.)
        let mut deadline: Option<Option<Instant>> = None;
        let start = || Instant::now().checked_add(timeout);
        loop {
            if self.is_closed() {
                return Err(RecvTimeoutError::Disconnected);
            }
            let env = match self.rx.try_recv() {
                Ok(env) => env,
                Err(CbTryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(CbTryRecvError::Empty) => match *deadline.get_or_insert_with(start) {
                    Some(d) => self.rx.recv_deadline(d).map_err(|e| {
                        if e.is_timeout() {
                            RecvTimeoutError::Timeout
                        } else {
                            RecvTimeoutError::Disconnected
                        }
                    })?,
                    None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)?,
                },
            };
            if self.is_closed() {
                return Err(RecvTimeoutError::Disconnected);
            }
            if let Some(event) = env.open(self) {
                return Ok(event);
            }
            deadline.get_or_insert_with(start);
        }
    }

    /// Returns an iterator over the events queued now; it ends when the queue
    /// is empty (it never blocks). This is what an event loop calls after
    /// the notifier woke it.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.try_recv().ok())
    }
}
