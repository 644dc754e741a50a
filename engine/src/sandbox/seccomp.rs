//! The seccomp filter a worker installs on itself before it loads a plugin, and the engine's
//! side of the listener that reports every forbidden call by name.
//!
//! The filter is data: [`rules`] turns a plugin's capabilities ([`SyscallPolicy`]) into a
//! table of [`SyscallRule`]s (firecracker style), each with the reason it exists. Anything
//! the table does not name is allowed. Most rules *notify*: the kernel suspends the calling
//! thread and queues the call on the filter's user-notification listener, which the worker
//! hands to the engine (`SCM_RIGHTS`) before any plugin code runs. The engine's
//! [`NotifyListener`] reads the call, answers `EPERM` and records it. No signal and no code
//! in the plugin's address space takes part, so a plugin can neither forge a report (it
//! has no listener) nor suppress one (its call does not return until the engine answered).
//!
//! Why the filter is loaded with a raw `seccomp(2)` call instead of libseccomp's
//! `seccomp_load`: libseccomp 2.5 keeps the listener descriptor in process-wide state, asks
//! the kernel for a listener only while that state is empty, and documents that the caller
//! must not close it. A second filter in the same process would silently get no listener
//! (its notify rules then fail with `ENOSYS`, unreported), and the descriptor could not be
//! handed over as an `OwnedFd`. So libseccomp compiles the table (architecture check, x32
//! rejection, argument comparisons) and exports the BPF program; this module loads it with
//! `SECCOMP_FILTER_FLAG_NEW_LISTENER` and owns the descriptor the kernel returns.

mod detail;
mod files;
mod listener;
mod watch;

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use libseccomp::error::SeccompError as LibseccompError;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::sys::memfd::{MFdFlags, memfd_create};
use serde::{Deserialize, Serialize};

pub use files::{FileAccess, FileOperand, is_file_syscall};
pub use listener::{Notification, NotifyListener, Verdict};

/// What the plugin's manifest grants that the filter must let through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SyscallPolicy {
    /// `capabilities.network`: sockets beyond `AF_UNIX`, `connect`, `bind`, `listen`, `accept`.
    pub network: bool,
    /// `capabilities.spawn`: `fork`, `vfork`, `execve`, `execveat`, `clone` of a process.
    pub spawn: bool,
    /// Which file-system calls reach the engine so it can check and report them.
    pub files: FileWatch,
}

/// Which file-system calls the filter shows the engine. Landlock enforces the worker's
/// file-system rules either way; these notifications are how the engine *sees* a denied
/// access (Landlock's own denial records need kernel audit, a host-wide switch) and names
/// the path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileWatch {
    /// Calls that write: opens for writing, creating or truncating, and every call that
    /// creates, removes, renames or links a name. Reads stay between the plugin and Landlock.
    #[default]
    Writes,
    /// Every open as well: audit mode, where the engine records what the plugin reads too.
    ReadsAndWrites,
}

/// What a capability of the manifest would grant: the rules that exist because the
/// manifest lacks it, so that audit mode can tell which capability a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Network,
    Spawn,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Network => "network",
            Capability::Spawn => "spawn",
        }
    }
}

/// The capability that would have let `syscall` with `args` through, or `None` for a call
/// no capability grants (mount, ptrace, namespaces, …) and for calls that are not
/// capability checks at all (file calls, see [`is_file_syscall`]).
pub fn capability_for(syscall: &str, args: &[u64; 6]) -> Option<Capability> {
    match syscall {
        "socket" | "socketpair" | "connect" | "bind" | "listen" | "accept" | "accept4" => {
            Some(Capability::Network)
        }
        "fork" | "vfork" | "execve" | "execveat" => Some(Capability::Spawn),
        "clone" => {
            let flags = args[usize::try_from(CLONE_FLAGS_ARG).unwrap_or(0)];
            (flags & NAMESPACE_FLAGS == 0 && flags & int_bits(libc::CLONE_THREAD) == 0)
                .then_some(Capability::Spawn)
        }
        _ => None,
    }
}

/// Every `CLONE_NEW*` flag: a clone with any of them is a namespace escape, never a spawn.
const NAMESPACE_FLAGS: u64 = int_bits(
    libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET,
);

/// What the filter does with a call a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Suspend the caller and queue the call on the listener; the engine answers `EPERM`
    /// and records a violation.
    Notify,
    /// Fail the call with this errno without telling anyone: for calls that are not a
    /// violation but must not run (`clone3`, whose `ENOSYS` makes glibc fall back to
    /// `clone`, where the flags can be inspected).
    Errno(i32),
}

/// A condition on one argument. The kernel reads many arguments (`int` socket families,
/// `unsigned int` ioctl requests) as 32 bits: compare those through a 32-bit mask, or a
/// caller could set the upper half to slip past an equality test the kernel then ignores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgCondition {
    /// `(args[arg] & mask) == value`.
    MaskedEqual { arg: u32, mask: u64, value: u64 },
    /// `args[arg] != value`, on all 64 bits; fails closed for 32-bit arguments, since any
    /// upper bit makes the argument "not equal".
    NotEqual { arg: u32, value: u64 },
}

/// One row of the filter table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyscallRule {
    /// The system call's name as libseccomp and `syscalls(2)` spell it.
    pub syscall: &'static str,
    pub action: RuleAction,
    /// `None`: every call matches. Several rules for one system call match if any does.
    pub condition: Option<ArgCondition>,
    /// Why the call is confined; shown next to the table, never parsed.
    pub why: &'static str,
}

