//! Where issuers' key operations run: on the caller's own thread while few
//! are in flight ([`SigningPool::run_here_or_queue`]: no hand-off), otherwise
//! — and for the shares of a batch the request's thread does not take — on
//! one thread per core fed by a bounded FIFO queue. Unlike tokio's blocking
//! pool (which grows a thread per waiting call, 481 of them at 1,000
//! connections), a burst beyond the queue is refused at once
//! ([`PoolError::Busy`], answered 503 + `Retry-After`) and the operations
//! never outnumber the cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

/// Operations in flight (on callers' threads and queued) up to which one
/// may run on its caller's thread — if also the runtime keeps up
/// ([`runtime_is_behind`]). Otherwise the operation queues FIFO on the pool
/// and every waiting request is served in arrival order: with every worker
/// signing, the runtime's queues are not fair (at 1,000 connections signing
/// on the workers left 582–716 requests waiting over 2 s while others were
/// served in milliseconds; this count alone did not catch it, since the
/// starved requests never reach the signing call). 64 is far below a worker
/// queue's 256 tasks and far above what a saturated node with tens of
/// connections has in flight.
pub(crate) const INLINE_LIMIT: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// Why an operation did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The queue is full: the node is signing as fast as it can.
    #[error("the signing queue is full")]
    Busy,
    /// The operation panicked or its thread is gone.
    #[error("a signing thread failed")]
    Failed,
}

/// A fixed set of signing threads behind a bounded queue. The threads stop
/// when the pool is dropped.
pub(crate) struct SigningPool {
    jobs: SyncSender<Job>,
    threads: usize,
    in_flight: AtomicUsize,
    inline_limit: usize,
}

impl SigningPool {
    /// `threads` threads (at least one) behind a queue of `queue` jobs.
    pub(crate) fn new(threads: usize, queue: usize) -> Self {
        Self::with_inline_limit(threads, queue, INLINE_LIMIT)
    }

    /// [`SigningPool::new`] with another [`INLINE_LIMIT`].
    pub(crate) fn with_inline_limit(threads: usize, queue: usize, inline_limit: usize) -> Self {
        let (jobs, receiver) = sync_channel::<Job>(queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = threads.max(1);
        for i in 0..threads {
            let receiver = Arc::clone(&receiver);
            let spawned =
                std::thread::Builder::new().name(format!("blindpass-sign-{i}")).spawn(move || work(&receiver));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a signing thread");
            }
        }
        Self { jobs, threads, in_flight: AtomicUsize::new(0), inline_limit }
    }

    /// One thread per core.
    pub(crate) fn per_core(queue: usize) -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get), queue)
    }

    /// How many threads sign.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` here, on the caller's thread, while at most
    /// [`INLINE_LIMIT`] operations are in flight and the runtime keeps up;
    /// otherwise queues `f` on the pool (FIFO) and waits for it without
    /// blocking the async thread.
    pub(crate) async fn run_here_or_queue<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let in_flight = InFlight::enter(&self.in_flight);
        if in_flight.count <= self.inline_limit && !runtime_is_behind() {
            return Ok(f());
        }
        self.submit(f)?.await.map_err(|_| PoolError::Failed)
    }

    /// Queues `f` now (so that several jobs run at once) and returns where
    /// its result will arrive.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, PoolError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(result),
            Err(TrySendError::Full(_)) => Err(PoolError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Failed),
        }
    }
}

/// True when tasks wait in the runtime's shared queue: its workers are
/// saturated and their local queues overflow, where scheduling stops being
/// fair (tasks in the shared queue are polled once every 61 ticks of a
/// worker, a tick here being a 0.3 ms signature).
fn runtime_is_behind() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().global_queue_depth() > 0)
}

/// One operation counted in flight until dropped (also when its caller
/// stops waiting).
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    /// The count with this one.
    count: usize,
}

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let count = counter.fetch_add(1, Ordering::AcqRel) + 1;
        Self { counter, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A signing thread: the next job, until the pool is gone. A job that
/// panics drops its answer (the caller sees `Failed`); the thread goes on.
fn work(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = receiver.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a signing job panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    impl SigningPool {
        async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
            self.submit(f)?.await.map_err(|_| PoolError::Failed)
        }
    }

    #[tokio::test]
    async fn jobs_run_on_the_pools_threads_and_a_full_queue_is_refused_at_once() {
        let pool = SigningPool::new(1, 1);
        let name = pool.run(|| std::thread::current().name().map(str::to_owned)).await.unwrap();
        assert_eq!(name.as_deref(), Some("blindpass-sign-0"));

        // Hold the only thread, fill the one queue slot, then one more is Busy.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, wait_started) = std::sync::mpsc::channel::<()>();
        let blocker = pool
            .submit(move || {
                started.send(()).unwrap();
                held.recv().unwrap();
            })
            .unwrap();
        wait_started.recv().unwrap();
        let queued = pool.submit(|| 7).unwrap();
        assert!(matches!(pool.submit(|| 8), Err(PoolError::Busy)));
        release.send(()).unwrap();
        blocker.await.unwrap();
        assert_eq!(queued.await.unwrap(), 7);
    }

    /// Under the limit an operation runs on its caller's thread; past it, on
    /// the pool's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_run_here_until_the_limit_then_queue() {
        let pool = Arc::new(SigningPool::with_inline_limit(1, 4, 1));
        let name = || std::thread::current().name().map(str::to_owned);
        let here = pool.run_here_or_queue(name).await.unwrap();
        assert_ne!(here.as_deref(), Some("blindpass-sign-0"), "one in flight: on the caller's thread");

        // Hold one operation in flight on a worker, then the next one queues.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, wait_started) = std::sync::mpsc::channel::<()>();
        let holder = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run_here_or_queue(move || {
                    started.send(()).unwrap();
                    held.recv().unwrap();
                })
                .await
            })
        };
        wait_started.recv().unwrap();
        let queued = pool.run_here_or_queue(name).await.unwrap();
        assert_eq!(queued.as_deref(), Some("blindpass-sign-0"), "past the limit: on the pool");
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert_eq!(pool.in_flight.load(Ordering::Acquire), 0, "every operation leaves the count");
    }

    /// With tasks waiting in the runtime's shared queue, an operation goes to
    /// the pool even far under the in-flight limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_runtime_that_is_behind_sends_operations_to_the_pool() {
        // On the only worker (the test body itself runs on another thread):
        // tasks spawned from outside wait in the shared queue while it works.
        tokio::spawn(async {
            let pool = SigningPool::new(1, 4);
            let handle = tokio::runtime::Handle::current();
            let waiting: Vec<_> =
                std::thread::spawn(move || (0..4).map(|_| handle.spawn(async {})).collect()).join().unwrap();
            assert!(runtime_is_behind());
            let name = || std::thread::current().name().map(str::to_owned);
            let queued = pool.run_here_or_queue(name).await.unwrap();
            assert_eq!(queued.as_deref(), Some("blindpass-sign-0"), "behind: on the pool");
            for task in waiting {
                task.await.unwrap();
            }
            assert!(!runtime_is_behind());
            let here = pool.run_here_or_queue(name).await.unwrap();
            assert_ne!(here.as_deref(), Some("blindpass-sign-0"), "caught up: on the caller's thread again");
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_keeps_working() {
        let pool = SigningPool::new(1, 4);
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, Err(PoolError::Failed));
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }
}
