//! `plugboard headless`: the engine without the dashboard, printing snapshots.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use plugboard_engine::policy::Action;
use plugboard_engine::{
    Command, Engine, EngineTopic, Event, EventKind, Outcome, PluginState, Snapshot,
};

use super::engine_options::EngineOptions;
use super::output::{errln, outln};
use super::stop_signals::{POLL_INTERVAL, StopSignals};

/// Options of `plugboard headless`.
#[derive(Debug, clap::Args)]
pub struct HeadlessOptions {
    #[command(flatten)]
    pub engine: EngineOptions,
    /// Drive the plugins' hooks at this many calls per second (0: none; at most 1000000).
    // Negative numbers reach the parser, which says what a rate is, instead of clap taking
    // them for a flag.
    #[arg(long, value_name = "RATE", allow_negative_numbers = true, value_parser = parse_traffic_rate)]
    pub traffic: Option<f64>,
    /// Stop after this long (500ms, 10s, 2m, 1h; at least 1ms); default: until SIGINT, SIGTERM or SIGHUP.
    #[arg(long, value_name = "D", value_parser = parse_run_duration)]
    pub duration: Option<std::time::Duration>,
    /// Print snapshots as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Time between snapshots (at least 10ms).
    #[arg(long, value_name = "D", value_parser = parse_interval, default_value = "1s")]
    pub interval: std::time::Duration,
    /// Emit HOOK, with an empty payload, to the plugins subscribed to it, DELAY after they
    /// were started (default 0; 500ms, 2s, …): `--emit chaos@2s`. Repeatable. What each
    /// subscriber answered goes to stderr.
    #[arg(long = "emit", value_name = "HOOK[@DELAY]", value_parser = parse_emit)]
    pub emits: Vec<ScheduledEmit>,
}

/// One `--emit`: a hook and when to emit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledEmit {
    pub hook: String,
    /// After the plugins were started.
    pub delay: Duration,
}

/// Parses `HOOK` or `HOOK@DELAY` (`chaos`, `chaos@2s`, `tick@500ms`).
pub fn parse_emit(text: &str) -> Result<ScheduledEmit, String> {
    let (hook, delay) = text.split_once('@').unwrap_or((text, ""));
    if !plugboard_engine::manifest::is_hook_name(hook) {
        return Err(format!(
            "{hook:?} is not a hook name: expected 1 to 64 characters from a-z, 0-9, '_', '.' and '-', optionally followed by @DELAY (chaos@2s)"
        ));
    }
    let delay = if text.contains('@') {
        parse_duration(delay)?
    } else {
        Duration::ZERO
    };
    Ok(ScheduledEmit {
        hook: hook.to_owned(),
        delay,
    })
}

/// Emits `hook` and says on stderr what each subscriber answered.
fn emit(engine: &Engine, hook: &str) {
    let reports = match engine.execute(Command::Emit {
        hook: hook.to_owned(),
        payload: Vec::new(),
    }) {
        Ok(Outcome::Emitted { reports }) => reports,
        Ok(other) => {
            errln!("plugboard: emit `{hook}`: unexpected answer {other:?}");
            return;
        }
        Err(err) => {
            errln!("plugboard: emit `{hook}` failed: {err}");
            return;
        }
    };
    if reports.is_empty() {
        errln!("plugboard: emitted `{hook}`: no running plugin subscribes to it");
    }
    for report in reports {
        errln!(
            "plugboard: emitted `{hook}` to {}: {} after {} µs: {}",
            report.plugin,
            report.status,
            report.duration_us,
            report.reply.lines().next().unwrap_or_default()
        );
    }
}

/// The longest duration an option takes: far past any run or delay anyone means, and far
/// from where clock arithmetic overflows.
pub const LONGEST_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest `--interval`: shorter, the loop would print snapshots without a pause.
const SHORTEST_INTERVAL: Duration = Duration::from_millis(10);
/// The shortest `--duration`: a run needs some time to start the plugins.
const SHORTEST_RUN: Duration = Duration::from_millis(1);
/// The fastest `--traffic`, in calls per second: the engine's bound.
const FASTEST_TRAFFIC: f64 = plugboard_engine::MAX_TRAFFIC_RATE;
/// The slowest `--traffic` above none (one call every 1,000 s): the engine's bound.
const SLOWEST_TRAFFIC: f64 = plugboard_engine::MIN_TRAFFIC_RATE;

