//! Issue item 9: a `tracing` span per task (target `"bgtask"`, name
//! `"task"`, level DEBUG) with fields `id`, `group`, `priority`, `outcome`,
//! `queued_us` and `run_us`, behind the default-on cargo feature `tracing`.
//!
//! The spans are made on worker threads, so a thread-scoped subscriber
//! (`tracing::subscriber::with_default`) would miss them: this binary
//! installs a small capturing subscriber as the process-wide default, once
//! (`capture`), before any test adds a task. It lives in its own test file
//! so that no other test binary is affected.
//!
//! Tests run in parallel and task ids repeat across managers, so each task
//! body emits an event carrying a marker unique to the test; the span of
//! that task is the event's parent (the span the worker had entered).
#![cfg(feature = "tracing")]

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bgtask::{Event, Group, TaskContext, TaskManager};
use common::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Metadata, Subscriber};

/// A recorded field value, by the type it was recorded with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    U64(u64),
    I64(i64),
    Str(String),
    /// Anything else, as its `Debug` text (`display(x)` gives `x`'s `Display`).
    Text(String),
}

/// Collects field values into a map.
struct Fields<'a>(&'a mut HashMap<String, Value>);

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::U64(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::I64(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::Str(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Value::Text(format!("{value:?}")));
    }
}

/// One span as the subscriber saw it.
#[derive(Debug, Clone)]
struct SpanRec {
    target: String,
    name: String,
    level: Level,
    fields: HashMap<String, Value>,
    /// How many times it was closed (its last handle dropped).
    closed: usize,
}

/// Everything captured in this process.
#[derive(Default)]
struct Capture {
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, SpanRec>>,
    /// The `marker` field of each event, with the span entered on the
    /// emitting thread when it was emitted.
    markers: Mutex<HashMap<String, Option<u64>>>,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The capturing subscriber, installed process-wide.
struct Sink(&'static Capture);

impl Subscriber for Sink {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let meta = attrs.metadata();
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.spans.lock().unwrap().insert(
            id,
            SpanRec {
                target: meta.target().to_string(),
                name: meta.name().to_string(),
                level: *meta.level(),
                fields,
                closed: 0,
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(rec) = self.0.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut rec.fields));
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        if let Some(Value::Str(m) | Value::Text(m)) = fields.get("marker") {
            let parent = ENTERED.with(|e| e.borrow().last().copied());
            self.0.markers.lock().unwrap().insert(m.clone(), parent);
        }
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(pos) = e.iter().rposition(|&s| s == span.into_u64()) {
                e.remove(pos);
            }
        });
    }

    fn try_close(&self, id: Id) -> bool {
        if let Some(rec) = self.0.spans.lock().unwrap().get_mut(&id.into_u64()) {
            rec.closed += 1;
        }
        true
    }
}

/// Installs the capturing subscriber (once) and returns what it captured.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::default());
        tracing::subscriber::set_global_default(Sink(capture))
            .expect("no other global subscriber in this test binary");
        capture
    })
}

impl Capture {
    /// The span of the task whose body emitted `marker`.
    fn span_of(&self, marker: &str) -> SpanRec {
        let parent = *self
            .markers
            .lock()
            .unwrap()
            .get(marker)
            .unwrap_or_else(|| panic!("no event with marker {marker:?}"));
        let parent =
            parent.unwrap_or_else(|| panic!("event {marker:?} was emitted outside a span"));
        self.spans.lock().unwrap()[&parent].clone()
    }

    /// Every span whose `group` field is `group`'s `Display` text.
    fn spans_of_group(&self, group: &Group) -> Vec<SpanRec> {
        let text = Value::Text(group.to_string());
        self.spans
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.fields.get("group") == Some(&text))
            .cloned()
            .collect()
    }
}

/// Emits the marker event from inside a task.
fn mark(marker: &str) {
    tracing::info!(marker, "task body");
}

/// A `u64` field of `span`, or a panic naming it.
fn micros(span: &SpanRec, field: &str) -> u64 {
    match span.fields.get(field) {
        Some(Value::U64(us)) => *us,
        other => panic!("{field} not recorded as u64: {other:?} in {span:?}"),
    }
}

