//! Issue item 5: per-worker state. `Builder::worker_state(|| S)` and
//! `ctx.worker_state::<S>()` give one `S` per worker thread, made lazily the
//! first time a task on that worker asks, dropped when the worker ends.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, ThreadId};
use std::time::Instant;

use bgtask::{Builder, TaskContext, TaskHandle, TaskManager};
use common::*;

/// What the factory and the states report to the test.
#[derive(Default)]
struct Counters {
    /// Factory calls.
    made: AtomicUsize,
    /// States dropped.
    dropped: AtomicUsize,
    /// The thread each factory call ran on, in call order.
    made_on: Mutex<Vec<ThreadId>>,
}

impl Counters {
    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// A worker's "connection": numbered at creation, counts the queries made
/// through it, and counts its drop.
struct Conn {
    /// 1 for the first state made by the factory, 2 for the next, ...
    serial: usize,
    /// Tasks that used this state.
    queries: usize,
    /// Shared with the test.
    counters: Arc<Counters>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.counters.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A builder whose workers each get a `Conn`, reporting to `counters`.
fn with_conn(max_threads: usize, counters: &Arc<Counters>) -> Builder {
    let counters = Arc::clone(counters);
    TaskManager::builder()
        .max_threads(max_threads)
        .start_processing(true)
        .worker_state(move || {
            let serial = counters.made.fetch_add(1, Ordering::SeqCst) + 1;
            counters
                .made_on
                .lock()
                .unwrap()
                .push(thread::current().id());
            Conn {
                serial,
                queries: 0,
                counters: Arc::clone(&counters),
            }
        })
}

/// What a task saw of its worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// The worker thread the task ran on.
    thread: ThreadId,
    /// The state's serial number.
    serial: usize,
    /// The state's address.
    addr: usize,
    /// The state's query count after this task's query.
    queries: usize,
}

/// Uses the worker's `Conn` once (one query) and reports what it saw.
fn query(ctx: &TaskContext) -> Seen {
    let conn = ctx
        .worker_state::<Conn>()
        .expect("a Conn factory is configured");
    conn.borrow_mut().queries += 1;
    let c = conn.borrow();
    Seen {
        thread: thread::current().id(),
        serial: c.serial,
        addr: Rc::as_ptr(&conn) as usize,
        queries: c.queries,
    }
}

/// A barrier for `n` tasks whose wait panics after [`TIMEOUT`]: tasks held
/// at it run at the same time, so each is on its own worker.
#[derive(Clone)]
struct Rendezvous {
    inner: Arc<(Mutex<usize>, Condvar)>,
    n: usize,
}

impl Rendezvous {
    fn new(n: usize) -> Self {
        Rendezvous {
            inner: Arc::new((Mutex::new(0), Condvar::new())),
            n,
        }
    }

    /// Arrives, then waits until all `n` have arrived.
    fn wait(&self) {
        let (lock, cv) = &*self.inner;
        let mut here = lock.lock().unwrap();
        *here += 1;
        cv.notify_all();
        let deadline = Instant::now() + TIMEOUT;
        while *here < self.n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {} tasks met at the rendezvous",
                *here,
                self.n
            );
            here = cv.wait_timeout(here, left).unwrap().0;
        }
    }
}

/// Waits for a task's value (panics on timeout or failure).
fn value<T: Copy + Send + Sync + 'static>(h: &TaskHandle<T>) -> T {
    *h.wait_timeout(TIMEOUT)
        .expect("task did not finish in time")
        .expect("task failed")
}

#[test]
fn state_is_made_lazily_once_per_worker_that_asks() {
    let counters = Arc::new(Counters::default());
    let m = with_conn(3, &counters).build().unwrap();

    // Three tasks held together start all three workers; none asks.
    let meet = Rendezvous::new(3);
    let silent: Vec<_> = (0..3)
        .map(|_| {
            let meet = meet.clone();
            m.add_task(move |_| {
                meet.wait();
                Ok::<_, Infallible>(thread::current().id())
            })
            .unwrap()
        })
        .collect();
    let silent_threads: HashSet<ThreadId> = silent.iter().map(value).collect();
    assert_eq!(silent_threads.len(), 3);
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(m.stats().workers, 3);
    assert_eq!(counters.made(), 0, "no task asked: no state is made");

    // Two askers held together (so on two workers), then four more askers.
    let meet = Rendezvous::new(2);
    let mut askers: Vec<TaskHandle<Seen>> = (0..2)
        .map(|_| {
            let meet = meet.clone();
            m.add_task(move |ctx| {
                let seen = query(ctx);
                meet.wait();
                Ok::<_, Infallible>(seen)
            })
            .unwrap()
        })
        .collect();
    for _ in 0..4 {
        askers.push(m.add_task(|ctx| Ok::<_, Infallible>(query(ctx))).unwrap());
    }
    let seen: Vec<Seen> = askers.iter().map(value).collect();
    assert!(m.wait_idle(TIMEOUT));

    let asking_threads: HashSet<ThreadId> = seen.iter().map(|s| s.thread).collect();
    assert!(asking_threads.len() >= 2, "two askers met at once");
    assert!(asking_threads.is_subset(&silent_threads));
    // Exactly one state per worker that asked, each made on that worker.
    assert_eq!(counters.made(), asking_threads.len());
    let made_on = counters.made_on.lock().unwrap().clone();
    assert_eq!(
        made_on.iter().copied().collect::<HashSet<_>>(),
        asking_threads
    );
    assert_eq!(made_on.len(), asking_threads.len());
    // Each worker saw one state throughout.
    let mut serial_of: HashMap<ThreadId, usize> = HashMap::new();
    for s in &seen {
        assert_eq!(*serial_of.entry(s.thread).or_insert(s.serial), s.serial);
    }

    // More tasks that do not ask make nothing.
    let more: Vec<_> = (0..3).map(|_| m.add_task(noop).unwrap()).collect();
    for h in &more {
        value(h);
    }
    assert_eq!(counters.made(), asking_threads.len());
    m.shut_down();
}

