//! `plugboard headless`: the engine without the dashboard, printing snapshots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use plugboard_engine::{Command, Engine, Outcome, Snapshot};

use super::engine_options::EngineOptions;
use super::output::outln;

/// Options of `plugboard headless`.
#[derive(Debug, clap::Args)]
pub struct HeadlessOptions {
    #[command(flatten)]
    pub engine: EngineOptions,
    /// Drive the plugins' hooks at this many calls per second.
    #[arg(long, value_name = "RATE")]
    pub traffic: Option<f64>,
    /// Stop after this long (500ms, 10s, 2m, 1h); default: until SIGINT/SIGTERM.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Print snapshots as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Time between snapshots.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
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
            eprintln!("plugboard: emit `{hook}`: unexpected answer {other:?}");
            return;
        }
        Err(err) => {
            eprintln!("plugboard: emit `{hook}` failed: {err}");
            return;
        }
    };
    if reports.is_empty() {
        eprintln!("plugboard: emitted `{hook}`: no running plugin subscribes to it");
    }
    for report in reports {
        eprintln!(
            "plugboard: emitted `{hook}` to {}: {} after {} µs: {}",
            report.plugin,
            report.status,
            report.duration_us,
            report.reply.lines().next().unwrap_or_default()
        );
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a plain number of seconds.
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
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!(
            "{text:?} is not a duration: expected a positive number"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
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
            format!("{:?}", plugin.state).to_lowercase(),
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

pub fn run(options: &HeadlessOptions) -> Result<()> {
    let config = options.engine.engine_config()?;
    if config.plugin_dirs.is_empty() {
        bail!(
            "no plugin directory: pass --plugins <dir> (a directory holding bundle directories) or set plugin_dirs in --config"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    let engine = Engine::start(config).context("the engine cannot start")?;
    for plugin in engine.plugins() {
        // A plugin that fails verification or start-up shows as Rejected/Failed with its
        // reason in the snapshots; the others run.
        let _ = engine.execute(Command::Start { plugin });
    }
    if options.traffic.is_some() {
        engine.execute(Command::Traffic {
            rate: options.traffic,
        })?;
    }
    let started = Instant::now();
    // Soonest first; each runs on a thread of its own, since an emit lasts as long as its
    // slowest subscriber and snapshots go on meanwhile.
    let mut emits = options.emits.clone();
    emits.sort_by_key(|scheduled| std::cmp::Reverse(scheduled.delay));
    std::thread::scope(|scope| -> Result<()> {
        let mut next_print = started;
        let mut printed = Ok(());
        while !stop.load(Ordering::SeqCst)
            && options
                .duration
                .is_none_or(|duration| started.elapsed() < duration)
        {
            while emits
                .last()
                .is_some_and(|scheduled| started.elapsed() >= scheduled.delay)
            {
                if let Some(scheduled) = emits.pop() {
                    let engine = &engine;
                    scope.spawn(move || emit(engine, &scheduled.hook));
                }
            }
            if Instant::now() >= next_print {
                printed = print(&engine.snapshot(), options.json);
                if printed.is_err() {
                    // Stdout is gone (a closed pipe): stop as on a signal, plugins first.
                    break;
                }
                next_print += options.interval;
            }
            std::thread::sleep(Duration::from_millis(20).min(options.interval));
        }
        for scheduled in emits.iter().rev() {
            eprintln!(
                "plugboard: `{}` was not emitted: the run ended before its delay of {:?}",
                scheduled.hook, scheduled.delay
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
}
