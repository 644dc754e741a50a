//! The engine: plugins found in directories, verified, started in confined workers,
//! called, stopped. Front ends send [`Command`]s and read [`Snapshot`]s and [`Event`]s.
//!
//! Each plugin has an actor thread that owns its lifecycle state: commands (load, start,
//! stop, unload) and its worker's events (exit, violations, output) are messages to that
//! actor, so nothing else mutates the state. Hook calls do not queue behind the actor: they
//! go straight to the running worker and record into the plugin's hook statistics.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::events::{Event, EventKind, EventLog, unix_millis};
use crate::hooks::{CallResult, HookStats};
use crate::loader::SealedLibrary;
use crate::manifest::{HostLimits, MANIFEST_FILE, Manifest};
use crate::sandbox::cgroup::{CgroupRoot, EngineScope, remove_stale_scopes};
use crate::snapshot::{Health, OutputLine, PluginSnapshot, PluginState, Snapshot, TrustInfo};
use crate::supervisor::{PluginOverrides, RestartPolicy, WatchPolicy};
use crate::trust::TrustStore;
use crate::worker::{
    CallFailure, EventSink, MechanismState, OutputStream, Worker, WorkerEvent, WorkerPolicy,
    WorkerSpec, plan_for,
};

/// Captured output lines kept per plugin.
const OUTPUT_RING: usize = 500;
/// Output lines accepted per second per plugin (burst: twice that); the rest are counted
/// as dropped, so a chatty or hostile plugin cannot exhaust the engine's memory.
const OUTPUT_LINES_PER_SEC: f64 = 200.0;

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
    /// Every event as a JSON line, appended (the audit trail).
    pub audit_file: Option<PathBuf>,
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
            audit_file: None,
            bundles: Vec::new(),
            restart: RestartPolicy::default(),
            plugins: BTreeMap::new(),
            max_plugins: None,
            memory_budget_mb: None,
            state_file: None,
            watch: WatchPolicy::default(),
        }
    }
}

/// Why the engine could not start or carry out a command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cgroups: {reason}")]
    Cgroups { reason: String },
    #[error("cannot open {}: {reason}", file.display())]
    File { file: PathBuf, reason: String },
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
    #[error("`{plugin}` has no hook `{hook}`")]
    UnknownHook { plugin: String, hook: String },
    #[error("`{plugin}` is no longer running")]
    Gone { plugin: String },
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
    Stop {
        plugin: String,
    },
    Unload {
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
    /// `ok`, `error`, `unknown_hook`, `panic`, `invalid_input`, `timeout`, `busy` or `gone`.
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

struct OutputRing {
    lines: VecDeque<OutputLine>,
    dropped: u64,
    tokens: f64,
    refilled: Instant,
}

impl OutputRing {
    fn new() -> Self {
        Self {
            lines: VecDeque::with_capacity(OUTPUT_RING),
            dropped: 0,
            tokens: OUTPUT_LINES_PER_SEC * 2.0,
            refilled: Instant::now(),
        }
    }

    /// Keeps the line unless the rate limit drops it; says which.
    fn push(&mut self, stream: OutputStream, line: String) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.refilled).as_secs_f64() * OUTPUT_LINES_PER_SEC)
            .min(OUTPUT_LINES_PER_SEC * 2.0);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return false;
        }
        self.tokens -= 1.0;
        if self.lines.len() == OUTPUT_RING {
            self.lines.pop_front();
        }
        self.lines.push_back(OutputLine {
            at_ms: unix_millis(SystemTime::now()),
            stream,
            line,
        });
        true
    }
}

/// The lifecycle part of a plugin, owned by its actor.
struct Lifecycle {
    state: PluginState,
    reason: Option<String>,
    /// Set when the bundle can never be loaded as it is (a duplicate name).
    blocked: Option<String>,
    manifest: Option<Manifest>,
    library: Option<SealedLibrary>,
    trust: TrustInfo,
    mechanisms: BTreeMap<String, MechanismState>,
    worker_pid: Option<u32>,
    sandbox_pid: Option<u32>,
    cgroup: Option<String>,
    last_exit: Option<crate::worker::ExitStatus>,
    violations: u64,
    /// Hooks emitted through the engine (granted ones).
    emitted: u64,
}

