//! Beyond the original, item 1: typed results. `TaskHandle<T>` waits for
//! its task (blocking with `wait` / `wait_timeout`, or as a `Future` on any
//! executor) and returns the task's `Arc<T>` or a `TaskError`;
//! `Event::result::<T>()` reads a `Completed` result as `&T`; and
//! `ctx.upstream(&handle)` gives a downstream task the typed result of an
//! upstream one.

mod common;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bgtask::{Event, Kwargs, TaskContext, TaskError, TaskHandle, TaskId};
use common::*;

/// A result type that is neither `Copy` nor `Clone`: what a handle gives
/// back must be the task's own value, shared.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    name: String,
    sizes: Vec<u32>,
}

fn report() -> Report {
    Report {
        name: "thumbs".to_string(),
        sizes: vec![64, 128, 256],
    }
}

/// An error with a source, so that `Display` (top level only) differs from
/// the whole chain.
#[derive(Debug)]
struct DiskFull {
    source: std::io::Error,
}

impl fmt::Display for DiskFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disk full while writing the cache")
    }
}

impl std::error::Error for DiskFull {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Waits on `h` with [`TIMEOUT`], panicking if the task has not ended.
fn wait_for<T: Send + Sync + 'static>(h: &TaskHandle<T>) -> Result<Arc<T>, TaskError> {
    h.wait_timeout(TIMEOUT)
        .unwrap_or_else(|| panic!("task {:?} did not end within {TIMEOUT:?}", h.id()))
}

/// Unwraps a `TaskError::Failed` into `(message, traceback)`.
fn failed<T: fmt::Debug>(r: Result<T, TaskError>) -> (String, String) {
    match r {
        Err(TaskError::Failed { message, traceback }) => (message, traceback),
        other => panic!("expected TaskError::Failed, got {other:?}"),
    }
}

/// Runs `f` on a new thread and returns its value, panicking if it takes
/// longer than [`TIMEOUT`] (for executors whose `block_on` has no timeout:
/// a future that is never woken fails the test instead of hanging it).
fn within_timeout<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|e| panic!("{what} did not finish within {TIMEOUT:?}: {e}"))
}

/// Awaits `f` under tokio, panicking if it takes longer than [`TIMEOUT`].
/// (An `async fn`, so that the timer is made inside the runtime.)
async fn in_time<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not resolve within {TIMEOUT:?}"))
}

// ---------------------------------------------------------------------------
// wait / wait_timeout: results
// ---------------------------------------------------------------------------

#[test]
fn wait_returns_the_tasks_arc_with_a_subscriber() {
    let m = manager(2);
    let sub = m.subscribe();
    let h = m.add_task(|_| Ok::<_, Infallible>(report())).unwrap();
    let got: Arc<Report> = h.wait().expect("the task completed");
    assert_eq!(*got, report());

    // The event carries the very same value (shared, not copied).
    let event = next(&sub);
    assert_eq!(event.task_id(), Some(h.id()));
    let Event::Completed { result, .. } = &event else {
        panic!("expected Completed, got {event:?}");
    };
    let from_event = result.downcast_arc::<Report>().expect("a Report result");
    assert!(
        Arc::ptr_eq(&got, &from_event),
        "wait() must return the task's own Arc, the one the event holds"
    );
    // Waiting again, after delivery, gives the same Arc again.
    assert!(Arc::ptr_eq(&got, &h.wait().unwrap()));
    assert_quiet(&m, &sub);
}

#[test]
fn wait_returns_the_arc_without_any_subscriber() {
    let m = manager(2);
    let h = m.add_task(|_| Ok::<_, Infallible>(report())).unwrap();
    let first = wait_for(&h).expect("the task completed");
    assert_eq!(*first, report());
    let again = h.wait().expect("still completed");
    assert!(Arc::ptr_eq(&first, &again), "both waits share one value");

    // Scalars and unit work the same way.
    let n = m.add_task(|_| Ok::<_, Infallible>(6u64 * 7)).unwrap();
    assert_eq!(*n.wait().unwrap(), 42u64);
    let unit = m.add_task(noop).unwrap();
    assert!(unit.wait().is_ok(), "a unit task completes");
}

