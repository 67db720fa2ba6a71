//! Issue item 3: `TaskContext::report_progress(fraction, message)` delivers
//! `Event::Progress` to subscribers; a slow owner sees only the latest
//! progress per task, never more than one pending per task, and never after
//! that task's terminal event.

mod common;

use std::convert::Infallible;
use std::sync::mpsc;

use bgtask::{Event, Group, Subscription, TaskContext, TaskId, TryRecvError};
use common::*;

/// A progress event, reduced to what the tests compare.
#[derive(Debug, Clone, PartialEq)]
struct P {
    id: TaskId,
    group: Option<Group>,
    fraction: f32,
    message: String,
}

/// The event as a [`P`]; panics for any other kind.
fn progress(e: &Event) -> P {
    match e {
        Event::Progress {
            id,
            group,
            fraction,
            message,
        } => P {
            id: *id,
            group: group.clone(),
            fraction: *fraction,
            message: message.clone(),
        },
        other => panic!("expected Progress, got {other:?}"),
    }
}

/// A progress of `id` (no group) with `fraction` and `message`.
fn p(id: TaskId, fraction: f32, message: &str) -> P {
    P {
        id,
        group: None,
        fraction,
        message: message.to_string(),
    }
}

/// Asserts that `e` is the `Completed` of `id`.
fn assert_completed(e: &Event, id: TaskId) {
    match e {
        Event::Completed { id: got, .. } => assert_eq!(*got, id, "Completed of another task"),
        other => panic!("expected Completed of {id:?}, got {other:?}"),
    }
}

/// Asserts that nothing is queued in `sub` right now.
fn assert_empty(sub: &Subscription) {
    match sub.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => panic!("expected an empty subscription, got {other:?}"),
    }
}

/// A two-way handshake between the test and a task: the task says it
/// reached a point (`reached`), then waits for the test to let it go on
/// (`proceed`). Every wait panics after `TIMEOUT`.
struct Steps {
    reached: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

/// The task's half of [`Steps`].
struct TaskSteps {
    reached: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
}

fn steps() -> (Steps, TaskSteps) {
    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    (
        Steps {
            reached: reached_rx,
            go: go_tx,
        },
        TaskSteps {
            reached: reached_tx,
            go: go_rx,
        },
    )
}

impl Steps {
    /// Waits until the task reached its next point.
    fn reached(&self) {
        self.reached
            .recv_timeout(TIMEOUT)
            .expect("the task did not reach its next step");
    }

    /// Lets the task go on.
    fn go(&self) {
        self.go.send(()).expect("the task is gone");
    }
}

impl TaskSteps {
    /// Tells the test this point is reached and waits to be let go on.
    fn pause(&self) {
        self.reached.send(()).expect("the test is gone");
        self.go
            .recv_timeout(TIMEOUT)
            .expect("the test did not let the task go on");
    }
}

#[test]
fn a_slow_owner_sees_one_progress_with_the_latest_report_then_completed() {
    let m = manager(1);
    let sub = m.subscribe();
    let (test, task) = steps();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            for i in 1..=100 {
                ctx.report_progress(i as f32 / 200.0, format!("step {i}"));
            }
            task.pause();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    test.reached();
    // The task is held after its 100th report: exactly one Progress is
    // queued, carrying that report.
    assert_eq!(progress(&next(&sub)), p(h.id(), 0.5, "step 100"));
    assert_empty(&sub);
    test.go();
    assert_completed(&next(&sub), h.id());
    assert_quiet(&m, &sub);
}

#[test]
fn undrained_progress_and_completed_are_exactly_one_progress_then_completed() {
    let m = manager(1);
    let sub = m.subscribe();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            for i in 1..=100 {
                ctx.report_progress(i as f32 / 200.0, format!("step {i}"));
            }
            Ok::<_, Infallible>(7u8)
        })
        .unwrap();
    assert!(m.wait_idle(TIMEOUT), "manager did not become idle");
    // The owner never drained while the task ran.
    let events: Vec<Event> = sub.try_iter().collect();
    assert_eq!(
        events.len(),
        2,
        "expected [Progress, Completed], got {events:?}"
    );
    assert_eq!(progress(&events[0]), p(h.id(), 0.5, "step 100"));
    assert_completed(&events[1], h.id());
    assert_eq!(events[1].result::<u8>(), Some(&7));
    assert_quiet(&m, &sub);
}

#[test]
fn at_most_one_pending_progress_per_task() {
    let m = manager(2);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let mut ids = Vec::new();
    for t in 0..2u32 {
        let (gate, tx) = (gate.clone(), tx.clone());
        let h = m
            .add_task(move |ctx: &TaskContext| {
                for i in 1..=50 {
                    ctx.report_progress(i as f32 / 100.0, format!("task {t} step {i}"));
                }
                tx.send(()).unwrap();
                gate.wait();
                Ok::<_, Infallible>(())
            })
            .unwrap();
        ids.push(h.id());
    }
    for _ in 0..2 {
        rx.recv_timeout(TIMEOUT).expect("a task did not report");
    }
    let mut pending: Vec<P> = sub.try_iter().map(|e| progress(&e)).collect();
    pending.sort_by_key(|p| p.id);
    assert_eq!(
        pending,
        [
            p(ids[0], 0.5, "task 0 step 50"),
            p(ids[1], 0.5, "task 1 step 50"),
        ]
    );
    gate.open();
    let mut done: Vec<TaskId> = take(&sub, 2)
        .iter()
        .map(|e| match e {
            Event::Completed { id, .. } => *id,
            other => panic!("expected Completed, got {other:?}"),
        })
        .collect();
    done.sort();
    assert_eq!(done, ids);
    assert_quiet(&m, &sub);
}

