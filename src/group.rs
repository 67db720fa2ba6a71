//! Group bookkeeping: how many members are live, and who they are.
//!
//! # Invariants
//!
//! 1. `live` counts members added and not yet ended (a member ends once, by
//!    finishing or by being stopped: cell invariant 1). It is raised when a
//!    member is added and lowered by whoever ends the member. The party
//!    that lowers it to 0 by *finishing* a member emits `GroupFinished`,
//!    under the emit lock, right after that member's own event. A finished
//!    member's count is lowered before its event is queued, in the same
//!    hold of the emit lock: once the owner can see the event, the member
//!    no longer counts, so a stop after that (of the group's other
//!    members) cannot leave this member the last one and make its end
//!    emit a `GroupFinished` (SPEC 5: stops never emit one).
//! 3. `running` counts members a worker claimed and admitted and has not
//!    finished with. With a `limit`, a claimed member is admitted only while
//!    `running < limit`; otherwise it is unclaimed and *held* in `held`.
//!    A worker done with a member lowers `running` and then, if `held_count`
//!    says something is held, requeues the best held member. `admit` raises
//!    `held_count` before it reads `running` and `release` lowers `running`
//!    before it reads `held_count` (all `SeqCst`, and pushing and popping
//!    happen under the `held` lock), so a member is never held while a slot
//!    is free and nobody is left to requeue it.
//! 2. `members` holds every member that may still be live to the owner,
//!    weakly (a cell owns its group, not the reverse); departed members are
//!    dropped when the list has doubled since the last compaction
//!    (amortised O(1) per member).

use std::collections::HashMap;
use std::fmt;

use crate::cell::TaskCell;
use crate::id::Group;
use crate::ready::ReadyQueue;
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
    /// Most members that may run at once; 0 for no limit (invariant 3).
    limit: AtomicUsize,
    /// Members admitted to run and not yet finished with (invariant 3).
    running: AtomicUsize,
    /// Entries in `held`, readable without its lock (invariant 3).
    held_count: AtomicUsize,
    /// Members held back by the limit, best (priority, id) first.
    held: Mutex<ReadyQueue>,
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
    ///
    /// Prefetches the cells [`PREFETCH_AHEAD`] members ahead of the one it
    /// looks at (see `prefetch.rs`): a group's members were added, and
    /// their cells written, long before a stop, and each upgrade is a
    /// locked instruction that would wait for its miss, then the stop's
    /// own work on the cell for the next ones.
    pub(crate) fn live_members(&self) -> Vec<Arc<TaskCell>> {
        let members = self.members.lock();
        let mut live = Vec::with_capacity(members.0.len());
        for (i, member) in members.0.iter().enumerate() {
            if let Some(ahead) = members.0.get(i + PREFETCH_AHEAD) {
                crate::prefetch::cell(ahead);
            }
            if let Some(cell) = member.upgrade().filter(|c| !c.is_dead()) {
                live.push(cell);
            }
        }
        live
    }

    /// Returns the number of members not yet ended.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Decides whether a member a worker just claimed may run now
    /// (invariant 3). If not, unclaims it and holds it; returns `false`.
    pub(crate) fn admit(&self, cell: &Arc<TaskCell>) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let before = self.running.fetch_add(1, Ordering::SeqCst);
        if limit == 0 || before < limit {
            return true;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        let mut held = self.held.lock();
        self.held_count.fetch_add(1, Ordering::SeqCst);
        loop {
            let running = self.running.load(Ordering::SeqCst);
            let limit = self.limit.load(Ordering::SeqCst);
            if limit != 0 && running >= limit {
                break;
            }
            // A slot came free meanwhile: take it instead of holding.
            if self
                .running
                .compare_exchange(running, running + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.held_count.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
        }
        cell.hold();
        held.push(cell.priority(), Arc::clone(cell));
        false
    }

    /// Re-files a held member under its new priority (`set_priority`); the
    /// old entry goes stale. Returns `false` if it is no longer held.
    pub(crate) fn rehold(&self, cell: &Arc<TaskCell>) -> bool {
        let mut held = self.held.lock();
        if !cell.is_held() || cell.is_ended() {
            return false;
        }
        self.held_count.fetch_add(1, Ordering::SeqCst);
        held.push(cell.priority(), Arc::clone(cell));
        true
    }

    /// A worker is done with a member it was admitted to run: frees the
    /// slot and returns a held member to queue again, if one is held and
    /// there is room (invariant 3).
    pub(crate) fn release(&self) -> Option<Arc<TaskCell>> {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.requeue_one()
    }

    /// Takes the best held member if there is room for it.
    pub(crate) fn requeue_one(&self) -> Option<Arc<TaskCell>> {
        if self.held_count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut held = self.held.lock();
        let limit = self.limit.load(Ordering::SeqCst);
        if limit != 0 && self.running.load(Ordering::SeqCst) >= limit {
            return None;
        }
        // Entries are live while held at the priority they were filed under.
        while let Some(cell) = held.pop(|c, p| c.priority() == p && c.is_held()) {
            self.held_count.fetch_sub(1, Ordering::SeqCst);
            if cell.unhold() && !cell.is_ended() {
                return Some(cell);
            }
        }
        // Empty now; `pop` dropped stale entries without counting them.
        self.held_count.store(0, Ordering::SeqCst);
        None
    }

    /// Sets the limit (0: none).
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::SeqCst);
    }

    /// Undoes an admission whose task went back to the ready queue.
    pub(crate) fn unadmit(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// Drops every held member (shut-down).
    pub(crate) fn clear_held(&self) {
        self.held.lock().clear();
        self.held_count.store(0, Ordering::SeqCst);
    }

    /// Compacts the member list; returns `true` if a member may be live.
    fn has_possibly_live_members(&self) -> bool {
        let mut members = self.members.lock();
        members.0.retain(is_possibly_live);
        members.1 = members.0.len();
        !members.0.is_empty()
    }
}

