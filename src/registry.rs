//! The registry: every task by sequence number, so that stop calls and
//! `after` can find them; it also holds the strong reference that keeps a
//! live task's cell (and so its graph edges' targets) alive.
//!
//! # Invariants
//!
//! 1. `cells` is sorted by sequence number: entries are pushed under this
//!    lock with sequence numbers allocated under it.
//! 2. Every task that is live to the owner is in `cells`. Dead ones
//!    leave from the front when pushing, and from anywhere when the deque
//!    has doubled since the last compaction (amortised O(1) per task).

use std::collections::VecDeque;

use crate::cell::TaskCell;
use crate::sync::Arc;

/// Tasks by sequence number; guarded by its own lock.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Cells in increasing sequence order (invariant 1).
    cells: VecDeque<Arc<TaskCell>>,
    /// Length after the last compaction.
    compacted: usize,
}

impl Registry {
    /// Adds a cell whose sequence number is larger than any before.
    pub(crate) fn push(&mut self, cell: Arc<TaskCell>) {
        self.trim();
        debug_assert!(self.cells.back().is_none_or(|b| b.seq < cell.seq));
        self.cells.push_back(cell);
        if self.cells.len() >= 2 * self.compacted.max(1024) {
            self.cells.retain(|c| !c.is_dead());
            self.compacted = self.cells.len();
        }
    }

    /// Drops dead cells from the front.
    pub(crate) fn trim(&mut self) {
        while self.cells.front().is_some_and(|c| c.is_dead()) {
            self.cells.pop_front();
        }
    }

    /// Returns the cell of `seq`, if it is still registered.
    pub(crate) fn find(&self, seq: u64) -> Option<&Arc<TaskCell>> {
        let i = self.cells.binary_search_by_key(&seq, |c| c.seq).ok()?;
        self.cells.get(i)
    }

    /// Returns every registered cell that is live to the owner.
    pub(crate) fn live(&self) -> Vec<Arc<TaskCell>> {
        self.cells
            .iter()
            .filter(|c| !c.is_dead())
            .cloned()
            .collect()
    }

    /// Drops every cell.
    pub(crate) fn clear(&mut self) {
        self.cells.clear();
        self.compacted = 0;
    }
}