/// Why the filter could not be built, installed, or read.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "seccomp user notification is not available ({reason}); the filter needs Linux 5.19 or newer to report forbidden calls to the engine"
    )]
    Unsupported { reason: String },
    #[error(
        "the seccomp rule table names `{syscall}`, which libseccomp does not know on any architecture; expected a system call name from syscalls(2)"
    )]
    UnknownSyscall { syscall: &'static str },
    #[error("cannot build the seccomp filter while {step}: {error}")]
    Build {
        step: String,
        error: LibseccompError,
    },
    #[error("cannot read back the compiled seccomp filter: {error}")]
    Export { error: io::Error },
    #[error(
        "the compiled seccomp filter is {len} bytes; expected a whole number of 8-byte BPF instructions, at most 65535 of them"
    )]
    MalformedProgram { len: usize },
    #[error(
        "cannot set no_new_privs, which the seccomp filter requires before it is loaded: {source}"
    )]
    NoNewPrivs { source: nix::Error },
    #[error("the kernel refused the seccomp filter with a notification listener: {error}")]
    Load { error: io::Error },
    #[error("waiting on the seccomp notification listener failed: {error}")]
    Poll { error: nix::Error },
    #[error("reading a seccomp notification from the listener failed: {error}")]
    Receive { error: io::Error },
    #[error("answering seccomp notification {id} (`{syscall}`) failed: {error}")]
    Respond {
        id: u64,
        syscall: String,
        error: io::Error,
    },
    #[error(
        "the seccomp notification listener is closed: every thread and process under its filter has exited"
    )]
    ListenerClosed,
}

/// `clone`'s flags argument: the first everywhere except s390x, which swaps the first two.
const CLONE_FLAGS_ARG: u32 = if cfg!(target_arch = "s390x") { 1 } else { 0 };

/// Masks an argument the kernel reads as a 32-bit `int`/`unsigned int`.
const LOW_32_BITS: u64 = 0xffff_ffff;

/// `TIOCSTI` as the 64-bit value seccomp compares (`Ioctl` is narrower on some targets).
#[allow(clippy::unnecessary_cast)]
const TIOCSTI: u64 = libc::TIOCSTI as u64;

/// `personality(0xffffffff)` only reads the current persona.
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// The bit pattern of a C `int` constant as seccomp compares it: the kernel reads these
/// arguments as 32 bits, so the bits matter, not the sign (`CLONE_IO` is negative as an
/// `int`).
#[allow(clippy::cast_sign_loss)]
const fn int_bits(value: libc::c_int) -> u64 {
    value as u32 as u64
}

/// Calls no plugin needs and every escape uses, notified whatever the manifest says.
const ALWAYS_NOTIFIED: &[(&str, &str)] = &[
    (
        "mount",
        "changes the mount table under the file-system confinement",
    ),
    (
        "umount2",
        "changes the mount table under the file-system confinement",
    ),
    (
        "pivot_root",
        "changes the root the file-system confinement is built on",
    ),
    (
        "chroot",
        "changes the root; with an open directory it escapes it",
    ),
    ("move_mount", "new mount API: changes the mount table"),
    ("open_tree", "new mount API: clones mount trees"),
    ("fsopen", "new mount API: creates file-system contexts"),
    ("fsmount", "new mount API: turns a context into a mount"),
    ("fspick", "new mount API: reconfigures an existing mount"),
    ("mount_setattr", "new mount API: changes mount attributes"),
    (
        "ptrace",
        "reads and writes other processes' memory and registers",
    ),
    ("process_vm_readv", "reads another process's memory"),
    ("process_vm_writev", "writes another process's memory"),
    ("pidfd_getfd", "steals descriptors from another process"),
    (
        "bpf",
        "loads kernel programs; a large kernel attack surface",
    ),
    (
        "perf_event_open",
        "kernel profiling: side channels and a large attack surface",
    ),
    (
        "io_uring_setup",
        "io_uring operations run without passing through seccomp",
    ),
    (
        "io_uring_enter",
        "io_uring operations run without passing through seccomp",
    ),
    (
        "io_uring_register",
        "io_uring operations run without passing through seccomp",
    ),
    ("init_module", "loads kernel code"),
    ("finit_module", "loads kernel code"),
    ("delete_module", "unloads kernel code"),
    ("kexec_load", "replaces the running kernel"),
    ("kexec_file_load", "replaces the running kernel"),
    ("add_key", "kernel keyrings are not namespaced"),
    ("request_key", "kernel keyrings are not namespaced"),
    ("keyctl", "kernel keyrings are not namespaced"),
    ("unshare", "new namespaces undo the worker's confinement"),
    ("setns", "joins other namespaces"),
    ("reboot", "restarts or halts the host"),
    ("swapon", "changes the host's swap"),
    ("swapoff", "changes the host's swap"),
    ("acct", "switches host-wide process accounting"),
    (
        "userfaultfd",
        "stalls kernel page faults: a classic exploit primitive",
    ),
    (
        "open_by_handle_at",
        "opens files by handle, around path-based confinement",
    ),
    (
        "name_to_handle_at",
        "leaks file handles for open_by_handle_at",
    ),
    (
        "syslog",
        "reads the kernel log (addresses, other tenants' messages)",
    ),
    ("settimeofday", "changes the host clock"),
    ("clock_settime", "changes the host clock"),
    ("clock_adjtime", "changes the host clock"),
    ("adjtimex", "changes the host clock"),
    ("quotactl", "changes disk quotas"),
    ("quotactl_fd", "changes disk quotas"),
    ("lookup_dcookie", "resolves kernel directory-entry cookies"),
    ("fanotify_init", "watches the whole file system"),
    ("mknod", "creates device nodes"),
    ("mknodat", "creates device nodes"),
    (
        "open_tree_attr",
        "new mount API: clones mount trees, as open_tree",
    ),
    (
        "listmount",
        "lists the host's mounts, which Landlock keeps /proc/self/mountinfo from showing",
    ),
    (
        "statmount",
        "describes the host's mounts, which Landlock keeps /proc/self/mountinfo from showing",
    ),
];

/// Calls of [`ALWAYS_NOTIFIED`] newer than libseccomp 2.5 knows, by their number: the same
/// on every architecture for calls added since Linux 5.1 (the kernel's unified numbering;
/// alpha aside).
const NEWER_THAN_LIBSECCOMP: &[(&str, i32)] = &[
    ("statmount", 457),
    ("listmount", 458),
    ("open_tree_attr", 467),
];

/// The first system call number past the kernel table these rules were written against
/// (up to 469, `file_setattr`, Linux 6.17). Calls a newer kernel adds are answered
/// `ENOSYS` by a second filter — as a kernel without them would, so callers fall back —
/// until someone has looked at what they do. Unified numbering, as above.
pub const FIRST_UNREVIEWED_SYSCALL: u32 = 470;

