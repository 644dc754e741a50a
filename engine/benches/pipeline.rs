//! Pipelined calls into one sandboxed plugin, next to raw socketpair pipelining measured in
//! the same run.
//!
//! Run: `cargo build --release --workspace && cargo bench -p plugboard-engine --bench pipeline`
//! (as root, cgroups mounted). `PLUGBOARD_PIPELINE_BENCH_SECONDS` sets the seconds each
//! kind runs per round (1 by default), `PLUGBOARD_PIPELINE_BENCH_ROUNDS` the rounds (3).
//!
//! Kinds, each measured for whole seconds per round, the kinds alternating round by round
//! so drift on a noisy machine hits all of them alike:
//!
//! - raw pipelining: this process keeps a window of [`WINDOW`] 64-byte messages in flight
//!   on a SEQPACKET socketpair, one per datagram, and a child process echoes each datagram
//!   (`recv` + `send`); with the child plain, and placed like the worker (a cgroup of its
//!   own with `hello`'s limits, its CPU quota included, and the worker's seccomp filter);
//! - the same with the echoing child batching (`recvmmsg` + `sendmmsg`, up to 32 at once),
//!   placed like the worker;
//! - the same with [`PACKED`] messages to a datagram, placed like the worker: the raw
//!   counterpart of what `call_batch` does;
//! - hooks: `Worker::call_batch` on a real confined `hello` worker, batches of [`BATCH`]
//!   `greet` calls (64-byte payload) from one thread, back to back (the engine packs them
//!   64 to a frame, 256 in flight);
//! - hooks through the engine: `HookHandle::call_many` of [`BATCH`] greets on a `hello`
//!   started by a real `Engine` (each call admitted against `max_in_flight`, timed and
//!   recorded in the hook's statistics — what an embedding host gets);
//! - hooks: `Worker::call` from [`CALLER_THREADS`] threads at once (no batching API).
//!
//! Every peer is a separate process (this binary, re-executed); the measuring process
//! never forks. The worker's cgroup CPU throttling during each kind is shown.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, recv, recvmmsg, send, sendmmsg};
use plugboard_engine::bundle::Bundle;
use plugboard_engine::ipc::Channel;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::sandbox::cgroup::{CgroupLimits, CgroupRoot, EngineScope, PluginCgroup};
use plugboard_engine::sandbox::seccomp::{self, FileWatch, SyscallPolicy};
use plugboard_engine::trust::{PrivateKey, SIGNATURE_FILE, TrustLevel, TrustStore, write_keypair};
use plugboard_engine::worker::{EventSink, Worker, WorkerPolicy, WorkerSpec, plan_for};
use plugboard_engine::{Command as EngineCommand, Engine, EngineConfig};
use plugboard_sdk::abi::STATUS_OK;

const PEER_ENV: &str = "PLUGBOARD_PIPELINE_BENCH_PEER";
const SECCOMP_ENV: &str = "PLUGBOARD_PIPELINE_BENCH_SECCOMP";
const SECONDS_ENV: &str = "PLUGBOARD_PIPELINE_BENCH_SECONDS";
const ROUNDS_ENV: &str = "PLUGBOARD_PIPELINE_BENCH_ROUNDS";
const ONLY_ENV: &str = "PLUGBOARD_PIPELINE_BENCH_ONLY";

const DATAGRAM: usize = 64;
/// Datagrams (raw) in flight at once.
const WINDOW: usize = 256;
/// Calls per `Worker::call_batch`.
const BATCH: usize = 1024;
/// Threads calling `Worker::call` at once.
const CALLER_THREADS: usize = 8;
/// Datagrams the batching echo peer takes per system call.
const PEER_BATCH: usize = 32;
/// Messages per datagram when the raw reference packs them, as `call_batch` packs calls.
const PACKED: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(2);
const GOAL: f64 = 200_000.0;

fn main() {
    match std::env::var(PEER_ENV).as_deref() {
        Ok("echo") => echo(),
        Ok("echo-batched") => echo_batched(),
        Ok(other) => panic!("{PEER_ENV}={other:?}: expected echo or echo-batched"),
        Err(_) => measure(),
    }
}

// ---------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------

