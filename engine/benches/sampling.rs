//! Sampling cost per plugin: 100 sandboxed `hello` workers started by a real engine, each
//! sampled through a `WorkerProbe` that keeps its files open and re-reads them, next to
//! opening and reading the same files afresh (a new probe per sample), in the same run.
//! Goal: ≤ 20 µs per plugin per sample.
//!
//! Needs root and the release build: `cargo build --release --workspace &&
//! cargo bench -p plugboard-engine --bench sampling` (`PLUGBOARD_BENCH_PLUGINS` changes
//! the number of workers).

// Statistics over at most a few hundred samples of microseconds: float conversions of these
// counts and indices lose nothing that matters.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plugboard_engine::bundle::Bundle;
use plugboard_engine::manifest::HostLimits;
use plugboard_engine::monitor::WorkerProbe;
use plugboard_engine::sandbox::cgroup::CgroupRoot;
use plugboard_engine::trust::{PrivateKey, SIGNATURE_FILE, TrustLevel, TrustStore, write_keypair};
use plugboard_engine::{Command, Engine, EngineConfig, PluginState};

const ROUNDS: usize = 200;

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    // target/<profile>/deps/<bench> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// `count` bundles of hello, named `hello-000`…, signed with one fresh pinned key.
fn bundles(root: &Path, count: usize) -> (PathBuf, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let library = profile_dir().join("libhello.so");
    assert!(
        library.is_file(),
        "{} is missing: run `cargo build --release --workspace` first",
        library.display()
    );
    let manifest =
        std::fs::read_to_string(repo.join("plugins/hello/plugin.toml")).expect("manifest");
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).expect("keys");
    let (_, private, public) = write_keypair(&keys, "bench").expect("key pair");
    let store = root.join("store");
    TrustStore::add_key(&store, &public, TrustLevel::Sandboxed).expect("pin");
    let key = PrivateKey::load(&private).expect("key");
    let plugins = root.join("plugins");
    for n in 0..count {
        let dir = plugins.join(format!("hello-{n:03}"));
        std::fs::create_dir_all(&dir).expect("bundle dir");
        std::fs::write(
            dir.join("plugin.toml"),
            manifest.replace("name = \"hello\"", &format!("name = \"hello-{n:03}\"")),
        )
        .expect("manifest");
        std::fs::copy(&library, dir.join("libhello.so")).expect("library");
        let bundle = Bundle::open(&dir, &HostLimits::default()).expect("bundle");
        key.sign_bundle(bundle.digests())
            .write(&dir.join(SIGNATURE_FILE))
            .expect("sign");
    }
    (plugins, store)
}

fn per_plugin(total: Duration, plugins: usize) -> f64 {
    total.as_secs_f64() * 1e6 / (plugins as f64)
}

fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * quantile).round() as usize]
}

fn main() {
    let count: usize = std::env::var("PLUGBOARD_BENCH_PLUGINS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100);
    let temp = tempfile::tempdir().expect("temp dir");
    let (plugins, store) = bundles(temp.path(), count);
    let mut config = EngineConfig::new(profile_dir().join("plugboard-host"));
    config.plugin_dirs = vec![plugins];
    config.trust_store = Some(store);
    config.watch.enabled = false;
    // The engine's own sampler would compete with the measurement.
    config.sample_interval = Duration::from_secs(3600);
    let engine = Engine::start(config).expect("engine");
    let started = Instant::now();
    for name in engine.plugins() {
        engine
            .execute(Command::Start { plugin: name })
            .expect("start");
    }
    println!(
        "{count} sandboxed hello workers running after {:.2?}",
        started.elapsed()
    );
    let snapshot = engine.snapshot();
    let targets: Vec<(String, u32)> = snapshot
        .plugins
        .iter()
        .filter(|plugin| plugin.state == PluginState::Running)
        .map(|plugin| {
            (
                plugin.cgroup.clone().expect("cgroup"),
                plugin.sandbox_pid.expect("pid"),
            )
        })
        .collect();
    assert_eq!(targets.len(), count, "every worker runs");
    let root = CgroupRoot::system().expect("cgroups");
    let mut probes: Vec<WorkerProbe> = targets
        .iter()
        .map(|(cgroup, pid)| WorkerProbe::open(&root, cgroup, *pid).expect("probe"))
        .collect();

    let mut kept = Vec::with_capacity(ROUNDS);
    let mut fresh = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        // Alternate, so both see the same machine state.
        let start = Instant::now();
        for probe in &mut probes {
            std::hint::black_box(probe.read().expect("read"));
        }
        kept.push(per_plugin(start.elapsed(), count));
        let start = Instant::now();
        for (cgroup, pid) in &targets {
            let mut probe = WorkerProbe::open(&root, cgroup, *pid).expect("probe");
            std::hint::black_box(probe.read().expect("read"));
        }
        fresh.push(per_plugin(start.elapsed(), count));
    }
    for samples in [&mut kept, &mut fresh] {
        samples.sort_by(f64::total_cmp);
    }
    println!(
        "{:<52} {:>9} {:>9} {:>9}",
        "per plugin per sample (µs)", "p50", "p90", "p99"
    );
    for (label, samples) in [
        ("kept-open files, re-read (what the sampler does)", &kept),
        ("opened and read afresh (reference)", &fresh),
    ] {
        println!(
            "{label:<52} {:>9.2} {:>9.2} {:>9.2}",
            percentile(samples, 0.5),
            percentile(samples, 0.9),
            percentile(samples, 0.99)
        );
    }
    let p50 = percentile(&kept, 0.5);
    println!(
        "kept / fresh at p50: {:.2}x; goal <= 20 µs per plugin: {}",
        p50 / percentile(&fresh, 0.5),
        if p50 <= 20.0 { "MET" } else { "MISSED" }
    );
    drop(probes);
    engine.shutdown();
}
