//! Fuzz target `ops`: random operation sequences against a real
//! multi-worker `TaskManager`, checked against the invariants of the
//! contract (the project's SPEC.md) that hold whatever the timing.
//!
//! The input is decoded by hand, byte by byte (see [`decode`]), into a
//! manager (1 to 4 workers, paused or processing) and at most [`MAX_OPS`]
//! operations on at most [`MAX_TASKS`] tasks: add a task (priority, group
//! among 3, upstream subset of the last 8 tasks, a body that returns a
//! value, returns `Kwargs`, returns `Err`, panics, or holds its worker on
//! one of 3 gates), stop a task (with the up/down flags), stop a group, stop
//! all, pause, start, open a gate, drain the events. At the end every gate
//! opens, processing starts, `wait_idle` must succeed, the rest is drained
//! and everything is checked. Any violation panics with a message and the
//! operations as run, which libFuzzer reports as a crash.
//!
//! Invariants (SPEC sections in brackets):
//! - a stop call stops exactly the tasks live to the owner (not stopped,
//!   terminal event not yet drained) reached from its seeds through the
//!   up/down flags, and returns how many [6]; upstream/downstream edges are
//!   the upstream tasks that were live to the owner when the task was added;
//! - no `Completed`/`Failed` for a stopped task once the stop returned, and
//!   exactly one for every task never stopped [6, 7];
//! - a task stopped while it surely had not started (queued or blocked
//!   while paused, or blocked behind a task held on a closed gate) never
//!   runs [6]; a task stopped while held sees `is_stopped()`, a task never
//!   stopped never does [6];
//! - a task that `task_state` shows queued or blocked while paused (or
//!   blocked behind a held task) had not started when the call returned and
//!   does not start afterwards [2, 9];
//! - no body runs twice; a `Completed` task ran and returned what its body
//!   returns; a `Failed` task ran and failed with its own message, or did
//!   not run and carries the message of an upstream that failed before it
//!   [4];
//! - an upstream's `Completed` comes before any event of a downstream task
//!   that ran or completed (not before a `Failed` caused by another
//!   upstream's failure, see the README), a task that failed without
//!   running comes after an upstream's `Failed` with the same message, and
//!   a task that ran had every upstream that was still unfinished when it
//!   was added complete first (unless stopped) [3, 4, 7];
//! - `GroupFinished` comes right after an event of a member, never while
//!   another member surely was still live, and always when the group surely
//!   emptied [5];
//! - never more than `max_threads` bodies at once [2];
//! - the manager goes idle once every gate is open [1].
//!
//! Deliberate task panics are failed tasks, not crashes: bgtask catches
//! them, and its own panic hook (installed on the first task, chained to
//! the previous one) swallows panics raised inside task bodies, so the
//! aborting hook of libfuzzer-sys never sees them. As a second line, this
//! target installs (before any manager exists) a hook that ignores panics
//! whose message starts with [`DELIBERATE`] and passes every other panic on
//! to libfuzzer-sys's aborting hook.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, Once, OnceLock};
use std::time::Duration;

use bgtask::{Event, Group, Kwargs, TaskId, TaskManager, TaskState};
use libfuzzer_sys::fuzz_target;

/// Most operations decoded from one input.
const MAX_OPS: usize = 32;
/// Adds beyond this many tasks are skipped.
const MAX_TASKS: usize = 24;
/// Number of groups (and of gates).
const GROUPS: u8 = 3;
/// Longest a body waits on its gate (every gate opens at the end).
const GATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the final `wait_idle` may take.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for events still missing after `wait_idle` returned.
const LATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefix of the payload of deliberate task panics.
const DELIBERATE: &str = "deliberate panic in task #";
/// Set (to anything) to skip the two `GroupFinished` checks that the known
/// race between a graph-path and a fast-path member ending trips (see
/// fuzz/README.md), so that a long run explores everything else. The check
/// that a `GroupFinished` comes right after an event of a member stays.
const LENIENT_GROUP_ORDER: &str = "BGTASK_FUZZ_LENIENT_GROUP_ORDER";

fn lenient_group_order() -> bool {
    static LENIENT: OnceLock<bool> = OnceLock::new();
    *LENIENT.get_or_init(|| std::env::var_os(LENIENT_GROUP_ORDER).is_some())
}

