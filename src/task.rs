//! Adding tasks (`TaskBuilder`), what a task sees (`TaskContext`), and the
//! type-erased job the scheduler moves around.

use std::error::Error as StdError;
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;

use smallvec::SmallVec;

use crate::cell::{CellParts, Input, Node, TaskCell, WorkSlot};
use crate::error::Error;
use crate::handle::TaskHandle;
use crate::id::{Group, TaskId};
use crate::kwargs::Kwargs;
use crate::manager::TaskManager;
use crate::result::TaskResult;
use crate::sync::Arc;
use crate::unwind::{self, Failure};

/// A task's work, type-erased: runs the user's closure, catching panics.
/// What a task's closure becomes: its result or failure, panics caught.
pub(crate) trait JobFn:
    FnOnce(&TaskContext) -> Result<TaskResult, Failure> + Send + 'static
{
}

impl<F> JobFn for F where F: FnOnce(&TaskContext) -> Result<TaskResult, Failure> + Send + 'static {}

/// The event-loop wake-up callback set with `TaskManager::set_notifier`.
pub(crate) type Notifier = Arc<dyn Fn() + Send + Sync>;

/// What a running task can see about itself.
///
/// Passed by reference to every task closure.
///
/// # Examples
///
/// ```
/// use bgtask::{Event, Kwargs, TaskManager};
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// let manager = TaskManager::builder().start_processing(true).build()?;
/// let events = manager.subscribe();
/// manager
///     .task()
///     .group("thumbnails")
///     .kwargs(Kwargs::new().with("size", 64u32))
///     .spawn(|ctx| {
///         assert_eq!(ctx.group().and_then(|g| g.as_name()), Some("thumbnails"));
///         assert!(!ctx.is_stopped());
///         Ok::<_, Infallible>(*ctx.kwargs().get::<u32>("size").unwrap() * 2)
///     })?;
/// match events.recv_timeout(Duration::from_secs(10)).unwrap() {
///     Event::Completed { result, .. } => assert_eq!(result.downcast_ref::<u32>(), Some(&128)),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), bgtask::Error>(())
/// ```
pub struct TaskContext {
    /// The task's id.
    id: TaskId,
    /// Shared with the scheduler: tells whether the task was stopped, and
    /// holds its group.
    cell: Arc<TaskCell>,
    /// Own kwargs merged with upstream `Kwargs` results, and upstream
    /// results; `None` for the many tasks that have neither (an empty map
    /// costs nothing to make, but dropping it is not free).
    input: Option<Input>,
    /// Keeps the context on its worker thread (`!Sync`): methods such as
    /// `report_progress` and `worker_state` act on the calling thread.
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl TaskContext {
    /// Creates the context of a task about to run.
    pub(crate) fn new(id: TaskId, cell: Arc<TaskCell>, input: Option<Input>) -> Self {
        TaskContext {
            id,
            cell,
            input,
            _not_sync: PhantomData,
        }
    }

    /// The task's cell.
    pub(crate) fn cell(&self) -> &Arc<TaskCell> {
        &self.cell
    }

    /// Gives back the cell the worker lent to the context, and the input
    /// the task ran with, for the worker to drop contained (its kwargs and
    /// upstream results are user values, whose `Drop` may panic).
    pub(crate) fn into_parts(self) -> (Arc<TaskCell>, Option<Input>) {
        (self.cell, self.input)
    }

    /// Returns the task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Returns the task's group, if it has one.
    pub fn group(&self) -> Option<&Group> {
        self.cell.group.as_ref().map(|g| &g.key)
    }

    /// Returns the task's kwargs: its own, with the entries of every
    /// upstream task that completed with a [`Kwargs`] result merged in (the
    /// upstream's value wins on a clash, a later-completing upstream over an
    /// earlier one).
    pub fn kwargs(&self) -> &Kwargs {
        /// What tasks without kwargs see.
        static EMPTY: Kwargs = Kwargs::new();
        self.input.as_ref().map_or(&EMPTY, |i| &i.kwargs)
    }

    /// Returns this worker thread's state of type `S`, made on the first
    /// call on this worker by the factory given to
    /// [`Builder::worker_state`](crate::Builder::worker_state); `None` if no
    /// factory was given or it makes another type. The state lives as long
    /// as the worker thread: later tasks on the same worker get the same
    /// value.
    pub fn worker_state<S: 'static>(&self) -> Option<std::rc::Rc<std::cell::RefCell<S>>> {
        crate::worker_state::get::<S>()
    }

