//! Hook calls: one plugin's hook directly, a hook emitted to every subscriber in priority
//! order, emits from plugins checked against their manifests, and the traffic generator.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::CallResult;
use crate::engine::{CallReport, EngineError, Shared};
use crate::events::{EngineTopic, EventKind};
use crate::ipc::MAX_PAYLOAD_BYTES;
use crate::manifest::Priority;
use crate::policy::{Violation, ViolationKind};
use crate::snapshot::PluginState;
use crate::supervisor::{ActorMessage, Plugin, Running, WhenFull, hooks_in_flight};
use crate::worker::EMIT_THREADS;
use crate::worker::{CallFailure, CallOutcome, Emits};
use plugboard_sdk::abi;

/// How many emits deep a chain of plugins emitting to each other may go.
pub const MAX_EMIT_DEPTH: u32 = 4;

fn status_name(status: i32) -> &'static str {
    match status {
        plugboard_sdk::abi::STATUS_OK => "ok",
        plugboard_sdk::abi::STATUS_UNKNOWN_HOOK => "unknown_hook",
        plugboard_sdk::abi::STATUS_PANIC => "panic",
        plugboard_sdk::abi::STATUS_INVALID_INPUT => "invalid_input",
        _ => "error",
    }
}

/// Calls every running subscriber of `hook` that has it enabled, in priority order (then
/// by name).
pub(crate) fn dispatch(shared: &Shared, hook: &str, payload: &[u8], depth: u32) -> Vec<CallReport> {
    let mut subscribers: Vec<(Priority, Arc<Plugin>)> = shared
        .all_plugins()
        .into_iter()
        .filter_map(|plugin| {
            let lifecycle = plugin.lifecycle();
            let priority = lifecycle.manifest.as_ref()?.hooks.get(hook)?.priority;
            let serving = matches!(
                lifecycle.state,
                PluginState::Running | PluginState::Degraded | PluginState::Reloading
            );
            drop(lifecycle);
            (serving && plugin.hook_enabled(hook)).then_some((priority, plugin))
        })
        .collect();
    subscribers.sort_by(|(a, left), (b, right)| a.cmp(b).then_with(|| left.name.cmp(&right.name)));
    subscribers
        .into_iter()
        .filter_map(|(_, plugin)| call(&plugin, hook, payload, depth).ok())
        .collect()
}

/// The engine's answer to the emits of one plugin's worker (or in-process instance) of
/// `generation`: the manifest must grant the hook (anything else is a violation), and
/// chains stop at [`MAX_EMIT_DEPTH`].
pub(crate) fn emit_handler(
    shared: &Arc<Shared>,
    emitter: &str,
    generation: u64,
) -> crate::worker::EmitHandler {
    Arc::new(PluginEmits {
        shared: Arc::downgrade(shared),
        emitter: emitter.to_owned(),
        generation,
    })
}

/// One plugin's emits, checked against its manifest and sent to the subscribers.
struct PluginEmits {
    shared: Weak<Shared>,
    emitter: String,
    /// The worker whose emits these are: only while it serves are they admitted (a new
    /// version being created during a reload is not the one serving, and the manifest
    /// whose grants apply is not its own yet).
    generation: u64,
}

impl Emits for PluginEmits {
    /// Takes no lifecycle lock and waits for no write: it runs on the thread that received
    /// the emit, which may be a caller waiting for its own reply.
    fn admit(&self, hook: &str, depth: u32) -> Result<(), i32> {
        let shared = self.shared.upgrade().ok_or(abi::EMIT_FAILED)?;
        let plugin = shared.plugin(&self.emitter).map_err(|_| abi::EMIT_FAILED)?;
        // The worker serving, or the one a reload replaced while it finishes its calls;
        // not one being created or stopped: nobody to answer for it.
        let running = plugin
            .running()
            .filter(|running| running.generation == self.generation)
            .or_else(|| {
                plugin
                    .retiring
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .filter(|retiring| retiring.generation == self.generation)
            })
            .ok_or(abi::EMIT_FAILED)?;
        if !running.emit_grants.iter().any(|allowed| allowed == hook) {
            let violation = Violation::new(
                ViolationKind::ForbiddenEmit,
                "engine",
                format!("emitted `{hook}`, which its manifest's `emit` does not list; refused"),
            )
            .fact("emitted", hook.to_owned())
            .during(hooks_in_flight(&plugin));
            plugin.queue_event(
                ActorMessage::Violation {
                    generation: Some(running.generation),
                    violation,
                },
                WhenFull::Drop,
            );
            return Err(abi::EMIT_DENIED);
        }
        plugin.emitted.fetch_add(1, Ordering::Relaxed);
        if depth >= MAX_EMIT_DEPTH {
            // Said at most once a second per plugin (a loop of emits must not flood the
            // event ring and the audit file), from an emit thread: the event waits for its
            // audit line.
            let refused = {
                let mut deep = plugin
                    .deep_emits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                deep.0 += 1;
                let due = deep
                    .1
                    .is_none_or(|said| said.elapsed() >= Duration::from_secs(1));
                if due {
                    deep.1 = Some(Instant::now());
                }
                due.then_some(deep.0)
            };
            if let Some(refused) = refused {
                let (emitter, message) = (
                    self.emitter.clone(),
                    format!(
                        "emit of `{hook}` refused: the chain of emits is {depth} deep, the bound is {MAX_EMIT_DEPTH} ({refused} refused so far)"
                    ),
                );
                let _ = EMIT_THREADS.run(Box::new(move || {
                    shared.event(
                        Some(&emitter),
                        EventKind::engine_warning(EngineTopic::Emit, message),
                    );
                }));
            }
            return Err(abi::EMIT_FAILED);
        }
        Ok(())
    }