/// How far ahead of its walk [`GroupState::live_members`] prefetches: about
/// a memory latency's worth of upgrades.
const PREFETCH_AHEAD: usize = 8;

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
    /// Limits set with `set_group_limit`, kept while the group has no
    /// state (no live members), so the limit applies to tasks added later.
    limits: Mutex<HashMap<Group, usize>>,
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
            let limit = self.limits.lock().get(key).copied().unwrap_or(0);
            Arc::new(GroupState {
                key: key.clone(),
                live: AtomicUsize::new(0),
                members: Mutex::new((Vec::new(), 0)),
                limit: AtomicUsize::new(limit),
                running: AtomicUsize::new(0),
                held_count: AtomicUsize::new(0),
                held: Mutex::new(ReadyQueue::default()),
            })
        });
        state.live.fetch_add(1, Ordering::AcqRel);
        Arc::clone(state)
    }

    /// Records `cell` as a member of its group (invariant 2), if it has one.
    #[inline]
    pub(crate) fn add_member(cell: &Arc<TaskCell>) {
        if let Some(group) = &cell.group {
            Self::add_member_to(group, cell);
        }
    }

    /// Records `cell` as a member of `group`, its group.
    fn add_member_to(group: &GroupState, cell: &Arc<TaskCell>) {
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

    /// Sets (or with 0 removes) the limit of `key`; returns its state, if
    /// it has one, to apply the new limit to.
    pub(crate) fn set_limit(&self, key: &Group, limit: usize) -> Option<Arc<GroupState>> {
        let groups = self.groups.lock();
        let mut limits = self.limits.lock();
        if limit == 0 {
            limits.remove(key);
        } else {
            limits.insert(key.clone(), limit);
        }
        let state = groups.0.get(key).cloned();
        if let Some(s) = &state {
            s.set_limit(limit);
        }
        state
    }

    /// Forgets every group.
    pub(crate) fn clear(&self) {
        let mut groups = self.groups.lock();
        for g in groups.0.values() {
            g.clear_held();
        }
        groups.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::{never, Node};

    // Runs under Miri too (`.ci/run`): the walk prefetches freed members.
    #[test]
    fn live_members_skips_freed_and_stopped_members_and_keeps_the_order() {
        let table = GroupTable::default();
        let key = Group::from(7u64);
        let n = 3 * PREFETCH_AHEAD as u64 + 1;
        let mut cells: Vec<Option<Arc<TaskCell>>> = (0..n)
            .map(|seq| {
                let group = table.join(key.clone());
                let cell: Arc<TaskCell> = Arc::new(TaskCell::new(
                    seq,
                    0,
                    Some(group),
                    never(),
                    None,
                    None::<Box<Node>>,
                ));
                GroupTable::add_member(&cell);
                Some(cell)
            })
            .collect();
        for seq in (0..n).step_by(3) {
            cells[seq as usize] = None; // freed
        }
        for cell in cells.iter().flatten().filter(|c| c.seq % 4 == 1) {
            let _ = cell.stop(); // dead to the owner
        }
        let expected: Vec<u64> = (0..n).filter(|s| s % 3 != 0 && s % 4 != 1).collect();
        let state = table.get(&key).expect("the group has members");
        let live: Vec<u64> = state.live_members().iter().map(|c| c.seq).collect();
        assert_eq!(live, expected);
    }
}
