//! The sandboxed runtime, next to its references measured in the same run:
//!
//! 1. hook round trip through a confined `hello` worker (`Worker::call("greet", 64 bytes)`)
//!    next to a raw SEQPACKET ping-pong of 64-byte datagrams with a child process placed
//!    like the worker, with a ladder of intermediate kinds that says where the time goes;
//!    then (1b) the same with everything pinned to one CPU;
//! 2. spawn → verified → confined → ready as the engine starts a plugin (`Bundle::begin_open`,
//!    then `Worker::launch` beside `read_library` + `verify`, then `load`), and the
//!    sequential start for comparison, and the same cold start of the C example
//!    (`hello-c`, a 15 KiB library: almost nothing to hash), next to
//!    `bwrap --unshare-all --ro-bind / / true`, with a breakdown of the start.
//!
//! Run: `cargo build --release --workspace && cargo bench -p plugboard-engine --bench runtime`
//! (as root, cgroups mounted, `bwrap` installed). `PLUGBOARD_RUNTIME_BENCH_CALLS` sets the
//! round trips per kind (20 000 by default), `PLUGBOARD_RUNTIME_BENCH_STARTS` the starts
//! (50 by default). About 30 s on 2 cores.
//!
//! Peers are separate processes, like a worker: this binary re-executes itself with
//! `PLUGBOARD_RUNTIME_BENCH_PEER` set (the socket as its stdin, or, for the stand-in worker,
//! spawned by `Worker::start` itself); the measuring process never forks. The round-trip
//! kinds alternate in blocks, each round starting one kind later, so drift on a noisy
//! machine hits all of them alike. The ladder, each row adding one thing to the one before:
//!
//! - raw ping-pong with a plain child (the bare IPC floor, a child in the bench's cgroup);
//! - the child in a cgroup of its own with `hello`'s limits (its CPU quota included);
//! - and under the worker's seccomp filter: "placed like the worker", the reference for
//!   the goals (what the worker's placement costs, without any engine code);
//! - `EngineMessage::Call` → `WorkerMessage::Reply` through `Channel`, one thread each side;
//! - the real engine side, `Worker::call` (caller → socket → reader thread → mpsc →
//!   caller), against a stand-in worker (this binary, started by `Worker::start`, speaking
//!   the handshake, under the seccomp filter, no plugin) answering on one thread; then on
//!   `plan.serve_threads` threads that each receive and answer, as `plugboard-host` does;
//!   and, for comparison, handing each call from one reader to executor threads;
//! - the hook: `Worker::call` on the real confined `hello` worker.
//!
//! For scale: hello's `greet` called in-process, an mpsc ping-pong between two threads
//! (one wake-up each way), and the two frames encoded and decoded without I/O. The CPU time
//! the other side's cgroup used per round trip is shown next to each kind that has one.
//!
//! The start breakdown replays the engine's handshake with the same public messages in the
//! same order, timing each phase; a probe process runs the confinement functions
//! `plugboard-host` runs, timing each step (the probe, like `plugboard-host`, forks itself
//! once into its pid namespace); and the references time process start, cgroup creation
//! and moving a process into a cgroup alone. A cgroup migration after a quiet spell waits
//! for an RCU grace period (milliseconds) while one right after another does not, so "cold"
//! starts are preceded by a quiet spell and "back-to-back" starts are not.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, unshare};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::socket::{MsgFlags, recv, send};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getppid, pipe};
use plugboard_engine::bundle::Bundle;
use plugboard_engine::ipc::{
    CallRef, Channel, ConfinementPlan, EngineMessage, EngineMessageRef, Incoming, IpcError,
    Outgoing, PROTOCOL_VERSION, ReplyRef, StepReport, WorkerMessage, decode_request,
};
use plugboard_engine::loader::SealedLibrary;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::sandbox::cgroup::{CgroupLimits, CgroupRoot, EngineScope, PluginCgroup};
use plugboard_engine::sandbox::landlock::{self, FsPolicy};
use plugboard_engine::sandbox::process::{self as confine, ForkSide};
use plugboard_engine::sandbox::seccomp::{self, FileWatch, SyscallPolicy};
use plugboard_engine::trust::{PrivateKey, SIGNATURE_FILE, TrustLevel, TrustStore, write_keypair};
use plugboard_engine::worker::{
    EventSink, LaunchedWorker, Worker, WorkerPolicy, WorkerSpec, plan_for,
};
use plugboard_sdk::abi::STATUS_OK;

const PEER_ENV: &str = "PLUGBOARD_RUNTIME_BENCH_PEER";
const SECCOMP_ENV: &str = "PLUGBOARD_RUNTIME_BENCH_SECCOMP";
const PLAN_ENV: &str = "PLUGBOARD_RUNTIME_BENCH_PLAN";
const EXECUTORS_ENV: &str = "PLUGBOARD_RUNTIME_BENCH_EXECUTORS";
const RECEIVERS_ENV: &str = "PLUGBOARD_RUNTIME_BENCH_RECEIVERS";
const CALLS_ENV: &str = "PLUGBOARD_RUNTIME_BENCH_CALLS";
const STARTS_ENV: &str = "PLUGBOARD_RUNTIME_BENCH_STARTS";

const PLUGIN: &str = "hello";
const DATAGRAM: usize = 64;
const BLOCK: usize = 2_000;
const WARM_UP: usize = 2_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(2);
/// No cgroup migration for this long before a "cold" start: longer than an RCU grace
/// period, which a migration after a quiet spell waits for (see the report).
const QUIET: Duration = Duration::from_millis(50);

const CALL_GOAL_P50: f64 = 1.3;
const CALL_GOAL_P99: f64 = 1.5;
const START_GOAL: f64 = 0.7;

fn main() {
    match std::env::var(PEER_ENV).as_deref() {
        Ok("raw") => raw_echo(),
        Ok("framed") => framed_echo(),
        Ok("stand-in-host") => stand_in_host(),
        Ok("confine-probe") => confine_probe(),
        Ok("compile-probe") => compile_probe(),
        Ok("calls-pinned") => pinned_calls(),
        Ok(other) => panic!(
            "{PEER_ENV}={other:?}: expected raw, framed, stand-in-host, confine-probe, compile-probe \
             or calls-pinned"
        ),
        Err(_) => measure(),
    }
}

// ---------------------------------------------------------------------------------------
// Peers (separate processes: this binary, re-executed)
// ---------------------------------------------------------------------------------------

/// The socket the parent passed as stdin; under the worker's seccomp filter if asked.
fn peer_socket() -> OwnedFd {
    let socket = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("the socket as stdin");
    if std::env::var_os(SECCOMP_ENV).is_some() {
        // The same filter as `hello`'s worker (no network, no spawn). Nobody listens: the
        // echo loop makes no call the filter refers to the listener.
        let listener = seccomp::install(&SyscallPolicy {
            network: false,
            spawn: false,
            files: FileWatch::Writes,
        })
        .expect("the worker's seccomp filter installs in the peer");
        drop(listener);
    }
    socket
}

/// Sends every datagram straight back.
fn raw_echo() {
    let socket = peer_socket();
    let mut buf = [0u8; DATAGRAM];
    loop {
        match recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return,
            Ok(n) => {
                send(socket.as_raw_fd(), &buf[..n], MsgFlags::MSG_NOSIGNAL).expect("echo");
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => panic!("raw peer recv: {errno}"),
        }
    }
}

/// Answers every Call with a Reply carrying the payload back, on one thread.
fn framed_echo() {
    answer_calls(&Channel::from_fd(peer_socket()));
}

/// Receives Calls and answers each with a Reply carrying the payload back, on the calling
/// thread, until Shutdown or the end of the channel.
/// Receives as `plugboard-host` does (`Channel::recv_request`: a plain recv, decoded in
/// place).
fn answer_calls(channel: &Channel) {
    loop {
        let go_on = channel.recv_request(|message| match message {
            Ok(EngineMessageRef::Call { id, payload, .. }) => {
                channel
                    .send(&WorkerMessage::Reply {
                        id,
                        status: STATUS_OK,
                        body: payload.to_vec(),
                    })
                    .expect("reply");
                true
            }
            Ok(EngineMessageRef::Shutdown) | Err(IpcError::Closed) => false,
            Ok(other) => panic!("echo peer got {other:?}"),
            Err(err) => panic!("echo peer: {err}"),
        });
        if !go_on {
            return;
        }
    }
}

