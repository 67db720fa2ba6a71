//! SPEC 6, shutting down: `shut_down`, dropping the last handle, and
//! `wait_idle`.

mod common;

use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use bgtask::{
    Error, Kwargs, RecvError, RecvTimeoutError, TaskContext, TaskId, TaskManager, TryRecvError,
};
use common::*;

/// Blocks a task body until its task is stopped (by a stop call or
/// shut-down). `is_stopped` has no wake-up, so this polls; it panics after
/// [`TIMEOUT`].
fn until_stopped(ctx: &TaskContext) {
    eventually("the task to be stopped", || ctx.is_stopped());
}

/// Counts, when dropped, that a worker thread ran its thread-local
/// destructors: that thread has finished its work and is exiting.
struct OnThreadExit(Arc<AtomicUsize>);

impl Drop for OnThreadExit {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<OnThreadExit>> = const { RefCell::new(None) };
}

#[test]
fn shut_down_joins_every_worker() {
    let m = named(4, "sd-join");
    assert_eq!(count_threads("sd-join"), 0, "workers start lazily");
    let exited = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    for _ in 0..4 {
        let (gate, tx, exited) = (gate.clone(), tx.clone(), Arc::clone(&exited));
        m.add_task(move |_: &TaskContext| {
            ON_EXIT.with(|e| *e.borrow_mut() = Some(OnThreadExit(exited)));
            tx.send(()).unwrap();
            gate.wait();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    }
    for _ in 0..4 {
        rx.recv_timeout(TIMEOUT).expect("a task did not start");
    }
    // Four tasks run at once on four workers. (Polled: a read of
    // /proc/self/task can miss entries while another test's thread exits.)
    assert_threads("sd-join", 4);
    gate.open();
    m.shut_down();
    // Joined: each worker thread ran to its end, thread-local destructors
    // included, before `shut_down` returned.
    assert_eq!(
        exited.load(Ordering::SeqCst),
        4,
        "shut_down returned before its workers exited"
    );
    // Why `eventually` and not an exact count: the kernel wakes a joiner
    // (clearing the thread's tid in `exit_mm`) slightly before it removes the
    // exiting thread from the thread group (`release_task`), so for a moment
    // after a join `/proc/self/task` can still list the joined thread. The
    // join itself was proven exactly just above.
    no_thread_left("sd-join");
}

#[test]
fn shut_down_makes_every_way_of_adding_fail() {
    let m = manager(2);
    let before = m.add_task(noop).unwrap();
    m.shut_down();
    assert_eq!(m.add_task(noop).unwrap_err(), Error::ShutDown);
    assert_eq!(m.task().spawn(noop).unwrap_err(), Error::ShutDown);
    assert_eq!(
        m.task().priority(3).group("g").spawn(noop).unwrap_err(),
        Error::ShutDown
    );
    assert_eq!(
        m.task().after([&before]).spawn(noop).unwrap_err(),
        Error::ShutDown
    );
    assert_eq!(
        m.task()
            .kwargs(Kwargs::new())
            .spawn_pass_through()
            .unwrap_err(),
        Error::ShutDown
    );
    assert_eq!(
        m.add_pass_through_task([before.id()]).unwrap_err(),
        Error::ShutDown
    );
    assert_eq!(
        m.add_pass_through_task(Vec::<TaskId>::new()).unwrap_err(),
        Error::ShutDown
    );
    // Through another clone as well.
    let clone = m.clone();
    assert_eq!(clone.add_task(noop).unwrap_err(), Error::ShutDown);
}

#[test]
fn shut_down_twice_is_harmless() {
    let m = named(2, "sd-twice");
    let sub = m.subscribe();
    m.add_task(noop).unwrap();
    assert!(m.wait_idle(TIMEOUT));
    m.shut_down();
    m.shut_down();
    m.clone().shut_down();
    assert_eq!(m.add_task(noop).unwrap_err(), Error::ShutDown);
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Disconnected);
    assert_eq!(m.stop_all_tasks(), 0);
    assert!(m.wait_idle(TIMEOUT), "a shut-down manager is idle");
    no_thread_left("sd-twice");
}

#[test]
fn shut_down_waits_for_running_tasks_to_return() {
    let m = manager(1);
    let ended = Arc::new(AtomicBool::new(false));
    let gate = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let (saw_stop_tx, saw_stop_rx) = mpsc::channel();
    {
        let (gate, ended) = (gate.clone(), Arc::clone(&ended));
        m.add_task(move |ctx: &TaskContext| {
            started_tx.send(()).unwrap();
            // shut_down has begun: it stopped this task.
            until_stopped(ctx);
            saw_stop_tx.send(()).unwrap();
            gate.wait();
            ended.store(true, Ordering::SeqCst);
            Ok::<_, Infallible>(())
        })
        .unwrap();
    }
    // Opens the gate from another thread once the task saw shut_down begin,
    // while the owner is (or should be) blocked in shut_down.
    let opener = thread::spawn(move || {
        saw_stop_rx
            .recv_timeout(TIMEOUT)
            .expect("the task never saw shut_down stop it");
        gate.open();
    });
    started_rx
        .recv_timeout(TIMEOUT)
        .expect("task did not start");
    m.shut_down();
    assert!(
        ended.load(Ordering::SeqCst),
        "shut_down returned before the running task's body ended"
    );
    opener.join().expect("opener panicked");
}

#[test]
fn shut_down_drops_queued_events_and_disconnects_subscriptions() {
    let m = manager(2);
    let s1 = m.subscribe();
    let s2 = m.subscribe();
    let s3 = m.subscribe();
    let g = m.next_group_id();
    for _ in 0..3 {
        m.task().group(&g).spawn(noop).unwrap();
    }
    m.add_task(|_: &TaskContext| -> Result<(), &str> { Err("boom") })
        .unwrap();
    assert!(m.wait_idle(TIMEOUT), "tasks did not finish");
    m.shut_down();

    assert_eq!(s1.try_recv().unwrap_err(), TryRecvError::Disconnected);
    assert_eq!(s1.try_iter().count(), 0);
    assert_eq!(
        s2.recv_timeout(TIMEOUT).unwrap_err(),
        RecvTimeoutError::Disconnected
    );
    // `recv` has no timeout: run it on a helper thread so that a hang fails.
    assert_eq!(recv_on_helper(s3), Err(RecvError));

    let late = m.subscribe();
    assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Disconnected);
}

