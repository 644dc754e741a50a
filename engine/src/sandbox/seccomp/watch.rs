//! An inotify watch the engine adds for a worker's thread, on the very file it checked.
//!
//! Landlock does not cover inotify, so for `inotify_add_watch` the engine is the only
//! check. Letting the call through after reading its path (as for the file calls Landlock
//! checks again) would be no check at all: a second thread of the plugin rewrites the path
//! between the engine's read and the kernel's (measured: watches on `/tmp` rewritten to
//! `/var/tmp` landed on `/var/tmp` and `/var` within half a second, every run). So the
//! engine makes the call itself, on what it read once and judged:
//!
//! - it takes a duplicate of the calling thread's inotify descriptor (`pidfd_getfd` on a
//!   pidfd of that thread: a thread may have a descriptor table of its own); the watch is
//!   then the caller's, charged to its instance and its uid's watch limit;
//! - on a thread of its own whose file-system identity is the caller's (its fsuid, fsgid
//!   and groups, read from `/proc`), it opens the path twice in the caller's mount
//!   namespace (through `/proc/<pid>/root`): as the caller named it, resolved by the kernel
//!   as it would for the caller (links, `..`, a trailing `/`, search permission on every
//!   directory on the way), and as the engine judged it, its links resolved already and
//!   none followed now. Only when both are the same file is the watch added, on it, with
//!   the caller's identity for the kernel's read-permission check; a difference (a link
//!   swapped in between, a directory the caller may not search) refuses it;
//! - it answers the call with the watch descriptor or the kernel's error.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
use nix::sys::stat::Mode;

/// A thread's identity for file-system checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FsIdentity {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// Adds the watch thread `pid` asked for with `inotify_add_watch(args[0], named, args[2])`,
/// `named` being the path as the caller gave it (made absolute) and `judged` what the
/// engine judged it to reach (absolute, its links resolved), both as the caller's mount
/// namespace names them: the watch descriptor, or the errno the caller gets.
/// `caller_still_waits` is asked once the caller is held, so that a pid reused since
/// cannot be acted on.
pub(super) fn add_for_caller(
    pid: u32,
    args: &[u64; 6],
    named: &Path,
    judged: &Path,
    caller_still_waits: impl FnOnce() -> bool,
) -> Result<i32, Errno> {
    let thread = pidfd_of_thread(pid)?;
    let root = open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let identity = identity_of(pid)?;
    if !caller_still_waits() {
        return Err(Errno::ESRCH);
    }
    // The kernel reads the descriptor and the mask as 32-bit values.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let (fd, mask) = (args[0] as u32 as i32, args[2] as u32);
    let instance = duplicate_descriptor(&thread, fd)?;
    // The caller's kernel answers EINVAL for a descriptor that is not an inotify instance.
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", instance.as_raw_fd()))
        .map_err(|_| Errno::EBADF)?;
    if kind != Path::new("anon_inode:inotify") {
        return Err(Errno::EINVAL);
    }
    std::thread::scope(|scope| {
        let watching = std::thread::Builder::new()
            .name("pb-watch".to_owned())
            .spawn_scoped(scope, || {
                take_identity(&identity)?;
                watch_as_caller(&root, &instance, named, judged, mask)
            });
        match watching {
            Ok(watching) => watching.join().unwrap_or(Err(Errno::EIO)),
            // No thread to be the caller on: the kernel's answer for a lack of resources.
            Err(_) => Err(Errno::EAGAIN),
        }
    })
}