/// Like `plugboard-host`'s serve loop: `receivers` threads (this one included) each receive
/// from the socket and answer the call they got; whichever sees the end ends the process.
fn serve_on_receivers(channel: &Arc<Channel>, receivers: usize) -> ! {
    for _ in 1..receivers.max(1) {
        let channel = Arc::clone(channel);
        std::thread::spawn(move || {
            answer_calls(&channel);
            std::process::exit(0);
        });
    }
    answer_calls(channel);
    std::process::exit(0);
}

/// The hand-off design: this thread receives each Call and hands it through an mpsc
/// channel to one of `executors` threads, which share the receiver behind a mutex and send
/// the Reply.
fn serve_with_hand_off(channel: &Arc<Channel>, executors: usize) -> ! {
    let (jobs, queue) = mpsc::channel::<(u64, Vec<u8>)>();
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..executors {
        let (queue, channel) = (Arc::clone(&queue), Arc::clone(channel));
        std::thread::spawn(move || {
            loop {
                let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                let Ok((id, body)) = job else { break };
                let reply = WorkerMessage::Reply {
                    id,
                    status: STATUS_OK,
                    body,
                };
                if channel.send(&reply).is_err() {
                    break;
                }
            }
        });
    }
    loop {
        match channel.recv::<EngineMessage>() {
            Ok(EngineMessage::Call { id, payload, .. }) => {
                let _ = jobs.send((id, payload));
            }
            Ok(EngineMessage::Shutdown) | Err(IpcError::Closed) => std::process::exit(0),
            Ok(other) => panic!("echo peer got {other:?}"),
            Err(err) => panic!("echo peer: {err}"),
        }
    }
}

/// A stand-in for `plugboard-host`, started by the real `Worker::start`: it speaks the
/// handshake (reporting every required step done, without confining anything but the
/// seccomp filter, whose listener it hands over), then echoes: with
/// `PLUGBOARD_RUNTIME_BENCH_EXECUTORS` > 0 through the hand-off design, otherwise on
/// `PLUGBOARD_RUNTIME_BENCH_RECEIVERS` receiving threads (default: the plan's
/// `serve_threads`, as `plugboard-host`). No plugin is loaded.
fn stand_in_host() {
    let count = |name: &str| -> Option<usize> {
        std::env::var(name).ok().and_then(|text| text.parse().ok())
    };
    let socket = must("socket", confine::adopt_inherited_fd(3, "IPC socket"));
    let _library = must("memfd", confine::adopt_inherited_fd(4, "library memfd"));
    let channel = Arc::new(Channel::from_fd(socket));
    channel
        .send(&WorkerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
        })
        .expect("Hello");
    let plan = match channel.recv::<EngineMessage>().expect("Welcome") {
        EngineMessage::Welcome { plan, .. } => plan,
        other => panic!("stand-in expected Welcome, got {other:?}"),
    };
    match channel.recv::<EngineMessage>().expect("Proceed") {
        EngineMessage::Proceed => {}
        other => panic!("stand-in expected Proceed, got {other:?}"),
    }
    let listener = seccomp::install(&SyscallPolicy {
        network: plan.network,
        spawn: plan.spawn,
        files: FileWatch::Writes,
    })
    .expect("the worker's seccomp filter installs in the stand-in");
    let steps = plan
        .require
        .iter()
        .map(|mechanism| StepReport {
            mechanism: mechanism.clone(),
            ok: true,
            detail: "bench stand-in".to_owned(),
        })
        .collect();
    channel
        .send(&WorkerMessage::Confined {
            steps,
            sandbox_pid: 0,
        })
        .expect("Confined");
    channel
        .send_with_fd(&WorkerMessage::SeccompListener, listener.as_fd())
        .expect("SeccompListener");
    drop(listener);
    match channel.recv::<EngineMessage>().expect("Load") {
        EngineMessage::Load => {}
        other => panic!("stand-in expected Load, got {other:?}"),
    }
    channel.send(&WorkerMessage::Ready).expect("Ready");
    match count(EXECUTORS_ENV) {
        Some(executors) if executors > 0 => serve_with_hand_off(&channel, executors),
        _ => {
            let receivers = count(RECEIVERS_ENV)
                .unwrap_or_else(|| usize::try_from(plan.serve_threads).unwrap_or(1));
            serve_on_receivers(&channel, receivers)
        }
    }
}

/// Compiles the worker's seccomp filter as `seccomp::install` does, without loading it;
/// returns its instructions.
fn compile_filter(policy: SyscallPolicy) -> usize {
    seccomp::compile(&seccomp::rules(&policy))
        .expect("the worker's filter compiles")
        .len()
}

/// Times compiling the worker's seccomp filter in a fresh process (as every worker does)
/// and once more in the same process; prints `name<TAB>nanoseconds` lines.
fn compile_probe() {
    let policy = SyscallPolicy {
        network: false,
        spawn: false,
        files: FileWatch::Writes,
    };
    let start = Instant::now();
    let instructions = compile_filter(policy);
    let first = start.elapsed();
    let start = Instant::now();
    compile_filter(policy);
    let again = start.elapsed();
    println!(
        "seccomp compile, first in a process ({instructions} instructions)\t{}",
        first.as_nanos()
    );
    println!(
        "seccomp compile, again in that process\t{}",
        again.as_nanos()
    );
}

/// The value, or a panic naming the probe step that failed.
fn must<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|err| panic!("probe: {what}: {err}"))
}

/// Step timer of the confinement probe.
struct Steps {
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.marks.push((name, now - self.last));
        self.last = now;
    }
}

/// Runs the confinement steps of `plugboard-host` (same public functions, same order, the
/// namespaces split in two to show the network namespace alone) and prints each step's
/// time as `name<TAB>nanoseconds`. Like the worker, it forks once into its pid namespace;
/// the child (pid 1 there) goes on and reports.
fn confine_probe() {
    let plan: ConfinementPlan = serde_json::from_str(
        &std::env::var(PLAN_ENV).expect("the plan in PLUGBOARD_RUNTIME_BENCH_PLAN"),
    )
    .expect("the plan parses");
    let engine = getppid();
    let mut steps = Steps {
        last: Instant::now(),
        marks: Vec::new(),
    };
    must("uid", confine::switch_user(plan.uid, plan.gid));
    must("pdeathsig", confine::die_with_parent(engine));
    steps.mark("uid/gid switch + parent-death signal");
    must(
        "user namespace",
        confine::enter_user_namespace(plan.uid, plan.gid),
    );
    steps.mark("user namespace + id maps");
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWPID,
    )
    .expect("probe: namespaces");
    steps.mark("mount, ipc, uts, cgroup, pid namespaces");
    if !plan.network {
        unshare(CloneFlags::CLONE_NEWNET).expect("probe: network namespace");
    }
    steps.mark("network namespace");
    must("pdeathsig", confine::die_with_parent(engine));
    let (_pid_reader, _pid_writer) = pipe().expect("probe: pipe");
    let (_abort_reader, _abort_writer) = pipe().expect("probe: pipe");
    match must("fork", confine::fork_into_pid_namespace()) {
        ForkSide::Parent { child } => {
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                _ => 1,
            };
            std::process::exit(code);
        }
        ForkSide::Child => {}
    }
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).expect("probe: pdeathsig");
    steps.mark("fork into the pid namespace (child running)");
    must("mounts", confine::set_up_mounts(plan.tmpfs_bytes));
    steps.mark("mounts (/ private, /proc, /tmp)");
    must(
        "host",
        confine::set_hostname(&format!("plugboard-{}", plan.plugin)),
    );
    must(
        "rlimits",
        confine::apply_rlimits(plan.max_open_files, plan.address_space_bytes),
    );
    must("dumpable", confine::set_not_dumpable());
    must("no_new_privs", confine::set_no_new_privs());
    steps.mark("hostname, rlimits, not dumpable, no_new_privs");
    let mut write = plan.fs_write.clone();
    write.push("/tmp".into());
    let policy = FsPolicy {
        read: plan.fs_read.clone(),
        write,
        ..FsPolicy::system_defaults()
    };
    landlock::restrict(&policy).expect("probe: Landlock");
    steps.mark("Landlock ruleset + restrict");
    must("capabilities", confine::drop_capabilities());
    steps.mark("drop capabilities");
    let listener = seccomp::install(&SyscallPolicy {
        network: plan.network,
        spawn: plan.spawn,
        files: FileWatch::Writes,
    })
    .expect("probe: seccomp");
    steps.mark("seccomp (compile + load + listener)");
    drop(listener);
    for (name, took) in &steps.marks {
        println!("{name}\t{}", took.as_nanos());
    }
}

