//! The locked ready queue: ready tasks that do not go through the lock-free
//! FIFO (tasks of other priorities than 0, and tasks released by their
//! upstream), highest priority first, then in the order they were added.
//!
//! Each priority has its own level. Within a level, tasks usually become
//! ready in increasing id order, so a `VecDeque` takes them in O(1). A task
//! that becomes ready out of order (released by its upstream after later
//! tasks were queued) goes to a min-heap of the same level instead; popping
//! takes the smaller id of the two heads. Levels of priorities from -128 to
//! 127 sit in a table indexed by priority, with a bitmap of the non-empty
//! ones, so queueing and finding the best level are O(1); levels of other
//! priorities live in a `BTreeMap` keyed by priority (O(log p) in the
//! number of such priorities in use).
//!
//! Removal is lazy: a stopped task stays as a stale entry and is skipped
//! when it reaches the head (the caller's `take` check fails), so a stop is
//! O(1) here; every entry is popped at most once.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::cell::TaskCell;
use crate::sync::Arc;

/// A cell ordered by sequence number, kept beside it so that the heap
/// compares entries without reading the cells.
#[derive(Debug)]
struct BySeq(u64, Arc<TaskCell>);

impl PartialEq for BySeq {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for BySeq {}
impl PartialOrd for BySeq {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for BySeq {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

/// One priority's tasks, by id.
#[derive(Debug, Default)]
struct Level {
    /// Entries pushed in increasing id order.
    fifo: VecDeque<Arc<TaskCell>>,
    /// Entries whose id was smaller than the `fifo`'s back when pushed.
    late: BinaryHeap<Reverse<BySeq>>,
}

impl Level {
    /// Pops the smallest id.
    fn pop(&mut self) -> Option<Arc<TaskCell>> {
        let late_first = match (self.fifo.front(), self.late.peek()) {
            (Some(f), Some(Reverse(l))) => l.0 < f.seq,
            (None, Some(_)) => true,
            _ => false,
        };
        if late_first {
            self.late.pop().map(|Reverse(BySeq(_, c))| c)
        } else {
            self.fifo.pop_front()
        }
    }

    /// Returns the smallest id's entry without popping it.
    fn peek(&self) -> Option<&Arc<TaskCell>> {
        match (self.fifo.front(), self.late.peek()) {
            (Some(f), Some(Reverse(l))) if l.0 < f.seq => Some(&l.1),
            (Some(f), _) => Some(f),
            (None, Some(Reverse(l))) => Some(&l.1),
            (None, None) => None,
        }
    }

    /// Returns `true` if the level holds no entries, live or stale.
    fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.late.is_empty()
    }
}

/// The priorities with a level in the dense table: those of most
/// applications (a UI's "background", "normal", "urgent" and the like).
const DENSE: std::ops::RangeInclusive<i32> = -128..=127;

/// Number of levels in the dense table.
const DENSE_LEN: usize = 256;

/// Where a level lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// In the dense table, at this index.
    Dense(usize),
    /// In the sparse map, at this priority.
    Sparse(i32),
}

/// Ready tasks ordered by (priority descending, id ascending).
///
/// Priorities in [`DENSE`] have a level each in a table, found through a
/// bitmap of the non-empty ones: queueing is an index, finding the best
/// level a leading-zero count over four words. Other priorities keep their
/// non-empty levels in a `BTreeMap` (O(log p)).
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    /// Levels of the priorities in [`DENSE`], at `priority + 128`; empty
    /// until the first push (a manager that never queues here pays nothing).
    dense: Vec<Level>,
    /// Bit `i` is set iff `dense[i]` holds entries (live or stale).
    bits: [u64; DENSE_LEN / 64],
    /// Non-empty levels of the other priorities, best (highest) first.
    sparse: BTreeMap<Reverse<i32>, Level>,
}

impl ReadyQueue {
    /// Queues `cell` at `priority`: O(1) for a priority in [`DENSE`], else
    /// O(log p); a task that arrives out of id order costs O(log n) more.
    pub(crate) fn push(&mut self, priority: i32, cell: Arc<TaskCell>) {
        let level = if DENSE.contains(&priority) {
            if self.dense.is_empty() {
                self.dense.resize_with(DENSE_LEN, Level::default);
            }
            let i = dense_index(priority);
            self.bits[i / 64] |= 1 << (i % 64);
            &mut self.dense[i]
        } else {
            self.sparse.entry(Reverse(priority)).or_default()
        };
        match level.fifo.back() {
            Some(back) if cell.seq < back.seq => level.late.push(Reverse(BySeq(cell.seq, cell))),
            _ => level.fifo.push_back(cell),
        }
    }

