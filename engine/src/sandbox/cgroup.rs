//! Per-plugin cgroups: one scope per engine, one cgroup per worker inside it.
//!
//! Under every controller root (each v1 hierarchy, or the one v2 root):
//!
//! ```text
//! plugboard-engine-<pid>-<starttime>-<instance>/   one per EngineScope
//!     plugboard-<plugin>-<sequence>-<random>/      one per worker
//! ```
//!
//! `<starttime>` is field 22 of `/proc/<pid>/stat`; with the pid it names one process for the
//! host's uptime, so [`remove_stale_scopes`] never mistakes a reused pid for the engine that
//! made a scope. `<instance>` counts the scopes this process made, so two engines in one
//! process (tests run in parallel) never share, or remove, each other's scope.
//!
//! v1 — and the v1 side of a hybrid host — goes through `cgroups-rs`, with its hierarchy
//! rooted at the given path rather than at `/proc/self/mountinfo`'s mounts; v2 is plain file
//! writes. Listing, killing and removing are the same file operations on every layout. The
//! root and `/proc` are parameters, so tests run against fake trees in temp dirs.
//!
//! The sampler reads the kernel files itself (kept open, re-read): [`PluginCgroup::controller_path`]
//! tells it which directory holds each controller's files.

mod files;
mod thread_entry;
mod tree;
mod v1;
mod v2;

pub use thread_entry::ThreadEntry;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the kernel mounts cgroups.
pub const SYSTEM_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where the kernel shows processes.
pub const SYSTEM_PROC_ROOT: &str = "/proc";
/// The CFS period every plugin cgroup gets, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// How every engine scope's name begins.
pub const SCOPE_PREFIX: &str = "plugboard-engine-";
/// How every plugin cgroup's name begins.
pub const PLUGIN_PREFIX: &str = "plugboard-";
/// How long killing a cgroup's processes (and removing it) may take before it is an error.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(2);

/// The limits of one plugin cgroup.
///
/// Read back by [`PluginCgroup::read_limits`], a kernel `max` (no limit) shows as the
/// type's maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// Hard memory limit in bytes (the kernel keeps whole pages, rounding down).
    pub memory_bytes: u64,
    /// CPU time as a percentage of one CPU: 200 is two full cores.
    pub cpu_percent: u32,
    /// Most processes and threads at once.
    pub pids_max: u64,
}

impl CgroupLimits {
    /// The CFS quota per [`CPU_PERIOD_US`] that `cpu_percent` stands for.
    pub fn cpu_quota_us(&self) -> u64 {
        u64::from(self.cpu_percent) * CPU_PERIOD_US / 100
    }

    fn validate(&self) -> Result<(), CgroupError> {
        // The kernel files take signed 64-bit values; zero would starve or break the worker.
        let checks = [
            ("memory_bytes", self.memory_bytes, "1 to 2^63-1 bytes"),
            (
                "cpu_percent",
                u64::from(self.cpu_percent),
                "at least 1 (percent of one CPU)",
            ),
            ("pids_max", self.pids_max, "1 to 2^63-1"),
        ];
        for (limit, value, expected) in checks {
            if value == 0 || i64::try_from(value).is_err() {
                return Err(CgroupError::InvalidLimit {
                    limit,
                    value,
                    expected,
                });
            }
        }
        Ok(())
    }
}

/// How cgroups are arranged under a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupLayout {
    /// One hierarchy per controller (`memory/`, `cpu/`, …). A controller-less cgroup2
    /// `unified/` beside them (systemd's process tracking) still counts as v1.
    V1,
    /// One unified hierarchy: the root has `cgroup.controllers`.
    V2,
    /// v1 hierarchies plus a `unified/` cgroup2 hierarchy that has controllers of its own.
    /// Plugboard uses the v1 hierarchies.
    Hybrid,
}

impl CgroupLayout {
    /// Whether the controllers are used through per-controller (v1) hierarchies.
    pub fn uses_v1_hierarchies(self) -> bool {
        match self {
            CgroupLayout::V1 | CgroupLayout::Hybrid => true,
            CgroupLayout::V2 => false,
        }
    }
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupLayout::V1 => "v1",
            CgroupLayout::V2 => "v2",
            CgroupLayout::Hybrid => "hybrid",
        })
    }
}

