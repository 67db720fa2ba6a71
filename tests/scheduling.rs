//! SPEC section 2: scheduling. One test per rule, each named after it.

mod common;

use std::cmp::Reverse;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use bgtask::{Subscription, TaskContext, TaskId, TaskManager};
use common::*;

/// The ids of `Completed` events, panicking on any other event.
fn done_ids(events: &[Ev]) -> Vec<TaskId> {
    events
        .iter()
        .map(|e| match e {
            Ev::Done(id) => *id,
            other => panic!("expected Completed, got {other:?}"),
        })
        .collect()
}

#[test]
fn among_ready_tasks_highest_priority_first_and_equal_priorities_in_order_added() {
    let m = paused(1);
    let sub = m.subscribe();
    let log: Log = Log::default();
    // 60 tasks cycling through priorities 0, 1, -1: each level has 20 ties.
    let priorities = [0, 1, -1];
    let mut added = Vec::new();
    for i in 0..60 {
        let p = priorities[i % 3];
        added.push((p, add_logged(&m, &log, p)));
    }
    m.start_processing();
    let order = done_ids(&take_ev(&sub, 60));
    let mut expected = Vec::new();
    for p in [1, 0, -1] {
        expected.extend(added.iter().filter(|(q, _)| *q == p).map(|(_, id)| *id));
    }
    assert_eq!(order, expected, "events not in priority-then-FIFO order");
    assert_eq!(
        *log.lock().unwrap(),
        expected,
        "tasks did not run in that order"
    );
    assert_quiet(&m, &sub);
}

#[test]
fn highest_priority_runs_first_across_many_priorities_including_negative() {
    let m = paused(1);
    let sub = m.subscribe();
    let log: Log = Log::default();
    let priorities = [-5, 3, 0, -1, 10, i32::MIN, i32::MAX, 2, -100, 1];
    let added: Vec<(i32, TaskId)> = priorities
        .iter()
        .map(|&p| (p, add_logged(&m, &log, p)))
        .collect();
    m.start_processing();
    let order = done_ids(&take_ev(&sub, priorities.len()));
    let mut by_priority = added.clone();
    by_priority.sort_by_key(|(p, _)| Reverse(*p));
    let expected: Vec<TaskId> = by_priority.iter().map(|(_, id)| *id).collect();
    assert_eq!(order, expected);
    assert_eq!(*log.lock().unwrap(), expected);
    assert_quiet(&m, &sub);
}

#[test]
fn equal_priorities_run_in_the_order_added_even_when_released_late_by_an_upstream() {
    // The downstream is added before `a` and `b` but becomes ready only
    // after them: it still runs before them, as it was added first.
    let m = paused(1);
    let sub = m.subscribe();
    let log: Log = Log::default();
    let up = add_logged(&m, &log, 10);
    let down = m.task().after([up]).spawn(logger(&log)).unwrap().id();
    let a = add_logged(&m, &log, 0);
    let b = add_logged(&m, &log, 0);
    m.start_processing();
    let expected = vec![up, down, a, b];
    assert_eq!(done_ids(&take_ev(&sub, 4)), expected);
    assert_eq!(*log.lock().unwrap(), expected);
    assert_quiet(&m, &sub);
}

#[test]
fn a_task_blocked_on_its_upstream_never_holds_back_a_ready_task_of_lower_priority() {
    let m = manager(2);
    let sub = m.subscribe();
    let gate = Gate::new();
    let (up, up_rx) = add_blocker(&m, &gate);
    started(&up_rx);
    let log: Log = Log::default();
    let high = m
        .task()
        .priority(10)
        .after([&up])
        .spawn(logger(&log))
        .unwrap()
        .id();
    let low = add_logged(&m, &log, -5);
    // The gate is still closed: the high-priority task is blocked, and the
    // low-priority one must run and complete on the second worker anyway.
    assert_eq!(
        ev(&next(&sub)),
        Ev::Done(low),
        "the ready low-priority task was held back"
    );
    assert_eq!(*log.lock().unwrap(), vec![low]);
    gate.open();
    assert_eq!(take_ev(&sub, 2), vec![Ev::Done(up.id()), Ev::Done(high)]);
    assert_eq!(*log.lock().unwrap(), vec![low, high]);
    assert_quiet(&m, &sub);
}