#[test]
fn wait_blocks_until_a_gated_task_ends() {
    let m = manager(1);
    let gate = Gate::new();
    let (h, started_rx) = spawn_blocker(m.task(), &gate, 7u32);
    assert_eq!(started(&started_rx), h.id());

    // The timeout is what is under test here: the task cannot end while
    // the gate is shut, so wait_timeout must give up, and not early.
    let short = Duration::from_millis(50);
    let t0 = Instant::now();
    assert_eq!(h.wait_timeout(short), None, "the task is still held");
    assert!(
        t0.elapsed() >= short,
        "wait_timeout returned None after {:?}, before its timeout {short:?}",
        t0.elapsed()
    );
    assert!(!h.is_finished());

    let (about_tx, about_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = {
        let h = h.clone();
        thread::spawn(move || {
            about_tx.send(()).unwrap();
            let r = h.wait();
            done_tx.send(r).unwrap();
        })
    };
    about_rx
        .recv_timeout(TIMEOUT)
        .expect("the waiter thread did not start");
    // The gate is shut: the waiter cannot have a result yet.
    assert_eq!(done_rx.try_recv(), Err(mpsc::TryRecvError::Empty));

    let opener = {
        let gate = gate.clone();
        thread::spawn(move || gate.open())
    };
    let r = done_rx
        .recv_timeout(TIMEOUT)
        .expect("wait() did not return after the gate opened");
    assert_eq!(*r.expect("the task completed"), 7);
    opener.join().unwrap();
    waiter.join().unwrap();
    assert!(h.is_finished());
}

#[test]
fn wait_timeout_returns_some_ok_once_done() {
    let m = manager(1);
    let gate = Gate::new();
    let (h, started_rx) = spawn_blocker(m.task(), &gate, String::from("done"));
    started(&started_rx);
    assert_eq!(h.wait_timeout(Duration::from_millis(1)), None);
    gate.open();
    let r = h
        .wait_timeout(TIMEOUT)
        .expect("the task ended within TIMEOUT");
    assert_eq!(r.expect("the task completed").as_str(), "done");
    // Once done, even a zero timeout answers at once.
    let again = h
        .wait_timeout(Duration::ZERO)
        .expect("a finished task answers a zero timeout");
    assert_eq!(again.unwrap().as_str(), "done");
}

// ---------------------------------------------------------------------------
// wait / wait_timeout: errors
// ---------------------------------------------------------------------------

#[test]
fn err_gives_failed_with_the_display_message_and_a_traceback() {
    let m = manager(1);
    let sub = m.subscribe();
    let h = m
        .add_task(|_| -> Result<u32, DiskFull> {
            Err(DiskFull {
                source: std::io::Error::other("no space left on device"),
            })
        })
        .unwrap();
    let (message, traceback) = failed(wait_for(&h));
    assert_eq!(message, "disk full while writing the cache");
    assert!(!traceback.is_empty(), "the traceback is never empty");
    assert!(
        traceback.contains("handles.rs"),
        "an Err's traceback names where the task was added: {traceback:?}"
    );

    // The same message and traceback as the task's Failed event.
    match next(&sub) {
        Event::Failed {
            id,
            message: ev_message,
            traceback: ev_traceback,
            ..
        } => {
            assert_eq!(id, h.id());
            assert_eq!(ev_message, message);
            assert_eq!(ev_traceback, traceback);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // The TaskError's own Display carries the message.
    let e = h.wait().unwrap_err();
    assert!(e.to_string().contains("disk full while writing the cache"));
}

#[test]
fn str_error_message_is_its_display() {
    let m = manager(1);
    let h = m.add_task(|_| "abc".parse::<u32>()).unwrap();
    let (message, traceback) = failed(wait_for(&h));
    let expected = "abc".parse::<u32>().unwrap_err().to_string();
    assert_eq!(message, expected);
    assert!(!traceback.is_empty());
}

#[test]
fn panic_gives_failed_with_the_panic_message() {
    let m = manager(1);
    let h = m
        .add_task(|_| -> Result<u32, Infallible> { panic!("decoder crashed on frame {}", 17) })
        .unwrap();
    let (message, traceback) = failed(wait_for(&h));
    assert_eq!(message, "decoder crashed on frame 17");
    assert!(!traceback.is_empty(), "the traceback is never empty");
    assert!(
        traceback.contains("handles.rs"),
        "a panic's traceback names its source location: {traceback:?}"
    );

    // The worker survived: the next task still runs.
    let ok = m.add_task(|_| Ok::<_, Infallible>(1u8)).unwrap();
    assert_eq!(*wait_for(&ok).unwrap(), 1);

    // A static-str panic payload too.
    let h2 = m
        .add_task(|_| -> Result<(), Infallible> { panic!("plain") })
        .unwrap();
    assert_eq!(failed(wait_for(&h2)).0, "plain");
}

#[test]
fn task_stopped_while_queued_gives_stopped_and_never_runs() {
    let m = paused(1);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicBool::new(false));
    let h = {
        let ran = Arc::clone(&ran);
        m.add_task(move |_| {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, Infallible>(5u32)
        })
        .unwrap()
    };
    assert!(!h.is_finished());
    assert_eq!(m.stop_task(h.id(), false, false), 1);
    assert!(h.is_finished(), "a stopped task has ended");
    assert_eq!(wait_for(&h), Err(TaskError::Stopped));
    assert_eq!(h.wait(), Err(TaskError::Stopped));
    m.start_processing();
    assert_quiet(&m, &sub);
    assert!(
        !ran.load(Ordering::SeqCst),
        "a stopped queued task never runs"
    );
}

#[test]
fn running_task_stopped_gives_stopped_after_it_returns() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (returned_tx, returned_rx) = mpsc::channel();
    let (h, started_rx) = {
        let (tx, rx) = mpsc::channel();
        let gate = gate.clone();
        let h = m
            .add_task(move |ctx: &TaskContext| {
                tx.send(ctx.id()).unwrap();
                gate.wait();
                returned_tx.send(()).unwrap();
                Ok::<_, Infallible>(5u32)
            })
            .unwrap();
        (h, rx)
    };
    started(&started_rx);
    assert_eq!(m.stop_task(h.id(), false, false), 1);
    gate.open();
    returned_rx
        .recv_timeout(TIMEOUT)
        .expect("the stopped task did not run to its end");
    assert!(
        m.wait_idle(TIMEOUT),
        "the stopped task's worker stayed busy"
    );
    // It returned Ok(5), but its outcome is dropped: the handle says Stopped.
    assert_eq!(wait_for(&h), Err(TaskError::Stopped));
    assert!(h.is_finished());
    assert_quiet(&m, &sub);
}

#[test]
fn shut_down_gives_stopped_for_queued_tasks() {
    let m = paused(2);
    let a = m.add_task(|_| Ok::<_, Infallible>(1u32)).unwrap();
    let b = m.add_task(|_| Ok::<_, Infallible>(String::new())).unwrap();
    let c = m.task().after([&a]).spawn_pass_through().unwrap();
    m.shut_down();
    assert_eq!(wait_for(&a), Err(TaskError::Stopped));
    assert_eq!(wait_for(&b), Err(TaskError::Stopped));
    assert_eq!(wait_for(&c).err(), Some(TaskError::Stopped));
    assert!(a.is_finished() && b.is_finished() && c.is_finished());
}

#[test]
fn shut_down_gives_stopped_for_queued_and_running_tasks() {
    let m = manager(1);
    let gate = Gate::new();
    let (running, started_rx) = spawn_blocker(m.task(), &gate, 1u32);
    started(&started_rx);
    let queued = m.add_task(|_| Ok::<_, Infallible>(2u32)).unwrap();

    // shut_down waits for the running task: call it from another thread.
    let (down_tx, down_rx) = mpsc::channel();
    let shutter = {
        let m = m.clone();
        thread::spawn(move || {
            m.shut_down();
            down_tx.send(()).unwrap();
        })
    };
    // The queued task is stopped even while shut_down waits for the gate.
    assert_eq!(wait_for(&queued), Err(TaskError::Stopped));
    gate.open();
    down_rx
        .recv_timeout(TIMEOUT)
        .expect("shut_down did not return after the running task did");
    shutter.join().unwrap();
    assert_eq!(wait_for(&running), Err(TaskError::Stopped));
}

#[test]
fn downstream_failed_by_upstream_gets_the_upstreams_failure() {
    let m = paused(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let up = m
        .add_task(|_| -> Result<String, &str> { Err("quota exceeded") })
        .unwrap();
    let mid = {
        let ran = Arc::clone(&ran);
        m.task()
            .after([&up])
            .spawn(move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(vec![1u8])
            })
            .unwrap()
    };
    let low = {
        let ran = Arc::clone(&ran);
        m.task()
            .after([&mid])
            .spawn(move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(0u64)
            })
            .unwrap()
    };
    m.start_processing();
    let (up_message, up_traceback) = failed(wait_for(&up));
    assert_eq!(up_message, "quota exceeded");
    for (name, r) in [
        ("mid", failed(wait_for(&mid))),
        ("low", failed(wait_for(&low))),
    ] {
        assert_eq!(r.0, "quota exceeded", "{name}: the upstream's message");
        assert_eq!(r.1, up_traceback, "{name}: the upstream's traceback");
    }
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "failed downstream tasks never run"
    );
}

