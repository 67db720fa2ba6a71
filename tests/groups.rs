//! SPEC 5: groups. `GroupFinished` comes once the last live member ends by
//! completing or failing, right after that member's event; never for stops,
//! never for ungrouped tasks.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bgtask::{Event, Group, TaskContext, TaskId, TaskManager};
use common::*;

/// Adds a task in group `g` that returns `Ok(())`.
fn member(m: &TaskManager, g: &Group) -> TaskId {
    m.task().group(g).spawn(noop).unwrap().id()
}

/// Adds a task in group `g` that counts its runs.
fn counted_member(m: &TaskManager, g: &Group, ran: &Arc<AtomicUsize>) -> TaskId {
    m.task().group(g).spawn(counting(ran)).unwrap().id()
}

/// Adds a task in group `g` that holds its worker until `gate` opens, and
/// waits until it has started.
fn running_member(m: &TaskManager, g: &Group, gate: &Gate) -> TaskId {
    let (h, rx) = spawn_blocker(m.task().group(g), gate, ());
    started(&rx);
    h.id()
}

/// Adds a task in group `g` that fails with `msg`.
fn failing_member(m: &TaskManager, g: &Group, msg: &'static str) -> TaskId {
    m.task()
        .group(g)
        .spawn(move |_: &TaskContext| -> Result<(), &str> { Err(msg) })
        .unwrap()
        .id()
}

/// The task id of an [`Ev`]; panics for `GroupDone`.
fn id_of_ev(e: &Ev) -> TaskId {
    match e {
        Ev::Done(id) | Ev::Failed(id, _) => *id,
        Ev::GroupDone(g) => panic!("expected a task event, got GroupDone({g:?})"),
    }
}

#[test]
fn group_finishes_once_right_after_its_last_member() {
    let m = paused(1);
    let sub = m.subscribe();
    let g1 = Group::from("g1");
    let g2 = m.next_group_id();
    let a1 = member(&m, &g1);
    let u1 = m.add_task(noop).unwrap().id();
    let b1 = member(&m, &g2);
    let a2 = member(&m, &g1);
    let b2 = member(&m, &g2);
    let u2 = m.add_task(noop).unwrap().id();
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 8),
        [
            Ev::Done(a1),
            Ev::Done(u1),
            Ev::Done(b1),
            Ev::Done(a2),
            Ev::GroupDone(g1),
            Ev::Done(b2),
            Ev::GroupDone(g2),
            Ev::Done(u2),
        ]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn group_finishes_right_after_last_member_on_many_workers() {
    const GROUPS: u64 = 6;
    const TASKS: usize = 300;
    let m = paused(4);
    let sub = m.subscribe();
    let mut members: HashMap<Group, HashSet<TaskId>> = HashMap::new();
    for i in 0..TASKS {
        let g = Group::from(i as u64 % GROUPS);
        let id = m
            .task()
            .group(&g)
            .spawn(move |_: &TaskContext| {
                // Uneven work so that members of a group finish out of order.
                let spins = (i * 7919) % 5000;
                Ok::<_, Infallible>(std::hint::black_box((0..spins).sum::<usize>()))
            })
            .unwrap()
            .id();
        members.entry(g).or_default().insert(id);
    }
    m.start_processing();
    let events = take(&sub, TASKS + GROUPS as usize);
    assert_quiet(&m, &sub);

    let mut left = members.clone();
    let mut finished: HashSet<Group> = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Completed { id, group, .. } => {
                let g = group.clone().expect("every task has a group");
                assert!(left.get_mut(&g).unwrap().remove(id), "{id:?} twice");
                if left[&g].is_empty() {
                    assert_eq!(
                        events.get(i + 1).map(ev),
                        Some(Ev::GroupDone(g.clone())),
                        "GroupFinished must follow the last member's event"
                    );
                }
            }
            Event::GroupFinished { group } => {
                assert!(left[group].is_empty(), "{group:?} finished early");
                assert!(finished.insert(group.clone()), "{group:?} finished twice");
                let prev = id_of(&events[i - 1]);
                assert!(members[group].contains(&prev), "not after a member");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(finished.len(), GROUPS as usize);
}

#[test]
fn member_added_while_group_runs_delays_the_finish() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("late");
    let gate = Gate::new();
    let slow = running_member(&m, &g, &gate);
    let quick = member(&m, &g);
    assert_eq!(take_ev(&sub, 1), [Ev::Done(quick)]);
    gate.open();
    assert_eq!(take_ev(&sub, 2), [Ev::Done(slow), Ev::GroupDone(g)]);
    assert_quiet(&m, &sub);
}

