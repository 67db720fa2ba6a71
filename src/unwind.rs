//! The one place where user panics are caught, and how failures are described.
//!
//! A task fails by returning `Err` or by panicking. Either way the worker
//! lives on and the owner gets a message and a traceback. The panic's source
//! location is not part of the payload that `catch_unwind` returns, so a
//! process-wide panic hook (installed once, chained to whatever hook was there
//! before) records it, and the backtrace when `RUST_BACKTRACE` asks for one,
//! in a thread-local while a task runs. Panics outside tasks go to the
//! previous hook untouched. Panics inside tasks are not printed: they are
//! reported as `Event::Failed` instead, so a thousand failing thumbnails do
//! not flood stderr.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe, Location};
use std::sync::Once;

/// Why a task failed, as delivered in `Event::Failed`.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The error's `Display` (top level only) or the panic payload.
    pub(crate) message: String,
    /// Never empty: source chain and where the task was added, or the panic
    /// location and backtrace.
    pub(crate) traceback: String,
}

thread_local! {
    /// Set while this thread runs a task body, so the hook knows to record
    /// rather than print.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// What the hook recorded about the last panic in a task on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the recording panic hook once per process.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TASK.with(Cell::get) {
                let mut text = match info.location() {
                    Some(loc) => {
                        format!("panicked at {}:{}:{}", loc.file(), loc.line(), loc.column())
                    }
                    None => String::from("panicked at an unknown location"),
                };
                let bt = Backtrace::capture();
                if bt.status() == BacktraceStatus::Captured {
                    let _ = write!(text, "\nstack backtrace:\n{bt}");
                }
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs a task body, catching a panic and turning it into a [`Failure`].
///
/// `added_at` is where the task was added; it ends every traceback so that
/// the owner can find the code that queued the failing work.
pub(crate) fn catch_task<R>(
    added_at: &'static Location<'static>,
    body: impl FnOnce() -> R,
) -> Result<R, Failure> {
    install_hook();
    IN_TASK.with(|f| f.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(body));
    IN_TASK.with(|f| f.set(false));
    outcome.map_err(|payload| {
        let message = payload_message(payload.as_ref());
        // `None` when another hook replaced ours after we installed it.
        let recorded = LAST_PANIC.with(|p| p.borrow_mut().take());
        let mut traceback = recorded.unwrap_or_else(|| String::from("panicked (location unknown)"));
        let _ = write!(traceback, "\ntask added at {added_at}");
        // Dropping a payload can itself panic; that would kill the worker.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        Failure { message, traceback }
    })
}

/// Runs `f`, containing any panic (used for notifiers and user `Drop`s).
/// Returns `false` if it panicked.
pub(crate) fn contain(f: impl FnOnce()) -> bool {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(payload) => {
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            false
        }
    }
}

/// Drops each item, containing a panic in any one's `Drop` (user code:
/// jobs, outcomes, inputs and cells that may hold the last reference to a
/// user's value). Called with no lock held.
pub(crate) fn drop_each<T, I>(items: I)
where
    I: IntoIterator<Item = T>,
    I::IntoIter: ExactSizeIterator,
{
    let mut items = items.into_iter();
    if items.len() == 0 {
        return;
    }
    // One containment for the whole batch; after a panic, the items left
    // are dropped in a new one (the one that panicked is gone).
    while !contain(|| items.by_ref().for_each(drop)) {}
}

/// Returns the text of a panic payload.
fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("task panicked with a payload that is not a string")
    }
}

/// Describes a task that returned `Err`.
pub(crate) fn error_failure(
    err: &(dyn StdError + 'static),
    added_at: &'static Location<'static>,
) -> Failure {
    let message = err.to_string();
    let mut traceback = format!("error: {message}");
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(traceback, "\ncaused by: {cause}");
        source = cause.source();
    }
    let _ = write!(traceback, "\ntask added at {added_at}");
    Failure { message, traceback }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("download failed")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_failure_keeps_top_message_and_lists_sources() {
        let err = Outer(std::io::Error::other("connection reset"));
        let f = error_failure(&err, Location::caller());
        assert_eq!(f.message, "download failed");
        assert!(
            f.traceback.contains("caused by: connection reset"),
            "{}",
            f.traceback
        );
        assert!(f.traceback.contains("unwind.rs"), "{}", f.traceback);
    }

    #[test]
    fn caught_panic_reports_payload_and_location() {
        let f = catch_task(Location::caller(), || -> u8 { panic!("boom {}", 7) }).unwrap_err();
        assert_eq!(f.message, "boom 7");
        assert!(f.traceback.starts_with("panicked at "), "{}", f.traceback);
        assert!(f.traceback.contains("unwind.rs"), "{}", f.traceback);
        assert_eq!(catch_task(Location::caller(), || 5).unwrap(), 5);
    }

    #[test]
    fn non_string_payload_still_gives_a_message() {
        let f = catch_task(Location::caller(), || std::panic::panic_any(17u32)).unwrap_err();
        assert!(f.message.contains("not a string"));
        assert!(!contain(|| panic!("x")));
        assert!(contain(|| {}));
    }
}
