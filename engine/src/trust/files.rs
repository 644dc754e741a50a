//! File access for trust decisions: permission and ownership checks on what is read, and
//! writes that never leave a half-written or briefly too-open file behind.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::TrustError;

/// Bits that must be clear on a secret key file: nobody but the owner reads or writes it.
const SECRET_FORBIDDEN_BITS: u32 = 0o077;
/// Bits that must be clear on the store and its files: nobody but the owner changes them.
const STORE_FORBIDDEN_BITS: u32 = 0o022;

/// Mode for non-secret files written here (public keys, trust.toml, sealed list).
pub(super) const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode for secret key files, set when the file is created, never afterwards.
pub(super) const SECRET_FILE_MODE: u32 = 0o600;
/// Mode for a store directory created here.
pub(super) const STORE_DIR_MODE: u32 = 0o700;

/// Which rule a file read here must satisfy.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sensitivity {
    /// A secret key: no access at all for group or others.
    Secret,
    /// A file that decides trust: no write access for group or others.
    StoreFile,
}

pub(super) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TrustError {
    let path = path.to_owned();
    move |source| TrustError::Io {
        action,
        path,
        error: source,
    }
}

fn permission_bits(metadata: &Metadata) -> u32 {
    metadata.permissions().mode() & 0o7777
}

/// A file or directory owned by someone other than us or root could be rewritten by that
/// user whatever its mode says.
fn check_owner(path: &Path, metadata: &Metadata) -> Result<(), TrustError> {
    let owner = metadata.uid();
    let current = nix::unistd::geteuid().as_raw();
    if owner == current || owner == 0 {
        Ok(())
    } else {
        Err(TrustError::UntrustedOwner {
            path: path.to_owned(),
            owner,
            current,
        })
    }
}

fn check_file(
    path: &Path,
    metadata: &Metadata,
    sensitivity: Sensitivity,
    expected: &'static str,
) -> Result<(), TrustError> {
    if !metadata.is_file() {
        return Err(TrustError::NotAFile {
            path: path.to_owned(),
            expected,
        });
    }
    check_owner(path, metadata)?;
    let mode = permission_bits(metadata);
    match sensitivity {
        Sensitivity::Secret if mode & SECRET_FORBIDDEN_BITS != 0 => {
            Err(TrustError::InsecureKeyFile {
                path: path.to_owned(),
                mode,
            })
        }
        Sensitivity::StoreFile if mode & STORE_FORBIDDEN_BITS != 0 => {
            Err(TrustError::InsecureStorePath {
                path: path.to_owned(),
                mode,
            })
        }
        Sensitivity::Secret | Sensitivity::StoreFile => Ok(()),
    }
}

/// Reads a whole file after checking — on the opened descriptor, so the file checked is
/// the file read — that it is a regular file, owned by us or root, with safe permissions.
/// The bytes are wiped from memory when dropped (they may be a secret key).
pub(super) fn read_checked(
    path: &Path,
    sensitivity: Sensitivity,
    expected: &'static str,
    size_limit: u64,
) -> Result<Zeroizing<Vec<u8>>, TrustError> {
    // O_NONBLOCK: opening a FIFO planted in place of a key must not hang; it has no effect
    // on regular files.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| TrustError::Io {
            action: "open",
            path: path.to_owned(),
            // Which file it was meant to be: `--key /typo` says it was the key.
            error: io::Error::new(error.kind(), format!("{error}; expected {expected} there")),
        })?;
    let metadata = file.metadata().map_err(io_error("inspect", path))?;
    check_file(path, &metadata, sensitivity, expected)?;
    let mut contents = Zeroizing::new(Vec::new());
    file.take(size_limit + 1)
        .read_to_end(&mut contents)
        .map_err(io_error("read", path))?;
    if contents.len() as u64 > size_limit {
        return Err(TrustError::Io {
            action: "read",
            path: path.to_owned(),
            error: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is larger than {size_limit} bytes, far too large for {expected}"),
            ),
        });
    }
    Ok(contents)
}

/// Checks that a store directory exists, is ours or root's, and that only its owner can
/// add, replace or remove files in it.
pub(super) fn check_store_dir(dir: &Path) -> Result<(), TrustError> {
    let metadata = match fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => metadata,
        Ok(_) => {
            return Err(TrustError::StoreMissing {
                dir: dir.to_owned(),
            });
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(TrustError::StoreMissing {
                dir: dir.to_owned(),
            });
        }
        Err(error) => return Err(io_error("inspect", dir)(error)),
    };
    check_owner(dir, &metadata)?;
    let mode = permission_bits(&metadata);
    if mode & STORE_FORBIDDEN_BITS != 0 {
        return Err(TrustError::InsecureStorePath {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Creates the store directory (mode 0700) if it is missing, then checks it.
pub(super) fn ensure_store_dir(dir: &Path) -> Result<(), TrustError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(STORE_DIR_MODE)
            .create(dir)
            .map_err(io_error("create directory", dir))?;
    }
    check_store_dir(dir)
}

/// Creates a directory for key files (mode 0700) if it is missing.
pub(super) fn ensure_key_dir(dir: &Path) -> Result<(), TrustError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(STORE_DIR_MODE)
        .create(dir)
        .map_err(io_error("create directory", dir))
}

/// Creates `path` with `mode` from the first moment (never chmod afterwards, so there is
/// no window in which a secret is readable), refusing to replace an existing file.
pub(super) fn create_new_file(path: &Path, mode: u32, contents: &[u8]) -> Result<(), TrustError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| {
            if error.kind() == io::ErrorKind::AlreadyExists {
                TrustError::KeyExists {
                    path: path.to_owned(),
                }
            } else {
                io_error("create", path)(error)
            }
        })?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", path));
    if written.is_err() {
        // A half-written key is worse than none; the error below names the cause.
        let _ = fs::remove_file(path);
    }
    written
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` atomically: readers see either the old or the new contents, never a
/// partial file, also after a crash.
pub(super) fn write_atomic(path: &Path, mode: u32, contents: &[u8]) -> Result<(), TrustError> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .map_or_else(|| "file".into(), |name| name.to_string_lossy());
    let temporary = dir.join(format!(".{file_name}.{:016x}.tmp", OsRng.next_u64()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)
            .map_err(io_error("create", &temporary))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", &temporary))?;
        fs::rename(&temporary, path).map_err(io_error("replace", path))?;
        // Make the rename itself durable.
        File::open(&dir)
            .and_then(|dir_handle| dir_handle.sync_all())
            .map_err(io_error("sync directory", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}