// ---------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
}

fn summarize(samples: &[u64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let at = |p: usize| {
        let index = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
        Duration::from_nanos(sorted.get(index).copied().unwrap_or(0))
    };
    let total: u128 = sorted.iter().map(|&n| u128::from(n)).sum();
    let count = u128::try_from(sorted.len().max(1)).unwrap_or(1);
    Summary {
        p50: at(50),
        p90: at(90),
        p99: at(99),
        max: Duration::from_nanos(sorted.last().copied().unwrap_or(0)),
        mean: Duration::from_nanos(u64::try_from(total / count).unwrap_or(u64::MAX)),
    }
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_nanos() as f64 / b.as_nanos().max(1) as f64
}

fn verdict(value: f64, goal: f64) -> &'static str {
    if value <= goal { "meets" } else { "MISSES" }
}

// ---------------------------------------------------------------------------------------
// Set-up: built artefacts, a signed bundle, the engine's cgroup scope
// ---------------------------------------------------------------------------------------

/// `target/<profile>/`: the bench runs as `target/<profile>/deps/runtime-…`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("."))
        .to_owned()
}

fn fail(message: &str) -> ! {
    eprintln!("runtime bench: {message}");
    std::process::exit(2);
}

struct Fixture {
    _temp: tempfile::TempDir,
    bundle_dir: PathBuf,
    store: TrustStore,
    host: PathBuf,
    limits: HostLimits,
    policy: WorkerPolicy,
}

/// The example bundle (`plugins/hello/plugin.toml` + the built `libhello.so`), signed with a
/// fresh key pinned in a fresh trust store.
fn fixture() -> Fixture {
    fixture_of("hello", "libhello.so")
}

/// The same plugin written in C (`plugins/hello-c`, a 16 KiB library): the start with
/// almost nothing to hash.
fn small_fixture() -> Fixture {
    fixture_of("hello-c", "libhello_c.so")
}

/// The bundle of `plugins/<plugin>/plugin.toml` and the built `library`, signed with a fresh
/// key pinned in a fresh trust store.
fn fixture_of(plugin: &str, library_file: &str) -> Fixture {
    let profile = profile_dir();
    let host = profile.join("plugboard-host");
    let library = profile.join(library_file);
    for needed in [&host, &library] {
        if !needed.is_file() {
            fail(&format!(
                "{} is missing: run `cargo build --release --workspace` first",
                needed.display()
            ));
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent");
    let temp = tempfile::tempdir().expect("temp dir");
    let keys = temp.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let (_, private, public) = write_keypair(&keys, "bench").expect("key pair");
    let store_dir = temp.path().join("store");
    TrustStore::add_key(&store_dir, &public, TrustLevel::Sandboxed).expect("pin the key");
    let bundle_dir = temp.path().join(format!("bundle-{plugin}"));
    std::fs::create_dir_all(&bundle_dir).expect("bundle dir");
    std::fs::copy(
        repo.join("plugins").join(plugin).join("plugin.toml"),
        bundle_dir.join("plugin.toml"),
    )
    .expect("copy plugin.toml");
    std::fs::copy(&library, bundle_dir.join(library_file)).expect("copy the library");
    let limits = HostLimits::default();
    let bundle = Bundle::open(&bundle_dir, &limits)
        .unwrap_or_else(|err| panic!("the {plugin} bundle opens: {err}"));
    PrivateKey::load(&private)
        .expect("private key")
        .sign_bundle(bundle.digests())
        .write(&bundle_dir.join(SIGNATURE_FILE))
        .expect("write plugin.sig");
    Fixture {
        _temp: temp,
        bundle_dir,
        store: TrustStore::open(&store_dir).expect("trust store"),
        policy: WorkerPolicy::new(host.clone()),
        host,
        limits,
    }
}

fn ignore_events() -> EventSink {
    Arc::new(|_event| {})
}

/// One start, timed, as the engine starts a plugin: the manifest read, then the worker
/// launched (it confines itself) on a second thread while this one copies and hashes the
/// library and checks the signature; then the worker told to load, until Ready.
struct StartTimes {
    manifest: Duration,
    library: Duration,
    verify: Duration,
    launch: Duration,
    load: Duration,
    total: Duration,
}

fn start_worker(fixture: &Fixture, scope: &EngineScope) -> (Worker, CgroupLimits, StartTimes) {
    start_worker_from(fixture, scope, &fixture.host, Vec::new())
}

/// A start of the hello bundle with `host` as the worker binary and `env` as its
/// environment (the stand-in host is this binary, told so through its environment).
fn start_worker_from(
    fixture: &Fixture,
    scope: &EngineScope,
    host: &Path,
    env: Vec<(String, String)>,
) -> (Worker, CgroupLimits, StartTimes) {
    let t0 = Instant::now();
    let opening = Bundle::begin_open(&fixture.bundle_dir, &fixture.limits).expect("bundle opens");
    let t1 = Instant::now();
    let manifest = opening.manifest().clone();
    let (plan, cgroup_limits) = plan_for(
        &manifest,
        &manifest.effective_resources(&fixture.limits),
        &fixture.policy,
        &manifest.default_config(),
    );
    let library_fd = opening
        .library_fd()
        .try_clone_to_owned()
        .expect("dup the library's memfd");
    let (launched, launch, library, verify) = std::thread::scope(|threads| {
        let side = threads.spawn(|| {
            let started = Instant::now();
            let launched = Worker::launch(
                scope,
                WorkerSpec {
                    plugin: manifest.plugin.name.clone(),
                    host_binary: host.to_owned(),
                    library: library_fd.as_fd(),
                    plan,
                    limits: cgroup_limits,
                    env,
                    emit: None,
                },
                &ignore_events(),
            );
            (launched, started.elapsed())
        });
        let read = Instant::now();
        let bundle = opening.read_library().expect("library copied and sealed");
        let library = read.elapsed();
        let verify = Instant::now();
        bundle.verify(&fixture.store).expect("bundle verifies");
        let verify = verify.elapsed();
        let (launched, launch) = side.join().expect("launch thread");
        (launched, launch, library, verify)
    });
    let t2 = Instant::now();
    let worker = launched
        .and_then(LaunchedWorker::load)
        .unwrap_or_else(|err| panic!("the hello worker starts: {err}"));
    let t3 = Instant::now();
    (
        worker,
        cgroup_limits,
        StartTimes {
            manifest: t1 - t0,
            library,
            verify,
            launch,
            load: t3 - t2,
            total: t3 - t0,
        },
    )
}

/// The start as it was before the overlap: open and verify the bundle, then
/// `Worker::start` on the sealed library.
fn start_worker_sequentially(fixture: &Fixture, scope: &EngineScope) -> (Worker, Duration) {
    let t0 = Instant::now();
    let bundle = Bundle::open(&fixture.bundle_dir, &fixture.limits).expect("bundle opens");
    bundle.verify(&fixture.store).expect("bundle verifies");
    let (manifest, _digests, library) = bundle.into_parts();
    let (plan, cgroup_limits) = plan_for(
        &manifest,
        &manifest.effective_resources(&fixture.limits),
        &fixture.policy,
        &manifest.default_config(),
    );
    let worker = Worker::start(
        scope,
        WorkerSpec {
            plugin: manifest.plugin.name.clone(),
            host_binary: fixture.host.clone(),
            library: library.fd(),
            plan,
            limits: cgroup_limits,
            env: Vec::new(),
            emit: None,
        },
        &ignore_events(),
    )
    .unwrap_or_else(|err| panic!("the hello worker starts: {err}"));
    (worker, t0.elapsed())
}

// ---------------------------------------------------------------------------------------
// 1. Hook round trip
// ---------------------------------------------------------------------------------------

/// Where a peer process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// In the bench's own cgroup, no filter.
    Plain,
    /// In a cgroup of its own with `hello`'s limits.
    Cgroup,
    /// That, and under the worker's seccomp filter: placed like the worker.
    Worker,
}

/// A peer process with the other end of a fresh `Channel::pair` as its stdin.
struct Peer {
    channel: Arc<Channel>,
    child: Child,
    cgroup: Option<PluginCgroup>,
}

fn spawn_peer(
    kind: &str,
    placement: Placement,
    scope: &EngineScope,
    limits: &CgroupLimits,
) -> Peer {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command
        .env(PEER_ENV, kind)
        .stdin(Stdio::from(worker.into_fd()));
    if placement == Placement::Worker {
        command.env(SECCOMP_ENV, "1");
    }
    let child = command.spawn().expect("spawn the echo peer");
    let cgroup = (placement != Placement::Plain).then(|| {
        let cgroup = PluginCgroup::create(scope, "bench-peer", limits).expect("peer cgroup");
        cgroup
            .add_process(child.id())
            .expect("peer joins its cgroup");
        cgroup
    });
    Peer {
        channel: Arc::new(engine),
        child,
        cgroup,
    }
}

impl Peer {
    /// Ends the peer (Shutdown for the framed kinds, end of file for raw) and removes its
    /// cgroup.
    fn finish(mut self, shutdown: bool) {
        if shutdown {
            let _ = self.channel.send(&EngineMessage::Shutdown);
        }
        drop(self.channel);
        let status = self.child.wait().expect("wait for the peer");
        assert!(status.success(), "an echo peer exited with {status}");
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove().expect("remove the peer's cgroup");
        }
    }
}