/// A controller Plugboard needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Controller {
    /// Memory limit, usage, peak and OOM kills.
    Memory,
    /// CPU quota and throttling.
    Cpu,
    /// CPU usage (v1 `cpuacct.usage`; on v2 the core `cpu.stat` has it).
    CpuAcct,
    /// Process and thread count limit.
    Pids,
}

impl Controller {
    /// Every controller, in the order directories are listed.
    pub const ALL: [Controller; 4] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::CpuAcct,
        Controller::Pids,
    ];

    /// The kernel's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
            Controller::Pids => "pids",
        }
    }

    /// Whether a v2 hierarchy must list it in `cgroup.controllers`.
    const fn is_v2_controller(self) -> bool {
        match self {
            Controller::Memory | Controller::Cpu | Controller::Pids => true,
            // CPU usage is in `cpu.stat`, which every v2 cgroup has.
            Controller::CpuAcct => false,
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong with a cgroup; each names the path and what failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup hierarchy at {root}: expected {root}/cgroup.controllers (cgroup v2) or \
         controller directories such as {root}/memory/cgroup.procs (cgroup v1)"
    )]
    NoHierarchy { root: PathBuf },
    #[error(
        "the cgroup controller `{controller}` is not available under {root} ({layout} layout): {reason}"
    )]
    ControllerMissing {
        controller: Controller,
        root: PathBuf,
        layout: CgroupLayout,
        reason: String,
    },
    #[error("cannot {action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("cannot read {file} of cgroup {cgroup}: {error}")]
    Read {
        cgroup: PathBuf,
        file: &'static str,
        error: io::Error,
    },
    #[error("cannot write {value:?} to {file} of cgroup {cgroup}: {error}")]
    Write {
        cgroup: PathBuf,
        file: &'static str,
        value: String,
        error: io::Error,
    },
    #[error("unexpected {content:?} in {file} of cgroup {cgroup}: expected {expected}")]
    Parse {
        cgroup: PathBuf,
        file: &'static str,
        content: String,
        expected: &'static str,
    },
    #[error("cannot send SIGKILL to process {pid} of cgroup {cgroup}: {error}")]
    Kill {
        cgroup: PathBuf,
        pid: u32,
        error: nix::errno::Errno,
    },
    #[error("cgroup {cgroup} still holds processes {pids:?} {waited:?} after SIGKILL")]
    StillPopulated {
        cgroup: PathBuf,
        pids: Vec<u32>,
        waited: Duration,
    },
    #[error(
        "{name:?} cannot name a plugin cgroup: expected 1 to 64 characters of a-z, 0-9 and '-'"
    )]
    InvalidPluginName { name: String },
    #[error("cgroup limit {limit} = {value} is out of range: expected {expected}")]
    InvalidLimit {
        limit: &'static str,
        value: u64,
        expected: &'static str,
    },
    #[error("process id 0 cannot join cgroup {cgroup}")]
    InvalidPid { cgroup: PathBuf },
    #[error("cannot read the start time of process {pid} from {path}: {reason}")]
    StartTime {
        pid: u32,
        path: PathBuf,
        reason: String,
    },
}

/// A directory per controller. On v2 all four are the same directory; on v1 `cpu` and
/// `cpuacct` are when the two are mounted together.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ControllerDirs {
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
}

impl ControllerDirs {
    fn get(&self, controller: Controller) -> &Path {
        match controller {
            Controller::Memory => &self.memory,
            Controller::Cpu => &self.cpu,
            Controller::CpuAcct => &self.cpuacct,
            Controller::Pids => &self.pids,
        }
    }

    fn join(&self, relative: &Path) -> Self {
        ControllerDirs {
            memory: self.memory.join(relative),
            cpu: self.cpu.join(relative),
            cpuacct: self.cpuacct.join(relative),
            pids: self.pids.join(relative),
        }
    }

