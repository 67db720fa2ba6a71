//! The synchronisation primitives the crate uses, in one place.
//!
//! Everything that blocks or shares state across threads is imported from
//! here, so that under `--cfg bgtask_loom` the model checker's atomics, mutexes and
//! condvars replace them without touching the scheduler (see
//! `src/tests/`). The API is `parking_lot`'s: `lock()` returns the guard
//! directly, and condvars wait on `&mut` guards. `parking_lot`'s locks do
//! not poison: no user code runs while one of our locks is held, so a
//! poisoned state cannot arise from a task, and we need no recovery path.
//!
//! `Arc` and `Weak` stay `std`'s under loom: what the models check is the
//! ordering of atomics and locks, not reference counts.

pub(crate) use std::sync::{Arc, Weak};

#[cfg(not(bgtask_loom))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
#[cfg(not(bgtask_loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

#[cfg(bgtask_loom)]
pub(crate) use self::loom_shim::{Condvar, Mutex, MutexGuard};
#[cfg(bgtask_loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// `parking_lot`-shaped wrappers over loom's `std`-shaped locks.
#[cfg(bgtask_loom)]
mod loom_shim {
    use std::ops::{Deref, DerefMut};
    use std::time::Instant;

    /// A mutex whose `lock` returns the guard directly.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T: ?Sized>(loom::sync::Mutex<T>);

    /// The guard of [`Mutex`]; `Option` so a condvar can take it and put it back.
    #[derive(Debug)]
    pub(crate) struct MutexGuard<'a, T: ?Sized>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        /// Creates a mutex.
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }
    }

    impl<T: ?Sized> Mutex<T> {
        /// Locks it.
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(
                self.0.lock().expect("no user code runs under our locks"),
            ))
        }

        /// Locks it if it is free.
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok().map(|g| MutexGuard(Some(g)))
        }

        /// A hint only (loom's mutex cannot be looked at without locking
        /// it): `false`, so that callers go on to `try_lock`.
        pub(crate) fn is_locked(&self) -> bool {
            false
        }
    }

    impl<T: ?Sized> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("guard present")
        }
    }

    impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("guard present")
        }
    }

    /// What a timed wait reports.
    #[derive(Debug)]
    pub(crate) struct WaitTimeoutResult;

    impl WaitTimeoutResult {
        /// Loom has no time: a timed wait never times out.
        pub(crate) fn timed_out(&self) -> bool {
            false
        }
    }

    /// A condvar that waits on `&mut` guards.
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// Creates a condvar.
        pub(crate) fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }

        /// Waits for a notification.
        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard present");
            guard.0 = Some(
                self.0
                    .wait(inner)
                    .expect("no user code runs under our locks"),
            );
        }

        /// Waits for a notification (loom has no time to time out in).
        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            _deadline: Instant,
        ) -> WaitTimeoutResult {
            self.wait(guard);
            WaitTimeoutResult
        }

        /// Wakes one waiter.
        pub(crate) fn notify_one(&self) -> bool {
            self.0.notify_one();
            true
        }

        /// Wakes every waiter.
        pub(crate) fn notify_all(&self) -> usize {
            self.0.notify_all();
            0
        }
    }
}