fn raw_round_trip(fd: BorrowedFd<'_>, out: &[u8; DATAGRAM], back: &mut [u8; DATAGRAM]) {
    send(fd.as_raw_fd(), out, MsgFlags::MSG_NOSIGNAL).expect("raw send");
    let n = recv(fd.as_raw_fd(), back, MsgFlags::empty()).expect("raw recv");
    assert_eq!(n, DATAGRAM, "raw echo came back short");
}

/// A Call and its Reply the way `Worker::call` sends and receives them (a borrowed Call;
/// a receive with the socket's tick and descriptors refused, see `framed_channel`).
fn framed_round_trip(channel: &Channel, id: u64, payload: &[u8]) {
    let call = CallRef {
        id,
        hook: "greet",
        payload,
        depth: 0,
    };
    channel.send(&call).expect("call");
    let deadline = Instant::now() + CALL_TIMEOUT;
    // `None`: a receive tick passed (the peer's CPU quota may hold it back that long).
    let reply = loop {
        if let Some(reply) = channel
            .recv_before::<WorkerMessage>(deadline)
            .expect("reply")
        {
            break reply;
        }
        assert!(Instant::now() < deadline, "no reply to call {id}");
    };
    match reply {
        WorkerMessage::Reply { id: got, .. } if got == id => {}
        other => panic!("expected the reply to call {id}, got {other:?}"),
    }
}

/// The engine's end set up as `Worker::start` sets it up after the handshake.
fn framed_channel(channel: &Channel) {
    channel
        .set_receive_tick(Duration::from_millis(10))
        .expect("receive tick");
    let _ = channel.refuse_descriptors();
}

/// How many threads `plugboard-host` serves hello's calls on (the plan's `serve_threads`).
fn hello_serve_threads(fixture: &Fixture) -> usize {
    let bundle = Bundle::open(&fixture.bundle_dir, &fixture.limits).expect("bundle opens");
    let manifest = bundle.manifest();
    let (plan, _) = plan_for(
        manifest,
        &manifest.effective_resources(&fixture.limits),
        &fixture.policy,
        &manifest.default_config(),
    );
    usize::try_from(plan.serve_threads).unwrap_or(1)
}

/// What framing costs as a call frames, without I/O: the Call and the Reply each written
/// and read as the engine and the worker do, each side's buffer reused.
fn codec_round_trip(payload: &[u8], buffers: &mut (Vec<u8>, Vec<u8>)) {
    let call = CallRef {
        id: 1,
        hook: "greet",
        payload,
        depth: 0,
    }
    .frame_into(std::mem::take(&mut buffers.0))
    .expect("encode Call");
    let Ok(EngineMessageRef::Call { id, payload, .. }) = decode_request(&call) else {
        panic!("the Call did not decode");
    };
    let reply = ReplyRef {
        id,
        status: STATUS_OK,
        body: payload,
    }
    .frame_into(std::mem::take(&mut buffers.1))
    .expect("encode Reply");
    let decoded = WorkerMessage::from_frame(&reply).expect("decode Reply");
    assert!(matches!(decoded, WorkerMessage::Reply { id: 1, .. }));
    *buffers = (call, reply);
}

/// One call through the real engine side to a stand-in worker, which echoes the payload.
fn echo_call(worker: &Worker, payload: &[u8]) {
    let outcome = worker.call("greet", payload, CALL_TIMEOUT).expect("echo");
    assert_eq!(
        (outcome.status, outcome.body.as_slice()),
        (STATUS_OK, payload),
        "the stand-in answered something else"
    );
}

/// `nr_throttled` and `throttled_time` (ns) of the CPU controller among `dirs`.
fn throttling(dirs: &[PathBuf]) -> Option<(u64, u64)> {
    let text = dirs
        .iter()
        .find_map(|dir| std::fs::read_to_string(dir.join("cpu.stat")).ok())?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((
        field("nr_throttled ")?,
        field("throttled_time ").or_else(|| field("throttled_usec ").map(|us| us * 1000))?,
    ))
}

fn throttled_since(dirs: &[PathBuf], before: Option<(u64, u64)>) -> String {
    match (before, throttling(dirs)) {
        (Some((n0, t0)), Some((n1, t1))) => format!(
            "throttled {} times, {:.1?} in all",
            n1.saturating_sub(n0),
            Duration::from_nanos(t1.saturating_sub(t0))
        ),
        _ => "throttling not readable".to_owned(),
    }
}

/// CPU time used by the processes of a cgroup (v1 `cpuacct.usage`, v2 `cpu.stat`), in ns.
fn cpu_usage(dirs: &[PathBuf]) -> Option<u64> {
    dirs.iter().find_map(|dir| {
        if let Ok(text) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
            return text.trim().parse().ok();
        }
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
            .map(|us| us * 1000)
    })
}

struct Kind<'a> {
    name: &'static str,
    round_trip: Box<dyn FnMut() + 'a>,
    samples: Vec<u64>,
    /// The cgroup of the other side, if it has one of its own: its CPU time is counted.
    peer_cgroup: Vec<PathBuf>,
    peer_cpu: Option<u64>,
}

impl<'a> Kind<'a> {
    fn new(
        name: &'static str,
        calls: usize,
        peer_cgroup: Vec<PathBuf>,
        round_trip: impl FnMut() + 'a,
    ) -> Self {
        Self {
            name,
            round_trip: Box::new(round_trip),
            samples: Vec::with_capacity(calls),
            peer_cpu: (!peer_cgroup.is_empty()).then_some(0),
            peer_cgroup,
        }
    }

    /// The other side's CPU time per round trip.
    fn peer_cpu_per_round_trip(&self) -> String {
        match self.peer_cpu {
            Some(total) if !self.samples.is_empty() => {
                let count = u64::try_from(self.samples.len()).unwrap_or(u64::MAX);
                format!("{:.2?}", Duration::from_nanos(total / count))
            }
            _ => "-".to_owned(),
        }
    }
}

