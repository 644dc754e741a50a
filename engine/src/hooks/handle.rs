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
use crate::worker::CallFailure;

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
        let epoch = self.plugin.call_path_epoch.load(Ordering::Acquire);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.resolved = resolve(&self.plugin, &self.hook);
        }
        let resolved = self.resolved.as_ref().map_err(Clone::clone)?;
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
        let stats = &resolved.stats;
        // The cap is the plugin's, over all its hooks.
        let running = &resolved.running;
        if !stats.begin_within(
            running.hook_stats.iter().map(Arc::as_ref),
            running.max_in_flight,
        ) {
            return Err(HookCallError::Busy {
                plugin: self.plugin.name.clone(),
                max_in_flight: running.max_in_flight,
            });
        }
        let timeout = resolved.timeout;
        let outcome = call_through(
            &self.plugin,
            &resolved.running,
            &self.hook,
            payload,
            0,
            timeout,
        );
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
