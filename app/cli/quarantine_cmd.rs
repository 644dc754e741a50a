//! `plugboard quarantine list|clear`: the quarantine kept in the engine's state file, from a
//! shell. A running engine reads the file again before it starts a quarantined plugin.
//! Only the state file is read and written: no engine, no worker binary, no plugins.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use plugboard_engine::supervisor::state_file::PersistedState;

use super::engine_options::{EngineOptions, StateFileSource};
use super::output::{errln, outln};

/// Where the state file is.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QuarantineOptions {
    /// Host configuration file (TOML), read for its `state_file`. Default:
    /// $XDG_CONFIG_HOME/plugboard/plugboard.toml, then /etc/plugboard/plugboard.toml.
    #[arg(long, value_name = "F")]
    pub config: Option<PathBuf>,
    /// The engine's state file. Default: the configuration's `state_file`, else
    /// $XDG_STATE_HOME/plugboard/state.json.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// The audit file a clear is recorded in. Default: the configuration's `audit_file`.
    #[arg(long, value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
}

/// The state file as found: `None` for the default one, not written yet.
struct StateFile {
    path: PathBuf,
    state: Option<PersistedState>,
}

fn state_file(options: &QuarantineOptions) -> Result<StateFile> {
    let options = EngineOptions {
        config: options.config.clone(),
        state_file: options.state_file.clone(),
        ..EngineOptions::default()
    };
    let Some((path, source)) = options.state_file()? else {
        bail!(
            "no state file: pass --state-file FILE, set `state_file` in the host configuration, or set XDG_STATE_HOME or HOME"
        );
    };
    if exists(&path)? {
        let state = PersistedState::load(&path)?;
        return Ok(StateFile {
            path,
            state: Some(state),
        });
    }
    // An engine writes its state file on its first change only; one that has run on this
    // one left its claim beside it (`<state file>.engine`): nothing changed yet.
    let mut claim = path.clone().into_os_string();
    claim.push(".engine");
    let engine_ran = Path::new(&claim).exists();
    let given_by = match source {
        StateFileSource::Default => return Ok(StateFile { path, state: None }),
        StateFileSource::HostConfig | StateFileSource::Flag if engine_ran => {
            return Ok(StateFile { path, state: None });
        }
        StateFileSource::Flag => "--state-file",
        StateFileSource::HostConfig => "`state_file` in the host configuration",
    };
    bail!(
        "state file {} (given by {given_by}) does not exist: expected the file where an engine keeps its quarantines and disabled plugins",
        path.display()
    )
}

fn exists(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("cannot read state file {}", path.display())),
    }
}

fn ago(at_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(at_ms);
    let age = SystemTime::now()
        .duration_since(at)
        .unwrap_or_default()
        .as_secs();
    match age {
        0..60 => format!("{age}s ago"),
        60..3600 => format!("{}m ago", age / 60),
        3600..86_400 => format!("{}h ago", age / 3600),
        _ => format!("{}d ago", age / 86_400),
    }
}

pub fn list(options: &QuarantineOptions) -> Result<()> {
    let StateFile { path, state } = state_file(options)?;
    let Some(state) = state else {
        return outln!(
            "no state file exists yet at {}: no plugin has been quarantined",
            path.display()
        );
    };
    let quarantined: Vec<_> = state
        .plugins
        .iter()
        .filter_map(|(name, toggles)| Some((name, toggles.quarantined.as_ref()?)))
        .collect();
    if quarantined.is_empty() {
        outln!("no plugin is quarantined ({})", path.display())?;
    }
    for (name, quarantine) in quarantined {
        outln!(
            "{name:<20} {:<8} {}",
            ago(quarantine.at_ms),
            quarantine.reason
        )?;
    }
    Ok(())
}

pub fn clear(options: &QuarantineOptions, plugin: &str) -> Result<()> {
    let StateFile { path, state } = state_file(options)?;
    if state.is_none() {
        bail!(
            "`{plugin}` is not quarantined: no state file exists yet at {}",
            path.display()
        );
    }
    // Read again under the file's lock, so a running engine's change made in between is
    // kept.
    let mut was_quarantined = false;
    PersistedState::update(&path, |state| {
        if let Some(toggles) = state.plugins.get_mut(plugin) {
            was_quarantined = toggles.quarantined.take().is_some();
        }
    })?;
    if !was_quarantined {
        bail!("`{plugin}` is not quarantined (in {})", path.display());
    }
    record_clear(options, plugin);
    outln!(
        "cleared the quarantine of `{plugin}`; it can be started again (an engine running now \
         shows it quarantined until its next start of it: the dashboard's start key, or a \
         headless engine's next run)"
    )
}

/// Puts the clear in the audit trail (the configuration's, or `--audit-file`), so that
/// after an incident it says when the quarantine was lifted: a line of its own, with this
/// command's pid as its `engine_pid` and `seq` 1. Said, not fatal, when it cannot be.
fn record_clear(options: &QuarantineOptions, plugin: &str) {
    let engine_options = EngineOptions {
        config: options.config.clone(),
        audit_file: options.audit_file.clone(),
        ..EngineOptions::default()
    };
    let Ok(Some(file)) = engine_options.audit_file() else {
        return;
    };
    let event = plugboard_engine::Event {
        seq: 1,
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            }),
        plugin: Some(plugin.to_owned()),
        kind: plugboard_engine::EventKind::QuarantineCleared,
    };
    // One line appended, never a rotation: the file may be a running engine's, rotated
    // by its own settings.
    let policy = plugboard_engine::audit::AuditPolicy {
        max_bytes: u64::MAX,
        keep: 0,
        ..plugboard_engine::audit::AuditPolicy::new(file.clone())
    };
    let written = plugboard_engine::audit::AuditLog::open(policy)
        .and_then(|mut audit| audit.append(&event, true));
    if let Err(err) = written {
        errln!(
            "plugboard: warning: the clear is not in the audit file {}: {err}",
            file.display()
        );
    }
}
