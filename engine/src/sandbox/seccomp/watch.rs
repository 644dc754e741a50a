//! An inotify watch the engine adds for a worker's thread, on the very file it checked.
//!
//! Landlock does not cover inotify, so for `inotify_add_watch` the engine is the only
//! check. Letting the call through after reading its path (as for the file calls Landlock
//! checks again) would be no check at all: a second thread of the plugin rewrites the path
//! between the engine's read and the kernel's (measured: watches on `/tmp` rewritten to
//! `/var/tmp` landed on `/var/tmp` and `/var` within half a second, every run). So the
//! engine makes the call itself, on what it read once and judged:
//!
//! - it takes a duplicate of the caller's inotify descriptor (`pidfd_getfd`; the watch is
//!   then the caller's, charged to its instance and its uid's watch limit);
//! - opens the judged path in the caller's own mount namespace (through
//!   `/proc/<pid>/root`, where its private `/tmp` is) without following any link: the path
//!   arrives with its links already resolved, so a link found now was put there since
//!   (the call fails with `ELOOP`, as a race lost);
//! - adds the watch on that file with the worker's host uid and gid for the kernel's
//!   permission check (a thread of its own switches its file-system identity and ends),
//!   and answers the call with the watch descriptor.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

/// The host identity a worker runs as: what the kernel checks a watch's read permission
/// against when the engine adds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerIdentity {
    pub uid: u32,
    pub gid: u32,
}

/// Adds the watch thread `pid` asked for with `inotify_add_watch(args[0], …, args[2])` on
/// `path` (absolute, links resolved, as the caller's mount namespace names it): the watch
/// descriptor, or the errno the caller gets. `caller_still_waits` is asked once the
/// caller's process is held, so that a pid reused since cannot be acted on.
pub(super) fn add_for_caller(
    pid: u32,
    args: &[u64; 6],
    path: &Path,
    identity: WorkerIdentity,
    caller_still_waits: impl FnOnce() -> bool,
) -> Result<i32, Errno> {
    let process = pidfd_of_process(pid)?;
    let root = open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if !caller_still_waits() {
        return Err(Errno::ESRCH);
    }
    // The kernel reads the descriptor and the mask as 32-bit values.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let (fd, mask) = (args[0] as u32 as i32, args[2] as u32);
    let instance = duplicate_descriptor(&process, fd)?;
    // The caller's kernel answers EINVAL for a descriptor that is not an inotify instance.
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", instance.as_raw_fd()))
        .map_err(|_| Errno::EBADF)?;
    if kind != Path::new("anon_inode:inotify") {
        return Err(Errno::EINVAL);
    }
    let follows_last = mask & libc::IN_DONT_FOLLOW == 0;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                become_worker_for_files(identity)?;
                let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
                if !follows_last {
                    flags |= OFlag::O_NOFOLLOW;
                }
                let target = openat2(
                    &root,
                    relative,
                    OpenHow::new()
                        .flags(flags)
                        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS),
                )?;
                // The opened file by its descriptor: the kernel follows this one link
                // to exactly that file (the link itself, for IN_DONT_FOLLOW), so the flag
                // has done its work and must not make the watch land on the link in /proc.
                let by_descriptor = format!("/proc/self/fd/{}\0", target.as_raw_fd());
                // SAFETY: `instance` and `target` are descriptors this function owns;
                // `by_descriptor` is NUL-terminated and outlives the call, which only reads it.
                let watch = unsafe {
                    libc::inotify_add_watch(
                        instance.as_fd().as_raw_fd(),
                        by_descriptor.as_ptr().cast::<libc::c_char>(),
                        mask & !libc::IN_DONT_FOLLOW,
                    )
                };
                Errno::result(watch)
            })
            .join()
            .unwrap_or(Err(Errno::EIO))
    })
}

/// A pidfd of the process thread `pid` belongs to (its thread-group leader).
fn pidfd_of_process(pid: u32) -> Result<OwnedFd, Errno> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| Errno::ESRCH)?;
    let leader: i32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse().ok())
        .ok_or(Errno::ESRCH)?;
    crate::sandbox::process::open_pidfd(nix::unistd::Pid::from_raw(leader))
        .map_err(|error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::ESRCH)))
}

/// A duplicate of descriptor `fd` of the process behind `process` (`pidfd_getfd`, Linux
/// 5.6), close-on-exec.
fn duplicate_descriptor(process: &OwnedFd, fd: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_getfd(2) takes a pidfd, a descriptor number and flags by value and
    // returns a new descriptor or -1; it reads and writes none of this process's memory.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, process.as_raw_fd(), fd, 0) };
    let raw = Errno::result(raw)?;
    let raw = i32::try_from(raw).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel has just installed this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Gives the calling thread — only it: the kernel keeps credentials per thread, and these
/// are raw system calls, not libc's process-wide wrappers — the worker's identity for
/// file-system checks: its uid and gid and no supplementary groups. Leaving uid 0 for the
/// file-system checks also clears the capabilities that bypass them (`CAP_DAC_OVERRIDE`,
/// `CAP_DAC_READ_SEARCH`, …). The thread must end afterwards.
fn become_worker_for_files(identity: WorkerIdentity) -> Result<(), Errno> {
    let raw = |call: libc::c_long, id: u32| {
        // SAFETY: setfsuid(2) and setfsgid(2) take an id by value and touch no memory.
        unsafe { libc::syscall(call, id) }
    };
    // SAFETY: setgroups(2) with a count of 0 reads no memory.
    Errno::result(unsafe {
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
    })?;
    raw(libc::SYS_setfsgid, identity.gid);
    raw(libc::SYS_setfsuid, identity.uid);
    // Both calls answer the previous id whatever happens; an invalid id (-1) changes
    // nothing, so it reads the current one back.
    let now = (
        raw(libc::SYS_setfsuid, u32::MAX),
        raw(libc::SYS_setfsgid, u32::MAX),
    );
    if now == (i64::from(identity.uid), i64::from(identity.gid)) {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}
