//! Benchmarks of the dashboard (issue 7, point 7), recorded in BENCHMARKS.md:
//!
//! 1. render: a full frame of the main screen with 200 (and 500) plugins, in-process, into a
//!    200×50 crossterm backend writing to a sink (escape sequences encoded, nothing printed);
//!    each frame follows a new snapshot, as when the sampler ticks. Reference: the same frame
//!    with no plugin.
//! 2. key → frame, 500 plugins: in-process (`j` handled, then the frame drawn) and end to
//!    end (the release binary in a 200×50 pseudo-terminal over 500 signed bundles: `j`
//!    written, until the screen a VT100 parser keeps has changed).
//! 3. idle CPU: the release binary over 20 running plugins, untouched for 60 s, next to
//!    `htop` run the same way (same pseudo-terminal size, same time); utime+stime from
//!    `/proc/<pid>/stat` before and after.
//!
//! `cargo build --release --workspace && cargo bench -p plugboard --bench dashboard`
//! (root: the workers need it; `htop` must be installed). `-- render` runs only the first
//! two in-process parts, `-- idle` only the third (with the dashboard's CPU per thread role). The dashboards are quit with `q`, which stops every worker and
//! removes the cgroups; the bench checks that none remains.

#![recursion_limit = "256"]

// The dashboard's own modules, compiled into this bench (a binary package has no library
// to link): the bench drives the same `App` and `draw` as the binary.
#[allow(dead_code, unused_imports)]
#[path = "../app"]
mod app_sources {
    pub mod cli;
    pub mod tui;
}
use app_sources::{cli, tui};

#[path = "../tests/e2e/pty.rs"]
mod pty;
use pty::PtySession;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use plugboard_engine::Snapshot;
use portable_pty::CommandBuilder;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};
use serde_json::{Value, json};

use tui::app::App;
use tui::keymap::Keymap;
use tui::theme::{Theme, Themes};

const WIDTH: u16 = 200;
const HEIGHT: u16 = 50;

fn main() {
    let only = |part: &str| std::env::args().any(|arg| arg == part);
    if only("idle") {
        idle_cpu_next_to_htop();
        return;
    }
    render_bench();
    if only("render") {
        return;
    }
    key_to_frame_end_to_end();
    idle_cpu_next_to_htop();
}

// ---------------------------------------------------------------- fixtures

const NOW_MS: u64 = 1_764_000_000_000;

fn hook(calls: u64, p99_us: u64, priority: &str, timeout: u64) -> Value {
    let percentiles = json!({"p50_us": p99_us / 4, "p90_us": p99_us / 2, "p99_us": p99_us,
                             "max_us": p99_us * 2});
    json!({
        "calls": calls, "errors": calls / 100, "timeouts": 0, "busy": 0, "in_flight": 0,
        "calls_per_sec": f64::from(u32::try_from(calls % 1000).unwrap()) / 60.0,
        "recent": percentiles, "since_start": percentiles, "mean_us": p99_us / 3,
        "total_ms": calls, "last_call": NOW_MS, "last_error": null, "last_error_at": null,
        "priority": priority, "timeout_ms": timeout,
    })
}

