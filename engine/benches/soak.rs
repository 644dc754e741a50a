//! Soak: plugins kept running while one of them is reloaded every few seconds, for a long
//! time; what the engine holds (open descriptors, cgroups, RSS) is recorded at the start,
//! once the sample rings are full, and at the end. Goal: no growth beyond 5 %.
//!
//! Not part of CI; `scripts/soak.sh` runs it (release build, root):
//! `PLUGBOARD_SOAK_PLUGINS` (default 100), `PLUGBOARD_SOAK_RELOAD_S` (10; 0 = none),
//! `PLUGBOARD_SOAK_TRAFFIC` (calls per second, 200; 0 = none), `PLUGBOARD_SOAK_MINUTES`
//! (20).

#![allow(clippy::cast_precision_loss)]

#[path = "support/fixtures.rs"]
mod fixtures;

use std::path::Path;
use std::time::{Duration, Instant};

use fixtures::{engine_config, env_number, hello_copies, open_fds, status_kb};
use plugboard_engine::{Command, Engine, PluginState};

/// How long plugins run under traffic before the start reading.
const SETTLE: Duration = Duration::from_secs(90);

/// Directories named `plugboard-…` in every cgroup hierarchy (v1: one per controller).
fn plugboard_cgroups(dir: &Path, depth: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| {
            let own = usize::from(
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("plugboard-"),
            );
            own + if depth > 0 {
                plugboard_cgroups(&entry.path(), depth - 1)
            } else {
                0
            }
        })
        .sum()
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    fds: usize,
    cgroups: usize,
    rss_kb: u64,
    running: usize,
    /// Events in the engine's ring (bounded at `EVENT_RING`), and their size as JSON: a
    /// ring still filling is growth that stops.
    events: usize,
    events_kb: usize,
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} open fds, {} plugboard cgroups, RSS {:.1} MiB, {} plugins running, {} events in the ring ({} KiB as JSON)",
            self.fds,
            self.cgroups,
            self.rss_kb as f64 / 1024.0,
            self.running,
            self.events,
            self.events_kb
        )
    }
}

fn read(engine: &Engine) -> Reading {
    let events = engine.recent_events();
    let events_kb = events
        .iter()
        .map(|event| serde_json::to_vec(event).map_or(0, |json| json.len()))
        .sum::<usize>()
        / 1024;
    Reading {
        events: events.len(),
        events_kb,
        fds: open_fds(),
        cgroups: plugboard_cgroups(Path::new("/sys/fs/cgroup"), 4),
        rss_kb: status_kb(std::process::id(), "VmRSS").unwrap_or(0),
        running: engine
            .snapshot()
            .plugins
            .iter()
            .filter(|plugin| plugin.state == PluginState::Running)
            .count(),
    }
}

fn growth(start: f64, end: f64) -> f64 {
    if start == 0.0 {
        0.0
    } else {
        (end - start) * 100.0 / start
    }
}

fn main() {
    let count = env_number("PLUGBOARD_SOAK_PLUGINS", 100_usize);
    // 0: no reloads (readings still every 2 minutes), to tell their cost from traffic's.
    let reload_s: u64 = env_number("PLUGBOARD_SOAK_RELOAD_S", 10);
    let reload = reload_s > 0;
    let every = Duration::from_secs(reload_s.clamp(1, 120));
    let duration = Duration::from_secs(env_number::<u64>("PLUGBOARD_SOAK_MINUTES", 20) * 60);
    let temp = tempfile::tempdir().expect("temp dir");
    let config = engine_config(temp.path(), &hello_copies(count));
    let engine = Engine::start(config).expect("engine");
    let names = engine.plugins();
    for plugin in &names {
        engine
            .execute(Command::Start {
                plugin: plugin.clone(),
            })
            .expect("start");
    }
    // Traffic keeps hooks, statistics and the sampler busy the whole time.
    let traffic: u32 = env_number("PLUGBOARD_SOAK_TRAFFIC", 200);
    if traffic > 0 {
        engine
            .execute(Command::Traffic {
                rate: Some(f64::from(traffic)),
            })
            .expect("traffic");
    }
    // The sampler opens each worker's files at its first pass, and the first calls size the
    // hook statistics: read the start once that has happened.
    std::thread::sleep(SETTLE);
    let start = read(&engine);
    println!("start (after {SETTLE:?} of traffic): {start}");
    let began = Instant::now();
    let mut reloads = 0u64;
    let mut failed = 0u64;
    let mut rings_full = None;
    while began.elapsed() < duration {
        std::thread::sleep(every);
        if reload {
            let plugin = names[usize::try_from(reloads).unwrap_or(0) % names.len()].clone();
            if engine.execute(Command::Reload { plugin }).is_err() {
                failed += 1;
            }
        }
        reloads += 1;
        // A reading every 2 minutes shows the trend, not only the two ends.
        if reloads % (120 / every.as_secs().max(1)).max(1) == 0 {
            println!("at {:.0?}: {}", began.elapsed(), read(&engine));
        }
        // The sample rings hold 10 minutes: from then on nothing should grow.
        if rings_full.is_none() && began.elapsed() >= Duration::from_secs(600) {
            let reading = read(&engine);
            println!("rings full at {:.0?}: {reading}", began.elapsed());
            rings_full = Some(reading);
        }
    }
    let end = read(&engine);
    println!(
        "end after {:.0?}, {} reloads ({failed} failed): {end}",
        began.elapsed(),
        if reload { reloads } else { 0 }
    );
    for (label, from) in [("start", Some(start)), ("rings full", rings_full)] {
        let Some(from) = from else { continue };
        println!(
            "growth since {label}: fds {:+.1} %, cgroups {:+.1} %, RSS {:+.1} % (goal: none beyond 5 %)",
            growth(from.fds as f64, end.fds as f64),
            growth(from.cgroups as f64, end.cgroups as f64),
            growth(from.rss_kb as f64, end.rss_kb as f64),
        );
    }
    engine
        .execute(Command::Traffic { rate: None })
        .expect("traffic off");
    engine.shutdown();
}