    /// Each distinct directory once, in [`Controller::ALL`] order.
    fn unique(&self) -> Vec<PathBuf> {
        self.unique_with_controller()
            .into_iter()
            .map(|(_, dir)| dir)
            .collect()
    }

    /// Each distinct directory once, with the first controller it holds.
    fn unique_with_controller(&self) -> Vec<(Controller, PathBuf)> {
        let mut dirs: Vec<(Controller, PathBuf)> = Vec::with_capacity(4);
        for controller in Controller::ALL {
            let dir = self.get(controller);
            if !dirs.iter().any(|(_, seen)| seen == dir) {
                dirs.push((controller, dir.to_owned()));
            }
        }
        dirs
    }
}

/// A cgroup root: its path, its layout, the controllers found there, and where `/proc` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    path: PathBuf,
    layout: CgroupLayout,
    /// Each available controller with the root of its hierarchy (symlinks resolved, so
    /// co-mounted `cpu,cpuacct` shows once).
    available: Vec<(Controller, PathBuf)>,
    proc_root: PathBuf,
}

impl CgroupRoot {
    /// The host's cgroups at [`SYSTEM_CGROUP_ROOT`].
    pub fn system() -> Result<Self, CgroupError> {
        Self::detect(Path::new(SYSTEM_CGROUP_ROOT))
    }

    /// Reads the layout from the directory: `cgroup.controllers` at the root is v2;
    /// controller directories are v1, or hybrid when a `unified/` cgroup2 beside them has
    /// controllers. A missing controller is not an error here (see
    /// [`CgroupRoot::missing_controllers`]); creating a scope names it.
    pub fn detect(root: &Path) -> Result<Self, CgroupError> {
        let controllers_file = root.join("cgroup.controllers");
        if controllers_file.is_file() {
            let listed = files::read(root, "cgroup.controllers")?;
            let listed: Vec<&str> = listed.split_whitespace().collect();
            let available = Controller::ALL
                .into_iter()
                .filter(|controller| {
                    !controller.is_v2_controller() || listed.contains(&controller.name())
                })
                .map(|controller| (controller, root.to_owned()))
                .collect();
            return Ok(Self::new(root, CgroupLayout::V2, available));
        }

        if !V1_HIERARCHY_NAMES
            .iter()
            .any(|name| is_v1_hierarchy(&root.join(name)))
        {
            return Err(CgroupError::NoHierarchy {
                root: root.to_owned(),
            });
        }
        let available = Controller::ALL
            .into_iter()
            .filter_map(|controller| {
                let dir = root.join(controller.name());
                // Resolving symlinks makes co-mounted hierarchies (`cpu` and `cpuacct` both
                // pointing at `cpu,cpuacct`) compare equal.
                is_v1_hierarchy(&dir).then(|| (controller, dir.canonicalize().unwrap_or(dir)))
            })
            .collect();
        let layout = if unified_controllers(root).is_empty() {
            CgroupLayout::V1
        } else {
            CgroupLayout::Hybrid
        };
        Ok(Self::new(root, layout, available))
    }

    fn new(root: &Path, layout: CgroupLayout, available: Vec<(Controller, PathBuf)>) -> Self {
        CgroupRoot {
            path: root.to_owned(),
            layout,
            available,
            proc_root: PathBuf::from(SYSTEM_PROC_ROOT),
        }
    }

