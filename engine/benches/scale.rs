//! Scale: many sandboxed `hello` plugins under one engine on this machine. Reports the time
//! until all are Running, the engine's RSS, each worker's private memory (the intermediary
//! and its confined child), and the CPU the engine's sampler spends at its default 1 Hz.
//!
//! Needs root and the release build: `cargo build --release --workspace &&
//! cargo bench -p plugboard-engine --bench scale` (`PLUGBOARD_BENCH_PLUGINS`, default 500;
//! `PLUGBOARD_BENCH_STARTERS`, threads sending starts, default 4).

#![allow(clippy::cast_precision_loss)]

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use fixtures::{
    engine_config, env_number, hello_copies, percentile, private_kb, status_kb, thread_ticks,
};
use plugboard_engine::{Command, Engine, PluginState};

/// Linux reports CPU times in `/proc` in USER_HZ, 100 per second on every mainstream build.
const TICKS_PER_SECOND: f64 = 100.0;
/// How long the idle engine's sampler is watched.
const SAMPLER_WINDOW: Duration = Duration::from_secs(20);

fn main() {
    let count = env_number("PLUGBOARD_BENCH_PLUGINS", 500);
    let starters = env_number("PLUGBOARD_BENCH_STARTERS", 4).max(1);
    let temp = tempfile::tempdir().expect("temp dir");
    let mut config = engine_config(temp.path(), &hello_copies(count));
    config.max_plugins = Some(count);
    let rss_before = status_kb(std::process::id(), "VmRSS").unwrap_or(0);
    let engine = Engine::start(config).expect("engine");

    let started = Instant::now();
    let queue = Mutex::new(engine.plugins());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..starters {
            scope.spawn(|| {
                loop {
                    let Some(plugin) = queue.lock().expect("queue").pop() else {
                        break;
                    };
                    if let Err(err) = engine.execute(Command::Start { plugin }) {
                        failures.lock().expect("failures").push(err.to_string());
                    }
                }
            });
        }
    });
    let to_running = started.elapsed();
    let snapshot = engine.snapshot();
    let running: Vec<_> = snapshot
        .plugins
        .iter()
        .filter(|plugin| plugin.state == PluginState::Running)
        .collect();
    let failures = failures.into_inner().expect("failures");
    println!(
        "{count} sandboxed hello plugins, {starters} threads starting them: {} running after {to_running:.2?} ({:.1} ms per plugin){}",
        running.len(),
        to_running.as_secs_f64() * 1e3 / count as f64,
        if failures.is_empty() {
            String::new()
        } else {
            format!("; {} failed, first: {}", failures.len(), failures[0])
        }
    );

    let mut private: Vec<u64> = running
        .iter()
        .filter_map(|plugin| {
            Some(private_kb(plugin.worker_pid?)? + private_kb(plugin.sandbox_pid?)?)
        })
        .collect();
    private.sort_unstable();
    let rss = status_kb(std::process::id(), "VmRSS").unwrap_or(0);
    let threads = status_kb(std::process::id(), "Threads").unwrap_or(0);
    println!(
        "engine RSS: {:.1} MiB ({:.1} MiB before the engine started; {:.1} KiB per plugin), {threads} threads",
        rss as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        (rss - rss_before) as f64 / count as f64,
    );
    if !private.is_empty() {
        println!(
            "private memory per worker (intermediary + confined child): p50 {} KiB, p90 {} KiB, max {} KiB",
            percentile(&private, 0.5),
            percentile(&private, 0.9),
            private.last().copied().unwrap_or(0)
        );
    }

    let ticks_before = thread_ticks("pb-sampler");
    let window = Instant::now();
    std::thread::sleep(SAMPLER_WINDOW);
    let cpu = (thread_ticks("pb-sampler") - ticks_before) as f64 / TICKS_PER_SECOND;
    println!(
        "sampler thread at 1 Hz over {:.0?}: {:.3} s CPU = {:.2} % of one core ({:.1} µs per plugin per sample)",
        window.elapsed(),
        cpu,
        cpu * 100.0 / window.elapsed().as_secs_f64(),
        cpu * 1e6 / (window.elapsed().as_secs_f64() * running.len().max(1) as f64)
    );
    let stopping = Instant::now();
    engine.shutdown();
    println!("shutdown of all plugins: {:.2?}", stopping.elapsed());
}
