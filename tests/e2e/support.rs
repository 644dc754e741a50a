use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `plugboard` binary, kept off this machine's own configuration and state: its XDG
/// directories are the test build's (a default state file, its claim file and lock live
/// there, not in the home directory of whoever runs the tests).
pub fn plugboard_bin() -> Command {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-home");
    let mut command = Command::new(env!("CARGO_BIN_EXE_plugboard"));
    command
        .env("NO_COLOR", "1")
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"));
    command
}

/// Runs `plugboard` with `args` and returns its output.
pub fn plugboard(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    plugboard_bin()
        .args(args.iter().map(AsRef::as_ref))
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
    let err = fails_after_plugin_output(output, None);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "the reason is one line: {err:?}"
    );
    err
}

/// Like [`fails`] for `call`, which prints the plugin's output (`<plugin> <stream>: …`)
/// on stderr before the reason: the reason is the one last line; every line before it is
/// `plugin`'s (none when `plugin` is `None`). Returns the whole of stderr.
#[track_caller]
pub fn fails_after_plugin_output(output: &Output, plugin: Option<&str>) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1:\nstdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
    let err = stderr(output);
    let lines: Vec<&str> = err.trim_end().lines().collect();
    let Some((reason, before)) = lines.split_last() else {
        panic!("no reason on stderr")
    };
    assert!(reason.starts_with("plugboard: error: "), "{err}");
    for line in before {
        assert!(
            plugin.is_some_and(|plugin| line.starts_with(&format!("{plugin} "))),
            "the reason is one line, after the plugin's output: {err:?}"
        );
    }
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
    let manifest = repo_root().join(format!("plugins/{name}/plugin.toml"));
    pack_signed(&manifest, name, &root.join(name), keys)
}

/// Packs example plugin `name` into `bundle`, signed by `keys`, with `more` (TOML) added
/// to its manifest (the edited manifest is kept in `root`).
pub fn signed_example_with(
    root: &Path,
    name: &str,
    more: &str,
    bundle: &Path,
    keys: &Keys,
) -> PathBuf {
    let manifest =
        std::fs::read_to_string(repo_root().join(format!("plugins/{name}/plugin.toml"))).unwrap();
    let edited = root.join(format!("{name}.toml"));
    std::fs::write(&edited, format!("{manifest}\n{more}")).unwrap();
    pack_signed(&edited, name, bundle, keys)
}

/// Packs example plugin `name`'s library with `manifest` into `bundle`, signed by `keys`.
pub fn pack_signed(manifest: &Path, name: &str, bundle: &Path, keys: &Keys) -> PathBuf {
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
    bundle.to_owned()
}

/// Flips the last byte of a bundle's library: what it holds no longer matches its signature.
pub fn tamper_library(library: &Path) {
    let mut bytes = std::fs::read(library).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(library, bytes).unwrap();
}

/// `plugboard` with `args`, to be given its stdio and spawned.
pub fn plugboard_command(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut command = plugboard_bin();
    command.args(args.iter().map(AsRef::as_ref));
    command
}

/// A stdout whose reader has already gone, as when `| head` has exited: every write to it
/// fails with EPIPE. (The write end of a pipe whose only reader, `true`, has ended.)
pub fn closed_pipe() -> std::process::Stdio {
    let mut reader = Command::new("true")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("true runs");
    let writer = reader.stdin.take().expect("a piped stdin");
    reader.wait().expect("true ends");
    std::process::Stdio::from(writer)
}

/// Alive: exists and is not a zombie (orphans wait for whoever reaps them here, which
/// can take a while; a zombie has ended all the same).
pub fn is_alive(pid: impl std::fmt::Display) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The memory cgroup scopes of the engine running in process `pid` (`plugboard-engine-<pid>-…`).
pub fn engine_scopes(pid: u32) -> Vec<PathBuf> {
    engine_scopes_in("memory", pid)
}

/// [`engine_scopes`] in the v1 hierarchy of `controller`.
pub fn engine_scopes_in(controller: &str, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("plugboard-engine-{pid}-");
    std::fs::read_dir(format!("/sys/fs/cgroup/{controller}"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default()
}
