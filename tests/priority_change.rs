//! Issue item 6: `TaskManager::set_priority(id, p)` changes the priority of
//! a task that has not started, keeping FIFO among equal priorities by the
//! original insertion order; a reprioritised task still waits for its
//! upstream.

mod common;

use bgtask::{Event, Subscription, TaskId, TaskManager, TaskState};
use common::*;

/// Adds a task with `priority` after `upstream` that logs its id.
fn add_logged_after(m: &TaskManager, log: &Log, priority: i32, upstream: TaskId) -> TaskId {
    m.task()
        .priority(priority)
        .after([upstream])
        .spawn(logger(log))
        .unwrap()
        .id()
}

/// Starts `m` and returns the ids of the next `n` events, which must all
/// be `Completed`; then checks that nothing else happens and that each
/// body ran exactly once, in that order.
fn run_order(m: &TaskManager, sub: &Subscription, log: &Log, n: usize) -> Vec<TaskId> {
    m.start_processing();
    let order: Vec<TaskId> = take(sub, n)
        .iter()
        .map(|e| match e {
            Event::Completed { id, .. } => *id,
            other => panic!("expected Completed, got {other:?}"),
        })
        .collect();
    assert_quiet(m, sub);
    assert_eq!(
        *log.lock().unwrap(),
        order,
        "each body ran once, in event order"
    );
    order
}

/// A paused one-worker manager with a subscription and four logged tasks
/// `a`, `b`, `c`, `d` of priority 0.
fn abcd() -> (TaskManager, Subscription, Log, [TaskId; 4]) {
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    let ids = [(); 4].map(|()| add_logged(&m, &log, 0));
    (m, sub, log, ids)
}

#[test]
fn raising_a_queued_task_moves_it_ahead() {
    let (m, sub, log, [a, b, c, d]) = abcd();
    assert!(m.set_priority(c, 5));
    assert_eq!(m.task_state(c), Some(TaskState::Queued));
    assert_eq!(run_order(&m, &sub, &log, 4), [c, a, b, d]);
}

#[test]
fn lowering_a_queued_task_moves_it_behind() {
    let (m, sub, log, [a, b, c, d]) = abcd();
    assert!(m.set_priority(a, -1));
    assert_eq!(run_order(&m, &sub, &log, 4), [b, c, d, a]);
}

#[test]
fn raise_then_lower_combine() {
    let (m, sub, log, [a, b, c, d]) = abcd();
    assert!(m.set_priority(c, 5));
    assert!(m.set_priority(a, -1));
    assert_eq!(run_order(&m, &sub, &log, 4), [c, b, d, a]);
}

#[test]
fn equal_priorities_keep_insertion_order_after_changes() {
    let (m, sub, log, [a, b, c, d]) = abcd();
    // d is raised first, b second: b was added first, so b runs first.
    assert!(m.set_priority(d, 5));
    assert!(m.set_priority(b, 5));
    assert_eq!(run_order(&m, &sub, &log, 4), [b, d, a, c]);
}

#[test]
fn equal_priorities_keep_insertion_order_when_moving_down_to_them() {
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    let a = add_logged(&m, &log, 9);
    let b = add_logged(&m, &log, 2);
    let c = add_logged(&m, &log, 0);
    let d = add_logged(&m, &log, 2);
    let e = add_logged(&m, &log, -1);
    // Final priorities: a 2, b 2, c 2, d 2, e 2, reached from above, from
    // below and unchanged; they must run in the order they were added.
    assert!(m.set_priority(e, 2));
    assert!(m.set_priority(c, 2));
    assert!(m.set_priority(a, 2));
    assert_eq!(run_order(&m, &sub, &log, 5), [a, b, c, d, e]);
}

#[test]
fn many_changes_match_a_model() {
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    // A fixed pseudo-random sequence (LCG) of priorities and changes.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let mut model: Vec<(i32, TaskId)> = Vec::new();
    for _ in 0..40 {
        let p = rand(5) as i32 - 2;
        model.push((p, add_logged(&m, &log, p)));
    }
    for _ in 0..60 {
        let i = rand(40) as usize;
        let p = rand(5) as i32 - 2;
        assert!(m.set_priority(model[i].1, p));
        model[i].0 = p;
    }
    // Highest priority first; equal priorities by id (insertion order).
    model.sort_by_key(|&(p, id)| (std::cmp::Reverse(p), id));
    let expected: Vec<TaskId> = model.iter().map(|&(_, id)| id).collect();
    assert_eq!(run_order(&m, &sub, &log, 40), expected);
}

