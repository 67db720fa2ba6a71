//! The locked ready queue: ready tasks that do not go through the lock-free
//! FIFO (tasks of other priorities than 0, and tasks released by their
//! upstream), highest priority first, then in the order they were added.
//!
//! Each priority has its own level. Within a level, tasks usually become
//! ready in increasing id order, so a `VecDeque` takes them in O(1). A task
//! that becomes ready out of order (released by its upstream after later
//! tasks were queued) goes to a min-heap of the same level instead; popping
//! takes the smaller id of the two heads. Levels live in a `BTreeMap` keyed
//! by priority, so finding the best level is O(log p) in the number of
//! distinct priorities in use.
//!
//! Removal is lazy: a stopped task stays as a stale entry and is skipped
//! when it reaches the head (the caller's `take` check fails), so a stop is
//! O(1) here; every entry is popped at most once.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::cell::TaskCell;
use crate::sync::Arc;

/// A cell ordered by sequence number.
#[derive(Debug)]
struct BySeq(Arc<TaskCell>);

impl PartialEq for BySeq {
    fn eq(&self, other: &Self) -> bool {
        self.0.seq == other.0.seq
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
        self.0.seq.cmp(&other.0.seq)
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
            (Some(f), Some(Reverse(l))) => l.0.seq < f.seq,
            (None, Some(_)) => true,
            _ => false,
        };
        if late_first {
            self.late.pop().map(|Reverse(BySeq(c))| c)
        } else {
            self.fifo.pop_front()
        }
    }

    /// Returns the smallest id's entry without popping it.
    fn peek(&self) -> Option<&Arc<TaskCell>> {
        match (self.fifo.front(), self.late.peek()) {
            (Some(f), Some(Reverse(l))) if l.0.seq < f.seq => Some(&l.0),
            (Some(f), _) => Some(f),
            (None, Some(Reverse(l))) => Some(&l.0),
            (None, None) => None,
        }
    }

    /// Returns `true` if the level holds no entries, live or stale.
    fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.late.is_empty()
    }
}

/// Ready tasks ordered by (priority descending, id ascending).
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    /// Priority 0, the default: kept even when empty, so a chain of tasks
    /// that each become ready alone does not allocate a level per task.
    zero: Level,
    /// Non-empty levels of other priorities, best (highest) first.
    levels: BTreeMap<Reverse<i32>, Level>,
}

impl ReadyQueue {
    /// Queues `cell` at `priority`. O(log p); O(1) when ids arrive in order.
    pub(crate) fn push(&mut self, priority: i32, cell: Arc<TaskCell>) {
        let level = if priority == 0 {
            &mut self.zero
        } else {
            self.levels.entry(Reverse(priority)).or_default()
        };
        match level.fifo.back() {
            Some(back) if cell.seq < back.seq => level.late.push(Reverse(BySeq(cell))),
            _ => level.fifo.push_back(cell),
        }
    }

    /// Pops the best entry for which `take(cell, priority it was queued at)`
    /// succeeds, discarding the others.
    pub(crate) fn pop(
        &mut self,
        mut take: impl FnMut(&TaskCell, i32) -> bool,
    ) -> Option<Arc<TaskCell>> {
        loop {
            let best = self.levels.first_key_value().map(|(Reverse(p), _)| *p);
            let (popped, priority) = match best {
                Some(p) if p > 0 || self.zero.is_empty() => {
                    let mut entry = self.levels.first_entry().expect("non-empty");
                    let popped = entry.get_mut().pop();
                    if entry.get().is_empty() {
                        entry.remove();
                    }
                    (popped, p)
                }
                _ => (Some(self.zero.pop()?), 0),
            };
            if let Some(cell) = popped {
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
        loop {
            let best = self.levels.first_key_value().map(|(Reverse(p), _)| *p);
            match best {
                Some(p) if p > 0 || self.zero.is_empty() => {
                    let mut entry = self.levels.first_entry().expect("non-empty");
                    let head = entry.get().peek().expect("levels in the map are non-empty");
                    if is_live(head, p) {
                        return;
                    }
                    entry.get_mut().pop();
                    if entry.get().is_empty() {
                        entry.remove();
                    }
                }
                _ => match self.zero.peek() {
                    Some(head) if !is_live(head, 0) => {
                        self.zero.pop();
                    }
                    _ => return,
                },
            }
        }
    }

    /// Returns the highest priority with an entry (live or stale).
    pub(crate) fn best_priority(&self) -> Option<i32> {
        let other = self.levels.first_key_value().map(|(Reverse(p), _)| *p);
        match other {
            Some(p) if p > 0 || self.zero.is_empty() => Some(p),
            _ if !self.zero.is_empty() => Some(0),
            _ => None,
        }
    }

    /// Drops every entry.
    pub(crate) fn clear(&mut self) {
        self.zero = Level::default();
        self.levels.clear();
    }
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
        assert!(q.levels.is_empty() && q.zero.is_empty());
    }
}
