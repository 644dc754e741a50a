//! The plugin manifest, `plugin.toml`: parsing and validation.
//!
//! This module's messages and the rules below are user-facing: plugin authors read them when
//! Plugboard refuses a bundle, so keep the documentation here in step with the code.
//!
//! # Schema
//!
//! ```toml
//! [plugin]
//! name = "hello"              # 1 to 64 characters from a-z, 0-9 and '-'
//! version = "0.1.0"           # semver
//! api_version = 1             # one of SUPPORTED_API_VERSIONS
//! description = "..."         # optional
//! authors = ["..."]           # optional
//! library = "libhello.so"     # a file name inside the bundle directory, no '/'
//! min_host_version = ">=0.1"  # optional semver requirement on Plugboard's version
//!
//! [hooks.greet]               # hook names: 1 to 64 characters from a-z, 0-9, '_', '.', '-'
//! priority = "normal"         # critical | high | normal | low | background (default normal)
//! timeout_ms = 100            # optional
//! traffic = true              # false: the traffic generator leaves this hook out (default true)
//!
//! [capabilities]              # default: nothing granted
//! fs_read = ["/usr/share"]    # absolute paths without `..`
//! fs_write = ["/tmp/x"]
//! network = false
//! spawn = false
//! emit = ["other.hook"]       # hooks the plugin may emit
//!
//! [resources]                 # default: the host's defaults; never above the host's maxima
//! memory_mb = 64              # MiB
//! cpu_percent = 50            # percent of one CPU: 200 = two full cores
//! max_threads = 16            # pids
//! max_open_files = 64         # at least 16
//! hook_timeout_ms = 1000
//! max_in_flight = 64          # concurrent hook calls
//!
//! [health]
//! interval_ms = 5000          # 100 to 3600000 (default 5000)
//! timeout_ms = 1000           # 1 to interval_ms (default 1000)
//! failures_before_unhealthy = 3  # 1 to 100 (default 3)
//!
//! [dependencies]
//! counter = "^0.1"            # plugin name -> semver requirement
//!
//! [config.greeting]           # setting names: 1 to 64 characters from A-Z, a-z, 0-9, '_', '-'
//! type = "string"             # string | integer | float | bool
//! default = "Hello"           # optional; an integer is also a valid float
//! description = "..."
//! required = false            # a required setting has no default: the host must supply it
//!
//! [requires]
//! binaries = ["sh"]           # a name found executable on $PATH, or an absolute path
//! libraries = ["libc.so.6"]   # a soname found in a system library directory
//!
//! [isolation]
//! mode = "process"            # "process" (default) | "in-process"
//! ```
//!
//! Unknown keys anywhere are rejected, so a typo never silently means "use the default".
//!
//! # Hook timeouts
//!
//! The timeout of a call to a hook is, in order of precedence:
//!
//! 1. the hook's own `[hooks.<name>].timeout_ms`, if set;
//! 2. else the host's override `[plugins.<name>.resources].hook_timeout_ms` in its
//!    configuration file, if set;
//! 3. else the plugin-wide `[resources].hook_timeout_ms`, if set;
//! 4. else the host's default ([`HostLimits::default_hook_timeout_ms`]).
//!
//! All three values must lie between 1 ms and the host's maximum
//! ([`HostLimits::max_hook_timeout_ms`]). See [`Manifest::hook_timeout_with`].
//!
//! # Errors
//!
//! Every [`ManifestError`] names the file, the dotted key (`resources.memory_mb`,
//! `hooks.greet.priority`, `config.retries.default`), the line when it is known, the value
//! as written and what was expected:
//!
//! ```text
//! plugins/hello/plugin.toml:12: `resources.memory_mb` = 0: expected an integer number of MiB from 1 to 8192
//! ```
//!
//! [`Manifest::parse`] checks everything that does not touch the file system;
//! [`Manifest::check_bundle`] checks the library file and the `[requires]` section on this
//! host; [`Manifest::load`] does both for a bundle directory.

mod error;
mod host;
mod source;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ManifestError, UnavailableReason};
pub use host::HostSearchPaths;
pub use validate::{is_hook_name, is_plugin_name};

use source::{KeyPath, SourceMap};

/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// The plugin ABI versions this host can load; `[plugin].api_version` must be one of them.
pub const SUPPORTED_API_VERSIONS: &[u32] = &[plugboard_sdk::abi::ABI_VERSION];

