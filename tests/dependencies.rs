//! SPEC section 3: dependencies and results. One test per rule.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bgtask::{
    Error, Event, Kwargs, Subscription, TaskContext, TaskHandle, TaskManager, TaskResult,
};
use common::*;

/// Receives the next event, asserts it is `Completed` for `id`, and returns its result.
fn completed<T>(sub: &Subscription, h: &TaskHandle<T>) -> TaskResult {
    match next(sub) {
        Event::Completed { id, result, .. } if id == h.id() => result,
        other => panic!("expected Completed for {:?}, got {other:?}", h.id()),
    }
}

/// Receives the `Completed` event of `h` and returns its `Kwargs` result.
fn completed_kwargs<T>(sub: &Subscription, h: &TaskHandle<T>) -> Kwargs {
    completed(sub, h)
        .downcast_ref::<Kwargs>()
        .expect("result is a Kwargs")
        .clone()
}

/// The keys of `k`, in order.
fn keys(k: &Kwargs) -> Vec<String> {
    k.keys().map(String::from).collect()
}

/// Adds a task that completes with `k` as its result.
fn add_returning(m: &TaskManager, k: Kwargs) -> TaskHandle<Kwargs> {
    m.add_task(move |_: &TaskContext| Ok::<_, Infallible>(k))
        .unwrap()
}

/// Adds a task that signals when it starts, waits for `gate`, then
/// completes with `k`.
fn add_gated_returning(
    m: &TaskManager,
    gate: &Gate,
    k: Kwargs,
) -> (TaskHandle<Kwargs>, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let gate = gate.clone();
    let h = m
        .add_task(move |_: &TaskContext| {
            let _ = tx.send(());
            gate.wait();
            Ok::<_, Infallible>(k)
        })
        .unwrap();
    (h, rx)
}

/// Waits for a start signal from [`add_gated_returning`].
fn wait_start(rx: &mpsc::Receiver<()>) {
    rx.recv_timeout(TIMEOUT)
        .expect("upstream task did not start");
}

/// A task body that completes with its own (merged) kwargs.
fn echo_kwargs(ctx: &TaskContext) -> Result<Kwargs, Infallible> {
    Ok(ctx.kwargs().clone())
}

#[test]
fn a_downstream_task_waits_for_every_upstream_task() {
    // Four workers: only the dependency can keep the downstream from running.
    let m = manager(4);
    let sub = m.subscribe();
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let (g1, g2) = (Gate::new(), Gate::new());
    let (tx, rx) = mpsc::channel();
    let upstream = |name: &'static str, gate: &Gate| {
        let (log, gate, tx) = (Arc::clone(&log), gate.clone(), tx.clone());
        m.add_task(move |_: &TaskContext| {
            let _ = tx.send(name);
            gate.wait();
            log.lock().unwrap().push(name);
            Ok::<_, Infallible>(())
        })
        .unwrap()
    };
    let u1 = upstream("u1", &g1);
    let u2 = upstream("u2", &g2);
    let log_d = Arc::clone(&log);
    let d = m
        .task()
        .after([&u1, &u2])
        .spawn(move |_: &TaskContext| {
            log_d.lock().unwrap().push("d");
            Ok::<_, Infallible>(())
        })
        .unwrap();
    for _ in 0..2 {
        rx.recv_timeout(TIMEOUT).expect("upstream did not start");
    }
    g1.open();
    assert_eq!(ev(&next(&sub)), Ev::Done(u1.id()));
    // u2 is still held: d must still wait.
    assert_eq!(*log.lock().unwrap(), ["u1"]);
    g2.open();
    assert_eq!(take_ev(&sub, 2), vec![Ev::Done(u2.id()), Ev::Done(d.id())]);
    assert_eq!(*log.lock().unwrap(), ["u1", "u2", "d"]);
    assert_quiet(&m, &sub);
}