#[allow(clippy::too_many_lines)]
fn call_bench(fixture: &Fixture, scope: &EngineScope, calls: usize, title: &str) {
    let (worker, limits, _) = start_worker(fixture, scope);
    let serve_threads = hello_serve_threads(fixture);
    let peer = |kind, placement| spawn_peer(kind, placement, scope, &limits);
    let plain = peer("raw", Placement::Plain);
    let in_cgroup = peer("raw", Placement::Cgroup);
    let placed = peer("raw", Placement::Worker);
    let framed = peer("framed", Placement::Worker);
    framed_channel(&framed.channel);
    // The real engine side (`Worker::call`) against stand-in workers: this binary, started
    // by `Worker::start` (so in a cgroup of its own with hello's limits), under the
    // worker's seccomp filter, echoing with 0, 1 or 2 executor threads.
    let stand_in = |setting: &str, value: usize| {
        let exe = std::env::current_exe().expect("own path");
        let env = vec![
            (PEER_ENV.to_owned(), "stand-in-host".to_owned()),
            (setting.to_owned(), value.to_string()),
        ];
        start_worker_from(fixture, scope, &exe, env).0
    };
    let one_receiver = stand_in(RECEIVERS_ENV, 1);
    let receivers = stand_in(RECEIVERS_ENV, serve_threads);
    let hand_off = stand_in(EXECUTORS_ENV, 2);
    let placed_dirs = placed.cgroup.as_ref().map(PluginCgroup::paths);
    let dirs = |peer: &Peer| {
        peer.cgroup
            .as_ref()
            .map(PluginCgroup::paths)
            .unwrap_or_default()
    };
    let worker_dirs = worker.cgroup_dirs().to_vec();
    let in_process = plugboard_sdk::testing::TestPlugin::load(profile_dir().join("libhello.so"))
        .expect("hello loads in-process");

    let payload = [b'x'; DATAGRAM];
    let mut frame_buffers = (Vec::new(), Vec::new());
    let expected = format!("Hello, {}!", "x".repeat(DATAGRAM)).into_bytes();
    let outcome = worker.call("greet", &payload, CALL_TIMEOUT).expect("greet");
    assert_eq!(
        (outcome.status, outcome.body.as_slice()),
        (STATUS_OK, expected.as_slice()),
        "greet answered something else"
    );

    // Two threads of this process, one wake-up each way.
    let (to_echo, echo_inbox) = mpsc::channel::<u64>();
    let (echo_out, from_echo) = mpsc::channel::<u64>();
    let echo_thread = std::thread::spawn(move || {
        for value in echo_inbox {
            if echo_out.send(value).is_err() {
                break;
            }
        }
    });

    let out = [b'x'; DATAGRAM];
    let mut backs = [[0u8; DATAGRAM]; 3];
    let [back_plain, back_cgroup, back_placed] = &mut backs;
    let mut ids = [0u64; 2];
    let [framed_id, value] = &mut ids;
    let mut kinds = vec![
        Kind::new("raw ping-pong, plain child", calls, Vec::new(), || {
            raw_round_trip(plain.channel.as_fd(), &out, back_plain);
        }),
        Kind::new(
            "raw, child in a cgroup with hello's limits",
            calls,
            dirs(&in_cgroup),
            || {
                raw_round_trip(in_cgroup.channel.as_fd(), &out, back_cgroup);
            },
        ),
        Kind::new(
            "raw, + seccomp filter = placed like the worker",
            calls,
            dirs(&placed),
            || {
                raw_round_trip(placed.channel.as_fd(), &out, back_placed);
            },
        ),
        Kind::new(
            "framed Call->Reply, one thread each side",
            calls,
            dirs(&framed),
            || {
                *framed_id += 1;
                framed_round_trip(&framed.channel, *framed_id, &payload);
            },
        ),
        Kind::new(
            "Worker::call, stand-in: 1 thread receives + answers",
            calls,
            one_receiver.cgroup_dirs().to_vec(),
            || {
                echo_call(&one_receiver, &payload);
            },
        ),
        Kind::new(
            "Worker::call, stand-in: threads each receive+answer",
            calls,
            receivers.cgroup_dirs().to_vec(),
            || {
                echo_call(&receivers, &payload);
            },
        ),
        Kind::new(
            "Worker::call, stand-in: reader -> mpsc -> 2 executors",
            calls,
            hand_off.cgroup_dirs().to_vec(),
            || {
                echo_call(&hand_off, &payload);
            },
        ),
        Kind::new(
            "hook: Worker::call(\"greet\", 64 bytes)",
            calls,
            worker_dirs.clone(),
            || {
                let outcome = worker.call("greet", &payload, CALL_TIMEOUT).expect("greet");
                assert_eq!(outcome.status, STATUS_OK, "greet failed");
            },
        ),
        Kind::new(
            "hello's greet in-process (plugin alone)",
            calls,
            Vec::new(),
            || {
                in_process
                    .call("greet", &payload)
                    .expect("greet in-process");
            },
        ),
        Kind::new(
            "mpsc ping-pong between two threads",
            calls,
            Vec::new(),
            || {
                *value += 1;
                to_echo.send(*value).expect("to the echo thread");
                assert_eq!(from_echo.recv().expect("from the echo thread"), *value);
            },
        ),
        Kind::new(
            "frames alone: encode + decode Call and Reply",
            calls,
            Vec::new(),
            move || codec_round_trip(&payload, &mut frame_buffers),
        ),
    ];

    for kind in &mut kinds {
        for _ in 0..WARM_UP {
            (kind.round_trip)();
        }
    }
    let placed_before = placed_dirs.as_deref().and_then(throttling);
    let worker_before = throttling(&worker_dirs);
    let started = Instant::now();
    let mut done = 0;
    let count = kinds.len();
    while done < calls {
        let block = BLOCK.min(calls - done);
        // Each round starts one kind later, so no kind always follows the same other one.
        kinds.rotate_left(1);
        for kind in &mut kinds {
            let cpu_before = cpu_usage(&kind.peer_cgroup);
            for _ in 0..block {
                let start = Instant::now();
                (kind.round_trip)();
                kind.samples.push(nanos(start.elapsed()));
            }
            let used = cpu_usage(&kind.peer_cgroup)
                .zip(cpu_before)
                .map(|(after, before)| after.saturating_sub(before));
            kind.peer_cpu = kind.peer_cpu.zip(used).map(|(sum, used)| sum + used);
        }
        done += block;
    }
    let wall = started.elapsed();
    let rounds = calls.div_ceil(BLOCK);
    kinds.rotate_right(rounds % count);
    let throttled = format!(
        "worker cgroup {}; raw placed peer cgroup {}",
        throttled_since(&worker_dirs, worker_before),
        placed_dirs.as_deref().map_or_else(
            || "n/a".to_owned(),
            |dirs| throttled_since(dirs, placed_before)
        )
    );

    println!(
        "## {title}: {calls} round trips per kind after {WARM_UP} warm-up, alternating \
         blocks of {BLOCK}, each round starting one kind later ({wall:.1?} in all)"
    );
    println!(
        "   every peer is a separate process; \"placed like the worker\" = a cgroup of its own \
         with hello's limits (cpu {}% of one CPU, memory {} MiB, pids {}) + the worker's \
         seccomp filter",
        limits.cpu_percent,
        limits.memory_bytes / (1024 * 1024),
        limits.pids_max
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "p50", "p90", "p99", "max", "peer CPU"
    );
    let s: Vec<Summary> = kinds
        .iter()
        .map(|kind| {
            let s = summarize(&kind.samples);
            println!(
                "{:<52} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.2?} {:>10}",
                kind.name,
                s.p50,
                s.p90,
                s.p99,
                s.max,
                kind.peer_cpu_per_round_trip()
            );
            s
        })
        .collect();
    drop(kinds);
    let (plain_s, placed_s, hook_s) = (s[0], s[2], s[7]);
    let p50 = ratio(hook_s.p50, placed_s.p50);
    let p99 = ratio(hook_s.p99, placed_s.p99);
    println!(
        "ratio hook / raw placed like the worker: p50 {p50:.2}x (goal <= {CALL_GOAL_P50}x: {}), \
         p99 {p99:.2}x (goal <= {CALL_GOAL_P99}x: {})",
        verdict(p50, CALL_GOAL_P50),
        verdict(p99, CALL_GOAL_P99)
    );
    println!(
        "ratio hook / raw plain child:            p50 {:.2}x, p99 {:.2}x",
        ratio(hook_s.p50, plain_s.p50),
        ratio(hook_s.p99, plain_s.p99)
    );
    println!("what each step adds (difference of two rows above):                 p50        p99");
    for (what, upper, lower) in [
        ("own cgroup with hello's limits", 1, 0),
        ("seccomp filter in the peer", 2, 1),
        ("postcard frames + Channel, both sides", 3, 2),
        (
            "engine: Worker::call (reader thread -> mpsc -> caller)",
            4,
            3,
        ),
        ("worker: several threads receiving instead of one", 5, 4),
        ("the rest: plugin call, real confined plugboard-host", 7, 5),
        (
            "(worker: reader -> mpsc -> executors instead of one thread)",
            6,
            4,
        ),
    ] {
        println!(
            "  {what:<62} {:>10.2} {:>10.2}",
            signed(s[upper].p50, s[lower].p50),
            signed(s[upper].p99, s[lower].p99)
        );
    }
    println!(
        "  (for scale: one thread wake-up in this process, mpsc ping-pong p50 / 2: {:.2?}; \
         encoding and decoding both frames without I/O: {:.2?}; the plugin's greet: {:.2?})",
        s[9].p50 / 2,
        s[10].p50,
        s[8].p50
    );
    println!("cpu quota during the timed loop: {throttled}");

    drop(to_echo);
    echo_thread.join().expect("the echo thread ends");
    plain.finish(false);
    in_cgroup.finish(false);
    placed.finish(false);
    framed.finish(true);
    for stand_in in [&one_receiver, &receivers, &hand_off] {
        let _ = stand_in.stop(STOP_GRACE);
        assert!(!stand_in.is_running(), "a stand-in worker did not stop");
    }
    let _ = worker.stop(STOP_GRACE);
    assert!(!worker.is_running(), "the worker did not stop");
}

