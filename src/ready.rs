//! The ready queue: tasks that may start, highest priority first, then in
//! the order they were added.
//!
//! Each priority has its own level. Within a level, tasks usually become
//! ready in increasing id order (they are added ready), so a `VecDeque`
//! takes them in O(1). A task that becomes ready out of order (released by
//! its upstream after later tasks were queued) goes to a small min-heap of
//! the same level instead; popping takes the smaller id of the two heads.
//! Levels live in a `BTreeMap` keyed by priority, so finding the best level
//! is O(log p) in the number of distinct priorities in use.
//!
//! Removal is lazy: a stopped task stays in its level as a stale entry and
//! is skipped when it reaches the head (the caller's `is_live` check), so a
//! stop is O(1) here. Every entry is popped at most once, so the skipping is
//! paid for by the push.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// One priority's tasks, by id.
#[derive(Debug, Default)]
struct Level {
    /// Entries pushed in increasing id order.
    fifo: VecDeque<u64>,
    /// Entries whose id was smaller than the `fifo`'s back when pushed.
    late: BinaryHeap<Reverse<u64>>,
}

impl Level {
    /// Pops the smallest id.
    fn pop(&mut self) -> Option<u64> {
        match (self.fifo.front(), self.late.peek()) {
            (Some(&f), Some(&Reverse(l))) if l < f => self.late.pop().map(|Reverse(l)| l),
            (Some(_), _) => self.fifo.pop_front(),
            (None, Some(_)) => self.late.pop().map(|Reverse(l)| l),
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
    /// Non-empty levels, best (highest priority) first.
    levels: BTreeMap<Reverse<i32>, Level>,
}

impl ReadyQueue {
    /// Queues task `seq` at `priority`. O(log p), O(1) when ids arrive in order.
    pub(crate) fn push(&mut self, priority: i32, seq: u64) {
        let level = self.levels.entry(Reverse(priority)).or_default();
        match level.fifo.back() {
            Some(&back) if seq < back => level.late.push(Reverse(seq)),
            _ => level.fifo.push_back(seq),
        }
    }

    /// Pops the best entry for which `is_live` holds, discarding stale ones.
    pub(crate) fn pop(&mut self, mut is_live: impl FnMut(u64) -> bool) -> Option<u64> {
        loop {
            let mut entry = self.levels.first_entry()?;
            let level = entry.get_mut();
            let popped = level.pop();
            if level.is_empty() {
                entry.remove();
            }
            if let Some(seq) = popped {
                if is_live(seq) {
                    return Some(seq);
                }
            }
        }
    }

    /// Drops every entry.
    pub(crate) fn clear(&mut self) {
        self.levels.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut ReadyQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop(|_| true)).collect()
    }

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut q = ReadyQueue::default();
        q.push(0, 1);
        q.push(5, 2);
        q.push(0, 3);
        q.push(-3, 4);
        q.push(5, 5);
        assert_eq!(drain(&mut q), vec![2, 5, 1, 3, 4]);
    }

    #[test]
    fn late_entries_take_their_place_by_id() {
        let mut q = ReadyQueue::default();
        q.push(0, 10);
        q.push(0, 12);
        q.push(0, 3); // released late, added early
        q.push(0, 11);
        q.push(0, 13);
        assert_eq!(drain(&mut q), vec![3, 10, 11, 12, 13]);
    }

    #[test]
    fn stale_entries_are_skipped() {
        let mut q = ReadyQueue::default();
        for seq in 0..6 {
            q.push((seq % 2) as i32, seq);
        }
        assert_eq!(q.pop(|s| s != 1), Some(3));
        assert_eq!(q.pop(|s| s != 5), Some(0));
        assert_eq!(drain(&mut q), vec![2, 4]);
        assert!(q.levels.is_empty());
    }
}
