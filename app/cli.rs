//! Command-line interface: argument definitions and dispatch.

mod audit_cmd;
mod bundle_cmds;
mod call_cmd;
mod engine_options;
mod headless;
mod new_plugin;
pub mod output;
mod quarantine_cmd;
mod stop_signals;
mod suggest_cmd;
mod trust_cmds;

pub use engine_options::EngineOptions;
pub use headless::{parse_duration, parse_traffic_on_rate, parse_traffic_rate};

use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

/// Verify, load, sandbox and supervise native plugins. Without a command: the dashboard.
#[derive(Debug, Parser)]
#[command(name = "plugboard", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The terminal dashboard over the plugins in the configured directories (the same
    /// flags as `headless`); also what `plugboard` alone opens.
    Dashboard(crate::tui::DashboardOptions),
    /// The dashboard on the example plugins, signed with a throw-away key in a temporary
    /// directory, the well-behaved ones running under traffic. Needs nothing prepared
    /// but a built workspace.
    Demo(crate::tui::ViewOptions),
    /// Generate an Ed25519 signing key pair: <dir>/<name>.key (mode 0600) and <dir>/<name>.pub.
    Keygen {
        /// Directory to write the key pair into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Base name of the two files.
        #[arg(long, default_value = "plugboard")]
        name: String,
    },
    /// Assemble a bundle directory from a manifest and a library, and sign it when a key is given.
    Pack {
        /// The plugin's manifest.
        #[arg(value_name = "PLUGIN.TOML")]
        manifest: PathBuf,
        /// The built library; copied into the bundle under the name the manifest gives.
        #[arg(long, value_name = "FILE.SO")]
        library: PathBuf,
        /// The bundle directory to write (created if missing).
        #[arg(long, value_name = "BUNDLE-DIR")]
        out: PathBuf,
        /// Private key to sign the bundle with.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Host configuration whose `[limits]` the bundle is checked against, as that
        /// host's engine will check it (default: the built-in limits).
        #[arg(long, value_name = "F")]
        config: Option<PathBuf>,
    },
    /// Sign a bundle: writes <bundle-dir>/plugin.sig.
    Sign {
        #[arg(value_name = "BUNDLE-DIR")]
        bundle: PathBuf,
        /// Private key (PKCS#8 PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Host configuration whose `[limits]` the bundle is checked against, as that
        /// host's engine will check it (default: the built-in limits).
        #[arg(long, value_name = "F")]
        config: Option<PathBuf>,
    },
    /// Verify a bundle: exits 0 only when it is signed by a pinned, unrevoked key.
    Verify {
        #[arg(value_name = "BUNDLE-DIR")]
        bundle: PathBuf,
        /// Trust store: a directory of pinned `.pub` keys plus an optional trust.toml
        /// (default: the `trust_store` of the host configuration given with --config).
        #[arg(long, value_name = "DIR")]
        trust_store: Option<PathBuf>,
        /// Host configuration whose `[limits]` the bundle is checked against, as that
        /// host's engine will check it (default: the built-in limits).
        #[arg(long, value_name = "F")]
        config: Option<PathBuf>,
    },
    /// Show a bundle's manifest summary, digests and signer.
    Inspect {
        #[arg(value_name = "BUNDLE-DIR")]
        bundle: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Also say whether the bundle is trusted and whether its key or digest is revoked.
        #[arg(long, value_name = "DIR")]
        trust_store: Option<PathBuf>,
        /// Host configuration whose `[limits]` the bundle is checked against, as that
        /// host's engine will check it (default: the built-in limits).
        #[arg(long, value_name = "F")]
        config: Option<PathBuf>,
    },
    /// Manage a trust store: pinned keys, trust levels, revocations, the encrypted trust list.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Scaffold a plugin crate with its manifest, ready to build, pack and sign.
    New {
        /// Plugin name ([a-z0-9-]{1,64}); also the crate's directory name.
        name: String,
        /// Where to create the crate directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Path to `plugins/sdk` to depend on (default: the SDK this Plugboard was built from, if present).
        #[arg(long, value_name = "DIR")]
        sdk_path: Option<PathBuf>,
    },
    /// Run the engine without the dashboard: start every bundle found, print snapshots as
    /// JSON lines (with --json), stop everything cleanly at the end or on SIGINT/SIGTERM.
    Headless(headless::HeadlessOptions),
    /// Start one bundle sandboxed, call one hook, print the reply and stop it (exit 1 when
    /// the status is not `ok`).
    Call {
        #[arg(value_name = "BUNDLE-DIR")]
        bundle: PathBuf,
        /// The hook to call.
        hook: String,
        /// The payload (`-` reads it from stdin; default: empty).
        payload: Option<String>,
        /// Print one JSON object: reply, status, duration, mechanisms.
        #[arg(long)]
        json: bool,
        /// Trust store with the pinned signing keys.
        #[arg(long, value_name = "DIR")]
        trust_store: Option<PathBuf>,
        /// Host configuration file (TOML).
        #[arg(long, value_name = "F")]
        config: Option<PathBuf>,
        /// Development only: call an unsigned or untrusted bundle (still sandboxed).
        #[arg(long)]
        allow_unsigned: bool,
        /// Also append the plugin's captured output to this file (it is printed on stderr
        /// either way).
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// Append every event of the run as a JSON line to this file.
        #[arg(long, value_name = "FILE")]
        audit_file: Option<PathBuf>,
    },
    /// List quarantined plugins, or clear one's quarantine (in the engine's state file).
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Read an audit file: every event in order; damaged lines are skipped with a warning.
    Audit {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// One JSON record per line (schema, seq, at_ms, plugin, kind, …).
        #[arg(long)]
        json: bool,
    },
    /// After a plugin ran in audit mode (`audit = true` under `[plugins.<name>]`), print the
    /// `[capabilities]` block that would let it run enforced, from the audit file.
    Suggest {
        /// The plugin's name.
        plugin: String,
        /// Print the suggestion as JSON (grants, evidence, runs) instead of TOML.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        engine: engine_options::EngineOptions,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// Quarantined plugins, when and why.
    List {
        #[command(flatten)]
        options: quarantine_cmd::QuarantineOptions,
    },
    /// Let a quarantined plugin start again.
    Clear {
        plugin: String,
        #[command(flatten)]
        options: quarantine_cmd::QuarantineOptions,
    },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// List pinned keys with their trust levels, revocations and the trust list.
    List {
        /// The trust store (a directory of pinned keys and revocations).
        #[arg(long, value_name = "DIR")]
        trust_store: PathBuf,
    },
    /// Pin a public key (SPKI PEM) in the store.
    Add {
        /// The trust store (created if it does not exist).
        #[arg(long, value_name = "DIR")]
        trust_store: PathBuf,
        /// The signer's public key file.
        #[arg(value_name = "KEY.PUB")]
        public_key: PathBuf,
        /// How far bundles signed by this key are trusted.
        #[arg(long, value_enum, default_value_t = Level::Sandboxed)]
        level: Level,
    },
    /// Revoke a key id or a bundle/library digest.
    #[command(group(
        clap::ArgGroup::new("revoked").required(true).args(["key_id", "digest"])
    ))]
    Revoke {
        /// The trust store (it must exist).
        #[arg(long, value_name = "DIR")]
        trust_store: PathBuf,
        /// Key id (16 hex characters) to revoke.
        #[arg(long, value_name = "KEY-ID")]
        key_id: Option<String>,
        /// SHA3-512 (128 hex characters) of a bundle or a library to revoke.
        #[arg(long, value_name = "SHA3-512")]
        digest: Option<String>,
    },
    /// Add a bundle (name, version, bundle digest) to the store's encrypted trust list.
    Allow {
        /// The trust store (it must exist).
        #[arg(long, value_name = "DIR")]
        trust_store: PathBuf,
        /// The bundle to allow.
        #[arg(value_name = "BUNDLE-DIR")]
        bundle: PathBuf,
    },
    /// Generate a key for the encrypted trust list (32 random bytes, mode 0600).
    ListKey {
        #[arg(value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Level {
    Sandboxed,
    InProcess,
}

