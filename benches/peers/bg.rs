//! The workloads on bgtask. Outcomes reach the owner as `Subscription`
//! events; the manager is built before the timed region and shut down after.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgtask::{Event, Subscription, TaskId, TaskManager};

use crate::checks::{DagCheck, OrderCheck, RunCount, Tally, HANG};
use crate::sys::{idle_cpu_percent, Rendezvous};
use crate::{Latencies, MemoryUse, StopTimes};

/// The name in bgtask's panic messages.
const WHO: &str = "bgtask";

/// A manager with `threads` workers, processing or paused.
fn manager(threads: usize, processing: bool) -> TaskManager {
    TaskManager::builder()
        .max_threads(threads)
        .start_processing(processing)
        .build()
        .expect("build a bgtask manager")
}

/// The next event, or a panic naming the hang.
fn next_event(events: &Subscription, what: impl FnOnce() -> String) -> Event {
    match events.recv_timeout(HANG) {
        Ok(event) => event,
        Err(err) => panic!("{WHO}: {}: no event within {HANG:?}: {err}", what()),
    }
}

/// Receives events until every outcome `tally` expects arrived; tasks of
/// the workloads return their number as a `u32`.
fn drain(events: &Subscription, tally: &mut Tally) {
    while !tally.is_complete() {
        match next_event(events, || format!("{} outcomes received", tally.count())) {
            Event::Completed { result, .. } => {
                if let Some(&i) = result.downcast_ref::<u32>() {
                    tally.record(i);
                }
            }
            Event::Failed { id, message, .. } => panic!("{WHO}: task {id} failed: {message}"),
            _ => {}
        }
    }
}

/// Shuts the manager down, after checking it goes idle.
fn finish(manager: TaskManager) {
    assert!(
        manager.wait_idle(HANG),
        "{WHO}: the manager did not go idle within {HANG:?}"
    );
    manager.shut_down();
}

/// W1: `n` independent no-op tasks on 2 workers.
pub(crate) fn independent(n: usize) -> Duration {
    let manager = manager(2, true);
    let events = manager.subscribe();
    let mut tally = Tally::new(WHO, n);

    let start = Instant::now();
    for i in 0..n as u32 {
        manager
            .add_task(move |_| Ok::<_, Infallible>(i))
            .expect("add a task");
    }
    drain(&events, &mut tally);
    let elapsed = start.elapsed();

    finish(manager);
    elapsed
}

/// W2 and W3: the tasks of `graph` on 2 workers, each submitted by the
/// owner after its upstream tasks.
pub(crate) fn dag(check: &'static DagCheck) -> Duration {
    let graph = check.graph();
    check.reset();
    let manager = manager(2, true);
    let events = manager.subscribe();
    let mut tally = Tally::new(WHO, graph.len());
    let mut ids: Vec<TaskId> = Vec::with_capacity(graph.len());

    let start = Instant::now();
    for i in 0..graph.len() as u32 {
        let upstream = graph.upstream(i).iter().map(|&u| ids[u as usize]);
        let handle = manager
            .task()
            .after(upstream)
            .spawn(move |_| {
                check.run(i);
                Ok::<_, Infallible>(i)
            })
            .expect("add a task");
        ids.push(handle.id());
    }
    drain(&events, &mut tally);
    let elapsed = start.elapsed();

    finish(manager);
    check.verify(WHO);
    elapsed
}

/// W4: tasks with `priorities`, all added while paused, on 1 worker.
pub(crate) fn priority(priorities: &[i32]) -> Duration {
    let manager = manager(1, false);
    let events = manager.subscribe();
    let order = Arc::new(OrderCheck::new(priorities.len()));
    let mut tally = Tally::new(WHO, priorities.len());

    let start = Instant::now();
    for (i, &priority) in priorities.iter().enumerate() {
        let (order, i) = (Arc::clone(&order), i as u32);
        manager
            .task()
            .priority(priority)
            .spawn(move |_| {
                order.run(i);
                Ok::<_, Infallible>(i)
            })
            .expect("add a task");
    }
    manager.start_processing();
    drain(&events, &mut tally);
    let elapsed = start.elapsed();

    finish(manager);
    order.verify(WHO, priorities);
    elapsed
}

/// Adds one task per worker that blocks until released, and waits until
/// they all run.
fn hold_busy(manager: &TaskManager, workers: usize) -> crossbeam_channel::Sender<()> {
    let (release, released) = crossbeam_channel::unbounded::<()>();
    let (started, starts) = crossbeam_channel::unbounded::<()>();
    for _ in 0..workers {
        let (released, started) = (released.clone(), started.clone());
        manager
            .add_task(move |_| {
                let _ = started.send(());
                let _ = released.recv();
                Ok::<_, Infallible>(())
            })
            .expect("add a busy task");
    }
    for _ in 0..workers {
        starts
            .recv_timeout(HANG)
            .expect("bgtask: the busy tasks did not start");
    }
    release
}