/// `a - b` as signed microseconds-ish text.
fn signed(a: Duration, b: Duration) -> SignedDuration {
    SignedDuration {
        negative: a < b,
        magnitude: a.abs_diff(b),
    }
}

struct SignedDuration {
    negative: bool,
    magnitude: Duration,
}

impl std::fmt::Display for SignedDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.negative { '-' } else { '+' };
        match f.precision() {
            Some(precision) => write!(f, "{sign}{:.*?}", precision, self.magnitude),
            None => write!(f, "{sign}{:?}", self.magnitude),
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Start → ready, and where it goes
// ---------------------------------------------------------------------------------------

/// The engine's handshake replayed with the same public messages, each phase timed.
#[derive(Default)]
struct Phases {
    spawn: Duration,
    hello: Duration,
    cgroup_create: Duration,
    cgroup_check: Duration,
    confined: Duration,
    listener: Duration,
    ready: Duration,
}

/// What a replayed start leaves running; dropped, it kills it and removes its cgroup.
struct Replayed {
    pid: Pid,
    sandbox_pid: Option<Pid>,
    cgroup: Option<PluginCgroup>,
    listener: Option<OwnedFd>,
}

impl Drop for Replayed {
    /// Kills the sandboxed child first, so the intermediary reaps it and ends the same way
    /// (killing the intermediary first would leave the child to the host's init to reap);
    /// then the cgroup kills whatever is left.
    fn drop(&mut self) {
        if let Some(pid) = self.sandbox_pid {
            let _ = kill(pid, Signal::SIGKILL);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(1)),
                    _ => break,
                }
            }
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.remove();
        }
        let _ = waitpid(self.pid, None);
        drop(self.listener.take());
    }
}

/// Spawns `plugboard-host` the way the engine does (posix_spawn, socket at 3, memfd at 4,
/// a clean signal state), from this long-lived main thread.
fn spawn_host(host: &Path, socket: &OwnedFd, library: BorrowedFd<'_>) -> Pid {
    let socket = confine::duplicate_at_or_above(socket.as_fd(), 10).expect("dup socket");
    let library = confine::duplicate_at_or_above(library, 10).expect("dup memfd");
    let mut actions = PosixSpawnFileActions::init().expect("file actions");
    actions
        .add_open(0, "/dev/null", OFlag::O_RDONLY, Mode::empty())
        .expect("stdin");
    actions.add_dup2(socket.as_raw_fd(), 3).expect("socket");
    actions.add_dup2(library.as_raw_fd(), 4).expect("memfd");
    let mut attr = PosixSpawnAttr::init().expect("spawn attributes");
    attr.set_sigmask(&SigSet::empty()).expect("sigmask");
    attr.set_sigdefault(&SigSet::all()).expect("sigdefault");
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .expect("spawn flags");
    let args = [
        CString::new(host.as_os_str().as_encoded_bytes()).expect("host path"),
        CString::new(format!("--plugin={PLUGIN}")).expect("argument"),
    ];
    let env: [CString; 0] = [];
    posix_spawn(host, &actions, &attr, &args, &env).expect("posix_spawn plugboard-host")
}

fn replay_start(
    fixture: &Fixture,
    scope: &EngineScope,
    library: &SealedLibrary,
    plan: ConfinementPlan,
    limits: &CgroupLimits,
) -> (Replayed, Phases) {
    let mut phases = Phases::default();
    let mut last = Instant::now();
    let mut lap = || {
        let now = Instant::now();
        let took = now - last;
        last = now;
        took
    };
    let recv = |channel: &Channel, what: &str| -> WorkerMessage {
        match channel.recv_timeout::<WorkerMessage>(HANDSHAKE_TIMEOUT) {
            Ok(Some(message)) => message,
            Ok(None) => panic!("replayed start: no {what} within {HANDSHAKE_TIMEOUT:?}"),
            Err(err) => panic!("replayed start: waiting for {what}: {err}"),
        }
    };

    let cgroup = PluginCgroup::create(scope, PLUGIN, limits).expect("worker cgroup");
    phases.cgroup_create = lap();
    let (engine_end, worker_end) = Channel::pair().expect("socketpair");
    // Spawned from inside the cgroup, as the engine's spawner thread does on v1.
    let spawn = || spawn_host(&fixture.host, &worker_end.into_fd(), library.fd());
    let pid = match cgroup.thread_entry() {
        Some(entry) => entry.run_inside(spawn).expect("enter the worker's cgroup"),
        None => spawn(),
    };
    let mut replayed = Replayed {
        pid,
        sandbox_pid: None,
        cgroup: None,
        listener: None,
    };
    phases.spawn = lap();
    match recv(&engine_end, "Hello") {
        WorkerMessage::Hello { protocol, .. } if protocol == PROTOCOL_VERSION => {}
        other => panic!("replayed start: expected Hello, got {other:?}"),
    }
    phases.hello = lap();
    let raw_pid = pid.as_raw().unsigned_abs();
    if !cgroup.holds_process(raw_pid) {
        cgroup
            .add_process(raw_pid)
            .expect("worker joins its cgroup");
    }
    replayed.cgroup = Some(cgroup);
    phases.cgroup_check = lap();
    engine_end
        .send(&EngineMessage::Welcome {
            protocol: PROTOCOL_VERSION,
            plan,
        })
        .expect("Welcome");
    engine_end.send(&EngineMessage::Proceed).expect("Proceed");
    match recv(&engine_end, "Confined") {
        WorkerMessage::Confined { steps, sandbox_pid } => {
            if let Some(failed) = steps.iter().find(|step| !step.ok) {
                panic!(
                    "replayed start: {} failed: {}",
                    failed.mechanism, failed.detail
                );
            }
            replayed.sandbox_pid = Some(Pid::from_raw(
                i32::try_from(sandbox_pid).expect("a pid fits i32"),
            ));
        }
        other => panic!("replayed start: expected Confined, got {other:?}"),
    }
    phases.confined = lap();
    match engine_end.recv_with_fd_timeout::<WorkerMessage>(HANDSHAKE_TIMEOUT) {
        Ok(Some((WorkerMessage::SeccompListener, Some(fd)))) => replayed.listener = Some(fd),
        other => panic!("replayed start: expected SeccompListener with its fd, got {other:?}"),
    }
    phases.listener = lap();
    engine_end.send(&EngineMessage::Load).expect("Load");
    loop {
        match recv(&engine_end, "Ready") {
            WorkerMessage::Ready => break,
            WorkerMessage::Log { .. } => {}
            other => panic!("replayed start: expected Ready, got {other:?}"),
        }
    }
    phases.ready = lap();
    (replayed, phases)
}

/// One run of the start's reference, `bwrap --unshare-all --ro-bind / / true`: its wall
/// time and the CPU time it and its child used.
fn run_bwrap(series: &mut Series) {
    let children_cpu = cpu_time(UsageWho::RUSAGE_CHILDREN);
    let took = run_process(
        Command::new("bwrap").args(["--unshare-all", "--ro-bind", "/", "/", "true"]),
        true,
    );
    series.push("bwrap", took);
    series.push(
        "cpu: bwrap",
        cpu_time(UsageWho::RUSAGE_CHILDREN).saturating_sub(children_cpu),
    );
}

