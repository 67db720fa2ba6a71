//! One workload shape, run once, for profilers: `perf record` and
//! `valgrind --tool=callgrind` count what a shape costs per task without
//! the peers and the rounds of `benches/peers.rs` around it.
//!
//! ```sh
//! cargo bench --bench shapes -- w1 100000       # independent tasks
//! cargo bench --bench shapes -- chain 20000     # each after the previous
//! cargo bench --bench shapes -- dag 20000       # layers of 1,000, each after 2
//! cargo bench --bench shapes -- priority 100000 # random priorities, 1 worker
//! cargo bench --bench shapes -- w3 100000       # W3 as the peers bench runs it
//! cargo bench --bench shapes -- w3-split 100000 # W3's parts, one at a time
//! cargo bench --bench shapes -- w5 200000       # W5: stop half of 100 groups
//! valgrind --tool=callgrind target/release/deps/shapes-<hash> dag 20000
//! ```
//!
//! It prints the time per task of the one run (not a benchmark: the
//! figures to compare are in `cargo bench --bench peers`).
//!
//! `w3` and `w3-split` are for timing, not for callgrind: `w3` adds layers
//! of 1,000 tasks, each after 2 random tasks of the previous layer, to a
//! processing manager, then receives every event, as the peers bench's W3
//! does, and prints the owner's and the workers' CPU time per task (from
//! `/proc`, on Linux). `w3-split` runs the same graph in three separate
//! steps: adding it while paused, running it (`start_processing` to
//! `wait_idle`) while nobody receives, then receiving every event.
//! `SHAPES_WORKERS=1` runs either with one worker.
//!
//! `w5` queues its tasks in 100 groups behind two workers held busy, stops
//! every other group (timed on its own: under callgrind, the inclusive
//! count of `stop_task_group` over the number stopped is the instructions
//! per stopped task), then releases the workers and drains the rest.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bgtask::{Event, TaskId, TaskManager};

/// Runs `shape` with `n` tasks; returns the time from the first add to the
/// last event received.
fn run(shape: &str, n: usize) -> Duration {
    let workers = if shape == "priority" { 1 } else { 2 };
    let manager = TaskManager::builder()
        .max_threads(workers)
        .start_processing(shape != "priority")
        .build()
        .expect("build a manager");
    let events = manager.subscribe();
    let mut ids: Vec<TaskId> = Vec::with_capacity(n);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let start = Instant::now();
    for i in 0..n {
        let task = manager.task();
        let task = match shape {
            "w1" => task,
            "chain" => task.after(ids.last().copied()),
            "dag" if i >= 1000 => {
                let layer = i / 1000 - 1;
                let j = i % 1000;
                task.after([ids[layer * 1000 + j], ids[layer * 1000 + (j + 1) % 1000]])
            }
            "dag" => task,
            "priority" => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                task.priority((x % 201) as i32 - 100)
            }
            other => panic!("unknown shape {other:?}: w1, chain, dag or priority"),
        };
        let handle = task
            .spawn(move |_| Ok::<_, Infallible>(i as u32))
            .expect("add a task");
        ids.push(handle.id());
    }
    manager.start_processing();
    let mut completed = 0;
    while completed < n {
        match events.recv_timeout(Duration::from_secs(60)) {
            Ok(Event::Completed { .. }) => completed += 1,
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(err) => panic!("no event within 60 s: {err}"),
        }
    }
    let elapsed = start.elapsed();
    manager.shut_down();
    elapsed
}

/// Upstream pairs of a W3-like graph of `n` tasks: layers of 1,000, each
/// task after 2 distinct random tasks of the previous layer.
fn w3_graph(n: usize) -> Vec<Option<[usize; 2]>> {
    const WIDTH: u64 = 1000;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m) as usize
    };
    (0..n)
        .map(|i| {
            let layer = i / WIDTH as usize;
            (layer > 0).then(|| {
                let base = (layer - 1) * WIDTH as usize;
                let a = rnd(WIDTH);
                let b = (a + 1 + rnd(WIDTH - 1)) % WIDTH as usize;
                [base + a, base + b]
            })
        })
        .collect()
}

