//! `Builder`: configuration of a `TaskManager`.

use crate::error::Error;
use crate::manager::TaskManager;
use crate::worker_state::{self, MaybeFactory};

/// Configures a [`TaskManager`]; created by [`TaskManager::builder`].
///
/// # Examples
///
/// ```
/// use bgtask::{Error, TaskManager};
///
/// let manager = TaskManager::builder().max_threads(4).start_processing(true).build()?;
/// assert_eq!(manager.max_threads(), 4);
/// assert_eq!(TaskManager::builder().max_threads(0).build().unwrap_err(), Error::ZeroThreads);
/// # Ok::<(), bgtask::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Builder does nothing until build() is called"]
pub struct Builder {
    /// Most tasks that run at once (and most worker threads).
    pub(crate) max_threads: usize,
    /// Whether tasks start as soon as they are ready.
    pub(crate) start_processing: bool,
    /// Prefix of worker thread names.
    pub(crate) thread_name: String,
    /// Makes each worker's state, if set.
    pub(crate) worker_state: MaybeFactory,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            max_threads: 8,
            start_processing: false,
            thread_name: String::from("bgtask-worker"),
            worker_state: MaybeFactory::default(),
        }
    }
}

impl Builder {
    /// Sets how many tasks may run at once, which is also the most worker
    /// threads the manager starts. Default 8. Must be at least 1.
    pub fn max_threads(mut self, n: usize) -> Self {
        self.max_threads = n;
        self
    }

    /// Sets whether the manager starts tasks right away (`true`) or waits for
    /// [`TaskManager::start_processing`] (`false`, the default, as in the
    /// original toolkit).
    pub fn start_processing(mut self, on: bool) -> Self {
        self.start_processing = on;
        self
    }

    /// Sets the name prefix of worker threads; each is named
    /// `"{prefix}-{index}"`. Default `"bgtask-worker"`.
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// Gives every worker thread its own `S`, made by `make` the first time
    /// a task on that worker asks for it with
    /// [`TaskContext::worker_state`](crate::TaskContext::worker_state), and
    /// dropped when the worker thread ends (at shut-down). The usual use is
    /// one connection per worker to a service whose client is not thread
    /// safe. `make` runs on the worker thread, inside the task that asked.
    ///
    /// # Examples
    ///
    /// ```
    /// use bgtask::TaskManager;
    /// use std::convert::Infallible;
    ///
    /// struct Connection { queries: u32 }
    ///
    /// let manager = TaskManager::builder()
    ///     .max_threads(1)
    ///     .start_processing(true)
    ///     .worker_state(|| Connection { queries: 0 })
    ///     .build()?;
    /// let mut last = None;
    /// for _ in 0..3 {
    ///     last = Some(manager.add_task(|ctx| {
    ///         let conn = ctx.worker_state::<Connection>().expect("configured");
    ///         conn.borrow_mut().queries += 1;
    ///         let n = conn.borrow().queries;
    ///         Ok::<_, Infallible>(n)
    ///     })?);
    /// }
    /// assert_eq!(*last.unwrap().wait()?, 3); // one worker, one connection
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_state<S: 'static>(
        mut self,
        make: impl Fn() -> S + Send + Sync + 'static,
    ) -> Self {
        self.worker_state = MaybeFactory(Some(worker_state::factory(make)));
        self
    }

    /// Creates the manager. No thread is started until a task is ready.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroThreads`] if `max_threads` is 0.
    pub fn build(self) -> Result<TaskManager, Error> {
        if self.max_threads == 0 {
            return Err(Error::ZeroThreads);
        }
        Ok(TaskManager::from_builder(self))
    }
}
