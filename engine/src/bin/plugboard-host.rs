//! `plugboard-host`: runs one plugin in a confined worker process.
//!
//! The engine spawns it (never forks itself) with exactly these descriptors: 0 `/dev/null`,
//! 1 and 2 pipes the engine reads, 3 the IPC socket (SOCK_SEQPACKET), 4 the sealed memfd
//! holding the verified library. The protocol:
//!
//! ```text
//! worker → Hello            engine → Welcome { plan }      (how to confine, what to load)
//!                           engine → Proceed               (the worker is in its cgroup now)
//! worker: uid switch, parent-death signal, user + other namespaces, fork (the child is
//!         pid 1 of the new pid namespace and does the rest; the parent mirrors its exit),
//!         mounts, rlimits, not dumpable, no_new_privs, Landlock, capabilities, seccomp
//! worker → Confined { steps, sandbox_pid }
//! worker → SeccompListener  (+ the listener fd)           (the engine answers violations)
//!                           engine → Load                  (the memfd is sealed and verified)
//! worker: load the library from the memfd, create the instance
//! worker → Ready | LoadFailed
//! engine → Call / Calls / Health / EmitResult / Shutdown;  worker → Reply / Replies / Log / Emit
//! ```
//!
//! No plugin code — not even a library constructor — runs before `Confined` is sent, nor
//! before the engine's `Load`: the engine may still be copying and verifying the library
//! into the memfd while the worker confines itself, and the worker refuses a memfd that is
//! not sealed.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use nix::unistd::{getpid, getppid, pipe, read, write};
use plugboard_engine::ipc::{
    BatchedCallRef, BatchedReply, Channel, ConfinementPlan, EngineMessage, EngineMessageRef,
    IpcError, PROTOCOL_VERSION, ReplyRef, StepReport, WorkerMessage, oversized_reply,
};
use plugboard_engine::loader::{self, SealedLibrary};
use plugboard_engine::sandbox::Mechanism;
use plugboard_engine::sandbox::landlock::{self, FsPolicy, PathAccess};
use plugboard_engine::sandbox::process::{self, ConfineError, ForkSide};
use plugboard_engine::sandbox::seccomp;
use plugboard_engine::worker::{TokenBucket, WORKER_LOG_LINES_PER_SEC};
use plugboard_sdk::host::{HostCallbacks, Instance};
use plugboard_sdk::{LogLevel, abi};

const SOCKET_FD: RawFd = 3;
const LIBRARY_FD: RawFd = 4;
/// How long a plugin's `emit` waits for the engine's answer.
const EMIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error("IPC with the engine: {0}")]
    Ipc(#[from] IpcError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("required confinement failed: {0}")]
    Required(String),
    #[error("plugin: {0}")]
    Plugin(String),
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plugboard-host: {err}");
            ExitCode::from(1)
        }
    }
}

/// Collects one report per confinement step and aborts on a required one that failed.
struct Steps {
    reports: Vec<StepReport>,
    required: Vec<String>,
}

