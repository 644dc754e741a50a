//! The rules a manifest must follow beyond its types, and what each key expects — the one
//! place that wording lives, so a type error and a range error on the same key read alike.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Component, Path};

use super::error::UnavailableReason;
use super::source::{KeyPath, SourceMap, one_line};
use super::{
    Capabilities, ConfigKey, HealthSpec, HookSpec, HostLimits, Manifest, ManifestError, PluginInfo,
    Requires, Resources, SUPPORTED_API_VERSIONS,
};

const NAME_MAX_CHARS: usize = 64;
const PLUGIN_NAME: &str = "a plugin name: 1 to 64 characters from a-z, 0-9 and '-'";
const HOOK_NAME: &str = "a hook name: 1 to 64 characters from a-z, 0-9, '_', '.' and '-'";
const SETTING_NAME: &str = "a setting name: 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'";

const HEALTH_INTERVAL_MS: (u64, u64) = (100, 3_600_000);
const HEALTH_FAILURES: (u64, u64) = (1, 100);
/// A process needs a few descriptors of its own (stdio, its socket, the library) before the
/// plugin opens any.
const MIN_OPEN_FILES: u64 = 16;

/// What the key at `path` expects, worded for the manifest's author.
pub(super) fn describe(path: &KeyPath, limits: &HostLimits) -> Option<String> {
    let millis = |max: u64| format!("an integer number of milliseconds from 1 to {max}");
    let text = match path.shape().as_slice() {
        [] => "a TOML table".to_owned(),
        ["plugin"] => "a [plugin] table with name, version, api_version and library".to_owned(),
        ["plugin", "name"] => PLUGIN_NAME.to_owned(),
        ["plugin", "version"] => "a semver version such as \"1.2.0\"".to_owned(),
        ["plugin", "api_version"] => format!(
            "a plugin API version this host supports: {}",
            SUPPORTED_API_VERSIONS.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ),
        ["plugin", "description"] | ["plugin", "authors", "[]"] | ["config", _, "description"] => {
            "a string".to_owned()
        }
        ["plugin", "authors"] => "an array of strings".to_owned(),
        ["plugin", "library"] => {
            "a file name inside the bundle directory such as \"libhello.so\" (no '/', not \".\", \"..\", \"plugin.toml\" or \"plugin.sig\")"
                .to_owned()
        }
        ["plugin", "min_host_version"] => "a semver requirement such as \">=0.1\"".to_owned(),
        ["hooks"] => "a table of hooks such as [hooks.greet]".to_owned(),
        ["hooks", _] => "a table such as { priority = \"normal\", timeout_ms = 100 }".to_owned(),
        ["hooks", _, "priority"] => "one of: critical, high, normal, low, background".to_owned(),
        ["hooks", _, "timeout_ms"] | ["resources", "hook_timeout_ms"] => {
            millis(limits.max_hook_timeout_ms)
        }
        ["capabilities"] => "a table with fs_read, fs_write, network, spawn and emit".to_owned(),
        ["capabilities", "fs_read" | "fs_write"] => "an array of absolute paths".to_owned(),
        ["capabilities", "fs_read" | "fs_write", "[]"] => {
            "an absolute path without `..` components, such as \"/usr/share\"".to_owned()
        }
        ["capabilities", "network" | "spawn"] | ["config", _, "required"] => {
            "true or false".to_owned()
        }
        ["capabilities", "emit"] => "an array of hook names".to_owned(),
        ["capabilities", "emit", "[]"] => HOOK_NAME.to_owned(),
        ["resources"] => "a table with memory_mb, cpu_percent, max_threads, max_open_files, \
                          hook_timeout_ms and max_in_flight"
            .to_owned(),
        ["resources", "memory_mb"] => {
            format!("an integer number of MiB from 1 to {}", limits.max_memory_mb)
        }
        ["resources", "cpu_percent"] => format!(
            "an integer percentage of one CPU from 1 to {} (200 = two full cores)",
            limits.max_cpu_percent
        ),
        ["resources", "max_threads"] => {
            format!("an integer number of threads (pids) from 1 to {}", limits.max_threads)
        }
        ["resources", "max_open_files"] => format!(
            "an integer number of open files from {MIN_OPEN_FILES} to {}",
            limits.max_open_files
        ),
        ["resources", "max_in_flight"] => format!(
            "an integer number of concurrent hook calls from 1 to {}",
            limits.max_in_flight
        ),
        ["health"] => "a table with interval_ms, timeout_ms and failures_before_unhealthy".to_owned(),
        ["health", "interval_ms"] => format!(
            "an integer number of milliseconds from {} to {}",
            HEALTH_INTERVAL_MS.0, HEALTH_INTERVAL_MS.1
        ),
        ["health", "timeout_ms"] => {
            "an integer number of milliseconds from 1 to `health.interval_ms`".to_owned()
        }
        ["health", "failures_before_unhealthy"] => {
            format!("an integer from {} to {}", HEALTH_FAILURES.0, HEALTH_FAILURES.1)
        }
        ["dependencies"] => {
            "a table of plugin names and semver requirements such as counter = \"^0.1\"".to_owned()
        }
        ["dependencies", _] => "a semver requirement such as \"^0.1\"".to_owned(),
        ["config"] => "a table of settings such as [config.greeting]".to_owned(),
        ["config", _] => {
            "a table with `type` and optionally `default`, `description` and `required`".to_owned()
        }
        ["config", _, "type"] => "one of: string, integer, float, bool".to_owned(),
        ["config", _, "default"] => "a value of the setting's `type`".to_owned(),
        ["requires"] => "a table with binaries and libraries".to_owned(),
        ["requires", "binaries"] => "an array of program names or absolute paths".to_owned(),
        ["requires", "binaries", "[]"] => {
            "a program name such as \"sh\" or an absolute path such as \"/usr/bin/sh\"".to_owned()
        }
        ["requires", "libraries"] => "an array of library sonames".to_owned(),
        ["requires", "libraries", "[]"] => {
            "a library soname such as \"libc.so.6\" (a file name, no '/')".to_owned()
        }
        ["isolation"] => "a table with `mode`".to_owned(),
        ["isolation", "mode"] => "one of: process, in-process".to_owned(),
        _ => return None,
    };
    Some(text)
}