#[test]
fn after_an_upstream_that_completed_and_was_delivered_counts_as_satisfied() {
    let m = manager(1);
    let sub = m.subscribe();
    let u = m.add_task(noop).unwrap();
    assert_eq!(ev(&next(&sub)), Ev::Done(u.id()));
    assert!(m.wait_idle(TIMEOUT));
    let runs = Arc::new(AtomicUsize::new(0));
    // Twice: right after the delivery, and again after more tasks ran
    // (whatever the manager keeps of a delivered task by then).
    for round in 1..=2 {
        let r = Arc::clone(&runs);
        let d = m
            .task()
            .after([&u])
            .spawn(move |_: &TaskContext| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            })
            .expect("an id this manager issued is accepted");
        assert_eq!(ev(&next(&sub)), Ev::Done(d.id()), "round {round}");
        assert_eq!(runs.load(Ordering::SeqCst), round);
        for _ in 0..3 {
            let x = m.add_task(noop).unwrap();
            assert_eq!(ev(&next(&sub)), Ev::Done(x.id()));
        }
        assert!(m.wait_idle(TIMEOUT));
    }
    assert_quiet(&m, &sub);
}

#[test]
fn after_an_upstream_that_failed_or_was_stopped_counts_as_satisfied() {
    let m = manager(1);
    let sub = m.subscribe();
    let failed = m
        .add_task(|_: &TaskContext| -> Result<(), &str> { Err("boom") })
        .unwrap();
    assert_eq!(ev(&next(&sub)), Ev::Failed(failed.id(), "boom".to_string()));
    m.pause_processing();
    let stopped = m.add_task(noop).unwrap();
    assert_eq!(m.stop_task(stopped.id(), false, false), 1);
    let d = m
        .task()
        .after([failed.id(), stopped.id()])
        .spawn(noop)
        .unwrap();
    m.start_processing();
    // It runs and completes: it is not failed by the earlier failure.
    assert_eq!(ev(&next(&sub)), Ev::Done(d.id()));
    assert_quiet(&m, &sub);
}

#[test]
fn kwargs_results_of_upstream_tasks_are_merged_into_downstream_kwargs() {
    // Paused: the upstream is surely live when the downstream is added.
    let m = paused(1);
    let sub = m.subscribe();
    let u = add_returning(
        &m,
        Kwargs::new()
            .with("size", 512u64)
            .with("path", String::from("/a.png")),
    );
    let d = m
        .task()
        .after([&u])
        .kwargs(Kwargs::new().with("own", 7i32))
        .spawn(echo_kwargs)
        .unwrap();
    m.start_processing();
    completed(&sub, &u);
    let k = completed_kwargs(&sub, &d);
    assert_eq!(keys(&k), ["own", "path", "size"]);
    assert_eq!(k.get::<u64>("size"), Some(&512));
    assert_eq!(k.get::<String>("path").map(String::as_str), Some("/a.png"));
    assert_eq!(k.get::<i32>("own"), Some(&7));
    assert_quiet(&m, &sub);
}

#[test]
fn on_a_key_clash_the_upstream_result_wins_over_the_tasks_own_kwargs() {
    // Paused: the upstream is surely live when the downstream is added.
    let m = paused(1);
    let sub = m.subscribe();
    let u = add_returning(&m, Kwargs::new().with("k", "upstream"));
    let d = m
        .task()
        .after([&u])
        .kwargs(Kwargs::new().with("k", "own").with("mine", 1u8))
        .spawn(echo_kwargs)
        .unwrap();
    m.start_processing();
    completed(&sub, &u);
    let k = completed_kwargs(&sub, &d);
    assert_eq!(keys(&k), ["k", "mine"]);
    assert_eq!(k.get::<&str>("k"), Some(&"upstream"));
    assert_eq!(k.get::<u8>("mine"), Some(&1));
    assert_quiet(&m, &sub);
}

