//! The per-plugin actor: every lifecycle transition happens here, on the plugin's own
//! thread, one message at a time.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::{ActorMessage, DiskChange, Lifecycle, Plugin, Runner, Running, WhenFull};
use crate::bundle::{Bundle, BundleError, OpeningBundle};
use crate::engine::{EngineError, Shared};
use crate::events::{EngineTopic, EventKind, unix_millis};
use crate::hooks::dispatch::emit_handler;
use crate::inprocess::InProcessPlugin;
use crate::loader::SealedLibrary;
use crate::manifest::{IsolationMode, Manifest};
use crate::policy::{Action, OOM_KILLS_TOTAL, Violation, ViolationKind};
use crate::sandbox::seccomp::{Capability, FileAccess, FileOperand};
use crate::snapshot::{Health, PluginState, TrustInfo};
use crate::trust::{BundleDigests, BundleSignature, Verified};
use crate::worker::{EventSink, ExitStatus, LaunchedWorker, Worker, WorkerEvent, plan_for};

pub(crate) fn run_actor(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    messages: &mpsc::Receiver<ActorMessage>,
) {
    let mut unrecorded = UnrecordedReport::default();
    loop {
        // The actor's timers: a scheduled restart and the next health check.
        let (retry_at, check_at) = {
            let lifecycle = plugin.lifecycle();
            (
                lifecycle.backoff.next_retry.map(|(at, _)| at),
                lifecycle.health.next,
            )
        };
        // ... and the report of events left unrecorded, once its second has passed.
        let report_at = unrecorded.due(plugin);
        let due = [retry_at, check_at, report_at].into_iter().flatten().min();
        let fire = |at, unrecorded: &mut UnrecordedReport| {
            if retry_at == Some(at) {
                restart_after_backoff(shared, plugin);
            } else if check_at == Some(at) {
                check_health(shared, plugin);
            } else {
                unrecorded.report(shared, plugin);
            }
        };
        let message = match due {
            // A timer that is due runs before any message: a worker whose events keep the
            // inbox busy (output lines, forbidden calls) must not hold off its own health
            // checks or a restart.
            Some(at) if at <= Instant::now() => {
                fire(at, &mut unrecorded);
                continue;
            }
            Some(at) => match messages.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(message) => message,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    fire(at, &mut unrecorded);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match messages.recv() {
                Ok(message) => message,
                Err(_) => break,
            },
        };
        if !handle(shared, plugin, message, &mut unrecorded) {
            break;
        }
    }
}

/// Carries out one message; false for [`ActorMessage::Exit`].
fn handle(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    message: ActorMessage,
    unrecorded: &mut UnrecordedReport,
) -> bool {
    let Some(message) = refuse_if_blocked(plugin, message) else {
        return true;
    };
    match message {
        ActorMessage::Load(reply) => {
            let _ = reply.send(load(shared, plugin));
        }
        ActorMessage::Start(reply) => {
            // An operator's start cancels a pending restart and starts a fresh window;
            // a start of a plugin already up (a dependency, started for a dependent)
            // changes nothing, its restart budget included. A start refused before it
            // began (`max_plugins`, a dependency down) leaves the pending restart be.
            let pending = {
                let mut lifecycle = plugin.lifecycle();
                (!lifecycle.is_up()).then(|| std::mem::take(&mut lifecycle.backoff))
            };
            let started = start(shared, plugin);
            if let (Err(_), Some(pending)) = (&started, pending) {
                let mut lifecycle = plugin.lifecycle();
                if lifecycle.state == PluginState::BackingOff {
                    lifecycle.backoff = pending;
                }
            }
            let _ = reply.send(started);
        }
        ActorMessage::Stop(reply) => {
            let stopped = stop(shared, plugin, PluginState::Stopped);
            if stopped.is_ok() {
                // The operator's stop acknowledges what brought it down (a crash, a spent
                // restart budget): that stays in the events, not as the stopped plugin's
                // reason.
                plugin.lifecycle().reason = None;
            }
            let _ = reply.send(stopped);
        }
        ActorMessage::Shutdown(reply) => {
            let _ = reply.send(stop_for_shutdown(shared, plugin));
        }
        ActorMessage::Unload(reply) => {
            // A quarantine outlasts an unload (the library is gone already): only
            // clearing it lets the plugin load and start again.
            let to = if plugin.lifecycle().state == PluginState::Quarantined {
                PluginState::Quarantined
            } else {
                PluginState::Unloaded
            };
            let result = stop(shared, plugin, to).map(|()| {
                plugin.lifecycle().library = None;
            });
            let _ = reply.send(result);
        }
        ActorMessage::Reload(reply) => {
            let _ = reply.send(reload(shared, plugin));
        }
        ActorMessage::SetEnabled(enabled, reply) => {
            let _ = reply.send(set_enabled(shared, plugin, enabled));
        }
        ActorMessage::ClearQuarantine(reply) => {
            let _ = reply.send(clear_quarantine(shared, plugin));
        }
        ActorMessage::Violation {
            generation,
            violation,
        } => {
            plugin.event_taken();
            on_reported_violation(shared, plugin, generation, violation);
            unrecorded.report(shared, plugin);
        }
        ActorMessage::Worker {
            generation,
            event,
            hooks,
        } => {
            plugin.event_taken();
            on_worker_event(shared, plugin, generation, event, hooks);
            unrecorded.report(shared, plugin);
        }
        ActorMessage::Disk(change) => on_disk_change(shared, plugin, &change),
        ActorMessage::TrustChanged => on_trust_change(shared, plugin),
        ActorMessage::Exit => return false,
    }
    true
}

/// A refused duplicate takes no command but a load or start (refused with its reason
/// there): it never runs, and stays Rejected — a reload would show it verified, a stop
/// stopped, an unload unloaded.
fn refuse_if_blocked(plugin: &Plugin, message: ActorMessage) -> Option<ActorMessage> {
    // Only commands are looked at: the worker's events (output lines, notifications) come
    // far more often and pass without the lifecycle lock.
    let action = match &message {
        ActorMessage::Stop(_) => "stopped",
        ActorMessage::Unload(_) => "unloaded",
        ActorMessage::Reload(_) => "reloaded",
        ActorMessage::SetEnabled(true, _) => "enabled",
        ActorMessage::SetEnabled(false, _) => "disabled",
        ActorMessage::ClearQuarantine(_) => "cleared from quarantine",
        _ => return Some(message),
    };
    let Some(reason) = plugin.lifecycle().blocked.clone() else {
        return Some(message);
    };
    if let ActorMessage::Stop(reply)
    | ActorMessage::Unload(reply)
    | ActorMessage::Reload(reply)
    | ActorMessage::SetEnabled(_, reply)
    | ActorMessage::ClearQuarantine(reply) = message
    {
        let _ = reply.send(Err(EngineError::Refused {
            plugin: plugin.name.clone(),
            action,
            reason,
        }));
    }
    None
}

/// Tells the operator, at most once a second, that events were dropped because the
/// actor's backlog was full ([`Plugin::queue_event`]).
#[derive(Default)]
struct UnrecordedReport {
    reported: u64,
    at: Option<Instant>,
}

impl UnrecordedReport {
    const INTERVAL: Duration = Duration::from_secs(1);

    /// When the next report is due: only if events were dropped since the last one, at
    /// most once an interval.
    fn due(&self, plugin: &Plugin) -> Option<Instant> {
        (plugin.events_unrecorded() > self.reported)
            .then(|| self.at.map_or_else(Instant::now, |at| at + Self::INTERVAL))
    }

    fn report(&mut self, shared: &Shared, plugin: &Plugin) {
        let unrecorded = plugin.events_unrecorded();
        if unrecorded == self.reported || self.at.is_some_and(|at| at.elapsed() < Self::INTERVAL) {
            return;
        }
        shared.event(
            Some(&plugin.name),
            EventKind::engine_warning(EngineTopic::Worker, format!(
                    "{} violations not recorded one by one ({unrecorded} in all): the plugin caused them faster than the engine records them",
                    unrecorded - self.reported
                )),
        );
        self.reported = unrecorded;
        self.at = Some(Instant::now());
    }
}

pub(crate) fn set_state(
    shared: &Shared,
    plugin: &Plugin,
    lifecycle: &mut Lifecycle,
    to: PluginState,
) {
    let from = lifecycle.state;
    if from != to {
        lifecycle.state = to;
        shared.event(Some(&plugin.name), EventKind::StateChanged { from, to });
    }
}

/// A bundle read, checked and verified: what a start or a reload runs.
struct VerifiedBundle {
    manifest: Manifest,
    library: SealedLibrary,
    config: serde_json::Map<String, serde_json::Value>,
    trust: TrustInfo,
    proof: KeptProof,
}

/// What a bundle's trust verdict was reached on, kept with its sealed library: a start
/// from the kept copy asks the trust store again (a key revoked meanwhile) without reading
/// and hashing the bundle again.
#[derive(Clone, Copy)]
pub(crate) struct KeptProof {
    digests: BundleDigests,
    signature: Option<BundleSignature>,
}

/// Why a bundle was refused; `trust` when its signature or signer was the problem.
struct Refusal {
    reason: String,
    trust: bool,
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self {
            reason,
            trust: false,
        }
    }
}