/// Turns a serde error (wrong type, unknown or missing key, unparsable version) into a
/// message in the same words as the checks below.
pub(super) fn from_serde(
    error: &serde_path_to_error::Error<toml::de::Error>,
    file: &Path,
    map: &SourceMap<'_>,
    limits: &HostLimits,
) -> ManifestError {
    let path = KeyPath::from_serde(error.path());
    let message = error.inner().message();
    let span = error.inner().span();
    let line = span
        .as_ref()
        .map(|span| map.line_at(span.start))
        .or_else(|| map.line_of(&path));

    // serde's wording is stable: "unknown field `x`, expected one of `a`, `b`".
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let allowed = rest
            .split_once(", expected")
            .map_or("", |(_, allowed)| allowed);
        let allowed: Vec<&str> = allowed.split('`').skip(1).step_by(2).collect();
        return ManifestError::UnknownKey {
            file: file.to_path_buf(),
            line,
            key: path.to_string(),
            section: path.parent().section(),
            expected: if allowed.is_empty() {
                "(none)".to_owned()
            } else {
                allowed.join(", ")
            },
        };
    }
    // "missing field `x`", reported with the path of the table it is missing from.
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let key = path.key(field);
        return ManifestError::MissingKey {
            file: file.to_path_buf(),
            line: map.line_of(&path),
            expected: describe(&key, limits).unwrap_or_else(|| "a value".to_owned()),
            key: key.to_string(),
        };
    }

    let value = span
        .and_then(|span| map.excerpt(span))
        .or_else(|| map.value_text(&path))
        .unwrap_or_else(|| "?".to_owned());
    let expected = match describe(&path, limits) {
        // serde's own words add nothing to ours for a plain type mismatch, but a parser's
        // reason (e.g. semver's "unexpected end of input while parsing minor version") does.
        Some(ours) if is_serde_type_mismatch(message) => ours,
        Some(ours) => format!("{ours} ({})", one_line(message)),
        None => one_line(message),
    };
    ManifestError::InvalidValue {
        file: file.to_path_buf(),
        line,
        key: path.to_string(),
        value,
        expected,
    }
}