/// Parses `500ms`, `10s`, `2m`, `1h` or a plain number of seconds, from 0 to
/// [`LONGEST_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: expected a number with an optional unit, such as 500ms, 10s, 2m or 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}: expected ms, s, m or h"
            ));
        }
    };
    let too_long = || {
        format!(
            "{text:?} is too long: expected at most {}h (365 days)",
            LONGEST_DURATION.as_secs() / 3600
        )
    };
    if seconds > LONGEST_DURATION.as_secs_f64() {
        return Err(too_long());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| too_long())
}

/// Parses a duration of at least `shortest`, saying why when shorter.
fn parse_duration_from(text: &str, shortest: Duration, why: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < shortest {
        return Err(format!(
            "{:?} is too short: expected from {shortest:?} to {}h ({why})",
            text.trim(),
            LONGEST_DURATION.as_secs() / 3600
        ));
    }
    Ok(duration)
}

/// Parses `--interval`: printing snapshots without a pause would keep a core busy.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_duration_from(text, SHORTEST_INTERVAL, "the time between two snapshots")
}

/// Parses `--duration`: a run of no time would start nothing.
pub fn parse_run_duration(text: &str) -> Result<Duration, String> {
    parse_duration_from(
        text,
        SHORTEST_RUN,
        "how long to run; leave it out to run until SIGINT, SIGTERM or SIGHUP",
    )
}

/// Parses a traffic rate in calls per second: 0 for none, else from [`SLOWEST_TRAFFIC`] to
/// [`FASTEST_TRAFFIC`].
pub fn parse_traffic_rate(text: &str) -> Result<f64, String> {
    let expected = format!(
        "expected a rate ≥ 0 in calls per second: 0 (no traffic) or from {SLOWEST_TRAFFIC} to {FASTEST_TRAFFIC}"
    );
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number: {expected}"))?;
    if rate == 0.0 || (SLOWEST_TRAFFIC..=FASTEST_TRAFFIC).contains(&rate) {
        Ok(rate)
    } else if !rate.is_finite() {
        Err(format!("{text:?} is not a finite number: {expected}"))
    } else if rate < 0.0 {
        Err(format!("{text:?} is negative: {expected}"))
    } else {
        Err(format!("{text:?} is out of range: {expected}"))
    }
}

/// Parses the rate the traffic key turns the generator on at: as
/// [`parse_traffic_rate`], without 0.
pub fn parse_traffic_on_rate(text: &str) -> Result<f64, String> {
    match parse_traffic_rate(text)? {
        0.0 => Err(format!(
            "{text:?} is no rate to turn traffic on at: expected from {SLOWEST_TRAFFIC} to \
             {FASTEST_TRAFFIC} calls per second"
        )),
        rate => Ok(rate),
    }
}

/// How often the run looks for bundles the watcher found since the start.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(500);

/// Development mode ran what the trust store refused: said on stderr, not only in the
/// snapshots' events.
fn warn_of_unverified(snapshot: &Snapshot, among: impl Fn(&str) -> bool) {
    for plugin in snapshot
        .plugins
        .iter()
        .filter(|plugin| plugin.trust.unverified && among(&plugin.name))
    {
        let why = plugin.trust.unverified_because.as_deref();
        errln!(
            "plugboard: warning: `{}` runs UNVERIFIED (development mode): {}",
            plugin.name,
            why.unwrap_or("no trust verdict")
        );
    }
}

fn print(snapshot: &Snapshot, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string(snapshot)?)?;
        return Ok(());
    }
    outln!(
        "-- uptime {:.1}s, {} plugin(s)",
        Duration::from_millis(snapshot.uptime_ms).as_secs_f64(),
        snapshot.plugins.len()
    )?;
    for plugin in &snapshot.plugins {
        let calls: u64 = plugin.hooks.values().map(|hook| hook.calls).sum();
        outln!(
            "{:<16} {:<8} {:<11} pid {:<8} [{}] calls {calls} violations {}{}",
            plugin.name,
            plugin.version.as_deref().unwrap_or("?"),
            plugin.state.as_str(),
            plugin
                .sandbox_pid
                .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
            plugin.active_mechanisms.join(" "),
            plugin.violations,
            plugin
                .reason
                .as_deref()
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default(),
        )?;
    }
    Ok(())
}

