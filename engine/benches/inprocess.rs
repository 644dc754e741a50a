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
//! 3. **in-process + statistics**: what the engine does per call (`hooks::dispatch::call`)
//!    around it: the statistics map locked, the hook's entry looked up by an owned key, the
//!    in-flight cap checked, `begin`, the call timed with `Instant`, the result classified,
//!    the map locked again and `end` recorded in the histograms;
//! 4. **in-process + statistics, borrowed key**: the same, with the entry found by `&str`
//!    (`get_mut`) instead of an owned `String` key, i.e. without the two allocations;
//!
//! and, to say where the statistics' time goes, the engine's bookkeeping around a call that
//! does nothing, and the clock reads alone.
//!
//! The mean is the wall time of untimed blocks divided by their calls; the percentiles come
//! from timing every call of separate blocks with two `Instant::now()`, minus the median
//! cost of an empty timed region (shown). Kinds alternate block by block, so drift on a
//! noisy machine hits all of them alike.
//!
//! Run: `cargo build --release --workspace && cargo bench -p plugboard-engine --bench inprocess`.
//! `PLUGBOARD_INPROCESS_BENCH_CALLS` sets the calls per kind (2 000 000 by default; half
//! timed one by one, half in untimed blocks).

use std::collections::BTreeMap;
use std::fs::File;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use plugboard_engine::hooks::{CallResult, HookStats};
use plugboard_engine::inprocess::InProcessPlugin;
use plugboard_engine::loader::{self, LoadedLibrary, SealedLibrary};
use plugboard_engine::worker::EventSink;
use plugboard_sdk::LogLevel;
use plugboard_sdk::abi;
use plugboard_sdk::host::{CallError, HostCallbacks, Instance};

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

/// `target/<profile>/`, where the workspace's plugin libraries are built.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|err| fail(&err.to_string()));
    exe.parent()
        .and_then(std::path::Path::parent)
        .map_or_else(|| fail("no profile directory"), std::path::Path::to_owned)
}

fn sealed(name: &str) -> SealedLibrary {
    let path = profile_dir().join(format!("lib{name}.so"));
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

/// The engine's per-plugin statistics, shaped as in the engine.
type Stats = Mutex<BTreeMap<String, HookStats>>;

/// The statistics around one call, as `hooks::dispatch::call` records them.
fn call_with_stats(
    stats: &Stats,
    hook: &str,
    call: impl FnOnce() -> Result<Vec<u8>, CallError>,
) -> Result<Vec<u8>, CallError> {
    let max_in_flight = 64;
    {
        let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = stats.entry(hook.to_owned()).or_default();
        if entry.snapshot_in_flight() >= max_in_flight {
            entry.end(Duration::ZERO, &CallResult::Busy);
            return Err(CallError {
                status: abi::STATUS_ERROR,
                message: "busy".to_owned(),
            });
        }
        entry.begin();
    }
    let start = Instant::now();
    let outcome = call();
    let elapsed = start.elapsed();
    let result = match &outcome {
        Ok(_) => CallResult::Ok,
        Err(err) => CallResult::Error {
            message: err.message.clone(),
        },
    };
    stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(hook.to_owned())
        .or_default()
        .end(elapsed, &result);
    outcome
}

/// The same, with the entry looked up by `&str`: no allocation for the key.
fn call_with_stats_borrowed(
    stats: &Stats,
    hook: &str,
    call: impl FnOnce() -> Result<Vec<u8>, CallError>,
) -> Result<Vec<u8>, CallError> {
    let max_in_flight = 64;
    {
        let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match stats.get_mut(hook) {
            Some(entry) => entry,
            None => stats.entry(hook.to_owned()).or_default(),
        };
        if entry.snapshot_in_flight() >= max_in_flight {
            entry.end(Duration::ZERO, &CallResult::Busy);
            return Err(CallError {
                status: abi::STATUS_ERROR,
                message: "busy".to_owned(),
            });
        }
        entry.begin();
    }
    let start = Instant::now();
    let outcome = call();
    let elapsed = start.elapsed();
    let result = match &outcome {
        Ok(_) => CallResult::Ok,
        Err(err) => CallResult::Error {
            message: err.message.clone(),
        },
    };
    let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = stats.get_mut(hook) {
        entry.end(elapsed, &result);
    }
    outcome
}

/// One kind of call, and what was measured of it.
struct Kind<'a> {
    name: String,
    call: Box<dyn Fn() -> Result<Vec<u8>, CallError> + 'a>,
    untimed: Duration,
    untimed_calls: u64,
    samples: Vec<u32>,
}