/// User + system CPU time of this process (`RUSAGE_SELF`, every thread) or of its waited-for
/// children (`RUSAGE_CHILDREN`).
fn cpu_time(who: UsageWho) -> Duration {
    let usage = getrusage(who).expect("getrusage");
    let time = |tv: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(tv.tv_sec()).unwrap_or(0),
            u32::try_from(tv.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    time(usage.user_time()) + time(usage.system_time())
}

/// Wall time of running `command` to its end; `expect_success` checks its exit status.
fn run_process(command: &mut Command, expect_success: bool) -> Duration {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let status = command.status().expect("the process runs");
    let took = start.elapsed();
    assert_eq!(
        status.success(),
        expect_success,
        "{command:?} exited with {status}"
    );
    took
}

/// One confinement probe: `(step, nanoseconds)` in order.
fn run_probe(mode: &str, plan: &ConfinementPlan) -> Vec<(String, u64)> {
    let output = Command::new(std::env::current_exe().expect("own path"))
        .env(PEER_ENV, mode)
        .env(PLAN_ENV, serde_json::to_string(plan).expect("plan as JSON"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("the confinement probe runs");
    assert!(
        output.status.success(),
        "the confinement probe exited with {}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (name, ns) = line.split_once('\t')?;
            Some((name.to_owned(), ns.parse().ok()?))
        })
        .collect()
}

/// Named sample series, printed in insertion order.
#[derive(Default)]
struct Series {
    order: Vec<String>,
    samples: BTreeMap<String, Vec<u64>>,
}

impl Series {
    fn push(&mut self, name: &str, took: Duration) {
        if !self.samples.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.samples
            .entry(name.to_owned())
            .or_default()
            .push(nanos(took));
    }

    fn get(&self, name: &str) -> Summary {
        summarize(self.samples.get(name).map_or(&[][..], Vec::as_slice))
    }

    fn print(&self, indent: &str, names: &[&str]) {
        for name in names {
            let s = self.get(name);
            println!(
                "{indent}{name:<w$} {:>10.2?} {:>10.2?} {:>10.2?}",
                s.p50,
                s.p90,
                s.mean,
                w = 62 - indent.len()
            );
        }
    }
}

/// One round of the reference measurements: process start alone, cgroup creation and
/// removal alone, moving a live process into a cgroup after a quiet spell and right after.
fn references(fixture: &Fixture, scope: &EngineScope, limits: &CgroupLimits, series: &mut Series) {
    series.push(
        "host no fds",
        run_process(&mut Command::new(&fixture.host), false),
    );
    series.push("true", run_process(&mut Command::new("true"), true));
    let create = Instant::now();
    let cgroup = PluginCgroup::create(scope, PLUGIN, limits).expect("cgroup");
    series.push("bare cgroup create", create.elapsed());
    let remove = Instant::now();
    cgroup.remove().expect("cgroup removed");
    series.push("bare cgroup remove", remove.elapsed());

    // Moving a live process into a cgroup, after a quiet spell and right after that.
    let parked = spawn_peer("raw", Placement::Plain, scope, limits);
    let first = PluginCgroup::create(scope, "bench-join", limits).expect("cgroup");
    let second = PluginCgroup::create(scope, "bench-join", limits).expect("cgroup");
    std::thread::sleep(QUIET);
    let join = Instant::now();
    first.add_process(parked.child.id()).expect("join");
    series.push("join after quiet", join.elapsed());
    let join = Instant::now();
    second.add_process(parked.child.id()).expect("join again");
    series.push("join right after a join", join.elapsed());
    parked.finish(false);
    first.remove().expect("cgroup removed");
    second.remove().expect("cgroup removed");
}

/// The cold start of the C example (`small`), measured in the same rounds as hello's.
const SMALL_START: &str = "start, C library";

fn start_bench(fixture: &Fixture, small: &Fixture, scope: &EngineScope, starts: usize) {
    // One verified library for the replayed handshakes (a sealed memfd can be passed to any
    // number of workers).
    let bundle = Bundle::open(&fixture.bundle_dir, &fixture.limits).expect("bundle opens");
    bundle.verify(&fixture.store).expect("bundle verifies");
    let library_bytes = bundle.library().len();
    let small_library_bytes = Bundle::open(&small.bundle_dir, &small.limits)
        .expect("the C bundle opens")
        .library()
        .len();
    let (manifest, _, library) = bundle.into_parts();
    let plan = || {
        plan_for(
            &manifest,
            &manifest.effective_resources(&fixture.limits),
            &fixture.policy,
            &manifest.default_config(),
        )
    };

    let mut series = Series::default();
    let mut probe_steps = Series::default();
    let mut compile_steps = Series::default();
    let mut stop_times = Vec::new();
    // Warm-up: page cache, binaries, libseccomp.
    let (worker, _, _) = start_worker(fixture, scope);
    let _ = worker.stop(STOP_GRACE);
    run_bwrap(&mut Series::default());

    let quiet = || std::thread::sleep(QUIET);
    for round in 0..starts {
        // The measured pair first, in alternating order; the start after a quiet spell.
        let mut measured_of = |fixture: &Fixture, series: &mut Series, label: &str| {
            let engine_cpu = cpu_time(UsageWho::RUSAGE_SELF);
            let (worker, _, times) = start_worker(fixture, scope);
            let engine_cpu = cpu_time(UsageWho::RUSAGE_SELF).saturating_sub(engine_cpu);
            series.push(label, times.total);
            if label == SMALL_START {
                let worker_cpu = Duration::from_nanos(cpu_usage(worker.cgroup_dirs()).unwrap_or(0));
                series.push("cpu: start in all, C library", engine_cpu + worker_cpu);
            }
            if label == "start" {
                series.push("manifest", times.manifest);
                series.push("library", times.library);
                series.push("verify", times.verify);
                series.push("launch", times.launch);
                series.push("load", times.load);
                // The worker was born in its cgroup: all it used so far is the start's.
                let worker_cpu = Duration::from_nanos(cpu_usage(worker.cgroup_dirs()).unwrap_or(0));
                series.push("cpu: engine", engine_cpu);
                series.push("cpu: worker", worker_cpu);
                series.push("cpu: start in all", engine_cpu + worker_cpu);
            }
            let stop = Instant::now();
            let _ = worker.stop(STOP_GRACE);
            assert!(!worker.is_running(), "a worker did not stop");
            stop_times.push(nanos(stop.elapsed()));
        };
        let mut measured = |series: &mut Series, label: &str| measured_of(fixture, series, label);
        if round % 2 == 0 {
            quiet();
            measured(&mut series, "start");
            run_bwrap(&mut series);
        } else {
            run_bwrap(&mut series);
            quiet();
            measured(&mut series, "start");
        }

        quiet();
        let (plan_now, limits) = plan();
        replay_phases(fixture, scope, &library, plan_now, &limits, &mut series);
        // Right after the replay's migration: what back-to-back starts see.
        measured(&mut series, "start, back-to-back");

        quiet();
        let (worker, took) = start_worker_sequentially(fixture, scope);
        series.push("start, sequential", took);
        let _ = worker.stop(STOP_GRACE);

        quiet();
        measured_of(small, &mut series, SMALL_START);

        references(fixture, scope, &limits, &mut series);

        let (plan_probe, _) = plan();
        let probe = Instant::now();
        let steps = run_probe("confine-probe", &plan_probe);
        probe_steps.push("probe process, spawn to exit", probe.elapsed());
        for (name, ns) in steps {
            probe_steps.push(&name, Duration::from_nanos(ns));
        }
        for (name, ns) in run_probe("compile-probe", &plan_probe) {
            compile_steps.push(&name, Duration::from_nanos(ns));
        }
    }

    let report = StartReport {
        starts,
        library_bytes,
        small_library_bytes,
        series,
        probe_steps,
        compile_steps,
        stop_times,
    };
    report.print();
}

/// `Worker::start` replayed phase by phase, into `series`.
fn replay_phases(
    fixture: &Fixture,
    scope: &EngineScope,
    library: &SealedLibrary,
    plan: ConfinementPlan,
    limits: &CgroupLimits,
    series: &mut Series,
) {
    let total = Instant::now();
    let (replayed, phases) = replay_start(fixture, scope, library, plan, limits);
    series.push("replay total", total.elapsed());
    drop(replayed);
    for (name, took) in [
        ("cgroup create", phases.cgroup_create),
        ("spawn", phases.spawn),
        ("hello", phases.hello),
        ("cgroup check", phases.cgroup_check),
        ("confined", phases.confined),
        ("listener", phases.listener),
        ("ready", phases.ready),
    ] {
        series.push(name, took);
    }
}

impl StartReport {
    /// Each kind of start against bwrap, with the goal's verdict.
    fn print_ratios(&self) {
        let bwrap = self.series.get("bwrap");
        for (label, name) in [
            ("cold", "start"),
            ("back-to-back", "start, back-to-back"),
            ("C library cold", SMALL_START),
        ] {
            let start = self.series.get(name);
            let p50 = ratio(start.p50, bwrap.p50);
            let p90 = ratio(start.p90, bwrap.p90);
            println!(
                "ratio {label} start / bwrap: p50 {p50:.2}x (goal <= {START_GOAL}x: {}), \
             p90 {p90:.2}x ({})",
                verdict(p50, START_GOAL),
                verdict(p90, START_GOAL)
            );
        }
    }

    /// The CPU time a cold start needs, against what the goal leaves on this machine's CPUs.
    fn print_cpu(&self) {
        let series = &self.series;
        let cpus = std::thread::available_parallelism()
            .ok()
            .and_then(|cpus| u32::try_from(usize::from(cpus)).ok())
            .unwrap_or(1);
        let budget = series.get("bwrap").p50.mul_f64(START_GOAL);
        println!(
            "CPU time of a cold start (user + system; engine = this process, all its threads; \
             worker = its cgroup's cpuacct):"
        );
        series.print(
            "  ",
            &[
                "cpu: engine",
                "cpu: worker",
                "cpu: start in all",
                "cpu: start in all, C library",
                "cpu: bwrap",
            ],
        );
        for (what, name) in [
            ("a start", "cpu: start in all"),
            ("a start of the C library", "cpu: start in all, C library"),
        ] {
            let start_cpu = series.get(name).p50;
            let floor = start_cpu / cpus;
            println!(
                "  on {cpus} CPUs {what} that needs {start_cpu:.2?} of CPU (p50) takes at least \
                 {floor:.2?}; {START_GOAL}x bwrap is {budget:.2?}{}",
                if floor > budget {
                    " — out of reach here, however the work is spread"
                } else {
                    ""
                }
            );
        }
    }
}

/// What the start measurements collected.
struct StartReport {
    starts: usize,
    library_bytes: u64,
    small_library_bytes: u64,
    series: Series,
    probe_steps: Series,
    compile_steps: Series,
    stop_times: Vec<u64>,
}

impl StartReport {
    fn print(&self) {
        let Self {
            starts,
            library_bytes,
            small_library_bytes,
            series,
            probe_steps,
            compile_steps,
            stop_times,
        } = self;
        let bwrap_s = series.get("bwrap");
        println!();
        println!(
            "## 2. Spawn -> verified -> confined -> ready: {starts} starts of the hello worker \
         (library {} KiB) per kind, each cold start next to one bwrap run",
            library_bytes / 1024
        );
        println!(
            "   start = manifest read, then Worker::launch beside the library's copy + hash + \
         signature check, then load until Ready (as the engine starts a plugin); cold = no \
         cgroup migration for {QUIET:?} before it; back-to-back = right after another start; \
         sequential = Bundle::open + verify, then Worker::start (cold)"
        );
        println!("{:<62} {:>10} {:>10} {:>10}", "", "p50", "p90", "mean");
        series.print("", &["start", "start, back-to-back", "start, sequential"]);
        println!(
            "{:<62} {:>10.2?} {:>10.2?} {:>10.2?}",
            format!(
                "{SMALL_START} (hello-c, {} KiB), cold",
                small_library_bytes / 1024
            ),
            series.get(SMALL_START).p50,
            series.get(SMALL_START).p90,
            series.get(SMALL_START).mean
        );
        println!(
            "{:<62} {:>10.2?} {:>10.2?} {:>10.2?}",
            "bwrap --unshare-all --ro-bind / / true (process wall time)",
            bwrap_s.p50,
            bwrap_s.p90,
            bwrap_s.mean
        );
        self.print_ratios();
        self.print_cpu();
        println!();
        println!("breakdown of a cold start (phase means add up; p50/p90 per phase):");
        println!("{:<62} {:>10} {:>10} {:>10}", "", "p50", "p90", "mean");
        println!(
            "  start = manifest + max(library + verify, launch) + load (the overlap's two sides):"
        );
        series.print("    ", &["manifest", "library", "verify", "launch", "load"]);
        println!(
            "  Worker::start replayed, cold (same messages, same order, from the main thread):"
        );
        series.print(
            "    ",
            &[
                "cgroup create",
                "spawn",
                "hello",
                "cgroup check",
                "confined",
                "listener",
                "ready",
                "replay total",
            ],
        );
        let gap = signed(
            series.get("launch").mean + series.get("load").mean,
            series.get("replay total").mean,
        );
        println!(
            "    launch + load - replay, means (what the replay leaves out: spawner hop, pipes, threads): {gap:.2}"
        );
        println!("  inside `confined`: a probe process running the same confinement functions:");
        let names: Vec<&str> = probe_steps.order.iter().map(String::as_str).collect();
        probe_steps.print("    ", &names);
        println!("  inside the seccomp step: compiling the filter alone (libseccomp, same rules):");
        let names: Vec<&str> = compile_steps.order.iter().map(String::as_str).collect();
        compile_steps.print("    ", &names);
        println!("  references:");
        series.print(
            "    ",
            &[
                "host no fds",
                "true",
                "bare cgroup create",
                "bare cgroup remove",
                "join after quiet",
                "join right after a join",
            ],
        );
        let stop = summarize(stop_times);
        println!(
            "  (not in the start: Worker::stop p50 {:.2?}, p90 {:.2?})",
            stop.p50, stop.p90
        );
        print_legend();
    }
}

// ---------------------------------------------------------------------------------------

fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
    })
}