/// Manifests larger than this are refused unread: a real one is a few KiB, and reading an
/// arbitrarily large file handed to us would let a bundle exhaust the engine's memory.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The host policy's defaults and maxima for `[resources]` and hook timeouts. In a host
/// configuration file every field is optional (missing ones keep the built-in default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostLimits {
    pub default_memory_mb: u64,
    pub max_memory_mb: u64,
    pub default_cpu_percent: u32,
    pub max_cpu_percent: u32,
    pub default_max_threads: u32,
    pub max_threads: u32,
    pub default_max_open_files: u32,
    pub max_open_files: u32,
    pub default_hook_timeout_ms: u64,
    pub max_hook_timeout_ms: u64,
    pub default_max_in_flight: u32,
    pub max_in_flight: u32,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            default_memory_mb: 128,
            max_memory_mb: 8192,
            default_cpu_percent: 100,
            max_cpu_percent: 800,
            default_max_threads: 64,
            max_threads: 4096,
            default_max_open_files: 256,
            max_open_files: 65_536,
            default_hook_timeout_ms: 1000,
            max_hook_timeout_ms: 60_000,
            default_max_in_flight: 64,
            max_in_flight: 4096,
        }
    }
}

/// A parsed and validated `plugin.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub plugin: PluginInfo,
    pub hooks: BTreeMap<String, HookSpec>,
    pub capabilities: Capabilities,
    pub resources: Resources,
    pub health: HealthSpec,
    pub dependencies: BTreeMap<String, semver::VersionReq>,
    pub config: BTreeMap<String, ConfigKey>,
    pub requires: Requires,
    pub isolation: Isolation,
    /// Where the manifest came from; named in every later error.
    #[serde(skip)]
    file: PathBuf,
    /// The text as read, kept so that later checks can point at a line and the UI can show it.
    #[serde(skip)]
    source: String,
}

/// `[plugin]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    pub name: String,
    pub version: semver::Version,
    pub api_version: u32,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub authors: Vec<String>,
    pub library: String,
    #[serde(default)]
    pub min_host_version: Option<semver::VersionReq>,
}

/// `[hooks.<name>]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether the traffic generator calls it: `false` for a hook that does harm or costs
    /// much on purpose (the zoo's `chaos`), which only an operator's call or an emit reaches.
    #[serde(
        default = "driven_by_traffic",
        skip_serializing_if = "is_driven_by_traffic"
    )]
    pub traffic: bool,
}

impl Default for HookSpec {
    fn default() -> Self {
        Self {
            priority: Priority::default(),
            timeout_ms: None,
            traffic: driven_by_traffic(),
        }
    }
}

fn driven_by_traffic() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_driven_by_traffic(traffic: &bool) -> bool {
    *traffic
}

/// The order in which subscribers of one hook run: `Critical` first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
    Background,
}

impl Priority {
    /// Every priority, in dispatch order.
    pub const ALL: [Priority; 5] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Background,
    ];

    /// The name as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
            Priority::Background => "background",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// `[capabilities]`: what the sandbox grants. The default grants nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub fs_read: Vec<PathBuf>,
    #[serde(default)]
    pub fs_write: Vec<PathBuf>,
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub spawn: bool,
    #[serde(default)]
    pub emit: Vec<String>,
}

/// `[resources]`: what the plugin asks for; `None` means the host's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub cpu_percent: Option<u32>,
    #[serde(default)]
    pub max_threads: Option<u32>,
    #[serde(default)]
    pub max_open_files: Option<u32>,
    #[serde(default)]
    pub hook_timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// [`Resources`] with the host's defaults filled in: what the sandbox enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveResources {
    pub memory_mb: u64,
    pub cpu_percent: u32,
    pub max_threads: u32,
    pub max_open_files: u32,
    pub hook_timeout_ms: u64,
    pub max_in_flight: u32,
}

/// `[health]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSpec {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failures_before_unhealthy: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            interval_ms: 5000,
            timeout_ms: 1000,
            failures_before_unhealthy: 3,
        }
    }
}