#[test]
fn group_finishes_after_failures() {
    let m = paused(1);
    let sub = m.subscribe();
    let mixed = Group::from("mixed");
    let all_bad = m.next_group_id();
    let x = member(&m, &mixed);
    let y = failing_member(&m, &mixed, "y failed");
    let z = m.task().group(&mixed).after([y]).spawn(noop).unwrap().id();
    let p = m
        .task()
        .group(&all_bad)
        .spawn(|_: &TaskContext| -> Result<(), Infallible> { panic!("p panicked") })
        .unwrap()
        .id();
    let q = failing_member(&m, &all_bad, "q failed");
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 7),
        [
            Ev::Done(x),
            Ev::Failed(y, "y failed".into()),
            Ev::Failed(z, "y failed".into()),
            Ev::GroupDone(mixed),
            Ev::Failed(p, "p panicked".into()),
            Ev::Failed(q, "q failed".into()),
            Ev::GroupDone(all_bad),
        ]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn group_finishes_again_after_tasks_are_added_again() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("again");
    let a = member(&m, &g);
    assert_eq!(take_ev(&sub, 2), [Ev::Done(a), Ev::GroupDone(g.clone())]);
    assert_quiet(&m, &sub);

    let b = failing_member(&m, &g, "second round failed");
    assert_eq!(
        take_ev(&sub, 2),
        [
            Ev::Failed(b, "second round failed".into()),
            Ev::GroupDone(g.clone())
        ]
    );
    assert_quiet(&m, &sub);

    m.pause_processing();
    let c = member(&m, &g);
    let d = m.task().group(&g).after([c]).spawn(noop).unwrap().id();
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 3),
        [Ev::Done(c), Ev::Done(d), Ev::GroupDone(g.clone())]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_every_member_emits_nothing() {
    let m = paused(1);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let g = Group::from("stopped");
    for _ in 0..3 {
        counted_member(&m, &g, &ran);
    }
    assert_eq!(m.stop_task_group(&g, false, false), 3);
    m.start_processing();
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn stopping_running_members_emits_nothing() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("running");
    let gate = Gate::new();
    let rxs: Vec<_> = (0..2)
        .map(|_| spawn_blocker(m.task().group(&g), &gate, ()).1)
        .collect();
    for rx in &rxs {
        started(rx);
    }
    assert_eq!(m.stop_task_group(&g, false, false), 2);
    gate.open();
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_the_last_running_member_emits_no_group_finished() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("last-running");
    let gate = Gate::new();
    let slow = running_member(&m, &g, &gate);
    let quick = member(&m, &g);
    assert_eq!(take_ev(&sub, 1), [Ev::Done(quick)]);
    assert_eq!(m.stop_task(slow, false, false), 1);
    gate.open();
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_the_last_blocked_member_emits_no_group_finished() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("last-blocked");
    let gate = Gate::new();
    let (hold, hold_rx) = add_blocker(&m, &gate); // ungrouped
    started(&hold_rx);
    let done = member(&m, &g);
    let blocked = m.task().group(&g).after([&hold]).spawn(noop).unwrap().id();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(done)]);
    assert_eq!(m.stop_task(blocked, false, false), 1);
    gate.open();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(hold.id())]);
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_the_last_member_while_an_earlier_event_is_undrained_emits_no_group_finished() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("undrained");
    let gate = Gate::new();
    let (hold, hold_rx) = add_blocker(&m, &gate); // ungrouped
    started(&hold_rx);
    let done = member(&m, &g);
    let blocked = m.task().group(&g).after([&hold]).spawn(noop).unwrap().id();
    // `done` completes; its event stays queued while the other member is stopped.
    // The only free worker runs `marker` after `done`.
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = m
        .add_task(move |_: &TaskContext| {
            tx.send(()).unwrap();
            Ok::<_, Infallible>(())
        })
        .unwrap()
        .id();
    rx.recv_timeout(TIMEOUT).expect("marker did not run");
    assert_eq!(m.stop_task(blocked, false, false), 1);
    gate.open();
    let evs = take_ev(&sub, 3);
    assert_eq!(evs[0], Ev::Done(done), "{evs:?}");
    // `marker` and `hold` end on different workers, in either order.
    let mut rest = evs[1..].to_vec();
    rest.sort_by_key(id_of_ev);
    let mut want = vec![Ev::Done(marker), Ev::Done(hold.id())];
    want.sort_by_key(id_of_ev);
    assert_eq!(rest, want, "{evs:?}");
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_the_member_whose_end_finished_the_group_drops_group_finished() {
    let m = paused(1);
    let sub = m.subscribe();
    let g = Group::from("undelivered");
    let a = member(&m, &g);
    let b = member(&m, &g);
    m.start_processing();
    // Both ended; Done(a), Done(b), GroupFinished wait undrained.
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(m.stop_task(b, false, false), 1);
    assert_eq!(take_ev(&sub, 1), [Ev::Done(a)]);
    assert_quiet(&m, &sub);
}