/// The socket the parent passed as stdin; under the worker's seccomp filter if asked.
fn peer_socket() -> OwnedFd {
    let socket = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("the socket as stdin");
    if std::env::var_os(SECCOMP_ENV).is_some() {
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

/// Sends every datagram straight back, one system call each way.
fn echo() {
    let socket = peer_socket();
    let mut buf = vec![0u8; DATAGRAM * PACKED];
    loop {
        match recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return,
            Ok(n) => {
                send(socket.as_raw_fd(), &buf[..n], MsgFlags::MSG_NOSIGNAL).expect("echo");
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => panic!("echo peer recv: {errno}"),
        }
    }
}

/// Sends every datagram straight back, up to [`PEER_BATCH`] per system call each way.
fn echo_batched() {
    let socket = peer_socket();
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; DATAGRAM]; PEER_BATCH];
    let mut receive = MultiHeaders::<()>::preallocate(PEER_BATCH, None);
    let mut transmit = MultiHeaders::<()>::preallocate(PEER_BATCH, None);
    let addresses = vec![None::<()>; PEER_BATCH];
    loop {
        let lengths: Vec<usize> = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|buf| [IoSliceMut::new(buf)]).collect();
            match recvmmsg(
                fd,
                &mut receive,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(received) => received.map(|msg| msg.bytes).collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => panic!("batched echo peer recvmmsg: {errno}"),
            }
        };
        if lengths.first().is_none_or(|&n| n == 0) {
            return;
        }
        let slices: Vec<[IoSlice<'_>; 1]> = lengths
            .iter()
            .zip(&bufs)
            .map(|(&n, buf)| [IoSlice::new(&buf[..n])])
            .collect();
        let mut sent = 0;
        while sent < slices.len() {
            let sent_now = sendmmsg(
                fd,
                &mut transmit,
                &slices[sent..],
                &addresses,
                [],
                MsgFlags::MSG_NOSIGNAL,
            )
            .expect("batched echo")
            .count();
            sent += sent_now;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Set-up (as in the runtime bench): built artefacts, a signed bundle, the engine's scope
// ---------------------------------------------------------------------------------------

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("."))
        .to_owned()
}

fn fail(message: &str) -> ! {
    eprintln!("pipeline bench: {message}");
    std::process::exit(2);
}

struct Fixture {
    _temp: tempfile::TempDir,
    bundle_dir: PathBuf,
    store_dir: PathBuf,
    store: TrustStore,
    limits: HostLimits,
    policy: WorkerPolicy,
}

fn fixture() -> Fixture {
    let profile = profile_dir();
    let host = profile.join("plugboard-host");
    let library = profile.join("libhello.so");
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
    let bundle_dir = temp.path().join("plugins").join("hello");
    std::fs::create_dir_all(&bundle_dir).expect("bundle dir");
    std::fs::copy(
        repo.join("plugins/hello/plugin.toml"),
        bundle_dir.join("plugin.toml"),
    )
    .expect("copy plugin.toml");
    std::fs::copy(&library, bundle_dir.join("libhello.so")).expect("copy libhello.so");
    let limits = HostLimits::default();
    let bundle = Bundle::open(&bundle_dir, &limits).expect("the hello bundle opens");
    PrivateKey::load(&private)
        .expect("private key")
        .sign_bundle(bundle.digests())
        .write(&bundle_dir.join(SIGNATURE_FILE))
        .expect("write plugin.sig");
    Fixture {
        _temp: temp,
        bundle_dir,
        store: TrustStore::open(&store_dir).expect("trust store"),
        store_dir,
        policy: WorkerPolicy::new(host),
        limits,
    }
}