// ---------------------------------------------------------------------------
// Pass-through handles
// ---------------------------------------------------------------------------

#[test]
fn pass_through_handle_returns_the_merged_kwargs() {
    let m = paused(2);
    let a = m
        .add_task(|_| Ok::<_, Infallible>(Kwargs::new().with("width", 64u32)))
        .unwrap();
    let b = m
        .add_task(|_| Ok::<_, Infallible>(Kwargs::new().with("path", "a.png".to_string())))
        .unwrap();
    let not_kwargs = m.add_task(|_| Ok::<_, Infallible>(99u32)).unwrap();
    let join: TaskHandle<Kwargs> = m
        .task()
        .after([a.id(), b.id(), not_kwargs.id()])
        .kwargs(Kwargs::new().with("cached", false))
        .spawn_pass_through()
        .unwrap();
    let short: TaskHandle<Kwargs> = m.add_pass_through_task([&a]).unwrap();
    let empty: TaskHandle<Kwargs> = m.add_pass_through_task(Vec::<TaskId>::new()).unwrap();
    m.start_processing();

    let merged: Arc<Kwargs> = wait_for(&join).expect("the pass-through completed");
    assert_eq!(
        merged.len(),
        3,
        "keys: {:?}",
        merged.keys().collect::<Vec<_>>()
    );
    assert_eq!(merged.get::<u32>("width"), Some(&64));
    assert_eq!(
        merged.get::<String>("path").map(String::as_str),
        Some("a.png")
    );
    assert_eq!(merged.get::<bool>("cached"), Some(&false));

    let short = wait_for(&short).unwrap();
    assert_eq!(short.len(), 1);
    assert_eq!(short.get::<u32>("width"), Some(&64));

    assert!(wait_for(&empty).unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Several handles and several waiters
// ---------------------------------------------------------------------------

#[test]
fn clones_and_several_waiting_threads_all_get_the_result() {
    const WAITERS: usize = 4;
    let m = manager(1);
    let gate = Gate::new();
    let (h, started_rx) = spawn_blocker(m.task(), &gate, report());
    started(&started_rx);

    let (about_tx, about_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let threads: Vec<_> = (0..WAITERS)
        .map(|i| {
            let h = h.clone();
            let about_tx = about_tx.clone();
            let done_tx = done_tx.clone();
            thread::spawn(move || {
                about_tx.send(()).unwrap();
                // Half block without a timeout, half with one.
                let r = if i % 2 == 0 {
                    h.wait()
                } else {
                    h.wait_timeout(TIMEOUT).expect("timed out")
                };
                done_tx.send((i, r)).unwrap();
            })
        })
        .collect();
    for _ in 0..WAITERS {
        about_rx
            .recv_timeout(TIMEOUT)
            .expect("a waiter thread did not start");
    }
    assert!(done_rx.try_recv().is_err(), "nobody has a result yet");
    gate.open();

    let mine = wait_for(&h).expect("completed");
    let mut seen = Vec::new();
    for _ in 0..WAITERS {
        let (i, r) = done_rx
            .recv_timeout(TIMEOUT)
            .expect("a waiting thread was not woken");
        let r = r.expect("completed");
        assert!(Arc::ptr_eq(&r, &mine), "waiter {i} got another value");
        seen.push(i);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..WAITERS).collect::<Vec<_>>());
    for t in threads {
        t.join().unwrap();
    }
    // A clone made after the end gets it too.
    assert!(Arc::ptr_eq(&h.clone().wait().unwrap(), &mine));
    assert_eq!(h.clone().id(), h.id());
}

// ---------------------------------------------------------------------------
// Future
// ---------------------------------------------------------------------------

#[test]
fn future_under_tokio_current_thread() {
    let m = manager(2);
    let h = m.add_task(|_| Ok::<_, Infallible>(report())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(in_time("the handle", h.clone()));
    assert_eq!(*r.unwrap(), report());
    // The handle itself is the future.
    let r2 = rt.block_on(h).unwrap();
    assert_eq!(*r2, report());

    // An error resolves too.
    let bad = m
        .add_task(|_| -> Result<(), &str> { Err("bad input") })
        .unwrap();
    let e = rt.block_on(in_time("a failing handle", bad));
    assert_eq!(failed(e).0, "bad input");
}

#[test]
fn future_under_tokio_current_thread_waits_for_a_gated_task() {
    let m = manager(1);
    let gate = Gate::new();
    let (h, started_rx) = spawn_blocker(m.task(), &gate, 11u32);
    started(&started_rx);
    let (polled_tx, polled_rx) = mpsc::channel();
    let opener = {
        let gate = gate.clone();
        thread::spawn(move || {
            polled_rx
                .recv_timeout(TIMEOUT)
                .expect("the future was never polled");
            gate.open();
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(async move {
            let mut h = h;
            let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut h).poll(cx))).await;
            assert!(first.is_pending(), "the task is held: {first:?}");
            polled_tx.send(()).unwrap();
            tokio::time::timeout(TIMEOUT, &mut h).await
        })
        .expect("the pending future was not woken when the task ended");
    assert_eq!(*r.unwrap(), 11);
    opener.join().unwrap();
}

#[test]
fn futures_under_tokio_multi_thread_joined() {
    const N: u32 = 6;
    let m = manager(2);
    let gate = Gate::new();
    let handles: Vec<TaskHandle<String>> = (0..N)
        .map(|i| {
            let gate = gate.clone();
            m.add_task(move |_| {
                gate.wait();
                Ok::<_, Infallible>(format!("item {i}"))
            })
            .unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (about_tx, about_rx) = mpsc::channel();
    let joins: Vec<_> = handles
        .iter()
        .cloned()
        .map(|h| {
            let about_tx = about_tx.clone();
            rt.spawn(async move {
                about_tx.send(()).unwrap();
                h.await
            })
        })
        .collect();
    for _ in 0..N {
        about_rx
            .recv_timeout(TIMEOUT)
            .expect("a tokio task did not start");
    }
    gate.open();
    let results = rt.block_on(in_time(
        "the joined tokio tasks",
        futures::future::join_all(joins),
    ));
    let got: Vec<String> = results
        .into_iter()
        .map(|j| (*j.expect("tokio task panicked").expect("completed")).clone())
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("item {i}")).collect();
    assert_eq!(got, expected);
    // The handles (originals) agree.
    let direct = rt.block_on(in_time(
        "the joined handles",
        futures::future::join_all(handles),
    ));
    let direct: Vec<String> = direct.into_iter().map(|r| (*r.unwrap()).clone()).collect();
    assert_eq!(direct, expected);
}

#[test]
fn future_under_futures_executor_block_on() {
    let m = manager(2);
    let h = m
        .add_task(|_| Ok::<_, Infallible>(vec![1u16, 2, 3]))
        .unwrap();
    let r = within_timeout("futures::executor::block_on", move || {
        futures::executor::block_on(h)
    });
    assert_eq!(*r.unwrap(), vec![1, 2, 3]);

    // A gated task: block_on parks until the task's end wakes it.
    let gate = Gate::new();
    let (held, started_rx) = spawn_blocker(m.task(), &gate, 3.5f64);
    started(&started_rx);
    let (polled_tx, polled_rx) = mpsc::channel();
    let opener = {
        let gate = gate.clone();
        thread::spawn(move || {
            polled_rx
                .recv_timeout(TIMEOUT)
                .expect("the future was never polled");
            gate.open();
        })
    };
    let r = within_timeout("futures::executor::block_on of a held task", move || {
        futures::executor::block_on(async move {
            let mut held = held;
            let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut held).poll(cx))).await;
            assert!(first.is_pending(), "the task is held: {first:?}");
            polled_tx.send(()).unwrap();
            held.await
        })
    });
    assert_eq!(*r.unwrap(), 3.5);
    opener.join().unwrap();

    // Stopped resolves as Stopped.
    let p = paused(1);
    let queued = p.add_task(|_| Ok::<_, Infallible>(0u8)).unwrap();
    assert_eq!(p.stop_task(queued.id(), false, false), 1);
    let r = within_timeout("block_on of a stopped task", move || {
        futures::executor::block_on(queued)
    });
    assert_eq!(r, Err(TaskError::Stopped));
}

/// A waker that reports every wake on a channel.
struct ChannelWaker(std::sync::Mutex<mpsc::Sender<()>>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.lock().unwrap().send(());
    }
}