/// Adds the next task of a W3-like graph, after its upstream pair `up`
/// (indices into `ids`), as the peers bench does; records its id.
fn add_w3_task(manager: &TaskManager, ids: &mut Vec<TaskId>, up: &Option<[usize; 2]>) {
    let i = ids.len() as u32;
    let task = manager.task();
    let task = match up {
        Some([a, b]) => task.after([ids[*a], ids[*b]]),
        None => task,
    };
    let handle = task
        .spawn(move |_| Ok::<_, Infallible>(i))
        .expect("add a task");
    ids.push(handle.id());
}

/// Runs `w3` (`split` false) or `w3-split` with `n` tasks and prints what
/// it measured.
fn run_w3(n: usize, split: bool) {
    let workers = std::env::var("SHAPES_WORKERS").map_or(2, |w| w.parse().expect("a worker count"));
    let graph = w3_graph(n);
    let manager = TaskManager::builder()
        .max_threads(workers)
        .start_processing(!split)
        .build()
        .expect("build a manager");
    let events = manager.subscribe();
    let mut ids: Vec<TaskId> = Vec::with_capacity(n);
    let cpu_before = cpu_times();
    let start = Instant::now();
    for up in &graph {
        add_w3_task(&manager, &mut ids, up);
    }
    let added = start.elapsed();
    if split {
        manager.start_processing();
        assert!(
            manager.wait_idle(Duration::from_secs(60)),
            "not idle within 60 s"
        );
    }
    let ran = start.elapsed();
    for _ in 0..n {
        match events.recv_timeout(Duration::from_secs(60)) {
            Ok(Event::Completed { .. }) => {}
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(err) => panic!("no event within 60 s: {err}"),
        }
    }
    let total = start.elapsed();
    let cpu_after = cpu_times();
    manager.shut_down();
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    if split {
        println!(
            "w3-split, {workers} worker(s): {n} tasks; add while paused {:.0} ns, run {:.0} ns, receive {:.0} ns per task",
            per(added),
            per(ran - added),
            per(total - ran)
        );
    } else {
        println!(
            "w3, {workers} worker(s): {n} tasks in {total:?} ({:.0} ns per task; adding {:.0} ns per task)",
            per(total),
            per(added)
        );
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "  CPU per task: owner {:.0} ns, workers {:.0} ns",
            per(after.0.saturating_sub(before.0)),
            per(after.1.saturating_sub(before.1))
        );
    }
}

/// Runs `w3-linked`: the W3 graph a layer at a time, each layer added
/// while paused after the workers ran the one before (its events left
/// undelivered, as in W3 while the owner adds), so that every add links to
/// upstream tasks that finished on a worker: the owner's add in the rounds
/// of W3 where the workers keep up, without the hand-outs. Prints the
/// owner's time per add. (Not its CPU time: `/proc`'s figure is updated at
/// scheduling events, too seldom for spans this short.)
fn run_w3_linked(n: usize) {
    const WIDTH: usize = 1000;
    let graph = w3_graph(n);
    let manager = TaskManager::builder()
        .max_threads(2)
        .start_processing(false)
        .build()
        .expect("build a manager");
    let events = manager.subscribe();
    let mut ids: Vec<TaskId> = Vec::with_capacity(n);
    let mut wall = Duration::ZERO;
    for layer in graph.chunks(WIDTH) {
        let start = Instant::now();
        for up in layer {
            add_w3_task(&manager, &mut ids, up);
        }
        wall += start.elapsed();
        manager.start_processing();
        assert!(
            manager.wait_idle(Duration::from_secs(60)),
            "not idle within 60 s"
        );
        manager.pause_processing();
    }
    for _ in 0..n {
        match events.recv_timeout(Duration::from_secs(60)) {
            Ok(Event::Completed { .. }) => {}
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(err) => panic!("no event within 60 s: {err}"),
        }
    }
    manager.shut_down();
    println!(
        "w3-linked: {n} tasks; adding {:.0} ns per task",
        wall.as_nanos() as f64 / n as f64
    );
}