/// The table of rules for a plugin with `policy`'s capabilities. Every call it does not
/// name is allowed.
pub fn rules(policy: &SyscallPolicy) -> Vec<SyscallRule> {
    // Destructured so that a new capability is a compile error here, never a silent grant.
    let SyscallPolicy {
        network,
        spawn,
        files,
    } = *policy;

    let mut rules: Vec<SyscallRule> = ALWAYS_NOTIFIED
        .iter()
        .map(|&(syscall, why)| SyscallRule::notify(syscall, why))
        .collect();
    rules.extend(always_conditional());
    rules.push(SyscallRule {
        syscall: "clone3",
        action: RuleAction::Errno(libc::ENOSYS),
        condition: None,
        why: "its flags live in memory seccomp cannot read; ENOSYS (not EPERM) makes glibc fall back to clone, whose flags the rules below inspect",
    });
    if !network {
        rules.extend(without_network());
    }
    if !spawn {
        rules.extend(without_spawn());
    }
    rules.extend(file_rules(files));
    rules
}

/// `O_ACCMODE`, `O_CREAT` and `O_TRUNC` as the 64-bit values seccomp compares.
const O_ACCMODE: u64 = int_bits(libc::O_ACCMODE);

/// The ways an `open` flags argument asks to write: an access mode other than read-only,
/// creating, truncating. Any one matching makes the open a write.
fn write_open_conditions(arg: u32) -> [ArgCondition; 5] {
    let masked = |mask: u64, value: u64| ArgCondition::MaskedEqual { arg, mask, value };
    [
        masked(O_ACCMODE, int_bits(libc::O_WRONLY)),
        masked(O_ACCMODE, int_bits(libc::O_RDWR)),
        // 3 is no valid mode, but Linux opens it (for ioctls); treat it as a write.
        masked(O_ACCMODE, O_ACCMODE),
        masked(int_bits(libc::O_CREAT), int_bits(libc::O_CREAT)),
        masked(int_bits(libc::O_TRUNC), int_bits(libc::O_TRUNC)),
    ]
}

/// File-system calls the engine checks against the worker's file rules and reports
/// (`fs_denied`, the path named). Landlock stays the enforcer: what the engine lets
/// through (`Verdict::Continue`) the kernel still checks. (An inotify watch, which Landlock
/// does not cover, the engine adds itself: `Verdict::AddWatch`.)
fn file_rules(watch: FileWatch) -> Vec<SyscallRule> {
    const CHANGES_NAMES: &str = "creates, removes, renames or links a name: checked against fs_write and reported when denied";
    let mut rules = Vec::new();
    for (syscall, flags_arg) in [("open", 1), ("openat", 2)] {
        match watch {
            FileWatch::Writes => {
                for condition in write_open_conditions(flags_arg) {
                    rules.push(SyscallRule::notify_if(
                        syscall,
                        condition,
                        "an open for writing, creating or truncating: checked against fs_write and reported when denied",
                    ));
                }
            }
            FileWatch::ReadsAndWrites => rules.push(SyscallRule::notify(
                syscall,
                "audit mode: every open is recorded",
            )),
        }
    }
    for syscall in [
        "creat",
        "truncate",
        "mkdir",
        "mkdirat",
        "rmdir",
        "unlink",
        "unlinkat",
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
    ] {
        rules.push(SyscallRule::notify(syscall, CHANGES_NAMES));
    }
    rules.push(SyscallRule::notify(
        "inotify_add_watch",
        "a watch sees names and activity where Landlock does not look: checked against fs_read and fs_write, refused and reported outside them",
    ));
    rules.push(SyscallRule {
        syscall: "openat2",
        action: RuleAction::Errno(libc::ENOSYS),
        condition: None,
        why: "its flags live in memory seccomp cannot read; ENOSYS makes callers fall back to openat, whose flags the rules above inspect",
    });
    rules
}

/// Rules on one argument value that apply to every plugin.
fn always_conditional() -> Vec<SyscallRule> {
    let mut rules = vec![
        SyscallRule::notify_if(
            "personality",
            ArgCondition::NotEqual {
                arg: 0,
                value: PERSONALITY_QUERY,
            },
            "a new execution domain (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) weakens exploit mitigations; the 0xffffffff query stays allowed",
        ),
        SyscallRule::notify_if(
            "ioctl",
            ArgCondition::MaskedEqual {
                arg: 1,
                mask: LOW_32_BITS,
                value: TIOCSTI,
            },
            "TIOCSTI types input into an inherited terminal (legacy_tiocsti is on); the kernel reads the request as 32 bits, hence the mask",
        ),
        SyscallRule::notify_if(
            "prctl",
            ArgCondition::MaskedEqual {
                arg: 0,
                mask: LOW_32_BITS,
                value: int_bits(libc::PR_SET_DUMPABLE),
            },
            "the worker must stay non-dumpable, or same-uid processes could ptrace it and read its memory",
        ),
        // seccomp(2) setting a mode (strict, a filter); its queries (available actions,
        // notification sizes, which libseccomp makes) stay allowed.
        SyscallRule::notify_if(
            "seccomp",
            ArgCondition::MaskedEqual {
                arg: 0,
                mask: LOW_32_BITS,
                value: u64::from(libc::SECCOMP_SET_MODE_STRICT),
            },
            "strict mode of its own: a filter that outranks the engine's notifications",
        ),
        SyscallRule::notify_if(
            "seccomp",
            ArgCondition::MaskedEqual {
                arg: 0,
                mask: LOW_32_BITS,
                value: u64::from(libc::SECCOMP_SET_MODE_FILTER),
            },
            "a filter of its own would answer its forbidden calls before the engine sees them (an errno outranks a notification)",
        ),
        SyscallRule::notify_if(
            "prctl",
            ArgCondition::MaskedEqual {
                arg: 0,
                mask: LOW_32_BITS,
                value: int_bits(libc::PR_SET_SECCOMP),
            },
            "a filter of its own (the old interface of seccomp(2)) would hide its forbidden calls from the engine",
        ),
    ];
    // `unshare` is notified; `clone` with a namespace flag is the same escape.
    for (flag, why) in [
        (
            libc::CLONE_NEWNS,
            "clone into a new mount namespace, like unshare",
        ),
        (
            libc::CLONE_NEWCGROUP,
            "clone into a new cgroup namespace, like unshare",
        ),
        (
            libc::CLONE_NEWUTS,
            "clone into a new UTS namespace, like unshare",
        ),
        (
            libc::CLONE_NEWIPC,
            "clone into a new IPC namespace, like unshare",
        ),
        (
            libc::CLONE_NEWUSER,
            "clone into a new user namespace, like unshare",
        ),
        (
            libc::CLONE_NEWPID,
            "clone into a new pid namespace, like unshare",
        ),
        (
            libc::CLONE_NEWNET,
            "clone into a new network namespace, like unshare",
        ),
    ] {
        rules.push(SyscallRule::notify_if(
            "clone",
            ArgCondition::MaskedEqual {
                arg: CLONE_FLAGS_ARG,
                mask: int_bits(flag),
                value: int_bits(flag),
            },
            why,
        ));
    }
    rules
}

