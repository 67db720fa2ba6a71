//! Graph transitions: under the scheduler lock from several workers, and
//! the submitter's lock-free `link` against a worker ending an upstream.

use loom::thread;

use super::never;
use crate::cell::{Outcome, TaskCell};
use crate::fifo::Fifo;
use crate::kwargs::Kwargs;
use crate::registry::Registry;
use crate::result::TaskResult;
use crate::state::{link, new_node, Env, Ids, Linked, Mode, State};
use crate::sync::{Arc, Mutex};

/// Two workers finish the two upstream tasks of one task at the same time:
/// the downstream task is released exactly once, with both results merged,
/// and each upstream's event is queued once.
#[test]
fn loom_two_workers_finish_the_two_upstreams_of_one_task() {
    loom::model(|| {
        let registry = Mutex::new(Registry::default());
        let fifo = Fifo::default();
        let state = Arc::new(Mutex::new(State::new(Mode::Processing)));
        let (u0, u1, d) = {
            let mut st = state.lock();
            st.fan_out = 1; // one subscriber
            let env = Env {
                registry: &registry,
            };
            let cell = |seq, kwargs, up: &Ids| -> Arc<TaskCell> {
                let node = new_node(Some(kwargs), up);
                Arc::new(TaskCell::new(seq, 0, None, never(), None, node))
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

/// A scheduler state, a registry and a FIFO with task 0 (a graph node, no
/// upstream) added to a manager with one subscriber (so that it stays live
/// until its event is delivered) and started as a worker does; the fourth
/// element is that task.
type Running = (Arc<Mutex<Registry>>, Fifo, Arc<Mutex<State>>, Arc<TaskCell>);

fn running_upstream() -> Running {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let fifo = Fifo::default();
    let state = Arc::new(Mutex::new(State::new(Mode::Processing)));
    let up = {
        let mut st = state.lock();
        st.fan_out = 1;
        let env = Env {
            registry: &registry,
        };
        let node = new_node(None, &Ids::new());
        let up: Arc<TaskCell> = Arc::new(TaskCell::new(0, 0, None, never(), None, node));
        assert!(st.insert(&env, &up, &Ids::new()).is_empty());
        let running = st.pop_ready(&fifo).expect("the upstream task is ready");
        assert!(running.take_work().is_some());
        up
    };
    (registry, fifo, state, up)
}

/// Adds task 1 after task 0 as the submitter does (`Shared::submit`:
/// registry lock and slot locks, no scheduler lock); returns its cell and
/// how `link` left it.
fn add_after_task_0(registry: &Mutex<Registry>) -> (Arc<TaskCell>, Linked) {
    let upstream: Ids = [0].into_iter().collect();
    let node = new_node(None, &upstream);
    let down: Arc<TaskCell> = Arc::new(TaskCell::new(1, 0, None, never(), None, node));
    let mut registry = registry.lock();
    drop(registry.push(Arc::clone(&down)));
    let linked = link(&mut registry, &down, &upstream);
    (down, linked)
}

/// The submitter links a new task to an upstream task (registry and slot
/// locks only, no scheduler lock) while a worker ends that upstream under
/// the scheduler lock. Whichever comes first, the new task becomes ready
/// exactly once, with the upstream's result, and never while it waits.
#[test]
fn loom_link_vs_upstream_end() {
    loom::model(|| {
        let (registry, fifo, state, up) = running_upstream();
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
        let (down, linked) = add_after_task_0(&registry);
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

/// The submitter links a new task to an upstream task that finished (its
/// event undelivered, so it is live and its edge is a late edge, registry
/// invariant 4) while another thread stops that upstream with its
/// downstream tasks. Either the link sees the stop (the upstream counts as
/// satisfied, no result, and the new task is not stopped), or the stop
/// sees the late edge and stops the new task too: never a task linked to a
/// live upstream that escapes its cascade.
#[test]
fn loom_link_vs_cascading_stop_of_a_finished_upstream() {
    loom::model(|| {
        let (registry, _fifo, state, up) = running_upstream();
        {
            let result = TaskResult::new(Kwargs::new().with("from_up", 1u8));
            let mut st = state.lock();
            assert!(st.finish(&up, Outcome::Completed(result)).is_empty());
            // Its event stays in `out`: pending, so the upstream is live.
        }
        let stopper = {
            let (state, registry, up) =
                (Arc::clone(&state), Arc::clone(&registry), Arc::clone(&up));
            thread::spawn(move || {
                let mut st = state.lock();
                let env = Env {
                    registry: &registry,
                };
                let stopped = st.stop(&env, vec![up], false, true);
                drop(stopped.jobs); // the new task's, if it was stopped
                stopped.count
            })
        };
        let (down, linked) = add_after_task_0(&registry);
        let count = stopper.join().unwrap();
        assert!(
            matches!(linked, Linked::Ready),
            "the upstream had ended either way"
        );
        // An edge to the upstream means the link found it live (a stop
        // leaves edges; it takes the input of a task that never ran).
        let saw_live = down.with_node(|n| !n.upstream.is_empty()).expect("a node");
        assert_eq!(
            saw_live,
            down.is_stopped(),
            "linked to the live upstream but not stopped with it, or the reverse"
        );
        assert_eq!(count, if saw_live { 2 } else { 1 });
        state.lock().out.clear();
    });
}
