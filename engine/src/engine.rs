//! The engine: plugins found in directories, verified, started in confined workers,
//! called, stopped, reloaded and restarted. Front ends send [`Command`]s and read
//! [`Snapshot`]s and [`Event`]s.
//!
//! Lifecycle transitions happen in each plugin's actor ([`crate::supervisor`]); hook calls go
//! straight to the running worker ([`crate::hooks::dispatch`]). This module owns what they
//! share and turns commands into actor messages, resolving dependencies on the way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::audit::{AuditLog, AuditPolicy, AuditWriter};
use crate::events::{EngineTopic, Event, EventKind, EventLog, unix_millis};
use crate::hooks::dispatch::{call, dispatch};
use crate::hooks::traffic::drive_traffic;
use crate::hooks::{HookHandle, HookStatsSnapshot};
use crate::manifest::{HostLimits, IsolationMode, MANIFEST_FILE, Manifest};
use crate::monitor::{ResourceSample, SampleSeries, Sampler};
use crate::policy::Policy;
use crate::rotating::RotatingFile;
use crate::sandbox::Mechanism;
use crate::sandbox::cgroup::{CgroupRoot, EngineScope, remove_stale_scopes};
use crate::snapshot::{
    ConfigSetting, ConfigSource, HostSnapshot, PluginSnapshot, PluginState, Snapshot, Supervision,
};
use crate::supervisor::state_file::{
    Claimed, PersistedState, PluginToggles, StateFileClaim, ToggleDelta,
};
use crate::supervisor::{
    ActorMessage, DiskChange, Lifecycle, Plugin, PluginOverrides, Reply, RestartPolicy,
    WatchPolicy, dependencies, millis, run_actor,
};
use crate::trust::TrustStore;
use crate::watcher::{BundleChange, BundleWatcher};
use crate::worker::{OutputStream, WorkerPolicy};

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directories holding bundle directories.
    pub plugin_dirs: Vec<PathBuf>,
    /// Pinned keys; without one, only `allow_unsigned` hosts can load anything.
    pub trust_store: Option<PathBuf>,
    /// Development only: load bundles that are unsigned or untrusted (still sandboxed).
    pub allow_unsigned: bool,
    pub limits: HostLimits,
    pub worker: WorkerPolicy,
    /// How long a plugin gets to shut down before it is killed.
    pub grace: Duration,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// The engine's log: captured plugin output (what the rate limit let through), one
    /// line each, appended.
    pub log_file: Option<PathBuf>,
    /// The log is rotated past this size (MiB) ...
    pub log_max_mb: u64,
    /// ... keeping this many rotated files.
    pub log_keep: u32,
    /// Every event as a JSON line, appended (the audit trail).
    pub audit_file: Option<PathBuf>,
    /// The audit file is rotated past this size (MiB) ...
    pub audit_max_mb: u64,
    /// ... keeping this many rotated files.
    pub audit_keep: u32,
    /// Single bundle directories to manage besides those found in `plugin_dirs`.
    pub bundles: Vec<PathBuf>,
    /// How crashed plugins are restarted.
    pub restart: RestartPolicy,
    /// Per-plugin overrides (`[plugins.<name>]`), by plugin name.
    pub plugins: BTreeMap<String, PluginOverrides>,
    /// At most this many plugins run at once (`None`: no cap).
    pub max_plugins: Option<usize>,
    /// Memory limit of the parent cgroup all workers share, in MiB (`None`: no budget).
    pub memory_budget_mb: Option<u64>,
    /// Where hook toggles and disabled plugins persist across engine restarts.
    pub state_file: Option<PathBuf>,
    /// Whether bundle directories are watched for changes.
    pub watch: WatchPolicy,
    /// How often workers' resources (and the host's) are sampled.
    pub sample_interval: Duration,
    /// How much resource history is kept per plugin (at least 600 samples).
    pub sample_history: Duration,
    /// What is done about each kind of violation.
    pub policy: Policy,
    /// Runs bundles that ask for in-process isolation sandboxed like every other (they
    /// then need no signer trusted at level `in-process`): what `plugboard call` does, so
    /// that a crash ends the worker, not the command.
    pub sandbox_in_process: bool,
}

impl EngineConfig {
    pub fn new(host_binary: PathBuf) -> Self {
        Self {
            plugin_dirs: Vec::new(),
            trust_store: None,
            allow_unsigned: false,
            limits: HostLimits::default(),
            worker: WorkerPolicy::new(host_binary),
            grace: Duration::from_secs(2),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            log_file: None,
            log_max_mb: 64,
            log_keep: 5,
            audit_file: None,
            audit_max_mb: 64,
            audit_keep: 5,
            bundles: Vec::new(),
            restart: RestartPolicy::default(),
            plugins: BTreeMap::new(),
            max_plugins: None,
            memory_budget_mb: None,
            state_file: None,
            watch: WatchPolicy::default(),
            sample_interval: Duration::from_secs(1),
            sample_history: Duration::from_secs(600),
            policy: Policy::default(),
            sandbox_in_process: false,
        }
    }

    /// How `manifest`'s plugin runs on this engine.
    pub(crate) fn isolation_of(&self, manifest: &Manifest) -> IsolationMode {
        match manifest.isolation.mode {
            IsolationMode::InProcess if self.sandbox_in_process => IsolationMode::Process,
            mode => mode,
        }
    }
}

/// The rates the traffic generator takes, in calls a second (besides 0: off).
pub const MIN_TRAFFIC_RATE: f64 = 0.001;
pub const MAX_TRAFFIC_RATE: f64 = 1_000_000.0;

/// Why the engine could not start or carry out a command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cgroups: {reason}")]
    Cgroups { reason: String },
    #[error("cannot open the {what} {}: {reason}; expected a file it can append to", file.display())]
    File {
        /// Which file: `log_file`, `audit_file`.
        what: &'static str,
        file: PathBuf,
        reason: String,
    },
    #[error("trust store: {reason}")]
    TrustStore { reason: String },
    #[error("cannot read plugin directory {}: {reason}", dir.display())]
    PluginDir { dir: PathBuf, reason: String },
    #[error("no plugin named `{plugin}`")]
    UnknownPlugin { plugin: String },
    #[error("`{plugin}` is {state:?}: {action} needs it {expected}")]
    WrongState {
        plugin: String,
        state: PluginState,
        action: &'static str,
        expected: &'static str,
    },
    #[error("`{plugin}` could not start: {reason}")]
    StartFailed { plugin: String, reason: String },
    #[error("`{plugin}` could not be loaded: {reason}")]
    LoadFailed { plugin: String, reason: String },
    /// A bundle refused for good (a duplicate of a plugin name): it takes no command.
    #[error("`{plugin}` cannot be {action}: {reason}")]
    Refused {
        plugin: String,
        action: &'static str,
        reason: String,
    },
    #[error("`{plugin}` was quarantined by the host's policy: {reason}")]
    Quarantined { plugin: String, reason: String },
    #[error("`{plugin}` has no hook `{hook}`")]
    UnknownHook { plugin: String, hook: String },
    #[error("`{plugin}` is not running")]
    Gone { plugin: String },
    #[error(
        "traffic rate {rate} calls/s: expected 0 (off) or {MIN_TRAFFIC_RATE} to {MAX_TRAFFIC_RATE} calls/s"
    )]
    InvalidTraffic { rate: f64 },
    #[error(
        "`{plugin}` depends on `{dependency}` ({requirement}), but no plugin of that name is known"
    )]
    MissingDependency {
        plugin: String,
        dependency: String,
        requirement: String,
    },
    #[error(
        "`{plugin}` depends on `{dependency}` {requirement}, but `{dependency}` is version {found}"
    )]
    IncompatibleDependency {
        plugin: String,
        dependency: String,
        requirement: String,
        found: String,
    },
    #[error("`{plugin}` depends on `{dependency}`, which cannot run: {reason}")]
    DependencyUnavailable {
        plugin: String,
        dependency: String,
        reason: String,
    },
    #[error("dependency cycle: {cycle}")]
    DependencyCycle { cycle: String },
    #[error("`{plugin}` is needed by running plugins: {}; force the {action} to stop them too", dependents.join(", "))]
    HasDependents {
        plugin: String,
        action: &'static str,
        dependents: Vec<String>,
    },
    #[error("`{plugin}`: reload failed, the old version keeps serving: {reason}")]
    ReloadFailed { plugin: String, reason: String },
    #[error(transparent)]
    StateFile(#[from] crate::supervisor::state_file::StateFileError),
    #[error(
        "{reason}; the change holds in this engine and is written to the state file as soon as it can be"
    )]
    StateNotWritten { reason: String },
}