/// Reads the bundle in the plugin's directory, checks its signature against the trust store
/// (or the development flag), the in-process rule and the host's config overrides.
fn verify_bundle(shared: &Shared, plugin: &Plugin) -> Result<VerifiedBundle, Refusal> {
    verify_bundle_while(
        shared,
        plugin,
        None::<fn(&Manifest, &Config, BorrowedFd<'_>)>,
    )
    .0
}

/// A plugin's configuration as it receives it at creation.
type Config = serde_json::Map<String, serde_json::Value>;

/// As [`verify_bundle`], and once the manifest is read and checked — before the library is
/// copied, hashed and verified — runs `meanwhile` on a thread of its own with the manifest,
/// the merged config and the library's memory file (still being filled; sealed when the
/// bundle is verified). A worker launched there confines itself while the library is
/// verified. What `meanwhile` returned comes back whatever the verdict: a caller drops a
/// worker launched for a bundle that was refused.
fn verify_bundle_while<T: Send>(
    shared: &Shared,
    plugin: &Plugin,
    meanwhile: Option<impl FnOnce(&Manifest, &Config, BorrowedFd<'_>) -> T + Send>,
) -> (Result<VerifiedBundle, Refusal>, Option<T>) {
    let opening = match Bundle::begin_open(&plugin.dir(), &shared.config.limits) {
        Ok(opening) => opening,
        Err(err) => return (Err(Refusal::from(err.to_string())), None),
    };
    // Checked now, reported after the signature: a tampered bundle is a trust failure
    // first, whatever else is wrong with it.
    let checked = checked_config(shared, plugin, opening.manifest());
    let side = match (meanwhile, &checked) {
        (Some(meanwhile), Ok(config)) => {
            opening
                .library_fd()
                .try_clone_to_owned()
                .ok()
                .map(|library| {
                    (
                        meanwhile,
                        opening.manifest().clone(),
                        config.clone(),
                        library,
                    )
                })
        }
        _ => None,
    };
    let Some((meanwhile, manifest, config, library)) = side else {
        return (read_and_verify(shared, opening, checked), None);
    };
    // The library is copied and hashed on a short-lived thread; the worker is launched,
    // and everything that outlives this call is allocated, on this long-lived one. What a
    // thread allocates and outlives it stays scattered in the malloc arena the next
    // threads reuse: with the launch (or the verified bundle's parts) made on the
    // short-lived thread, a soak with a reload every 2 s grew the engine half as fast
    // again (see BENCHMARKS, soak). The bundle is taken by the reading thread, or by this
    // one if that thread cannot start.
    let opened = Mutex::new(Some(opening));
    let take_opened = || {
        opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the library is read once")
    };
    std::thread::scope(|scope| {
        let reading = std::thread::Builder::new()
            .name(format!("{}:verify", plugin.name))
            .spawn_scoped(scope, || take_opened().read_library());
        // A launch that panicked is as good as none: the start launches again.
        let launch = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                meanwhile(&manifest, &config, library.as_fd())
            }))
            .ok()
        };
        if let Ok(reading) = reading {
            let launched = launch();
            let verdict = match reading.join() {
                Ok(read) => verified_from(shared, read, checked),
                Err(_) => Err(Refusal::from("reading the library panicked".to_owned())),
            };
            (verdict, launched)
        } else {
            // No thread to spare: one after the other.
            let verdict = read_and_verify(shared, take_opened(), checked);
            (verdict, launch())
        }
    })
}

/// The second half of [`verify_bundle`]: the library copied and hashed, the signature
/// checked, then the outcome of the manifest's own checks.
fn read_and_verify(
    shared: &Shared,
    opening: OpeningBundle,
    checked: Result<Config, Refusal>,
) -> Result<VerifiedBundle, Refusal> {
    verified_from(shared, opening.read_library(), checked)
}

/// The bundle with its library read: the signature checked, then the outcome of the
/// manifest's own checks.
fn verified_from(
    shared: &Shared,
    read: Result<Bundle, BundleError>,
    checked: Result<Config, Refusal>,
) -> Result<VerifiedBundle, Refusal> {
    let bundle = read.map_err(|err| Refusal::from(err.to_string()))?;
    let proof = KeptProof {
        digests: *bundle.digests(),
        signature: bundle.signature().copied(),
    };
    let (verified, unverified_because) = check_signature(shared, bundle.manifest(), &proof)?;
    let config = checked?;
    let signature = bundle
        .signature()
        .map(|signature| signature.key_id.to_string());
    let (manifest, digests, library) = bundle.into_parts();
    Ok(VerifiedBundle {
        manifest,
        library,
        config,
        proof,
        trust: TrustInfo {
            signed: signature.is_some(),
            key_id: signature,
            level: verified.as_ref().map(|verified| verified.level.to_string()),
            library_sha3_512: Some(digests.library.to_hex()),
            unverified: verified.is_none(),
            unverified_because,
        },
    })
}

/// The checks that need only the manifest: the bundle still names this plugin, and the
/// host's config overrides fit its schema. Returns the merged config.
fn checked_config(
    shared: &Shared,
    plugin: &Plugin,
    manifest: &Manifest,
) -> Result<Config, Refusal> {
    let name = &manifest.plugin.name;
    if *name != plugin.name {
        return Err(Refusal::from(format!(
            "the bundle in {} now names itself `{name}`, not `{}`",
            plugin.dir().display(),
            plugin.name
        )));
    }
    match shared.config.plugins.get(&plugin.name) {
        Some(overrides) => manifest.merged_config(&overrides.config).map_err(|reason| {
            Refusal::from(format!(
                "host configuration `[plugins.{}]`: {reason}",
                plugin.name
            ))
        }),
        None => Ok(manifest.merged_config(&BTreeMap::new())?),
    }
}

/// Checks the read bundle's signature against the trust store (or the development flag),
/// and the in-process rule. `(None, why)`: unverified, allowed for development. A revoked
/// key or bundle is refused in development too: a revocation is an operator's "never".
fn check_signature(
    shared: &Shared,
    manifest: &Manifest,
    proof: &KeptProof,
) -> Result<(Option<Verified>, Option<String>), Refusal> {
    let (verified, unverified_because) = match (shared.trust_store(), shared.config.allow_unsigned)
    {
        // Without the store, nothing says what is revoked: refused, in development too.
        // (The host's trouble, not a trust failure of the plugin's.)
        (Some(Err(err)), _) => {
            return Err(Refusal {
                reason: format!("the trust store cannot be read now: {err}"),
                trust: false,
            });
        }
        (Some(Ok(store)), allow_unsigned) => match store.verify(
            &proof.digests,
            proof.signature.as_ref(),
            &manifest.plugin.name,
            &manifest.plugin.version.to_string(),
        ) {
            Ok(verified) => (Some(verified), None),
            Err(
                err @ (crate::trust::TrustError::RevokedKey { .. }
                | crate::trust::TrustError::RevokedDigest { .. }),
            ) => {
                return Err(Refusal {
                    reason: format!("{err} (refused in development mode too)"),
                    trust: true,
                });
            }
            // Development mode is on: the error's advice to turn it on would read oddly.
            Err(crate::trust::TrustError::Unsigned) if allow_unsigned => (
                None,
                Some("the bundle is not signed (no plugin.sig)".to_owned()),
            ),
            Err(err) if allow_unsigned => (None, Some(err.to_string())),
            Err(err) => {
                return Err(Refusal {
                    reason: err.to_string(),
                    trust: true,
                });
            }
        },
        (None, true) => (None, Some("no trust store is configured".to_owned())),
        (None, false) => {
            return Err(Refusal {
                reason: "no trust store is configured (`trust_store`, or `--trust-store DIR`) \
                         and unsigned bundles are not allowed"
                    .to_owned(),
                trust: true,
            });
        }
    };
    if shared.config.isolation_of(manifest) == IsolationMode::InProcess {
        let level = verified.as_ref().map(|verified| verified.level);
        if let Some(reason) = crate::trust::in_process_refusal(level) {
            return Err(Refusal {
                trust: true,
                reason,
            });
        }
    }
    Ok((verified, unverified_because))
}

fn load(shared: &Arc<Shared>, plugin: &Arc<Plugin>) -> Result<(), EngineError> {
    load_launching(shared, plugin, false)
        .map(drop)
        .map_err(|err| match err {
            // A load refused is no start refused: said as what was asked.
            EngineError::StartFailed { plugin, reason } => {
                EngineError::LoadFailed { plugin, reason }
            }
            other => other,
        })
}

/// Reads and verifies the plugin's bundle, ending in Verified (or Disabled) or Rejected.
/// With `launch`, a sandboxed plugin's worker is launched while the bundle is verified, for
/// the start that follows (the hint of the start's cost: the worker confines itself while
/// the library is hashed); a bundle refused kills it unused.
fn load_launching(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    launch: bool,
) -> Result<Option<LaunchResult>, EngineError> {
    if plugin.lifecycle().state == PluginState::Quarantined {
        // Cleared from a shell (`plugboard quarantine clear`) while this engine ran?
        if shared.persisted(&plugin.name).quarantined.is_some() {
            return Err(EngineError::WrongState {
                plugin: plugin.name.clone(),
                state: PluginState::Quarantined,
                action: "load or start",
                expected: "cleared from quarantine first",
            });
        }
        clear_quarantine(shared, plugin)?;
    }
    let mut lifecycle = plugin.lifecycle();
    if let Some(reason) = lifecycle.blocked.clone() {
        return Err(EngineError::StartFailed {
            plugin: plugin.name.clone(),
            reason,
        });
    }
    // (Waiting to restart, with its kept copy: nothing to load.)
    if lifecycle.is_up()
        || (lifecycle.state == PluginState::BackingOff && lifecycle.library.is_some())
    {
        return Ok(None);
    }
    let generation = lifecycle.issue_generation();
    let launch = launch && !lifecycle.disabled;
    // Hashing the library and launching the worker take milliseconds to seconds: snapshots
    // and emits, which read the lifecycle, do not wait for them. Only this actor changes it.
    drop(lifecycle);
    let (verdict, launched) = if launch {
        verify_bundle_while(
            shared,
            plugin,
            Some(
                |manifest: &Manifest, config: &Config, library: BorrowedFd<'_>| {
                    launch_worker(shared, plugin, generation, manifest, library, config)
                },
            ),
        )
    } else {
        (verify_bundle(shared, plugin), None)
    };
    let launched = launched.flatten();
    let mut lifecycle = plugin.lifecycle();
    match verdict {
        Ok(verified) => {
            keep_verified(&mut lifecycle, verified);
            lifecycle.reason = None;
            lifecycle.changed_on_disk = false;
            let to = if lifecycle.disabled {
                PluginState::Disabled
            } else {
                PluginState::Verified
            };
            set_state(shared, plugin, &mut lifecycle, to);
            Ok(launched)
        }
        Err(Refusal { reason, trust }) => {
            lifecycle.reason = Some(reason.clone());
            // What an earlier load verified is not this bundle: a rejected plugin shows no
            // version, capabilities, limits, signer or digest it does not have.
            lifecycle.manifest = None;
            lifecycle.library = None;
            lifecycle.trust = TrustInfo::default();
            set_state(shared, plugin, &mut lifecycle, PluginState::Rejected);
            drop(lifecycle);
            // Killed and its cgroup removed outside the lifecycle lock, which snapshots
            // wait for (no plugin code ran in it).
            drop(launched);
            shared.event(
                Some(&plugin.name),
                EventKind::Rejected {
                    reason: reason.clone(),
                },
            );
            if trust {
                trust_failure(shared, plugin, &format!("refused: {reason}"), &reason);
            }
            Err(EngineError::StartFailed {
                plugin: plugin.name.clone(),
                reason,
            })
        }
    }
}