#[test]
fn future_polled_before_the_end_is_woken_when_the_task_ends() {
    let m = manager(1);
    let gate = Gate::new();
    let (mut h, started_rx) = spawn_blocker(m.task(), &gate, String::from("late"));
    started(&started_rx);

    let (woke_tx, woke_rx) = mpsc::channel();
    let waker = Waker::from(Arc::new(ChannelWaker(std::sync::Mutex::new(woke_tx))));
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
    assert!(woke_rx.try_recv().is_err(), "woken before the task ended");

    gate.open();
    woke_rx
        .recv_timeout(TIMEOUT)
        .expect("the waker of the last poll was not woken when the task ended");
    match Pin::new(&mut h).poll(&mut cx) {
        Poll::Ready(Ok(v)) => assert_eq!(v.as_str(), "late"),
        other => panic!("expected Ready(Ok), got {other:?}"),
    }
}

#[test]
fn future_polled_before_a_stop_is_woken_with_stopped() {
    let m = paused(1);
    let mut h = m.add_task(|_| Ok::<_, Infallible>(1u32)).unwrap();
    let (woke_tx, woke_rx) = mpsc::channel();
    let waker = Waker::from(Arc::new(ChannelWaker(std::sync::Mutex::new(woke_tx))));
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
    assert_eq!(m.stop_task(h.id(), false, false), 1);
    woke_rx
        .recv_timeout(TIMEOUT)
        .expect("the waker was not woken when the task was stopped");
    assert_eq!(
        Pin::new(&mut h).poll(&mut cx),
        Poll::Ready(Err(TaskError::Stopped))
    );
}

