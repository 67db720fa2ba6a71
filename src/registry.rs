//! The registry: every task by sequence number, so that stop calls and
//! `after` can find them; it also holds the strong reference that keeps a
//! live task's cell (and so its graph edges' targets) alive.
//!
//! # Invariants
//!
//! 1. `cells` is sorted by sequence number: entries are pushed under this
//!    lock with sequence numbers allocated under it.
//! 2. Every task that is live to the owner is in `cells`. Dead ones
//!    leave from the front when pushing and when a worker is about to
//!    sleep (`take_dead`), and from anywhere when a compaction finds
//!    them, amortised O(1) per task: a compaction reads every cell, and
//!    the next waits until the deque has grown to twice what the last
//!    kept, or to four times after one that let go of less than a quarter
//!    of what it read. (Reading a cell the owner did not touch lately is a
//!    cache miss; while every task stays live, as when the owner adds a
//!    whole graph before receiving any event, doubling cost the owner about
//!    1.3 misses per task added, and this about 0.4. Dead cells wait for
//!    at most three times the live ones.)
//! 3. The registry never drops a cell under its lock: it hands the cells
//!    it lets go of to the caller, which drops them once no lock is held,
//!    each contained (`unwind::drop_each`). The registry's reference is
//!    often a cell's last, and dropping the cell drops the result it
//!    keeps for its handles, a user value whose `Drop` may panic.
//! 4. *Late edges.* A task added after an upstream task that had finished
//!    (its event still undelivered, so it is live) gets no edge in that
//!    task's node: nothing will release it, and the edge serves only stop
//!    cascades (a stop goes on from such a task, SPEC 6). The edge is kept
//!    here instead, in a list per upstream task threaded through `late`
//!    from its cell's `late_head`, read and changed under this lock only,
//!    by `state::link` while it holds the upstream's slot lock and by a
//!    stop that holds this lock from its compare-and-swap on the upstream
//!    until it has read the list (so a stop either comes first, and the
//!    linker sees the task stopped, or sees the edge; and a list is never
//!    read after its cell left the registry, when it may be reclaimed).
//!    Writing the upstream's node would cost the owner a cache miss: the
//!    worker that ended the task wrote next to it. The lists of cells that
//!    left are garbage, reclaimed by rebuilding `late` once they are at
//!    least half of it and a quarter of the registry's length (amortised
//!    O(1) per edge).

use std::collections::VecDeque;

use crate::cell::TaskCell;
use crate::fifo::FifoTail;
use crate::sync::{Arc, Ordering};

/// `TaskCell::late_head` of a task without late edges (invariant 4).
pub(crate) const NO_LATE: u32 = u32::MAX;

/// A late edge (invariant 4): to task `down`, in the list of an upstream
/// task; `next` is the list's next entry in `Registry::late`.
#[derive(Debug, Clone, Copy)]
struct LateEdge {
    down: u64,
    next: u32,
}

/// Late edges left in lists of cells that left the registry, below which
/// `late` is never rebuilt.
const LATE_GARBAGE_MIN: usize = 1024;

/// Cells the registry let go of, for the caller to drop once no lock is
/// held (invariant 3). A push usually lets go of none or one: those cases
/// cost no iterator and no allocation.
#[must_use = "the released cells must be dropped once no lock is held"]
pub(crate) enum Released {
    /// Nothing.
    None,
    /// One cell.
    One(Arc<TaskCell>),
    /// Several (a compaction, or a run of dead cells at the front).
    Many(Vec<Arc<TaskCell>>),
}

impl Released {
    /// Adds a cell.
    fn add(&mut self, cell: Arc<TaskCell>) {
        *self = match std::mem::replace(self, Released::None) {
            Released::None => Released::One(cell),
            Released::One(first) => Released::Many(vec![first, cell]),
            Released::Many(mut cells) => {
                cells.push(cell);
                Released::Many(cells)
            }
        };
    }