/// The socket type within `socket`'s second argument (the rest are `SOCK_CLOEXEC`,
/// `SOCK_NONBLOCK`).
const SOCKET_TYPE_MASK: u64 = 0xf;

/// Rules for a plugin without `network`. Its network namespace is empty already; these make
/// the attempt visible and close what a namespace does not cover.
fn without_network() -> Vec<SyscallRule> {
    let mut rules = Vec::new();
    for (family, why) in [
        (libc::AF_INET, "IPv4 socket without the network capability"),
        (
            libc::AF_INET6,
            "IPv6 socket without the network capability (a rule of its own: AF_INET does not cover it)",
        ),
        (
            libc::AF_PACKET,
            "raw packet socket without the network capability",
        ),
        (
            libc::AF_NETLINK,
            "netlink socket (routing, audit, uevents) without the network capability",
        ),
    ] {
        rules.push(SyscallRule::notify_if(
            "socket",
            ArgCondition::MaskedEqual {
                arg: 0,
                mask: LOW_32_BITS,
                value: int_bits(family),
            },
            why,
        ));
    }
    rules.push(SyscallRule::notify_if(
        "socket",
        ArgCondition::NotEqual {
            arg: 0,
            value: int_bits(libc::AF_UNIX),
        },
        "any family but AF_UNIX (vsock, alg, xdp, bluetooth, tipc…) reaches host or kernel surface an empty network namespace does not remove",
    ));
    // A datagram socket reaches a host socket by its path (`/dev/log`, the journal) with
    // `sendto` alone, no `connect` — also one of a socket pair, whose peer does not stop a
    // `sendto` naming another address, and a `SOCK_RAW` one, which AF_UNIX makes a datagram
    // socket. So only the two connection types are allowed, for `socket` and `socketpair`
    // alike: stream and seqpacket sockets reach nothing without `connect`, refused below.
    for syscall in ["socket", "socketpair"] {
        for socket_type in (0..=SOCKET_TYPE_MASK).filter(|&socket_type| {
            socket_type != int_bits(libc::SOCK_STREAM)
                && socket_type != int_bits(libc::SOCK_SEQPACKET)
        }) {
            rules.push(SyscallRule::notify_if(
                syscall,
                ArgCondition::MaskedEqual {
                    arg: 1,
                    mask: SOCKET_TYPE_MASK,
                    value: socket_type,
                },
                "a socket of a type other than stream or seqpacket (datagram, raw: it sends to host sockets by path) without the network capability",
            ));
        }
    }
    rules.push(SyscallRule::notify_if(
        "socketpair",
        ArgCondition::NotEqual {
            arg: 0,
            value: int_bits(libc::AF_UNIX),
        },
        "a socket pair of any family but AF_UNIX",
    ));
    for syscall in ["connect", "bind", "listen", "accept", "accept4"] {
        rules.push(SyscallRule::notify(
            syscall,
            "network endpoint without the network capability",
        ));
    }
    rules
}

/// Rules for a plugin without `spawn`: no new process, no new program; threads still work.
fn without_spawn() -> Vec<SyscallRule> {
    let mut rules: Vec<SyscallRule> = [
        ("fork", "new process without the spawn capability"),
        ("vfork", "new process without the spawn capability"),
        (
            "execve",
            "runs another program without the spawn capability",
        ),
        (
            "execveat",
            "runs another program without the spawn capability",
        ),
    ]
    .into_iter()
    .map(|(syscall, why)| SyscallRule::notify(syscall, why))
    .collect();
    rules.push(SyscallRule::notify_if(
        "clone",
        ArgCondition::MaskedEqual {
            arg: CLONE_FLAGS_ARG,
            mask: int_bits(libc::CLONE_THREAD),
            value: 0,
        },
        "clone without CLONE_THREAD is a new process (fork, posix_spawn); threads keep working",
    ));
    rules
}

impl SyscallRule {
    const fn notify(syscall: &'static str, why: &'static str) -> Self {
        Self {
            syscall,
            action: RuleAction::Notify,
            condition: None,
            why,
        }
    }

    const fn notify_if(syscall: &'static str, condition: ArgCondition, why: &'static str) -> Self {
        Self {
            syscall,
            action: RuleAction::Notify,
            condition: Some(condition),
            why,
        }
    }
}

/// Checks that this kernel can run the filter [`install`] loads: seccomp filters, the
/// user-notification action, and a listener whose callers wait killably once the engine has
/// read their call (Linux 5.19). Changes nothing.
pub fn check_support() -> Result<(), SeccompError> {
    let user_notif = libc::SECCOMP_RET_USER_NOTIF;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer, which points to a
    // live local for the duration of the call; it changes no state.
    let available = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &raw const user_notif,
        )
    };
    if available != 0 {
        return Err(SeccompError::Unsupported {
            reason: format!(
                "SECCOMP_RET_USER_NOTIF is not an available action: {}",
                io::Error::last_os_error()
            ),
        });
    }
    // The kernel checks the flags before it reads the program, so a null program answers
    // EFAULT when the flags are known and EINVAL when they are not — and loads nothing.
    // SAFETY: the null program pointer is never dereferenced: the kernel's copy from it
    // fails with EFAULT before any filter is attached.
    let probe = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            LISTENER_FLAGS,
            std::ptr::null::<libc::sock_fprog>(),
        )
    };
    let error = io::Error::last_os_error();
    match (probe, error.raw_os_error()) {
        (-1, Some(libc::EFAULT)) => Ok(()),
        _ => Err(SeccompError::Unsupported {
            reason: format!(
                "the kernel does not accept SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: {error}"
            ),
        }),
    }
}