impl From<Level> for plugboard_engine::trust::TrustLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Sandboxed => Self::Sandboxed,
            Level::InProcess => Self::InProcess,
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let Some(command) = cli.command else {
        return crate::tui::dashboard(&crate::tui::DashboardOptions::default());
    };
    match command {
        Command::Dashboard(options) => crate::tui::dashboard(&options),
        Command::Demo(view) => crate::tui::demo(&view),
        Command::Keygen { out, name } => bundle_cmds::keygen(&out, &name),
        Command::Pack {
            manifest,
            library,
            out,
            key,
            config,
        } => bundle_cmds::pack(&manifest, &library, &out, key.as_deref(), config.as_deref()),
        Command::Sign {
            bundle,
            key,
            config,
        } => bundle_cmds::sign(&bundle, &key, config.as_deref()),
        Command::Verify {
            bundle,
            trust_store,
            config,
        } => bundle_cmds::verify(&bundle, trust_store.as_deref(), config.as_deref()),
        Command::Inspect {
            bundle,
            json,
            trust_store,
            config,
        } => bundle_cmds::inspect(&bundle, json, trust_store.as_deref(), config.as_deref()),
        Command::Trust { command } => match command {
            TrustCommand::List { trust_store } => trust_cmds::list(&trust_store),
            TrustCommand::Add {
                trust_store,
                public_key,
                level,
            } => trust_cmds::add(&trust_store, &public_key, level.into()),
            TrustCommand::Revoke {
                trust_store,
                key_id,
                digest,
            } => trust_cmds::revoke(&trust_store, key_id.as_deref(), digest.as_deref()),
            TrustCommand::Allow {
                trust_store,
                bundle,
            } => trust_cmds::allow(&trust_store, &bundle),
            TrustCommand::ListKey { out } => trust_cmds::list_key(&out),
        },
        Command::Headless(options) => headless::run(&options),
        Command::Call {
            bundle,
            hook,
            payload,
            json,
            trust_store,
            config,
            allow_unsigned,
            log_file,
            audit_file,
        } => {
            let options = engine_options::EngineOptions {
                config,
                trust_store,
                allow_unsigned,
                log_file,
                audit_file,
                ..engine_options::EngineOptions::default()
            };
            call_cmd::run(&options, &bundle, &hook, payload.as_deref(), json)
        }
        Command::New {
            name,
            dir,
            sdk_path,
        } => new_plugin::scaffold(&name, &dir, sdk_path.as_deref()),
        Command::Quarantine { command } => match command {
            QuarantineCommand::List { options } => quarantine_cmd::list(&options),
            QuarantineCommand::Clear { plugin, options } => {
                quarantine_cmd::clear(&options, &plugin)
            }
        },
        Command::Audit { file, json } => audit_cmd::show(&file, json),
        Command::Suggest {
            plugin,
            json,
            engine,
        } => suggest_cmd::run(&engine, &plugin, json),
        Command::Completions { shell } => {
            // Generated whole first: the generator panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "plugboard", &mut script);
            output::write_text(String::from_utf8_lossy(&script))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