/// A running, sampled plugin as the engine reports it; `tick` varies the numbers.
fn plugin(at: usize, tick: u64) -> Value {
    let mechanisms: serde_json::Map<String, Value> = [
        "unprivileged-uid",
        "namespaces",
        "cgroup",
        "rlimits",
        "no-new-privs",
        "landlock",
        "capabilities",
        "seccomp",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), json!({"active": true, "detail": name})))
    .collect();
    let at64 = u64::try_from(at).unwrap();
    json!({
        "name": format!("plugin-{at:04}"), "version": "0.1.0",
        "dir": format!("/bundles/plugin-{at:04}"), "state": "running", "reason": null,
        "health": "healthy", "health_failures": 0, "health_checked_ms": NOW_MS,
        "health_detail": null, "isolation": "process", "mechanisms": mechanisms,
        "active_mechanisms": ["uid", "ns", "cg", "rl", "nnp", "ll", "cap", "sc"],
        "worker_pid": 10_000 + at, "sandbox_pid": 1, "cgroup": "/plugboard-engine/x",
        "trust": {"signed": true, "key_id": "0123456789abcdef", "level": "sandboxed",
                  "library_sha3_512": "ab".repeat(64), "unverified": false},
        "hooks": {
            "greet": hook(600 + tick * 20 + at64, 850 + (tick + at64) % 90, "normal", 100),
            "count": hook(1200 + tick * 40, 480 + at64 % 300, "high", 200),
            "reset": hook(0, 0, "low", 50),
        },
        "violations": at64 % 3, "violations_unrecorded": 0, "emitted": 0, "last_exit": null, "output_dropped": 0,
        "recent_output": [], "enabled": true, "disabled_hooks": [], "dependencies": {},
        "changed_on_disk": false, "removed_from_disk": false,
        "supervision": {"starts": 1, "restarts": 0, "last_start_ms": NOW_MS,
                        "last_reload_ms": null, "backoff_step": 0, "next_retry_ms": null,
                        "restart_budget_left": 5},
        "resources": {
            "at_ms": NOW_MS + tick * 1000, "memory_bytes": (12u64 << 20) + tick * 4096 + at64,
            "memory_peak_bytes": null, "memory_limit_bytes": 32u64 << 20,
            "memory_limit_hits": 0, "oom_kills": 0,
            "cpu_percent": 0.5 + f64::from(u32::try_from((tick + at64) % 50).unwrap()) / 10.0,
            "cpu_percent_of_quota": 10.0, "throttled_periods": 0, "throttled_ms": 0,
            "throttled_ratio": 0.0, "pids_current": 3, "pids_max": 8, "pids_limit_hits": 0,
            "threads": 3, "rss_bytes": 9u64 << 20, "open_fds": 5, "read_bytes": 0,
            "write_bytes": 0,
        },
    })
}

fn fleet(count: usize, tick: u64) -> Snapshot {
    serde_json::from_value(json!({
        "taken_at_ms": NOW_MS + tick * 1000, "engine_pid": 100, "uptime_ms": 184_000 + tick * 1000,
        "version": "0.1.0", "traffic": 20.0,
        "host": {"cpu_percent": 12.0, "cpus": 2, "memory_total_bytes": 24u64 << 30,
                 "memory_used_bytes": 3u64 << 30, "load_1": 0.5, "load_5": 0.4, "load_15": 0.3,
                 "engine_cpu_percent": 1.0, "engine_rss_bytes": 40u64 << 20},
        "plugins": (0..count).map(|at| plugin(at, tick)).collect::<Vec<_>>(),
        "recent_events": [],
    }))
    .expect("the fixture matches the engine's Snapshot")
}

/// The app over `count` plugins, with a full event log.
fn app_with(count: usize) -> App {
    let mut app = App::new(
        Keymap::defaults(),
        Themes::built_in().expect("built-in themes"),
        Theme::default_theme(),
    );
    app.on_sample(fleet(count, 0));
    for seq in 1..=2000u64 {
        let event = json!({"seq": seq, "at_ms": NOW_MS + seq, "plugin": "plugin-0001",
                           "kind": "state_changed", "from": "starting", "to": "running"});
        app.on_engine_event(serde_json::from_value(event).expect("an engine event"));
    }
    app
}

// ---------------------------------------------------------------- statistics

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    count: usize,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let count = samples.len();
    Stats {
        p50: samples[count / 2],
        p99: samples[(count * 99 / 100).min(count - 1)],
        max: samples[count - 1],
        count,
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}  (n = {})",
            self.p50, self.p99, self.max, self.count
        )
    }
}

// ---------------------------------------------------------------- 1 and 2, in-process

