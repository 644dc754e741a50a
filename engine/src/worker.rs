//! The engine's side of one sandboxed worker: spawn it (from a long-lived spawner thread,
//! posix_spawn, never a fork of the engine), put it into its cgroup, follow its handshake,
//! hold its seccomp listener, call its hooks, capture its output, and stop it leaving
//! nothing behind.

mod calls;
pub(crate) use calls::EMIT_THREADS;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use serde::{Deserialize, Serialize};

use crate::ipc::{
    CallRef, Channel, ConfinementPlan, EngineMessage, IpcError, PROTOCOL_VERSION, StepReport,
    WorkerMessage,
};
use crate::sandbox::Mechanism;
use crate::sandbox::cgroup::{CgroupLimits, EngineScope, PluginCgroup, ThreadEntry};
use crate::sandbox::landlock::{FsPolicy, PathVerdict};
use crate::sandbox::process::ProcessHandle;
use crate::sandbox::seccomp::{
    Capability, FileAccess, FileOperand, Notification, NotifyListener, Verdict, capability_for,
    is_file_syscall,
};
use calls::Calls;

/// How long each handshake step (loading and creating the plugin included) may take
/// before the worker is considered broken.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a worker could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot spawn the worker {}: {reason}", binary.display())]
    Spawn { binary: PathBuf, reason: String },
    #[error("worker of `{plugin}`: {reason}")]
    Handshake { plugin: String, reason: String },
    #[error("worker of `{plugin}` violated the protocol: {reason}")]
    Protocol { plugin: String, reason: String },
    #[error("required confinement of `{plugin}` failed: {mechanism}: {detail}")]
    Confinement {
        plugin: String,
        mechanism: String,
        detail: String,
    },
    #[error("`{plugin}` failed to load: {reason}")]
    Load { plugin: String, reason: String },
    #[error("cgroup for `{plugin}`: {reason}")]
    Cgroup { plugin: String, reason: String },
    #[error("IPC with the worker of `{plugin}`: {error}")]
    Ipc { plugin: String, error: IpcError },
}

/// Whether one mechanism is active for a worker, as established by the kernel-facing
/// steps (the engine's own cgroup step and the worker's step reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MechanismState {
    pub active: bool,
    pub detail: String,
}

/// Something a worker did that the engine must know about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerEvent {
    /// A forbidden syscall, caught by the seccomp filter and answered EPERM by the engine.
    ForbiddenSyscall {
        syscall: String,
        detail: String,
        pid: u32,
    },
    /// A file-system call outside the worker's file rules (`fs_read`/`fs_write` and the
    /// system paths), refused by the engine with `EACCES` — what Landlock would answer —
    /// while the caller waited in the seccomp filter.
    FsDenied {
        syscall: String,
        path: String,
        access: FileAccess,
        pid: u32,
    },
    /// Audit mode: a call the plugin's capabilities would not allow, let through and
    /// recorded — either one a capability grants (`capability`) or file paths its
    /// `fs_read`/`fs_write` do not cover (`files`).
    Audited {
        syscall: String,
        detail: String,
        capability: Option<Capability>,
        files: Vec<FileOperand>,
    },
    /// The worker broke the protocol and was killed.
    ProtocolViolation { reason: String },
    /// The engine failed to receive from the worker's socket for a reason of its own (no
    /// memory for the buffer, say); it tries again. Said at most once a second.
    ReceiveFailed { reason: String },
    /// A line the plugin wrote to stdout/stderr or logged through the host API.
    Output { stream: OutputStream, line: String },
    /// Lines never passed on, only counted: written to stdout/stderr past
    /// [`OUTPUT_LINES_PER_SEC`] (counted where they were read), or logged past
    /// [`WORKER_LOG_LINES_PER_SEC`] (counted by the worker, `LogsDropped`).
    OutputDropped { lines: u64 },
    /// The worker's seccomp notifications came faster than [`NOTIFICATIONS_PER_SEC`]: its
    /// notified calls now wait their turn. Sent at most once a minute.
    NotificationsPaced { per_sec: u32 },
    /// The worker process ended.
    Exited { status: ExitStatus },
    /// The worker's cgroup could not be removed after it was killed (a process stuck in
    /// the kernel, say): it and whatever is in it are left until the next engine start.
    CgroupLeft { cgroup: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputStream {
    Stdout,
    Stderr,
    /// `host.log` at a level: error, warn, info, debug.
    Log {
        level: u32,
    },
}

/// How a worker ended: `{"code": n}` or `{"signal": n}` in JSON (snapshots, events, the
/// audit file). Records written before that shape, `{"code": {"code": n}}`, still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ExitStatus {
    Code { code: i32 },
    Signal { signal: i32 },
}

impl<'de> Deserialize<'de> for ExitStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Code {
            code: i32,
        }
        #[derive(Deserialize)]
        struct Signal {
            signal: i32,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Code { code: i32 },
            Signal { signal: i32 },
            TaggedCode { code: Code },
            TaggedSignal { signal: Signal },
        }
        Ok(match Shape::deserialize(deserializer)? {
            Shape::Code { code }
            | Shape::TaggedCode {
                code: Code { code },
            } => Self::Code { code },
            Shape::Signal { signal }
            | Shape::TaggedSignal {
                signal: Signal { signal },
            } => Self::Signal { signal },
        })
    }
}

/// Where a worker's events go (the plugin's actor, or a test's channel).
pub type EventSink = Arc<dyn Fn(WorkerEvent) + Send + Sync>;

/// The engine's side of a plugin's emits, in two steps: whether one may go out is decided
/// at once where it arrived, and only an admitted one calls anybody (on a thread that may
/// wait for them).
pub trait Emits: Send + Sync {
    /// Checks an emit `depth` deep without calling anyone: `Err` holds the `abi::EMIT_*`
    /// code a refused one is answered with. Must not block: it runs on the thread that
    /// received the emit.
    fn admit(&self, hook: &str, depth: u32) -> Result<(), i32>;

    /// Calls the subscribers of an admitted emit; the `abi::EMIT_*` code of the outcome.
    fn dispatch(&self, hook: &str, payload: &[u8], depth: u32) -> i32;
}

/// A plain function `(hook, payload, depth)` → code admits every emit and answers it.
impl<F> Emits for F
where
    F: Fn(&str, &[u8], u32) -> i32 + Send + Sync,
{
    fn admit(&self, _hook: &str, _depth: u32) -> Result<(), i32> {
        Ok(())
    }

    fn dispatch(&self, hook: &str, payload: &[u8], depth: u32) -> i32 {
        self(hook, payload, depth)
    }
}

/// Answers a plugin's emits (see [`Emits`]).
pub type EmitHandler = Arc<dyn Emits>;

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code { code } => write!(f, "exit code {code}"),
            ExitStatus::Signal { signal } => match Signal::try_from(*signal) {
                Ok(name) => write!(f, "killed by signal {signal} ({name})"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

/// How a worker ended, once it has; `wait` blocks until then (or a deadline).
#[derive(Debug, Default)]
pub struct ExitWatch {
    status: Mutex<Option<ExitStatus>>,
    changed: std::sync::Condvar,
}

impl ExitWatch {
    fn set(&self, status: ExitStatus) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
        self.changed.notify_all();
    }

    fn get(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the worker has ended or `timeout` passed; returns how it ended.
    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        let (status, _) = self
            .changed
            .wait_timeout_while(status, timeout, |status| status.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        *status
    }
}

/// The answer to one hook call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    pub status: i32,
    pub body: Vec<u8>,
    pub duration: Duration,
    /// When it ended on the statistics' clock, where the caller read that clock anyway (an
    /// in-process call), so recording it needs no second read.
    pub finished: Option<quanta::Instant>,
}

impl CallOutcome {
    #[must_use]
    pub fn finished_at(self, finished: quanta::Instant) -> Self {
        Self {
            finished: Some(finished),
            ..self
        }
    }
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("timed out after {timeout:?}")]
    Timeout {
        timeout: Duration,
        /// How long the call took when it did end, late: known in process, where a call
        /// runs to its end; `None` for a worker, whose late reply is discarded.
        late_by_end: Option<Duration>,
    },
    #[error("the worker is gone")]
    WorkerGone,
}

/// What it takes to start one worker.
pub struct WorkerSpec<'a> {
    pub plugin: String,
    pub host_binary: PathBuf,
    /// The library's memfd: sealed already, or still being filled — the worker loads it
    /// only at [`LaunchedWorker::load`], and refuses it unless sealed.
    pub library: BorrowedFd<'a>,
    pub plan: ConfinementPlan,
    pub limits: CgroupLimits,
    /// The only environment the worker gets.
    pub env: Vec<(String, String)>,
    /// Where the plugin's emits go; without one, every emit is refused.
    pub emit: Option<EmitHandler>,
}

impl std::fmt::Debug for WorkerSpec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSpec")
            .field("plugin", &self.plugin)
            .field("host_binary", &self.host_binary)
            .field("plan", &self.plan)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Starts workers from one long-lived thread: `PR_SET_PDEATHSIG` fires when the spawning
/// *thread* exits, so spawning from short-lived threads would kill workers at random.
#[derive(Debug, Clone)]
pub struct Spawner {
    requests: mpsc::Sender<SpawnRequest>,
}

/// What to spawn: the binary, its arguments and environment, and the descriptors it gets.
struct Launch {
    binary: PathBuf,
    args: Vec<CString>,
    env: Vec<CString>,
    /// (source, target) descriptor numbers in the child.
    fds: Vec<(OwnedFd, i32)>,
    /// The cgroup the spawner thread enters so that the child is born in it (v1).
    cgroup: Option<ThreadEntry>,
}

struct SpawnRequest {
    launch: Launch,
    reply: mpsc::Sender<Result<Pid, String>>,
}

impl Spawner {
    /// The process-wide spawner (its thread lives as long as the process).
    pub fn global() -> &'static Spawner {
        static SPAWNER: OnceLock<Spawner> = OnceLock::new();
        SPAWNER.get_or_init(|| {
            let (requests, inbox) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("plugboard-spawner".to_owned())
                .spawn(move || {
                    for request in inbox {
                        let launch = &request.launch;
                        let result = match &launch.cgroup {
                            Some(cgroup) => cgroup
                                .run_inside(|| spawn_now(launch))
                                .map_err(|err| err.to_string())
                                .and_then(|spawned| spawned.map_err(|err| err.to_string())),
                            None => spawn_now(launch).map_err(|err| err.to_string()),
                        };
                        let _ = request.reply.send(result);
                    }
                })
                .expect("the spawner thread starts");
            Spawner { requests }
        })
    }

    fn spawn(&self, launch: Launch) -> Result<Pid, String> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(SpawnRequest { launch, reply })
            .map_err(|_| "the spawner thread is gone".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the spawner thread is gone".to_owned())?
    }
}