impl Steps {
    fn record<T>(
        &mut self,
        mechanism: Mechanism,
        result: Result<T, String>,
    ) -> Result<Option<T>, WorkerError> {
        let name = mechanism.name().to_owned();
        match result {
            Ok(value) => {
                self.reports.push(StepReport {
                    mechanism: name,
                    ok: true,
                    detail: String::new(),
                });
                Ok(Some(value))
            }
            Err(reason) => {
                let required = self.required.contains(&name);
                self.reports.push(StepReport {
                    mechanism: name.clone(),
                    ok: false,
                    detail: reason.clone(),
                });
                if required {
                    Err(WorkerError::Required(format!("{name}: {reason}")))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn note(&mut self, mechanism: Mechanism, note: &str) {
        let name = mechanism.name().to_owned();
        if let Some(report) = self
            .reports
            .iter_mut()
            .rev()
            .find(|report| report.mechanism == name)
        {
            if !report.detail.is_empty() {
                report.detail.push_str("; ");
            }
            report.detail.push_str(note);
        }
    }
}

fn run() -> Result<(), WorkerError> {
    process::close_descriptors_above(LIBRARY_FD)?;
    let socket = process::adopt_inherited_fd(SOCKET_FD, "IPC socket")?;
    let memfd = process::adopt_inherited_fd(LIBRARY_FD, "library memfd")?;
    let channel = Arc::new(Channel::from_fd(socket));
    let engine = getppid();
    channel.send(&WorkerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        pid: getpid().as_raw().unsigned_abs(),
    })?;
    let plan = match channel.recv::<EngineMessage>()? {
        EngineMessage::Welcome { protocol, plan } if protocol == PROTOCOL_VERSION => plan,
        EngineMessage::Welcome { protocol, .. } => {
            return Err(WorkerError::Protocol(format!(
                "engine speaks protocol {protocol}, this worker speaks {PROTOCOL_VERSION}"
            )));
        }
        other => {
            return Err(WorkerError::Protocol(format!(
                "expected Welcome, got {other:?}"
            )));
        }
    };
    match channel.recv::<EngineMessage>()? {
        EngineMessage::Proceed => {}
        other => {
            return Err(WorkerError::Protocol(format!(
                "expected Proceed, got {other:?}"
            )));
        }
    }

    let mut steps = Steps {
        reports: Vec::new(),
        required: plan.require.clone(),
    };
    let confined = confine(&plan, engine, &channel, &mut steps);
    let (sandbox_pid, listener) = match confined {
        Ok(confined) => confined,
        Err(err) => {
            // Tell the engine which step failed before giving up.
            let _ = channel.send(&WorkerMessage::Confined {
                steps: steps.reports,
                sandbox_pid: 0,
            });
            return Err(err);
        }
    };
    channel.send(&WorkerMessage::Confined {
        steps: steps.reports,
        sandbox_pid,
    })?;
    if let Some(listener) = listener {
        channel.send_with_fd(&WorkerMessage::SeccompListener, listener.as_fd())?;
    }
    match channel.recv::<EngineMessage>()? {
        EngineMessage::Load => {}
        // The library failed verification, or the engine gave up on this start.
        EngineMessage::Shutdown => return Ok(()),
        other => {
            return Err(WorkerError::Protocol(format!(
                "expected Load, got {other:?}"
            )));
        }
    }

    // Only now does plugin code run: the library's constructors, then `create`.
    let instance = match load(memfd, &plan, &channel) {
        Ok(instance) => instance,
        Err(reason) => {
            let _ = channel.send(&WorkerMessage::LoadFailed {
                reason: reason.clone(),
            });
            return Err(WorkerError::Plugin(reason));
        }
    };
    channel.send(&WorkerMessage::Ready)?;
    serve(&channel, instance.0, &instance.1, plan.serve_threads)
}

/// Runs every confinement step. Returns (in the sandboxed child) its host pid and the
/// seccomp listener; the intermediary parent never returns.
fn confine(
    plan: &ConfinementPlan,
    engine: nix::unistd::Pid,
    channel: &Channel,
    steps: &mut Steps,
) -> Result<(u32, Option<OwnedFd>), WorkerError> {
    steps.record(
        Mechanism::UnprivilegedUid,
        process::switch_user(plan.uid, plan.gid).map_err(|e| e.to_string()),
    )?;
    // The uid switch cleared any parent-death signal: set it now, and never go on without.
    process::die_with_parent(engine)?;
    let namespaces = steps.record(
        Mechanism::Namespaces,
        process::enter_user_namespace(plan.uid, plan.gid)
            .and_then(|()| process::enter_namespaces(plan.network))
            .map_err(|e| e.to_string()),
    )?;
    // Entering a user namespace changes the credentials, which clears the parent-death
    // signal again (the kernel resets it on any credential change that is not a pure
    // drop): set it once more, still checking the engine is there.
    process::die_with_parent(engine)?;
    let pipe_error = |err: nix::Error| ConfineError {
        step: "fork",
        reason: err.to_string(),
    };
    let (pid_reader, pid_writer) = pipe().map_err(pipe_error)?;
    let (abort_reader, abort_writer) = pipe().map_err(pipe_error)?;
    if namespaces.is_some() {
        match process::fork_into_pid_namespace()? {
            ForkSide::Parent { child } => {
                drop(pid_reader);
                drop(abort_writer);
                let _ = write(&pid_writer, &child.as_raw().to_le_bytes());
                drop(pid_writer);
                // The intermediary keeps nothing of the engine's (the socket and the memfd
                // are the child's now) and no privilege. It never returns, so nothing
                // closes these descriptors a second time.
                let _ = channel;
                process::close_descriptor_range(SOCKET_FD, LIBRARY_FD);
                let _ = process::set_no_new_privs();
                let _ = process::drop_capabilities();
                // It sits in the plugin's cgroup as the worker's uid: not dumpable, so that
                // no process of that uid can attach to it (the child set its maps already).
                let _ = process::set_not_dumpable();
                process::mirror_child_exit(child, &abort_reader);
            }
            ForkSide::Child => {
                drop(abort_reader);
                process::forward_self_aborts(abort_writer)?;
            }
        }
    }
    drop(pid_writer);
    let sandbox_pid = if namespaces.is_some() {
        // Pid 1 of its namespace: the parent is the intermediary, which mirrors our end.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|err| {
            ConfineError {
                step: "parent-death signal",
                reason: err.to_string(),
            }
        })?;
        let mut bytes = [0u8; 4];
        let _ = read(pid_reader.as_fd(), &mut bytes);
        u32::from_le_bytes(bytes)
    } else {
        getpid().as_raw().unsigned_abs()
    };
    drop(pid_reader);
    if namespaces.is_some() {
        let notes = process::set_up_mounts(plan.tmpfs_bytes)?;
        // A hostname holds at most 64 bytes; a plugin name, 64 of its own.
        let mut hostname = format!("plugboard-{}", plan.plugin);
        hostname.truncate(64);
        process::set_hostname(&hostname)?;
        for note in notes {
            steps.note(Mechanism::Namespaces, &note);
        }
    }
    // Out of the engine's working directory: relative paths mean the same inside as the
    // engine's file checks take them to, and the plugin does not learn where it ran.
    process::leave_working_directory()?;
    steps.record(
        Mechanism::Rlimits,
        process::apply_rlimits(plan.max_open_files, plan.address_space_bytes)
            .map_err(|e| e.to_string()),
    )?;
    process::set_not_dumpable()?;
    steps.record(
        Mechanism::NoNewPrivs,
        process::set_no_new_privs().map_err(|e| e.to_string()),
    )?;
    let listener = confine_files_and_calls(plan, namespaces.is_some(), steps)?;
    Ok((sandbox_pid, listener))
}

/// The last steps: Landlock (not in audit mode), capabilities, the seccomp filter.
fn confine_files_and_calls(
    plan: &ConfinementPlan,
    private_tmp: bool,
    steps: &mut Steps,
) -> Result<Option<OwnedFd>, WorkerError> {
    let landlock = if plan.audit {
        Err("audit mode: not applied; the engine records the paths the plugin opens".to_owned())
    } else {
        let policy = FsPolicy::for_worker(&plan.fs_read, &plan.fs_write, private_tmp, plan.network);
        landlock::restrict(&policy).map_err(|e| e.to_string())
    };
    if let Some(status) = steps.record(Mechanism::Landlock, landlock)? {
        // A path of the manifest's that this host lacks is granted nothing: said, not
        // silently skipped. (Missing system paths, `/lib32` say, are no news.)
        for skipped in &status.skipped {
            let granted = match skipped.access {
                PathAccess::SystemRead => continue,
                PathAccess::Read => "fs_read",
                PathAccess::Write => "fs_write",
            };
            steps.note(
                Mechanism::Landlock,
                &format!(
                    "{granted} `{}` not granted: {}",
                    skipped.path.display(),
                    skipped.reason
                ),
            );
        }
    }
    steps.record(
        Mechanism::Capabilities,
        process::drop_capabilities().map_err(|e| e.to_string()),
    )?;
    // The engine's compiled program when it sent one (the plan's, compiled once per
    // policy in the engine), else compiled here.
    let installed = if plan.seccomp_program.is_empty() {
        seccomp::install(&plan.syscall_policy())
    } else {
        seccomp::install_compiled(&seccomp::unpack_program(&plan.seccomp_program))
    };
    let listener = steps.record(Mechanism::Seccomp, installed.map_err(|e| e.to_string()))?;
    if plan.seccomp_program.is_empty() {
        // The engine compiles once per policy; a worker compiling its own costs every
        // start the compile (and says so, so that a start doing it shows).
        steps.note(Mechanism::Seccomp, seccomp::COMPILED_BY_WORKER);
    }
    if plan.audit {
        steps.note(
            Mechanism::Seccomp,
            "audit mode: calls a capability would grant are recorded and allowed",
        );
    }
    Ok(listener)
}

/// Forwards the plugin's log lines and emits to the engine.
struct EngineLink {
    channel: Arc<Channel>,
    next_emit: AtomicU64,
    pending_emits: Mutex<HashMap<u64, mpsc::Sender<i32>>>,
    /// Log lines sent per second ([`WORKER_LOG_LINES_PER_SEC`]).
    log_tokens: Mutex<TokenBucket>,
    /// Log lines dropped past the rate and not yet reported.
    logs_dropped: AtomicU64,
    /// Set once the worker serves requests (the plugin is created).
    serving: AtomicBool,
    /// Emits waiting for the engine's answer.
    emits_waiting: AtomicU32,
    /// One per serving thread, claimed when it starts.
    server_slots: [ServerSlot; MAX_SERVERS],
    /// What it takes to start a serving thread, once the worker serves.
    servers: OnceLock<ServingSide>,
}

/// A serving thread's state. Written by its own thread alone, on every request: a plain
/// store to a cache line of its own (no locked instruction on the call path, no line moving
/// between the serving threads' CPUs). Read only while an emit waits.
#[repr(align(64))]
#[derive(Default)]
struct ServerSlot {
    claimed: AtomicBool,
    busy: AtomicBool,
}

/// The instance and the link, for a serving thread started on demand.
struct ServingSide {
    instance: Arc<RwLock<Option<Instance>>>,
    link: Weak<EngineLink>,
}

/// The most serving threads: the plan's (at most 4) and as many more, started to read
/// emits' answers, as the engine lets a plugin have emits in flight (16), twice over.
const MAX_SERVERS: usize = 36;

/// An emit waiting for its answer looks again this often whether a thread is left to
/// read it (the busy flags are read without ordering, so a look may be stale).
const EMIT_RECHECK: Duration = Duration::from_millis(20);

impl EngineLink {
    fn new(channel: Arc<Channel>) -> Self {
        Self {
            channel,
            next_emit: AtomicU64::new(1),
            pending_emits: Mutex::new(HashMap::new()),
            log_tokens: Mutex::new(TokenBucket::new(
                WORKER_LOG_LINES_PER_SEC,
                WORKER_LOG_LINES_PER_SEC * 2.0,
            )),
            logs_dropped: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            emits_waiting: AtomicU32::new(0),
            server_slots: std::array::from_fn(|_| ServerSlot::default()),
            servers: OnceLock::new(),
        }
    }

