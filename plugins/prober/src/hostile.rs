//! What a hostile plugin can do inside its worker: write to the worker's IPC socket
//! directly (the engine must treat it as a protocol violation, kill the worker and go on);
//! make a system call of another ABI; watch a path with inotify, also while a second
//! thread rewrites the path.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

/// The descriptor number the worker's IPC socket has (see `plugboard-host`).
const IPC_SOCKET_FD: i32 = 3;

pub fn write_to_ipc_socket(bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: descriptor 3 is the worker's IPC socket for the life of the process; the
    // `ManuallyDrop` keeps this borrowed view from closing it.
    let mut socket = ManuallyDrop::new(unsafe { File::from_raw_fd(IPC_SOCKET_FD) });
    socket.write_all(bytes)
}

/// `getpid` by its x32 number: a call of another ABI, which the worker's seccomp filter
/// answers by killing the process (it cannot name it, so it lets nothing through).
pub fn foreign_abi_syscall() -> std::io::Result<i64> {
    #[cfg(target_arch = "x86_64")]
    {
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        // SAFETY: getpid takes no arguments and touches no memory; on a kernel without x32
        // it fails with ENOSYS.
        let result = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
        if result < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(result)
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Watches `path` with inotify, which Landlock does not cover: the engine must judge it.
/// `follow`: whether a link as the last name is followed (else `IN_DONT_FOLLOW`). The
/// inotify descriptor stays open so that the watch can be read from outside
/// (`/proc/<worker>/fdinfo/<fd>`): `(fd, watch descriptor)`.
pub fn watch_path(path: &str, follow: bool) -> std::io::Result<(i32, i32)> {
    let path = std::ffi::CString::new(path)?;
    // SAFETY: inotify_init1 takes no pointers; the descriptor is left open on purpose.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mask = if follow {
        libc::IN_CREATE
    } else {
        libc::IN_CREATE | libc::IN_DONT_FOLLOW
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `fd` is ours.
    let watch = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
    if watch < 0 {
        let error = std::io::Error::last_os_error();
        // SAFETY: `fd` is the descriptor opened above, closed once.
        unsafe { libc::close(fd) };
        return Err(error);
    }
    Ok((fd, watch))
}

/// Adds inotify watches for `duration`, all from one buffer that a second thread keeps
/// rewriting between `granted` and `refused`: a check of the path that the kernel does not
/// repeat (the engine reads it, then lets the call through) loses this race now and then.
/// The inotify descriptor stays open so that its watches can be read from outside
/// (`/proc/<worker>/fdinfo/<fd>`): `(fd, watches added)`.
pub fn watch_race(
    granted: &str,
    refused: &str,
    duration: std::time::Duration,
) -> std::io::Result<(i32, u32)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    const LENGTH: usize = 256;
    let fits = |path: &str| path.len() < LENGTH && !path.contains('\0');
    if !fits(granted) || !fits(refused) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // Atomic bytes: the kernel reads them while the other thread writes.
    let buffer: Arc<Vec<AtomicU8>> = Arc::new((0..LENGTH).map(|_| AtomicU8::new(0)).collect());
    let store = |buffer: &[AtomicU8], path: &str| {
        for (slot, byte) in buffer.iter().zip(path.bytes().chain(std::iter::once(0))) {
            slot.store(byte, Ordering::Relaxed);
        }
    };
    store(&buffer, granted);
    // SAFETY: inotify_init1 takes no pointers; the descriptor is left open on purpose.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let done = Arc::new(AtomicBool::new(false));
    let rewriter = {
        let (buffer, done) = (Arc::clone(&buffer), Arc::clone(&done));
        let (granted, refused) = (granted.to_owned(), refused.to_owned());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                store(&buffer, &refused);
                store(&buffer, &granted);
            }
        })
    };
    let started = std::time::Instant::now();
    let mut added = 0;
    while started.elapsed() < duration {
        // SAFETY: the buffer holds LENGTH bytes, always NUL-terminated within them (both
        // paths are shorter); it outlives the call. AtomicU8 has u8's layout.
        let watch = unsafe {
            libc::inotify_add_watch(fd, buffer.as_ptr().cast::<libc::c_char>(), libc::IN_CREATE)
        };
        if watch >= 0 {
            added += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = rewriter.join();
    Ok((fd, added))
}
