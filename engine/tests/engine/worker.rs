//! Sandboxed workers, checked from outside with kernel evidence: `/proc/<pid>/…`, cgroup
//! files, seccomp notifications and exit statuses — never what the worker says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::sandbox::Mechanism;
use plugboard_engine::sandbox::cgroup::{CgroupRoot, EngineScope};
use plugboard_engine::worker::{
    ExitStatus, LaunchedWorker, Worker, WorkerError, WorkerEvent, WorkerPolicy, WorkerSpec,
    plan_for,
};

use crate::support::{
    Signer, built_plugin, example_bundle, file_identity, inotify_fd_in, inotify_watches,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `plugboard-host` binary built beside the plugin libraries.
pub fn host_binary() -> PathBuf {
    let path = built_plugin("hello").with_file_name("plugboard-host");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

pub struct Running {
    pub worker: Worker,
    pub events: mpsc::Receiver<WorkerEvent>,
    pub scope: EngineScope,
    _temp: tempfile::TempDir,
}

/// Verifies and starts the example plugin `name` in a confined worker.
pub fn start(name: &str) -> Running {
    start_with(name, |_| {}).unwrap_or_else(|err| panic!("worker for {name} starts: {err}"))
}

/// Like [`start`], with the confinement plan adjusted first.
pub fn start_with(
    name: &str,
    adjust: impl FnOnce(&mut plugboard_engine::ipc::ConfinementPlan),
) -> Result<Running, WorkerError> {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let dir = example_bundle(temp.path(), name, &signer);
    let bundle = Bundle::open(&dir, &HostLimits::default()).unwrap();
    bundle.verify(&signer.store()).unwrap();
    let (manifest, _digests, library) = bundle.into_parts();
    let scope = EngineScope::create(&CgroupRoot::system().expect("cgroups are mounted"))
        .expect("engine cgroup scope");
    let (mut plan, limits) = plan_for(
        &manifest,
        &manifest.effective_resources(&HostLimits::default()),
        &WorkerPolicy::new(host_binary()),
        &manifest.default_config(),
    );
    adjust(&mut plan);
    let (sender, events) = mpsc::channel();
    let worker = Worker::start(
        &scope,
        WorkerSpec {
            plugin: manifest.plugin.name.clone(),
            host_binary: host_binary(),
            library: library.fd(),
            plan,
            limits,
            env: Vec::new(),
            emit: None,
        },
        &(std::sync::Arc::new(move |event| {
            let _ = sender.send(event);
        }) as plugboard_engine::worker::EventSink),
    );
    match worker {
        Ok(worker) => Ok(Running {
            worker,
            events,
            scope,
            _temp: temp,
        }),
        Err(err) => {
            scope.remove().unwrap();
            Err(err)
        }
    }
}

/// Waits for an event matching `wanted`, printing what was seen on failure.
pub fn wait_for_event(
    events: &mpsc::Receiver<WorkerEvent>,
    within: Duration,
    wanted: impl Fn(&WorkerEvent) -> bool,
) -> WorkerEvent {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(event) => seen.push(event),
            Err(_) => break,
        }
    }
    panic!("no matching event within {within:?}; saw {seen:#?}");
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn call_text(worker: &Worker, hook: &str, payload: &str) -> String {
    let outcome = worker.call(hook, payload.as_bytes(), CALL_TIMEOUT).unwrap();
    String::from_utf8_lossy(&outcome.body).into_owned()
}

/// Nothing of the engine's beyond the socket, the library memfd, the output pipes and
/// /dev/null: a file the engine holds open must not be visible in the worker.
fn assert_only_passed_descriptors(pid: u32) {
    let engine_only = tempfile::tempfile().unwrap();
    let secret = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&engine_only)
    ))
    .unwrap();
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(entry.unwrap().path())
            .unwrap()
            .display()
            .to_string();
        assert_ne!(target, secret.display().to_string());
        let kind = if target == "/dev/null" {
            "null"
        } else if target.starts_with("pipe:") {
            "pipe"
        } else if target.starts_with("socket:") {
            "socket"
        } else if target.starts_with("/memfd:plugboard:") {
            "library"
        } else if target.starts_with("anon_inode:") {
            "anon"
        } else {
            panic!("unexpected descriptor in the worker: {target}")
        };
        kinds.insert(kind);
    }
    assert!(
        kinds.contains("socket") && kinds.contains("library"),
        "{kinds:?}"
    );
}

