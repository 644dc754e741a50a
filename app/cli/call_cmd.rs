//! `plugboard call`: start one bundle sandboxed, call one hook, print the reply, stop it —
//! the plugin author's quickest check, and the on-call engineer's: a failed call says on
//! stderr what the plugin answered and, when its worker died, how.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use plugboard_engine::manifest::MANIFEST_FILE;
use plugboard_engine::policy::Violation;
use plugboard_engine::snapshot::OutputLine;
use plugboard_engine::worker::{ExitStatus, OutputStream};
use plugboard_engine::{
    CallReport, Command, Engine, EngineError, EventKind, Outcome, PluginSnapshot,
};
use serde::Serialize;

use super::engine_options::EngineOptions;
use super::output::{errln, one_line_reason, outln};
use super::stop_signals::{POLL_INTERVAL, StopSignals};

/// How long a dead worker's exit status may take to reach the snapshot after its call
/// came back `gone`.
const EXIT_RECORDED_WITHIN: Duration = Duration::from_secs(2);

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct CallOutput<'a> {
    plugin: &'a str,
    hook: &'a str,
    status: &'a str,
    reply: &'a str,
    /// The call's duration in microseconds, and the same for people.
    duration_us: u64,
    duration: String,
    isolation: &'a str,
    /// Badges of the mechanisms the kernel granted the worker (`ns uid nnp cap rl cg ll sc`).
    mechanisms: &'a [String],
    worker_pid: Option<u32>,
    /// What went wrong, as stderr says it; `null` when the status is `ok`.
    error: Option<&'a str>,
    /// How the worker ended, when it died: `{"code": n}` or `{"signal": n}`, as in a
    /// snapshot's `last_exit`.
    last_exit: Option<ExitStatus>,
    /// The violations the engine caught during the call, as in the snapshots' events.
    violations: &'a [Violation],
    /// Run without a trust verdict (`--allow-unsigned`): why the trust store refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    unverified: Option<&'a str>,
    /// What the plugin logged and its worker printed, oldest first.
    output: Vec<PrintedLine<'a>>,
}

/// One line of the plugin's output in `--json`.
#[derive(Debug, Serialize)]
struct PrintedLine<'a> {
    at_ms: u64,
    /// `stdout`, `stderr`, or the level of a `host.log` line (`error`, `warn`, `info`,
    /// `debug`).
    stream: &'static str,
    line: &'a str,
}

impl<'a> PrintedLine<'a> {
    fn all(lines: &'a [OutputLine]) -> Vec<Self> {
        lines
            .iter()
            .map(|line| PrintedLine {
                at_ms: line.at_ms,
                stream: stream_name(line.stream),
                line: &line.line,
            })
            .collect()
    }
}

fn stream_name(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
        OutputStream::Log { level } => plugboard_sdk::LogLevel::from_code(level).name(),
    }
}

/// The plugin's output on stderr, one line each, before what `call` says of the call.
/// Control characters are escaped (as in the engine's log): a plugin's newline must not
/// start a line that passes for `call`'s own, nor its escape sequences reach the terminal.
fn print_output(plugin: Option<&str>, lines: &[OutputLine]) {
    let plugin = plugin.unwrap_or("plugin");
    for line in lines {
        errln!(
            "{plugin} {}: {}",
            stream_name(line.stream),
            plugboard_engine::text::one_line(&line.line)
        );
    }
}

/// What `--json` prints when there is no answer to print.
#[derive(Debug, Serialize)]
struct CallFailure<'a> {
    /// `null` when the bundle did not get as far as being named.
    plugin: Option<&'a str>,
    hook: &'a str,
    error: &'a str,
    /// The hooks the plugin has, when the one asked for is not among them.
    #[serde(skip_serializing_if = "Option::is_none")]
    hooks: Option<&'a [String]>,
    /// What the plugin logged and printed before it failed (a panic in its `create`).
    output: Vec<PrintedLine<'a>>,
}

/// What is known of the plugin by the time something fails.
#[derive(Debug, Default)]
struct Known {
    plugin: Option<String>,
    hooks: Option<Vec<String>>,
    /// What the plugin logged and printed, read once its worker is stopped.
    output: Vec<OutputLine>,
}

/// A call that was answered.
#[derive(Debug)]
struct Answered {
    report: CallReport,
    /// As it was started.
    started: PluginSnapshot,
    /// After a call that was not `ok`: how its worker ended, if it did.
    last_exit: Option<ExitStatus>,
    violations: Vec<Violation>,
}

