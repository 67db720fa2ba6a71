//! The worker thread loop.
//!
//! A worker runs a task, ends it, and takes its next task without the
//! scheduler lock when it can (`Shared::next_task`). A worker with nothing
//! to do is *idle*: it watches for an assignment for a few microseconds
//! (`linger`), then waits on its own condvar, and runs only what the
//! dispatcher assigns to it (already claimed), so a task is never run by
//! two workers and a worker is woken only to run a task or to exit.

use crate::manager::{Handoff, Shared};
use crate::state::Mode;
use std::time::{Duration, Instant};

use crate::sync::{Arc, Ordering};

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
    // Where the decision on a graph end this worker queued arrives
    // (`Shared::end_in_graph_combined`).
    let handoff = Arc::new(Handoff::default());
    let mut task = None;
    loop {
        if let Some(cell) = task.take() {
            task = shared.run_task(cell, w, &busy, &handoff);
            continue;
        }
        // Spins once per idle period before sleeping (see `linger`), and
        // frees finished tasks' memory once per idle period (see `TRIM_AFTER`).
        let mut lingered = false;
        let mut trimmed = false;
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
            if !lingered {
                lingered = true;
                drop(st);
                linger(&busy);
                st = shared.lock();
                continue;
            }
            let signal = Arc::clone(&st.workers[w].signal);
            if !trimmed {
                trimmed = true;
                let deadline = Instant::now() + TRIM_AFTER;
                if signal.wait_until(&mut st.guard, deadline).timed_out()
                    && st.workers[w].assigned.is_none()
                {
                    // Still idle: free the memory of tasks that are done
                    // with before sleeping for good, outside every lock.
                    drop(st);
                    crate::unwind::drop_each(shared.take_dead());
                    st = shared.lock();
                }
                continue;
            }
            // Spurious wake-ups just come around the loop again.
            signal.wait(&mut st.guard);
        }
    }
}

/// How long an idle worker sleeps before it frees the memory of finished
/// tasks (`Shared::take_dead`) and sleeps for good. Not at once: while the
/// owner is adding tasks, workers go idle between them all the time, and
/// freeing cells the owner's thread allocated (and would free itself when
/// adding) slows the owner down; after a millisecond without work the pool
/// is likely done for a while, and a burst of tasks does not keep its
/// memory. (With freeing right after the linger instead, the median time
/// per task of a W3-like driver, 100 layers of 1,000 tasks, was 3 % and
/// 14 % higher in two batches of 12 and 18 runs on the 2-core test machine.)
const TRIM_AFTER: Duration = Duration::from_millis(1);

/// How long a worker that just went idle watches for a new task before it
/// sleeps.
const LINGER: Duration = Duration::from_micros(20);

/// Watches, for at most [`LINGER`], for the dispatcher to hand this idle
/// worker a task (it raises the worker's `busy` count, under the lock,
/// before signalling). Waking a sleeping thread takes tens of microseconds
/// on a virtual machine, against well under one for a thread that is still
/// looking: an owner that adds its next task right after receiving the last
/// one's event finds the worker awake. Yields between looks, so a busy
/// machine loses nothing; a worker idle for longer sleeps, using no CPU.
///
/// 20 µs: on the 2-core test machine, where waking a thread took about
/// 35 µs, it brought the start latency of back-to-back tasks from 36 µs to
/// 1.6 µs (p50) and 67 µs to 2 µs (p99); 10 µs left the p99 at 37 µs. The
/// throughput workloads did not move beyond their run-to-run noise with 0,
/// 10 or 50 µs (`cargo bench --bench peers -- latency w2 w3`).
fn linger(busy: &crate::sync::AtomicUsize) {
    let start = Instant::now();
    while busy.load(Ordering::Acquire) == 0 && start.elapsed() < LINGER {
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        std::thread::yield_now();
    }
}