fn assert_rlimits_and_not_dumpable(pid: u32) {
    // Not dumpable: the kernel hands its /proc files to root although it runs as non-root.
    let status_owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(format!("/proc/{pid}/status")).unwrap(),
    );
    assert_eq!(
        status_owner, 0,
        "/proc/{pid} of a non-dumpable process belongs to root"
    );
    // Its rlimits: open files from the manifest (host default 256), no core dumps, and an
    // address-space backstop far above the 32 MiB memory limit.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = |name: &str| -> String {
        let line = limits
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(soft("Max open files"), "256");
    assert_eq!(soft("Max core file size"), "0");
    let address_space: u64 = soft("Max address space").parse().unwrap();
    assert!(
        address_space >= 4 << 30,
        "address space backstop {address_space}"
    );
}

#[test]
fn a_confined_worker_answers_and_the_kernel_shows_every_mechanism() {
    let running = start("hello");
    let worker = &running.worker;
    assert_eq!(call_text(worker, "greet", "sandbox"), "Hello, sandbox!");
    let pid = worker.sandbox_pid();
    assert_ne!(pid, 0);

    for namespace in ["user", "pid", "net", "mnt", "ipc", "uts", "cgroup"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{namespace}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{namespace}")).unwrap();
        assert_ne!(
            ours, theirs,
            "{namespace} namespace is shared with the engine"
        );
    }
    let uids = status_field(pid, "Uid");
    assert!(uids.split_whitespace().all(|uid| uid != "0"), "Uid: {uids}");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_rlimits_and_not_dumpable(pid);
    // The intermediary outside its pid namespace, in the same cgroup as the same uid, is
    // not dumpable either.
    let intermediary_owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(format!("/proc/{}/status", worker.pid())).unwrap(),
    );
    assert_eq!(intermediary_owner, 0, "the intermediary is dumpable");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/"),
        "the worker runs in the engine's working directory"
    );
    for mechanism in Mechanism::ALL {
        let state = &worker.mechanisms()[&mechanism];
        assert!(state.active, "{mechanism:?} not active: {}", state.detail);
    }
    // The engine compiled the filter once and sent it: the start did not pay the compile.
    let seccomp_step = &worker.mechanisms()[&Mechanism::Seccomp].detail;
    assert!(
        !seccomp_step.contains(plugboard_engine::sandbox::seccomp::COMPILED_BY_WORKER),
        "{seccomp_step}"
    );

    // Its cgroup holds it and the manifest's limits (hello: 32 MiB, 25 % CPU, 8 pids).
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(membership.contains(worker.cgroup_path()), "{membership}");
    let limits = worker.cgroup_limits().expect("limits readable");
    assert_eq!(limits.memory_bytes, 32 * 1024 * 1024);
    assert_eq!(limits.cpu_percent, 25);
    assert_eq!(limits.pids_max, 8);

    // Only `lo` in its network namespace.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"]);

    assert_only_passed_descriptors(pid);

    let engine_pid = worker.pid();
    let cgroup_paths = worker.cgroup_dirs().to_vec();
    let status = running.worker.stop(Duration::from_secs(2));
    assert_eq!(
        status,
        Some(ExitStatus::Code { code: 0 }),
        "graceful stop exits 0"
    );
    assert!(
        !process_exists(pid) && !process_exists(engine_pid),
        "no worker process left"
    );
    for path in cgroup_paths {
        assert!(!path.exists(), "cgroup {} left behind", path.display());
    }
    running.scope.remove().unwrap();
}

