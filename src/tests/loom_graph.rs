//! Graph transitions: under the scheduler lock from several workers, and
//! the submitter's lock-free `link` against a worker ending an upstream;
//! an unordered end (`state::end_unordered`, no scheduler lock for the end
//! and the release) against a stop and against `link`.

use loom::thread;

use super::never;
use crate::cell::{Outcome, TaskCell};
use crate::kwargs::Kwargs;
use crate::registry::Registry;
use crate::result::TaskResult;
use crate::state::{end_unordered, link, new_node, release_one, Env, Ids, Linked, Mode, State};
use crate::sync::{Arc, Mutex};

/// Two workers finish the two upstream tasks of one task at the same time:
/// the downstream task is released exactly once, with both results merged,
/// and each upstream's event is queued once.
#[test]
fn loom_two_workers_finish_the_two_upstreams_of_one_task() {
    loom::model(|| {
        let registry = Mutex::new(Registry::default());
        let fifo = crossbeam_queue::SegQueue::new();
        let state = Arc::new(Mutex::new(State::new(Mode::Processing)));
        let (u0, u1, d) = {
            let mut st = state.lock();
            st.fan_out = 1; // one subscriber
            let env = Env {
                registry: &registry,
            };
            let cell = |seq, kwargs, up: &Ids| -> Arc<TaskCell> {
                let node = new_node(Some(kwargs), up);
                Arc::new(TaskCell::new(seq, 0, None, never(), None, Some(node)))
            };
            let up: Ids = [0, 1].into_iter().collect();
            let own = Kwargs::new().with("own", 0u8);
            let (u0, u1, d) = (
                cell(0, Kwargs::new(), &Ids::new()),
                cell(1, Kwargs::new(), &Ids::new()),
                cell(2, own, &up),
            );
            assert!(st.insert(&env, &u0, &Ids::new()).is_empty());
            assert!(st.insert(&env, &u1, &Ids::new()).is_empty());
            assert!(st.insert(&env, &d, &up).is_empty());
            // Both upstream tasks are handed to workers, which take their work.
            for seq in [0, 1] {
                let cell = st.pop_ready(&fifo).expect("an upstream task is ready");
                assert_eq!(cell.seq, seq);
                assert!(cell.take_work().is_some());
            }
            assert_eq!(st.queued, 0);
            (u0, u1, d)
        };
        let finish = |cell: Arc<TaskCell>, key: &'static str| {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                let result = TaskResult::new(Kwargs::new().with(key, cell.seq));
                let mut st = state.lock();
                assert!(st.finish(&cell, Outcome::Completed(result)).is_empty());
            })
        };
        let a = finish(u0, "from_u0");
        let b = finish(u1, "from_u1");
        a.join().unwrap();
        b.join().unwrap();

        let mut st = state.lock();
        assert_eq!(st.queued, 1, "the downstream task is queued exactly once");
        assert_eq!(st.out.len(), 2, "one event per upstream");
        st.out.clear(); // settles the copies
        let next = st.pop_ready(&fifo).expect("the downstream task is ready");
        assert!(Arc::ptr_eq(&next, &d));
        assert!(st.pop_ready(&fifo).is_none());
        let input = d.take_work().expect("the downstream task has its work");
        let input = input.expect("it has input");
        for key in ["own", "from_u0", "from_u1"] {
            assert!(input.kwargs.contains_key(key), "missing {key}");
        }
        assert_eq!(input.upstream.len(), 2);
    });
}

