//! What front ends read: an owned, serializable picture of the engine, built on request.
//! The JSON field names are a contract (README, "Snapshot fields").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::hooks::HookStatsSnapshot;
use crate::manifest::{Capabilities, EffectiveResources, HostLimits, Resources};
use crate::monitor::ResourceSample;
use crate::worker::{ExitStatus, MechanismState, OutputStream};

/// A plugin's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// A bundle directory was found; not verified yet.
    Discovered,
    /// Failed verification (the reason is in `reason`).
    Rejected,
    /// Signature and manifest checked; not running.
    Verified,
    Starting,
    Running,
    /// A new version is starting beside the running one; traffic switches when it is
    /// healthy.
    Reloading,
    Stopping,
    Stopped,
    /// Running but unhealthy.
    Degraded,
    /// Crashed; waiting for the next restart (see `supervision`).
    BackingOff,
    /// Crashed or failed to start, and not restarted (policy off or budget exhausted).
    Failed,
    /// Kept from starting by the host configuration or an operator.
    Disabled,
    /// Unloaded by policy.
    Quarantined,
    Unloaded,
}

impl PluginState {
    /// The state's name as in snapshots (`backing_off`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::Rejected => "rejected",
            Self::Verified => "verified",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Reloading => "reloading",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Degraded => "degraded",
            Self::BackingOff => "backing_off",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
            Self::Quarantined => "quarantined",
            Self::Unloaded => "unloaded",
        }
    }
}

/// Health as far as the engine's checks know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not checked yet, or not running.
    Unknown,
    Healthy,
    /// Checks failing, fewer in a row than the manifest's `failures_before_unhealthy`.
    Degraded,
    /// That many checks failed in a row: the plugin's state becomes Degraded.
    Unhealthy,
}

/// One captured line of a plugin's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    pub at_ms: u64,
    pub stream: OutputStream,
    pub line: String,
}

/// Who signed a plugin and how far it is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustInfo {
    pub signed: bool,
    pub key_id: Option<String>,
    pub level: Option<String>,
    pub library_sha3_512: Option<String>,
    /// Loaded without a trust verdict (host in development mode).
    pub unverified: bool,
    /// Why it is unverified: the trust store's refusal the development mode overrode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_because: Option<String>,
}

/// One plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginSnapshot {
    pub name: String,
    pub version: Option<String>,
    pub dir: String,
    pub state: PluginState,
    /// Why it is Rejected or Failed.
    pub reason: Option<String>,
    pub health: Health,
    /// Failed health checks in a row, when the last check was, and the plugin's answer to
    /// the last failed one.
    pub health_failures: u32,
    pub health_checked_ms: Option<u64>,
    pub health_detail: Option<String>,
    /// `process` (sandboxed worker) or `in-process`.
    pub isolation: String,
    /// Mechanism name → whether the kernel granted it, with details.
    pub mechanisms: BTreeMap<String, MechanismState>,
    /// Badges of the active mechanisms (`ns cg sc ll …`).
    pub active_mechanisms: Vec<String>,
    pub worker_pid: Option<u32>,
    pub sandbox_pid: Option<u32>,
    pub cgroup: Option<String>,
    pub trust: TrustInfo,
    /// Every hook the manifest subscribes to (zero counts until called, with its priority
    /// and effective timeout), and any other hook that was called.
    pub hooks: BTreeMap<String, HookStatsSnapshot>,
    pub violations: u64,
    /// Violations (and audit-mode observations) caught but not recorded — not itemized,
    /// not counted in `violations`, not seen by the policy: the plugin caused them faster
    /// than the engine records them (its actor had 1,024 waiting).
    pub violations_unrecorded: u64,
    /// Hooks this plugin emitted through the engine.
    pub emitted: u64,
    pub last_exit: Option<ExitStatus>,
    pub output_dropped: u64,
    /// The newest captured output lines (at most 20 here; the ring keeps more).
    pub recent_output: Vec<OutputLine>,
    /// `false` when the host configuration or an operator disabled it.
    pub enabled: bool,
    /// Hooks an operator disabled: calls are refused, emits skip them.
    pub disabled_hooks: Vec<String>,
    /// `[dependencies]`: plugin name → semver requirement.
    pub dependencies: BTreeMap<String, String>,
    /// The bundle on disk is not what was verified (the watcher saw a change).
    pub changed_on_disk: bool,
    /// The bundle directory is gone from disk.
    pub removed_from_disk: bool,
    pub supervision: Supervision,
    /// The newest resource sample of its worker (`None` until sampled, or in-process).
    pub resources: Option<ResourceSample>,
    /// What the verified manifest's `[capabilities]` grant (`None` until verified).
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// The limits the sandbox enforces: the host's `[plugins.<name>.resources]` override,
    /// else the manifest's `[resources]`, else the host's default (`None` until verified,
    /// and for an in-process plugin, which runs without them).
    #[serde(default)]
    pub limits: Option<EffectiveResources>,
    /// The host's `[plugins.<name>.resources]` overrides (what a new version would get too).
    #[serde(default)]
    pub resource_overrides: Resources,
    /// The effective config: each `[config.<key>]` of the manifest with its default, the
    /// host's override and the value the plugin received.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigSetting>,
}

