//! Beyond the original, item 2: cooperative cancellation. `ctx.is_stopped()`
//! turns true the moment a running task is stopped (by `stop_task`, a
//! group stop, `stop_all_tasks`, `shut_down`, or the drop of the last
//! manager handle), so a long task can return early; its outcome is
//! dropped.
//!
//! Each running task here spins on `is_stopped()` (yielding, never
//! sleeping, with a deadline that reports a failure instead of hanging).
//! After a stop call returns, the test sends the task a notice; the task
//! reads the notice *before* `is_stopped()`, so a task that got the notice
//! and still saw `false` proves the flag was not set by the time the stop
//! call returned.

mod common;

use std::convert::Infallible;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use bgtask::{
    Event, Group, RecvTimeoutError, TaskBuilder, TaskContext, TaskError, TaskHandle, TaskManager,
    TryRecvError,
};
use common::*;

/// How a spinning task's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// `is_stopped()` turned true.
    Stopped,
    /// The test said the stop call had returned, yet `is_stopped()` was
    /// still false (what a task that was *not* stopped reports).
    RunningAfterNotice,
    /// Neither happened within [`TIMEOUT`].
    TimedOut,
}

/// A running task that spins until it is stopped or noticed.
struct Spinner {
    /// Its handle.
    handle: TaskHandle<u64>,
    /// `is_stopped()` when it started.
    started: mpsc::Receiver<bool>,
    /// Tells the task that the stop call has returned.
    notice: mpsc::Sender<()>,
    /// How its loop ended.
    seen: mpsc::Receiver<Seen>,
}

impl Spinner {
    /// Waits for the task to start; asserts it was not stopped then.
    fn wait_started(&self) {
        let at_start = self
            .started
            .recv_timeout(TIMEOUT)
            .expect("the spinning task did not start");
        assert!(!at_start, "is_stopped() was true before any stop");
    }

    /// Tells the task that the stop call returned (ignored if it already
    /// left its loop).
    fn notify(&self) {
        let _ = self.notice.send(());
    }

    /// Returns how the task's loop ended; panics after [`TIMEOUT`].
    fn seen(&self) -> Seen {
        self.seen
            .recv_timeout(TIMEOUT)
            .expect("the spinning task never reported how its loop ended")
    }
}

/// Spawns, with `builder`, a task that reports `is_stopped()` at its start,
/// then loops until `is_stopped()` turns true (or it is told the stop call
/// returned while it still reads false, or [`TIMEOUT`] passes), reports
/// which, and returns at once with the number of loop turns.
fn spin(builder: TaskBuilder<'_>) -> Spinner {
    let (started_tx, started) = mpsc::channel();
    let (notice, notice_rx) = mpsc::channel::<()>();
    let (seen_tx, seen) = mpsc::channel();
    let handle = builder
        .spawn(move |ctx: &TaskContext| {
            let _ = started_tx.send(ctx.is_stopped());
            let deadline = Instant::now() + TIMEOUT;
            let mut turns = 0u64;
            let how = loop {
                // The notice first: if it is here, the stop call returned
                // before the flag is read below.
                let noticed = notice_rx.try_recv().is_ok();
                if ctx.is_stopped() {
                    break Seen::Stopped;
                }
                if noticed {
                    break Seen::RunningAfterNotice;
                }
                if Instant::now() >= deadline {
                    break Seen::TimedOut;
                }
                turns += 1;
                std::hint::spin_loop();
                thread::yield_now();
            };
            let _ = seen_tx.send(how);
            Ok::<_, Infallible>(turns)
        })
        .unwrap();
    Spinner {
        handle,
        started,
        notice,
        seen,
    }
}

/// Asserts that a stopped spinner saw the stop and that its handle says
/// `Stopped`.
fn assert_saw_stop(s: &Spinner, how: &str) {
    s.notify();
    assert_eq!(
        s.seen(),
        Seen::Stopped,
        "after {how} returned, the running task must see is_stopped() == true"
    );
    assert_eq!(
        s.handle.wait_timeout(TIMEOUT),
        Some(Err(TaskError::Stopped)),
        "the outcome of a task stopped by {how} is dropped"
    );
}

/// Asserts that a spinner that was not stopped still reads `false` after
/// the notice, and completes normally.
fn assert_not_stopped(s: &Spinner, how: &str) {
    s.notify();
    assert_eq!(
        s.seen(),
        Seen::RunningAfterNotice,
        "{how} must not stop a task it does not target"
    );
    let r = s
        .handle
        .wait_timeout(TIMEOUT)
        .expect("the bystander did not end");
    assert!(r.is_ok(), "the bystander completes: {r:?}");
}

#[test]
fn stop_task_sets_is_stopped_of_a_running_task() {
    let m = manager(2);
    let sub = m.subscribe();
    let target = spin(m.task());
    let bystander = spin(m.task());
    target.wait_started();
    bystander.wait_started();

    assert_eq!(m.stop_task(target.handle.id(), false, false), 1);
    assert_saw_stop(&target, "stop_task");
    assert_not_stopped(&bystander, "stop_task");

    // The target returned early (its worker is free again) and emitted
    // nothing; the bystander's Completed is the only event.
    assert!(m.wait_idle(TIMEOUT), "the stopped task did not return");
    let e = next(&sub);
    assert_eq!(e.task_id(), Some(bystander.handle.id()), "{e:?}");
    assert!(e.result::<u64>().is_some(), "{e:?}");
    assert_quiet(&m, &sub);
}