/// The submitter links a new task to an upstream task (registry and slot
/// locks only, no scheduler lock) while a worker ends that upstream under
/// the scheduler lock. Whichever comes first, the new task becomes ready
/// exactly once, with the upstream's result, and never while it waits.
#[test]
fn loom_link_vs_upstream_end() {
    loom::model(|| {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let fifo = crossbeam_queue::SegQueue::new();
        let state = Arc::new(Mutex::new(State::new(Mode::Processing)));
        let up = {
            let mut st = state.lock();
            st.fan_out = 1; // one subscriber: the upstream stays live until delivered
            let env = Env {
                registry: &registry,
            };
            let node = new_node(None, &Ids::new());
            let up: Arc<TaskCell> = Arc::new(TaskCell::new(0, 0, None, never(), None, Some(node)));
            assert!(st.insert(&env, &up, &Ids::new()).is_empty());
            let running = st.pop_ready(&fifo).expect("the upstream task is ready");
            assert!(running.take_work().is_some());
            up
        };
        let worker = {
            let (state, up) = (Arc::clone(&state), Arc::clone(&up));
            thread::spawn(move || {
                let result = TaskResult::new(Kwargs::new().with("from_up", 1u8));
                let mut st = state.lock();
                // Its event stays queued (in `out`), not delivered: the
                // upstream is live to the owner while the link runs.
                assert!(st.finish(&up, Outcome::Completed(result)).is_empty());
            })
        };
        // The submitter, as `Shared::submit` does.
        let upstream: Ids = [0].into_iter().collect();
        let node = new_node(None, &upstream);
        let down: Arc<TaskCell> = Arc::new(TaskCell::new(1, 0, None, never(), None, Some(node)));
        let linked = {
            let mut registry = registry.lock();
            registry.push(Arc::clone(&down));
            link(&registry, &down, &upstream)
        };
        worker.join().unwrap();

        let mut st = state.lock();
        assert_eq!(st.out.len(), 1, "the upstream's event");
        st.out.clear(); // delivers it
        let released_by_worker = st.queued;
        match linked {
            Linked::Ready => assert_eq!(released_by_worker, 0, "released twice"),
            Linked::Blocked => assert_eq!(released_by_worker, 1, "never released"),
            Linked::Failed(_) => panic!("nothing failed"),
        }
        if released_by_worker == 1 {
            let next = st.pop_ready(&fifo).expect("the released task");
            assert!(Arc::ptr_eq(&next, &down));
        }
        let input = down.take_work().expect("the task has its work");
        let input = input.expect("it has input");
        assert!(
            input.kwargs.contains_key("from_up"),
            "the upstream result was lost"
        );
    });
}

/// An upstream task (running) and one task after it, queued with one
/// subscriber; returns the state, the upstream and the downstream cell.
fn running_upstream_and_one_after() -> (Arc<Mutex<State>>, Arc<TaskCell>, Arc<TaskCell>) {
    let registry = Mutex::new(Registry::default());
    let fifo = crossbeam_queue::SegQueue::new();
    let state = Arc::new(Mutex::new(State::new(Mode::Processing)));
    let (up, down) = {
        let mut st = state.lock();
        st.fan_out = 1;
        let env = Env {
            registry: &registry,
        };
        let after: Ids = [0].into_iter().collect();
        let up: Arc<TaskCell> = Arc::new(TaskCell::new(
            0,
            0,
            None,
            never(),
            None,
            Some(new_node(None, &Ids::new())),
        ));
        let down: Arc<TaskCell> = Arc::new(TaskCell::new(
            1,
            0,
            None,
            never(),
            None,
            Some(new_node(None, &after)),
        ));
        assert!(st.insert(&env, &up, &Ids::new()).is_empty());
        assert!(st.insert(&env, &down, &after).is_empty());
        let running = st.pop_ready(&fifo).expect("the upstream task is ready");
        assert!(Arc::ptr_eq(&running, &up));
        assert!(running.take_work().is_some());
        assert_eq!(st.queued, 0, "the downstream task waits");
        (up, down)
    };
    (state, up, down)
}

/// The worker's side of `Shared::end_unordered`: the end (its event
/// dropped here, which settles it), the release with no lock but the
/// downstream slot locks, then queueing under the scheduler lock.
/// Returns `true` if the end was this worker's (not a stop's).
fn end_unlocked(state: &Mutex<State>, up: &Arc<TaskCell>) -> bool {
    let outcome = Outcome::Completed(TaskResult::new(7u32));
    let Some(end) = end_unordered(up, &outcome, 1) else {
        return false;
    };
    let Outcome::Completed(result) = &outcome else {
        unreachable!()
    };
    drop(end.out); // queued and delivered
    let released: Vec<_> = end
        .downstream
        .into_iter()
        .filter(|d| release_one(d, up.seq, Some((0, result))))
        .collect();
    let mut st = state.lock();
    for d in released {
        st.push_released(d);
    }
    true
}