/// What a task body does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// `Ok(i as u64)`.
    Value,
    /// `Ok(Kwargs { "k{i}": i as u64 })`.
    Kwargs,
    /// `Err("err #{i}")`.
    Err,
    /// `panic!("{DELIBERATE}{i}")`.
    Panic,
    /// Holds its worker until gate `g` opens, then `Ok(i as u64)`.
    Gate(u8),
}

impl Body {
    /// The message of a `Failed` for a task that ran, if its body fails.
    fn own_failure(self, i: usize) -> Option<String> {
        match self {
            Body::Err => Some(format!("err #{i}")),
            Body::Panic => Some(format!("{DELIBERATE}{i}")),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Add {
        priority: i32,
        group: Option<u8>,
        /// Bit `k` set: after the task `k + 1` places back.
        upstream_mask: u8,
        body: Body,
    },
    Stop {
        task: u8,
        up: bool,
        down: bool,
    },
    StopGroup {
        group: u8,
        up: bool,
        down: bool,
    },
    StopAll,
    Pause,
    Start,
    Release(u8),
    Drain,
}

/// Decodes the input. Byte 0: workers `1 + (b & 3)`, processing `b & 4`.
/// Then per operation an opcode byte (`% 10`) and its parameter bytes
/// (missing bytes read as 0):
/// - 0, 1, 2: add; `p` (priority `(p & 7) % 5 - 2`, group `(p >> 3) & 3`,
///   3 = none), `m` (upstream mask over the last 8 tasks), `b` (body
///   `b % 6`: value, kwargs, err, panic, gate, gate; gate `(b >> 3) % 3`);
/// - 3: stop task; `t` (task `t % tasks`), `f` (up `f & 1`, down `f & 2`);
/// - 4: stop group; `f` (group `f % 3`, up `f & 4`, down `f & 8`);
/// - 5: stop all; 6: pause; 7: start; 8: open gate `g % 3`; 9: drain.
fn decode(data: &[u8]) -> (usize, bool, Vec<Op>) {
    let mut bytes = data.iter().copied();
    let first = bytes.next().unwrap_or(0);
    let workers = 1 + usize::from(first & 3);
    let processing = first & 4 != 0;
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(code) = bytes.next() else { break };
        let mut next = || bytes.next().unwrap_or(0);
        let op = match code % 10 {
            0..=2 => {
                let p = next();
                let upstream_mask = next();
                let b = next();
                let group = match (p >> 3) & 3 {
                    3 => None,
                    g => Some(g),
                };
                let body = match b % 6 {
                    0 => Body::Value,
                    1 => Body::Kwargs,
                    2 => Body::Err,
                    3 => Body::Panic,
                    _ => Body::Gate((b >> 3) % GROUPS),
                };
                Op::Add {
                    priority: i32::from((p & 7) % 5) - 2,
                    group,
                    upstream_mask,
                    body,
                }
            }
            3 => {
                let task = next();
                let f = next();
                Op::Stop {
                    task,
                    up: f & 1 != 0,
                    down: f & 2 != 0,
                }
            }
            4 => {
                let f = next();
                Op::StopGroup {
                    group: f % GROUPS,
                    up: f & 4 != 0,
                    down: f & 8 != 0,
                }
            }
            5 => Op::StopAll,
            6 => Op::Pause,
            7 => Op::Start,
            8 => Op::Release(next() % GROUPS),
            _ => Op::Drain,
        };
        ops.push(op);
    }
    (workers, processing, ops)
}

/// What the bodies record, shared with them.
struct Probe {
    /// Logical clock: the owner bumps it after every operation.
    clock: AtomicU64,
    /// Times each body started.
    runs: Vec<AtomicU32>,
    /// Clock value seen when each body started, plus 1 (0: never started).
    start: Vec<AtomicU64>,
    /// After the gate: 0 not reached, 1 `is_stopped()` false, 2 true.
    saw_stopped: Vec<AtomicU8>,
    /// Bodies running now, and the most at once.
    running: AtomicUsize,
    high_water: AtomicUsize,
    /// Gate waits that timed out (the target's own failure).
    gate_timeouts: AtomicUsize,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            clock: AtomicU64::new(0),
            runs: (0..MAX_TASKS).map(|_| AtomicU32::new(0)).collect(),
            start: (0..MAX_TASKS).map(|_| AtomicU64::new(0)).collect(),
            saw_stopped: (0..MAX_TASKS).map(|_| AtomicU8::new(0)).collect(),
            running: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            gate_timeouts: AtomicUsize::new(0),
        }
    }

    fn enter(&self, i: usize) {
        self.start[i].store(self.clock.load(SeqCst) + 1, SeqCst);
        self.runs[i].fetch_add(1, SeqCst);
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.high_water.fetch_max(now, SeqCst);
    }

    fn leave(&self) {
        self.running.fetch_sub(1, SeqCst);
    }

    fn runs(&self, i: usize) -> u32 {
        self.runs[i].load(SeqCst)
    }

    /// Bumps the clock after an operation; returns the new value.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, SeqCst) + 1
    }
}