/// Spawns the worker binary with stdin `/dev/null`, the listed descriptors at their
/// numbers, and no other descriptor of the engine's process (see
/// [`crate::sandbox::spawn::spawn_with_only`]).
fn spawn_now(request: &Launch) -> nix::Result<Pid> {
    let binary = CString::new(request.binary.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::Error::EINVAL)?;
    let mut args = vec![binary.clone()];
    args.extend(request.args.iter().cloned());
    let fds: Vec<_> = request
        .fds
        .iter()
        .map(|(fd, target)| (fd.as_fd(), *target))
        .collect();
    crate::sandbox::spawn::spawn_with_only(&binary, &args, &request.env, &fds)
}

/// Descriptors must arrive at numbers above the ones they are dup2'd onto, or a dup2
/// could overwrite a source before it is copied.
fn above_targets(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 4 {
        return Ok(fd);
    }
    crate::sandbox::process::duplicate_at_or_above(fd.as_fd(), 10)
}

/// A running, confined worker.
#[derive(Debug)]
pub struct Worker {
    plugin: String,
    /// The intermediary process the engine spawned (in the engine's pid namespace).
    pid: Pid,
    /// Pid 1 of the worker's pid namespace, which runs plugin code (host pid).
    sandbox_pid: u32,
    /// Both processes, to kill by pidfd (see [`ProcessHandle`]).
    process: Arc<ProcessHandle>,
    sandbox_process: Option<ProcessHandle>,
    cgroup: Mutex<Option<PluginCgroup>>,
    cgroup_path: String,
    cgroup_dirs: Vec<PathBuf>,
    mechanisms: BTreeMap<Mechanism, MechanismState>,
    calls: Arc<Calls>,
    exited: Arc<AtomicBool>,
    exit_status: Arc<ExitWatch>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped after the fields above: the uid is free again once the worker is killed.
    _uid: Option<UidLease>,
}

/// Spawns `plugboard-host` with the socket, the sealed library and the output pipes as its
/// only descriptors (3, 4, 1, 2; stdin /dev/null). Returns its pid, the engine's end of the
/// socket and the read ends of the pipes.
fn spawn_process(
    spec: &WorkerSpec<'_>,
    cgroup: Option<ThreadEntry>,
) -> Result<(Pid, Channel, OwnedFd, OwnedFd), WorkerError> {
    let plugin = spec.plugin.clone();
    let io = |err: std::io::Error| handshake_error(&plugin, err.to_string());
    let (engine_end, worker_end) = Channel::pair().map_err(io)?;
    let (stdout_read, stdout_write) = pipe2(OFlag::O_CLOEXEC).map_err(|e| io(e.into()))?;
    let (stderr_read, stderr_write) = pipe2(OFlag::O_CLOEXEC).map_err(|e| io(e.into()))?;
    let library = spec.library.try_clone_to_owned().map_err(io)?;
    let fds = vec![
        (above_targets(worker_end.into_fd()).map_err(io)?, 3),
        (above_targets(library).map_err(io)?, 4),
        (above_targets(stdout_write).map_err(io)?, 1),
        (above_targets(stderr_write).map_err(io)?, 2),
    ];
    let env = spec
        .env
        .iter()
        .filter_map(|(key, value)| CString::new(format!("{key}={value}")).ok())
        .collect();
    let args = vec![CString::new(format!("--plugin={plugin}")).unwrap_or_default()];
    let pid = Spawner::global()
        .spawn(Launch {
            binary: spec.host_binary.clone(),
            args,
            env,
            fds,
            cgroup,
        })
        .map_err(|reason| WorkerError::Spawn {
            binary: spec.host_binary.clone(),
            reason,
        })?;
    Ok((pid, engine_end, stdout_read, stderr_read))
}

fn handshake_error(plugin: &str, reason: impl Into<String>) -> WorkerError {
    WorkerError::Handshake {
        plugin: plugin.to_owned(),
        reason: reason.into(),
    }
}

/// A worker spawned and confined, waiting for the engine's word to load its library: the
/// first half of [`Worker::start`]. Between the halves the engine can finish copying and
/// verifying the library. Dropped without [`LaunchedWorker::load`], the worker is killed
/// and its cgroup removed; no plugin code ever ran in it.
pub struct LaunchedWorker {
    plugin: String,
    starting: Starting,
    channel: Arc<Channel>,
    outputs: Captured,
    sandbox_pid: u32,
    sandbox_process: Option<ProcessHandle>,
    /// Shared with its [`StartCancel`]s.
    phase: Arc<Mutex<StartPhase>>,
    mechanisms: BTreeMap<Mechanism, MechanismState>,
    exited: Arc<AtomicBool>,
    listener_thread: Option<JoinHandle<()>>,
    emit: Option<EmitHandler>,
    events: EventSink,
}

/// Where a launched worker's start stands, for [`StartCancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartPhase {
    Waiting,
    Ready,
    Cancelled,
}

/// Ends a launched worker's wait for `Ready` from another thread (an engine shutting down
/// does not wait out a slow `create`): its channel is shut down, so the wait fails at once
/// and the worker, never ready, is killed as any failed start is. Once the worker was
/// ready it does nothing (the channel then serves the running worker).
#[derive(Debug, Clone)]
pub struct StartCancel {
    channel: std::sync::Weak<Channel>,
    phase: Arc<Mutex<StartPhase>>,
}

impl StartCancel {
    pub fn cancel(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if *phase != StartPhase::Waiting {
            return;
        }
        *phase = StartPhase::Cancelled;
        if let Some(channel) = self.channel.upgrade() {
            let _ = nix::sys::socket::shutdown(
                channel.as_fd().as_raw_fd(),
                nix::sys::socket::Shutdown::Both,
            );
        }
    }

    /// Whether [`StartCancel::cancel`] ended the start.
    pub fn cancelled(&self) -> bool {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) == StartPhase::Cancelled
    }
}

impl LaunchedWorker {
    /// A way to end [`LaunchedWorker::load`]'s wait from another thread.
    pub fn start_cancel(&self) -> StartCancel {
        StartCancel {
            channel: Arc::downgrade(&self.channel),
            phase: Arc::clone(&self.phase),
        }
    }
}

