//! The task cell's races: a worker ending a task against a stop, a stop
//! against a subscription delivering the event, and a shut-down against
//! both.

use loom::sync::Mutex as LoomMutex;
use loom::thread;

use super::claimed;
use crate::cell::{FastEnd, StopFound};
use crate::sync::{Arc, AtomicBool, Ordering};

/// A worker ends a fast task (queueing its event if it won) while the owner
/// stops it. Exactly one of them decides the task's fate, and a queued event
/// is delivered only if the stop came after the delivery.
#[test]
fn loom_finish_vs_stop() {
    loom::model(|| {
        let cell = claimed(1);
        let queue = Arc::new(LoomMutex::new(0usize));
        let worker = {
            let (cell, queue) = (Arc::clone(&cell), Arc::clone(&queue));
            thread::spawn(move || {
                let (ended, _) = cell.end_fast(1);
                if ended == FastEnd::Finished {
                    *queue.lock().unwrap() += 1;
                }
                ended
            })
        };
        let (stop, _) = cell.stop();
        let ended = worker.join().unwrap();
        let queued = *queue.lock().unwrap();
        match stop {
            // Stopped first: the worker must see it and queue nothing.
            StopFound::Unfinished { claimed, .. } => {
                assert!(claimed);
                assert_eq!(ended, FastEnd::Stopped);
                assert_eq!(queued, 0);
            }
            // Stopped after the end: the queued copy must not be delivered.
            StopFound::Finished => {
                assert_eq!(ended, FastEnd::Finished);
                assert_eq!(queued, 1);
                assert!(!cell.settle(), "a stopped task's event was delivered");
            }
            StopFound::NotLive => panic!("the event was pending: the task was live"),
        }
        assert!(cell.is_dead());
    });
}

/// The owner's subscription delivers a finished task's event while another
/// thread stops the task: delivered and stopped exclude each other. The
/// subscription builds the event from the kept outcome after settling (as
/// `Envelope::open` does), and the stop clears that outcome after it finds
/// the task finished (as `State::stop` does).
#[test]
fn loom_stop_vs_drain() {
    loom::model(|| {
        let cell = claimed(1);
        cell.keep_outcome(crate::cell::Outcome::Completed(
            crate::result::TaskResult::new(7u32),
        ));
        assert_eq!(cell.end_fast(1).0, FastEnd::Finished);
        let drain = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || cell.settle() && cell.kept_outcome().is_some())
        };
        let (stop, _) = cell.stop();
        if stop == StopFound::Finished {
            // As a stop's second pass does (the model's result has no
            // `Drop` of its own, so it may go here).
            drop(cell.clear_outcome());
        }
        let delivered = drain.join().unwrap();
        match stop {
            StopFound::Finished => assert!(!delivered, "stopped, yet delivered"),
            StopFound::NotLive => assert!(delivered, "not live, yet not delivered"),
            StopFound::Unfinished { .. } => panic!("the task had finished"),
        }
        assert!(cell.is_dead());
        assert!(!cell.has_pending());
    });
}

/// Shut-down (stop every task, then close) races a worker ending a task and
/// a subscription draining it. Nothing is delivered after the close, and an
/// event is delivered only if the shut-down found the task no longer live.
#[test]
fn loom_finish_vs_shut_down() {
    loom::model(|| {
        let cell = claimed(1);
        let closed = Arc::new(AtomicBool::new(false));
        let queue = Arc::new(LoomMutex::new(0usize));
        let worker = {
            let (cell, queue) = (Arc::clone(&cell), Arc::clone(&queue));
            thread::spawn(move || {
                if cell.end_fast(1).0 == FastEnd::Finished {
                    *queue.lock().unwrap() += 1;
                }
            })
        };
        let owner = {
            let (cell, queue, closed) =
                (Arc::clone(&cell), Arc::clone(&queue), Arc::clone(&closed));
            thread::spawn(move || {
                // What `Subscription::try_recv` does with one queued copy.
                if closed.load(Ordering::Acquire) {
                    return false;
                }
                let mut q = queue.lock().unwrap();
                if *q == 0 {
                    return false;
                }
                *q -= 1;
                drop(q);
                cell.settle()
            })
        };
        let (stop, _) = cell.stop();
        closed.store(true, Ordering::Release);
        worker.join().unwrap();
        let delivered = owner.join().unwrap();
        if delivered {
            assert_eq!(
                stop,
                StopFound::NotLive,
                "delivered an event of a task shut-down stopped"
            );
        }
        // A copy still queued is discarded (the manager is closed); settle it.
        let left = *queue.lock().unwrap();
        for _ in 0..left {
            assert!(!cell.settle() || stop == StopFound::NotLive);
        }
        assert!(cell.is_dead());
    });
}

/// A worker claims a task it popped from the FIFO while the owner pauses:
/// the worker claims, fences, then reads `processing`; the pause stores it,
/// fences, then reads the task's state. Either the worker sees the pause
/// and puts the task back, or its claim (the task's start) comes first in
/// the `SeqCst` order: no task starts after `pause_processing` returned.
/// (Reading `processing` before claiming, as an earlier version did, fails
/// this model.)
#[test]
fn loom_claim_vs_pause() {
    loom::model(|| {
        let cell: Arc<crate::cell::TaskCell> = Arc::new(crate::cell::TaskCell::new(
            1,
            0,
            None,
            super::never(),
            None,
            None,
        ));
        let processing = Arc::new(AtomicBool::new(true));
        let worker = {
            let (cell, processing) = (Arc::clone(&cell), Arc::clone(&processing));
            thread::spawn(move || {
                assert!(cell.claim());
                crate::sync::fence(Ordering::SeqCst);
                if processing.load(Ordering::SeqCst) {
                    true // starts
                } else {
                    cell.unclaim(); // `Shared::unclaim_paused`
                    false
                }
            })
        };
        processing.store(false, Ordering::SeqCst);
        // What the pause orders itself against (`SeqCst`, like the claim's
        // fence): the start of a task, as any later observer sees it.
        crate::sync::fence(Ordering::SeqCst);
        let running_when_paused = cell.is_running();
        let started = worker.join().unwrap();
        assert!(
            !started || running_when_paused,
            "the task started after the pause returned"
        );
    });
}
