//! Starting a process inside its cgroup on v1: the spawning thread enters the cgroup, the
//! child is born there, the thread leaves.
//!
//! Moving a running process (`cgroup.procs`) takes the kernel's process-wide threadgroup
//! lock, whose writer waits for an RCU grace period: 7–17 ms on this host after a quiet
//! spell, the largest single cost of a worker start. A thread writing `0` to a v1 `tasks`
//! file moves only itself, and the kernel skips that lock for it (Linux 6.0, "cgroup:
//! Optimize single thread migration"): about 70 µs. A child inherits its parent thread's
//! cgroups at `clone`, so it never runs outside its own — not even for `exec` and the
//! dynamic linker, whose memory is charged to the plugin from the start.
//!
//! v2 has no per-thread membership outside threaded subtrees; there the engine moves the
//! process after spawning it (`CLONE_INTO_CGROUP` would be the v2 way to the same end).

use std::path::{Path, PathBuf};

use super::{CgroupError, ControllerDirs, files};

/// One v1 hierarchy: its root, a controller that names it in `/proc/<tid>/cgroup`, and
/// the plugin cgroup's directory in it.
#[derive(Debug, Clone)]
struct Hierarchy {
    root: PathBuf,
    controller: &'static str,
    target: PathBuf,
}

/// The plugin cgroup's directories, one per v1 hierarchy, for a thread to enter itself.
/// `Send`: it is built by the starting thread and used by the spawner thread.
#[derive(Debug, Clone)]
pub struct ThreadEntry {
    hierarchies: Vec<Hierarchy>,
    proc_root: PathBuf,
}

impl ThreadEntry {
    pub(super) fn new(roots: &ControllerDirs, relative: &Path, proc_root: &Path) -> Self {
        let hierarchies = roots
            .unique_with_controller()
            .into_iter()
            .map(|(controller, root)| Hierarchy {
                target: root.join(relative),
                root,
                controller: controller.name(),
            })
            .collect();
        ThreadEntry {
            hierarchies,
            proc_root: proc_root.to_owned(),
        }
    }

    /// Runs `work` with the calling thread (alone) inside the cgroup in every hierarchy, then
    /// moves the thread back where it was. Nothing runs when the thread cannot enter; a
    /// thread that cannot go back to its own cgroup goes to the hierarchy's root, which
    /// always exists, so it never stays in a cgroup that will be removed.
    pub fn run_inside<T>(&self, work: impl FnOnce() -> T) -> Result<T, CgroupError> {
        let homes = self.current_cgroups()?;
        for (entered, hierarchy) in self.hierarchies.iter().enumerate() {
            if let Err(error) = files::write(&hierarchy.target, "tasks", "0") {
                self.leave(&homes[..entered]);
                return Err(error);
            }
        }
        let done = work();
        self.leave(&homes);
        Ok(done)
    }

    fn leave(&self, homes: &[PathBuf]) {
        for (hierarchy, home) in self.hierarchies.iter().zip(homes) {
            if files::write(home, "tasks", "0").is_err() {
                // Best effort, and cannot fail on a mounted hierarchy: the root cgroup
                // always exists and takes any task.
                let _ = files::write(&hierarchy.root, "tasks", "0");
            }
        }
    }

    /// The calling thread's cgroup directory in each hierarchy, from `/proc/thread-self/cgroup`.
    fn current_cgroups(&self) -> Result<Vec<PathBuf>, CgroupError> {
        let path = self.proc_root.join("thread-self/cgroup");
        let listed = std::fs::read_to_string(&path).map_err(|source| CgroupError::Io {
            action: "read",
            path: path.clone(),
            error: source,
        })?;
        self.hierarchies
            .iter()
            .map(|hierarchy| {
                cgroup_of(&listed, hierarchy.controller)
                    .map(|relative| hierarchy.root.join(relative.trim_start_matches('/')))
                    .ok_or_else(|| CgroupError::Parse {
                        cgroup: hierarchy.root.clone(),
                        file: "/proc/thread-self/cgroup",
                        content: listed.trim().to_owned(),
                        expected: "a line `<id>:<controllers>:<path>` for each v1 controller",
                    })
            })
            .collect()
    }
}

/// The path of the cgroup a `/proc/<pid>/cgroup` listing gives for a v1 `controller`.
pub(super) fn cgroup_of<'a>(listed: &'a str, controller: &str) -> Option<&'a str> {
    listed.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|name| name == controller)
            .then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "12:pids:/plugboard-engine-1-2-0/plugboard-hello-1-ab\n\
                           5:cpu,cpuacct:/system.slice\n\
                           4:memory:/\n\
                           1:name=systemd:/init.scope\n\
                           0::/init.scope\n";

    #[test]
    fn a_controller_is_found_in_its_line_even_when_co_mounted() {
        assert_eq!(
            cgroup_of(LISTING, "pids"),
            Some("/plugboard-engine-1-2-0/plugboard-hello-1-ab")
        );
        assert_eq!(cgroup_of(LISTING, "cpu"), Some("/system.slice"));
        assert_eq!(cgroup_of(LISTING, "cpuacct"), Some("/system.slice"));
        assert_eq!(cgroup_of(LISTING, "memory"), Some("/"));
    }

    #[test]
    fn names_that_only_contain_a_controller_do_not_match() {
        assert_eq!(cgroup_of(LISTING, "systemd"), None);
        assert_eq!(cgroup_of(LISTING, "mem"), None);
        assert_eq!(cgroup_of("garbage without colons", "memory"), None);
    }
}
