//! The worker thread loop.
//!
//! A worker takes a task under the lock, runs it unlocked, and takes the
//! lock once more to record the outcome and pick its next task in the same
//! critical section. A worker with nothing to do is *idle*: it waits on its
//! own condvar and runs only what the dispatcher assigns to it, so a task
//! is never picked by two workers and a worker is woken only to run a task.

use crate::manager::Shared;
use crate::state::Mode;
use crate::sync::Arc;

/// Body of worker thread `w` of `shared`.
pub(crate) fn run(shared: Arc<Shared>, w: usize) {
    let mut next = None;
    let mut st = shared.lock();
    loop {
        let task = next.take().or_else(|| st.workers[w].assigned.take());
        let Some(task) = task else {
            if st.mode == Mode::ShutDown {
                return;
            }
            if !st.workers[w].idle {
                shared.go_idle(&mut st, w);
                continue;
            }
            if st.has_deferred() {
                // Drop jobs and call the notifier before sleeping.
                drop(st);
                st = shared.lock();
                continue;
            }
            let signal = Arc::clone(&st.workers[w].signal);
            // Spurious wake-ups just come around the loop again.
            signal.wait(&mut st.guard);
            continue;
        };
        drop(st);
        let outcome = task.run();
        st = shared.lock();
        match outcome {
            Some((id, outcome)) => {
                let jobs = st.finish(id, outcome);
                st.discard(jobs);
            }
            // Stopped before it started.
            None => st.running -= 1,
        }
        if st.mode == Mode::Processing {
            next = st.pop_ready();
        }
        shared.dispatch(&mut st);
        shared.wake_idle_waiters(&st);
        st.collect_notify();
    }
}
