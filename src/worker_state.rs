//! Per-worker state: one value per worker thread, made lazily by the
//! factory given to `Builder::worker_state`, dropped when the thread ends.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use crate::sync::Arc;

/// Makes a worker's state; type-erased so the manager stays untyped.
pub(crate) type Factory = Arc<dyn Fn() -> Rc<dyn Any> + Send + Sync>;

/// Wraps a user factory of `S` into a [`Factory`].
pub(crate) fn factory<S: 'static>(make: impl Fn() -> S + Send + Sync + 'static) -> Factory {
    Arc::new(move || Rc::new(RefCell::new(make())) as Rc<dyn Any>)
}

/// A builder's factory, printable.
#[derive(Clone, Default)]
pub(crate) struct MaybeFactory(pub(crate) Option<Factory>);

impl fmt::Debug for MaybeFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

thread_local! {
    /// This worker thread's factory, set when the thread starts.
    static FACTORY: RefCell<Option<Factory>> = const { RefCell::new(None) };
    /// This worker thread's state, made on first use; dropped with the thread.
    static STATE: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

/// Installs the factory of the worker thread that calls it.
pub(crate) fn install(factory: Option<Factory>) {
    FACTORY.with(|f| *f.borrow_mut() = factory);
}

/// Returns this worker's state if it has type `S`, making it on first use.
pub(crate) fn get<S: 'static>() -> Option<Rc<RefCell<S>>> {
    let state = STATE.with(|s| s.borrow().clone()).or_else(|| {
        let made = FACTORY.with(|f| f.borrow().clone())?();
        STATE.with(|s| *s.borrow_mut() = Some(Rc::clone(&made)));
        Some(made)
    })?;
    state.downcast::<RefCell<S>>().ok()
}
