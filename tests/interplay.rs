//! "Every feature works with the rest": stopping a task with a group limit
//! frees its slot; a reprioritised task still waits for its upstream;
//! progress of a stopped task is dropped with its other events; and more
//! combinations of group limits, dependencies, priorities, progress,
//! handles and shut-down.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use bgtask::{Event, Group, Kwargs, TaskContext, TaskError, TaskHandle, TaskId, TaskState};
use common::*;

/// The id of a `Completed`; panics for anything else.
fn completed(e: &Event) -> TaskId {
    match e {
        Event::Completed { id, .. } => *id,
        other => panic!("expected Completed, got {other:?}"),
    }
}

#[test]
fn a_reprioritised_task_still_waits_for_its_upstream() {
    let m = manager(2);
    let sub = m.subscribe();
    let log = Log::default();
    // The upstream holds one worker; the other is free.
    let up_gate = Gate::new();
    let up_done = Arc::new(AtomicBool::new(false));
    let (up_tx, up_started) = mpsc::channel();
    let up = {
        let (gate, up_done) = (up_gate.clone(), Arc::clone(&up_done));
        m.add_task(move |ctx: &TaskContext| {
            up_tx.send(ctx.id()).unwrap();
            gate.wait();
            up_done.store(true, Ordering::SeqCst);
            Ok::<_, Infallible>(())
        })
        .unwrap()
    };
    started(&up_started);
    let down = {
        let (log, up_done) = (Arc::clone(&log), Arc::clone(&up_done));
        m.task()
            .after([&up])
            .spawn(move |ctx: &TaskContext| {
                assert!(up_done.load(Ordering::SeqCst), "ran before its upstream");
                log.lock().unwrap().push(ctx.id());
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    assert_eq!(m.task_state(down.id()), Some(TaskState::Blocked));
    assert!(m.set_priority(down.id(), 10));
    // The free worker did not take it: it is still blocked.
    assert_eq!(m.task_state(down.id()), Some(TaskState::Blocked));
    // A probe shows the free worker runs ready work meanwhile.
    let probe = m.add_task(logger(&log)).unwrap();
    assert_eq!(completed(&next(&sub)), probe.id());
    assert_eq!(m.task_state(down.id()), Some(TaskState::Blocked));
    // Occupy the free worker and queue lower-priority ready tasks.
    let busy_gate = Gate::new();
    let (busy, busy_started) = add_blocker(&m, &busy_gate);
    started(&busy_started);
    let low5 = m.task().priority(5).spawn(logger(&log)).unwrap();
    let low1 = m.task().priority(1).spawn(logger(&log)).unwrap();
    assert_eq!(m.task_state(low5.id()), Some(TaskState::Queued));
    assert_eq!(m.task_state(down.id()), Some(TaskState::Blocked));
    // The upstream ends: the reprioritised task runs first, on that worker.
    up_gate.open();
    let order: Vec<TaskId> = take(&sub, 4).iter().map(completed).collect();
    assert_eq!(order, [up.id(), down.id(), low5.id(), low1.id()]);
    assert_eq!(
        *log.lock().unwrap(),
        [probe.id(), down.id(), low5.id(), low1.id()]
    );
    busy_gate.open();
    assert_eq!(completed(&next(&sub)), busy.id());
    assert_quiet(&m, &sub);
}

#[test]
fn a_reprioritised_task_waits_for_every_upstream_then_beats_lower_priorities() {
    // Paused, one worker: the whole order is decided by the scheduler.
    let m = paused(1);
    let sub = m.subscribe();
    let log = Log::default();
    let a = m.task().priority(5).spawn(logger(&log)).unwrap();
    let b = m.task().priority(4).spawn(logger(&log)).unwrap();
    let down = m
        .task()
        .priority(-3)
        .after([&a, &b])
        .spawn(logger(&log))
        .unwrap();
    let low1 = m.task().priority(1).spawn(logger(&log)).unwrap();
    let low0 = m.add_task(logger(&log)).unwrap();
    assert!(m.set_priority(down.id(), 10));
    assert_eq!(m.task_state(down.id()), Some(TaskState::Blocked));
    m.start_processing();
    // Priority 10 does not let it jump its upstream tasks; once both ended
    // it runs ahead of the lower-priority tasks that were ready all along.
    let order: Vec<TaskId> = take(&sub, 5).iter().map(completed).collect();
    assert_eq!(order, [a.id(), b.id(), down.id(), low1.id(), low0.id()]);
    assert_eq!(*log.lock().unwrap(), order);
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_a_running_limited_task_frees_its_slot() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("slot");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let running = gated(&m, &g, 0, &meter, &tx, &gate);
    assert_eq!(starts(&rx, 1), [running.id()]);
    let open = Gate::opened();
    let held = gated(&m, &g, 0, &meter, &tx, &open);
    assert_eq!(m.stop_task(running.id(), false, false), 1);
    assert_eq!(m.task_state(held.id()), Some(TaskState::Queued));
    gate.open();
    assert_eq!(starts(&rx, 1), [held.id()]);
    assert_eq!(*done(&held), 1, "ran beside the stopped task's body");
    assert!(matches!(
        running.wait_timeout(TIMEOUT),
        Some(Err(TaskError::Stopped))
    ));
    assert_eq!(meter.high(), 1);
    assert_eq!(
        take_ev(&sub, 2),
        [Ev::Done(held.id()), Ev::GroupDone(g.clone())]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_a_limited_group_frees_its_slots_for_later_members() {
    let m = manager(4);
    let sub = m.subscribe();
    let g = Group::from("stop-group");
    m.set_group_limit(&g, 2).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let old: Vec<_> = (0..5)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    assert_eq!(starts(&rx, 2).len(), 2);
    assert_eq!(m.stop_task_group(&g, false, false), 5);
    // Bodies of the two stopped running tasks still hold the slots.
    let open = Gate::opened();
    let new: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &open))
        .collect();
    for h in &new {
        assert_eq!(m.task_state(h.id()), Some(TaskState::Queued));
    }
    gate.open();
    for h in &new {
        assert!(*done(h) <= 2);
    }
    assert_eq!(starts(&rx, 3).len(), 3);
    for h in &old {
        assert!(matches!(
            h.wait_timeout(TIMEOUT),
            Some(Err(TaskError::Stopped))
        ));
    }
    assert_eq!(meter.high(), 2);
    let mut ids: Vec<TaskId> = take(&sub, 3).iter().map(completed).collect();
    ids.sort();
    assert_eq!(ids, new.iter().map(TaskHandle::id).collect::<Vec<_>>());
    assert_eq!(take_ev(&sub, 1), [Ev::GroupDone(g.clone())]);
    assert_quiet(&m, &sub);
}

#[test]
fn progress_of_a_stopped_task_is_dropped_with_its_other_events() {
    let m = manager(1);
    let sub = m.subscribe();
    let g = Group::from("progress-stop");
    let h = m
        .task()
        .group(g.clone())
        .spawn(|ctx: &TaskContext| {
            ctx.report_progress(0.5, "half");
            ctx.report_progress(1.0, "all");
            Ok::<_, Infallible>(())
        })
        .unwrap();
    assert!(m.wait_idle(TIMEOUT));
    // Progress, Completed and GroupFinished wait in the subscription; the
    // stop drops all three.
    assert_eq!(m.stop_task(h.id(), false, false), 1);
    assert_quiet(&m, &sub);
    assert!(matches!(
        h.wait_timeout(TIMEOUT),
        Some(Err(TaskError::Stopped))
    ));
}

#[test]
fn progress_of_a_task_stopped_with_its_downstream_is_dropped() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (tx, reported) = mpsc::channel();
    let up = {
        let gate = gate.clone();
        m.add_task(move |ctx: &TaskContext| {
            ctx.report_progress(0.3, "working");
            tx.send(()).unwrap();
            gate.wait();
            ctx.report_progress(0.6, "still working");
            Ok::<_, Infallible>(())
        })
        .unwrap()
    };
    let ran = Arc::new(AtomicBool::new(false));
    let down = {
        let ran = Arc::clone(&ran);
        m.task()
            .after([&up])
            .spawn(move |_: &TaskContext| {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    reported.recv_timeout(TIMEOUT).expect("no report");
    assert_eq!(m.stop_task(up.id(), false, true), 2);
    gate.open();
    assert_quiet(&m, &sub);
    assert!(!ran.load(Ordering::SeqCst), "the stopped downstream ran");
    assert!(matches!(
        down.wait_timeout(TIMEOUT),
        Some(Err(TaskError::Stopped))
    ));
}

#[test]
fn progress_of_a_task_stopped_by_its_group_is_dropped() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("progress-group-stop");
    m.set_group_limit(&g, 1).unwrap();
    let gate = Gate::new();
    let (tx, reported) = mpsc::channel();
    let h = {
        let gate = gate.clone();
        m.task()
            .group(g.clone())
            .spawn(move |ctx: &TaskContext| {
                ctx.report_progress(0.3, "working");
                tx.send(()).unwrap();
                gate.wait();
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    let held = m
        .task()
        .group(g.clone())
        .spawn(|ctx: &TaskContext| {
            ctx.report_progress(0.1, "never");
            Ok::<_, Infallible>(())
        })
        .unwrap();
    reported.recv_timeout(TIMEOUT).expect("no report");
    assert_eq!(m.stop_task_group(&g, false, false), 2);
    gate.open();
    assert_quiet(&m, &sub);
    for id in [h.id(), held.id()] {
        assert_eq!(m.task_state(id), None);
    }
}

#[test]
fn a_downstream_task_in_a_limited_group_waits_for_its_upstream_and_its_slot() {
    let m = manager(3);
    let sub = m.subscribe();
    let g = Group::from("dl");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    // A member of g holds the group's slot.
    let slot_gate = Gate::new();
    let member = gated(&m, &g, 0, &meter, &tx, &slot_gate);
    assert_eq!(starts(&rx, 1), [member.id()]);
    // An ungrouped upstream, held by its own gate.
    let up_gate = Gate::new();
    let up = {
        let gate = up_gate.clone();
        let tx = tx.clone();
        m.add_task(move |ctx: &TaskContext| {
            tx.send(ctx.id()).unwrap();
            gate.wait();
            Ok::<_, Infallible>(Kwargs::new().with("rows", 12u32))
        })
        .unwrap()
    };
    assert_eq!(starts(&rx, 1), [up.id()]);
    let down = {
        let (meter, tx) = (meter.clone(), tx.clone());
        m.task()
            .group(g.clone())
            .after([&up])
            .spawn(move |ctx: &TaskContext| {
                let n = meter.enter();
                tx.send(ctx.id()).unwrap();
                meter.leave();
                Ok::<_, Infallible>((n, *ctx.kwargs().get::<u32>("rows").unwrap()))
            })
            .unwrap()
    };
    assert_eq!(m.task_state(down.id()), Some(TaskState::Blocked));
    // The upstream ends: the downstream is ready but its group is full.
    up_gate.open();
    assert_eq!(completed(&next(&sub)), up.id());
    assert_eq!(m.task_state(down.id()), Some(TaskState::Queued));
    assert!(rx.try_recv().is_err(), "the downstream started");
    slot_gate.open();
    assert_eq!(*done(&down), (1, 12));
    assert_eq!(starts(&rx, 1), [down.id()]);
    assert_eq!(meter.high(), 1);
    assert_eq!(
        take_ev(&sub, 3),
        [
            Ev::Done(member.id()),
            Ev::Done(down.id()),
            Ev::GroupDone(g.clone())
        ]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn a_chain_inside_a_limited_group_runs_to_its_end() {
    // Each link is released by the end of the previous one, whose slot is
    // freed only after that: the link must not stay held forever.
    let m = paused(2);
    let sub = m.subscribe();
    let g = Group::from("chain");
    m.set_group_limit(&g, 1).unwrap();
    let log = Log::default();
    let mut ids = vec![m.task().group(g.clone()).spawn(logger(&log)).unwrap().id()];
    for _ in 0..5 {
        let prev = *ids.last().unwrap();
        ids.push(
            m.task()
                .group(g.clone())
                .after([prev])
                .spawn(logger(&log))
                .unwrap()
                .id(),
        );
    }
    // Started only once the chain is complete: the group must not finish
    // early.
    m.start_processing();
    let order: Vec<TaskId> = take(&sub, 6).iter().map(completed).collect();
    assert_eq!(order, ids);
    assert_eq!(take_ev(&sub, 1), [Ev::GroupDone(g.clone())]);
    assert_eq!(*log.lock().unwrap(), ids);
    assert_quiet(&m, &sub);
}

#[test]
fn an_upstream_held_by_its_group_limit_still_releases_its_downstream() {
    let m = manager(3);
    let sub = m.subscribe();
    let g = Group::from("held-upstream");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let member = gated(&m, &g, 0, &meter, &tx, &gate);
    starts(&rx, 1);
    let open = Gate::opened();
    let held_up = gated(&m, &g, 0, &meter, &tx, &open);
    let log = Log::default();
    let down = m.task().after([&held_up]).spawn(logger(&log)).unwrap();
    assert_eq!(m.task_state(held_up.id()), Some(TaskState::Queued));
    assert_eq!(m.task_state(down.id()), Some(TaskState::Blocked));
    gate.open();
    let order: Vec<TaskId> = take(&sub, 3)
        .iter()
        .filter_map(|e| match e {
            Event::Completed { id, .. } => Some(*id),
            Event::GroupFinished { .. } => None,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(order, [member.id(), held_up.id()]);
    assert_eq!(completed(&next(&sub)), down.id());
    assert_eq!(*log.lock().unwrap(), [down.id()]);
    assert_eq!(meter.high(), 1);
    assert_quiet(&m, &sub);
}

#[test]
fn the_handle_of_a_held_task_returns_once_it_runs() {
    let m = manager(2);
    let g = Group::from("handle");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let running = gated(&m, &g, 0, &meter, &tx, &gate);
    starts(&rx, 1);
    let ran = Arc::new(AtomicBool::new(false));
    let held = {
        let ran = Arc::clone(&ran);
        m.task()
            .group(g.clone())
            .spawn(move |_: &TaskContext| {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, Infallible>(String::from("rows"))
            })
            .unwrap()
    };
    assert_eq!(m.task_state(held.id()), Some(TaskState::Queued));
    assert!(!held.is_finished());
    // One thread blocks in wait(), another awaits the handle as a future.
    let (res_tx, res_rx) = mpsc::channel();
    let waiter = {
        let (held, res_tx) = (held.clone(), res_tx.clone());
        std::thread::spawn(move || res_tx.send(held.wait().map(|s| s.to_string())).unwrap())
    };
    let awaiter = {
        let held = held.clone();
        std::thread::spawn(move || {
            res_tx
                .send(futures::executor::block_on(held).map(|s| s.to_string()))
                .unwrap()
        })
    };
    assert!(
        res_rx.try_recv().is_err(),
        "a wait returned before the task ran"
    );
    assert!(!ran.load(Ordering::SeqCst));
    gate.open();
    for _ in 0..2 {
        let got = res_rx
            .recv_timeout(TIMEOUT)
            .expect("the wait did not return");
        assert_eq!(got, Ok(String::from("rows")));
    }
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(*done(&held), "rows");
    waiter.join().unwrap();
    awaiter.join().unwrap();
    done(&running);
}

#[test]
fn set_priority_on_a_held_task_keeps_it_held_and_reorders_the_held_tasks() {
    let m = manager(4);
    let g = Group::from("reprioritise-held");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let first = gated(&m, &g, 0, &meter, &tx, &gate);
    starts(&rx, 1);
    let open = Gate::opened();
    let held: Vec<_> = (0..4)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &open))
        .collect();
    assert!(m.set_priority(held[2].id(), 10));
    assert!(m.set_priority(held[3].id(), 5));
    // Up and back down again: it keeps its place among equal priorities.
    assert!(m.set_priority(held[0].id(), 7));
    assert!(m.set_priority(held[0].id(), 0));
    for h in &held {
        assert_eq!(m.task_state(h.id()), Some(TaskState::Queued));
    }
    assert!(rx.try_recv().is_err(), "a held task started");
    assert_eq!(
        m.stats()
            .groups
            .iter()
            .find(|s| s.group == g)
            .map(|s| (s.tasks.queued, s.tasks.running)),
        Some((4, 1))
    );
    gate.open();
    done(&first);
    let order = starts(&rx, 4);
    assert_eq!(
        order,
        [held[2].id(), held[3].id(), held[0].id(), held[1].id()]
    );
    for h in &held {
        assert_eq!(*done(h), 1);
    }
    assert!(m.wait_idle(TIMEOUT));
    assert!(rx.try_recv().is_err(), "a task ran twice");
    assert_eq!(meter.high(), 1);
}

#[test]
fn shutting_down_with_held_tasks_runs_none_of_them() {
    let m = manager(3);
    let g = Group::from("shutdown-held");
    m.set_group_limit(&g, 1).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gate = Gate::new();
    let running = gated(&m, &g, 0, &meter, &tx, &gate);
    starts(&rx, 1);
    let held: Vec<_> = (0..3)
        .map(|_| gated(&m, &g, 0, &meter, &tx, &gate))
        .collect();
    let closer = {
        let m = m.clone();
        std::thread::spawn(move || m.shut_down())
    };
    // shut_down waits for the running body: let it return.
    eventually("shut-down began", || m.add_task(noop).is_err());
    gate.open();
    closer.join().unwrap();
    assert!(rx.try_recv().is_err(), "a held task ran during shut-down");
    for h in held.iter().chain([&running]) {
        assert!(matches!(
            h.wait_timeout(TIMEOUT),
            Some(Err(TaskError::Stopped))
        ));
    }
    assert_eq!(meter.high(), 1);
}

#[test]
fn progress_from_a_limited_group_and_a_reprioritised_task() {
    // The features together: a held task reprioritised ahead of another
    // reports progress once it runs; the owner sees Progress then Completed
    // for each, in the order they ran.
    let m = manager(3);
    let sub = m.subscribe();
    let g = Group::from("together");
    m.set_group_limit(&g, 1).unwrap();
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let first = gated(&m, &g, 0, &Meter::default(), &tx, &gate);
    starts(&rx, 1);
    let reporting = |label: &'static str| {
        m.task()
            .group(g.clone())
            .spawn(move |ctx: &TaskContext| {
                for i in 1..=10 {
                    ctx.report_progress(i as f32 / 10.0, format!("{label} {i}"));
                }
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    let a = reporting("a");
    let b = reporting("b");
    assert!(m.set_priority(b.id(), 1));
    gate.open();
    // Drain only once everything ran, so each task's reports coalesce.
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(completed(&next(&sub)), first.id());
    let rest: Vec<Event> = sub.try_iter().collect();
    assert_eq!(rest.len(), 5, "{rest:?}");
    let summary: Vec<(TaskId, String)> = rest
        .iter()
        .map(|e| match e {
            Event::Progress {
                id,
                fraction,
                message,
                group,
            } => {
                assert_eq!(group.as_ref(), Some(&g));
                assert_eq!(*fraction, 1.0);
                (*id, message.clone())
            }
            Event::Completed { id, .. } => (*id, String::from("completed")),
            Event::GroupFinished { group } => {
                assert_eq!(group, &g);
                (first.id(), String::from("group finished"))
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (b.id(), String::from("b 10")),
            (b.id(), String::from("completed")),
            (a.id(), String::from("a 10")),
            (a.id(), String::from("completed")),
            (first.id(), String::from("group finished")),
        ]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn a_held_task_given_its_own_priority_again_does_not_waste_a_freed_slot() {
    // set_priority on a held task, even to the priority it has, must not
    // leave a second entry that takes a freed slot in place of another
    // held task: with limit 2, once two slots are free two held tasks run.
    let m = manager(4);
    let g = Group::from("same-priority");
    m.set_group_limit(&g, 2).unwrap();
    let meter = Meter::default();
    let (tx, rx) = mpsc::channel();
    let gates = [Gate::new(), Gate::new()];
    let running: Vec<_> = gates
        .iter()
        .map(|gate| gated(&m, &g, 0, &meter, &tx, gate))
        .collect();
    assert_eq!(starts(&rx, 2).len(), 2);
    let hold = Gate::new();
    let open = Gate::opened();
    let h = gated(&m, &g, 0, &meter, &tx, &hold);
    let other = gated(&m, &g, 0, &meter, &tx, &open);
    assert!(m.set_priority(h.id(), 0));
    assert_eq!(m.task_state(h.id()), Some(TaskState::Queued));
    // First slot freed: h (added first) runs, and stays running.
    gates[0].open();
    done(&running[0]);
    assert_eq!(starts(&rx, 1), [h.id()]);
    // Second slot freed while h runs: `other` must take it.
    gates[1].open();
    done(&running[1]);
    assert_eq!(
        rx.recv_timeout(TIMEOUT).ok(),
        Some(other.id()),
        "a held task did not start though its group had a free slot"
    );
    assert_eq!(*done(&other), 2);
    hold.open();
    assert_eq!(*done(&h), 2);
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(meter.high(), 2);
}