/// One round of the immediate-start checks on a 1-worker manager: adds a
/// task that holds the worker, then, without waiting for it to start, one
/// of priority 10 and one of priority 5 (after the first if `graph`).
/// Checks that the first started first, lets it finish, and returns the
/// three ids in the order their events must come.
fn first_added_runs_first(m: &TaskManager, round: usize, graph: bool) -> Vec<Ev> {
    let gate = Gate::new();
    let (first, first_rx) = add_blocker(m, &gate);
    let high = m.task().priority(10).spawn(noop).unwrap();
    let mid = m.task().priority(5);
    let mid = if graph { mid.after([first.id()]) } else { mid };
    let mid = mid.spawn(noop).unwrap();
    assert_eq!(
        started(&first_rx),
        first.id(),
        "round {round}: the first task did not start at once"
    );
    gate.open();
    vec![
        Ev::Done(first.id()),
        Ev::Done(high.id()),
        Ev::Done(mid.id()),
    ]
}

#[test]
fn with_one_worker_the_first_task_added_runs_first_even_if_a_higher_priority_task_follows() {
    let m = manager(1);
    let sub = m.subscribe();
    // Other subscribers, never drained: the worker queues each event to
    // `sub` first, then to these, so the owner learns that a task ended
    // while its worker may still be finishing up. The worker is free by then.
    let _others: Vec<Subscription> = (0..1000).map(|_| m.subscribe()).collect();
    // Several rounds: the first spawns the worker, later ones find it free
    // right after the previous round's events were received.
    for round in 0..50 {
        let want = first_added_runs_first(&m, round, false);
        assert_eq!(take_ev(&sub, 3), want, "round {round}");
    }
    assert_quiet(&m, &sub);
}

#[test]
fn with_one_worker_a_task_added_right_after_a_graph_tasks_event_runs_first() {
    // As above, but the last task of each round has an upstream task, so it
    // ends through the graph, and the worker is held up right after it
    // queues an event: the notifier (called on the worker once the event
    // is visible, when it lands in a queue the owner found empty) keeps it
    // busy for 2 ms. The worker must have decided what to do next before
    // its task's event can be received, so the next round's first task,
    // added at once, goes to it and starts first, even though a task of
    // higher priority is added a moment later.
    let m = manager(1);
    let sub = m.subscribe();
    m.set_notifier(|| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
    });
    for round in 0..50 {
        let want = first_added_runs_first(&m, round, true);
        // `try_recv` (which arms the notifier), until three events came.
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        while got.len() < 3 {
            match sub.try_recv() {
                Ok(e) => got.push(ev(&e)),
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "round {round}: {got:?} within {TIMEOUT:?}"
                ),
            }
        }
        assert_eq!(got, want, "round {round}");
    }
    assert_quiet(&m, &sub);
}

/// Adds `tasks` tasks to `m` that each hold a worker until a gate opens
/// (calling `start_processing` after adding them if `start`), and checks
/// that exactly `max_threads` of them ran at once, never more.
fn check_concurrency_limit(m: &TaskManager, sub: &Subscription, tasks: usize, start: bool) {
    let threads = m.max_threads();
    let gate = Gate::new();
    let conc = Meter::default();
    let (tx, rx) = mpsc::channel();
    let mut ids = HashSet::new();
    for _ in 0..tasks {
        ids.insert(add_gated(m, &conc, &tx, &gate).id());
    }
    if start {
        m.start_processing();
    }
    for _ in 0..threads {
        rx.recv_timeout(TIMEOUT)
            .expect("fewer than max_threads tasks started");
    }
    // The first tasks hold every worker: no other may start.
    assert!(
        rx.try_recv().is_err(),
        "more than max_threads tasks started"
    );
    gate.open();
    let done: HashSet<TaskId> = take(sub, tasks).iter().map(id_of).collect();
    assert_eq!(done, ids);
    assert_eq!(conc.high(), threads, "high-water mark of concurrent tasks");
    assert_eq!(rx.try_iter().count(), tasks - threads);
    assert_quiet(m, sub);
}

#[test]
fn at_most_max_threads_tasks_run_at_once() {
    // Added while processing, to a pool with no worker yet.
    let m = manager(3);
    let sub = m.subscribe();
    check_concurrency_limit(&m, &sub, 12, false);
    // Again, to the same pool, now with three idle workers.
    check_concurrency_limit(&m, &sub, 12, false);

    // Added while paused, then all released at once by start_processing.
    let m = paused(3);
    let sub = m.subscribe();
    check_concurrency_limit(&m, &sub, 12, true);
}

