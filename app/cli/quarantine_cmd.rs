//! `plugboard quarantine list|clear`: the quarantine kept in the engine's state file, from a
//! shell. A running engine reads the file again before it starts a quarantined plugin.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use plugboard_engine::supervisor::state_file::PersistedState;

use super::engine_options::EngineOptions;
use super::output::outln;

fn state_file(options: &EngineOptions) -> Result<std::path::PathBuf> {
    let config = options.engine_config()?;
    match config.state_file {
        Some(file) => Ok(file),
        None => bail!(
            "no state file: pass --state-file FILE, set `state_file` in the host configuration, or set XDG_STATE_HOME or HOME"
        ),
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

pub fn list(options: &EngineOptions) -> Result<()> {
    let file = state_file(options)?;
    let state = PersistedState::load(&file)?;
    let quarantined: Vec<_> = state
        .plugins
        .iter()
        .filter_map(|(name, toggles)| Some((name, toggles.quarantined.as_ref()?)))
        .collect();
    if quarantined.is_empty() {
        outln!("no plugin is quarantined ({})", file.display())?;
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

pub fn clear(options: &EngineOptions, plugin: &str) -> Result<()> {
    let file = state_file(options)?;
    let mut state = PersistedState::load(&file)?;
    let Some(toggles) = state
        .plugins
        .get_mut(plugin)
        .filter(|toggles| toggles.quarantined.is_some())
    else {
        bail!("`{plugin}` is not quarantined (in {})", file.display());
    };
    toggles.quarantined = None;
    state.save(&file)?;
    outln!("cleared the quarantine of `{plugin}`; it can be started again")?;
    Ok(())
}
