//! SPEC 4: failure. A task fails by returning `Err` or by panicking; the pool
//! survives; the failure cascades downstream, nearest first, ties by id.

mod common;

use std::backtrace::{Backtrace, BacktraceStatus};
use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, ThreadId};

use bgtask::{Event, Group, TaskContext, TaskHandle, TaskId, TaskManager};
use common::*;

/// The innermost cause of [`FetchError`].
#[derive(Debug)]
struct Root;

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset by peer")
    }
}

impl StdError for Root {}

/// The middle of the chain.
#[derive(Debug)]
struct Transport(Root);

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("transport error")
    }
}

impl StdError for Transport {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// A top-level error with a two-deep source chain.
#[derive(Debug)]
struct FetchError(Transport);

impl FetchError {
    fn new() -> Self {
        FetchError(Transport(Root))
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not fetch thumbnail")
    }
}

impl StdError for FetchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// Adds a task failing with [`FetchError`] through `add_task`; returns the
/// handle and the location of the call (the caller's, via `track_caller`).
#[track_caller]
fn add_fetch_failure(m: &TaskManager) -> (TaskHandle<()>, &'static Location<'static>) {
    let at = Location::caller();
    let h = m
        .add_task(|_: &TaskContext| -> Result<(), FetchError> { Err(FetchError::new()) })
        .unwrap();
    (h, at)
}

/// Same through the builder, in group `g`.
#[track_caller]
fn spawn_fetch_failure(m: &TaskManager, g: &str) -> (TaskHandle<()>, &'static Location<'static>) {
    let at = Location::caller();
    let h = m
        .task()
        .group(g)
        .spawn(|_: &TaskContext| -> Result<(), FetchError> { Err(FetchError::new()) })
        .unwrap();
    (h, at)
}

/// Unpacks a `Failed` event; panics on anything else.
fn failed(e: &Event) -> (TaskId, &str, &str) {
    match e {
        Event::Failed {
            id,
            message,
            traceback,
            ..
        } => (*id, message.as_str(), traceback.as_str()),
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// `file:line:column` of a location.
fn place(at: &Location<'_>) -> String {
    format!("{}:{}:{}", at.file(), at.line(), at.column())
}

#[test]
fn err_message_is_top_level_display_and_traceback_has_chain_and_add_site() {
    let m = paused(1);
    let sub = m.subscribe();
    let (first, first_at) = add_fetch_failure(&m);
    let (second, second_at) = spawn_fetch_failure(&m, "fetch");
    assert!(first_at.file().ends_with("failure.rs"), "{first_at}");
    assert_ne!(first_at.line(), second_at.line());
    m.start_processing();

    for (h, at) in [(&first, first_at), (&second, second_at)] {
        let e = next(&sub);
        let (id, message, traceback) = failed(&e);
        assert_eq!(id, h.id());
        assert_eq!(message, "could not fetch thumbnail");
        assert!(!message.contains("transport error"), "{message}");
        assert!(!message.contains("connection reset"), "{message}");
        let c1 = traceback
            .find("caused by: transport error")
            .unwrap_or_else(|| panic!("no first cause in traceback:\n{traceback}"));
        let c2 = traceback
            .find("caused by: connection reset by peer")
            .unwrap_or_else(|| panic!("no root cause in traceback:\n{traceback}"));
        assert!(c1 < c2, "causes out of order:\n{traceback}");
        assert!(
            traceback.contains(&place(at)),
            "traceback does not name the add site {}:\n{traceback}",
            place(at)
        );
    }
    assert_eq!(ev(&next(&sub)), Ev::GroupDone(Group::from("fetch")));
    assert_quiet(&m, &sub);
}

#[test]
fn err_without_source_uses_display_and_traceback_is_not_empty() {
    let m = manager(1);
    let sub = m.subscribe();
    let parse = m.add_task(|_: &TaskContext| "abc".parse::<u32>()).unwrap();
    let text = m
        .add_task(|_: &TaskContext| -> Result<(), &str> { Err("disk full") })
        .unwrap();
    let owned = m
        .add_task(|_: &TaskContext| -> Result<(), String> { Err(format!("quota {} exceeded", 3)) })
        .unwrap();
    let expected = [
        (parse.id(), "invalid digit found in string"),
        (text.id(), "disk full"),
        (owned.id(), "quota 3 exceeded"),
    ];
    for (want_id, want_msg) in expected {
        let e = next(&sub);
        let (id, message, traceback) = failed(&e);
        assert_eq!(id, want_id);
        assert_eq!(message, want_msg);
        assert!(!traceback.trim().is_empty());
        assert!(!traceback.contains("caused by"), "{traceback}");
        assert!(traceback.contains(file!()), "{traceback}");
    }
    assert_quiet(&m, &sub);
}

#[test]
fn panic_payload_str_and_string_become_the_message() {
    let m = paused(1);
    let sub = m.subscribe();
    let lines: Vec<Arc<AtomicU32>> = (0..4).map(|_| Arc::new(AtomicU32::new(0))).collect();

    let l = Arc::clone(&lines[0]);
    let lit = m
        .add_task(move |_: &TaskContext| -> Result<(), Infallible> {
            l.store(line!() + 1, Ordering::SeqCst);
            panic!("static payload");
        })
        .unwrap();
    let l = Arc::clone(&lines[1]);
    let any_str = m
        .add_task(move |_: &TaskContext| -> Result<(), Infallible> {
            l.store(line!() + 1, Ordering::SeqCst);
            std::panic::panic_any("panic_any with &str");
        })
        .unwrap();
    let l = Arc::clone(&lines[2]);
    let n = 17;
    let fmt = m
        .add_task(move |_: &TaskContext| -> Result<(), Infallible> {
            l.store(line!() + 1, Ordering::SeqCst);
            panic!("item {n} is corrupt");
        })
        .unwrap();
    let l = Arc::clone(&lines[3]);
    let any_string = m
        .add_task(move |_: &TaskContext| -> Result<(), Infallible> {
            l.store(line!() + 1, Ordering::SeqCst);
            std::panic::panic_any(format!("owned {} payload", "String"));
        })
        .unwrap();
    m.start_processing();

    let wants_backtrace = Backtrace::capture().status() == BacktraceStatus::Captured;
    let expected = [
        (lit.id(), "static payload"),
        (any_str.id(), "panic_any with &str"),
        (fmt.id(), "item 17 is corrupt"),
        (any_string.id(), "owned String payload"),
    ];
    for (i, (want_id, want_msg)) in expected.into_iter().enumerate() {
        let e = next(&sub);
        let (id, message, traceback) = failed(&e);
        assert_eq!(id, want_id);
        assert_eq!(message, want_msg);
        assert!(
            traceback.starts_with("panicked at"),
            "traceback does not start with `panicked at`:\n{traceback}"
        );
        if wants_backtrace {
            // RUST_BACKTRACE asks for one: it is there, after the location.
            assert!(
                traceback.contains("\nstack backtrace:\n"),
                "no backtrace although RUST_BACKTRACE asks for one:\n{traceback}"
            );
            // With debug assertions (and so, in the test profile, debug
            // info) the task's closure is a frame of its own. A release
            // build without debug info inlines it into the worker and keeps
            // no record of the inlining (RELIABILITY.md finding 23).
            if cfg!(debug_assertions) {
                assert!(
                    traceback.contains("panic_payload_str_and_string_become_the_message"),
                    "the task's frame is not in the backtrace:\n{traceback}"
                );
            }
        }
        let line = lines[i].load(Ordering::SeqCst);
        let loc = format!("{}:{line}:", file!());
        assert!(
            traceback.contains(&loc),
            "traceback does not name the panic site {loc}:\n{traceback}"
        );
    }
    assert_quiet(&m, &sub);
}

#[test]
fn worker_survives_panics_and_errors_on_the_same_thread() {
    let m = TaskManager::builder()
        .max_threads(1)
        .thread_name("fail-survive")
        .start_processing(true)
        .build()
        .unwrap();
    let sub = m.subscribe();
    let (tx, rx) = mpsc::channel::<ThreadId>();

    let tx1 = tx.clone();
    let boom = m
        .add_task(move |_: &TaskContext| -> Result<(), Infallible> {
            tx1.send(thread::current().id()).unwrap();
            panic!("worker must survive this");
        })
        .unwrap();
    let after_panic = m
        .add_task(|_: &TaskContext| {
            let me = thread::current();
            assert!(me.name().unwrap_or("").starts_with("fail-survive"));
            Ok::<_, Infallible>(me.id())
        })
        .unwrap();
    let tx2 = tx.clone();
    let err = m
        .add_task(move |_: &TaskContext| -> Result<(), &str> {
            tx2.send(thread::current().id()).unwrap();
            Err("plain error")
        })
        .unwrap();
    let again = m
        .add_task(move |_: &TaskContext| -> Result<(), Infallible> {
            tx.send(thread::current().id()).unwrap();
            panic!("second panic");
        })
        .unwrap();
    let last = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(thread::current().id()))
        .unwrap();

    let worker = rx
        .recv_timeout(TIMEOUT)
        .expect("panicking task did not run");
    let events = take(&sub, 5);
    assert_eq!(
        events.iter().map(ev).collect::<Vec<_>>(),
        [
            Ev::Failed(boom.id(), "worker must survive this".into()),
            Ev::Done(after_panic.id()),
            Ev::Failed(err.id(), "plain error".into()),
            Ev::Failed(again.id(), "second panic".into()),
            Ev::Done(last.id()),
        ]
    );
    for i in [1, 4] {
        match &events[i] {
            Event::Completed { result, .. } => {
                assert_eq!(result.downcast_ref::<ThreadId>(), Some(&worker));
            }
            other => panic!("expected Completed, got {other:?}"),
        }
    }
    for _ in 0..2 {
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), worker);
    }
    assert_threads("fail-survive", 1);
    assert_quiet(&m, &sub);
}

