//! Decodes the argument registers of a notified call into words an on-call engineer reads:
//! `domain AF_INET6, type SOCK_STREAM`, `flags CLONE_NEWUSER|SIGCHLD`.
//!
//! Only registers are decoded. What pointers point to (a path, a `sockaddr`) lives in the
//! caller's memory, which could change between reading it and deciding; it is not read.

use nix::sys::signal::Signal;

use super::{CLONE_FLAGS_ARG, TIOCSTI, int_bits};

/// The explanatory part of a call to `syscall` with `args`; empty when no argument adds
/// anything.
pub(super) fn describe(syscall: &str, args: &[u64; 6]) -> String {
    match syscall {
        "socket" | "socketpair" => format!(
            "domain {}, type {}",
            family_name(as_c_int(args[0])),
            socket_type(as_c_int(args[1]))
        ),
        "clone" => {
            let flags = args[usize::try_from(CLONE_FLAGS_ARG).unwrap_or(0)];
            format!("flags {}", clone_flags(flags, true))
        }
        "unshare" => format!("flags {}", clone_flags(args[0], false)),
        "setns" => format!(
            "fd {}, nstype {}",
            as_c_int(args[0]),
            clone_flags(args[1], false)
        ),
        "connect" | "bind" | "listen" | "accept" | "accept4" => format!("fd {}", as_c_int(args[0])),
        "ioctl" => {
            let request = args[1] & 0xffff_ffff;
            if request == TIOCSTI {
                format!("fd {}, request TIOCSTI", as_c_int(args[0]))
            } else {
                format!("fd {}, request {request:#x}", as_c_int(args[0]))
            }
        }
        "prctl" => match as_c_int(args[0]) {
            libc::PR_SET_DUMPABLE => format!("PR_SET_DUMPABLE {}", args[1]),
            option => format!("option {option}"),
        },
        "personality" => format!("persona {:#x}", args[0]),
        "mount" => format!("flags {:#x}", args[3]),
        "umount2" => format!("flags {:#x}", args[1]),
        "mknod" => format!("mode {:#o}", args[1] & 0xffff_ffff),
        "mknodat" => format!("mode {:#o}", args[2] & 0xffff_ffff),
        "ptrace" => format!("request {}, pid {}", as_c_int(args[0]), as_c_int(args[1])),
        "process_vm_readv" | "process_vm_writev" | "pidfd_getfd" => {
            format!("target {}", as_c_int(args[0]))
        }
        "bpf" => format!("command {}", as_c_int(args[0])),
        _ => String::new(),
    }
}

/// The 32-bit value the kernel reads from a register for an `int` parameter: the upper
/// half is dropped, exactly as `SYSCALL_DEFINE` does.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn as_c_int(register: u64) -> libc::c_int {
    register as u32 as libc::c_int
}

fn family_name(family: libc::c_int) -> String {
    let name = match family {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        libc::AF_PACKET => "AF_PACKET",
        libc::AF_KEY => "AF_KEY",
        libc::AF_BRIDGE => "AF_BRIDGE",
        libc::AF_CAN => "AF_CAN",
        libc::AF_TIPC => "AF_TIPC",
        libc::AF_BLUETOOTH => "AF_BLUETOOTH",
        libc::AF_ALG => "AF_ALG",
        libc::AF_VSOCK => "AF_VSOCK",
        libc::AF_XDP => "AF_XDP",
        libc::AF_RDS => "AF_RDS",
        other => return format!("family {other}"),
    };
    name.to_owned()
}