#[test]
fn one_worker_keeps_one_value_across_tasks() {
    let counters = Arc::new(Counters::default());
    let m = with_conn(1, &counters).build().unwrap();
    let handles: Vec<_> = (0..5)
        .map(|_| m.add_task(|ctx| Ok::<_, Infallible>(query(ctx))).unwrap())
        .collect();
    let seen: Vec<Seen> = handles.iter().map(value).collect();
    assert_eq!(
        seen.iter().map(|s| s.queries).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "the counter in the state increments across tasks"
    );
    assert!(seen.iter().all(|s| s.serial == 1));
    assert!(seen.iter().all(|s| s.addr == seen[0].addr));
    assert!(seen.iter().all(|s| s.thread == seen[0].thread));
    assert_eq!(counters.made(), 1);
    assert_eq!(counters.dropped(), 0);
    m.shut_down();
    assert_eq!(counters.dropped(), 1);
}

#[test]
fn each_worker_has_its_own_value() {
    let counters = Arc::new(Counters::default());
    let m = with_conn(2, &counters).build().unwrap();
    let meet = Rendezvous::new(2);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let meet = meet.clone();
            m.add_task(move |ctx| {
                let first = query(ctx);
                // Both tasks hold their state here at the same time.
                meet.wait();
                let again = query(ctx);
                Ok::<_, Infallible>((first, again))
            })
            .unwrap()
        })
        .collect();
    let seen: Vec<(Seen, Seen)> = handles.iter().map(value).collect();
    let (a, b) = (seen[0], seen[1]);
    assert_ne!(
        a.0.thread, b.0.thread,
        "they met, so they ran on two workers"
    );
    assert_ne!(a.0.serial, b.0.serial);
    assert_ne!(a.0.addr, b.0.addr);
    let mut serials = [a.0.serial, b.0.serial];
    serials.sort_unstable();
    assert_eq!(serials, [1, 2]);
    // Neither saw the other's query: one query each before, two after.
    for (first, again) in [a, b] {
        assert_eq!(first.queries, 1);
        assert_eq!(again.queries, 2);
        assert_eq!(first.serial, again.serial);
        assert_eq!(first.addr, again.addr);
    }
    assert_eq!(counters.made(), 2);
    m.shut_down();
}

#[test]
fn state_is_dropped_when_workers_end_at_shut_down() {
    let counters = Arc::new(Counters::default());
    let m = with_conn(3, &counters).build().unwrap();
    let meet = Rendezvous::new(3);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let meet = meet.clone();
            m.add_task(move |ctx| {
                let seen = query(ctx);
                meet.wait();
                Ok::<_, Infallible>(seen)
            })
            .unwrap()
        })
        .collect();
    for h in &handles {
        value(h);
    }
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(counters.made(), 3);
    assert_eq!(counters.dropped(), 0, "idle workers keep their state");
    // shut_down joins the workers: their thread-locals are gone by then.
    m.shut_down();
    assert_eq!(counters.dropped(), 3);
    assert_eq!(counters.dropped(), counters.made());
}

#[test]
fn state_of_a_retired_worker_is_dropped() {
    let counters = Arc::new(Counters::default());
    let m = with_conn(2, &counters)
        .thread_name("ws-retire")
        .build()
        .unwrap();
    let meet = Rendezvous::new(2);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let meet = meet.clone();
            m.add_task(move |ctx| {
                let seen = query(ctx);
                meet.wait();
                Ok::<_, Infallible>(seen)
            })
            .unwrap()
        })
        .collect();
    for h in &handles {
        value(h);
    }
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(counters.made(), 2);

    // Shrinking retires one idle worker; its thread ends on its own, so the
    // drop is only observable from outside, by polling.
    m.set_max_threads(1).unwrap();
    eventually("the retired worker's state is dropped", || {
        counters.dropped() == 1
    });
    assert_threads("ws-retire", 1);

    // The remaining worker still has its state: nothing new is made.
    let seen = value(&m.add_task(|ctx| Ok::<_, Infallible>(query(ctx))).unwrap());
    assert_eq!(seen.queries, 2);
    assert_eq!(counters.made(), 2);
    m.shut_down();
    assert_eq!(counters.dropped(), 2);
}

#[test]
fn none_without_a_factory() {
    let m = manager(1);
    let h = m
        .add_task(|ctx| {
            Ok::<_, Infallible>((
                ctx.worker_state::<u32>().is_none(),
                ctx.worker_state::<Conn>().is_none(),
            ))
        })
        .unwrap();
    assert_eq!(value(&h), (true, true));
    m.shut_down();
}

#[test]
fn none_for_another_type() {
    let counters = Arc::new(Counters::default());
    let m = with_conn(1, &counters).build().unwrap();
    let h = m
        .add_task(|ctx| {
            let wrong_first = ctx.worker_state::<String>().is_none();
            let right = ctx.worker_state::<Conn>().map(|c| c.borrow().serial);
            let wrong_after = ctx.worker_state::<u32>().is_none();
            Ok::<_, Infallible>((wrong_first, right, wrong_after))
        })
        .unwrap();
    assert_eq!(value(&h), (true, Some(1), true));
    assert_eq!(counters.made(), 1);
    m.shut_down();
    assert_eq!(counters.dropped(), 1);
}