impl std::fmt::Debug for LaunchedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchedWorker")
            .field("plugin", &self.plugin)
            .field("pid", &self.starting.pid)
            .field("sandbox_pid", &self.sandbox_pid)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Spawns, confines and loads one plugin worker, and returns when it is ready or has
    /// failed (then nothing of it is left behind). `spec.library` must be sealed.
    pub fn start<'s>(
        scope: impl Into<Option<&'s EngineScope>>,
        spec: WorkerSpec<'_>,
        events: &EventSink,
    ) -> Result<Worker, WorkerError> {
        Self::launch(scope, spec, events)?.load()
    }

    /// Spawns the worker and lets it confine itself, up to its seccomp listener; it then
    /// waits for [`LaunchedWorker::load`]. `spec.library` may still be being filled.
    ///
    /// Without a `scope` (the engine has no cgroups), or when its cgroup cannot be made,
    /// the worker runs without one if the plan does not require `cgroup` — its cgroup
    /// mechanism shown inactive with the reason — and is refused if it does.
    pub fn launch<'s>(
        scope: impl Into<Option<&'s EngineScope>>,
        spec: WorkerSpec<'_>,
        events: &EventSink,
    ) -> Result<LaunchedWorker, WorkerError> {
        let scope = scope.into();
        let plugin = spec.plugin.clone();
        let ipc = |source| WorkerError::Ipc {
            plugin: plugin.clone(),
            error: source,
        };
        let (starting, channel, stdout_read, stderr_read, cgroup_missing) =
            spawn_in_cgroup(scope, &spec)?;
        let require = spec.plan.require.clone();
        let file_rules = (
            spec.plan.fs_read.clone(),
            spec.plan.fs_write.clone(),
            spec.plan.audit,
            spec.plan.network,
        );
        let mut plan = spec.plan;
        // Compiled here once per policy rather than by every worker; should it fail, the
        // worker compiles it and reports the failure as its seccomp step.
        if plan.seccomp_program.is_empty()
            && let Ok(program) = crate::sandbox::seccomp::compiled_for(plan.syscall_policy())
        {
            plan.seccomp_program = crate::sandbox::seccomp::pack_program(&program);
        }
        channel
            .send(&EngineMessage::Welcome {
                protocol: PROTOCOL_VERSION,
                plan,
            })
            .map_err(ipc)?;
        channel.send(&EngineMessage::Proceed).map_err(ipc)?;

        let (steps, sandbox_pid) = match recv_within(&channel, &plugin)? {
            WorkerMessage::Confined { steps, sandbox_pid } => (steps, sandbox_pid),
            other => {
                return Err(handshake_error(
                    &plugin,
                    format!("expected Confined, got {other:?}"),
                ));
            }
        };
        let cgroup = match (&starting.cgroup, cgroup_missing) {
            (Some(cgroup), _) => Ok(cgroup.display_path()),
            (None, missing) => Err(missing.unwrap_or_default()),
        };
        let mechanisms = mechanisms_from(&steps, cgroup);
        // A required mechanism must be reported active. A failed step is named first (the
        // worker stops confining itself there); one missing from the report (a worker that
        // stopped half-way for another reason) refuses the plugin too.
        let required = |name: &str| require.iter().any(|wanted| wanted == name);
        let failed = steps
            .iter()
            .find(|step| !step.ok && required(&step.mechanism))
            .map(|step| (step.mechanism.clone(), step.detail.clone()))
            .or_else(|| {
                mechanisms
                    .iter()
                    .find(|(mechanism, state)| !state.active && required(mechanism.name()))
                    .map(|(mechanism, state)| (mechanism.name().to_owned(), state.detail.clone()))
            });
        if let Some((mechanism, detail)) = failed {
            return Err(WorkerError::Confinement {
                plugin: plugin.clone(),
                mechanism,
                detail,
            });
        }
        let seccomp_active = mechanisms
            .get(&Mechanism::Seccomp)
            .is_some_and(|state| state.active);
        let exited = Arc::new(AtomicBool::new(false));
        // Served from now on: the plugin's constructor runs under the filter, and a call it
        // makes there must be answered for the worker to become ready.
        let listener_thread = if seccomp_active {
            let policy = ListenerPolicy::new(file_rules, &mechanisms);
            Some(serve_listener(&channel, &plugin, policy, &exited, events)?)
        } else {
            None
        };
        // Opened while the child is known alive (it has just reported from inside).
        let sandbox_process = (sandbox_pid != 0)
            .then(|| i32::try_from(sandbox_pid).ok())
            .flatten()
            .map(|pid| ProcessHandle::open(Pid::from_raw(pid)));
        Ok(LaunchedWorker {
            plugin,
            starting,
            channel,
            outputs: Captured::new((stdout_read, stderr_read)),
            sandbox_pid,
            sandbox_process,
            phase: Arc::new(Mutex::new(StartPhase::Waiting)),
            mechanisms,
            exited,
            listener_thread,
            emit: spec.emit,
            events: Arc::clone(events),
        })
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The process the engine spawned (the intermediary in the engine's pid namespace).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// The host pid of the process running plugin code (pid 1 of its namespace).
    pub fn sandbox_pid(&self) -> u32 {
        self.sandbox_pid
    }

    /// The worker's cgroup, as shown to people (`/plugboard-engine-…/plugboard-<plugin>-…`).
    pub fn cgroup_path(&self) -> &str {
        &self.cgroup_path
    }

    /// The cgroup's directories, one per controller (v1) or one (v2).
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroup_dirs
    }

    /// The limits as the kernel holds them, read back from the cgroup files.
    pub fn cgroup_limits(&self) -> Option<CgroupLimits> {
        let cgroup = self.cgroup.lock().unwrap_or_else(PoisonError::into_inner);
        cgroup.as_ref().and_then(|cgroup| cgroup.read_limits().ok())
    }

    pub fn mechanisms(&self) -> &BTreeMap<Mechanism, MechanismState> {
        &self.mechanisms
    }

    pub fn is_running(&self) -> bool {
        !self.exited.load(Ordering::SeqCst)
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit_status.get()
    }

    /// Calls `hook`; waits at most `timeout`. A late reply is discarded.
    pub fn call(
        &self,
        hook: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<CallOutcome, CallFailure> {
        self.call_at_depth(hook, payload, 0, timeout)
    }

    /// Calls `hook` on behalf of an emit chain `depth` emits deep.
    ///
    /// The calling thread receives its reply itself when no other call is receiving (see
    /// the `calls` module), so a call costs one send, one receive and no thread hand-off.
    pub fn call_at_depth(
        &self,
        hook: &str,
        payload: &[u8],
        depth: u32,
        timeout: Duration,
    ) -> Result<CallOutcome, CallFailure> {
        let _emit_call = (depth > 0).then(|| self.calls.emit_call(depth));
        self.calls.request(
            |id| CallRef {
                id,
                hook,
                payload,
                depth,
            },
            timeout,
        )
    }

    /// Calls several hooks at once, pipelined: the calls go out packed up to 64 to a frame,
    /// up to 256 ahead of their replies; a serving thread of the worker runs the calls of a
    /// frame in order and answers them in one frame (so a slow hook delays the calls
    /// packed after it). Waits at most `timeout` for all of them; the outcomes are in the
    /// order of `calls`, each with its own duration (from the batch's start to its reply).
    pub fn call_batch(
        &self,
        calls: &[(&str, &[u8])],
        timeout: Duration,
    ) -> Vec<Result<CallOutcome, CallFailure>> {
        let start = Instant::now();
        let results = self.calls.request_many(calls, 0, timeout);
        results
            .into_iter()
            .map(|result| {
                result.map(|(status, body, received)| CallOutcome {
                    status,
                    body,
                    duration: received.saturating_duration_since(start),
                    finished: None,
                })
            })
            .collect()
    }

    /// Requests sent and not answered yet (calls and health checks).
    pub fn in_flight(&self) -> usize {
        self.calls.in_flight()
    }

    /// Asks the plugin for its health.
    pub fn health(&self, timeout: Duration) -> Result<CallOutcome, CallFailure> {
        self.calls
            .request(|id| EngineMessage::Health { id }, timeout)
    }

    /// Asks the worker to shut down, kills it after `grace`, and removes its cgroup: no
    /// process and no cgroup remain.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        // A worker that broke the protocol is being killed already: asked to shut down
        // first, it could exit cleanly before the kill lands.
        if !self.calls.broke_protocol() {
            // A worker that reads nothing (its hooks stuck, its socket full of calls) is
            // not waited on for room beyond the grace period: it is killed then.
            let deadline = Instant::now() + grace;
            let _ = self
                .calls
                .channel()
                .send_before(&EngineMessage::Shutdown, deadline);
            self.exit_status
                .wait(deadline.saturating_duration_since(Instant::now()));
        }
        self.kill();
        self.exit_status()
    }

    /// Kills the worker now (both processes, and whatever else is in its cgroup), waits
    /// for it to be reaped and removes its cgroup.
    pub fn kill(&self) {
        // Only a worker not reaped yet is signalled by pid: once reaped (a crash, a stop),
        // its pids may be another process's. Whatever is left in its cgroup goes with the
        // cgroup below.
        // (By pidfd, so that also holds between the reap and the exit status being set.)
        if self.exit_status().is_none() {
            // The sandboxed child first: killed after its parent, it would be an orphan
            // left for the host's init to reap.
            if let Some(sandbox) = &self.sandbox_process {
                let _ = sandbox.kill();
            }
            let _ = self.process.kill();
        }
        self.calls.mark_gone();
        let cgroup = self
            .cgroup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(cgroup) = cgroup {
            if let Err(err) = cgroup.remove() {
                self.calls.report(WorkerEvent::CgroupLeft {
                    cgroup: self.cgroup_path.clone(),
                    reason: err.to_string(),
                });
            }
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        let current = std::thread::current().id();
        for thread in threads {
            // The waiter or reader may be the one stopping its own worker.
            if thread.thread().id() != current {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A worker between spawn and ready: dropped early, it kills the process and removes the
/// cgroup.
struct Starting {
    pid: Pid,
    cgroup: Option<PluginCgroup>,
    done: bool,
    /// Handed to the [`Worker`] once ready.
    uid: Option<UidLease>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.remove();
        }
    }
}

impl LaunchedWorker {
    /// The worker's host pid.
    pub fn pid(&self) -> u32 {
        self.starting.pid.as_raw().unsigned_abs()
    }

    /// The host pid of the process that will run plugin code.
    pub fn sandbox_pid(&self) -> u32 {
        self.sandbox_pid
    }

    /// The worker's cgroup directories, one per hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.starting
            .cgroup
            .as_ref()
            .map(PluginCgroup::paths)
            .unwrap_or_default()
    }

    /// Tells the worker its library is sealed and verified, and returns once the plugin
    /// is loaded and its instance created (or has failed: then nothing is left behind).
    pub fn load(self) -> Result<Worker, WorkerError> {
        let LaunchedWorker {
            plugin,
            mut starting,
            channel,
            mut outputs,
            sandbox_pid,
            sandbox_process,
            phase,
            mechanisms,
            exited,
            listener_thread,
            emit,
            events,
        } = self;
        channel
            .send(&EngineMessage::Load)
            .map_err(|source| WorkerError::Ipc {
                plugin: plugin.clone(),
                error: source,
            })?;
        await_ready(&channel, &plugin, &events, &mut outputs)?;
        {
            // Ready, unless a cancel came first (its shutdown of the channel may have
            // raced the Ready): from here on a cancel does nothing.
            let mut phase = phase.lock().unwrap_or_else(PoisonError::into_inner);
            if *phase == StartPhase::Cancelled {
                return Err(handshake_error(
                    &plugin,
                    "the start was cancelled (the engine is shutting down)".to_owned(),
                ));
            }
            *phase = StartPhase::Ready;
        }

        let pid = starting.pid;
        // Opened before the follower starts: until then nobody reaps the worker.
        let process = Arc::new(ProcessHandle::open(pid));
        let exit_status = Arc::new(ExitWatch::default());
        let calls = Arc::new(Calls::new(
            channel,
            Arc::clone(&process),
            Arc::clone(&events),
            emit,
        ));
        let mut threads = start_threads(
            &plugin,
            pid,
            outputs,
            &WorkerState {
                exited: Arc::clone(&exited),
                exit_status: Arc::clone(&exit_status),
                calls: Arc::clone(&calls),
            },
            &events,
        );
        threads.extend(listener_thread);
        starting.done = true;
        let cgroup = starting.cgroup.take();
        let uid = starting.uid.take();
        Ok(Worker {
            plugin,
            pid,
            sandbox_pid,
            process,
            sandbox_process,
            cgroup_path: cgroup
                .as_ref()
                .map(PluginCgroup::display_path)
                .unwrap_or_default(),
            cgroup_dirs: cgroup.as_ref().map(PluginCgroup::paths).unwrap_or_default(),
            cgroup: Mutex::new(cgroup),
            mechanisms,
            calls,
            exited,
            exit_status,
            threads: Mutex::new(threads),
            _uid: uid,
        })
    }
}

/// What the worker's threads share with the [`Worker`].
struct WorkerState {
    exited: Arc<AtomicBool>,
    exit_status: Arc<ExitWatch>,
    calls: Arc<Calls>,
}

/// The threads that follow a running worker: its idle reader (it receives while no caller
/// does, see the `calls` module) and its follower (its output pipes, then its exit). (Its
/// seccomp listener runs already: see [`Worker::start`].)
fn start_threads(
    plugin: &str,
    pid: Pid,
    captured: Captured,
    state: &WorkerState,
    events: &EventSink,
) -> Vec<JoinHandle<()>> {
    let calls = Arc::clone(&state.calls);
    vec![
        named(plugin, "reader")
            .spawn(move || calls.idle_reader())
            .expect("thread starts"),
        spawn_follower(plugin, pid, captured, state, Arc::clone(events)),
    ]
}

/// The spawned worker, in its cgroup — or, where the plan does not require one, without
/// it, with the reason (the last value).
type Spawned = (Starting, Arc<Channel>, OwnedFd, OwnedFd, Option<String>);

/// Creates the worker's cgroup and spawns the worker into it: born inside on v1, moved
/// after its Hello on v2 (or if the kernel shows it elsewhere). Either way the worker waits
/// for the Welcome before it confines itself or loads anything.
fn spawn_in_cgroup(
    scope: Option<&EngineScope>,
    spec: &WorkerSpec<'_>,
) -> Result<Spawned, WorkerError> {
    let plugin = &spec.plugin;
    let cgroup_error = |reason: String| WorkerError::Cgroup {
        plugin: plugin.clone(),
        reason,
    };
    let created = match scope {
        Some(scope) => {
            PluginCgroup::create(scope, plugin, &spec.limits).map_err(|err| err.to_string())
        }
        None => Err("the engine has no cgroups".to_owned()),
    };
    let required = spec
        .plan
        .require
        .iter()
        .any(|mechanism| mechanism == Mechanism::Cgroup.name());
    let (cgroup, missing) = match created {
        Ok(cgroup) => (Some(cgroup), None),
        Err(reason) if required => return Err(cgroup_error(reason)),
        // Memory, CPU and pids limits are the cgroup's: without it, none hold.
        Err(reason) => (
            None,
            Some(format!("{reason}: no memory, CPU or pids limit")),
        ),
    };
    let (pid, engine_end, stdout_read, stderr_read) =
        match spawn_process(spec, cgroup.as_ref().and_then(PluginCgroup::thread_entry)) {
            Ok(spawned) => spawned,
            Err(error) => {
                if let Some(cgroup) = cgroup {
                    let _ = cgroup.remove();
                }
                return Err(error);
            }
        };
    // From here on, a failure must kill the worker and remove its cgroup.
    let starting = Starting {
        pid,
        cgroup,
        done: false,
        uid: Some(UidLease::hold(spec.plan.uid)),
    };
    let channel = Arc::new(engine_end);
    expect_hello(&channel, plugin, pid)?;
    if let Some(cgroup) = &starting.cgroup {
        let raw_pid = pid.as_raw().unsigned_abs();
        if !cgroup.holds_process(raw_pid) {
            cgroup
                .add_process(raw_pid)
                .map_err(|err| cgroup_error(err.to_string()))?;
        }
    }
    Ok((starting, channel, stdout_read, stderr_read, missing))
}

fn expect_hello(channel: &Channel, plugin: &str, pid: Pid) -> Result<(), WorkerError> {
    match recv_within(channel, plugin)? {
        WorkerMessage::Hello {
            protocol,
            pid: reported,
        } if protocol == PROTOCOL_VERSION && reported == pid.as_raw().unsigned_abs() => Ok(()),
        WorkerMessage::Hello { protocol, .. } if protocol != PROTOCOL_VERSION => {
            Err(handshake_error(
                plugin,
                format!("worker speaks protocol {protocol}, the engine {PROTOCOL_VERSION}"),
            ))
        }
        other => Err(handshake_error(
            plugin,
            format!("expected Hello from pid {pid}, got {}", other.kind()),
        )),
    }
}

/// Receives the worker's seccomp listener and answers its calls on a thread of its own.
fn serve_listener(
    channel: &Channel,
    plugin: &str,
    policy: ListenerPolicy,
    exited: &Arc<AtomicBool>,
    events: &EventSink,
) -> Result<JoinHandle<()>, WorkerError> {
    let listener = receive_listener(channel, plugin)?;
    Ok(spawn_listener(
        plugin,
        listener,
        policy,
        Arc::clone(exited),
        Arc::clone(events),
    ))
}

fn receive_listener(channel: &Channel, plugin: &str) -> Result<NotifyListener, WorkerError> {
    match channel.recv_with_fd_timeout::<WorkerMessage>(HANDSHAKE_TIMEOUT) {
        Ok(Some((WorkerMessage::SeccompListener, Some(fd)))) => Ok(NotifyListener::new(fd)),
        Ok(Some((other, _))) => Err(handshake_error(
            plugin,
            format!("expected SeccompListener with its fd, got {other:?}"),
        )),
        Ok(None) => Err(handshake_error(
            plugin,
            format!("no seccomp listener within {HANDSHAKE_TIMEOUT:?}"),
        )),
        Err(source) => Err(WorkerError::Ipc {
            plugin: plugin.to_owned(),
            error: source,
        }),
    }
}

/// Waits for Ready; the plugin may log while it is being created, and write to its stdout
/// and stderr, which are read meanwhile.
fn await_ready(
    channel: &Channel,
    plugin: &str,
    events: &EventSink,
    outputs: &mut Captured,
) -> Result<(), WorkerError> {
    await_ready_reading(
        channel,
        plugin,
        events,
        Instant::now() + HANDSHAKE_TIMEOUT,
        Some(outputs),
    )
}

/// [`await_ready`] with its deadline given, without output pipes.
#[cfg(test)]
fn await_ready_before(
    channel: &Channel,
    plugin: &str,
    events: &EventSink,
    deadline: Instant,
) -> Result<(), WorkerError> {
    await_ready_reading(channel, plugin, events, deadline, None)
}

/// Until the channel has a message (or the deadline passes), reads what the output pipes
/// hold. Returns at once without pipes.
fn read_output_until_message(
    channel: &Channel,
    outputs: &mut Captured,
    events: &EventSink,
    deadline: Instant,
    chunk: &mut [u8],
) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        // At the follower's pace: a constructor writing as fast as it can costs the engine
        // no more here than once it runs. Meanwhile only the channel is watched.
        let wait = outputs.wait_before_reading(chunk.len());
        let timeout = if wait.is_zero() { left } else { left.min(wait) };
        let millis = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut ready = [false; 2];
        let message = {
            let mut polled = vec![PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
            let open: Vec<usize> = (0..2)
                .filter(|&index| wait.is_zero() && outputs.pipes[index].fd.is_some())
                .collect();
            for &index in &open {
                if let Some(fd) = &outputs.pipes[index].fd {
                    polled.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            match poll(&mut polled, PollTimeout::from(millis)) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(_) => return,
            }
            let fired =
                |polled: &PollFd<'_>| polled.revents().is_some_and(|events| !events.is_empty());
            for (&index, polled) in open.iter().zip(&polled[1..]) {
                ready[index] = fired(polled);
            }
            fired(&polled[0])
        };
        if ready.iter().any(|ready| *ready) {
            outputs.last_read = Instant::now();
            let read = read_ready(
                &mut outputs.pipes,
                ready,
                chunk,
                &mut outputs.budget,
                events,
            );
            outputs.budget.report(events);
            outputs.bytes.spend(tokens(read));
        }
        if message {
            return;
        }
    }
}

/// [`await_ready`]'s loop: messages until Ready, the output pipes read in between.
fn await_ready_reading(
    channel: &Channel,
    plugin: &str,
    events: &EventSink,
    deadline: Instant,
    mut outputs: Option<&mut Captured>,
) -> Result<(), WorkerError> {
    let mut chunk = vec![0u8; if outputs.is_some() { 16 * 1024 } else { 0 }];
    loop {
        if let Some(outputs) = outputs.as_deref_mut() {
            read_output_until_message(channel, outputs, events, deadline, &mut chunk);
        }
        match recv_before(channel, plugin, deadline)? {
            WorkerMessage::Ready => return Ok(()),
            WorkerMessage::Log { level, message } => events(log_line(level, message)),
            WorkerMessage::LogsDropped { lines } => events(WorkerEvent::OutputDropped { lines }),
            // A plugin emitting while it is created: it is not running yet, so nothing is
            // dispatched (as for an in-process plugin); its emit fails, and it goes on.
            WorkerMessage::Emit { id, .. } => {
                let _ = channel.try_send(&EngineMessage::EmitResult {
                    id,
                    code: plugboard_sdk::abi::EMIT_FAILED,
                });
            }
            WorkerMessage::LoadFailed { reason } => {
                return Err(WorkerError::Load {
                    plugin: plugin.to_owned(),
                    reason: crate::text::clipped(reason, crate::text::DETAIL_MAX),
                });
            }
            other => {
                return Err(handshake_error(
                    plugin,
                    format!("expected Ready, got {}", other.kind()),
                ));
            }
        }
    }
}

/// One handshake message, within [`HANDSHAKE_TIMEOUT`].
fn recv_within(channel: &Channel, plugin: &str) -> Result<WorkerMessage, WorkerError> {
    recv_before(channel, plugin, Instant::now() + HANDSHAKE_TIMEOUT)
}

/// One handshake message before `deadline`: a step that lets the worker send several
/// messages (log lines while the plugin is created) has one deadline for all of them, so
/// a plugin cannot hold its start open by logging now and then.
fn recv_before(
    channel: &Channel,
    plugin: &str,
    deadline: Instant,
) -> Result<WorkerMessage, WorkerError> {
    let left = deadline.saturating_duration_since(Instant::now());
    // Past the deadline nothing more is taken, even if the worker keeps the socket full (a
    // constructor that logs in a loop would otherwise hold its start open for ever).
    let received = if left.is_zero() {
        Ok(None)
    } else {
        channel.recv_timeout::<WorkerMessage>(left)
    };
    match received {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(handshake_error(
            plugin,
            format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
        )),
        Err(IpcError::Closed) => Err(handshake_error(
            plugin,
            "the worker exited during the handshake (see its stderr)",
        )),
        Err(source) => Err(WorkerError::Ipc {
            plugin: plugin.to_owned(),
            error: source,
        }),
    }
}

/// What the worker's step reports say, plus the cgroup the engine itself put it in (its
/// path), or why there is none.
fn mechanisms_from(
    steps: &[StepReport],
    cgroup: Result<String, String>,
) -> BTreeMap<Mechanism, MechanismState> {
    let mut mechanisms: BTreeMap<Mechanism, MechanismState> = Mechanism::ALL
        .into_iter()
        .filter(|mechanism| *mechanism != Mechanism::Cgroup)
        .map(|mechanism| {
            let name = mechanism.name().to_owned();
            let state = match steps.iter().find(|step| step.mechanism == name) {
                Some(step) => MechanismState {
                    active: step.ok,
                    detail: step.detail.clone(),
                },
                None => MechanismState {
                    active: false,
                    detail: "not reported by the worker".to_owned(),
                },
            };
            (mechanism, state)
        })
        .collect();
    let (active, detail) = match cgroup {
        Ok(path) => (true, path),
        Err(reason) => (false, reason),
    };
    mechanisms.insert(Mechanism::Cgroup, MechanismState { active, detail });
    mechanisms
}

fn named(plugin: &str, role: &str) -> std::thread::Builder {
    std::thread::Builder::new().name(format!("pb-{role}-{plugin}"))
}

/// Bounded line length so a hostile plugin cannot make the engine buffer without end.
pub(crate) const MAX_LINE: usize = 4096;
/// How much of an output pipe is read at a time.
const OUTPUT_READ: usize = 16 * 1024;

/// Bytes of a worker's stdout and stderr the engine reads per second (and at most this
/// many at once, `OUTPUT_BYTES_BURST`). Reading costs the engine about a nanosecond a
/// byte outside the worker's CPU quota — a worker writing empty lines could keep an engine
/// core busy — and past [`OUTPUT_LINES_PER_SEC`] lines are only counted anyway: past this
/// rate the pipes fill and the worker waits in its writes. Its exit is still seen at once.
pub const OUTPUT_BYTES_PER_SEC: u32 = 16 * 1024 * 1024;
const OUTPUT_BYTES_BURST: u32 = 1024 * 1024;

/// While its lines are only counted (past [`OUTPUT_LINES_PER_SEC`]), a worker's pipes are
/// read at most this often.
const READ_GAP_WHILE_DROPPING: Duration = Duration::from_millis(1);

/// Reads per wake-up while lines are only counted: what two full pipes hold.
const READS_WHILE_DROPPING: usize = 2 * 64 * 1024 / OUTPUT_READ;

/// Reads of [`OUTPUT_READ`] bytes after a worker's exit: two default-sized (64 KiB) pipes.
const AFTER_EXIT_READS: usize = 2 * 64 * 1024 / OUTPUT_READ;

/// A line the plugin logged through the host, cut to [`MAX_LINE`] bytes as its stdout
/// and stderr lines are (those in pieces: a log message is one line).
pub(crate) fn log_line(level: u32, message: String) -> WorkerEvent {
    WorkerEvent::Output {
        stream: OutputStream::Log { level },
        line: crate::text::clipped(message, MAX_LINE),
    }
}

/// Output lines a worker's stdout and stderr may pass on per second (bursts: twice that).
/// The rest are only counted, without being built: a flood of short lines must cost the
/// engine about what writing them costs the worker, not a line's handling each.
pub const OUTPUT_LINES_PER_SEC: f64 = 200.0;

/// Log lines a worker sends the engine per second (bursts: twice that). The worker counts
/// the rest and says how many (`LogsDropped`), so a chatty plugin neither waits in its
/// logging nor makes the engine read lines it would drop; the engine's own rate, below
/// this, still decides what is kept.
pub const WORKER_LOG_LINES_PER_SEC: f64 = 1_000.0;

/// Messages other than replies (log lines, emits, counts of dropped lines) the engine reads
/// from one worker per second, and at most this many at once. Past it, whoever receives
/// waits before reading on, so the worker waits in its sends: a worker writing such
/// frames itself, past its host's own log rate, cannot keep an engine thread busy.
pub const WORKER_MESSAGES_PER_SEC: f64 = 5_000.0;

/// A message that is not a reply costs one more of [`WORKER_MESSAGES_PER_SEC`]'s tokens per
/// this many bytes of text or payload: a log line the host sends (at most [`MAX_LINE`])
/// costs one or two, a megabyte 257 — 5,000 tokens a second read at most about 20 MB.
pub const UNSOLICITED_BYTES_PER_TOKEN: usize = 4096;

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            burst,
            per_sec,
            refilled: Instant::now(),
        }
    }

    /// Adds the tokens earned since the last refill.
    pub fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.refilled).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.refilled = now;
    }

    pub fn has_token(&self) -> bool {
        self.tokens >= 1.0
    }

    /// Spends `count` tokens, more than there are if need be (a debt the refills pay off).
    pub fn spend(&mut self, count: f64) {
        self.tokens -= count;
    }

    /// Takes a token, if there is one.
    pub fn take(&mut self) -> bool {
        let taken = self.has_token();
        if taken {
            self.tokens -= 1.0;
        }
        taken
    }

    /// How long until `count` tokens are saved up (as of the last refill), at most a
    /// second: whoever waits looks again then (a bucket that never refills waits in steps).
    pub fn time_until(&self, count: f64) -> Duration {
        let missing = (count.min(self.burst) - self.tokens).max(0.0);
        let second = Duration::from_secs(1);
        if self.per_sec > 0.0 {
            Duration::try_from_secs_f64(missing / self.per_sec)
                .map_or(second, |wait| wait.min(second))
        } else {
            second
        }
    }
}