// ---------------------------------------------------------------------------
// Event::result
// ---------------------------------------------------------------------------

#[test]
fn event_result_reads_completed_results_typed() {
    let m = paused(1);
    let sub = m.subscribe();
    let s = m
        .task()
        .group("g")
        .spawn(|_| Ok::<_, Infallible>(String::from("thumb.png")))
        .unwrap();
    let r = m.task().spawn(|_| Ok::<_, Infallible>(report())).unwrap();
    let bad = m
        .add_task(|_| -> Result<String, &str> { Err("nope") })
        .unwrap();
    let kw = m.add_pass_through_task([&s]).unwrap();
    m.start_processing();

    let events = take(&sub, 5);
    // s, GroupFinished(g), r, bad, kw: in order of priority/add, one worker.
    assert_eq!(events[0].task_id(), Some(s.id()));
    assert_eq!(
        events[0].result::<String>().map(String::as_str),
        Some("thumb.png")
    );
    assert_eq!(events[0].result::<u32>(), None, "another type");
    assert_eq!(events[0].result::<&str>(), None, "another type");

    assert!(
        matches!(events[1], Event::GroupFinished { .. }),
        "{:?}",
        events[1]
    );
    assert_eq!(
        events[1].result::<String>(),
        None,
        "GroupFinished has no result"
    );

    assert_eq!(events[2].task_id(), Some(r.id()));
    let from_event: &Report = events[2].result::<Report>().expect("a Report");
    assert_eq!(*from_event, report());
    let from_handle = r.wait().unwrap();
    assert!(
        std::ptr::eq(from_event, &*from_handle),
        "the event and the handle share one value"
    );

    assert_eq!(events[3].task_id(), Some(bad.id()));
    assert!(matches!(events[3], Event::Failed { .. }), "{:?}", events[3]);
    assert_eq!(events[3].result::<String>(), None, "Failed has no result");

    assert_eq!(events[4].task_id(), Some(kw.id()));
    let merged = events[4].result::<Kwargs>().expect("a Kwargs result");
    assert_eq!(
        merged.len(),
        0,
        "a String result is not merged: {:?}",
        merged.keys().collect::<Vec<_>>()
    );
    assert_quiet(&m, &sub);
}

