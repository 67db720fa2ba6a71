//! The workloads' shapes and the correctness checks every run goes through.
//!
//! The task bodies of bgtask and of the peers call the same recording
//! functions, so the instrumentation costs all contenders the same.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// How long the owner waits for one more outcome before it declares a hang.
pub(crate) const HANG: Duration = Duration::from_secs(60);

/// A small deterministic generator (xorshift64*), so that every contender
/// gets the same priorities and the same graph.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`.
    pub(crate) fn below(&mut self, bound: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(bound)) >> 32) as u32
    }
}

/// A dependency graph in compressed form: task `i`'s upstream tasks are
/// `up[offsets[i]..offsets[i + 1]]`, all of them smaller than `i`.
pub(crate) struct Graph {
    offsets: Vec<u32>,
    up: Vec<u32>,
}

impl Graph {
    /// `n` tasks, each after the previous one.
    pub(crate) fn chain(n: usize) -> Graph {
        let mut offsets = Vec::with_capacity(n + 1);
        let mut up = Vec::with_capacity(n.saturating_sub(1));
        offsets.push(0);
        for i in 0..n as u32 {
            if i > 0 {
                up.push(i - 1);
            }
            offsets.push(up.len() as u32);
        }
        Graph { offsets, up }
    }

    /// `layers` layers of `width` tasks; each task after the first layer is
    /// after 2 distinct random tasks of the previous layer.
    pub(crate) fn layered(layers: usize, width: usize, seed: u64) -> Graph {
        assert!(
            width >= 2,
            "a layered graph needs at least 2 tasks per layer"
        );
        let mut rng = Rng::new(seed);
        let n = layers * width;
        let mut offsets = Vec::with_capacity(n + 1);
        let mut up = Vec::with_capacity(2 * n);
        offsets.push(0);
        let w = width as u32;
        for layer in 0..layers as u32 {
            for _ in 0..w {
                if layer > 0 {
                    let base = (layer - 1) * w;
                    let a = rng.below(w);
                    let b = (a + 1 + rng.below(w - 1)) % w;
                    up.extend([base + a, base + b]);
                }
                offsets.push(up.len() as u32);
            }
        }
        Graph { offsets, up }
    }

