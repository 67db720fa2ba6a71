//! A background task manager for responsive applications.
//!
//! A UI thread must never block. `bgtask` runs queries, downloads, decoding
//! and thumbnails on a pool of worker threads, with priorities, groups,
//! dependencies between tasks, cancellation and shut-down, and delivers
//! every outcome as an [`Event`] that the owner thread drains on its own
//! terms. It is the Rust home of the BackgroundTaskManager of a VFX
//! pipeline toolkit, with the same contract and without its bugs.
//!
//! ```
//! use bgtask::{Event, TaskManager};
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! let manager = TaskManager::builder().max_threads(4).start_processing(true).build()?;
//! let events = manager.subscribe(); // drained on the owner (UI) thread
//!
//! let task = manager.add_task(|_ctx| Ok::<_, Infallible>(6 * 7))?;
//!
//! match events.recv_timeout(Duration::from_secs(10)).expect("no event") {
//!     Event::Completed { id, result, .. } => {
//!         assert_eq!(id, task.id());
//!         assert_eq!(result.downcast_ref::<i32>(), Some(&42));
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! manager.shut_down();
//! # Ok::<(), bgtask::Error>(())
//! ```
//!
//! # Priorities
//!
//! Among ready tasks the highest [`priority`](TaskBuilder::priority) runs
//! first; equal priorities run in the order they were added. A task added
//! while a worker is free starts at once. Nothing starts while processing
//! is paused ([`TaskManager::new`] starts paused, as the original did).
//!
//! ```
//! use bgtask::{Event, TaskManager};
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! let manager = TaskManager::builder().max_threads(1).build()?; // paused
//! let events = manager.subscribe();
//! let low = manager.task().priority(-1).spawn(|_| Ok::<_, Infallible>(()))?;
//! let first = manager.add_task(|_| Ok::<_, Infallible>(()))?;
//! let second = manager.add_task(|_| Ok::<_, Infallible>(()))?;
//! let high = manager.task().priority(5).spawn(|_| Ok::<_, Infallible>(()))?;
//! manager.start_processing();
//! let order: Vec<_> = (0..4)
//!     .map(|_| events.recv_timeout(Duration::from_secs(10)).unwrap().task_id().unwrap())
//!     .collect();
//! assert_eq!(order, [high.id(), first.id(), second.id(), low.id()]);
//! # Ok::<(), bgtask::Error>(())
//! ```
//!
//! # Dependencies and kwargs
//!
//! [`after`](TaskBuilder::after) makes a task wait for upstream tasks. When
//! an upstream completes with a [`Kwargs`] result, its entries are merged
//! into the downstream task's kwargs (the upstream wins on a clash, a
//! later upstream over an earlier one). A pass-through task
//! ([`TaskBuilder::spawn_pass_through`]) joins several upstream results into
//! one. An upstream id that this manager never issued is an error and
//! nothing is added.
//!
//! ```
//! use bgtask::{Event, Kwargs, TaskManager};
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! let manager = TaskManager::builder().start_processing(true).build()?;
//! let events = manager.subscribe();
//! let check = manager.add_task(|_| Ok::<_, Infallible>(Kwargs::new().with("cached", false)))?;
//! let size = manager.add_task(|_| Ok::<_, Infallible>(Kwargs::new().with("bytes", 512u64)))?;
//! let join = manager.add_pass_through_task([check.id(), size.id()])?;
//! let mut last = None;
//! while last.as_ref().and_then(Event::task_id) != Some(join.id()) {
//!     last = Some(events.recv_timeout(Duration::from_secs(10)).unwrap());
//! }
//! if let Some(Event::Completed { result, .. }) = last {
//!     let merged = result.downcast_ref::<Kwargs>().unwrap();
//!     assert_eq!(merged.get::<bool>("cached"), Some(&false));
//!     assert_eq!(merged.get::<u64>("bytes"), Some(&512));
//! }
//! # Ok::<(), bgtask::Error>(())
//! ```
//!
//! # Failure
//!
//! A task fails when it returns `Err` or panics; the worker survives. Every
//! live task downstream of it fails too, without running, with the same
//! message, nearest first.
//!
//! ```
//! use bgtask::{Event, TaskManager};
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! let manager = TaskManager::new();
//! let events = manager.subscribe();
//! let bad = manager.add_task(|_| -> Result<(), &str> { Err("disk full") })?;
//! let next = manager.task().after([&bad]).spawn(|_| Ok::<_, Infallible>(()))?;
//! manager.start_processing();
//! for expected in [bad.id(), next.id()] {
//!     match events.recv_timeout(Duration::from_secs(10)).unwrap() {
//!         Event::Failed { id, message, .. } => {
//!             assert_eq!(id, expected);
//!             assert_eq!(message, "disk full");
//!         }
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//! # Ok::<(), bgtask::Error>(())
//! ```
//!
//! # Groups
//!
//! A task may belong to one [`Group`]. A group is stopped with
//! [`TaskManager::stop_task_group`], and reports
//! [`Event::GroupFinished`] right after the event of its last live task.
//!
//! ```
//! use bgtask::{Event, TaskManager};
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! let manager = TaskManager::builder().start_processing(true).build()?;
//! let events = manager.subscribe();
//! let view = manager.next_group_id();
//! for n in 0..3 {
//!     manager.task().group(view.clone()).spawn(move |_| Ok::<_, Infallible>(n))?;
//! }
//! let mut seen = Vec::new();
//! loop {
//!     match events.recv_timeout(Duration::from_secs(10)).unwrap() {
//!         Event::GroupFinished { group } => { assert_eq!(group, view); break; }
//!         event => seen.push(event),
//!     }
//! }
//! assert_eq!(seen.len(), 3);
//! # Ok::<(), bgtask::Error>(())
//! ```
//!
//! # Stopping
//!
//! [`stop_task`](TaskManager::stop_task), [`stop_task_group`](TaskManager::stop_task_group)
//! and [`stop_all_tasks`](TaskManager::stop_all_tasks) remove tasks, and
//! optionally everything upstream or downstream of them. Stopping emits
//! nothing, and once a stop call returns no event of a stopped task is
//! delivered, even one that was already waiting in a subscription.
//!
//! ```
//! use bgtask::TaskManager;
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! let manager = TaskManager::builder().max_threads(1).start_processing(true).build()?;
//! let events = manager.subscribe();
//! let done = manager.add_task(|_| Ok::<_, Infallible>(()))?;
//! assert!(manager.wait_idle(Duration::from_secs(10)));
//! // Finished, but its Completed is still queued: stopping it drops the event.
//! assert_eq!(manager.stop_task(done.id(), false, false), 1);
//! assert!(events.try_recv().is_err());
//! # Ok::<(), bgtask::Error>(())
//! ```
//!
//! # Shutting down
//!
//! [`TaskManager::shut_down`] stops everything, waits for running tasks and
//! joins the workers; afterwards adding fails with [`Error::ShutDown`] and
//! no event is delivered. Dropping the last clone of a manager shuts it
//! down without waiting.
//!
//! # Events and the owner thread
//!
//! Every [`Subscription`] receives every event, in emission order, and keeps
//! it until drained. An event loop that cannot block sets a
//! [notifier](TaskManager::set_notifier) to be woken when events arrive,
//! then drains with [`Subscription::try_iter`]. Events go to the
//! subscriptions that exist when they are emitted; subscribe before adding.
//!
//! # Beyond the original
//!
//! - Typed results: [`TaskHandle::wait`], [`TaskHandle::wait_timeout`], and
//!   `.await` on a [`TaskHandle`] with any executor; [`Event::result`].
//! - Cooperative cancellation: [`TaskContext::is_stopped`].
//! - Progress: [`TaskContext::report_progress`] and [`Event::Progress`].
//! - Per-group concurrency limits: [`TaskManager::set_group_limit`].
//! - Per-worker state: [`Builder::worker_state`] and
//!   [`TaskContext::worker_state`].
//! - Reprioritising: [`TaskManager::set_priority`]; resizing:
//!   [`TaskManager::set_max_threads`].
//! - Introspection: [`TaskManager::stats`] and [`TaskManager::task_state`].
//! - A `tracing` span per task, behind the default-on `tracing` feature:
//!   target `bgtask`, name `task`, level `DEBUG`, fields `id`, `group`,
//!   `priority`, `outcome`, `queued_us` and `run_us` (see the example below).
//!
//! ```
//! use bgtask::{Group, TaskManager};
//! use std::convert::Infallible;
//!
//! let manager = TaskManager::builder().max_threads(4).start_processing(true).build()?;
//! manager.set_group_limit(&Group::from("database"), 1)?; // not thread safe
//! let rows = manager
//!     .task()
//!     .group("database")
//!     .spawn(|ctx| {
//!         ctx.report_progress(0.5, "querying");
//!         Ok::<_, Infallible>(vec!["a", "b"])
//!     })?;
//! assert_eq!(rows.wait()?.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With a `tracing` subscriber installed, every task gets its span (this
//! one counts them; a real application would use `tracing-subscriber`):
//!
//! ```
//! # #[cfg(feature = "tracing")] {
//! use bgtask::TaskManager;
//! use std::convert::Infallible;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tracing::{span, subscriber::Subscriber, Event, Metadata};
//!
//! static TASK_SPANS: AtomicU64 = AtomicU64::new(0);
//!
//! struct CountTaskSpans;
//! impl Subscriber for CountTaskSpans {
//!     fn enabled(&self, _: &Metadata<'_>) -> bool { true }
//!     fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
//!         if attrs.metadata().target() == "bgtask" && attrs.metadata().name() == "task" {
//!             TASK_SPANS.fetch_add(1, Ordering::SeqCst);
//!         }
//!         span::Id::from_u64(1)
//!     }
//!     fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
//!     fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
//!     fn event(&self, _: &Event<'_>) {}
//!     fn enter(&self, _: &span::Id) {}
//!     fn exit(&self, _: &span::Id) {}
//! }
//! tracing::subscriber::set_global_default(CountTaskSpans).unwrap();
//!
//! let manager = TaskManager::builder().start_processing(true).build()?;
//! for n in 0..3 {
//!     manager.add_task(move |_| Ok::<_, Infallible>(n))?.wait()?;
//! }
//! assert_eq!(TASK_SPANS.load(Ordering::SeqCst), 3);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Choices where the contract is silent
//!
//! - A task's events are dropped if no subscription exists when it ends;
//!   such a task is no longer live once it ends.
//! - Panics inside tasks are not printed: the panic hook `bgtask` installs
//!   (once, chained to the previous hook) records the location for the
//!   `Failed` traceback instead. Panics elsewhere reach the previous hook.
//! - `wait_idle` and `shut_down` from inside a task cannot wait for that
//!   task: the first times out, the second leaves the calling worker to
//!   exit when its task returns.
//! - A task closure that holds a clone of its own manager keeps it alive
//!   (as any handle does) until the task runs or is stopped.
//! - A task added after an upstream that finished but whose event is still
//!   queued gets that upstream's `Kwargs` merged (or fails with it), as it
//!   would have a moment earlier; once the event was delivered, the upstream
//!   simply counts as satisfied.
//! - A worker settles its next task (or goes idle) before the events of the
//!   task it just ended can be received, so an owner that reacts to an
//!   event by adding a task finds that worker free.
//! - [`TaskContext`] is not `Sync`: its methods act on the worker thread
//!   running the task.
//! - A running task stopped while it holds a slot of a limited group frees
//!   the slot when its body returns, so the limit holds at every moment.
//! - No user code runs under the manager's locks, with one exception: a
//!   task's result and kwargs values may be dropped while an internal lock
//!   is held (when a stop drops an undelivered result, or a finished task's
//!   record is released). Their `Drop` must not call back into the same
//!   manager. A task closure's captures are always dropped with no lock held.

// No `unsafe` but one block, allowed where it is: the cache prefetch hint of
// `prefetch.rs` (its SAFETY comment says why it is sound; `.ci/run` runs its
// test under Miri).
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod builder;
mod cell;
mod error;
mod event;
mod fifo;
mod group;
mod handle;
mod id;
mod kwargs;
mod manager;
mod prefetch;
mod ready;
mod registry;
mod result;
mod state;
mod stats;
mod subscription;
mod sync;
mod task;
mod trace;
mod unwind;
mod worker;
mod worker_state;

#[cfg(all(test, bgtask_loom))]
mod tests;

pub use builder::Builder;
pub use error::{Error, TaskError};
pub use event::Event;
pub use handle::TaskHandle;
pub use id::{Group, TaskId};
pub use kwargs::Kwargs;
pub use manager::TaskManager;
pub use result::TaskResult;
pub use stats::{GroupStats, Stats, TaskCounts, TaskState};
pub use subscription::{RecvError, RecvTimeoutError, Subscription, TryRecvError};
pub use task::{TaskBuilder, TaskContext};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
