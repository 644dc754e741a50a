//! The terminal dashboard: a ratatui/crossterm front end over the embedded engine. It
//! sends `Command`s (each on a thread of its own) and renders `Snapshot`s taken by a
//! sampling thread; see `event_loop` for how the pieces meet.

pub(crate) mod app;
mod columns;
mod demo;
mod describe;
mod event_loop;
mod format;
pub(crate) mod keymap;
mod reload_preview;
mod sampler;
mod terminal;
pub(crate) mod theme;
pub(crate) mod ui;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plugboard_engine::{Engine, EngineConfig};

use crate::cli::EngineOptions;
use crate::cli::{parse_duration, parse_traffic_on_rate, parse_traffic_rate};
use app::App;
use event_loop::Startup;
use keymap::Keymap;
use theme::Themes;

/// Options of `plugboard dashboard` (and of bare `plugboard`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DashboardOptions {
    #[command(flatten)]
    pub engine: EngineOptions,
    #[command(flatten)]
    pub view: ViewOptions,
    /// Only discover and verify the bundles; start none of them.
    #[arg(long)]
    pub no_start: bool,
    /// Drive the plugins' hooks at this many calls per second from the start (as
    /// `headless --traffic`); the traffic key turns it off and on.
    #[arg(long, value_name = "RATE", allow_negative_numbers = true, value_parser = parse_traffic_rate)]
    pub traffic: Option<f64>,
}

/// What the dashboard looks like; shared by `dashboard` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct ViewOptions {
    /// Colour theme: dark (default), light, high-contrast, solarized-dark, or one of
    /// yours in $XDG_CONFIG_HOME/plugboard/themes/. NO_COLOR turns colour off.
    #[arg(long, value_name = "NAME")]
    pub theme: Option<String>,
    /// Calls per second when the traffic key turns the generator on (default 20, the
    /// rate the demo starts with).
    #[arg(long, value_name = "RATE", allow_negative_numbers = true, value_parser = parse_traffic_on_rate)]
    pub traffic_rate: Option<f64>,
    /// How often the display refreshes when nothing happens (events refresh it at once).
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    pub refresh: Duration,
}

impl Default for ViewOptions {
    /// The same as the flags' defaults (bare `plugboard` parses no flags).
    fn default() -> Self {
        ViewOptions {
            theme: None,
            traffic_rate: None,
            refresh: Duration::from_secs(1),
        }
    }
}

/// `$XDG_CONFIG_HOME/plugboard`, else `~/.config/plugboard`.
fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })
        .map(|dir| dir.join("plugboard"))
}

/// `$XDG_STATE_HOME/plugboard/engine.log`, else `~/.local/state/plugboard/engine.log`:
/// where the engine's log goes when nothing else is configured — never the screen.
fn default_log_file() -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        })?
        .join("plugboard");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("engine.log"))
}

/// Loads the keymap and themes (user files over the built-ins) before the terminal is
/// touched, so a broken file is a plain one-line error.
fn prepare_app(view: &ViewOptions) -> Result<App> {
    let keymap = Keymap::load(Keymap::user_file().as_deref())?;
    let themes = Themes::load(Themes::user_dir().as_deref())?;
    let name = view.theme.as_deref().unwrap_or(theme::DEFAULT_THEME);
    let theme = themes.resolve(name, theme::no_color_requested())?;
    let mut app = App::new(keymap, themes, theme);
    if let Some(rate) = view.traffic_rate {
        app.traffic_rate = rate;
    }
    Ok(app)
}

fn require_terminal() -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("the dashboard needs a terminal; for scripts use `plugboard headless`");
    }
    Ok(())
}

/// `plugboard dashboard`: the engine on the configured plugin directories, under the
/// dashboard.
pub fn dashboard(options: &DashboardOptions) -> Result<()> {
    // Broken user files are reported first: they are what the user can fix.
    let mut app = prepare_app(&options.view)?;
    require_terminal()?;
    let mut config = options.engine.engine_config()?;
    if config.log_file.is_none() {
        config.log_file = default_log_file();
    }
    if config.plugin_dirs.is_empty() && config.bundles.is_empty() {
        app.empty_hint = Some(
            "no plugin directory: pass --plugins DIR (a directory of bundle directories) or set plugin_dirs in the host configuration".to_owned(),
        );
    }
    let log_file = config.log_file.clone();
    let engine = start_engine(config)?;
    let start = if options.no_start {
        Vec::new()
    } else {
        startable(&engine)
    };
    if let Some(log) = log_file {
        app.status = Some(app::Status {
            text: format!("engine log: {}", log.display()),
            role: theme::Role::Muted,
        });
    }
    event_loop::run(
        engine,
        app,
        &Startup {
            start,
            load: Vec::new(),
            traffic: options.traffic.filter(|rate| *rate > 0.0),
            sample_interval: Some(options.view.refresh),
        },
    )
}

fn start_engine(config: EngineConfig) -> Result<Engine> {
    Engine::start(config).context("the engine cannot start")
}

/// Every plugin that may start (not disabled, not refused already).
fn startable(engine: &Engine) -> Vec<String> {
    engine
        .snapshot()
        .plugins
        .into_iter()
        .filter(|plugin| plugin.enabled && plugin.state != plugboard_engine::PluginState::Rejected)
        .map(|plugin| plugin.name)
        .collect()
}

/// `plugboard demo`: the example bundles signed with a throw-away key, the well-behaved
/// ones running under traffic.
pub fn demo(view: &ViewOptions) -> Result<()> {
    let app = prepare_app(view)?;
    require_terminal()?;
    demo::run(app, view)
}
