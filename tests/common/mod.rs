//! Helpers shared by the integration tests: gates that hold a task running,
//! event collection with loud timeouts, concurrency metering, and thread
//! counting.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bgtask::{
    Event, Group, RecvError, Subscription, TaskBuilder, TaskContext, TaskHandle, TaskId,
    TaskManager, TaskResult,
};

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

/// A manager with `n` workers named `"{prefix}-{index}"`, processing on.
pub fn named(n: usize, prefix: &str) -> TaskManager {
    // Thread names are cut at 15 bytes; leave room for "-{index}".
    assert!(
        prefix.len() <= 12,
        "prefix {prefix:?} too long: thread names are cut at 15 bytes"
    );
    TaskManager::builder()
        .max_threads(n)
        .thread_name(prefix)
        .start_processing(true)
        .build()
        .unwrap()
}

/// (queued, blocked, running) of the whole manager now.
pub fn counts(m: &TaskManager) -> (usize, usize, usize) {
    let t = m.stats().tasks;
    (t.queued, t.blocked, t.running)
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

    /// An open gate: every waiter passes at once.
    pub fn opened() -> Self {
        let gate = Gate::new();
        gate.open();
        gate
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

/// Spawns from `builder` a task that signals when it starts, holds its
/// worker until `gate` opens, then returns `value`. Returns the handle and a
/// receiver of the start signal.
pub fn spawn_blocker<T: Send + Sync + 'static>(
    builder: TaskBuilder<'_>,
    gate: &Gate,
    value: T,
) -> (TaskHandle<T>, mpsc::Receiver<TaskId>) {
    let (tx, rx) = mpsc::channel();
    let gate = gate.clone();
    let h = builder
        .spawn(move |ctx: &TaskContext| {
            let _ = tx.send(ctx.id());
            gate.wait();
            Ok::<_, Infallible>(value)
        })
        .unwrap();
    (h, rx)
}

/// Adds a task that signals when it starts and then holds its worker until
/// `gate` opens. Returns the handle and a receiver of the start signal.
pub fn add_blocker(m: &TaskManager, gate: &Gate) -> (TaskHandle<()>, mpsc::Receiver<TaskId>) {
    spawn_blocker(m.task(), gate, ())
}

/// Waits for a start signal from [`add_blocker`].
pub fn started(rx: &mpsc::Receiver<TaskId>) -> TaskId {
    rx.recv_timeout(TIMEOUT)
        .expect("blocking task did not start")
}

/// Receives `n` start signals (task ids), in order; panics after
/// [`TIMEOUT`] for each.
pub fn starts(rx: &mpsc::Receiver<TaskId>, n: usize) -> Vec<TaskId> {
    (0..n)
        .map(|_| rx.recv_timeout(TIMEOUT).expect("a task did not start"))
        .collect()
}

/// Waits for a handle's result with [`TIMEOUT`]; panics if it failed.
pub fn done<T: Send + Sync + 'static>(h: &TaskHandle<T>) -> Arc<T> {
    h.wait_timeout(TIMEOUT)
        .expect("the task did not end")
        .expect("the task failed")
}

/// Runs the blocking `sub.recv()` on a helper thread, so that a hang fails
/// the test after [`TIMEOUT`] instead of hanging it. Returns its result, the
/// event as `Debug` text.
pub fn recv_on_helper(sub: Subscription) -> Result<String, RecvError> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(sub.recv().map(|e| format!("{e:?}")));
    });
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("recv did not return within {TIMEOUT:?}"))
}

/// A task body that returns `()`.
pub fn noop(_: &TaskContext) -> Result<(), Infallible> {
    Ok(())
}

/// A task body that counts how often it ran in `counter`.
pub fn counting(
    counter: &Arc<AtomicUsize>,
) -> impl FnOnce(&TaskContext) -> Result<(), Infallible> + Send + 'static {
    let counter = Arc::clone(counter);
    move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Adds a task after `after` that only counts how often its body ran.
pub fn counted(m: &TaskManager, counter: &Arc<AtomicUsize>, after: &[TaskId]) -> TaskId {
    m.task()
        .after(after.iter().copied())
        .spawn(counting(counter))
        .unwrap()
        .id()
}

/// A shared log of task ids, in the order their bodies ran.
pub type Log = Arc<Mutex<Vec<TaskId>>>;

/// A task body that appends its id to `log`.
pub fn logger(log: &Log) -> impl FnOnce(&TaskContext) -> Result<(), Infallible> + Send + 'static {
    let log = Arc::clone(log);
    move |ctx| {
        log.lock().unwrap().push(ctx.id());
        Ok(())
    }
}

/// Adds a task with `priority` that appends its id to `log` when it runs.
pub fn add_logged(m: &TaskManager, log: &Log, priority: i32) -> TaskId {
    m.task().priority(priority).spawn(logger(log)).unwrap().id()
}