/// Starts each of `plugins`, remembering it in `attempted`. A plugin that fails
/// verification or start-up shows as Rejected/Failed with its reason in the snapshots; one
/// whose start is refused before it begins (a dependency, `max_plugins`) stays as it was:
/// said here, and in an event.
fn start_plugins(
    engine: &Engine,
    signals: &StopSignals,
    plugins: Vec<String>,
    attempted: &mut BTreeSet<String>,
) {
    let disabled: BTreeSet<String> = engine
        .snapshot()
        .plugins
        .into_iter()
        .filter(|shown| shown.state == PluginState::Disabled)
        .map(|shown| shown.name)
        .collect();
    for plugin in plugins {
        if signals.received().is_some() {
            break;
        }
        attempted.insert(plugin.clone());
        if disabled.contains(&plugin) {
            // Not started, but verified: its snapshot shows its version, hooks and signer
            // instead of an unknown, unsigned-looking plugin (it stays disabled; one that
            // does not verify shows as rejected, with its reason).
            let _ = engine.execute(Command::Load {
                plugin: plugin.clone(),
            });
            continue;
        }
        if let Err(err) = engine.execute(Command::Start {
            plugin: plugin.clone(),
        }) {
            let state = engine
                .snapshot()
                .plugins
                .iter()
                .find(|shown| shown.name == plugin)
                .map(|shown| shown.state);
            // A rejection and a failed start are said as their events; Disabled and
            // Quarantined are kept from starting on purpose.
            if !matches!(
                state,
                Some(
                    PluginState::Rejected
                        | PluginState::Failed
                        | PluginState::Disabled
                        | PluginState::Quarantined
                )
            ) {
                errln!("plugboard: `{plugin}` not started: {err}");
            }
        }
    }
}

/// What an unattended engine's operator must hear of, printed on stderr as it happens:
/// rejections, failed reloads, restarts given up, quarantines, and the engine's own notes
/// (a stale cgroup left, a state file not written, seccomp notifications paced…) — not
/// traffic switched, nor what this command says itself (starts refused, unverified
/// plugins). Runs until `stop` is set, then prints what is left and ends.
fn say_events(events: &std::sync::mpsc::Receiver<Event>, said_up_to: u64, stop: &AtomicBool) {
    loop {
        let event = match events.recv_timeout(POLL_INTERVAL) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => continue,
            Err(_) => break,
        };
        if event.seq > said_up_to {
            say_event(event);
        }
    }
}

/// One event, if it is one [`say_events`] says.
fn say_event(event: Event) {
    let plugin = event
        .plugin
        .as_deref()
        .map_or_else(String::new, |name| format!("`{name}` "));
    match event.kind {
        EventKind::Rejected { reason } => errln!("plugboard: {plugin}rejected: {reason}"),
        EventKind::StartFailed { reason } => errln!("plugboard: {plugin}start failed: {reason}"),
        EventKind::ReloadFailed { reason } => {
            errln!("plugboard: {plugin}reload failed, the old version keeps serving: {reason}");
        }
        EventKind::RestartsExhausted { restarts, window_s } => {
            errln!("plugboard: {plugin}failed: {restarts} restarts within {window_s} s, no more");
        }
        EventKind::Violation { violation } if violation.action == Action::Quarantine => {
            errln!(
                "plugboard: {plugin}quarantined: {}: {}",
                violation.kind,
                violation.detail
            );
        }
        // Starts refused and unverified plugins this command says itself, in its words.
        EventKind::Engine { message, topic, .. }
            if !matches!(
                topic,
                EngineTopic::Traffic | EngineTopic::StartRefused | EngineTopic::Unverified
            ) =>
        {
            errln!("plugboard: {plugin}{message}");
        }
        _ => {}
    }
}

/// The plugins rejected in `snapshot`.
fn rejected_in(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .plugins
        .iter()
        .filter(|plugin| plugin.state == PluginState::Rejected)
        .map(|plugin| plugin.name.clone())
        .collect()
}

