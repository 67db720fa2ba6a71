//! Introspection: what `TaskManager::stats` and `TaskManager::task_state`
//! report.

use crate::id::Group;

/// Where a live task stands, as [`TaskManager::task_state`](crate::TaskManager::task_state) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Ready to run: waiting for a worker, for processing to resume, or for
    /// room under its group's limit.
    Queued,
    /// Waiting for upstream tasks to end.
    Blocked,
    /// Handed to a worker and not yet ended.
    Running,
}

/// Counts of live tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskCounts {
    /// Ready to run, not started.
    pub queued: usize,
    /// Waiting for upstream tasks.
    pub blocked: usize,
    /// Running on a worker (tasks stopped while running are not counted).
    pub running: usize,
}

/// One group's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group.
    pub group: Group,
    /// Its live tasks by state.
    pub tasks: TaskCounts,
}

impl GroupStats {
    /// Zero counts for `group`.
    pub(crate) fn new(group: Group) -> Self {
        GroupStats {
            group,
            tasks: TaskCounts::default(),
        }
    }
}

/// A snapshot of a manager, from [`TaskManager::stats`](crate::TaskManager::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Every live task by state.
    pub tasks: TaskCounts,
    /// Worker threads (started lazily, up to `max_threads`).
    pub workers: usize,
    /// Groups with live tasks, ordered by group.
    pub groups: Vec<GroupStats>,
}