/// The watch, on a thread that has the caller's file-system identity: see the module's
/// description.
fn watch_as_caller(
    root: &OwnedFd,
    instance: &OwnedFd,
    named: &Path,
    judged: &Path,
    mask: u32,
) -> Result<i32, Errno> {
    // Relative to the root, byte for byte: `Path::strip_prefix` would drop a trailing
    // `/`, which makes the kernel follow a link in the last name.
    let inside = |path: &'_ Path| -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt as _;
        let bytes = path.as_os_str().as_bytes();
        let start = bytes.iter().take_while(|&&byte| byte == b'/').count();
        if start == bytes.len() {
            ".".into()
        } else {
            std::ffi::OsStr::from_bytes(&bytes[start..]).into()
        }
    };
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if mask & libc::IN_DONT_FOLLOW != 0 {
        flags |= OFlag::O_NOFOLLOW;
    }
    if mask & libc::IN_ONLYDIR != 0 {
        flags |= OFlag::O_DIRECTORY;
    }
    // As the caller named it, the kernel walking it for the caller: its errors are the
    // caller's (EACCES for a directory it may not search, ENOENT, ENOTDIR, ELOOP).
    let reached = openat2(
        root,
        &inside(named),
        OpenHow::new()
            .flags(flags)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )?;
    // As the engine judged it: no link followed now, so none swapped in since can lead
    // elsewhere.
    let checked = openat2(
        root,
        &inside(judged),
        OpenHow::new()
            .flags(flags | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
    .map_err(|_| Errno::EACCES)?;
    let file = |fd: &OwnedFd| {
        std::fs::File::from(fd.try_clone().ok()?)
            .metadata()
            .ok()
            .map(|meta| (meta.dev(), meta.ino()))
    };
    if file(&reached).is_none() || file(&reached) != file(&checked) {
        return Err(Errno::EACCES);
    }
    // The file by its descriptor: the kernel follows this one link to exactly that file
    // (the link itself, for IN_DONT_FOLLOW), so the flag has done its work and must not
    // make the watch land on the link in /proc.
    let by_descriptor = format!("/proc/self/fd/{}\0", checked.as_raw_fd());
    // SAFETY: `instance` and `checked` are descriptors this function holds; `by_descriptor`
    // is NUL-terminated and outlives the call, which only reads it.
    let watch = unsafe {
        libc::inotify_add_watch(
            instance.as_fd().as_raw_fd(),
            by_descriptor.as_ptr().cast::<libc::c_char>(),
            mask & !libc::IN_DONT_FOLLOW,
        )
    };
    Errno::result(watch)
}

/// A pidfd of thread `tid`: of the thread itself where the kernel has them, else of its
/// process (whose descriptor table is the thread's unless it unshared its own).
fn pidfd_of_thread(tid: u32) -> Result<OwnedFd, Errno> {
    use crate::sandbox::process::{PIDFD_THREAD, open_pidfd, open_pidfd_with};
    let errno =
        |error: std::io::Error| Errno::from_raw(error.raw_os_error().unwrap_or(libc::ESRCH));
    let tid = i32::try_from(tid).map_err(|_| Errno::ESRCH)?;
    if let Ok(pidfd) = open_pidfd_with(nix::unistd::Pid::from_raw(tid), PIDFD_THREAD) {
        return Ok(pidfd);
    }
    let status =
        std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(|_| Errno::ESRCH)?;
    let leader: i32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse().ok())
        .ok_or(Errno::ESRCH)?;
    open_pidfd(nix::unistd::Pid::from_raw(leader)).map_err(errno)
}

/// Thread `tid`'s file-system identity, as the engine's user namespace numbers it (the
/// worker's host uid, not the one its own namespace maps): the fourth field of `Uid:` and
/// `Gid:` (fsuid, fsgid) and `Groups:`.
fn identity_of(tid: u32) -> Result<FsIdentity, Errno> {
    let status =
        std::fs::read_to_string(format!("/proc/{tid}/status")).map_err(|_| Errno::ESRCH)?;
    let field = |name: &str| -> Option<Vec<u32>> {
        let values = status.lines().find_map(|line| line.strip_prefix(name))?;
        values
            .split_whitespace()
            .map(|value| value.parse().ok())
            .collect()
    };
    let fourth = |name: &str| field(name).and_then(|ids| ids.get(3).copied());
    Ok(FsIdentity {
        uid: fourth("Uid:").ok_or(Errno::ESRCH)?,
        gid: fourth("Gid:").ok_or(Errno::ESRCH)?,
        groups: field("Groups:").unwrap_or_default(),
    })
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
/// are raw system calls, not libc's process-wide wrappers — `identity` for file-system
/// checks; nothing when it has it already (an engine not running as root). Leaving uid 0
/// for the file-system checks also clears the capabilities that bypass them
/// (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, …). The thread must end afterwards.
fn take_identity(identity: &FsIdentity) -> Result<(), Errno> {
    let raw = |call: libc::c_long, id: u32| {
        // SAFETY: setfsuid(2) and setfsgid(2) take an id by value and touch no memory.
        unsafe { libc::syscall(call, id) }
    };
    // An invalid id (-1) changes nothing and answers the current one.
    let now = |call| raw(call, u32::MAX);
    let groups: Vec<u32> = nix::unistd::getgroups()
        .map(|groups| groups.into_iter().map(nix::unistd::Gid::as_raw).collect())
        .unwrap_or_default();
    let mut sorted_groups = groups.clone();
    sorted_groups.sort_unstable();
    let mut wanted_groups = identity.groups.clone();
    wanted_groups.sort_unstable();
    if sorted_groups != wanted_groups {
        let count = libc::size_t::try_from(identity.groups.len()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: setgroups(2) reads `count` gids from the pointer, which points to that
        // many live values; as a raw system call it changes this thread's groups alone
        // (libc's wrapper would change every thread's).
        Errno::result(unsafe {
            libc::syscall(libc::SYS_setgroups, count, identity.groups.as_ptr())
        })?;
    }
    if now(libc::SYS_setfsgid) != i64::from(identity.gid) {
        raw(libc::SYS_setfsgid, identity.gid);
    }
    if now(libc::SYS_setfsuid) != i64::from(identity.uid) {
        raw(libc::SYS_setfsuid, identity.uid);
    }
    if (now(libc::SYS_setfsuid), now(libc::SYS_setfsgid))
        == (i64::from(identity.uid), i64::from(identity.gid))
    {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}
