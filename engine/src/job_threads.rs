//! Threads kept for short blocking jobs (the subscriber calls of a worker's emits).
//!
//! A job goes to a thread that is idle, or else to a new one: no job ever waits behind
//! another, which matters because a job may block on a call into a plugin that itself
//! emits (a fixed pool could have every thread waiting on emits queued behind them). A
//! thread idle for the pool's `keep_idle` ends. Starting a thread costs the engine tens of
//! microseconds and, when the thread ends, scatters whatever it allocated over glibc's
//! malloc arenas; a steady stream of emits now reuses the same few threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One job.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// A growing set of threads that outlive their jobs for a while (see the module's doc).
pub struct JobThreads {
    name: &'static str,
    keep_idle: Duration,
    state: Mutex<Waiting>,
    work: Condvar,
    started: AtomicU64,
}

struct Waiting {
    /// Jobs handed over, each to a thread counted in `idle`.
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
}

impl JobThreads {
    /// Threads named `name`, each ending after `keep_idle` without a job.
    pub const fn new(name: &'static str, keep_idle: Duration) -> Self {
        Self {
            name,
            keep_idle,
            state: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                idle: 0,
            }),
            work: Condvar::new(),
            started: AtomicU64::new(0),
        }
    }

    /// Runs `job` on an idle thread, or on a new one; gives it back if no thread could be
    /// started (the pids limit, memory).
    pub fn run(&'static self, job: Job) -> Result<(), Job> {
        let mut state = self.lock();
        if state.idle > state.jobs.len() {
            state.jobs.push_back(job);
            drop(state);
            self.work.notify_one();
            return Ok(());
        }
        drop(state);
        // The job travels in a slot the spawn may fail to take.
        let slot = Arc::new(Mutex::new(Some(job)));
        let taken = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name(self.name.to_owned())
            .spawn(move || {
                let first = taken.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(taken);
                if let Some(job) = first {
                    job();
                }
                self.serve();
            });
        match spawned {
            Ok(_) => {
                self.started.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => Err(slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .expect("a thread that was not started took no job")),
        }
    }

    /// Threads started since the pool was made.
    pub fn threads_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Threads waiting for a job now.
    pub fn threads_idle(&self) -> usize {
        self.lock().idle
    }

    /// A thread's life after its first job: wait for more, end once idle for `keep_idle`.
    fn serve(&self) {
        loop {
            let mut state = self.lock();
            state.idle += 1;
            let deadline = Instant::now() + self.keep_idle;
            let job = loop {
                if let Some(job) = state.jobs.pop_front() {
                    break Some(job);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break None;
                }
                state = self
                    .work
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            };
            state.idle -= 1;
            drop(state);
            match job {
                Some(job) => job(),
                None => return,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for JobThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobThreads")
            .field("name", &self.name)
            .field("idle", &self.threads_idle())
            .field("started", &self.threads_started())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn leaked(keep_idle: Duration) -> &'static JobThreads {
        Box::leak(Box::new(JobThreads::new("pb-test-job", keep_idle)))
    }

    /// Waits until `threads` has `idle` idle threads (a job's thread counts as idle only
    /// once it is back waiting).
    fn until_idle(threads: &JobThreads, idle: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.threads_idle() != idle {
            assert!(Instant::now() < deadline, "{} idle", threads.threads_idle());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn jobs_one_after_another_reuse_one_thread() {
        let threads = leaked(Duration::from_secs(30));
        let (done, finished) = mpsc::channel();
        for job in 0..200 {
            let done = done.clone();
            threads
                .run(Box::new(move || done.send(job).unwrap()))
                .unwrap_or_else(|_| panic!("job {job} not run"));
            assert_eq!(finished.recv_timeout(Duration::from_secs(5)), Ok(job));
            until_idle(threads, 1);
        }
        assert_eq!(threads.threads_started(), 1);
    }

    #[test]
    fn a_job_never_waits_behind_a_blocked_one() {
        let threads = leaked(Duration::from_secs(30));
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Mutex::new(blocked);
        threads
            .run(Box::new(move || {
                let _ = blocked.lock().unwrap().recv();
            }))
            .unwrap_or_else(|_| panic!("blocking job not run"));
        let (done, finished) = mpsc::channel();
        threads
            .run(Box::new(move || done.send(()).unwrap()))
            .unwrap_or_else(|_| panic!("second job not run"));
        assert_eq!(
            finished.recv_timeout(Duration::from_secs(5)),
            Ok(()),
            "the second job waited for the first"
        );
        assert_eq!(threads.threads_started(), 2);
        release.send(()).unwrap();
        until_idle(threads, 2);
    }

    #[test]
    fn an_idle_thread_ends_after_the_keep_time() {
        let threads = leaked(Duration::from_millis(500));
        let (done, finished) = mpsc::channel();
        threads
            .run(Box::new(move || done.send(()).unwrap()))
            .unwrap_or_else(|_| panic!("job not run"));
        finished.recv_timeout(Duration::from_secs(5)).unwrap();
        until_idle(threads, 1);
        until_idle(threads, 0);
        let (done, finished) = mpsc::channel();
        threads
            .run(Box::new(move || done.send(()).unwrap()))
            .unwrap_or_else(|_| panic!("job not run"));
        finished.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            threads.threads_started(),
            2,
            "the ended thread was replaced"
        );
    }
}
