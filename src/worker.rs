//! The worker thread loop.
//!
//! A worker runs a task, ends it, and takes its next task without the
//! scheduler lock when it can (`Shared::next_task`). A worker with nothing
//! to do is *idle*: it waits on its own condvar and runs only what the
//! dispatcher assigns to it (already claimed), so a task is never run by
//! two workers and a worker is woken only to run a task or to exit.

use crate::manager::Shared;
use crate::state::Mode;
use crate::sync::Arc;

thread_local! {
    /// The manager of the worker thread this is, for `TaskContext` methods
    /// that reach the manager (`report_progress`) without a per-task handle.
    static CURRENT: std::cell::RefCell<Option<Arc<Shared>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the manager of the calling worker thread, if it is one.
pub(crate) fn with_current(f: impl FnOnce(&Arc<Shared>)) {
    CURRENT.with(|c| {
        if let Some(shared) = &*c.borrow() {
            f(shared);
        }
    });
}

/// Body of worker thread `w` of `shared`.
pub(crate) fn run(shared: Arc<Shared>, w: usize) {
    CURRENT.with(|c| *c.borrow_mut() = Some(Arc::clone(&shared)));
    crate::worker_state::install(shared.worker_state.clone());
    // This worker's own busy count (manager race 2); its slot exists by
    // now (the spawner pushed it under the lock this first lock waits for).
    let busy = Arc::clone(&shared.lock().workers[w].busy);
    let mut task = None;
    loop {
        if let Some(cell) = task.take() {
            task = shared.run_task(cell, w, &busy);
            continue;
        }
        let mut st = shared.lock();
        loop {
            if let Some(cell) = st.workers[w].assigned.take() {
                task = Some(cell);
                break;
            }
            if st.mode == Mode::ShutDown || st.workers[w].retired {
                return;
            }
            if !st.workers[w].idle {
                // Publishes idleness, then takes any work that arrived.
                shared.go_idle(&mut st, w);
                continue;
            }
            if st.has_deferred() {
                // Drop jobs and call the notifier before sleeping.
                drop(st);
                st = shared.lock();
                continue;
            }
            // The wait releases the lock: publish what this critical section did.
            st.publish();
            let signal = Arc::clone(&st.workers[w].signal);
            // Spurious wake-ups just come around the loop again.
            signal.wait(&mut st.guard);
        }
    }
}