    /// Adds several cells.
    fn add_all(&mut self, cells: impl Iterator<Item = Arc<TaskCell>>) {
        let mut all = match std::mem::replace(self, Released::None) {
            Released::None => Vec::new(),
            Released::One(first) => vec![first],
            Released::Many(all) => all,
        };
        all.extend(cells);
        *self = Released::Many(all);
    }

    /// Drops the cells, each contained (the caller holds no lock).
    pub(crate) fn drop_contained(self) {
        match self {
            Released::None => {}
            Released::One(cell) => crate::unwind::drop_each([cell]),
            Released::Many(cells) => crate::unwind::drop_each(cells),
        }
    }
}

/// The length at which the first compaction runs.
const FIRST_COMPACTION: usize = 2048;

/// Tasks by sequence number; guarded by its own lock.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Cells in increasing sequence order (invariant 1).
    cells: VecDeque<Arc<TaskCell>>,
    /// Length at which the next compaction runs (invariant 2; at least
    /// [`FIRST_COMPACTION`]).
    next_compaction: usize,
    /// The late edges' lists (invariant 4).
    late: Vec<LateEdge>,
    /// Entries of `late` in lists of cells that left.
    late_garbage: usize,
    /// The producer end of the manager's FIFO, pushed under this lock
    /// (`fifo.rs`, invariant 1).
    pub(crate) fifo: FifoTail,
}

impl Registry {
    /// Adds a cell whose sequence number is larger than any before;
    /// returns the dead cells it let go of (invariant 3).
    pub(crate) fn push(&mut self, cell: Arc<TaskCell>) -> Released {
        let mut released = Released::None;
        self.pop_dead(|c| released.add(c));
        debug_assert!(self.cells.back().is_none_or(|b| b.seq < cell.seq));
        self.cells.push_back(cell);
        if self.cells.len() >= self.next_compaction.max(FIRST_COMPACTION) {
            // A stable partition in place: live cells move to the front in
            // their order (invariant 1), dead ones to the back, whence they
            // are released (moved, not cloned).
            let cells = self.cells.make_contiguous();
            let read = cells.len();
            let mut kept = 0;
            for i in 0..read {
                if !cells[i].is_dead() {
                    cells.swap(kept, i);
                    kept += 1;
                }
            }
            if kept < read {
                for i in kept..read {
                    self.late_garbage += self.late_len(&self.cells[i]);
                }
                released.add_all(self.cells.drain(kept..));
            }
            let factor = if (read - kept) * 4 < read { 4 } else { 2 };
            self.next_compaction = kept * factor;
        }
        self.reclaim_late();
        released
    }

    /// Takes the dead cells off the front, for a worker about to sleep to
    /// drop once it holds no lock (dropping a cell frees its node, result
    /// and memory, too slow for a critical section).
    pub(crate) fn take_dead(&mut self) -> Vec<Arc<TaskCell>> {
        let mut dead = Vec::new();
        self.pop_dead(|c| dead.push(c));
        self.reclaim_late();
        dead
    }

    /// Hands the dead cells at the front to `f`, in order.
    fn pop_dead(&mut self, mut f: impl FnMut(Arc<TaskCell>)) {
        while self.cells.front().is_some_and(|c| c.is_dead()) {
            let cell = self.cells.pop_front().expect("a front cell was just seen");
            self.late_garbage += self.late_len(&cell);
            f(cell);
        }
    }

    /// Records a late edge (invariant 4) from task `up`, registered and
    /// finished with its event pending, to task `down`. Returns `false`,
    /// recording nothing, if `up` is not registered or `late` has no room
    /// left (its indices are `u32`s; see [`has_late_room`](Self::has_late_room)).
    pub(crate) fn add_late(&mut self, up: u64, down: u64) -> bool {
        let at = match u32::try_from(self.late.len()) {
            Ok(at) if at != NO_LATE => at,
            _ => return false,
        };
        let Some(cell) = self.find(up) else {
            return false;
        };
        // Changed under this lock only (invariant 4): a load and a store do
        // what a swap would, without a locked instruction.
        let next = cell.late_head.load(Ordering::Relaxed);
        cell.late_head.store(at, Ordering::Relaxed);
        self.late.push(LateEdge { down, next });
        true
    }