#[test]
fn worker_threads_start_lazily_only_when_a_task_is_ready_and_no_worker_is_idle() {
    const PREFIX: &str = "sched-lazy";
    let m = TaskManager::builder()
        .max_threads(4)
        .thread_name(PREFIX)
        .build()
        .unwrap();
    let sub = m.subscribe();
    assert_eq!(count_threads(PREFIX), 0, "a worker exists before any task");
    m.start_processing();
    assert_eq!(
        count_threads(PREFIX),
        0,
        "processing on, no task: no worker yet"
    );

    // One ready task: exactly one worker.
    let gate = Gate::new();
    let (first, first_rx) = add_blocker(&m, &gate);
    started(&first_rx);
    assert_eq!(count_threads(PREFIX), 1);
    gate.open();
    assert_eq!(ev(&next(&sub)), Ev::Done(first.id()));
    assert!(m.wait_idle(TIMEOUT));

    // Sequential tasks find the idle worker: no new thread.
    for _ in 0..5 {
        let h = m.add_task(noop).unwrap();
        assert_eq!(ev(&next(&sub)), Ev::Done(h.id()));
        assert!(m.wait_idle(TIMEOUT));
    }
    assert_eq!(
        count_threads(PREFIX),
        1,
        "an idle worker existed; none may start"
    );

    // Ten held tasks: never more than max_threads workers.
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let mut ids = HashSet::new();
    for _ in 0..10 {
        let (gate, tx) = (gate.clone(), tx.clone());
        let h = m
            .add_task(move |ctx: &TaskContext| {
                let _ = tx.send(ctx.id());
                gate.wait();
                Ok::<_, Infallible>(())
            })
            .unwrap();
        ids.insert(h.id());
    }
    for _ in 0..4 {
        rx.recv_timeout(TIMEOUT)
            .expect("four held tasks did not start");
    }
    assert!(
        rx.try_recv().is_err(),
        "a fifth task started with 4 workers"
    );
    assert_eq!(count_threads(PREFIX), 4, "one worker per running task");
    gate.open();
    let done: HashSet<TaskId> = take(&sub, 10).iter().map(id_of).collect();
    assert_eq!(done, ids);
    assert!(m.wait_idle(TIMEOUT));
    assert_eq!(count_threads(PREFIX), 4, "at most max_threads workers");
    assert_quiet(&m, &sub);
}

#[test]
fn worker_threads_are_reused() {
    const PREFIX: &str = "sched-reuse";
    let m = TaskManager::builder()
        .max_threads(1)
        .thread_name(PREFIX)
        .start_processing(true)
        .build()
        .unwrap();
    let sub = m.subscribe();
    let seen: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
    for _ in 0..100 {
        let seen = Arc::clone(&seen);
        let h = m
            .add_task(move |_: &TaskContext| {
                seen.lock().unwrap().push(thread::current().id());
                Ok::<_, Infallible>(())
            })
            .unwrap();
        // Wait for each before adding the next: the worker goes idle between.
        assert_eq!(ev(&next(&sub)), Ev::Done(h.id()));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 100);
    assert_ne!(
        seen[0],
        thread::current().id(),
        "task ran on the owner thread"
    );
    assert!(
        seen.iter().all(|t| *t == seen[0]),
        "tasks ran on {} different threads",
        seen.iter().collect::<HashSet<_>>().len()
    );
    assert_eq!(count_threads(PREFIX), 1);
    assert_quiet(&m, &sub);
}

#[test]
fn pause_processing_starts_no_new_task_and_running_tasks_finish_with_their_events() {
    let m = manager(2);
    let sub = m.subscribe();
    let ran = Arc::new(AtomicUsize::new(0));
    let gate = Gate::new();
    let (running, running_rx) = add_blocker(&m, &gate);
    started(&running_rx);
    let counting = |p: i32| {
        let ran = Arc::clone(&ran);
        m.task()
            .priority(p)
            .spawn(move |_: &TaskContext| {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            })
            .unwrap()
            .id()
    };
    m.pause_processing();
    assert!(!m.is_processing());
    // Added while paused, with a worker free (a second may be started):
    // neither may start.
    let a = counting(0);
    let b = counting(5);
    gate.open();
    // The running task finishes and its event is delivered as normal.
    assert_eq!(ev(&next(&sub)), Ev::Done(running.id()));
    assert!(
        m.wait_idle(TIMEOUT),
        "paused manager with nothing running is idle"
    );
    assert_quiet(&m, &sub);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a task started while paused");

    m.start_processing();
    let done: HashSet<TaskId> = take(&sub, 2).iter().map(id_of).collect();
    assert_eq!(done, HashSet::from([a, b]));
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_quiet(&m, &sub);
}