    fn dispatch(&self, hook: &str, payload: &[u8], depth: u32) -> i32 {
        let Some(shared) = self.shared.upgrade() else {
            return abi::EMIT_FAILED;
        };
        dispatch(&shared, hook, payload, depth + 1);
        abi::EMIT_OK
    }
}

/// One call of one plugin's hook, timed and recorded in its statistics. A disabled hook
/// and a plugin at its `max_in_flight` cap are refused without reaching the plugin.
pub(crate) fn call(
    plugin: &Plugin,
    hook: &str,
    payload: &[u8],
    depth: u32,
) -> Result<CallReport, EngineError> {
    let gone = || EngineError::Gone {
        plugin: plugin.name.clone(),
    };
    let running = plugin.running().ok_or_else(gone)?;
    let Some(&timeout) = running.timeouts.get(hook) else {
        return Err(EngineError::UnknownHook {
            plugin: plugin.name.clone(),
            hook: hook.to_owned(),
        });
    };
    let report = |status: &str, reply: String, elapsed: Duration| CallReport {
        plugin: plugin.name.clone(),
        hook: hook.to_owned(),
        status: status.to_owned(),
        reply,
        duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Ok(report(
            "too_large",
            format!(
                "a payload of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte maximum of a call",
                payload.len()
            ),
            Duration::ZERO,
        ));
    }
    if !plugin.hook_enabled(hook) {
        return Ok(report(
            "disabled",
            format!("hook `{hook}` of `{}` is disabled", plugin.name),
            Duration::ZERO,
        ));
    }
    let stats = plugin.hook_stats(hook);
    // The cap is the plugin's, over all its hooks.
    if !stats.begin_within(
        running.hook_stats.iter().map(Arc::as_ref),
        running.max_in_flight,
    ) {
        return Ok(report(
            "busy",
            format!("{} calls already in flight", running.max_in_flight),
            Duration::ZERO,
        ));
    }
    let start = Instant::now();
    let outcome = call_through(plugin, &running, hook, payload, depth, timeout);
    let elapsed = start.elapsed();
    let result = settle(plugin, running.generation, hook, &outcome);
    stats.end(elapsed, &result);
    Ok(match outcome {
        Ok(outcome) => report(
            status_name(outcome.status),
            String::from_utf8_lossy(&outcome.body).into_owned(),
            outcome.duration,
        ),
        Err(CallFailure::Timeout { timeout, .. }) => report(
            "timeout",
            format!("no reply within {} ms", timeout.as_millis()),
            elapsed,
        ),
        Err(CallFailure::WorkerGone) => report("gone", "the worker is gone".to_owned(), elapsed),
    })
}

/// Calls `hook` through `running`; a reload may retire that worker between the caller's
/// lookup and its request, and the call then goes to the successor, so a reload loses no
/// call.
pub(super) fn call_through(
    plugin: &Plugin,
    running: &Arc<Running>,
    hook: &str,
    payload: &[u8],
    depth: u32,
    timeout: Duration,
) -> Result<CallOutcome, CallFailure> {
    let outcome = running.runner.call_at_depth(hook, payload, depth, timeout);
    if !matches!(outcome, Err(CallFailure::WorkerGone)) {
        return outcome;
    }
    let (outcome, last) = match plugin.running().filter(|next| !same_worker(next, running)) {
        Some(successor) => (
            successor
                .runner
                .call_at_depth(hook, payload, depth, timeout),
            successor,
        ),
        None => (outcome, Arc::clone(running)),
    };
    if matches!(outcome, Err(CallFailure::WorkerGone)) {
        // What the worker was doing when it died, for the crash's report.
        last.lost_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hook.to_owned());
    }
    outcome
}

/// What a call's outcome means for the statistics; a timeout is also a violation, sent to
/// the plugin's actor.
pub(super) fn settle(
    plugin: &Plugin,
    generation: u64,
    hook: &str,
    outcome: &Result<CallOutcome, CallFailure>,
) -> CallResult {
    match outcome {
        Ok(outcome) if outcome.status == plugboard_sdk::abi::STATUS_OK => CallResult::Ok,
        Ok(outcome) => CallResult::Error {
            message: String::from_utf8_lossy(&outcome.body).into_owned(),
        },
        Err(CallFailure::Timeout { timeout, .. }) => {
            let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let violation = Violation::new(
                ViolationKind::HookTimeout,
                "engine",
                format!("`{hook}` gave no reply within its timeout of {millis} ms; a late reply is discarded"),
            )
            .fact("timeout_ms", millis)
            .during(Some(hook.to_owned()));
            plugin.queue_event(
                ActorMessage::Violation {
                    generation: Some(generation),
                    violation,
                },
                WhenFull::Queue,
            );
            CallResult::Timeout
        }
        Err(CallFailure::WorkerGone) => CallResult::Gone,
    }
}

fn same_worker(left: &Running, right: &Running) -> bool {
    left.runner.same(&right.runner)
}