impl<'a> Kind<'a> {
    fn new(name: String, call: impl Fn() -> Result<Vec<u8>, CallError> + 'a) -> Self {
        Self {
            name,
            call: Box::new(call),
            untimed: Duration::ZERO,
            untimed_calls: 0,
            samples: Vec::new(),
        }
    }

    fn untimed_block(&mut self) {
        let start = Instant::now();
        for _ in 0..BLOCK {
            let _ = black_box((self.call)());
        }
        self.untimed += start.elapsed();
        self.untimed_calls += BLOCK as u64;
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
        "{:<62} {:>9} {:>8} {:>8} {:>8}",
        "kind", "mean ns", "p50 ns", "p90 ns", "p99 ns"
    );
    for kind in kinds.iter_mut() {
        kind.samples.sort_unstable();
        #[allow(clippy::cast_precision_loss)]
        let mean = kind.untimed.as_nanos() as f64 / kind.untimed_calls as f64;
        let corrected = |q| percentile(&kind.samples, q).saturating_sub(overhead);
        println!(
            "{:<62} {:>9.1} {:>8} {:>8} {:>8}",
            kind.name,
            mean,
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
    let library = loader::load(sealed(name)).unwrap_or_else(|err| fail(&err.to_string()));
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
    let stats: Vec<Stats> = hooks.iter().map(|_| Stats::default()).collect();
    let borrowed_stats: Vec<Stats> = hooks.iter().map(|_| Stats::default()).collect();
    let alone = Stats::default();

    let mut kinds = Vec::new();
    for (index, (name, hook, payload)) in hooks.iter().enumerate() {
        let (direct, plugin) = (&direct[index].instance, &in_process[index]);
        let (stats, borrowed) = (&stats[index], &borrowed_stats[index]);
        kinds.push(Kind::new(
            format!("{name}.{hook}: direct (Instance::call)"),
            move || direct.call(hook, payload),
        ));
        kinds.push(Kind::new(
            format!("{name}.{hook}: in-process (InProcessPlugin::call)"),
            move || plugin.call(hook, payload),
        ));
        kinds.push(Kind::new(
            format!("{name}.{hook}: in-process + statistics (engine's code)"),
            move || call_with_stats(stats, hook, || plugin.call(hook, payload)),
        ));
        kinds.push(Kind::new(
            format!("{name}.{hook}: in-process + statistics, borrowed key"),
            move || call_with_stats_borrowed(borrowed, hook, || plugin.call(hook, payload)),
        ));
    }
    // Where the statistics' time goes: the same bookkeeping around a call that does nothing.
    kinds.push(Kind::new(
        "statistics alone (engine's code, empty call)".to_owned(),
        || call_with_stats(&alone, "noop", || Ok(Vec::new())),
    ));
    kinds.push(Kind::new(
        "two Instant::now() + SystemTime::now() (clock reads alone)".to_owned(),
        || {
            let start = Instant::now();
            black_box(std::time::SystemTime::now());
            black_box(start.elapsed());
            Ok(Vec::new())
        },
    ));
    for kind in &kinds {
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
    for (index, (name, hook, _)) in hooks.iter().enumerate() {
        let snapshot = stats[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(*hook)
            .map(HookStats::snapshot);
        if let Some(snapshot) = snapshot {
            println!(
                "{name}.{hook} statistics recorded: {} calls, {} errors, p50 {} µs, p99 {} µs",
                snapshot.calls,
                snapshot.errors,
                snapshot.since_start.p50_us,
                snapshot.since_start.p99_us
            );
        }
    }
}