/// Counts the task bodies running at once and remembers the most seen at
/// once (the high-water mark). Clones share the counts.
#[derive(Clone, Default)]
pub struct Meter {
    now: Arc<AtomicUsize>,
    high: Arc<AtomicUsize>,
}

impl Meter {
    /// A body starts; returns how many run now, itself included.
    pub fn enter(&self) -> usize {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.high.fetch_max(n, Ordering::SeqCst);
        n
    }

    /// A body is about to return.
    pub fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    /// How many bodies run now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// The most bodies that ran at once.
    pub fn high(&self) -> usize {
        self.high.load(Ordering::SeqCst)
    }
}

/// Spawns from `builder` a task that enters `meter`, sends its id on
/// `started`, waits for `gate`, and leaves; it returns how many ran when it
/// entered, itself included.
pub fn spawn_gated(
    builder: TaskBuilder<'_>,
    meter: &Meter,
    started: &mpsc::Sender<TaskId>,
    gate: &Gate,
) -> TaskHandle<usize> {
    let (meter, started, gate) = (meter.clone(), started.clone(), gate.clone());
    builder
        .spawn(move |ctx: &TaskContext| {
            let n = meter.enter();
            let _ = started.send(ctx.id());
            gate.wait();
            meter.leave();
            Ok::<_, Infallible>(n)
        })
        .unwrap()
}

/// [`spawn_gated`] for a task without group or priority.
pub fn add_gated(
    m: &TaskManager,
    meter: &Meter,
    started: &mpsc::Sender<TaskId>,
    gate: &Gate,
) -> TaskHandle<usize> {
    spawn_gated(m.task(), meter, started, gate)
}

/// [`spawn_gated`] for a task of `group` with `priority`.
pub fn gated(
    m: &TaskManager,
    group: &Group,
    priority: i32,
    meter: &Meter,
    started: &mpsc::Sender<TaskId>,
    gate: &Gate,
) -> TaskHandle<usize> {
    spawn_gated(
        m.task().group(group.clone()).priority(priority),
        meter,
        started,
        gate,
    )
}

/// Counts live threads of this process whose name starts with `prefix`
/// (Linux: `/proc/self/task/*/comm`, which holds at most 15 bytes).
///
/// The most of three reads: one listing of `/proc/self/task` can leave out
/// a live thread while another thread of the process exits (RELIABILITY.md,
/// finding 25: 3 wrong counts of 4 live threads in 60,000 single reads, and
/// 23 "no thread left" in 3,000 polls while one still ran, under thread
/// churn; none of either with the most of three). Tests in one binary start
/// and end worker threads all the time.
pub fn count_threads(prefix: &str) -> usize {
    let prefix = &prefix[..prefix.len().min(15)];
    let once = || {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task is readable on Linux")
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim_end().starts_with(prefix))
            .count()
    };
    (0..3).map(|_| once()).max().unwrap_or(0)
}

/// Asserts that `n` threads named `prefix-*` exist, polling: reading
/// /proc/self/task can miss entries while any thread of the process exits
/// (other tests run in parallel), and a joined or retired thread may stay
/// listed for a moment after it ended.
pub fn assert_threads(prefix: &str, n: usize) {
    eventually(&format!("{n} threads named {prefix}-*"), || {
        count_threads(prefix) == n
    });
}

/// Checks the thread count of `prefix` drops to 0.
///
/// Why `eventually` and not an exact count at once: the kernel wakes a
/// joiner (clearing the thread's tid) slightly before it removes the exiting
/// thread from the thread group, so for a moment after a join
/// `/proc/self/task` can still list the joined thread. Workers that are not
/// joined (drop, shut-down from inside a task) exit on their own shortly
/// after their task returns.
pub fn no_thread_left(prefix: &str) {
    eventually(&format!("no {prefix} worker thread left"), || {
        count_threads(prefix) == 0
    });
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

/// Asserts that two tasks of `m` (two workers) start at once: no worker
/// was lost.
pub fn assert_two_workers_take_tasks(m: &TaskManager) {
    let gate = Gate::new();
    let (h1, rx1) = add_blocker(m, &gate);
    let (h2, rx2) = add_blocker(m, &gate);
    started(&rx1);
    started(&rx2);
    gate.open();
    done(&h1);
    done(&h2);
}

/// A task result whose `Drop` panics (user code the manager must contain).
pub struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("a result that panics when dropped");
        }
    }
}

/// Receives the next event, which must be the `Completed` of `id`;
/// returns its result.
pub fn next_completed(sub: &Subscription, id: TaskId) -> TaskResult {
    match next(sub) {
        Event::Completed {
            id: got, result, ..
        } => {
            assert_eq!(got, id, "the Completed of another task");
            result
        }
        other => panic!("expected the Completed of {id:?}, got {other:?}"),
    }
}