/// Three one-shot gates.
#[derive(Default)]
struct Gates {
    open: Mutex<[bool; GROUPS as usize]>,
    cv: Condvar,
}

impl Gates {
    /// Waits until gate `g` opens; `false` on timeout.
    fn wait(&self, g: u8) -> bool {
        let guard = self.open.lock().unwrap();
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, GATE_TIMEOUT, |open| !open[usize::from(g)])
            .unwrap();
        guard[usize::from(g)]
    }

    fn open(&self, g: u8) {
        self.open.lock().unwrap()[usize::from(g)] = true;
        self.cv.notify_all();
    }

    fn is_open(&self, g: u8) -> bool {
        self.open.lock().unwrap()[usize::from(g)]
    }
}

/// What the owner knows of a task.
#[derive(Debug)]
struct Task {
    id: TaskId,
    group: Option<u8>,
    body: Body,
    /// Every upstream task named in `after`.
    after: Vec<usize>,
    /// The upstream tasks live to the owner when it was added: the edges
    /// that stop cascades follow.
    upstream: Vec<usize>,
    downstream: Vec<usize>,
    /// Upstream tasks surely unfinished when it was added (`task_state`
    /// was still `Some` after the add returned): it must wait for them.
    hard_upstream: Vec<usize>,
    /// Operation index of the add, and the clock after it.
    added_op: usize,
    added_tick: u64,
    /// Operation index of the stop call that stopped it, and the clock after.
    stopped: Option<(usize, u64)>,
    /// Operation index of the drain that delivered its `Completed`/`Failed`.
    delivered: Option<usize>,
    /// Stopped while it surely had not started: must never run.
    must_not_run: Option<usize>,
    /// Stopped while held on a closed gate: must see `is_stopped()`.
    stopped_while_held: bool,
}

impl Task {
    fn live(&self) -> bool {
        self.stopped.is_none() && self.delivered.is_none()
    }
}

/// A delivered event, reduced to what the checks need.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Completed {
        task: usize,
        group: Option<Group>,
        /// The `u64` result, or `None` for a `Kwargs` result.
        value: Option<u64>,
        /// The `k{i}` entry of a `Kwargs` result.
        kwargs_entry: Option<u64>,
        is_kwargs: bool,
    },
    Failed {
        task: usize,
        group: Option<Group>,
        message: String,
        traceback_empty: bool,
    },
    GroupFinished(Group),
}

impl Ev {
    fn task(&self) -> Option<usize> {
        match self {
            Ev::Completed { task, .. } | Ev::Failed { task, .. } => Some(*task),
            Ev::GroupFinished(_) => None,
        }
    }

    fn group(&self) -> Option<&Group> {
        match self {
            Ev::Completed { group, .. } | Ev::Failed { group, .. } => group.as_ref(),
            Ev::GroupFinished(g) => Some(g),
        }
    }
}

fn group_of(g: u8) -> Group {
    Group::from(u64::from(g))
}

/// Everything one run needs; the trace is printed with any violation.
struct Run {
    m: TaskManager,
    sub: bgtask::Subscription,
    probe: Arc<Probe>,
    gates: Arc<Gates>,
    tasks: Vec<Task>,
    by_id: HashMap<TaskId, usize>,
    /// Delivered events, with the operation index of their drain.
    events: Vec<(Ev, usize)>,
    paused: bool,
    workers: usize,
    trace: String,
}