/// The follower's budget for its worker's stdout and stderr lines, refilled once per
/// read, and the lines it refused since they were last reported.
struct LineBudget {
    tokens: TokenBucket,
    dropped: u64,
}

impl LineBudget {
    fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            tokens: TokenBucket::new(per_sec, burst),
            dropped: 0,
        }
    }

    fn refill(&mut self) {
        self.tokens.refill();
    }

    fn has_token(&self) -> bool {
        self.tokens.has_token()
    }

    /// Takes a token for a line, or counts the line as dropped.
    fn take(&mut self) -> bool {
        let taken = self.tokens.take();
        if !taken {
            self.dropped += 1;
        }
        taken
    }

    /// Passes on the count of lines dropped since the last report, if any.
    fn report(&mut self, events: &EventSink) {
        if self.dropped > 0 {
            events(WorkerEvent::OutputDropped {
                lines: std::mem::take(&mut self.dropped),
            });
        }
    }
}

/// A worker's stdout and stderr as the engine reads them: the pipes with their partial
/// lines, and the line budget. Read while the plugin is created (a constructor that writes
/// more than a pipe holds would otherwise wait in its write and never become ready), then
/// handed to the follower.
struct Captured {
    pipes: [OutputPipe; 2],
    budget: LineBudget,
    /// The byte rate the pipes are read at ([`OUTPUT_BYTES_PER_SEC`]).
    bytes: TokenBucket,
    last_read: Instant,
}

