//! Issue item 7: `TaskManager::set_max_threads(n)` at run time. Growing
//! starts workers as tasks need them; shrinking retires idle workers and
//! lets running tasks finish.
//!
//! Each test names its worker threads with its own prefix, so that
//! `count_threads` sees only its own workers while tests run in parallel.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use bgtask::{Error, TaskHandle, TaskId, TaskManager};
use common::*;

/// Adds a task that only counts itself in `meter`.
fn add_counted(m: &TaskManager, meter: &Meter) -> TaskHandle<()> {
    let meter = meter.clone();
    m.add_task(move |_| {
        meter.enter();
        meter.leave();
        Ok::<_, Infallible>(())
    })
    .unwrap()
}

/// Waits for `n` start signals; returns the ids sorted (tasks started on
/// different workers may signal in any order).
fn sorted_starts(rx: &mpsc::Receiver<TaskId>, n: usize) -> Vec<TaskId> {
    let mut ids = starts(rx, n);
    ids.sort_unstable();
    ids
}

/// The ids of `handles`.
fn ids<T>(handles: &[TaskHandle<T>]) -> Vec<TaskId> {
    handles.iter().map(TaskHandle::id).collect()
}

#[test]
fn growing_from_1_to_4_runs_4_at_once() {
    let m = named(1, "mt-grow");
    let sub = m.subscribe();
    let conc = Meter::default();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..8).map(|_| add_gated(&m, &conc, &tx, &gate)).collect();
    assert_eq!(sorted_starts(&rx, 1), [handles[0].id()]);
    assert_eq!(counts(&m), (7, 0, 1));
    assert_eq!(m.stats().workers, 1);
    assert_threads("mt-grow", 1);

    m.set_max_threads(4).unwrap();
    assert_eq!(m.max_threads(), 4);
    // Three more start, in order, on three new workers.
    assert_eq!(sorted_starts(&rx, 3), ids(&handles[1..4]));
    assert_eq!(conc.high(), 4);
    assert_eq!(counts(&m), (4, 0, 4));
    assert_eq!(m.stats().workers, 4);
    assert_threads("mt-grow", 4);

    gate.open();
    let done: Vec<TaskId> = take(&sub, 8).iter().map(id_of).collect();
    let mut sorted = done.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ids(&handles));
    assert_quiet(&m, &sub);
    assert_eq!(conc.high(), 4, "never more than 4 at once");
    assert_eq!(m.stats().workers, 4);
    assert_threads("mt-grow", 4);
    m.shut_down();
    // Joined, but the kernel may list an exited thread for a moment after
    // `join` returns (the join wakes on the thread's exit, before the
    // kernel removes it from /proc): poll.
    assert_threads("mt-grow", 0);
}

#[test]
fn growing_starts_workers_only_as_tasks_need_them() {
    let m = named(1, "mt-lazy");
    m.set_max_threads(4).unwrap();
    assert_eq!(m.stats().workers, 0, "no task: no worker");
    assert_threads("mt-lazy", 0);

    let conc = Meter::default();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..2).map(|_| add_gated(&m, &conc, &tx, &gate)).collect();
    sorted_starts(&rx, 2);
    assert_eq!(m.stats().workers, 2, "two tasks: two workers, not four");
    assert_threads("mt-lazy", 2);
    gate.open();
    for h in &handles {
        h.wait_timeout(TIMEOUT)
            .expect("in time")
            .expect("completed");
    }
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(m.stats().workers, 2);
    m.shut_down();
}

#[test]
fn growing_a_paused_manager_starts_nothing() {
    let m = TaskManager::builder()
        .max_threads(1)
        .thread_name("mt-paused")
        .build()
        .unwrap();
    let sub = m.subscribe();
    let conc = Meter::default();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..5).map(|_| add_gated(&m, &conc, &tx, &gate)).collect();
    m.set_max_threads(3).unwrap();
    assert_eq!(m.stats().workers, 0);
    assert_eq!(counts(&m), (5, 0, 0));
    assert_threads("mt-paused", 0);
    m.start_processing();
    assert_eq!(sorted_starts(&rx, 3), ids(&handles[..3]));
    assert_eq!(counts(&m), (2, 0, 3));
    assert_threads("mt-paused", 3);
    gate.open();
    take(&sub, 5);
    assert_quiet(&m, &sub);
    assert_eq!(conc.high(), 3);
    m.shut_down();
}

