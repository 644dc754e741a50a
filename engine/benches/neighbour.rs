//! A well-behaved neighbour under misbehaving plugins: `hello`'s `greet` round trip (64-byte
//! payload, one call at a time through `Engine::execute`) while nothing else runs, next to
//! the same while `cpuspin` spins under its CPU quota and `memhog` is OOM-killed at its
//! memory limit and restarted over and over. Goal: hello's p99 with the neighbours
//! misbehaving ≤ 2× its p99 alone.
//!
//! Needs root and the release build: `cargo build --release --workspace &&
//! cargo bench -p plugboard-engine --bench neighbour` (`PLUGBOARD_BENCH_CALLS`, calls per
//! phase, default 20000).

#![allow(clippy::cast_precision_loss)]

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fixtures::{engine_config, env_number, percentile};
use plugboard_engine::{Command, Engine, Outcome, PluginState};

fn call(engine: &Engine, plugin: &str, hook: &str, payload: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let outcome = engine.execute(Command::Call {
        plugin: plugin.to_owned(),
        hook: hook.to_owned(),
        payload: payload.to_vec(),
    });
    let took = started.elapsed();
    match outcome {
        Ok(Outcome::Called { report }) => (report.status, took),
        Ok(other) => (format!("{other:?}"), took),
        Err(err) => (err.to_string(), took),
    }
}

/// `calls` greet round trips; (p50, p90, p99, max) in µs and the calls not `ok`.
fn measure(engine: &Engine, calls: usize) -> ([f64; 4], usize) {
    let payload = [b'x'; 64];
    let mut took = Vec::with_capacity(calls);
    let mut failed = 0;
    for _ in 0..calls {
        let (status, duration) = call(engine, "hello", "greet", &payload);
        if status != "ok" {
            failed += 1;
        }
        took.push(duration.as_secs_f64() * 1e6);
    }
    took.sort_by(f64::total_cmp);
    (
        [
            percentile(&took, 0.5),
            percentile(&took, 0.9),
            percentile(&took, 0.99),
            took.last().copied().unwrap_or(0.0),
        ],
        failed,
    )
}

fn print(label: &str, (stats, failed): &([f64; 4], usize)) {
    println!(
        "{label:<52} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {failed:>7}",
        stats[0], stats[1], stats[2], stats[3]
    );
}

fn main() {
    let calls: usize = env_number("PLUGBOARD_BENCH_CALLS", 20_000);
    let temp = tempfile::tempdir().expect("temp dir");
    let bundles: Vec<(&str, String)> = ["hello", "cpuspin", "memhog"]
        .into_iter()
        .map(|name| (name, name.to_owned()))
        .collect();
    let mut config = engine_config(temp.path(), &bundles);
    // memhog is restarted after each OOM kill; keep the backoff short and the budget large
    // so it keeps misbehaving for the whole phase.
    config.restart.initial_delay_ms = 50;
    config.restart.max_delay_ms = 200;
    config.restart.max_restarts = 10_000;
    let engine = Engine::start(config).expect("engine");
    for plugin in ["hello", "cpuspin", "memhog"] {
        engine
            .execute(Command::Start {
                plugin: plugin.to_owned(),
            })
            .expect("start");
    }
    // Warm up, then the baseline with the neighbours idle.
    measure(&engine, calls / 10);
    let alone = measure(&engine, calls);

    let stop = AtomicBool::new(false);
    let oom_kills = AtomicU64::new(0);
    let during = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // Spin both of its threads for a second at a time, under its quota.
                call(&engine, "cpuspin", "chaos", b"1000");
                std::thread::sleep(Duration::from_millis(900));
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let running =
                    engine.snapshot().plugins.iter().any(|plugin| {
                        plugin.name == "memhog" && plugin.state == PluginState::Running
                    });
                if running {
                    let (status, _) = call(&engine, "memhog", "chaos", b"");
                    if status != "ok" {
                        oom_kills.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        // Let both get going before measuring.
        std::thread::sleep(Duration::from_millis(500));
        let during = measure(&engine, calls);
        stop.store(true, Ordering::Relaxed);
        during
    });
    let snapshot = engine.snapshot();
    let memhog_restarts = snapshot
        .plugins
        .iter()
        .find(|plugin| plugin.name == "memhog")
        .map_or(0, |plugin| plugin.supervision.restarts);

    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "hello greet round trip (µs)", "p50", "p90", "p99", "max", "not ok"
    );
    print("alone (cpuspin and memhog idle)", &alone);
    print("while cpuspin spins and memhog is OOM-killed", &during);
    println!(
        "memhog chaos calls not answered ok (killed mid-call, timed out, refused while busy or restarting): {}, memhog restarts: {memhog_restarts}",
        oom_kills.load(Ordering::Relaxed)
    );
    let ratio = during.0[2] / alone.0[2];
    println!(
        "ratio p99 with misbehaving neighbours / alone: {ratio:.2}x (goal <= 2x: {})",
        if ratio <= 2.0 { "MET" } else { "MISSED" }
    );
    engine.shutdown();
}
