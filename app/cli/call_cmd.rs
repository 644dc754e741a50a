//! `plugboard call`: start one bundle sandboxed, call one hook, print the reply, stop it —
//! the plugin author's quickest check.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plugboard_engine::{CallReport, Command, Engine, Outcome};
use serde::Serialize;

use super::engine_options::EngineOptions;
use super::output::outln;

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
    let mut config = options.engine_config()?;
    // Just this bundle: no plugin directories, no watcher, no restarts, no operator
    // toggles — a crash or a refusal is the answer.
    config.plugin_dirs.clear();
    config.bundles = vec![PathBuf::from(bundle)];
    config.watch.enabled = false;
    config.restart.enabled = false;
    config.state_file = None;
    let engine = Engine::start(config).context("the engine cannot start")?;
    let name = engine
        .plugins()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no plugin", bundle.display()))?;
    engine
        .execute(Command::Start {
            plugin: name.clone(),
        })
        .with_context(|| format!("`{name}` did not start"))?;
    let snapshot = engine
        .snapshot()
        .plugins
        .into_iter()
        .find(|plugin| plugin.name == name)
        .ok_or_else(|| anyhow!("`{name}` vanished from the engine"))?;
    let outcome = engine.execute(Command::Call {
        plugin: name.clone(),
        hook: hook.to_owned(),
        payload,
    });
    engine.shutdown();
    let report: CallReport = match outcome? {
        Outcome::Called { report } => report,
        other => bail!("unexpected answer from the engine: {other:?}"),
    };
    if json {
        let output = CallOutput {
            plugin: &report.plugin,
            hook: &report.hook,
            status: &report.status,
            reply: &report.reply,
            duration_us: report.duration_us,
            duration: format!("{:?}", std::time::Duration::from_micros(report.duration_us)),
            isolation: &snapshot.isolation,
            mechanisms: &snapshot.active_mechanisms,
            worker_pid: snapshot.worker_pid,
        };
        outln!("{}", serde_json::to_string(&output)?)?;
    } else {
        outln!("{}", report.reply)?;
    }
    if report.status != "ok" {
        bail!(
            "`{name}` answered `{hook}` with status {} after {} µs",
            report.status,
            report.duration_us
        );
    }
    Ok(())
}
