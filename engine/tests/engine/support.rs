//! Shared helpers: built plugin libraries, C fixtures compiled on the spot, signed bundles.

use std::path::{Path, PathBuf};
use std::process::Command;

use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::trust::{PrivateKey, SIGNATURE_FILE, TrustStore, write_keypair};

/// The repository root (the engine crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent")
        .to_owned()
}

/// A workspace plugin's built library; fails with the fix when it was not built.
pub fn built_plugin(crate_name: &str) -> PathBuf {
    let path = plugboard_sdk::testing::cdylib_path(crate_name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// Compiles `engine/tests/fixtures/libraries/<name>.c` into `<dir>/lib<name>.so`.
pub fn compile_c_fixture(dir: &Path, name: &str) -> PathBuf {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/libraries/{name}.c"));
    let output = dir.join(format!("lib{name}.so"));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_owned()))
        .args(["-shared", "-fPIC", "-O1", "-I"])
        .arg(repo_root().join("plugins/sdk/include"))
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success(), "cc failed on {}", source.display());
    output
}

/// A bundle directory assembled from a manifest and a library, optionally signed.
pub fn make_bundle(
    dir: &Path,
    manifest: &Path,
    library: &Path,
    library_name: &str,
    key: Option<&PrivateKey>,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(manifest, dir.join("plugin.toml")).unwrap();
    std::fs::copy(library, dir.join(library_name)).unwrap();
    if let Some(key) = key {
        let bundle = Bundle::open(dir, &HostLimits::default()).unwrap();
        key.sign_bundle(bundle.digests())
            .write(&dir.join(SIGNATURE_FILE))
            .unwrap();
    }
    dir.to_owned()
}

/// A fresh key pair and a trust store pinning its public key.
pub struct Signer {
    pub key: PrivateKey,
    pub store_dir: PathBuf,
}

impl Signer {
    pub fn new(root: &Path) -> Self {
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let (_, private, public) = write_keypair(&keys, "test").unwrap();
        let store_dir = root.join("store");
        TrustStore::add_key(
            &store_dir,
            &public,
            plugboard_engine::trust::TrustLevel::Sandboxed,
        )
        .unwrap();
        Self {
            key: PrivateKey::load(&private).unwrap(),
            store_dir,
        }
    }

    pub fn store(&self) -> TrustStore {
        TrustStore::open(&self.store_dir).unwrap()
    }
}

/// The example plugin bundle for `name` (`plugins/<name>/plugin.toml` + its built library), signed.
pub fn example_bundle(root: &Path, name: &str, signer: &Signer) -> PathBuf {
    let manifest = repo_root().join(format!("plugins/{name}/plugin.toml"));
    let library_name = format!("lib{}.so", name.replace('-', "_"));
    let library = if name == "hello-c" {
        PathBuf::from(hello_c::LIBRARY_PATH)
    } else {
        built_plugin(name)
    };
    make_bundle(
        &root.join(format!("bundle-{name}")),
        &manifest,
        &library,
        &library_name,
        Some(&signer.key),
    )
}

/// The files a process's inotify descriptor watches, read from outside
/// (`/proc/<pid>/fdinfo/<fd>`): `(major, minor, inode)` of each.
pub fn inotify_watches(pid: u32, fd: u32) -> Vec<(u64, u64, u64)> {
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    // `inotify wd:1 ino:5e sdev:800001 mask:100 …`, numbers in hex; sdev is the kernel's
    // device number (major << 20 | minor).
    fdinfo
        .lines()
        .filter(|line| line.starts_with("inotify "))
        .map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|part| part.strip_prefix(name))
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    .unwrap_or_else(|| panic!("{name} in {line}"))
            };
            let sdev = field("sdev:");
            (sdev >> 20, sdev & 0xf_ffff, field("ino:"))
        })
        .collect()
}

/// `path`'s own `(major, minor, inode)` (a link's, not its target's), as
/// [`inotify_watches`] names watched files.
pub fn file_identity(path: &std::path::Path) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (
        u64::from(libc::major(meta.dev())),
        u64::from(libc::minor(meta.dev())),
        meta.ino(),
    )
}

/// The inotify descriptor prober's `watch` or `watch_race` names in its reply
/// (`… inotify fd <n>…`).
pub fn inotify_fd_in(reply: &str) -> u32 {
    reply
        .split("inotify fd ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|fd| fd.parse().ok())
        .unwrap_or_else(|| panic!("no inotify descriptor in {reply:?}"))
}