    /// The same root with processes looked up under `proc_root` instead of `/proc`.
    #[must_use]
    pub fn with_proc_root(mut self, proc_root: impl Into<PathBuf>) -> Self {
        self.proc_root = proc_root.into();
        self
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layout found there.
    pub fn layout(&self) -> CgroupLayout {
        self.layout
    }

    /// Controllers Plugboard needs that this root does not offer.
    pub fn missing_controllers(&self) -> Vec<Controller> {
        Controller::ALL
            .into_iter()
            .filter(|controller| self.hierarchy(*controller).is_none())
            .collect()
    }

    /// Each distinct controller root directory that exists (v2: the root itself).
    pub fn hierarchy_paths(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (_, dir) in &self.available {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        dirs
    }

    fn hierarchy(&self, controller: Controller) -> Option<&Path> {
        self.available
            .iter()
            .find(|(available, _)| *available == controller)
            .map(|(_, dir)| dir.as_path())
    }

    /// The directory of cgroup `relative` (as in [`PluginCgroup::display_path`]) in
    /// `controller`'s hierarchy.
    pub fn controller_dir(
        &self,
        controller: Controller,
        relative: &str,
    ) -> Result<PathBuf, CgroupError> {
        Ok(self
            .hierarchies()?
            .get(controller)
            .join(relative.trim_start_matches('/')))
    }

    /// Every controller's hierarchy root, or an error naming the first one missing.
    fn hierarchies(&self) -> Result<ControllerDirs, CgroupError> {
        let find = |controller| {
            self.hierarchy(controller)
                .map(Path::to_owned)
                .ok_or_else(|| self.missing(controller))
        };
        Ok(ControllerDirs {
            memory: find(Controller::Memory)?,
            cpu: find(Controller::Cpu)?,
            cpuacct: find(Controller::CpuAcct)?,
            pids: find(Controller::Pids)?,
        })
    }

    fn missing(&self, controller: Controller) -> CgroupError {
        let root = self.path.display();
        let name = controller.name();
        let reason = match self.layout {
            CgroupLayout::V2 => format!("{root}/cgroup.controllers does not list it"),
            CgroupLayout::V1 | CgroupLayout::Hybrid
                if unified_controllers(&self.path).iter().any(|c| c == name) =>
            {
                format!(
                    "it is attached to the cgroup2 hierarchy {root}/unified, and Plugboard \
                     uses the v1 hierarchies on a hybrid host"
                )
            }
            CgroupLayout::V1 | CgroupLayout::Hybrid => {
                format!("there is no v1 hierarchy {root}/{name} (no {root}/{name}/cgroup.procs)")
            }
        };
        CgroupError::ControllerMissing {
            controller,
            root: self.path.clone(),
            layout: self.layout,
            reason,
        }
    }
}

/// v1 hierarchy directories whose presence means "this root is v1".
const V1_HIERARCHY_NAMES: [&str; 14] = [
    "memory",
    "cpu",
    "cpuacct",
    "pids",
    "cpuset",
    "blkio",
    "devices",
    "freezer",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

fn is_v1_hierarchy(dir: &Path) -> bool {
    dir.join("cgroup.procs").is_file()
}

/// Controllers attached to a hybrid host's `unified/` cgroup2 hierarchy (none when absent).
fn unified_controllers(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("unified/cgroup.controllers"))
        .map(|listed| listed.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The engine's own cgroup: every plugin cgroup of this engine lives inside it.
///
/// Dropping it removes the empty plugin cgroups left inside but not the scope itself (that
/// is [`EngineScope::remove`]); a scope left behind by a dead engine is found by
/// [`remove_stale_scopes`].
#[derive(Debug)]
pub struct EngineScope {
    root: CgroupRoot,
    hierarchies: ControllerDirs,
    name: String,
}

impl EngineScope {
    /// Creates `plugboard-engine-<pid>-<starttime>-<instance>` under every controller root.
    /// Fails naming the controller when one is missing.
    pub fn create(root: &CgroupRoot) -> Result<Self, CgroupError> {
        static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);

        let hierarchies = root.hierarchies()?;
        let pid = std::process::id();
        let stat = root.proc_root.join(pid.to_string()).join("stat");
        let start_time = match process_start_time(&root.proc_root, pid) {
            Ok(Some(start_time)) => start_time,
            Ok(None) => {
                return Err(CgroupError::StartTime {
                    pid,
                    path: stat,
                    reason: "no such process".to_owned(),
                });
            }
            Err(error) => {
                return Err(CgroupError::StartTime {
                    pid,
                    path: stat,
                    reason: error.to_string(),
                });
            }
        };
        let instance = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let scope = EngineScope {
            root: root.clone(),
            hierarchies,
            name: format!("{SCOPE_PREFIX}{pid}-{start_time}-{instance}"),
        };
        let created = if root.layout.uses_v1_hierarchies() {
            v1::create(&scope.v1_cgroup(Path::new(&scope.name)))
        } else {
            v2::create_scope(&root.path, &scope.hierarchies.memory.join(&scope.name))
        };
        if let Err(error) = created {
            // Best effort: the creation error is the one worth reporting.
            let _ = tree::remove_trees(&scope.paths(), KILL_TIMEOUT);
            return Err(error);
        }
        Ok(scope)
    }

    /// `plugboard-engine-<pid>-<starttime>-<instance>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root it lives under.
    pub fn root(&self) -> &CgroupRoot {
        &self.root
    }

    /// The scope's directory in each distinct controller hierarchy (one on v2).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.hierarchies.join(Path::new(&self.name)).unique()
    }

    /// `/plugboard-engine-…`, relative to the controller roots.
    pub fn display_path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Caps the memory of all the scope's workers together (the host's memory budget): the
    /// scope is the parent of every plugin cgroup, so their usage counts against it.
    pub fn limit_memory(&self, bytes: u64) -> Result<(), CgroupError> {
        let dir = self.hierarchies.memory.join(&self.name);
        files::write(&dir, self.memory_limit_file(), &bytes.to_string())
    }

    /// The scope's memory limit in bytes (`None`: unlimited).
    pub fn memory_limit(&self) -> Result<Option<u64>, CgroupError> {
        let dir = self.hierarchies.memory.join(&self.name);
        files::read_limit(&dir, self.memory_limit_file())
    }

    fn memory_limit_file(&self) -> &'static str {
        if self.root.layout.uses_v1_hierarchies() {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        }
    }

