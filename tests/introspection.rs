//! Issue item 8: `TaskManager::stats()` (queued, blocked, running, workers,
//! per-group counts) and `TaskManager::task_state(id)` (Queued, Blocked,
//! Running, or `None` once the task ended).

mod common;

use std::convert::Infallible;

use bgtask::{Group, GroupStats, Stats, TaskCounts, TaskId, TaskManager, TaskState};
use common::*;

/// (queued, blocked, running) of `c`.
fn q_b_r(c: &TaskCounts) -> (usize, usize, usize) {
    (c.queued, c.blocked, c.running)
}

/// Every group of `s` with its (queued, blocked, running), in `s`'s order.
fn per_group(s: &Stats) -> Vec<(Group, (usize, usize, usize))> {
    s.groups
        .iter()
        .map(|g: &GroupStats| (g.group.clone(), q_b_r(&g.tasks)))
        .collect()
}

/// The states of `ids`, in order.
fn states(m: &TaskManager, ids: &[TaskId]) -> Vec<Option<TaskState>> {
    ids.iter().map(|&id| m.task_state(id)).collect()
}

use TaskState::{Blocked, Queued, Running};

#[test]
fn fresh_manager_has_nothing() {
    let m = TaskManager::new();
    let s = m.stats();
    assert_eq!(s, Stats::default());
    assert_eq!(q_b_r(&s.tasks), (0, 0, 0));
    assert_eq!(s.workers, 0);
    assert!(s.groups.is_empty());
}

#[test]
fn paused_scene_is_counted_exactly() {
    let m = paused(2);
    let views = Group::from("views");
    let numbered = m.next_group_id(); // Group 0
    assert_eq!(numbered, Group::from(0u64));

    let a = m.task().group(&views).spawn(noop).unwrap().id();
    let b = m.task().group(&views).after([a]).spawn(noop).unwrap().id();
    let c = m.task().group(&numbered).spawn(noop).unwrap().id();
    let d = m
        .task()
        .group(&numbered)
        .after([a, c])
        .spawn(noop)
        .unwrap()
        .id();
    let e = m.add_task(noop).unwrap().id();
    let f = m.task().after([e]).spawn(noop).unwrap().id();
    let h = m.task().group(&views).priority(3).spawn(noop).unwrap().id();
    let i = m
        .task()
        .group(&views)
        .priority(-2)
        .spawn(noop)
        .unwrap()
        .id();

    assert_eq!(
        states(&m, &[a, b, c, d, e, f, h, i]),
        [
            Some(Queued),
            Some(Blocked),
            Some(Queued),
            Some(Blocked),
            Some(Queued),
            Some(Blocked),
            Some(Queued),
            Some(Queued)
        ]
    );
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (5, 3, 0));
    assert_eq!(s.workers, 0, "paused: no worker started");
    // Ordered by group: numbered groups sort before named ones.
    assert!(numbered < views);
    assert_eq!(
        per_group(&s),
        [(numbered.clone(), (1, 1, 0)), (views.clone(), (3, 1, 0))]
    );

    // Stopping e releases f; stopping h removes it from its group's counts.
    assert_eq!(m.stop_task(e, false, false), 1);
    assert_eq!(m.stop_task(h, false, false), 1);
    assert_eq!(m.task_state(e), None);
    assert_eq!(m.task_state(h), None);
    assert_eq!(m.task_state(f), Some(Queued));
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (4, 2, 0));
    assert_eq!(
        per_group(&s),
        [(numbered.clone(), (1, 1, 0)), (views.clone(), (2, 1, 0))]
    );

    // Stopping the whole numbered group removes it from the list.
    assert_eq!(m.stop_task_group(&numbered, false, false), 2);
    assert_eq!(states(&m, &[c, d]), [None, None]);
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (3, 1, 0));
    assert_eq!(per_group(&s), [(views.clone(), (2, 1, 0))]);
}

#[test]
fn processing_scene_is_counted_exactly() {
    let m = manager(2);
    let sub = m.subscribe();
    let views = Group::from("views");
    let numbered = m.next_group_id();
    let gate = Gate::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let gated = |group: &Group| {
        let (gate, tx) = (gate.clone(), tx.clone());
        m.task()
            .group(group)
            .spawn(move |ctx| {
                let _ = tx.send(ctx.id());
                gate.wait();
                Ok::<_, Infallible>(())
            })
            .unwrap()
            .id()
    };
    let ra = gated(&views);
    let rb = gated(&numbered);
    started(&rx);
    started(&rx);
    // Both workers are busy: the rest waits.
    let q = m.task().group(&views).spawn(noop).unwrap().id();
    let bl = m
        .task()
        .group(&numbered)
        .after([ra])
        .spawn(noop)
        .unwrap()
        .id();
    let n = m.task().after([q]).spawn(noop).unwrap().id();

    assert_eq!(
        states(&m, &[ra, rb, q, bl, n]),
        [
            Some(Running),
            Some(Running),
            Some(Queued),
            Some(Blocked),
            Some(Blocked)
        ]
    );
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (1, 2, 2));
    assert_eq!(s.workers, 2);
    assert_eq!(
        per_group(&s),
        [(numbered.clone(), (0, 1, 1)), (views.clone(), (1, 0, 1))]
    );

    gate.open();
    // Five Completed and two GroupFinished.
    let events = take(&sub, 7);
    assert_eq!(events.iter().filter(|e| e.task_id().is_none()).count(), 2);
    assert_quiet(&m, &sub);
    assert_eq!(states(&m, &[ra, rb, q, bl, n]), [None; 5]);
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (0, 0, 0));
    assert!(s.groups.is_empty());
    assert_eq!(s.workers, 2, "idle workers stay");
    m.shut_down();
}