// ---------------------------------------------------------------------------
// ctx.upstream
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Thumb {
    width: u32,
    height: u32,
    label: String,
}

#[test]
fn upstream_gives_typed_results_of_any_type() {
    let m = paused(2);
    let unrelated = m.add_task(|_| Ok::<_, Infallible>(5u32)).unwrap();
    let s = m
        .add_task(|_| Ok::<_, Infallible>(String::from("hello")))
        .unwrap();
    let v = m
        .add_task(|_| Ok::<_, Infallible>(vec![3u64, 1, 4, 1, 5]))
        .unwrap();
    let t = m
        .add_task(|_| {
            Ok::<_, Infallible>(Thumb {
                width: 64,
                height: 48,
                label: "cover".into(),
            })
        })
        .unwrap();
    let k = m
        .add_task(|_| Ok::<_, Infallible>(Kwargs::new().with("k", 1i8)))
        .unwrap();

    type Seen = (
        Option<String>,
        Option<Vec<u64>>,
        Option<Thumb>,
        Option<i8>,
        Option<u32>,
    );
    let down: TaskHandle<Seen> = {
        let (s, v, t, k, unrelated) = (
            s.clone(),
            v.clone(),
            t.clone(),
            k.clone(),
            unrelated.clone(),
        );
        m.task()
            .after([s.id(), v.id(), t.id(), k.id()])
            .spawn(move |ctx: &TaskContext| {
                Ok::<_, Infallible>((
                    ctx.upstream(&s).cloned(),
                    ctx.upstream(&v).cloned(),
                    ctx.upstream(&t).cloned(),
                    ctx.upstream(&k).and_then(|kw| kw.get::<i8>("k").copied()),
                    ctx.upstream(&unrelated).copied(),
                ))
            })
            .unwrap()
    };
    m.start_processing();
    let seen = wait_for(&down).expect("the downstream completed");
    assert_eq!(
        *seen,
        (
            Some("hello".to_string()),
            Some(vec![3, 1, 4, 1, 5]),
            Some(Thumb {
                width: 64,
                height: 48,
                label: "cover".into(),
            }),
            Some(1),
            None, // not an upstream of this task
        )
    );
    assert_eq!(*wait_for(&unrelated).unwrap(), 5);
}