#[test]
fn on_a_key_clash_a_later_completing_upstream_wins_over_an_earlier_one() {
    // Both completion orders, so that neither the add order nor the order
    // in after() can explain the winner.
    for first_to_finish in [1, 0] {
        let m = manager(2);
        let sub = m.subscribe();
        let gates = [Gate::new(), Gate::new()];
        let (u0, rx0) = add_gated_returning(
            &m,
            &gates[0],
            Kwargs::new().with("k", "u0").with("only_u0", 0u8),
        );
        let (u1, rx1) = add_gated_returning(
            &m,
            &gates[1],
            Kwargs::new().with("k", "u1").with("only_u1", 1u8),
        );
        wait_start(&rx0);
        wait_start(&rx1);
        let d = m
            .task()
            .after([&u0, &u1])
            .kwargs(Kwargs::new().with("k", "own"))
            .spawn(echo_kwargs)
            .unwrap();
        let ups = [&u0, &u1];
        let last_to_finish = 1 - first_to_finish;
        gates[first_to_finish].open();
        completed(&sub, ups[first_to_finish]);
        gates[last_to_finish].open();
        completed(&sub, ups[last_to_finish]);
        let k = completed_kwargs(&sub, &d);
        let winner = ["u0", "u1"][last_to_finish];
        assert_eq!(
            keys(&k),
            ["k", "only_u0", "only_u1"],
            "both upstream results must be merged (u{first_to_finish} completed first, \
             then u{last_to_finish}; k = {:?})",
            k.get::<&str>("k")
        );
        assert_eq!(
            k.get::<&str>("k"),
            Some(&winner),
            "the later-completing upstream must win"
        );
        assert_quiet(&m, &sub);
    }
}

#[test]
fn non_kwargs_results_are_not_merged_but_any_typed_result_is_readable_with_upstream() {
    let m = paused(1);
    let sub = m.subscribe();
    let number = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(42u64))
        .unwrap();
    let text = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(String::from("text")))
        .unwrap();
    let kw = add_returning(&m, Kwargs::new().with("from_kw", 3u32));
    let (n, t, k) = (number.clone(), text.clone(), kw.clone());
    let d = m
        .task()
        .after([number.id(), text.id(), kw.id()])
        .kwargs(Kwargs::new().with("own", 1u8))
        .spawn(move |ctx: &TaskContext| {
            Ok::<_, Infallible>((
                keys(ctx.kwargs()),
                ctx.upstream(&n).copied(),
                ctx.upstream(&t).cloned(),
                ctx.upstream(&k)
                    .and_then(|k| k.get::<u32>("from_kw").copied()),
            ))
        })
        .unwrap();
    m.start_processing();
    completed(&sub, &number);
    completed(&sub, &text);
    completed(&sub, &kw);
    let r = completed(&sub, &d);
    let seen = r
        .downcast_ref::<(Vec<String>, Option<u64>, Option<String>, Option<u32>)>()
        .expect("the downstream's own result type");
    assert_eq!(seen.0, ["from_kw", "own"], "only Kwargs results are merged");
    assert_eq!(seen.1, Some(42));
    assert_eq!(seen.2.as_deref(), Some("text"));
    assert_eq!(seen.3, Some(3));
    assert_quiet(&m, &sub);
}

/// What a downstream of a stopped upstream saw: its kwargs' keys, and
/// whether it could read each upstream's result.
type Seen = (Vec<String>, bool, bool);

#[test]
fn a_downstream_of_an_upstream_stopped_while_queued_runs_without_its_result() {
    let m = paused(1);
    let sub = m.subscribe();
    let stopped = add_returning(&m, Kwargs::new().with("a", 1u8));
    let kept = add_returning(&m, Kwargs::new().with("b", 2u8));
    let (s, k) = (stopped.clone(), kept.clone());
    let d = m
        .task()
        .after([&stopped, &kept])
        .kwargs(Kwargs::new().with("own", 0u8))
        .spawn(move |ctx: &TaskContext| {
            let seen: Seen = (
                keys(ctx.kwargs()),
                ctx.upstream(&s).is_some(),
                ctx.upstream(&k).is_some(),
            );
            Ok::<_, Infallible>(seen)
        })
        .unwrap();
    assert_eq!(m.stop_task(stopped.id(), false, false), 1);
    m.start_processing();
    completed(&sub, &kept);
    let r = completed(&sub, &d);
    let seen = r.downcast_ref::<Seen>().unwrap();
    assert_eq!(seen.0, ["b", "own"]);
    assert!(!seen.1, "the stopped upstream's result is visible");
    assert!(seen.2);
    assert_quiet(&m, &sub);
}

