//! In-process hook calls, next to the direct call through the plugin's function table.
//!
//! For `hello`'s `greet` (a 5-byte name) and `counter`'s `count`, each kind measured in the
//! same run:
//!
//! 1. **direct**: `Instance::call` on an instance created straight from the loaded library
//!    — the table's `call` function pointer, the reply copied out and handed back to the
//!    plugin's `free_buffer`; the floor any host pays through the ABI;
//! 2. **in-process**: `InProcessPlugin::call` — the same, plus the emit-depth scope and the
//!    panic guard;
//! 3. **engine, `HookHandle::call`**: the plugin started in-process by a real `Engine`,
//!    called through a hook handle resolved once — what an embedding host's hot path
//!    does: the call-path epoch checked, the serving worker upgraded, the in-flight cap
//!    (`HookStats::begin`), the call timed, the timeout and status classified and the
//!    statistics recorded (`HookStats::end`); the goal's row;
//! 4. **engine, `Command::Call`**: the same call as a command (plugin found by name, a
//!    `CallReport` of owned strings) — the path of scripts and the dashboard;
//!
//! and, to say where the statistics' time goes, `HookStats::begin` + `end` around a call
//! that does nothing.
//!
//! The mean is the wall time of untimed blocks divided by their calls, over all blocks and
//! for a typical block (the median of the blocks' means; in the goal's line, the median of
//! each round's difference between the handle's block and the direct call's, run within
//! tens of milliseconds of each other); the percentiles come from timing every call of separate blocks with two
//! `Instant::now()`, minus the median cost of an empty timed region (shown). Kinds alternate
//! block by block, so drift on a noisy machine hits all of them alike.
//!
//! Run: `cargo build --release --workspace && cargo bench -p plugboard-engine --bench inprocess`.
//! `PLUGBOARD_INPROCESS_BENCH_CALLS` sets the calls per kind (2 000 000 by default; half
//! timed one by one, half in untimed blocks).

#[path = "support/fixtures.rs"]
mod fixtures;

use std::fs::File;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard_engine::hooks::{CallResult, HookStats};
use plugboard_engine::inprocess::InProcessPlugin;
use plugboard_engine::loader::{self, LoadedLibrary, SealedLibrary};
use plugboard_engine::worker::EventSink;
use plugboard_engine::{Command, Engine, Outcome};
use plugboard_sdk::LogLevel;
use plugboard_sdk::abi;
use plugboard_sdk::host::{HostCallbacks, Instance};

const BLOCK: usize = 50_000;

struct Quiet;

impl HostCallbacks for Quiet {
    fn log(&self, _level: LogLevel, _message: &str) {}
    fn emit(&self, _hook: &str, _payload: &[u8]) -> i32 {
        abi::EMIT_DENIED
    }
}

fn fail(message: &str) -> ! {
    eprintln!("inprocess bench: {message}");
    std::process::exit(1)
}

fn sealed(name: &str) -> SealedLibrary {
    let path = fixtures::profile_dir().join(format!("lib{name}.so"));
    let file = File::open(&path).unwrap_or_else(|err| {
        fail(&format!(
            "{}: {err}: run `cargo build --release --workspace` first",
            path.display()
        ))
    });
    SealedLibrary::from_reader(name, file)
        .unwrap_or_else(|err| fail(&err.to_string()))
        .0
}

/// One kind of call, and what was measured of it.
struct Kind<'a> {
    name: String,
    /// One call; `Err` names what went wrong.
    call: Box<dyn FnMut() -> Result<(), String> + 'a>,
    untimed: Duration,
    untimed_calls: u64,
    /// Each untimed block's mean, in the order of the rounds.
    block_means: Vec<f64>,
    samples: Vec<u32>,
}

impl<'a> Kind<'a> {
    fn new(name: String, call: impl FnMut() -> Result<(), String> + 'a) -> Self {
        Self {
            name,
            call: Box::new(call),
            untimed: Duration::ZERO,
            untimed_calls: 0,
            block_means: Vec::new(),
            samples: Vec::new(),
        }
    }

    fn untimed_block(&mut self) {
        let start = Instant::now();
        for _ in 0..BLOCK {
            let _ = black_box((self.call)());
        }
        let elapsed = start.elapsed();
        self.untimed += elapsed;
        self.untimed_calls += BLOCK as u64;
        #[allow(clippy::cast_precision_loss)]
        self.block_means
            .push(elapsed.as_nanos() as f64 / BLOCK as f64);
    }