#[test]
fn a_report_after_draining_queues_a_new_progress() {
    let m = manager(1);
    let sub = m.subscribe();
    let (test, task) = steps();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            ctx.report_progress(0.25, "first");
            task.pause();
            ctx.report_progress(0.75, "second");
            task.pause();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    test.reached();
    assert_eq!(progress(&next(&sub)), p(h.id(), 0.25, "first"));
    assert_empty(&sub);
    test.go();
    test.reached();
    assert_eq!(progress(&next(&sub)), p(h.id(), 0.75, "second"));
    assert_empty(&sub);
    test.go();
    assert_completed(&next(&sub), h.id());
    assert_quiet(&m, &sub);
}

#[test]
fn a_draining_owner_sees_increasing_progress_then_the_last_report_then_the_end() {
    // The owner drains while the task reports: every Progress comes before
    // the Completed, each carries a later report than the one before, and
    // the last one carries the final report.
    let m = manager(1);
    let sub = m.subscribe();
    const N: u32 = 2000;
    let h = m
        .add_task(move |ctx: &TaskContext| {
            for i in 1..=N {
                ctx.report_progress(i as f32 / N as f32, format!("{i}"));
            }
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let mut seen = Vec::new();
    loop {
        match next(&sub) {
            Event::Progress {
                id,
                fraction,
                message,
                ..
            } => {
                assert_eq!(id, h.id());
                let step: u32 = message.parse().unwrap();
                assert_eq!(fraction, step as f32 / N as f32);
                seen.push(step);
            }
            e => {
                assert_completed(&e, h.id());
                break;
            }
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "progress went backwards or repeated: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&N), "the final report was not delivered");
    assert_quiet(&m, &sub);
}

#[test]
fn progress_comes_before_failed_and_nothing_after() {
    let m = manager(1);
    let sub = m.subscribe();
    let h = m
        .add_task(|ctx: &TaskContext| -> Result<(), &str> {
            ctx.report_progress(0.5, "half");
            Err("broken")
        })
        .unwrap();
    assert_eq!(progress(&next(&sub)), p(h.id(), 0.5, "half"));
    match next(&sub) {
        Event::Failed { id, message, .. } => {
            assert_eq!(id, h.id());
            assert_eq!(message, "broken");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_quiet(&m, &sub);
}

#[test]
fn fraction_is_clamped_and_nan_counts_as_zero() {
    let cases: [(f32, f32); 8] = [
        (-0.5, 0.0),
        (1.5, 1.0),
        (f32::NAN, 0.0),
        (f32::INFINITY, 1.0),
        (f32::NEG_INFINITY, 0.0),
        (0.3, 0.3),
        (0.0, 0.0),
        (1.0, 1.0),
    ];
    let m = manager(1);
    let sub = m.subscribe();
    let (test, task) = steps();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            for (i, (given, _)) in cases.iter().enumerate() {
                ctx.report_progress(*given, format!("case {i}"));
                task.pause();
            }
            Ok::<_, Infallible>(())
        })
        .unwrap();
    for (i, (given, expected)) in cases.iter().enumerate() {
        test.reached();
        let got = progress(&next(&sub));
        assert_eq!(
            got,
            p(h.id(), *expected, &format!("case {i}")),
            "report_progress({given})"
        );
        assert!(!got.fraction.is_nan());
        assert_empty(&sub);
        test.go();
    }
    assert_completed(&next(&sub), h.id());
    assert_quiet(&m, &sub);
}

#[test]
fn progress_of_a_task_stopped_while_running_is_dropped() {
    let m = manager(1);
    let first = m.subscribe();
    let second = m.subscribe();
    let gate = Gate::new();
    let (reported_tx, reported) = mpsc::channel();
    let (stopped_tx, stopped) = mpsc::channel();
    let group = Group::from("stopped-with-progress");
    let h = {
        let gate = gate.clone();
        m.task()
            .group(group.clone())
            .spawn(move |ctx: &TaskContext| {
                ctx.report_progress(0.5, "half");
                reported_tx.send(()).unwrap();
                gate.wait();
                stopped_tx.send(ctx.is_stopped()).unwrap();
                // Reports of a stopped task are dropped too.
                ctx.report_progress(0.9, "after the stop");
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    reported
        .recv_timeout(TIMEOUT)
        .expect("the task did not report");
    // The second subscription proves a Progress was queued; the first one
    // still holds its copy when the task is stopped.
    assert_eq!(
        progress(&next(&second)),
        P {
            group: Some(group.clone()),
            ..p(h.id(), 0.5, "half")
        }
    );
    assert_eq!(m.stop_task(h.id(), false, false), 1);
    assert_empty(&first);
    gate.open();
    assert!(
        stopped.recv_timeout(TIMEOUT).unwrap(),
        "is_stopped was false"
    );
    assert_quiet(&m, &first);
    assert_quiet(&m, &second);
}

#[test]
fn every_subscriber_gets_the_progress() {
    let m = manager(1);
    let subs = [m.subscribe(), m.subscribe()];
    let (test, task) = steps();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            ctx.report_progress(0.4, "loading");
            task.pause();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    test.reached();
    for sub in &subs {
        assert_eq!(progress(&next(sub)), p(h.id(), 0.4, "loading"));
        assert_empty(sub);
    }
    test.go();
    for sub in &subs {
        assert_completed(&next(sub), h.id());
        assert_quiet(&m, sub);
    }
}

#[test]
fn every_subscriber_gets_the_progress_when_it_drains_at_its_own_pace() {
    // Subscribers are independent: the one that drained sees the next
    // report, even though the other has not drained yet; the slow one
    // sees only the latest.
    let m = manager(1);
    let fast = m.subscribe();
    let slow = m.subscribe();
    let (test, task) = steps();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            ctx.report_progress(0.25, "first");
            task.pause();
            ctx.report_progress(0.75, "second");
            task.pause();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    test.reached();
    assert_eq!(progress(&next(&fast)), p(h.id(), 0.25, "first"));
    test.go();
    test.reached();
    // `fast` drained before the second report: the report reaches it.
    match fast.try_recv() {
        Ok(e) => assert_eq!(progress(&e), p(h.id(), 0.75, "second")),
        Err(e) => panic!(
            "a subscriber that drained its Progress got nothing for the next \
             report while the other subscriber had not drained ({e:?})"
        ),
    }
    test.go();
    assert_completed(&next(&fast), h.id());
    assert_quiet(&m, &fast);
    assert_eq!(progress(&next(&slow)), p(h.id(), 0.75, "second"));
    assert_completed(&next(&slow), h.id());
    assert_quiet(&m, &slow);
}

#[test]
fn the_notifier_is_called_when_a_progress_lands_in_an_empty_queue() {
    let m = manager(1);
    let sub = m.subscribe();
    let (wake, woken) = mpsc::channel();
    m.set_notifier(move || {
        let _ = wake.send(());
    });
    let (test, task) = steps();
    let h = m
        .add_task(move |ctx: &TaskContext| {
            ctx.report_progress(0.1, "a");
            // Coalesced into the pending Progress: no new event, no call.
            for i in 2..=9 {
                ctx.report_progress(i as f32 / 10.0, "b");
            }
            task.pause();
            // The owner drained to empty: the next report calls it again.
            ctx.report_progress(1.0, "c");
            task.pause();
            Ok::<_, Infallible>(())
        })
        .unwrap();
    test.reached();
    // The notifier runs on the task's thread before `pause` signals.
    woken.try_recv().expect("the notifier was not called");
    assert!(woken.try_recv().is_err(), "called more than once");
    let drained: Vec<P> = sub.try_iter().map(|e| progress(&e)).collect();
    assert_eq!(drained, [p(h.id(), 0.9, "b")]);
    test.go();
    test.reached();
    woken
        .try_recv()
        .expect("the notifier was not called for a Progress in an empty queue");
    assert!(woken.try_recv().is_err(), "called more than once");
    // The Completed joins a queue that still holds the Progress: no call.
    test.go();
    assert!(m.wait_idle(TIMEOUT));
    assert!(
        woken.try_recv().is_err(),
        "notifier called for an event that joined a non-empty queue"
    );
    assert_eq!(progress(&next(&sub)), p(h.id(), 1.0, "c"));
    assert_completed(&next(&sub), h.id());
    assert_quiet(&m, &sub);
}

#[test]
fn the_progress_carries_the_tasks_group() {
    let m = manager(2);
    let sub = m.subscribe();
    let named = Group::from("thumbnails");
    let numbered = m.next_group_id();
    for group in [Some(named.clone()), Some(numbered.clone()), None] {
        let (test, task) = steps();
        let mut b = m.task();
        if let Some(g) = &group {
            b = b.group(g.clone());
        }
        let h = b
            .spawn(move |ctx: &TaskContext| {
                ctx.report_progress(0.5, "half");
                task.pause();
                Ok::<_, Infallible>(())
            })
            .unwrap();
        test.reached();
        let e = next(&sub);
        assert_eq!(e.task_id(), Some(h.id()));
        assert_eq!(e.group(), group.as_ref());
        assert_eq!(
            progress(&e),
            P {
                group: group.clone(),
                ..p(h.id(), 0.5, "half")
            }
        );
        test.go();
        // Drain its Completed (and GroupFinished) before the next task.
        let end = next(&sub);
        assert_completed(&end, h.id());
        if let Some(g) = &group {
            match next(&sub) {
                Event::GroupFinished { group: got } => assert_eq!(&got, g),
                other => panic!("expected GroupFinished, got {other:?}"),
            }
        }
    }
    assert_quiet(&m, &sub);
}