enum ActorMessage {
    Load(mpsc::Sender<Result<(), EngineError>>),
    Start(mpsc::Sender<Result<(), EngineError>>),
    Stop(mpsc::Sender<Result<(), EngineError>>),
    Unload(mpsc::Sender<Result<(), EngineError>>),
    Worker(WorkerEvent),
    Exit,
}

struct Plugin {
    name: String,
    dir: PathBuf,
    lifecycle: Mutex<Lifecycle>,
    worker: RwLock<Option<Arc<Worker>>>,
    stats: Mutex<BTreeMap<String, HookStats>>,
    output: Mutex<OutputRing>,
    inbox: mpsc::Sender<ActorMessage>,
    actor: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    config: EngineConfig,
    log: Option<Mutex<std::fs::File>>,
    audit: Option<Mutex<std::fs::File>>,
    scope: EngineScope,
    trust: Option<TrustStore>,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    events: Mutex<EventLog>,
    started: Instant,
    traffic: Mutex<Option<(f64, Arc<AtomicBool>)>>,
}

impl Shared {
    fn event(&self, plugin: Option<&str>, kind: EventKind) {
        let event = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(plugin, kind);
        if let Some(audit) = &self.audit {
            if let Ok(line) = serde_json::to_string(&event) {
                let mut audit = audit.lock().unwrap_or_else(PoisonError::into_inner);
                // A line per event, flushed at once so it survives an engine crash.
                let _ = writeln!(audit, "{line}").and_then(|()| audit.flush());
            }
        }
    }

    fn log_output(&self, plugin: &str, stream: OutputStream, line: &str) {
        if let Some(log) = &self.log {
            let stream = match stream {
                OutputStream::Stdout => "stdout".to_owned(),
                OutputStream::Stderr => "stderr".to_owned(),
                OutputStream::Log { level } => {
                    format!("log:{}", plugboard_sdk::LogLevel::from_code(level).name())
                }
            };
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = writeln!(
                log,
                "{} {plugin} {stream} {line}",
                unix_millis(SystemTime::now())
            )
            .and_then(|()| log.flush());
        }
    }

    /// Every known plugin, in name order (a copy: no lock is held afterwards).
    fn all_plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn plugin(&self, name: &str) -> Result<Arc<Plugin>, EngineError> {
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
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Sets up the engine: removes cgroups left by dead engines, creates this engine's
    /// cgroup scope, opens the trust store and discovers the bundles.
    pub fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let root = CgroupRoot::detect(&config.cgroup_root).map_err(|err| EngineError::Cgroups {
            reason: err.to_string(),
        })?;
        let stale = remove_stale_scopes(&root).map_err(|err| EngineError::Cgroups {
            reason: err.to_string(),
        })?;
        let scope = EngineScope::create(&root).map_err(|err| EngineError::Cgroups {
            reason: err.to_string(),
        })?;
        let trust = match &config.trust_store {
            Some(dir) => Some(
                TrustStore::open(dir).map_err(|err| EngineError::TrustStore {
                    reason: err.to_string(),
                })?,
            ),
            None => None,
        };
        let open_append =
            |file: &Option<PathBuf>| -> Result<Option<Mutex<std::fs::File>>, EngineError> {
                file.as_ref()
                    .map(|file| {
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(file)
                            .map(Mutex::new)
                            .map_err(|err| EngineError::File {
                                file: file.clone(),
                                reason: err.to_string(),
                            })
                    })
                    .transpose()
            };
        let (log, audit) = (
            open_append(&config.log_file)?,
            open_append(&config.audit_file)?,
        );
        let shared = Arc::new(Shared {
            config,
            log,
            audit,
            scope,
            trust,
            plugins: RwLock::new(BTreeMap::new()),
            events: Mutex::new(EventLog::default()),
            started: Instant::now(),
            traffic: Mutex::new(None),
        });
        for name in stale {
            shared.event(
                None,
                EventKind::Engine {
                    message: format!("removed stale cgroup {name} of an engine that is gone"),
                },
            );
        }
        let engine = Engine { shared };
        engine.discover()?;
        Ok(engine)
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

    fn discover(&self) -> Result<(), EngineError> {
        for dir in &self.shared.config.plugin_dirs {
            let entries = std::fs::read_dir(dir).map_err(|err| EngineError::PluginDir {
                dir: dir.clone(),
                reason: err.to_string(),
            })?;
            let mut bundles: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.join(MANIFEST_FILE).is_file())
                .collect();
            bundles.sort();
            for bundle in bundles {
                self.add_bundle(&bundle);
            }
        }
        Ok(())
    }