fn print_legend() {
    println!(
        "  legend: manifest = Bundle::begin_open (manifest read, hashed, parsed; signature \
     read; the library's memfd created empty); library = OpeningBundle::read_library (the \
     library copied into the memfd while hashed with SHA3-512, then sealed); verify = \
     Ed25519 over the digests; launch = Worker::launch on the other thread (spawn until the \
     seccomp listener: the worker confined, waiting); load = Load until Ready; spawn = \
     the spawning thread enters the new cgroup (a write of 0 to `tasks` in each v1 \
     hierarchy), posix_spawn, the thread goes back; cgroup check = /proc/<pid>/cgroup \
     read to confirm the worker was born inside; hello = until the worker's Hello (exec, dynamic linking, runtime \
     start); confined = Welcome + Proceed until Confined (the worker confines itself); \
     listener = until the seccomp listener fd arrives; ready = Load, dlopen of the memfd + \
     plugin create; host no fds = plugboard-host spawned without its descriptors, to its \
     exit; true = /usr/bin/true the same way; join = PluginCgroup::add_process of a live \
     process (a write to cgroup.procs in each v1 hierarchy: how workers joined their \
     cgroup before they were born inside it)"
    );
}

/// The engine's cgroup scope, or the reason there is none.
/// Refuses to start without `bwrap`, the reference of the start measurements.
fn check_bwrap() {
    let available = Command::new("bwrap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !available {
        fail("bwrap is not installed: `apt-get install -y bubblewrap`");
    }
}

/// The bench's engine scope; dropped, even on a panic, it kills whatever is still in it
/// and removes it.
struct Scope(EngineScope);

impl std::ops::Deref for Scope {
    type Target = EngineScope;

    fn deref(&self) -> &EngineScope {
        &self.0
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

fn engine_scope() -> Scope {
    let root = CgroupRoot::system()
        .unwrap_or_else(|err| fail(&format!("cgroups (run as root, cgroups mounted): {err}")));
    Scope(
        EngineScope::create(&root)
            .unwrap_or_else(|err| fail(&format!("the engine's cgroup scope: {err}"))),
    )
}

/// Removes the scope and checks nothing of it is left.
fn remove_scope(scope: &EngineScope) {
    scope.remove().expect("the engine scope is removed");
    let left: Vec<_> = scope
        .paths()
        .into_iter()
        .filter(|dir| dir.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// The round trips again with this process, and so the worker and every peer it spawns,
/// pinned to CPU 0: no cross-CPU wake-ups, so what remains is work and context switches.
fn pinned_calls() {
    let mut cpus = CpuSet::new();
    cpus.set(0).expect("CPU 0 exists");
    sched_setaffinity(Pid::from_raw(0), &cpus).expect("pin to CPU 0");
    let fixture = fixture();
    let scope = engine_scope();
    call_bench(
        &fixture,
        &scope,
        count_from_env(CALLS_ENV, 20_000),
        "1b. The same, everything pinned to CPU 0 (no cross-CPU wake-ups)",
    );
    remove_scope(&scope);
}

fn measure() {
    let calls = count_from_env(CALLS_ENV, 20_000);
    let starts = count_from_env(STARTS_ENV, 50);
    check_bwrap();
    let fixture = fixture();
    let small = small_fixture();
    let scope = engine_scope();
    println!(
        "runtime bench: hello worker from {}, engine scope {}",
        fixture.host.display(),
        scope.display_path()
    );
    println!();
    call_bench(&fixture, &scope, calls, "1. Hook round trip");
    println!();
    // Pinning is per process and inherited: a fresh process of this binary does it.
    let status = Command::new(std::env::current_exe().expect("own path"))
        .env(PEER_ENV, "calls-pinned")
        .stdin(Stdio::null())
        .status()
        .expect("the pinned round trips run");
    assert!(
        status.success(),
        "the pinned round trips exited with {status}"
    );
    start_bench(&fixture, &small, &scope, starts);
    remove_scope(&scope);
}
