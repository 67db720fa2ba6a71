//! Helpers shared by the integration tests: gates that hold a task running,
//! event collection with loud timeouts, and thread counting.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bgtask::{Event, Group, Subscription, TaskContext, TaskHandle, TaskId, TaskManager};

/// How long any wait in a test may take before the test fails. Generous:
/// the machines are shared and slow; a pass never waits this long.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A manager with `n` workers, processing on.
pub fn manager(n: usize) -> TaskManager {
    TaskManager::builder()
        .max_threads(n)
        .start_processing(true)
        .build()
        .unwrap()
}

/// A manager with `n` workers, paused.
pub fn paused(n: usize) -> TaskManager {
    TaskManager::builder().max_threads(n).build().unwrap()
}

/// Receives the next event or panics after [`TIMEOUT`].
pub fn next(sub: &Subscription) -> Event {
    sub.recv_timeout(TIMEOUT)
        .unwrap_or_else(|e| panic!("no event within {TIMEOUT:?}: {e}"))
}

/// Receives exactly `n` events (panics on timeout).
pub fn take(sub: &Subscription, n: usize) -> Vec<Event> {
    (0..n).map(|_| next(sub)).collect()
}

/// Asserts that no event is queued now, after the manager went idle.
pub fn assert_quiet(m: &TaskManager, sub: &Subscription) {
    assert!(m.wait_idle(TIMEOUT), "manager did not become idle");
    let rest: Vec<Event> = sub.try_iter().collect();
    assert!(rest.is_empty(), "unexpected events: {rest:?}");
}

/// The id of a task event; panics for `GroupFinished`.
pub fn id_of(e: &Event) -> TaskId {
    e.task_id()
        .unwrap_or_else(|| panic!("expected a task event, got {e:?}"))
}

/// A compact, comparable description of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Done(TaskId),
    Failed(TaskId, String),
    GroupDone(Group),
}

/// Turns an event into an [`Ev`].
pub fn ev(e: &Event) -> Ev {
    match e {
        Event::Completed { id, .. } => Ev::Done(*id),
        Event::Failed { id, message, .. } => Ev::Failed(*id, message.clone()),
        Event::GroupFinished { group } => Ev::GroupDone(group.clone()),
        other => panic!("unexpected event kind {other:?}"),
    }
}

/// Receives `n` events as [`Ev`]s.
pub fn take_ev(sub: &Subscription, n: usize) -> Vec<Ev> {
    take(sub, n).iter().map(ev).collect()
}

/// A latch that tasks can wait on until the test opens it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate::default()
    }

    /// Opens the gate: every waiter, present and future, passes.
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits until the gate is open; panics after [`TIMEOUT`].
    pub fn wait(&self) {
        let deadline = Instant::now() + TIMEOUT;
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "gate was never opened");
            open = self.0 .1.wait_timeout(open, left).unwrap().0;
        }
    }
}

/// Adds a task that signals when it starts and then holds its worker until
/// `gate` opens. Returns the handle and a receiver of the start signal.
pub fn add_blocker(m: &TaskManager, gate: &Gate) -> (TaskHandle<()>, mpsc::Receiver<TaskId>) {
    let (tx, rx) = mpsc::channel();
    let gate = gate.clone();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            let _ = tx.send(ctx.id());
            gate.wait();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    (h, rx)
}

/// Waits for a start signal from [`add_blocker`].
pub fn started(rx: &mpsc::Receiver<TaskId>) -> TaskId {
    rx.recv_timeout(TIMEOUT)
        .expect("blocking task did not start")
}

/// A task body that returns `()`.
pub fn noop(_: &TaskContext) -> Result<(), Infallible> {
    Ok(())
}

/// Counts live threads of this process whose name starts with `prefix`
/// (Linux: `/proc/self/task/*/comm`, which holds at most 15 bytes).
pub fn count_threads(prefix: &str) -> usize {
    let prefix = &prefix[..prefix.len().min(15)];
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task is readable on Linux")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}

/// Polls `cond` until it holds; panics with `what` after [`TIMEOUT`].
/// For conditions only observable from outside (such as thread counts).
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::yield_now();
    }
}
