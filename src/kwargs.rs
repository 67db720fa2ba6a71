//! `Kwargs`: named, type-erased arguments passed into tasks and merged from
//! upstream results.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A shared, type-erased value stored in [`Kwargs`].
type Value = Arc<dyn Any + Send + Sync>;

/// A map from names to values of any `Send + Sync + 'static` type: the named
/// arguments of a task.
///
/// A task reads its kwargs with [`TaskContext::kwargs`](crate::TaskContext::kwargs).
/// When an upstream task completes with a `Kwargs` result, its entries are
/// merged into the kwargs of its downstream tasks: on a clash the upstream's
/// value wins over the task's own, and a later-completing upstream wins over
/// an earlier one. Cloning a `Kwargs` shares the values, it does not copy them.
///
/// # Examples
///
/// ```
/// use bgtask::Kwargs;
///
/// let kwargs = Kwargs::new().with("path", "/tmp/a.png".to_string()).with("size", 128u32);
/// assert_eq!(kwargs.get::<String>("path").map(String::as_str), Some("/tmp/a.png"));
/// assert_eq!(kwargs.get::<u32>("size"), Some(&128));
/// assert_eq!(kwargs.get::<u64>("size"), None); // wrong type
/// assert_eq!(kwargs.get::<u32>("missing"), None);
/// ```
#[derive(Clone, Default)]
pub struct Kwargs {
    /// The entries, ordered by key so that `Debug` and iteration are deterministic.
    map: BTreeMap<String, Value>,
}

impl Kwargs {
    /// Returns an empty map.
    pub const fn new() -> Self {
        Kwargs {
            map: BTreeMap::new(),
        }
    }

    /// Inserts `value` under `key`, replacing any previous value, and returns
    /// `self` for chaining.
    pub fn with<V: Any + Send + Sync>(mut self, key: impl Into<String>, value: V) -> Self {
        self.insert(key, value);
        self
    }

    /// Inserts `value` under `key`, replacing any previous value.
    pub fn insert<V: Any + Send + Sync>(&mut self, key: impl Into<String>, value: V) {
        self.map.insert(key.into(), Arc::new(value));
    }

    /// Returns the value under `key` if there is one and it has type `V`.
    pub fn get<V: Any>(&self, key: &str) -> Option<&V> {
        self.map.get(key)?.downcast_ref::<V>()
    }

    /// Returns the value under `key` as a shared pointer, if there is one and
    /// it has type `V`.
    pub fn get_arc<V: Any + Send + Sync>(&self, key: &str) -> Option<Arc<V>> {
        Arc::clone(self.map.get(key)?).downcast::<V>().ok()
    }

    /// Returns `true` if there is a value under `key`, whatever its type.
    pub fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Removes the value under `key`; returns `true` if there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        self.map.remove(key).is_some()
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Returns `true` if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Returns the keys in ascending order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Copies every entry of `other` into `self`; `other` wins on a clash.
    /// Values are shared, not copied.
    pub(crate) fn merge_from(&mut self, other: &Kwargs) {
        for (k, v) in &other.map {
            self.map.insert(k.clone(), Arc::clone(v));
        }
    }
}

impl fmt::Debug for Kwargs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are type-erased; show the keys.
        f.debug_set().entries(self.map.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_lets_the_other_side_win_and_shares_values() {
        let mut own = Kwargs::new().with("a", 1u8).with("b", 2u8);
        let upstream = Kwargs::new().with("b", 20u8).with("c", 30u8);
        own.merge_from(&upstream);
        assert_eq!(own.get::<u8>("a"), Some(&1));
        assert_eq!(own.get::<u8>("b"), Some(&20));
        assert_eq!(own.get::<u8>("c"), Some(&30));
        assert!(Arc::ptr_eq(
            &own.get_arc::<u8>("c").unwrap(),
            &upstream.get_arc::<u8>("c").unwrap()
        ));
    }

    #[test]
    fn typed_getters_check_the_type() {
        let mut k = Kwargs::new();
        k.insert("n", 5i32);
        assert_eq!(k.get::<i32>("n"), Some(&5));
        assert!(k.get::<i64>("n").is_none());
        assert!(k.get_arc::<i64>("n").is_none());
        assert!(k.remove("n"));
        assert!(k.is_empty());
    }
}