#[test]
fn raising_while_processing_behind_a_running_task() {
    let m = manager(1);
    let sub = m.subscribe();
    let log = Log::default();
    let gate = Gate::new();
    let (blocker, rx) = add_blocker(&m, &gate);
    started(&rx);
    let a = add_logged(&m, &log, 0);
    let b = add_logged(&m, &log, 0);
    let c = add_logged(&m, &log, 0);
    assert!(m.set_priority(c, 5));
    assert!(m.set_priority(a, -3));
    gate.open();
    let order: Vec<TaskId> = take(&sub, 4).iter().map(id_of).collect();
    assert_eq!(order, [blocker.id(), c, b, a]);
    assert_quiet(&m, &sub);
    assert_eq!(*log.lock().unwrap(), [c, b, a]);
}

#[test]
fn running_task_is_not_reprioritised() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (blocker, rx) = add_blocker(&m, &gate);
    started(&rx);
    assert_eq!(m.task_state(blocker.id()), Some(TaskState::Running));
    assert!(!m.set_priority(blocker.id(), 5));
    assert_eq!(m.task_state(blocker.id()), Some(TaskState::Running));
    gate.open();
    assert_eq!(
        take(&sub, 1).iter().map(id_of).collect::<Vec<_>>(),
        [blocker.id()]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn ended_task_is_not_reprioritised() {
    let m = manager(1);
    let sub = m.subscribe();
    let done = m.add_task(noop).unwrap();
    let failed = m.add_task(|_| -> Result<(), &str> { Err("no") }).unwrap();
    assert_eq!(
        take_ev(&sub, 2),
        [Ev::Done(done.id()), Ev::Failed(failed.id(), "no".into())]
    );
    assert!(!m.set_priority(done.id(), 5));
    assert!(!m.set_priority(failed.id(), 5));

    // A stopped queued task has ended too.
    m.pause_processing();
    let stopped = m.add_task(noop).unwrap();
    assert_eq!(m.stop_task(stopped.id(), false, false), 1);
    assert!(!m.set_priority(stopped.id(), 5));
    m.start_processing();
    assert_quiet(&m, &sub);
}

#[test]
fn stopped_running_task_is_not_reprioritised() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (blocker, rx) = add_blocker(&m, &gate);
    started(&rx);
    assert_eq!(m.stop_task(blocker.id(), false, false), 1);
    assert!(!m.set_priority(blocker.id(), 5));
    gate.open();
    assert_quiet(&m, &sub);
}

#[test]
fn blocked_task_keeps_waiting_for_its_upstream() {
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    let up = add_logged(&m, &log, 0);
    let x = add_logged(&m, &log, 0);
    let y = add_logged(&m, &log, 0);
    let hi = add_logged_after(&m, &log, 0, up);
    let lo = add_logged_after(&m, &log, 5, up);
    assert_eq!(m.task_state(hi), Some(TaskState::Blocked));
    assert!(m.set_priority(hi, 10));
    assert!(m.set_priority(lo, -1));
    assert_eq!(m.task_state(hi), Some(TaskState::Blocked));
    assert_eq!(m.task_state(lo), Some(TaskState::Blocked));
    // hi (10) does not run before its upstream; once released it runs at
    // its new place, ahead of x and y; lo (now -1) runs last.
    assert_eq!(run_order(&m, &sub, &log, 5), [up, hi, x, y, lo]);
}

#[test]
fn blocked_task_waits_for_a_running_upstream() {
    let m = manager(2);
    let sub = m.subscribe();
    let log = Log::default();
    let gate = Gate::new();
    let (up, rx) = add_blocker(&m, &gate);
    started(&rx);
    let down = add_logged_after(&m, &log, 0, up.id());
    assert!(m.set_priority(down, 100));
    assert_eq!(m.task_state(down), Some(TaskState::Blocked));
    // A worker is free (dispatch runs inside set_priority), yet the raised
    // task does not start.
    assert_eq!(m.stats().tasks.running, 1);
    assert!(log.lock().unwrap().is_empty());
    gate.open();
    let order: Vec<TaskId> = take(&sub, 2).iter().map(id_of).collect();
    assert_eq!(order, [up.id(), down]);
    assert_quiet(&m, &sub);
    assert_eq!(*log.lock().unwrap(), [down]);
}

