//! Issue item 4: `set_group_limit(&group, n)`: never more than `n` tasks of
//! that group run at once, while other groups use the free workers (a
//! client library that is not thread safe gets exactly one thread).

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Instant;

use bgtask::{Error, Group, TaskContext, TaskId, TaskManager, TaskState};
use common::*;

/// A reusable barrier for `n` threads whose wait panics after `TIMEOUT`
/// (`std::sync::Barrier` would hang the test instead).
#[derive(Clone)]
struct TimedBarrier(Arc<BarrierState>);

/// Threads arrived in the current generation, and the generation.
struct BarrierState {
    lock: Mutex<(usize, u64)>,
    cv: Condvar,
    n: usize,
}

impl TimedBarrier {
    fn new(n: usize) -> Self {
        TimedBarrier(Arc::new(BarrierState {
            lock: Mutex::new((0, 0)),
            cv: Condvar::new(),
            n,
        }))
    }

    fn wait(&self) {
        let BarrierState { lock, cv, n } = &*self.0;
        let deadline = Instant::now() + TIMEOUT;
        let mut st = lock.lock().unwrap();
        let generation = st.1;
        st.0 += 1;
        if st.0 == *n {
            st.0 = 0;
            st.1 += 1;
            cv.notify_all();
            return;
        }
        while st.1 == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "barrier: only {} of {n} threads arrived",
                st.0
            );
            st = cv.wait_timeout(st, left).unwrap().0;
        }
    }
}

/// (queued, blocked, running) of `group`, or zeros if it has no live task.
fn group_counts(m: &TaskManager, group: &Group) -> (usize, usize, usize) {
    m.stats()
        .groups
        .iter()
        .find(|g| &g.group == group)
        .map_or((0, 0, 0), |g| {
            (g.tasks.queued, g.tasks.blocked, g.tasks.running)
        })
}