impl HealthSpec {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `[config.<key>]`: one setting of the plugin's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigKey {
    #[serde(rename = "type")]
    pub value_type: ConfigType,
    /// Checked against `value_type`; an integer is kept as written for a float setting.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub description: String,
    /// A required setting has no default: the host must supply a value.
    #[serde(default)]
    pub required: bool,
}

/// The type of a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigType {
    String,
    Integer,
    Float,
    Bool,
}

impl ConfigType {
    /// The name as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigType::String => "string",
            ConfigType::Integer => "integer",
            ConfigType::Float => "float",
            ConfigType::Bool => "bool",
        }
    }

    /// Whether `value` is a valid value of this type (also used for the host's overrides).
    /// An integer is a valid float; a float must be finite.
    pub fn accepts(self, value: &serde_json::Value) -> bool {
        match self {
            ConfigType::String => value.is_string(),
            ConfigType::Integer => value.is_i64(),
            ConfigType::Float => value.is_i64() || value.as_f64().is_some_and(f64::is_finite),
            ConfigType::Bool => value.is_boolean(),
        }
    }

    /// What a value of this type looks like, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ConfigType::String => "a string",
            ConfigType::Integer => "an integer",
            ConfigType::Float => "a finite number",
            ConfigType::Bool => "true or false",
        }
    }
}

impl fmt::Display for ConfigType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// `[requires]`: what must exist on the host for the plugin to work.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    #[serde(default)]
    pub binaries: Vec<String>,
    #[serde(default)]
    pub libraries: Vec<String>,
}

/// `[isolation]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Isolation {
    #[serde(default)]
    pub mode: IsolationMode,
}

/// Where the plugin's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMode {
    /// In its own sandboxed `plugboard-host` worker.
    #[default]
    Process,
    /// In the engine's own process: lowest latency, no resource isolation.
    InProcess,
}

impl IsolationMode {
    /// The name as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationMode::Process => "process",
            IsolationMode::InProcess => "in-process",
        }
    }
}

impl fmt::Display for IsolationMode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The whole file as serde sees it, before the checks that need more than types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    plugin: PluginInfo,
    #[serde(default)]
    hooks: BTreeMap<String, HookSpec>,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    health: HealthSpec,
    #[serde(default)]
    dependencies: BTreeMap<String, semver::VersionReq>,
    #[serde(default)]
    config: BTreeMap<String, ConfigKey>,
    #[serde(default)]
    requires: Requires,
    #[serde(default)]
    isolation: Isolation,
}

impl Manifest {
    /// Parses and validates everything that does not touch the file system. `file` is used
    /// only in messages.
    pub fn parse(
        source: &str,
        file: &Path,
        limits: &HostLimits,
    ) -> Result<Manifest, ManifestError> {
        let map =
            SourceMap::parse(source).map_err(|err| ManifestError::syntax(file, source, &err))?;
        let document: Document = serde_path_to_error::deserialize(toml::Deserializer::new(source))
            .map_err(|err| validate::from_serde(&err, file, &map, limits))?;
        let manifest = Manifest {
            plugin: document.plugin,
            hooks: document.hooks,
            capabilities: document.capabilities,
            resources: document.resources,
            health: document.health,
            dependencies: document.dependencies,
            config: document.config,
            requires: document.requires,
            isolation: document.isolation,
            file: file.to_path_buf(),
            source: source.to_owned(),
        };
        validate::Checker::new(file, &map, limits).check(&manifest)?;
        Ok(manifest)
    }

    /// Checks what needs the bundle and the host: the library exists in `bundle_dir` as a
    /// regular file, and the required binaries and libraries exist on this host.
    pub fn check_bundle(&self, bundle_dir: &Path) -> Result<(), ManifestError> {
        self.check_bundle_with(bundle_dir, &HostSearchPaths::from_system())
    }

    /// [`Manifest::check_bundle`] with explicit directories to search for `[requires]`.
    pub fn check_bundle_with(
        &self,
        bundle_dir: &Path,
        search_paths: &HostSearchPaths,
    ) -> Result<(), ManifestError> {
        host::check_bundle(self, bundle_dir, search_paths)
    }

    /// Reads `<bundle_dir>/plugin.toml`, parses and checks it.
    pub fn load(bundle_dir: &Path, limits: &HostLimits) -> Result<Manifest, ManifestError> {
        let file = bundle_dir.join(MANIFEST_FILE);
        let source = read_bundle_manifest(&file)?;
        let manifest = Manifest::parse(&source, &file, limits)?;
        manifest.check_bundle(bundle_dir)?;
        Ok(manifest)
    }

