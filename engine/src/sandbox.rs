//! Confinement of plugin workers: namespaces, uid switch, capabilities, rlimits, cgroups,
//! Landlock and seccomp. Everything here that talks to the kernel is `unsafe`-capable; the
//! rest of the engine is not.
#![allow(unsafe_code)]

pub mod cgroup;
pub mod landlock;
pub mod pages;
pub mod process;
pub mod seccomp;
pub mod spawn;

use serde::{Deserialize, Serialize};

/// One confinement mechanism. The UI shows which are active per plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// New user, pid, net, mount, ipc, uts and cgroup namespaces.
    Namespaces,
    /// Runs as a non-root uid on the host.
    UnprivilegedUid,
    /// `no_new_privs` set.
    NoNewPrivs,
    /// Every capability dropped (effective, permitted, inheritable, ambient, bounding).
    Capabilities,
    /// Open files, core size and address-space limits.
    Rlimits,
    /// Its own cgroup with memory, CPU and pids limits.
    Cgroup,
    /// Landlock file-system rules from `fs_read`/`fs_write`.
    Landlock,
    /// Seccomp filter from the capabilities, violations reported to the engine.
    Seccomp,
}

impl Mechanism {
    /// Every mechanism, in the order the worker applies them.
    pub const ALL: [Mechanism; 8] = [
        Mechanism::UnprivilegedUid,
        Mechanism::Namespaces,
        Mechanism::Cgroup,
        Mechanism::Rlimits,
        Mechanism::NoNewPrivs,
        Mechanism::Landlock,
        Mechanism::Capabilities,
        Mechanism::Seccomp,
    ];

    /// The name used in step reports, snapshots and host policy (`require = [...]`).
    pub const fn name(self) -> &'static str {
        match self {
            Mechanism::Namespaces => "namespaces",
            Mechanism::UnprivilegedUid => "unprivileged-uid",
            Mechanism::NoNewPrivs => "no-new-privs",
            Mechanism::Capabilities => "capabilities",
            Mechanism::Rlimits => "rlimits",
            Mechanism::Cgroup => "cgroup",
            Mechanism::Landlock => "landlock",
            Mechanism::Seccomp => "seccomp",
        }
    }

    /// Short badge for tables (`ns cg sc ll …`).
    pub const fn badge(self) -> &'static str {
        match self {
            Mechanism::Namespaces => "ns",
            Mechanism::UnprivilegedUid => "uid",
            Mechanism::NoNewPrivs => "nnp",
            Mechanism::Capabilities => "cap",
            Mechanism::Rlimits => "rl",
            Mechanism::Cgroup => "cg",
            Mechanism::Landlock => "ll",
            Mechanism::Seccomp => "sc",
        }
    }
}