    /// Returns the best non-empty level and its priority.
    fn best(&self) -> Option<(At, i32)> {
        let sparse = self.sparse.first_key_value().map(|(Reverse(p), _)| *p);
        if let Some(p) = sparse.filter(|p| p > DENSE.end()) {
            return Some((At::Sparse(p), p));
        }
        let dense = (0..self.bits.len()).rev().find_map(|w| {
            let word = self.bits[w];
            (word != 0).then(|| w * 64 + 63 - word.leading_zeros() as usize)
        });
        match dense {
            Some(i) => Some((At::Dense(i), i as i32 + DENSE.start())),
            None => sparse.map(|p| (At::Sparse(p), p)),
        }
    }

    /// The level at `at`, which is non-empty.
    fn level(&mut self, at: At) -> &mut Level {
        match at {
            At::Dense(i) => &mut self.dense[i],
            At::Sparse(p) => self.sparse.get_mut(&Reverse(p)).expect("a non-empty level"),
        }
    }

    /// Pops the smallest id of the level at `at` (non-empty), forgetting
    /// the level if that emptied it.
    fn pop_at(&mut self, at: At) -> Option<Arc<TaskCell>> {
        let level = self.level(at);
        let popped = level.pop();
        if level.is_empty() {
            match at {
                At::Dense(i) => self.bits[i / 64] &= !(1 << (i % 64)),
                At::Sparse(p) => {
                    self.sparse.remove(&Reverse(p));
                }
            }
        }
        popped
    }

    /// Pops the best entry for which `take(cell, priority it was queued at)`
    /// succeeds, discarding the others.
    pub(crate) fn pop(
        &mut self,
        mut take: impl FnMut(&TaskCell, i32) -> bool,
    ) -> Option<Arc<TaskCell>> {
        loop {
            let (at, priority) = self.best()?;
            if let Some(cell) = self.pop_at(at) {
                if take(&cell, priority) {
                    return Some(cell);
                }
            }
        }
    }

    /// Discards stale entries at the head until the best entry is live
    /// (`is_live(cell, priority it was queued at)`) or the queue is empty,
    /// so that [`best_priority`](Self::best_priority) names a live entry.
    pub(crate) fn drop_stale(&mut self, mut is_live: impl FnMut(&TaskCell, i32) -> bool) {
        while let Some((at, priority)) = self.best() {
            let head = self.level(at).peek().expect("levels in use are non-empty");
            if is_live(head, priority) {
                return;
            }
            self.pop_at(at);
        }
    }

    /// Prefetches the cell of the best entry, the likely next pop (see
    /// `prefetch.rs`): the queue's cells were written by whoever queued
    /// them, often long before, and the next pop's reads of them would
    /// otherwise miss one after the other, under the scheduler lock.
    pub(crate) fn prefetch_best(&self) {
        let best = self.best().and_then(|(at, _)| match at {
            At::Dense(i) => self.dense[i].peek(),
            At::Sparse(p) => self.sparse.get(&Reverse(p)).and_then(Level::peek),
        });
        if let Some(cell) = best {
            crate::prefetch::held(cell);
        }
    }

    /// Returns the highest priority with an entry (live or stale).
    pub(crate) fn best_priority(&self) -> Option<i32> {
        self.best().map(|(_, p)| p)
    }

    /// Drops every entry.
    pub(crate) fn clear(&mut self) {
        *self = ReadyQueue::default();
    }
}

