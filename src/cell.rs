//! `TaskCell`: the part of a task shared outside the scheduler lock.
//!
//! The scheduler's graph node is private to the lock holder. Three other
//! parties need to know about a task without that lock: the task body
//! (`TaskContext::is_stopped`), and every subscription queue that holds one
//! of its events (to drop events of tasks stopped after they were queued).
//! They share this cell.
//!
//! # Invariants
//!
//! 1. `STOPPED` is set at most once and never cleared. It is set only by a
//!    stop call or shut-down, under the scheduler lock.
//! 2. The pending count is the number of subscription queues that hold this
//!    task's `Completed`/`Failed` event and have neither delivered nor
//!    discarded it. It is raised (once, under the scheduler lock) just before
//!    the event is queued, and lowered once per queue by `settle`.
//! 3. A task is *live to the owner* until either invariant 1 holds or its
//!    terminal event was queued and the pending count is back at zero. A stop
//!    succeeds on a finished task only by setting `STOPPED` while the pending
//!    count is non-zero (a compare-and-swap), so "delivered" and "stopped"
//!    exclude each other per queue: this is the "no stale events" guarantee.

use crate::sync::{AtomicU64, Ordering};

/// Bit set once the task was stopped.
const STOPPED: u64 = 1 << 63;

/// Shared, lock-free state of one task.
#[derive(Debug)]
pub(crate) struct TaskCell {
    /// The task's sequence number.
    pub(crate) seq: u64,
    /// `STOPPED` flag plus the pending-delivery count (invariants 1 and 2).
    state: AtomicU64,
}

impl TaskCell {
    /// Creates the cell of a new, live task.
    pub(crate) fn new(seq: u64) -> Self {
        TaskCell {
            seq,
            state: AtomicU64::new(0),
        }
    }

    /// Returns `true` once the task was stopped (invariant 1).
    pub(crate) fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) & STOPPED != 0
    }

    /// Marks a task that has not produced its terminal event as stopped.
    /// Called under the scheduler lock.
    pub(crate) fn mark_stopped(&self) {
        self.state.fetch_or(STOPPED, Ordering::AcqRel);
    }

    /// Records that the terminal event is about to be queued in `n` queues
    /// (invariant 2). Called under the scheduler lock.
    pub(crate) fn add_pending(&self, n: usize) {
        self.state.fetch_add(n as u64, Ordering::AcqRel);
    }

    /// Returns `true` if some queue still holds the terminal event undelivered.
    pub(crate) fn has_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) & !STOPPED != 0
    }

    /// Stops a finished task whose event may still wait in a queue.
    ///
    /// Returns `true` if the task was still live to the owner (some queue had
    /// not delivered its event) and is now stopped; `false` if every queue
    /// had already delivered or discarded it, or it was stopped before.
    pub(crate) fn stop_undelivered(&self) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & STOPPED != 0 || cur == 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                cur,
                cur | STOPPED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Settles one queue's copy of the terminal event: the queue delivers it
    /// if this returns `true`, and must discard it otherwise (invariant 3).
    pub(crate) fn settle(&self) -> bool {
        let prev = self.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev & !STOPPED != 0, "settled more copies than were queued");
        prev & STOPPED == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_copy_is_delivered_or_stopped_never_both() {
        let cell = TaskCell::new(1);
        assert!(
            !cell.stop_undelivered(),
            "no event queued yet: not stoppable here"
        );
        cell.add_pending(2);
        assert!(cell.settle(), "first queue delivers");
        assert!(cell.has_pending());
        assert!(cell.stop_undelivered(), "second queue still holds it");
        assert!(cell.is_stopped());
        assert!(!cell.settle(), "second queue must discard");
        assert!(!cell.stop_undelivered());
    }

    #[test]
    fn fully_delivered_task_is_not_stoppable() {
        let cell = TaskCell::new(1);
        cell.add_pending(1);
        assert!(cell.settle());
        assert!(!cell.has_pending());
        assert!(!cell.stop_undelivered());
        assert!(!cell.is_stopped());
    }
}