    /// Kills every process in the scope's plugin cgroups and removes them and the scope from
    /// every controller. Taking `&self` lets an engine that shares its scope remove it at
    /// shutdown; a second call finds nothing to do.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let dirs = self.paths();
        tree::kill_all(&dirs, self.root.layout, KILL_TIMEOUT)?;
        tree::remove_trees(&dirs, KILL_TIMEOUT)
    }

    fn v1_cgroup(&self, relative: &Path) -> cgroups_rs::fs::Cgroup {
        v1::load(&self.root.path, &self.hierarchies, relative)
    }
}

impl Drop for EngineScope {
    fn drop(&mut self) {
        // Populated cgroups stay: the kernel refuses to remove them, and killing workers is
        // the supervisor's decision, not a side effect of dropping a handle.
        for dir in self.paths() {
            for child in tree::child_cgroups(&dir).unwrap_or_default() {
                let _ = tree::remove_if_empty(&child);
            }
        }
    }
}

/// One worker's cgroup, inside its engine's scope.
#[derive(Debug)]
pub struct PluginCgroup {
    root: CgroupRoot,
    hierarchies: ControllerDirs,
    /// `<scope>/<plugin cgroup>`, relative to every controller root.
    relative: PathBuf,
}

impl PluginCgroup {
    /// Creates `plugboard-<plugin>-<unique>` in the scope with `limits` applied; nothing is
    /// left behind when a limit cannot be set.
    pub fn create(
        scope: &EngineScope,
        plugin: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, CgroupError> {
        if !is_valid_plugin_name(plugin) {
            return Err(CgroupError::InvalidPluginName {
                name: plugin.to_owned(),
            });
        }
        limits.validate()?;
        let cgroup = PluginCgroup {
            root: scope.root.clone(),
            hierarchies: scope.hierarchies.clone(),
            relative: Path::new(&scope.name).join(unique_plugin_name(plugin)),
        };
        let created = if cgroup.root.layout.uses_v1_hierarchies() {
            let handle = scope.v1_cgroup(&cgroup.relative);
            v1::create(&handle).and_then(|()| v1::apply_limits(&handle, limits))
        } else {
            let dir = cgroup.hierarchies.memory.join(&cgroup.relative);
            v2::create(&dir).and_then(|()| v2::apply_limits(&dir, limits))
        };
        if let Err(error) = created {
            // Best effort: the creation error is the one worth reporting.
            let _ = tree::remove_trees(&cgroup.paths(), KILL_TIMEOUT);
            return Err(error);
        }
        Ok(cgroup)
    }

    /// Moves process `pid` (all its threads) into the cgroup, in every controller.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        if pid == 0 {
            return Err(CgroupError::InvalidPid {
                cgroup: self.controller_path(Controller::Memory),
            });
        }
        if self.root.layout.uses_v1_hierarchies() {
            v1::add_process(
                &v1::load(&self.root.path, &self.hierarchies, &self.relative),
                pid,
            )
        } else {
            files::write(
                &self.controller_path(Controller::Memory),
                "cgroup.procs",
                &pid.to_string(),
            )
        }
    }

    /// On v1 (and hybrid) hosts, the cgroup as a spawning thread enters it so that its
    /// child is born inside ([`ThreadEntry`]); `None` on v2, where the process is moved.
    pub fn thread_entry(&self) -> Option<ThreadEntry> {
        self.root
            .layout
            .uses_v1_hierarchies()
            .then(|| ThreadEntry::new(&self.hierarchies, &self.relative, &self.root.proc_root))
    }

    /// Whether the kernel lists process `pid` in this cgroup in every controller, read from
    /// `/proc/<pid>/cgroup`.
    pub fn holds_process(&self, pid: u32) -> bool {
        let Ok(listed) =
            std::fs::read_to_string(self.root.proc_root.join(pid.to_string()).join("cgroup"))
        else {
            return false;
        };
        let expected = format!("/{}", self.relative.display());
        if self.root.layout.uses_v1_hierarchies() {
            Controller::ALL.into_iter().all(|controller| {
                thread_entry::cgroup_of(&listed, controller.name()) == Some(expected.as_str())
            })
        } else {
            listed
                .lines()
                .any(|line| line.strip_prefix("0::") == Some(expected.as_str()))
        }
    }

    /// The cgroup's directory in each distinct controller hierarchy (one on v2).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.hierarchies.join(&self.relative).unique()
    }

    /// The directory holding `controller`'s files for this cgroup (on v2 always the same).
    pub fn controller_path(&self, controller: Controller) -> PathBuf {
        self.hierarchies.get(controller).join(&self.relative)
    }

    /// Which files the directories hold: v1 (`memory.usage_in_bytes`, `cpuacct.usage`, …)
    /// or v2 (`memory.current`, `cpu.stat`, …). Hybrid hosts use v1 files.
    pub fn layout(&self) -> CgroupLayout {
        self.root.layout
    }

    /// `/plugboard-engine-…/plugboard-<plugin>-…`, relative to the controller roots.
    pub fn display_path(&self) -> String {
        format!("/{}", self.relative.display())
    }

    /// Every process in the cgroup (and in any cgroup below it), sorted.
    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        tree::processes(&self.paths())
    }

    /// Sends SIGKILL to every process (v2: through `cgroup.kill` when the kernel has it) and
    /// waits until the cgroup is empty, at most [`KILL_TIMEOUT`].
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        tree::kill_all(&self.paths(), self.root.layout, KILL_TIMEOUT)
    }

    /// Kills every process and removes the cgroup from every controller.
    pub fn remove(self) -> Result<(), CgroupError> {
        let dirs = self.paths();
        tree::kill_all(&dirs, self.root.layout, KILL_TIMEOUT)?;
        tree::remove_trees(&dirs, KILL_TIMEOUT)
    }

    /// The limits the kernel holds now.
    pub fn read_limits(&self) -> Result<CgroupLimits, CgroupError> {
        if self.root.layout.uses_v1_hierarchies() {
            v1::read_limits(&self.hierarchies.join(&self.relative))
        } else {
            v2::read_limits(&self.controller_path(Controller::Memory))
        }
    }
}