    /// Registers a bundle directory (named after its directory until its manifest is read).
    fn add_bundle(&self, dir: &Path) {
        let name = Manifest::load(dir, &self.shared.config.limits).map_or_else(
            |_| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            },
            |manifest| manifest.plugin.name,
        );
        let mut plugins = self
            .shared
            .plugins
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if plugins.values().any(|plugin| plugin.dir == dir) {
            return;
        }
        // Two bundles claiming one name: the second is shown under its directory's name,
        // refused, rather than silently hidden.
        let (name, blocked) = match plugins.get(&name) {
            Some(other) => {
                let key = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if plugins.contains_key(&key) {
                    return;
                }
                let reason = format!(
                    "duplicate plugin name `{name}`: {} already provides it",
                    other.dir.display()
                );
                (key, Some(reason))
            }
            None => (name, None),
        };
        let (inbox, messages) = mpsc::channel();
        let plugin = Arc::new(Plugin {
            name: name.clone(),
            dir: dir.to_owned(),
            lifecycle: Mutex::new(Lifecycle {
                state: if blocked.is_some() {
                    PluginState::Rejected
                } else {
                    PluginState::Discovered
                },
                reason: blocked.clone(),
                blocked,
                manifest: None,
                library: None,
                trust: TrustInfo::default(),
                mechanisms: BTreeMap::new(),
                worker_pid: None,
                sandbox_pid: None,
                cgroup: None,
                last_exit: None,
                violations: 0,
                emitted: 0,
            }),
            worker: RwLock::new(None),
            stats: Mutex::new(BTreeMap::new()),
            output: Mutex::new(OutputRing::new()),
            inbox,
            actor: Mutex::new(None),
        });
        let actor = {
            let (shared, plugin) = (Arc::clone(&self.shared), Arc::clone(&plugin));
            std::thread::Builder::new()
                .name(format!("pb-actor-{name}"))
                .spawn(move || run_actor(&shared, &plugin, &messages))
                .expect("actor thread starts")
        };
        *plugin.actor.lock().unwrap_or_else(PoisonError::into_inner) = Some(actor);
        plugins.insert(name.clone(), plugin);
        drop(plugins);
        self.shared.event(
            Some(&name),
            EventKind::Discovered {
                dir: dir.display().to_string(),
            },
        );
    }

    fn ask(
        &self,
        plugin: &str,
        message: fn(mpsc::Sender<Result<(), EngineError>>) -> ActorMessage,
    ) -> Result<(), EngineError> {
        let plugin = self.shared.plugin(plugin)?;
        let (reply, answer) = mpsc::channel();
        plugin
            .inbox
            .send(message(reply))
            .map_err(|_| EngineError::Gone {
                plugin: plugin.name.clone(),
            })?;
        answer.recv().map_err(|_| EngineError::Gone {
            plugin: plugin.name.clone(),
        })?
    }

    /// Carries out one command. Blocks until it is done: a front end that must stay
    /// responsive runs this on a thread of its own.
    pub fn execute(&self, command: Command) -> Result<Outcome, EngineError> {
        match command {
            Command::Discover => self.discover().map(|()| Outcome::Done),
            Command::Load { plugin } => self
                .ask(&plugin, ActorMessage::Load)
                .map(|()| Outcome::Done),
            Command::Start { plugin } => self
                .ask(&plugin, ActorMessage::Start)
                .map(|()| Outcome::Done),
            Command::Stop { plugin } => self
                .ask(&plugin, ActorMessage::Stop)
                .map(|()| Outcome::Done),
            Command::Unload { plugin } => self
                .ask(&plugin, ActorMessage::Unload)
                .map(|()| Outcome::Done),
            Command::Call {
                plugin,
                hook,
                payload,
            } => {
                let plugin = self.shared.plugin(&plugin)?;
                call(&self.shared, &plugin, &hook, &payload, 0)
                    .map(|report| Outcome::Called { report })
            }
            Command::Emit { hook, payload } => Ok(Outcome::Emitted {
                reports: self.emit(&hook, &payload),
            }),
            Command::Traffic { rate } => {
                self.set_traffic(rate);
                Ok(Outcome::Done)
            }
        }
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
                EventKind::Engine {
                    message: "traffic off".to_owned(),
                },
            );
            return;
        };
        let running = Arc::new(AtomicBool::new(true));
        *traffic = Some((rate, Arc::clone(&running)));
        drop(traffic);
        self.shared.event(
            None,
            EventKind::Engine {
                message: format!("traffic on: {rate} calls/s"),
            },
        );
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
            plugins: plugins
                .iter()
                .map(|plugin| plugin_snapshot(plugin))
                .collect(),
            recent_events,
        }
    }

    /// Events as they happen.
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
        self.set_traffic(None);
        let plugins = self.shared.all_plugins();
        // Ask every actor at once, so plugins stop in parallel, then wait for them all.
        let answers: Vec<_> = plugins
            .iter()
            .filter_map(|plugin| {
                let (reply, answer) = mpsc::channel();
                plugin
                    .inbox
                    .send(ActorMessage::Stop(reply))
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
        let _ = self.shared.scope.remove();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn status_name(status: i32) -> &'static str {
    match status {
        plugboard_sdk::abi::STATUS_OK => "ok",
        plugboard_sdk::abi::STATUS_UNKNOWN_HOOK => "unknown_hook",
        plugboard_sdk::abi::STATUS_PANIC => "panic",
        plugboard_sdk::abi::STATUS_INVALID_INPUT => "invalid_input",
        _ => "error",
    }
}

/// One call of one plugin's hook, timed and recorded in its statistics.
/// How many emits deep a chain of plugins emitting to each other may go.
pub const MAX_EMIT_DEPTH: u32 = 4;

/// Calls every running subscriber of `hook`, in priority order (then by name).
fn dispatch(shared: &Shared, hook: &str, payload: &[u8], depth: u32) -> Vec<CallReport> {
    let plugins = shared.all_plugins();
    let mut subscribers: Vec<(crate::manifest::Priority, Arc<Plugin>)> = plugins
        .into_iter()
        .filter_map(|plugin| {
            let lifecycle = plugin
                .lifecycle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let priority = lifecycle.manifest.as_ref()?.hooks.get(hook)?.priority;
            let running = matches!(
                lifecycle.state,
                PluginState::Running | PluginState::Degraded
            );
            drop(lifecycle);
            running.then_some((priority, plugin))
        })
        .collect();
    subscribers.sort_by(|(a, left), (b, right)| a.cmp(b).then_with(|| left.name.cmp(&right.name)));
    subscribers
        .into_iter()
        .filter_map(|(_, plugin)| call(shared, &plugin, hook, payload, depth).ok())
        .collect()
}

/// The engine's answer to one plugin's emits: the manifest must grant the hook (anything
/// else is a violation), and chains stop at [`MAX_EMIT_DEPTH`].
fn emit_handler(shared: &Arc<Shared>, emitter: &str) -> crate::worker::EmitHandler {
    let (shared, emitter) = (Arc::downgrade(shared), emitter.to_owned());
    Arc::new(move |hook: &str, payload: &[u8], depth: u32| {
        let Some(shared) = shared.upgrade() else {
            return plugboard_sdk::abi::EMIT_FAILED;
        };
        let Ok(plugin) = shared.plugin(&emitter) else {
            return plugboard_sdk::abi::EMIT_FAILED;
        };
        let granted = {
            let mut lifecycle = plugin
                .lifecycle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let granted = lifecycle.manifest.as_ref().is_some_and(|manifest| {
                manifest
                    .capabilities
                    .emit
                    .iter()
                    .any(|allowed| allowed == hook)
            });
            if granted {
                lifecycle.emitted += 1;
            } else {
                lifecycle.violations += 1;
            }
            granted
        };
        if !granted {
            shared.event(
                Some(&emitter),
                EventKind::ForbiddenEmit {
                    hook: hook.to_owned(),
                },
            );
            return plugboard_sdk::abi::EMIT_DENIED;
        }
        if depth >= MAX_EMIT_DEPTH {
            shared.event(Some(&emitter), EventKind::Engine {
                message: format!("emit of `{hook}` refused: the chain of emits is {depth} deep, the bound is {MAX_EMIT_DEPTH}"),
            });
            return plugboard_sdk::abi::EMIT_FAILED;
        }
        dispatch(&shared, hook, payload, depth + 1);
        plugboard_sdk::abi::EMIT_OK
    })
}

/// A hook's timeout and the plugin's cap on calls in flight; refuses unknown hooks.
fn call_limits(
    shared: &Shared,
    plugin: &Plugin,
    hook: &str,
) -> Result<(Duration, u64), EngineError> {
    let lifecycle = plugin
        .lifecycle
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let manifest = lifecycle
        .manifest
        .as_ref()
        .ok_or_else(|| EngineError::Gone {
            plugin: plugin.name.clone(),
        })?;
    if !manifest.hooks.contains_key(hook) {
        return Err(EngineError::UnknownHook {
            plugin: plugin.name.clone(),
            hook: hook.to_owned(),
        });
    }
    let limits = &shared.config.limits;
    Ok((
        manifest.hook_timeout(hook, limits),
        u64::from(manifest.effective_resources(limits).max_in_flight),
    ))
}

fn call(
    shared: &Shared,
    plugin: &Plugin,
    hook: &str,
    payload: &[u8],
    depth: u32,
) -> Result<CallReport, EngineError> {
    let (timeout, max_in_flight) = call_limits(shared, plugin, hook)?;
    let worker = plugin
        .worker
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| EngineError::Gone {
            plugin: plugin.name.clone(),
        })?;
    let report = |status: &str, reply: String, elapsed: Duration| CallReport {
        plugin: plugin.name.clone(),
        hook: hook.to_owned(),
        status: status.to_owned(),
        reply,
        duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    };
    {
        let mut stats = plugin.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = stats.entry(hook.to_owned()).or_default();
        if entry.snapshot_in_flight() >= max_in_flight {
            entry.end(Duration::ZERO, &CallResult::Busy);
            return Ok(report(
                "busy",
                format!("{max_in_flight} calls already in flight"),
                Duration::ZERO,
            ));
        }
        entry.begin();
    }
    let start = Instant::now();
    let outcome = worker.call_at_depth(hook, payload, depth, timeout);
    let elapsed = start.elapsed();
    let (result, call_report) = match outcome {
        Ok(outcome) => {
            let reply = String::from_utf8_lossy(&outcome.body).into_owned();
            let result = if outcome.status == plugboard_sdk::abi::STATUS_OK {
                CallResult::Ok
            } else {
                CallResult::Error {
                    message: reply.clone(),
                }
            };
            (
                result,
                report(status_name(outcome.status), reply, outcome.duration),
            )
        }
        Err(CallFailure::Timeout { timeout }) => {
            shared.event(
                Some(&plugin.name),
                EventKind::HookTimeout {
                    hook: hook.to_owned(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
            );
            (
                CallResult::Timeout,
                report(
                    "timeout",
                    format!("no reply within {} ms", timeout.as_millis()),
                    elapsed,
                ),
            )
        }
        Err(CallFailure::WorkerGone) => (
            CallResult::Error {
                message: "the worker is gone".to_owned(),
            },
            report("gone", "the worker is gone".to_owned(), elapsed),
        ),
    };
    plugin
        .stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(hook.to_owned())
        .or_default()
        .end(elapsed, &result);
    Ok(call_report)
}

fn drive_traffic(shared: &Arc<Shared>, rate: f64, running: &AtomicBool) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut turn = 0usize;
    while running.load(Ordering::SeqCst) {
        let targets: Vec<(Arc<Plugin>, String)> = shared
            .plugins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flat_map(|plugin| {
                let lifecycle = plugin
                    .lifecycle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let running = matches!(
                    lifecycle.state,
                    PluginState::Running | PluginState::Degraded
                );
                let hooks: Vec<String> = if running {
                    lifecycle
                        .manifest
                        .as_ref()
                        .map(|manifest| manifest.hooks.keys().cloned().collect())
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                drop(lifecycle);
                hooks
                    .into_iter()
                    .map(|hook| (Arc::clone(plugin), hook))
                    .collect::<Vec<_>>()
            })
            .collect();
        if let Some((plugin, hook)) = targets.get(turn % targets.len().max(1)) {
            let _ = call(shared, plugin, hook, b"traffic", 0);
        }
        turn = turn.wrapping_add(1);
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        } else {
            next = Instant::now();
        }
    }
}

fn set_state(shared: &Shared, plugin: &Plugin, lifecycle: &mut Lifecycle, to: PluginState) {
    let from = lifecycle.state;
    if from != to {
        lifecycle.state = to;
        shared.event(Some(&plugin.name), EventKind::StateChanged { from, to });
    }
}

fn run_actor(shared: &Arc<Shared>, plugin: &Arc<Plugin>, messages: &mpsc::Receiver<ActorMessage>) {
    for message in messages {
        match message {
            ActorMessage::Load(reply) => {
                let _ = reply.send(load(shared, plugin));
            }
            ActorMessage::Start(reply) => {
                let _ = reply.send(start(shared, plugin));
            }
            ActorMessage::Stop(reply) => {
                let _ = reply.send(stop(shared, plugin, PluginState::Stopped));
            }
            ActorMessage::Unload(reply) => {
                let result = stop(shared, plugin, PluginState::Unloaded).map(|()| {
                    plugin
                        .lifecycle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .library = None;
                });
                let _ = reply.send(result);
            }
            ActorMessage::Worker(event) => on_worker_event(shared, plugin, event),
            ActorMessage::Exit => break,
        }
    }
}

fn load(shared: &Shared, plugin: &Plugin) -> Result<(), EngineError> {
    let mut lifecycle = plugin
        .lifecycle
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(reason) = lifecycle.blocked.clone() {
        return Err(EngineError::StartFailed {
            plugin: plugin.name.clone(),
            reason,
        });
    }
    if matches!(
        lifecycle.state,
        PluginState::Running | PluginState::Starting | PluginState::Degraded
    ) {
        return Ok(());
    }
    let verdict = Bundle::open(&plugin.dir, &shared.config.limits)
        .map_err(|err| err.to_string())
        .and_then(|bundle| {
            let verified = match (&shared.trust, shared.config.allow_unsigned) {
                (Some(store), allow_unsigned) => match bundle.verify(store) {
                    Ok(verified) => Some(verified),
                    Err(_) if allow_unsigned => None,
                    Err(err) => return Err(err.to_string()),
                },
                (None, true) => None,
                (None, false) => {
                    return Err(
                        "no trust store is configured and unsigned bundles are not allowed"
                            .to_owned(),
                    );
                }
            };
            Ok((bundle, verified))
        });
    match verdict {
        Ok((bundle, verified)) => {
            let signature = bundle
                .signature()
                .map(|signature| signature.key_id.to_string());
            let (manifest, digests, library) = bundle.into_parts();
            lifecycle.trust = TrustInfo {
                signed: signature.is_some(),
                key_id: signature,
                level: verified.as_ref().map(|verified| verified.level.to_string()),
                library_sha3_512: Some(digests.library.to_hex()),
                unverified: verified.is_none(),
            };
            lifecycle.manifest = Some(manifest);
            lifecycle.library = Some(library);
            lifecycle.reason = None;
            set_state(shared, plugin, &mut lifecycle, PluginState::Verified);
            Ok(())
        }
        Err(reason) => {
            lifecycle.reason = Some(reason.clone());
            set_state(shared, plugin, &mut lifecycle, PluginState::Rejected);
            drop(lifecycle);
            shared.event(
                Some(&plugin.name),
                EventKind::Rejected {
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

/// Starts the worker for a verified plugin; its events go to the plugin's actor.
fn spawn_worker(
    shared: &Arc<Shared>,
    plugin: &Plugin,
    manifest: &Manifest,
    library: &SealedLibrary,
) -> Result<Worker, crate::worker::WorkerError> {
    let (plan, limits) = plan_for(
        manifest,
        &shared.config.limits,
        &shared.config.worker,
        &manifest.default_config(),
    );
    let inbox = Mutex::new(plugin.inbox.clone());
    let sink: EventSink = Arc::new(move |event| {
        let _ = inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(ActorMessage::Worker(event));
    });
    Worker::start(
        &shared.scope,
        WorkerSpec {
            plugin: plugin.name.clone(),
            host_binary: shared.config.worker.host_binary.clone(),
            library,
            plan,
            limits,
            env: shared.config.worker.env.clone(),
            emit: Some(emit_handler(shared, &plugin.name)),
        },
        &sink,
    )
}

fn start(shared: &Arc<Shared>, plugin: &Arc<Plugin>) -> Result<(), EngineError> {
    let state = plugin
        .lifecycle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .state;
    match state {
        PluginState::Running | PluginState::Degraded | PluginState::Starting => return Ok(()),
        PluginState::Discovered | PluginState::Unloaded | PluginState::Rejected => {
            load(shared, plugin)?;
        }
        PluginState::Quarantined => {
            return Err(EngineError::WrongState {
                plugin: plugin.name.clone(),
                state,
                action: "start",
                expected: "cleared from quarantine first",
            });
        }
        PluginState::Verified
        | PluginState::Stopped
        | PluginState::Failed
        | PluginState::Stopping => {}
    }
    let mut lifecycle = plugin
        .lifecycle
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    set_state(shared, plugin, &mut lifecycle, PluginState::Starting);
    let (Some(manifest), Some(library)) = (lifecycle.manifest.clone(), lifecycle.library.as_ref())
    else {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state,
            action: "start",
            expected: "verified",
        });
    };
    let started = spawn_worker(shared, plugin, &manifest, library);
    match started {
        Ok(worker) => {
            lifecycle.mechanisms = worker
                .mechanisms()
                .iter()
                .map(|(mechanism, state)| (mechanism.name().to_owned(), state.clone()))
                .collect();
            lifecycle.worker_pid = Some(worker.pid());
            lifecycle.sandbox_pid = Some(worker.sandbox_pid());
            lifecycle.cgroup = Some(worker.cgroup_path().to_owned());
            lifecycle.reason = None;
            let active = worker
                .mechanisms()
                .iter()
                .filter(|(_, state)| state.active)
                .map(|(mechanism, _)| mechanism.badge().to_owned())
                .collect();
            shared.event(
                Some(&plugin.name),
                EventKind::Started {
                    worker_pid: worker.pid(),
                    sandbox_pid: worker.sandbox_pid(),
                    mechanisms: active,
                },
            );
            *plugin
                .worker
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(worker));
            set_state(shared, plugin, &mut lifecycle, PluginState::Running);
            Ok(())
        }
        Err(err) => {
            let reason = err.to_string();
            lifecycle.reason = Some(reason.clone());
            set_state(shared, plugin, &mut lifecycle, PluginState::Failed);
            Err(EngineError::StartFailed {
                plugin: plugin.name.clone(),
                reason,
            })
        }
    }
}

fn stop(shared: &Shared, plugin: &Plugin, to: PluginState) -> Result<(), EngineError> {
    let worker = plugin
        .worker
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let mut lifecycle = plugin
        .lifecycle
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(worker) = worker {
        set_state(shared, plugin, &mut lifecycle, PluginState::Stopping);
        drop(lifecycle);
        let exit = worker.stop(shared.config.grace);
        lifecycle = plugin
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lifecycle.last_exit = exit;
        lifecycle.worker_pid = None;
        lifecycle.sandbox_pid = None;
        lifecycle.cgroup = None;
        shared.event(Some(&plugin.name), EventKind::Stopped { exit });
    } else if to == PluginState::Stopped
        && !matches!(
            lifecycle.state,
            // Stopping a crashed plugin acknowledges it: Failed → Stopped.
            PluginState::Stopped | PluginState::Stopping | PluginState::Failed
        )
    {
        return Err(EngineError::WrongState {
            plugin: plugin.name.clone(),
            state: lifecycle.state,
            action: "stop",
            expected: "running",
        });
    }
    set_state(shared, plugin, &mut lifecycle, to);
    Ok(())
}

fn on_worker_event(shared: &Shared, plugin: &Plugin, event: WorkerEvent) {
    match event {
        WorkerEvent::Output { stream, line } => {
            let kept = plugin
                .output
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(stream, line.clone());
            if kept {
                shared.log_output(&plugin.name, stream, &line);
            }
        }
        WorkerEvent::ForbiddenSyscall {
            syscall, detail, ..
        } => {
            plugin
                .lifecycle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .violations += 1;
            shared.event(
                Some(&plugin.name),
                EventKind::ForbiddenSyscall { syscall, detail },
            );
        }
        WorkerEvent::ProtocolViolation { reason } => {
            plugin
                .lifecycle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .violations += 1;
            shared.event(Some(&plugin.name), EventKind::ProtocolViolation { reason });
        }
        WorkerEvent::Exited { status } => {
            // An exit while running is a crash; during a stop it is expected.
            let crashed = matches!(
                plugin
                    .lifecycle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .state,
                PluginState::Running | PluginState::Degraded | PluginState::Starting
            );
            if !crashed {
                return;
            }
            // Reap what is left (the cgroup, the worker's threads) before anyone is told,
            // so whoever reacts to the crash finds nothing of the old worker.
            let worker = plugin
                .worker
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(worker) = worker {
                worker.kill();
            }
            let mut lifecycle = plugin
                .lifecycle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lifecycle.last_exit = Some(status);
            lifecycle.reason = Some(format!("the worker ended unexpectedly: {status}"));
            lifecycle.worker_pid = None;
            lifecycle.sandbox_pid = None;
            lifecycle.cgroup = None;
            set_state(shared, plugin, &mut lifecycle, PluginState::Failed);
            drop(lifecycle);
            shared.event(Some(&plugin.name), EventKind::Crashed { exit: status });
        }
    }
}

fn plugin_snapshot(plugin: &Plugin) -> PluginSnapshot {
    let lifecycle = plugin
        .lifecycle
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let hooks = plugin
        .stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(hook, stats)| (hook.clone(), stats.snapshot()))
        .collect();
    let output = plugin.output.lock().unwrap_or_else(PoisonError::into_inner);
    let recent_output = output
        .lines
        .iter()
        .skip(output.lines.len().saturating_sub(20))
        .cloned()
        .collect();
    let active_mechanisms = crate::sandbox::Mechanism::ALL
        .into_iter()
        .filter(|mechanism| {
            lifecycle
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
        dir: plugin.dir.display().to_string(),
        state: lifecycle.state,
        reason: lifecycle.reason.clone(),
        // Health checks arrive with monitoring; until then the engine does not claim to know.
        health: Health::Unknown,
        isolation: lifecycle.manifest.as_ref().map_or_else(
            || "process".to_owned(),
            |manifest| manifest.isolation.mode.as_str().to_owned(),
        ),
        mechanisms: lifecycle.mechanisms.clone(),
        active_mechanisms,
        worker_pid: lifecycle.worker_pid,
        sandbox_pid: lifecycle.sandbox_pid,
        cgroup: lifecycle.cgroup.clone(),
        trust: lifecycle.trust.clone(),
        hooks,
        violations: lifecycle.violations,
        emitted: lifecycle.emitted,
        last_exit: lifecycle.last_exit,
        output_dropped: output.dropped,
        recent_output,
    }
}