#[test]
fn stop_task_with_stop_upstream_sets_is_stopped_of_the_running_upstream() {
    let m = manager(1);
    let sub = m.subscribe();
    let up = spin(m.task());
    up.wait_started();
    let down = m.task().after([&up.handle]).spawn(noop).unwrap();

    // The blocked downstream and, through the flag, its running upstream.
    assert_eq!(m.stop_task(down.id(), true, false), 2);
    assert_saw_stop(&up, "stop_task(down, stop_upstream)");
    assert_eq!(down.wait_timeout(TIMEOUT), Some(Err(TaskError::Stopped)));
    assert_quiet(&m, &sub);
}

#[test]
fn stop_task_group_sets_is_stopped_of_a_running_member() {
    let m = manager(2);
    let sub = m.subscribe();
    let target = spin(m.task().group("view-a"));
    let bystander = spin(m.task().group("view-b"));
    target.wait_started();
    bystander.wait_started();

    assert_eq!(m.stop_task_group(&Group::from("view-a"), false, false), 1);
    assert_saw_stop(&target, "stop_task_group");
    assert_not_stopped(&bystander, "stop_task_group of another group");

    assert!(m.wait_idle(TIMEOUT), "the stopped task did not return");
    let events = take(&sub, 2);
    assert_eq!(events[0].task_id(), Some(bystander.handle.id()));
    assert!(events[0].result::<u64>().is_some(), "{:?}", events[0]);
    match &events[1] {
        Event::GroupFinished { group } => assert_eq!(group, &Group::from("view-b")),
        other => panic!("expected GroupFinished(view-b), got {other:?}"),
    }
    assert_quiet(&m, &sub);
}

#[test]
fn stop_all_tasks_sets_is_stopped_of_a_running_task() {
    let m = manager(1);
    let sub = m.subscribe();
    let target = spin(m.task());
    target.wait_started();

    assert_eq!(m.stop_all_tasks(), 1);
    assert_saw_stop(&target, "stop_all_tasks");
    assert!(m.wait_idle(TIMEOUT), "the stopped task did not return");
    assert_quiet(&m, &sub);

    // The manager stays usable, and a new task is not stopped.
    let next_one = spin(m.task());
    next_one.wait_started();
    assert_not_stopped(&next_one, "a previous stop_all_tasks");
}

#[test]
fn stop_all_tasks_sets_is_stopped_of_every_running_task() {
    let m = manager(2);
    let sub = m.subscribe();
    let a = spin(m.task());
    let b = spin(m.task().group("g"));
    a.wait_started();
    b.wait_started();
    let queued = m.add_task(noop).unwrap(); // both workers are busy

    assert_eq!(m.stop_all_tasks(), 3);
    assert_saw_stop(&a, "stop_all_tasks");
    assert_saw_stop(&b, "stop_all_tasks");
    assert_eq!(queued.wait_timeout(TIMEOUT), Some(Err(TaskError::Stopped)));
    assert!(m.wait_idle(TIMEOUT), "the stopped tasks did not return");
    assert_quiet(&m, &sub);
}

#[test]
fn shut_down_sets_is_stopped_of_a_running_task() {
    const NAME: &str = "cancel-shut";
    let m = TaskManager::builder()
        .max_threads(1)
        .start_processing(true)
        .thread_name(NAME)
        .build()
        .unwrap();
    let sub = m.subscribe();
    let target = spin(m.task());
    target.wait_started();

    // shut_down waits for running tasks: it can only return because the
    // task saw is_stopped() and returned early.
    let (down_tx, down_rx) = mpsc::channel();
    let shutter = {
        let m = m.clone();
        thread::spawn(move || {
            m.shut_down();
            let _ = down_tx.send(());
        })
    };
    assert_eq!(
        target.seen(),
        Seen::Stopped,
        "shut_down must make is_stopped() true while the task runs"
    );
    down_rx
        .recv_timeout(TIMEOUT)
        .expect("shut_down did not return after the task returned");
    shutter.join().unwrap();
    assert_eq!(
        target.handle.wait_timeout(TIMEOUT),
        Some(Err(TaskError::Stopped))
    );
    // shut_down joined every worker (polled: a joined thread can stay listed
    // in /proc/self/task for a moment, see `no_thread_left`).
    no_thread_left(NAME);
    assert_eq!(
        sub.try_recv().map(|e| format!("{e:?}")),
        Err(TryRecvError::Disconnected)
    );
}

#[test]
fn dropping_the_last_manager_handle_sets_is_stopped_of_a_running_task() {
    const NAME: &str = "cancel-drop";
    let m = TaskManager::builder()
        .max_threads(1)
        .start_processing(true)
        .thread_name(NAME)
        .build()
        .unwrap();
    let sub = m.subscribe();
    let target = spin(m.task());
    target.wait_started();
    assert_threads(NAME, 1);

    // Dropping does not wait for the task, so the notice comes after it.
    drop(m);
    assert_saw_stop(&target, "dropping the last manager handle");
    // The task returned early and its worker exited.
    eventually("the worker to exit after the task returned", || {
        count_threads(NAME) == 0
    });
    assert_eq!(
        sub.recv_timeout(TIMEOUT).map(|e| format!("{e:?}")),
        Err(RecvTimeoutError::Disconnected),
        "no event after the manager is gone"
    );
}
