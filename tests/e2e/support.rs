use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `plugboard` with `args` and returns its output.
pub fn plugboard(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args(args.iter().map(AsRef::as_ref))
        .env("NO_COLOR", "1")
        .output()
        .expect("the plugboard binary runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "plugboard failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// Asserts a failure with exit code 1 and a one-line reason on stderr, and returns it.
#[track_caller]
pub fn fails(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1:\nstdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    let err = stderr(output);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "the reason is one line: {err:?}"
    );
    assert!(err.starts_with("plugboard: error: "), "{err}");
    err
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built example plugin library (built by `cargo build --workspace`).
pub fn plugin_library(crate_name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_plugboard"))
        .with_file_name(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// A throw-away key pair in `<root>/keys` and a trust store in `<root>/trust` pinning it.
pub struct Keys {
    pub private: PathBuf,
    pub public: PathBuf,
    pub key_id: String,
    pub store: PathBuf,
}

pub fn keys(root: &Path, name: &str) -> Keys {
    let dir = root.join("keys");
    let out = ok(&plugboard(&[&"keygen", &"--out", &dir, &"--name", &name]));
    let key_id = out
        .lines()
        .find_map(|line| line.strip_prefix("key_id: "))
        .expect("keygen prints the key id")
        .to_owned();
    let store = root.join("trust");
    ok(&plugboard(&[
        &"trust",
        &"add",
        &"--trust-store",
        &store,
        &dir.join(format!("{name}.pub")),
    ]));
    Keys {
        private: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
        key_id,
        store,
    }
}

/// Packs and signs an example plugin into `<root>/<name>`.
pub fn signed_example(root: &Path, name: &str, keys: &Keys) -> PathBuf {
    let bundle = root.join(name);
    let manifest = repo_root().join(format!("plugins/{name}/plugin.toml"));
    ok(&plugboard(&[
        &"pack",
        &manifest,
        &"--library",
        &plugin_library(name),
        &"--out",
        &bundle,
        &"--key",
        &keys.private,
    ]));
    bundle
}
