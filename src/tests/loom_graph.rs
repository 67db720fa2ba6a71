//! Graph transitions under the scheduler lock, from several workers.

use loom::thread;

use super::never;
use crate::cell::{Outcome, Payload, TaskCell};
use crate::kwargs::Kwargs;
use crate::registry::Registry;
use crate::result::TaskResult;
use crate::state::{Env, Ids, Mode, State};
use crate::sync::{Arc, Mutex};

/// Two workers finish the two upstream tasks of one task at the same time:
/// the downstream task is released exactly once, with both results merged,
/// and each upstream's event is queued once.
#[test]
fn loom_two_workers_finish_the_two_upstreams_of_one_task() {
    loom::model(|| {
        let registry = Mutex::new(Registry::default());
        let fifo = crossbeam_queue::SegQueue::new();
        let state = Arc::new(Mutex::new(State::new(Mode::Processing, 1)));
        let (u0, u1, d) = {
            let mut st = state.lock();
            st.fan_out = 1; // one subscriber
            let env = Env {
                registry: &registry,
            };
            let cell = |seq| Arc::new(TaskCell::new(seq, 0, None, never(), None, true));
            let (u0, u1, d) = (cell(0), cell(1), cell(2));
            assert!(st
                .insert(&env, Arc::clone(&u0), Kwargs::new(), Ids::new())
                .is_empty());
            assert!(st
                .insert(&env, Arc::clone(&u1), Kwargs::new(), Ids::new())
                .is_empty());
            let up: Ids = [0, 1].into_iter().collect();
            assert!(st
                .insert(&env, Arc::clone(&d), Kwargs::new().with("own", 0u8), up)
                .is_empty());
            // Both upstream tasks are handed to workers.
            assert_eq!(st.pop_ready(&fifo).map(|c| c.seq), Some(0));
            assert_eq!(st.pop_ready(&fifo).map(|c| c.seq), Some(1));
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
        let slot = d.payload.lock();
        let Payload::Pending {
            input: Some(input), ..
        } = &slot.work
        else {
            panic!("the downstream task did not receive its input");
        };
        for key in ["own", "from_u0", "from_u1"] {
            assert!(input.kwargs.contains_key(key), "missing {key}");
        }
        assert_eq!(input.upstream.len(), 2);
    });
}
