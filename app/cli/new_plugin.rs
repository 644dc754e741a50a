//! `plugboard new <name>`: a plugin crate that builds, packs and signs with the CLI.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The SDK this binary was built beside, when that checkout still exists.
fn default_sdk_path() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/sdk");
    path.join("Cargo.toml").is_file().then_some(path)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub fn scaffold(name: &str, parent: &Path, sdk_path: Option<&Path>) -> Result<()> {
    if !valid_name(name) {
        bail!("plugin name {name:?} is invalid: expected 1 to 64 characters from a-z, 0-9 and '-'");
    }
    let crate_dir = parent.join(name);
    if crate_dir.exists() {
        bail!(
            "{} already exists; choose another name or directory",
            crate_dir.display()
        );
    }
    let sdk_dependency = match sdk_path.map(Path::to_path_buf).or_else(default_sdk_path) {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("SDK path {} does not exist", path.display()))?;
            format!(
                "plugboard-sdk = {{ path = {:?} }}",
                path.display().to_string()
            )
        }
        None => format!("plugboard-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    let testing_dependency = sdk_dependency.replacen("plugboard-sdk = ", "", 1);
    let testing_dependency = if testing_dependency.starts_with('{') {
        testing_dependency.replacen('}', ", features = [\"testing\"] }", 1)
    } else {
        format!("{{ version = {testing_dependency}, features = [\"testing\"] }}")
    };
    let library = format!("lib{}.so", name.replace('-', "_"));
    let type_name: String = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let type_name = if type_name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Plugin{type_name}")
    } else {
        type_name
    };

    let files: [(&str, String); 5] = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A plugin is a shared library exporting the Plugboard ABI.
[lib]
crate-type = ["cdylib"]

[dependencies]
{sdk_dependency}

[dev-dependencies]
plugboard-sdk = {testing_dependency}

# Standalone crate, even when created inside another workspace.
[workspace]
"#
            ),
        ),
        (
            "plugin.toml",
            format!(
                r#"[plugin]
name = "{name}"
version = "0.1.0"
api_version = {abi}
description = "What {name} does"
authors = []
library = "{library}"

# Hooks this plugin answers; priority: critical | high | normal | low | background.
# A hook's timeout_ms overrides [resources].hook_timeout_ms, which overrides the host default.
[hooks.ping]
priority = "normal"
timeout_ms = 100

# What the sandbox grants. Default: nothing.
[capabilities]
fs_read = []
fs_write = []
network = false
spawn = false
emit = []

[resources]
memory_mb = 32
cpu_percent = 25
max_threads = 8
"#,
                abi = plugboard_sdk::abi::ABI_VERSION
            ),
        ),
        (
            "src/lib.rs",
            format!(
                r#"//! The `{name}` Plugboard plugin.

use plugboard_sdk::{{Config, Error, Host, Plugin, export_plugin}};

#[derive(Debug)]
pub struct {type_name};

impl Plugin for {type_name} {{
    fn create(_host: Host, _config: Config) -> Result<Self, Error> {{
        Ok({type_name})
    }}

    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {{
        match hook {{
            "ping" => Ok([b"pong: ", payload].concat()),
            other => Err(Error::unknown_hook(other)),
        }}
    }}
}}

export_plugin!({type_name});
"#
            ),
        ),
        (
            "tests/plugin.rs",
            format!(
                r#"//! Loads the built library through the Plugboard ABI. Run `cargo build` first.

use plugboard_sdk::testing::{{TestPlugin, cdylib_path}};

#[test]
fn ping_answers_pong() {{
    let plugin = TestPlugin::load(cdylib_path("{name}")).expect("run `cargo build` before `cargo test`");
    assert_eq!(plugin.call("ping", b"hi").unwrap(), b"pong: hi");
}}
"#
            ),
        ),
        (
            "README.md",
            format!(
                r#"# {name}

A Plugboard plugin.

    cargo build && cargo test
    plugboard keygen --out keys --name {name}
    plugboard pack plugin.toml --library target/debug/{library} --out bundle --key keys/{name}.key
    plugboard verify bundle --trust-store <dir with keys/{name}.pub>
"#
            ),
        ),
    ];
    for (relative, contents) in files {
        let path = crate_dir.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created plugin crate {} (library {library})",
        crate_dir.display()
    );
    println!(
        "next: cd {} && cargo build && cargo test",
        crate_dir.display()
    );
    Ok(())
}