pub fn run(
    options: &EngineOptions,
    bundle: &Path,
    hook: &str,
    payload: Option<&str>,
    json: bool,
) -> Result<()> {
    let payload = match payload {
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read the payload from stdin")?;
            bytes
        }
        Some(text) => text.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let mut known = Known::default();
    let answered = match call(options, bundle, hook, payload, &mut known) {
        Ok(answered) => answered,
        Err(err) => {
            if json {
                let failure = CallFailure {
                    plugin: known.plugin.as_deref(),
                    hook,
                    error: &one_line_reason(&err),
                    hooks: known.hooks.as_deref(),
                    output: PrintedLine::all(&known.output),
                };
                // The call's own failure decides the exit status, not a reader gone.
                let _ = outln!("{}", serde_json::to_string(&failure)?);
            } else {
                print_output(known.plugin.as_deref(), &known.output);
            }
            return Err(err);
        }
    };
    let report = &answered.report;
    let failure = (report.status != "ok").then(|| describe_failure(&answered));
    // Development mode ran what the trust store refused: said every time, loudly.
    let trust = &answered.started.trust;
    let unverified = trust.unverified.then(|| {
        trust
            .unverified_because
            .as_deref()
            .unwrap_or("no trust verdict")
    });
    if let Some(why) = unverified {
        errln!(
            "plugboard: warning: `{}` ran UNVERIFIED (development mode): {why}",
            report.plugin
        );
    }
    if json {
        let output = CallOutput {
            plugin: &report.plugin,
            hook: &report.hook,
            status: &report.status,
            reply: &report.reply,
            duration_us: report.duration_us,
            duration: format!("{:?}", Duration::from_micros(report.duration_us)),
            isolation: &answered.started.isolation,
            mechanisms: &answered.started.active_mechanisms,
            worker_pid: answered.started.worker_pid,
            error: failure.as_deref(),
            last_exit: answered.last_exit,
            violations: &answered.violations,
            unverified,
            output: PrintedLine::all(&known.output),
        };
        let printed = outln!("{}", serde_json::to_string(&output)?);
        if failure.is_none() {
            printed?;
        }
    } else {
        print_output(Some(&report.plugin), &known.output);
        if failure.is_none() {
            outln!("{}", report.reply)?;
            if !answered.violations.is_empty() {
                errln!("plugboard: note: {}", caught(&answered.violations));
            }
        }
    }
    match failure {
        Some(failure) => bail!(failure),
        None => Ok(()),
    }
}

/// Starts the bundle, calls the hook and stops the engine, also when SIGINT or SIGTERM
/// arrives meanwhile: the worker and its cgroups never outlive the command.
fn call(
    options: &EngineOptions,
    bundle: &Path,
    hook: &str,
    payload: Vec<u8>,
    known: &mut Known,
) -> Result<Answered> {
    if !bundle.join(MANIFEST_FILE).is_file() {
        bail!(
            "{} is not a bundle directory: expected a directory holding {MANIFEST_FILE}, the library and plugin.sig (`plugboard pack` makes one)",
            bundle.display()
        );
    }
    // Just this bundle: no plugin directories, no watcher, no restarts, no operator
    // toggles — a crash or a refusal is the answer. Sandboxed, even when the bundle asks
    // for in-process: a crash must end the worker, not this command.
    let mut config = options.engine_config_without_plugin_dirs()?;
    config.bundles = vec![PathBuf::from(bundle)];
    config.sandbox_in_process = true;
    config.watch.enabled = false;
    config.restart.enabled = false;
    config.state_file = None;
    let signals = StopSignals::install()?;
    let engine = Engine::start(config).context("the engine cannot start")?;
    let answered = signals.stop_engine_during(&engine, || {
        start_and_call(&engine, bundle, hook, payload, known)
    });
    engine.shutdown();
    // Read once the worker is stopped: its last lines (a panic's message) are in.
    if let Some(name) = &known.plugin {
        known.output = engine.plugin_output(name).unwrap_or_default();
    }
    if let Some(signal) = signals.received() {
        bail!(
            "interrupted by {signal}: {} was stopped, with its worker and cgroups",
            known
                .plugin
                .as_deref()
                .map_or_else(|| "the engine".to_owned(), |name| format!("`{name}`"))
        );
    }
    answered
}

