//! The loader: verified bytes go into a sealed memfd and are loaded from there; libraries
//! that are not plugins, or are built for another ABI, are refused without a crash.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use plugboard_engine::bundle::Bundle;
use plugboard_engine::loader::{self, LoaderError, SealedLibrary};
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::trust::Digest;
use plugboard_sdk::host::{HostCallbacks, HostError};
use plugboard_sdk::{LogLevel, abi};

use crate::support::{Signer, built_plugin, compile_c_fixture, example_bundle};

struct Quiet;

impl HostCallbacks for Quiet {
    fn log(&self, _level: LogLevel, _message: &str) {}
    fn emit(&self, _hook: &str, _payload: &[u8]) -> i32 {
        abi::EMIT_DENIED
    }
}

fn seal_file(path: &std::path::Path) -> (SealedLibrary, Digest) {
    SealedLibrary::from_reader("test", File::open(path).unwrap()).unwrap()
}

/// The error loading `path` gives; it names the library `libshown.so`, as a bundle's
/// manifest would (never the descriptor path it is loaded from).
fn load_error(path: &std::path::Path) -> String {
    let (sealed, _) = seal_file(path);
    match loader::load(sealed, "libshown.so") {
        Ok(_) => panic!("{} loaded as a plugin", path.display()),
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains("/proc/self/fd"), "{message}");
            message
        }
    }
}

#[test]
fn signed_bundle_is_verified_then_loaded_from_its_sealed_copy_and_called() {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let dir = example_bundle(temp.path(), "hello", &signer);
    let bundle = Bundle::open(&dir, &HostLimits::default()).unwrap();
    let verified = bundle.verify(&signer.store()).unwrap();
    let (manifest, loaded) = bundle.load(&verified).unwrap();
    assert_eq!(manifest.plugin.name, "hello");
    let instance = loaded
        .library()
        .instantiate(Arc::new(Quiet), br#"{"greeting":"Hi"}"#)
        .unwrap();
    assert_eq!(instance.call("greet", b"Linus").unwrap(), b"Hi, Linus!");
    // The dynamic loader opened the memfd's /proc path, not the file in the bundle.
    assert!(
        loaded.library().path().starts_with("/proc/self/fd/"),
        "{}",
        loaded.library().path().display()
    );
}

#[test]
fn the_c_plugin_loads_through_a_signed_bundle() {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let dir = example_bundle(temp.path(), "hello-c", &signer);
    let bundle = Bundle::open(&dir, &HostLimits::default()).unwrap();
    let verified = bundle.verify(&signer.store()).unwrap();
    let (_, loaded) = bundle.load(&verified).unwrap();
    let instance = loaded
        .library()
        .instantiate(Arc::new(Quiet), b"{}")
        .unwrap();
    assert_eq!(
        instance.call("greet", b"Dennis").unwrap(),
        b"Hello from C, Dennis!"
    );
}

#[test]
fn memfd_holds_exactly_the_hashed_bytes_and_cannot_be_changed() {
    let library = built_plugin("hello");
    let bytes = std::fs::read(&library).unwrap();
    let (sealed, digest) = seal_file(&library);
    assert_eq!(digest, Digest::of(&bytes));
    assert_eq!(sealed.len(), bytes.len() as u64);
    assert_eq!(sealed.read_back().unwrap(), bytes);

    // The kernel refuses every write and every resize of the write-sealed memfd, even
    // through a fresh writable open of its /proc path.
    let path = format!("/proc/self/fd/{}", sealed.fd().as_raw_fd());
    let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
    let err = writer.write_all(b"patched").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EPERM),
        "write to a sealed memfd: {err}"
    );
    assert!(writer.set_len(1).is_err(), "a sealed memfd must not shrink");
    assert!(
        writer.set_len(sealed.len() + 1).is_err(),
        "a sealed memfd must not grow"
    );
    assert_eq!(sealed.read_back().unwrap(), bytes);
}

#[test]
fn a_library_swapped_on_disk_after_open_changes_nothing_that_runs() {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let dir = example_bundle(temp.path(), "hello", &signer);
    let bundle = Bundle::open(&dir, &HostLimits::default()).unwrap();
    // An attacker replaces the library between verification and load.
    std::fs::copy(built_plugin("counter"), dir.join("libhello.so")).unwrap();
    let verified = bundle.verify(&signer.store()).unwrap();
    let (_, loaded) = bundle.load(&verified).unwrap();
    let instance = loaded
        .library()
        .instantiate(Arc::new(Quiet), b"{}")
        .unwrap();
    assert_eq!(instance.call("greet", b"x").unwrap(), b"Hello, x!");
    // And reopening sees the swap, which no longer verifies.
    let reopened = Bundle::open(&dir, &HostLimits::default()).unwrap();
    let err = reopened.verify(&signer.store()).unwrap_err();
    assert!(
        err.to_string().contains("does not match this bundle"),
        "{err}"
    );
}

#[test]
fn libc_is_not_a_plugin_and_loading_it_does_not_crash() {
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|path| path.is_file())
    .expect("libc.so.6 in a standard location");
    let message = load_error(libc);
    assert!(
        message.contains("is not a Plugboard plugin") && message.contains("plugboard_plugin_entry"),
        "{message}"
    );
}

#[test]
fn a_shared_object_without_the_entry_symbol_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let library = compile_c_fixture(temp.path(), "no_entry");
    let message = load_error(&library);
    assert!(
        message.contains(
            "is not a Plugboard plugin: it does not export the symbol `plugboard_plugin_entry`"
        ),
        "{message}"
    );
}