fn is_serde_type_mismatch(message: &str) -> bool {
    [
        "invalid type:",
        "invalid value:",
        "invalid length",
        "unknown variant",
        "wanted string or table",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix))
}

/// Builds errors that point at a key of one manifest.
pub(super) struct Reporter<'a> {
    file: &'a Path,
    map: Option<&'a SourceMap<'a>>,
}

impl<'a> Reporter<'a> {
    pub(super) fn new(file: &'a Path, map: Option<&'a SourceMap<'a>>) -> Self {
        Self { file, map }
    }

    fn line(&self, path: &KeyPath) -> Option<u32> {
        self.map.and_then(|map| map.line_near(path))
    }

    /// The value as written; `parsed` (already quoted if a string) when it is not in the
    /// file, i.e. it is a default.
    fn value(&self, path: &KeyPath, parsed: impl Display) -> String {
        self.map
            .and_then(|map| map.value_text(path))
            .unwrap_or_else(|| format!("{parsed} (the default)"))
    }

    pub(super) fn invalid(
        &self,
        path: &KeyPath,
        parsed: impl Display,
        expected: impl Into<String>,
    ) -> ManifestError {
        ManifestError::InvalidValue {
            file: self.file.to_path_buf(),
            line: self.line(path),
            key: path.to_string(),
            value: self.value(path, parsed),
            expected: expected.into(),
        }
    }

    pub(super) fn invalid_name(
        &self,
        path: &KeyPath,
        name: &str,
        expected: impl Into<String>,
    ) -> ManifestError {
        ManifestError::InvalidName {
            file: self.file.to_path_buf(),
            line: self.line(path),
            key: path.to_string(),
            name: format!("{name:?}"),
            expected: expected.into(),
        }
    }

    pub(super) fn unavailable(
        &self,
        path: &KeyPath,
        parsed: impl Display,
        reason: UnavailableReason,
        expected: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Unavailable {
            file: self.file.to_path_buf(),
            line: self.line(path),
            key: path.to_string(),
            value: self.value(path, parsed),
            reason,
            expected: expected.into(),
        }
    }
}

/// The checks that need more than serde's types; none touches the file system.
pub(super) struct Checker<'a> {
    report: Reporter<'a>,
    limits: &'a HostLimits,
}

impl<'a> Checker<'a> {
    pub(super) fn new(file: &'a Path, map: &'a SourceMap<'a>, limits: &'a HostLimits) -> Self {
        Self {
            report: Reporter::new(file, Some(map)),
            limits,
        }
    }

    /// Checks section by section, in the order the schema lists them, and reports the first
    /// problem.
    pub(super) fn check(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        self.check_plugin(&manifest.plugin)?;
        self.check_hooks(&manifest.hooks)?;
        self.check_capabilities(&manifest.capabilities)?;
        self.check_resources(&manifest.resources)?;
        self.check_health(&manifest.health)?;
        self.check_dependencies(&manifest.plugin.name, &manifest.dependencies)?;
        self.check_config(&manifest.config)?;
        self.check_requires(&manifest.requires)
    }

    fn expected(&self, path: &KeyPath) -> String {
        describe(path, self.limits).unwrap_or_else(|| "a valid value".to_owned())
    }

    fn check_range(
        &self,
        path: &KeyPath,
        value: Option<impl Into<u64> + Copy + Display>,
        (min, max): (u64, u64),
    ) -> Result<(), ManifestError> {
        match value {
            Some(value) if !(min..=max).contains(&value.into()) => {
                Err(self.report.invalid(path, value, self.expected(path)))
            }
            _ => Ok(()),
        }
    }