fn terminal() -> Terminal<CrosstermBackend<std::io::Sink>> {
    Terminal::with_options(
        CrosstermBackend::new(std::io::sink()),
        TerminalOptions {
            viewport: Viewport::Fixed(Rect::new(0, 0, WIDTH, HEIGHT)),
        },
    )
    .expect("a terminal over a sink")
}

/// Frames each drawn after a new snapshot (two alternating, prepared outside the timing).
fn frame_times(count: usize, frames: usize) -> Stats {
    let mut app = app_with(count);
    let snapshots = [fleet(count, 1), fleet(count, 2)];
    let mut terminal = terminal();
    let mut times = Vec::with_capacity(frames);
    for frame in 0..frames + 50 {
        let next = snapshots[frame % 2].clone();
        let started = Instant::now();
        app.on_sample(next);
        terminal
            .draw(|frame| tui::ui::draw(frame, &mut app))
            .expect("drawn");
        if frame >= 50 {
            times.push(started.elapsed());
        }
    }
    stats(times)
}

fn key_times(count: usize, presses: usize) -> Stats {
    let mut app = app_with(count);
    let mut terminal = terminal();
    terminal
        .draw(|frame| tui::ui::draw(frame, &mut app))
        .expect("drawn");
    let mut times = Vec::with_capacity(presses);
    for press in 0..presses {
        // Down through the table, then up again.
        let code = if press % (2 * count) < count {
            KeyCode::Char('j')
        } else {
            KeyCode::Char('k')
        };
        let started = Instant::now();
        let _ = app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
        terminal
            .draw(|frame| tui::ui::draw(frame, &mut app))
            .expect("drawn");
        times.push(started.elapsed());
    }
    stats(times)
}

fn render_bench() {
    println!("== render: main screen, {WIDTH}x{HEIGHT}, a new snapshot before each frame");
    println!("reference, no plugin:      {}", frame_times(0, 2000));
    println!("200 plugins (goal ≤ 2 ms): {}", frame_times(200, 2000));
    println!("500 plugins:               {}", frame_times(500, 1000));
    println!("== key press → frame, in-process ({WIDTH}x{HEIGHT})");
    println!("200 plugins:               {}", key_times(200, 1000));
    println!("500 plugins (goal ≤ 50 ms): {}", key_times(500, 1000));
}

// ---------------------------------------------------------------- pseudo-terminals

/// `program` under a pseudo-terminal of the benchmark's size, its configuration in `home`.
fn start_session(program: &Path, args: &[&str], home: &Path) -> PtySession {
    let mut command = CommandBuilder::new(program);
    command.args(args);
    command.env("HOME", home);
    command.env("XDG_CONFIG_HOME", home.join("config"));
    command.env("XDG_STATE_HOME", home.join("state"));
    command.env("HTOPRC", home.join("htoprc"));
    PtySession::spawn(command, HEIGHT, WIDTH)
}

/// Quits with `keys` and waits for the end (dropped, the session kills the program it
/// started if it has not ended).
fn quit(mut session: PtySession, keys: &str) {
    session.press(keys);
    assert!(
        session.wait_exit(Duration::from_secs(60)).is_some(),
        "{keys:?} did not end the program within 60 s"
    );
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("a live process");
    let (_, rest) = stat.rsplit_once(") ").expect("a stat line");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

/// CPU time per kind of thread of process `pid`, from each thread's `schedstat` (time on
/// a CPU in nanoseconds: the 10 ms ticks of `stat` are too coarse for threads that each
/// run a few milliseconds a minute). Engine threads are named `pb-<role>-<plugin>`, so
/// they are summed per role; others by their name.
fn thread_times(pid: u32) -> BTreeMap<String, Duration> {
    let mut times = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return times;
    };
    for task in tasks.flatten() {
        let (Ok(name), Ok(schedstat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let name = name.trim();
        let kind = match name.strip_prefix("pb-") {
            Some(role) => format!("pb-{}", role.split('-').next().unwrap_or(role)),
            None => name.to_owned(),
        };
        let on_cpu: u64 = schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .unwrap_or(0);
        *times.entry(kind).or_default() += Duration::from_nanos(on_cpu);
    }
    times
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(100)
}

/// Processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(") ")?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The cgroup scopes of the engine in process `pid` (`plugboard-engine-<pid>-…`) under the
/// memory controller (v1) or the unified root (v2).
fn engine_cgroups(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("plugboard-engine-{pid}-");
    ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .filter_map(|root| std::fs::read_dir(root).ok())
        .flat_map(std::iter::Iterator::flatten)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(&prefix))
        })
        .collect()
}