/// One `[config.<key>]` setting of a plugin: where its value came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSetting {
    /// `string`, `integer`, `float` or `bool`.
    #[serde(rename = "type")]
    pub value_type: String,
    pub description: String,
    /// The manifest's `default`.
    pub default: Option<serde_json::Value>,
    /// The host's `[plugins.<name>.config]` value.
    pub host_override: Option<serde_json::Value>,
    /// What the plugin received at creation (`None`: no value, the key is absent).
    pub effective: Option<serde_json::Value>,
    /// Which one won.
    pub source: ConfigSource,
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// The manifest's default.
    Manifest,
    /// The host configuration's override.
    Host,
    /// Neither gives a value.
    Unset,
}

impl ConfigSource {
    /// The name as in snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manifest => "manifest",
            Self::Host => "host",
            Self::Unset => "unset",
        }
    }
}

/// Starts, restarts and where a crashed plugin is in its restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervision {
    /// Workers started (restarts included, reloads not).
    pub starts: u64,
    /// Restarts after a crash.
    pub restarts: u64,
    pub last_start_ms: Option<u64>,
    pub last_reload_ms: Option<u64>,
    /// Restarts within the policy's window so far: the backoff step the next crash takes.
    pub backoff_step: u32,
    /// When the scheduled restart happens (BackingOff only).
    pub next_retry_ms: Option<u64>,
    /// Restarts left in the window before a crash ends in Failed.
    pub restart_budget_left: u32,
}

/// The engine as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub taken_at_ms: u64,
    pub engine_pid: u32,
    pub uptime_ms: u64,
    pub version: String,
    /// Calls per second of the traffic generator, when it runs.
    pub traffic: Option<f64>,
    /// Host totals and the engine's own cost, as of the last sample.
    pub host: HostSnapshot,
    pub plugins: Vec<PluginSnapshot>,
    /// The newest events (at most 50 here).
    pub recent_events: Vec<Event>,
    /// The host policy's `[limits]`: defaults and maxima of every plugin's resources.
    #[serde(default)]
    pub host_limits: HostLimits,
    /// Audit lines that could not be written (a full disk, say) and syncs that failed
    /// since the engine started: 0 while the trail is whole, and without an audit file.
    #[serde(default)]
    pub audit_write_failures: u64,
}

/// The host and the engine process, from `sysinfo` at the sampler's pace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSnapshot {
    /// All CPUs together, 0–100.
    pub cpu_percent: f64,
    pub cpus: usize,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub load_1: f64,
    pub load_5: f64,
    pub load_15: f64,
    /// The engine process: percent of one core, and resident memory. In-process plugins
    /// are part of these numbers.
    pub engine_cpu_percent: f64,
    pub engine_rss_bytes: u64,
}