#[test]
fn cascade_goes_by_distance_then_id_with_same_message_and_traceback() {
    let m = paused(1);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let after = |ups: &[TaskId]| {
        m.task()
            .after(ups.to_vec())
            .spawn(counting(&ran))
            .unwrap()
            .id()
    };

    let a = m
        .add_task(|_: &TaskContext| -> Result<(), &str> { Err("a broke") })
        .unwrap()
        .id();
    let b1 = after(&[a]); //       distance 1
    let c = after(&[b1]); //       distance 2
    let d = after(&[c]); //        distance 3
    let b2 = after(&[a]); //       distance 1, larger id than c and d
    let e = after(&[d, a]); //     distance 1 (via a), 4 via d
    let f = after(&[b2]); //       distance 2
    let g = after(&[d, b1]); //    distance 2 (via b1), 4 via d
    let h = after(&[f]); //        distance 3
    let unrelated = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(()))
        .unwrap()
        .id();
    let k = after(&[h, unrelated]); // distance 4; its other upstream completes
    assert!(
        b2 > c && b2 > d && e > d,
        "the graph must mix id and distance order"
    );

    m.start_processing();
    let order = [a, b1, b2, e, c, f, g, d, h, k];
    let events = take(&sub, order.len());
    let (_, _, root_traceback) = failed(&events[0]);
    assert!(!root_traceback.is_empty());
    for (want, e) in order.iter().zip(&events) {
        let (id, message, traceback) = failed(e);
        assert_eq!(
            id,
            *want,
            "cascade order: got {:?}",
            events.iter().map(id_of).collect::<Vec<_>>()
        );
        assert_eq!(message, "a broke");
        assert_eq!(traceback, root_traceback);
    }
    assert_eq!(ev(&next(&sub)), Ev::Done(unrelated));
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a downstream task ran");
}