pub fn run(options: &HeadlessOptions) -> Result<()> {
    let config = options.engine.engine_config()?;
    if config.plugin_dirs.is_empty() && config.bundles.is_empty() {
        bail!(
            "no plugin directory or bundle: pass --plugins <dir> (a directory holding bundle directories), or set plugin_dirs or bundles in --config"
        );
    }
    let signals = StopSignals::install()?;
    let engine = Engine::start(config).context("the engine cannot start")?;
    let events = engine.subscribe();
    // What the engine found while it started (a stale cgroup it could not remove) came
    // before anyone listened: said from its ring. (The state file's warning is said below,
    // as a warning.)
    let mut said_up_to = 0;
    for event in engine.recent_events() {
        said_up_to = said_up_to.max(event.seq);
        let about_state_file = matches!(&event.kind, EventKind::Engine { message, .. }
            if engine.state_file_warning() == Some(message.as_str()));
        if !about_state_file {
            say_event(event);
        }
    }
    let stop_saying = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = &stop_saying;
        scope.spawn(move || say_events(&events, said_up_to, stop));
        let ran = run_engine(options, &signals, &engine);
        stop_saying.store(true, Ordering::SeqCst);
        ran
    })
}

/// [`run`] once the engine has started.
fn run_engine(options: &HeadlessOptions, signals: &StopSignals, engine: &Engine) -> Result<()> {
    for message in engine
        .unmatched_plugin_sections()
        .into_iter()
        .chain(engine.state_file_warning().map(str::to_owned))
    {
        errln!("plugboard: warning: {message}");
    }
    // A signal stops the engine at once, also while a start waits for a slow `create`
    // (each may take up to its 10 s deadline, one after the other).
    let mut attempted = BTreeSet::new();
    signals.stop_engine_during(engine, || {
        start_plugins(engine, signals, engine.plugins(), &mut attempted);
    });
    warn_of_unverified(&engine.snapshot(), |_| true);
    // (Not once a signal stopped the engine during the starts: it ends below.)
    if options.traffic.is_some() && signals.received().is_none() {
        engine.execute(Command::Traffic {
            rate: options.traffic,
        })?;
    }
    let started = Instant::now();
    let deadline = match options.duration {
        Some(duration) => Some(
            started
                .checked_add(duration)
                .with_context(|| format!("--duration {duration:?} is too long for the clock"))?,
        ),
        None => None,
    };
    // Soonest first; each runs on a thread of its own, since an emit lasts as long as its
    // slowest subscriber and snapshots go on meanwhile.
    let mut emits = options.emits.clone();
    emits.sort_by_key(|scheduled| std::cmp::Reverse(scheduled.delay));
    std::thread::scope(|scope| -> Result<()> {
        let mut next_print = Some(started);
        let mut next_discovery = started + DISCOVERY_INTERVAL;
        let mut rejected = rejected_in(&engine.snapshot());
        let mut printed = Ok(());
        while signals.received().is_none() && deadline.is_none_or(|end| Instant::now() < end) {
            while emits
                .last()
                .is_some_and(|scheduled| started.elapsed() >= scheduled.delay)
            {
                if let Some(scheduled) = emits.pop() {
                    scope.spawn(move || emit(engine, &scheduled.hook));
                }
            }
            // Bundles the watcher found since: started as those found at the start were.
            // (Each name once while it is listed; a plugin stopped by policy is no longer
            // `discovered`.)
            if Instant::now() >= next_discovery {
                next_discovery = Instant::now() + DISCOVERY_INTERVAL;
                let listed = engine.plugins();
                let shown = engine.snapshot();
                // A rejected bundle replaced by one that verifies (the engine verifies it
                // again when it changes): started as a newly found one.
                let was_rejected = std::mem::replace(&mut rejected, rejected_in(&shown));
                attempted.retain(|name| listed.contains(name));
                // (Disabled ones are verified, as at the start.)
                let found: Vec<String> = shown
                    .plugins
                    .iter()
                    .filter(|plugin| {
                        plugin.state == PluginState::Discovered
                            || (plugin.state == PluginState::Disabled && plugin.version.is_none())
                            || (plugin.state == PluginState::Verified
                                && was_rejected.contains(&plugin.name))
                    })
                    .map(|plugin| plugin.name.clone())
                    .filter(|name| !attempted.contains(name) || was_rejected.contains(name))
                    .collect();
                if !found.is_empty() {
                    signals.stop_engine_during(engine, || {
                        start_plugins(engine, signals, found.clone(), &mut attempted);
                    });
                    warn_of_unverified(&engine.snapshot(), |name| found.iter().any(|f| f == name));
                }
            }
            if next_print.is_some_and(|at| Instant::now() >= at) {
                printed = print(&engine.snapshot(), options.json);
                if printed.is_err() {
                    // Stdout is gone (a closed pipe): stop as on a signal, plugins first.
                    break;
                }
                // None, past the end of the clock: no further periodic snapshot.
                next_print = next_print.and_then(|at| at.checked_add(options.interval));
            }
            std::thread::sleep(POLL_INTERVAL.min(options.interval));
        }
        for scheduled in emits.iter().rev() {
            errln!(
                "plugboard: `{}` was not emitted: the run ended before its delay of {:?}",
                scheduled.hook,
                scheduled.delay
            );
        }
        let traffic_stopped = engine.execute(Command::Traffic { rate: None });
        // Stopping the plugins also ends the calls of emits still in flight.
        engine.shutdown();
        printed?;
        traffic_stopped?;
        Ok(())
    })?;
    print(&engine.snapshot(), options.json)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emit_is_a_hook_with_an_optional_delay() {
        assert_eq!(
            parse_emit("chaos@2s"),
            Ok(ScheduledEmit {
                hook: "chaos".to_owned(),
                delay: Duration::from_secs(2),
            })
        );
        assert_eq!(
            parse_emit("billing.tick@250ms").unwrap().delay,
            Duration::from_millis(250)
        );
        assert_eq!(parse_emit("chaos").unwrap().delay, Duration::ZERO);
        let err = parse_emit("Chaos@1s").unwrap_err();
        assert!(err.contains("\"Chaos\" is not a hook name"), "{err}");
        assert!(
            parse_emit("@1s")
                .unwrap_err()
                .contains("is not a hook name")
        );
        let err = parse_emit("chaos@soon").unwrap_err();
        assert!(err.contains("is not a duration"), "{err}");
        assert!(parse_emit("chaos@2 fortnights").is_err());
    }

    #[test]
    fn a_duration_past_the_longest_is_refused_naming_the_range() {
        let endless = format!("1{}", "0".repeat(400));
        for huge in [
            "99999999999999999999h",
            "4000000000000000h",
            "8761h",
            &endless,
        ] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("expected at most 8760h"), "{huge}: {err}");
        }
        assert_eq!(parse_duration("8760h"), Ok(LONGEST_DURATION));
        let err = parse_emit("chaos@99999999999999999999h").unwrap_err();
        assert!(err.contains("is too long"), "{err}");
    }

    #[test]
    fn an_interval_or_a_run_of_no_time_is_refused_saying_what_is_expected() {
        let err = parse_interval("0").unwrap_err();
        assert!(
            err.contains("\"0\" is too short: expected from 10ms to 8760h"),
            "{err}"
        );
        assert!(parse_interval("5ms").is_err());
        assert_eq!(parse_interval("10ms"), Ok(Duration::from_millis(10)));
        let err = parse_interval("4000000000000000h").unwrap_err();
        assert!(err.contains("expected at most 8760h"), "{err}");
        let err = parse_run_duration("0s").unwrap_err();
        assert!(err.contains("expected from 1ms to 8760h"), "{err}");
        assert_eq!(parse_run_duration("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn a_traffic_rate_is_zero_or_a_finite_positive_number_in_range() {
        assert_eq!(parse_traffic_rate("0"), Ok(0.0));
        assert_eq!(parse_traffic_rate("200"), Ok(200.0));
        assert_eq!(parse_traffic_rate("0.5"), Ok(0.5));
        for bad in ["-5", "NaN", "inf", "-inf", "1e300", "1e-300", "fast"] {
            let err = parse_traffic_rate(bad).unwrap_err();
            assert!(err.contains("expected a rate ≥ 0"), "{bad}: {err}");
        }
    }
}