/// The index of `priority` (in [`DENSE`]) in the dense table.
fn dense_index(priority: i32) -> usize {
    (priority - DENSE.start()) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::test_cell as cell;

    fn drain(q: &mut ReadyQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop(|_, _| true))
            .map(|c| c.seq)
            .collect()
    }

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut q = ReadyQueue::default();
        q.push(0, cell(1));
        q.push(5, cell(2));
        q.push(0, cell(3));
        q.push(-3, cell(4));
        q.push(5, cell(5));
        assert_eq!(q.best_priority(), Some(5));
        assert_eq!(drain(&mut q), vec![2, 5, 1, 3, 4]);
        assert_eq!(q.best_priority(), None);
    }

    #[test]
    fn late_entries_take_their_place_by_id() {
        let mut q = ReadyQueue::default();
        for seq in [10, 12, 3, 11, 13] {
            q.push(0, cell(seq));
        }
        assert_eq!(drain(&mut q), vec![3, 10, 11, 12, 13]);
    }

    #[test]
    fn drop_stale_leaves_a_live_best_entry() {
        let mut q = ReadyQueue::default();
        q.push(5, cell(1)); // stale
        q.push(0, cell(2)); // stale
        q.push(0, cell(3));
        q.push(-1, cell(4));
        q.drop_stale(|c, _| c.seq > 2);
        assert_eq!(q.best_priority(), Some(0));
        assert_eq!(drain(&mut q), vec![3, 4]);
        q.push(0, cell(5));
        q.drop_stale(|_, _| false);
        assert_eq!(q.best_priority(), None);
    }

    #[test]
    fn entries_that_cannot_be_taken_are_skipped() {
        let mut q = ReadyQueue::default();
        for seq in 0..6 {
            q.push((seq % 2) as i32, cell(seq));
        }
        assert_eq!(q.pop(|c, _| c.seq != 1).map(|c| c.seq), Some(3));
        assert_eq!(q.pop(|c, _| c.seq != 5).map(|c| c.seq), Some(0));
        assert_eq!(drain(&mut q), vec![2, 4]);
        assert!(q.best().is_none() && q.sparse.is_empty());
    }

    #[test]
    fn dense_and_sparse_priorities_interleave_in_order() {
        let mut q = ReadyQueue::default();
        let priorities = [
            0,
            127,
            128,
            -128,
            -129,
            i32::MAX,
            i32::MIN,
            1,
            -1,
            128,
            -129,
            127,
        ];
        for (seq, &p) in priorities.iter().enumerate() {
            q.push(p, cell(seq as u64));
        }
        assert_eq!(q.best_priority(), Some(i32::MAX));
        assert_eq!(drain(&mut q), vec![5, 2, 9, 1, 11, 7, 0, 8, 3, 4, 10, 6]);
        assert_eq!(q.best_priority(), None);
        // Reusable after emptying, and `clear` forgets everything.
        q.push(-129, cell(20));
        q.push(3, cell(21));
        assert_eq!(q.best_priority(), Some(3));
        q.clear();
        assert_eq!(q.best_priority(), None);
        assert!(q.pop(|_, _| true).is_none());
    }

    proptest::proptest! {
        // Shrunk in memory; nothing written next to the sources.
        #![proptest_config(proptest::test_runner::Config {
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Against a sorted list: any priorities, ids out of order, and
        /// entries that cannot be taken, popped interleaved with pushes.
        #[test]
        fn pops_in_priority_then_id_order(
            ops in proptest::collection::vec(
                (proptest::prop_oneof![-3..3i32, -200..200i32, proptest::num::i32::ANY],
                 0..64u64, proptest::bool::ANY, 0..4u8),
                0..200,
            )
        ) {
            let mut q = ReadyQueue::default();
            let mut model: Vec<(i32, u64, bool)> = Vec::new();
            let mut next = 1000u64;
            for (priority, jitter, live, action) in ops {
                if action == 0 {
                    // (priority, id, live) queued, `live` decides `take`.
                    let popped = q.pop(|c, p| {
                        let entry = model.iter().find(|e| e.1 == c.seq).expect("queued");
                        assert_eq!(entry.0, p, "popped at another priority");
                        entry.2
                    });
                    model.sort_by_key(|&(p, seq, _)| (Reverse(p), seq));
                    let expected = model.iter().position(|e| e.2);
                    let want = expected.map(|i| model[i].1);
                    proptest::prop_assert_eq!(popped.map(|c| c.seq), want);
                    // Everything ahead of the taken entry was discarded.
                    let cut = expected.map_or(model.len(), |i| i + 1);
                    model.drain(..cut);
                } else {
                    let seq = next + jitter;
                    next += 64;
                    let seq = if jitter % 5 == 0 { seq - 500 } else { seq };
                    if model.iter().any(|e| e.1 == seq) {
                        continue;
                    }
                    q.push(priority, cell(seq));
                    model.push((priority, seq, live));
                }
                let best = model.iter().map(|e| e.0).max();
                proptest::prop_assert_eq!(q.best_priority(), best);
            }
        }
    }
}
