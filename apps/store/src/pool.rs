//! A bounded pool of OS threads for blocking work (inference), so the async executor never
//! runs a model, with fair service under abuse:
//!
//! - every job has a **cost** (for a search: the pixels its photo decodes to, plus the model's
//!   fixed share) and a **client** (the peer address);
//! - waiting jobs are served in start-time fair order (SFQ): each client's jobs are tagged
//!   with the virtual time at which its earlier jobs' cost is paid, so a client sending
//!   expensive uploads waits for its own work, not the others' turn;
//! - admission is refused at once (503) when the queue holds too many jobs or too much cost,
//!   or when one client already holds more than its share of the waiting cost;
//! - a job that waits past its **deadline** is answered 503 without running, and a job whose
//!   requester went away is dropped from the queue.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: runs when given `true`, answers "expired" without running when given `false`.
type Job = Box<dyn FnOnce(bool) + Send + 'static>;

/// Why a job did not run to completion.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every worker is busy and the queue is full (in jobs or in cost); try again later.
    #[error("all {workers} workers are busy and {queued} requests are waiting")]
    Busy {
        /// Number of workers.
        workers: usize,
        /// Requests waiting.
        queued: usize,
    },
    /// This client already has more than its share of the queue waiting.
    #[error("this client already has {queued} requests waiting; wait for them first")]
    ClientBusy {
        /// The client's requests waiting.
        queued: usize,
    },
    /// The job waited longer than the queue deadline and was not run.
    #[error("the request waited {waited_ms} ms for a worker, past the {deadline_ms} ms deadline")]
    Expired {
        /// Milliseconds waited.
        waited_ms: u64,
        /// The deadline in milliseconds.
        deadline_ms: u64,
    },
    /// The job panicked (the worker survives).
    #[error("the job panicked: {0}")]
    Panicked(String),
    /// The pool was shut down before the job ran.
    #[error("the worker pool is shut down")]
    Closed,
}

/// How much may wait for a worker, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueLimits {
    /// Jobs that may wait (at least 1).
    pub jobs: usize,
    /// Total cost of the waiting jobs (a job that finds the queue empty is always admitted).
    pub cost: u64,
    /// Fraction of `cost` one client may hold waiting, in `(0, 1]` (a client with nothing
    /// waiting is always admitted).
    pub client_share: f64,
    /// How long a job may wait for a worker before it is answered [`PoolError::Expired`].
    pub deadline: Duration,
}

impl QueueLimits {
    /// `jobs` waiting jobs, with a cost budget of `jobs` typical searches (see
    /// [`SEARCH_BASE_COST`]), half of it per client, and a 5 s deadline.
    pub fn for_jobs(jobs: usize) -> QueueLimits {
        let jobs = jobs.max(1);
        QueueLimits {
            jobs,
            cost: (jobs as u64).saturating_mul(2 * SEARCH_BASE_COST),
            client_share: 0.5,
            deadline: Duration::from_secs(5),
        }
    }
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits::for_jobs(32)
    }
}

/// The cost of a search besides decoding: the model's fixed work, counted as the decoding of
/// this many thousand pixels (MobileNetV2 on one crop takes about as long as decoding a
/// 1-megapixel JPEG).
pub const SEARCH_BASE_COST: u64 = 1_000;

/// Who asked for a job and what it costs (see [`SEARCH_BASE_COST`] for the unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The client, by address (`None`: unknown, counted as one client).
    pub client: Option<IpAddr>,
    /// The job's cost, at least 1.
    pub cost: u64,
}

/// Counts of what the pool refused or dropped, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    /// Refused because the queue was full (jobs or cost).
    pub queue_full: u64,
    /// Refused because the client held its share of the queue.
    pub client_share: u64,
    /// Answered 503 after waiting past the deadline.
    pub expired: u64,
    /// Dropped from the queue because the requester went away.
    pub abandoned: u64,
}

struct Waiting {
    client: Option<IpAddr>,
    cost: u64,
    enqueued: Instant,
    job: Job,
}

#[derive(Default)]
struct Queue {
    /// Waiting jobs by (virtual start tag, arrival number): the first is served next.
    waiting: BTreeMap<(u64, u64), Waiting>,
    /// Each client's virtual finish tag: when the cost of its jobs so far is paid.
    finish: HashMap<Option<IpAddr>, u64>,
    /// Each client's waiting jobs and cost.
    by_client: HashMap<Option<IpAddr>, (usize, u64)>,
    cost: u64,
    virtual_time: u64,
    arrivals: u64,
    closed: bool,
    counts: PoolCounts,
}