/// The worker a reload replaced finishes what it was given, then stops; meanwhile its
/// calls' emits are still its own (`Plugin::retiring`).
fn retire_replaced(shared: &Shared, plugin: &Plugin, old: &Arc<Running>) {
    let retiring = || {
        plugin
            .retiring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    };
    *retiring() = Some(Arc::clone(old));
    let longest_call = old.timeouts.values().copied().max().unwrap_or_default();
    old.runner.retire(grace(shared, &plugin.name), longest_call);
    retiring().take();
    shared.workers_retired.fetch_add(1, Ordering::Relaxed);
}

/// Records a bundle that does not verify as a `trust_failure` violation and quarantines
/// the plugin if the policy says so.
fn trust_failure(shared: &Shared, plugin: &Plugin, detail: &str, reason: &str) {
    let violation = Violation::new(ViolationKind::TrustFailure, "trust", detail);
    if record_violation(shared, plugin, violation) == Action::Quarantine {
        quarantine(shared, plugin, reason);
    }
}

/// How long the seccomp listener waits for room in the actor's backlog before a violation
/// is counted as unrecorded (the worker's call waits with it).
const LISTENER_ROOM_WAIT: Duration = Duration::from_millis(100);

/// Where a worker's events go. Output lines are kept (or counted as dropped by the rate
/// limit) right here, on the thread that read them: a flood of lines must cost the engine
/// no memory, however busy the actor is. Everything else goes to the plugin's actor,
/// tagged with the worker's generation, within its backlog.
fn worker_sink(shared: &Arc<Shared>, plugin: &Arc<Plugin>, generation: u64) -> EventSink {
    let shared = Arc::downgrade(shared);
    let owner = Arc::downgrade(plugin);
    Arc::new(move |event| {
        let Some(plugin) = owner.upgrade() else {
            return;
        };
        let when_full = match event {
            WorkerEvent::Output { stream, line } => {
                // Written to the log after the ring's lock is released: snapshots wait for it.
                let kept = plugin
                    .output
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(stream, line)
                    .map(|kept| kept.line.clone());
                if let (Some(line), Some(shared)) = (kept, shared.upgrade()) {
                    shared.log_output(&plugin.name, stream, &line);
                }
                return;
            }
            WorkerEvent::OutputDropped { lines } => {
                let mut output = plugin.output.lock().unwrap_or_else(PoisonError::into_inner);
                output.dropped = output.dropped.saturating_add(lines);
                return;
            }
            WorkerEvent::ForbiddenSyscall { .. }
            | WorkerEvent::FsDenied { .. }
            | WorkerEvent::Audited { .. } => WhenFull::Wait(LISTENER_ROOM_WAIT),
            WorkerEvent::ProtocolViolation { .. }
            | WorkerEvent::Exited { .. }
            | WorkerEvent::CgroupLeft { .. } => WhenFull::Queue,
            // Said at most once a minute or a second: a pace the engine sets.
            WorkerEvent::NotificationsPaced { .. } | WorkerEvent::ReceiveFailed { .. } => {
                WhenFull::Queue
            }
        };
        // Which hooks were running is read now, on the thread that caught the violation:
        // by the time the actor handles it, the call may have returned.
        let hooks = match &event {
            WorkerEvent::ForbiddenSyscall { .. }
            | WorkerEvent::FsDenied { .. }
            | WorkerEvent::ProtocolViolation { .. } => hooks_in_flight(&plugin),
            _ => None,
        };
        plugin.queue_event(
            ActorMessage::Worker {
                generation,
                event,
                hooks,
            },
            when_full,
        );
    })
}

/// A sandboxed worker spawned and confined for `generation`, waiting to load its library.
struct Launched {
    generation: u64,
    worker: LaunchedWorker,
}

/// A worker launched while its bundle was verified, or why it could not be.
type LaunchResult = Result<Launched, String>;

/// Spawns the worker of a sandboxed plugin and lets it confine itself; `library` may still
/// be being filled and verified. `None` for an in-process plugin, which has no worker.
fn launch_worker(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    generation: u64,
    manifest: &Manifest,
    library: BorrowedFd<'_>,
    config: &Config,
) -> Option<LaunchResult> {
    if shared.config.isolation_of(manifest) == IsolationMode::InProcess {
        return None;
    }
    let plugin_overrides = shared.config.plugins.get(&plugin.name);
    let overrides = plugin_overrides
        .map(|overrides| overrides.resources)
        .unwrap_or_default();
    let audit = plugin_overrides.is_some_and(|overrides| overrides.audit);
    let resources = manifest.effective_resources_with(&shared.config.limits, &overrides);
    let (mut plan, cgroup_limits) = plan_for(manifest, &resources, &shared.config.worker, config);
    if audit {
        plan.enter_audit_mode();
    }
    let launched = Worker::launch(
        shared.scope.as_ref(),
        crate::worker::WorkerSpec {
            plugin: plugin.name.clone(),
            host_binary: shared.config.worker.host_binary.clone(),
            library,
            plan,
            limits: cgroup_limits,
            env: shared.config.worker.env.clone(),
            emit: Some(emit_handler(shared, &plugin.name, generation)),
        },
        &worker_sink(shared, plugin, generation),
    );
    Some(
        launched
            .map(|worker| Launched { generation, worker })
            .map_err(|err| err.to_string()),
    )
}

/// Loads the plugin into its launched worker and waits until it is ready; cancellable by
/// the engine's shutdown meanwhile.
fn await_start(
    shared: &Shared,
    plugin: &Plugin,
    launched: LaunchedWorker,
) -> Result<crate::worker::Worker, String> {
    let cancel = launched.start_cancel();
    *plugin
        .starting
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(cancel.clone());
    // Registered first, then the flag read: a shutdown either finds this start or is
    // seen here.
    if shared.shutting_down.load(Ordering::SeqCst) {
        cancel.cancel();
    }
    let loaded = launched.load();
    plugin
        .starting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    match loaded {
        Err(_) if cancel.cancelled() => {
            Err("the engine shut down while it was being created".to_owned())
        }
        other => other.map_err(|err| err.to_string()),
    }
}

/// Starts the plugin: in-process, or in a worker — `launched` if one was launched (or failed
/// to) while the bundle was verified, a new one otherwise.
fn spawn_worker(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    generation: u64,
    verified: (&Manifest, &SealedLibrary, &Config),
    launched: Option<LaunchResult>,
) -> Result<Running, String> {
    let (manifest, library, config) = verified;
    let overrides = shared
        .config
        .plugins
        .get(&plugin.name)
        .map(|overrides| overrides.resources)
        .unwrap_or_default();
    let limits = &shared.config.limits;
    let resources = manifest.effective_resources_with(limits, &overrides);
    let hook_stats: Vec<Arc<crate::hooks::HookStats>> = manifest
        .hooks
        .keys()
        .map(|hook| plugin.hook_stats(hook))
        .collect();
    let runner = if shared.config.isolation_of(manifest) == IsolationMode::InProcess {
        let sink = worker_sink(shared, plugin, generation);
        let emit = Some(emit_handler(shared, &plugin.name, generation));
        let loaded =
            match InProcessPlugin::start(&plugin.name, library, config, emit.clone(), &sink) {
                // A stopped instance of this library is still held — by an idle hook handle
                // until its next call, or a call that outlasted the drain: the start loads a
                // private copy, an image of its own, instead of failing.
                Err(crate::inprocess::InProcessError::AlreadyLoaded { .. }) => library
                    .private_copy(&plugin.name)
                    .map_err(|err| err.to_string())
                    .and_then(|copy| {
                        InProcessPlugin::start(&plugin.name, &copy, config, emit, &sink)
                            .map_err(|err| err.to_string())
                    })?,
                other => other.map_err(|err| err.to_string())?,
            };
        Runner::InProcess(Arc::new(loaded), hook_stats.clone())
    } else {
        let launched = match launched {
            Some(Ok(launched)) if launched.generation == generation => launched,
            Some(Err(reason)) => return Err(reason),
            _ => launch_worker(shared, plugin, generation, manifest, library.fd(), config)
                .unwrap_or_else(|| Err("an in-process plugin has no worker".to_owned()))?,
        };
        let worker = await_start(shared, plugin, launched.worker)?;
        Runner::Worker(Arc::new(worker))
    };
    let timeouts = manifest
        .hooks
        .keys()
        .map(|hook| {
            (
                hook.clone(),
                manifest.hook_timeout_with(hook, limits, &overrides),
            )
        })
        .collect();
    Ok(Running {
        runner,
        generation,
        timeouts,
        no_traffic: manifest
            .hooks
            .iter()
            .filter(|(_, spec)| !spec.traffic)
            .map(|(hook, _)| hook.clone())
            .collect(),
        max_in_flight: u64::from(resources.max_in_flight),
        hook_stats: hook_stats.into_boxed_slice(),
        emit_grants: manifest.capabilities.emit.clone(),
        lost_calls: Mutex::new(std::collections::BTreeSet::new()),
    })
}