#[test]
fn limit_one_serialises_its_group_while_other_groups_use_the_free_workers() {
    let m = manager(4);
    let db = Group::from("database");
    let web = Group::from("web");
    m.set_group_limit(&db, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let hold = Gate::new();
    let open = Gate::opened();
    // The first db task holds its slot; the other seven are held back.
    let mut db_tasks = vec![gated(&m, &db, 0, &meter, &tx, &hold)];
    let first = starts(&rx, 1);
    assert_eq!(first, [db_tasks[0].id()]);
    for _ in 0..7 {
        db_tasks.push(gated(&m, &db, 0, &meter, &tx, &open));
    }
    assert_eq!(group_counts(&m, &db), (7, 0, 1));
    // Three web tasks meet at a barrier: they can only pass it if all
    // three run at once, on the three workers the db group leaves free.
    let barrier = TimedBarrier::new(3);
    let web_ran = Arc::new(AtomicUsize::new(0));
    let web_tasks: Vec<_> = (0..3)
        .map(|_| {
            let (barrier, web_ran) = (barrier.clone(), Arc::clone(&web_ran));
            m.task()
                .group(web.clone())
                .spawn(move |_: &TaskContext| {
                    barrier.wait();
                    web_ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(())
                })
                .unwrap()
        })
        .collect();
    for h in &web_tasks {
        done(h);
    }
    assert_eq!(web_ran.load(Ordering::SeqCst), 3);
    // Still only the first db task has run, and it is still running.
    assert!(rx.try_recv().is_err(), "a held db task started");
    assert_eq!(group_counts(&m, &db), (7, 0, 1));
    hold.open();
    for h in &db_tasks {
        assert_eq!(*done(h), 1, "a db task ran alongside another one");
    }
    assert_eq!(starts(&rx, 7).len(), 7);
    assert_eq!(meter.high(), 1);
    assert!(m.wait_idle(TIMEOUT));
}

#[test]
fn limit_two_runs_exactly_two_at_once() {
    let m = manager(4);
    let g = Group::from("pair");
    m.set_group_limit(&g, 2).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let tasks: Vec<_> = (0..8)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    let mut first_two = starts(&rx, 2);
    first_two.sort();
    assert_eq!(first_two, [tasks[0].id(), tasks[1].id()]);
    assert_eq!(meter.high(), 2);
    assert_eq!(counts(&m), (6, 0, 2));
    assert_eq!(group_counts(&m, &g), (6, 0, 2));
    for h in &tasks[2..] {
        assert_eq!(m.task_state(h.id()), Some(TaskState::Queued));
    }
    gate.open();
    for h in &tasks {
        assert!(*done(h) <= 2);
    }
    assert_eq!(starts(&rx, 6).len(), 6);
    assert_eq!(meter.high(), 2);
}

#[test]
fn held_tasks_run_by_priority_then_in_the_order_added() {
    let m = paused(4);
    let g = Group::from("ordered");
    m.set_group_limit(&g, 1).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let meter = Meter::default();
    let priorities = [0, 3, -1, 3, 7, 0, -1, 5];
    let ids: Vec<(i32, TaskId)> = priorities
        .iter()
        .map(|&p| {
            let (log, meter) = (Arc::clone(&log), meter.clone());
            let h = m
                .task()
                .group(g.clone())
                .priority(p)
                .spawn(move |ctx: &TaskContext| {
                    meter.enter();
                    log.lock().unwrap().push(ctx.id());
                    meter.leave();
                    Ok::<_, Infallible>(())
                })
                .unwrap();
            (p, h.id())
        })
        .collect();
    m.start_processing();
    assert!(m.wait_idle(TIMEOUT));
    let mut expected = ids.clone();
    expected.sort_by_key(|&(p, id)| (std::cmp::Reverse(p), id));
    let expected: Vec<TaskId> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(*log.lock().unwrap(), expected);
    assert_eq!(meter.high(), 1);
}

#[test]
fn tasks_held_behind_a_running_one_run_by_priority() {
    // The held tasks are added while a member runs and workers are free.
    let m = manager(4);
    let g = Group::from("held-order");
    m.set_group_limit(&g, 1).unwrap();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let meter = Meter::default();
    let first = gated(&m, &g, 0, &meter, &tx, &gate);
    starts(&rx, 1);
    let open = Gate::opened();
    let held: Vec<(i32, TaskId)> = [1, -4, 9, 0, 9, 2]
        .into_iter()
        .map(|p| (p, gated(&m, &g, p, &meter, &tx, &open).id()))
        .collect();
    assert_eq!(group_counts(&m, &g), (6, 0, 1));
    gate.open();
    done(&first);
    let mut expected = held.clone();
    expected.sort_by_key(|&(p, id)| (std::cmp::Reverse(p), id));
    let expected: Vec<TaskId> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(starts(&rx, 6), expected);
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(meter.high(), 1);
}

#[test]
fn raising_the_limit_releases_held_tasks() {
    let m = manager(4);
    let g = Group::from("raise");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let tasks: Vec<_> = (0..5)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 1), [tasks[0].id()]);
    assert_eq!(group_counts(&m, &g), (4, 0, 1));
    m.set_group_limit(&g, 3).unwrap();
    let mut next_two = starts(&rx, 2);
    next_two.sort();
    assert_eq!(next_two, [tasks[1].id(), tasks[2].id()]);
    assert_eq!(meter.high(), 3);
    assert_eq!(group_counts(&m, &g), (2, 0, 3));
    gate.open();
    for h in &tasks {
        assert!(*done(h) <= 3);
    }
    assert_eq!(starts(&rx, 2).len(), 2);
    assert_eq!(meter.high(), 3);
}

#[test]
fn lowering_the_limit_lets_running_tasks_finish_and_then_applies() {
    let m = manager(4);
    let g = Group::from("lower");
    m.set_group_limit(&g, 3).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gates: Vec<Gate> = (0..3).map(|_| Gate::new()).collect();
    let running: Vec<_> = gates
        .iter()
        .map(|gate| gated(&m, &g, 0, &meter, &tx, gate))
        .collect();
    assert_eq!(starts(&rx, 3).len(), 3);
    let open = Gate::opened();
    let later: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &open))
        .collect();
    assert_eq!(group_counts(&m, &g), (3, 0, 3));
    m.set_group_limit(&g, 1).unwrap();
    // Lowering stops nothing.
    assert_eq!(group_counts(&m, &g), (3, 0, 3));
    for (gate, h) in gates.iter().zip(&running) {
        gate.open();
        done(h);
    }
    for h in &later {
        assert_eq!(*done(h), 1, "a task ran beside another one under limit 1");
    }
    assert_eq!(starts(&rx, 3).len(), 3);
    assert_eq!(meter.high(), 3);
}