    /// Returns `true` if `n` more late edges fit (see [`add_late`](Self::add_late)).
    pub(crate) fn has_late_room(&self, n: usize) -> bool {
        self.late.len() + n < NO_LATE as usize
    }

    /// Returns the registered tasks of `up`'s late edges (invariant 4:
    /// `up` is registered, and this lock was held since it was stopped).
    pub(crate) fn late_downstream(&self, up: &TaskCell) -> Vec<Arc<TaskCell>> {
        let mut found = Vec::new();
        let mut at = up.late_head.load(Ordering::Relaxed);
        while at != NO_LATE {
            let edge = self.late[at as usize];
            found.extend(self.find(edge.down).cloned());
            at = edge.next;
        }
        found
    }

    /// The length of `cell`'s list of late edges.
    fn late_len(&self, cell: &TaskCell) -> usize {
        let mut n = 0;
        let mut at = cell.late_head.load(Ordering::Relaxed);
        while at != NO_LATE {
            n += 1;
            at = self.late[at as usize].next;
        }
        n
    }

    /// Rebuilds `late` with the lists of registered cells only, once the
    /// garbage is at least half of it and a quarter of the registry's
    /// length (invariant 4): reading every cell's list head is then paid
    /// for by the garbage edges let go of.
    fn reclaim_late(&mut self) {
        let garbage = self.late_garbage;
        if garbage < LATE_GARBAGE_MIN
            || 2 * garbage < self.late.len()
            || 4 * garbage < self.cells.len()
        {
            return;
        }
        let mut kept = Vec::with_capacity(self.late.len() - garbage);
        for cell in &self.cells {
            let mut at = cell.late_head.load(Ordering::Relaxed);
            if at == NO_LATE {
                continue;
            }
            // The same list, in the same order (indices fit: `kept` is
            // shorter than `late`).
            cell.late_head.store(kept.len() as u32, Ordering::Relaxed);
            while at != NO_LATE {
                let edge = self.late[at as usize];
                at = edge.next;
                let next = if at == NO_LATE {
                    NO_LATE
                } else {
                    kept.len() as u32 + 1
                };
                kept.push(LateEdge {
                    down: edge.down,
                    next,
                });
            }
        }
        self.late = kept;
        self.late_garbage = 0;
    }

    /// Returns the cell of `seq`, if it is still registered.
    ///
    /// Sequence numbers are unique and increasing (invariant 1), so the
    /// cell of `seq` is at most `seq - first` places from the front, and
    /// exactly there while no cell between was removed (the common case:
    /// cells leave mostly from the front). That place is tried first; a
    /// binary search of the places before it (each probe reads a cell)
    /// is the fallback.
    pub(crate) fn find(&self, seq: u64) -> Option<&Arc<TaskCell>> {
        let first = self.cells.front()?.seq;
        let at_most = usize::try_from(seq.checked_sub(first)?).ok()?;
        let end = match self.cells.get(at_most) {
            Some(c) if c.seq == seq => return Some(c),
            Some(_) => at_most,
            None => self.cells.len(),
        };
        let (front, back) = self.cells.as_slices();
        let (front, back) = if end <= front.len() {
            (&front[..end], &back[..0])
        } else {
            (front, &back[..end - front.len()])
        };
        let search = |part: &[Arc<TaskCell>]| part.binary_search_by_key(&seq, |c| c.seq).ok();
        if let Some(i) = search(front) {
            return front.get(i);
        }
        search(back).and_then(|i| back.get(i))
    }

    /// Returns every registered cell that is live to the owner.
    pub(crate) fn live(&self) -> Vec<Arc<TaskCell>> {
        self.cells
            .iter()
            .filter(|c| !c.is_dead())
            .cloned()
            .collect()
    }

