//! The FIFO of ready priority-0 tasks: the queue most tasks go through.
//!
//! Every push happens under the registry lock (`Shared::submit`), which
//! also issues sequence numbers, so the FIFO holds its tasks in id order
//! (SPEC 2: equal priorities run in the order they were added) and has one
//! producer at a time. That is what lets it be a single-producer queue:
//! the producer end, [`FifoTail`], lives inside the `Registry` its lock
//! guards, and any thread pops from the consumer end, [`Fifo`]: workers
//! without a lock (`Shared::pick`), lock holders in `State::pop_ready`.
//!
//! It is crossbeam-deque's `Worker` (FIFO flavour), pushed by its owner,
//! and its `Stealer`, popped by everyone else. A push is a write to the
//! ring and a store of the back index: no locked instruction, where the
//! multi-producer `SegQueue` it replaces made two per push (a
//! compare-and-swap on the tail and one on the slot's state) and allocated
//! a fresh block every 31 tasks. On the owner's thread, which adds tasks
//! one after another while the workers pop them, each locked instruction
//! waits for every store before it (the new cell's fresh lines).
//!
//! # Invariants
//!
//! 1. Only the holder of the registry lock pushes (the tail is reachable
//!    only through the locked registry).
//! 2. A task leaves the FIFO once: a pop's compare-and-swap on the front
//!    index takes it for one popper (crossbeam-deque's own invariant).
//! 3. `is_empty` puts a `SeqCst` fence between its loads of the two
//!    indices, and every push is followed by a `SeqCst` fence before its
//!    pusher reads the idle-worker count (`Shared::after_inbox_push`),
//!    which is what race 1 in `manager.rs` needs from the FIFO: a worker
//!    that published its idleness and then finds the FIFO empty is seen
//!    idle by the pusher.
//!
//! The ring grows by doubling when full and does not shrink: a manager
//! keeps 16 bytes per task of the most tasks it ever had queued in the
//! FIFO at once (the queue it replaced freed its blocks as they emptied).
//! The old ring is freed once no popper can still read it (epoch-based,
//! by crossbeam-deque).

use crossbeam_deque::{Steal, Stealer, Worker};

use crate::cell::TaskCell;
use crate::sync::Arc;

/// The producer end; see the module docs. Not `Sync`: it is reached only
/// through the locked registry (invariant 1).
#[derive(Debug)]
pub(crate) struct FifoTail(Worker<Arc<TaskCell>>);

impl Default for FifoTail {
    fn default() -> Self {
        FifoTail(Worker::new_fifo())
    }
}

impl FifoTail {
    /// Adds a ready task at the back.
    pub(crate) fn push(&self, cell: Arc<TaskCell>) {
        self.0.push(cell);
    }

    /// The consumer end of this FIFO.
    pub(crate) fn consumer(&self) -> Fifo {
        Fifo(self.0.stealer())
    }
}

/// The consumer end; see the module docs.
#[derive(Debug)]
pub(crate) struct Fifo(Stealer<Arc<TaskCell>>);

impl Default for Fifo {
    /// An empty FIFO nobody pushes to (for tests of the structures that
    /// pop from one).
    fn default() -> Self {
        FifoTail::default().consumer()
    }
}

impl Fifo {
    /// Takes the oldest task, if any (invariant 2).
    pub(crate) fn pop(&self) -> Option<Arc<TaskCell>> {
        loop {
            match self.0.steal() {
                Steal::Success(cell) => return Some(cell),
                Steal::Empty => return None,
                // Another popper took the front first, or the ring grew.
                Steal::Retry => std::hint::spin_loop(),
            }
        }
    }

    /// Returns `true` if no task is queued (invariant 3).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::test_cell;

    #[test]
    fn pops_in_push_order_across_growth_and_from_several_threads() {
        let tail = FifoTail::default();
        let fifo = tail.consumer();
        assert!(fifo.is_empty() && fifo.pop().is_none());
        // Past the initial ring (a few dozen slots), so it grows while full.
        for seq in 0..1000 {
            tail.push(test_cell(seq));
        }
        assert!(!fifo.is_empty());
        for seq in 0..500 {
            assert_eq!(fifo.pop().map(|c| c.seq), Some(seq));
        }
        // Two poppers share the rest: each task once, each popper's in order.
        let popped: Vec<Vec<u64>> = std::thread::scope(|s| {
            let poppers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while let Some(cell) = fifo.pop() {
                            mine.push(cell.seq);
                        }
                        mine
                    })
                })
                .collect();
            poppers.into_iter().map(|p| p.join().unwrap()).collect()
        });
        for mine in &popped {
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "out of order: {mine:?}"
            );
        }
        let mut all: Vec<u64> = popped.concat();
        all.sort_unstable();
        assert_eq!(all, (500..1000).collect::<Vec<_>>());
        assert!(fifo.is_empty());
    }
}