#[test]
fn running_task_stopped_is_no_longer_counted() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (h, rx) = add_blocker(&m, &gate);
    started(&rx);
    let queued = m.add_task(noop).unwrap().id();
    assert_eq!(m.task_state(h.id()), Some(Running));
    assert_eq!(q_b_r(&m.stats().tasks), (1, 0, 1));

    assert_eq!(m.stop_task(h.id(), false, false), 1);
    // Still running on its worker, but ended for the owner.
    assert_eq!(m.task_state(h.id()), None);
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (1, 0, 0));
    assert_eq!(s.workers, 1);
    assert_eq!(m.task_state(queued), Some(Queued));

    gate.open();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(queued)]);
    assert_quiet(&m, &sub);
    assert_eq!(m.task_state(queued), None);
    assert_eq!(q_b_r(&m.stats().tasks), (0, 0, 0));
}

#[test]
fn task_state_is_none_after_completion_and_failure() {
    let m = manager(1);
    let sub = m.subscribe();
    let done = m.add_task(noop).unwrap().id();
    let bad = m
        .add_task(|_| -> Result<(), &str> { Err("broken") })
        .unwrap()
        .id();
    let down = m.task().after([bad]).spawn(noop).unwrap().id();
    assert_eq!(
        take_ev(&sub, 3),
        [
            Ev::Done(done),
            Ev::Failed(bad, "broken".into()),
            Ev::Failed(down, "broken".into())
        ]
    );
    assert_eq!(states(&m, &[done, bad, down]), [None, None, None]);
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (0, 0, 0));
    assert!(s.groups.is_empty());
    assert_eq!(s.workers, 1);
}

#[test]
fn task_state_is_none_once_ended_even_with_events_undrained() {
    let m = manager(1);
    let sub = m.subscribe();
    let done = m.add_task(noop).unwrap();
    done.wait_timeout(TIMEOUT)
        .expect("in time")
        .expect("completed");
    assert!(m.wait_idle(TIMEOUT));
    // Its Completed still waits in `sub`.
    assert_eq!(m.task_state(done.id()), None);
    assert_eq!(q_b_r(&m.stats().tasks), (0, 0, 0));
    assert_eq!(take_ev(&sub, 1), [Ev::Done(done.id())]);
}

#[test]
fn task_state_is_none_after_stop() {
    let m = paused(1);
    let up = m.add_task(noop).unwrap().id();
    let down = m.task().after([up]).spawn(noop).unwrap().id();
    let other = m.add_task(noop).unwrap().id();
    assert_eq!(
        states(&m, &[up, down, other]),
        [Some(Queued), Some(Blocked), Some(Queued)]
    );
    assert_eq!(m.stop_task(down, false, false), 1);
    assert_eq!(
        states(&m, &[up, down, other]),
        [Some(Queued), None, Some(Queued)]
    );
    assert_eq!(m.stop_all_tasks(), 2);
    assert_eq!(states(&m, &[up, down, other]), [None, None, None]);
    assert_eq!(m.stats(), Stats::default());
}

#[test]
fn task_state_is_none_after_shut_down() {
    let m = paused(1);
    let up = m.task().group("g").spawn(noop).unwrap().id();
    let down = m.task().after([up]).spawn(noop).unwrap().id();
    m.shut_down();
    assert_eq!(states(&m, &[up, down]), [None, None]);
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (0, 0, 0));
    assert!(s.groups.is_empty());
}

#[test]
fn stats_after_shut_down_count_no_worker() {
    let m = TaskManager::builder()
        .max_threads(2)
        .thread_name("is-shut")
        .start_processing(true)
        .build()
        .unwrap();
    let gate = Gate::new();
    let (_h1, rx1) = add_blocker(&m, &gate);
    let (_h2, rx2) = add_blocker(&m, &gate);
    started(&rx1);
    started(&rx2);
    assert_eq!(m.stats().workers, 2);
    assert_threads("is-shut", 2);
    gate.open();
    // shut_down joins every worker thread: none exists afterwards.
    m.shut_down();
    // Joined, but the kernel may list an exited thread for a moment after
    // `join` returns: poll.
    assert_threads("is-shut", 0);
    let s = m.stats();
    assert_eq!(q_b_r(&s.tasks), (0, 0, 0));
    assert_eq!(s.workers, 0, "no worker thread exists after shut_down");
}

#[test]
fn task_state_of_foreign_ids_is_none() {
    let m1 = paused(1);
    let m2 = paused(1);
    let a1 = m1.add_task(noop).unwrap().id();
    let a2 = m2.add_task(noop).unwrap().id();
    let b2 = m2.task().after([a2]).spawn(noop).unwrap().id();
    // Same sequence number, other manager.
    assert_eq!(a1.as_u64(), a2.as_u64());
    assert_eq!(m1.task_state(a1), Some(Queued));
    assert_eq!(m2.task_state(a2), Some(Queued));
    assert_eq!(m2.task_state(b2), Some(Blocked));
    assert_eq!(m1.task_state(a2), None);
    assert_eq!(m1.task_state(b2), None);
    assert_eq!(m2.task_state(a1), None);
    // A manager that never had a task knows none.
    let m3 = paused(1);
    assert_eq!(states(&m3, &[a1, a2, b2]), [None, None, None]);
}