    /// Effective timeout of a hook: the hook's own `timeout_ms`, else
    /// `[resources].hook_timeout_ms`, else `limits.default_hook_timeout_ms`.
    pub fn hook_timeout(&self, hook: &str, limits: &HostLimits) -> Duration {
        self.hook_timeout_with(hook, limits, &Resources::default())
    }

    /// [`Manifest::hook_timeout`] with the host's per-plugin overrides
    /// (`[plugins.<name>.resources]`): the hook's own `timeout_ms`, else the override's
    /// `hook_timeout_ms`, else `[resources].hook_timeout_ms`, else the host's default.
    pub fn hook_timeout_with(
        &self,
        hook: &str,
        limits: &HostLimits,
        overrides: &Resources,
    ) -> Duration {
        let millis = self
            .hooks
            .get(hook)
            .and_then(|spec| spec.timeout_ms)
            .unwrap_or_else(|| {
                self.effective_resources_with(limits, overrides)
                    .hook_timeout_ms
            });
        Duration::from_millis(millis)
    }

    /// Effective resource values (manifest value or host default).
    pub fn effective_resources(&self, limits: &HostLimits) -> EffectiveResources {
        self.effective_resources_with(limits, &Resources::default())
    }

    /// Effective resource values with the host's per-plugin overrides: each the override,
    /// else the manifest's value, else the host's default. The host configuration has
    /// already checked the overrides against its maxima.
    pub fn effective_resources_with(
        &self,
        limits: &HostLimits,
        overrides: &Resources,
    ) -> EffectiveResources {
        let asked = &self.resources;
        EffectiveResources {
            memory_mb: overrides
                .memory_mb
                .or(asked.memory_mb)
                .unwrap_or(limits.default_memory_mb),
            cpu_percent: overrides
                .cpu_percent
                .or(asked.cpu_percent)
                .unwrap_or(limits.default_cpu_percent),
            max_threads: overrides
                .max_threads
                .or(asked.max_threads)
                .unwrap_or(limits.default_max_threads),
            max_open_files: overrides
                .max_open_files
                .or(asked.max_open_files)
                .unwrap_or(limits.default_max_open_files),
            hook_timeout_ms: overrides
                .hook_timeout_ms
                .or(asked.hook_timeout_ms)
                .unwrap_or(limits.default_hook_timeout_ms),
            max_in_flight: overrides
                .max_in_flight
                .or(asked.max_in_flight)
                .unwrap_or(limits.default_max_in_flight),
        }
    }

    /// The config defaults as a JSON object (keys without a default omitted): what the
    /// plugin receives at creation when the host overrides nothing.
    pub fn default_config(&self) -> serde_json::Map<String, serde_json::Value> {
        self.config
            .iter()
            .filter_map(|(key, spec)| Some((key.clone(), spec.default.clone()?)))
            .collect()
    }

