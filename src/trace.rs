//! A `tracing` span per task (cargo feature `tracing`, on by default): the
//! task's id, group and priority, its outcome, how long it waited in the
//! queue and how long it ran. With the feature off, or no subscriber
//! interested in `bgtask` at `DEBUG`, this costs a branch per task.

#[cfg(feature = "tracing")]
mod imp {
    use std::sync::OnceLock;
    use std::time::Instant;

    use crate::cell::{Outcome, TaskCell};

    /// The instant task timestamps count from.
    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// The timestamp a new task records: nanoseconds since [`epoch`] plus
    /// one, or 0 when nobody traces (so that the clock is not read).
    pub(crate) fn queued_at() -> u64 {
        if tracing::enabled!(target: "bgtask", tracing::Level::DEBUG) {
            epoch().elapsed().as_nanos() as u64 + 1
        } else {
            0
        }
    }

    /// The span of a running task.
    pub(crate) struct TaskSpan {
        /// The span (disabled when nobody traces).
        span: tracing::Span,
        /// When the task started.
        started: Option<Instant>,
    }

    impl TaskSpan {
        /// Opens the span of `cell`'s task as it starts.
        pub(crate) fn start(cell: &TaskCell) -> Self {
            let span = tracing::debug_span!(
                target: "bgtask",
                "task",
                id = cell.seq,
                group = tracing::field::Empty,
                priority = cell.priority(),
                outcome = tracing::field::Empty,
                queued_us = tracing::field::Empty,
                run_us = tracing::field::Empty,
            );
            if span.is_disabled() {
                return TaskSpan {
                    span,
                    started: None,
                };
            }
            if let Some(g) = &cell.group {
                span.record("group", tracing::field::display(&g.key));
            }
            let now = Instant::now();
            if cell.queued_at > 0 {
                let queued = now.duration_since(epoch()).as_nanos() as u64 - (cell.queued_at - 1);
                span.record("queued_us", queued / 1000);
            }
            TaskSpan {
                span,
                started: Some(now),
            }
        }

        /// Runs `f` inside the span.
        pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
            if self.started.is_none() {
                return f();
            }
            self.span.in_scope(f)
        }

        /// Records how the task ended.
        pub(crate) fn end(self, outcome: &Outcome, stopped: bool) {
            let Some(started) = self.started else { return };
            let what = match outcome {
                _ if stopped => "stopped",
                Outcome::Completed(_) => "completed",
                Outcome::Failed(_) => "failed",
            };
            self.span.record("outcome", what);
            self.span
                .record("run_us", started.elapsed().as_micros() as u64);
        }
    }
}

#[cfg(not(feature = "tracing"))]
mod imp {
    use crate::cell::{Outcome, TaskCell};

    /// No span without the feature.
    pub(crate) struct TaskSpan;

    impl TaskSpan {
        /// Does nothing.
        pub(crate) fn start(_: &TaskCell) -> Self {
            TaskSpan
        }

        /// Runs `f`.
        pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
            f()
        }

        /// Does nothing.
        pub(crate) fn end(self, _: &Outcome, _: bool) {}
    }
}

#[cfg(feature = "tracing")]
pub(crate) use imp::queued_at;
pub(crate) use imp::TaskSpan;
