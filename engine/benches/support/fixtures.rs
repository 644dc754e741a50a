//! What the engine-level benches share: the release build's directory and signed copies of
//! the workspace's plugins, pinned in a fresh trust store.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use plugboard_engine::EngineConfig;
use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::trust::{PrivateKey, SIGNATURE_FILE, TrustLevel, TrustStore, write_keypair};

/// `target/<profile>`, where the bench binary's libraries and `plugboard-host` are.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    // target/<profile>/deps/<bench> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// Signed bundles in `<root>/plugins`: for each `(plugin, name)`, a copy of the workspace
/// plugin `plugin` renamed `name`, all signed with one fresh key pinned in `<root>/store`.
/// Returns the plugin directory and the store.
pub fn signed_bundles(root: &Path, bundles: &[(&str, String)]) -> (PathBuf, PathBuf) {
    signed_bundles_at(root, bundles, TrustLevel::Sandboxed, "")
}

/// As [`signed_bundles`], with the key pinned at `level` and `extra` appended to each
/// manifest (before signing).
pub fn signed_bundles_at(
    root: &Path,
    bundles: &[(&str, String)],
    level: TrustLevel,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).expect("keys");
    let (_, private, public) = write_keypair(&keys, "bench").expect("key pair");
    let store = root.join("store");
    TrustStore::add_key(&store, &public, level).expect("pin");
    let key = PrivateKey::load(&private).expect("key");
    let plugins = root.join("plugins");
    for (plugin, name) in bundles {
        let library_name = format!("lib{}.so", plugin.replace('-', "_"));
        let library = profile_dir().join(&library_name);
        assert!(
            library.is_file(),
            "{} is missing: run `cargo build --release --workspace` first",
            library.display()
        );
        let manifest = std::fs::read_to_string(repo.join(format!("plugins/{plugin}/plugin.toml")))
            .expect("manifest");
        let manifest = manifest.replace(
            &format!("name = \"{plugin}\""),
            &format!("name = \"{name}\""),
        ) + extra;
        let dir = plugins.join(name);
        std::fs::create_dir_all(&dir).expect("bundle dir");
        std::fs::write(dir.join("plugin.toml"), manifest).expect("manifest");
        std::fs::copy(&library, dir.join(&library_name)).expect("library");
        let bundle = Bundle::open(&dir, &HostLimits::default()).expect("bundle");
        key.sign_bundle(bundle.digests())
            .write(&dir.join(SIGNATURE_FILE))
            .expect("sign");
    }
    (plugins, store)
}

/// `count` copies of `hello`, named `hello-000`, `hello-001`, …
pub fn hello_copies(count: usize) -> Vec<(&'static str, String)> {
    (0..count)
        .map(|n| ("hello", format!("hello-{n:03}")))
        .collect()
}

/// An engine configuration over `bundles` signed in `root` (see [`signed_bundles`]), with
/// the release `plugboard-host` and no bundle watcher.
pub fn engine_config(root: &Path, bundles: &[(&str, String)]) -> EngineConfig {
    let (plugins, store) = signed_bundles(root, bundles);
    let mut config = EngineConfig::new(profile_dir().join("plugboard-host"));
    config.plugin_dirs = vec![plugins];
    config.trust_store = Some(store);
    config.watch.enabled = false;
    config
}

/// An engine configuration over `bundles` running in-process: signed by a key pinned at
/// level `in-process`, each manifest asking for it.
pub fn in_process_engine_config(root: &Path, bundles: &[(&str, String)]) -> EngineConfig {
    let (plugins, store) = signed_bundles_at(
        root,
        bundles,
        TrustLevel::InProcess,
        "\n[isolation]\nmode = \"in-process\"\n",
    );
    let mut config = EngineConfig::new(profile_dir().join("plugboard-host"));
    config.plugin_dirs = vec![plugins];
    config.trust_store = Some(store);
    config.watch.enabled = false;
    config
}

/// The number in environment variable `name`, else `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The value at `quantile` of sorted `samples`.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub fn percentile<T: Copy>(sorted: &[T], quantile: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * quantile).round() as usize]
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, …).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Private memory of a process (clean + dirty, from `smaps_rollup`) in kB.
pub fn private_kb(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        rollup
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(field("Private_Clean:")? + field("Private_Dirty:")?)
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// CPU time (user + system, clock ticks) of this process's threads named `name`.
pub fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}