    fn timed_block(&mut self) {
        for _ in 0..BLOCK {
            let start = Instant::now();
            let _ = black_box((self.call)());
            let ns = start.elapsed().as_nanos();
            self.samples.push(u32::try_from(ns).unwrap_or(u32::MAX));
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        len if len % 2 == 1 => values[len / 2],
        len => f64::midpoint(values[len / 2 - 1], values[len / 2]),
    }
}

/// The median of the per-round differences between two kinds' block means: the blocks of
/// one round run within tens of milliseconds of each other, so drift of the machine's speed
/// cancels, and a block that the
/// machine's other work descheduled is an outlier, not the engine's cost.
fn paired_block_difference(of: &Kind<'_>, from: &Kind<'_>) -> f64 {
    let mut differences: Vec<f64> = of
        .block_means
        .iter()
        .zip(&from.block_means)
        .map(|(of, from)| of - from)
        .collect();
    median(&mut differences)
}

/// The median cost of an empty region timed with two `Instant::now()`.
fn timer_overhead() -> u32 {
    let mut samples: Vec<u32> = (0..200_000)
        .map(|_| {
            let start = Instant::now();
            let ns = black_box(start).elapsed().as_nanos();
            u32::try_from(ns).unwrap_or(u32::MAX)
        })
        .collect();
    samples.sort_unstable();
    percentile(&samples, 0.5)
}

/// One line per kind: the mean of the untimed blocks, percentiles of the timed calls.
fn print_table(kinds: &mut [Kind<'_>], overhead: u32, per_half: usize, wall: Duration) {
    println!(
        "in-process hook calls: {} calls per kind ({} untimed, {} timed one by one), {:.1} s",
        2 * per_half,
        per_half,
        per_half,
        wall.as_secs_f64()
    );
    println!(
        "an empty timed region (two Instant::now) costs {overhead} ns (median); subtracted below"
    );
    println!(
        "{:<62} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "kind", "mean ns", "blocks ns", "p50 ns", "p90 ns", "p99 ns"
    );
    for kind in kinds.iter_mut() {
        kind.samples.sort_unstable();
        #[allow(clippy::cast_precision_loss)]
        let mean = kind.untimed.as_nanos() as f64 / kind.untimed_calls as f64;
        let corrected = |q| percentile(&kind.samples, q).saturating_sub(overhead);
        let typical_block = median(&mut kind.block_means.clone());
        println!(
            "{:<62} {:>9.1} {:>9.1} {:>8} {:>8} {:>8}",
            kind.name,
            mean,
            typical_block,
            corrected(0.50),
            corrected(0.90),
            corrected(0.99)
        );
    }
}

struct Loaded {
    _library: LoadedLibrary,
    instance: Instance,
}

fn load_direct(name: &str, config: &[u8]) -> Loaded {
    let library = loader::load(sealed(name), name).unwrap_or_else(|err| fail(&err.to_string()));
    let instance = library
        .library()
        .instantiate(Arc::new(Quiet), config)
        .unwrap_or_else(|err| fail(&err.to_string()));
    Loaded {
        _library: library,
        instance,
    }
}

fn start_in_process(name: &str) -> InProcessPlugin {
    let sink: EventSink = Arc::new(|_| {});
    InProcessPlugin::start(name, &sealed(name), &serde_json::Map::new(), None, &sink)
        .unwrap_or_else(|err| fail(&err.to_string()))
}

/// The median of `samples` less `overhead`, and the mean of the untimed blocks.
fn p50_and_mean(kind: &Kind<'_>, overhead: u32) -> (u32, f64) {
    #[allow(clippy::cast_precision_loss)]
    let mean = kind.untimed.as_nanos() as f64 / kind.untimed_calls as f64;
    (
        percentile(&kind.samples, 0.5).saturating_sub(overhead),
        mean,
    )
}

/// The goal: what the engine adds to the direct call, statistics included; and what the
/// engine's statistics recorded.
fn print_goal(kinds: &[Kind<'_>], overhead: u32, hooks: &[(&str, &str, &[u8])], engine: &Engine) {
    for (index, (name, hook, _)) in hooks.iter().enumerate() {
        let (direct_p50, direct_mean) = p50_and_mean(&kinds[4 * index], overhead);
        let (handle_p50, handle_mean) = p50_and_mean(&kinds[4 * index + 2], overhead);
        let added_p50 = i64::from(handle_p50) - i64::from(direct_p50);
        let added_mean = handle_mean - direct_mean;
        let added_blocks = paired_block_difference(&kinds[4 * index + 2], &kinds[4 * index]);
        let verdict = |added: f64| if added <= 100.0 { "MEETS" } else { "MISSES" };
        #[allow(clippy::cast_precision_loss)]
        let added_p50_f = added_p50 as f64;
        println!(
            "{name}.{hook}: HookHandle::call adds {added_p50} ns at p50 ({}), {added_blocks:.1} ns on the mean of a typical block ({}), {added_mean:.1} ns on the mean of all blocks ({}) to the direct call (goal <= 100 ns)",
            verdict(added_p50_f),
            verdict(added_blocks),
            verdict(added_mean)
        );
        let snapshot = engine.snapshot();
        if let Some(stats) = snapshot
            .plugins
            .iter()
            .find(|plugin| plugin.name == *name)
            .and_then(|plugin| plugin.hooks.get(*hook))
        {
            println!(
                "{name}.{hook} statistics recorded by the engine: {} calls, {} errors, p50 {} µs, p99 {} µs",
                stats.calls, stats.errors, stats.since_start.p50_us, stats.since_start.p99_us
            );
        }
    }
}

/// One call as a command: the plugin found by name, a `CallReport` back.
fn command_call(engine: &Engine, plugin: &str, hook: &str, payload: &[u8]) -> Result<(), String> {
    let outcome = engine
        .execute(Command::Call {
            plugin: plugin.to_owned(),
            hook: hook.to_owned(),
            payload: payload.to_vec(),
        })
        .map_err(|err| err.to_string())?;
    match outcome {
        Outcome::Called { report } if report.status == "ok" => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// A real engine running each of `hooks`' plugins in-process.
fn start_engine(root: &std::path::Path, hooks: &[(&str, &str, &[u8])]) -> Engine {
    let bundles: Vec<(&str, String)> = hooks
        .iter()
        .map(|(name, _, _)| (*name, (*name).to_owned()))
        .collect();
    let engine = Engine::start(fixtures::in_process_engine_config(root, &bundles))
        .unwrap_or_else(|err| fail(&err.to_string()));
    for (name, _, _) in hooks {
        engine
            .execute(Command::Start {
                plugin: (*name).to_owned(),
            })
            .unwrap_or_else(|err| fail(&format!("start {name}: {err}")));
    }
    engine
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let calls: usize = std::env::var("PLUGBOARD_INPROCESS_BENCH_CALLS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2_000_000);
    let rounds = (calls / (2 * BLOCK)).max(1);

    let hooks = [
        ("hello", "greet", &b"bench"[..]),
        ("counter", "count", &b""[..]),
    ];
    let direct: Vec<Loaded> = hooks
        .iter()
        .map(|(name, _, _)| load_direct(name, b"{}"))
        .collect();
    let in_process: Vec<InProcessPlugin> = hooks
        .iter()
        .map(|(name, _, _)| start_in_process(name))
        .collect();
    let temp = tempfile::tempdir().unwrap_or_else(|err| fail(&err.to_string()));
    let engine = start_engine(temp.path(), &hooks);
    let alone = HookStats::new();

    let mut kinds = Vec::new();
    for (index, (name, hook, payload)) in hooks.iter().enumerate() {
        let (direct, plugin) = (&direct[index].instance, &in_process[index]);
        kinds.push(Kind::new(
            format!("{name}.{hook}: direct (Instance::call)"),
            move || {
                direct
                    .call(hook, payload)
                    .map(drop)
                    .map_err(|err| err.to_string())
            },
        ));
        kinds.push(Kind::new(
            format!("{name}.{hook}: in-process (InProcessPlugin::call)"),
            move || {
                plugin
                    .call(hook, payload)
                    .map(drop)
                    .map_err(|err| err.to_string())
            },
        ));
        let mut handle = engine
            .hook_handle(name, hook)
            .unwrap_or_else(|err| fail(&err.to_string()));
        kinds.push(Kind::new(
            format!("{name}.{hook}: engine, HookHandle::call (statistics)"),
            move || match handle.call(payload) {
                Ok(reply) if reply.is_ok() => Ok(()),
                Ok(reply) => Err(format!("status {}", reply.status)),
                Err(err) => Err(err.to_string()),
            },
        ));
        let engine = &engine;
        kinds.push(Kind::new(
            format!("{name}.{hook}: engine, Command::Call (CallReport)"),
            move || command_call(engine, name, hook, payload),
        ));
    }
    // Where the statistics' time goes: begin and end around a call that does nothing.
    kinds.push(Kind::new(
        "statistics alone (HookStats::begin + end, empty call)".to_owned(),
        || {
            if !alone.begin(64) {
                return Err("busy".to_owned());
            }
            alone.end(Duration::from_nanos(black_box(200)), &CallResult::Ok);
            Ok(())
        },
    ));
    for kind in &mut kinds {
        if let Err(err) = (kind.call)() {
            fail(&format!("{}: {err}", kind.name));
        }
    }
    // Warm-up: caches, the allocator, the histograms' first buckets.
    for kind in &mut kinds {
        for _ in 0..BLOCK {
            let _ = black_box((kind.call)());
        }
    }

    let overhead = timer_overhead();
    let started = Instant::now();
    for round in 0..rounds {
        let count = kinds.len();
        for offset in 0..count {
            let kind = &mut kinds[(round + offset) % count];
            kind.untimed_block();
            kind.timed_block();
        }
    }
    let wall = started.elapsed();

    print_table(&mut kinds, overhead, rounds * BLOCK, wall);
    print_goal(&kinds, overhead, &hooks, &engine);
    drop(kinds);
    engine.shutdown();
}
