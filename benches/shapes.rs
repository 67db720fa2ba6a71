//! One workload shape, run once, for profilers: `perf record` and
//! `valgrind --tool=callgrind` count what a shape costs per task without
//! the peers and the rounds of `benches/peers.rs` around it.
//!
//! ```sh
//! cargo bench --bench shapes -- w1 100000       # independent tasks
//! cargo bench --bench shapes -- chain 20000     # each after the previous
//! cargo bench --bench shapes -- dag 20000       # layers of 1,000, each after 2
//! cargo bench --bench shapes -- priority 100000 # random priorities, 1 worker
//! valgrind --tool=callgrind target/release/deps/shapes-<hash> dag 20000
//! ```
//!
//! It prints the time per task of the one run (not a benchmark: the
//! figures to compare are in `cargo bench --bench peers`).

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

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let shape = args.first().map_or("w1", String::as_str);
    let n = args
        .get(1)
        .map_or(100_000, |s| s.parse().expect("a task count"));
    let elapsed = run(shape, n);
    println!(
        "{shape}: {n} tasks in {elapsed:?} ({:.0} ns per task)",
        elapsed.as_nanos() as f64 / n as f64
    );
}
