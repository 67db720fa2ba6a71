//! Process CPU time from `/proc`, and a rendezvous that forces N workers to
//! exist at once.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// CPU time consumed so far by each live thread of this process, by thread id.
///
/// Reads `se.sum_exec_runtime` (nanosecond precision) from
/// `/proc/self/task/*/sched` where the kernel has it, else utime + stime
/// (clock ticks, 10 ms) from `/proc/self/task/*/stat`.
fn thread_cpu_times() -> HashMap<u32, Duration> {
    let mut times = HashMap::new();
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return times;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let path = task.path();
        let time = fs::read_to_string(path.join("sched"))
            .ok()
            .and_then(|text| sched_runtime(&text))
            .or_else(|| {
                fs::read_to_string(path.join("stat"))
                    .ok()
                    .and_then(|text| stat_runtime(&text))
            });
        if let Some(time) = time {
            times.insert(tid, time);
        }
    }
    times
}

/// Parses `se.sum_exec_runtime : <milliseconds>` from a `sched` file.
fn sched_runtime(text: &str) -> Option<Duration> {
    let line = text
        .lines()
        .find(|l| l.starts_with("se.sum_exec_runtime"))?;
    let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1e3))
}

/// Parses utime + stime (fields 14 and 15, in 1/100 s) from a `stat` file.
fn stat_runtime(text: &str) -> Option<Duration> {
    // The command name may contain spaces; fields are counted after its ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The CPU use of the whole process over `window` of wall time while the
/// calling thread sleeps, as a percentage of one core. Threads that exit
/// during the window are not counted.
pub(crate) fn idle_cpu_percent(window: Duration) -> f64 {
    let before = thread_cpu_times();
    let start = Instant::now();
    thread::sleep(window);
    let after = thread_cpu_times();
    let wall = start.elapsed();
    let used: Duration = after
        .iter()
        .map(|(tid, &t)| t.saturating_sub(before.get(tid).copied().unwrap_or_default()))
        .sum();
    100.0 * used.as_secs_f64() / wall.as_secs_f64()
}

/// A meeting point for `n` tasks: each waits (sleeping, for at most 10 s)
/// until all `n` have arrived, which proves that `n` workers run at once.
pub(crate) struct Rendezvous {
    arrived: AtomicUsize,
    n: usize,
}

impl Rendezvous {
    /// A meeting point for `n` tasks.
    pub(crate) fn new(n: usize) -> Rendezvous {
        Rendezvous {
            arrived: AtomicUsize::new(0),
            n,
        }
    }

    /// Arrives and waits for the others; returns whether all of them came.
    pub(crate) fn meet(&self) -> bool {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.arrived.load(Ordering::Acquire) < self.n {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }
}
