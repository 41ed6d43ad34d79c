//! The threads that run the shares of a batch that the request's own thread
//! does not (`issue.rs`): one per core, fed by a bounded queue. Unlike tokio's blocking pool (which grows a thread per
//! waiting call, 481 of them at 1,000 connections), a burst beyond the queue
//! is refused at once ([`PoolError::Busy`], answered 503 + `Retry-After`)
//! and the operations never outnumber the cores.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

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
}

impl SigningPool {
    /// `threads` threads (at least one) behind a queue of `queue` jobs.
    pub(crate) fn new(threads: usize, queue: usize) -> Self {
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
        Self { jobs, threads }
    }

    /// One thread per core.
    pub(crate) fn per_core(queue: usize) -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get), queue)
    }

    /// How many threads sign.
    pub(crate) fn threads(&self) -> usize {
        self.threads
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

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_thread_keeps_working() {
        let pool = SigningPool::new(1, 4);
        assert_eq!(pool.run(|| -> u8 { panic!("boom") }).await, Err(PoolError::Failed));
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }
}
