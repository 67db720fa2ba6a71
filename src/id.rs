//! Task ids and groups.

use std::fmt;
use std::sync::Arc;

/// The identity of a task, unique within the manager that issued it.
///
/// Ids are handed out in increasing order: a task added later has a larger
/// id, so sorting ids sorts tasks by the order they were added. Ids of
/// different managers never compare equal.
///
/// # Examples
///
/// ```
/// use bgtask::TaskManager;
/// use std::convert::Infallible;
///
/// let manager = TaskManager::new();
/// let a = manager.add_task(|_| Ok::<_, Infallible>(1))?;
/// let b = manager.add_task(|_| Ok::<_, Infallible>(2))?;
/// assert!(a.id() < b.id());
/// # Ok::<(), bgtask::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    /// Position in the issuing manager's sequence (0, 1, 2, ...); compared first.
    pub(crate) seq: u64,
    /// The issuing manager's process-unique number.
    pub(crate) manager: u64,
}

impl TaskId {
    /// Returns the task's sequence number within its manager: 0 for the first
    /// task added, 1 for the next, and so on.
    pub fn as_u64(self) -> u64 {
        self.seq
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({}@{})", self.seq, self.manager)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.seq)
    }
}

/// A named or numbered set of tasks that can be stopped together and that
/// reports [`Event::GroupFinished`](crate::Event::GroupFinished) when its last
/// live task ends.
///
/// A group is either a number (`Group::from(7u64)`, or
/// [`TaskManager::next_group_id`](crate::TaskManager::next_group_id) for a
/// fresh one) or a name (`Group::from("thumbnails")`). The number 7 and the
/// name `"7"` are different groups. Cloning is cheap.
///
/// # Examples
///
/// ```
/// use bgtask::Group;
///
/// assert_eq!(Group::from(7u64), Group::from(7u64));
/// assert_ne!(Group::from(7u64), Group::from("7"));
/// assert_eq!(Group::from("views").as_name(), Some("views"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group(GroupKey);

/// The two kinds of group; private so that the representation can change.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum GroupKey {
    /// A numbered group.
    Number(u64),
    /// A named group; `Arc` so that events clone it without allocating.
    Name(Arc<str>),
}

impl Group {
    /// Returns the group's number, if it is a numbered group.
    pub fn as_number(&self) -> Option<u64> {
        match &self.0 {
            GroupKey::Number(n) => Some(*n),
            GroupKey::Name(_) => None,
        }
    }

    /// Returns the group's name, if it is a named group.
    pub fn as_name(&self) -> Option<&str> {
        match &self.0 {
            GroupKey::Number(_) => None,
            GroupKey::Name(s) => Some(s),
        }
    }
}

impl From<u64> for Group {
    fn from(n: u64) -> Self {
        Group(GroupKey::Number(n))
    }
}

impl From<&str> for Group {
    fn from(s: &str) -> Self {
        Group(GroupKey::Name(Arc::from(s)))
    }
}

impl From<String> for Group {
    fn from(s: String) -> Self {
        Group(GroupKey::Name(Arc::from(s)))
    }
}

impl From<&Group> for Group {
    fn from(g: &Group) -> Self {
        g.clone()
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            GroupKey::Number(n) => write!(f, "Group({n})"),
            GroupKey::Name(s) => write!(f, "Group({s:?})"),
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            GroupKey::Number(n) => write!(f, "{n}"),
            GroupKey::Name(s) => write!(f, "{s:?}"),
        }
    }
}
