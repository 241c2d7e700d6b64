//! A bounded pool of OS threads for blocking work (inference), so the async executor never
//! runs a model. A full queue is refused at once instead of queueing without bound.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run to completion.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every worker is busy and the queue is full; try again later.
    #[error("all {workers} workers are busy and {queued} requests are waiting")]
    Busy {
        /// Number of workers.
        workers: usize,
        /// Requests waiting.
        queued: usize,
    },
    /// The job panicked (the worker survives).
    #[error("the job panicked: {0}")]
    Panicked(String),
    /// The pool was shut down before the job ran.
    #[error("the worker pool is shut down")]
    Closed,
}

/// A fixed set of worker threads fed from a bounded queue.
pub struct WorkerPool {
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Jobs submitted and not yet finished (waiting or running).
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
}

impl WorkerPool {
    /// Starts `workers` threads (at least 1) with room for `queue` waiting jobs (at least 1).
    pub fn new(workers: usize, queue: usize) -> std::io::Result<WorkerPool> {
        let workers = workers.max(1);
        let queue = queue.max(1);
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(queue);
        let handles = (0..workers)
            .map(|i| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("wtb-infer-{i}"))
                    .spawn(move || {
                        for job in receiver {
                            job();
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(WorkerPool {
            sender: Some(sender),
            workers: handles,
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity: queue,
        })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Jobs waiting in the queue (not yet picked up by a worker).
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// Jobs submitted and not finished (waiting plus running).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Room in the queue.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues `job`; the returned future resolves to its result. Fails at once with
    /// [`PoolError::Busy`] when the queue is full.
    pub fn submit<T, F>(
        &self,
        job: F,
    ) -> Result<impl std::future::Future<Output = Result<T, PoolError>>, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let sender = self.sender.as_ref().ok_or(PoolError::Closed)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::Relaxed);
        let counter = Arc::clone(&in_flight);
        let boxed: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(job)).map_err(|payload| {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                PoolError::Panicked(message)
            });
            counter.fetch_sub(1, Ordering::Relaxed);
            // The requester may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(result);
        });
        match sender.try_send(boxed) {
            Ok(()) => Ok(async move { answer.await.map_err(|_| PoolError::Closed)? }),
            Err(TrySendError::Full(_)) => {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                Err(PoolError::Busy {
                    workers: self.workers(),
                    queued: self.queued(),
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                in_flight.fetch_sub(1, Ordering::Relaxed);
                Err(PoolError::Closed)
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Closing the channel ends each worker's loop once the queue is drained.
        self.sender.take();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        actix_web::rt::System::new().block_on(f)
    }

    #[test]
    fn runs_jobs_and_returns_their_results() {
        let pool = WorkerPool::new(2, 4).unwrap();
        let a = pool.submit(|| 6 * 7).unwrap();
        let b = pool.submit(|| "x".repeat(3)).unwrap();
        assert_eq!(block_on(a), Ok(42));
        assert_eq!(block_on(b), Ok("xxx".to_string()));
        assert_eq!(pool.in_flight(), 0);
    }

    #[test]
    fn a_full_queue_is_refused_not_queued() {
        let pool = WorkerPool::new(1, 1).unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let running = pool
            .submit(move || {
                started_tx.send(()).unwrap();
                gate.recv().unwrap();
                1
            })
            .unwrap();
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        let waiting = pool.submit(|| 2).unwrap();
        let refused = pool.submit(|| 3);
        assert!(matches!(
            refused,
            Err(PoolError::Busy {
                workers: 1,
                queued: 1
            })
        ));
        assert_eq!(pool.in_flight(), 2);
        release.send(()).unwrap();
        assert_eq!(block_on(running), Ok(1));
        assert_eq!(block_on(waiting), Ok(2));
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_worker_survives() {
        let pool = WorkerPool::new(1, 2).unwrap();
        let bad = pool.submit(|| -> u8 { panic!("boom") }).unwrap();
        assert_eq!(block_on(bad), Err(PoolError::Panicked("boom".to_string())));
        let good = pool.submit(|| 5).unwrap();
        assert_eq!(block_on(good), Ok(5));
    }
}