#[test]
fn cascade_from_a_panic_carries_the_panic_message() {
    let m = paused(2);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let p = m
        .add_task(|_: &TaskContext| -> Result<(), Infallible> { panic!("root panic") })
        .unwrap();
    let q = m.task().after([&p]).spawn(counting(&ran)).unwrap();
    let r = m.task().after([&q]).spawn(counting(&ran)).unwrap();
    m.start_processing();
    let events = take(&sub, 3);
    let (_, _, tb) = failed(&events[0]);
    assert!(tb.starts_with("panicked at"), "{tb}");
    for (want, e) in [p.id(), q.id(), r.id()].into_iter().zip(&events) {
        let (id, message, traceback) = failed(e);
        assert_eq!(id, want);
        assert_eq!(message, "root panic");
        assert_eq!(traceback, tb);
    }
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn downstream_of_failed_task_never_runs_with_free_workers() {
    let m = manager(4);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let g2 = gate.clone();
    let (tx, rx) = mpsc::channel();
    let root = m
        .add_task(move |_: &TaskContext| -> Result<(), &str> {
            tx.send(()).unwrap();
            g2.wait();
            Err("root failed late")
        })
        .unwrap();
    rx.recv_timeout(TIMEOUT).expect("root did not start");
    // A tree of 20 tasks below root, added while root runs and 3 workers idle.
    let mut ids = vec![root.id()];
    for i in 0..20 {
        let up = ids[i / 2];
        ids.push(m.task().after([up]).spawn(counting(&ran)).unwrap().id());
    }
    gate.open();
    let events = take(&sub, 21);
    let mut seen: Vec<TaskId> = events
        .iter()
        .map(|e| {
            let (id, message, _) = failed(e);
            assert_eq!(message, "root failed late");
            id
        })
        .collect();
    assert_eq!(seen[0], root.id());
    seen.sort();
    assert_eq!(seen, ids);
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a downstream task ran");
}

#[test]
fn two_upstreams_one_fails_while_other_runs() {
    let m = manager(2);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let (slow, slow_rx) = add_blocker(&m, &gate);
    started(&slow_rx);
    let bad = m
        .add_task(|_: &TaskContext| -> Result<(), &str> { Err("bad upstream") })
        .unwrap();
    let join = m
        .task()
        .after([slow.id(), bad.id()])
        .spawn(counting(&ran))
        .unwrap();
    assert_eq!(
        take_ev(&sub, 2),
        [
            Ev::Failed(bad.id(), "bad upstream".into()),
            Ev::Failed(join.id(), "bad upstream".into()),
        ]
    );
    gate.open();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(slow.id())]);
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn two_upstreams_one_completes_first_then_other_fails() {
    let m = paused(1);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let ok = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(1u8))
        .unwrap();
    let bad = m
        .add_task(|_: &TaskContext| -> Result<(), &str> { Err("second upstream failed") })
        .unwrap();
    let join = m
        .task()
        .after([ok.id(), bad.id()])
        .spawn(counting(&ran))
        .unwrap();
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 3),
        [
            Ev::Done(ok.id()),
            Ev::Failed(bad.id(), "second upstream failed".into()),
            Ev::Failed(join.id(), "second upstream failed".into()),
        ]
    );
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn ten_thousand_panics_leave_the_pool_working() {
    const N: usize = 10_000;
    let m = TaskManager::builder()
        .max_threads(4)
        .thread_name("fail-10k")
        .start_processing(true)
        .build()
        .unwrap();
    let sub = m.subscribe();
    assert_eq!(count_threads("fail-10k"), 0, "workers start lazily");

    // Bring up all four workers.
    let gate = Gate::new();
    let warm: Vec<_> = (0..4).map(|_| add_blocker(&m, &gate)).collect();
    for (_, rx) in &warm {
        started(rx);
    }
    gate.open();
    for e in take_ev(&sub, 4) {
        assert!(matches!(e, Ev::Done(_)), "{e:?}");
    }
    assert!(m.wait_idle(TIMEOUT));
    // (Polled: a read of /proc/self/task can miss entries while another
    // test's thread exits.)
    assert_threads("fail-10k", 4);

    let mut index: HashMap<TaskId, usize> = HashMap::with_capacity(N);
    for i in 0..N {
        let h = m
            .add_task(move |_: &TaskContext| -> Result<(), Infallible> {
                panic!("panic number {i}");
            })
            .unwrap();
        index.insert(h.id(), i);
    }
    for e in take(&sub, N) {
        let (id, message, traceback) = failed(&e);
        let i = index
            .remove(&id)
            .unwrap_or_else(|| panic!("unexpected or duplicate event for {id:?}"));
        assert_eq!(message, format!("panic number {i}"));
        assert!(traceback.starts_with("panicked at"), "{traceback}");
    }
    assert!(index.is_empty());
    assert!(m.wait_idle(TIMEOUT));
    assert_threads("fail-10k", 4);

    let ok = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(42u32))
        .unwrap();
    match next(&sub) {
        Event::Completed { id, result, .. } => {
            assert_eq!(id, ok.id());
            assert_eq!(result.downcast_ref::<u32>(), Some(&42));
        }
        other => panic!("expected Completed, got {other:?}"),
    }
    assert_threads("fail-10k", 4);
    assert_quiet(&m, &sub);
}