/// One worker, and 2,000 subscriptions besides `sub` that nobody drains:
/// the worker queues each event to `sub` first, then to the others, so the
/// owner sees a member's event while its worker is still busy with that
/// member's end. In each round the owner stops the group's other member as
/// soon as it sees the first one's event: that member was then live, so
/// its stop, not the first member's end, ended the group, and nothing may
/// follow (stops never emit `GroupFinished`). With `graph`, the first
/// member has an upstream task, so it ends through the scheduler lock.
fn stop_right_after_a_members_event(graph: bool) {
    let m = manager(1);
    let sub = m.subscribe();
    let _others: Vec<_> = (0..2000).map(|_| m.subscribe()).collect();
    for round in 0..50 {
        let g = Group::from(format!("round {round}"));
        let gate = Gate::new();
        let (up, up_rx) = add_blocker(&m, &gate); // ungrouped: holds the worker
        started(&up_rx);
        let first = m.task().group(&g);
        let first = if graph { first.after([&up]) } else { first };
        let first = first.spawn(noop).unwrap().id();
        let second = member(&m, &g); // queued behind `first`
        gate.open();
        assert_eq!(
            take_ev(&sub, 2),
            [Ev::Done(up.id()), Ev::Done(first)],
            "round {round}"
        );
        assert_eq!(m.stop_task(second, false, false), 1, "round {round}");
        assert_quiet(&m, &sub);
    }
}

#[test]
fn stopping_the_other_member_right_after_a_fast_members_event_emits_no_group_finished() {
    stop_right_after_a_members_event(false);
}

#[test]
fn stopping_the_other_member_right_after_a_graph_members_event_emits_no_group_finished() {
    stop_right_after_a_members_event(true);
}

#[test]
fn partly_stopped_group_finishes_when_last_live_member_completes() {
    // Queued members stopped; the others complete.
    let m = paused(1);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let g = Group::from("partly");
    let a = member(&m, &g);
    let b = counted_member(&m, &g, &ran);
    let c = member(&m, &g);
    let d = counted_member(&m, &g, &ran);
    assert_eq!(m.stop_task(b, false, false), 1);
    assert_eq!(m.stop_task(d, false, false), 1);
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 3),
        [Ev::Done(a), Ev::Done(c), Ev::GroupDone(g)]
    );
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn group_with_stopped_running_member_finishes_after_the_rest() {
    let m = manager(1);
    let sub = m.subscribe();
    let g = Group::from("stopped-running");
    let gate = Gate::new();
    let slow = running_member(&m, &g, &gate);
    let queued = member(&m, &g);
    assert_eq!(m.stop_task(slow, false, false), 1);
    gate.open();
    assert_eq!(take_ev(&sub, 2), [Ev::Done(queued), Ev::GroupDone(g)]);
    assert_quiet(&m, &sub);
}

#[test]
fn ungrouped_tasks_never_finish_a_group() {
    let m = manager(4);
    let sub = m.subscribe();
    let mut ids = HashSet::new();
    for i in 0..40u32 {
        let h = m
            .add_task(move |_: &TaskContext| -> Result<u32, String> {
                if i % 4 == 0 {
                    Err(format!("ungrouped {i} failed"))
                } else {
                    Ok(i)
                }
            })
            .unwrap();
        ids.insert(h.id());
    }
    let chained = m.task().after(ids.iter().copied()).spawn(noop).unwrap();
    ids.insert(chained.id());
    let events = take(&sub, ids.len());
    for e in &events {
        assert!(ids.remove(&id_of(e)), "unexpected {e:?}");
        assert_eq!(e.group(), None);
    }
    assert!(ids.is_empty());
    assert_quiet(&m, &sub);
}

