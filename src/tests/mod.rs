//! Model-checked tests of the synchronisation core, run under loom:
//!
//! ```sh
//! RUSTFLAGS="--cfg bgtask_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom_
//! ```
//!
//! `crate::sync` swaps in loom's atomics, mutexes and condvars under
//! `--cfg bgtask_loom`, so these models explore every interleaving (up to the
//! preemption bound) of the real `TaskCell` state machine and the real
//! graph transitions.

use crate::cell::TaskCell;
use crate::sync::Arc;

mod loom_cell;
mod loom_graph;

pub(super) use crate::cell::never;

/// A fast task's cell, claimed by a worker.
fn claimed(seq: u64) -> Arc<TaskCell> {
    let cell = crate::cell::test_cell(seq);
    assert!(cell.claim());
    cell
}