#[test]
fn clear_group_limit_releases_every_held_task() {
    let m = manager(4);
    let g = Group::from("clear");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let tasks: Vec<_> = (0..4)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 1), [tasks[0].id()]);
    assert_eq!(group_counts(&m, &g), (3, 0, 1));
    m.clear_group_limit(&g);
    // All four run at once: each is held by the gate.
    let mut rest = starts(&rx, 3);
    rest.sort();
    assert_eq!(rest, [tasks[1].id(), tasks[2].id(), tasks[3].id()]);
    assert_eq!(meter.high(), 4);
    assert_eq!(group_counts(&m, &g), (0, 0, 4));
    gate.open();
    for h in &tasks {
        done(h);
    }
    // Tasks added after the clear are not limited either.
    let gate = Gate::new();
    let more: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 3).len(), 3);
    assert_eq!(group_counts(&m, &g), (0, 0, 3));
    gate.open();
    for h in &more {
        done(h);
    }
}

#[test]
fn a_zero_limit_is_an_error_and_changes_nothing() {
    let m = manager(4);
    let unlimited = Group::from("unlimited");
    let limited = Group::from("limited");
    assert_eq!(m.set_group_limit(&unlimited, 0), Err(Error::ZeroLimit));
    m.set_group_limit(&limited, 2).unwrap();
    assert_eq!(m.set_group_limit(&limited, 0), Err(Error::ZeroLimit));
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    // The unlimited group stays unlimited: three run at once.
    let a: Vec<_> = (0..3)
        .map(|_| gated(&m, &unlimited, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 3).len(), 3);
    assert_eq!(group_counts(&m, &unlimited), (0, 0, 3));
    gate.open();
    for h in &a {
        done(h);
    }
    // The limited group keeps its limit of 2 (neither cleared nor changed).
    let gate = Gate::new();
    let meter = Meter::default();
    let b: Vec<_> = (0..4)
        .map(|_| gated(&m, &limited, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 2).len(), 2);
    assert_eq!(group_counts(&m, &limited), (2, 0, 2));
    gate.open();
    for h in &b {
        assert!(*done(h) <= 2);
    }
    assert_eq!(meter.high(), 2);
}

#[test]
fn a_limit_set_before_the_group_has_tasks_applies_to_tasks_added_later() {
    let m = manager(4);
    let g = m.next_group_id();
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let tasks: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 1), [tasks[0].id()]);
    assert_eq!(group_counts(&m, &g), (2, 0, 1));
    gate.open();
    for h in &tasks {
        assert_eq!(*done(h), 1);
    }
    assert_eq!(starts(&rx, 2), [tasks[1].id(), tasks[2].id()]);
    assert!(m.wait_idle(TIMEOUT));
    // The group had no live task for a while: the limit stays with it.
    let gate = Gate::new();
    let tasks: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 1), [tasks[0].id()]);
    assert_eq!(group_counts(&m, &g), (2, 0, 1));
    gate.open();
    for h in &tasks {
        assert_eq!(*done(h), 1);
    }
    assert_eq!(starts(&rx, 2), [tasks[1].id(), tasks[2].id()]);
    assert_eq!(meter.high(), 1);
}

#[test]
fn the_limit_survives_many_groups_coming_and_going() {
    // Groups without live tasks are pruned from the manager's table; a
    // limit set on one of them must survive that.
    let m = manager(4);
    let g = Group::from("kept");
    m.set_group_limit(&g, 1).unwrap();
    for n in 0..300u64 {
        m.task()
            .group(Group::from(n))
            .spawn(|_: &TaskContext| Ok::<_, Infallible>(()))
            .unwrap();
    }
    assert!(m.wait_idle(TIMEOUT));
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let tasks: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 1), [tasks[0].id()]);
    assert_eq!(group_counts(&m, &g), (2, 0, 1));
    gate.open();
    for h in &tasks {
        assert_eq!(*done(h), 1);
    }
}