/// Checks what every task span has, and returns (queued_us, run_us).
fn check_common(span: &SpanRec, id: u64, priority: i64, outcome: &str) -> (u64, u64) {
    assert_eq!(span.target, "bgtask");
    assert_eq!(span.name, "task");
    assert_eq!(span.level, Level::DEBUG);
    assert_eq!(span.fields.get("id"), Some(&Value::U64(id)), "{span:?}");
    assert_eq!(
        span.fields.get("priority"),
        Some(&Value::I64(priority)),
        "{span:?}"
    );
    assert_eq!(
        span.fields.get("outcome"),
        Some(&Value::Str(outcome.to_string())),
        "{span:?}"
    );
    assert_eq!(span.closed, 1, "the span is closed once the task ended");
    (micros(span, "queued_us"), micros(span, "run_us"))
}

/// Microseconds of `d`, rounded down as the spans round.
fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

#[test]
fn completed_task_has_a_span() {
    let cap = capture();
    let m = paused(1);
    let sub = m.subscribe();
    let group = Group::from("tr-completed");
    let gate = Gate::new();
    let (tx, rx) = std::sync::mpsc::channel();

    let before_add = Instant::now();
    let task = {
        let gate = gate.clone();
        m.task()
            .group(&group)
            .priority(3)
            .spawn(move |_: &TaskContext| {
                let started = Instant::now();
                mark("tr-completed");
                tx.send(()).unwrap();
                gate.wait();
                Ok::<_, Infallible>(started.elapsed())
            })
            .unwrap()
    };
    let after_add = Instant::now();
    // Queued at least from the end of the add to the start.
    let least_queued = after_add.elapsed();
    m.start_processing();
    rx.recv_timeout(TIMEOUT).expect("task did not start");
    gate.open();
    let body = match next(&sub) {
        Event::Completed { id, result, .. } => {
            assert_eq!(id, task.id());
            *result.downcast_ref::<Duration>().unwrap()
        }
        other => panic!("unexpected {other:?}"),
    };
    let total = before_add.elapsed();

    let span = cap.span_of("tr-completed");
    let (queued, run) = check_common(&span, task.id().as_u64(), 3, "completed");
    assert_eq!(
        span.fields.get("group"),
        Some(&Value::Text("\"tr-completed\"".to_string()))
    );
    assert!(
        queued >= us(least_queued),
        "queued_us {queued} < {least_queued:?}"
    );
    assert!(run >= us(body), "run_us {run} < body's own {body:?}");
    assert!(queued + run <= us(total), "{queued} + {run} > {total:?}");
    assert_eq!(cap.spans_of_group(&group).len(), 1, "one span per task");
    m.shut_down();
}

#[test]
fn failed_task_has_a_span() {
    let cap = capture();
    let m = manager(1);
    let sub = m.subscribe();
    let group = Group::from("tr-failed");
    let task = m
        .task()
        .group(&group)
        .priority(-2)
        .spawn(|_| -> Result<(), &str> {
            mark("tr-failed");
            Err("disk full")
        })
        .unwrap();
    assert_eq!(
        take_ev(&sub, 2),
        [
            Ev::Failed(task.id(), "disk full".into()),
            Ev::GroupDone(group.clone())
        ]
    );
    let span = cap.span_of("tr-failed");
    check_common(&span, task.id().as_u64(), -2, "failed");
    assert_eq!(
        span.fields.get("group"),
        Some(&Value::Text("\"tr-failed\"".to_string()))
    );
    assert_eq!(cap.spans_of_group(&group).len(), 1);
    m.shut_down();
}

#[test]
fn panicked_task_has_a_failed_span() {
    let cap = capture();
    let m = manager(1);
    let sub = m.subscribe();
    let task = m
        .task()
        .group("tr-panicked")
        .spawn(|_| -> Result<(), Infallible> {
            mark("tr-panicked");
            panic!("boom")
        })
        .unwrap();
    match next(&sub) {
        Event::Failed { id, .. } => assert_eq!(id, task.id()),
        other => panic!("unexpected {other:?}"),
    }
    let span = cap.span_of("tr-panicked");
    check_common(&span, task.id().as_u64(), 0, "failed");
    m.shut_down();
}

#[test]
fn task_stopped_while_running_has_a_stopped_span() {
    let cap = capture();
    let m = manager(1);
    let sub = m.subscribe();
    let group = Group::from("tr-stopped");
    let gate = Gate::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = {
        let gate = gate.clone();
        m.task()
            .group(&group)
            .priority(4)
            .spawn(move |ctx: &TaskContext| {
                mark("tr-stopped");
                tx.send(()).unwrap();
                gate.wait();
                Ok::<_, Infallible>(ctx.is_stopped())
            })
            .unwrap()
    };
    rx.recv_timeout(TIMEOUT).expect("task did not start");
    assert_eq!(m.stop_task(task.id(), false, false), 1);
    gate.open();
    // A stopped task that still runs counts as running for wait_idle; its
    // span ends before its worker is free.
    assert_quiet(&m, &sub);
    let span = cap.span_of("tr-stopped");
    check_common(&span, task.id().as_u64(), 4, "stopped");
    assert_eq!(
        span.fields.get("group"),
        Some(&Value::Text("\"tr-stopped\"".to_string()))
    );
    m.shut_down();
}

