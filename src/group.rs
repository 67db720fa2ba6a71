//! Group bookkeeping: how many members are live, and who they are.
//!
//! # Invariants
//!
//! 1. `live` counts members added and not yet ended (a member ends once, by
//!    finishing or by being stopped: cell invariant 1). It is raised when a
//!    member is added and lowered by whoever ends the member. The party
//!    that lowers it to 0 by *finishing* a member emits `GroupFinished`,
//!    under the emit lock, right after that member's own event.
//! 2. `members` holds every member that may still be live to the owner,
//!    weakly (a cell owns its group, not the reverse); departed members are
//!    dropped when the list has doubled since the last compaction
//!    (amortised O(1) per member).

use std::collections::HashMap;
use std::fmt;

use crate::cell::TaskCell;
use crate::id::Group;
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering, Weak};

/// One group's shared state.
pub(crate) struct GroupState {
    /// The group's key, as given by the user.
    pub(crate) key: Group,
    /// Members not yet ended (invariant 1).
    live: AtomicUsize,
    /// Possibly live members, and the list length after the last compaction
    /// (invariant 2).
    members: Mutex<(Vec<Weak<TaskCell>>, usize)>,
}

impl fmt::Debug for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupState")
            .field("key", &self.key)
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl GroupState {
    /// Records a member that just ended. Returns `true` if it was the last
    /// live one.
    pub(crate) fn end_member(&self) -> bool {
        self.live.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Returns the members that are live to the owner.
    pub(crate) fn live_members(&self) -> Vec<Arc<TaskCell>> {
        let members = self.members.lock();
        members
            .0
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.is_dead())
            .collect()
    }

    /// Returns the number of members not yet ended.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Compacts the member list; returns `true` if a member may be live.
    fn has_possibly_live_members(&self) -> bool {
        let mut members = self.members.lock();
        members.0.retain(is_possibly_live);
        members.1 = members.0.len();
        !members.0.is_empty()
    }
}

/// Returns `false` for a member that has departed for good.
fn is_possibly_live(member: &Weak<TaskCell>) -> bool {
    member.upgrade().is_some_and(|c| !c.is_dead())
}

/// The groups in use, by key.
#[derive(Default)]
pub(crate) struct GroupTable {
    /// Groups with members that may be live, and the table size after the
    /// last pruning (groups without live members are pruned when the table
    /// has doubled since, so a session that makes a group per view does not
    /// grow without bound).
    groups: Mutex<(HashMap<Group, Arc<GroupState>>, usize)>,
}

impl fmt::Debug for GroupTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupTable")
            .field("groups", &self.groups.lock().0.len())
            .finish()
    }
}

impl GroupTable {
    /// Returns the state of `key`, creating it if needed, with one more
    /// live member. The task is recorded as a member by
    /// [`Self::add_member`] once its cell exists.
    pub(crate) fn join(&self, key: Group) -> Arc<GroupState> {
        let mut table = self.groups.lock();
        let (groups, pruned) = &mut *table;
        if groups.len() >= 2 * (*pruned).max(64) {
            groups.retain(|_, g| g.live() > 0 || g.has_possibly_live_members());
            *pruned = groups.len();
        }
        let state = groups.entry(key).or_insert_with_key(|key| {
            Arc::new(GroupState {
                key: key.clone(),
                live: AtomicUsize::new(0),
                members: Mutex::new((Vec::new(), 0)),
            })
        });
        state.live.fetch_add(1, Ordering::AcqRel);
        Arc::clone(state)
    }

    /// Records `cell` as a member of its group (invariant 2).
    pub(crate) fn add_member(cell: &Arc<TaskCell>) {
        let Some(group) = &cell.group else { return };
        let mut members = group.members.lock();
        let (list, compacted) = &mut *members;
        list.push(Arc::downgrade(cell));
        if list.len() >= 2 * (*compacted).max(16) {
            list.retain(is_possibly_live);
            *compacted = list.len();
        }
    }

    /// Returns the state of `key`, if it is in use.
    pub(crate) fn get(&self, key: &Group) -> Option<Arc<GroupState>> {
        self.groups.lock().0.get(key).cloned()
    }

    /// Forgets every group.
    pub(crate) fn clear(&self) {
        self.groups.lock().0.clear();
    }
}