impl Captured {
    fn new((stdout, stderr): (OwnedFd, OwnedFd)) -> Self {
        Self {
            pipes: [
                OutputPipe::new(stdout, OutputStream::Stdout),
                OutputPipe::new(stderr, OutputStream::Stderr),
            ],
            budget: LineBudget::new(OUTPUT_LINES_PER_SEC, OUTPUT_LINES_PER_SEC * 2.0),
            bytes: TokenBucket::new(
                f64::from(OUTPUT_BYTES_PER_SEC),
                f64::from(OUTPUT_BYTES_BURST),
            ),
            last_read: Instant::now(),
        }
    }

    /// How long before the pipes may be read again: past the byte rate, until it allows a
    /// chunk; past the line budget (lines only counted), reads at least
    /// [`READ_GAP_WHILE_DROPPING`] apart — so a worker writing a line per write is read in
    /// batches, not a read per line.
    fn wait_before_reading(&mut self, chunk: usize) -> Duration {
        self.bytes.refill();
        self.budget.refill();
        if !self.bytes.has_token() {
            self.bytes.time_until(tokens(chunk))
        } else if !self.budget.has_token() {
            READ_GAP_WHILE_DROPPING.saturating_sub(self.last_read.elapsed())
        } else {
            Duration::ZERO
        }
    }
}

/// One output pipe of a worker: the part of a line read so far.
struct OutputPipe {
    fd: Option<OwnedFd>,
    stream: OutputStream,
    pending: Vec<u8>,
}

impl OutputPipe {
    fn new(fd: OwnedFd, stream: OutputStream) -> Self {
        Self {
            fd: Some(fd),
            stream,
            pending: Vec::new(),
        }
    }

    /// Reads what the pipe holds and passes on each complete line (a line longer than
    /// [`MAX_LINE`] in pieces of that length) that `budget` allows; the others are
    /// counted in it. At the pipe's end, the rest is a line too, and the pipe is closed.
    /// Returns how many bytes it read.
    fn read_lines(
        &mut self,
        chunk: &mut [u8],
        budget: &mut LineBudget,
        events: &EventSink,
    ) -> usize {
        let Some(fd) = &self.fd else { return 0 };
        let read = match nix::unistd::read(fd, chunk) {
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => return 0,
            Ok(0) | Err(_) => 0,
            Ok(read) => read,
        };
        if read == 0 {
            self.fd = None;
            self.flush(budget, events);
            return 0;
        }
        budget.refill();
        let mut rest = &chunk[..read];
        while !rest.is_empty() {
            if !budget.has_token() {
                rest = self.skip_lines(rest, budget);
                if rest.is_empty() {
                    break;
                }
            }
            let window = &rest[..rest.len().min(MAX_LINE - self.pending.len())];
            let taken = memchr::memchr(b'\n', window).map_or(window.len(), |end| end + 1);
            self.pending.extend_from_slice(&window[..taken]);
            rest = &rest[taken..];
            if window[taken - 1] == b'\n' || self.pending.len() == MAX_LINE {
                self.flush(budget, events);
            }
        }
        read
    }

    /// Counts the complete lines in `data` as dropped without building them — in the
    /// pieces [`OutputPipe::read_lines`] would cut them into — and returns what follows
    /// the last newline.
    fn skip_lines<'a>(&mut self, data: &'a [u8], budget: &mut LineBudget) -> &'a [u8] {
        let Some(last) = memchr::memrchr(b'\n', data) else {
            return data;
        };
        budget.dropped += line_pieces(self.pending.len(), &data[..=last]);
        self.pending.clear();
        &data[last + 1..]
    }

    fn flush(&mut self, budget: &mut LineBudget, events: &EventSink) {
        if self.pending.is_empty() {
            return;
        }
        if budget.take() {
            let line = String::from_utf8_lossy(&self.pending).trim_end().to_owned();
            events(WorkerEvent::Output {
                stream: self.stream,
                line,
            });
        }
        self.pending.clear();
    }
}

/// How many lines [`OutputPipe::read_lines`] would cut `complete` (which ends in a
/// newline) into, after `pending` bytes of a line begun earlier: one per newline, and one
/// more per [`MAX_LINE`] bytes of a line longer than that. Newlines are counted in bulk
/// (a flood of empty lines costs a pass over the bytes, not a step per line); a line longer
/// than `MAX_LINE` spans a whole window of half that without a newline, so only the lines
/// around such windows — a few per read at most — are measured one by one.
fn line_pieces(pending: usize, complete: &[u8]) -> u64 {
    const WINDOW: usize = MAX_LINE / 2;
    let beyond_first = |length: usize| (length.div_ceil(MAX_LINE) - 1) as u64;
    let newlines = bytecount::count(complete, b'\n') as u64;
    let Some(first_end) = memchr::memchr(b'\n', complete) else {
        return 0;
    };
    let mut pieces = newlines + beyond_first(pending + first_end + 1);
    let mut window_start = first_end + 1;
    while window_start + WINDOW <= complete.len() {
        let window_end = window_start + WINDOW;
        if memchr::memchr(b'\n', &complete[window_start..window_end]).is_some() {
            window_start = window_end;
            continue;
        }
        // The line around this window: from after the newline before it (there is one,
        // the first line's) to the next one (there is one, `complete` ends in it).
        let line_start = memchr::memrchr(b'\n', &complete[..window_start]).map_or(0, |at| at + 1);
        let line_end = memchr::memchr(b'\n', &complete[window_end..])
            .map_or(complete.len() - 1, |at| window_end + at);
        pieces += beyond_first(line_end + 1 - line_start);
        window_start = line_end + 1;
    }
    pieces
}

