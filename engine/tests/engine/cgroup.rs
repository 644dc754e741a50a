//! Per-plugin cgroups: on this host's kernel, and on fake v2, v1 and hybrid trees in temp
//! dirs (directories holding the files a kernel would show).
//!
//! Kernel tests need root and the memory, cpu, cpuacct and pids controllers; without them
//! they print why and pass, unless `CI` is set, where they fail. Every cgroup they make is
//! removed and every process they start is killed by its pid, however they end. Fake trees
//! only ever list process ids no process can have, so nothing real is signalled.

use std::fs;
use std::ops::Deref;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use plugboard_engine::sandbox::cgroup::{
    CPU_PERIOD_US, CgroupError, CgroupLayout, CgroupLimits, CgroupRoot, Controller, EngineScope,
    PluginCgroup, remove_stale_scopes,
};

/// Above the kernel's `PID_MAX_LIMIT` (2^22): no process can have it.
const IMPOSSIBLE_PID: u32 = 4_194_400;

const LIMITS: CgroupLimits = CgroupLimits {
    memory_bytes: 64 << 20,
    cpu_percent: 150,
    pids_max: 32,
};

/// The host's cgroups, when the kernel gives these tests what they need.
pub fn kernel_root() -> Option<CgroupRoot> {
    let reason = match CgroupRoot::system() {
        Err(error) => error.to_string(),
        Ok(_) if !nix::unistd::geteuid().is_root() => "creating cgroups needs root".to_owned(),
        Ok(root) => match root.missing_controllers().as_slice() {
            [] => return Some(root),
            missing => format!(
                "controllers {missing:?} are missing under {}",
                root.path().display()
            ),
        },
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set, so the kernel cgroup tests must run, but {reason}"
    );
    eprintln!("skipping a kernel cgroup test: {reason}");
    None
}

/// A `sleep 30`, killed and reaped however the test ends.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Sleeper(
            Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("`sleep` runs"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The signal that ended it; it must already be dead, so this does not block.
    fn reap(&mut self) -> Option<i32> {
        self.0.wait().expect("wait for sleep").signal()
    }

    fn is_running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait for sleep").is_none()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An engine scope removed with everything in it however the test ends.
struct Scope(EngineScope);

impl Scope {
    fn create(root: &CgroupRoot) -> Self {
        Scope(EngineScope::create(root).expect("create the engine scope"))
    }
}

impl Deref for Scope {
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

/// Directories a test made by hand, removed deepest first however it ends.
struct HandMade(Vec<PathBuf>);

impl Drop for HandMade {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|error| panic!("read {}/{file}: {error}", dir.display()))
        .trim()
        .to_owned()
}

fn listed(dir: &Path, file: &str) -> Vec<u32> {
    read(dir, file)
        .lines()
        .map(|line| line.parse().expect("a pid per line"))
        .collect()
}

#[test]
fn kernel_plugin_cgroup_holds_its_limits_and_worker_and_leaves_nothing_behind() {
    let Some(root) = kernel_root() else { return };
    let scope = Scope::create(&root);
    let cgroup = PluginCgroup::create(&scope, "limits-test", &LIMITS).expect("create");

    let memory = cgroup.controller_path(Controller::Memory);
    let cpu = cgroup.controller_path(Controller::Cpu);
    let pids = cgroup.controller_path(Controller::Pids);
    if root.layout().uses_v1_hierarchies() {
        assert_eq!(read(&memory, "memory.limit_in_bytes"), "67108864");
        assert_eq!(read(&memory, "memory.swappiness"), "0");
        assert_eq!(read(&cpu, "cpu.cfs_period_us"), CPU_PERIOD_US.to_string());
        assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "150000");
        assert_eq!(read(&pids, "pids.max"), "32");
    } else {
        assert_eq!(read(&memory, "memory.max"), "67108864");
        assert_eq!(read(&cpu, "cpu.max"), "150000 100000");
        assert_eq!(read(&pids, "pids.max"), "32");
    }
    assert_eq!(cgroup.read_limits().expect("read limits"), LIMITS);

    let display = cgroup.display_path();
    assert!(
        display.starts_with(&format!("{}/plugboard-limits-test-", scope.display_path())),
        "{display}"
    );
    let paths = cgroup.paths();
    for path in &paths {
        assert!(path.is_dir(), "{}", path.display());
        assert!(
            path.to_string_lossy().ends_with(&display),
            "{} vs {display}",
            path.display()
        );
    }

    let mut worker = Sleeper::start();
    cgroup.add_process(worker.pid()).expect("add the worker");
    assert_eq!(cgroup.processes().expect("processes"), [worker.pid()]);
    for path in &paths {
        assert_eq!(
            listed(path, "cgroup.procs"),
            [worker.pid()],
            "{}",
            path.display()
        );
        if root.layout().uses_v1_hierarchies() {
            assert_eq!(listed(path, "tasks"), [worker.pid()], "{}", path.display());
        }
    }

    cgroup.remove().expect("remove");
    assert_eq!(worker.reap(), Some(libc::SIGKILL));
    for path in &paths {
        assert!(!path.exists(), "{} is left behind", path.display());
    }

    scope.remove().expect("remove the scope");
    for path in scope.paths() {
        assert!(!path.exists(), "{} is left behind", path.display());
    }
}

