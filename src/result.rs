//! `TaskResult`: the type-erased value a task returned.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// The value a task returned, type-erased and cheap to clone.
///
/// Read it with [`downcast_ref`](TaskResult::downcast_ref). A pass-through
/// task's result, and any task result of type [`Kwargs`](crate::Kwargs),
/// reads the same way with `downcast_ref::<Kwargs>()`.
///
/// A value of a primitive type (`()`, `bool`, `char`, the integer types up
/// to 64 bits and `usize`/`isize`, `f32`, `f64`) is kept inline, without an
/// allocation; any other value is shared behind one `Arc`, which clones of
/// the result (in events, in downstream tasks' inputs) share.
///
/// # Examples
///
/// ```
/// use bgtask::{Event, TaskManager};
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// let manager = TaskManager::builder().start_processing(true).build()?;
/// let events = manager.subscribe();
/// manager.add_task(|_| Ok::<_, Infallible>(String::from("done")))?;
/// match events.recv_timeout(Duration::from_secs(10)).unwrap() {
///     Event::Completed { result, .. } => {
///         assert_eq!(result.downcast_ref::<String>().unwrap(), "done");
///         assert!(result.downcast_ref::<u32>().is_none());
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), bgtask::Error>(())
/// ```
#[derive(Clone)]
pub struct TaskResult(Repr);

/// How a [`TaskResult`] holds its value.
#[derive(Clone)]
enum Repr {
    /// A value of a primitive type, inline.
    Small(Small),
    /// Any other value, shared.
    Shared(Arc<dyn Any + Send + Sync>),
}

/// Declares [`Small`], a primitive value inline, with its conversions.
macro_rules! small {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// A value of one of the primitive types kept inline.
        #[derive(Clone, Copy)]
        enum Small {
            $(
                #[doc = concat!("A `", stringify!($ty), "`.")]
                $variant($ty),
            )*
        }

        impl Small {
            /// `value` inline if its type is one of the primitive types
            /// (decided at compile time: `T` is known where this is
            /// inlined, so the checks fold away).
            fn of<T: Any>(value: &T) -> Option<Small> {
                let any = value as &dyn Any;
                $(
                    if TypeId::of::<T>() == TypeId::of::<$ty>() {
                        return any.downcast_ref::<$ty>().map(|v| Small::$variant(*v));
                    }
                )*
                None
            }

            /// The value, borrowed as `dyn Any`.
            fn as_any(&self) -> &(dyn Any + Send + Sync) {
                match self {
                    $(Small::$variant(v) => v,)*
                }
            }

            /// A copy of the value in a new `Arc`.
            fn to_arc(self) -> Arc<dyn Any + Send + Sync> {
                match self {
                    $(Small::$variant(v) => Arc::new(v),)*
                }
            }
        }
    };
}

small! {
    Unit(()),
    Bool(bool),
    Char(char),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Usize(usize),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    Isize(isize),
    F32(f32),
    F64(f64),
}

impl TaskResult {
    /// `true` if the value is kept inline: a primitive, whose drop runs no
    /// user code.
    pub(crate) fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Small(_))
    }

    /// Wraps a task's return value: inline if it is of a primitive type,
    /// else in an `Arc`.
    pub(crate) fn new<T: Any + Send + Sync>(value: T) -> Self {
        match Small::of(&value) {
            Some(small) => TaskResult(Repr::Small(small)),
            None => TaskResult(Repr::Shared(Arc::new(value))),
        }
    }

    /// The value, borrowed as `dyn Any`.
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        match &self.0 {
            Repr::Small(small) => small.as_any(),
            Repr::Shared(shared) => &**shared,
        }
    }

    /// Returns the value if it has type `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }

    /// Returns the value as a shared pointer if it has type `T`.
    ///
    /// A value kept inline (of a primitive type) is copied into a new `Arc`
    /// on each call; any other value's `Arc` is shared with the result.
    pub fn downcast_arc<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        match &self.0 {
            Repr::Small(small) if small.as_any().is::<T>() => small.to_arc().downcast::<T>().ok(),
            Repr::Small(_) => None,
            Repr::Shared(shared) => Arc::clone(shared).downcast::<T>().ok(),
        }
    }

    /// Returns `true` if the value has type `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.as_any().is::<T>()
    }
}

impl fmt::Debug for TaskResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskResult").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `value` is kept inline and reads back through every
    /// accessor, and that other types do not match it.
    fn inline<T: Any + Send + Sync + Copy + PartialEq + fmt::Debug>(value: T) {
        let r = TaskResult::new(value);
        assert!(matches!(r.0, Repr::Small(_)), "{value:?} is kept inline");
        assert_eq!(r.downcast_ref::<T>(), Some(&value));
        assert_eq!(r.downcast_arc::<T>().as_deref(), Some(&value));
        assert!(r.is::<T>());
        let copy = r.clone();
        assert_eq!(copy.downcast_ref::<T>(), Some(&value));
        assert!(r.downcast_ref::<String>().is_none());
        assert!(r.downcast_arc::<String>().is_none());
        assert!(!r.is::<String>());
    }

    #[test]
    fn primitive_values_are_kept_inline_and_read_back() {
        inline(());
        inline(true);
        inline('x');
        inline(7u8);
        inline(7u16);
        inline(7u32);
        inline(u64::MAX);
        inline(usize::MAX);
        inline(-7i8);
        inline(-7i16);
        inline(i32::MIN);
        inline(i64::MIN);
        inline(isize::MIN);
        inline(1.5f32);
        inline(-2.5f64);
        // Types that look alike do not match each other.
        let r = TaskResult::new(7u32);
        assert!(r.downcast_ref::<i32>().is_none() && r.downcast_ref::<u64>().is_none());
        assert!(r.downcast_arc::<u64>().is_none());
    }

    #[test]
    fn other_values_are_shared_by_clones() {
        let r = TaskResult::new(String::from("shared"));
        assert!(matches!(r.0, Repr::Shared(_)));
        let copy = r.clone();
        let (a, b) = (
            r.downcast_arc::<String>().unwrap(),
            copy.downcast_arc::<String>().unwrap(),
        );
        assert!(Arc::ptr_eq(&a, &b), "one allocation, shared");
        assert_eq!(
            copy.downcast_ref::<String>().map(String::as_str),
            Some("shared")
        );
        assert!(r.is::<String>() && !r.is::<u32>());
        // 128-bit integers and composite values are not inline.
        assert!(matches!(TaskResult::new(1u128).0, Repr::Shared(_)));
        assert!(matches!(TaskResult::new((1u8, 2u8)).0, Repr::Shared(_)));
        assert!(matches!(TaskResult::new(Some(1u32)).0, Repr::Shared(_)));
    }
}