fn start_and_call(
    engine: &Engine,
    bundle: &Path,
    hook: &str,
    payload: Vec<u8>,
    known: &mut Known,
) -> Result<Answered> {
    let name = engine
        .plugins()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no plugin", bundle.display()))?;
    known.plugin = Some(name.clone());
    // The engine's refusal names the plugin already.
    engine.execute(Command::Start {
        plugin: name.clone(),
    })?;
    let started = plugin_snapshot(engine, &name)?;
    let outcome = engine.execute(Command::Call {
        plugin: name.clone(),
        hook: hook.to_owned(),
        payload,
    });
    let report = match outcome {
        Ok(Outcome::Called { report }) => report,
        Ok(other) => bail!("unexpected answer from the engine: {other:?}"),
        Err(err @ EngineError::UnknownHook { .. }) => {
            let hooks: Vec<String> = started.hooks.keys().cloned().collect();
            let listed = if hooks.is_empty() {
                "it subscribes to none".to_owned()
            } else {
                format!("its hooks are {}", hooks.join(", "))
            };
            known.hooks = Some(hooks);
            bail!("{err}: {listed}");
        }
        Err(err) => return Err(err.into()),
    };
    // An `ok` answer may still have been caught doing something (a refused socket): the
    // violations are reported whatever the status.
    let (last_exit, violations) = what_the_engine_saw(engine, &name, &report);
    Ok(Answered {
        report,
        started,
        last_exit,
        violations,
    })
}

fn plugin_snapshot(engine: &Engine, name: &str) -> Result<PluginSnapshot> {
    engine
        .snapshot()
        .plugins
        .into_iter()
        .find(|plugin| plugin.name == name)
        .ok_or_else(|| anyhow!("`{name}` vanished from the engine"))
}

/// How the worker ended (if it did) and the violations caught, after a call that was not
/// `ok`. A worker that died is recorded a moment after its call came back `gone`.
fn what_the_engine_saw(
    engine: &Engine,
    name: &str,
    report: &CallReport,
) -> (Option<ExitStatus>, Vec<Violation>) {
    // A round trip through the plugin's actor (a load of a plugin already loaded changes
    // nothing): what was queued to it during the call, the violations the seccomp
    // listener caught, is recorded once it answers.
    if report.status != "gone" {
        let _ = engine.execute(Command::Load {
            plugin: name.to_owned(),
        });
    }
    let deadline = Instant::now() + EXIT_RECORDED_WITHIN;
    let mut last_exit = None;
    loop {
        if let Ok(plugin) = plugin_snapshot(engine, name) {
            last_exit = plugin.last_exit;
        }
        if report.status != "gone" || last_exit.is_some() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let violations = engine
        .recent_events()
        .into_iter()
        .filter(|event| event.plugin.as_deref() == Some(name))
        .filter_map(|event| match event.kind {
            EventKind::Violation { violation } => Some(violation),
            _ => None,
        })
        .collect();
    (last_exit, violations)
}

/// One line for stderr: the status, the plugin's text, how the worker ended, what the
/// engine caught.
fn describe_failure(answered: &Answered) -> String {
    let report = &answered.report;
    let took = Duration::from_micros(report.duration_us);
    let (plugin, hook, status) = (&report.plugin, &report.hook, &report.status);
    let mut said = match status.as_str() {
        // The engine's answers: the plugin never saw the call, or never answered it.
        "too_large" | "busy" | "disabled" => {
            format!("the call of `{plugin}`'s `{hook}` was not sent, status {status}")
        }
        "timeout" => {
            format!("`{plugin}` did not answer `{hook}` in time, status timeout after {took:?}")
        }
        "gone" => format!("`{plugin}`'s worker ended during `{hook}`, status gone after {took:?}"),
        _ => format!("`{plugin}` answered `{hook}` with status {status} after {took:?}"),
    };
    let reply = report.reply.trim();
    if !reply.is_empty() {
        said = format!("{said}: {reply}");
    }
    let mut facts = Vec::new();
    match answered.last_exit {
        Some(ExitStatus::Code { code }) => {
            facts.push(format!("its worker exited with code {code}"));
        }
        Some(ExitStatus::Signal { signal }) => {
            let name = signal_hook::low_level::signal_name(signal).unwrap_or("unknown");
            facts.push(format!("its worker was killed by signal {signal} ({name})"));
        }
        None if report.status == "gone" => {
            facts.push("how its worker ended is not known".to_owned());
        }
        None => {}
    }
    if !answered.violations.is_empty() {
        facts.push(caught(&answered.violations));
    }
    facts.insert(0, said);
    facts.join("; ")
}

/// The violations the engine caught, in one line.
fn caught(violations: &[Violation]) -> String {
    let caught: Vec<String> = violations
        .iter()
        .map(|violation| format!("{} ({})", violation.kind, violation.detail))
        .collect();
    format!("violations: {}", caught.join(", "))
}
