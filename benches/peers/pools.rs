//! The contenders, and the peers' thread pools behind one spawning interface.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

/// One implementation under test: bgtask or one of its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contender {
    /// The hand-rolled floor: a crossbeam job queue and N std threads.
    Floor,
    /// This crate.
    Bgtask,
    /// `rayon::ThreadPool::spawn`.
    Rayon,
    /// The `threadpool` crate.
    ThreadPool,
    /// `tokio::task::spawn_blocking` on a multi-thread runtime.
    Tokio,
}

impl Contender {
    /// Every contender; the floor comes first, as the reference of the ratios.
    pub(crate) const ALL: [Contender; 5] = [
        Contender::Floor,
        Contender::Bgtask,
        Contender::Rayon,
        Contender::ThreadPool,
        Contender::Tokio,
    ];

    /// The name printed in the tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Contender::Floor => "floor",
            Contender::Bgtask => "bgtask",
            Contender::Rayon => "rayon",
            Contender::ThreadPool => "threadpool",
            Contender::Tokio => "tokio",
        }
    }
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A boxed job, as the floor's queue carries it.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// A cheap, shareable handle that submits jobs to a peer's pool, from the
/// owner or from inside a running job.
#[derive(Clone)]
pub(crate) enum Spawner {
    /// The floor's job queue.
    Floor(Sender<Job>),
    /// A rayon pool.
    Rayon(Arc<rayon::ThreadPool>),
    /// A `threadpool` pool (itself a shared handle).
    ThreadPool(threadpool::ThreadPool),
    /// A tokio runtime; jobs go to its blocking pool.
    Tokio(tokio::runtime::Handle),
}

impl Spawner {
    /// Submits `job` to the pool.
    pub(crate) fn spawn<F: FnOnce() + Send + 'static>(&self, job: F) {
        match self {
            Spawner::Floor(jobs) => jobs
                .send(Box::new(job))
                .expect("the floor's workers are gone"),
            Spawner::Rayon(pool) => pool.spawn(job),
            Spawner::ThreadPool(pool) => pool.execute(job),
            Spawner::Tokio(handle) => drop(handle.spawn_blocking(job)),
        }
    }
}

/// What a pool needs to be shut down.
enum Owned {
    Floor(Vec<JoinHandle<()>>),
    Rayon,
    ThreadPool,
    Tokio(tokio::runtime::Runtime),
}

/// A peer's pool of `threads` workers, created outside the timed region.
pub(crate) struct Pool {
    spawner: Spawner,
    owned: Owned,
}

impl Pool {
    /// Starts a pool of `kind` with `threads` workers.
    ///
    /// # Panics
    ///
    /// If `kind` is [`Contender::Bgtask`], which is no peer, or if the pool
    /// cannot be built.
    pub(crate) fn new(kind: Contender, threads: usize) -> Pool {
        match kind {
            Contender::Floor => {
                let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
                let workers = (0..threads)
                    .map(|i| {
                        let queue = queue.clone();
                        std::thread::Builder::new()
                            .name(format!("floor-{i}"))
                            .spawn(move || {
                                while let Ok(job) = queue.recv() {
                                    job();
                                }
                            })
                            .expect("spawn a floor worker")
                    })
                    .collect();
                Pool {
                    spawner: Spawner::Floor(jobs),
                    owned: Owned::Floor(workers),
                }
            }
            Contender::Rayon => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("build a rayon pool");
                Pool {
                    spawner: Spawner::Rayon(Arc::new(pool)),
                    owned: Owned::Rayon,
                }
            }
            Contender::ThreadPool => Pool {
                spawner: Spawner::ThreadPool(threadpool::ThreadPool::new(threads)),
                owned: Owned::ThreadPool,
            },
            Contender::Tokio => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .max_blocking_threads(threads)
                    .build()
                    .expect("build a tokio runtime");
                Pool {
                    spawner: Spawner::Tokio(runtime.handle().clone()),
                    owned: Owned::Tokio(runtime),
                }
            }
            Contender::Bgtask => panic!("bgtask is no peer pool"),
        }
    }

    /// The pool's spawning handle.
    pub(crate) fn spawner(&self) -> &Spawner {
        &self.spawner
    }

    /// Waits for the queued jobs to end and the workers to exit. Every clone
    /// of the spawner held outside the pool's own jobs must be dropped first.
    pub(crate) fn shut_down(self) {
        let Pool { spawner, owned } = self;
        if let Spawner::ThreadPool(pool) = &spawner {
            pool.join();
        }
        drop(spawner);
        match owned {
            Owned::Floor(workers) => {
                for worker in workers {
                    worker.join().expect("a floor worker panicked");
                }
            }
            Owned::Tokio(runtime) => drop(runtime),
            Owned::Rayon | Owned::ThreadPool => {}
        }
    }
}
