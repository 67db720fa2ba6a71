//! SPEC 8, bad input: every misuse gets an `Err` with a clear message,
//! never a panic or a silent drop; stop calls never fail.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bgtask::{
    Error, Event, Group, RecvError, RecvTimeoutError, TaskContext, TaskId, TaskManager,
    TryRecvError,
};
use common::*;

/// Checks the shape shared by every error message: starts lowercase, has
/// no trailing period (nor trailing space).
fn assert_message_style(msg: &str) {
    let first = msg.chars().next().expect("empty error message");
    assert!(
        first.is_lowercase(),
        "message does not start lowercase: {msg:?}"
    );
    assert!(!msg.ends_with('.'), "message ends with a period: {msg:?}");
    assert_eq!(msg.trim_end(), msg, "message ends with whitespace: {msg:?}");
}

/// Ids of `n` tasks added to a fresh paused manager (which stays alive).
fn foreign_ids(n: usize) -> (TaskManager, Vec<TaskId>) {
    let other = paused(1);
    let ids = (0..n).map(|_| other.add_task(noop).unwrap().id()).collect();
    (other, ids)
}

#[test]
fn zero_threads_is_rejected_at_build_with_a_message_that_says_what_to_do() {
    let err = TaskManager::builder().max_threads(0).build().unwrap_err();
    assert_eq!(err, Error::ZeroThreads);
    let msg = err.to_string();
    assert!(msg.contains("max_threads"), "{msg:?}");
    assert!(msg.contains("at least 1"), "{msg:?}");
    assert_message_style(&msg);
    // Whatever else is set.
    let err = TaskManager::builder()
        .thread_name("bad-zero")
        .start_processing(true)
        .max_threads(0)
        .build()
        .unwrap_err();
    assert_eq!(err, Error::ZeroThreads);
    // The last call wins: 0 then 1 is fine.
    let m = TaskManager::builder()
        .max_threads(0)
        .max_threads(1)
        .build()
        .unwrap();
    assert_eq!(m.max_threads(), 1);
}

#[test]
fn unknown_upstream_from_another_manager_is_rejected_and_nothing_is_added() {
    let m = paused(1);
    let sub = m.subscribe();
    let counter = Arc::new(AtomicUsize::new(0));
    let before = m.add_task(noop).unwrap();
    // foreign[0] has the same sequence number as `before`; foreign[4] is
    // beyond anything `m` issued.
    let (_other, foreign) = foreign_ids(5);
    assert_eq!(foreign[0].as_u64(), before.id().as_u64());
    for &id in &foreign {
        let err = m.task().after([id]).spawn(counting(&counter)).unwrap_err();
        assert_eq!(err, Error::UnknownTask { id });
        match err {
            Error::UnknownTask { id: got } => assert_eq!(got, id),
            other => panic!("expected UnknownTask, got {other:?}"),
        }
        let err = m.add_pass_through_task([id]).unwrap_err();
        assert_eq!(err, Error::UnknownTask { id });
    }
    // A rejected add uses no id.
    let after = m.add_task(noop).unwrap();
    assert_eq!(after.id().as_u64(), before.id().as_u64() + 1);

    m.start_processing();
    assert_eq!(
        take_ev(&sub, 2),
        [Ev::Done(before.id()), Ev::Done(after.id())]
    );
    assert_quiet(&m, &sub);
    assert_eq!(counter.load(Ordering::SeqCst), 0, "a rejected task ran");
}

#[test]
fn a_mix_of_valid_and_foreign_upstream_ids_is_rejected_and_nothing_is_added() {
    let m = paused(2);
    let sub = m.subscribe();
    let counter = Arc::new(AtomicUsize::new(0));
    let a = m.add_task(noop).unwrap();
    let b = m.add_task(noop).unwrap();
    let (_other, foreign) = foreign_ids(3);
    let bad = foreign[0]; // same sequence number as `a`
    let lists = [
        vec![a.id(), bad],
        vec![bad, a.id()],
        vec![a.id(), b.id(), bad],
        vec![a.id(), bad, bad],
    ];
    for list in lists {
        let err = m
            .task()
            .group("mixed")
            .priority(5)
            .after(list.clone())
            .spawn(counting(&counter))
            .unwrap_err();
        assert_eq!(err, Error::UnknownTask { id: bad }, "after {list:?}");
        let err = m.add_pass_through_task(list.clone()).unwrap_err();
        assert_eq!(
            err,
            Error::UnknownTask { id: bad },
            "pass-through after {list:?}"
        );
    }
    // Several calls to after() add up: a foreign id in any of them is rejected.
    let err = m
        .task()
        .after([&a])
        .after([bad])
        .spawn(counting(&counter))
        .unwrap_err();
    assert_eq!(err, Error::UnknownTask { id: bad });

    let c = m.task().after([&a, &b]).spawn(noop).unwrap();
    assert_eq!(
        c.id().as_u64(),
        b.id().as_u64() + 1,
        "a rejected add used an id"
    );
    m.start_processing();
    let mut events = take_ev(&sub, 3);
    assert_eq!(events.pop(), Some(Ev::Done(c.id())));
    events.sort_by_key(|e| match e {
        Ev::Done(id) => *id,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(events, [Ev::Done(a.id()), Ev::Done(b.id())]);
    // Nothing of group "mixed" exists: no GroupFinished, nothing to stop.
    assert_quiet(&m, &sub);
    assert_eq!(m.stop_task_group(&Group::from("mixed"), true, true), 0);
    assert_eq!(counter.load(Ordering::SeqCst), 0, "a rejected task ran");
}

#[test]
fn unknown_task_message_names_the_id_and_says_what_to_do() {
    let m = paused(1);
    let (_other, foreign) = foreign_ids(8);
    let id = foreign[7];
    let err = m.task().after([id]).spawn(noop).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&id.to_string()), "{msg:?} does not name {id}");
    assert!(msg.contains("this manager"), "{msg:?}");
    assert_message_style(&msg);
}