#[test]
fn raising_an_upstream_task() {
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    let a = add_logged(&m, &log, 0);
    let b = add_logged(&m, &log, 0);
    let c = add_logged(&m, &log, 0);
    let d = add_logged_after(&m, &log, 0, c);
    assert!(m.set_priority(c, 5));
    assert_eq!(run_order(&m, &sub, &log, 4), [c, a, b, d]);
}

#[test]
fn task_of_another_manager_is_not_reprioritised() {
    let (m1, sub1, log1, [a, b, c, d]) = abcd();
    let (m2, sub2, log2, [w, x, y, z]) = abcd();
    // Same sequence numbers in both managers, different managers.
    assert_eq!(d.as_u64(), z.as_u64());
    assert!(!m1.set_priority(z, 5));
    assert!(!m2.set_priority(d, 5));
    assert!(!m2.set_priority(a, -5));
    assert_eq!(run_order(&m1, &sub1, &log1, 4), [a, b, c, d]);
    assert_eq!(run_order(&m2, &sub2, &log2, 4), [w, x, y, z]);
}

#[test]
fn raised_then_restored_task_keeps_its_place() {
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    let a = add_logged(&m, &log, 0);
    let b = add_logged(&m, &log, 0);
    assert!(m.set_priority(b, 5));
    assert!(m.set_priority(b, 0));
    // Back at 0, b is behind a again: a was added first.
    assert_eq!(run_order(&m, &sub, &log, 2), [a, b]);
}

#[test]
fn task_reprioritised_twice_runs_once() {
    let (m, sub, log, [a, b, c, d]) = abcd();
    assert!(m.set_priority(b, 5));
    assert!(m.set_priority(b, 0));
    // Also through a non-zero priority at both ends.
    assert!(m.set_priority(d, 3));
    assert!(m.set_priority(d, 7));
    assert!(m.set_priority(d, 3));
    // run_order checks that each body ran exactly once and nothing else
    // was delivered; then the order: d (3) first, then a, b, c by id.
    assert_eq!(run_order(&m, &sub, &log, 4), [d, a, b, c]);
}

#[test]
fn task_reprioritised_twice_while_processing_runs_once() {
    let m = manager(1);
    let sub = m.subscribe();
    let log = Log::default();
    let gate = Gate::new();
    let (blocker, rx) = add_blocker(&m, &gate);
    started(&rx);
    let a = add_logged(&m, &log, 0);
    let b = add_logged(&m, &log, 0);
    let c = add_logged(&m, &log, 0);
    assert!(m.set_priority(b, 5));
    assert!(m.set_priority(b, 0));
    gate.open();
    let order: Vec<TaskId> = take(&sub, 4).iter().map(id_of).collect();
    assert_eq!(order, [blocker.id(), a, b, c]);
    assert_quiet(&m, &sub);
    assert_eq!(*log.lock().unwrap(), [a, b, c]);
}

/// A task added after an upstream whose event was delivered is ready at
/// once and queues with the tasks without upstream (by priority, then in
/// the order added); a priority change moves it like any queued task.
#[test]
fn a_task_ready_when_added_after_a_delivered_upstream_queues_like_any_other() {
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    let up = add_logged(&m, &log, 0);
    assert_eq!(run_order(&m, &sub, &log, 1), [up]);
    m.pause_processing();
    log.lock().unwrap().clear();
    let a = add_logged(&m, &log, 0);
    let b = add_logged_after(&m, &log, 0, up); // ready at once
    let c = add_logged(&m, &log, 0);
    let d = add_logged_after(&m, &log, 0, up);
    assert_eq!(m.task_state(b), Some(TaskState::Queued));
    assert!(m.set_priority(d, 1));
    assert!(m.set_priority(a, -1));
    assert_eq!(run_order(&m, &sub, &log, 4), [d, b, c, a]);
}
