//! A user's values can end up dropped by the manager: a task's kwargs and
//! upstream results once it ran, or once it will never run (stopped, or
//! failed by a cascade), and the result a finished task keeps for its
//! handles, when the manager frees the task's cell. Those `Drop`s are user
//! code: they run with no lock of the manager held, and a panic in one is
//! contained, so it takes no worker down and does not escape from an add
//! or a stop (RELIABILITY.md finding 22).

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use bgtask::{Event, Kwargs, TaskContext, TaskManager};
use common::*;

/// A user value that counts its drops, then panics.
struct Bomb(Arc<AtomicUsize>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if !thread::panicking() {
            panic!("a user value that panics when dropped");
        }
    }
}

/// A bomb and its drop count.
fn bomb() -> (Bomb, Arc<AtomicUsize>) {
    let drops = Arc::new(AtomicUsize::new(0));
    (Bomb(Arc::clone(&drops)), drops)
}

/// Kwargs holding only a bomb.
fn bomb_kwargs() -> (Kwargs, Arc<AtomicUsize>) {
    let (b, drops) = bomb();
    (Kwargs::new().with("bomb", b), drops)
}

/// The worker drops a task's kwargs after the task ran: contained.
#[test]
fn kwargs_that_panic_when_dropped_after_the_task_ran_take_no_worker_down() {
    let m = manager(2);
    let sub = m.subscribe();
    let (kwargs, drops) = bomb_kwargs();
    let h = m
        .task()
        .kwargs(kwargs)
        .spawn(|ctx: &TaskContext| Ok::<_, Infallible>(ctx.kwargs().contains_key("bomb")))
        .unwrap();
    let result = next_completed(&sub, h.id());
    assert_eq!(result.downcast_ref::<bool>(), Some(&true));
    // Dropped by the worker before it ended the task.
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_two_workers_take_tasks(&m);
    assert!(m.add_task(noop).is_ok());
}

/// A delivered task's cell keeps its result for its handles; once the
/// owner dropped its copy, freeing the cell drops the value. The registry
/// lets go of the cell when a later add pushes past it (or an idle worker
/// frees it): that drop happens after the registry lock, contained.
#[test]
fn a_result_that_panics_when_its_cell_is_freed_breaks_no_add_and_no_worker() {
    let m = manager(2);
    let sub = m.subscribe();
    let (b, drops) = bomb();
    let h = m
        .add_task(move |_: &TaskContext| Ok::<_, Infallible>(b))
        .unwrap();
    let result = next_completed(&sub, h.id());
    assert!(result.downcast_ref::<Bomb>().is_some());
    drop(result);
    drop(h);
    assert_eq!(drops.load(Ordering::SeqCst), 0, "the cell keeps a copy");
    assert!(m.wait_idle(TIMEOUT));
    let later: Vec<_> = (0..3).map(|_| m.add_task(noop).unwrap().id()).collect();
    eventually("the kept result to be dropped", || {
        drops.load(Ordering::SeqCst) == 1
    });
    let got: Vec<_> = take(&sub, 3).iter().map(id_of).collect();
    assert_eq!(got.len(), later.len());
    assert_two_workers_take_tasks(&m);
}

/// A blocked task that a failure cascade ends never runs: its kwargs go
/// with its work, dropped after every lock is released, contained.
#[test]
fn kwargs_of_a_task_a_failure_cascade_ends_are_dropped_contained() {
    let m = manager(2);
    let sub = m.subscribe();
    let gate = Gate::new();
    let up = {
        let gate = gate.clone();
        m.add_task(move |_: &TaskContext| {
            gate.wait();
            Err::<u8, _>(std::io::Error::other("the upstream fails"))
        })
        .unwrap()
    };
    let (kwargs, drops) = bomb_kwargs();
    let down = m
        .task()
        .after([&up])
        .kwargs(kwargs)
        .spawn(|_: &TaskContext| -> Result<u8, Infallible> {
            unreachable!("failed by the cascade")
        })
        .unwrap();
    gate.open();
    let failed: Vec<_> = take(&sub, 2)
        .iter()
        .map(|e| match e {
            Event::Failed { id, .. } => *id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(failed, [up.id(), down.id()]);
    eventually("the cascade-failed task's kwargs to be dropped", || {
        drops.load(Ordering::SeqCst) == 1
    });
    assert!(m.add_task(noop).is_ok());
    assert_two_workers_take_tasks(&m);
}

/// Stopping a task before it ran drops its kwargs (with its work) once
/// the stop's locks are released, contained: `stop_task` returns normally,
/// and the value is dropped by the time it returns. Both a blocked task
/// (kwargs in its graph node) and a queued task without upstream (kwargs
/// kept with its work).
#[test]
fn stopping_tasks_whose_kwargs_panic_when_dropped_returns_normally() {
    let m = TaskManager::builder()
        .max_threads(2)
        .start_processing(false)
        .build()
        .unwrap();
    let sub = m.subscribe();
    let (kwargs, queued_drops) = bomb_kwargs();
    let queued = m.task().kwargs(kwargs).spawn(noop).unwrap();
    let (kwargs, blocked_drops) = bomb_kwargs();
    let blocked = m
        .task()
        .after([&queued])
        .kwargs(kwargs)
        .spawn(noop)
        .unwrap();

    assert_eq!(m.stop_task(blocked.id(), false, false), 1);
    assert_eq!(blocked_drops.load(Ordering::SeqCst), 1);
    assert_eq!(m.stop_task(queued.id(), false, false), 1);
    assert_eq!(queued_drops.load(Ordering::SeqCst), 1);

    m.start_processing();
    assert!(m.add_task(noop).is_ok());
    assert_two_workers_take_tasks(&m);
    // The no-op and the two blockers; nothing of the stopped tasks.
    for e in take(&sub, 3) {
        assert!(matches!(e, Event::Completed { .. }), "{e:?}");
    }
    assert_quiet(&m, &sub);
}