#[test]
fn start_processing_resumes_in_priority_order() {
    let m = manager(1);
    let sub = m.subscribe();
    let log: Log = Log::default();
    let gate = Gate::new();
    let (running, running_rx) = add_blocker(&m, &gate);
    started(&running_rx);
    let queued_before_pause = add_logged(&m, &log, 1);
    m.pause_processing();
    let added: Vec<(i32, TaskId)> = [0, 3, -2, 3, 7, 1]
        .iter()
        .map(|&p| (p, add_logged(&m, &log, p)))
        .collect();
    gate.open();
    assert_eq!(ev(&next(&sub)), Ev::Done(running.id()));
    assert!(m.wait_idle(TIMEOUT));
    assert_quiet(&m, &sub);
    assert!(log.lock().unwrap().is_empty(), "a task ran while paused");

    m.start_processing();
    let mut all = added.clone();
    all.push((1, queued_before_pause));
    // Descending priority, ties in id (added) order.
    all.sort_by_key(|(p, id)| (Reverse(*p), *id));
    let expected: Vec<TaskId> = all.iter().map(|(_, id)| *id).collect();
    assert_eq!(done_ids(&take_ev(&sub, expected.len())), expected);
    assert_eq!(*log.lock().unwrap(), expected);
    assert_quiet(&m, &sub);
}

#[test]
fn scheduling_never_waits_for_the_owner_thread() {
    const N: usize = 1000;
    let m = manager(2);
    let sub = m.subscribe(); // not drained until the end
    let runs = Arc::new(AtomicUsize::new(0));
    let chain_log: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut independent = Vec::with_capacity(N);
    let mut chain = Vec::with_capacity(N);
    let mut prev: Option<TaskId> = None;
    for i in 0..N {
        let r = Arc::clone(&runs);
        let h = m
            .add_task(move |_: &TaskContext| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            })
            .unwrap();
        independent.push(h.id());

        let (r, log) = (Arc::clone(&runs), Arc::clone(&chain_log));
        let id = m
            .task()
            .after(prev)
            .spawn(move |_: &TaskContext| {
                r.fetch_add(1, Ordering::SeqCst);
                log.lock().unwrap().push(i);
                Ok::<_, Infallible>(())
            })
            .unwrap()
            .id();
        chain.push(id);
        prev = Some(id);
    }
    assert!(
        m.wait_idle(TIMEOUT),
        "tasks stalled while nobody drained events"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2 * N);
    assert_eq!(*chain_log.lock().unwrap(), (0..N).collect::<Vec<_>>());

    let events: Vec<Ev> = sub.try_iter().map(|e| ev(&e)).collect();
    assert_eq!(events.len(), 2 * N, "every event is queued, none lost");
    let ids = done_ids(&events);
    let all: HashSet<TaskId> = ids.iter().copied().collect();
    let expected: HashSet<TaskId> = independent.iter().chain(&chain).copied().collect();
    assert_eq!(all, expected);
    let chain_set: HashSet<TaskId> = chain.iter().copied().collect();
    let chain_order: Vec<TaskId> = ids
        .into_iter()
        .filter(|id| chain_set.contains(id))
        .collect();
    assert_eq!(
        chain_order, chain,
        "an upstream's event came after its downstream's"
    );
    assert_quiet(&m, &sub);
}

#[test]
fn a_finished_upstream_releases_its_downstream_at_once_without_the_owner_draining_events() {
    let m = manager(1);
    let sub = m.subscribe(); // never touched until both tasks ran
    let other = m.subscribe();
    let gate = Gate::new();
    let (up, up_rx) = add_blocker(&m, &gate);
    started(&up_rx);
    let (tx, rx) = mpsc::channel();
    let down = m
        .task()
        .after([&up])
        .spawn(move |ctx: &TaskContext| {
            let _ = tx.send(ctx.id());
            Ok::<_, Infallible>(())
        })
        .unwrap();
    gate.open();
    let ran = rx
        .recv_timeout(TIMEOUT)
        .expect("the downstream did not start while the upstream's event was undrained");
    assert_eq!(ran, down.id());
    assert!(m.wait_idle(TIMEOUT));
    let expected = vec![Ev::Done(up.id()), Ev::Done(down.id())];
    assert_eq!(take_ev(&sub, 2), expected);
    assert_eq!(take_ev(&other, 2), expected);
    assert_quiet(&m, &sub);
    assert_quiet(&m, &other);
}