/// What a front end asks of the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Look for new bundle directories.
    Discover,
    /// Verify a discovered bundle.
    Load {
        plugin: String,
    },
    Start {
        plugin: String,
    },
    /// Stop; refused while running plugins depend on it, unless `force` (which stops those
    /// dependents first).
    Stop {
        plugin: String,
        #[serde(default)]
        force: bool,
    },
    /// Stop and drop the verified library (the bundle is read again at the next start).
    Unload {
        plugin: String,
        #[serde(default)]
        force: bool,
    },
    /// Verify the bundle again; a running plugin's new version starts beside the old one
    /// and takes over once healthy.
    Reload {
        plugin: String,
    },
    /// Allow the plugin to start again (persisted).
    Enable {
        plugin: String,
    },
    /// Stop the plugin and keep it from starting (persisted). Refused while running
    /// plugins depend on it, unless forced, which stops them first.
    Disable {
        plugin: String,
        #[serde(default)]
        force: bool,
    },
    /// Let calls and emits reach this hook of this plugin again (persisted).
    EnableHook {
        plugin: String,
        hook: String,
    },
    /// Refuse calls of this hook of this plugin and skip it in emits (persisted).
    DisableHook {
        plugin: String,
        hook: String,
    },
    /// Let a quarantined plugin be loaded and started again (persisted).
    ClearQuarantine {
        plugin: String,
    },
    /// Call one plugin's hook directly.
    Call {
        plugin: String,
        hook: String,
        payload: Vec<u8>,
    },
    /// Emit a hook to every running subscriber, in priority order.
    Emit {
        hook: String,
        payload: Vec<u8>,
    },
    /// Drive every running plugin's hooks at `rate` calls per second; `None` stops it.
    Traffic {
        rate: Option<f64>,
    },
}

/// How one subscriber's call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallReport {
    pub plugin: String,
    pub hook: String,
    /// `ok`, `error`, `unknown_hook`, `panic`, `invalid_input`, `timeout`, `busy`,
    /// `disabled` or `gone`.
    pub status: String,
    pub reply: String,
    pub duration_us: u64,
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Called { report: CallReport },
    Emitted { reports: Vec<CallReport> },
}

/// What the engine's threads (actors, workers' event sinks, the traffic generator) share.
pub(crate) struct Shared {
    pub config: EngineConfig,
    log: Option<Mutex<RotatingFile>>,
    audit: Option<AuditWriter>,
    /// This engine's cgroup scope; `None` when cgroups cannot be used and the host's
    /// `require` leaves `cgroup` out (workers then run without one, and say so).
    pub scope: Option<EngineScope>,
    /// This engine's claim on its state file, held while it runs.
    _state_claim: Option<StateFileClaim>,
    /// Said when another engine held the state file at start.
    state_file_warning: Option<String>,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    events: Mutex<EventLog>,
    started: Instant,
    traffic: Mutex<Option<(f64, Arc<AtomicBool>)>>,
    /// Serializes the `max_plugins` check with the transition to Starting.
    pub start_gate: Mutex<()>,
    /// The operator's persisted toggles (written through on every change).
    persisted: Mutex<PersistedState>,
    /// Plugins whose toggles could not be written to the state file (a full disk): as
    /// they should be. They hold in this engine — read over what the file says — and the
    /// sampler writes them again until they are on disk, so a quarantine on a full disk
    /// still survives the next restart once space is free.
    unsaved: Mutex<BTreeMap<String, ToggleDelta>>,
    /// What the trust store's directory held at the last look (names, sizes, times):
    /// when it changes, every plugin that is up is checked against the store again.
    trust_seen: Mutex<Option<Vec<(std::ffi::OsString, u64, SystemTime)>>>,
    /// Host totals, refreshed by the sampler.
    pub host: Mutex<HostSnapshot>,
    /// Workers stopped or replaced so far: after each, the sampler gives the free pages
    /// their state left in the heap back to the kernel.
    pub workers_retired: AtomicU64,
    /// Set once the engine shuts down: a worker's start no longer waits for it to be ready.
    pub shutting_down: AtomicBool,
}

impl Shared {
    /// The trust store as it is on disk now (`None` without one): read for every
    /// verification, so that `plugboard trust revoke` or a newly pinned key counts from the
    /// next start, restart or reload without restarting the engine. A few small files.
    pub fn trust_store(&self) -> Option<Result<TrustStore, crate::trust::TrustError>> {
        self.config.trust_store.as_deref().map(TrustStore::open)
    }

    /// Changes one plugin's persisted toggles. The file is read again under its lock first,
    /// so a change made from a shell (`plugboard quarantine clear`) is not overwritten.
    ///
    /// When the file cannot be written, the change holds in this engine all the same and
    /// is written by [`Self::write_unsaved_state`] later; the error says so.
    pub fn persist(
        &self,
        name: &str,
        change: impl Fn(&mut PluginToggles),
    ) -> Result<(), EngineError> {
        let mut persisted = self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(file) = &self.config.state_file else {
            change(persisted.plugins.entry(name.to_owned()).or_default());
            return Ok(());
        };
        let mut unsaved = self.unsaved.lock().unwrap_or_else(PoisonError::into_inner);
        let written = PersistedState::update(file, |state| {
            // Earlier changes that did not reach the disk go with this one.
            for (plugin, delta) in unsaved.iter() {
                delta.apply(state.plugins.entry(plugin.clone()).or_default());
            }
            change(state.plugins.entry(name.to_owned()).or_default());
        });
        match written {
            Ok(state) => {
                *persisted = state;
                unsaved.clear();
                Ok(())
            }
            Err(err) => {
                // Kept as what it changed, replayed on the file as it will be then.
                let mut before = persisted.plugins.get(name).cloned().unwrap_or_default();
                if let Some(earlier) = unsaved.get(name) {
                    earlier.apply(&mut before);
                }
                let mut after = before.clone();
                change(&mut after);
                unsaved
                    .entry(name.to_owned())
                    .or_default()
                    .then(ToggleDelta::between(&before, &after));
                Err(EngineError::StateNotWritten {
                    reason: err.to_string(),
                })
            }
        }
    }

