//! The workloads on the peers, emulating what they lack the way their users
//! would: atomic dependency counters, a shared priority heap, cancel flags.
//!
//! Every task's outcome travels back to the owner (the main thread) on a
//! crossbeam channel, and the owner receives them all before the time stops.
//! Pools are built before the timed region and shut down after it.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::checks::{DagCheck, OrderCheck, RunCount, Tally, HANG};
use crate::pools::{Contender, Job, Pool, Spawner};
use crate::sys::{idle_cpu_percent, Rendezvous};
use crate::{Latencies, MemoryUse, StopTimes};

/// W1: `n` independent no-op tasks on 2 workers.
pub(crate) fn independent(kind: Contender, n: usize) -> Duration {
    let pool = Pool::new(kind, 2);
    let spawner = pool.spawner().clone();
    let (outcomes, results) = unbounded::<u32>();
    let mut tally = Tally::new(kind.name(), n);

    let start = Instant::now();
    for i in 0..n as u32 {
        let outcomes = outcomes.clone();
        spawner.spawn(move || {
            let _ = outcomes.send(i);
        });
    }
    tally.drain(&results);
    let elapsed = start.elapsed();

    drop((spawner, outcomes));
    pool.shut_down();
    elapsed
}

/// A dependency graph being run on a peer: remaining-upstream counters, and
/// a finishing task submits the downstream tasks whose counter reaches zero.
struct PeerDag {
    check: &'static DagCheck,
    down_offsets: Vec<u32>,
    down: Vec<u32>,
    remaining: Vec<AtomicU32>,
    spawner: Spawner,
    outcomes: Sender<u32>,
}

impl PeerDag {
    /// Runs task `i`, reports it, and submits the downstream tasks it freed.
    fn run(self: Arc<Self>, i: u32) {
        self.check.run(i);
        let _ = self.outcomes.send(i);
        let i = i as usize;
        for &d in &self.down[self.down_offsets[i] as usize..self.down_offsets[i + 1] as usize] {
            if self.remaining[d as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                let dag = Arc::clone(&self);
                self.spawner.spawn(move || dag.run(d));
            }
        }
    }
}

/// W2 and W3: the tasks of `graph` on 2 workers, each after its upstream.
pub(crate) fn dag(kind: Contender, check: &'static DagCheck) -> Duration {
    let graph = check.graph();
    check.reset();
    let pool = Pool::new(kind, 2);
    let (outcomes, results) = unbounded::<u32>();
    let mut tally = Tally::new(kind.name(), graph.len());

    let start = Instant::now();
    let (down_offsets, down, remaining) = graph.downstream();
    let dag = Arc::new(PeerDag {
        check,
        down_offsets,
        down,
        remaining,
        spawner: pool.spawner().clone(),
        outcomes,
    });
    for i in 0..graph.len() as u32 {
        if graph.upstream(i).is_empty() {
            let dag2 = Arc::clone(&dag);
            dag.spawner.spawn(move || dag2.run(i));
        }
    }
    tally.drain(&results);
    let elapsed = start.elapsed();

    drop(dag);
    pool.shut_down();
    check.verify(kind.name());
    elapsed
}

/// An entry of the shared priority heap: higher priority first, then
/// earlier submission.
struct Queued {
    priority: i32,
    seq: u32,
    job: Job,
}

impl Queued {
    fn key(&self) -> (i32, Reverse<u32>) {
        (self.priority, Reverse(self.seq))
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.key().cmp(&other.key())
    }
}

/// W4: tasks with `priorities`, submitted to a shared heap while "paused"
/// (before any job signal), then one job signal per task on 1 worker; each
/// signal runs the heap's current top.
pub(crate) fn priority(kind: Contender, priorities: &[i32]) -> Duration {
    let n = priorities.len();
    let pool = Pool::new(kind, 1);
    let spawner = pool.spawner().clone();
    let (outcomes, results) = unbounded::<u32>();
    let order = Arc::new(OrderCheck::new(n));
    let mut tally = Tally::new(kind.name(), n);
    let heap: Arc<Mutex<BinaryHeap<Queued>>> = Arc::default();

    let start = Instant::now();
    for (i, &priority) in priorities.iter().enumerate() {
        let (order, outcomes, seq) = (Arc::clone(&order), outcomes.clone(), i as u32);
        let job: Job = Box::new(move || {
            order.run(seq);
            let _ = outcomes.send(seq);
        });
        heap.lock()
            .expect("heap lock")
            .push(Queued { priority, seq, job });
    }
    for _ in 0..n {
        let heap = Arc::clone(&heap);
        spawner.spawn(move || {
            let top = heap.lock().expect("heap lock").pop();
            if let Some(top) = top {
                (top.job)();
            }
        });
    }
    tally.drain(&results);
    let elapsed = start.elapsed();

    drop((spawner, outcomes));
    pool.shut_down();
    order.verify(kind.name(), priorities);
    elapsed
}

/// Holds a pool's `workers` busy until released.
struct Busy {
    release: Sender<()>,
}

