//! What serves a running plugin's calls: a sandboxed worker process, or — for bundles
//! signed by a key trusted at level `in-process` — the plugin loaded into the engine.
//! Both answer the same calls with the same outcomes, so the call path and the statistics
//! do not care which it is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use plugboard_sdk::abi;

use crate::inprocess::InProcessPlugin;
use crate::sandbox::Mechanism;
use crate::worker::{CallFailure, CallOutcome, ExitStatus, MechanismState, Worker};

pub(crate) enum Runner {
    Worker(Arc<Worker>),
    /// The plugin and its calls running right now (callers hold the `Running` handle,
    /// not the plugin, so the count is kept here).
    InProcess(Arc<InProcessPlugin>, AtomicUsize),
}

/// Counts one in-process call for as long as it runs.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn enter(calls: &'a AtomicUsize) -> Self {
        calls.fetch_add(1, Ordering::SeqCst);
        Self(calls)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runner {
    /// One call. In-process, nothing can interrupt native code: a call that returns after
    /// its timeout counts as a timeout (its reply is discarded), but it ran to the end.
    pub fn call_at_depth(
        &self,
        hook: &str,
        payload: &[u8],
        depth: u32,
        timeout: Duration,
    ) -> Result<CallOutcome, CallFailure> {
        match self {
            Runner::Worker(worker) => worker.call_at_depth(hook, payload, depth, timeout),
            Runner::InProcess(plugin, calls) => {
                let _counted = Counted::enter(calls);
                let clock = call_clock();
                let start = clock.raw();
                let answer = plugin.call_at_depth(hook, payload, depth);
                let elapsed = Duration::from_nanos(clock.delta_as_nanos(start, clock.raw()));
                in_process_outcome(answer, elapsed, timeout)
            }
        }
    }

    pub fn health(&self, timeout: Duration) -> Result<CallOutcome, CallFailure> {
        match self {
            Runner::Worker(worker) => worker.health(timeout),
            Runner::InProcess(plugin, calls) => {
                let _counted = Counted::enter(calls);
                let start = Instant::now();
                let answer = plugin.health().map(|()| Vec::new());
                in_process_outcome(answer, start.elapsed(), timeout)
            }
        }
    }

    /// Calls not answered yet (in-process: calls still running on other threads).
    pub fn in_flight(&self) -> usize {
        match self {
            Runner::Worker(worker) => worker.in_flight(),
            Runner::InProcess(_, calls) => calls.load(Ordering::SeqCst),
        }
    }

    /// Stops gracefully: a worker is asked to shut down and killed after `grace`; an
    /// in-process plugin is destroyed once the calls running in it have returned (after
    /// `grace` the last of them destroys it).
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        match self {
            Runner::Worker(worker) => worker.stop(grace),
            Runner::InProcess(..) => {
                let deadline = Instant::now() + grace;
                while self.in_flight() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                None
            }
        }
    }

    /// Kills a worker now; an in-process plugin cannot be killed, only dropped.
    pub fn kill(&self) {
        if let Runner::Worker(worker) = self {
            worker.kill();
        }
    }

    pub fn same(&self, other: &Runner) -> bool {
        match (self, other) {
            (Runner::Worker(left), Runner::Worker(right)) => Arc::ptr_eq(left, right),
            (Runner::InProcess(left, _), Runner::InProcess(right, _)) => Arc::ptr_eq(left, right),
            _ => false,
        }
    }

    /// A sandboxed worker (not in-process).
    pub fn is_sandboxed(&self) -> bool {
        matches!(self, Runner::Worker(_))
    }

    /// What the kernel granted (in-process: nothing).
    pub fn mechanisms(&self) -> BTreeMap<Mechanism, MechanismState> {
        match self {
            Runner::Worker(worker) => worker.mechanisms().clone(),
            Runner::InProcess(..) => crate::inprocess::mechanisms(),
        }
    }

    /// The worker's pid and its sandboxed child's, and its cgroup (in-process: the
    /// engine's pid twice, no cgroup).
    pub fn identity(&self) -> (u32, u32, Option<String>) {
        match self {
            Runner::Worker(worker) => (
                worker.pid(),
                worker.sandbox_pid(),
                Some(worker.cgroup_path().to_owned()),
            ),
            Runner::InProcess(..) => (std::process::id(), std::process::id(), None),
        }
    }
}

/// The clock in-process calls are timed with: the TSC read directly (calibrated once), 11 ns
/// a read here against 29 ns for `std::time::Instant` — an in-process call takes a few
/// hundred nanoseconds, so the clock is a good part of its statistics' cost. `quanta`
/// falls back to the OS clock where the TSC is not reliable.
fn call_clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

fn in_process_outcome(
    answer: Result<Vec<u8>, plugboard_sdk::host::CallError>,
    elapsed: Duration,
    timeout: Duration,
) -> Result<CallOutcome, CallFailure> {
    if elapsed > timeout {
        return Err(CallFailure::Timeout { timeout });
    }
    let (status, body) = match answer {
        Ok(body) => (abi::STATUS_OK, body),
        Err(err) => (err.status, err.message.into_bytes()),
    };
    Ok(CallOutcome {
        status,
        body,
        duration: elapsed,
    })
}