impl Queue {
    fn remove(&mut self, key: (u64, u64)) -> Option<Waiting> {
        let waiting = self.waiting.remove(&key)?;
        self.cost -= waiting.cost;
        if let Some(entry) = self.by_client.get_mut(&waiting.client) {
            entry.0 -= 1;
            entry.1 -= waiting.cost;
            if entry.0 == 0 {
                self.by_client.remove(&waiting.client);
            }
        }
        Some(waiting)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    limits: QueueLimits,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs run outside the lock, so a poisoned lock only means a panic in this module's
        // bookkeeping, which leaves the maps consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fixed set of worker threads serving a fair, bounded queue.
pub struct WorkerPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Jobs submitted and not yet finished (waiting or running).
    in_flight: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// Starts `workers` threads (at least 1) with room for `queue` waiting jobs (at least 1)
    /// and the other limits of [`QueueLimits::for_jobs`].
    pub fn new(workers: usize, queue: usize) -> std::io::Result<WorkerPool> {
        WorkerPool::with_limits(workers, QueueLimits::for_jobs(queue))
    }

    /// Starts `workers` threads (at least 1) under `limits`.
    pub fn with_limits(workers: usize, limits: QueueLimits) -> std::io::Result<WorkerPool> {
        let limits = QueueLimits {
            jobs: limits.jobs.max(1),
            cost: limits.cost.max(1),
            client_share: if limits.client_share > 0.0 {
                limits.client_share.min(1.0)
            } else {
                1.0
            },
            deadline: limits.deadline,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            limits,
        });
        let handles = (0..workers.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("wtb-infer-{i}"))
                    .spawn(move || work(&shared))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(WorkerPool {
            shared,
            workers: handles,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Jobs waiting in the queue (not yet picked up by a worker).
    pub fn queued(&self) -> usize {
        self.shared.lock().waiting.len()
    }

    /// Total cost of the jobs waiting.
    pub fn queued_cost(&self) -> u64 {
        self.shared.lock().cost
    }

    /// Jobs submitted and not finished (waiting plus running).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Room in the queue, in jobs.
    pub fn capacity(&self) -> usize {
        self.shared.limits.jobs
    }

    /// The limits in force.
    pub fn limits(&self) -> QueueLimits {
        self.shared.limits
    }

    /// What was refused, expired or abandoned so far.
    pub fn counts(&self) -> PoolCounts {
        self.shared.lock().counts
    }

    /// Queues `job` for the client and cost of `ticket`; the returned future resolves to its
    /// result, or to [`PoolError::Expired`] when it is still waiting at the deadline. Fails at
    /// once with [`PoolError::Busy`] or [`PoolError::ClientBusy`] when it cannot be admitted.
    /// Dropping the future before the job starts takes it out of the queue.
    pub fn submit<T, F>(
        &self,
        ticket: Ticket,
        job: F,
    ) -> Result<impl Future<Output = Result<T, PoolError>>, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let in_flight = Arc::clone(&self.in_flight);
        let limits = self.shared.limits;
        let enqueued = Instant::now();
        let boxed: Job = Box::new(move |run: bool| {
            let result = if run {
                catch_unwind(AssertUnwindSafe(job)).map_err(|payload| {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_string());
                    PoolError::Panicked(message)
                })
            } else {
                Err(expired(enqueued, limits.deadline))
            };
            // The requester may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(result);
        });
        let cost = ticket.cost.max(1);
        let key = {
            let mut queue = self.shared.lock();
            if queue.closed {
                return Err(PoolError::Closed);
            }
            let (client_jobs, client_cost) = queue
                .by_client
                .get(&ticket.client)
                .copied()
                .unwrap_or((0, 0));
            let client_cap = (limits.cost as f64 * limits.client_share) as u64;
            if client_jobs > 0 && client_cost.saturating_add(cost) > client_cap {
                queue.counts.client_share += 1;
                return Err(PoolError::ClientBusy {
                    queued: client_jobs,
                });
            }
            let full = queue.waiting.len() >= limits.jobs
                || (!queue.waiting.is_empty() && queue.cost.saturating_add(cost) > limits.cost);
            if full {
                queue.counts.queue_full += 1;
                return Err(PoolError::Busy {
                    workers: self.workers(),
                    queued: queue.waiting.len(),
                });
            }
            let virtual_time = queue.virtual_time;
            let finish = queue.finish.entry(ticket.client).or_insert(0);
            let start = (*finish).max(virtual_time);
            *finish = start.saturating_add(cost);
            queue.arrivals += 1;
            let key = (start, queue.arrivals);
            queue.waiting.insert(
                key,
                Waiting {
                    client: ticket.client,
                    cost,
                    enqueued,
                    job: boxed,
                },
            );
            queue.cost += cost;
            let entry = queue.by_client.entry(ticket.client).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += cost;
            key
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.shared.ready.notify_one();
        let guard = Submitted {
            shared: Arc::clone(&self.shared),
            key,
            in_flight,
        };
        Ok(async move {
            let deadline = actix_web::rt::time::sleep(limits.deadline);
            let mut answer = answer;
            let result = match futures_util::future::select(&mut answer, Box::pin(deadline)).await {
                futures_util::future::Either::Left((result, _)) => result,
                futures_util::future::Either::Right(((), _)) => {
                    if guard.withdraw() {
                        return Err(expired(enqueued, limits.deadline));
                    }
                    // Already running: its answer comes soon, and the work is done anyway.
                    answer.await
                }
            };
            drop(guard);
            result.map_err(|_| PoolError::Closed)?
        })
    }
}

fn expired(enqueued: Instant, deadline: Duration) -> PoolError {
    PoolError::Expired {
        waited_ms: enqueued.elapsed().as_millis() as u64,
        deadline_ms: deadline.as_millis() as u64,
    }
}

/// A queued job's place, withdrawn from the queue if its requester stops waiting before it
/// starts.
struct Submitted {
    shared: Arc<Shared>,
    key: (u64, u64),
    in_flight: Arc<AtomicUsize>,
}

impl Submitted {
    /// Takes the job out of the queue; false when a worker already took it.
    fn withdraw(&self) -> bool {
        let mut queue = self.shared.lock();
        let withdrawn = queue.remove(self.key).is_some();
        if withdrawn {
            queue.counts.expired += 1;
        }
        withdrawn
    }
}

impl Drop for Submitted {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        if queue.remove(self.key).is_some() {
            queue.counts.abandoned += 1;
        }
        drop(queue);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's loop: take the first waiting job in fair order, run it (or answer it expired).
fn work(shared: &Shared) {
    loop {
        let (waiting, run) = {
            let mut queue = shared.lock();
            let key = loop {
                if let Some((&key, _)) = queue.waiting.first_key_value() {
                    break key;
                }
                if queue.closed {
                    return;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            };
            let Some(waiting) = queue.remove(key) else {
                continue;
            };
            queue.virtual_time = queue.virtual_time.max(key.0);
            // Clients whose work is all paid for need no tag: they start at the virtual time.
            if queue.finish.len() > 1024 {
                let now = queue.virtual_time;
                queue.finish.retain(|_, finish| *finish > now);
            }
            let run = waiting.enqueued.elapsed() <= shared.limits.deadline;
            if !run {
                queue.counts.expired += 1;
            }
            (waiting, run)
        };
        (waiting.job)(run);
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Workers drain the queue, then stop.
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn block_on<F: Future>(f: F) -> F::Output {
        actix_web::rt::System::new().block_on(f)
    }

    fn ticket(client: u8, cost: u64) -> Ticket {
        Ticket {
            client: Some(IpAddr::from([10, 0, 0, client])),
            cost,
        }
    }

    /// A job that tells when it starts and waits for `gate`.
    fn gated(
        pool: &WorkerPool,
    ) -> (
        mpsc::Sender<()>,
        impl Future<Output = Result<u8, PoolError>>,
    ) {
        let (release, gate) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let running = pool
            .submit(ticket(99, 1), move || {
                started_tx.send(()).unwrap();
                gate.recv().unwrap();
                0u8
            })
            .unwrap();
        let running = Box::pin(running);
        (release, async move {
            started.recv_timeout(Duration::from_secs(10)).unwrap();
            running.await
        })
    }

    /// Occupies the pool's only worker with a gated job; returns once it runs (the queue is
    /// empty again).
    fn occupy(
        pool: &WorkerPool,
    ) -> (
        mpsc::Sender<()>,
        std::thread::JoinHandle<Result<u8, PoolError>>,
    ) {
        let (release, running) = gated(pool);
        let running = std::thread::spawn(move || block_on(running));
        while pool.queued() > 0 || pool.in_flight() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        (release, running)
    }

    #[test]
    fn runs_jobs_and_returns_their_results() {
        let pool = WorkerPool::new(2, 4).unwrap();
        let a = pool.submit(ticket(1, 1), || 6 * 7).unwrap();
        let b = pool.submit(ticket(2, 1), || "x".repeat(3)).unwrap();
        assert_eq!(block_on(a), Ok(42));
        assert_eq!(block_on(b), Ok("xxx".to_string()));
        assert_eq!(pool.in_flight(), 0);
    }

    #[test]
    fn a_full_queue_is_refused_not_queued() {
        let pool = WorkerPool::new(1, 1).unwrap();
        let (release, running) = occupy(&pool);
        let waiting = pool.submit(ticket(1, 1), || 2).unwrap();
        let refused = pool.submit(ticket(2, 1), || 3);
        assert!(matches!(
            refused,
            Err(PoolError::Busy {
                workers: 1,
                queued: 1
            })
        ));
        assert_eq!(pool.counts().queue_full, 1);
        release.send(()).unwrap();
        assert_eq!(running.join().unwrap(), Ok(0));
        assert_eq!(block_on(waiting), Ok(2));
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_worker_survives() {
        let pool = WorkerPool::new(1, 2).unwrap();
        let bad = pool
            .submit(ticket(1, 1), || -> u8 { panic!("boom") })
            .unwrap();
        assert_eq!(block_on(bad), Err(PoolError::Panicked("boom".to_string())));
        let good = pool.submit(ticket(1, 1), || 5).unwrap();
        assert_eq!(block_on(good), Ok(5));
    }

    #[test]
    fn cheap_jobs_of_other_clients_pass_an_expensive_client() {
        let pool = WorkerPool::with_limits(
            1,
            QueueLimits {
                jobs: 16,
                cost: 1_000,
                client_share: 1.0,
                deadline: Duration::from_secs(30),
            },
        )
        .unwrap();
        let (release, running) = occupy(&pool);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut jobs = Vec::new();
        // Client 1 queues three expensive jobs, then client 2 one cheap job.
        for (client, cost, name) in [(1, 300, "a1"), (1, 300, "a2"), (1, 300, "a3"), (2, 10, "b")] {
            let order = Arc::clone(&order);
            jobs.push(
                pool.submit(ticket(client, cost), move || {
                    order.lock().unwrap().push(name);
                })
                .unwrap(),
            );
        }
        release.send(()).unwrap();
        running.join().unwrap().unwrap();
        for job in jobs {
            block_on(job).unwrap();
        }
        // Client 2's job is tagged at the virtual time, before client 1's second job.
        assert_eq!(*order.lock().unwrap(), vec!["a1", "b", "a2", "a3"]);
    }

    #[test]
    fn one_client_cannot_hold_more_than_its_share() {
        let pool = WorkerPool::with_limits(
            1,
            QueueLimits {
                jobs: 16,
                cost: 1_000,
                client_share: 0.5,
                deadline: Duration::from_secs(30),
            },
        )
        .unwrap();
        let (release, running) = occupy(&pool);
        // A client with nothing waiting is admitted whatever the cost.
        let big = pool.submit(ticket(1, 900), || 1).unwrap();
        assert!(matches!(
            pool.submit(ticket(1, 10), || 2),
            Err(PoolError::ClientBusy { queued: 1 })
        ));
        // Another client still gets in while the total budget allows it.
        let other = pool.submit(ticket(2, 50), || 3).unwrap();
        assert!(matches!(
            pool.submit(ticket(3, 100), || 4),
            Err(PoolError::Busy { .. })
        ));
        assert_eq!(pool.queued_cost(), 950);
        release.send(()).unwrap();
        running.join().unwrap().unwrap();
        assert_eq!(block_on(big), Ok(1));
        assert_eq!(block_on(other), Ok(3));
        let counts = pool.counts();
        assert_eq!((counts.client_share, counts.queue_full), (1, 1));
    }

    #[test]
    fn a_job_waiting_past_its_deadline_is_answered_without_running() {
        let pool = WorkerPool::with_limits(
            1,
            QueueLimits {
                deadline: Duration::from_millis(200),
                ..QueueLimits::for_jobs(4)
            },
        )
        .unwrap();
        let (release, running) = occupy(&pool);
        let ran = Arc::new(AtomicUsize::new(0));
        let flag = Arc::clone(&ran);
        let late = pool
            .submit(ticket(1, 1), move || flag.fetch_add(1, Ordering::SeqCst))
            .unwrap();
        let answer = block_on(late);
        assert!(
            matches!(answer, Err(PoolError::Expired { deadline_ms: 200, waited_ms }) if waited_ms >= 200),
            "{answer:?}"
        );
        // It left the queue at once, and never runs.
        assert_eq!(pool.queued(), 0);
        release.send(()).unwrap();
        running.join().unwrap().unwrap();
        assert_eq!(block_on(pool.submit(ticket(1, 1), || 7).unwrap()), Ok(7));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(pool.counts().expired, 1);
    }

    #[test]
    fn an_abandoned_job_leaves_the_queue() {
        let pool = WorkerPool::new(1, 4).unwrap();
        let (release, running) = occupy(&pool);
        let ran = Arc::new(AtomicUsize::new(0));
        let flag = Arc::clone(&ran);
        let job = pool
            .submit(ticket(1, 1), move || flag.fetch_add(1, Ordering::SeqCst))
            .unwrap();
        assert_eq!(pool.queued(), 1);
        drop(job);
        assert_eq!(pool.queued(), 0);
        assert_eq!(pool.counts().abandoned, 1);
        release.send(()).unwrap();
        running.join().unwrap().unwrap();
        assert_eq!(pool.in_flight(), 0);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