#[test]
fn a_downstream_of_an_upstream_stopped_while_running_runs_without_its_result() {
    let m = manager(2);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (stopped, rx) = add_gated_returning(&m, &gate, Kwargs::new().with("a", 1u8));
    wait_start(&rx);
    let s = stopped.clone();
    let d = m
        .task()
        .after([&stopped])
        .kwargs(Kwargs::new().with("own", 0u8))
        .spawn(move |ctx: &TaskContext| {
            let seen: Seen = (keys(ctx.kwargs()), ctx.upstream(&s).is_some(), false);
            Ok::<_, Infallible>(seen)
        })
        .unwrap();
    assert_eq!(m.stop_task(stopped.id(), false, false), 1);
    // The stopped task now returns its Kwargs; they must be dropped.
    gate.open();
    let r = completed(&sub, &d);
    let seen = r.downcast_ref::<Seen>().unwrap();
    assert_eq!(seen.0, ["own"], "the stopped upstream's kwargs were merged");
    assert!(!seen.1, "the stopped upstream's result is visible");
    assert_quiet(&m, &sub);
}

#[test]
fn a_pass_through_task_joins_two_upstream_results_with_its_own_kwargs() {
    let m = manager(2);
    let sub = m.subscribe();
    let (g1, g2) = (Gate::new(), Gate::new());
    let (u1, rx1) =
        add_gated_returning(&m, &g1, Kwargs::new().with("a", 1u32).with("shared", "u1"));
    let (u2, rx2) =
        add_gated_returning(&m, &g2, Kwargs::new().with("b", 2u32).with("shared", "u2"));
    wait_start(&rx1);
    wait_start(&rx2);
    let p = m
        .task()
        .after([&u1, &u2])
        .kwargs(Kwargs::new().with("own", 3u32).with("a", 0u32))
        .spawn_pass_through()
        .unwrap();
    g2.open();
    completed(&sub, &u2);
    g1.open();
    completed(&sub, &u1);
    let k = completed_kwargs(&sub, &p);
    assert_eq!(keys(&k), ["a", "b", "own", "shared"]);
    assert_eq!(k.get::<u32>("a"), Some(&1), "upstream wins over own kwargs");
    assert_eq!(k.get::<u32>("b"), Some(&2));
    assert_eq!(k.get::<u32>("own"), Some(&3));
    assert_eq!(
        k.get::<&str>("shared"),
        Some(&"u1"),
        "later-completing wins"
    );
    assert_quiet(&m, &sub);
}

#[test]
fn a_pass_through_task_with_nothing_to_merge_completes_with_empty_kwargs() {
    let m = manager(1);
    let sub = m.subscribe();
    let alone = m.task().spawn_pass_through().unwrap();
    assert!(completed_kwargs(&sub, &alone).is_empty());

    let none = m
        .add_pass_through_task(Vec::<bgtask::TaskId>::new())
        .unwrap();
    assert!(completed_kwargs(&sub, &none).is_empty());

    // An upstream whose result is not a Kwargs gives nothing to merge.
    let number = m
        .add_task(|_: &TaskContext| Ok::<_, Infallible>(5u64))
        .unwrap();
    let after_number = m.add_pass_through_task([&number]).unwrap();
    completed(&sub, &number);
    let k = completed_kwargs(&sub, &after_number);
    assert!(k.is_empty(), "unexpected keys {:?}", keys(&k));
    assert_quiet(&m, &sub);
}

