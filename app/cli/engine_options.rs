//! The options every front end of the engine shares (`headless`, `call`, the dashboard),
//! and how they become an [`EngineConfig`].

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use plugboard_engine::EngineConfig;
use plugboard_engine::host_config;

/// Where the engine finds its configuration, keys and bundles.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EngineOptions {
    /// Host configuration file (TOML); flags given here add to or override it. Default:
    /// $XDG_CONFIG_HOME/plugboard/plugboard.toml, then /etc/plugboard/plugboard.toml.
    #[arg(long, value_name = "F")]
    pub config: Option<PathBuf>,
    /// Trust store with the pinned signing keys.
    #[arg(long, value_name = "DIR")]
    pub trust_store: Option<PathBuf>,
    /// A directory holding bundle directories (repeatable).
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Development only: also load unsigned or untrusted bundles (still sandboxed).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Append the plugins' captured output to this file.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Append every event as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
    /// Where disabled plugins and hooks are remembered. Default: the configuration's
    /// `state_file`, else $XDG_STATE_HOME/plugboard/state.json.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
}

/// Where the state file's path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFileSource {
    /// `--state-file`.
    Flag,
    /// `state_file` in the host configuration.
    HostConfig,
    /// `$XDG_STATE_HOME/plugboard/state.json` (or under `$HOME`): the engine writes it on
    /// the first change, so it may not exist yet.
    Default,
}

impl EngineOptions {
    /// The host configuration (the file given, else the default one if it exists) with
    /// the flags applied over it.
    pub fn engine_config(&self) -> Result<EngineConfig> {
        let config = self.configured(host_binary()?)?;
        check_plugin_dirs(&config)?;
        Ok(config)
    }

    /// [`Self::engine_config`] for a front end that manages bundles of its own choosing
    /// (`call`): no plugin directories, so none the configuration names has to exist.
    pub fn engine_config_without_plugin_dirs(&self) -> Result<EngineConfig> {
        let mut config = self.configured(host_binary()?)?;
        config.plugin_dirs.clear();
        Ok(config)
    }

    /// The configuration's settings with the flags applied, for a command that starts no
    /// worker (`suggest`): it needs no worker binary.
    pub fn settings(&self) -> Result<EngineConfig> {
        let config = self.configured(PathBuf::new())?;
        check_plugin_dirs(&config)?;
        Ok(config)
    }

    /// The state file and where its path came from. Reads only the host configuration:
    /// a command that edits the state file runs no plugin, and needs no worker binary.
    pub fn state_file(&self) -> Result<Option<(PathBuf, StateFileSource)>> {
        if let Some(file) = &self.state_file {
            return Ok(Some((file.clone(), StateFileSource::Flag)));
        }
        // No worker is started from this configuration: its worker binary is never used.
        let from_file = self.host_config_file(PathBuf::new())?;
        Ok(match from_file.state_file {
            Some(file) => Some((file, StateFileSource::HostConfig)),
            None => default_state_file().map(|file| (file, StateFileSource::Default)),
        })
    }

    /// The audit file: the flag, else the host configuration's `audit_file`. Reads only
    /// the host configuration (for a command that starts no engine).
    pub fn audit_file(&self) -> Result<Option<PathBuf>> {
        if let Some(file) = &self.audit_file {
            return Ok(Some(file.clone()));
        }
        Ok(self.host_config_file(PathBuf::new())?.audit_file)
    }

    /// The host configuration file's settings alone (the file given, else the default one
    /// if it exists), the worker being `host_binary`.
    fn host_config_file(&self, host_binary: PathBuf) -> Result<EngineConfig> {
        let mut config = EngineConfig::new(host_binary);
        if let Some(file) = self
            .config
            .clone()
            .or_else(host_config::default_config_file)
        {
            host_config::apply_file(&mut config, &file)?;
        }
        Ok(config)
    }

    /// The host configuration with the flags applied, the worker being `host_binary`.
    fn configured(&self, host_binary: PathBuf) -> Result<EngineConfig> {
        let mut config = self.host_config_file(host_binary)?;
        config.plugin_dirs.extend(self.plugin_dirs.iter().cloned());
        if self.trust_store.is_some() {
            config.trust_store.clone_from(&self.trust_store);
        }
        config.allow_unsigned |= self.allow_unsigned;
        if self.log_file.is_some() {
            config.log_file.clone_from(&self.log_file);
        }
        if self.audit_file.is_some() {
            config.audit_file.clone_from(&self.audit_file);
        }
        if self.state_file.is_some() {
            config.state_file.clone_from(&self.state_file);
        } else if config.state_file.is_none() {
            config.state_file = default_state_file();
        }
        Ok(config)
    }
}

fn check_plugin_dirs(config: &EngineConfig) -> Result<()> {
    for dir in &config.plugin_dirs {
        if !dir.is_dir() {
            bail!(
                "plugin directory {} does not exist or is not a directory",
                dir.display()
            );
        }
    }
    Ok(())
}

/// `$XDG_STATE_HOME/plugboard/state.json`, else `~/.local/state/plugboard/state.json`.
fn default_state_file() -> Option<PathBuf> {
    let state_home = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        })?;
    Some(state_home.join("plugboard/state.json"))
}

/// `plugboard-host` lives next to the `plugboard` binary.
fn host_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the plugboard binary")?;
    let host = exe.with_file_name("plugboard-host");
    if !host.is_file() {
        bail!(
            "the worker binary {} is missing: build the workspace (`cargo build --workspace`) or install plugboard-host next to plugboard",
            host.display()
        );
    }
    Ok(host)
}
