//! What serves a running plugin's calls: a sandboxed worker process, or — for bundles
//! signed by a key trusted at level `in-process` — the plugin loaded into the engine.
//! Both answer the same calls with the same outcomes, so the call path and the statistics
//! do not care which it is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard_sdk::abi;

use crate::hooks::{HookStats, call_clock};
use crate::inprocess::InProcessPlugin;
use crate::sandbox::Mechanism;
use crate::worker::{CallFailure, CallOutcome, ExitStatus, MechanismState, Worker};

/// How long after its deadline a timed-out call's caller has surely let go of it.
const CALLER_NOTICES_TIMEOUT: Duration = Duration::from_millis(100);

pub(crate) enum Runner {
    Worker(Arc<Worker>),
    /// The plugin, and the statistics of the hooks it subscribes to: a stop or a reload
    /// drains it by those counts of calls begun and ended (see [`Runner::drain`]), so an
    /// in-process call pays no counter of its own.
    InProcess(Arc<InProcessPlugin>, Vec<Arc<HookStats>>),
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
            Runner::InProcess(plugin, _) => {
                let clock = call_clock();
                let start = clock.raw();
                let answer = plugin.call_at_depth(hook, payload, depth);
                let end = clock.raw();
                let elapsed = Duration::from_nanos(clock.delta_as_nanos(start, end));
                in_process_outcome(answer, elapsed, timeout)
                    .map(|outcome| outcome.finished_at(clock.scaled(end)))
            }
        }
    }

    /// Calls pipelined into a sandboxed worker (see `Worker::call_batch`); in-process,
    /// one after the other, as `call_at_depth`.
    pub fn call_batch(
        &self,
        calls: &[(&str, &[u8])],
        timeout: Duration,
    ) -> Vec<Result<CallOutcome, CallFailure>> {
        match self {
            Runner::Worker(worker) => worker.call_batch(calls, timeout),
            Runner::InProcess(..) => calls
                .iter()
                .map(|(hook, payload)| self.call_at_depth(hook, payload, 0, timeout))
                .collect(),
        }
    }

    pub fn health(&self, timeout: Duration) -> Result<CallOutcome, CallFailure> {
        match self {
            Runner::Worker(worker) => worker.health(timeout),
            Runner::InProcess(plugin, _) => {
                let start = Instant::now();
                let answer = plugin.health().map(|()| Vec::new());
                in_process_outcome(answer, start.elapsed(), timeout)
            }
        }
    }

    /// Waits, at most `grace`, for the calls given to it so far to be answered. In-process:
    /// until as many calls of its hooks have ended as had begun when the drain started —
    /// calls end in any order, so under a reload's new traffic this can return while an
    /// old call still runs; that call holds the plugin (`Arc`), which is destroyed when it
    /// returns.
    pub fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let settled: Box<dyn Fn() -> bool + '_> = match self {
            Runner::Worker(worker) => Box::new(|| worker.in_flight() == 0),
            Runner::InProcess(_, hooks) => {
                let begun: Vec<u64> = hooks.iter().map(|stats| stats.begun()).collect();
                Box::new(move || {
                    hooks
                        .iter()
                        .zip(&begun)
                        .all(|(stats, &begun)| stats.ended() >= begun)
                })
            }
        };
        while !settled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Retires a runner a reload replaced: waits for the calls given to it to be answered
    /// or to time out — however long its slowest hook's timeout (`longest_call`) — then
    /// stops it. A reload loses no call: one still running when the grace period ends would
    /// otherwise die with the old worker. `grace` or the longest call, whichever is longer,
    /// bounds drain and stop together, so a call stuck past its timeout is waited for
    /// once, not twice (in-process, the drain is the stop). It runs on the plugin's actor:
    /// the plugin's next command waits for it (at most the longest hook timeout the
    /// manifest may set).
    pub fn retire(&self, grace: Duration, longest_call: Duration) {
        // A caller notices its timeout at its next receive tick: a little after it.
        let wait = grace.max(longest_call + CALLER_NOTICES_TIMEOUT);
        let deadline = Instant::now() + wait;
        self.drain(wait);
        if let Runner::Worker(worker) = self {
            worker.stop(deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Stops gracefully: a worker is asked to shut down and killed after `grace`; an
    /// in-process plugin is drained (see [`Runner::drain`]) and destroyed when the last
    /// holder of it lets go.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        match self {
            Runner::Worker(worker) => worker.stop(grace),
            Runner::InProcess(..) => {
                self.drain(grace);
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
                // Empty when it runs without a cgroup (not required, none to be had).
                Some(worker.cgroup_path().to_owned()).filter(|path| !path.is_empty()),
            ),
            Runner::InProcess(..) => (std::process::id(), std::process::id(), None),
        }
    }
}

fn in_process_outcome(
    answer: Result<Vec<u8>, plugboard_sdk::host::CallError>,
    elapsed: Duration,
    timeout: Duration,
) -> Result<CallOutcome, CallFailure> {
    if elapsed > timeout {
        return Err(CallFailure::Timeout {
            timeout,
            late_by_end: Some(elapsed),
        });
    }
    let (status, body) = match answer {
        Ok(body) => (abi::STATUS_OK, body),
        Err(err) => (err.status, err.message.into_bytes()),
    };
    // As a worker answers a reply it cannot frame, so both modes answer alike.
    let (status, body) = match crate::ipc::oversized_reply(body.len()) {
        Some((status, refusal)) => (status, refusal.into_bytes()),
        None => (status, body),
    };
    Ok(CallOutcome {
        status,
        body,
        duration: elapsed,
        finished: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In process, a reply a worker could not frame is answered as the worker answers it:
    /// an error saying so, not the body.
    #[test]
    fn an_in_process_reply_over_the_bound_is_answered_as_a_worker_answers_it() {
        let fits = vec![b'x'; crate::ipc::MAX_REPLY_BYTES];
        let outcome = in_process_outcome(Ok(fits), Duration::ZERO, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (outcome.status, outcome.body.len()),
            (abi::STATUS_OK, crate::ipc::MAX_REPLY_BYTES)
        );
        let over = vec![b'x'; crate::ipc::MAX_REPLY_BYTES + 1];
        let outcome = in_process_outcome(Ok(over), Duration::ZERO, Duration::from_secs(1)).unwrap();
        assert_eq!(outcome.status, abi::STATUS_ERROR);
        let message = String::from_utf8(outcome.body).unwrap();
        assert!(message.contains("exceeds"), "{message}");
    }
}