/// Records a new worker in the lifecycle (pids, cgroup, mechanisms) and announces it.
fn adopt_worker(shared: &Shared, plugin: &Plugin, lifecycle: &mut Lifecycle, running: &Running) {
    let mechanisms = running.runner.mechanisms();
    lifecycle.mechanisms = mechanisms
        .iter()
        .map(|(mechanism, state)| (mechanism.name().to_owned(), state.clone()))
        .collect();
    let (worker_pid, sandbox_pid, cgroup) = running.runner.identity();
    lifecycle.worker_pid = Some(worker_pid);
    lifecycle.sandbox_pid = Some(sandbox_pid);
    lifecycle.cgroup = cgroup;
    lifecycle.generation = running.generation;
    lifecycle.reason = None;
    // A new worker is checked at once; until then its health is unknown.
    lifecycle.health = super::HealthCheck::new();
    lifecycle.health.next = Some(Instant::now());
    let active = mechanisms
        .iter()
        .filter(|(_, state)| state.active)
        .map(|(mechanism, _)| mechanism.badge().to_owned())
        .collect();
    shared.event(
        Some(&plugin.name),
        EventKind::Started {
            worker_pid,
            sandbox_pid,
            mechanisms: active,
            audit: shared
                .config
                .plugins
                .get(&plugin.name)
                .is_some_and(|overrides| overrides.audit)
                && running.runner.is_sandboxed(),
            in_process: !running.runner.is_sandboxed(),
        },
    );
    if lifecycle.trust.unverified {
        shared.event(
            Some(&plugin.name),
            EventKind::engine_warning(EngineTopic::Unverified, format!(
                    "`{}` runs UNVERIFIED (allow_unsigned, development only): sandboxed, but nobody vouches for its code ({})",
                    plugin.name,
                    lifecycle
                        .trust
                        .unverified_because
                        .as_deref()
                        .unwrap_or("not verified")
                )),
        );
    }
}

/// Refuses a start the host's policy does not allow: disabled, quarantined, a dependency
/// not running, or `max_plugins` reached.
fn check_startable(
    shared: &Shared,
    plugin: &Plugin,
    lifecycle: &Lifecycle,
) -> Result<(), EngineError> {
    let state = lifecycle.state;
    if lifecycle.disabled {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state,
            action: "start",
            expected: "enabled first",
        });
    }
    if state == PluginState::Quarantined {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state,
            action: "start",
            expected: "cleared from quarantine first",
        });
    }
    if let Some(manifest) = &lifecycle.manifest {
        super::dependencies::check_no_cycle(shared, &plugin.name, manifest)?;
        super::dependencies::check_running(shared, &plugin.name, manifest)?;
        // A dependent may run while this plugin is down (it crashed, say): the version
        // starting now must be one it accepts.
        super::dependencies::check_dependents_accept(
            shared,
            &plugin.name,
            &manifest.plugin.version,
        )?;
    }
    match max_plugins_reached(shared, plugin) {
        Some(reason) => Err(EngineError::StartFailed {
            plugin: plugin.name.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why `plugin` may not start now for `max_plugins`, if it may not.
fn max_plugins_reached(shared: &Shared, plugin: &Plugin) -> Option<String> {
    let max = shared.config.max_plugins?;
    let running: Vec<String> = shared
        .all_plugins()
        .iter()
        .filter(|other| other.name != plugin.name && other.lifecycle().is_up())
        .map(|other| other.name.clone())
        .collect();
    (running.len() >= max).then(|| {
        format!(
            "the host runs at most {max} plugins (`max_plugins`) and {} are up: {}",
            running.len(),
            running.join(", ")
        )
    })
}

fn start(shared: &Arc<Shared>, plugin: &Arc<Plugin>) -> Result<(), EngineError> {
    let state = plugin.lifecycle().state;
    let launched = match state {
        PluginState::Running
        | PluginState::Degraded
        | PluginState::Starting
        | PluginState::Reloading => return Ok(()),
        PluginState::Discovered
        | PluginState::Unloaded
        | PluginState::Rejected
        | PluginState::Quarantined => {
            // No worker launched ahead for a start the host is bound to refuse (the check
            // is repeated at the gate below, which decides).
            load_launching(
                shared,
                plugin,
                max_plugins_reached(shared, plugin).is_none(),
            )?
        }
        PluginState::Verified
        | PluginState::Stopped
        | PluginState::Failed
        | PluginState::BackingOff
        | PluginState::Stopping
        | PluginState::Disabled => load_if_verdict_changed(shared, plugin)?,
    };
    // Only one start at a time passes the `max_plugins` check and becomes Starting.
    let gate = shared
        .start_gate
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut lifecycle = plugin.lifecycle();
    check_startable_saying_why(shared, plugin, &mut lifecycle)?;
    if lifecycle.manifest.is_none() || lifecycle.library.is_none() {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state: lifecycle.state,
            action: "start",
            expected: "verified",
        });
    }
    lifecycle.backoff.next_retry = None;
    set_state(shared, plugin, &mut lifecycle, PluginState::Starting);
    drop(gate);
    let generation = match &launched {
        Some(Ok(launched)) => launched.generation,
        _ => lifecycle.issue_generation(),
    };
    let bundle = match (&lifecycle.manifest, &lifecycle.library) {
        (Some(manifest), Some(library)) => library
            .try_clone()
            .map(|library| (manifest.clone(), library, lifecycle.config.clone()))
            .map_err(|err| format!("cannot share the sealed library with the worker: {err}")),
        _ => Err("the bundle is not verified".to_owned()),
    };
    // Spawning, confining and the plugin's own `create` take milliseconds to seconds (a
    // slow or hostile `create` up to the handshake's deadline): the plugin shows Starting
    // meanwhile, and snapshots, emits and other plugins' starts do not wait for it. Only
    // this actor changes the lifecycle.
    drop(lifecycle);
    let started = bundle.and_then(|(manifest, library, config)| {
        spawn_worker(
            shared,
            plugin,
            generation,
            (&manifest, &library, &config),
            launched,
        )
    });
    let mut lifecycle = plugin.lifecycle();
    match started {
        Ok(running) => {
            if lifecycle
                .reason
                .as_deref()
                .is_some_and(|reason| reason.starts_with(NOT_STARTED))
            {
                lifecycle.reason = None;
            }
            // Serving before anyone hears of the start.
            let running = Arc::new(running);
            plugin.set_running(Some(Arc::clone(&running)));
            adopt_worker(shared, plugin, &mut lifecycle, &running);
            lifecycle.starts += 1;
            lifecycle.last_start = Some(SystemTime::now());
            set_state(shared, plugin, &mut lifecycle, PluginState::Running);
            Ok(())
        }
        Err(reason) => {
            lifecycle.generation = generation;
            lifecycle.reason = Some(reason.clone());
            set_state(shared, plugin, &mut lifecycle, PluginState::Failed);
            drop(lifecycle);
            shared.event(
                Some(&plugin.name),
                EventKind::StartFailed {
                    reason: reason.clone(),
                },
            );
            Err(EngineError::StartFailed {
                plugin: plugin.name.clone(),
                reason,
            })
        }
    }
}

/// Keeps a verified bundle as the one the plugin starts from.
fn keep_verified(lifecycle: &mut Lifecycle, verified: VerifiedBundle) {
    lifecycle.manifest = Some(verified.manifest);
    lifecycle.library = Some(verified.library);
    lifecycle.proof = Some(verified.proof);
    lifecycle.config = verified.config;
    lifecycle.trust = verified.trust;
}

/// As [`check_startable`]; a start refused for the host's sake (`max_plugins`, a
/// dependency) leaves the plugin as it was, saying why it did not start. (Disabled and
/// quarantined say so already.)
fn check_startable_saying_why(
    shared: &Shared,
    plugin: &Plugin,
    lifecycle: &mut Lifecycle,
) -> Result<(), EngineError> {
    let checked = check_startable(shared, plugin, lifecycle);
    if let Err(err) = &checked {
        say_not_started(lifecycle, err);
    }
    checked
}

/// Puts why the host refused a start in the plugin's reason (`not started: …`), unless the
/// refusal is about its state (already running, quarantined), which shows for itself.
pub(crate) fn say_not_started(lifecycle: &mut Lifecycle, refusal: &EngineError) {
    if !matches!(refusal, EngineError::WrongState { .. }) {
        lifecycle.reason = Some(format!("{NOT_STARTED}{refusal}"));
    }
}

/// How the reason of a start the host refused begins (cleared by the next start).
const NOT_STARTED: &str = "not started: ";

/// A start from the kept copy: when the trust store says otherwise now (a key revoked, a
/// level changed), the copy is dropped and the bundle read and verified again — refused
/// with the store's reason, also on a restart after a crash.
fn load_if_verdict_changed(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
) -> Result<Option<LaunchResult>, EngineError> {
    if kept_verdict_stands(shared, plugin) {
        return Ok(None);
    }
    {
        let mut lifecycle = plugin.lifecycle();
        lifecycle.library = None;
        lifecycle.proof = None;
    }
    load_launching(
        shared,
        plugin,
        max_plugins_reached(shared, plugin).is_none(),
    )
}

/// Whether the trust store, read now, gives the kept copy of the bundle the verdict it was
/// started on (the same signer level, or unverified in development mode as before).
fn kept_verdict_stands(shared: &Shared, plugin: &Plugin) -> bool {
    // Copied out: the store is read from disk, and snapshots wait for the lifecycle lock.
    let (manifest, proof, level) = {
        let lifecycle = plugin.lifecycle();
        let (Some(manifest), Some(proof)) = (&lifecycle.manifest, lifecycle.proof) else {
            // Nothing kept: the start refuses or loads as before.
            return true;
        };
        (manifest.clone(), proof, lifecycle.trust.level.clone())
    };
    match check_signature(shared, &manifest, &proof) {
        // (No level: unverified, allowed in development mode.)
        Ok((verified, _)) => verified.map(|verified| verified.level.to_string()) == level,
        Err(_) => false,
    }
}

/// The trust store changed while the plugin was up (running, or waiting to restart): when
/// it no longer vouches for the bundle the plugin runs — a key or digest revoked, the key
/// unpinned, the `in-process` level withdrawn from an in-process plugin's signer — the
/// plugin is stopped at once and shows as rejected, saying why: a revocation in an
/// incident must not wait for the next restart. A store that cannot be read right now
/// (half-written) changes nothing; the next change is looked at again.
fn on_trust_change(shared: &Arc<Shared>, plugin: &Arc<Plugin>) {
    let (manifest, proof) = {
        let lifecycle = plugin.lifecycle();
        let up = plugin.running().is_some() || lifecycle.state == PluginState::BackingOff;
        match (&lifecycle.manifest, lifecycle.proof) {
            (Some(manifest), Some(proof)) if up => (manifest.clone(), proof),
            _ => return,
        }
    };
    let reason = match check_signature(shared, &manifest, &proof) {
        Err(Refusal {
            reason,
            trust: true,
        }) => format!("trust withdrawn while it ran: {reason}"),
        _ => return,
    };
    let _ = stop(shared, plugin, PluginState::Rejected);
    {
        let mut lifecycle = plugin.lifecycle();
        lifecycle.reason = Some(reason.clone());
        // Its next start reads and verifies the bundle again.
        lifecycle.library = None;
        lifecycle.proof = None;
        lifecycle.backoff = super::Backoff::default();
    }
    shared.event(
        Some(&plugin.name),
        EventKind::Rejected {
            reason: reason.clone(),
        },
    );
    trust_failure(shared, plugin, &reason, &reason);
}

/// At the engine's shutdown: a plugin that runs is stopped; one that is down stays as it
/// is — what broke is still there to see in the final snapshot — except that a restart
/// waiting for its delay will not come: it ends Failed, saying so.
fn stop_for_shutdown(shared: &Shared, plugin: &Plugin) -> Result<(), EngineError> {
    if plugin.running().is_some() {
        return stop(shared, plugin, PluginState::Stopped);
    }
    let mut lifecycle = plugin.lifecycle();
    if lifecycle.state == PluginState::BackingOff {
        lifecycle.backoff.next_retry = None;
        let reason = lifecycle.reason.take().unwrap_or_default();
        lifecycle.reason = Some(if reason.is_empty() {
            "the engine shut down before its restart".to_owned()
        } else {
            format!("{reason}; the engine shut down before its restart")
        });
        set_state(shared, plugin, &mut lifecycle, PluginState::Failed);
    }
    Ok(())
}

/// Stops the worker (gracefully, then by force) and ends in `to`.
fn stop(shared: &Shared, plugin: &Plugin, to: PluginState) -> Result<(), EngineError> {
    let running = plugin.set_running(None);
    let mut lifecycle = plugin.lifecycle();
    lifecycle.backoff.next_retry = None;
    if let Some(running) = running {
        set_state(shared, plugin, &mut lifecycle, PluginState::Stopping);
        drop(lifecycle);
        let exit = running.runner.stop(grace(shared, &plugin.name));
        shared.workers_retired.fetch_add(1, Ordering::Relaxed);
        lifecycle = plugin.lifecycle();
        lifecycle.health = super::HealthCheck::new();
        lifecycle.last_exit = exit;
        lifecycle.worker_pid = None;
        lifecycle.sandbox_pid = None;
        lifecycle.cgroup = None;
        shared.event(Some(&plugin.name), EventKind::Stopped { exit });
    } else if to == PluginState::Stopped
        && !matches!(
            lifecycle.state,
            // Stopping a crashed plugin acknowledges it (Failed → Stopped) and stopping one
            // waiting to restart cancels the restart.
            PluginState::Stopped
                | PluginState::Stopping
                | PluginState::Failed
                | PluginState::BackingOff
        )
    {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state: lifecycle.state,
            action: "stop",
            expected: "running",
        });
    }
    let to = if to == PluginState::Stopped && lifecycle.disabled {
        PluginState::Disabled
    } else {
        to
    };
    set_state(shared, plugin, &mut lifecycle, to);
    Ok(())
}