/// The release binaries next to this bench's `plugboard`.
fn binaries() -> PathBuf {
    let plugboard = PathBuf::from(env!("CARGO_BIN_EXE_plugboard"));
    let dir = plugboard.parent().expect("a directory").to_path_buf();
    for needed in ["plugboard-host", "libhello.so"] {
        assert!(
            dir.join(needed).is_file(),
            "{} is missing: run `cargo build --release --workspace` first",
            dir.join(needed).display()
        );
    }
    dir
}

fn plugboard(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = Process::new(env!("CARGO_BIN_EXE_plugboard"))
        .args(args)
        .output()
        .expect("plugboard runs");
    assert!(
        out.status.success(),
        "plugboard {:?}: {}",
        args.iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `count` signed copies of the hello bundle (`hello-0000` …) and a trust store.
fn signed_fleet(root: &Path, count: usize) -> (PathBuf, PathBuf) {
    let binaries = binaries();
    let keys = root.join("keys");
    plugboard(&[&"keygen", &"--out", &keys, &"--name", &"bench"]);
    let store = root.join("trust");
    plugboard(&[
        &"trust",
        &"add",
        &"--trust-store",
        &store,
        &keys.join("bench.pub"),
    ]);
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/hello/plugin.toml"),
    )
    .expect("hello's manifest");
    let plugins = root.join("plugins");
    let sources = root.join("manifests");
    std::fs::create_dir_all(&sources).expect("a directory");
    for at in 0..count {
        let name = format!("hello-{at:04}");
        let source = sources.join(format!("{name}.toml"));
        std::fs::write(
            &source,
            manifest.replacen("name = \"hello\"", &format!("name = \"{name}\""), 1),
        )
        .expect("written");
        plugboard(&[
            &"pack",
            &source,
            &"--library",
            &binaries.join("libhello.so"),
            &"--out",
            &plugins.join(&name),
            &"--key",
            &keys.join("bench.key"),
        ]);
    }
    (plugins, store)
}

/// Quits the dashboard and checks it took its workers and cgroups along.
fn quit_dashboard(session: PtySession) {
    let pid = session.pid();
    let workers = children_of(pid);
    quit(session, "q");
    let alive: Vec<u32> = workers
        .into_iter()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(alive.is_empty(), "workers left running: {alive:?}");
    let left = engine_cgroups(pid);
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

// ---------------------------------------------------------------- 2, end to end

fn key_to_frame_end_to_end() {
    let count = 500;
    let home = tempfile::tempdir().expect("a temporary directory");
    let (plugins, store) = signed_fleet(home.path(), count);
    let plugins = plugins.display().to_string();
    let store = store.display().to_string();
    let mut session = start_session(
        Path::new(env!("CARGO_BIN_EXE_plugboard")),
        &[
            "dashboard",
            "--plugins",
            &plugins,
            "--trust-store",
            &store,
            "--no-start",
            "--refresh",
            "60s",
        ],
        home.path(),
    );
    session.wait_for("500 plugins", Duration::from_secs(120), |contents| {
        contents.contains(&format!("{count} plugins")) && contents.contains("hello-0000")
    });
    // Let discovery and verification settle: no output for a second.
    while session.next_output(Duration::from_secs(1)) {}
    let presses = 200;
    let mut times = Vec::with_capacity(presses);
    for _ in 0..presses {
        session.skip_output();
        let before = session.formatted();
        let started = Instant::now();
        session.press("j");
        loop {
            let left = Duration::from_secs(5).saturating_sub(started.elapsed());
            assert!(!left.is_zero(), "no frame within 5 s of a key press");
            if session.next_output(left) && session.formatted() != before {
                times.push(started.elapsed());
                break;
            }
        }
    }
    println!("== key press → frame, end to end (release binary, {WIDTH}x{HEIGHT} pty)");
    println!("{count} plugins (goal ≤ 50 ms): {}", stats(times));
    quit_dashboard(session);
}

// ---------------------------------------------------------------- 3, idle CPU

fn idle_cpu_next_to_htop() {
    let count = 20;
    let home = tempfile::tempdir().expect("a temporary directory");
    let (plugins, store) = signed_fleet(home.path(), count);
    let plugins = plugins.display().to_string();
    let store = store.display().to_string();
    let mut dashboard = start_session(
        Path::new(env!("CARGO_BIN_EXE_plugboard")),
        &["dashboard", "--plugins", &plugins, "--trust-store", &store],
        home.path(),
    );
    dashboard.wait_for("20 running plugins", Duration::from_secs(120), |contents| {
        contents.contains(&format!("● {count} running"))
    });
    assert_eq!(children_of(dashboard.pid()).len(), count, "one worker each");
    let htop_path = which("htop").expect("htop is installed");
    let mut htop = start_session(&htop_path, &[], home.path());
    htop.wait_for("htop's screen", Duration::from_secs(30), |contents| {
        contents.contains("Load average") || contents.contains("Tasks")
    });
    let window = Duration::from_secs(60);
    let (dashboard_before, htop_before) = (cpu_time(dashboard.pid()), cpu_time(htop.pid()));
    let threads_before = thread_times(dashboard.pid());
    let started = Instant::now();
    // A measurement window, not a wait for something: both run untouched for 60 s.
    std::thread::sleep(window);
    let elapsed = started.elapsed();
    let dashboard_used = cpu_time(dashboard.pid()).saturating_sub(dashboard_before);
    let htop_used = cpu_time(htop.pid()).saturating_sub(htop_before);
    let threads_after = thread_times(dashboard.pid());
    println!(
        "== idle CPU over {:.1} s, {WIDTH}x{HEIGHT} pty each, same run",
        elapsed.as_secs_f64()
    );
    let share = |used: Duration| used.as_secs_f64() * 100.0 / elapsed.as_secs_f64();
    println!(
        "dashboard, {count} running plugins (engine included, workers not): {dashboard_used:?} ({:.2}% of a core)",
        share(dashboard_used)
    );
    println!(
        "htop (default delay):                                          {htop_used:?} ({:.2}% of a core)",
        share(htop_used)
    );
    println!(
        "ratio dashboard / htop: {:.2} (goal ≤ 1.00)",
        dashboard_used.as_secs_f64() / htop_used.as_secs_f64().max(f64::EPSILON)
    );
    println!(
        "the dashboard's threads over the window (per role, from schedstat; threads that ended are not listed):"
    );
    let mut by_thread: Vec<(Duration, &String)> = threads_after
        .iter()
        .map(|(kind, after)| {
            let before = threads_before.get(kind).copied().unwrap_or_default();
            (after.saturating_sub(before), kind)
        })
        .filter(|(used, _)| *used >= Duration::from_micros(100))
        .collect();
    by_thread.sort_by(|a, b| b.cmp(a));
    for (used, kind) in by_thread {
        println!("  {kind:<20} {:>8.1} ms", used.as_secs_f64() * 1000.0);
    }
    quit(htop, "q");
    quit_dashboard(dashboard);
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}