#[test]
fn number_seven_and_name_seven_are_different_groups() {
    assert_ne!(Group::from(7u64), Group::from("7"));
    assert_eq!(Group::from(7u64).as_number(), Some(7));
    assert_eq!(Group::from(7u64).as_name(), None);
    assert_eq!(Group::from("7").as_name(), Some("7"));
    assert_eq!(Group::from("7").as_number(), None);

    let m = paused(1);
    let sub = m.subscribe();
    let num = Group::from(7u64);
    let name = Group::from("7");
    let n1 = member(&m, &num);
    let s1 = member(&m, &name);
    let n2 = member(&m, &num);
    let s2 = member(&m, &name);
    let n3 = member(&m, &num);
    m.start_processing();
    let events = take(&sub, 7);
    assert_eq!(
        events.iter().map(ev).collect::<Vec<_>>(),
        [
            Ev::Done(n1),
            Ev::Done(s1),
            Ev::Done(n2),
            Ev::Done(s2),
            Ev::GroupDone(name.clone()),
            Ev::Done(n3),
            Ev::GroupDone(num.clone()),
        ]
    );
    assert_eq!(events[4].group().and_then(Group::as_name), Some("7"));
    assert_eq!(events[6].group().and_then(Group::as_number), Some(7));
    assert_eq!(events[0].group(), Some(&num));
    assert_eq!(events[1].group(), Some(&name));
    assert_quiet(&m, &sub);
}

#[test]
fn next_group_id_counts_from_zero_per_manager() {
    let m1 = paused(1);
    let m2 = paused(1);
    assert_eq!(m1.next_group_id().as_number(), Some(0));
    assert_eq!(m1.next_group_id().as_number(), Some(1));
    assert_eq!(m2.next_group_id().as_number(), Some(0));
    let third = m1.next_group_id();
    assert_eq!(third.as_number(), Some(2));
    assert_eq!(third.as_name(), None);
    assert_eq!(third, Group::from(2u64));
    assert_eq!(m2.next_group_id().as_number(), Some(1));
    // A clone shares the counter.
    let m1b = m1.clone();
    assert_eq!(m1b.next_group_id().as_number(), Some(3));
    assert_eq!(m1.next_group_id().as_number(), Some(4));
}

#[test]
fn group_from_string_and_str_are_the_same_group() {
    let owned = Group::from(String::from("views"));
    let borrowed = Group::from("views");
    assert_eq!(owned, borrowed);
    assert_eq!(owned.as_name(), Some("views"));
    let set: HashSet<Group> = [owned.clone(), borrowed.clone()].into_iter().collect();
    assert_eq!(set.len(), 1);
    assert_ne!(Group::from("views"), Group::from("View"));

    let m = paused(1);
    let sub = m.subscribe();
    let a = m.task().group("views").spawn(noop).unwrap().id();
    let b = m
        .task()
        .group(String::from("views"))
        .spawn(noop)
        .unwrap()
        .id();
    m.start_processing();
    let events = take(&sub, 3);
    assert_eq!(
        events.iter().map(ev).collect::<Vec<_>>(),
        [Ev::Done(a), Ev::Done(b), Ev::GroupDone(borrowed.clone())]
    );
    assert_eq!(events[0].group(), Some(&owned));
    assert_quiet(&m, &sub);
}

#[test]
fn stop_task_group_stops_only_that_groups_queued_tasks() {
    let m = paused(1);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let target = Group::from("target");
    let other = Group::from("other");
    let t1 = counted_member(&m, &target, &ran);
    let o1 = member(&m, &other);
    counted_member(&m, &target, &ran);
    let u = m.add_task(noop).unwrap().id();
    counted_member(&m, &target, &ran);
    let o2 = m.task().group(&other).after([t1]).spawn(noop).unwrap().id();
    assert_eq!(m.stop_task_group(&target, false, false), 3);
    assert_eq!(m.stop_task_group(&target, false, false), 0);
    assert_eq!(m.stop_task_group(&Group::from("nobody"), true, true), 0);
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 4),
        [
            Ev::Done(o1),
            Ev::Done(u),
            Ev::Done(o2),
            Ev::GroupDone(other)
        ]
    );
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn stop_task_group_counts_only_live_tasks() {
    let m = manager(2);
    let sub = m.subscribe();
    let g = Group::from("live-only");
    let keep = Group::from("keep");
    let delivered = member(&m, &g);
    assert_eq!(
        take_ev(&sub, 2),
        [Ev::Done(delivered), Ev::GroupDone(g.clone())]
    );

    let gate = Gate::new();
    running_member(&m, &g, &gate);
    let (hold, hold_rx) = add_blocker(&m, &gate);
    started(&hold_rx);
    // Both workers busy: these stay queued.
    let ran = Arc::new(AtomicUsize::new(0));
    counted_member(&m, &g, &ran);
    counted_member(&m, &g, &ran);
    let kept = m
        .task()
        .group(&keep)
        .after([&hold])
        .spawn(noop)
        .unwrap()
        .id();

    // The delivered member is not live; running + 2 queued are.
    assert_eq!(m.stop_task_group(&g, false, false), 3);
    gate.open();
    assert_eq!(
        take_ev(&sub, 3),
        [Ev::Done(hold.id()), Ev::Done(kept), Ev::GroupDone(keep)]
    );
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}