#[test]
fn shrinking_from_4_to_1_lets_running_tasks_finish() {
    let m = named(4, "mt-shrink");
    let sub = m.subscribe();
    let first = Meter::default();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let running: Vec<_> = (0..4).map(|_| add_gated(&m, &first, &tx, &gate)).collect();
    sorted_starts(&rx, 4);
    assert_eq!(first.high(), 4);
    assert_threads("mt-shrink", 4);

    m.set_max_threads(1).unwrap();
    assert_eq!(m.max_threads(), 1);
    // Nothing is interrupted: all four still run on their four workers.
    assert_eq!(counts(&m), (0, 0, 4));
    assert_eq!(m.stats().workers, 4);
    assert_threads("mt-shrink", 4);

    // Ten more wait; each records how many of the first four still ran
    // when it started.
    let later = Meter::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..10)
        .map(|_| {
            let (later, first, overlap) = (later.clone(), first.clone(), Arc::clone(&overlap));
            m.add_task(move |_| {
                later.enter();
                overlap.fetch_max(first.now(), Ordering::SeqCst);
                later.leave();
                Ok::<_, Infallible>(())
            })
            .unwrap()
        })
        .collect();
    assert_eq!(counts(&m), (10, 0, 4));

    gate.open();
    let done: Vec<TaskId> = take(&sub, 14).iter().map(id_of).collect();
    assert_quiet(&m, &sub);
    // All fourteen completed (a retiring worker may deliver its event a
    // little after the remaining worker moved on), the ten in order.
    let mut all = done.clone();
    all.sort_unstable();
    assert_eq!(all, [ids(&running), ids(&queued)].concat());
    let later_ids = ids(&queued);
    let later_order: Vec<TaskId> = done
        .iter()
        .copied()
        .filter(|id| later_ids.contains(id))
        .collect();
    assert_eq!(later_order, later_ids);
    assert_eq!(
        later.high(),
        1,
        "at most one task at a time after shrinking"
    );
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "no later task started beside the first four"
    );
    assert_eq!(m.stats().workers, 1);
    // A worker retires when it would go idle; its thread then exits on its
    // own, which only the thread count shows: poll it.
    assert_threads("mt-shrink", 1);

    // And from now on, one at a time.
    let after = Meter::default();
    let more: Vec<_> = (0..10).map(|_| add_counted(&m, &after)).collect();
    for h in &more {
        h.wait_timeout(TIMEOUT)
            .expect("in time")
            .expect("completed");
    }
    assert_eq!(after.high(), 1);
    assert_threads("mt-shrink", 1);
    m.shut_down();
}

#[test]
fn shrinking_retires_idle_workers_at_once() {
    let m = named(4, "mt-idle");
    let sub = m.subscribe();
    let conc = Meter::default();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    for _ in 0..4 {
        add_gated(&m, &conc, &tx, &gate);
    }
    sorted_starts(&rx, 4);
    gate.open();
    take(&sub, 4);
    assert_quiet(&m, &sub);
    assert_eq!(m.stats().workers, 4, "idle workers stay");
    assert_threads("mt-idle", 4);

    m.set_max_threads(2).unwrap();
    assert_eq!(m.stats().workers, 2);
    // The retired threads exit on their own: poll the count.
    assert_threads("mt-idle", 2);

    let conc = Meter::default();
    let gate = Gate::new();
    let handles: Vec<_> = (0..4).map(|_| add_gated(&m, &conc, &tx, &gate)).collect();
    assert_eq!(sorted_starts(&rx, 2), ids(&handles[..2]));
    assert_eq!(counts(&m), (2, 0, 2));
    gate.open();
    take(&sub, 4);
    assert_quiet(&m, &sub);
    assert_eq!(conc.high(), 2);
    assert_eq!(m.stats().workers, 2);
    assert_threads("mt-idle", 2);
    m.shut_down();
}

#[test]
fn zero_is_rejected_and_changes_nothing() {
    let m = TaskManager::builder()
        .max_threads(3)
        .thread_name("mt-zero")
        .build()
        .unwrap();
    let sub = m.subscribe();
    let conc = Meter::default();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..5).map(|_| add_gated(&m, &conc, &tx, &gate)).collect();
    assert_eq!(m.set_max_threads(0), Err(Error::ZeroThreads));
    assert_eq!(m.max_threads(), 3);
    assert_eq!(m.stats().workers, 0);
    assert_eq!(counts(&m), (5, 0, 0));

    m.start_processing();
    assert_eq!(sorted_starts(&rx, 3), ids(&handles[..3]));
    assert_eq!(counts(&m), (2, 0, 3));
    assert_eq!(m.stats().workers, 3);
    // Rejected while running, too.
    assert_eq!(m.set_max_threads(0), Err(Error::ZeroThreads));
    assert_eq!(m.max_threads(), 3);
    assert_eq!(counts(&m), (2, 0, 3));
    assert_threads("mt-zero", 3);
    gate.open();
    take(&sub, 5);
    assert_quiet(&m, &sub);
    assert_eq!(conc.high(), 3);
    assert_eq!(m.stats().workers, 3);
    m.shut_down();
}