impl Busy {
    /// Submits one blocking job per worker and waits until all of them run.
    fn hold(spawner: &Spawner, workers: usize) -> Busy {
        let (release, released) = unbounded::<()>();
        let (started, starts) = unbounded::<()>();
        for _ in 0..workers {
            let (released, started) = (released.clone(), started.clone());
            spawner.spawn(move || {
                let _ = started.send(());
                let _ = released.recv();
            });
        }
        for _ in 0..workers {
            starts
                .recv_timeout(HANG)
                .expect("the busy jobs did not start");
        }
        Busy { release }
    }

    /// Lets the busy jobs end.
    fn release(self) {
        drop(self.release);
    }
}

/// W5's shared state on a peer: a cancel flag per group, checked when a job
/// starts, and the per-task run count.
struct Cancellable {
    cancelled: Vec<AtomicBool>,
    runs: RunCount,
}

/// W5: `n` tasks in `groups` groups (task `i` in group `i % groups`) queued
/// behind 2 busy workers; the even groups are stopped, then the rest drains.
pub(crate) fn stop(kind: Contender, n: usize, groups: usize) -> StopTimes {
    let pool = Pool::new(kind, 2);
    let spawner = pool.spawner().clone();
    let (outcomes, results) = unbounded::<u32>();
    let shared = Arc::new(Cancellable {
        cancelled: (0..groups).map(|_| AtomicBool::new(false)).collect(),
        runs: RunCount::new(n),
    });
    let is_stopped = |i: u32| (i as usize % groups) % 2 == 0;
    let live = (0..n as u32).filter(|&i| !is_stopped(i)).count();
    let mut tally = Tally::expecting(kind.name(), n, live);

    let busy = Busy::hold(&spawner, 2);
    for i in 0..n as u32 {
        let (shared, outcomes) = (Arc::clone(&shared), outcomes.clone());
        spawner.spawn(move || {
            if shared.cancelled[i as usize % shared.cancelled.len()].load(Ordering::Acquire) {
                return;
            }
            shared.runs.run(i);
            let _ = outcomes.send(i);
        });
    }

    let start = Instant::now();
    for group in (0..groups).step_by(2) {
        shared.cancelled[group].store(true, Ordering::Release);
    }
    let stop = start.elapsed();

    let start = Instant::now();
    busy.release();
    tally.drain(&results);
    let drain = start.elapsed();

    drop((spawner, outcomes));
    pool.shut_down();
    shared.runs.verify(kind.name(), is_stopped);
    StopTimes {
        stop,
        stopped: n - live,
        drain,
        drained: live,
    }
}

/// A peer's job as the memory measurement queues it: the task number and
/// the channel to the owner.
fn memory_job(i: u32, outcomes: Sender<u32>) -> impl FnOnce() + Send + 'static {
    move || {
        let _ = outcomes.send(i);
    }
}

/// Memory: bytes allocated per task while `n` tasks sit queued behind 2
/// busy workers.
pub(crate) fn memory(kind: Contender, n: usize) -> MemoryUse {
    let pool = Pool::new(kind, 2);
    let spawner = pool.spawner().clone();
    let (outcomes, results) = unbounded::<u32>();
    let mut tally = Tally::new(kind.name(), n);
    let closure = std::mem::size_of_val(&memory_job(0, outcomes.clone()));

    let busy = Busy::hold(&spawner, 2);
    let before = crate::allocated();
    for i in 0..n as u32 {
        spawner.spawn(memory_job(i, outcomes.clone()));
    }
    let after = crate::allocated();
    busy.release();
    tally.drain(&results);

    drop((spawner, outcomes));
    pool.shut_down();
    MemoryUse {
        per_task: (after as f64 - before as f64) / n as f64,
        closure,
    }
}

/// Latency: one task at a time on an idle pool of 2 workers.
pub(crate) fn latency(kind: Contender, samples: usize, warm_up: usize) -> Latencies {
    let pool = Pool::new(kind, 2);
    let spawner = pool.spawner().clone();
    let (outcomes, results): (Sender<(Instant, Instant)>, Receiver<_>) = unbounded();
    let mut latencies = Latencies::default();
    for k in 0..warm_up + samples {
        let outcomes = outcomes.clone();
        let submitted = Instant::now();
        spawner.spawn(move || {
            let started = Instant::now();
            let _ = outcomes.send((started, Instant::now()));
        });
        let (started, finished) = results
            .recv_timeout(HANG)
            .expect("a latency task never reported");
        let received = Instant::now();
        if k >= warm_up {
            latencies.to_start.push(started - submitted);
            latencies.to_owner.push(received - finished);
        }
    }
    drop((spawner, outcomes));
    pool.shut_down();
    latencies
}

/// Idle CPU of the floor with `workers` threads that all started once.
pub(crate) fn idle(workers: usize, window: Duration) -> f64 {
    let pool = Pool::new(Contender::Floor, workers);
    let spawner = pool.spawner().clone();
    let meeting = Arc::new(Rendezvous::new(workers));
    let (outcomes, results) = unbounded::<bool>();
    for _ in 0..workers {
        let (meeting, outcomes) = (Arc::clone(&meeting), outcomes.clone());
        spawner.spawn(move || {
            let _ = outcomes.send(meeting.meet());
        });
    }
    for _ in 0..workers {
        assert!(
            results.recv_timeout(HANG).expect("idle warm-up"),
            "floor: {workers} workers did not run at once"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let percent = idle_cpu_percent(window);
    drop((spawner, outcomes));
    pool.shut_down();
    percent
}