/// A worker that reads nothing — every serving thread stuck in a hook, its socket full of
/// calls — is not waited on for room to ask it to shut down: its stop gives up at the
/// grace period, kills it and leaves no process and no cgroup behind.
#[test]
fn a_worker_whose_socket_is_full_is_stopped_at_the_grace_period() {
    let running = start("prober");
    let worker = &running.worker;
    // Every serving thread sleeps on: the calls time out, the hooks go on.
    for _ in 0..8 {
        assert!(
            worker
                .call("sleep", b"30000", Duration::from_millis(50))
                .is_err(),
            "a sleeping hook answered"
        );
    }
    // Then its socket fills with calls nobody reads (the rest cannot even be sent).
    let payload = vec![b'x'; 512 * 1024];
    for _ in 0..24 {
        assert!(
            worker
                .call("whoami", &payload, Duration::from_millis(20))
                .is_err()
        );
    }
    let (pid, sandbox_pid) = (worker.pid(), worker.sandbox_pid());
    let cgroup_paths = worker.cgroup_dirs().to_vec();
    let grace = Duration::from_millis(500);
    let began = Instant::now();
    let status = worker.stop(grace);
    let took = began.elapsed();
    assert!(
        took < grace + Duration::from_secs(1),
        "the stop took {took:?} for a grace period of {grace:?}"
    );
    assert_eq!(status, Some(ExitStatus::Signal { signal: 9 }), "killed");
    // The sandboxed child, killed with its parent, may be reaped by the host's init a
    // moment later.
    let deadline = Instant::now() + Duration::from_secs(2);
    while process_exists(pid) || process_exists(sandbox_pid) {
        assert!(Instant::now() < deadline, "a worker process was left");
        std::thread::sleep(Duration::from_millis(10));
    }
    for path in cgroup_paths {
        assert!(!path.exists(), "cgroup {} left behind", path.display());
    }
    running.scope.remove().unwrap();
}

/// The threads of this process named `comm` (`/proc/self/task/<tid>/comm`, which keeps
/// the first 15 bytes of a thread name).
fn own_threads_named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| {
            let tid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            (name.trim() == comm).then_some(tid)
        })
        .collect()
}