#[test]
fn upstream_result_is_the_upstreams_own_value() {
    let m = paused(1);
    let up = m.add_task(|_| Ok::<_, Infallible>(report())).unwrap();
    let (addr_tx, addr_rx) = mpsc::channel();
    let down = {
        let up = up.clone();
        m.task()
            .after([&up])
            .spawn(move |ctx: &TaskContext| {
                let r: Option<&Report> = ctx.upstream(&up);
                addr_tx
                    .send(r.map(|r| r as *const Report as usize))
                    .unwrap();
                Ok::<_, Infallible>(r.map(|r| r.sizes.iter().sum::<u32>()))
            })
            .unwrap()
    };
    m.start_processing();
    assert_eq!(*wait_for(&down).unwrap(), Some(448));
    let addr = addr_rx
        .recv_timeout(TIMEOUT)
        .expect("downstream did not run")
        .expect("downstream saw its upstream's result");
    let up_value = up.wait().unwrap();
    assert_eq!(
        addr, &*up_value as *const Report as usize,
        "ctx.upstream gives the upstream's value itself, not a copy"
    );
}

#[test]
fn upstream_is_none_for_a_stopped_upstream() {
    let m = paused(1);
    let up = m.add_task(|_| Ok::<_, Infallible>(1u32)).unwrap();
    let down = {
        let up = up.clone();
        m.task()
            .after([&up])
            .spawn(move |ctx: &TaskContext| Ok::<_, Infallible>(ctx.upstream(&up).copied()))
            .unwrap()
    };
    assert_eq!(m.stop_task(up.id(), false, false), 1);
    m.start_processing();
    assert_eq!(*wait_for(&down).unwrap(), None);
}

// ---------------------------------------------------------------------------
// is_finished
// ---------------------------------------------------------------------------

#[test]
fn is_finished_is_false_before_and_true_after() {
    let m = manager(1);
    let gate = Gate::new();
    let (h, started_rx) = spawn_blocker(m.task(), &gate, 1u8);
    let clone = h.clone();
    assert!(!h.is_finished(), "not finished before it started");
    started(&started_rx);
    assert!(!h.is_finished(), "not finished while running");
    assert!(!clone.is_finished());
    gate.open();
    wait_for(&h).unwrap();
    assert!(h.is_finished());
    assert!(clone.is_finished());

    // Queued on a paused manager: not finished until it runs.
    let p = paused(1);
    let q = p.add_task(|_| Ok::<_, Infallible>(2u8)).unwrap();
    assert!(!q.is_finished());
    assert_eq!(q.wait_timeout(Duration::from_millis(1)), None);
    assert!(!q.is_finished());
    p.start_processing();
    assert_eq!(*wait_for(&q).unwrap(), 2);
    assert!(q.is_finished());
}