#[test]
fn queued_and_blocked_tasks_never_run_after_shut_down() {
    let m = named(1, "sd-queued");
    let counter = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let x = m
        .add_task(move |ctx: &TaskContext| {
            tx.send(()).unwrap();
            until_stopped(ctx);
            Ok::<_, Infallible>(())
        })
        .unwrap();
    rx.recv_timeout(TIMEOUT).expect("x did not start");
    // The only worker is busy: these wait in the queue or on their upstream.
    let q = counted(&m, &counter, &[]);
    counted(&m, &counter, &[q]);
    counted(&m, &counter, &[x.id()]);
    m.task().priority(9).spawn(counting(&counter)).unwrap();
    m.shut_down();
    assert_eq!(
        counter.load(Ordering::SeqCst),
        0,
        "queued tasks ran during shut_down"
    );
    // Turning processing on again starts nothing.
    m.start_processing();
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(
        counter.load(Ordering::SeqCst),
        0,
        "queued tasks ran after shut_down"
    );
    // See `shut_down_joins_every_worker` for why this polls.
    no_thread_left("sd-queued");
    assert_eq!(counter.load(Ordering::SeqCst), 0);
}

#[test]
fn shut_down_of_a_paused_manager_never_runs_its_tasks() {
    let m = TaskManager::builder()
        .max_threads(2)
        .thread_name("sd-paused")
        .build()
        .unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    let a = counted(&m, &counter, &[]);
    counted(&m, &counter, &[a]);
    m.shut_down();
    m.start_processing();
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(
        count_threads("sd-paused"),
        0,
        "a worker was started after shut_down"
    );
    assert_eq!(counter.load(Ordering::SeqCst), 0);
}

