//! What a cgroup tree holds, killing it, and removing it — the same on every layout.

use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use nix::unistd::Pid;

use super::{CgroupError, CgroupLayout, files};

/// The longest pause between two looks at a cgroup that is emptying.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(20);

/// The child cgroups (subdirectories) of `dir`; none when `dir` is gone.
pub(super) fn child_cgroups(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let listing_error = |source| CgroupError::Io {
        action: "list cgroup directory",
        path: dir.to_owned(),
        error: source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(listing_error(error)),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.map_err(listing_error)?;
        if entry.file_type().map_err(listing_error)?.is_dir() {
            children.push(entry.path());
        }
    }
    children.sort();
    Ok(children)
}

/// Every process in `dirs` and the cgroups below them, sorted, each once.
pub(super) fn processes(dirs: &[PathBuf]) -> Result<Vec<u32>, CgroupError> {
    fn collect(dir: &Path, pids: &mut Vec<u32>) -> Result<(), CgroupError> {
        pids.extend(files::read_procs(dir)?);
        for child in child_cgroups(dir)? {
            collect(&child, pids)?;
        }
        Ok(())
    }

    let mut pids = Vec::new();
    for dir in dirs {
        collect(dir, &mut pids)?;
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// SIGKILLs everything in `dirs` (one cgroup, seen through each of its controller
/// directories) until nothing is left, for at most `timeout`. Processes may fork while they
/// are being killed, so it looks again until the cgroup stays empty.
pub(super) fn kill_all(
    dirs: &[PathBuf],
    layout: CgroupLayout,
    timeout: Duration,
) -> Result<(), CgroupError> {
    let Some(cgroup) = dirs.first() else {
        return Ok(());
    };
    if !layout.uses_v1_hierarchies() && cgroup.join("cgroup.kill").is_file() {
        // Kernel 5.14+: one write kills the whole subtree, forks included.
        files::write(cgroup, "cgroup.kill", "1")?;
    }
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let pids = processes(dirs)?;
        if pids.is_empty() {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= timeout {
            // Named where they are (a process may be in one v1 hierarchy and not another).
            let holding = dirs
                .iter()
                .find(|dir| processes(std::slice::from_ref(dir)).is_ok_and(|held| !held.is_empty()))
                .unwrap_or(cgroup);
            return Err(CgroupError::StillPopulated {
                cgroup: holding.clone(),
                pids,
                waited,
            });
        }
        for pid in pids {
            send_sigkill(cgroup, pid)?;
        }
        // Nothing signals that a v1 cgroup emptied: look again after a short, growing pause.
        thread::sleep(pause);
        pause = (pause * 2).min(MAX_POLL_PAUSE);
    }
}

fn send_sigkill(cgroup: &Path, pid: u32) -> Result<(), CgroupError> {
    // Whatever a cgroup claims to hold, the engine never kills itself.
    if pid == std::process::id() {
        return Ok(());
    }
    // Above i32::MAX it cannot be a process, and must not become a negative pid (a group).
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    match kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(CgroupError::Kill {
            cgroup: cgroup.to_owned(),
            pid,
            error: source,
        }),
    }
}

/// Removes each of `dirs` with every cgroup below it, deepest first. The processes must be
/// gone ([`kill_all`]); a cgroup the kernel still counts as busy is retried until `timeout`.
pub(super) fn remove_trees(dirs: &[PathBuf], timeout: Duration) -> Result<(), CgroupError> {
    let deadline = Instant::now() + timeout;
    for dir in dirs {
        remove_tree(dir, deadline)?;
    }
    Ok(())
}

fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    for child in child_cgroups(dir)? {
        remove_tree(&child, deadline)?;
    }
    let mut pause = Duration::from_millis(1);
    loop {
        match remove_if_empty(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A killed process leaves cgroup.procs a moment before the kernel stops counting
            // it, and rmdir says EBUSY in between.
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                thread::sleep(pause);
                pause = (pause * 2).min(MAX_POLL_PAUSE);
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "remove cgroup directory",
                    path: dir.to_owned(),
                    error: source,
                });
            }
        }
    }
}

/// Removes one cgroup directory if it holds no process and no child cgroup: `EBUSY` or
/// `ENOTEMPTY` otherwise.
pub(super) fn remove_if_empty(dir: &Path) -> io::Result<()> {
    let on_cgroupfs = statfs(dir).map(|stat| {
        let kind = stat.filesystem_type();
        kind == CGROUP_SUPER_MAGIC || kind == CGROUP2_SUPER_MAGIC
    })?;
    if on_cgroupfs {
        // The kernel drops a cgroup's control files with it.
        return std::fs::remove_dir(dir);
    }
    // An ordinary directory standing in for a cgroup (a fake tree in tests): refuse as the
    // kernel would, else remove the control files first.
    let listed = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(listed) => listed,
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error),
    };
    if !listed.trim().is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        files.push(entry.path());
    }
    for file in files {
        std::fs::remove_file(file)?;
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above `PID_MAX_LIMIT` (2^22): no process can have it, so SIGKILL finds nobody.
    const IMPOSSIBLE_PID: u32 = 4_194_400;

    #[test]
    fn a_cgroup_that_does_not_empty_is_reported_with_its_processes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.procs"),
            format!("{IMPOSSIBLE_PID}\n"),
        )
        .unwrap();
        let dirs = [dir.path().to_owned()];
        let error = kill_all(&dirs, CgroupLayout::V2, Duration::from_millis(30)).unwrap_err();
        match &error {
            CgroupError::StillPopulated { cgroup, pids, .. } => {
                assert_eq!(cgroup, dir.path());
                assert_eq!(pids, &[IMPOSSIBLE_PID]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            error.to_string().contains(&IMPOSSIBLE_PID.to_string()),
            "{error}"
        );
    }

    #[test]
    fn a_fake_cgroup_is_removed_only_when_empty_like_the_kernel_does() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = dir.path().join("plugboard-x");
        std::fs::create_dir_all(cgroup.join("child")).unwrap();
        std::fs::write(cgroup.join("memory.max"), "1").unwrap();
        let refused = remove_if_empty(&cgroup).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ENOTEMPTY));

        std::fs::remove_dir(cgroup.join("child")).unwrap();
        std::fs::write(cgroup.join("cgroup.procs"), format!("{IMPOSSIBLE_PID}\n")).unwrap();
        let busy = remove_if_empty(&cgroup).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));

        std::fs::write(cgroup.join("cgroup.procs"), "").unwrap();
        remove_if_empty(&cgroup).unwrap();
        assert!(!cgroup.exists());
    }

    #[test]
    fn process_zero_and_garbage_never_reach_kill() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "0\n").unwrap();
        assert_eq!(
            processes(&[dir.path().to_owned()]).unwrap(),
            Vec::<u32>::new()
        );
        std::fs::write(dir.path().join("cgroup.procs"), "-1\n").unwrap();
        let error = processes(&[dir.path().to_owned()]).unwrap_err();
        assert!(
            matches!(
                error,
                CgroupError::Parse {
                    file: "cgroup.procs",
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