    /// Reports how far along the task is: `fraction` from 0.0 to 1.0
    /// (clamped; NaN counts as 0.0) and a message. Subscribers receive an
    /// [`Event::Progress`](crate::Event::Progress); reports coalesce, so a
    /// slow owner sees only the latest one per task and a busy task can
    /// report as often as it likes. Nothing is reported for a stopped task.
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
    /// manager.add_task(|ctx| {
    ///     for i in 1..=4 {
    ///         ctx.report_progress(i as f32 / 4.0, format!("chunk {i} of 4"));
    ///     }
    ///     Ok::<_, Infallible>(())
    /// })?;
    /// let mut last_progress = None;
    /// loop {
    ///     match events.recv_timeout(Duration::from_secs(10)).unwrap() {
    ///         Event::Progress { fraction, .. } => last_progress = Some(fraction),
    ///         Event::Completed { .. } => break,
    ///         other => panic!("unexpected {other:?}"),
    ///     }
    /// }
    /// assert!(last_progress.is_some_and(|f| f > 0.0 && f <= 1.0));
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn report_progress(&self, fraction: f32, message: impl Into<String>) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        crate::worker::with_current(|shared| {
            shared.report_progress(&self.cell, fraction, message.into())
        });
    }

    /// Returns `true` once the task was stopped (by a stop call or by
    /// shut-down). A long task should check it now and then and return
    /// early: its outcome is dropped anyway.
    pub fn is_stopped(&self) -> bool {
        self.cell.is_stopped()
    }

    /// Returns the result of upstream task `handle`, if it is an upstream
    /// of this task and completed before this task started. Upstream tasks
    /// that were stopped, or that had already finished and been delivered
    /// when this task was added, give `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::{Event, TaskManager};
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    ///
    /// let manager = TaskManager::new(); // paused until start_processing
    /// let events = manager.subscribe();
    /// let size = manager.add_task(|_| Ok::<_, Infallible>(vec![1u8, 2, 3]))?;
    /// manager.task().after([&size]).spawn(move |ctx| {
    ///     Ok::<_, Infallible>(ctx.upstream(&size).map(Vec::len))
    /// })?;
    /// manager.start_processing();
    /// let mut last = None;
    /// for _ in 0..2 {
    ///     last = Some(events.recv_timeout(Duration::from_secs(10)).unwrap());
    /// }
    /// match last.unwrap() {
    ///     Event::Completed { result, .. } => assert_eq!(result.downcast_ref::<Option<usize>>(), Some(&Some(3))),
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// # Ok::<(), bgtask::Error>(())
    /// ```
    pub fn upstream<T: Send + Sync + 'static>(&self, handle: &TaskHandle<T>) -> Option<&T> {
        let seq = handle.id().seq;
        if handle.id().manager != self.id.manager {
            return None;
        }
        self.input
            .as_ref()?
            .upstream
            .iter()
            .find(|(_, s, _)| *s == seq)?
            .2
            .downcast_ref::<T>()
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let TaskContext {
            id,
            cell,
            input,
            _not_sync,
        } = self;
        f.debug_struct("TaskContext")
            .field("id", id)
            .field("stopped", &cell.is_stopped())
            .field("group", &self.group())
            .field("kwargs", self.kwargs())
            .field(
                "upstream_results",
                &input.as_ref().map_or(0, |i| i.upstream.len()),
            )
            .finish()
    }
}

/// Configures and adds one task: created by [`TaskManager::task`].
///
/// # Examples
///
/// ```
/// use bgtask::{Kwargs, TaskManager};
/// use std::convert::Infallible;
///
/// let manager = TaskManager::new();
/// let check = manager.task().priority(10).group("downloads").spawn(|_| {
///     Ok::<_, Infallible>(Kwargs::new().with("cached", false))
/// })?;
/// let download = manager
///     .task()
///     .group("downloads")
///     .after([&check])
///     .kwargs(Kwargs::new().with("url", "https://example.com/a.png".to_string()))
///     .spawn(|ctx| {
///         // The cache check's Kwargs result was merged into ours.
///         let cached = *ctx.kwargs().get::<bool>("cached").unwrap();
///         Ok::<_, Infallible>(if cached { 0 } else { 1024 })
///     })?;
/// assert!(check.id() < download.id());
/// # Ok::<(), bgtask::Error>(())
/// ```
#[must_use = "a TaskBuilder does nothing until spawn() or spawn_pass_through() is called"]
pub struct TaskBuilder<'a> {
    /// The manager the task goes to.
    manager: &'a TaskManager,
    /// Higher runs first; 0 by default.
    priority: i32,
    /// The task's group.
    group: Option<Group>,
    /// Upstream task ids.
    after: SmallVec<[TaskId; 2]>,
    /// Own kwargs, if set and not empty (`None` spares most tasks making
    /// and dropping an empty map).
    kwargs: Option<Kwargs>,
}