fn start_hello(fixture: &Fixture, scope: &EngineScope) -> (Worker, CgroupLimits, u32) {
    let bundle = Bundle::open(&fixture.bundle_dir, &fixture.limits).expect("bundle opens");
    bundle.verify(&fixture.store).expect("bundle verifies");
    let (manifest, _digests, library) = bundle.into_parts();
    let (plan, cgroup_limits) = plan_for(
        &manifest,
        &manifest.effective_resources(&fixture.limits),
        &fixture.policy,
        &manifest.default_config(),
    );
    let serve_threads = plan.serve_threads;
    let events: EventSink = Arc::new(|_event| {});
    let worker = Worker::start(
        scope,
        WorkerSpec {
            plugin: manifest.plugin.name.clone(),
            host_binary: fixture.policy.host_binary.clone(),
            library: library.fd(),
            plan,
            limits: cgroup_limits,
            env: Vec::new(),
            emit: None,
        },
        &events,
    )
    .unwrap_or_else(|err| panic!("the hello worker starts: {err}"));
    (worker, cgroup_limits, serve_threads)
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

/// An echo peer: `kind` is `echo` or `echo-batched`; with a cgroup (hello's limits) and
/// the worker's seccomp filter when `placed`.
struct Peer {
    channel: Channel,
    child: Child,
    cgroup: Option<PluginCgroup>,
}

fn spawn_peer(kind: &str, placed: bool, scope: &EngineScope, limits: &CgroupLimits) -> Peer {
    let (engine, worker) = Channel::pair().expect("socketpair");
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command
        .env(PEER_ENV, kind)
        .stdin(Stdio::from(worker.into_fd()));
    if placed {
        command.env(SECCOMP_ENV, "1");
    }
    let child = command.spawn().expect("spawn the echo peer");
    let cgroup = placed.then(|| {
        let cgroup = PluginCgroup::create(scope, "bench-peer", limits).expect("peer cgroup");
        cgroup
            .add_process(child.id())
            .expect("peer joins its cgroup");
        cgroup
    });
    Peer {
        channel: engine,
        child,
        cgroup,
    }
}

impl Peer {
    fn finish(mut self) {
        drop(self.channel);
        let status = self.child.wait().expect("wait for the peer");
        assert!(status.success(), "an echo peer exited with {status}");
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove().expect("remove the peer's cgroup");
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(PluginCgroup::paths)
            .unwrap_or_default()
    }
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

// ---------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------

/// Raw pipelining for `period`: [`WINDOW`] messages of 64 bytes in flight, `per_datagram`
/// of them to a datagram, one more datagram sent per echo received. Returns the messages
/// echoed.
fn raw_pipeline(channel: &Channel, period: Duration, per_datagram: usize) -> u64 {
    let fd = channel.as_fd().as_raw_fd();
    let out = vec![b'x'; DATAGRAM * per_datagram];
    let mut back = vec![0u8; DATAGRAM * per_datagram];
    for _ in 0..WINDOW / per_datagram {
        send(fd, &out, MsgFlags::MSG_NOSIGNAL).expect("raw send");
    }
    let start = Instant::now();
    let mut echoes = 0u64;
    let mut in_flight = WINDOW / per_datagram;
    let mut sending = true;
    while in_flight > 0 {
        let n = recv(fd, &mut back, MsgFlags::empty()).expect("raw recv");
        assert_eq!(n, out.len(), "an echo came back short");
        in_flight -= 1;
        if sending {
            echoes += 1;
            if echoes % 64 == 0 && start.elapsed() >= period {
                sending = false;
                continue;
            }
            send(fd, &out, MsgFlags::MSG_NOSIGNAL).expect("raw send");
            in_flight += 1;
        }
    }
    echoes * u64::try_from(per_datagram).unwrap_or(1)
}

/// `Worker::call_batch` of [`BATCH`] greets, back to back, for `period`: the calls answered.
fn batched_hooks(worker: &Worker, period: Duration) -> u64 {
    let payload = [b'x'; DATAGRAM];
    let calls: Vec<(&str, &[u8])> = (0..BATCH).map(|_| ("greet", &payload[..])).collect();
    let start = Instant::now();
    let mut answered = 0u64;
    while start.elapsed() < period {
        for outcome in worker.call_batch(&calls, CALL_TIMEOUT) {
            let outcome = outcome.expect("a pipelined greet");
            assert_eq!(outcome.status, STATUS_OK, "greet failed");
            answered += 1;
        }
    }
    answered
}

/// An engine running the fixture's `hello`, sandboxed, as a host embedding it would.
fn engine_with_hello(fixture: &Fixture) -> Engine {
    let mut config = EngineConfig::new(fixture.policy.host_binary.clone());
    config.plugin_dirs = vec![
        fixture
            .bundle_dir
            .parent()
            .expect("the bundle sits in a plugin directory")
            .to_owned(),
    ];
    config.trust_store = Some(fixture.store_dir.clone());
    let engine = Engine::start(config).unwrap_or_else(|err| fail(&format!("the engine: {err}")));
    engine
        .execute(EngineCommand::Start {
            plugin: "hello".to_owned(),
        })
        .unwrap_or_else(|err| fail(&format!("hello does not start in the engine: {err}")));
    engine
}

/// `HookHandle::call_many` of [`BATCH`] greets through the engine, back to back, for
/// `period`: the calls answered.
fn engine_hooks(engine: &Engine, period: Duration) -> u64 {
    let payload = [b'x'; DATAGRAM];
    let payloads: Vec<&[u8]> = (0..BATCH).map(|_| &payload[..]).collect();
    let mut handle = engine.hook_handle("hello", "greet").expect("hello's greet");
    let start = Instant::now();
    let mut answered = 0u64;
    while start.elapsed() < period {
        for answer in handle.call_many(&payloads) {
            let reply = answer.expect("a pipelined greet");
            assert!(reply.is_ok(), "greet failed");
            answered += 1;
        }
    }
    answered
}

/// `Worker::call` from [`CALLER_THREADS`] threads for `period`: the calls answered.
fn threaded_hooks(worker: &Worker, period: Duration) -> u64 {
    let payload = [b'x'; DATAGRAM];
    let answered = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..CALLER_THREADS {
            scope.spawn(|| {
                let mut mine = 0;
                while !stop.load(Ordering::Relaxed) {
                    let outcome = worker
                        .call("greet", &payload, CALL_TIMEOUT)
                        .expect("a greet");
                    assert_eq!(outcome.status, STATUS_OK, "greet failed");
                    mine += 1;
                }
                answered.fetch_add(mine, Ordering::Relaxed);
            });
        }
        std::thread::sleep(period);
        stop.store(true, Ordering::Relaxed);
    });
    answered.into_inner()
}