#[test]
fn stopping_a_held_task_means_it_never_runs() {
    let m = manager(4);
    let sub = m.subscribe();
    let g = Group::from("stop-held");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let first = gated(&m, &g, 0, &meter, &tx, &gate);
    starts(&rx, 1);
    let ran = Arc::new(AtomicBool::new(false));
    let stopped = {
        let ran = Arc::clone(&ran);
        m.task()
            .group(g.clone())
            .priority(5)
            .spawn(move |_: &TaskContext| {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    let open = Gate::opened();
    let last = gated(&m, &g, 0, &meter, &tx, &open);
    assert_eq!(m.task_state(stopped.id()), Some(TaskState::Queued));
    assert_eq!(m.stop_task(stopped.id(), false, false), 1);
    assert_eq!(m.task_state(stopped.id()), None);
    assert_eq!(group_counts(&m, &g), (1, 0, 1));
    gate.open();
    assert_eq!(*done(&last), 1);
    assert!(m.wait_idle(TIMEOUT));
    assert!(!ran.load(Ordering::SeqCst), "a stopped held task ran");
    assert!(matches!(
        stopped.wait_timeout(TIMEOUT),
        Some(Err(bgtask::TaskError::Stopped))
    ));
    assert_eq!(
        take_ev(&sub, 3),
        [
            Ev::Done(first.id()),
            Ev::Done(last.id()),
            Ev::GroupDone(g.clone())
        ]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_every_held_task_leaks_no_slot() {
    let m = manager(4);
    let g = Group::from("stop-all-held");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let first = gated(&m, &g, 0, &meter, &tx, &gate);
    starts(&rx, 1);
    let held: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    for h in &held {
        assert_eq!(m.stop_task(h.id(), false, false), 1);
    }
    assert_eq!(group_counts(&m, &g), (0, 0, 1));
    gate.open();
    done(&first);
    assert!(m.wait_idle(TIMEOUT));
    // The slot is free: a new member runs.
    let open = Gate::opened();
    let later = gated(&m, &g, 0, &meter, &tx, &open);
    assert_eq!(*done(&later), 1);
    assert_eq!(starts(&rx, 1), [later.id()]);
    assert!(rx.try_recv().is_err(), "a stopped held task ran");
}

#[test]
fn stopping_a_running_task_frees_its_slot_when_its_body_returns() {
    let m = manager(4);
    let sub = m.subscribe();
    let g = Group::from("stop-running");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let running = gated(&m, &g, 0, &meter, &tx, &gate);
    assert_eq!(starts(&rx, 1), [running.id()]);
    let open = Gate::opened();
    let held = gated(&m, &g, 0, &meter, &tx, &open);
    assert_eq!(m.stop_task(running.id(), false, false), 1);
    // Its body still runs: the held task must wait for it.
    assert_eq!(m.task_state(held.id()), Some(TaskState::Queued));
    assert_eq!(
        group_counts(&m, &g),
        (1, 0, 0),
        "a task stopped while running is not counted"
    );
    assert!(rx.try_recv().is_err(), "the held task started");
    gate.open();
    assert_eq!(starts(&rx, 1), [held.id()]);
    assert_eq!(*done(&held), 1, "the held task ran beside the stopped one");
    assert_eq!(meter.high(), 1);
    assert_eq!(
        take_ev(&sub, 2),
        [Ev::Done(held.id()), Ev::GroupDone(g.clone())]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn stats_show_held_tasks_as_queued() {
    let m = manager(4);
    let g = Group::from("stats");
    let other = Group::from("other");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let tasks: Vec<_> = (0..4)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    starts(&rx, 1);
    let free = gated(&m, &other, 0, &Meter::default(), &tx, &gate);
    assert_eq!(starts(&rx, 1), [free.id()]);
    let blocked = m
        .task()
        .group(g.clone())
        .after([&tasks[0]])
        .spawn(|_: &TaskContext| Ok::<_, Infallible>(()))
        .unwrap();
    let stats = m.stats();
    assert_eq!(
        (stats.tasks.queued, stats.tasks.blocked, stats.tasks.running),
        (3, 1, 2)
    );
    assert_eq!(group_counts(&m, &g), (3, 1, 1));
    assert_eq!(group_counts(&m, &other), (0, 0, 1));
    assert_eq!(m.task_state(tasks[0].id()), Some(TaskState::Running));
    for h in &tasks[1..] {
        assert_eq!(m.task_state(h.id()), Some(TaskState::Queued));
    }
    assert_eq!(m.task_state(blocked.id()), Some(TaskState::Blocked));
    gate.open();
    done(&blocked);
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(counts(&m), (0, 0, 0));
    assert_eq!(meter.high(), 1);
}