    /// What the plugin receives at creation: the `[config]` defaults overlaid by the host's
    /// overrides (`[plugins.<name>.config]`). Refused, with a message naming the host's key
    /// (`plugins.<name>.config.<key>`): an override of a key the manifest does not declare,
    /// a value not of the declared type (an integer is a valid float and is kept as
    /// written, as for defaults), and a `required` setting that gets no value.
    pub fn merged_config(
        &self,
        overrides: &BTreeMap<String, serde_json::Value>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let name = &self.plugin.name;
        let host_key = |key: &str| {
            format!(
                "plugins.{}.config.{}",
                toml_edit::Key::new(name.as_str()).display_repr(),
                toml_edit::Key::new(key).display_repr()
            )
        };
        let mut merged = self.default_config();
        for (key, value) in overrides {
            let Some(spec) = self.config.get(key) else {
                let expected = if self.config.is_empty() {
                    "no overrides: it declares no settings".to_owned()
                } else {
                    format!(
                        "one of: {}",
                        self.config.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(format!(
                    "`{}`: `{name}` has no setting `{key}` in its manifest ({}); expected {expected}",
                    host_key(key),
                    self.file.display()
                ));
            };
            if !spec.value_type.accepts(value) {
                return Err(format!(
                    "`{}` = {value}: expected {}, as `config.{}.type = \"{}\"` in {} says",
                    host_key(key),
                    spec.value_type.describe(),
                    toml_edit::Key::new(key.as_str()).display_repr(),
                    spec.value_type,
                    self.location_of(&format!(
                        "config.{}.type",
                        toml_edit::Key::new(key.as_str()).display_repr()
                    )),
                ));
            }
            merged.insert(key.clone(), value.clone());
        }
        if let Some((key, spec)) = self
            .config
            .iter()
            .find(|(key, spec)| spec.required && !merged.contains_key(key.as_str()))
        {
            return Err(format!(
                "`{}` is missing: `{name}` requires setting `{key}` ({}) and its manifest gives no default; expected {}",
                host_key(key),
                self.location_of(&format!(
                    "config.{}",
                    toml_edit::Key::new(key.as_str()).display_repr()
                )),
                spec.value_type.describe(),
            ));
        }
        Ok(merged)
    }

    /// `file:line` of a dotted key of this manifest, or just the file.
    fn location_of(&self, dotted_key: &str) -> String {
        match self.line_of(dotted_key) {
            Some(line) => format!("{}:{line}", self.file.display()),
            None => self.file.display().to_string(),
        }
    }

    /// The file the manifest was read from (as given to [`Manifest::parse`]).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The manifest's text as read.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The 1-based line of a dotted key such as `hooks.greet.timeout_ms` (TOML quoting
    /// allowed: `hooks."a.b"`), for messages about this manifest found later, e.g. when
    /// the host's config overrides do not match `[config]`.
    pub fn line_of(&self, dotted_key: &str) -> Option<u32> {
        let path = KeyPath::parse_dotted(dotted_key)?;
        SourceMap::parse(&self.source).ok()?.line_of(&path)
    }
}

/// Reads a manifest file (at most [`MAX_MANIFEST_BYTES`], UTF-8) in one go, so callers can
/// hash and parse the very same bytes. For a manifest given by an operator (`pack`); a
/// bundle's own is read with [`read_bundle_manifest`].
pub fn read_manifest(file: &Path) -> Result<String, ManifestError> {
    read_manifest_with(file, crate::regular_file::open_regular_file)
}

/// Reads a bundle's `plugin.toml` as [`read_manifest`] does, refusing a symlink: its text
/// is quoted back in errors, so it must be the bundle's own file.
pub fn read_bundle_manifest(file: &Path) -> Result<String, ManifestError> {
    read_manifest_with(file, crate::regular_file::open_regular_file_in_place)
}

fn read_manifest_with(
    file: &Path,
    open: fn(&Path) -> std::io::Result<std::fs::File>,
) -> Result<String, ManifestError> {
    let read_error = |source| ManifestError::Read {
        file: file.to_path_buf(),
        error: source,
    };
    let opened = open(file).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells "exactly at the limit" from "too large".
    opened
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            file: file.to_path_buf(),
            limit_bytes: MAX_MANIFEST_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|err| ManifestError::NotUtf8 {
        file: file.to_path_buf(),
        byte_offset: err.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let source = format!(
            "[plugin]\nname = \"hello\"\nversion = \"0.1.0\"\napi_version = 1\nlibrary = \"libhello.so\"\n{extra}"
        );
        Manifest::parse(
            &source,
            Path::new("hello/plugin.toml"),
            &HostLimits::default(),
        )
        .unwrap()
    }

    fn overrides(pairs: &[(&str, serde_json::Value)]) -> BTreeMap<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect()
    }

    const SCHEMA: &str = "[config.greeting]\ntype = \"string\"\ndefault = \"Hello\"\n\
        [config.ratio]\ntype = \"float\"\ndefault = 0.5\n\
        [config.retries]\ntype = \"integer\"\n\
        [config.api_key]\ntype = \"string\"\nrequired = true\n";

    #[test]
    fn overrides_lie_over_the_defaults() {
        let manifest = manifest(SCHEMA);
        let merged = manifest
            .merged_config(&overrides(&[
                ("greeting", json!("Hi")),
                ("ratio", json!(2)),
                ("api_key", json!("k")),
            ]))
            .unwrap();
        // An integer is a valid float and is kept as written, as for defaults.
        assert_eq!(
            serde_json::Value::Object(merged),
            json!({"greeting": "Hi", "ratio": 2, "api_key": "k"})
        );

        let merged = manifest
            .merged_config(&overrides(&[
                ("api_key", json!("k")),
                ("retries", json!(3)),
            ]))
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(merged),
            json!({"greeting": "Hello", "ratio": 0.5, "api_key": "k", "retries": 3})
        );
        assert_eq!(
            manifest_without_required().merged_config(&BTreeMap::new()),
            Ok(manifest_without_required().default_config())
        );
    }

