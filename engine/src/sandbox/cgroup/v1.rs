//! cgroup v1 (and the v1 side of a hybrid host) through `cgroups-rs`.
//!
//! `cgroups-rs`'s own `V1` hierarchy finds its mounts in `/proc/self/mountinfo`; this one is
//! rooted where [`super::CgroupRoot`] says, so the same code runs on the host and on a fake
//! tree. Each controller is driven on its own so an error can name its directory.

use std::error::Error as _;
use std::io;
use std::path::{Path, PathBuf};

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller as _, Hierarchy, MaxValue, Subsystem};

use super::{CPU_PERIOD_US, CgroupError, CgroupLimits, ControllerDirs, cpu_percent, files};

/// The four controllers Plugboard uses, each at its hierarchy root under a given path.
#[derive(Debug, Clone)]
struct RootedHierarchy {
    root: PathBuf,
    hierarchies: ControllerDirs,
}

impl Hierarchy for RootedHierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        let ControllerDirs {
            memory,
            cpu,
            cpuacct,
            pids,
        } = self.hierarchies.clone();
        // The second argument is the hierarchy's root, which these controllers only keep.
        vec![
            Subsystem::Mem(MemController::new(memory.clone(), memory, false)),
            Subsystem::Cpu(CpuController::new(cpu.clone(), cpu, false)),
            Subsystem::CpuAcct(CpuAcctController::new(cpuacct.clone(), cpuacct)),
            Subsystem::Pid(PidController::new(pids.clone(), pids, false)),
        ]
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        Cgroup::load(Box::new(self.clone()), parent)
    }

    fn v2(&self) -> bool {
        false
    }
}

/// A handle on `<hierarchy>/<relative>` in each controller; nothing is created yet.
pub(super) fn load(root: &Path, hierarchies: &ControllerDirs, relative: &Path) -> Cgroup {
    let hierarchy = RootedHierarchy {
        root: root.to_owned(),
        hierarchies: hierarchies.clone(),
    };
    Cgroup::load(Box::new(hierarchy), relative)
}

/// Creates the cgroup's directory in every controller.
pub(super) fn create(cgroup: &Cgroup) -> Result<(), CgroupError> {
    for subsystem in cgroup.subsystems() {
        let controller = subsystem.to_controller();
        controller.create().map_err(|error| CgroupError::Io {
            action: "create cgroup directory",
            path: controller.path().to_owned(),
            error: io_cause(&error),
        })?;
    }
    Ok(())
}

/// Memory hard limit (and no swapping under it), CFS quota and period, pids maximum.
pub(super) fn apply_limits(cgroup: &Cgroup, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let memory_bytes = signed(limits.memory_bytes, "memory_bytes")?;
    let quota_us = signed(limits.cpu_quota_us(), "cpu_percent")?;
    let pids_max = signed(limits.pids_max, "pids_max")?;
    for subsystem in cgroup.subsystems() {
        match subsystem {
            Subsystem::Mem(memory) => {
                memory.set_limit(memory_bytes).map_err(|error| {
                    write_error(
                        memory.path(),
                        "memory.limit_in_bytes",
                        &memory_bytes,
                        &error,
                    )
                })?;
                // v1's limit counts resident memory only: on a host with swap, a worker at
                // its limit would be swapped out and grow without end. Swappiness 0 keeps
                // the limit's own reclaim off anonymous memory (the kernel's per-cgroup
                // switch for it), so a hog meets its limit as on v2 with
                // `memory.swap.max = 0`. (`memory.memsw.limit_in_bytes` would be the other
                // way; with it, this kernel counts a hit of the limit in no failcnt, and the
                // monitor's memory_limit violations need that count.)
                memory
                    .set_swappiness(0)
                    .map_err(|error| write_error(memory.path(), "memory.swappiness", &0, &error))?;
            }
            Subsystem::Cpu(cpu) => {
                // Period first: the quota is checked against it.
                cpu.set_cfs_period(CPU_PERIOD_US).map_err(|error| {
                    write_error(cpu.path(), "cpu.cfs_period_us", &CPU_PERIOD_US, &error)
                })?;
                cpu.set_cfs_quota(quota_us).map_err(|error| {
                    write_error(cpu.path(), "cpu.cfs_quota_us", &quota_us, &error)
                })?;
            }
            Subsystem::Pid(pids) => pids
                .set_pid_max(MaxValue::Value(pids_max))
                .map_err(|error| write_error(pids.path(), "pids.max", &pids_max, &error))?,
            // cpuacct only accounts; the rest are not part of Plugboard's hierarchy.
            _ => {}
        }
    }
    Ok(())
}

/// Moves process `pid` with all its threads into the cgroup in every controller.
pub(super) fn add_process(cgroup: &Cgroup, pid: u32) -> Result<(), CgroupError> {
    let task = CgroupPid::from(u64::from(pid));
    for subsystem in cgroup.subsystems() {
        let controller = subsystem.to_controller();
        controller
            .add_task_by_tgid(&task)
            .map_err(|error| write_error(controller.path(), "cgroup.procs", &pid, &error))?;
    }
    Ok(())
}

/// The limits in the kernel's files now.
pub(super) fn read_limits(dirs: &ControllerDirs) -> Result<CgroupLimits, CgroupError> {
    let memory = files::read_limit(&dirs.memory, "memory.limit_in_bytes")?;
    let quota = files::read_limit(&dirs.cpu, "cpu.cfs_quota_us")?;
    let period = files::read_limit(&dirs.cpu, "cpu.cfs_period_us")?;
    let pids = files::read_limit(&dirs.pids, "pids.max")?;
    Ok(CgroupLimits {
        memory_bytes: memory.unwrap_or(u64::MAX),
        cpu_percent: cpu_percent(quota, period.unwrap_or(0)),
        pids_max: pids.unwrap_or(u64::MAX),
    })
}

fn signed(value: u64, limit: &'static str) -> Result<i64, CgroupError> {
    i64::try_from(value).map_err(|_| CgroupError::InvalidLimit {
        limit,
        value,
        expected: "at most 2^63-1",
    })
}

fn write_error(
    cgroup: &Path,
    file: &'static str,
    value: &dyn std::fmt::Display,
    error: &cgroups_rs::fs::error::Error,
) -> CgroupError {
    CgroupError::Write {
        cgroup: cgroup.to_owned(),
        file,
        value: value.to_string(),
        error: io_cause(error),
    }
}

/// The operating-system error under a `cgroups-rs` error, which is what the user needs
/// ("Permission denied", "Invalid argument"); the crate's wrapper only repeats the file.
fn io_cause(error: &cgroups_rs::fs::error::Error) -> io::Error {
    match error
        .source()
        .and_then(|cause| cause.downcast_ref::<io::Error>())
    {
        Some(cause) => cause.raw_os_error().map_or_else(
            || io::Error::new(cause.kind(), cause.to_string()),
            io::Error::from_raw_os_error,
        ),
        None => io::Error::other(error.to_string()),
    }
}