/// What [`remove_stale_scopes`] did.
#[derive(Debug, Default)]
pub struct StaleScopes {
    /// The scopes removed, by name.
    pub removed: Vec<String>,
    /// Why others (or a hierarchy's listing) could not be: a process that would not die
    /// (stuck in the kernel, frozen), a directory that would not go.
    pub left: Vec<CgroupError>,
}

/// Removes the scopes of engines that are gone — their pid is not running, or is running
/// with another start time — after killing every process in them. Scopes of live engines
/// and directories that are not scopes are left alone. Every stale scope is tried; what
/// could not be removed is said, not fatal: it takes nothing from this engine's own scope.
pub fn remove_stale_scopes(root: &CgroupRoot) -> StaleScopes {
    let hierarchies = root.hierarchy_paths();
    let mut outcome = StaleScopes::default();
    let mut stale = BTreeSet::new();
    for hierarchy in &hierarchies {
        let children = match tree::child_cgroups(hierarchy) {
            Ok(children) => children,
            Err(error) => {
                outcome.left.push(error);
                continue;
            }
        };
        for dir in children {
            let Some(name) = dir.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            let Some((pid, start_time)) = parse_scope_name(name) else {
                continue;
            };
            if !engine_is_alive(&root.proc_root, pid, start_time) {
                stale.insert(name.to_owned());
            }
        }
    }
    for name in stale {
        let dirs: Vec<PathBuf> = hierarchies
            .iter()
            .map(|hierarchy| hierarchy.join(&name))
            .collect();
        let result = tree::kill_all(&dirs, root.layout, KILL_TIMEOUT)
            .and_then(|()| tree::remove_trees(&dirs, KILL_TIMEOUT));
        match result {
            Ok(()) => outcome.removed.push(name),
            Err(error) => outcome.left.push(error),
        }
    }
    outcome
}