fn grace(shared: &Shared, plugin: &str) -> Duration {
    shared
        .config
        .plugins
        .get(plugin)
        .and_then(|overrides| overrides.grace_ms)
        .map_or(shared.config.grace, Duration::from_millis)
}

/// Verifies the bundle again and, when the plugin runs, starts the new version beside the
/// old one: traffic switches once the new worker answers its health check, then the old
/// one drains and stops. A new version that fails leaves the old one serving.
fn reload(shared: &Arc<Shared>, plugin: &Arc<Plugin>) -> Result<(), EngineError> {
    let state = plugin.lifecycle().state;
    if !matches!(state, PluginState::Running | PluginState::Degraded) {
        return reverify(shared, plugin, state);
    }
    let fail = |reason: String| {
        let mut lifecycle = plugin.lifecycle();
        set_state(shared, plugin, &mut lifecycle, state);
        lifecycle.reason = Some(format!(
            "reload failed, still running the old version: {reason}"
        ));
        drop(lifecycle);
        shared.event(
            Some(&plugin.name),
            EventKind::ReloadFailed {
                reason: reason.clone(),
            },
        );
        EngineError::ReloadFailed {
            plugin: plugin.name.clone(),
            reason,
        }
    };
    // Verified first, then launched, all on this thread: the old version serves meanwhile,
    // so a reload gains little from overlapping the two, and the overlap's short-lived
    // thread per reload made a long run's engine grow faster (see BENCHMARKS, soak).
    let generation = plugin.lifecycle().issue_generation();
    let verified = match verify_bundle(shared, plugin) {
        Ok(verified) => verified,
        Err(Refusal { reason, trust }) => {
            // A bundle that no longer verifies under a running plugin is a trust failure
            // as at a load (its bundle was changed on disk, say); a policy that
            // quarantines it has stopped the old version too, and that is what is said.
            if trust {
                trust_failure(
                    shared,
                    plugin,
                    &format!("reload refused: {reason}"),
                    &reason,
                );
                if plugin.lifecycle().state == PluginState::Quarantined {
                    return Err(EngineError::Quarantined {
                        plugin: plugin.name.clone(),
                        reason: format!("its reload was refused: {reason}"),
                    });
                }
            }
            return Err(fail(reason));
        }
    };
    if let Err(err) = super::dependencies::check_reload(shared, &plugin.name, &verified.manifest) {
        return Err(fail(err.to_string()));
    }
    set_state(
        shared,
        plugin,
        &mut plugin.lifecycle(),
        PluginState::Reloading,
    );
    let running = match spawn_worker(
        shared,
        plugin,
        generation,
        (&verified.manifest, &verified.library, &verified.config),
        None,
    ) {
        Ok(running) => running,
        Err(reason) => return Err(fail(format!("the new version did not start: {reason}"))),
    };
    if let Err(reason) = check_healthy(&running, &verified.manifest) {
        running.runner.kill();
        return Err(fail(reason));
    }
    let old_version = plugin
        .lifecycle()
        .manifest
        .as_ref()
        .map(|manifest| manifest.plugin.version.to_string());
    let new_version = verified.manifest.plugin.version.to_string();
    let digest = verified.trust.library_sha3_512.clone();
    // Switch: new calls go to the new worker from here on. Under the lifecycle lock, so
    // no one sees the new worker serving with the old one's identity.
    let old = {
        let mut lifecycle = plugin.lifecycle();
        let running = Arc::new(running);
        let old = plugin.set_running(Some(Arc::clone(&running)));
        // The new version's trust first: the start's event says whether it is verified.
        keep_verified(&mut lifecycle, verified);
        lifecycle.last_reload = Some(SystemTime::now());
        lifecycle.changed_on_disk = false;
        adopt_worker(shared, plugin, &mut lifecycle, &running);
        old
    };
    if let Some(old) = old {
        retire_replaced(shared, plugin, &old);
    }
    shared.event(
        Some(&plugin.name),
        EventKind::Reloaded {
            from_version: old_version,
            to_version: new_version,
            library_sha3_512: digest,
        },
    );
    let mut lifecycle = plugin.lifecycle();
    set_state(shared, plugin, &mut lifecycle, PluginState::Running);
    Ok(())
}

/// The reload of a plugin that is not running: its bundle is verified afresh.
fn reverify(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    state: PluginState,
) -> Result<(), EngineError> {
    if matches!(
        state,
        PluginState::Starting
            | PluginState::Stopping
            | PluginState::Reloading
            | PluginState::Quarantined
    ) {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state,
            action: "reload",
            expected: "running, stopped or failed (a quarantined plugin is cleared first)",
        });
    }
    let mut lifecycle = plugin.lifecycle();
    lifecycle.library = None;
    // Reloading a plugin that is not running verifies it, nothing more: a restart it was
    // waiting for is off.
    lifecycle.backoff.next_retry = None;
    if !lifecycle.disabled {
        set_state(shared, plugin, &mut lifecycle, PluginState::Discovered);
    }
    drop(lifecycle);
    load(shared, plugin)?;
    plugin.lifecycle().last_reload = Some(SystemTime::now());
    Ok(())
}

/// Healthy means it answers its health check, with OK, within the manifest's timeout.
fn check_healthy(running: &Running, manifest: &Manifest) -> Result<(), String> {
    match running.runner.health(manifest.health.timeout()) {
        Ok(outcome) if outcome.status == plugboard_sdk::abi::STATUS_OK => Ok(()),
        Ok(outcome) => Err(format!(
            "the new version reported itself unhealthy: {}",
            String::from_utf8_lossy(&outcome.body)
        )),
        Err(err) => Err(format!(
            "the new version did not answer its health check: {err}"
        )),
    }
}

