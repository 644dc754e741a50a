//! A hook resolved once and called many times: the embedding host's hot path.
//!
//! `Command::Call` finds the plugin by name, looks the hook up, and answers with a
//! `CallReport` of owned strings — right for commands, scripts and the dashboard, and a
//! few hundred nanoseconds more than an in-process plugin's hook itself takes. A
//! [`HookHandle`] does that work once: it holds the plugin, the hook's statistics and what
//! it resolved from the serving worker (its timeout, the `max_in_flight` cap, whether the
//! hook is enabled), and checks with one atomic load per call that none of it changed (a
//! start, stop, reload or hook toggle moves the plugin's call-path epoch). A call through
//! it is the same call as `Command::Call` makes — same cap, same timeout and violation,
//! same retry on a reload's successor, same statistics — and answers with the reply's
//! bytes.
//!
//! The handle keeps the worker (or in-process instance) it resolved, as `arc_swap`'s
//! `Cache` does: upgrading a weak reference on every call would cost two more atomic
//! read-modify-writes, a fifth of the budget. Stopping, reloading or unloading the plugin
//! is not held up by it — the stop and its cleanup run as without handles, and the
//! handle's next call sees the epoch move and resolves again — but what the handle last
//! called is released only then, or when the handle is dropped: an in-process instance
//! stopped meanwhile is destroyed at that point. Drop handles you are done with.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::HookStats;
use super::dispatch::{call_through, settle};
use crate::ipc::MAX_PAYLOAD_BYTES;
use crate::supervisor::{Plugin, Running};
use crate::worker::{CallFailure, CallOutcome};

/// The most calls [`HookHandle::call_many`] has in flight at once (the worker's own
/// pipelining keeps 256 of them ahead of their replies).
const MAX_WINDOW: usize = 1024;

/// The longest a window of [`HookHandle::call_many`] waits, however many calls it holds.
const MAX_WINDOW_WAIT: Duration = Duration::from_secs(600);

/// Why a call through a [`HookHandle`] got no reply from the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookCallError {
    #[error("`{plugin}` is not running")]
    NotRunning { plugin: String },
    #[error("`{plugin}` has no hook `{hook}`")]
    UnknownHook { plugin: String, hook: String },
    #[error("hook `{hook}` of `{plugin}` is disabled")]
    Disabled { plugin: String, hook: String },
    #[error("`{plugin}` has {max_in_flight} calls in flight already (its `max_in_flight`)")]
    Busy { plugin: String, max_in_flight: u64 },
    #[error("`{hook}` of `{plugin}` gave no reply within {} ms", timeout.as_millis())]
    Timeout {
        plugin: String,
        hook: String,
        timeout: Duration,
    },
    #[error("the worker of `{plugin}` is gone")]
    Gone { plugin: String },
    #[error(
        "a payload of {bytes} bytes for `{hook}` of `{plugin}` exceeds the {max}-byte maximum of a call"
    )]
    TooLarge {
        plugin: String,
        hook: String,
        bytes: usize,
        max: usize,
    },
}

/// The plugin's answer: its status (`plugboard_sdk::abi::STATUS_*`; anything but
/// `STATUS_OK` is the plugin reporting an error, counted as one) and reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReply {
    pub status: i32,
    pub body: Vec<u8>,
    /// How long the plugin took, as recorded in the hook's statistics.
    pub duration: Duration,
}

impl HookReply {
    pub fn is_ok(&self) -> bool {
        self.status == plugboard_sdk::abi::STATUS_OK
    }
}

/// What a handle resolved from the serving worker, valid while the epoch stands.
struct Resolved {
    running: Arc<Running>,
    /// Made on the first resolve that finds the hook, so a handle to a hook the plugin
    /// does not have leaves no statistics behind.
    stats: Arc<HookStats>,
    timeout: Duration,
    enabled: bool,
}

/// One hook of one plugin, resolved for repeated calls (see the module documentation).
/// Cloning gives another thread its own handle.
pub struct HookHandle {
    plugin: Arc<Plugin>,
    hook: String,
    /// The plugin's call-path epoch `resolved` was read at.
    epoch: u64,
    resolved: Result<Resolved, HookCallError>,
}

impl Clone for HookHandle {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.plugin), self.hook.clone())
    }
}