/// Follows a worker until it is gone, on one thread: its stdout and stderr lines as they
/// come, then its exit (see [`follow_captured`]).
fn spawn_follower(
    plugin: &str,
    pid: Pid,
    captured: Captured,
    state: &WorkerState,
    events: EventSink,
) -> JoinHandle<()> {
    let (exited, exit_status, calls) = (
        Arc::clone(&state.exited),
        Arc::clone(&state.exit_status),
        Arc::clone(&state.calls),
    );
    named(plugin, "follow")
        .spawn(move || {
            let status = follow_captured(pid, captured, &events);
            exit_status.set(status);
            exited.store(true, Ordering::SeqCst);
            // Wake every caller still waiting: their worker is gone.
            calls.mark_gone();
            events(WorkerEvent::Exited { status });
        })
        .expect("thread starts")
}

/// [`follow_captured`] from pipes nothing was read from yet.
#[cfg(test)]
fn follow(pid: Pid, pipes: (OwnedFd, OwnedFd), events: &EventSink) -> ExitStatus {
    follow_captured(pid, Captured::new(pipes), events)
}

/// Passes on the worker's output lines, from where the start left the pipes, until it has
/// exited, then reaps it. Its end is watched through a pidfd beside the pipes: the pipes
/// alone end only when every process holding them is gone, which the pid namespace
/// guarantees (it takes every descendant down with its pid 1) but a worker without one
/// does not — a child it forked could keep them open, and its crash would go unseen. Once
/// it has exited, what the pipes hold is read and passed on, and pipes someone else still
/// holds are left.
fn follow_captured(pid: Pid, captured: Captured, events: &EventSink) -> ExitStatus {
    let Captured {
        mut pipes,
        mut budget,
        mut bytes,
        mut last_read,
    } = captured;
    // Without pidfds (Linux < 5.3) the pipes' end is all there is to go by.
    let exit = crate::sandbox::process::open_pidfd(pid).ok();
    // Mapped, not on this thread's stack: a thread's stack goes back to glibc's cache with
    // every page it touched still resident, and comes out again for any other thread — a
    // 16 KiB buffer there raised a long run's growth from 4.6 % to 7.0 % (BENCHMARKS,
    // soak runs 18 and 19).
    let mut mapped = crate::sandbox::pages::ZeroPages::new(OUTPUT_READ).ok();
    let mut small = [0u8; 512];
    let chunk: &mut [u8] = match &mut mapped {
        Some(pages) => pages,
        None => &mut small,
    };
    while pipes.iter().any(|pipe| pipe.fd.is_some()) {
        bytes.refill();
        budget.refill();
        // Past the byte rate, the next read waits for it; past the line budget, when
        // lines are only counted, reads are at least READ_GAP_WHILE_DROPPING apart, so a
        // worker writing a line per write is read in batches, not a read per line.
        let wait = if !bytes.has_token() {
            bytes.time_until(tokens(chunk.len()))
        } else if !budget.has_token() {
            READ_GAP_WHILE_DROPPING.saturating_sub(last_read.elapsed())
        } else {
            Duration::ZERO
        };
        let exited = if wait.is_zero() {
            let Some((ready, exited)) = readable(&pipes, exit.as_ref(), PollTimeout::NONE) else {
                break;
            };
            last_read = Instant::now();
            let mut read = read_ready(&mut pipes, ready, chunk, &mut budget, events);
            if !budget.has_token() {
                // Only counting: what the pipes hold now, up to READS_WHILE_DROPPING
                // reads, so the gap between wake-ups does not cap the byte rate.
                for _ in 1..READS_WHILE_DROPPING {
                    match readable(&pipes, None, PollTimeout::ZERO) {
                        Some((ready, _)) if ready != [false; 2] => {
                            read += read_ready(&mut pipes, ready, chunk, &mut budget, events);
                        }
                        _ => break,
                    }
                }
            }
            budget.report(events);
            bytes.spend(tokens(read));
            exited
        } else {
            // The pipes fill meanwhile (the worker waits in its writes once they are
            // full); only its exit is watched.
            exited_within(exit.as_ref(), wait)
        };
        if exited {
            // Everything written before the exit is in the pipes now: read it, without
            // waiting for more — and at most what two full pipes hold, so a process left
            // holding a pipe cannot keep this thread reading instead of reaping.
            for _ in 0..AFTER_EXIT_READS {
                match readable(&pipes, None, PollTimeout::ZERO) {
                    Some((ready, _)) if ready != [false; 2] => {
                        read_ready(&mut pipes, ready, chunk, &mut budget, events);
                    }
                    _ => break,
                }
            }
            for pipe in &mut pipes {
                pipe.flush(&mut budget, events);
            }
            break;
        }
    }
    budget.report(events);
    wait_for_exit(pid)
}

/// A count of bytes as tokens (reads are far below where `f64` loses precision).
fn tokens(bytes: usize) -> f64 {
    f64::from(u32::try_from(bytes).unwrap_or(u32::MAX))
}

/// Reads the pipes that are ready; how many bytes in all. The lines it dropped are
/// reported by the caller, once per wake-up.
fn read_ready(
    pipes: &mut [OutputPipe; 2],
    ready: [bool; 2],
    chunk: &mut [u8],
    budget: &mut LineBudget,
    events: &EventSink,
) -> usize {
    let mut read = 0;
    for (pipe, ready) in pipes.iter_mut().zip(ready) {
        if ready {
            read += pipe.read_lines(chunk, budget, events);
        }
    }
    read
}

/// Waits at most `timeout` for the process behind `exit` (a pidfd) to exit; whether it
/// has. Without a pidfd, sleeps.
fn exited_within(exit: Option<&OwnedFd>, timeout: Duration) -> bool {
    let Some(exit) = exit else {
        std::thread::sleep(timeout);
        return false;
    };
    let millis = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    let mut polled = [PollFd::new(exit.as_fd(), PollFlags::POLLIN)];
    match poll(&mut polled, PollTimeout::from(millis)) {
        Ok(_) | Err(nix::Error::EINTR) => {}
        Err(_) => return false,
    }
    polled[0].revents().is_some_and(|events| !events.is_empty())
}

/// Waits until one of the open pipes can be read (or has ended) or the process behind
/// `exit` (a pidfd) has exited, at most `timeout`: which pipes can be read, and whether it
/// has exited. `None` if they cannot be polled.
fn readable(
    pipes: &[OutputPipe; 2],
    exit: Option<&OwnedFd>,
    timeout: PollTimeout,
) -> Option<([bool; 2], bool)> {
    let open: Vec<(usize, BorrowedFd<'_>)> = pipes
        .iter()
        .enumerate()
        .filter_map(|(index, pipe)| pipe.fd.as_ref().map(|fd| (index, fd.as_fd())))
        .collect();
    let mut polled: Vec<PollFd<'_>> = open
        .iter()
        .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    if let Some(exit) = exit {
        polled.push(PollFd::new(exit.as_fd(), PollFlags::POLLIN));
    }
    match poll(&mut polled, timeout) {
        Ok(_) | Err(nix::Error::EINTR) => {}
        Err(_) => return None,
    }
    let fired = |polled: &PollFd<'_>| polled.revents().is_some_and(|events| !events.is_empty());
    let mut ready = [false; 2];
    for ((index, _), polled) in open.iter().zip(&polled) {
        ready[*index] = fired(polled);
    }
    let exited = exit.is_some() && polled.last().is_some_and(fired);
    Some((ready, exited))
}

/// Reaps the worker and says how it ended.
fn wait_for_exit(pid: Pid) -> ExitStatus {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return ExitStatus::Code { code },
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return ExitStatus::Signal {
                    signal: signal as i32,
                };
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return ExitStatus::Code { code: -1 },
        }
    }
}

/// What the engine checks a worker's notified calls against.
struct ListenerPolicy {
    /// The same file rules the worker gave Landlock.
    files: FsPolicy,
    audit: bool,
}

impl ListenerPolicy {
    /// From the plan's `(fs_read, fs_write, audit, network)` and what the worker reported:
    /// a worker with its own mount namespace has its private `/tmp` granted.
    fn new(
        (fs_read, fs_write, audit, network): (Vec<PathBuf>, Vec<PathBuf>, bool, bool),
        mechanisms: &BTreeMap<Mechanism, MechanismState>,
    ) -> Self {
        let private_tmp = mechanisms
            .get(&Mechanism::Namespaces)
            .is_some_and(|state| state.active);
        Self {
            files: FsPolicy::for_worker(&fs_read, &fs_write, private_tmp, network),
            audit,
        }
    }
}

/// The engine's answer to one notified call, and what it reports. Runs while the caller
/// waits, so the report (and the hooks the event sink reads as in flight) is of the moment
/// of the call.
fn decide(policy: &ListenerPolicy, call: &Notification) -> (Verdict, Option<WorkerEvent>) {
    if is_file_syscall(&call.syscall) {
        // Landlock does not cover inotify: for a watch the engine is the only check, so a
        // path it cannot judge (too many lookups, unreadable, under /proc, whose files no
        // rule names) is refused too.
        let engine_enforces = call.syscall == "inotify_add_watch";
        let outside: Vec<&FileOperand> = call
            .files
            .iter()
            .filter(|operand| match &operand.path {
                Some(path) => match policy.files.judge(path, operand.access) {
                    PathVerdict::Denied => true,
                    PathVerdict::NotJudged => engine_enforces,
                    PathVerdict::Granted => false,
                },
                None => engine_enforces,
            })
            .collect();
        if policy.audit {
            let event = (!outside.is_empty()).then(|| WorkerEvent::Audited {
                syscall: call.syscall.clone(),
                detail: call.detail.clone(),
                capability: None,
                files: outside.into_iter().cloned().collect(),
            });
            return (Verdict::Continue, event);
        }
        return match (outside.first(), call.files.first()) {
            (Some(operand), _) => (
                Verdict::Deny(libc::EACCES),
                Some(WorkerEvent::FsDenied {
                    syscall: call.syscall.clone(),
                    path: operand.path.as_ref().map_or_else(
                        || "(a path the engine could not judge)".to_owned(),
                        |path| path.display().to_string(),
                    ),
                    access: operand.access,
                    pid: call.pid,
                }),
            ),
            // Granted: the engine adds the watch on what it judged (letting the call
            // through would let another thread swap the path it judged).
            (
                None,
                Some(FileOperand {
                    path: Some(judged),
                    named: Some(named),
                    ..
                }),
            ) if engine_enforces => (
                Verdict::AddWatch {
                    named: named.clone(),
                    judged: judged.clone(),
                },
                None,
            ),
            // (A watch whose name was not kept: refused, as one the engine cannot judge.)
            _ if engine_enforces => (Verdict::Deny(libc::EACCES), None),
            // Granted by name, or not decidable by name: Landlock decides.
            _ => (Verdict::Continue, None),
        };
    }
    let capability = capability_for(&call.syscall, &call.args);
    if policy.audit && capability.is_some() {
        return (
            Verdict::Continue,
            Some(WorkerEvent::Audited {
                syscall: call.syscall.clone(),
                detail: call.detail.clone(),
                capability,
                files: Vec::new(),
            }),
        );
    }
    (
        Verdict::Deny(libc::EPERM),
        Some(WorkerEvent::ForbiddenSyscall {
            syscall: call.syscall.clone(),
            detail: call.detail.clone(),
            pid: call.pid,
        }),
    )
}