/// A new listener for the filter; once the engine has read a call, the caller waits for
/// the answer killably (a non-fatal signal no longer restarts it, which would report the
/// same call twice).
const LISTENER_FLAGS: libc::c_ulong =
    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;

/// Sets `no_new_privs` and loads the filter for `policy` on the calling thread; threads
/// and processes it creates afterwards inherit it. Returns the filter's notification
/// listener (close-on-exec).
///
/// The caller must pass the listener to the engine and close its own copy before any
/// plugin code runs: whoever holds it answers the filter's calls, and a plugin holding it
/// could answer its own with "continue". The kernel allows one listener per filter chain,
/// so plugin code cannot install a second one (`EBUSY`).
///
/// Architecture: libseccomp checks `seccomp_data.arch` against the native architecture
/// before any rule and, on x86-64, rejects system call numbers with the x32 bit set; both
/// take the *bad-architecture action*, which libseccomp defaults to killing only the thread
/// and which is set here to `KILL_PROCESS`, so a process that tries never keeps running
/// half-killed.
///
/// A second filter, loaded first, answers `ENOSYS` to calls newer than the rules (see
/// [`FIRST_UNREVIEWED_SYSCALL`]).
pub fn install(policy: &SyscallPolicy) -> Result<OwnedFd, SeccompError> {
    install_compiled(&compile(&rules(policy))?)
}

/// [`install`] with the program [`compiled_for`] made (the engine compiles each policy's
/// once, and the worker loads it: no worker compiles its own).
pub fn install_compiled(program: &[libc::sock_filter]) -> Result<OwnedFd, SeccompError> {
    check_support()?;
    // The kernel requires no_new_privs (or CAP_SYS_ADMIN, which root has and which must not
    // be what lets the filter in): set it here, explicitly, before the filter.
    nix::sys::prctl::set_no_new_privs().map_err(|source| SeccompError::NoNewPrivs { source })?;
    load(&unreviewed_calls_program(), 0)?;
    let listener = load(program, LISTENER_FLAGS)?;
    let listener = i32::try_from(listener).map_err(|_| SeccompError::Load {
        error: io::Error::other(format!(
            "the kernel returned {listener}, which is not a descriptor"
        )),
    })?;
    // SAFETY: with SECCOMP_FILTER_FLAG_NEW_LISTENER, a non-negative return is a descriptor
    // the kernel just opened for this process and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(listener) })
}

/// The seccomp step's note when the worker compiled its filter itself because the engine
/// sent no program: every start then pays the compile.
pub const COMPILED_BY_WORKER: &str = "filter compiled by the worker: the engine sent none";

/// The program for `policy`, compiled once per policy in this process (there are eight)
/// and kept: what [`install_compiled`] loads.
pub fn compiled_for(policy: SyscallPolicy) -> Result<Arc<[libc::sock_filter]>, SeccompError> {
    static COMPILED: Mutex<Vec<(SyscallPolicy, Arc<[libc::sock_filter]>)>> = Mutex::new(Vec::new());
    if let Some((_, program)) = COMPILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|(compiled, _)| *compiled == policy)
    {
        return Ok(Arc::clone(program));
    }
    let program: Arc<[libc::sock_filter]> = compile(&rules(&policy))?.into();
    COMPILED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((policy, Arc::clone(&program)));
    Ok(program)
}

/// A program as the plan carries it: each instruction in one `u64` (`code`, `jt`, `jf`,
/// `k` from the low bits up).
pub fn pack_program(program: &[libc::sock_filter]) -> Vec<u64> {
    program
        .iter()
        .map(|instruction| {
            u64::from(instruction.code)
                | u64::from(instruction.jt) << 16
                | u64::from(instruction.jf) << 24
                | u64::from(instruction.k) << 32
        })
        .collect()
}

/// [`pack_program`] undone.
pub fn unpack_program(packed: &[u64]) -> Vec<libc::sock_filter> {
    // The casts take each field's bits back out of the word it was packed into.
    #[allow(clippy::cast_possible_truncation)]
    packed
        .iter()
        .map(|word| libc::sock_filter {
            code: *word as u16,
            jt: (word >> 16) as u8,
            jf: (word >> 24) as u8,
            k: (word >> 32) as u32,
        })
        .collect()
}

/// libseccomp keeps process-wide state (API level, detected kernel features) that it
/// updates without locking; filters are compiled one at a time.
static LIBSECCOMP: Mutex<()> = Mutex::new(());

/// Compiles `rules` into a BPF program for the native architecture: what [`install`]
/// loads (besides the second filter), without loading it.
pub fn compile(rules: &[SyscallRule]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let _serialised = LIBSECCOMP.lock().unwrap_or_else(PoisonError::into_inner);
    let build = |step: String| {
        move |source| SeccompError::Build {
            step,
            error: source,
        }
    };

    let mut filter =
        ScmpFilterContext::new(ScmpAction::Allow).map_err(build("creating the filter".into()))?;
    filter
        .set_act_badarch(ScmpAction::KillProcess)
        .map_err(build(
            "setting the bad-architecture action to KILL_PROCESS".into(),
        ))?;
    for rule in rules {
        let syscall = resolve(rule.syscall)?;
        let action = match rule.action {
            RuleAction::Notify => ScmpAction::Notify,
            RuleAction::Errno(errno) => ScmpAction::Errno(errno),
        };
        let comparisons: Vec<ScmpArgCompare> = rule.condition.iter().map(compare).collect();
        filter
            .add_rule_conditional(action, syscall, &comparisons)
            .map_err(build(format!("adding the rule for `{}`", rule.syscall)))?;
    }

    let exported =
        memfd_create(c"plugboard-seccomp-bpf", MFdFlags::MFD_CLOEXEC).map_err(|source| {
            SeccompError::Export {
                error: source.into(),
            }
        })?;
    filter
        .export_bpf(&exported)
        .map_err(build("exporting the BPF program".into()))?;
    let mut file = File::from(exported);
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(|source| SeccompError::Export { error: source })?;
    decode_program(&bytes)
}