impl Run {
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "INVARIANT VIOLATED: {what}\n--- operations, as run ---\n{}--- events, as delivered (event, drain op) ---\n{:#?}",
            self.trace, self.events
        );
    }

    fn note(&mut self, line: impl std::fmt::Display) {
        let _ = writeln!(self.trace, "{line}");
    }

    fn add(&mut self, op_index: usize, priority: i32, group: Option<u8>, mask: u8, body: Body) {
        let i = self.tasks.len();
        if i >= MAX_TASKS {
            return;
        }
        let after: Vec<usize> = (0..8)
            .filter(|&k| mask & (1 << k) != 0 && k < i)
            .map(|k| i - 1 - k)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let upstream_ids: Vec<TaskId> = after.iter().map(|&u| self.tasks[u].id).collect();
        let mut b = self.m.task().priority(priority).after(upstream_ids);
        if let Some(g) = group {
            b = b.group(group_of(g));
        }
        let probe = Arc::clone(&self.probe);
        let spawned = match body {
            Body::Value => b
                .spawn(move |_| {
                    probe.enter(i);
                    probe.leave();
                    Ok::<u64, String>(i as u64)
                })
                .map(|h| h.id()),
            Body::Kwargs => b
                .spawn(move |_| {
                    probe.enter(i);
                    probe.leave();
                    Ok::<Kwargs, String>(Kwargs::new().with(format!("k{i}"), i as u64))
                })
                .map(|h| h.id()),
            Body::Err => b
                .spawn(move |_| {
                    probe.enter(i);
                    probe.leave();
                    Err::<u64, String>(format!("err #{i}"))
                })
                .map(|h| h.id()),
            Body::Panic => b
                .spawn(move |_| -> Result<u64, String> {
                    probe.enter(i);
                    probe.leave();
                    panic!("{DELIBERATE}{i}")
                })
                .map(|h| h.id()),
            Body::Gate(g) => {
                let gates = Arc::clone(&self.gates);
                b.spawn(move |ctx| {
                    probe.enter(i);
                    if !gates.wait(g) {
                        probe.gate_timeouts.fetch_add(1, SeqCst);
                    }
                    let seen = if ctx.is_stopped() { 2 } else { 1 };
                    probe.saw_stopped[i].store(seen, SeqCst);
                    probe.leave();
                    Ok::<u64, String>(i as u64)
                })
                .map(|h| h.id())
            }
        };
        let id = match spawned {
            Ok(id) => id,
            Err(e) => self.fail(format!("add #{i} was refused: {e}")),
        };
        // Upstream tasks still unfinished after the add returned were
        // unfinished during it: the new task surely waits for them.
        let hard_upstream: Vec<usize> = after
            .iter()
            .copied()
            .filter(|&u| self.m.task_state(self.tasks[u].id).is_some())
            .collect();
        let tick = self.probe.tick();
        let upstream: Vec<usize> = after
            .iter()
            .copied()
            .filter(|&u| self.tasks[u].live())
            .collect();
        for &u in &hard_upstream {
            if !self.tasks[u].live() {
                self.fail(format!(
                    "#{u} is not live to the owner but task_state says {:?}",
                    self.m.task_state(self.tasks[u].id)
                ));
            }
        }
        for &u in &upstream {
            self.tasks[u].downstream.push(i);
        }
        self.note(format!(
            "{op_index}: add #{i} ({id:?}) priority {priority} group {group:?} after {after:?} body {body:?} (live upstream {upstream:?}, unfinished {hard_upstream:?})"
        ));
        if self.by_id.insert(id, i).is_some() {
            self.fail(format!("the id {id:?} of #{i} was issued twice"));
        }
        self.tasks.push(Task {
            id,
            group,
            body,
            after,
            upstream,
            downstream: Vec::new(),
            hard_upstream,
            added_op: op_index,
            added_tick: tick,
            stopped: None,
            delivered: None,
            must_not_run: None,
            stopped_while_held: false,
        });
    }

    /// Which tasks a stop call must stop: every live seed, and from each
    /// stopped task its live upstream (`up`) and downstream (`down`) tasks.
    /// Liveness to the owner depends only on the owner's own calls, so this
    /// is exact whatever the workers did meanwhile.
    fn stop_set(&self, seeds: Vec<usize>, up: bool, down: bool) -> BTreeSet<usize> {
        let mut stack = seeds;
        let mut out = BTreeSet::new();
        while let Some(t) = stack.pop() {
            if !self.tasks[t].live() || !out.insert(t) {
                continue;
            }
            if up {
                stack.extend(self.tasks[t].upstream.iter().copied());
            }
            if down {
                stack.extend(self.tasks[t].downstream.iter().copied());
            }
        }
        out
    }

    /// Tasks held on a closed gate (`Running`, gate closed), and tasks that
    /// surely have not started and cannot start before the next operation:
    /// queued or blocked while paused, or blocked behind a held or frozen
    /// task. Both stay so until a gate opens, processing starts, or a stop.
    fn held_and_frozen(&self) -> (BTreeSet<usize>, BTreeSet<usize>) {
        let mut held = BTreeSet::new();
        let mut frozen = BTreeSet::new();
        for (t, task) in self.tasks.iter().enumerate() {
            if !task.live() {
                continue;
            }
            let state = self.m.task_state(task.id);
            let not_started = match (state, task.body) {
                (Some(TaskState::Running), Body::Gate(g)) if !self.gates.is_open(g) => {
                    held.insert(t);
                    false
                }
                (Some(TaskState::Queued | TaskState::Blocked), _) if self.paused => true,
                // Upstream indices are smaller: one pass is a fixpoint.
                (Some(TaskState::Blocked), _) => task
                    .after
                    .iter()
                    .any(|u| held.contains(u) || frozen.contains(u)),
                _ => false,
            };
            if !not_started {
                continue;
            }
            // Read after `task_state`: a body that had started by now either
            // started before the call (then the task was not queued or
            // blocked) or after it (then it started while it could not).
            let runs = self.probe.runs(t);
            if runs > 0 {
                self.fail(format!(
                    "task_state(#{t}) said {state:?} (manager {}), but #{t}'s body had started by the time task_state returned or started afterwards; a task that is queued or blocked then must not start",
                    if self.paused { "paused" } else { "processing, an upstream held on a closed gate" }
                ));
            }
            frozen.insert(t);
        }
        (held, frozen)
    }

    /// Records a stop call's result against the expected set.
    fn stopped(
        &mut self,
        op_index: usize,
        what: &str,
        set: &BTreeSet<usize>,
        held: &BTreeSet<usize>,
        frozen: &BTreeSet<usize>,
        real: usize,
    ) {
        let tick = self.probe.tick();
        self.note(format!(
            "{op_index}: {what} -> {real} (expected {set:?}; held {held:?}, not started {frozen:?})"
        ));
        if real != set.len() {
            self.fail(format!(
                "{what} stopped {real} tasks, expected {} ({set:?})",
                set.len()
            ));
        }
        for &t in set {
            let task = &mut self.tasks[t];
            task.stopped = Some((op_index, tick));
            if frozen.contains(&t) {
                task.must_not_run = Some(op_index);
            }
            if held.contains(&t) {
                task.stopped_while_held = true;
            }
        }
    }

    fn drain(&mut self, op_index: usize) -> usize {
        let mut n = 0;
        while let Ok(event) = self.sub.try_recv() {
            self.deliver(op_index, event);
            n += 1;
        }
        n
    }

    fn deliver(&mut self, op_index: usize, event: Event) {
        let ev = match event {
            Event::Completed { id, group, result } => {
                let task = self.task_of(id);
                let kw = result.downcast_ref::<Kwargs>();
                Ev::Completed {
                    task,
                    group,
                    value: result.downcast_ref::<u64>().copied(),
                    kwargs_entry: kw.and_then(|k| k.get::<u64>(&format!("k{task}")).copied()),
                    is_kwargs: kw.is_some(),
                }
            }
            Event::Failed {
                id,
                group,
                message,
                traceback,
            } => Ev::Failed {
                task: self.task_of(id),
                group,
                message,
                traceback_empty: traceback.is_empty(),
            },
            Event::GroupFinished { group } => Ev::GroupFinished(group),
            // No task reports progress.
            other => self.fail(format!("unexpected event {other:?}")),
        };
        if let Some(t) = ev.task() {
            if let Some((at, _)) = self.tasks[t].stopped {
                self.fail(format!(
                    "{ev:?} delivered at operation {op_index} for #{t}, stopped at operation {at}"
                ));
            }
            if let Some(at) = self.tasks[t].delivered {
                self.fail(format!(
                    "{ev:?}: a second terminal event for #{t} (first delivered at operation {at})"
                ));
            }
            self.tasks[t].delivered = Some(op_index);
        }
        self.events.push((ev, op_index));
    }

    fn task_of(&self, id: TaskId) -> usize {
        match self.by_id.get(&id) {
            Some(&t) => t,
            None => self.fail(format!("an event for {id:?}, which was never added")),
        }
    }

    /// A clock value such that every operation that ended at or before it
    /// ended before task `t`'s terminal event was emitted.
    fn emitted_after(&self, t: usize) -> u64 {
        match self.probe.start[t].load(SeqCst) {
            0 => self.tasks[t].added_tick - 1,
            s => s - 1,
        }
    }

    /// The checks that need the whole history.
    fn check(&self) {
        let high = self.probe.high_water.load(SeqCst);
        if high > self.workers {
            self.fail(format!(
                "{high} bodies ran at once with max_threads({})",
                self.workers
            ));
        }
        let timeouts = self.probe.gate_timeouts.load(SeqCst);
        if timeouts > 0 {
            self.fail(format!(
                "target error: {timeouts} gate waits timed out after {GATE_TIMEOUT:?}"
            ));
        }
        let mut pos: Vec<Option<usize>> = vec![None; self.tasks.len()];
        for (p, (ev, _)) in self.events.iter().enumerate() {
            if let Some(t) = ev.task() {
                pos[t] = Some(p);
            }
        }
        let terminal = |t: usize| pos[t].map(|p| &self.events[p].0);
        for (t, task) in self.tasks.iter().enumerate() {
            let runs = self.probe.runs(t);
            if runs > 1 {
                self.fail(format!("#{t} ran {runs} times"));
            }
            let ran = runs == 1;
            if let (Some(at), true) = (task.must_not_run, ran) {
                self.fail(format!(
                    "#{t} ran, but was stopped at operation {at} while it surely had not started"
                ));
            }
            if matches!(task.body, Body::Gate(_)) && ran {
                let seen = self.probe.saw_stopped[t].load(SeqCst);
                if task.stopped.is_none() && seen == 2 {
                    self.fail(format!("#{t} was never stopped but is_stopped() said true"));
                }
                if task.stopped_while_held && seen != 2 {
                    self.fail(format!(
                        "#{t} was stopped while held on its gate, but is_stopped() said false after the gate ({seen})"
                    ));
                }
            }
            let Some(p) = pos[t] else {
                if task.stopped.is_none() {
                    self.fail(format!(
                        "#{t} was never stopped but has no Completed/Failed"
                    ));
                }
                continue;
            };
            let ev = &self.events[p].0;
            if ev.group() != task.group.map(group_of).as_ref() {
                self.fail(format!("{ev:?} for #{t} of group {:?}", task.group));
            }
            // An upstream's Completed comes before the downstream task's
            // Completed, or its own Failed if it ran. Not before a Failed
            // it got from another upstream's failure: SPEC 4 fails the live
            // downstream tasks at once, in one batch ordered by distance,
            // whatever their other upstream tasks still do (SPEC 7's "before
            // any event" cannot hold then; see fuzz/README.md).
            if ran || matches!(ev, Ev::Completed { .. }) {
                for &u in &task.after {
                    if let (Some(q), Some(Ev::Completed { .. })) = (pos[u], terminal(u)) {
                        if q > p {
                            self.fail(format!(
                                "{ev:?} at {p} comes before the Completed of its upstream #{u} at {q}"
                            ));
                        }
                    }
                }
            }
            match ev {
                Ev::Completed {
                    value,
                    kwargs_entry,
                    is_kwargs,
                    ..
                } => {
                    if !ran {
                        self.fail(format!("{ev:?}, but #{t}'s body never ran"));
                    }
                    let ok = match task.body {
                        Body::Value | Body::Gate(_) => *value == Some(t as u64) && !is_kwargs,
                        Body::Kwargs => *is_kwargs && *kwargs_entry == Some(t as u64),
                        Body::Err | Body::Panic => false,
                    };
                    if !ok {
                        self.fail(format!("{ev:?}, but #{t}'s body is {:?}", task.body));
                    }
                }
                Ev::Failed {
                    message,
                    traceback_empty,
                    ..
                } => {
                    if *traceback_empty {
                        self.fail(format!("{ev:?}: empty traceback"));
                    }
                    if ran {
                        if task.body.own_failure(t).as_ref() != Some(message) {
                            self.fail(format!(
                                "{ev:?} after running, but #{t}'s body is {:?}",
                                task.body
                            ));
                        }
                    } else {
                        let cause = task.after.iter().any(|&u| {
                            self.tasks[u].stopped.is_some()
                                || matches!(
                                    (terminal(u), pos[u]),
                                    (Some(Ev::Failed { message: m, .. }), Some(q)) if m == message && q < p
                                )
                        });
                        if !cause {
                            self.fail(format!(
                                "{ev:?} without running, and no upstream of {:?} failed with that message before",
                                task.after
                            ));
                        }
                    }
                }
                Ev::GroupFinished(_) => unreachable!("terminal events only"),
            }
            // A task that ran waited for every upstream that was unfinished
            // when it was added: each completed first, unless stopped.
            if ran {
                for &u in &task.hard_upstream {
                    if self.tasks[u].stopped.is_some() {
                        continue;
                    }
                    if !matches!(terminal(u), Some(Ev::Completed { .. })) {
                        self.fail(format!(
                            "#{t} ran, but its upstream #{u} (unfinished when #{t} was added, never stopped) ended with {:?}",
                            terminal(u)
                        ));
                    }
                }
            }
        }
        self.check_groups(&pos);
    }

    fn check_groups(&self, pos: &[Option<usize>]) {
        let members =
            |g: u8| (0..self.tasks.len()).filter(move |&t| self.tasks[t].group == Some(g));
        for (p, (ev, _)) in self.events.iter().enumerate() {
            let Ev::GroupFinished(group) = ev else {
                continue;
            };
            let prev = p.checked_sub(1).map(|q| &self.events[q].0);
            let (tp, g) = match prev {
                Some(e) if e.task().is_some() && e.group() == Some(group) => {
                    let t = e.task().unwrap_or_default();
                    (t, self.tasks[t].group.unwrap_or_default())
                }
                _ => self.fail(format!(
                    "{ev:?} at {p} does not come right after an event of a member: {prev:?}"
                )),
            };
            // Every other member added before #tp's event was emitted must
            // have ended before it: by an earlier event, or by a stop that
            // cannot have come after (a stop after the drain that delivered
            // #tp's event stopped a task that was live when it was emitted,
            // since drains take everything queued).
            if lenient_group_order() {
                continue;
            }
            let bound = self.emitted_after(tp);
            let delivered = self.events[p - 1].1;
            for x in members(g).filter(|&x| x != tp) {
                if self.tasks[x].added_tick > bound {
                    continue;
                }
                if let Some(q) = pos[x] {
                    if q > p {
                        self.fail(format!(
                            "{ev:?} at {p} after #{tp}'s event, but member #{x} (added before) ended later, at {q}"
                        ));
                    }
                }
                if let Some((at, _)) = self.tasks[x].stopped {
                    if at > delivered {
                        self.fail(format!(
                            "{ev:?} at {p} after #{tp}'s event (delivered at operation {delivered}), but member #{x} (added before) was live until stopped at operation {at}"
                        ));
                    }
                }
            }
        }
        if lenient_group_order() {
            return;
        }
        for (t, task) in self.tasks.iter().enumerate() {
            let (Some(g), Some(p)) = (task.group, pos[t]) else {
                continue;
            };
            let delivered = task.delivered.unwrap_or(usize::MAX);
            let bound = self.emitted_after(t);
            let surely_last = members(g).filter(|&x| x != t).all(|x| {
                let other = &self.tasks[x];
                pos[x].is_some_and(|q| q < p)
                    || other.added_op > delivered
                    || other.stopped.is_some_and(|(_, tick)| tick <= bound)
            });
            let next = self.events.get(p + 1).map(|(e, _)| e);
            if surely_last && next != Some(&Ev::GroupFinished(group_of(g))) {
                self.fail(format!(
                    "#{t}'s event at {p} surely emptied group {g}, but the next event is {next:?}"
                ));
            }
        }
    }
}