#[test]
fn a_wrong_abi_version_is_refused_naming_both_versions() {
    let temp = tempfile::tempdir().unwrap();
    let library = compile_c_fixture(temp.path(), "wrong_abi");
    let (sealed, _) = seal_file(&library);
    match loader::load(sealed, "libwrong_abi.so") {
        Err(LoaderError::Abi(HostError::AbiMismatch {
            found, expected, ..
        })) => {
            assert_eq!((found, expected), (99, abi::ABI_VERSION));
        }
        other => panic!("expected an ABI mismatch, got {other:?}"),
    }
    let message = load_error(&library);
    assert!(
        message.contains(
            "libshown.so was built for plugin ABI version 99, but this host speaks version 1"
        ),
        "{message}"
    );
}

#[test]
fn a_table_with_a_null_function_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let library = compile_c_fixture(temp.path(), "null_call");
    let message = load_error(&library);
    assert!(
        message.contains("malformed plugin table") && message.contains("call"),
        "{message}"
    );
}

#[test]
fn bytes_that_are_not_elf_are_refused_with_the_loader_reason() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("libjunk.so");
    std::fs::write(&path, b"#!/bin/sh\necho this is not a shared object\n").unwrap();
    let message = load_error(&path);
    // The dynamic loader's own words name the library too: `libshown.so: invalid ELF header`.
    assert!(
        message.starts_with("cannot load libshown.so: libshown.so:"),
        "{message}"
    );
}

#[test]
fn repeated_loads_never_alias_an_earlier_library() {
    // The dynamic loader knows libraries by path, and /proc/self/fd/N numbers are reused:
    // loading different plugins one after another must always give the one asked for.
    let hello = built_plugin("hello");
    let c_hello = std::path::PathBuf::from(hello_c::LIBRARY_PATH);
    for round in 0..20 {
        let (path, expected): (&std::path::Path, &[u8]) = if round % 2 == 0 {
            (&hello, b"Hello, r!")
        } else {
            (&c_hello, b"Hello from C, r!")
        };
        let (sealed, _) = seal_file(path);
        let loaded = loader::load(sealed, "libhello.so").unwrap();
        let instance = loaded
            .library()
            .instantiate(Arc::new(Quiet), b"{}")
            .unwrap();
        assert_eq!(
            instance.call("greet", b"r").unwrap(),
            expected,
            "round {round}"
        );
    }
}

/// Opens `dir` on another thread, so a regression that blocks fails the test instead of
/// hanging it.
fn open_error_within_a_second(dir: &std::path::Path) -> String {
    let (done, result) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let _ = done.send(Bundle::open(&dir, &HostLimits::default()).map(|_| ()));
    });
    match result.recv_timeout(std::time::Duration::from_secs(1)) {
        Ok(Ok(())) => panic!("the bundle opened"),
        Ok(Err(err)) => err.to_string(),
        Err(timeout) => panic!("opening the bundle blocked: {timeout}"),
    }
}

#[test]
fn bundle_files_that_are_not_regular_files_or_too_large_are_refused_at_once() {
    let temp = tempfile::tempdir().unwrap();
    let signer = Signer::new(temp.path());
    let dir = example_bundle(temp.path(), "hello", &signer);
    let signature = dir.join("plugin.sig");
    let saved_signature = std::fs::read(&signature).unwrap();

    // A FIFO would block the open until a writer came; /dev/zero would never end.
    std::fs::remove_file(&signature).unwrap();
    nix::unistd::mkfifo(&signature, nix::sys::stat::Mode::S_IRUSR).unwrap();
    let error = open_error_within_a_second(&dir);
    assert!(
        error.contains("plugin.sig") && error.contains("it is a FIFO; expected a regular file"),
        "{error}"
    );
    std::fs::remove_file(&signature).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &signature).unwrap();
    let error = open_error_within_a_second(&dir);
    assert!(error.contains("symbolic link"), "{error}");
    std::fs::remove_file(&signature).unwrap();
    std::fs::write(&signature, &saved_signature).unwrap();

    let manifest = dir.join("plugin.toml");
    std::fs::rename(&manifest, temp.path().join("plugin.toml.saved")).unwrap();
    nix::unistd::mkfifo(&manifest, nix::sys::stat::Mode::S_IRUSR).unwrap();
    let error = open_error_within_a_second(&dir);
    assert!(
        error.contains("plugin.toml") && error.contains("a FIFO"),
        "{error}"
    );
    // A manifest linked to a file outside the bundle is not read: its lines would be
    // quoted back in the syntax error (`/etc/shadow`, read by a root engine).
    std::fs::remove_file(&manifest).unwrap();
    let secret = temp.path().join("secret");
    std::fs::write(&secret, "root:$6$not-for-plugins$:19000::::::\n").unwrap();
    std::os::unix::fs::symlink(&secret, &manifest).unwrap();
    let error = open_error_within_a_second(&dir);
    assert!(
        error.contains("plugin.toml") && error.contains("symbolic link"),
        "{error}"
    );
    assert!(!error.contains("not-for-plugins"), "{error}");
    std::fs::remove_file(&manifest).unwrap();
    std::fs::rename(temp.path().join("plugin.toml.saved"), &manifest).unwrap();

    // A sparse library of 2 GiB is refused before a byte of it is copied into memory.
    let library = OpenOptions::new()
        .write(true)
        .open(dir.join("libhello.so"))
        .unwrap();
    library
        .set_len(2 * plugboard_engine::bundle::MAX_LIBRARY_BYTES)
        .unwrap();
    let error = open_error_within_a_second(&dir);
    assert!(error.contains("libhello.so is over 1024 MiB"), "{error}");
}