    fn check_plugin(&self, plugin: &PluginInfo) -> Result<(), ManifestError> {
        let section = KeyPath::of(&["plugin"]);
        if !is_plugin_name(&plugin.name) {
            let path = section.key("name");
            return Err(self
                .report
                .invalid(&path, quoted(&plugin.name), PLUGIN_NAME));
        }
        if !SUPPORTED_API_VERSIONS.contains(&plugin.api_version) {
            let path = section.key("api_version");
            return Err(self
                .report
                .invalid(&path, plugin.api_version, self.expected(&path)));
        }
        // The bundle's own files cannot be its library: packing would overwrite one with the other.
        if !is_bare_file_name(&plugin.library)
            || plugin.library == super::MANIFEST_FILE
            || plugin.library == crate::trust::SIGNATURE_FILE
        {
            let path = section.key("library");
            return Err(self
                .report
                .invalid(&path, quoted(&plugin.library), self.expected(&path)));
        }
        if let Some(requirement) = &plugin.min_host_version {
            // Cargo guarantees the package version is semver; should it not parse, the
            // requirement counts as unmet rather than being skipped.
            let satisfied = semver::Version::parse(crate::HOST_VERSION)
                .is_ok_and(|host| requirement.matches(&host));
            if !satisfied {
                return Err(self.report.invalid(
                    &section.key("min_host_version"),
                    quoted(&requirement.to_string()),
                    format!(
                        "a requirement that this host's version {} satisfies",
                        crate::HOST_VERSION
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_hooks(&self, hooks: &BTreeMap<String, HookSpec>) -> Result<(), ManifestError> {
        for (name, spec) in hooks {
            let path = KeyPath::of(&["hooks", name]);
            if !is_hook_name(name) {
                return Err(self.report.invalid_name(&path, name, HOOK_NAME));
            }
            let max = self.limits.max_hook_timeout_ms;
            self.check_range(&path.key("timeout_ms"), spec.timeout_ms, (1, max))?;
        }
        Ok(())
    }

    fn check_capabilities(&self, capabilities: &Capabilities) -> Result<(), ManifestError> {
        for (key, paths) in [
            ("fs_read", &capabilities.fs_read),
            ("fs_write", &capabilities.fs_write),
        ] {
            for (index, sandbox_path) in paths.iter().enumerate() {
                if !is_sandbox_path(sandbox_path) {
                    let path = KeyPath::of(&["capabilities", key]).index(index);
                    let shown = quoted(&sandbox_path.to_string_lossy());
                    return Err(self.report.invalid(&path, shown, self.expected(&path)));
                }
            }
        }
        for (index, hook) in capabilities.emit.iter().enumerate() {
            if !is_hook_name(hook) {
                let path = KeyPath::of(&["capabilities", "emit"]).index(index);
                return Err(self.report.invalid(&path, quoted(hook), HOOK_NAME));
            }
        }
        Ok(())
    }

    fn check_resources(&self, resources: &Resources) -> Result<(), ManifestError> {
        let limits = self.limits;
        let path = |key| KeyPath::of(&["resources", key]);
        self.check_range(
            &path("memory_mb"),
            resources.memory_mb,
            (1, limits.max_memory_mb),
        )?;
        self.check_range(
            &path("cpu_percent"),
            resources.cpu_percent,
            (1, limits.max_cpu_percent.into()),
        )?;
        self.check_range(
            &path("max_threads"),
            resources.max_threads,
            (1, limits.max_threads.into()),
        )?;
        self.check_range(
            &path("max_open_files"),
            resources.max_open_files,
            (MIN_OPEN_FILES, limits.max_open_files.into()),
        )?;
        self.check_range(
            &path("hook_timeout_ms"),
            resources.hook_timeout_ms,
            (1, limits.max_hook_timeout_ms),
        )?;
        self.check_range(
            &path("max_in_flight"),
            resources.max_in_flight,
            (1, limits.max_in_flight.into()),
        )
    }

    fn check_health(&self, health: &HealthSpec) -> Result<(), ManifestError> {
        let path = |key| KeyPath::of(&["health", key]);
        self.check_range(
            &path("interval_ms"),
            Some(health.interval_ms),
            HEALTH_INTERVAL_MS,
        )?;
        if !(1..=health.interval_ms).contains(&health.timeout_ms) {
            return Err(self.report.invalid(
                &path("timeout_ms"),
                health.timeout_ms,
                format!(
                    "an integer number of milliseconds from 1 to {} (`health.interval_ms`)",
                    health.interval_ms
                ),
            ));
        }
        self.check_range(
            &path("failures_before_unhealthy"),
            Some(health.failures_before_unhealthy),
            HEALTH_FAILURES,
        )
    }

    fn check_dependencies(
        &self,
        own_name: &str,
        dependencies: &BTreeMap<String, semver::VersionReq>,
    ) -> Result<(), ManifestError> {
        for name in dependencies.keys() {
            let path = KeyPath::of(&["dependencies", name]);
            if !is_plugin_name(name) {
                return Err(self.report.invalid_name(&path, name, PLUGIN_NAME));
            }
            if name == own_name {
                return Err(self.report.invalid_name(
                    &path,
                    name,
                    format!("the name of another plugin: `{own_name}` cannot depend on itself"),
                ));
            }
        }
        Ok(())
    }

    fn check_config(&self, config: &BTreeMap<String, ConfigKey>) -> Result<(), ManifestError> {
        for (name, setting) in config {
            let path = KeyPath::of(&["config", name]);
            if !is_setting_name(name) {
                return Err(self.report.invalid_name(&path, name, SETTING_NAME));
            }
            let Some(default) = &setting.default else {
                continue;
            };
            let default_path = path.key("default");
            if setting.required {
                return Err(self.report.invalid(
                    &default_path,
                    default,
                    "no `default` for a setting with `required = true`: the host must supply \
                     its value (remove `default`, or set `required = false`)",
                ));
            }
            if !setting.value_type.accepts(default) {
                return Err(self.report.invalid(
                    &default_path,
                    default,
                    format!(
                        "{}, as `type = \"{}\"` says",
                        setting.value_type.describe(),
                        setting.value_type
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_requires(&self, requires: &Requires) -> Result<(), ManifestError> {
        for (index, binary) in requires.binaries.iter().enumerate() {
            if !is_binary_spec(binary) {
                let path = KeyPath::of(&["requires", "binaries"]).index(index);
                return Err(self
                    .report
                    .invalid(&path, quoted(binary), self.expected(&path)));
            }
        }
        for (index, library) in requires.libraries.iter().enumerate() {
            if !is_bare_file_name(library) {
                let path = KeyPath::of(&["requires", "libraries"]).index(index);
                return Err(self
                    .report
                    .invalid(&path, quoted(library), self.expected(&path)));
            }
        }
        Ok(())
    }
}

/// A string as a message shows it: quoted, with control characters escaped.
pub(super) fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn is_name(name: &str, allowed: impl Fn(char) -> bool) -> bool {
    (1..=NAME_MAX_CHARS).contains(&name.len()) && name.chars().all(allowed)
}

/// `[a-z0-9-]{1,64}`
pub fn is_plugin_name(name: &str) -> bool {
    is_name(name, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })
}

/// `[a-z0-9_.-]{1,64}`
pub fn is_hook_name(name: &str) -> bool {
    is_name(name, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
    })
}

/// `[A-Za-z0-9_-]{1,64}`
fn is_setting_name(name: &str) -> bool {
    is_name(name, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
    })
}

/// A single path component: what `library` and sonames must be.
fn is_bare_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// A program name to look up on `$PATH`, or an absolute path.
fn is_binary_spec(binary: &str) -> bool {
    if binary.contains('/') {
        binary.starts_with('/') && !binary.contains('\0')
    } else {
        is_bare_file_name(binary)
    }
}

/// Landlock rules are given absolute paths; `..` would make what is granted depend on
/// symlinks and mounts at run time rather than on what the author and signer read.
fn is_sandbox_path(path: &Path) -> bool {
    path.is_absolute()
        && !path
            .components()
            .any(|component| component == Component::ParentDir)
        && !path.as_os_str().as_encoded_bytes().contains(&0)
}