    /// Lets go of every cell (invariant 3).
    #[must_use = "the released cells must be dropped once no lock is held"]
    pub(crate) fn clear(&mut self) -> VecDeque<Arc<TaskCell>> {
        self.next_compaction = 0;
        self.late = Vec::new();
        self.late_garbage = 0;
        std::mem::take(&mut self.cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::test_cell as cell;

    /// A registry with a live cell for each of `seqs`, and the cells.
    fn filled(seqs: std::ops::Range<u64>) -> (Registry, Vec<Arc<TaskCell>>) {
        let mut r = Registry::default();
        let cells: Vec<_> = seqs.map(cell).collect();
        for c in &cells {
            drop(r.push(Arc::clone(c)));
        }
        (r, cells)
    }

    #[test]
    fn finds_every_cell_with_and_without_gaps() {
        let (mut r, _) = filled(10..3000);
        for seq in 10..3000 {
            assert_eq!(r.find(seq).map(|c| c.seq), Some(seq));
        }
        assert!(r.find(9).is_none() && r.find(3000).is_none());
        // Gaps: drop every third cell from the middle, as a compaction does.
        r.cells.retain(|c| c.seq % 3 != 0 || c.seq < 100);
        for seq in 10..3000 {
            let expected = (seq % 3 != 0 || seq < 100).then_some(seq);
            assert_eq!(r.find(seq).map(|c| c.seq), expected, "seq {seq}");
        }
        // A deque that wrapped around: its contents are in two slices.
        let mut r = Registry::default();
        for seq in 0..8 {
            drop(r.push(cell(seq)));
        }
        r.cells.pop_front();
        r.cells.pop_front();
        r.cells.retain(|c| c.seq != 5);
        for seq in 8..12 {
            drop(r.push(cell(seq)));
        }
        for seq in 0..14 {
            let expected = (2..12).contains(&seq).then_some(seq).filter(|&s| s != 5);
            assert_eq!(r.find(seq).map(|c| c.seq), expected, "seq {seq}");
        }
    }

    /// Everything a `Released` holds, in order.
    fn seqs(released: Released) -> Vec<u64> {
        match released {
            Released::None => Vec::new(),
            Released::One(c) => vec![c.seq],
            Released::Many(cs) => cs.iter().map(|c| c.seq).collect(),
        }
    }

    #[test]
    fn pushing_releases_dead_cells_and_compaction_keeps_the_order() {
        let mut r = Registry::default();
        // The front cell stays live, so dead ones pile up behind it.
        let cells: Vec<_> = (0..1024).map(cell).collect();
        for c in &cells {
            assert!(seqs(r.push(Arc::clone(c))).is_empty());
        }
        for c in cells.iter().skip(1).filter(|c| c.seq % 3 == 0) {
            let _ = c.stop();
            assert!(c.is_dead());
        }
        // Pushing up to the first compaction's length (2,048) compacts:
        // every dead cell is handed out, none is dropped here,
        // and the live ones keep their order (invariant 1).
        let mut released = Vec::new();
        for seq in 1024..2048 {
            released.extend(seqs(r.push(cell(seq))));
        }
        // (Dead cells leave in no particular order: they are only dropped.)
        released.sort_unstable();
        let dead: Vec<u64> = (1..1024).filter(|s| s % 3 == 0).collect();
        assert_eq!(released, dead);
        for seq in 0..2048 {
            let live = seq >= 1024 || seq == 0 || seq % 3 != 0;
            assert_eq!(r.find(seq).map(|c| c.seq), live.then_some(seq), "seq {seq}");
        }
        // Once the front cell dies, it goes on the next push, with the dead
        // run behind it.
        let _ = cells[0].stop();
        let _ = cells[1].stop();
        let _ = cells[2].stop();
        assert_eq!(seqs(r.push(cell(2048))), [0, 1, 2]);
        assert_eq!(r.clear().len(), 2049 - 3 - dead.len()); // cells 0..=2048
    }

    #[test]
    fn late_edges_are_listed_per_upstream_and_survive_reclaiming() {
        let (mut r, cells) = filled(0..3000);
        for up in 1..2000 {
            assert!(r.add_late(up, up + 1000));
        }
        assert!(r.add_late(2500, 2998));
        assert!(r.add_late(2500, 2999));
        assert!(
            !r.add_late(3000, 1),
            "an unregistered upstream gets no edge"
        );
        let listed = |r: &Registry, up: usize| -> Vec<u64> {
            r.late_downstream(&cells[up])
                .iter()
                .map(|c| c.seq)
                .collect()
        };
        assert_eq!(listed(&r, 2500), [2999, 2998], "newest first");
        assert_eq!(listed(&r, 7), [1007]);
        assert!(listed(&r, 2600).is_empty());
        // The cells with 1,999 of the 2,001 edges leave from the front: that
        // garbage is more than half of the edges and a quarter of the
        // registry, so the next push rebuilds the list.
        for c in &cells[..2000] {
            let _ = c.stop();
        }
        assert_eq!(seqs(r.push(cell(3000))), (0..2000).collect::<Vec<u64>>());
        assert_eq!(r.late.len(), 2);
        assert_eq!(r.late_garbage, 0);
        assert_eq!(listed(&r, 2500), [2999, 2998]);
        // A listed task that left is skipped.
        assert!(r.add_late(2600, 1500));
        assert_eq!(listed(&r, 2600), [] as [u64; 0]);
        assert!(r.add_late(2600, 2700));
        assert_eq!(listed(&r, 2600), [2700]);
        // Garbage below the thresholds stays: 2500's two edges
        // stay in the list as garbage when 2000..=2500 leave.
        for c in &cells[2000..=2500] {
            let _ = c.stop();
        }
        assert_eq!(
            seqs(r.push(cell(3001))),
            (2000..=2500).collect::<Vec<u64>>()
        );
        assert_eq!((r.late.len(), r.late_garbage), (4, 2));
        assert_eq!(listed(&r, 2600), [2700]);
    }

    /// Pushes cells `from..to`, returning the seqs released on the way and
    /// the seq whose push released them (one compaction expected).
    fn push_range(r: &mut Registry, from: u64, to: u64) -> (Vec<u64>, Option<u64>) {
        let mut released = Vec::new();
        let mut at = None;
        for seq in from..to {
            let out = seqs(r.push(cell(seq)));
            if !out.is_empty() {
                assert!(at.is_none(), "a second compaction at {seq}");
                at = Some(seq);
            }
            released.extend(out);
        }
        released.sort_unstable();
        (released, at)
    }

    #[test]
    fn the_next_compaction_waits_longer_after_one_that_found_little() {
        let mut r = Registry::default();
        // All live at the first compaction (2,048 read, none dead): the
        // next one waits until the deque holds four times as many.
        let front = cell(0);
        drop(r.push(Arc::clone(&front)));
        let (released, at) = push_range(&mut r, 1, 2048);
        assert!(released.is_empty() && at.is_none());
        let kept: Vec<Arc<TaskCell>> = (2048..8191).map(cell).collect();
        // Cells die behind the live front as they are added: nothing
        // leaves before the length reaches 8,192 (doubling would have
        // compacted at 4,096).
        for c in &kept {
            assert!(seqs(r.push(Arc::clone(c))).is_empty(), "at {}", c.seq);
            if c.seq % 2 == 0 {
                let _ = c.stop();
            }
        }
        let (released, at) = push_range(&mut r, 8191, 8192);
        assert_eq!(at, Some(8191), "the compaction runs at length 4 x 2,048");
        let dead: Vec<u64> = (2048..8191).filter(|s| s % 2 == 0).collect();
        assert_eq!(released, dead);
        // That one let go of more than a quarter of what it read: the next
        // runs at twice what it kept.
        let next = 2 * r.cells.len() as u64;
        let first = 8192;
        let last = first + next - r.cells.len() as u64 - 1; // reaches `next`
        let (released, at) = push_range(&mut r, first, last);
        assert!(released.is_empty() && at.is_none());
        for c in kept.iter().filter(|c| c.seq % 2 == 1) {
            let _ = c.stop();
        }
        let (released, at) = push_range(&mut r, last, last + 1);
        assert_eq!(at, Some(last));
        assert_eq!(released, (2049..8191).step_by(2).collect::<Vec<u64>>());
        assert_eq!(r.find(0).map(|c| c.seq), Some(0));
    }
}
