//! Process-level confinement steps, run by the worker (`plugboard-host`) on itself, in the
//! order DESIGN.md gives: uid switch, parent-death signal, namespaces (user first), the
//! fork into the new pid namespace, mounts, rlimits, not dumpable, no_new_privs and the
//! capability drop. Landlock and seccomp are in their own modules.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use caps::CapSet;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Pid, Uid, fork, getppid, setgroups, sethostname, setresgid, setresuid,
};

/// A confinement step that failed, naming the step and the kernel's reason.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct ConfineError {
    pub step: &'static str,
    pub reason: String,
}

fn fail(step: &'static str) -> impl FnOnce(nix::Error) -> ConfineError {
    move |err| ConfineError {
        step,
        reason: err.to_string(),
    }
}

/// Takes ownership of a descriptor the engine passed at a fixed number, after checking it
/// is open.
pub fn adopt_inherited_fd(fd: RawFd, what: &'static str) -> Result<OwnedFd, ConfineError> {
    // F_GETFD fails with EBADF for a closed descriptor, without touching anything.
    // SAFETY: plain fcntl query on an integer descriptor; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ConfineError {
            step: what,
            reason: format!("descriptor {fd} was not passed by the engine"),
        });
    }
    // SAFETY: the descriptor is open (checked above) and, by the spawn protocol, passed to
    // this process for it alone; nothing else in the worker owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor that arrived with `SCM_RIGHTS` (used by `ipc`; the