fn socket_type(raw: libc::c_int) -> String {
    let mut text = match raw & 0xf {
        libc::SOCK_STREAM => "SOCK_STREAM".to_owned(),
        libc::SOCK_DGRAM => "SOCK_DGRAM".to_owned(),
        libc::SOCK_RAW => "SOCK_RAW".to_owned(),
        libc::SOCK_RDM => "SOCK_RDM".to_owned(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".to_owned(),
        other => format!("{other}"),
    };
    for (flag, name) in [
        (libc::SOCK_NONBLOCK, "SOCK_NONBLOCK"),
        (libc::SOCK_CLOEXEC, "SOCK_CLOEXEC"),
    ] {
        if raw & flag != 0 {
            text.push('|');
            text.push_str(name);
        }
    }
    text
}

const CLONE_FLAG_NAMES: [(libc::c_int, &str); 24] = [
    (libc::CLONE_VM, "CLONE_VM"),
    (libc::CLONE_FS, "CLONE_FS"),
    (libc::CLONE_FILES, "CLONE_FILES"),
    (libc::CLONE_SIGHAND, "CLONE_SIGHAND"),
    (libc::CLONE_PIDFD, "CLONE_PIDFD"),
    (libc::CLONE_PTRACE, "CLONE_PTRACE"),
    (libc::CLONE_VFORK, "CLONE_VFORK"),
    (libc::CLONE_PARENT, "CLONE_PARENT"),
    (libc::CLONE_THREAD, "CLONE_THREAD"),
    (libc::CLONE_NEWNS, "CLONE_NEWNS"),
    (libc::CLONE_SYSVSEM, "CLONE_SYSVSEM"),
    (libc::CLONE_SETTLS, "CLONE_SETTLS"),
    (libc::CLONE_PARENT_SETTID, "CLONE_PARENT_SETTID"),
    (libc::CLONE_CHILD_CLEARTID, "CLONE_CHILD_CLEARTID"),
    (libc::CLONE_DETACHED, "CLONE_DETACHED"),
    (libc::CLONE_UNTRACED, "CLONE_UNTRACED"),
    (libc::CLONE_CHILD_SETTID, "CLONE_CHILD_SETTID"),
    (libc::CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
    (libc::CLONE_NEWUTS, "CLONE_NEWUTS"),
    (libc::CLONE_NEWIPC, "CLONE_NEWIPC"),
    (libc::CLONE_NEWUSER, "CLONE_NEWUSER"),
    (libc::CLONE_NEWPID, "CLONE_NEWPID"),
    (libc::CLONE_NEWNET, "CLONE_NEWNET"),
    (libc::CLONE_IO, "CLONE_IO"),
];

/// `CLONE_*` names joined by `|`, then unknown bits in hex. For `clone`, the low byte is
/// the signal sent to the parent when the child exits (`SIGCHLD` for `fork`).
fn clone_flags(flags: u64, with_exit_signal: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = flags;
    for (flag, name) in CLONE_FLAG_NAMES {
        let bit = int_bits(flag);
        if flags & bit != 0 {
            parts.push(name.to_owned());
            rest &= !bit;
        }
    }
    if with_exit_signal {
        let signal = rest & 0xff;
        rest &= !0xff;
        if signal != 0 {
            let name = i32::try_from(signal)
                .ok()
                .and_then(|signal| Signal::try_from(signal).ok())
                .map_or_else(
                    || format!("signal {signal}"),
                    |signal| signal.as_str().to_owned(),
                );
            parts.push(name);
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        return "0".to_owned();
    }
    parts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(value: libc::c_int) -> u64 {
        int_bits(value)
    }

    #[test]
    fn socket_names_its_family_and_type() {
        let args = [
            register(libc::AF_INET6),
            register(libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
            0,
            0,
            0,
            0,
        ];
        assert_eq!(
            describe("socket", &args),
            "domain AF_INET6, type SOCK_STREAM|SOCK_CLOEXEC"
        );
    }

    #[test]
    fn upper_register_bits_are_dropped_like_the_kernel_does() {
        let args = [
            (1 << 32) | register(libc::AF_INET),
            register(libc::SOCK_DGRAM),
            0,
            0,
            0,
            0,
        ];
        assert_eq!(describe("socket", &args), "domain AF_INET, type SOCK_DGRAM");
    }

    #[test]
    fn clone_names_flags_and_exit_signal() {
        let mut args = [0; 6];
        args[usize::try_from(CLONE_FLAGS_ARG).unwrap()] =
            register(libc::CLONE_NEWUSER) | register(libc::SIGCHLD);
        assert_eq!(describe("clone", &args), "flags CLONE_NEWUSER|SIGCHLD");
        assert_eq!(
            describe("unshare", &[register(libc::CLONE_NEWNET), 0, 0, 0, 0, 0]),
            "flags CLONE_NEWNET"
        );
        assert_eq!(describe("unshare", &[0; 6]), "flags 0");
    }

    #[test]
    fn tiocsti_is_named() {
        let args = [0, TIOCSTI, 0, 0, 0, 0];
        assert_eq!(describe("ioctl", &args), "fd 0, request TIOCSTI");
    }

    #[test]
    fn calls_without_telling_arguments_have_no_detail() {
        assert_eq!(describe("execve", &[0; 6]), "");
    }
}
