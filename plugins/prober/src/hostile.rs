//! What a hostile plugin can do inside its worker: write to the worker's IPC socket
//! directly; make a system call of another ABI; watch a path with inotify. The engine must treat the result as a protocol violation, kill the worker and
//! go on.
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
pub fn watch_path(path: &str) -> std::io::Result<i32> {
    let path = std::ffi::CString::new(path)?;
    // SAFETY: inotify_init1 takes no pointers; the descriptor it returns is closed below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `fd` is ours.
    let watch = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE) };
    let result = if watch < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(watch)
    };
    // SAFETY: `fd` is the descriptor opened above, closed once.
    unsafe { libc::close(fd) };
    result
}