struct Kind<'a> {
    name: &'static str,
    run: Box<dyn Fn(Duration) -> u64 + 'a>,
    /// The other side's cgroup (CPU time and throttling are read from it).
    peer_cgroup: Vec<PathBuf>,
    rates: Vec<f64>,
    peer_cpu_ns: u64,
    throttled: (u64, u64),
    count: u64,
}

impl<'a> Kind<'a> {
    fn new(
        name: &'static str,
        peer_cgroup: Vec<PathBuf>,
        run: impl Fn(Duration) -> u64 + 'a,
    ) -> Self {
        Self {
            name,
            run: Box::new(run),
            peer_cgroup,
            rates: Vec::new(),
            peer_cpu_ns: 0,
            throttled: (0, 0),
            count: 0,
        }
    }

    /// One measured period: the rate, the other side's CPU time and throttling.
    fn measure(&mut self, period: Duration) {
        let cpu_before = cpu_usage(&self.peer_cgroup);
        let throttled_before = throttling(&self.peer_cgroup);
        let start = Instant::now();
        let count = (self.run)(period);
        let elapsed = start.elapsed();
        self.rates.push(per_second(count, elapsed));
        self.count += count;
        if let (Some(before), Some(after)) = (cpu_before, cpu_usage(&self.peer_cgroup)) {
            self.peer_cpu_ns += after.saturating_sub(before);
        }
        if let (Some(before), Some(after)) = (throttled_before, throttling(&self.peer_cgroup)) {
            self.throttled.0 += after.0.saturating_sub(before.0);
            self.throttled.1 += after.1.saturating_sub(before.1);
        }
    }

    /// Prints its row; returns its median rate.
    fn report(&self) -> f64 {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        let per = if self.peer_cgroup.is_empty() || self.count == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.2?}",
                Duration::from_nanos(self.peer_cpu_ns / self.count)
            )
        };
        let throttled = if self.peer_cgroup.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{} times, {:.0?}",
                self.throttled.0,
                Duration::from_nanos(self.throttled.1)
            )
        };
        let median = median(&self.rates);
        println!(
            "{:<52} {:>12.0} {:>12.0} {:>12.0} {:>12} {:>22}",
            self.name, median, min, max, per, throttled
        );
        median
    }
}

#[allow(clippy::cast_precision_loss)]
fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
    })
}