    fn manifest_without_required() -> Manifest {
        manifest("[config.greeting]\ntype = \"string\"\ndefault = \"Hello\"\n")
    }

    #[test]
    fn unknown_keys_wrong_types_and_missing_required_settings_are_refused() {
        let manifest = manifest(SCHEMA);
        let err = manifest
            .merged_config(&overrides(&[("colour", json!("red"))]))
            .unwrap_err();
        assert!(
            err.contains("`plugins.hello.config.colour`")
                && err.contains("hello/plugin.toml")
                && err.contains("expected one of: api_key, greeting, ratio, retries"),
            "{err}"
        );

        let err = manifest
            .merged_config(&overrides(&[
                ("api_key", json!("k")),
                ("retries", json!("three")),
            ]))
            .unwrap_err();
        assert!(
            err.contains(r#"`plugins.hello.config.retries` = "three": expected an integer"#)
                && err.contains(r#"`config.retries.type = "integer"` in hello/plugin.toml:"#),
            "{err}"
        );
        let err = manifest
            .merged_config(&overrides(&[
                ("api_key", json!("k")),
                ("ratio", json!(true)),
            ]))
            .unwrap_err();
        assert!(err.contains("= true: expected a finite number"), "{err}");

        let err = manifest.merged_config(&BTreeMap::new()).unwrap_err();
        assert!(
            err.contains("`plugins.hello.config.api_key` is missing")
                && err.contains("requires setting `api_key`")
                && err.contains("expected a string"),
            "{err}"
        );

        let err = manifest_without_schema()
            .merged_config(&overrides(&[("x", json!(1))]))
            .unwrap_err();
        assert!(
            err.contains("expected no overrides: it declares no settings"),
            "{err}"
        );
    }

    fn manifest_without_schema() -> Manifest {
        manifest("")
    }

    #[test]
    fn resources_take_the_override_then_the_manifest_then_the_host_default() {
        let limits = HostLimits::default();
        let manifest = manifest(
            "[hooks.greet]\ntimeout_ms = 50\n[hooks.tick]\n[resources]\nmemory_mb = 64\ncpu_percent = 50\nhook_timeout_ms = 200\n",
        );
        let overrides = Resources {
            memory_mb: Some(256),
            max_threads: Some(8),
            hook_timeout_ms: Some(300),
            ..Resources::default()
        };
        let effective = manifest.effective_resources_with(&limits, &overrides);
        assert_eq!(
            effective,
            EffectiveResources {
                memory_mb: 256,
                cpu_percent: 50,
                max_threads: 8,
                max_open_files: limits.default_max_open_files,
                hook_timeout_ms: 300,
                max_in_flight: limits.default_max_in_flight,
            }
        );
        assert_eq!(
            manifest.effective_resources(&limits),
            EffectiveResources {
                memory_mb: 64,
                cpu_percent: 50,
                max_threads: limits.default_max_threads,
                max_open_files: limits.default_max_open_files,
                hook_timeout_ms: 200,
                max_in_flight: limits.default_max_in_flight,
            }
        );

        // The hook's own timeout wins over everything; then the override, the manifest's
        // plugin-wide value and the host's default.
        let ms = Duration::from_millis;
        assert_eq!(
            manifest.hook_timeout_with("greet", &limits, &overrides),
            ms(50)
        );
        assert_eq!(
            manifest.hook_timeout_with("tick", &limits, &overrides),
            ms(300)
        );
        assert_eq!(manifest.hook_timeout("tick", &limits), ms(200));
        let bare = manifest_without_schema();
        assert_eq!(
            bare.hook_timeout_with("tick", &limits, &Resources::default()),
            ms(limits.default_hook_timeout_ms)
        );
        assert_eq!(bare.hook_timeout_with("tick", &limits, &overrides), ms(300));
    }
}