#[test]
fn dropping_the_last_handle_while_a_task_runs_does_not_hang_and_stops_queued_tasks() {
    let m = named(1, "sd-drop");
    let sub = m.subscribe();
    let counter = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let (started_tx, started_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    {
        let gate = gate.clone();
        m.add_task(move |ctx: &TaskContext| {
            started_tx.send(()).unwrap();
            gate.wait();
            tx.send(ctx.is_stopped()).unwrap();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    }
    started_rx
        .recv_timeout(TIMEOUT)
        .expect("the held task did not start");
    assert_eq!(count_threads("sd-drop"), 1);
    let q = counted(&m, &counter, &[]);
    counted(&m, &counter, &[q]);

    // Drop on a helper thread so that a drop that blocks on the held task
    // fails the test instead of hanging it.
    let (dropped_tx, dropped_rx) = mpsc::channel();
    thread::spawn(move || {
        drop(m);
        dropped_tx.send(()).unwrap();
    });
    dropped_rx
        .recv_timeout(TIMEOUT)
        .expect("dropping the last handle blocked on a running task");
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Disconnected);

    gate.open();
    assert!(
        rx.recv_timeout(TIMEOUT)
            .expect("the held task did not go on"),
        "dropping the last handle did not stop the running task"
    );
    no_thread_left("sd-drop");
    assert_eq!(
        counter.load(Ordering::SeqCst),
        0,
        "queued tasks ran after the drop"
    );
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Disconnected);
}

#[test]
fn shut_down_from_inside_a_task_does_not_deadlock() {
    let m = named(2, "sd-inner");
    let sub = m.subscribe();
    let other_ended = Arc::new(AtomicBool::new(false));
    // A task on the other worker, running until shut_down stops it.
    let (tx, rx) = mpsc::channel();
    {
        let other_ended = Arc::clone(&other_ended);
        m.add_task(move |ctx: &TaskContext| {
            tx.send(()).unwrap();
            until_stopped(ctx);
            other_ended.store(true, Ordering::SeqCst);
            Ok::<_, Infallible>(())
        })
        .unwrap();
    }
    rx.recv_timeout(TIMEOUT)
        .expect("the other task did not start");

    let (returned_tx, returned_rx) = mpsc::channel();
    {
        let inner = m.clone();
        let other_ended = Arc::clone(&other_ended);
        m.add_task(move |_: &TaskContext| {
            inner.shut_down();
            // shut_down joined the other worker before returning here.
            returned_tx
                .send(other_ended.load(Ordering::SeqCst))
                .unwrap();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    }
    let joined_other = returned_rx
        .recv_timeout(TIMEOUT)
        .expect("shut_down called from inside a task did not return");
    assert!(
        joined_other,
        "shut_down from a task returned before the other task ended"
    );
    no_thread_left("sd-inner");
    assert_eq!(m.add_task(noop).unwrap_err(), Error::ShutDown);
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Disconnected);
}

#[test]
fn wait_idle_is_true_when_nothing_runs_or_can_start() {
    // Nothing added.
    assert!(manager(1).wait_idle(TIMEOUT));
    assert!(paused(1).wait_idle(TIMEOUT));
    // Paused with queued tasks: none can start.
    let m = paused(1);
    let counter = Arc::new(AtomicUsize::new(0));
    counted(&m, &counter, &[]);
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(counter.load(Ordering::SeqCst), 0);
    // Processing: idle once the task ran.
    m.start_processing();
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(counter.load(Ordering::SeqCst), 1);
}

#[test]
fn wait_idle_times_out_while_a_task_is_held() {
    let m = manager(1);
    let gate = Gate::new();
    let (_x, x_started) = add_blocker(&m, &gate);
    started(&x_started);
    // A timeout of the function under test, not a sleep.
    assert!(!m.wait_idle(Duration::from_millis(50)));
    gate.open();
    assert!(m.wait_idle(TIMEOUT));
}

#[test]
fn wait_idle_counts_a_stopped_running_task_as_running() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (x, x_started) = add_blocker(&m, &gate);
    started(&x_started);
    assert_eq!(m.stop_task(x.id(), false, false), 1);
    assert!(
        !m.wait_idle(Duration::from_millis(50)),
        "a stopped task that still runs counts as running"
    );
    gate.open();
    assert!(m.wait_idle(TIMEOUT));
    assert_quiet(&m, &sub);
}