/// A worker ends a task without the scheduler lock while a stop of that
/// task runs under it: exactly one of them releases the task after it,
/// which is queued exactly once, with the result only if the end won.
#[test]
fn loom_unordered_end_vs_stop() {
    loom::model(|| {
        let (state, up, down) = running_upstream_and_one_after();
        let worker = {
            let (state, up) = (Arc::clone(&state), Arc::clone(&up));
            thread::spawn(move || end_unlocked(&state, &up))
        };
        let stopped = state.lock().stop(vec![Arc::clone(&up)], false, false);
        let ended_by_worker = worker.join().unwrap();

        let mut st = state.lock();
        assert!(up.is_ended());
        assert_eq!(st.queued, 1, "the downstream task is queued exactly once");
        if !ended_by_worker {
            assert_eq!(stopped.count, 1, "the stop that won counts the task");
        } // else 1 if it came before the event was delivered, 0 after
        let fifo = crossbeam_queue::SegQueue::new();
        let next = st.pop_ready(&fifo).expect("the downstream task is ready");
        assert!(Arc::ptr_eq(&next, &down));
        let input = down.take_work().expect("it has its work");
        let got = input.map_or(0, |i| i.upstream.len());
        assert_eq!(
            got,
            usize::from(ended_by_worker),
            "the result goes with the end that released it"
        );
    });
}

/// The submitter links a new task to an upstream that a worker ends
/// without the scheduler lock: the new task becomes ready exactly once,
/// with the upstream's result.
#[test]
fn loom_link_vs_unordered_end() {
    loom::model(|| {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let fifo = crossbeam_queue::SegQueue::new();
        let state = Arc::new(Mutex::new(State::new(Mode::Processing)));
        let up = {
            let mut st = state.lock();
            st.fan_out = 1;
            let env = Env {
                registry: &registry,
            };
            let node = new_node(None, &Ids::new());
            let up: Arc<TaskCell> = Arc::new(TaskCell::new(0, 0, None, never(), None, Some(node)));
            assert!(st.insert(&env, &up, &Ids::new()).is_empty());
            let running = st.pop_ready(&fifo).expect("the upstream task is ready");
            assert!(running.take_work().is_some());
            up
        };
        let (worker, event) = {
            let (state, up) = (Arc::clone(&state), Arc::clone(&up));
            let (tx, rx) = std::sync::mpsc::channel();
            let worker = thread::spawn(move || {
                let outcome = Outcome::Completed(TaskResult::new(7u32));
                let end = end_unordered(&up, &outcome, 1).expect("nothing stops it");
                let Outcome::Completed(result) = &outcome else {
                    unreachable!()
                };
                // The event stays queued (live to the owner) while the link runs.
                tx.send(end.out).unwrap();
                let released: Vec<_> = end
                    .downstream
                    .into_iter()
                    .filter(|d| release_one(d, up.seq, Some((0, result))))
                    .collect();
                let mut st = state.lock();
                for d in released {
                    st.push_released(d);
                }
            });
            (worker, rx)
        };
        let upstream: Ids = [0].into_iter().collect();
        let node = new_node(None, &upstream);
        let down: Arc<TaskCell> = Arc::new(TaskCell::new(1, 0, None, never(), None, Some(node)));
        let linked = {
            let mut registry = registry.lock();
            registry.push(Arc::clone(&down));
            link(&registry, &down, &upstream)
        };
        worker.join().unwrap();
        drop(event.recv().unwrap()); // delivers it

        let st = state.lock();
        match linked {
            Linked::Ready => assert_eq!(st.queued, 0, "released twice"),
            Linked::Blocked => assert_eq!(st.queued, 1, "never released"),
            Linked::Failed(_) => panic!("nothing failed"),
        }
        let input = down.take_work().expect("the task has its work");
        let input = input.expect("it has input");
        assert_eq!(input.upstream.len(), 1, "the upstream result was lost");
    });
}