/// Seccomp notifications the engine answers per second for one worker (and at most this
/// many at once). Each costs the engine about as much CPU as the call costs the worker —
/// wake-ups on both sides, two ioctls, the violation's handling — and none of it is
/// charged to the worker's cgroup: past this rate the worker's notified calls (forbidden
/// ones, file writes) wait, so a plugin looping on them cannot make the engine spend a
/// core for it. A plugin opening files to write at a few thousand a second is not slowed.
pub const NOTIFICATIONS_PER_SEC: u32 = 5_000;

/// What an `inotify_add_watch` costs against [`NOTIFICATIONS_PER_SEC`]: the engine makes
/// the watch itself (measured: about 165 µs of engine CPU a watch, against 75 µs for a
/// refused call), so a plugin looping on watches is paced to 625 a second.
const WATCH_COST: f64 = 8.0;

/// A paced listener sleeps until this many notifications are allowed again: one wake-up
/// per batch, not per call.
const PACED_BATCH: f64 = 16.0;

/// Pacing is said at most this often per worker.
const PACING_REPORT_EVERY: Duration = Duration::from_secs(60);

/// How long the listener waits for a call before it looks at the worker's state. The
/// listener reports `POLLHUP` as soon as the last process under the filter is gone, so this
/// only bounds a missed wake-up; an idle worker should not wake the engine 20 times a second.
const LISTENER_POLL: Duration = Duration::from_secs(10);

fn spawn_listener(
    plugin: &str,
    listener: NotifyListener,
    policy: ListenerPolicy,
    exited: Arc<AtomicBool>,
    events: EventSink,
) -> JoinHandle<()> {
    named(plugin, "seccomp")
        .spawn(move || {
            let rate = f64::from(NOTIFICATIONS_PER_SEC);
            let mut budget = TokenBucket::new(rate, rate);
            let mut paced_said: Option<Instant> = None;
            while !exited.load(Ordering::SeqCst) {
                budget.refill();
                if !budget.take() {
                    if paced_said.is_none_or(|said| said.elapsed() >= PACING_REPORT_EVERY) {
                        paced_said = Some(Instant::now());
                        events(WorkerEvent::NotificationsPaced {
                            per_sec: NOTIFICATIONS_PER_SEC,
                        });
                    }
                    std::thread::sleep(budget.time_until(PACED_BATCH));
                    continue;
                }
                let answered = listener.next_with(LISTENER_POLL, |call| {
                    let (verdict, event) = decide(&policy, call);
                    if let Some(event) = event {
                        events(event);
                    }
                    verdict
                });
                match answered {
                    Err(_) => break,
                    // A watch the engine makes itself (a thread, two walks of the path)
                    // costs it several times a refusal: charged so.
                    Ok(Some((call, _))) if call.syscall == "inotify_add_watch" => {
                        budget.spend(WATCH_COST - 1.0);
                    }
                    Ok(_) => {}
                }
            }
        })
        .expect("thread starts")
}

/// Where `plugboard-host` is: next to the running executable (the `plugboard` binary, or a
/// test binary's `target/<profile>/`), else on `PATH`.
pub fn find_host_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("plugboard-host"),
        dir.parent()?.join("plugboard-host"),
    ]
    .into_iter()
    .find(|path| path.is_file())
}

/// What the host decides about every worker, whatever its manifest says.
#[derive(Debug, Clone)]
pub struct WorkerPolicy {
    /// The `plugboard-host` binary.
    pub host_binary: PathBuf,
    /// Mechanisms whose failure refuses the plugin (default: all).
    pub require: Vec<Mechanism>,
    /// The only environment variables a worker gets.
    pub env: Vec<(String, String)>,
    /// Size of each worker's private `/tmp`.
    pub tmpfs_bytes: u64,
}