fn set_enabled(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    enabled: bool,
) -> Result<(), EngineError> {
    let mut lifecycle = plugin.lifecycle();
    if lifecycle.disabled != enabled {
        return Ok(());
    }
    lifecycle.disabled = !enabled;
    // Why it was down before (a crash, a spent budget) is not why it is disabled or
    // enabled now; the events keep it.
    if !matches!(
        lifecycle.state,
        PluginState::Rejected | PluginState::Quarantined
    ) {
        lifecycle.reason = None;
    }
    let state = lifecycle.state;
    drop(lifecycle);
    shared.event(Some(&plugin.name), EventKind::PluginToggled { enabled });
    if enabled {
        let mut lifecycle = plugin.lifecycle();
        if lifecycle.state == PluginState::Disabled {
            let to = if lifecycle.manifest.is_some() && lifecycle.library.is_some() {
                PluginState::Verified
            } else {
                PluginState::Discovered
            };
            set_state(shared, plugin, &mut lifecycle, to);
        }
        return Ok(());
    }
    if plugin.running().is_some() || state == PluginState::BackingOff {
        stop(shared, plugin, PluginState::Stopped)?;
    } else if !matches!(state, PluginState::Rejected | PluginState::Quarantined) {
        // An unloaded one too: it shows as disabled at once (enabled again, it is
        // discovered, its library being gone).
        let mut lifecycle = plugin.lifecycle();
        set_state(shared, plugin, &mut lifecycle, PluginState::Disabled);
    }
    Ok(())
}

fn on_worker_event(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    generation: u64,
    event: WorkerEvent,
    hooks: Option<String>,
) {
    match event {
        // Kept or counted by the sink already (see `worker_sink`).
        WorkerEvent::Output { .. } | WorkerEvent::OutputDropped { .. } => {}
        WorkerEvent::ForbiddenSyscall {
            syscall, detail, ..
        } => {
            let mut violation = Violation::new(
                ViolationKind::ForbiddenSyscall,
                "seccomp",
                if detail.is_empty() {
                    format!("{syscall} denied (EPERM): its capabilities do not grant it")
                } else {
                    format!("{syscall} ({detail}) denied (EPERM): its capabilities do not grant it")
                },
            )
            .fact("syscall", syscall.clone())
            .during(hooks.or_else(|| hooks_in_flight(plugin)));
            if let Some(family) = detail
                .strip_prefix("domain ")
                .and_then(|rest| rest.split(',').next())
            {
                violation = violation.fact("family", family.to_owned());
            }
            if !detail.is_empty() {
                violation = violation.fact("arguments", detail);
            }
            on_violation(shared, plugin, violation);
        }
        WorkerEvent::FsDenied {
            syscall,
            path,
            access,
            ..
        } => {
            let verb = access.as_str();
            let grant = match access {
                FileAccess::Read => "fs_read or fs_write",
                FileAccess::Write => "fs_write",
            };
            let violation = Violation::new(
                ViolationKind::FsDenied,
                "landlock",
                format!(
                    "{syscall} to {verb} {path} denied (EACCES): outside its {grant} (the engine checks file calls against the Landlock rules as the filter shows them)"
                ),
            )
            .fact("path", path)
            .fact("access", verb.to_owned())
            .fact("syscall", syscall)
            .during(hooks.or_else(|| hooks_in_flight(plugin)));
            on_violation(shared, plugin, violation);
        }
        WorkerEvent::Audited {
            syscall,
            detail,
            capability,
            files,
        } => record_audited(shared, plugin, &syscall, &detail, capability, &files),
        WorkerEvent::ProtocolViolation { reason } => {
            let violation = Violation::new(
                ViolationKind::ProtocolViolation,
                "engine",
                format!("{reason}; the worker was killed"),
            )
            .during(hooks.or_else(|| hooks_in_flight(plugin)));
            on_violation(shared, plugin, violation);
        }
        WorkerEvent::CgroupLeft { cgroup, reason } => {
            shared.event(Some(&plugin.name), EventKind::engine_warning(EngineTopic::Cgroup, format!(
                    "the cgroup {cgroup} of its stopped worker could not be removed ({reason}); what is left in it stays until the next engine start removes it"
                )));
        }
        WorkerEvent::ReceiveFailed { reason } => {
            shared.event(Some(&plugin.name), EventKind::engine_warning(EngineTopic::Worker, format!(
                    "the engine could not receive from its worker ({reason}); it tries again, and calls may time out meanwhile"
                )));
        }
        WorkerEvent::NotificationsPaced { per_sec } => {
            shared.event(Some(&plugin.name), EventKind::engine_warning(EngineTopic::Worker, format!(
                    "its seccomp notifications (forbidden calls, file writes) come faster than {per_sec}/s: they now wait their turn"
                )));
        }
        WorkerEvent::Exited { status } => {
            // An exit of the current worker while it should run is a crash; during a stop,
            // or of a worker a reload replaced, it is expected.
            let crashed = {
                let lifecycle = plugin.lifecycle();
                lifecycle.generation == generation && lifecycle.is_up()
            };
            if crashed {
                on_crash(shared, plugin, status);
            }
        }
    }
}

fn on_crash(shared: &Arc<Shared>, plugin: &Arc<Plugin>, status: ExitStatus) {
    // The hooks in flight, and those whose calls already found the worker gone.
    let mut hooks: std::collections::BTreeSet<String> = hooks_in_flight(plugin)
        .map(|hooks| hooks.split(", ").map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(running) = plugin.running() {
        hooks.extend(
            running
                .lost_calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
    }
    let hooks = (!hooks.is_empty()).then(|| hooks.into_iter().collect::<Vec<_>>().join(", "));
    // Whether the kernel's OOM killer did it is in the cgroup, which goes with the worker;
    // the sampler may have read and reported the kill already.
    let oom = oom_kills(shared, plugin).map(|(total, limit)| {
        let mut lifecycle = plugin.lifecycle();
        let generation = lifecycle.generation;
        (total, lifecycle.claim_oom_kills(generation, total), limit)
    });
    // Reap what is left (the cgroup, the worker's threads) before anyone is told, so
    // whoever reacts to the crash finds nothing of the old worker.
    let running = plugin.set_running(None);
    if let Some(running) = running {
        running.runner.kill();
    }
    let mut lifecycle = plugin.lifecycle();
    lifecycle.health = super::HealthCheck::new();
    lifecycle.last_exit = Some(status);
    lifecycle.reason = Some(format!("the worker ended unexpectedly: {status}"));
    lifecycle.worker_pid = None;
    lifecycle.sandbox_pid = None;
    lifecycle.cgroup = None;
    set_state(shared, plugin, &mut lifecycle, PluginState::Failed);
    drop(lifecycle);
    if let Some((_, kills, limit)) = oom
        && kills > 0
    {
        lifecycle_reason(
            plugin,
            format!("OOM-killed at its memory limit ({})", mib(limit)),
        );
    }
    let violation = crash_violation(status, oom);
    on_violation(shared, plugin, violation.during(hooks));
    // A policy that stopped or quarantined it has said so already.
    let state = plugin.lifecycle().state;
    if matches!(state, PluginState::Failed | PluginState::BackingOff) {
        say_dependents_left_running(shared, plugin, "it crashed");
    }
}

/// The violation a crash is: an OOM kill when the cgroup counted kills not reported yet
/// (`oom` = total, not yet reported, limit), a crash otherwise; with its exit status.
fn crash_violation(status: ExitStatus, oom: Option<(u64, u64, Option<u64>)>) -> Violation {
    let violation = match oom {
        Some((total, kills, limit)) if kills > 0 => Violation::new(
            ViolationKind::OomKill,
            "cgroup",
            format!(
                "the kernel's OOM killer ended it at its memory limit of {}",
                mib(limit)
            ),
        )
        .fact("limit_bytes", limit)
        .fact("oom_kills", kills)
        .fact(OOM_KILLS_TOTAL, total),
        // Kills the sampler reported already (the policy only logged them) are not this
        // exit's cause for certain: it is reported as what it looks like, a crash.
        Some((total, _, _)) if total > 0 => Violation::new(
            ViolationKind::Crash,
            "engine",
            format!(
                "the worker ended unexpectedly: {status} (after {total} OOM kill(s) in its \
                 cgroup, reported before)"
            ),
        )
        .fact(OOM_KILLS_TOTAL, total),
        // The one way the seccomp filter kills: a call of another ABI (x32 numbers,
        // 32-bit `int 0x80`), which it cannot name. No notification comes of it, so the
        // exit status is all there is to go by (a plugin raising SIGSYS itself looks the
        // same, and is said to).
        _ if status
            == (ExitStatus::Signal {
                signal: libc::SIGSYS,
            }) =>
        {
            Violation::new(
                ViolationKind::Crash,
                "seccomp",
                format!(
                    "the worker ended unexpectedly: {status}, the signal the seccomp filter kills \
                 with when a system call of another ABI is made (x32, 32-bit int 0x80), or \
                 the plugin raised it itself"
                ),
            )
        }
        _ => Violation::new(
            ViolationKind::Crash,
            "engine",
            format!("the worker ended unexpectedly: {status}"),
        ),
    };
    match status {
        ExitStatus::Signal { signal } => violation.fact("signal", signal).fact(
            "signal_name",
            nix::sys::signal::Signal::try_from(signal).map_or("unknown", |signal| signal.as_str()),
        ),
        ExitStatus::Code { code } => violation.fact("exit_code", code),
    }
}

/// A plugin went down without an operator's stop, which would have stopped its dependents
/// first: says which of them run on without it (never silently, DESIGN.md's Lifecycle).
pub(crate) fn say_dependents_left_running(shared: &Shared, plugin: &Plugin, why: &str) {
    if plugin.lifecycle().is_up() {
        return;
    }
    let dependents: Vec<String> = super::dependencies::running_dependents(shared, &plugin.name)
        .iter()
        .map(|dependent| format!("`{}`", dependent.name))
        .collect();
    if dependents.is_empty() {
        return;
    }
    shared.event(
        Some(&plugin.name),
        EventKind::engine_warning(
            EngineTopic::Dependencies,
            format!(
                "`{}` is down ({why}) while {} depending on it run on",
                plugin.name,
                dependents.join(", ")
            ),
        ),
    );
}

fn lifecycle_reason(plugin: &Plugin, reason: String) {
    plugin.lifecycle().reason = Some(reason);
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "none".to_owned(), |bytes| format!("{} MiB", bytes >> 20))
}

/// A violation another thread found (of worker `generation`, when it names one).
fn on_reported_violation(
    shared: &Arc<Shared>,
    plugin: &Arc<Plugin>,
    generation: Option<u64>,
    violation: Violation,
) {
    let violation = match generation {
        Some(generation) => oom_kills_not_yet_reported(plugin, generation, violation),
        None => Some(violation),
    };
    match violation {
        None => {}
        Some(violation) if generation.is_some_and(|seen| seen != plugin.lifecycle().generation) => {
            record_replaced_workers_violation(shared, plugin, violation);
        }
        Some(violation) => on_violation(shared, plugin, violation),
    }
}

/// A sampler's report of OOM kills in worker `generation`'s cgroup, with only the kills the
/// crash handler has not reported already; `None` when it has reported them all (the same
/// kill, seen from both sides, is one violation).
fn oom_kills_not_yet_reported(
    plugin: &Plugin,
    generation: u64,
    violation: Violation,
) -> Option<Violation> {
    let total = violation
        .facts
        .get(OOM_KILLS_TOTAL)
        .and_then(serde_json::Value::as_u64);
    match total {
        Some(total) if violation.kind == ViolationKind::OomKill => {
            let kills = plugin.lifecycle().claim_oom_kills(generation, total);
            (kills > 0).then(|| violation.fact("oom_kills", kills))
        }
        _ => Some(violation),
    }
}

/// OOM kills counted in the plugin's memory cgroup, and its limit; `None` when they
/// cannot be read.
fn oom_kills(shared: &Shared, plugin: &Plugin) -> Option<(u64, Option<u64>)> {
    let cgroup = plugin.lifecycle().cgroup.clone()?;
    let root = shared.scope.as_ref()?.root();
    let dir = root
        .controller_dir(crate::sandbox::cgroup::Controller::Memory, &cgroup)
        .ok()?;
    let v1 = root.layout().uses_v1_hierarchies();
    let events = std::fs::read_to_string(dir.join(if v1 {
        "memory.oom_control"
    } else {
        "memory.events"
    }))
    .ok()?;
    let kills = events.lines().find_map(|line| {
        line.strip_prefix("oom_kill ")
            .and_then(|count| count.trim().parse().ok())
    })?;
    let limit = std::fs::read_to_string(dir.join(if v1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    }))
    .ok()
    .and_then(|text| text.trim().parse::<u64>().ok());
    Some((kills, limit))
}