    /// Writes the toggles a failed [`Self::persist`] left in memory, if any: said once
    /// they are on disk. Called by the sampler, and a last time at shutdown. Whether
    /// anything is still not on disk.
    pub fn write_unsaved_state(&self) -> bool {
        let Some(file) = &self.config.state_file else {
            return false;
        };
        // The sampler asks every tick; nearly always there is nothing (and nothing to
        // take the toggles' lock for).
        if self
            .unsaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            return false;
        }
        let mut persisted = self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut unsaved = self.unsaved.lock().unwrap_or_else(PoisonError::into_inner);
        if unsaved.is_empty() {
            return false;
        }
        let written = PersistedState::update(file, |state| {
            for (plugin, delta) in unsaved.iter() {
                delta.apply(state.plugins.entry(plugin.clone()).or_default());
            }
        });
        if let Ok(state) = written {
            *persisted = state;
            let plugins: Vec<String> = std::mem::take(&mut *unsaved).into_keys().collect();
            drop(unsaved);
            drop(persisted);
            self.event(
                None,
                EventKind::engine_note(
                    EngineTopic::StateFile,
                    format!(
                        "the state file {} is written again: what changed for {} is on disk",
                        file.display(),
                        plugins.join(", ")
                    ),
                ),
            );
            return false;
        }
        true
    }

    /// Looks at the trust store's directory (a few small files): when it changed since the
    /// last look — a key revoked, unpinned, its level changed — every plugin is asked to
    /// check what it runs against the store again. Called by the sampler; the first look
    /// only remembers.
    pub fn look_at_trust_store(&self) {
        let Some(dir) = &self.config.trust_store else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        // Followed as the store reads them (a `trust.toml` that is a link to a file kept
        // elsewhere), and the trust list where `trust.toml` puts it.
        let seen = |path: &std::path::Path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((
                path.as_os_str().to_owned(),
                meta.len(),
                meta.modified().ok()?,
            ))
        };
        let mut now: Vec<(std::ffi::OsString, u64, SystemTime)> = entries
            .flatten()
            .filter(|entry| entry.file_name() != ".trust.lock")
            .filter_map(|entry| seen(&entry.path()))
            .collect();
        let trust_list = std::fs::read_to_string(dir.join(crate::trust::TRUST_CONFIG_FILE))
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .and_then(|table| Some(dir.join(table.get("trust_list")?.get("file")?.as_str()?)));
        now.extend(trust_list.as_deref().and_then(seen));
        now.sort();
        let mut seen = self
            .trust_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = seen.as_ref().is_some_and(|before| *before != now);
        *seen = Some(now);
        drop(seen);
        if changed {
            for plugin in self.all_plugins() {
                let _ = plugin
                    .inbox
                    .send(crate::supervisor::ActorMessage::TrustChanged);
            }
        }
    }

    /// The persisted toggles of one plugin, read afresh from the state file.
    pub fn persisted(&self, name: &str) -> PluginToggles {
        let mut persisted = self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = self
            .config
            .state_file
            .as_ref()
            .and_then(|file| PersistedState::load(file).ok())
        {
            *persisted = state;
        }
        // What this engine could not write yet holds over the file.
        let mut toggles = persisted.plugins.get(name).cloned().unwrap_or_default();
        if let Some(delta) = self
            .unsaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            delta.apply(&mut toggles);
        }
        toggles
    }

    pub fn event(&self, plugin: Option<&str>, kind: EventKind) {
        let durable = matches!(kind, EventKind::Violation { .. });
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let event = events.push(plugin, kind);
        // Handed to the writer under the ring's lock, so lines are in `seq` order; waited
        // for without it. Written before this returns, so it survives an engine crash; a
        // violation is on disk (fsync) before its action is carried out.
        let written = self
            .audit
            .as_ref()
            .and_then(|audit| audit.submit(event, durable));
        drop(events);
        if let Some(written) = written {
            let _ = written.recv();
        }
    }

    pub fn log_output(&self, plugin: &str, stream: OutputStream, line: &str) {
        if let Some(log) = &self.log {
            let stream = match stream {
                OutputStream::Stdout => "stdout".to_owned(),
                OutputStream::Stderr => "stderr".to_owned(),
                OutputStream::Log { level } => {
                    format!("log:{}", plugboard_sdk::LogLevel::from_code(level).name())
                }
            };
            // One line per line the plugin wrote or logged: a newline inside a message
            // could otherwise start a line that passes for another plugin's.
            let line = format!(
                "{} {plugin} {stream} {}\n",
                unix_millis(SystemTime::now()),
                crate::text::one_line(line)
            );
            let _ = log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append_line(line.as_bytes(), false);
        }
    }

    /// Every known plugin, in name order (a copy: no lock is held afterwards).
    pub fn all_plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub fn plugin(&self, name: &str) -> Result<Arc<Plugin>, EngineError> {
        self.plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPlugin {
                plugin: name.to_owned(),
            })
    }
}

/// The engine. Dropping it stops every plugin.
pub struct Engine {
    shared: Arc<Shared>,
    /// The resource sampler thread, stopped at shutdown.
    sampler: Mutex<Option<Sampler>>,
    /// Watches the bundle directories while the engine runs (when the host wants it).
    watcher: Mutex<Option<BundleWatcher>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Sets up the engine: removes cgroups left by dead engines, creates this engine's
    /// cgroup scope, opens the trust store and discovers the bundles.
    pub fn start(mut config: EngineConfig) -> Result<Engine, EngineError> {
        make_bundle_paths_absolute(&mut config);
        let cgroups_required = config.worker.require.contains(&Mechanism::Cgroup);
        let root = CgroupRoot::detect(&config.cgroup_root).map_err(|err| err.to_string());
        if let (Err(reason), true) = (&root, cgroups_required) {
            return Err(EngineError::Cgroups {
                reason: reason.clone(),
            });
        }
        let stale = root.as_ref().map(remove_stale_scopes).unwrap_or_default();
        // Read again for every verification (a key revoked or pinned while the engine runs
        // counts from the next start, restart or reload); a store that cannot be read
        // refuses the engine's start here rather than every plugin's later.
        if let Some(dir) = &config.trust_store {
            TrustStore::open(dir).map_err(|err| EngineError::TrustStore {
                reason: err.to_string(),
            })?;
        }
        let (log, audit) = open_log_and_audit(&config)?;
        let persisted = match &config.state_file {
            Some(file) => PersistedState::load(file)?,
            None => PersistedState::default(),
        };
        let (state_claim, state_file_warning) = claim_state_file(config.state_file.as_deref());
        // Created once everything that can refuse the configuration has accepted it, so a
        // refused start leaves no scope behind.
        let (scope, without_cgroups) =
            match root.map(|root| create_scope(&root, config.memory_budget_mb)) {
                Ok(Ok(scope)) => (Some(scope), None),
                // Cgroups work but the budget the host asked for cannot be set: refused, required
                // or not (running without cgroups would drop every plugin's limits too).
                Ok(Err(ScopeError::Budget(reason))) => return Err(EngineError::Cgroups { reason }),
                Ok(Err(ScopeError::Scope(reason))) | Err(reason) if cgroups_required => {
                    return Err(EngineError::Cgroups { reason });
                }
                Ok(Err(ScopeError::Scope(reason))) | Err(reason) => (None, Some(reason)),
            };
        let shared = Arc::new(Shared {
            config,
            log,
            audit,
            scope,
            plugins: RwLock::new(BTreeMap::new()),
            events: Mutex::new(EventLog::default()),
            started: Instant::now(),
            traffic: Mutex::new(None),
            start_gate: Mutex::new(()),
            persisted: Mutex::new(persisted),
            unsaved: Mutex::new(BTreeMap::new()),
            trust_seen: Mutex::new(None),
            host: Mutex::new(HostSnapshot::default()),
            workers_retired: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            _state_claim: state_claim,
            state_file_warning,
        });
        say_what_the_start_found(&shared, stale, without_cgroups);
        // The store as plugins will be verified against: a change from here on is seen.
        shared.look_at_trust_store();
        let sampler = Sampler::start(&shared);
        let engine = Engine {
            shared,
            sampler: Mutex::new(Some(sampler)),
            watcher: Mutex::new(None),
        };
        engine.discover()?;
        engine.watch();
        // A bundle that arrived between the first listing and the watcher's own is in
        // neither the engine nor the watcher's events: a second look registers it. (What
        // went away meanwhile is the watcher's to report, not a reason not to start.)
        if let Err(err) = engine.discover() {
            engine.shared.event(
                None,
                EventKind::engine_warning(
                    EngineTopic::Discovery,
                    format!("discovery at start: {err}"),
                ),
            );
        }
        for message in engine.unmatched_plugin_sections() {
            engine.shared.event(
                None,
                EventKind::engine_warning(EngineTopic::Config, message),
            );
        }
        Ok(engine)
    }

    /// Set when another engine held this engine's state file as it started (also said in
    /// an `engine` event).
    pub fn state_file_warning(&self) -> Option<&str> {
        self.shared.state_file_warning.as_deref()
    }

    /// A sentence for each `[plugins.<name>]` section of the host configuration that no
    /// bundle found provides: a misspelt name would otherwise drop its limits, `enabled`
    /// or `audit` without a word. (A bundle deployed later may still provide it.)
    pub fn unmatched_plugin_sections(&self) -> Vec<String> {
        let listed = self.plugins();
        self.shared
            .config
            .plugins
            .keys()
            .filter(|name| !listed.contains(name))
            .map(|name| {
                format!(
                    "the host configuration's `[plugins.{name}]` applies to no bundle found: \
                     no plugin is named `{name}` (found: {})",
                    if listed.is_empty() {
                        "none".to_owned()
                    } else {
                        listed.join(", ")
                    }
                )
            })
            .collect()
    }