#[test]
fn group_finished_comes_right_after_failed_of_last_member() {
    let m = paused(1);
    let sub = m.subscribe();
    let ga = Group::from("ga");
    let gb = Group::from("gb");
    let gc = m.next_group_id();

    // ga: one member completes, the last one fails.
    let x = m
        .task()
        .group(&ga)
        .spawn(|_: &TaskContext| Ok::<_, Infallible>(()))
        .unwrap();
    let y = m
        .task()
        .group(&ga)
        .spawn(|_: &TaskContext| -> Result<(), &str> { Err("y failed") })
        .unwrap();
    // gb: a lone failing root; gc: its downstream, failed by the cascade.
    let p = m
        .task()
        .group(&gb)
        .spawn(|_: &TaskContext| -> Result<(), Infallible> { panic!("p panicked") })
        .unwrap();
    let q = m
        .task()
        .group(&gc)
        .after([&p])
        .spawn(|_: &TaskContext| Ok::<_, Infallible>(()))
        .unwrap();
    let r = m
        .task()
        .group(&gc)
        .after([&q])
        .spawn(|_: &TaskContext| Ok::<_, Infallible>(()))
        .unwrap();
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 8),
        [
            Ev::Done(x.id()),
            Ev::Failed(y.id(), "y failed".into()),
            Ev::GroupDone(ga),
            Ev::Failed(p.id(), "p panicked".into()),
            Ev::GroupDone(gb),
            Ev::Failed(q.id(), "p panicked".into()),
            Ev::Failed(r.id(), "p panicked".into()),
            Ev::GroupDone(gc),
        ]
    );
    assert_quiet(&m, &sub);
}