impl std::fmt::Debug for HookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookHandle")
            .field("plugin", &self.plugin.name)
            .field("hook", &self.hook)
            .field("epoch", &self.epoch)
            .field(
                "resolved",
                &self.resolved.as_ref().map(|resolved| {
                    (
                        resolved.running.generation,
                        resolved.timeout,
                        resolved.running.max_in_flight,
                        resolved.enabled,
                    )
                }),
            )
            .finish()
    }
}

impl HookHandle {
    pub(crate) fn new(plugin: Arc<Plugin>, hook: String) -> Self {
        let epoch = plugin.call_path_epoch.load(Ordering::Acquire);
        let resolved = resolve(&plugin, &hook);
        Self {
            plugin,
            hook,
            epoch,
            resolved,
        }
    }

    pub fn plugin(&self) -> &str {
        &self.plugin.name
    }

    pub fn hook(&self) -> &str {
        &self.hook
    }

    /// Calls the hook with `payload`. `Ok` is the plugin's answer, an error status
    /// included; `Err` says why there was none.
    pub fn call(&mut self, payload: &[u8]) -> Result<HookReply, HookCallError> {
        self.refresh();
        let resolved = self.resolved.as_ref().map_err(Clone::clone)?;
        self.admit(resolved, payload)?;
        let outcome = call_through(
            &self.plugin,
            &resolved.running,
            &self.hook,
            payload,
            0,
            resolved.timeout,
        );
        self.finish(resolved, outcome)
    }

    /// Calls the hook once per payload, pipelined into a sandboxed worker: the calls go
    /// out packed in frames, in windows of at most `max_in_flight`, and the worker answers
    /// a frame's calls one after the other. Each call is admitted (size, enabled, the
    /// plugin's cap: one past it, other callers filling it, is busy), counted and recorded
    /// in the hook's statistics as [`HookHandle::call`] would, with two differences that
    /// come from the pipelining: a window is given its hook's timeout once per call in it
    /// (a call waits behind those packed before it), and a call's recorded duration runs
    /// from its window's start to its reply. A call whose worker a reload replaced goes to
    /// the new one. The answers are in the order of `payloads`. In-process, the calls are
    /// made one after the other.
    pub fn call_many(&mut self, payloads: &[&[u8]]) -> Vec<Result<HookReply, HookCallError>> {
        let mut answers = Vec::with_capacity(payloads.len());
        let mut rest = payloads;
        while !rest.is_empty() {
            // Resolved again for every window: after a reload's switch, the windows go to
            // the new worker, and the old one drains.
            self.refresh();
            let resolved = match self.resolved.as_ref() {
                Ok(resolved) => resolved,
                Err(err) => {
                    answers.extend(rest.iter().map(|_| Err(err.clone())));
                    break;
                }
            };
            if !resolved.running.runner.is_sandboxed() {
                let (payload, tail) = rest.split_at(1);
                rest = tail;
                answers.push(self.call(payload[0]));
                continue;
            }
            let window = usize::try_from(resolved.running.max_in_flight)
                .unwrap_or(usize::MAX)
                .clamp(1, MAX_WINDOW)
                .min(rest.len());
            let (chunk, tail) = rest.split_at(window);
            rest = tail;
            answers.extend(self.call_window(resolved, chunk));
        }
        answers
    }

    /// One window of [`HookHandle::call_many`].
    fn call_window(
        &self,
        resolved: &Resolved,
        chunk: &[&[u8]],
    ) -> Vec<Result<HookReply, HookCallError>> {
        let admitted: Vec<Result<(), HookCallError>> = chunk
            .iter()
            .map(|payload| self.admit(resolved, payload))
            .collect();
        let calls: Vec<(&str, &[u8])> = chunk
            .iter()
            .zip(&admitted)
            .filter(|(_, admitted)| admitted.is_ok())
            .map(|(payload, _)| (self.hook.as_str(), *payload))
            .collect();
        let wait = resolved
            .timeout
            .saturating_mul(u32::try_from(calls.len()).unwrap_or(u32::MAX))
            .min(MAX_WINDOW_WAIT)
            .max(resolved.timeout);
        let runner = &resolved.running.runner;
        let mut outcomes = runner.call_batch(&calls, wait);
        let gone = |outcome: &Result<CallOutcome, CallFailure>| {
            matches!(outcome, Err(CallFailure::WorkerGone))
        };
        if outcomes.iter().any(gone) {
            // Stopped after a reload's drain with calls unanswered: they go to its
            // successor, as a single call's do.
            let lost: Vec<usize> = (0..outcomes.len())
                .filter(|&i| gone(&outcomes[i]))
                .collect();
            if let Some(successor) = self
                .plugin
                .running()
                .filter(|next| !next.runner.same(runner))
            {
                let again: Vec<(&str, &[u8])> = lost.iter().map(|&i| calls[i]).collect();
                for (i, outcome) in lost.iter().zip(successor.runner.call_batch(&again, wait)) {
                    outcomes[*i] = outcome;
                }
            }
            if outcomes.iter().any(gone) {
                // What the worker was doing when it died, for the crash's report.
                resolved
                    .running
                    .lost_calls
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(self.hook.clone());
            }
        }
        let mut outcomes = outcomes.into_iter();
        admitted
            .into_iter()
            .map(|admitted| {
                admitted.and_then(|()| {
                    let outcome = outcomes.next().unwrap_or(Err(CallFailure::WorkerGone));
                    self.finish(resolved, outcome)
                })
            })
            .collect()
    }