impl fmt::Debug for TaskBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let TaskBuilder {
            manager: _,
            priority,
            group,
            after,
            kwargs,
        } = self;
        f.debug_struct("TaskBuilder")
            .field("priority", priority)
            .field("group", group)
            .field("after", after)
            .field("kwargs", kwargs.as_ref().unwrap_or(&Kwargs::new()))
            .finish()
    }
}

impl<'a> TaskBuilder<'a> {
    /// Starts a builder with the defaults: priority 0, no group, no upstream, no kwargs.
    pub(crate) fn new(manager: &'a TaskManager) -> Self {
        TaskBuilder {
            manager,
            priority: 0,
            group: None,
            after: SmallVec::new(),
            kwargs: None,
        }
    }

    /// Sets the priority: among ready tasks, higher runs first; equal
    /// priorities run in the order they were added. Default 0.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Puts the task in `group` (a task has at most one group; a second
    /// call replaces the first).
    pub fn group(mut self, group: impl Into<Group>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Makes the task wait for upstream tasks: it becomes ready once none of
    /// them is queued, blocked or running. Takes ids or handles (`[id]`,
    /// `[&handle]`, a `Vec<TaskId>`, ...). Calls add up.
    ///
    /// An id of a task that already ended counts as satisfied. An id this
    /// manager never issued makes [`spawn`](Self::spawn) fail with
    /// [`Error::UnknownTask`].
    pub fn after<I>(mut self, upstream: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<TaskId>,
    {
        self.after.extend(upstream.into_iter().map(Into::into));
        self
    }

    /// Sets the task's own kwargs, readable with [`TaskContext::kwargs`].
    pub fn kwargs(mut self, kwargs: Kwargs) -> Self {
        self.kwargs = (!kwargs.is_empty()).then_some(kwargs);
        self
    }

    /// Adds the task with `f` as its work.
    ///
    /// `f` runs once on a worker thread, unless the task is stopped or an
    /// upstream task fails first. `Ok(value)` ends it with
    /// [`Event::Completed`](crate::Event::Completed); `Err(e)` or a panic ends it with
    /// [`Event::Failed`](crate::Event::Failed), whose traceback names the
    /// line that called `spawn`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTask`] if an upstream id was not issued by this
    /// manager; [`Error::ShutDown`] after shut-down. Nothing is added then.
    #[track_caller]
    pub fn spawn<F, T, E>(self, f: F) -> Result<TaskHandle<T>, Error>
    where
        F: FnOnce(&TaskContext) -> Result<T, E> + Send + 'static,
        T: Send + Sync + 'static,
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let added_at = Location::caller();
        let job = move |ctx: &TaskContext| match unwind::catch_task(added_at, || f(ctx)) {
            Ok(Ok(value)) => Ok(TaskResult::new(value)),
            Ok(Err(err)) => {
                let err: Box<dyn StdError + Send + Sync> = err.into();
                Err(unwind::error_failure(err.as_ref(), added_at))
            }
            Err(failure) => Err(failure),
        };
        self.submit(job).map(|(id, cell)| TaskHandle::new(id, cell))
    }

    /// Adds a pass-through task: it does no work, and completes with its
    /// kwargs (its own plus every upstream `Kwargs` result merged in) as a
    /// [`Kwargs`] result, so it joins several upstream tasks into one
    /// result. It is scheduled like any other task: by priority, obeying
    /// pause, on a worker.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub fn spawn_pass_through(self) -> Result<TaskHandle<Kwargs>, Error> {
        let job = |ctx: &TaskContext| Ok(TaskResult::new(ctx.kwargs().clone()));
        self.submit(job).map(|(id, cell)| TaskHandle::new(id, cell))
    }

    /// Hands the task to the manager: its cell, with `job` inside, is made
    /// once the manager knows its sequence number.
    fn submit(self, job: impl JobFn) -> Result<(TaskId, Arc<TaskCell>), Error> {
        let TaskBuilder {
            manager,
            priority,
            group,
            after,
            kwargs,
        } = self;
        let mut job = Some(job);
        let mut make = |parts: CellParts| -> Arc<TaskCell> {
            let work = WorkSlot::new(job.take().expect("a task's cell is made once"));
            let (seq, group, input) = (parts.seq, parts.group, parts.input);
            match parts.node {
                // In the cell: one allocation for a task with upstream tasks.
                Some(node) => Arc::new(TaskCell::new(seq, priority, group, work, input, node)),
                None => Arc::new(TaskCell::new(
                    seq,
                    priority,
                    group,
                    work,
                    input,
                    None::<Box<Node>>,
                )),
            }
        };
        manager
            .shared()
            .submit(&mut make, priority, group, after, kwargs)
    }
}
