//! The crate's single error type.

use crate::id::TaskId;

/// Everything that can go wrong when talking to a [`TaskManager`](crate::TaskManager).
///
/// Each variant's documentation says when it occurs; its `Display` text says
/// what to do about it. Stop calls never fail (they return how many tasks
/// they stopped), and a failing task is reported as an
/// [`Event::Failed`](crate::Event::Failed), not as an `Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An upstream id passed to [`TaskBuilder::after`](crate::TaskBuilder::after)
    /// was never issued by this manager: it comes from another manager, or
    /// from the future. Nothing was added and no id was used.
    #[error(
        "unknown upstream task {id}: it was not issued by this manager; \
         pass ids returned by this manager's add_task or task().spawn()"
    )]
    UnknownTask {
        /// The offending id.
        id: TaskId,
    },
    /// The manager was shut down (by [`TaskManager::shut_down`](crate::TaskManager::shut_down)
    /// or by dropping its last handle); it accepts no more tasks.
    #[error("the task manager has been shut down; build a new TaskManager to run more tasks")]
    ShutDown,
    /// [`Builder::max_threads`](crate::Builder::max_threads) was given 0.
    #[error("max_threads must be at least 1; pass a positive number of worker threads")]
    ZeroThreads,
    /// [`TaskManager::set_group_limit`](crate::TaskManager::set_group_limit) was given 0.
    #[error(
        "a group limit must be at least 1; to stop a group's tasks use stop_task_group, \
         to remove the limit use clear_group_limit"
    )]
    ZeroLimit,
    /// The operating system refused to start a worker thread.
    #[error(
        "could not start a worker thread ({message}); lower max_threads or free system resources"
    )]
    Spawn {
        /// The operating system's error text.
        message: String,
    },
}

/// Why a [`TaskHandle`](crate::TaskHandle) has no result to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task returned `Err`, panicked, or had an upstream task fail; the
    /// same message and traceback as its [`Event::Failed`](crate::Event::Failed).
    #[error("the task failed: {message}")]
    Failed {
        /// The error's `Display` text or the panic message.
        message: String,
        /// Where it failed (never empty).
        traceback: String,
    },
    /// The task was stopped, or its manager shut down, before its outcome
    /// was delivered; it may not have run at all.
    #[error("the task was stopped before it delivered a result; add it again to run it")]
    Stopped,
}