#[test]
fn adding_after_shut_down_fails_with_a_message_that_says_what_to_do() {
    let m = manager(1);
    let first = m.add_task(noop).unwrap();
    m.shut_down();
    let err = m.add_task(noop).unwrap_err();
    assert_eq!(err, Error::ShutDown);
    let msg = err.to_string();
    assert!(msg.contains("shut down"), "{msg:?}");
    assert!(msg.contains("new"), "{msg:?} does not say what to do");
    assert_message_style(&msg);
    // Even with a valid upstream, or a foreign one: the manager is gone.
    assert_eq!(
        m.task().after([&first]).spawn(noop).unwrap_err(),
        Error::ShutDown
    );
    let (_other, foreign) = foreign_ids(1);
    assert!(m.task().after(foreign).spawn(noop).is_err());
}

#[test]
fn stop_calls_with_unknown_ids_return_zero_and_do_not_panic() {
    let m = paused(1);
    let sub = m.subscribe();
    let counter = Arc::new(AtomicUsize::new(0));
    let own = m.add_task(counting(&counter)).unwrap();
    let (_other, foreign) = foreign_ids(3);
    for up in [false, true] {
        for down in [false, true] {
            for &id in &foreign {
                assert_eq!(m.stop_task(id, up, down), 0, "{id:?} ({up}, {down})");
            }
            assert_eq!(m.stop_task_group(&Group::from("none"), up, down), 0);
            assert_eq!(m.stop_task_group(&Group::from(42u64), up, down), 0);
        }
    }
    m.start_processing();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(own.id())]);
    assert_quiet(&m, &sub);
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    // Delivered, then shut down: still 0, still no panic.
    assert_eq!(m.stop_task(own.id(), true, true), 0);
    m.shut_down();
    assert_eq!(m.stop_task(own.id(), true, true), 0);
    assert_eq!(m.stop_task(foreign[0], false, false), 0);
    assert_eq!(m.stop_task_group(&Group::from("none"), true, true), 0);
    assert_eq!(m.stop_all_tasks(), 0);
}

#[test]
fn a_panicking_task_is_a_failed_task_not_a_crashed_pool() {
    let m = manager(1);
    let sub = m.subscribe();
    let bad = m
        .add_task(|_: &TaskContext| -> Result<(), Infallible> { panic!("kaboom") })
        .unwrap();
    let good = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(5))
        .unwrap();
    match next(&sub) {
        Event::Failed { id, message, .. } => {
            assert_eq!(id, bad.id());
            assert_eq!(message, "kaboom");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(take_ev(&sub, 1), [Ev::Done(good.id())]);
    assert_quiet(&m, &sub);
}

#[test]
fn every_error_message_starts_lowercase_and_has_no_trailing_period() {
    let (_other, foreign) = foreign_ids(1);
    let m = paused(1);
    let unknown = m.task().after([foreign[0]]).spawn(noop).unwrap_err();
    let zero = TaskManager::builder().max_threads(0).build().unwrap_err();
    m.shut_down();
    let shut = m.add_task(noop).unwrap_err();
    assert!(matches!(unknown, Error::UnknownTask { .. }));
    assert_eq!(zero, Error::ZeroThreads);
    assert_eq!(shut, Error::ShutDown);
    let sub = m.subscribe();
    let messages = [
        unknown.to_string(),
        zero.to_string(),
        shut.to_string(),
        RecvError.to_string(),
        TryRecvError::Empty.to_string(),
        TryRecvError::Disconnected.to_string(),
        RecvTimeoutError::Timeout.to_string(),
        RecvTimeoutError::Disconnected.to_string(),
        sub.try_recv().unwrap_err().to_string(),
    ];
    for msg in &messages {
        assert_message_style(msg);
    }
}
