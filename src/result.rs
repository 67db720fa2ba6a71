//! `TaskResult`: the type-erased value a task returned.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// The value a task returned, type-erased and cheap to clone.
///
/// Read it with [`downcast_ref`](TaskResult::downcast_ref). A pass-through
/// task's result, and any task result of type [`Kwargs`](crate::Kwargs),
/// reads the same way with `downcast_ref::<Kwargs>()`.
///
/// # Examples
///
/// ```
/// use bgtask::{Event, TaskManager};
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// let manager = TaskManager::builder().start_processing(true).build()?;
/// let events = manager.subscribe();
/// manager.add_task(|_| Ok::<_, Infallible>(String::from("done")))?;
/// match events.recv_timeout(Duration::from_secs(10)).unwrap() {
///     Event::Completed { result, .. } => {
///         assert_eq!(result.downcast_ref::<String>().unwrap(), "done");
///         assert!(result.downcast_ref::<u32>().is_none());
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), bgtask::Error>(())
/// ```
#[derive(Clone)]
pub struct TaskResult(pub(crate) Arc<dyn Any + Send + Sync>);

impl TaskResult {
    /// Wraps a task's return value.
    pub(crate) fn new<T: Any + Send + Sync>(value: T) -> Self {
        TaskResult(Arc::new(value))
    }

    /// Returns the value if it has type `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// Returns the value as a shared pointer if it has type `T`.
    pub fn downcast_arc<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        Arc::clone(&self.0).downcast::<T>().ok()
    }

    /// Returns `true` if the value has type `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.0.is::<T>()
    }
}

impl fmt::Debug for TaskResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskResult").finish_non_exhaustive()
    }
}
