//! `TaskHandle<T>`: a typed reference to an added task, to wait for its
//! result or to `.await` it.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::cell::{HandleEnd, Outcome, TaskCell, Waiter};
use crate::error::TaskError;
use crate::id::TaskId;
use crate::sync::Arc;

/// A reference to a task that will produce a `T`, returned when the task
/// is added.
///
/// It carries the task's [`TaskId`], which is what stop calls and
/// [`TaskBuilder::after`](crate::TaskBuilder::after) take (a `&TaskHandle`
/// converts into one); it reads the typed result of an upstream task
/// inside a downstream one with
/// [`TaskContext::upstream`](crate::TaskContext::upstream); and it waits
/// for the task's result: blocking with [`wait`](Self::wait) and
/// [`wait_timeout`](Self::wait_timeout), or as a [`Future`] on any
/// executor (it needs no runtime). Waiting works whether or not anyone
/// subscribed to events. A handle keeps its task's result alive; dropping
/// it does not stop the task.
///
/// # Examples
///
/// ```
/// use bgtask::{TaskError, TaskManager};
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// let manager = TaskManager::builder().start_processing(true).build()?;
/// let size = manager.add_task(|_| Ok::<_, Infallible>(vec![0u8; 64].len()))?;
/// assert_eq!(*size.wait()?, 64);
/// assert_eq!(*size.wait_timeout(Duration::from_secs(10)).expect("finished")?, 64);
///
/// let bad = manager.add_task(|_| -> Result<(), &str> { Err("no such file") })?;
/// match bad.wait() {
///     Err(TaskError::Failed { message, .. }) => assert_eq!(message, "no such file"),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TaskHandle<T> {
    /// The task.
    id: TaskId,
    /// The task's shared record: its end, its outcome, its waiters.
    cell: Arc<TaskCell>,
    /// The result type; `fn() -> T` keeps the handle `Send + Sync` whatever `T`.
    _result: PhantomData<fn() -> T>,
}

impl<T> TaskHandle<T> {
    /// Wraps the id and cell of a just-added task.
    pub(crate) fn new(id: TaskId, cell: Arc<TaskCell>) -> Self {
        TaskHandle {
            id,
            cell,
            _result: PhantomData,
        }
    }

    /// Returns the task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Returns `true` once the task has ended: completed, failed or stopped.
    pub fn is_finished(&self) -> bool {
        self.cell.poll_end(None).is_some()
    }
}

impl<T: Send + Sync + 'static> TaskHandle<T> {
    /// Blocks until the task ends and returns its result.
    ///
    /// Do not call it from inside a task of the same manager while that
    /// task holds the only worker the awaited task could run on: it would
    /// wait forever.
    ///
    /// # Errors
    ///
    /// [`TaskError::Failed`] if the task returned `Err`, panicked or had an
    /// upstream task fail; [`TaskError::Stopped`] if it was stopped (or the
    /// manager shut down) before its outcome was delivered.
    pub fn wait(&self) -> Result<Arc<T>, TaskError> {
        loop {
            let me = Waiter::Thread(std::thread::current());
            if let Some(end) = self.cell.poll_end(Some(me)) {
                return convert(end);
            }
            // Spurious wake-ups come around the loop again.
            std::thread::park();
        }
    }

    /// Blocks until the task ends or `timeout` passes. Returns `None` on
    /// timeout, otherwise the task's result as [`wait`](Self::wait) does.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<Arc<T>, TaskError>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let me = Waiter::Thread(std::thread::current());
            if let Some(end) = self.cell.poll_end(Some(me)) {
                return Some(convert(end));
            }
            match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return self.cell.poll_end(None).map(convert);
                    }
                    std::thread::park_timeout(left);
                }
                None => std::thread::park(),
            }
        }
    }
}

/// Turns a task's end into what a handle returns.
fn convert<T: Send + Sync + 'static>(end: HandleEnd) -> Result<Arc<T>, TaskError> {
    match end {
        HandleEnd::Outcome(Outcome::Completed(result)) => Ok(result
            .downcast_arc::<T>()
            .expect("a handle's type is the type its task returns")),
        HandleEnd::Outcome(Outcome::Failed(f)) => Err(TaskError::Failed {
            message: f.message.clone(),
            traceback: f.traceback.clone(),
        }),
        HandleEnd::Stopped => Err(TaskError::Stopped),
    }
}

/// Resolves when the task ends, with what [`TaskHandle::wait`] returns.
/// Works on any executor: the task's end wakes the waker of the last poll.
///
/// # Examples
///
/// ```
/// use bgtask::TaskManager;
/// use std::convert::Infallible;
///
/// let manager = TaskManager::builder().start_processing(true).build()?;
/// let decode = manager.add_task(|_| Ok::<_, Infallible>(vec![1u8, 2, 3]))?;
/// let pixels = futures::executor::block_on(decode)?;
/// assert_eq!(pixels.len(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<T: Send + Sync + 'static> Future for TaskHandle<T> {
    type Output = Result<Arc<T>, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.cell.poll_end(Some(Waiter::Waker(cx.waker().clone()))) {
            Some(end) => Poll::Ready(convert(end)),
            None => Poll::Pending,
        }
    }
}

impl<T> Clone for TaskHandle<T> {
    fn clone(&self) -> Self {
        TaskHandle::new(self.id, Arc::clone(&self.cell))
    }
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("result", &std::any::type_name::<T>())
            .field("finished", &self.is_finished())
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