#[test]
fn a_worker_is_born_in_its_cgroup_and_the_spawning_thread_goes_back_to_the_engines() {
    let running = start("hello");
    let worker = &running.worker;
    // Both processes, the intermediary too, in the plugin cgroup in every controller.
    for pid in [worker.pid(), worker.sandbox_pid()] {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for controller in ["memory", "cpu", "cpuacct", "pids"] {
            let line = membership
                .lines()
                .find(|line| {
                    line.split(':')
                        .nth(1)
                        .is_some_and(|names| names.split(',').any(|name| name == controller))
                })
                .unwrap_or_else(|| {
                    panic!("no {controller} line in /proc/{pid}/cgroup:\n{membership}")
                });
            assert!(
                line.ends_with(worker.cgroup_path()),
                "process {pid} is not in {} for {controller}: {line}",
                worker.cgroup_path()
            );
        }
    }
    // The spawner thread entered the cgroup to spawn and left it: it is where the rest of
    // this process is. (Other tests spawn through the same thread, so it may be inside for
    // a moment; it must be back soon.)
    let spawner = own_threads_named("plugboard-spawn");
    assert_eq!(spawner.len(), 1, "one spawner thread: {spawner:?}");
    let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let its =
            std::fs::read_to_string(format!("/proc/self/task/{}/cgroup", spawner[0])).unwrap();
        if its == ours {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spawner thread stayed elsewhere:\n{its}\nthe process is in:\n{ours}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    running.worker.stop(Duration::from_secs(2));
    running.scope.remove().unwrap();
}

#[test]
fn forbidden_network_files_and_spawning_are_blocked_and_network_is_reported_by_name() {
    let running = start("prober");
    let worker = &running.worker;
    let reply = call_text(worker, "connect", "127.0.0.1:9");
    assert!(
        reply.starts_with("denied:") && reply.contains("not permitted"),
        "{reply}"
    );
    let event = wait_for_event(&running.events, Duration::from_secs(2), |event| {
        matches!(event, WorkerEvent::ForbiddenSyscall { .. })
    });
    let WorkerEvent::ForbiddenSyscall {
        syscall, detail, ..
    } = event
    else {
        unreachable!()
    };
    assert_eq!(syscall, "socket");
    assert!(detail.contains("AF_INET"), "{detail}");

    let outside = call_text(worker, "write_file", "/var/tmp/plugboard-prober-escape");
    assert!(outside.starts_with("denied:"), "{outside}");
    assert!(!Path::new("/var/tmp/plugboard-prober-escape").exists());
    let private_tmp = call_text(worker, "write_file", "/tmp/scratch");
    assert!(
        private_tmp.starts_with("ok:"),
        "its private /tmp is writable: {private_tmp}"
    );
    assert!(
        !Path::new("/tmp/scratch").exists(),
        "the private /tmp is not the host's"
    );

    let spawn = call_text(worker, "spawn", "");
    assert!(spawn.starts_with("denied:"), "{spawn}");
    let env = call_text(worker, "env", "");
    assert_eq!(env, "", "the environment is cleared");
    running.worker.stop(Duration::from_secs(2));
    running.scope.remove().unwrap();
}

/// Without `network`, a datagram cannot reach a host socket by its path (`/dev/log`, the
/// journal): `sendto` needs no `connect`, so the datagram socket itself is refused and
/// reported.
#[test]
fn a_datagram_to_a_host_socket_is_blocked_without_the_network_capability() {
    use std::os::unix::fs::PermissionsExt as _;
    // Outside /tmp, which is private in the worker; open to the worker's uid, as /dev/log is.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("host.sock");
    let host = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    host.set_nonblocking(true).unwrap();

    let running = start("prober");
    let worker = &running.worker;
    let reply = call_text(worker, "datagram", path.to_str().unwrap());
    let event = wait_for_event(&running.events, Duration::from_secs(2), |event| {
        matches!(event, WorkerEvent::ForbiddenSyscall { .. })
    });
    running.worker.stop(Duration::from_secs(2));
    running.scope.remove().unwrap();
    assert!(
        reply.starts_with("denied:") && reply.contains("not permitted"),
        "{reply}"
    );
    let WorkerEvent::ForbiddenSyscall { syscall, .. } = event else {
        unreachable!()
    };
    assert_eq!(syscall, "socket");
    let mut received = [0u8; 64];
    assert!(
        host.recv(&mut received).is_err(),
        "the host socket got a datagram"
    );
}

/// A manifest path this host does not have is granted nothing, and the Landlock mechanism
/// says so in its detail rather than skipping it silently.
#[test]
fn a_granted_path_missing_on_this_host_is_named_in_the_landlock_detail() {
    let running = start_with("hello", |plan| {
        plan.fs_read
            .push(PathBuf::from("/nonexistent/plugboard-data"));
    })
    .expect("a missing path does not refuse the plugin");
    let landlock = running.worker.mechanisms()[&Mechanism::Landlock].clone();
    running.worker.stop(Duration::from_secs(2));
    running.scope.remove().unwrap();
    assert!(landlock.active, "{landlock:?}");
    assert!(
        landlock
            .detail
            .contains("fs_read `/nonexistent/plugboard-data` not granted"),
        "{landlock:?}"
    );
}

/// A plugin granted the network may read what name resolution needs (`/etc/hosts`,
/// `/etc/resolv.conf`); one without may not.
#[test]
fn name_resolution_files_are_readable_with_the_network_capability_only() {
    let with_network = start_with("prober", |plan| plan.network = true).unwrap();
    let granted = call_text(&with_network.worker, "read_file", "/etc/hosts");
    with_network.worker.stop(Duration::from_secs(2));
    with_network.scope.remove().unwrap();
    assert!(granted.starts_with("ok:"), "{granted}");

    let without = start("prober");
    let denied = call_text(&without.worker, "read_file", "/etc/hosts");
    without.worker.stop(Duration::from_secs(2));
    without.scope.remove().unwrap();
    assert!(denied.starts_with("denied:"), "{denied}");
}

#[test]
fn a_required_mechanism_that_fails_refuses_the_plugin_and_a_lowered_requirement_shows_it() {
    use std::os::unix::fs::PermissionsExt;
    // A directory the worker's unprivileged uid cannot reach (its parent is root's, mode
    // 0700): Landlock cannot open it to add a rule, so the Landlock step fails for real.
    // Not under /tmp, which the worker sees as its own private tmpfs.
    let parent = tempfile::Builder::new()
        .prefix("plugboard-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let locked = parent.path().join("locked");
    std::fs::create_dir(&locked).unwrap();

    let refused = start_with("hello", |plan| plan.fs_read.push(locked.clone()));
    match refused {
        Err(WorkerError::Confinement {
            mechanism, detail, ..
        }) => {
            assert_eq!(mechanism, "landlock");
            assert!(detail.contains("locked"), "{detail}");
        }
        Err(other) => panic!("expected a refused Landlock step, got {other}"),
        Ok(_) => panic!("a plugin whose required Landlock step failed was started"),
    }

    let running = start_with("hello", |plan| {
        plan.fs_read.push(locked.clone());
        plan.require.retain(|mechanism| mechanism != "landlock");
    })
    .unwrap_or_else(|err| panic!("with landlock not required it runs: {err}"));
    let landlock = &running.worker.mechanisms()[&Mechanism::Landlock];
    assert!(
        !landlock.active && landlock.detail.contains("locked"),
        "{landlock:?}"
    );
    assert!(running.worker.mechanisms()[&Mechanism::Seccomp].active);
    assert_eq!(
        call_text(&running.worker, "greet", "anyway"),
        "Hello, anyway!"
    );
    running.worker.stop(Duration::from_secs(2));
    running.scope.remove().unwrap();
}

/// Launches `name`'s worker on the library memory file of a bundle only half opened: the
/// manifest read, the library not yet copied (the file is empty and unsealed).
fn launch_half_opened(
    dir: &Path,
    scope: &EngineScope,
) -> (
    plugboard_engine::bundle::OpeningBundle,
    Result<LaunchedWorker, WorkerError>,
) {
    let opening = Bundle::begin_open(dir, &HostLimits::default()).unwrap();
    let manifest = opening.manifest().clone();
    let (plan, limits) = plan_for(
        &manifest,
        &manifest.effective_resources(&HostLimits::default()),
        &WorkerPolicy::new(host_binary()),
        &manifest.default_config(),
    );
    let launched = Worker::launch(
        scope,
        WorkerSpec {
            plugin: manifest.plugin.name.clone(),
            host_binary: host_binary(),
            library: opening.library_fd(),
            plan,
            limits,
            env: Vec::new(),
            emit: None,
        },
        &(std::sync::Arc::new(|_| {}) as plugboard_engine::worker::EventSink),
    );
    (opening, launched)
}

fn maps_library(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains(&format!("plugboard:{name}"))
}

/// The engine verifies a bundle while its worker confines itself (issue 4's start hint).
/// The kernel shows the launched worker confined, and without the library mapped, while
/// the library is not even copied; told to load before the seal, the worker refuses the
/// unsealed file and is gone with its cgroup; told after, it loads and answers.
#[test]
fn a_launched_worker_waits_confined_and_loads_only_a_sealed_library() {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let dir = example_bundle(temp.path(), "hello", &signer);
    let scope = EngineScope::create(&CgroupRoot::system().expect("cgroups are mounted"))
        .expect("engine cgroup scope");

    // Told too early: the worker checks the seals itself.
    let (_opening, launched) = launch_half_opened(&dir, &scope);
    let launched = launched.expect("the worker launches on an unfilled library");
    let (pid, cgroups) = (launched.pid(), launched.cgroup_dirs());
    assert!(!cgroups.is_empty(), "the worker has its cgroups");
    match launched.load() {
        Err(WorkerError::Load { reason, .. }) => assert!(
            reason.contains("not sealed"),
            "the worker refuses an unsealed library: {reason}"
        ),
        Err(other) => panic!("expected a refused load, got {other}"),
        Ok(_) => panic!("a worker loaded a library that was not sealed"),
    }
    assert!(!process_exists(pid), "the refused worker {pid} is gone");
    for dir in &cgroups {
        assert!(!dir.exists(), "{} is removed", dir.display());
    }

    // Verified while it waits, then told.
    let (opening, launched) = launch_half_opened(&dir, &scope);
    let launched = launched.expect("the worker launches on an unfilled library");
    let sandbox_pid = launched.sandbox_pid();
    assert_eq!(status_field(sandbox_pid, "Seccomp"), "2");
    assert_eq!(status_field(sandbox_pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(sandbox_pid, "CapEff"), "0000000000000000");
    assert!(
        !maps_library(sandbox_pid, "hello"),
        "no library is mapped before the engine's word"
    );
    let bundle = opening.read_library().unwrap();
    bundle.verify(&signer.store()).unwrap();
    let worker = launched.load().expect("the sealed, verified library loads");
    assert!(
        maps_library(sandbox_pid, "hello"),
        "the library is mapped once loaded"
    );
    assert_eq!(call_text(&worker, "greet", "overlap"), "Hello, overlap!");
    worker.stop(Duration::from_secs(2));
    scope.remove().unwrap();
}

/// The engine adds a granted watch itself (see `an_inotify_watch…` in runtime.rs for why):
/// as the worker's uid, so a directory inside the grants that the worker may not read is
/// still refused by the kernel; in the worker's mount namespace, so its private /tmp is
/// the one watched; and on the file a link leads to only when the call follows links.
#[test]
fn a_watch_the_engine_adds_is_checked_as_the_worker_in_the_workers_view() {
    use std::os::unix::fs::PermissionsExt;
    // Not under /tmp, which the worker sees as its own private tmpfs.
    let granted = tempfile::Builder::new()
        .prefix("plugboard-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(granted.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root_only = granted.path().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o700)).unwrap();
    let to_etc = granted.path().join("to-etc");
    std::os::unix::fs::symlink("/etc", &to_etc).unwrap();
    // A directory the worker may not search, holding a link into the grants: the kernel
    // would refuse the worker the walk through it, whatever the link leads to.
    let hidden = tempfile::Builder::new()
        .prefix("plugboard-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(hidden.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let through_hidden = hidden.path().join("into-grant");
    std::os::unix::fs::symlink(granted.path(), &through_hidden).unwrap();
    let subdir = granted.path().join("sub");
    std::fs::create_dir(&subdir).unwrap();
    let to_sub = granted.path().join("to-sub");
    std::os::unix::fs::symlink(&subdir, &to_sub).unwrap();
    let running = start_with("prober", |plan| {
        plan.fs_read.push(granted.path().to_owned());
    })
    .unwrap_or_else(|err| panic!("prober starts: {err}"));
    let watch = |path: &str| call_text(&running.worker, "watch", path);
    let in_grant = watch(&granted.path().display().to_string());
    let as_worker = watch(&root_only.display().to_string());
    let followed = watch(&to_etc.display().to_string());
    let link_itself = watch(&format!("nofollow:{}", to_etc.display()));
    let private_tmp = watch("/tmp");
    let unsearchable = watch(&through_hidden.display().to_string());
    let under_proc = watch("/proc");
    // A trailing slash follows the link, IN_DONT_FOLLOW or not, as the kernel does.
    let trailing_slash = watch(&format!("nofollow:{}/", to_sub.display()));
    let watched = |reply: &str| inotify_watches(running.worker.sandbox_pid(), inotify_fd_in(reply));
    let (in_grant_watched, link_watched) = (watched(&in_grant), watched(&link_itself));
    let tmp_watched = watched(&private_tmp);
    let slash_watched = watched(&trailing_slash);
    running.worker.stop(Duration::from_secs(2));
    running.scope.remove().unwrap();
    assert!(in_grant.starts_with("ok:"), "{in_grant}");
    assert_eq!(in_grant_watched, vec![file_identity(granted.path())]);
    // IN_DONT_FOLLOW: the link itself, in the grants — not /etc, nor the engine's own
    // /proc link the engine hands the kernel.
    assert_eq!(link_watched, vec![file_identity(&to_etc)], "{link_itself}");
    // The worker's private /tmp, not the host's.
    assert_ne!(
        tmp_watched,
        vec![file_identity(Path::new("/tmp"))],
        "{private_tmp}"
    );
    assert_eq!(tmp_watched.len(), 1, "{private_tmp}");
    assert!(
        unsearchable.starts_with("denied:") && unsearchable.contains("Permission denied"),
        "a link in a directory the worker may not search was followed for it: {unsearchable}"
    );
    assert!(under_proc.starts_with("denied:"), "{under_proc}");
    assert_eq!(
        slash_watched,
        vec![file_identity(&subdir)],
        "{trailing_slash}"
    );
    assert!(
        as_worker.starts_with("denied:") && as_worker.contains("Permission denied"),
        "a directory only root may read was watched for the worker: {as_worker}"
    );
    assert!(followed.starts_with("denied:"), "{followed}");
    assert!(private_tmp.starts_with("ok:"), "{private_tmp}");
}