/// W5: `n` tasks in `groups` groups (task `i` in group `i % groups`) queued
/// behind 2 busy workers; the even groups are stopped, then the rest drains.
pub(crate) fn stop(n: usize, groups: usize) -> StopTimes {
    let manager = manager(2, true);
    let events = manager.subscribe();
    let runs = Arc::new(RunCount::new(n));
    let is_stopped = |i: u32| (i as usize % groups) % 2 == 0;
    let live = (0..n as u32).filter(|&i| !is_stopped(i)).count();
    let mut tally = Tally::expecting(WHO, n, live);
    let group_ids: Vec<_> = (0..groups).map(|_| manager.next_group_id()).collect();

    let release = hold_busy(&manager, 2);
    for i in 0..n as u32 {
        let runs = Arc::clone(&runs);
        manager
            .task()
            .group(group_ids[i as usize % groups].clone())
            .spawn(move |_| {
                runs.run(i);
                Ok::<_, Infallible>(i)
            })
            .expect("add a task");
    }

    let start = Instant::now();
    let mut stopped = 0;
    for group in group_ids.iter().step_by(2) {
        stopped += manager.stop_task_group(group, false, false);
    }
    let stop = start.elapsed();
    assert_eq!(
        stopped,
        n - live,
        "{WHO}: stop_task_group reported {stopped} stopped tasks, expected {}",
        n - live
    );

    let start = Instant::now();
    drop(release);
    drain(&events, &mut tally);
    let drain = start.elapsed();

    finish(manager);
    runs.verify(WHO, is_stopped);
    StopTimes {
        stop,
        stopped,
        drain,
        drained: live,
    }
}

/// Memory: bytes allocated per task while `n` tasks sit queued in a paused
/// manager (handles dropped; the subscription exists).
pub(crate) fn memory(n: usize) -> MemoryUse {
    let manager = manager(2, false);
    let events = manager.subscribe();
    let mut tally = Tally::new(WHO, n);
    let closure = {
        let i = 0u32;
        std::mem::size_of_val(&move |_: &bgtask::TaskContext| Ok::<_, Infallible>(i))
    };

    let before = crate::allocated();
    for i in 0..n as u32 {
        manager
            .add_task(move |_| Ok::<_, Infallible>(i))
            .expect("add a task");
    }
    let after = crate::allocated();
    manager.start_processing();
    drain(&events, &mut tally);

    finish(manager);
    MemoryUse {
        per_task: (after as f64 - before as f64) / n as f64,
        closure,
    }
}

/// Latency: one task at a time on an idle manager with 2 workers.
pub(crate) fn latency(samples: usize, warm_up: usize) -> Latencies {
    let manager = manager(2, true);
    let events = manager.subscribe();
    let mut latencies = Latencies::default();
    for k in 0..warm_up + samples {
        let submitted = Instant::now();
        manager
            .add_task(|_| {
                let started = Instant::now();
                Ok::<_, Infallible>((started, Instant::now()))
            })
            .expect("add a task");
        let (started, finished) = loop {
            match next_event(&events, || "latency task".into()) {
                Event::Completed { result, .. } => {
                    break *result
                        .downcast_ref::<(Instant, Instant)>()
                        .expect("a latency result");
                }
                Event::Failed { id, message, .. } => panic!("{WHO}: task {id} failed: {message}"),
                _ => {}
            }
        };
        let received = Instant::now();
        if k >= warm_up {
            latencies.to_start.push(started - submitted);
            latencies.to_owner.push(received - finished);
        }
    }
    finish(manager);
    latencies
}

/// Idle CPU of a manager with `workers` workers that all started once.
pub(crate) fn idle(workers: usize, window: Duration) -> f64 {
    let manager = manager(workers, true);
    let events = manager.subscribe();
    let meeting = Arc::new(Rendezvous::new(workers));
    for _ in 0..workers {
        let meeting = Arc::clone(&meeting);
        manager
            .add_task(move |_| Ok::<_, Infallible>(meeting.meet()))
            .expect("add a task");
    }
    let mut met = 0;
    while met < workers {
        if let Event::Completed { result, .. } = next_event(&events, || "idle warm-up".into()) {
            assert_eq!(
                result.downcast_ref::<bool>(),
                Some(&true),
                "{WHO}: {workers} workers did not run at once"
            );
            met += 1;
        }
    }
    assert!(
        manager.wait_idle(HANG),
        "{WHO}: the manager did not go idle"
    );
    std::thread::sleep(Duration::from_millis(100));
    let percent = idle_cpu_percent(window);
    manager.shut_down();
    percent
}