    /// Resolves again when a start, stop, reload or toggle moved the plugin's epoch.
    fn refresh(&mut self) {
        let epoch = self.plugin.call_path_epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.resolved = resolve(&self.plugin, &self.hook);
        }
    }

    /// Checks a call before it goes out — its size, the hook enabled, the plugin's cap —
    /// and counts it as begun. Every `Ok` must be followed by [`HookHandle::finish`].
    fn admit(&self, resolved: &Resolved, payload: &[u8]) -> Result<(), HookCallError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(HookCallError::TooLarge {
                plugin: self.plugin.name.clone(),
                hook: self.hook.clone(),
                bytes: payload.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        if !resolved.enabled {
            return Err(HookCallError::Disabled {
                plugin: self.plugin.name.clone(),
                hook: self.hook.clone(),
            });
        }
        // The cap is the plugin's, over all its hooks.
        let running = &resolved.running;
        if !resolved.stats.begin_within(
            running.hook_stats.iter().map(Arc::as_ref),
            running.max_in_flight,
        ) {
            return Err(HookCallError::Busy {
                plugin: self.plugin.name.clone(),
                max_in_flight: running.max_in_flight,
            });
        }
        Ok(())
    }

    /// Records an admitted call's outcome in the statistics (a timeout is also a
    /// violation) and says it as the caller's answer.
    fn finish(
        &self,
        resolved: &Resolved,
        outcome: Result<CallOutcome, CallFailure>,
    ) -> Result<HookReply, HookCallError> {
        let stats = &resolved.stats;
        let result = settle(
            &self.plugin,
            resolved.running.generation,
            &self.hook,
            &outcome,
        );
        // The runner timed the call (in-process, with the statistics' clock, whose reading
        // at the end dates it); a call that got no answer is recorded at its timeout (an
        // in-process one that ended late at what it took, as `Command::Call` records it),
        // one whose worker was gone as an error without a latency.
        let (elapsed, finished) = match &outcome {
            Ok(outcome) => (outcome.duration, outcome.finished),
            Err(CallFailure::Timeout {
                timeout,
                late_by_end,
            }) => (late_by_end.unwrap_or(*timeout), None),
            Err(CallFailure::WorkerGone) => (Duration::ZERO, None),
        };
        match finished {
            Some(finished) => stats.end_at(elapsed, &result, finished),
            None => stats.end(elapsed, &result),
        }
        match outcome {
            Ok(outcome) => Ok(HookReply {
                status: outcome.status,
                body: outcome.body,
                duration: outcome.duration,
            }),
            Err(CallFailure::Timeout { timeout, .. }) => Err(HookCallError::Timeout {
                plugin: self.plugin.name.clone(),
                hook: self.hook.clone(),
                timeout,
            }),
            Err(CallFailure::WorkerGone) => Err(HookCallError::Gone {
                plugin: self.plugin.name.clone(),
            }),
        }
    }
}

/// What serves `hook` of `plugin` right now.
fn resolve(plugin: &Plugin, hook: &str) -> Result<Resolved, HookCallError> {
    let running = plugin.running().ok_or_else(|| HookCallError::NotRunning {
        plugin: plugin.name.clone(),
    })?;
    let timeout = *running
        .timeouts
        .get(hook)
        .ok_or_else(|| HookCallError::UnknownHook {
            plugin: plugin.name.clone(),
            hook: hook.to_owned(),
        })?;
    Ok(Resolved {
        running: Arc::clone(&running),
        stats: plugin.hook_stats(hook),
        timeout,
        enabled: plugin.hook_enabled(hook),
    })
}
