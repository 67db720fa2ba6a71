//! A cache prefetch hint for task cells: the crate's one `unsafe` block.
//!
//! A task's cell is written by whoever adds the task and read again by
//! whoever starts, releases or stops it, often much later and on another
//! core: each of those reads misses, and since nearly every step on a cell
//! is a locked instruction (which waits for the loads before it), the
//! misses come one after the other. Where the next cells to be touched are
//! known early, asking the CPU to start loading them lets the misses
//! overlap with other work:
//!
//! - a worker that starts a task with downstream tasks prefetches their
//!   cells ([`cell`]; `TaskCell::take_work`), which the task's end releases
//!   in the scheduler lock's critical section, where the other worker waits
//!   (BENCHMARKS.md item 61: W3 about 15 % faster);
//! - a pop of the locked ready queue prefetches the cell of the next best
//!   entry ([`held`]; `ReadyQueue::prefetch_best`), the next pop's (item
//!   62: W4, a backlog of 200,000 prioritised tasks, about 20 % faster);
//! - a group stop prefetches the members a few places ahead of the one it
//!   looks at (`GroupState::live_members`, item 62).
//!
//! A plain read cannot do this: reaching a cell through its `Weak` edge
//! takes a locked instruction (the upgrade), which waits for the miss there
//! and then, and measured slower than doing nothing. A prefetch instruction
//! waits for nothing, changes nothing, and cannot fault.

use crate::sync::{Arc, Weak};

/// The size of the `Arc` header (strong and weak counts) before a cell's
/// fields: `std`'s `ArcInner` for a type aligned to at most 16 bytes.
const ARC_HEADER: usize = 16;

/// Bytes of a cell to prefetch, from its `Arc` header, when only a `Weak`
/// to it is at hand (its size is then unknown): a graph task's cell
/// (counts, state, slot lock, payload, node, closure) is about 330 bytes
/// with a closure of a few words; see `TaskCell` and `Node` for the layout.
/// In W3, 192 and 320 bytes measured slower, 448 no faster, and 576
/// slower again (BENCHMARKS.md item 61).
const CELL_SPAN: usize = 384;

/// A cache line on the machines this is tuned for.
const LINE: usize = 64;

/// Asks the CPU to start loading the cache lines of the cell `edge` points
/// to, whether or not it is still alive. A hint: it changes no memory, and
/// a wrong or dangling address costs a wasted load at most.
pub(crate) fn cell<T: ?Sized>(edge: &Weak<T>) {
    let fields = Weak::as_ptr(edge).cast::<u8>();
    lines(fields.wrapping_sub(ARC_HEADER), CELL_SPAN);
}

/// Asks the CPU to start loading the cache lines of `cell`, a value held
/// in an `Arc`, counts included; see [`cell`].
pub(crate) fn held<T: ?Sized>(cell: &Arc<T>) {
    let fields = Arc::as_ptr(cell).cast::<u8>();
    lines(
        fields.wrapping_sub(ARC_HEADER),
        ARC_HEADER + std::mem::size_of_val::<T>(cell),
    );
}

/// Prefetches every cache line holding one of the `len` bytes from
/// `start`, into every cache level; does nothing on other targets than
/// x86_64.
#[allow(unsafe_code)]
fn lines(start: *const u8, len: usize) {
    let skew = start as usize % LINE; // `start`'s place in its line
    let first = start.wrapping_sub(skew);
    #[cfg(target_arch = "x86_64")]
    for offset in (0..skew + len).step_by(LINE) {
        let line = first.wrapping_add(offset).cast::<i8>();
        // SAFETY: `_mm_prefetch` is `unsafe` only because it is declared
        // with `#[target_feature(enable = "sse")]`, and SSE is part of every
        // x86_64 target. The instruction is a hint: it reads nothing the
        // program can observe, never faults (any address is allowed, valid
        // or not, which is why the pointer arithmetic above wraps and no
        // provenance is needed), and writes no memory.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (first, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Runs under Miri too (`cargo +nightly miri test --lib prefetch`, in
    // `.ci/run`), which checks that the hint is sound on live, freed and
    // never-allocated addresses.
    #[test]
    fn prefetching_live_freed_and_dangling_cells_is_harmless() {
        let live = Arc::new([7u64; 40]);
        let edge = Arc::downgrade(&live);
        cell(&edge);
        held(&live);
        assert_eq!(live[39], 7, "the hint changed nothing");

        drop(live);
        assert!(edge.upgrade().is_none());
        cell(&edge); // freed: a wasted load at most

        cell(&Weak::<[u64; 40]>::new()); // never allocated
        lines(std::ptr::null(), 4 * LINE);
        lines(std::ptr::null::<u8>().wrapping_sub(1), 2 * LINE); // wraps around
    }
}
