//! SPEC 7: events. Every subscriber gets every event in emission order; one
//! terminal event per task; upstream `Completed` first; nothing is lost; the
//! notifier wakes an empty queue once; subscriptions behave as channels.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, ThreadId};
use std::time::Duration;

use bgtask::{
    Event, Group, RecvError, RecvTimeoutError, TaskContext, TaskId, TaskManager, TryRecvError,
};
use common::*;

/// A small deterministic pseudo-random sequence (no global state).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound
    }
}

/// Busy work of a varying length, so that workers finish out of order.
fn spin(n: usize) -> usize {
    std::hint::black_box((0..n).fold(0usize, |a, b| a.wrapping_add(b)))
}

#[test]
fn every_subscriber_gets_every_event_in_the_same_order() {
    const TASKS: usize = 200;
    const GROUPS: u64 = 5;
    let m = paused(4);
    let subs = [m.subscribe(), m.subscribe(), m.subscribe()];
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let mut b = m.task().group(Group::from(i as u64 % GROUPS));
        if i % 7 == 3 {
            b = b.after([ids[i - 1]]);
        }
        let h = b
            .spawn(move |_: &TaskContext| -> Result<usize, String> {
                let v = spin((i * 7919) % 20_000);
                if i % 11 == 5 {
                    Err(format!("task {i} failed"))
                } else {
                    Ok(v)
                }
            })
            .unwrap();
        ids.push(h.id());
    }
    m.start_processing();
    // Each subscription is drained on its own thread, concurrently.
    let seqs: Vec<Vec<Ev>> = thread::scope(|s| {
        let handles: Vec<_> = subs
            .iter()
            .map(|sub| s.spawn(move || take_ev(sub, TASKS + GROUPS as usize)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for sub in &subs {
        assert_quiet(&m, sub);
    }
    assert_eq!(seqs[0], seqs[1]);
    assert_eq!(seqs[0], seqs[2]);
    let mut seen = HashSet::new();
    let mut groups = HashSet::new();
    for e in &seqs[0] {
        match e {
            Ev::Done(id) | Ev::Failed(id, _) => assert!(seen.insert(*id), "{id:?} twice"),
            Ev::GroupDone(g) => assert!(groups.insert(g.clone()), "{g:?} twice"),
        }
    }
    assert_eq!(seen, ids.iter().copied().collect());
    assert_eq!(groups.len(), GROUPS as usize);
}

#[test]
fn one_terminal_event_per_task_and_nothing_after_it() {
    const TASKS: usize = 300;
    let m = paused(4);
    let sub = m.subscribe();
    let mut rng = Lcg(7);
    let mut ids: Vec<TaskId> = Vec::new();
    let mut ups_of: Vec<Vec<usize>> = Vec::new();
    let mut fails_itself = Vec::new();
    for i in 0..TASKS {
        let kind = i % 6;
        let ups: Vec<usize> = match kind {
            3 if i > 0 => vec![rng.next(i)],
            4 if i > 1 => {
                let a = rng.next(i);
                let b = rng.next(i);
                vec![a, b]
            }
            _ => vec![],
        };
        let h = m
            .task()
            .after(ups.iter().map(|&u| ids[u]))
            .spawn(move |_: &TaskContext| -> Result<usize, String> {
                match kind {
                    1 => Err(format!("task {i} returned Err")),
                    2 => panic!("task {i} panicked"),
                    _ => Ok(spin((i * 31) % 5000)),
                }
            })
            .unwrap();
        ids.push(h.id());
        ups_of.push(ups);
        fails_itself.push(kind == 1 || kind == 2);
    }
    // Stop every 10th task while queued: it must produce no event at all.
    let mut stopped = vec![false; TASKS];
    for i in (0..TASKS).step_by(10) {
        assert_eq!(m.stop_task(ids[i], false, false), 1);
        stopped[i] = true;
    }
    // Expected outcome: a live task fails if it fails itself or a live
    // upstream fails (stopped upstream tasks are simply skipped).
    let mut fails = vec![false; TASKS];
    for i in 0..TASKS {
        fails[i] = fails_itself[i] || ups_of[i].iter().any(|&u| !stopped[u] && fails[u]);
    }
    m.start_processing();
    let live = stopped.iter().filter(|s| !**s).count();
    let events = take(&sub, live);
    assert_quiet(&m, &sub);

    let index: HashMap<TaskId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut count = vec![0usize; TASKS];
    for e in &events {
        let i = index[&id_of(e)];
        count[i] += 1;
        assert!(!stopped[i], "event for stopped task {i}: {e:?}");
        match e {
            Event::Completed { .. } => assert!(!fails[i], "task {i} should fail: {e:?}"),
            Event::Failed { .. } => assert!(fails[i], "task {i} should complete: {e:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 0..TASKS {
        let want = usize::from(!stopped[i]);
        assert_eq!(count[i], want, "task {i} had {} events", count[i]);
    }
}

#[test]
fn upstream_completed_comes_before_any_downstream_event() {
    const TASKS: usize = 400;
    let m = manager(4);
    let sub = m.subscribe();
    let mut rng = Lcg(42);
    let mut ids: Vec<TaskId> = Vec::new();
    let mut edges: Vec<(TaskId, TaskId)> = Vec::new();
    for i in 0..TASKS {
        let n_ups = if i == 0 { 0 } else { rng.next(4) };
        let lo = i.saturating_sub(20);
        let ups: Vec<TaskId> = (0..n_ups).map(|_| ids[lo + rng.next(i - lo)]).collect();
        let b = m.task().after(ups.clone());
        let h = if i % 9 == 8 {
            b.spawn_pass_through().unwrap().id()
        } else {
            b.spawn(move |_: &TaskContext| Ok::<_, Infallible>(spin((i * 131) % 10_000)))
                .unwrap()
                .id()
        };
        for u in ups {
            edges.push((u, h));
        }
        ids.push(h);
    }
    let events = take(&sub, TASKS);
    assert_quiet(&m, &sub);
    let mut pos = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert!(
            matches!(e, Event::Completed { .. }),
            "every task completes: {e:?}"
        );
        assert!(pos.insert(id_of(e), i).is_none(), "two events for {e:?}");
    }
    assert_eq!(pos.len(), TASKS);
    assert!(!edges.is_empty());
    for (up, down) in edges {
        assert!(
            pos[&up] < pos[&down],
            "upstream {up:?} at {} after downstream {down:?} at {}",
            pos[&up],
            pos[&down]
        );
    }
}

/// No-op graph tasks on several workers end back to back, so most of
/// their ends find the scheduler lock taken and are decided by another
/// worker on their behalf. Nothing may change for the owner: every task
/// completes once, with its own result, after its upstream tasks' events;
/// and once `wait_idle` returns, every event is already in the queue.
#[test]
fn graph_ends_decided_by_another_worker_keep_every_event_and_its_order() {
    const LAYERS: usize = 30;
    const WIDTH: usize = 40;
    let mut rng = Lcg(7);
    for round in 0..10 {
        let m = paused(4);
        let sub = m.subscribe();
        let mut ids: Vec<TaskId> = Vec::new();
        let mut edges: Vec<(TaskId, TaskId)> = Vec::new();
        for i in 0..LAYERS * WIDTH {
            let ups: Vec<TaskId> = if i < WIDTH {
                Vec::new()
            } else {
                let base = (i / WIDTH - 1) * WIDTH;
                vec![ids[base + rng.next(WIDTH)], ids[base + rng.next(WIDTH)]]
            };
            let id = m
                .task()
                .after(ups.clone())
                .spawn(move |_: &TaskContext| Ok::<_, Infallible>(i))
                .unwrap()
                .id();
            edges.extend(ups.into_iter().map(|u| (u, id)));
            ids.push(id);
        }
        m.start_processing();
        assert!(m.wait_idle(TIMEOUT), "round {round}: not idle in time");
        // Idle means every task's event is queued (manager race 2).
        let events: Vec<Event> = sub.try_iter().collect();
        assert_eq!(
            events.len(),
            ids.len(),
            "round {round}: events queued when idle"
        );
        let index: HashMap<TaskId, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut pos = HashMap::new();
        for (at, e) in events.iter().enumerate() {
            let Event::Completed { id, result, .. } = e else {
                panic!("round {round}: unexpected {e:?}");
            };
            assert_eq!(
                result.downcast_ref::<usize>(),
                Some(&index[id]),
                "round {round}: its own result"
            );
            assert!(
                pos.insert(*id, at).is_none(),
                "round {round}: two events for {id:?}"
            );
        }
        for (up, down) in &edges {
            assert!(
                pos[up] < pos[down],
                "round {round}: upstream {up:?} after downstream {down:?}"
            );
        }
        assert_quiet(&m, &sub);
    }
}

#[test]
fn upstream_failed_comes_before_downstream_failed() {
    let m = manager(4);
    let sub = m.subscribe();
    let gate = Gate::new();
    let g2 = gate.clone();
    let root = m
        .add_task(move |_: &TaskContext| -> Result<(), &str> {
            g2.wait();
            Err("root failed")
        })
        .unwrap();
    let mut ids = vec![root.id()];
    let mut edges = Vec::new();
    for i in 1..30usize {
        let up = ids[(i - 1) / 2];
        let h = m.task().after([up]).spawn(noop).unwrap().id();
        edges.push((up, h));
        ids.push(h);
    }
    gate.open();
    let events = take(&sub, ids.len());
    assert_quiet(&m, &sub);
    let pos: HashMap<TaskId, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (id_of(e), i))
        .collect();
    assert_eq!(pos.len(), ids.len());
    for (up, down) in edges {
        assert!(pos[&up] < pos[&down], "{up:?} after {down:?}");
    }
}

#[test]
fn no_event_is_lost_when_the_owner_is_slow() {
    const N: usize = 10_000;
    let m = manager(4);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut ids = HashSet::with_capacity(N);
    for i in 0..N {
        let ran = Arc::clone(&ran);
        let h = m
            .add_task(move |_: &TaskContext| {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(i)
            })
            .unwrap();
        ids.insert(h.id());
    }
    assert!(m.wait_idle(TIMEOUT), "tasks did not finish");
    assert_eq!(ran.load(Ordering::SeqCst), N, "all ran before any recv");
    for e in take(&sub, N) {
        match &e {
            Event::Completed { id, result, .. } => {
                assert!(ids.remove(id), "unexpected or duplicate {e:?}");
                assert!(result.downcast_ref::<usize>().is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ids.is_empty(), "{} events lost", ids.len());
    assert_quiet(&m, &sub);
}

#[test]
fn notifier_is_called_once_per_empty_queue() {
    const N: usize = 50;
    let m = manager(1);
    let sub = m.subscribe();
    let calls = Arc::new(AtomicUsize::new(0));
    let (wake, woken) = mpsc::channel::<()>();
    {
        let calls = Arc::clone(&calls);
        m.set_notifier(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = wake.send(());
        });
    }
    let ids: Vec<TaskId> = (0..N).map(|_| m.add_task(noop).unwrap().id()).collect();
    // The single worker runs the sentinel only after the 50 tasks ended and
    // their events were queued (and any notifier call made).
    let gate = Gate::new();
    let (sentinel, sentinel_rx) = add_blocker(&m, &gate);
    started(&sentinel_rx);
    woken
        .recv_timeout(TIMEOUT)
        .expect("notifier was not called for the first event");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "notifier called for events joining a non-empty queue"
    );
    assert_eq!(woken.try_iter().count(), 0);

    let drained: Vec<Ev> = sub.try_iter().map(|e| ev(&e)).collect();
    assert_eq!(
        drained,
        ids.iter().map(|id| Ev::Done(*id)).collect::<Vec<_>>()
    );
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    gate.open();
    woken
        .recv_timeout(TIMEOUT)
        .expect("notifier was not called after the queue was drained");
    assert_eq!(ev(&next(&sub)), Ev::Done(sentinel.id()));
    assert_quiet(&m, &sub);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The first event queued after `set_notifier` returns calls the new
/// notifier. Here the first task's event took the subscription's arm while
/// no notifier was set. The same happens when a worker's protocol step
/// (its swap of the arm, just after it queued an event) lands after the
/// owner received that event and drained its queue to empty: before
/// `set_notifier` re-armed every queue, the next event then landed in a
/// queue its owner had drained, and the notifier was never called
/// (`tests/stress.rs` `a_panicking_notifier_does_not_kill_a_worker` timed
/// out so, RELIABILITY.md finding 21).
#[test]
fn the_first_event_after_set_notifier_calls_it() {
    let m = manager(1);
    let sub = m.subscribe();
    let first = m.add_task(noop).unwrap().id();
    // Its event is queued (and its sender's protocol step done).
    assert!(m.wait_idle(TIMEOUT));
    let (wake, woken) = mpsc::channel::<()>();
    m.set_notifier(move || {
        let _ = wake.send(());
    });
    let second = m.add_task(noop).unwrap().id();
    woken
        .recv_timeout(TIMEOUT)
        .expect("the first event after set_notifier did not call it");
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(woken.try_iter().count(), 0, "called more than once");
    let drained: Vec<Ev> = sub.try_iter().map(|e| ev(&e)).collect();
    assert_eq!(drained, [Ev::Done(first), Ev::Done(second)]);

    // Drained to empty: the next event calls it again, once.
    let third = m.add_task(noop).unwrap().id();
    woken
        .recv_timeout(TIMEOUT)
        .expect("the notifier was not called after the queue was drained");
    assert_eq!(ev(&next(&sub)), Ev::Done(third));
    assert_quiet(&m, &sub);
    assert_eq!(woken.try_iter().count(), 0, "called more than once");
}

#[test]
fn panicking_notifier_is_contained() {
    let m = TaskManager::builder()
        .max_threads(1)
        .thread_name("ev-notify-pan")
        .start_processing(true)
        .build()
        .unwrap();
    let sub = m.subscribe();
    let (wake, woken) = mpsc::channel::<()>();
    m.set_notifier(move || {
        let _ = wake.send(());
        panic!("notifier panics on purpose");
    });
    let worker_of = |m: &TaskManager| {
        m.add_task(|_: &TaskContext| Ok::<_, Infallible>(thread::current().id()))
            .unwrap()
            .id()
    };
    let mut workers: Vec<ThreadId> = Vec::new();
    for round in 0..3 {
        let id = worker_of(&m);
        woken
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("notifier not called in round {round}"));
        match next(&sub) {
            Event::Completed {
                id: got, result, ..
            } => {
                assert_eq!(got, id);
                workers.push(*result.downcast_ref::<ThreadId>().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
        // Drain to empty so that the next event calls the notifier again.
        assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
    }
    assert!(workers.iter().all(|w| *w == workers[0]), "{workers:?}");
    assert!(m.wait_idle(TIMEOUT));
    assert_threads("ev-notify-pan", 1);
    assert_quiet(&m, &sub);
}

#[test]
fn subscription_methods_behave_like_a_channel() {
    let m = paused(1);
    let sub = m.subscribe();
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(20)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    assert_eq!(sub.try_iter().count(), 0);

    let ids: Vec<TaskId> = (0..4u32)
        .map(|i| {
            m.add_task(move |_: &TaskContext| Ok::<_, Infallible>(i))
                .unwrap()
                .id()
        })
        .collect();
    m.start_processing();
    assert!(m.wait_idle(TIMEOUT));
    // Everything is queued now: recv does not block.
    assert_eq!(id_of(&sub.recv().unwrap()), ids[0]);
    assert_eq!(id_of(&sub.try_recv().unwrap()), ids[1]);
    assert_eq!(id_of(&sub.recv_timeout(TIMEOUT).unwrap()), ids[2]);
    let rest: Vec<TaskId> = sub.try_iter().map(|e| id_of(&e)).collect();
    assert_eq!(rest, [ids[3]]);
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(20)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
}

#[test]
fn after_shut_down_subscriptions_are_disconnected() {
    let m = manager(2);
    let sub = m.subscribe();
    let other = m.subscribe();
    m.add_task(noop).unwrap();
    assert!(m.wait_idle(TIMEOUT));
    // Its event is queued but never delivered once shut down.
    m.shut_down();
    assert_eq!(sub.try_recv().unwrap_err(), TryRecvError::Disconnected);
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(20)).unwrap_err(),
        RecvTimeoutError::Disconnected
    );
    assert_eq!(sub.try_iter().count(), 0);
    // recv must return at once; run it elsewhere so a hang fails the test.
    assert_eq!(recv_on_helper(other), Err(RecvError));
    // A subscription made after shut down is disconnected too.
    let late = m.subscribe();
    assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Disconnected);
}

#[test]
fn late_subscription_misses_earlier_events() {
    let m = manager(1);
    let early = m.subscribe();
    let a = m.add_task(noop).unwrap();
    assert!(m.wait_idle(TIMEOUT));
    // `a`'s event was emitted (and still waits in `early`).
    let late = m.subscribe();
    let b = m.add_task(noop).unwrap();
    assert_eq!(take_ev(&late, 1), [Ev::Done(b.id())]);
    assert_quiet(&m, &late);
    assert_eq!(take_ev(&early, 2), [Ev::Done(a.id()), Ev::Done(b.id())]);
    assert_quiet(&m, &early);
}

#[test]
fn dropping_a_subscription_does_not_disturb_others() {
    const FIRST: usize = 50;
    const SECOND: usize = 150;
    let m = paused(4);
    let keep1 = m.subscribe();
    let dropped = m.subscribe();
    let keep2 = m.subscribe();
    let g = Group::from("drop-sub");
    for i in 0..FIRST {
        m.task()
            .group(&g)
            .spawn(move |_: &TaskContext| Ok::<_, Infallible>(spin(i * 100)))
            .unwrap();
    }
    // All members are added before any runs: the group finishes once.
    m.start_processing();
    // Half-drain the doomed subscription, then drop it with events queued
    // while the pool keeps emitting.
    let _ = take(&dropped, FIRST / 2);
    for i in 0..SECOND {
        m.add_task(move |_: &TaskContext| Ok::<_, Infallible>(spin(i * 100)))
            .unwrap();
    }
    drop(dropped);
    let a = take_ev(&keep1, FIRST + 1 + SECOND);
    let b = take_ev(&keep2, FIRST + 1 + SECOND);
    assert_eq!(a, b);
    let finished: Vec<_> = a.iter().filter(|e| matches!(e, Ev::GroupDone(_))).collect();
    assert_eq!(finished, [&Ev::GroupDone(g)]);
    assert_quiet(&m, &keep1);
    assert_quiet(&m, &keep2);
    // The manager still works after a subscription went away.
    let c = m.add_task(noop).unwrap();
    assert_eq!(take_ev(&keep1, 1), [Ev::Done(c.id())]);
    assert_eq!(take_ev(&keep2, 1), [Ev::Done(c.id())]);
}
