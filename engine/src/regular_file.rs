//! Opening a file of a bundle, which is untrusted: a FIFO, a device or a socket in place of
//! a manifest, signature or library would block the reader or never end, so only regular
//! files (after following symlinks) are read.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Opens `path` for reading if it is a regular file. The type is checked on the open
/// descriptor (no window for a swap), and the open does not wait for a FIFO's writer.
pub fn open_regular_file(path: &Path) -> io::Result<File> {
    open_with(path, 0)
}

/// As [`open_regular_file`], refusing a symlink in the last component: for files whose
/// text the engine quotes back (a manifest's syntax error shows the line), which must come
/// from the bundle itself, not from any file the engine (root) can read.
pub fn open_regular_file_in_place(path: &Path) -> io::Result<File> {
    open_with(path, nix::libc::O_NOFOLLOW).map_err(|err| {
        if err.raw_os_error() == Some(nix::libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symbolic link; expected a regular file of the bundle itself",
            )
        } else {
            err
        }
    })
}

fn open_with(path: &Path, flags: i32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        // Harmless on a regular file; on a FIFO it keeps `open` from waiting for a writer.
        .custom_flags(nix::libc::O_NONBLOCK | flags)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {what}; expected a regular file"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_device_and_a_directory_are_refused_at_once_and_a_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
        // Without O_NONBLOCK this open would wait for a writer for ever.
        let error = open_regular_file(&fifo).unwrap_err().to_string();
        assert!(
            error.contains("it is a FIFO; expected a regular file"),
            "{error}"
        );
        let error = open_regular_file(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("a character device"), "{error}");
        let error = open_regular_file(dir.path()).unwrap_err().to_string();
        assert!(error.contains("a directory"), "{error}");

        let file = dir.path().join("file");
        std::fs::write(&file, "text").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let contents = io::read_to_string(open_regular_file(&link).unwrap()).unwrap();
        assert_eq!(contents, "text");
        let error = open_regular_file_in_place(&link).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert!(open_regular_file_in_place(&file).is_ok());
    }
}