fn measure() {
    let seconds = u64::try_from(count_from_env(SECONDS_ENV, 1).max(1)).unwrap_or(1);
    let rounds = count_from_env(ROUNDS_ENV, 3).max(1);
    let period = Duration::from_secs(seconds);
    let fixture = fixture();
    let scope = engine_scope();
    let (worker, limits, serve_threads) = start_hello(&fixture, &scope);
    let plain = spawn_peer("echo", false, &scope, &limits);
    let placed = spawn_peer("echo", true, &scope, &limits);
    let batched = spawn_peer("echo-batched", true, &scope, &limits);
    let worker_dirs = worker.cgroup_dirs().to_vec();
    let engine = engine_with_hello(&fixture);

    let mut kinds = vec![
        Kind::new(
            "raw pipelining, plain child (recv + send)",
            plain.dirs(),
            |period| raw_pipeline(&plain.channel, period, 1),
        ),
        Kind::new(
            "raw pipelining, child placed like the worker",
            placed.dirs(),
            |period| raw_pipeline(&placed.channel, period, 1),
        ),
        Kind::new(
            "raw, placed, child batching (recvmmsg + sendmmsg)",
            batched.dirs(),
            |period| raw_pipeline(&batched.channel, period, 1),
        ),
        Kind::new(
            "raw, placed, 64 messages packed per datagram",
            placed.dirs(),
            |period| raw_pipeline(&placed.channel, period, PACKED),
        ),
        Kind::new(
            "hooks: Worker::call_batch, 1 thread",
            worker_dirs.clone(),
            |period| batched_hooks(&worker, period),
        ),
        Kind::new(
            "hooks: Worker::call, 8 threads",
            worker_dirs.clone(),
            |period| threaded_hooks(&worker, period),
        ),
        Kind::new(
            "hooks: engine, HookHandle::call_many, 1 thread",
            Vec::new(),
            |period| engine_hooks(&engine, period),
        ),
    ];
    // `PLUGBOARD_PIPELINE_BENCH_ONLY=<text>`: only the kinds whose name contains it.
    if let Ok(only) = std::env::var(ONLY_ENV) {
        kinds.retain(|kind| kind.name.contains(&only));
    }
    // Warm-up: code, buffers, the worker's threads.
    for kind in &kinds {
        (kind.run)(Duration::from_millis(200));
    }
    for round in 0..rounds {
        // Each round starts one kind later, so no kind always follows the same other one.
        kinds.rotate_left(usize::from(round > 0));
        for kind in &mut kinds {
            kind.measure(period);
        }
    }
    let count = kinds.len();
    kinds.rotate_right((rounds - 1) % count.max(1));

    print_report(&kinds, (rounds, seconds), serve_threads, &limits);
    drop(kinds);
    engine.shutdown();
    plain.finish();
    placed.finish();
    batched.finish();
    let _ = worker.stop(STOP_GRACE);
    assert!(!worker.is_running(), "the worker did not stop");
    let _ = scope.remove();
}

/// The table and the goal's verdicts.
fn print_report(
    kinds: &[Kind<'_>],
    (rounds, seconds): (usize, u64),
    serve_threads: u32,
    limits: &CgroupLimits,
) {
    println!(
        "## Pipelined calls into one sandboxed plugin: {rounds} rounds of {seconds} s per kind, \
         kinds alternating; raw: {WINDOW} messages of {DATAGRAM} bytes in flight; hooks: \
         call_batch of {BATCH} greets (64-byte payload), or Worker::call from \
         {CALLER_THREADS} threads"
    );
    println!(
        "   hello worker serving on {serve_threads} threads; \"placed like the worker\" = a \
         cgroup of its own with hello's limits (cpu {}% of one CPU, memory {} MiB, pids {}) \
         + the worker's seccomp filter",
        limits.cpu_percent,
        limits.memory_bytes / (1024 * 1024),
        limits.pids_max
    );
    println!(
        "{:<52} {:>12} {:>12} {:>12} {:>12} {:>22}",
        "", "median/s", "min/s", "max/s", "peer CPU", "peer throttled"
    );
    let medians: Vec<f64> = kinds.iter().map(Kind::report).collect();
    println!(
        "   (peer CPU: CPU time of the other side's cgroup per message or call; peer \
         throttled: its CPU quota at work)"
    );
    if let [
        plain,
        placed,
        batching,
        packed,
        batch,
        threads,
        through_engine,
    ] = medians[..]
    {
        let best = batch.max(threads);
        println!(
            "hooks/s (best worker API, median): {best:.0} (goal >= {GOAL:.0}: {}); / raw \
             placed like the worker: {:.2}x; / raw plain: {:.2}x; / raw placed, batching \
             child: {:.2}x; / raw placed, packed: {:.2}x",
            if best >= GOAL { "meets" } else { "MISSES" },
            best / placed,
            best / plain,
            best / batching,
            best / packed,
        );
        println!(
            "hooks/s through the engine (HookHandle::call_many, with statistics, median): \
             {through_engine:.0} (goal >= {GOAL:.0}: {}); / raw placed like the worker: {:.2}x",
            if through_engine >= GOAL {
                "meets"
            } else {
                "MISSES"
            },
            through_engine / placed,
        );
    }
}