#[test]
fn numbered_group_and_no_group() {
    let cap = capture();
    let m = manager(1);
    let sub = m.subscribe();
    let numbered = m
        .task()
        .group(7_000_123u64)
        .spawn(|_| {
            mark("tr-numbered");
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let none = m
        .add_task(|_| {
            mark("tr-no-group");
            Ok::<_, Infallible>(())
        })
        .unwrap();
    take(&sub, 3); // two Completed, one GroupFinished
    assert_quiet(&m, &sub);

    let span = cap.span_of("tr-numbered");
    check_common(&span, numbered.id().as_u64(), 0, "completed");
    assert_eq!(
        span.fields.get("group"),
        Some(&Value::Text("7000123".to_string()))
    );
    let span = cap.span_of("tr-no-group");
    check_common(&span, none.id().as_u64(), 0, "completed");
    assert_eq!(span.fields.get("group"), None, "no group: field left empty");
    m.shut_down();
}

#[test]
fn span_shows_the_priority_set_while_queued() {
    let cap = capture();
    let m = paused(1);
    let sub = m.subscribe();
    let task = m
        .task()
        .priority(1)
        .spawn(|_| {
            mark("tr-reprioritised");
            Ok::<_, Infallible>(())
        })
        .unwrap();
    assert!(m.set_priority(task.id(), 8));
    m.start_processing();
    assert_eq!(take_ev(&sub, 1), [Ev::Done(task.id())]);
    let span = cap.span_of("tr-reprioritised");
    check_common(&span, task.id().as_u64(), 8, "completed");
    m.shut_down();
}

#[test]
fn one_span_per_task_that_runs_including_downstream_tasks() {
    let cap = capture();
    let m = manager(2);
    let sub = m.subscribe();
    let group = Group::from("tr-count");
    // Paused while adding: otherwise `first` and `second` may end before
    // `join` is added, and the group would finish twice.
    m.pause_processing();
    let first = m.task().group(&group).spawn(common::noop).unwrap();
    let second = m.task().group(&group).spawn(common::noop).unwrap();
    let join = m
        .task()
        .group(&group)
        .after([first.id(), second.id()])
        .spawn_pass_through()
        .unwrap();
    let last = m
        .task()
        .group(&group)
        .priority(2)
        .after([join.id()])
        .spawn(common::noop)
        .unwrap();
    m.start_processing();
    take(&sub, 5); // four Completed, one GroupFinished
    assert_quiet(&m, &sub);

    let spans = cap.spans_of_group(&group);
    let mut ids: Vec<u64> = spans
        .iter()
        .map(|s| match s.fields.get("id") {
            Some(Value::U64(id)) => *id,
            other => panic!("no id: {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [first.id(), second.id(), join.id(), last.id()].map(|id| id.as_u64())
    );
    for s in &spans {
        let id = match s.fields.get("id") {
            Some(Value::U64(id)) => *id,
            _ => unreachable!(),
        };
        let priority = if id == last.id().as_u64() { 2 } else { 0 };
        check_common(s, id, priority, "completed");
    }
    m.shut_down();
}

#[test]
fn spans_are_made_on_worker_threads_for_a_manager_built_later() {
    // The subscriber is process-wide: a manager built on another thread
    // than the one that installed it is traced too.
    let cap = capture();
    let marker = "tr-other-thread";
    let id = std::thread::spawn(move || {
        let m = TaskManager::builder()
            .max_threads(1)
            .start_processing(true)
            .build()
            .unwrap();
        let h = m
            .add_task(move |_| {
                mark(marker);
                Ok::<_, Infallible>(())
            })
            .unwrap();
        h.wait_timeout(TIMEOUT)
            .expect("in time")
            .expect("completed");
        assert!(m.wait_idle(TIMEOUT));
        m.shut_down();
        h.id().as_u64()
    })
    .join()
    .unwrap();
    let span = cap.span_of(marker);
    check_common(&span, id, 0, "completed");
}