/// Records what an audit-mode plugin did beyond its manifest, each distinct thing once (so
/// the audit file holds the evidence `plugboard suggest` needs, not a flood).
fn record_audited(
    shared: &Shared,
    plugin: &Plugin,
    syscall: &str,
    detail: &str,
    capability: Option<Capability>,
    files: &[FileOperand],
) {
    /// Bounds the memory a plugin touching endless distinct paths can take.
    const MAX_DISTINCT: usize = 4096;
    // (what the manifest would have to grant, path, creates, detail)
    let capability = capability.map(|capability| (capability.as_str(), None, false, detail));
    let paths = files.iter().filter_map(|operand| {
        let grant = match operand.access {
            FileAccess::Read => "fs_read",
            FileAccess::Write => "fs_write",
        };
        let path = operand.path.as_ref()?.display().to_string();
        Some((grant, Some(path), operand.creates, ""))
    });
    for (grant, path, creates, detail) in capability.into_iter().chain(paths) {
        // Arguments tell socket families apart; elsewhere (descriptor numbers) they would
        // make every call new.
        let family = if syscall.starts_with("socket") {
            detail
        } else {
            ""
        };
        let key = format!("{grant} {syscall} {path:?} {creates} {family}");
        let fresh = {
            let mut lifecycle = plugin.lifecycle();
            lifecycle.audited.len() < MAX_DISTINCT && lifecycle.audited.insert(key)
        };
        if fresh {
            shared.event(
                Some(&plugin.name),
                EventKind::Audited {
                    capability: grant.to_owned(),
                    syscall: syscall.to_owned(),
                    path,
                    creates,
                    detail: detail.to_owned(),
                },
            );
        }
    }
}

/// The hooks with calls in flight (comma separated), the likeliest culprits.
pub(crate) fn hooks_in_flight(plugin: &Plugin) -> Option<String> {
    let stats = plugin.stats.lock().unwrap_or_else(PoisonError::into_inner);
    let busy: Vec<&str> = stats
        .iter()
        .filter(|(_, stats)| stats.in_flight() > 0)
        .map(|(hook, _)| hook.as_str())
        .collect();
    (!busy.is_empty()).then(|| busy.join(", "))
}

/// Counts the violation, lets the policy decide the action and records it (durably, in
/// the audit file) — before the action is carried out.
fn record_violation(shared: &Shared, plugin: &Plugin, mut violation: Violation) -> Action {
    let rule = shared.config.policy.rule(violation.kind);
    let now = Instant::now();
    let (action, between, not_restarted) = {
        let mut lifecycle = plugin.lifecycle();
        lifecycle.violations += 1;
        let action = lifecycle
            .violation_counts
            .decide(violation.kind, &rule, now);
        let not_restarted = (action == Action::Restart)
            .then(|| why_no_restart(shared, &lifecycle, now))
            .flatten();
        // A flood the policy only logs (a plugin retrying a forbidden call in a loop)
        // is itemized up to a bound a minute, so it cannot rotate the audit trail away;
        // the rest is counted. A violation whose action does something is always itemized.
        let syscall = violation
            .facts
            .get("syscall")
            .and_then(|syscall| syscall.as_str())
            .map(str::to_owned);
        let entry = lifecycle
            .itemized
            .entry((violation.kind, syscall.clone()))
            .or_insert(super::LoggedMinute {
                since: now,
                shown: 0,
                counted_only: 0,
            });
        if now.duration_since(entry.since) >= Duration::from_secs(60) {
            entry.since = now;
            entry.shown = 0;
        }
        if action == Action::Log && entry.shown >= super::ITEMIZED_PER_MINUTE {
            entry.counted_only += 1;
            let left = Duration::from_secs(60).saturating_sub(now.duration_since(entry.since));
            let first_counted = entry.counted_only == 1;
            drop(lifecycle);
            if first_counted {
                // Said once a minute, so that a log going quiet under a flood reads as
                // what it is.
                let what = syscall.map_or_else(
                    || violation.kind.to_string(),
                    |syscall| format!("{} ({syscall})", violation.kind),
                );
                shared.event(
                    Some(&plugin.name),
                    EventKind::engine_note(
                        EngineTopic::Worker,
                        format!(
                            "{what} past {} a minute: counted, not itemized, for the next {} s (the next one itemized says how many came between)",
                            super::ITEMIZED_PER_MINUTE,
                            left.as_secs().max(1)
                        ),
                    ),
                );
            }
            return action;
        }
        entry.shown += 1;
        (
            action,
            std::mem::take(&mut entry.counted_only),
            not_restarted,
        )
    };
    if between > 0 {
        violation = violation.fact("not_itemized_before", between);
    }
    // The policy's word is restart, but nothing will: the record says so, not only the
    // `restarts_exhausted` event after it.
    if let Some(why) = not_restarted {
        violation = violation.fact(NOT_RESTARTED, why);
    }
    violation.action = action;
    shared.event(Some(&plugin.name), EventKind::Violation { violation });
    action
}

/// The fact a violation the policy restarts for carries when no restart will follow.
pub const NOT_RESTARTED: &str = "not_restarted";

/// Why a restart the policy asks for will not happen: restarts off, the plugin disabled,
/// or the window's budget spent (as [`schedule_restart`] will find).
fn why_no_restart(shared: &Shared, lifecycle: &Lifecycle, now: Instant) -> Option<String> {
    let policy = &shared.config.restart;
    if !policy.enabled {
        // (Its `[restart] enabled = false`, or a front end such as `call` that runs one
        // plugin once.)
        return Some("restarts are off in this engine".to_owned());
    }
    if lifecycle.disabled {
        return Some("the plugin is disabled".to_owned());
    }
    let window = policy.window();
    let used = lifecycle
        .backoff
        .recent
        .iter()
        .filter(|at| now.duration_since(**at) <= window)
        .count();
    (u32::try_from(used).unwrap_or(u32::MAX) >= policy.max_restarts).then(|| {
        format!(
            "the restart budget is spent ({used} restarts within {} s)",
            policy.window_s
        )
    })
}

/// A violation of a worker that has been replaced since: in the record, as it happened,
/// but neither counted toward the policy's thresholds nor acted on — the worker serving
/// now did nothing.
fn record_replaced_workers_violation(shared: &Shared, plugin: &Plugin, violation: Violation) {
    plugin.lifecycle().violations += 1;
    let mut violation = violation.fact("worker_replaced", true);
    violation.action = Action::Log;
    shared.event(Some(&plugin.name), EventKind::Violation { violation });
}

/// Records a violation and carries out the action the policy chose.
fn on_violation(shared: &Arc<Shared>, plugin: &Arc<Plugin>, violation: Violation) {
    let kind = violation.kind;
    let detail = violation.detail.clone();
    let worker_gone =
        matches!(kind, ViolationKind::Crash | ViolationKind::OomKill) && plugin.running().is_none();
    match record_violation(shared, plugin, violation) {
        Action::Log => {}
        Action::Restart if worker_gone => schedule_restart(shared, plugin),
        // A worker the policy restarts (unhealthy, hanging) goes as a crashed one does:
        // through the backoff and the restart budget, so one that never recovers ends
        // Failed instead of restarting for ever.
        Action::Restart => {
            if plugin.running().is_some() {
                // The reason first: whoever sees the new state sees why.
                let reason = if shared.config.restart.enabled {
                    format!("restarted by policy after {kind}: {detail}")
                } else {
                    format!(
                        "stopped after {kind}: {detail}; the policy restarts it, but restarts \
                         are off in this engine"
                    )
                };
                lifecycle_reason(plugin, reason);
                let _ = stop(shared, plugin, PluginState::Failed);
                schedule_restart(shared, plugin);
            }
        }
        Action::Stop => {
            lifecycle_reason(plugin, format!("stopped by policy after {kind}: {detail}"));
            let _ = stop(shared, plugin, PluginState::Stopped);
            say_dependents_left_running(shared, plugin, "stopped by policy");
        }
        Action::Quarantine => {
            quarantine(shared, plugin, &format!("{kind}: {detail}"));
            say_dependents_left_running(shared, plugin, "quarantined");
        }
    }
}