/// The native system call for `name`. libseccomp answers a negative pseudo number for a
/// call this architecture does not have (`fork` on arm64), and adding a rule for it is a
/// no-op there; only a name it knows nowhere is an error.
fn resolve(name: &'static str) -> Result<ScmpSyscall, SeccompError> {
    ScmpSyscall::from_name(name).or_else(|_| {
        NEWER_THAN_LIBSECCOMP
            .iter()
            .find(|&&(known, _)| known == name)
            .map(|&(_, nr)| ScmpSyscall::from(nr))
            .ok_or(SeccompError::UnknownSyscall { syscall: name })
    })
}

/// The second filter: `ENOSYS` for every call from [`FIRST_UNREVIEWED_SYSCALL`] on, every
/// other call allowed (the first filter decides those; of two filters' answers the kernel
/// takes the stricter, so this one only ever adds refusals). Another architecture's or an
/// x32 call is killed by the first filter whatever this one answers.
fn unreviewed_calls_program() -> [libc::sock_filter; 4] {
    // `nr` is the first word of `struct seccomp_data`.
    const NR_OFFSET: u32 = 0;
    let statement = |code: u32, k: u32| libc::sock_filter {
        code: u16::try_from(code).unwrap_or_default(),
        jt: 0,
        jf: 0,
        k,
    };
    [
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET),
        libc::sock_filter {
            code: u16::try_from(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K).unwrap_or_default(),
            jt: 0,
            jf: 1,
            k: FIRST_UNREVIEWED_SYSCALL,
        },
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | u32::try_from(libc::ENOSYS).unwrap_or_default(),
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

fn compare(condition: &ArgCondition) -> ScmpArgCompare {
    match *condition {
        ArgCondition::MaskedEqual { arg, mask, value } => {
            ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(mask), value)
        }
        ArgCondition::NotEqual { arg, value } => {
            ScmpArgCompare::new(arg, ScmpCompareOp::NotEqual, value)
        }
    }
}

/// Splits libseccomp's exported program (native-endian `struct sock_filter`s) into
/// instructions.
fn decode_program(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    const INSTRUCTION: usize = size_of::<libc::sock_filter>();
    let malformed = || SeccompError::MalformedProgram { len: bytes.len() };
    if bytes.is_empty() || bytes.len() % INSTRUCTION != 0 {
        return Err(malformed());
    }
    if u16::try_from(bytes.len() / INSTRUCTION).is_err() {
        return Err(malformed());
    }
    Ok(bytes
        .chunks_exact(INSTRUCTION)
        .map(|raw| libc::sock_filter {
            code: u16::from_ne_bytes([raw[0], raw[1]]),
            jt: raw[2],
            jf: raw[3],
            k: u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]),
        })
        .collect())
}

/// Loads `program` on the calling thread with `flags`; the kernel's non-negative answer
/// (a listener's descriptor, with `SECCOMP_FILTER_FLAG_NEW_LISTENER`).
fn load(program: &[libc::sock_filter], flags: libc::c_ulong) -> Result<libc::c_long, SeccompError> {
    let len = u16::try_from(program.len()).map_err(|_| SeccompError::MalformedProgram {
        len: program.len() * 8,
    })?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `len` initialised instructions that outlive the call; the
    // kernel copies the program and never writes through the pointer.
    let loaded = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &raw const fprog,
        )
    };
    if loaded < 0 {
        return Err(SeccompError::Load {
            error: io::Error::last_os_error(),
        });
    }
    Ok(loaded)
}

/// The native name of system call `nr`, as the kernel's tables and `syscalls(2)` spell it;
/// `syscall <nr>` for a number libseccomp does not know.
pub fn syscall_name(nr: i32) -> String {
    ScmpSyscall::from(nr)
        .get_name_by_arch(ScmpArch::Native)
        .ok()
        .or_else(|| {
            NEWER_THAN_LIBSECCOMP
                .iter()
                .find(|&&(_, known)| known == nr)
                .map(|&(name, _)| name.to_owned())
        })
        .unwrap_or_else(|| format!("syscall {nr}"))
}

#[cfg(test)]
mod simulate;

#[cfg(test)]
mod tests {
    use super::simulate::Call;
    use super::*;

