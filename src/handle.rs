//! `TaskHandle<T>`: a typed reference to an added task.

use std::fmt;
use std::marker::PhantomData;

use crate::id::TaskId;

/// A reference to a task that will produce a `T`, returned when the task
/// is added.
///
/// It carries the task's [`TaskId`], which is what stop calls and
/// [`TaskBuilder::after`](crate::TaskBuilder::after) take (a `&TaskHandle`
/// converts into one), and it reads the typed result of an upstream task
/// inside a downstream one with
/// [`TaskContext::upstream`](crate::TaskContext::upstream). Dropping a
/// handle does not stop the task.
///
/// # Examples
///
/// ```
/// use bgtask::{TaskId, TaskManager};
/// use std::convert::Infallible;
///
/// let manager = TaskManager::new();
/// let handle = manager.add_task(|_| Ok::<_, Infallible>("thumbnail"))?;
/// let id: TaskId = (&handle).into();
/// assert_eq!(id, handle.id());
/// # Ok::<(), bgtask::Error>(())
/// ```
pub struct TaskHandle<T> {
    /// The task.
    id: TaskId,
    /// The result type; `fn() -> T` keeps the handle `Send + Sync` whatever `T`.
    _result: PhantomData<fn() -> T>,
}

impl<T> TaskHandle<T> {
    /// Wraps the id of a just-added task.
    pub(crate) fn new(id: TaskId) -> Self {
        TaskHandle {
            id,
            _result: PhantomData,
        }
    }

    /// Returns the task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }
}

impl<T> Clone for TaskHandle<T> {
    fn clone(&self) -> Self {
        TaskHandle::new(self.id)
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("result", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> From<&TaskHandle<T>> for TaskId {
    fn from(h: &TaskHandle<T>) -> TaskId {
        h.id
    }
}

impl<T> From<TaskHandle<T>> for TaskId {
    fn from(h: TaskHandle<T>) -> TaskId {
        h.id
    }
}

impl From<&TaskId> for TaskId {
    fn from(id: &TaskId) -> TaskId {
        *id
    }
}
