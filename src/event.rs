//! `Event`: what the owner thread learns about its tasks.

use crate::id::{Group, TaskId};
use crate::result::TaskResult;

/// Something that happened to a task or group, delivered through a
/// [`Subscription`](crate::Subscription).
///
/// For one task there is at most one `Completed` or `Failed`, and nothing
/// after it. An upstream task's `Completed` comes before any event of its
/// downstream tasks. `GroupFinished` comes right after the event of the task
/// whose end emptied the group. Stopped tasks produce no events at all.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A task returned `Ok(value)`; `result` holds the value.
    Completed {
        /// The task.
        id: TaskId,
        /// The task's group, if it had one.
        group: Option<Group>,
        /// The returned value (a [`Kwargs`](crate::Kwargs) for pass-through tasks).
        result: TaskResult,
    },
    /// A task returned `Err`, panicked, or had an upstream task fail.
    Failed {
        /// The task.
        id: TaskId,
        /// The task's group, if it had one.
        group: Option<Group>,
        /// The error's `Display` text (top level only) or the panic message.
        /// A task failed by the failure of an upstream carries the
        /// upstream's message.
        message: String,
        /// Never empty: the error's source chain and where the task was
        /// added, or where the panic happened (with a backtrace when
        /// `RUST_BACKTRACE` asks for one).
        traceback: String,
    },
    /// The last live task of `group` ended by completing or failing.
    GroupFinished {
        /// The group.
        group: Group,
    },
    /// A running task reported progress with
    /// [`TaskContext::report_progress`](crate::TaskContext::report_progress).
    /// Reports coalesce: a subscription holds at most one `Progress` per
    /// task, carrying the latest report when it is received, and none is
    /// delivered for a stopped task or after the task's `Completed`/`Failed`.
    Progress {
        /// The task.
        id: TaskId,
        /// The task's group, if it had one.
        group: Option<Group>,
        /// How far along, from 0.0 to 1.0.
        fraction: f32,
        /// What the task is doing.
        message: String,
    },
}

impl Event {
    /// Returns the id of the task the event is about, or `None` for
    /// [`Event::GroupFinished`].
    pub fn task_id(&self) -> Option<TaskId> {
        match self {
            Event::Completed { id, .. } | Event::Failed { id, .. } | Event::Progress { id, .. } => {
                Some(*id)
            }
            Event::GroupFinished { .. } => None,
        }
    }

    /// Returns the result of a [`Event::Completed`] if it has type `T`;
    /// `None` for other events or another type.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::TaskManager;
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    ///
    /// let manager = TaskManager::builder().start_processing(true).build()?;
    /// let events = manager.subscribe();
    /// manager.add_task(|_| Ok::<_, Infallible>(String::from("thumb.png")))?;
    /// let event = events.recv_timeout(Duration::from_secs(10)).unwrap();
    /// assert_eq!(event.result::<String>().map(String::as_str), Some("thumb.png"));
    /// assert_eq!(event.result::<u32>(), None);
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn result<T: std::any::Any>(&self) -> Option<&T> {
        match self {
            Event::Completed { result, .. } => result.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// Returns the group the event is about, if any.
    pub fn group(&self) -> Option<&Group> {
        match self {
            Event::Completed { group, .. }
            | Event::Failed { group, .. }
            | Event::Progress { group, .. } => group.as_ref(),
            Event::GroupFinished { group } => Some(group),
        }
    }
}