    fn names(rules: &[SyscallRule]) -> Vec<&'static str> {
        rules.iter().map(|rule| rule.syscall).collect()
    }

    /// The engine compiles each policy once and hands the worker the very program it
    /// would have compiled itself, through the plan's packing.
    #[test]
    fn a_policy_is_compiled_once_and_survives_the_plans_packing() {
        let policy = SyscallPolicy {
            network: false,
            spawn: true,
            files: FileWatch::Writes,
        };
        let first = compiled_for(policy).unwrap();
        let again = compiled_for(policy).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "compiled once");
        let own = compile(&rules(&policy)).unwrap();
        let shipped = unpack_program(&pack_program(&first));
        let fields = |program: &[libc::sock_filter]| -> Vec<(u16, u8, u8, u32)> {
            program
                .iter()
                .map(|step| (step.code, step.jt, step.jf, step.k))
                .collect()
        };
        assert_eq!(fields(&shipped), fields(&own));
        let other = compiled_for(SyscallPolicy {
            network: true,
            ..policy
        })
        .unwrap();
        assert_ne!(
            fields(&other),
            fields(&own),
            "another policy, another program"
        );
    }

    #[test]
    fn every_rule_names_a_system_call_libseccomp_knows() {
        let policy = SyscallPolicy::default();
        for rule in rules(&policy) {
            let syscall = resolve(rule.syscall).unwrap();
            assert!(
                syscall.as_raw_syscall() >= 0,
                "`{}` is not a system call on this architecture",
                rule.syscall
            );
        }
    }

    #[test]
    fn capabilities_remove_exactly_their_rules() {
        let confined = rules(&SyscallPolicy::default());
        let everything = rules(&SyscallPolicy {
            network: true,
            spawn: true,
            files: FileWatch::Writes,
        });
        for gone in [
            "socketpair",
            "connect",
            "bind",
            "listen",
            "accept",
            "accept4",
            "fork",
            "vfork",
            "execve",
            "execveat",
        ] {
            assert!(names(&confined).contains(&gone), "{gone} confined");
            assert!(!names(&everything).contains(&gone), "{gone} granted");
        }
        assert!(!everything.iter().any(|rule| rule.syscall == "socket"));
        // What no capability grants stays.
        for kept in [
            "mount",
            "unshare",
            "io_uring_setup",
            "ptrace",
            "bpf",
            "clone3",
        ] {
            assert!(names(&everything).contains(&kept), "{kept} always confined");
        }
        // Namespace flags on clone stay confined even with `spawn`.
        assert_eq!(
            everything
                .iter()
                .filter(|rule| rule.syscall == "clone")
                .count(),
            7
        );
    }

    #[test]
    fn clone3_fails_with_enosys_so_glibc_falls_back_to_clone() {
        let clone3: Vec<_> = rules(&SyscallPolicy::default())
            .into_iter()
            .filter(|rule| rule.syscall == "clone3")
            .collect();
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action, RuleAction::Errno(libc::ENOSYS));
        assert_eq!(clone3[0].condition, None);
    }

    #[test]
    fn ipv6_has_a_rule_of_its_own_and_families_are_compared_as_32_bits() {
        let sockets: Vec<_> = rules(&SyscallPolicy::default())
            .into_iter()
            .filter(|rule| rule.syscall == "socket")
            .collect();
        for family in [
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_PACKET,
            libc::AF_NETLINK,
        ] {
            assert!(
                sockets.iter().any(|rule| rule.condition
                    == Some(ArgCondition::MaskedEqual {
                        arg: 0,
                        mask: LOW_32_BITS,
                        value: int_bits(family),
                    })),
                "no rule for family {family}"
            );
        }
    }

    #[test]
    fn threads_are_told_apart_from_processes_by_clone_thread() {
        let process_clone = rules(&SyscallPolicy::default())
            .into_iter()
            .find(|rule| {
                rule.syscall == "clone"
                    && matches!(
                        rule.condition,
                        Some(ArgCondition::MaskedEqual { value: 0, .. })
                    )
            })
            .unwrap();
        assert_eq!(
            process_clone.condition,
            Some(ArgCondition::MaskedEqual {
                arg: CLONE_FLAGS_ARG,
                mask: int_bits(libc::CLONE_THREAD),
                value: 0,
            })
        );
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
    const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    fn verdict(policy: SyscallPolicy, call: &Call) -> u32 {
        simulate::run(&compile(&rules(&policy)).unwrap(), call)
    }

    fn confined() -> SyscallPolicy {
        SyscallPolicy::default()
    }

    #[test]
    fn other_architectures_kill_the_process_before_any_rule() {
        let getpid = Call {
            nr: 20,
            arch: simulate::I386_ARCH,
            args: [0; 6],
        };
        assert_eq!(verdict(confined(), &getpid), KILL_PROCESS);
        assert_eq!(
            verdict(confined(), &Call::native(libc::SYS_getpid, [0; 6])),
            ALLOW
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_system_call_numbers_kill_the_process() {
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        for nr in [libc::SYS_getpid, libc::SYS_socket, libc::SYS_mount] {
            let call = Call::native(X32_SYSCALL_BIT | nr, [0; 6]);
            assert_eq!(verdict(confined(), &call), KILL_PROCESS, "x32 call {nr}");
        }
    }

    #[test]
    fn only_stream_and_seqpacket_unix_sockets_pass_without_network() {
        let unix = int_bits(libc::AF_UNIX);
        for (nr, name) in [
            (libc::SYS_socket, "socket"),
            (libc::SYS_socketpair, "socketpair"),
        ] {
            for kind in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET] {
                let flagged = int_bits(kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK);
                let call = Call::native(nr, [unix, flagged, 0, 0, 0, 0]);
                assert_eq!(verdict(confined(), &call), ALLOW, "{name} type {kind}");
            }
            for kind in 0..=SOCKET_TYPE_MASK {
                if kind == int_bits(libc::SOCK_STREAM) || kind == int_bits(libc::SOCK_SEQPACKET) {
                    continue;
                }
                let call =
                    Call::native(nr, [unix, kind | int_bits(libc::SOCK_CLOEXEC), 0, 0, 0, 0]);
                assert_eq!(verdict(confined(), &call), NOTIFY, "{name} type {kind}");
            }
        }
    }

    #[test]
    fn calls_newer_than_libseccomp_are_ruled_and_named_by_number() {
        for (name, nr) in NEWER_THAN_LIBSECCOMP {
            let call = Call::native(libc::c_long::from(*nr), [0; 6]);
            assert_eq!(verdict(confined(), &call), NOTIFY, "{name}");
            assert_eq!(syscall_name(*nr), *name);
        }
    }

    #[test]
    fn the_second_filter_refuses_only_calls_past_the_reviewed_table() {
        let program = unreviewed_calls_program();
        let enosys = libc::SECCOMP_RET_ERRNO | u32::try_from(libc::ENOSYS).unwrap();
        let first = libc::c_long::from(FIRST_UNREVIEWED_SYSCALL);
        for nr in [first, first + 1, 1000] {
            assert_eq!(
                simulate::run(&program, &Call::native(nr, [0; 6])),
                enosys,
                "nr {nr}"
            );
        }
        for nr in [libc::SYS_read, libc::SYS_socket, libc::SYS_mseal, first - 1] {
            assert_eq!(
                simulate::run(&program, &Call::native(nr, [0; 6])),
                ALLOW,
                "nr {nr}"
            );
        }
    }

    #[test]
    fn socket_families_are_compared_on_the_32_bits_the_kernel_reads() {
        let inet = int_bits(libc::AF_INET);
        for domain in [inet, (1 << 32) | inet, u64::MAX << 32 | inet] {
            let call = Call::native(libc::SYS_socket, [domain, 1, 0, 0, 0, 0]);
            assert_eq!(verdict(confined(), &call), NOTIFY, "domain {domain:#x}");
        }
        for family in [
            libc::AF_INET6,
            libc::AF_PACKET,
            libc::AF_NETLINK,
            libc::AF_VSOCK,
        ] {
            let call = Call::native(libc::SYS_socket, [int_bits(family), 1, 0, 0, 0, 0]);
            assert_eq!(verdict(confined(), &call), NOTIFY, "family {family}");
        }
        let unix = Call::native(libc::SYS_socket, [int_bits(libc::AF_UNIX), 1, 0, 0, 0, 0]);
        assert_eq!(verdict(confined(), &unix), ALLOW);
        let network = SyscallPolicy {
            network: true,
            spawn: false,
            files: FileWatch::Writes,
        };
        let inet = Call::native(libc::SYS_socket, [inet, 1, 0, 0, 0, 0]);
        assert_eq!(verdict(network, &inet), ALLOW);
    }

    #[test]
    fn tiocsti_is_caught_whatever_the_upper_bits() {
        for request in [TIOCSTI, (1 << 32) | TIOCSTI] {
            let call = Call::native(libc::SYS_ioctl, [0, request, 0, 0, 0, 0]);
            assert_eq!(verdict(confined(), &call), NOTIFY, "request {request:#x}");
        }
        let tcgets = Call::native(libc::SYS_ioctl, [0, 0x5401, 0, 0, 0, 0]);
        assert_eq!(verdict(confined(), &tcgets), ALLOW);
    }

    #[test]
    fn threads_pass_processes_and_namespaces_do_not() {
        let thread_flags = int_bits(
            libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_CLEARTID,
        );
        let fork_flags = int_bits(libc::SIGCHLD);
        let mut args = [0; 6];
        let flags_arg = usize::try_from(CLONE_FLAGS_ARG).unwrap();
        let spawner = SyscallPolicy {
            network: false,
            spawn: true,
            files: FileWatch::Writes,
        };

        args[flags_arg] = thread_flags;
        assert_eq!(
            verdict(confined(), &Call::native(libc::SYS_clone, args)),
            ALLOW
        );
        args[flags_arg] = fork_flags;
        assert_eq!(
            verdict(confined(), &Call::native(libc::SYS_clone, args)),
            NOTIFY
        );
        assert_eq!(
            verdict(spawner, &Call::native(libc::SYS_clone, args)),
            ALLOW
        );
        for namespace in [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, libc::CLONE_NEWNS] {
            args[flags_arg] = fork_flags | int_bits(namespace);
            assert_eq!(
                verdict(spawner, &Call::native(libc::SYS_clone, args)),
                NOTIFY
            );
            args[flags_arg] = thread_flags | int_bits(namespace);
            assert_eq!(
                verdict(confined(), &Call::native(libc::SYS_clone, args)),
                NOTIFY
            );
        }
        let clone3 = Call::native(libc::SYS_clone3, [0; 6]);
        assert_eq!(
            verdict(spawner, &clone3),
            libc::SECCOMP_RET_ERRNO | u32::try_from(libc::ENOSYS).unwrap()
        );
    }

    #[test]
    fn writing_opens_reach_the_engine_reads_only_in_audit_mode() {
        let open = |flags: libc::c_int| {
            Call::native(
                libc::SYS_openat,
                [0, 0, u64::from(flags.unsigned_abs()), 0, 0, 0],
            )
        };
        let audit = SyscallPolicy {
            files: FileWatch::ReadsAndWrites,
            ..confined()
        };
        for flags in [
            libc::O_RDONLY,
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY,
        ] {
            assert_eq!(verdict(confined(), &open(flags)), ALLOW, "flags {flags:#o}");
            assert_eq!(verdict(audit, &open(flags)), NOTIFY, "flags {flags:#o}");
        }
        for flags in [
            libc::O_WRONLY,
            libc::O_RDWR | libc::O_CLOEXEC,
            libc::O_RDONLY | libc::O_CREAT,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        ] {
            assert_eq!(
                verdict(confined(), &open(flags)),
                NOTIFY,
                "flags {flags:#o}"
            );
        }
        for nr in [libc::SYS_unlinkat, libc::SYS_mkdirat, libc::SYS_renameat2] {
            assert_eq!(verdict(confined(), &Call::native(nr, [0; 6])), NOTIFY);
        }
        assert_eq!(
            verdict(confined(), &Call::native(libc::SYS_openat2, [0; 6])),
            libc::SECCOMP_RET_ERRNO | u32::try_from(libc::ENOSYS).unwrap()
        );
    }

    #[test]
    fn audit_mode_lets_through_only_what_a_capability_grants() {
        let fork = [u64::from(libc::SIGCHLD.unsigned_abs()), 0, 0, 0, 0, 0];
        assert_eq!(capability_for("clone", &fork), Some(Capability::Spawn));
        let thread = [int_bits(libc::CLONE_THREAD | libc::CLONE_VM), 0, 0, 0, 0, 0];
        assert_eq!(capability_for("clone", &thread), None);
        let namespace = [int_bits(libc::CLONE_NEWUSER) | fork[0], 0, 0, 0, 0, 0];
        assert_eq!(capability_for("clone", &namespace), None);
        assert_eq!(
            capability_for("connect", &[0; 6]),
            Some(Capability::Network)
        );
        for never in ["mount", "ptrace", "unshare", "bpf", "io_uring_setup"] {
            assert_eq!(capability_for(never, &[0; 6]), None, "{never}");
        }
    }

    #[test]
    fn personality_queries_pass_changes_do_not() {
        let query = Call::native(libc::SYS_personality, [PERSONALITY_QUERY, 0, 0, 0, 0, 0]);
        assert_eq!(verdict(confined(), &query), ALLOW);
        for persona in [0x0040_0000, 0x0008, (1 << 32) | PERSONALITY_QUERY] {
            let change = Call::native(libc::SYS_personality, [persona, 0, 0, 0, 0, 0]);
            assert_eq!(verdict(confined(), &change), NOTIFY, "persona {persona:#x}");
        }
    }

    #[test]
    fn the_compiled_program_decodes_into_whole_instructions() {
        let program = compile(&rules(&SyscallPolicy::default())).unwrap();
        assert!(program.len() > 50, "{} instructions", program.len());
        // The first instruction loads seccomp_data.arch (offset 4): the architecture check.
        assert_eq!(program[0].code, 0x20, "BPF_LD | BPF_W | BPF_ABS");
        assert_eq!(program[0].k, 4);
        assert!(matches!(
            decode_program(&[0; 7]),
            Err(SeccompError::MalformedProgram { len: 7 })
        ));
    }

    #[test]
    fn names_come_from_the_native_table() {
        assert_eq!(
            syscall_name(i32::try_from(libc::SYS_socket).unwrap()),
            "socket"
        );
        assert_eq!(
            syscall_name(i32::try_from(libc::SYS_clone3).unwrap()),
            "clone3"
        );
        assert_eq!(syscall_name(99_999), "syscall 99999");
    }
}
