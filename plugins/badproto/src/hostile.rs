//! What a hostile plugin can do inside its worker: write to the worker's IPC socket
//! directly, bypassing the SDK. The engine must take the result as a protocol violation,
//! kill the worker and go on.
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