#[test]
fn a_pass_through_task_obeys_pause_and_takes_its_place_by_priority() {
    let m = paused(1);
    let sub = m.subscribe();
    let plain = m.task().priority(0).spawn(noop).unwrap();
    let high = m.task().priority(5).spawn_pass_through().unwrap();
    let low = m.task().priority(-1).spawn_pass_through().unwrap();
    // Paused: not even a pass-through completes.
    assert!(m.wait_idle(TIMEOUT));
    assert_quiet(&m, &sub);
    m.start_processing();
    assert_eq!(
        take_ev(&sub, 3),
        vec![
            Ev::Done(high.id()),
            Ev::Done(plain.id()),
            Ev::Done(low.id())
        ]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn a_pass_through_task_waits_for_a_free_worker() {
    let m = manager(1);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (busy, rx) = add_blocker(&m, &gate);
    started(&rx);
    // The only worker is busy: the pass-through must queue like any task,
    // by priority, and not complete on the adding thread.
    let plain = m.task().priority(5).spawn(noop).unwrap();
    let p = m.task().priority(10).spawn_pass_through().unwrap();
    gate.open();
    assert_eq!(
        take_ev(&sub, 3),
        vec![Ev::Done(busy.id()), Ev::Done(p.id()), Ev::Done(plain.id())]
    );
    assert_quiet(&m, &sub);
}

#[test]
fn add_pass_through_task_is_the_short_form() {
    let m = manager(2);
    let sub = m.subscribe();
    let (g1, g2) = (Gate::new(), Gate::new());
    let (u1, rx1) = add_gated_returning(&m, &g1, Kwargs::new().with("a", 1u8));
    let (u2, rx2) = add_gated_returning(&m, &g2, Kwargs::new().with("b", 2u8));
    wait_start(&rx1);
    wait_start(&rx2);
    let by_handles = m.add_pass_through_task([&u1, &u2]).unwrap();
    let by_ids = m.add_pass_through_task(vec![u1.id(), u2.id()]).unwrap();
    g2.open();
    completed(&sub, &u2);
    // Both still wait for u1.
    g1.open();
    completed(&sub, &u1);
    let mut rest = take(&sub, 2);
    rest.sort_by_key(id_of);
    for (e, p) in rest.iter().zip([&by_handles, &by_ids]) {
        match e {
            Event::Completed { id, result, .. } if *id == p.id() => {
                let k = result.downcast_ref::<Kwargs>().expect("a Kwargs result");
                assert_eq!(keys(k), ["a", "b"]);
                assert_eq!(k.get::<u8>("a"), Some(&1));
                assert_eq!(k.get::<u8>("b"), Some(&2));
            }
            other => panic!("expected Completed for {:?}, got {other:?}", p.id()),
        }
    }
    assert_quiet(&m, &sub);
}

#[test]
fn an_upstream_id_this_manager_never_issued_is_rejected_and_nothing_is_added() {
    let m = manager(1);
    let other = paused(1);
    let sub = m.subscribe();
    let first = m.add_task(noop).unwrap();
    assert_eq!(ev(&next(&sub)), Ev::Done(first.id()));
    // Ids of another manager: one whose number this manager also issued
    // (0), and one from this manager's future (5).
    let foreign: Vec<_> = (0..6).map(|_| other.add_task(noop).unwrap().id()).collect();
    let (same_number, future) = (foreign[0], foreign[5]);
    assert_eq!(same_number.as_u64(), first.id().as_u64());
    assert!(future.as_u64() > first.id().as_u64());

    let ran = Arc::new(AtomicBool::new(false));
    let body = || {
        let ran = Arc::clone(&ran);
        move |_: &TaskContext| {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, Infallible>(())
        }
    };
    for bad in [same_number, future] {
        let unknown = Error::UnknownTask { id: bad };
        assert_eq!(m.task().after([bad]).spawn(body()).unwrap_err(), unknown);
        // A valid upstream next to the bad one does not help.
        assert_eq!(
            m.task()
                .after([first.id(), bad])
                .priority(3)
                .spawn(body())
                .unwrap_err(),
            unknown
        );
        assert_eq!(
            m.task().after([bad]).spawn_pass_through().unwrap_err(),
            unknown
        );
        assert_eq!(m.add_pass_through_task([bad]).unwrap_err(), unknown);
    }
    // Nothing was added and no id was used.
    let second = m.add_task(noop).unwrap();
    assert_eq!(second.id().as_u64(), first.id().as_u64() + 1);
    assert_eq!(ev(&next(&sub)), Ev::Done(second.id()));
    assert_quiet(&m, &sub);
    assert!(!ran.load(Ordering::SeqCst), "a rejected task ran");
}