    /// Starts the bundle watcher: new bundles are discovered, changed and removed ones
    /// marked (and, when the host asks for it, changed running ones reloaded). A watcher
    /// that cannot start is reported, not fatal: the engine runs without it.
    fn watch(&self) {
        let policy = &self.shared.config.watch;
        if !policy.enabled {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        let started = BundleWatcher::start(
            &self.shared.config.plugin_dirs,
            &self.shared.config.bundles,
            Duration::from_millis(policy.debounce_ms),
            move |changes| {
                if let Some(shared) = shared.upgrade() {
                    // Removals first: a bundle moved within one quiet window (`mv hello-1.0
                    // hello-1.1`) is then followed at once, not first listed as a duplicate.
                    let (removed, others): (Vec<_>, Vec<_>) = changes
                        .into_iter()
                        .partition(|change| matches!(change, BundleChange::Removed(_)));
                    for change in removed.iter().chain(&others) {
                        on_bundle_change(&shared, change);
                    }
                }
            },
        );
        match started {
            Ok(watcher) => {
                *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
            }
            Err(err) => self.shared.event(
                None,
                EventKind::engine_warning(
                    EngineTopic::Discovery,
                    format!("bundle directories are not watched: {err}"),
                ),
            ),
        }
    }

    /// Names of the known plugins.
    pub fn plugins(&self) -> Vec<String> {
        self.shared
            .plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Registers bundle directories not known yet: those in the plugin directories (but
    /// hidden ones: a deploy's temporary copy, `.hello.tmp`, is not a plugin) and the single
    /// bundles of the configuration. A plugin directory that cannot be read or a single
    /// bundle that is gone does not keep the others from being registered; the first such
    /// problem is the error.
    fn discover(&self) -> Result<(), EngineError> {
        let mut found = Vec::new();
        let mut problem = None;
        for dir in &self.shared.config.plugin_dirs {
            // A bundle given where a directory of bundles is expected (`--plugins
            // plugins/hello`) would otherwise find nothing and run nothing, silently.
            if dir.join(MANIFEST_FILE).is_file() {
                problem.get_or_insert(EngineError::PluginDir {
                    dir: dir.clone(),
                    reason: format!(
                        "it is a bundle itself (it holds {MANIFEST_FILE}); expected a \
                         directory of bundle directories: give its parent, or list it as a \
                         single bundle (`bundles` in the host configuration)"
                    ),
                });
                continue;
            }
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(err) => {
                    problem.get_or_insert(EngineError::PluginDir {
                        dir: dir.clone(),
                        reason: err.to_string(),
                    });
                    continue;
                }
            };
            let mut bundles: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| !is_hidden(path) && path.join(MANIFEST_FILE).is_file())
                .collect();
            bundles.sort();
            found.extend(bundles);
        }
        for bundle in &self.shared.config.bundles {
            if bundle.join(MANIFEST_FILE).is_file() {
                found.push(bundle.clone());
            } else {
                problem.get_or_insert(EngineError::PluginDir {
                    dir: bundle.clone(),
                    reason: format!("not a bundle directory: it has no {MANIFEST_FILE}"),
                });
            }
        }
        // Registered ones are skipped before their manifests are read again.
        {
            let plugins = self
                .shared
                .plugins
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            found.retain(|dir| !plugins.values().any(|plugin| plugin.dir() == *dir));
        }
        // Where two bundles claim one name, the one in a directory of that name gets it,
        // whatever the directory order (`plugins/hello` is `hello`, and a copy beside it,
        // broken or not, is the duplicate); a bundle whose manifest does not read, named
        // after its directory, comes last, so it never takes a real plugin's name.
        let limits = &self.shared.config.limits;
        found.sort_by_cached_key(|dir| match bundle_name(dir, limits) {
            Some(name) if dir.file_name().and_then(|own| own.to_str()) == Some(&name) => 0,
            Some(_) => 1,
            None => 2,
        });
        for bundle in &found {
            add_bundle(&self.shared, bundle);
        }
        problem.map_or(Ok(()), Err)
    }

    /// Carries out one command. Blocks until it is done: a front end that must stay
    /// responsive runs this on a thread of its own.
    pub fn execute(&self, command: Command) -> Result<Outcome, EngineError> {
        let shared = &self.shared;
        match command {
            Command::Discover => self.discover().map(|()| Outcome::Done),
            Command::Load { plugin } => shared
                .plugin(&plugin)?
                .ask(ActorMessage::Load)
                .map(|()| Outcome::Done),
            Command::Start { plugin } => self.start_plugin(&plugin).map(|()| Outcome::Done),
            Command::Stop { plugin, force } => self
                .stop_plugin(&plugin, force, "stop", ActorMessage::Stop)
                .map(|()| Outcome::Done),
            Command::Unload { plugin, force } => self
                .stop_plugin(&plugin, force, "unload", ActorMessage::Unload)
                .map(|()| Outcome::Done),
            Command::Reload { plugin } => shared
                .plugin(&plugin)?
                .ask(ActorMessage::Reload)
                .map(|()| Outcome::Done),
            Command::Enable { plugin } => self
                .set_enabled(&plugin, true, false)
                .map(|()| Outcome::Done),
            Command::Disable { plugin, force } => self
                .set_enabled(&plugin, false, force)
                .map(|()| Outcome::Done),
            Command::EnableHook { plugin, hook } => self
                .set_hook_enabled(&plugin, &hook, true)
                .map(|()| Outcome::Done),
            Command::DisableHook { plugin, hook } => self
                .set_hook_enabled(&plugin, &hook, false)
                .map(|()| Outcome::Done),
            Command::ClearQuarantine { plugin } => {
                shared.plugin(&plugin)?.ask(ActorMessage::ClearQuarantine)?;
                self.shared
                    .persist(&plugin, |toggles| toggles.quarantined = None)
                    .map(|()| Outcome::Done)
            }
            Command::Call {
                plugin,
                hook,
                payload,
            } => {
                let plugin = shared.plugin(&plugin)?;
                call(&plugin, &hook, &payload, 0).map(|report| Outcome::Called { report })
            }
            Command::Emit { hook, payload } => Ok(Outcome::Emitted {
                reports: self.emit(&hook, &payload),
            }),
            Command::Traffic { rate } => {
                let valid = |rate: &f64| {
                    *rate == 0.0 || (MIN_TRAFFIC_RATE..=MAX_TRAFFIC_RATE).contains(rate)
                };
                if let Some(rate) = rate.filter(|rate| !valid(rate)) {
                    return Err(EngineError::InvalidTraffic { rate });
                }
                self.set_traffic(rate);
                Ok(Outcome::Done)
            }
        }
    }

    /// Starts the plugin's dependencies (in order) and then the plugin. A start refused
    /// before it began (a dependency missing or down, `max_plugins`, disabled) leaves the
    /// plugin as it was, with no reason of its own: an event says why.
    fn start_plugin(&self, name: &str) -> Result<(), EngineError> {
        let started = self.start_in_order(name);
        if let (Err(err), Ok(plugin)) = (&started, self.shared.plugin(name)) {
            let state = plugin.lifecycle().state;
            // A start that failed on its way (Failed, Rejected) has said why already; one of
            // a plugin kept from starting on purpose (disabled, quarantined) is no news.
            if !matches!(
                state,
                PluginState::Failed
                    | PluginState::Rejected
                    | PluginState::Disabled
                    | PluginState::Quarantined
            ) {
                self.shared.event(
                    Some(name),
                    EventKind::engine_warning(
                        EngineTopic::StartRefused,
                        format!("start refused: {err}"),
                    ),
                );
            }
        }
        started
    }

    fn start_in_order(&self, name: &str) -> Result<(), EngineError> {
        let order = dependencies::start_order(&self.shared, name).inspect_err(|refusal| {
            // A missing, incompatible or circular dependency: the plugin says why. (A
            // bundle that fails its verification on the way says so itself.)
            let about_dependencies = matches!(
                refusal,
                EngineError::MissingDependency { .. }
                    | EngineError::IncompatibleDependency { .. }
                    | EngineError::DependencyCycle { .. }
                    | EngineError::DependencyUnavailable { .. }
            );
            if about_dependencies && let Ok(plugin) = self.shared.plugin(name) {
                crate::supervisor::say_not_started(&mut plugin.lifecycle(), refusal);
            }
        })?;
        for plugin in order {
            let result = plugin.ask(ActorMessage::Start);
            match result {
                Err(err) if plugin.name != name => {
                    let refusal = EngineError::DependencyUnavailable {
                        plugin: name.to_owned(),
                        dependency: plugin.name.clone(),
                        reason: err.to_string(),
                    };
                    if let Ok(dependent) = self.shared.plugin(name) {
                        crate::supervisor::say_not_started(&mut dependent.lifecycle(), &refusal);
                    }
                    return Err(refusal);
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Stops (or unloads) a plugin; running dependents refuse it unless `force`, which
    /// stops them first.
    fn stop_plugin(
        &self,
        name: &str,
        force: bool,
        action: &'static str,
        message: fn(Reply) -> ActorMessage,
    ) -> Result<(), EngineError> {
        let plugin = self.shared.plugin(name)?;
        self.stop_dependents(name, force, action)?;
        plugin.ask(message)?;
        // A dependent that started between the look above and this stop runs on without
        // it: never silently.
        let why = if action == "unload" {
            "unloaded"
        } else {
            "stopped"
        };
        crate::supervisor::say_dependents_left_running(&self.shared, &plugin, why);
        Ok(())
    }

    /// Before `action` takes `name` down: refused while running plugins depend on it,
    /// unless forced, which stops them first (and says so).
    fn stop_dependents(
        &self,
        name: &str,
        force: bool,
        action: &'static str,
    ) -> Result<(), EngineError> {
        let dependents = dependencies::running_dependents(&self.shared, name);
        if dependents.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = dependents
            .iter()
            .map(|dependent| dependent.name.clone())
            .collect();
        if !force {
            return Err(EngineError::HasDependents {
                plugin: name.to_owned(),
                action,
                dependents: names,
            });
        }
        self.shared.event(
            Some(name),
            EventKind::engine_note(
                EngineTopic::Dependencies,
                format!(
                    "forced {action}: stopping its dependents first: {}",
                    names.join(", ")
                ),
            ),
        );
        for dependent in dependents {
            dependent.ask(ActorMessage::Stop)?;
        }
        Ok(())
    }

    fn set_enabled(&self, name: &str, enabled: bool, force: bool) -> Result<(), EngineError> {
        let plugin = self.shared.plugin(name)?;
        if !enabled {
            self.stop_dependents(name, force, "disable")?;
        }
        let _order = plugin
            .toggle_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        plugin.ask(|reply| ActorMessage::SetEnabled(enabled, reply))?;
        self.shared
            .persist(name, |toggles| toggles.enabled = Some(enabled))
    }

    /// The plugin named `name`, if its manifest subscribes to `hook` (any hook while it is
    /// not verified yet).
    fn plugin_with_hook(&self, name: &str, hook: &str) -> Result<Arc<Plugin>, EngineError> {
        let plugin = self.shared.plugin(name)?;
        let known = plugin
            .lifecycle()
            .manifest
            .as_ref()
            .is_none_or(|manifest| manifest.hooks.contains_key(hook));
        if !known {
            return Err(EngineError::UnknownHook {
                plugin: name.to_owned(),
                hook: hook.to_owned(),
            });
        }
        Ok(plugin)
    }

    fn set_hook_enabled(&self, name: &str, hook: &str, enabled: bool) -> Result<(), EngineError> {
        let plugin = self.plugin_with_hook(name, hook)?;
        // A refused duplicate never runs: a toggle would only be saved under its path.
        if let Some(reason) = plugin.lifecycle().blocked.clone() {
            return Err(EngineError::Refused {
                plugin: name.to_owned(),
                action: "given hook toggles",
                reason,
            });
        }
        let _order = plugin
            .toggle_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = plugin.set_hook_enabled(hook, enabled);
        if changed {
            self.shared.event(
                Some(name),
                EventKind::HookToggled {
                    hook: hook.to_owned(),
                    enabled,
                },
            );
        }
        self.shared.persist(name, |toggles| {
            if enabled {
                toggles.disabled_hooks.remove(hook);
            } else {
                toggles.disabled_hooks.insert(hook.to_owned());
            }
        })
    }

    /// `hook` of `plugin`, resolved for repeated calls from the embedding host's own code
    /// (see [`HookHandle`]): the same call as [`Command::Call`] with the same statistics,
    /// without its per-call lookups and report. The hook must be one the plugin's
    /// manifest subscribes to (any hook while it is not verified yet).
    pub fn hook_handle(&self, plugin: &str, hook: &str) -> Result<HookHandle, EngineError> {
        let plugin = self.plugin_with_hook(plugin, hook)?;
        Ok(HookHandle::new(plugin, hook.to_owned()))
    }

    /// What this engine's trust store says of a bundle read from disk, as a load would
    /// check its signature: the signer and its level, or why it does not verify; `None`
    /// without a trust store. For a front end that shows what a reload would do.
    pub fn verify_bundle(
        &self,
        bundle: &crate::bundle::Bundle,
    ) -> Option<Result<crate::trust::Verified, crate::trust::TrustError>> {
        self.shared
            .trust_store()
            .map(|store| store.and_then(|store| bundle.verify(&store)))
    }

    /// Whether a reload of `plugin` to `bundle` would be refused for its dependencies, as
    /// the reload itself checks them: a cycle it would close, a dependency not running in
    /// a version it accepts, a running dependent that does not accept its version. Only a
    /// running plugin's reload checks them (one that is down only verifies the bundle
    /// again; its next start checks). For a front end that shows what a reload would do.
    pub fn check_reload_dependencies(
        &self,
        plugin: &str,
        bundle: &crate::bundle::Bundle,
    ) -> Result<(), EngineError> {
        let state = self.shared.plugin(plugin)?.lifecycle().state;
        if !matches!(state, PluginState::Running | PluginState::Degraded) {
            return Ok(());
        }
        dependencies::check_reload(&self.shared, plugin, bundle.manifest())
    }

    /// Calls every running subscriber of `hook`, in priority order, each with its timeout.
    pub fn emit(&self, hook: &str, payload: &[u8]) -> Vec<CallReport> {
        dispatch(&self.shared, hook, payload, 0)
    }

    fn set_traffic(&self, rate: Option<f64>) {
        let mut traffic = self
            .shared
            .traffic
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was_on = traffic
            .take()
            .map(|(_, running)| running.store(false, Ordering::SeqCst))
            .is_some();
        let Some(rate) = rate.filter(|rate| *rate > 0.0) else {
            if !was_on {
                return;
            }
            self.shared.event(
                None,
                EventKind::engine_note(EngineTopic::Traffic, "traffic off".to_owned()),
            );
            return;
        };
        let running = Arc::new(AtomicBool::new(true));
        *traffic = Some((rate, Arc::clone(&running)));
        // Said under the lock: commands from several threads are said in the order they
        // took effect, so the last one said is the rate that runs.
        self.shared.event(
            None,
            EventKind::engine_note(EngineTopic::Traffic, format!("traffic on: {rate} calls/s")),
        );
        drop(traffic);
        let shared = Arc::clone(&self.shared);
        let _ = std::thread::Builder::new()
            .name("pb-traffic".to_owned())
            .spawn(move || drive_traffic(&shared, rate, &running));
    }

    /// The engine as of now.
    pub fn snapshot(&self) -> Snapshot {
        let plugins = self.shared.all_plugins();
        let events = self
            .shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recent();
        let recent_events = events[events.len().saturating_sub(50)..].to_vec();
        Snapshot {
            taken_at_ms: unix_millis(SystemTime::now()),
            engine_pid: std::process::id(),
            uptime_ms: u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            version: crate::HOST_VERSION.to_owned(),
            traffic: self
                .shared
                .traffic
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|(rate, _)| *rate),
            host: *self
                .shared
                .host
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            plugins: plugins
                .iter()
                .map(|plugin| plugin_snapshot(&self.shared, plugin))
                .collect(),
            recent_events,
            host_limits: self.shared.config.limits.clone(),
            audit_write_failures: self.shared.audit.as_ref().map_or(0, AuditWriter::failures),
        }
    }

    /// A plugin's resource samples, oldest first (about ten minutes at the default pace):
    /// what charts draw.
    pub fn resource_history(&self, plugin: &str) -> Result<Vec<ResourceSample>, EngineError> {
        Ok(self
            .shared
            .plugin(plugin)?
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .history())
    }

    /// Every output line the engine keeps of `plugin` (a snapshot carries the newest 20),
    /// oldest first: for a front end showing one plugin's log in full.
    pub fn plugin_output(
        &self,
        plugin: &str,
    ) -> Result<Vec<crate::snapshot::OutputLine>, EngineError> {
        Ok(self
            .shared
            .plugin(plugin)?
            .output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .iter()
            .cloned()
            .collect())
    }

    /// Events as they happen. At most [`crate::events::SUBSCRIBER_QUEUE`] wait unread;
    /// a subscriber that falls further behind misses events (a gap in `seq`) and can read
    /// what the ring still holds with [`Engine::recent_events`].
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .subscribe()
    }

    /// Every event still in the ring.
    pub fn recent_events(&self) -> Vec<Event> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recent()
    }

    /// Stops every plugin (gracefully, then by force) and removes the engine's cgroups.
    pub fn shutdown(&self) {
        drop(
            self.watcher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.set_traffic(None);
        drop(
            self.sampler
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        // Set under the plugins lock: a discovery racing this registers nothing more, so
        // every actor is in the list taken next.
        {
            let _plugins = self
                .shared
                .plugins
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.shutting_down.store(true, Ordering::SeqCst);
        }
        let plugins = self.shared.all_plugins();
        // A start waiting for a slow `create` (up to its 10 s deadline) would hold its
        // actor, and this, that long: it is cancelled (see `await_start`).
        for plugin in &plugins {
            if let Some(start) = plugin
                .starting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
            {
                start.cancel();
            }
        }
        // Ask every actor at once, so plugins stop in parallel, then wait for them all.
        let answers: Vec<_> = plugins
            .iter()
            .filter_map(|plugin| {
                let (reply, answer) = mpsc::channel();
                plugin
                    .inbox
                    .send(ActorMessage::Shutdown(reply))
                    .ok()
                    .map(|()| answer)
            })
            .collect();
        for answer in answers {
            let _ = answer.recv();
        }
        for plugin in &plugins {
            let _ = plugin.inbox.send(ActorMessage::Exit);
            if let Some(actor) = plugin
                .actor
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                let _ = actor.join();
            }
        }
        if let Some(scope) = &self.shared.scope {
            let _ = scope.remove();
        }
        // A last try for what a full disk kept from the state file; what still cannot be
        // written is said (and lost with this engine).
        if self.shared.write_unsaved_state() {
            let plugins: Vec<String> = self
                .shared
                .unsaved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            self.shared.event(
                None,
                EventKind::engine_warning(EngineTopic::StateFile, format!(
                        "the state file cannot be written: what changed for {} (a quarantine, a toggle) is lost with this engine",
                        plugins.join(", ")
                    )),
            );
        }
        if let Some(audit) = &self.shared.audit {
            audit.close();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the engine's start found that an admin should hear of: a state file another engine
/// uses, stale cgroups removed or left, cgroups it cannot use.
fn say_what_the_start_found(
    shared: &Shared,
    stale: crate::sandbox::cgroup::StaleScopes,
    without_cgroups: Option<String>,
) {
    if let Some(reason) = without_cgroups {
        shared.event(
            None,
            EventKind::engine_warning(
                EngineTopic::Cgroup,
                format!(
                    "cgroups cannot be used ({reason}); `cgroup` is not required, so plugins run without one: no memory, CPU or pids limit, no resource samples"
                ),
            ),
        );
    }
    if let Some(message) = shared.state_file_warning.clone() {
        shared.event(
            None,
            EventKind::engine_warning(EngineTopic::StateFile, message),
        );
    }
    for name in stale.removed {
        shared.event(
            None,
            EventKind::engine_note(
                EngineTopic::Cgroup,
                format!("removed stale cgroup {name} of an engine that is gone"),
            ),
        );
    }
    for error in stale.left {
        shared.event(
            None,
            EventKind::engine_warning(EngineTopic::Cgroup, format!(
                    "a stale cgroup of an engine that is gone could not be removed (tried again at the next start): {error}"
                )),
        );
    }
}

/// What the watcher saw, handed to the plugin's actor (or, for a new bundle, discovered).
/// Where a plugin's bundle is, and whether it is gone, change here at once, so that the
/// next change is judged against them; the marks snapshots show and the events follow in
/// the actor, in order with its other work.
fn on_bundle_change(shared: &Arc<Shared>, change: &BundleChange) {
    let dir = change.path();
    let known = shared
        .all_plugins()
        .into_iter()
        .find(|plugin| plugin.dir() == dir);
    let Some(plugin) = known else {
        // A hidden directory (a deploy's temporary copy) is no bundle of its own: it
        // becomes one when renamed into place. A changed one nothing lists (a plugin there
        // moved on while its manifest was briefly gone) is registered as a new one.
        let hidden = is_hidden(dir) && !shared.config.bundles.iter().any(|single| single == dir);
        if !hidden && !matches!(change, BundleChange::Removed(_)) {
            add_bundle(shared, dir);
        }
        return;
    };
    let message = match change {
        BundleChange::Added(_) => {
            plugin.set_bundle_gone(false);
            DiskChange::Restored(dir.to_owned())
        }
        BundleChange::Changed(_) => {
            plugin.set_bundle_gone(false);
            DiskChange::Changed(dir.to_owned())
        }
        // A refused duplicate that is gone is forgotten: it never ran.
        BundleChange::Removed(_) if plugin.duplicate_of.is_some() => {
            shared.event(
                Some(&plugin.name),
                EventKind::BundleRemoved {
                    dir: dir.display().to_string(),
                },
            );
            forget_duplicate(shared, &plugin);
            return;
        }
        BundleChange::Removed(_) => {
            plugin.set_bundle_gone(true);
            DiskChange::Removed(dir.to_owned())
        }
    };
    let removed = matches!(message, DiskChange::Removed(_));
    let _ = plugin.inbox.send(ActorMessage::Disk(message));
    if removed {
        take_over_duplicate(shared, &plugin);
    }
}

/// Whether `dir` is called `name`: the directory discovery gives a plugin's name to.
fn dir_is_named(dir: &Path, name: &str) -> bool {
    dir.file_name().and_then(|own| own.to_str()) == Some(name)
}

/// Points `plugin` at the bundle in `to` and tells its actor.
fn move_plugin(plugin: &Plugin, to: &Path) -> PathBuf {
    let from = plugin.move_to(to.to_owned());
    let _ = plugin.inbox.send(ActorMessage::Disk(DiskChange::Moved {
        from: from.clone(),
        to: to.to_owned(),
    }));
    from
}

/// The bundle providing `plugin` is gone: a duplicate of it still on disk (refused while
/// the plugin held the name) provides it now, as if the bundle had moved there — of
/// several, the one in a directory of the plugin's name, as discovery would choose.
fn take_over_duplicate(shared: &Arc<Shared>, plugin: &Arc<Plugin>) {
    let name = plugin.name.as_str();
    let mut candidates: Vec<Arc<Plugin>> = shared
        .all_plugins()
        .into_iter()
        .filter(|candidate| {
            candidate.duplicate_of.as_deref() == Some(name)
                && bundle_name(&candidate.dir(), &shared.config.limits).as_deref() == Some(name)
        })
        .collect();
    candidates.sort_by_key(|candidate| !dir_is_named(&candidate.dir(), name));
    // Under one lock, so that no discovery sees the duplicate's directory unlisted.
    let successor = {
        let mut plugins = shared
            .plugins
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !plugin.bundle_gone() {
            return; // back on disk meanwhile
        }
        let successor = candidates
            .into_iter()
            .find(|candidate| unregister(&mut plugins, candidate));
        if let Some(successor) = &successor {
            plugin.set_bundle_gone(false);
            move_plugin(plugin, &successor.dir());
        }
        successor
    };
    if let Some(successor) = successor {
        // The remaining duplicates name their new holder first: ending an actor waits for
        // what it is doing.
        renew_duplicate_reasons(shared, plugin);
        end_actor(&successor);
    }
}

/// Drops a refused duplicate's entry and ends its actor. It never ran (it is refused at
/// every start), so there is nothing to stop.
fn forget_duplicate(shared: &Shared, duplicate: &Arc<Plugin>) {
    unregister(
        &mut shared
            .plugins
            .write()
            .unwrap_or_else(PoisonError::into_inner),
        duplicate,
    );
    end_actor(duplicate);
}

/// Removes `plugin`'s entry, if the map still holds this very plugin under its name.
fn unregister(plugins: &mut BTreeMap<String, Arc<Plugin>>, plugin: &Arc<Plugin>) -> bool {
    let listed = plugins
        .get(&plugin.name)
        .is_some_and(|entry| Arc::ptr_eq(entry, plugin));
    if listed {
        plugins.remove(&plugin.name);
    }
    listed
}

/// Ends the actor of a plugin no longer listed (no lock held: it may be finishing a
/// message, which needs the plugins map).
fn end_actor(plugin: &Plugin) {
    let _ = plugin.inbox.send(ActorMessage::Exit);
    let actor = plugin
        .actor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(actor) = actor {
        let _ = actor.join();
    }
}

/// Why a second bundle naming `name` is refused, while the one in `holder` provides it.
fn duplicate_reason(name: &str, holder: &Path) -> String {
    format!(
        "duplicate plugin name `{name}`: {} already provides it",
        holder.display()
    )
}

/// After `plugin` moved, its refused duplicates name the bundle that provides it now.
fn renew_duplicate_reasons(shared: &Shared, plugin: &Plugin) {
    let reason = duplicate_reason(&plugin.name, &plugin.dir());
    for duplicate in shared.all_plugins() {
        if duplicate.duplicate_of.as_deref() != Some(plugin.name.as_str()) {
            continue;
        }
        let mut lifecycle = duplicate.lifecycle();
        if lifecycle.reason == lifecycle.blocked {
            lifecycle.reason = Some(reason.clone());
        }
        lifecycle.blocked = Some(reason.clone());
    }
}

/// A directory whose name begins with `.`: never discovered as a bundle.
fn is_hidden(dir: &Path) -> bool {
    dir.file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."))
}

/// The plugin name a bundle's manifest gives, if it reads.
fn bundle_name(dir: &Path, limits: &HostLimits) -> Option<String> {
    Manifest::load(dir, limits)
        .ok()
        .map(|manifest| manifest.plugin.name)
}

/// Bundles are known by their absolute paths: the watcher's events carry them so, and a
/// relative directory would never match one.
fn make_bundle_paths_absolute(config: &mut EngineConfig) {
    for dir in config
        .plugin_dirs
        .iter_mut()
        .chain(config.bundles.iter_mut())
    {
        if let Ok(absolute) = std::path::absolute(&*dir) {
            *dir = absolute;
        }
    }
}

/// The engine's log file and its audit writer, as the configuration asks.
fn open_log_and_audit(
    config: &EngineConfig,
) -> Result<(Option<Mutex<RotatingFile>>, Option<AuditWriter>), EngineError> {
    let log = config
        .log_file
        .as_ref()
        .map(|file| {
            RotatingFile::open(
                file.clone(),
                config.log_max_mb.saturating_mul(1024 * 1024),
                config.log_keep,
                false,
            )
            .map(Mutex::new)
            .map_err(|err| EngineError::File {
                what: "log_file",
                file: file.clone(),
                reason: err.to_string(),
            })
        })
        .transpose()?;
    let audit = config
        .audit_file
        .as_ref()
        .map(|file| {
            AuditLog::open(AuditPolicy {
                file: file.clone(),
                max_bytes: config.audit_max_mb.saturating_mul(1024 * 1024),
                keep: config.audit_keep,
            })
            .and_then(AuditWriter::start)
            .map_err(|err| EngineError::File {
                what: "audit_file",
                file: file.clone(),
                reason: err.to_string(),
            })
        })
        .transpose()?;
    Ok((log, audit))
}

/// Why the engine has no scope.
enum ScopeError {
    /// The scope cannot be made: cgroups are not usable here.
    Scope(String),
    /// The scope was made, but the host's memory budget cannot be set on it.
    Budget(String),
}

/// The engine's cgroup scope, with the host's total memory budget when it has one; none
/// is left behind when the budget cannot be set.
fn create_scope(
    root: &CgroupRoot,
    memory_budget_mb: Option<u64>,
) -> Result<EngineScope, ScopeError> {
    let scope = EngineScope::create(root).map_err(|err| ScopeError::Scope(err.to_string()))?;
    if let Some(budget) = memory_budget_mb {
        if let Err(err) = scope.limit_memory(budget.saturating_mul(1024 * 1024)) {
            let _ = scope.remove();
            return Err(ScopeError::Budget(format!(
                "memory budget of {budget} MiB: {err}"
            )));
        }
    }
    Ok(scope)
}

/// Registers a bundle directory (named after its directory until its manifest is read),
/// with the host's and the operator's toggles applied, and starts its actor.
///
/// A bundle naming a plugin that is known already is that plugin's, moved, when the
/// plugin's bundle was seen removed (a deploy replacing `hello-1.0/` with `hello-1.1/`), or
/// when it sits in a directory of the plugin's name and the plugin's does not (`mv hello
/// hello-old`, then a new `hello/`): the plugin follows it, as discovery at the next start
/// would have it; its next start or reload reads it there. The bundle it left, if still
/// there, is listed as a duplicate. Any other such bundle is a duplicate.
fn add_bundle(shared: &Arc<Shared>, dir: &Path) {
    let manifest_name = bundle_name(dir, &shared.config.limits);
    let name = manifest_name.clone().unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut plugins = shared
        .plugins
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    // Checked under the lock the shutdown sets it under: an actor started now would
    // never be stopped.
    if shared.shutting_down.load(Ordering::SeqCst)
        || plugins.values().any(|plugin| plugin.dir() == dir)
    {
        return;
    }
    if let Some(holder) = manifest_name.as_ref().and_then(|name| plugins.get(name)) {
        let gone = holder.bundle_gone();
        if gone || (dir_is_named(dir, &name) && !dir_is_named(&holder.dir(), &name)) {
            holder.set_bundle_gone(false);
            let left = move_plugin(holder, dir);
            let holder = Arc::clone(holder);
            drop(plugins);
            renew_duplicate_reasons(shared, &holder);
            if !gone {
                add_bundle(shared, &left);
            }
            return;
        }
    }
    // Two bundles claiming one name: the second is shown under its directory's path,
    // refused, rather than silently hidden. A path cannot be a plugin's name (no '/'), so
    // the duplicate never takes the name of a plugin found after it.
    let (name, blocked, duplicate_of) = match plugins.get(&name) {
        Some(other) => {
            let mut key = dir.display().to_string();
            // Two paths that differ only in bytes that are not UTF-8 display alike.
            let shown = key.clone();
            for n in 2.. {
                if !plugins.contains_key(&key) {
                    break;
                }
                key = format!("{shown} ({n})");
            }
            let reason = duplicate_reason(&name, &other.dir());
            (key, Some(reason), Some(name))
        }
        None => (name, None, None),
    };
    let toggles = shared
        .persisted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .plugins
        .get(&name)
        .cloned()
        .unwrap_or_default();
    let configured = shared
        .config
        .plugins
        .get(&name)
        .and_then(|overrides| overrides.enabled);
    // The operator's last word (persisted) wins over the configuration file.
    let enabled = toggles.enabled.or(configured).unwrap_or(true);
    let rejected = blocked.clone();
    let mut lifecycle = Lifecycle::new(blocked);
    // Disabled whether quarantined or not: clearing the quarantine leaves it disabled.
    lifecycle.disabled = !enabled;
    if let Some(quarantine) = &toggles.quarantined {
        lifecycle.state = PluginState::Quarantined;
        lifecycle.reason = Some(format!("quarantined: {}", quarantine.reason));
    } else if !enabled && lifecycle.blocked.is_none() {
        lifecycle.state = PluginState::Disabled;
    }
    let (inbox, messages) = mpsc::channel();
    let plugin = Arc::new(Plugin::new(
        name.clone(),
        dir.to_owned(),
        duplicate_of,
        lifecycle,
        toggles.disabled_hooks,
        SampleSeries::new(shared.config.sample_history, shared.config.sample_interval),
        inbox,
    ));
    let actor = {
        let (shared, plugin) = (Arc::clone(shared), Arc::clone(&plugin));
        std::thread::Builder::new()
            .name(format!("pb-actor-{name}"))
            .spawn(move || run_actor(&shared, &plugin, &messages))
            .expect("actor thread starts")
    };
    *plugin.actor.lock().unwrap_or_else(PoisonError::into_inner) = Some(actor);
    plugins.insert(name.clone(), plugin);
    drop(plugins);
    shared.event(
        Some(&name),
        EventKind::Discovered {
            dir: dir.display().to_string(),
        },
    );
    // A duplicate is rejected from the start: said as any rejection is.
    if let Some(reason) = rejected {
        shared.event(Some(&name), EventKind::Rejected { reason });
    }
}

fn plugin_snapshot(shared: &Shared, plugin: &Plugin) -> PluginSnapshot {
    let lifecycle = plugin.lifecycle();
    let overrides = shared.config.plugins.get(&plugin.name);
    let resource_overrides = overrides
        .map(|overrides| overrides.resources)
        .unwrap_or_default();
    let hooks = hook_snapshots(shared, plugin, &lifecycle, &resource_overrides);
    let config = config_settings(&lifecycle, overrides.map(|overrides| &overrides.config));
    let output = plugin.output.lock().unwrap_or_else(PoisonError::into_inner);
    let recent_output = output
        .lines
        .iter()
        .skip(output.lines.len().saturating_sub(20))
        .cloned()
        .collect();
    // Active only while a worker is: `mechanisms` keeps what the last one was granted (what
    // a crashed plugin had), the badges say what confines one now.
    let active_mechanisms = crate::sandbox::Mechanism::ALL
        .into_iter()
        .filter(|mechanism| {
            lifecycle.worker_pid.is_some()
                && lifecycle
                    .mechanisms
                    .get(mechanism.name())
                    .is_some_and(|state| state.active)
        })
        .map(|mechanism| mechanism.badge().to_owned())
        .collect();
    PluginSnapshot {
        name: plugin.name.clone(),
        version: lifecycle
            .manifest
            .as_ref()
            .map(|manifest| manifest.plugin.version.to_string()),
        dir: plugin.dir().display().to_string(),
        state: lifecycle.state,
        reason: lifecycle.reason.clone(),
        health: lifecycle.health.health,
        health_failures: lifecycle.health.failures,
        health_checked_ms: millis(lifecycle.health.last_checked),
        health_detail: lifecycle.health.last_failure.clone(),
        isolation: lifecycle.manifest.as_ref().map_or_else(
            || "process".to_owned(),
            |manifest| shared.config.isolation_of(manifest).as_str().to_owned(),
        ),
        mechanisms: lifecycle.mechanisms.clone(),
        active_mechanisms,
        worker_pid: lifecycle.worker_pid,
        sandbox_pid: lifecycle.sandbox_pid,
        cgroup: lifecycle.cgroup.clone(),
        trust: lifecycle.trust.clone(),
        hooks,
        violations: lifecycle.violations,
        emitted: plugin.emitted.load(Ordering::Relaxed),
        last_exit: lifecycle.last_exit,
        output_dropped: output.dropped,
        violations_unrecorded: plugin.events_unrecorded(),
        recent_output,
        enabled: !lifecycle.disabled,
        disabled_hooks: plugin.disabled_hooks(),
        dependencies: lifecycle
            .manifest
            .as_ref()
            .map(|manifest| {
                manifest
                    .dependencies
                    .iter()
                    .map(|(name, requirement)| (name.clone(), requirement.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        changed_on_disk: lifecycle.changed_on_disk,
        removed_from_disk: lifecycle.removed_from_disk,
        supervision: supervision_snapshot(&shared.config.restart, &lifecycle),
        resources: plugin
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latest()
            .copied()
            // Only a sample of the current worker: the ring outlives restarts and reloads.
            .filter(|sample| {
                let current_since = lifecycle.last_start.max(lifecycle.last_reload);
                lifecycle.worker_pid.is_some()
                    && current_since.is_none_or(|since| sample.at_ms >= unix_millis(since))
            }),
        capabilities: lifecycle
            .manifest
            .as_ref()
            .map(|manifest| manifest.capabilities.clone()),
        // In process nothing enforces them: shown as none (DESIGN's "no limits").
        limits: lifecycle
            .manifest
            .as_ref()
            .filter(|manifest| shared.config.isolation_of(manifest) != IsolationMode::InProcess)
            .map(|manifest| {
                manifest.effective_resources_with(&shared.config.limits, &resource_overrides)
            }),
        resource_overrides,
        config,
    }
}

/// The statistics of every hook called, and of every hook the manifest subscribes to
/// (zero counts until called), each with its priority and effective timeout.
fn hook_snapshots(
    shared: &Shared,
    plugin: &Plugin,
    lifecycle: &Lifecycle,
    resource_overrides: &crate::manifest::Resources,
) -> BTreeMap<String, HookStatsSnapshot> {
    let mut hooks: BTreeMap<String, HookStatsSnapshot> = plugin
        .stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(hook, stats)| (hook.clone(), stats.snapshot()))
        .collect();
    if let Some(manifest) = &lifecycle.manifest {
        // Every subscribed hook, called or not, with what the manifest says of it.
        for (hook, spec) in &manifest.hooks {
            let stats = hooks.entry(hook.clone()).or_default();
            stats.priority = Some(spec.priority);
            stats.no_traffic = !spec.traffic;
            stats.timeout_ms = Some(
                u64::try_from(
                    manifest
                        .hook_timeout_with(hook, &shared.config.limits, resource_overrides)
                        .as_millis(),
                )
                .unwrap_or(u64::MAX),
            );
        }
    }
    hooks
}

/// Each `[config.<key>]` of the verified manifest (none before): its default, the host's
/// override and what the plugin received (`effective`, the merged config kept at
/// verification).
fn config_settings(
    lifecycle: &Lifecycle,
    overrides: Option<&BTreeMap<String, serde_json::Value>>,
) -> BTreeMap<String, ConfigSetting> {
    let Some(manifest) = &lifecycle.manifest else {
        return BTreeMap::new();
    };
    let effective = &lifecycle.config;
    manifest
        .config
        .iter()
        .map(|(key, spec)| {
            let host_override = overrides.and_then(|overrides| overrides.get(key)).cloned();
            let source = if host_override.is_some() {
                ConfigSource::Host
            } else if spec.default.is_some() {
                ConfigSource::Manifest
            } else {
                ConfigSource::Unset
            };
            let setting = ConfigSetting {
                value_type: spec.value_type.as_str().to_owned(),
                description: spec.description.clone(),
                default: spec.default.clone(),
                host_override,
                effective: effective.get(key).cloned(),
                source,
            };
            (key.clone(), setting)
        })
        .collect()
}

fn supervision_snapshot(policy: &RestartPolicy, lifecycle: &Lifecycle) -> Supervision {
    let window = policy.window();
    let used = lifecycle
        .backoff
        .recent
        .iter()
        .filter(|at| at.elapsed() <= window)
        .count();
    let used = u32::try_from(used).unwrap_or(u32::MAX);
    Supervision {
        starts: lifecycle.starts,
        restarts: lifecycle.restarts,
        last_start_ms: millis(lifecycle.last_start),
        last_reload_ms: millis(lifecycle.last_reload),
        backoff_step: used,
        next_retry_ms: millis(lifecycle.backoff.next_retry.map(|(_, at)| at)),
        restart_budget_left: policy.max_restarts.saturating_sub(used),
    }
}

/// Claims the state file for this engine; the warning to give when another engine holds it.
fn claim_state_file(file: Option<&std::path::Path>) -> (Option<StateFileClaim>, Option<String>) {
    let Some(file) = file else {
        return (None, None);
    };
    // The claim only warns: one that cannot be taken (a read-only directory, no locks on
    // this file system) is said, and the engine starts.
    let claimed = match StateFileClaim::take(file) {
        Ok(claimed) => claimed,
        Err(err) => {
            return (
                None,
                Some(format!(
                    "cannot tell whether another engine uses the state file {}: {err}",
                    file.display()
                )),
            );
        }
    };
    match claimed {
        Claimed::Claimed(claim) => (Some(claim), None),
        Claimed::HeldBy(pid) => (
            None,
            Some(format!(
                "another engine{} uses the state file {} too: each overwrites the other's \
                 disabled plugins and hooks, and both run every plugin; give this one a \
                 state file of its own (`state_file`, `--state-file`) or stop the other",
                pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
                file.display()
            )),
        ),
    }
}