/// A scope's pid and start time, if `name` is a scope name.
fn parse_scope_name(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.strip_prefix(SCOPE_PREFIX)?.split('-');
    let pid = parse_digits(parts.next()?)?;
    let start_time = parse_digits(parts.next()?)?;
    parse_digits::<u64>(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some((pid, start_time))
}

fn parse_digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether the engine that named a scope `pid`/`start_time` still runs. When `/proc` cannot
/// tell, it counts as alive: a live engine's workers must never be killed by mistake.
fn engine_is_alive(proc_root: &Path, pid: u32, start_time: u64) -> bool {
    match process_start_time(proc_root, pid) {
        Ok(Some(current)) => current == start_time,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Field 22 of `<proc_root>/<pid>/stat` (clock ticks after boot), or `None` when there is no
/// such process.
fn process_start_time(proc_root: &Path, pid: u32) -> io::Result<Option<u64>> {
    let path = proc_root.join(pid.to_string()).join("stat");
    let stat = match std::fs::read_to_string(&path) {
        Ok(stat) => stat,
        // ESRCH: the process exited between open and read.
        Err(error)
            if error.kind() == io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    parse_start_time(&stat).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no start time (field 22) in {stat:?}"),
        )
    })
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // Field 2, the command, is in parentheses and may itself hold spaces and ')': the
    // fields resume after the last ')', starting with field 3.
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The manifest's plugin name rule; it also keeps the name a single path component.
fn is_valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// `plugboard-<plugin>-<sequence>-<random>`: the sequence keeps names unique within this
/// process, the random part across processes that share a scope name by accident.
fn unique_plugin_name(plugin: &str) -> String {
    use rand_core::RngCore as _;

    static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut random = [0_u8; 4];
    if rand_core::OsRng.try_fill_bytes(&mut random).is_err() {
        // No entropy source: the clock is still different between processes.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        random = nanos.to_le_bytes();
    }
    format!(
        "{PLUGIN_PREFIX}{plugin}-{sequence}-{:08x}",
        u32::from_le_bytes(random)
    )
}

/// CPU percent from a quota (`None`: no limit) and a period, saturating.
fn cpu_percent(quota_us: Option<u64>, period_us: u64) -> u32 {
    match quota_us {
        Some(quota_us) if period_us > 0 => {
            u32::try_from(u128::from(quota_us) * 100 / u128::from(period_us)).unwrap_or(u32::MAX)
        }
        _ => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_when_the_command_has_spaces_and_parentheses() {
        let stat = "8077 (a) b) c) R 8073 8073 6083 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 \
                    241369 3133440 355 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(241_369));
        assert_eq!(parse_start_time("12 (short) R 1 2"), None);
        assert_eq!(parse_start_time("no parenthesis"), None);
    }

    #[test]
    fn own_start_time_is_read_from_proc() {
        let start = process_start_time(Path::new(SYSTEM_PROC_ROOT), std::process::id())
            .expect("/proc/<pid>/stat is readable");
        assert!(start.is_some_and(|ticks| ticks > 0), "{start:?}");
        assert!(engine_is_alive(
            Path::new(SYSTEM_PROC_ROOT),
            std::process::id(),
            start.unwrap_or_default()
        ));
    }

    #[test]
    fn an_engine_is_alive_only_with_its_pid_and_start_time() {
        let proc_root = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc_root.path().join("4194400")).unwrap();
        std::fs::write(
            proc_root.path().join("4194400/stat"),
            "4194400 (plugboard) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0",
        )
        .unwrap();
        assert!(engine_is_alive(proc_root.path(), 4_194_400, 77));
        assert!(
            !engine_is_alive(proc_root.path(), 4_194_400, 78),
            "pid reused"
        );
        assert!(!engine_is_alive(proc_root.path(), 4_194_401, 77), "gone");

        std::fs::write(proc_root.path().join("4194400/stat"), "garbage").unwrap();
        assert!(
            engine_is_alive(proc_root.path(), 4_194_400, 1),
            "what /proc cannot tell counts as alive"
        );
    }

    #[test]
    fn scope_names_parse_only_in_the_exact_form() {
        assert_eq!(
            parse_scope_name("plugboard-engine-12-345-0"),
            Some((12, 345))
        );
        for not_a_scope in [
            "plugboard-engine-12-345",
            "plugboard-engine-12-345-0-1",
            "plugboard-engine-+12-345-0",
            "plugboard-engine-x-345-0",
            "plugboard-engine--345-0",
            "plugboard-hello-1-2-3",
            "user.slice",
        ] {
            assert_eq!(parse_scope_name(not_a_scope), None, "{not_a_scope}");
        }
    }

    #[test]
    fn plugin_names_are_unique_and_single_path_components() {
        let first = unique_plugin_name("hello");
        let second = unique_plugin_name("hello");
        assert_ne!(first, second);
        assert!(first.starts_with("plugboard-hello-"), "{first}");
        for bad in ["", "../x", "a/b", "Hello", "a b", &"a".repeat(65)] {
            assert!(!is_valid_plugin_name(bad), "{bad:?}");
        }
        assert!(is_valid_plugin_name("memhog-2"));
    }

    #[test]
    fn cpu_percent_round_trips_and_saturates() {
        let limits = CgroupLimits {
            memory_bytes: 1,
            cpu_percent: 250,
            pids_max: 1,
        };
        assert_eq!(limits.cpu_quota_us(), 250_000);
        assert_eq!(cpu_percent(Some(limits.cpu_quota_us()), CPU_PERIOD_US), 250);
        assert_eq!(cpu_percent(None, CPU_PERIOD_US), u32::MAX);
        assert_eq!(cpu_percent(Some(u64::MAX), 1), u32::MAX);
    }

    #[test]
    fn zero_and_oversized_limits_are_refused() {
        let good = CgroupLimits {
            memory_bytes: 64 << 20,
            cpu_percent: 50,
            pids_max: 16,
        };
        assert!(good.validate().is_ok());
        for (bad, name) in [
            (
                CgroupLimits {
                    memory_bytes: 0,
                    ..good
                },
                "memory_bytes",
            ),
            (
                CgroupLimits {
                    memory_bytes: u64::MAX,
                    ..good
                },
                "memory_bytes",
            ),
            (
                CgroupLimits {
                    cpu_percent: 0,
                    ..good
                },
                "cpu_percent",
            ),
            (
                CgroupLimits {
                    pids_max: 0,
                    ..good
                },
                "pids_max",
            ),
        ] {
            match bad.validate() {
                Err(CgroupError::InvalidLimit { limit, .. }) => assert_eq!(limit, name),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