fn install_panic_filter() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .payload_as_str()
                .is_some_and(|s| s.starts_with(DELIBERATE))
            {
                return;
            }
            previous(info);
        }));
    });
}

fn run(data: &[u8]) {
    install_panic_filter();
    let (workers, processing, ops) = decode(data);
    let m = TaskManager::builder()
        .max_threads(workers)
        .start_processing(processing)
        .build()
        .expect("a valid builder");
    let sub = m.subscribe();
    let mut r = Run {
        m,
        sub,
        probe: Arc::new(Probe::new()),
        gates: Arc::new(Gates::default()),
        tasks: Vec::new(),
        by_id: HashMap::new(),
        events: Vec::new(),
        paused: !processing,
        workers,
        trace: String::new(),
    };
    r.note(format!(
        "manager: max_threads({workers}), start_processing({processing}), one subscription"
    ));
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Add {
                priority,
                group,
                upstream_mask,
                body,
            } => r.add(i, priority, group, upstream_mask, body),
            Op::Stop { task, up, down } => {
                if r.tasks.is_empty() {
                    continue;
                }
                let t = usize::from(task) % r.tasks.len();
                let set = r.stop_set(vec![t], up, down);
                let (held, frozen) = r.held_and_frozen();
                let real = r.m.stop_task(r.tasks[t].id, up, down);
                let what = format!("stop_task(#{t}, up {up}, down {down})");
                r.stopped(i, &what, &set, &held, &frozen, real);
            }
            Op::StopGroup { group, up, down } => {
                let seeds = (0..r.tasks.len())
                    .filter(|&t| r.tasks[t].group == Some(group))
                    .collect();
                let set = r.stop_set(seeds, up, down);
                let (held, frozen) = r.held_and_frozen();
                let real = r.m.stop_task_group(&group_of(group), up, down);
                let what = format!("stop_task_group({group}, up {up}, down {down})");
                r.stopped(i, &what, &set, &held, &frozen, real);
            }
            Op::StopAll => {
                let set = r.stop_set((0..r.tasks.len()).collect(), false, false);
                let (held, frozen) = r.held_and_frozen();
                let real = r.m.stop_all_tasks();
                r.stopped(i, "stop_all_tasks()", &set, &held, &frozen, real);
            }
            Op::Pause => {
                r.m.pause_processing();
                r.paused = true;
                r.probe.tick();
                r.note(format!("{i}: pause_processing()"));
            }
            Op::Start => {
                r.m.start_processing();
                r.paused = false;
                r.probe.tick();
                r.note(format!("{i}: start_processing()"));
            }
            Op::Release(g) => {
                r.gates.open(g);
                r.probe.tick();
                r.note(format!("{i}: open gate {g}"));
            }
            Op::Drain => {
                let n = r.drain(i);
                r.probe.tick();
                r.note(format!("{i}: drain -> {n} events"));
            }
        }
    }
    // Let everything end: open every gate, start, wait, deliver everything.
    let end = ops.len();
    for g in 0..GROUPS {
        r.gates.open(g);
    }
    r.m.start_processing();
    r.paused = false;
    r.probe.tick();
    r.note(format!("{end}: (end) open all gates, start_processing()"));
    if !r.m.wait_idle(IDLE_TIMEOUT) {
        r.fail(format!(
            "not idle within {IDLE_TIMEOUT:?} after opening every gate; stats {:?}",
            r.m.stats()
        ));
    }
    let n = r.drain(end);
    r.note(format!(
        "{end}: (end) wait_idle -> true, drain -> {n} events"
    ));
    let missing: Vec<usize> = (0..r.tasks.len()).filter(|&t| r.tasks[t].live()).collect();
    if !missing.is_empty() {
        // Tell a late event from a lost one.
        let late = r.sub.recv_timeout(LATE_TIMEOUT);
        r.fail(format!(
            "after wait_idle returned true and everything was drained, tasks {missing:?} (never stopped) have no Completed/Failed; {LATE_TIMEOUT:?} later: {late:?}"
        ));
    }
    r.m.shut_down();
    r.check();
}

fuzz_target!(|data: &[u8]| {
    run(data);
});
