//! SPEC 6, stopping: `stop_task`, `stop_task_group` and `stop_all_tasks`,
//! their flags and counts, what runs afterwards, and the guarantee that no
//! event of a stopped task is ever delivered.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use bgtask::{Event, Group, Kwargs, TaskContext, TaskId, TaskManager, TryRecvError};
use common::*;

/// The four `(stop_upstream, stop_downstream)` combinations.
const FLAGS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// What each task body that ran recorded: its name and the sorted kwargs
/// keys it saw (the names of the upstream tasks whose results it received).
type Log = Arc<Mutex<Vec<(&'static str, Vec<String>)>>>;

/// Adds a task named `name` after `after` that records itself in `log` and
/// completes with `Kwargs { name: true }`, so that each downstream task
/// sees exactly which upstream results reached it.
fn recorded(
    m: &TaskManager,
    log: &Log,
    name: &'static str,
    after: &[TaskId],
    group: Option<&str>,
) -> TaskId {
    let log = Arc::clone(log);
    let mut builder = m.task().after(after.iter().copied());
    if let Some(g) = group {
        builder = builder.group(g);
    }
    builder
        .spawn(move |ctx: &TaskContext| {
            let mut seen: Vec<String> = ctx.kwargs().keys().map(str::to_owned).collect();
            seen.sort();
            log.lock().unwrap().push((name, seen));
            Ok::<_, Infallible>(Kwargs::new().with(name, true))
        })
        .unwrap()
        .id()
}

/// The graph `a -> {b, c} -> d -> f` plus the unrelated task `e`, added to a
/// paused manager with one worker.
struct Diamond {
    m: TaskManager,
    sub: bgtask::Subscription,
    log: Log,
    ids: BTreeMap<&'static str, TaskId>,
    upstream: BTreeMap<&'static str, Vec<&'static str>>,
}

impl Diamond {
    /// Builds the graph; with `group_bc`, `b` and `c` are in group `"bc"`.
    fn build(group_bc: bool) -> Diamond {
        let m = paused(1);
        let sub = m.subscribe();
        let log: Log = Arc::default();
        let bc = group_bc.then_some("bc");
        let mut ids = BTreeMap::new();
        let a = recorded(&m, &log, "a", &[], None);
        let b = recorded(&m, &log, "b", &[a], bc);
        let c = recorded(&m, &log, "c", &[a], bc);
        let d = recorded(&m, &log, "d", &[b, c], None);
        let e = recorded(&m, &log, "e", &[], None);
        let f = recorded(&m, &log, "f", &[d], None);
        for (name, id) in [("a", a), ("b", b), ("c", c), ("d", d), ("e", e), ("f", f)] {
            ids.insert(name, id);
        }
        let upstream = BTreeMap::from([
            ("a", vec![]),
            ("b", vec!["a"]),
            ("c", vec!["a"]),
            ("d", vec!["b", "c"]),
            ("e", vec![]),
            ("f", vec!["d"]),
        ]);
        Diamond {
            m,
            sub,
            log,
            ids,
            upstream,
        }
    }

    /// Starts processing and checks that exactly the tasks of `expected` ran
    /// (each seeing exactly the listed upstream results), that each emitted
    /// one `Completed` and nothing else was emitted, and that every task ran
    /// after each of its upstream tasks that ran.
    fn run_and_check(&self, expected: &[(&'static str, &[&str])]) {
        self.run_and_check_group(expected, None);
    }

    /// As [`run_and_check`](Self::run_and_check), and also expects
    /// `GroupFinished { group }` right after the last of `b` and `c`.
    fn run_and_check_group(&self, expected: &[(&'static str, &[&str])], group: Option<&str>) {
        self.m.start_processing();
        let mut events = take_ev(&self.sub, expected.len() + usize::from(group.is_some()));
        if let Some(g) = group {
            let at = events
                .iter()
                .position(|e| *e == Ev::GroupDone(Group::from(g)))
                .unwrap_or_else(|| panic!("no GroupFinished for {g:?} in {events:?}"));
            let last_member = [self.ids["b"], self.ids["c"]]
                .iter()
                .map(|id| events.iter().position(|e| *e == Ev::Done(*id)))
                .max()
                .flatten();
            assert_eq!(
                Some(at),
                last_member.map(|p| p + 1),
                "GroupFinished misplaced: {events:?}"
            );
            events.remove(at);
        }
        let done: BTreeSet<TaskId> = events
            .iter()
            .map(|e| match e {
                Ev::Done(id) => *id,
                other => panic!("expected only Completed events, got {other:?} in {events:?}"),
            })
            .collect();
        let want: BTreeSet<TaskId> = expected.iter().map(|(n, _)| self.ids[n]).collect();
        assert_eq!(
            done, want,
            "tasks that completed after the stop: {events:?}"
        );
        assert_quiet(&self.m, &self.sub);

        let log = self.log.lock().unwrap().clone();
        let ran: BTreeMap<&str, Vec<String>> = log.iter().cloned().collect();
        assert_eq!(ran.len(), log.len(), "a task body ran twice: {log:?}");
        let want: BTreeMap<&str, Vec<String>> = expected
            .iter()
            .map(|(n, seen)| (*n, seen.iter().map(|s| s.to_string()).collect()))
            .collect();
        assert_eq!(
            ran, want,
            "task bodies that ran, with the upstream results they saw"
        );
        let pos = |name: &str| log.iter().position(|(n, _)| *n == name);
        for (name, _) in &log {
            for up in &self.upstream[name] {
                if let Some(p) = pos(up) {
                    assert!(
                        p < pos(name).unwrap(),
                        "{name} ran before its upstream {up}: {log:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn stop_b_alone_leaves_the_rest_of_the_diamond_running() {
    let g = Diamond::build(false);
    assert_eq!(g.m.stop_task(g.ids["b"], false, false), 1);
    // d runs without b's result once c is done.
    g.run_and_check(&[
        ("a", &[]),
        ("c", &["a"]),
        ("d", &["c"]),
        ("e", &[]),
        ("f", &["d"]),
    ]);
}

#[test]
fn stop_b_with_upstream_stops_a_but_not_its_other_downstream_c() {
    let g = Diamond::build(false);
    // b, then a upstream of it; down is false, so c (downstream of a) stays.
    assert_eq!(g.m.stop_task(g.ids["b"], true, false), 2);
    g.run_and_check(&[("c", &[]), ("d", &["c"]), ("e", &[]), ("f", &["d"])]);
}

#[test]
fn stop_b_with_downstream_stops_d_and_then_f() {
    let g = Diamond::build(false);
    assert_eq!(g.m.stop_task(g.ids["b"], false, true), 3);
    g.run_and_check(&[("a", &[]), ("c", &["a"]), ("e", &[])]);
}

#[test]
fn stop_b_both_ways_stops_its_whole_connected_part() {
    let g = Diamond::build(false);
    // b; a and d from b; c from a (down) and from d (up); f from d.
    assert_eq!(g.m.stop_task(g.ids["b"], true, true), 5);
    g.run_and_check(&[("e", &[])]);
}

#[test]
fn stop_group_alone_stops_only_its_members() {
    let g = Diamond::build(true);
    assert_eq!(g.m.stop_task_group(&Group::from("bc"), false, false), 2);
    // No GroupFinished for "bc": run_and_check sees only these Completed.
    g.run_and_check(&[("a", &[]), ("d", &[]), ("e", &[]), ("f", &["d"])]);
}

#[test]
fn stop_group_with_upstream_stops_a_too() {
    let g = Diamond::build(true);
    assert_eq!(g.m.stop_task_group(&Group::from("bc"), true, false), 3);
    g.run_and_check(&[("d", &[]), ("e", &[]), ("f", &["d"])]);
}

#[test]
fn stop_group_with_downstream_stops_d_and_f_too() {
    let g = Diamond::build(true);
    assert_eq!(g.m.stop_task_group(&Group::from("bc"), false, true), 4);
    g.run_and_check(&[("a", &[]), ("e", &[])]);
}

#[test]
fn stop_group_both_ways_stops_the_connected_part() {
    let g = Diamond::build(true);
    assert_eq!(g.m.stop_task_group(&Group::from("bc"), true, true), 5);
    g.run_and_check(&[("e", &[])]);
}

#[test]
fn stop_group_of_the_same_number_or_other_name_stops_nothing() {
    let g = Diamond::build(true);
    for (up, down) in FLAGS {
        assert_eq!(g.m.stop_task_group(&Group::from("b"), up, down), 0);
        assert_eq!(g.m.stop_task_group(&Group::from(0u64), up, down), 0);
    }
    g.run_and_check_group(
        &[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b", "c"]),
            ("e", &[]),
            ("f", &["d"]),
        ],
        Some("bc"),
    );
}

#[test]
fn stopped_queued_tasks_never_run_whatever_their_priority() {
    let m = paused(1);
    let sub = m.subscribe();
    let counters: Vec<Arc<AtomicUsize>> = (0..5).map(|_| Arc::default()).collect();
    let count = |i: usize| {
        let c = Arc::clone(&counters[i]);
        move |_: &TaskContext| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(())
        }
    };
    let ids = [
        m.add_task(count(0)).unwrap().id(), // default priority (add_task)
        m.task().spawn(count(1)).unwrap().id(), // default priority (builder)
        m.task().priority(0).spawn(count(2)).unwrap().id(),
        m.task().priority(7).spawn(count(3)).unwrap().id(),
        m.task().priority(-7).spawn(count(4)).unwrap().id(),
    ];
    for id in ids {
        assert_eq!(
            m.stop_task(id, false, false),
            1,
            "stopping queued task {id:?}"
        );
    }
    for id in ids {
        assert_eq!(m.stop_task(id, true, true), 0, "{id:?} was already stopped");
    }
    m.start_processing();
    let sentinel = m.add_task(noop).unwrap();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(sentinel.id())]);
    assert_quiet(&m, &sub);
    let runs: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(runs, [0, 0, 0, 0, 0], "stopped tasks ran");
}

#[test]
fn stopped_running_task_runs_to_its_end_sees_is_stopped_and_emits_nothing() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let log: Arc<Mutex<Vec<&str>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<bool>();
    let x = {
        let (gate, log) = (gate.clone(), Arc::clone(&log));
        m.task()
            .group("running")
            .spawn(move |ctx: &TaskContext| {
                tx.send(ctx.is_stopped()).unwrap();
                gate.wait();
                tx.send(ctx.is_stopped()).unwrap();
                log.lock().unwrap().push("x-end");
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    assert!(
        !rx.recv_timeout(TIMEOUT).expect("x did not start"),
        "x is stopped before any stop"
    );
    assert_eq!(m.stop_task(x.id(), false, false), 1);
    assert_eq!(m.stop_task(x.id(), true, true), 0, "x was already stopped");

    // Its worker (the only one) stays busy: a task added now cannot start.
    let y = {
        let log = Arc::clone(&log);
        m.add_task(move |_: &TaskContext| {
            log.lock().unwrap().push("y");
            Ok::<_, Infallible>(())
        })
        .unwrap()
    };
    // A timeout of the function under test: the stopped task still runs.
    assert!(
        !m.wait_idle(Duration::from_millis(50)),
        "a stopped running task counts as running"
    );
    assert!(
        log.lock().unwrap().is_empty(),
        "y started while the stopped x held the only worker"
    );

    gate.open();
    assert!(
        rx.recv_timeout(TIMEOUT).expect("x did not go on"),
        "is_stopped() is false after the stop"
    );
    // Neither x's Completed nor the GroupFinished of "running" comes.
    assert_eq!(take_ev(&sub, 1), [Ev::Done(y.id())]);
    assert_quiet(&m, &sub);
    assert_eq!(*log.lock().unwrap(), ["x-end", "y"]);
}

#[test]
fn stopping_a_finished_task_whose_event_is_queued_drops_the_event() {
    let m = manager(2);
    let sub = m.subscribe();
    let t = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(1))
        .unwrap();
    assert!(m.wait_idle(TIMEOUT), "t did not finish");
    // Nobody drained: t is still live to the owner.
    assert_eq!(m.stop_task(t.id(), false, false), 1);
    assert_eq!(
        m.stop_task(t.id(), false, false),
        0,
        "t was already stopped"
    );
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_the_task_that_finished_a_group_drops_its_group_finished_too() {
    let m = manager(1);
    let sub = m.subscribe();
    let t = m.task().group("solo").spawn(noop).unwrap();
    assert!(m.wait_idle(TIMEOUT), "t did not finish");
    // Queued now: Completed(t), GroupFinished("solo").
    assert_eq!(m.stop_task(t.id(), false, false), 1);
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_the_last_finisher_of_a_group_drops_only_its_own_events() {
    let m = manager(1);
    let sub = m.subscribe();
    let t1 = m.task().group("pair").spawn(noop).unwrap();
    let t2 = m.task().group("pair").spawn(noop).unwrap();
    assert!(m.wait_idle(TIMEOUT), "tasks did not finish");
    // One worker: queued are Completed(t1), Completed(t2), GroupFinished("pair"),
    // the last caused by t2's end.
    assert_eq!(m.stop_task(t2.id(), false, false), 1);
    assert_eq!(take_ev(&sub, 1), [Ev::Done(t1.id())]);
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_the_first_finisher_of_a_group_keeps_the_group_finished_of_the_last() {
    let m = manager(1);
    let sub = m.subscribe();
    let g = m.next_group_id();
    let t1 = m.task().group(&g).spawn(noop).unwrap();
    let t2 = m.task().group(&g).spawn(noop).unwrap();
    assert!(m.wait_idle(TIMEOUT), "tasks did not finish");
    // GroupFinished was caused by t2's end, not by t1's.
    assert_eq!(m.stop_task(t1.id(), false, false), 1);
    assert_eq!(take_ev(&sub, 2), [Ev::Done(t2.id()), Ev::GroupDone(g)]);
    assert_quiet(&m, &sub);
}

#[test]
fn stopping_never_emits_events() {
    let m = paused(2);
    let sub = m.subscribe();
    let counter = Arc::new(AtomicUsize::new(0));
    let g = m.next_group_id();
    let counting = |group: Group, after: Vec<TaskId>| {
        let c = Arc::clone(&counter);
        m.task()
            .group(group)
            .after(after)
            .spawn(move |_: &TaskContext| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            })
            .unwrap()
            .id()
    };
    let g1 = counting(g.clone(), vec![]);
    let g2 = counting(g.clone(), vec![g1]);
    counting(g.clone(), vec![g1, g2]);
    let h1 = counting(Group::from("h"), vec![]);
    let lone = counted(&m, &counter, &[]);

    assert_eq!(m.stop_task_group(&g, false, false), 3);
    assert_eq!(m.stop_task(h1, false, false), 1);
    assert_eq!(m.stop_task(lone, true, true), 1);
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);

    m.start_processing();
    let sentinel = m.add_task(noop).unwrap();
    // No Completed, Failed or GroupFinished of the stopped tasks or groups.
    assert_eq!(take_ev(&sub, 1), [Ev::Done(sentinel.id())]);
    assert_quiet(&m, &sub);
    assert_eq!(counter.load(Ordering::SeqCst), 0);
}

#[test]
fn stop_all_tasks_counts_every_live_task_and_the_manager_stays_usable() {
    let m = manager(1);
    let sub = m.subscribe();
    let counter = Arc::new(AtomicUsize::new(0));

    // Delivered: not live.
    let delivered = m.add_task(noop).unwrap();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(delivered.id())]);
    // Finished, event queued: live.
    m.add_task(noop).unwrap();
    assert!(m.wait_idle(TIMEOUT), "task did not finish");
    // Running.
    let gate = Gate::new();
    let (_x, x_started) = add_blocker(&m, &gate);
    started(&x_started);
    // Queued (the only worker is busy) and blocked.
    let q1 = counted(&m, &counter, &[]);
    counted(&m, &counter, &[]);
    counted(&m, &counter, &[q1]);

    assert_eq!(m.stop_all_tasks(), 5);
    assert_eq!(m.stop_all_tasks(), 0, "nothing is live any more");
    gate.open();

    let after = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>("after"))
        .unwrap();
    match next(&sub) {
        Event::Completed { id, result, .. } => {
            assert_eq!(id, after.id());
            assert_eq!(result.downcast_ref::<&str>(), Some(&"after"));
        }
        other => panic!("expected the new task's Completed, got {other:?}"),
    }
    assert_quiet(&m, &sub);
    assert_eq!(
        counter.load(Ordering::SeqCst),
        0,
        "stopped queued tasks ran"
    );
}

/// A manager with two workers and two subscriptions, one worker held by
/// a running task `x` until `gate` opens, and a counter for `counted`.
struct Held {
    m: TaskManager,
    s1: bgtask::Subscription,
    s2: bgtask::Subscription,
    counter: Arc<AtomicUsize>,
    gate: Gate,
    x: bgtask::TaskHandle<()>,
}

fn held_with_two_subscribers() -> Held {
    let m = manager(2);
    let s1 = m.subscribe();
    let s2 = m.subscribe();
    let gate = Gate::new();
    let (x, x_started) = add_blocker(&m, &gate);
    started(&x_started);
    Held {
        m,
        s1,
        s2,
        counter: Arc::new(AtomicUsize::new(0)),
        gate,
        x,
    }
}

#[test]
fn ids_whose_events_were_all_delivered_stop_nothing() {
    let Held {
        m,
        s1,
        s2,
        counter,
        gate,
        x,
    } = held_with_two_subscribers();
    let a = m.add_task(noop).unwrap();
    // b is downstream of a (delivered) and of x (running).
    let b = counted(&m, &counter, &[a.id(), x.id()]);
    assert_eq!(take_ev(&s1, 1), [Ev::Done(a.id())]);
    assert_eq!(take_ev(&s2, 1), [Ev::Done(a.id())]);
    for (up, down) in FLAGS {
        assert_eq!(m.stop_task(a.id(), up, down), 0, "flags ({up}, {down})");
    }
    gate.open();
    // b was not reached through the delivered a: it runs.
    for sub in [&s1, &s2] {
        assert_eq!(take_ev(sub, 2), [Ev::Done(x.id()), Ev::Done(b)]);
        assert_quiet(&m, sub);
    }
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    for id in [x.id(), b] {
        assert_eq!(m.stop_task(id, true, true), 0);
    }
    assert_eq!(m.stop_all_tasks(), 0);
}

#[test]
fn a_task_delivered_to_one_subscriber_only_is_still_live_and_cascades() {
    let Held {
        m,
        s1,
        s2,
        counter,
        gate,
        x,
    } = held_with_two_subscribers();
    let a = m.add_task(noop).unwrap();
    let d = counted(&m, &counter, &[a.id(), x.id()]);
    // s1 got a's Completed, s2 still holds it: a is live to the owner.
    assert_eq!(take_ev(&s1, 1), [Ev::Done(a.id())]);
    // a, and d downstream of it (still blocked on x).
    assert_eq!(m.stop_task(a.id(), false, true), 2);
    assert_eq!(m.stop_task(d, false, false), 0, "d was stopped through a");
    gate.open();
    assert_eq!(take_ev(&s1, 1), [Ev::Done(x.id())]);
    assert_eq!(
        take_ev(&s2, 1),
        [Ev::Done(x.id())],
        "s2 must never see a's Completed"
    );
    assert_quiet(&m, &s1);
    assert_quiet(&m, &s2);
    assert_eq!(counter.load(Ordering::SeqCst), 0, "d ran");
}

/// Tasks added after an upstream task that had finished, its event not
/// yet received by every subscriber, are stopped by a stop cascading down
/// from it, and the cascade goes on from them; a task added after the
/// upstream was stopped counts it as satisfied and runs. (The edges from a
/// finished task are kept apart from its node: this is their only use.)
#[test]
fn a_stop_cascades_to_tasks_added_after_the_upstream_finished() {
    let Held {
        m,
        s1,
        s2,
        counter,
        gate,
        x,
    } = held_with_two_subscribers();
    let a = m.add_task(noop).unwrap();
    // a has finished: s1 received its Completed, s2 still holds it.
    assert_eq!(take_ev(&s1, 1), [Ev::Done(a.id())]);
    // Added after a finished, and blocked on x, so they wait.
    let d1 = counted(&m, &counter, &[a.id(), x.id()]);
    let d2 = counted(&m, &counter, &[x.id(), a.id()]);
    let e = counted(&m, &counter, &[d1]);
    assert_eq!(m.stop_task(a.id(), false, true), 4, "a, d1, d2 and e");
    for id in [d1, d2, e] {
        assert_eq!(
            m.stop_task(id, false, false),
            0,
            "{id:?} was stopped through a"
        );
    }
    let f = counted(&m, &counter, &[a.id()]);
    gate.open();
    // x and f, in either order; never a's Completed on s2.
    for sub in [&s1, &s2] {
        let got = take_ev(sub, 2);
        assert!(
            got.contains(&Ev::Done(x.id())) && got.contains(&Ev::Done(f)),
            "{got:?}"
        );
    }
    assert_quiet(&m, &s1);
    assert_quiet(&m, &s2);
    assert_eq!(counter.load(Ordering::SeqCst), 1, "only f ran");
}

#[test]
fn unknown_and_foreign_ids_stop_nothing() {
    let m = paused(1);
    let other = paused(1);
    let sub = m.subscribe();
    let counter = Arc::new(AtomicUsize::new(0));
    let own = counted(&m, &counter, &[]);
    let foreign: Vec<TaskId> = (0..5).map(|_| other.add_task(noop).unwrap().id()).collect();
    assert_eq!(
        foreign[0].as_u64(),
        own.as_u64(),
        "same sequence number, other manager"
    );
    assert_ne!(foreign[0], own);
    for (up, down) in FLAGS {
        for &id in &foreign {
            // foreign[1..] are also ids this manager never issued.
            assert_eq!(
                m.stop_task(id, up, down),
                0,
                "foreign {id:?}, flags ({up}, {down})"
            );
        }
        assert_eq!(m.stop_task_group(&Group::from("nobody"), up, down), 0);
    }
    // Neither manager lost a task.
    assert_eq!(other.stop_all_tasks(), 5);
    m.start_processing();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(own)]);
    assert_quiet(&m, &sub);
    assert_eq!(counter.load(Ordering::SeqCst), 1);
}

#[test]
fn downstream_of_a_stopped_task_runs_without_its_result() {
    let m = paused(1);
    let sub = m.subscribe();
    let a = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(Kwargs::new().with("a", 1u32)))
        .unwrap();
    let c = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(Kwargs::new().with("c", 2u32)))
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let d = {
        let (a, c) = (a.clone(), c.clone());
        m.task()
            .after([&a, &c])
            .spawn(move |ctx: &TaskContext| {
                let kw = ctx.kwargs();
                tx.send((
                    kw.get::<u32>("a").copied(),
                    kw.get::<u32>("c").copied(),
                    ctx.upstream(&a).is_some(),
                    ctx.upstream(&c).is_some(),
                ))
                .unwrap();
                Ok::<_, Infallible>(())
            })
            .unwrap()
    };
    assert_eq!(m.stop_task(a.id(), false, false), 1);
    m.start_processing();
    assert_eq!(take_ev(&sub, 2), [Ev::Done(c.id()), Ev::Done(d.id())]);
    let seen = rx.recv_timeout(TIMEOUT).expect("d did not run");
    assert_eq!(
        seen,
        (None, Some(2), false, true),
        "d saw (kwargs a, kwargs c, upstream a, upstream c)"
    );
    assert_quiet(&m, &sub);
}

#[test]
fn no_stale_events_when_stops_race_finishing_tasks_nobody_drains() {
    let m = manager(2);
    let sub = m.subscribe();
    for i in 0..200u32 {
        let (tx, rx) = mpsc::channel();
        let t = m
            .add_task(move |_: &TaskContext| {
                let _ = tx.send(());
                Ok::<_, Infallible>(i)
            })
            .unwrap();
        match i % 3 {
            // Queued, or starting right now.
            0 => {}
            // Running, or finishing right now.
            1 => rx.recv_timeout(TIMEOUT).expect("task did not start"),
            // Finished, its event queued.
            _ => assert!(m.wait_idle(TIMEOUT), "task did not finish"),
        }
        // Nobody drained, so the task is live whatever its state.
        assert_eq!(m.stop_task(t.id(), false, false), 1, "iteration {i}");
        match sub.try_recv() {
            Err(TryRecvError::Empty) => {}
            other => panic!("iteration {i}: stale event after the stop: {other:?}"),
        }
    }
    assert_quiet(&m, &sub);
}

#[test]
fn no_stale_events_when_stops_race_a_draining_subscriber() {
    const END: u32 = u32::MAX;
    let m = manager(2);
    let sub = m.subscribe();
    // The only subscriber drains on its own thread while the owner stops.
    let drainer = thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            match next(&sub) {
                Event::Completed { result, .. } if result.downcast_ref::<u32>() == Some(&END) => {
                    return seen
                }
                Event::Completed { id, .. } => seen.push(id),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let mut stops: HashMap<TaskId, usize> = HashMap::new();
    for i in 0..200u32 {
        let (tx, rx) = mpsc::channel();
        let t = m
            .add_task(move |_: &TaskContext| {
                let _ = tx.send(());
                Ok::<_, Infallible>(i)
            })
            .unwrap();
        if i % 2 == 1 {
            rx.recv_timeout(TIMEOUT).expect("task did not start");
        }
        stops.insert(t.id(), m.stop_task(t.id(), false, false));
    }
    // Every iteration task was stopped or delivered before its stop
    // returned, so nothing of theirs can come after this one.
    m.add_task(|_: &TaskContext| Ok::<_, Infallible>(END))
        .unwrap();
    let seen = drainer.join().expect("drainer panicked");
    let delivered: HashSet<TaskId> = seen.iter().copied().collect();
    assert_eq!(delivered.len(), seen.len(), "an event was delivered twice");
    for (id, stopped) in &stops {
        match (*stopped, delivered.contains(id)) {
            // Stopped before delivery, never delivered.
            (1, false) => {}
            // Delivered before the stop, so the stop found it dead.
            (0, true) => {}
            (n, d) => panic!("{id:?}: stop returned {n}, delivered: {d}"),
        }
    }
    assert!(delivered.iter().all(|id| stops.contains_key(id)));
    assert!(m.wait_idle(TIMEOUT), "manager did not become idle");
}

/// A graph task stopped while it runs has its result dropped by the
/// manager when it ends. That `Drop` is user code: it must run outside the
/// scheduler lock and be contained, so a panic in it takes no worker down
/// and leaves no other worker waiting for a decision on its own end.
#[test]
fn a_stopped_graph_tasks_result_that_panics_when_dropped_breaks_nothing() {
    let m = manager(2);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (a, a_started) = spawn_blocker(m.task(), &gate, PanicsWhenDropped);
    // A task after `a` makes `a` a graph task (its end takes the graph path).
    let b = m
        .task()
        .after([a.id()])
        .spawn(|_: &TaskContext| Ok::<_, Infallible>(2u32))
        .unwrap();
    started(&a_started);
    assert_eq!(m.stop_task(a.id(), false, false), 1);
    // Released without `a`'s result, `b` runs on the other worker.
    assert_eq!(*done(&b), 2);
    gate.open();
    assert!(matches!(
        a.wait_timeout(TIMEOUT),
        Some(Err(bgtask::TaskError::Stopped))
    ));
    // Both workers still take tasks: two blockers start at once.
    assert_two_workers_take_tasks(&m);
    // And graph tasks keep ending normally.
    let mut last = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(0u32))
        .unwrap();
    for i in 1..50u32 {
        last = m
            .task()
            .after([last.id()])
            .spawn(move |_: &TaskContext| Ok::<_, Infallible>(i))
            .unwrap();
    }
    assert_eq!(*done(&last), 49);
    assert!(m.wait_idle(TIMEOUT));
    drop(sub);
}

/// Stopping a task that finished with its event pending drops its kept
/// result; stopping a task without edges while it runs drops its result
/// when it ends. Both `Drop`s are user code: contained, outside every lock,
/// so the stop call does not panic and no worker is lost.
#[test]
fn results_that_panic_when_dropped_do_not_break_stops() {
    let m = manager(2);
    let sub = m.subscribe();
    // Finished, its event pending (nobody receives yet): the stop drops
    // the result the cell kept for the event.
    let finished = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(PanicsWhenDropped))
        .unwrap()
        .id();
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(m.stop_task(finished, false, false), 1);
    // Running, no edges: it ends on the fast path, stopped.
    let gate = Gate::new();
    let (running, rx) = spawn_blocker(m.task(), &gate, PanicsWhenDropped);
    started(&rx);
    assert_eq!(m.stop_task(running.id(), false, false), 1);
    gate.open();
    assert!(matches!(
        running.wait_timeout(TIMEOUT),
        Some(Err(bgtask::TaskError::Stopped))
    ));
    // No event of either; both workers still take tasks.
    assert!(matches!(sub.try_recv(), Err(TryRecvError::Empty)));
    assert_two_workers_take_tasks(&m);
    assert!(m.wait_idle(TIMEOUT));
}