/// engine keeps its `unsafe` in `sandbox` and `loader`).
pub fn adopt_received_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` was installed in this process's descriptor table by the kernel during
    // the `recvmsg` that just returned it (SCM_RIGHTS); nothing else in the process has
    // seen the number, so this `OwnedFd` is its only owner and closes it exactly once.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// `SO_PASSRIGHTS` (Linux 6.16, `asm-generic/socket.h`; not in the libc crate yet).
const SO_PASSRIGHTS: libc::c_int = 83;

/// A pidfd for `pid` (Linux 5.3 and later): it becomes readable when the process exits,
/// so its end can be polled beside its pipes.
pub fn open_pidfd(pid: Pid) -> std::io::Result<OwnedFd> {
    open_pidfd_with(pid, 0)
}

/// `PIDFD_THREAD` (Linux 6.9, `O_EXCL`'s value): a pidfd of one thread, whose own
/// descriptor table `pidfd_getfd` then reads.
pub const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;

/// [`open_pidfd`] with `flags` (`PIDFD_THREAD` for a thread that is not its process's
/// leader).
pub fn open_pidfd_with(pid: Pid, flags: libc::c_long) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new descriptor or
    // -1; it reads and writes none of this process's memory.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), flags) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let raw = RawFd::try_from(raw).map_err(|_| std::io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel has just returned this descriptor to us, so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A process the engine may kill: through a pidfd, so that once the process is reaped a
/// kill reaches nothing — never another process that was given its pid since.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: Pid,
    /// `None` on kernels without pidfds (before 5.3): then by pid, as before them.
    pidfd: Option<OwnedFd>,
}

impl ProcessHandle {
    /// Opens a handle on `pid`, which must not have been reaped yet: an unreaped child of
    /// this process, or a process known to be alive.
    pub fn open(pid: Pid) -> Self {
        Self {
            pid,
            pidfd: open_pidfd(pid).ok(),
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether signals go through a pidfd (they do on Linux 5.3 and later).
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// Sends SIGKILL. Once the process has been reaped this fails with `ESRCH` and
    /// reaches nothing (given a pidfd).
    pub fn kill(&self) -> std::io::Result<()> {
        match &self.pidfd {
            Some(pidfd) => {
                // SAFETY: pidfd_send_signal(2) takes a descriptor, a signal number, a null
                // `siginfo_t` pointer (the kernel then fills the info in itself) and flags,
                // all by value; it reads and writes none of this process's memory.
                let sent = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
                if sent < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
            None => nix::sys::signal::kill(self.pid, Signal::SIGKILL).map_err(Into::into),
        }
    }
}

/// Makes the Unix socket `fd` refuse descriptors: from now on a peer's send with
/// `SCM_RIGHTS` fails (`EPERM`) and no descriptor is ever queued for this socket, so it
/// can be read with a plain `recv`. Fails on kernels before 6.16 (`ENOPROTOOPT`).
pub fn refuse_descriptors(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let off: libc::c_int = 0;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(std::io::Error::other)?;
    // SAFETY: `fd` is an open descriptor for the duration of the call (borrowed); the
    // option value points to a live c_int and `len` is its size; the kernel only reads it.
    let result = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&raw const off).cast(),
            len,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A close-on-exec duplicate of `fd` numbered `min` or higher (the engine moves the
/// descriptors it passes to a worker clear of the numbers they are dup2'd onto).
pub fn duplicate_at_or_above(fd: BorrowedFd<'_>, min: RawFd) -> std::io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))
        .map_err(std::io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC just created `raw`; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Closes descriptors `first..=last` whose owners will never run their destructors (the
/// intermediary worker process never returns).
pub fn close_descriptor_range(first: RawFd, last: RawFd) {
    let (first, last) = (
        u32::try_from(first).unwrap_or(u32::MAX),
        u32::try_from(last).unwrap_or(0),
    );
    // SAFETY: the caller names descriptors no live Rust object will use or close again.
    unsafe { libc::close_range(first, last, 0) };
}

/// Closes every descriptor above `highest_kept`: whatever else was inherited is a way out.
pub fn close_descriptors_above(highest_kept: RawFd) -> Result<(), ConfineError> {
    let first = u32::try_from(highest_kept + 1).unwrap_or(u32::MAX);
    // SAFETY: closes descriptors this process does not use (only 0..=highest_kept are in
    // use at this point of the worker's start); no Rust object owns any of them.
    let result = unsafe { libc::close_range(first, u32::MAX, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(ConfineError {
            step: "close inherited descriptors",
            reason: std::io::Error::last_os_error().to_string(),
        })
    }
}

/// Switches to an unprivileged host uid/gid with no supplementary groups.
pub fn switch_user(uid: u32, gid: u32) -> Result<(), ConfineError> {
    setgroups(&[]).map_err(fail("drop supplementary groups"))?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setresgid(gid, gid, gid).map_err(fail("switch gid"))?;
    setresuid(uid, uid, uid).map_err(fail("switch uid"))?;
    Ok(())
}

/// Dies with SIGKILL when the parent (thread) goes away. Set after the uid switch, which
/// clears it; and checks the parent did not die before the call.
pub fn die_with_parent(expected_parent: Pid) -> Result<(), ConfineError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(fail("parent-death signal"))?;
    if getppid() != expected_parent {
        return Err(ConfineError {
            step: "parent-death signal",
            reason: "the engine exited before the worker was confined".to_owned(),
        });
    }
    Ok(())
}

fn write_proc_file(path: &str, contents: &str, step: &'static str) -> Result<(), ConfineError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|err| ConfineError {
            step,
            reason: format!("{path}: {err}"),
        })
}

/// Enters a new user namespace in which the worker keeps its (unprivileged) host ids: it
/// gains capabilities over the namespaces it creates next, and nothing on the host.
pub fn enter_user_namespace(uid: u32, gid: u32) -> Result<(), ConfineError> {
    // The uid switch made the process non-dumpable, which makes its /proc files root's:
    // it could not write its own id maps. Dumpable again until `set_not_dumpable`.
    prctl::set_dumpable(true).map_err(fail("user namespace: dumpable for the id maps"))?;
    unshare(CloneFlags::CLONE_NEWUSER).map_err(fail("user namespace"))?;
    write_proc_file("/proc/self/setgroups", "deny", "user namespace: setgroups")?;
    write_proc_file(
        "/proc/self/uid_map",
        &format!("{uid} {uid} 1\n"),
        "user namespace: uid_map",
    )?;
    write_proc_file(
        "/proc/self/gid_map",
        &format!("{gid} {gid} 1\n"),
        "user namespace: gid_map",
    )?;
    Ok(())
}

/// Enters new mount, ipc, uts, cgroup and pid namespaces, and a new network namespace
/// (only `lo`) unless the plugin may use the network. The pid namespace applies to the
/// children: the caller forks next.
pub fn enter_namespaces(network: bool) -> Result<(), ConfineError> {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
        | CloneFlags::CLONE_NEWPID;
    if !network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(fail("namespaces"))
}

/// Which side of the fork into the new pid namespace this is.
#[derive(Debug)]
pub enum ForkSide {
    /// The intermediary: waits for the sandboxed child and mirrors its end.
    Parent { child: Pid },
    /// Pid 1 of the new pid namespace: goes on to load the plugin.
    Child,
}

/// Forks once into the new pid namespace.
pub fn fork_into_pid_namespace() -> Result<ForkSide, ConfineError> {
    // SAFETY: the worker is single-threaded at this point (no thread has been started
    // since exec), so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(fail("fork into the pid namespace"))? {
        ForkResult::Parent { child } => Ok(ForkSide::Parent { child }),
        ForkResult::Child => Ok(ForkSide::Child),
    }
}

/// The intermediary's last act: waits for the sandboxed child and ends the same way, so
/// the engine sees the plugin's exit code or signal as the worker's.
///
/// Pid 1 of a pid namespace cannot die of a signal other than SIGKILL (signals it sends
/// itself, and signals from outside without a handler, are dropped), so a plugin's
/// `abort()` would otherwise end as a SIGSEGV (glibc's last resort). The child's SIGABRT
/// handler (see [`forward_self_aborts`]) writes the signal to `aborts`; the intermediary
/// then kills the child and ends itself with that signal, which is what the engine sees.
pub fn mirror_child_exit(child: Pid, aborts: &OwnedFd) -> ! {
    let mut byte = [0u8; 1];
    let asked = loop {
        match nix::unistd::read(aborts, &mut byte) {
            Err(nix::Error::EINTR) => {}
            // Plugin code can write here too: only an abort is taken from it, and only as
            // the label of a death the intermediary itself then causes.
            Ok(1) => {
                break Signal::try_from(i32::from(byte[0]))
                    .ok()
                    .filter(|sig| *sig == Signal::SIGABRT);
            }
            // End of file: the child is gone without asking.
            _ => break None,
        }
    };
    if asked.is_some() {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => end_with_signal(asked.unwrap_or(sig)),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => std::process::exit(125),
        }
    }
}

/// Ends this process with `sig`, so the engine sees the same signal the plugin died of.
fn end_with_signal(sig: Signal) -> ! {
    // SAFETY: resetting a signal to its default disposition installs no Rust handler;
    // nothing else in this single-threaded process relies on it.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    let _ = nix::sys::signal::raise(sig);
    std::process::exit(128 + sig as i32);
}

/// Where the SIGABRT handler of pid 1 reports to its intermediary (-1: nowhere).
static ABORT_REPORT_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn report_abort(signal: libc::c_int) {
    let fd = ABORT_REPORT_FD.load(std::sync::atomic::Ordering::SeqCst);
    let byte = u8::try_from(signal).unwrap_or(0);
    // SAFETY: write(2) and pause(2) are async-signal-safe; `byte` lives on this stack for
    // the call; a bad `fd` only makes write fail.
    unsafe {
        libc::write(fd, (&raw const byte).cast(), 1);
        loop {
            libc::pause();
        }
    }
}

/// In pid 1 of the worker's namespace: turns a self-raised SIGABRT (as `abort()` sends)
/// into a report to the intermediary, which delivers the signal from outside. The
/// descriptor stays open for the life of the process.
pub fn forward_self_aborts(report: OwnedFd) -> Result<(), ConfineError> {
    use std::os::fd::IntoRawFd;
    ABORT_REPORT_FD.store(report.into_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    let action = nix::sys::signal::SigAction::new(
        SigHandler::Handler(report_abort),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: `report_abort` only calls async-signal-safe functions and reads an atomic.
    unsafe { nix::sys::signal::sigaction(Signal::SIGABRT, &action) }
        .map_err(fail("abort forwarding"))?;
    Ok(())
}

/// Mounts for the sandboxed child: nothing propagates back to the host, a fresh `/proc`
/// for the new pid namespace, and a private size-limited `/tmp` that disappears with it.
/// Returns notes on what could not be mounted (not fatal: the namespaces still hold).
pub fn set_up_mounts(tmpfs_bytes: u64) -> Result<Vec<String>, ConfineError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail("mount namespace: make / private"))?;
    let mut notes = Vec::new();
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(err) = mount(Some("proc"), "/proc", Some("proc"), nosuid, None::<&str>) {
        notes.push(format!("/proc of the new pid namespace not mounted: {err}"));
    }
    let options = format!("size={tmpfs_bytes},mode=0700");
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        nosuid,
        Some(options.as_str()),
    )
    .map_err(fail("private /tmp"))?;
    Ok(notes)
}

/// Works from `/`, not from the directory the engine was started in.
pub fn leave_working_directory() -> Result<(), ConfineError> {
    nix::unistd::chdir("/").map_err(fail("working directory /"))
}

pub fn set_hostname(name: &str) -> Result<(), ConfineError> {
    sethostname(name).map_err(fail("hostname"))
}

/// Open files, no core dumps, and an address-space backstop far above the memory limit
/// (the cgroup enforces memory; this only stops runaway reservations).
pub fn apply_rlimits(max_open_files: u64, address_space_bytes: u64) -> Result<(), ConfineError> {
    setrlimit(Resource::RLIMIT_NOFILE, max_open_files, max_open_files)
        .map_err(fail("rlimit: open files"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(fail("rlimit: core"))?;
    setrlimit(
        Resource::RLIMIT_AS,
        address_space_bytes,
        address_space_bytes,
    )
    .map_err(fail("rlimit: address space"))?;
    Ok(())
}

/// Not dumpable: no core files, no ptrace attach, `/proc/<pid>` owned by root.
pub fn set_not_dumpable() -> Result<(), ConfineError> {
    prctl::set_dumpable(false).map_err(fail("not dumpable"))
}

pub fn set_no_new_privs() -> Result<(), ConfineError> {
    prctl::set_no_new_privs().map_err(fail("no_new_privs"))
}

/// Drops every capability: bounding set first (needs CAP_SETPCAP, which goes last),
/// then ambient, inheritable, permitted and effective.
pub fn drop_capabilities() -> Result<(), ConfineError> {
    let caps_error = |step: &'static str| {
        move |err: caps::errors::CapsError| ConfineError {
            step,
            reason: err.to_string(),
        }
    };
    caps::clear(None, CapSet::Bounding).map_err(caps_error("capabilities: bounding set"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_error("capabilities: ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_error("capabilities: inheritable"))?;
    caps::clear(None, CapSet::Effective).map_err(caps_error("capabilities: effective"))?;
    caps::clear(None, CapSet::Permitted).map_err(caps_error("capabilities: permitted"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_handle_kills_its_process_and_after_the_reap_reaches_nothing() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let pid = Pid::from_raw(i32::try_from(sleeper.id()).unwrap());
        let handle = ProcessHandle::open(pid);
        // This kernel has pidfds; without one a reaped pid could be another process's.
        assert!(handle.has_pidfd());
        handle.kill().expect("the process is alive");
        let status = sleeper.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        // Reaped: the pidfd refers to that process, gone for good, whoever holds its
        // pid by now.
        let after = handle.kill().expect_err("the process is reaped");
        assert_eq!(after.raw_os_error(), Some(libc::ESRCH));
    }
}