#[test]
fn kernel_stale_scope_of_a_dead_engine_is_removed_and_a_live_one_is_kept() {
    let Some(root) = kernel_root() else { return };

    // A live engine (this process) with a worker.
    let live = Scope::create(&root);
    let live_cgroup = PluginCgroup::create(&live, "live", &LIMITS).expect("create");
    let mut live_worker = Sleeper::start();
    live_cgroup.add_process(live_worker.pid()).expect("add");

    // A dead engine: a pid that has exited, a start time no process has, and its worker.
    let dead_pid = {
        let mut child = Command::new("true").spawn().expect("`true` runs");
        child.wait().expect("wait for true");
        child.id()
    };
    let dead_name = format!("plugboard-engine-{dead_pid}-1-0");
    let mut made = HandMade(Vec::new());
    let mut victim = Sleeper::start();
    for hierarchy in root.hierarchy_paths() {
        let scope_dir = hierarchy.join(&dead_name);
        let worker_dir = scope_dir.join("plugboard-victim-0-0");
        fs::create_dir(&scope_dir).expect("mkdir the dead scope");
        made.0.push(scope_dir);
        // `_all`: a cleaner in another thread may take the empty scope in between.
        fs::create_dir_all(&worker_dir).expect("mkdir the dead worker cgroup");
        made.0.push(worker_dir.clone());
        fs::write(worker_dir.join("cgroup.procs"), victim.pid().to_string()).expect("join");
    }

    // Engines started by other tests in this binary remove stale scopes too and may get
    // there first, so the returned names are checked exactly on the fake tree only; here
    // what counts is the outcome.
    let stale = remove_stale_scopes(&root);
    assert!(stale.left.is_empty(), "{:?}", stale.left);
    let removed = stale.removed;
    assert!(
        !removed.iter().any(|name| name == live.name()),
        "{removed:?}"
    );

    assert_eq!(victim.reap(), Some(libc::SIGKILL));
    for dir in &made.0 {
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
    assert!(
        live_worker.is_running(),
        "the live engine's worker was killed"
    );
    assert_eq!(
        live_cgroup.processes().expect("processes"),
        [live_worker.pid()]
    );
    for path in live.paths() {
        assert!(path.is_dir(), "{} was removed", path.display());
    }

    live_cgroup.remove().expect("remove");
    assert_eq!(live_worker.reap(), Some(libc::SIGKILL));
    live.remove().expect("remove the live scope");
}

#[test]
fn kernel_dropped_scope_removes_only_its_empty_children() {
    let Some(root) = kernel_root() else { return };
    let scope = EngineScope::create(&root).expect("create the engine scope");
    let scope_paths = scope.paths();
    let empty = PluginCgroup::create(&scope, "empty", &LIMITS).expect("create");
    let busy = PluginCgroup::create(&scope, "busy", &LIMITS).expect("create");
    let mut worker = Sleeper::start();
    busy.add_process(worker.pid()).expect("add");
    let (empty_paths, busy_paths) = (empty.paths(), busy.paths());
    let mut made = HandMade(scope_paths.clone());
    made.0.extend(busy_paths.iter().cloned());

    drop((empty, busy));
    drop(scope);
    for path in &empty_paths {
        assert!(!path.exists(), "{} is left behind", path.display());
    }
    for path in scope_paths.iter().chain(&busy_paths) {
        assert!(path.is_dir(), "{} was removed", path.display());
    }
    assert!(worker.is_running(), "dropping a scope killed a worker");

    // Clean up by hand: the handles are gone.
    worker.0.kill().expect("kill the worker");
    assert_eq!(worker.reap(), Some(libc::SIGKILL));
    drop(made);
    for path in scope_paths.iter().chain(&busy_paths) {
        assert!(!path.exists(), "{} is left behind", path.display());
    }
}

/// A v2 root with the files the kernel shows there.
fn fake_v2(controllers: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
    fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
    fs::write(dir.path().join("cgroup.procs"), "").unwrap();
    dir
}

/// A v1 root like a common host's: `memory/`, `pids/`, co-mounted `cpu,cpuacct/` with
/// `cpu` and `cpuacct` symlinks, and a `unified/` cgroup2 listing `unified_controllers`.
fn fake_v1(hierarchies: &[&str], unified_controllers: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for hierarchy in hierarchies {
        let path = dir.path().join(hierarchy);
        fs::create_dir(&path).unwrap();
        fs::write(path.join("cgroup.procs"), "").unwrap();
    }
    if hierarchies.contains(&"cpu,cpuacct") {
        symlink("cpu,cpuacct", dir.path().join("cpu")).unwrap();
        symlink("cpu,cpuacct", dir.path().join("cpuacct")).unwrap();
    }
    fs::create_dir(dir.path().join("unified")).unwrap();
    fs::write(
        dir.path().join("unified/cgroup.controllers"),
        unified_controllers,
    )
    .unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn layout_is_read_from_the_root_directory() {
    let v2 = fake_v2("cpuset cpu io memory pids");
    assert_eq!(
        CgroupRoot::detect(v2.path()).unwrap().layout(),
        CgroupLayout::V2
    );

    let host_like = fake_v1(&["memory", "cpu,cpuacct", "pids"], "");
    let root = CgroupRoot::detect(host_like.path()).unwrap();
    assert_eq!(root.layout(), CgroupLayout::V1);
    assert_eq!(root.missing_controllers(), []);
    assert_eq!(
        root.hierarchy_paths().len(),
        3,
        "{:?}",
        root.hierarchy_paths()
    );

    let hybrid = fake_v1(&["memory", "cpu,cpuacct", "pids"], "hugetlb");
    assert_eq!(
        CgroupRoot::detect(hybrid.path()).unwrap().layout(),
        CgroupLayout::Hybrid
    );

    let nothing = tempfile::tempdir().unwrap();
    let error = CgroupRoot::detect(nothing.path()).unwrap_err();
    assert!(
        matches!(error, CgroupError::NoHierarchy { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&nothing.path().display().to_string()),
        "{error}"
    );
}

#[test]
fn host_layout_is_detected() {
    let Some(root) = kernel_root() else { return };
    // This host: v1 hierarchies beside a `unified/` cgroup2 that has `hugetlb`: hybrid.
    assert!(root.layout().uses_v1_hierarchies() || root.layout() == CgroupLayout::V2);
    eprintln!("host cgroup layout: {}", root.layout());
}

#[test]
fn fake_v2_tree_gets_delegation_limits_and_removal() {
    let tree = fake_v2("cpuset cpu io memory hugetlb pids");
    let root = CgroupRoot::detect(tree.path()).unwrap();
    let scope = EngineScope::create(&root).expect("create the scope");
    assert_eq!(
        read(tree.path(), "cgroup.subtree_control"),
        "+memory +cpu +pids"
    );
    let [scope_dir] = scope.paths().try_into().expect("one directory on v2");
    assert_eq!(scope_dir, tree.path().join(scope.name()));
    assert_eq!(
        read(&scope_dir, "cgroup.subtree_control"),
        "+memory +cpu +pids"
    );

    let limits = CgroupLimits {
        cpu_percent: 50,
        ..LIMITS
    };
    let cgroup = PluginCgroup::create(&scope, "hello", &limits).expect("create");
    let [dir] = cgroup.paths().try_into().expect("one directory on v2");
    assert_eq!(dir.parent(), Some(scope_dir.as_path()));
    assert_eq!(
        cgroup.display_path(),
        format!(
            "/{}/{}",
            scope.name(),
            dir.file_name().unwrap().to_string_lossy()
        )
    );
    for controller in Controller::ALL {
        assert_eq!(cgroup.controller_path(controller), dir);
    }
    assert_eq!(cgroup.layout(), CgroupLayout::V2);
    assert_eq!(read(&dir, "memory.max"), "67108864");
    assert_eq!(read(&dir, "cpu.max"), "50000 100000");
    assert_eq!(read(&dir, "pids.max"), "32");
    assert_eq!(cgroup.read_limits().unwrap(), limits);

    cgroup.add_process(IMPOSSIBLE_PID).expect("add");
    assert_eq!(read(&dir, "cgroup.procs"), IMPOSSIBLE_PID.to_string());
    assert_eq!(cgroup.processes().unwrap(), [IMPOSSIBLE_PID]);
    // Play the kernel: the process exited.
    fs::write(dir.join("cgroup.procs"), "").unwrap();

    cgroup.remove().expect("remove");
    assert!(!dir.exists());
    scope.remove().expect("remove the scope");
    assert!(!scope_dir.exists());
    assert_eq!(
        entries(tree.path()),
        [
            "cgroup.controllers",
            "cgroup.procs",
            "cgroup.subtree_control"
        ]
    );
}

#[test]
fn fake_hybrid_tree_uses_the_v1_hierarchies_through_cgroups_rs() {
    let tree = fake_v1(&["memory", "cpu,cpuacct", "pids"], "hugetlb");
    let root = CgroupRoot::detect(tree.path()).unwrap();
    assert_eq!(root.layout(), CgroupLayout::Hybrid);
    let scope = EngineScope::create(&root).expect("create the scope");
    let cgroup = PluginCgroup::create(&scope, "hello", &LIMITS).expect("create");

    let paths = cgroup.paths();
    let hierarchy = |path: &PathBuf| {
        path.strip_prefix(tree.path().canonicalize().unwrap())
            .unwrap()
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(
        paths.iter().map(hierarchy).collect::<Vec<_>>(),
        ["memory", "cpu,cpuacct", "pids"]
    );
    assert_eq!(
        cgroup.controller_path(Controller::Cpu),
        cgroup.controller_path(Controller::CpuAcct)
    );
    assert_eq!(
        entries(&tree.path().join("unified")),
        ["cgroup.controllers"]
    );

    let memory = cgroup.controller_path(Controller::Memory);
    let cpu = cgroup.controller_path(Controller::Cpu);
    let pids = cgroup.controller_path(Controller::Pids);
    assert_eq!(read(&memory, "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(&memory, "memory.swappiness"), "0");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "150000");
    assert_eq!(read(&pids, "pids.max"), "32");
    assert_eq!(cgroup.read_limits().unwrap(), LIMITS);

    cgroup.add_process(IMPOSSIBLE_PID).expect("add");
    for path in &paths {
        assert_eq!(
            listed(path, "cgroup.procs"),
            [IMPOSSIBLE_PID],
            "{}",
            path.display()
        );
    }
    assert_eq!(cgroup.processes().unwrap(), [IMPOSSIBLE_PID]);
    // Play the kernel: the process exited.
    for path in &paths {
        fs::write(path.join("cgroup.procs"), "").unwrap();
    }

    cgroup.remove().expect("remove");
    for path in &paths {
        assert!(!path.exists(), "{} is left behind", path.display());
    }
    scope.remove().expect("remove the scope");
    for hierarchy in ["memory", "cpu,cpuacct", "pids"] {
        assert_eq!(entries(&tree.path().join(hierarchy)), ["cgroup.procs"]);
    }
}

#[test]
fn a_missing_controller_is_named() {
    let no_cpu = fake_v2("memory pids");
    let root = CgroupRoot::detect(no_cpu.path()).unwrap();
    assert_eq!(root.missing_controllers(), [Controller::Cpu]);
    let error = EngineScope::create(&root).unwrap_err();
    assert!(
        matches!(
            error,
            CgroupError::ControllerMissing {
                controller: Controller::Cpu,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("`cpu`") && message.contains("cgroup.controllers"),
        "{message}"
    );
    assert_eq!(
        entries(no_cpu.path()),
        [
            "cgroup.controllers",
            "cgroup.procs",
            "cgroup.subtree_control"
        ]
    );

    let no_pids = fake_v1(&["memory", "cpu,cpuacct"], "");
    let root = CgroupRoot::detect(no_pids.path()).unwrap();
    assert_eq!(root.missing_controllers(), [Controller::Pids]);
    let message = EngineScope::create(&root).unwrap_err().to_string();
    assert!(
        message.contains("`pids`") && message.contains("/pids"),
        "{message}"
    );

    let memory_on_v2 = fake_v1(&["cpu,cpuacct", "pids"], "memory");
    let root = CgroupRoot::detect(memory_on_v2.path()).unwrap();
    assert_eq!(root.layout(), CgroupLayout::Hybrid);
    let message = EngineScope::create(&root).unwrap_err().to_string();
    assert!(
        message.contains("`memory`") && message.contains("unified"),
        "{message}"
    );
}

#[test]
fn bad_plugin_names_and_limits_are_refused_before_anything_is_made() {
    let tree = fake_v2("cpu memory pids");
    let root = CgroupRoot::detect(tree.path()).unwrap();
    let scope = EngineScope::create(&root).expect("create the scope");
    for name in ["", "../escape", "a/b", "Hello"] {
        let error = PluginCgroup::create(&scope, name, &LIMITS).unwrap_err();
        assert!(
            matches!(error, CgroupError::InvalidPluginName { .. }),
            "{error:?}"
        );
    }
    let error = PluginCgroup::create(
        &scope,
        "hello",
        &CgroupLimits {
            pids_max: 0,
            ..LIMITS
        },
    )
    .unwrap_err();
    assert!(error.to_string().contains("pids_max"), "{error}");
    let [scope_dir] = scope.paths().try_into().unwrap();
    assert_eq!(entries(&scope_dir), ["cgroup.subtree_control"]);
    scope.remove().unwrap();
}

#[test]
fn stale_scopes_on_a_fake_tree_are_judged_by_pid_and_start_time() {
    let tree = fake_v2("cpu memory pids");
    let root = CgroupRoot::detect(tree.path()).unwrap();
    let live = EngineScope::create(&root).expect("create the scope");

    // plugboard-engine-<pid>-<starttime>-<instance>
    let fields: Vec<&str> = live.name().split('-').collect();
    let (pid, start_time): (u32, u64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    let dead_pid = {
        let mut child = Command::new("true").spawn().expect("`true` runs");
        child.wait().expect("wait for true");
        child.id()
    };
    let gone = format!("plugboard-engine-{dead_pid}-1-0");
    let reused = format!("plugboard-engine-{pid}-{}-0", start_time + 1);
    for name in [&gone, &reused] {
        fs::create_dir_all(tree.path().join(name).join("plugboard-old-0-0")).unwrap();
    }
    for other in ["plugboard-engine-garbage", "user.slice"] {
        fs::create_dir(tree.path().join(other)).unwrap();
    }

    let stale = remove_stale_scopes(&root);
    assert!(stale.left.is_empty(), "{:?}", stale.left);
    let mut removed = stale.removed;
    removed.sort();
    let mut expected = vec![gone, reused];
    expected.sort();
    assert_eq!(removed, expected);
    let mut left = vec![
        "cgroup.controllers".to_owned(),
        "cgroup.procs".to_owned(),
        "cgroup.subtree_control".to_owned(),
        "plugboard-engine-garbage".to_owned(),
        "user.slice".to_owned(),
        live.name().to_owned(),
    ];
    left.sort();
    assert_eq!(entries(tree.path()), left);
    live.remove().unwrap();
}

/// A stale scope that cannot be emptied (here a fake tree whose `cgroup.procs` never
/// empties; on a host, a process stuck in the kernel or frozen) is said, and the engine
/// starts all the same: it takes nothing from the engine's own scope.
#[test]
fn a_stale_scope_that_cannot_be_removed_is_said_and_the_engine_starts_anyway() {
    use plugboard_engine::{Engine, EngineConfig, EngineTopic, EventKind};
    let tree = fake_v2("cpu memory pids");
    let dead_pid = {
        let mut child = Command::new("true").spawn().expect("`true` runs");
        child.wait().expect("wait for true");
        child.id()
    };
    let stale = format!("plugboard-engine-{dead_pid}-1-0");
    fs::create_dir(tree.path().join(&stale)).unwrap();
    let sleeper = Sleeper::start();
    fs::write(
        tree.path().join(&stale).join("cgroup.procs"),
        format!("{}\n", sleeper.pid()),
    )
    .unwrap();
    let mut config = EngineConfig::new(crate::worker::host_binary());
    config.cgroup_root = tree.path().to_owned();
    let engine = Engine::start(config).expect("the engine starts");
    let said = engine
        .recent_events()
        .into_iter()
        .find_map(|event| match event.kind {
            EventKind::Engine {
                message,
                topic: EngineTopic::Cgroup,
                warning: true,
            } if message.contains("could not be removed") => Some(message),
            _ => None,
        });
    engine.shutdown();
    let said = said.expect("the stale scope left is said");
    assert!(said.contains(&stale), "{said}");
    drop(sleeper);
}