/// Stops and unloads the plugin and keeps it from starting until an operator clears it,
/// across engine restarts.
fn quarantine(shared: &Shared, plugin: &Plugin, reason: &str) {
    // On disk first: once the plugin shows as quarantined, an engine restart keeps it so.
    let persisted = shared.persist(&plugin.name, |toggles| {
        toggles.quarantined = Some(super::state_file::Quarantine {
            reason: reason.to_owned(),
            at_ms: unix_millis(SystemTime::now()),
        });
    });
    if let Err(err) = persisted {
        shared.event(
            Some(&plugin.name),
            EventKind::engine_warning(
                EngineTopic::StateFile,
                format!("the quarantine is not on disk yet: {err}"),
            ),
        );
    }
    plugin.lifecycle().reason = Some(format!("quarantined: {reason}"));
    let _ = stop(shared, plugin, PluginState::Quarantined);
    let mut lifecycle = plugin.lifecycle();
    lifecycle.library = None;
    lifecycle.backoff = super::Backoff::default();
}

fn clear_quarantine(shared: &Shared, plugin: &Plugin) -> Result<(), EngineError> {
    let mut lifecycle = plugin.lifecycle();
    if lifecycle.state != PluginState::Quarantined {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state: lifecycle.state,
            action: "clear quarantine",
            expected: "quarantined",
        });
    }
    lifecycle.reason = None;
    lifecycle.violation_counts = crate::policy::ViolationCounts::default();
    let to = if lifecycle.disabled {
        PluginState::Disabled
    } else {
        PluginState::Discovered
    };
    set_state(shared, plugin, &mut lifecycle, to);
    drop(lifecycle);
    shared.event(Some(&plugin.name), EventKind::QuarantineCleared);
    Ok(())
}

/// After a crash (or a failed restart): the next restart with its delay, or Failed when
/// the policy is off or the window's budget is spent.
fn schedule_restart(shared: &Shared, plugin: &Plugin) {
    let policy = &shared.config.restart;
    let mut lifecycle = plugin.lifecycle();
    // Only a plugin that failed (or whose restart could not start) restarts: a late report
    // of a worker an operator has stopped since, or one quarantined, starts nothing.
    let failed = matches!(
        lifecycle.state,
        PluginState::Failed | PluginState::BackingOff
    );
    if !policy.enabled || lifecycle.disabled || !failed {
        return;
    }
    let now = Instant::now();
    let window = policy.window();
    while lifecycle
        .backoff
        .recent
        .front()
        .is_some_and(|at| now.duration_since(*at) > window)
    {
        lifecycle.backoff.recent.pop_front();
    }
    let used = u32::try_from(lifecycle.backoff.recent.len()).unwrap_or(u32::MAX);
    if used >= policy.max_restarts {
        lifecycle.reason = Some(format!(
            "failed again after {used} restarts within {} s: the restart budget is spent ({}); start it by hand",
            policy.window_s,
            lifecycle.reason.as_deref().unwrap_or("no reason recorded")
        ));
        // Also when the last restart was refused before it began (a dependency down):
        // the plugin must not wait in BackingOff with nothing scheduled.
        lifecycle.backoff.next_retry = None;
        set_state(shared, plugin, &mut lifecycle, PluginState::Failed);
        drop(lifecycle);
        shared.event(
            Some(&plugin.name),
            EventKind::RestartsExhausted {
                restarts: used,
                window_s: policy.window_s,
            },
        );
        return;
    }
    let delay = policy.delay(used);
    lifecycle.backoff.next_retry = Some((now + delay, SystemTime::now() + delay));
    set_state(shared, plugin, &mut lifecycle, PluginState::BackingOff);
    drop(lifecycle);
    shared.event(
        Some(&plugin.name),
        EventKind::BackingOff {
            attempt: used + 1,
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            budget_left: policy.max_restarts - used,
        },
    );
}

fn restart_after_backoff(shared: &Arc<Shared>, plugin: &Arc<Plugin>) {
    {
        let mut lifecycle = plugin.lifecycle();
        lifecycle.backoff.next_retry = None;
        lifecycle.backoff.recent.push_back(Instant::now());
        lifecycle.restarts += 1;
    }
    if let Err(err) = start(shared, plugin) {
        let dependency_was_starting = match &err {
            EngineError::DependencyUnavailable { dependency, .. } => {
                super::dependencies::was_only_starting(shared, dependency)
            }
            _ => false,
        };
        if dependency_was_starting {
            // Not this plugin's failure, and over in a moment (a dependency restarting
            // beside it): try again shortly, its restart budget untouched.
            let mut lifecycle = plugin.lifecycle();
            lifecycle.backoff.recent.pop_back();
            lifecycle.restarts = lifecycle.restarts.saturating_sub(1);
            lifecycle.backoff.next_retry = Some((
                Instant::now() + DEPENDENCY_STARTING_RETRY,
                SystemTime::now() + DEPENDENCY_STARTING_RETRY,
            ));
            lifecycle.reason = Some(format!("restart waits: {err}"));
            return;
        }
        plugin.lifecycle().reason = Some(format!("restart failed: {err}"));
        schedule_restart(shared, plugin);
    }
}

/// How soon a restart refused because a dependency was still starting is tried again.
const DEPENDENCY_STARTING_RETRY: Duration = Duration::from_millis(100);

fn on_disk_change(shared: &Arc<Shared>, plugin: &Arc<Plugin>, change: &DiskChange) {
    let (reload_now, verify_again) = {
        let mut lifecycle = plugin.lifecycle();
        match change {
            DiskChange::Removed(_) => lifecycle.removed_from_disk = true,
            // What is there may not be what was verified: a moved bundle too (a deploy
            // that replaces `hello-1.0/` with `hello-1.1/`).
            DiskChange::Changed(_) | DiskChange::Restored(_) | DiskChange::Moved { .. } => {
                lifecycle.removed_from_disk = false;
                lifecycle.changed_on_disk = true;
            }
        }
        let present = !matches!(change, DiskChange::Removed(_));
        (
            present
                && shared.config.watch.reload_on_change
                && matches!(
                    lifecycle.state,
                    PluginState::Running | PluginState::Degraded
                ),
            // A rejected bundle replaced (a fixed one deployed, signed again): verified
            // again at once, so that it shows as what it is now — and a headless engine
            // starts it — without waiting for an operator.
            present && lifecycle.state == PluginState::Rejected,
        )
    };
    let shown = |dir: &std::path::Path| dir.display().to_string();
    shared.event(
        Some(&plugin.name),
        match &change {
            DiskChange::Changed(dir) | DiskChange::Restored(dir) => {
                EventKind::BundleChanged { dir: shown(dir) }
            }
            DiskChange::Removed(dir) => EventKind::BundleRemoved { dir: shown(dir) },
            DiskChange::Moved { from, to } => EventKind::BundleMoved {
                from: shown(from),
                to: shown(to),
            },
        },
    );
    if reload_now {
        // A failed reload is recorded by `reload` itself; the old version keeps serving.
        let _ = reload(shared, plugin);
    }
    if verify_again {
        // Rejected again, it says why as before.
        let _ = load(shared, plugin);
    }
}

/// One health check of the running worker, per the manifest's `[health]`: every
/// transition is an event; reaching `failures_before_unhealthy` failures in a row makes
/// the plugin Degraded, a passing check makes it Running again.
fn check_health(shared: &Arc<Shared>, plugin: &Arc<Plugin>) {
    let Some(running) = plugin.running() else {
        plugin.lifecycle().health.next = None;
        return;
    };
    let Some(spec) = plugin
        .lifecycle()
        .manifest
        .as_ref()
        .map(|manifest| manifest.health)
    else {
        // Nothing to check against: no timer left due (the actor would run it again at once).
        plugin.lifecycle().health.next = None;
        return;
    };
    let failure = match running.runner.health(spec.timeout()) {
        Ok(outcome) if outcome.status == plugboard_sdk::abi::STATUS_OK => None,
        Ok(outcome) => Some(crate::text::clip(
            &String::from_utf8_lossy(&outcome.body),
            crate::text::DETAIL_MAX,
        )),
        Err(err) => Some(format!("no answer: {err}")),
    };
    let mut lifecycle = plugin.lifecycle();
    if lifecycle.generation != running.generation {
        return;
    }
    let check = &mut lifecycle.health;
    let from = check.health;
    check.last_checked = Some(SystemTime::now());
    check.next = Some(Instant::now() + spec.interval());
    let to = match failure {
        None => {
            check.failures = 0;
            check.last_failure = None;
            Health::Healthy
        }
        Some(detail) => {
            check.failures += 1;
            check.last_failure = Some(detail);
            if check.failures >= spec.failures_before_unhealthy {
                Health::Unhealthy
            } else {
                Health::Degraded
            }
        }
    };
    check.health = to;
    let (failures, detail) = (check.failures, check.last_failure.clone());
    if from != to {
        shared.event(
            Some(&plugin.name),
            EventKind::HealthChanged {
                from,
                to,
                failures,
                detail: detail.clone(),
            },
        );
    }
    match (to, lifecycle.state) {
        (Health::Unhealthy, PluginState::Running) => {
            set_state(shared, plugin, &mut lifecycle, PluginState::Degraded);
        }
        (Health::Healthy, PluginState::Degraded) => {
            set_state(shared, plugin, &mut lifecycle, PluginState::Running);
        }
        _ => {}
    }
    drop(lifecycle);
    if to == Health::Unhealthy && from != Health::Unhealthy {
        let violation = Violation::new(
            ViolationKind::HealthFailed,
            "engine",
            format!(
                "{failures} health checks failed in a row (threshold {}): {}",
                spec.failures_before_unhealthy,
                detail.as_deref().unwrap_or("no detail")
            ),
        )
        .fact("failures", failures);
        on_violation(shared, plugin, violation);
    }
}

/// Milliseconds since the epoch, for snapshots.
pub(crate) fn millis(time: Option<SystemTime>) -> Option<u64> {
    time.map(unix_millis)
}
