//! Sampling cost per plugin: 100 sandboxed `hello` workers started by a real engine, each
//! sampled as the sampler does — a `WorkerProbe` that keeps its files open and re-reads
//! them, its memory limit counters only when the kernel's notices or the near-limit rule
//! call for them — next to the same probes reading every counter, and to opening and
//! reading every file afresh (a new probe per sample), in the same run.
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

#[path = "support/fixtures.rs"]
mod fixtures;

use std::time::{Duration, Instant};

use fixtures::{engine_config, env_number, hello_copies, percentile};
use plugboard_engine::monitor::{LimitNotices, WorkerProbe};
use plugboard_engine::sandbox::cgroup::CgroupRoot;
use plugboard_engine::{Command, Engine, PluginState};

const ROUNDS: usize = 200;

fn per_plugin(total: Duration, plugins: usize) -> f64 {
    total.as_secs_f64() * 1e6 / (plugins as f64)
}

fn main() {
    let count: usize = env_number("PLUGBOARD_BENCH_PLUGINS", 100);
    let temp = tempfile::tempdir().expect("temp dir");
    let mut config = engine_config(temp.path(), &hello_copies(count));
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
    let open = || -> Vec<WorkerProbe> {
        targets
            .iter()
            .map(|(cgroup, pid)| WorkerProbe::open(&root, cgroup, *pid).expect("probe"))
            .collect()
    };
    let mut notices = LimitNotices::new().expect("epoll");
    let mut watched = open();
    for (token, probe) in (0..).zip(&mut watched) {
        probe
            .watch(&notices, token)
            .expect("memory notices register");
    }
    let mut probes = open();

    let mut sampler = Vec::with_capacity(ROUNDS);
    let mut kept = Vec::with_capacity(ROUNDS);
    let mut fresh = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        // Alternate, so all see the same machine state.
        let start = Instant::now();
        let noticed = notices.noticed();
        for (token, probe) in (0..).zip(&mut watched) {
            std::hint::black_box(probe.sample(noticed.contains(&token)).expect("sample"));
        }
        sampler.push(per_plugin(start.elapsed(), count));
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
    for samples in [&mut sampler, &mut kept, &mut fresh] {
        samples.sort_by(f64::total_cmp);
    }
    println!(
        "{:<64} {:>8} {:>8} {:>8} {:>8}",
        "per plugin per sample (µs)", "p50", "p90", "p99", "mean"
    );
    for (label, samples) in [
        (
            "what the sampler does: kept open, memory counters on notice",
            &sampler,
        ),
        ("kept open, every counter at every sample", &kept),
        ("opened and read afresh (reference)", &fresh),
    ] {
        println!(
            "{label:<64} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            percentile(samples, 0.5),
            percentile(samples, 0.9),
            percentile(samples, 0.99),
            samples.iter().sum::<f64>() / samples.len() as f64
        );
    }
    let p50 = percentile(&sampler, 0.5);
    let mean = sampler.iter().sum::<f64>() / sampler.len() as f64;
    println!(
        "sampler / fresh at p50: {:.2}x; goal <= 20 µs per plugin: p50 {}, mean {}",
        p50 / percentile(&fresh, 0.5),
        if p50 <= 20.0 { "MET" } else { "MISSED" },
        if mean <= 20.0 { "MET" } else { "MISSED" }
    );
    drop((watched, probes));
    engine.shutdown();
}