impl WorkerPolicy {
    /// Every mechanism required, an empty environment, a 16 MiB `/tmp`.
    pub fn new(host_binary: PathBuf) -> Self {
        Self {
            host_binary,
            require: Mechanism::ALL.to_vec(),
            env: Vec::new(),
            tmpfs_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The uids of this engine's workers that are alive (held by [`UidLease`]s).
static LIVE_WORKER_UIDS: Mutex<std::collections::BTreeSet<u32>> =
    Mutex::new(std::collections::BTreeSet::new());

/// Unprivileged host uids for workers: a block of 1000 per engine process, one uid per
/// worker, so no two workers share an identity on the host. A uid is handed out again
/// only once its worker is gone (the block is walked round; with more than 1000 workers
/// alive at once, uids are shared).
fn next_worker_uid() -> u32 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let block = 100_000_000 + (std::process::id() % 100_000) * 1000;
    let live = LIVE_WORKER_UIDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut uid = block;
    for _ in 0..1000 {
        let sequence = u32::try_from(NEXT.fetch_add(1, Ordering::Relaxed) % 1000).unwrap_or(0);
        uid = block + sequence;
        if !live.contains(&uid) {
            break;
        }
    }
    uid
}

/// Marks a worker's uid in use from its spawn until the worker is dropped.
#[derive(Debug)]
struct UidLease(u32);

impl UidLease {
    fn hold(uid: u32) -> Self {
        LIVE_WORKER_UIDS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid);
        Self(uid)
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        LIVE_WORKER_UIDS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// The confinement plan and cgroup limits for one plugin, from its manifest and the host.
pub fn plan_for(
    manifest: &crate::manifest::Manifest,
    resources: &crate::manifest::EffectiveResources,
    policy: &WorkerPolicy,
    config: &serde_json::Map<String, serde_json::Value>,
) -> (ConfinementPlan, CgroupLimits) {
    let memory_bytes = resources.memory_mb * 1024 * 1024;
    let uid = next_worker_uid();
    let require = policy
        .require
        .iter()
        .map(|mechanism| mechanism.name().to_owned())
        .collect();
    let plan = ConfinementPlan {
        plugin: manifest.plugin.name.clone(),
        library: manifest.plugin.library.clone(),
        // Compiled at launch, once the mode is final (audit mode changes the filter).
        seccomp_program: Vec::new(),
        uid,
        gid: uid,
        network: manifest.capabilities.network,
        spawn: manifest.capabilities.spawn,
        fs_read: manifest.capabilities.fs_read.clone(),
        fs_write: manifest.capabilities.fs_write.clone(),
        max_open_files: u64::from(resources.max_open_files),
        // A backstop only: glibc reserves 64 MiB arenas per thread, and the cgroup is what
        // enforces memory (an OOM kill, not a malloc failure).
        address_space_bytes: memory_bytes.saturating_mul(8).saturating_add(4 << 30),
        tmpfs_bytes: policy.tmpfs_bytes,
        env: policy.env.clone(),
        config_json: serde_json::to_vec(config).unwrap_or_else(|_| b"{}".to_vec()),
        require,
        // Leave the plugin's own threads room under the pids limit (the intermediary and
        // the serving threads count too).
        serve_threads: ((resources.max_threads.saturating_sub(1)) / 2).clamp(1, 4),
        audit: false,
    };
    let cgroup = CgroupLimits {
        memory_bytes,
        cpu_percent: resources.cpu_percent,
        pids_max: u64::from(resources.max_threads),
    };
    (plan, cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid goes to a new worker only while no live worker has it: with every uid of the
    /// block taken but one, the next worker gets that one (the sequence alone wrapped
    /// round onto a live worker's uid after 1000 starts).
    #[test]
    fn a_live_workers_uid_is_not_handed_out_again() {
        let mut leases: Vec<UidLease> = (0..1000)
            .map(|_| UidLease::hold(next_worker_uid()))
            .collect();
        let distinct: std::collections::BTreeSet<u32> =
            leases.iter().map(|lease| lease.0).collect();
        assert_eq!(distinct.len(), 1000);
        let freed = leases.remove(500).0;
        assert_eq!(next_worker_uid(), freed);
        assert_eq!(next_worker_uid(), freed, "still the only free one");
    }

    type Lines = Arc<Mutex<Vec<(OutputStream, String)>>>;

    /// Plays a worker that keeps the engine's queue full: sends `message(n)` (n = 1, 2, …)
    /// back to back until `stop` is set or 5 s have passed. It never blocks on a full
    /// socket, so an engine stuck sending to it cannot hold it too: a test fails instead
    /// of hanging.
    pub(in crate::worker) fn flood(
        worker: &Channel,
        stop: &AtomicBool,
        message: impl Fn(u64) -> WorkerMessage,
    ) {
        let started = Instant::now();
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(5) {
            match worker.try_send(&message(sent + 1)) {
                Ok(true) => sent += 1,
                Ok(false) => std::thread::yield_now(),
                Err(_) => return,
            }
        }
    }

    /// A constructor that logs in a loop keeps a message waiting at every receive of the
    /// handshake; past the deadline the engine takes none of them and refuses the start.
    /// The engine takes a millisecond per line here, so the worker keeps the queue full.
    #[test]
    fn a_worker_that_floods_log_lines_while_it_is_created_is_refused_at_the_deadline() {
        let (engine, worker) = Channel::pair().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                flood(&worker, &stop, |_| WorkerMessage::Log {
                    level: 2,
                    message: "still creating".to_owned(),
                });
            })
        };
        let slow_sink: EventSink = Arc::new(|_| std::thread::sleep(Duration::from_millis(1)));
        let started = Instant::now();
        let verdict = await_ready_before(
            &engine,
            "flooder",
            &slow_sink,
            started + Duration::from_millis(200),
        );
        let waited = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        drop(engine);
        flooder.join().unwrap();
        let reason = match verdict {
            Err(err) => err.to_string(),
            Ok(()) => panic!("a worker that never sent Ready was taken as ready"),
        };
        assert!(reason.contains("no answer within"), "{reason}");
        assert!(
            waited < Duration::from_secs(1),
            "refused after {waited:?}, expected at the 200 ms deadline"
        );
    }

    #[test]
    fn an_exit_status_is_written_as_documented_and_the_older_shape_still_reads() {
        for (status, json) in [
            (ExitStatus::Code { code: 3 }, r#"{"code":3}"#),
            (ExitStatus::Signal { signal: 9 }, r#"{"signal":9}"#),
        ] {
            assert_eq!(serde_json::to_string(&status).unwrap(), json);
            assert_eq!(serde_json::from_str::<ExitStatus>(json).unwrap(), status);
        }
        for (older, status) in [
            (r#"{"code":{"code":3}}"#, ExitStatus::Code { code: 3 }),
            (
                r#"{"signal":{"signal":9}}"#,
                ExitStatus::Signal { signal: 9 },
            ),
        ] {
            assert_eq!(serde_json::from_str::<ExitStatus>(older).unwrap(), status);
        }
        assert!(serde_json::from_str::<ExitStatus>(r#"{"status":1}"#).is_err());
    }

    /// What a plugin may send while it is created: its log lines and its count of dropped
    /// ones become events, its emit is answered `EMIT_FAILED` at once (nothing is
    /// dispatched for a plugin not yet running), and Ready still ends the handshake.
    #[test]
    fn while_a_plugin_is_created_its_logs_and_drops_are_kept_and_its_emit_fails() {
        let (engine, worker) = Channel::pair().unwrap();
        for message in [
            WorkerMessage::Log {
                level: 2,
                message: "creating".to_owned(),
            },
            WorkerMessage::LogsDropped { lines: 17 },
            WorkerMessage::Emit {
                id: 7,
                hook: "counter.reset".to_owned(),
                payload: b"{}".to_vec(),
                depth: 0,
            },
            WorkerMessage::Ready,
        ] {
            worker.send(&message).unwrap();
        }
        let seen: Arc<Mutex<Vec<WorkerEvent>>> = Arc::default();
        let sink: EventSink = {
            let seen = Arc::clone(&seen);
            Arc::new(move |event| seen.lock().unwrap().push(event))
        };
        await_ready_before(
            &engine,
            "creating",
            &sink,
            Instant::now() + Duration::from_secs(5),
        )
        .expect("Ready after a log line, a drop count and an emit ends the handshake");
        let seen = seen.lock().unwrap();
        assert!(
            matches!(
                seen.as_slice(),
                [
                    WorkerEvent::Output { line, .. },
                    WorkerEvent::OutputDropped { lines: 17 },
                ] if line == "creating"
            ),
            "{seen:?}"
        );
        let answer: EngineMessage = worker
            .recv_timeout(Duration::from_secs(1))
            .unwrap()
            .expect("the emit is answered");
        assert_eq!(
            answer,
            EngineMessage::EmitResult {
                id: 7,
                code: plugboard_sdk::abi::EMIT_FAILED,
            }
        );
    }

    /// An event sink that keeps the output lines it is given.
    fn output_sink() -> (Lines, EventSink) {
        let lines: Lines = Arc::default();
        let kept = Arc::clone(&lines);
        let sink: EventSink = Arc::new(move |event| {
            if let WorkerEvent::Output { stream, line } = event {
                kept.lock().unwrap().push((stream, line));
            }
        });
        (lines, sink)
    }

    /// Lines as a follower passes them on, from a real pipe: complete lines, a line over
    /// the bound in pieces of [`MAX_LINE`], and what is left when the pipe ends.
    #[test]
    fn output_is_passed_on_line_by_line_bounded_and_flushed_at_the_end() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let long = "x".repeat(MAX_LINE + 10);
        let written = format!("first\r\nsecond\n{long}\nlast, no newline");
        let mut pipe = OutputPipe::new(read_end, OutputStream::Stderr);
        let (lines, sink) = output_sink();
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::File::from(write_end);
            std::io::Write::write_all(&mut file, written.as_bytes()).unwrap();
        });
        let mut chunk = [0u8; OUTPUT_READ];
        let mut budget = LineBudget::new(OUTPUT_LINES_PER_SEC, OUTPUT_LINES_PER_SEC * 2.0);
        while pipe.fd.is_some() {
            pipe.read_lines(&mut chunk, &mut budget, &sink);
        }
        writer.join().unwrap();
        assert_eq!(budget.dropped, 0);
        let lines = lines.lock().unwrap();
        let expected = [
            "first".to_owned(),
            "second".to_owned(),
            "x".repeat(MAX_LINE),
            "x".repeat(10),
            "last, no newline".to_owned(),
        ];
        assert_eq!(
            lines
                .iter()
                .map(|(_, line)| line.clone())
                .collect::<Vec<_>>(),
            expected
        );
        assert!(
            lines
                .iter()
                .all(|(stream, _)| *stream == OutputStream::Stderr)
        );
    }

    /// Past its budget the follower passes on no line, but counts every one, in the
    /// pieces it would have cut them into; with a token again, lines pass again.
    #[test]
    fn lines_past_the_budget_are_counted_not_passed_on() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let mut pipe = OutputPipe::new(read_end, OutputStream::Stdout);
        let (lines, sink) = output_sink();
        // A budget of 10 lines that never refills (the test must not depend on timing).
        let mut budget = LineBudget::new(0.0, 10.0);
        // Ten lines that pass, 3,000 that do not, one line of 2½ pieces split over the
        // reads, and a partial line. All of it fits in the pipe: exactly two reads take it.
        let long = "y".repeat(MAX_LINE * 2 + MAX_LINE / 2);
        let written = format!("{}{long}\npart", "line\n".repeat(3010));
        assert!(written.len() > OUTPUT_READ && written.len() < 2 * OUTPUT_READ);
        let mut writer = std::fs::File::from(write_end);
        std::io::Write::write_all(&mut writer, written.as_bytes()).unwrap();
        let mut chunk = [0u8; OUTPUT_READ];
        pipe.read_lines(&mut chunk, &mut budget, &sink);
        pipe.read_lines(&mut chunk, &mut budget, &sink);
        assert_eq!(lines.lock().unwrap().len(), 10);
        assert_eq!(
            budget.dropped,
            3000 + 3,
            "the flood and the long line's 3 pieces"
        );
        assert_eq!(pipe.pending, b"part");
        // A token again: the partial line passes when the pipe ends.
        budget.tokens = TokenBucket::new(0.0, 1.0);
        drop(writer);
        while pipe.fd.is_some() {
            pipe.read_lines(&mut chunk, &mut budget, &sink);
        }
        assert_eq!(lines.lock().unwrap().last().unwrap().1, "part");
        assert_eq!(budget.dropped, 3003);
    }

    /// `sh -c script` with its stdout and stderr piped, for a follower to follow (and reap).
    fn shell_with_pipes(script: &str) -> (Pid, (OwnedFd, OwnedFd)) {
        use std::process::{Command, Stdio};

        #[expect(
            clippy::zombie_processes,
            reason = "the follower under test reaps it (waitpid)"
        )]
        let mut child = Command::new("/bin/sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let pipes = (
            OwnedFd::from(child.stdout.take().unwrap()),
            OwnedFd::from(child.stderr.take().unwrap()),
        );
        (pid, pipes)
    }

    /// Past its line budget the follower reads at most once a millisecond: a worker
    /// writing its lines one write each is read in batches — each read one report of
    /// dropped lines — and every line is still counted.
    #[test]
    fn past_the_line_budget_one_line_writes_are_read_in_batches() {
        let (pid, pipes) =
            shell_with_pipes("i=0; while [ $i -lt 20000 ]; do echo line; i=$((i+1)); done");
        let counts: Arc<Mutex<(u64, u64, u64)>> = Arc::default();
        let seen = Arc::clone(&counts);
        let sink: EventSink = Arc::new(move |event| {
            let mut seen = seen.lock().unwrap();
            match event {
                WorkerEvent::Output { .. } => seen.0 += 1,
                WorkerEvent::OutputDropped { lines } => {
                    seen.1 += lines;
                    seen.2 += 1;
                }
                _ => {}
            }
        });
        let began = Instant::now();
        assert_eq!(follow(pid, pipes, &sink), ExitStatus::Code { code: 0 });
        let took_ms = began.elapsed().as_secs_f64() * 1000.0;
        let (kept, dropped, reports) = *counts.lock().unwrap();
        assert_eq!(kept + dropped, 20_000, "{kept} kept, {dropped} dropped");
        let bound = took_ms + 10.0;
        assert!(
            f64::from(u32::try_from(reports).unwrap()) <= bound,
            "{reports} reads dropped lines in {took_ms:.0} ms"
        );
    }

    /// [`line_pieces`] against the plain count, line by line.
    fn line_pieces_one_by_one(pending: usize, complete: &[u8]) -> u64 {
        let mut start = 0;
        let mut pieces = 0;
        for end in memchr::memchr_iter(b'\n', complete) {
            let length = if start == 0 { pending } else { 0 } + end + 1 - start;
            pieces += length.div_ceil(MAX_LINE) as u64;
            start = end + 1;
        }
        pieces
    }

    proptest::proptest! {
        #[test]
        fn lines_are_counted_in_bulk_as_one_by_one(
            pending in 0..MAX_LINE,
            lengths in proptest::collection::vec(
                proptest::prop_oneof![0..8usize, 0..3 * MAX_LINE, MAX_LINE - 2..MAX_LINE + 2],
                1..24,
            ),
        ) {
            let mut complete = Vec::new();
            for length in lengths {
                complete.extend(std::iter::repeat_n(b'x', length));
                complete.push(b'\n');
            }
            proptest::prop_assert_eq!(
                line_pieces(pending, &complete),
                line_pieces_one_by_one(pending, &complete)
            );
        }
    }

    /// A worker's end is seen when it exits, even while a process it started keeps its
    /// output pipes open (a worker without a pid namespace), and what it wrote first is
    /// passed on.
    #[test]
    fn the_follower_sees_the_exit_while_a_descendant_holds_the_pipes() {
        let (pid, pipes) =
            shell_with_pipes("sleep 30 & echo \"holder $!\"; printf partial >&2; exit 3");
        let (lines, sink) = output_sink();
        let began = std::time::Instant::now();
        let status = follow(pid, pipes, &sink);
        let waited = began.elapsed();
        let lines = lines.lock().unwrap().clone();
        // The holder, by the pid it printed: ours to end (init reaps it).
        let holder = lines.iter().find_map(|(_, line)| {
            line.strip_prefix("holder ")
                .and_then(|pid| pid.parse::<i32>().ok())
        });
        if let Some(holder) = holder {
            let _ = kill(Pid::from_raw(holder), Signal::SIGKILL);
        }
        assert_eq!(status, ExitStatus::Code { code: 3 });
        assert!(
            waited < Duration::from_secs(5),
            "the exit was seen after {waited:?}, not when it happened"
        );
        assert!(holder.is_some(), "{lines:?}");
        assert!(
            lines.contains(&(OutputStream::Stderr, "partial".to_owned())),
            "{lines:?}"
        );
    }
}