    /// The number of tasks.
    pub(crate) fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The tasks that task `i` runs after.
    pub(crate) fn upstream(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.up[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The graph reversed: for each task, the tasks that run after it, and
    /// for each task, how many upstream tasks it waits for. This is the
    /// bookkeeping a peer's user builds (and it is timed as such).
    pub(crate) fn downstream(&self) -> (Vec<u32>, Vec<u32>, Vec<AtomicU32>) {
        let n = self.len();
        let mut counts = vec![0u32; n + 1];
        for &u in &self.up {
            counts[u as usize + 1] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut down = vec![0u32; self.up.len()];
        for i in 0..n as u32 {
            for &u in self.upstream(i) {
                down[fill[u as usize] as usize] = i;
                fill[u as usize] += 1;
            }
        }
        let remaining = (0..n as u32)
            .map(|i| AtomicU32::new(self.upstream(i).len() as u32))
            .collect();
        (counts, down, remaining)
    }
}

/// Checks dependency order from inside the task bodies: a task must find all
/// its upstream tasks finished when it starts, and must start only once.
pub(crate) struct DagCheck {
    graph: std::sync::Arc<Graph>,
    finished: Vec<AtomicBool>,
    early: AtomicUsize,
    twice: AtomicUsize,
}

impl DagCheck {
    /// A check over `graph` for the whole run of the bench, shared by every
    /// contender's rounds (each starts with [`reset`](Self::reset)).
    ///
    /// It is leaked, once per workload, so that task bodies reach it
    /// through a plain reference: an `Arc` cloned into every task's closure
    /// is an atomic write per task to one shared line, paid by whoever
    /// submits the tasks. For bgtask that is the owner, the bottleneck of
    /// W3; the peers submit most of their tasks from the workers through
    /// their emulation's own state. Instrumentation must cost all
    /// contenders the same, so none of them counts references to it.
    pub(crate) fn leaked(graph: std::sync::Arc<Graph>) -> &'static DagCheck {
        let finished = (0..graph.len()).map(|_| AtomicBool::new(false)).collect();
        Box::leak(Box::new(DagCheck {
            graph,
            finished,
            early: AtomicUsize::new(0),
            twice: AtomicUsize::new(0),
        }))
    }

    /// Clears what the previous run recorded (before the timed region).
    pub(crate) fn reset(&self) {
        for f in &self.finished {
            f.store(false, Ordering::Relaxed);
        }
        self.early.store(0, Ordering::Relaxed);
        self.twice.store(0, Ordering::Relaxed);
    }

    /// The graph under check.
    pub(crate) fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The body of task `i`: verify its upstream, then mark it finished.
    pub(crate) fn run(&self, i: u32) {
        for &u in self.graph.upstream(i) {
            if !self.finished[u as usize].load(Ordering::Acquire) {
                self.early.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.finished[i as usize].swap(true, Ordering::AcqRel) {
            self.twice.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Panics if a task started before one of its upstream tasks finished,
    /// ran twice, or never ran.
    pub(crate) fn verify(&self, who: &str) {
        let early = self.early.load(Ordering::Relaxed);
        assert_eq!(
            early, 0,
            "{who}: {early} tasks started before all their upstream tasks finished"
        );
        let twice = self.twice.load(Ordering::Relaxed);
        assert_eq!(twice, 0, "{who}: {twice} tasks ran more than once");
        let missing = self
            .finished
            .iter()
            .filter(|f| !f.load(Ordering::Relaxed))
            .count();
        assert_eq!(missing, 0, "{who}: {missing} tasks never ran");
    }
}

/// Records execution order from inside the task bodies (W4).
pub(crate) struct OrderCheck {
    position: Vec<AtomicU32>,
    next: AtomicU32,
}

impl OrderCheck {
    /// A fresh check for `n` tasks.
    pub(crate) fn new(n: usize) -> OrderCheck {
        OrderCheck {
            position: (0..n).map(|_| AtomicU32::new(u32::MAX)).collect(),
            next: AtomicU32::new(0),
        }
    }

    /// The body of task `i`: note its place in the execution order.
    pub(crate) fn run(&self, i: u32) {
        let at = self.next.fetch_add(1, Ordering::Relaxed);
        self.position[i as usize].store(at, Ordering::Relaxed);
    }

    /// Panics unless the tasks ran exactly in priority order: higher
    /// priority first, ties in submission order (`i` is the submission order).
    pub(crate) fn verify(&self, who: &str, priorities: &[i32]) {
        let ran = self.next.load(Ordering::Relaxed) as usize;
        assert_eq!(
            ran,
            priorities.len(),
            "{who}: {ran} task runs for {} tasks",
            priorities.len()
        );
        let mut expected: Vec<u32> = (0..priorities.len() as u32).collect();
        expected.sort_by_key(|&i| (Reverse(priorities[i as usize]), i));
        for (at, &i) in expected.iter().enumerate() {
            let got = self.position[i as usize].load(Ordering::Relaxed);
            assert_eq!(
                got as usize, at,
                "{who}: priority order broken: task {i} (priority {}) ran at position {got}, expected {at}",
                priorities[i as usize]
            );
        }
    }
}

/// Counts runs per task (W5), to check that stopped tasks never ran.
pub(crate) struct RunCount {
    runs: Vec<AtomicU8>,
}

impl RunCount {
    /// A fresh count for `n` tasks.
    pub(crate) fn new(n: usize) -> RunCount {
        RunCount {
            runs: (0..n).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// The body of task `i`.
    pub(crate) fn run(&self, i: u32) {
        self.runs[i as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Panics unless every task for which `stopped` is true never ran and
    /// every other task ran once.
    pub(crate) fn verify(&self, who: &str, stopped: impl Fn(u32) -> bool) {
        for (i, runs) in self.runs.iter().enumerate() {
            let runs = runs.load(Ordering::Relaxed);
            if stopped(i as u32) {
                assert_eq!(
                    runs, 0,
                    "{who}: task {i} of a stopped group ran {runs} times"
                );
            } else {
                assert_eq!(runs, 1, "{who}: task {i} of a live group ran {runs} times");
            }
        }
    }
}

/// The owner's record of the outcomes it received: each task exactly once.
pub(crate) struct Tally {
    seen: Vec<bool>,
    count: usize,
    expected: usize,
    who: &'static str,
}

impl Tally {
    /// Expects one outcome for each of `n` tasks.
    pub(crate) fn new(who: &'static str, n: usize) -> Tally {
        Tally::expecting(who, n, n)
    }

    /// Expects `expected` outcomes from tasks numbered `0..n`.
    pub(crate) fn expecting(who: &'static str, n: usize, expected: usize) -> Tally {
        Tally {
            seen: vec![false; n],
            count: 0,
            expected,
            who,
        }
    }

    /// Notes the outcome of task `i`.
    pub(crate) fn record(&mut self, i: u32) {
        let seen = &mut self.seen[i as usize];
        assert!(
            !*seen,
            "{}: the outcome of task {i} arrived twice",
            self.who
        );
        *seen = true;
        self.count += 1;
    }

    /// How many outcomes arrived so far.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Whether every expected outcome arrived.
    pub(crate) fn is_complete(&self) -> bool {
        self.count == self.expected
    }

    /// Receives outcomes from a peer's result channel until all arrived.
    pub(crate) fn drain(&mut self, results: &Receiver<u32>) {
        while !self.is_complete() {
            match results.recv_timeout(HANG) {
                Ok(i) => self.record(i),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: hang: {} of {} outcomes after {HANG:?}",
                        self.who, self.count, self.expected
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: result channel closed after {} of {} outcomes",
                        self.who, self.count, self.expected
                    )
                }
            }
        }
    }
}