/// Runs `w5` with `n` tasks in 100 groups and prints what it measured.
fn run_w5(n: usize) {
    const GROUPS: usize = 100;
    let manager = TaskManager::builder()
        .max_threads(2)
        .start_processing(true)
        .build()
        .expect("build a manager");
    let events = manager.subscribe();
    // Two tasks hold the two workers until `release` is dropped.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Arc::new(std::sync::Mutex::new(held));
    let (started, starts) = std::sync::mpsc::channel::<()>();
    for _ in 0..2 {
        let (held, started) = (std::sync::Arc::clone(&held), started.clone());
        manager
            .add_task(move |_| {
                started.send(()).expect("the bench waits");
                // Returns once `release` is dropped (a disconnect).
                let _ = held.lock().expect("not poisoned").recv();
                Ok::<_, Infallible>(0u32)
            })
            .expect("add a holder");
    }
    for _ in 0..2 {
        starts
            .recv_timeout(Duration::from_secs(60))
            .expect("a holder did not start");
    }
    let groups: Vec<_> = (0..GROUPS).map(|_| manager.next_group_id()).collect();
    for i in 0..n {
        manager
            .task()
            .group(groups[i % GROUPS].clone())
            .spawn(move |_| Ok::<_, Infallible>(i as u32))
            .expect("add a task");
    }
    let start = Instant::now();
    let stopped: usize = groups
        .iter()
        .step_by(2)
        .map(|g| manager.stop_task_group(g, false, false))
        .sum();
    let stop = start.elapsed();
    let start = Instant::now();
    drop(release);
    let live = n - stopped + 2;
    let mut completed = 0;
    while completed < live {
        match events.recv_timeout(Duration::from_secs(60)) {
            Ok(Event::Completed { .. }) => completed += 1,
            Ok(Event::GroupFinished { .. }) => {}
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(err) => panic!("no event within 60 s: {err}"),
        }
    }
    let drain = start.elapsed();
    manager.shut_down();
    println!(
        "w5: {n} tasks; stopped {stopped} in {stop:?} ({:.0} ns per stopped task), drained {live} in {drain:?} ({:.0} ns per task)",
        stop.as_nanos() as f64 / stopped as f64,
        drain.as_nanos() as f64 / live as f64
    );
}

/// CPU time so far of the calling thread and of the manager's workers,
/// from `/proc/*/sched` (`None` where there is no such file).
fn cpu_times() -> Option<(Duration, Duration)> {
    let runtime = |path: &std::path::Path| -> Option<Duration> {
        let text = std::fs::read_to_string(path).ok()?;
        let line = text
            .lines()
            .find(|l| l.starts_with("se.sum_exec_runtime"))?;
        let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
        Some(Duration::from_secs_f64(ms / 1e3))
    };
    let owner = runtime(std::path::Path::new("/proc/thread-self/sched"))?;
    let mut workers = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.starts_with("bgtask-worker") {
            workers += runtime(&dir.join("sched")).unwrap_or_default();
        }
    }
    Some((owner, workers))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let shape = args.first().map_or("w1", String::as_str);
    let n = args
        .get(1)
        .map_or(100_000, |s| s.parse().expect("a task count"));
    if shape == "w3" || shape == "w3-split" {
        run_w3(n, shape == "w3-split");
        return;
    }
    if shape == "w3-linked" {
        run_w3_linked(n);
        return;
    }
    if shape == "w5" {
        run_w5(n);
        return;
    }
    let elapsed = run(shape, n);
    println!(
        "{shape}: {n} tasks in {elapsed:?} ({:.0} ns per task)",
        elapsed.as_nanos() as f64 / n as f64
    );
}
