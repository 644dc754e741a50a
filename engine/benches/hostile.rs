//! What a misbehaving plugin costs the engine. `prober`, sandboxed, runs one flood for about
//! two seconds at a time: a forbidden call in a loop (`sockets`), a write outside its grants
//! in a loop (`writes`: each a file check the engine makes), empty lines written to
//! stdout as fast as it can (`newlines`), lines printed and logged (`chatter`). For each,
//! the engine's CPU time — this process, every thread (`getrusage(RUSAGE_SELF)`; the worker
//! is another process) — next to the worker's (its cgroup's `cpuacct.usage`), the wall
//! time, and what the plugin got done. None of the engine's share is charged to the
//! plugin's CPU quota, so it is what a plugin can make the host spend beyond its limits.
//!
//! Needs root and the release build: `cargo build --release --workspace &&
//! cargo bench -p plugboard-engine --bench hostile` (`PLUGBOARD_BENCH_FLOOD_MS`, each
//! flood's length, default 2000).

#![allow(clippy::cast_precision_loss)]

#[path = "support/fixtures.rs"]
mod fixtures;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fixtures::{engine_config, env_number};
use nix::sys::resource::{UsageWho, getrusage};
use plugboard_engine::{Command, Engine, Outcome};

/// This process's user + system time, all threads.
fn engine_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let time = |value: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(value.tv_sec()).unwrap_or(0),
            u32::try_from(value.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    time(usage.user_time()) + time(usage.system_time())
}

/// The CPU time of everything in the plugin's cgroup (v1 `cpuacct`, or v2 `cpu.stat`).
fn worker_cpu(cgroup: &str) -> Duration {
    let relative = cgroup.trim_start_matches('/');
    let v1 = PathBuf::from("/sys/fs/cgroup/cpuacct").join(relative);
    if let Ok(text) = std::fs::read_to_string(v1.join("cpuacct.usage")) {
        return Duration::from_nanos(text.trim().parse().unwrap_or(0));
    }
    let v2 = PathBuf::from("/sys/fs/cgroup").join(relative);
    std::fs::read_to_string(v2.join("cpu.stat"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("usage_usec ")?.trim().parse().ok())
        })
        .map_or(Duration::ZERO, Duration::from_micros)
}

fn prober_cgroup(engine: &Engine) -> String {
    engine
        .snapshot()
        .plugins
        .into_iter()
        .find(|plugin| plugin.name == "prober")
        .and_then(|plugin| plugin.cgroup)
        .expect("prober runs in a cgroup")
}

fn call(engine: &Engine, hook: &str, payload: &str) -> String {
    match engine.execute(Command::Call {
        plugin: "prober".to_owned(),
        hook: hook.to_owned(),
        payload: payload.as_bytes().to_vec(),
    }) {
        Ok(Outcome::Called { report }) => format!("{}: {}", report.status, report.reply),
        other => format!("{other:?}"),
    }
}

fn main() {
    let flood_ms: u64 = env_number("PLUGBOARD_BENCH_FLOOD_MS", 2000);
    let temp = tempfile::tempdir().expect("temp dir");
    let config = engine_config(temp.path(), &[("prober", "prober".to_owned())]);
    let engine = Engine::start(config).expect("engine");
    engine
        .execute(Command::Start {
            plugin: "prober".to_owned(),
        })
        .expect("prober starts");
    let cgroup = prober_cgroup(&engine);
    let millis = flood_ms.to_string();
    // chatter prints and logs as many lines as asked: about 300,000 in two seconds' worth
    // of the old engine, far fewer than it can write now.
    let lines = (flood_ms * 150).to_string();
    let floods: [(&str, &str, &str); 5] = [
        ("idle (no call)", "", ""),
        ("sockets: a forbidden call in a loop", "sockets", &millis),
        (
            "writes: a write outside fs_write, looped",
            "writes",
            &millis,
        ),
        ("newlines: empty lines to stdout", "newlines", &millis),
        ("chatter: lines printed and logged", "chatter", &lines),
    ];
    println!(
        "{:<40} {:>8} {:>11} {:>8} {:>11}  what the plugin got done",
        "flood", "wall", "engine CPU", "engine", "worker CPU"
    );
    for (label, hook, payload) in floods {
        let (engine_before, worker_before) = (engine_cpu(), worker_cpu(&cgroup));
        let started = Instant::now();
        let done = if hook.is_empty() {
            std::thread::sleep(Duration::from_millis(flood_ms));
            String::new()
        } else {
            call(&engine, hook, payload)
        };
        let wall = started.elapsed();
        let engine_used = engine_cpu().saturating_sub(engine_before);
        let worker_used = worker_cpu(&cgroup).saturating_sub(worker_before);
        println!(
            "{label:<40} {:>6.2} s {:>8.0} ms {:>7.1}% {:>8.0} ms  {done}",
            wall.as_secs_f64(),
            engine_used.as_secs_f64() * 1e3,
            engine_used.as_secs_f64() / wall.as_secs_f64() * 100.0,
            worker_used.as_secs_f64() * 1e3,
        );
    }
    println!("(engine = % of one core over the wall time; the worker's limit: cpu_percent 50)");
    engine.shutdown();
}