    /// An emit's answer is read by a serving thread: while one is awaited, some thread
    /// must be waiting to receive. When every one is busy (running calls, or waiting on
    /// emits of their own: a plugin with one serving thread that emits in a hook, or a
    /// chain of emits back into this plugin), one more is started — else the answer would
    /// sit unread until the emit and the call around it timed out. A thread the pids limit
    /// refuses leaves it at that.
    fn keep_a_receiver_for_emits(&self) {
        if self.emits_waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let idle = self
            .server_slots
            .iter()
            .any(|slot| slot.claimed.load(Ordering::Relaxed) && !slot.busy.load(Ordering::Relaxed));
        if idle {
            return;
        }
        let Some(side) = self.servers.get() else {
            return;
        };
        if let Some(link) = side.link.upgrade() {
            spawn_server(&self.channel, &side.instance, &link);
        }
    }

    /// Claims a slot for a new serving thread: its index, or `None` when all are taken.
    fn claim_slot(&self) -> Option<usize> {
        self.server_slots.iter().position(|slot| {
            slot.claimed
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// The engine's answer to an emit, read by a serving thread (another one started if
    /// none is free to), or `EMIT_FAILED` after [`EMIT_TIMEOUT`].
    fn await_emit_answer(&self, answered: &mpsc::Receiver<i32>) -> i32 {
        let deadline = Instant::now() + EMIT_TIMEOUT;
        loop {
            self.keep_a_receiver_for_emits();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return abi::EMIT_FAILED;
            }
            match answered.recv_timeout(left.min(EMIT_RECHECK)) {
                Ok(code) => return code,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return abi::EMIT_FAILED,
            }
        }
    }

    /// Tells the engine how many log lines were dropped since it was last told, if any.
    fn report_dropped_logs(&self) {
        let lines = self.logs_dropped.swap(0, Ordering::AcqRel);
        if lines > 0 {
            let _ = self.channel.send(&WorkerMessage::LogsDropped { lines });
        }
    }
}

impl HostCallbacks for EngineLink {
    /// Sends the line if the rate allows, else counts it: the count goes to the engine
    /// before the next line sent, after each request and before the worker exits. Below
    /// the engine's own rate for such messages, so a plugin's logging never waits on it.
    fn log(&self, level: LogLevel, message: &str) {
        let allowed = {
            let mut tokens = self
                .log_tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            tokens.refill();
            tokens.take()
        };
        if !allowed {
            self.logs_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.report_dropped_logs();
        let _ = self.channel.send(&WorkerMessage::Log {
            level: level.code(),
            message: message.to_owned(),
        });
    }

    /// Fails at once while the plugin is created: nothing reads the engine's answer
    /// before the worker serves, and the engine dispatches nothing for a plugin that is
    /// not running yet.
    fn emit(&self, hook: &str, payload: &[u8]) -> i32 {
        if !self.serving.load(Ordering::Acquire) {
            return abi::EMIT_FAILED;
        }
        let id = self.next_emit.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = mpsc::channel();
        self.pending_emits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, answer);
        let sent = self.channel.send(&WorkerMessage::Emit {
            depth: CALL_DEPTH.get(),
            id,
            hook: hook.to_owned(),
            payload: payload.to_vec(),
        });
        let code = match sent {
            Ok(()) => {
                self.emits_waiting.fetch_add(1, Ordering::SeqCst);
                let code = self.await_emit_answer(&answered);
                self.emits_waiting.fetch_sub(1, Ordering::SeqCst);
                code
            }
            Err(_) => abi::EMIT_FAILED,
        };
        self.pending_emits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        code
    }
}

fn load(
    memfd: OwnedFd,
    plan: &ConfinementPlan,
    channel: &Arc<Channel>,
) -> Result<(Instance, Arc<EngineLink>), String> {
    let sealed = SealedLibrary::from_sealed_fd(memfd).map_err(|err| err.to_string())?;
    let loaded = loader::load(sealed, &plan.library).map_err(|err| err.to_string())?;
    let link = Arc::new(EngineLink::new(Arc::clone(channel)));
    let instance = loaded
        .library()
        .instantiate(link.clone(), &plan.config_json)
        .map_err(|err| err.to_string())?;
    // The library stays loaded for the life of the process; the instance holds it.
    std::mem::forget(loaded);
    Ok((instance, link))
}

thread_local! {
    /// The emit depth of the call this executor thread is running, echoed in its emits.
    static CALL_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs one hook call with its emit depth: (status, body).
fn call_hook(instance: &Instance, hook: &str, payload: &[u8], depth: u32) -> (i32, Vec<u8>) {
    call_hook_with(instance, hook, payload, depth, |status, body| {
        (status, body.to_vec())
    })
}

/// Runs one hook call with its emit depth and hands `answer` the status and the reply
/// where the plugin wrote it (no copy): an error's message as text (lossy UTF-8), as
/// every answer of the worker carries it.
fn call_hook_with<R>(
    instance: &Instance,
    hook: &str,
    payload: &[u8],
    depth: u32,
    answer: impl FnOnce(i32, &[u8]) -> R,
) -> R {
    CALL_DEPTH.set(depth);
    instance.call_with(hook, payload, |status, body| {
        CALL_DEPTH.set(0);
        if status == abi::STATUS_OK {
            answer(status, body)
        } else {
            answer(status, String::from_utf8_lossy(body).as_bytes())
        }
    })
}

fn answer(result: Result<Vec<u8>, plugboard_sdk::host::CallError>) -> (i32, Vec<u8>) {
    match result {
        Ok(body) => (abi::STATUS_OK, body),
        Err(err) => (err.status, err.message.into_bytes()),
    }
}

/// A reply body over `MAX_REPLY_BYTES` cannot be framed: that one call is answered with
/// an error saying so (sending it would end the worker, failing every call in flight).
fn within_reply_limit(status: i32, body: &[u8]) -> (i32, std::borrow::Cow<'_, [u8]>) {
    match oversized_reply(body.len()) {
        Some((status, refusal)) => (status, std::borrow::Cow::Owned(refusal.into_bytes())),
        None => (status, std::borrow::Cow::Borrowed(body)),
    }
}

/// Answers of a `Calls` frame are packed into `Replies` frames of about this many bytes
/// of bodies; a larger body goes alone, as a plain `Reply`.
const REPLIES_BUDGET: usize = 48 * 1024;
const LARGE_BODY: usize = 16 * 1024;

/// Serves requests on `threads` threads (this one included), each receiving from the
/// socket itself and running the request it received: no hand-off between threads on the
/// call path, several calls in flight, and while one thread waits for an emit's answer
/// another receives it. A `Calls` frame (pipelined calls) is run in order by the thread
/// that received it, and answered packed. Whichever thread gets `Shutdown` (or sees the
/// engine gone) waits for the calls in flight, destroys the instance and ends the process.
fn serve(channel: &Arc<Channel>, instance: Instance, link: &Arc<EngineLink>, threads: u32) -> ! {
    let instance = Arc::new(RwLock::new(Some(instance)));
    let _ = link.servers.set(ServingSide {
        instance: Arc::clone(&instance),
        link: Arc::downgrade(link),
    });
    link.serving.store(true, Ordering::Release);
    for _ in 1..threads.max(1) {
        if !spawn_server(channel, &instance, link) {
            // Fewer threads (the pids limit): the ones running still serve.
            break;
        }
    }
    // The plan's threads are at most 4 of the slots: this one always finds one.
    let slot = link.claim_slot().unwrap_or(0);
    let outcome = serve_requests(channel, &instance, link, slot);
    finish(&instance, link, outcome)
}

/// Starts one more serving thread; false when none can be started (every slot taken, or
/// the pids limit).
fn spawn_server(
    channel: &Arc<Channel>,
    instance: &Arc<RwLock<Option<Instance>>>,
    link: &Arc<EngineLink>,
) -> bool {
    let Some(slot) = link.claim_slot() else {
        return false;
    };
    let (channel, instance, link) = (Arc::clone(channel), Arc::clone(instance), Arc::clone(link));
    let released = Arc::clone(&link);
    let spawned = std::thread::Builder::new()
        .name("serve".to_owned())
        .spawn(move || {
            let outcome = serve_requests(&channel, &instance, &link, slot);
            finish(&instance, &link, outcome)
        });
    if spawned.is_err() {
        released.server_slots[slot]
            .claimed
            .store(false, Ordering::Release);
    }
    spawned.is_ok()
}

/// Destroys the instance (the plugin's own shutdown) once no call is running, and exits.
/// Log lines dropped until then, the plugin's shutdown included, are reported first.
fn finish(
    instance: &RwLock<Option<Instance>>,
    link: &EngineLink,
    outcome: Result<(), WorkerError>,
) -> ! {
    drop(
        instance
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
    link.report_dropped_logs();
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("plugboard-host: {err}");
            std::process::exit(1)
        }
    }
}

fn serve_requests(
    channel: &Channel,
    instance: &RwLock<Option<Instance>>,
    link: &EngineLink,
    slot: usize,
) -> Result<(), WorkerError> {
    let busy = &link.server_slots[slot].busy;
    loop {
        let served = channel.recv_request(|message| match message {
            Ok(EngineMessageRef::EmitResult { id, code }) => {
                if let Some(answer) = link
                    .pending_emits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id)
                {
                    let _ = answer.send(code);
                }
                Ok(true)
            }
            Ok(EngineMessageRef::Shutdown) | Err(IpcError::Closed) => Ok(false),
            Ok(
                request @ (EngineMessageRef::Call { .. }
                | EngineMessageRef::Health { .. }
                | EngineMessageRef::Calls { .. }),
            ) => {
                let guard = instance.read().unwrap_or_else(PoisonError::into_inner);
                let Some(instance) = guard.as_ref() else {
                    return Ok(false); // shutting down
                };
                busy.store(true, Ordering::Relaxed);
                // This thread may have been the one left to read an emit's answer.
                link.keep_a_receiver_for_emits();
                // Answered while the instance is held, so a shutdown cannot end the
                // process between running a call and answering it.
                let ran = run_request(channel, instance, request);
                busy.store(false, Ordering::Relaxed);
                ran?;
                if link.logs_dropped.load(Ordering::Relaxed) > 0 {
                    link.report_dropped_logs();
                }
                Ok(true)
            }
            Ok(other) => Err(WorkerError::Protocol(format!(
                "unexpected {other:?} while serving"
            ))),
            Err(err) => Err(err.into()),
        })?;
        if !served {
            return Ok(());
        }
    }
}

/// Runs a Call, Health or Calls request and sends its answer(s).
fn run_request(
    channel: &Channel,
    instance: &Instance,
    request: EngineMessageRef<'_>,
) -> Result<(), WorkerError> {
    match request {
        EngineMessageRef::Call {
            id,
            hook,
            payload,
            depth,
        } => {
            // The reply is framed straight from the plugin's buffer.
            call_hook_with(instance, hook, payload, depth, |status, body| {
                let (status, body) = within_reply_limit(status, body);
                channel.send(&ReplyRef {
                    id,
                    status,
                    body: &body,
                })
            })?;
        }
        EngineMessageRef::Health { id } => {
            let (status, body) = answer(instance.health().map(|()| Vec::new()));
            let (status, body) = within_reply_limit(status, &body);
            channel.send(&ReplyRef {
                id,
                status,
                body: &body,
            })?;
        }
        EngineMessageRef::Calls { calls } => run_calls(channel, instance, &calls)?,
        _ => {}
    }
    Ok(())
}

/// Runs the calls of one `Calls` frame in order and answers them packed into `Replies`
/// frames, each sent once full (a large answer goes alone, as a `Reply`).
fn run_calls(
    channel: &Channel,
    instance: &Instance,
    calls: &[BatchedCallRef<'_>],
) -> Result<(), WorkerError> {
    let mut packed = Vec::new();
    let mut packed_bytes = 0;
    for call in calls {
        let (status, body) = call_hook(instance, call.hook, call.payload, call.depth);
        let (status, body) = match within_reply_limit(status, &body) {
            (status, std::borrow::Cow::Owned(refusal)) => (status, refusal),
            _ => (status, body),
        };
        if body.len() > LARGE_BODY {
            channel.send(&WorkerMessage::Reply {
                id: call.id,
                status,
                body,
            })?;
            continue;
        }
        packed_bytes += body.len();
        packed.push(BatchedReply {
            id: call.id,
            status,
            body,
        });
        if packed_bytes > REPLIES_BUDGET {
            channel.send(&WorkerMessage::Replies {
                replies: std::mem::take(&mut packed),
            })?;
            packed_bytes = 0;
        }
    }
    if !packed.is_empty() {
        channel.send(&WorkerMessage::Replies { replies: packed })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin logging in a tight loop sends the engine about its rate's burst of lines
    /// and says how many it dropped: every line is sent or counted, none is lost track of.
    #[test]
    fn log_lines_past_the_rate_are_counted_not_sent() {
        let (engine, worker) = Channel::pair().expect("socketpair");
        let reader = std::thread::spawn(move || {
            let (mut sent, mut dropped) = (0u64, 0u64);
            while let Ok(Some(message)) =
                engine.recv_timeout::<WorkerMessage>(Duration::from_millis(500))
            {
                match message {
                    WorkerMessage::Log { .. } => sent += 1,
                    WorkerMessage::LogsDropped { lines } => dropped += lines,
                    other => panic!("unexpected {}", other.kind()),
                }
            }
            (sent, dropped)
        });
        let link = EngineLink::new(Arc::new(worker));
        let started = std::time::Instant::now();
        for line in 0..20_000 {
            link.log(LogLevel::Info, &format!("line {line}"));
        }
        let took = started.elapsed().as_secs_f64();
        link.report_dropped_logs();
        drop(link);
        let (sent, dropped) = reader.join().expect("reader ends");
        assert_eq!(sent + dropped, 20_000, "{sent} sent, {dropped} counted");
        let bound = WORKER_LOG_LINES_PER_SEC * (2.0 + took);
        assert!(
            f64::from(u32::try_from(sent).unwrap()) <= bound,
            "{sent} lines sent in {took:.3} s, past {bound:.0}"
        );
    }
}
