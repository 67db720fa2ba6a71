//! The synchronisation primitives the crate uses, in one place.
//!
//! Everything that blocks or shares state across threads is imported from
//! here, so a model checker can be swapped in under a cfg without touching
//! the scheduler. `parking_lot`'s locks do not poison: no user code runs
//! while one of our locks is held, so a poisoned state cannot arise from a
//! task, and we need no recovery path.

pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering,
};
pub(crate) use std::sync::{Arc, Weak};
