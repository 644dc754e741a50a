//! The host's configuration file (TOML): where plugins are, which keys are trusted, which
//! confinement mechanisms are required, resource defaults and maxima, how crashed plugins
//! are restarted, host-wide caps, and the host's say over each plugin (`[plugins.<name>]`).
//!
//! `examples/plugboard.toml` at the repository root holds every key with its default, its
//! unit and what it does; a test parses it, so it stays in step with this module.
//!
//! Without an explicit file, [`default_config_file`] finds one:
//! `$XDG_CONFIG_HOME/plugboard/plugboard.toml` (`~/.config/…` when that is unset), then
//! `/etc/plugboard/plugboard.toml`.
//!
//! Unknown keys are refused, so a typo never silently means "use the default". Every error
//! names the file, the line when it is known, the dotted key
//! (`plugins.hello.resources.memory_mb`), the value as written and what was expected:
//!
//! ```text
//! /etc/plugboard/plugboard.toml: line 12: `restart.factor` = 0.5: expected a finite number, at least 1.0 (each delay is the previous one times this)
//! ```
//!
//! A file is checked completely before anything is applied: a refused file leaves the
//! configuration as it was.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::{self, Display};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml_edit::{ImDocument, Item, Value};

use crate::engine::EngineConfig;
use crate::manifest::{HostLimits, Resources, is_plugin_name};
use crate::policy::{Action, Rule, ViolationKind};
use crate::sandbox::Mechanism;
use crate::supervisor::{PluginOverrides, RestartPolicy, WatchPolicy};

/// The file's name in each directory it is looked for in.
pub const CONFIG_FILE_NAME: &str = "plugboard.toml";

/// The longest grace period, host-wide or per plugin: ten minutes.
pub const MAX_GRACE_MS: u64 = 600_000;

/// The range of `watch.debounce_ms`.
pub const DEBOUNCE_MS: (u64, u64) = (10, 60_000);

/// A process needs a few descriptors of its own (stdio, its socket, the library) before the
/// plugin opens any; manifests obey the same floor.
const MIN_OPEN_FILES: u64 = 16;

/// Values quoted in messages are cut after this many characters.
const MAX_QUOTED_CHARS: usize = 80;

const PLUGIN_NAME: &str = "a plugin name: 1 to 64 characters from a-z, 0-9 and '-'";
const ENV_NAME: &str = "an environment variable name: not empty, without '=' or NUL";

/// Why a host configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostConfigError {
    #[error("cannot read host configuration {}: {error}", file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {message}", file.display())]
    Invalid { file: PathBuf, message: String },
}

/// The whole file as serde sees it, before the checks that need more than types.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    plugin_dirs: Vec<PathBuf>,
    #[serde(default)]
    bundles: Vec<PathBuf>,
    trust_store: Option<PathBuf>,
    #[serde(default)]
    allow_unsigned: bool,
    grace_ms: Option<u64>,
    cgroup_root: Option<PathBuf>,
    log_file: Option<PathBuf>,
    audit_file: Option<PathBuf>,
    state_file: Option<PathBuf>,
    audit_max_mb: Option<u64>,
    audit_keep: Option<u32>,
    log_max_mb: Option<u64>,
    log_keep: Option<u32>,
    max_plugins: Option<usize>,
    memory_budget_mb: Option<u64>,
    #[serde(default)]
    sandbox: SandboxSection,
    limits: Option<HostLimits>,
    restart: Option<RestartPolicy>,
    watch: Option<WatchPolicy>,
    #[serde(default)]
    plugins: BTreeMap<String, PluginOverrides>,
    /// Violation kind → rule, over the built-in policy.
    #[serde(default)]
    policy: BTreeMap<ViolationKind, RuleOverride>,
}

/// `[policy.<kind>]` as written: a key left out keeps the kind's rule as it was — the
/// built-in one unless an earlier file changed it (a section giving only `window_s` for
/// `hook_timeout` must not turn its `restart` into `log`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleOverride {
    action: Option<Action>,
    count: Option<u32>,
    window_s: Option<u64>,
    ratio: Option<f64>,
    sustained_s: Option<u64>,
}

impl RuleOverride {
    fn over(&self, mut rule: Rule) -> Rule {
        rule.action = self.action.unwrap_or(rule.action);
        rule.count = self.count.unwrap_or(rule.count);
        rule.window_s = self.window_s.unwrap_or(rule.window_s);
        rule.ratio = self.ratio.unwrap_or(rule.ratio);
        rule.sustained_s = self.sustained_s.unwrap_or(rule.sustained_s);
        rule
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SandboxSection {
    require: Option<Vec<Mechanism>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    tmpfs_mb: Option<u64>,
}

fn invalid(file: &Path, message: impl Into<String>) -> HostConfigError {
    HostConfigError::Invalid {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// Reads `file` and applies it over `config` (relative paths are relative to the file).
///
/// Lists (`plugin_dirs`, `bundles`, `sandbox.env`, `[plugins.<name>]`) add to what
/// `config` has; every other key present replaces its value. A section present in the
/// file (`[restart]`, `[watch]`, `[limits]`) replaces the whole policy, with the built-in
/// default for each key it leaves out.
pub fn apply_file(config: &mut EngineConfig, file: &Path) -> Result<(), HostConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| HostConfigError::Read {
        file: file.to_owned(),
        error: source,
    })?;
    let source = Source::parse(&text).map_err(|message| invalid(file, message))?;
    let parsed: FileConfig = serde_path_to_error::deserialize(toml::Deserializer::new(&text))
        .map_err(|err| invalid(file, source.serde_error(&err)))?;
    let limits = parsed
        .limits
        .clone()
        .unwrap_or_else(|| config.limits.clone());
    let policy: BTreeMap<ViolationKind, Rule> = parsed
        .policy
        .iter()
        .map(|(kind, written)| (*kind, written.over(config.policy.rule(*kind))))
        .collect();
    Checker {
        source: &source,
        limits: &limits,
        policy: &policy,
    }
    .check(&parsed)
    .map_err(|message| invalid(file, message))?;

    let base = file.parent().unwrap_or_else(|| Path::new("."));
    let resolve = |path: PathBuf| {
        if path.is_absolute() {
            path
        } else {
            base.join(path)
        }
    };
    config
        .plugin_dirs
        .extend(parsed.plugin_dirs.into_iter().map(resolve));
    config
        .bundles
        .extend(parsed.bundles.into_iter().map(resolve));
    if let Some(store) = parsed.trust_store {
        config.trust_store = Some(resolve(store));
    }
    config.allow_unsigned |= parsed.allow_unsigned;
    if let Some(grace) = parsed.grace_ms {
        config.grace = Duration::from_millis(grace);
    }
    if let Some(root) = parsed.cgroup_root {
        config.cgroup_root = resolve(root);
    }
    if let Some(log) = parsed.log_file {
        config.log_file = Some(resolve(log));
    }
    if let Some(audit) = parsed.audit_file {
        config.audit_file = Some(resolve(audit));
    }
    if let Some(state) = parsed.state_file {
        config.state_file = Some(resolve(state));
    }
    if let Some(max) = parsed.max_plugins {
        config.max_plugins = Some(max);
    }
    if let Some(budget) = parsed.memory_budget_mb {
        config.memory_budget_mb = Some(budget);
    }
    if let Some(require) = parsed.sandbox.require {
        config.worker.require = require;
    }
    for (name, value) in parsed.sandbox.env {
        config.worker.env.retain(|(existing, _)| *existing != name);
        config.worker.env.push((name, value));
    }
    if let Some(mb) = parsed.sandbox.tmpfs_mb {
        // Checked above: at most `limits.max_memory_mb`, so this cannot overflow in practice.
        config.worker.tmpfs_bytes = mb.saturating_mul(1024 * 1024);
    }
    config.limits = limits;
    if let Some(restart) = parsed.restart {
        config.restart = restart;
    }
    config.policy.rules.extend(policy);
    if let Some(megabytes) = parsed.audit_max_mb {
        config.audit_max_mb = megabytes;
    }
    if let Some(keep) = parsed.audit_keep {
        config.audit_keep = keep;
    }
    if let Some(megabytes) = parsed.log_max_mb {
        config.log_max_mb = megabytes;
    }
    if let Some(keep) = parsed.log_keep {
        config.log_keep = keep;
    }
    if let Some(watch) = parsed.watch {
        config.watch = watch;
    }
    config.plugins.extend(parsed.plugins);
    Ok(())
}

/// The host configuration file to use when none is given: the first that exists of
/// [`config_file_candidates`], or `None`.
pub fn default_config_file() -> Option<PathBuf> {
    first_existing(config_file_candidates())
}

/// Where [`default_config_file`] looks, in order: `$XDG_CONFIG_HOME/plugboard/plugboard.toml`
/// (`$HOME/.config/plugboard/plugboard.toml` when `XDG_CONFIG_HOME` is unset, empty or
/// relative), then `/etc/plugboard/plugboard.toml`.
pub fn config_file_candidates() -> Vec<PathBuf> {
    candidates_in(
        std::env::var_os("XDG_CONFIG_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
        Path::new("/etc"),
    )
}

/// [`config_file_candidates`] for given values of `XDG_CONFIG_HOME` and `HOME` and a given
/// system configuration directory (normally `/etc`).
fn candidates_in(
    xdg_config_home: Option<&OsStr>,
    home: Option<&OsStr>,
    etc: &Path,
) -> Vec<PathBuf> {
    // The XDG base directory specification: a relative path in these variables is invalid
    // and ignored.
    let absolute = |value: Option<&OsStr>| {
        value
            .map(Path::new)
            .filter(|path| path.is_absolute())
            .map(Path::to_path_buf)
    };
    let user =
        absolute(xdg_config_home).or_else(|| absolute(home).map(|home| home.join(".config")));
    user.into_iter()
        .chain([etc.to_path_buf()])
        .map(|dir| dir.join("plugboard").join(CONFIG_FILE_NAME))
        .collect()
}

fn first_existing(candidates: Vec<PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|candidate| candidate.exists())
}

/// A dotted key such as `plugins.hello.resources.memory_mb` or `sandbox.require[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    fn of(keys: &[&str]) -> Self {
        Self(
            keys.iter()
                .map(|key| Segment::Key((*key).to_owned()))
                .collect(),
        )
    }

    #[must_use]
    fn key(&self, key: &str) -> Self {
        let mut child = self.clone();
        child.0.push(Segment::Key(key.to_owned()));
        child
    }

    #[must_use]
    fn parent(&self) -> Self {
        let mut parent = self.clone();
        parent.0.pop();
        parent
    }

    fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as Serde;
        Self(
            path.iter()
                .map(|segment| match segment {
                    Serde::Seq { index } => Segment::Index(*index),
                    Serde::Map { key } => Segment::Key(key.clone()),
                    Serde::Enum { variant } => Segment::Key(variant.clone()),
                    Serde::Unknown => Segment::Key("?".to_owned()),
                })
                .collect(),
        )
    }

    /// Map entries by name, indexes as `[]`, for matching against the schema.
    fn shape(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|segment| match segment {
                Segment::Key(key) => key.as_str(),
                Segment::Index(_) => "[]",
            })
            .collect()
    }

    /// `[restart]`, `[plugins.hello]` or "the top level".
    fn section(&self) -> String {
        if self.0.is_empty() {
            "the top level".to_owned()
        } else {
            format!("[{self}]")
        }
    }
}

impl Display for KeyPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if position > 0 {
                        formatter.write_str(".")?;
                    }
                    // Quoted as TOML needs it, so `plugins."Bad Name"` stays unambiguous.
                    formatter.write_str(&toml_edit::Key::new(key.as_str()).display_repr())?;
                }
                Segment::Index(index) => write!(formatter, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The file's text with the position of every key and value, for lines and quoted values.
struct Source<'s> {
    text: &'s str,
    document: ImDocument<&'s str>,
}

/// A place in the document: a table entry or an array element.
#[derive(Clone, Copy)]
enum Node<'d> {
    Item(&'d Item),
    Value(&'d Value),
}

impl<'d> Node<'d> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(item) => item.span(),
            Node::Value(value) => value.span(),
        }
    }

    /// The span of a plain value, not of a table (whose span is its header).
    fn value_span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(Item::Value(value)) | Node::Value(value) => value.span(),
            Node::Item(_) => None,
        }
    }

    fn child(self, key: &str) -> Option<(Node<'d>, Option<Range<usize>>)> {
        let (key, item) = match self {
            Node::Item(item) => item.as_table_like()?.get_key_value(key)?,
            Node::Value(value) => value.as_inline_table()?.get_key_value(key)?,
        };
        Some((Node::Item(item), key.span()))
    }

    fn element(self, index: usize) -> Option<Node<'d>> {
        match self {
            Node::Item(item) => item.as_array()?.get(index).map(Node::Value),
            Node::Value(value) => value.as_array()?.get(index).map(Node::Value),
        }
    }
}

impl<'s> Source<'s> {
    /// Parses the text; a syntax error is reported with its line and column.
    fn parse(text: &'s str) -> Result<Self, String> {
        let document = ImDocument::parse(text).map_err(|err| {
            let message = one_line(err.message());
            match err.span() {
                Some(span) => {
                    let (line, column) = line_and_column(text, span.start);
                    let line_text = shorten(text.lines().nth(line - 1).unwrap_or_default());
                    if line_text.trim().is_empty() {
                        format!("line {line}, column {column}: invalid TOML: {message}")
                    } else {
                        format!(
                            "line {line}, column {column}: invalid TOML: {message} (in `{line_text}`)"
                        )
                    }
                }
                None => format!("invalid TOML: {message}"),
            }
        })?;
        Ok(Self { text, document })
    }

    /// Walks to `path`; also returns the span of the last key on the way, for entries (such
    /// as implicit tables) that have no span of their own.
    fn find(&self, path: &KeyPath) -> Option<(Node<'_>, Option<Range<usize>>)> {
        let mut node = Node::Item(self.document.as_item());
        let mut key_span = None;
        for segment in &path.0 {
            match segment {
                Segment::Key(key) => (node, key_span) = node.child(key)?,
                Segment::Index(index) => node = node.element(*index)?,
            }
        }
        Some((node, key_span))
    }

    /// The line of the key or value at `path`, or else of the nearest enclosing table that
    /// is written in the file (where a value left at its default would go).
    fn line_near(&self, path: &KeyPath) -> Option<usize> {
        let mut path = path.clone();
        while !path.0.is_empty() {
            if let Some(span) = self
                .find(&path)
                .and_then(|(node, key_span)| node.span().or(key_span))
            {
                return Some(line_and_column(self.text, span.start).0);
            }
            path = path.parent();
        }
        None
    }

    /// The value at `path` as written (shortened), if it is a plain value in the file.
    fn value_text(&self, path: &KeyPath) -> Option<String> {
        let (node, _) = self.find(path)?;
        self.excerpt(node.value_span()?)
    }

    fn excerpt(&self, span: Range<usize>) -> Option<String> {
        let text = self.text.get(span)?.trim();
        (!text.is_empty()).then(|| shorten(text))
    }

    /// serde cannot name a map key that is itself typed (a violation kind in
    /// `[policy.<kind>]`): it is read back from the table header above `offset`.
    fn name_unknown_keys(&self, path: KeyPath, offset: Option<usize>) -> KeyPath {
        let unknown = Segment::Key("?".to_owned());
        if !path.0.contains(&unknown) {
            return path;
        }
        // Whole lines up to the one `offset` is in (a header itself, when the bad key is
        // the table's name).
        let header = offset
            .map(|offset| {
                let end = self
                    .text
                    .get(offset..)
                    .and_then(|rest| rest.find('\n'))
                    .map_or(self.text.len(), |newline| offset + newline);
                self.text.get(..end).unwrap_or_default()
            })
            .and_then(|before| {
                before
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|line| line.starts_with('[') && !line.starts_with("[["))
            })
            .and_then(|line| line.strip_prefix('[')?.split(']').next());
        let Some(header) = header else {
            return path;
        };
        let keys: Vec<&str> = header
            .split('.')
            .map(|key| key.trim().trim_matches('"'))
            .collect();
        // Only the header of this very table names it: a key written dotted or inline under
        // another header is left unnamed rather than misnamed.
        let this_table =
            path.0
                .iter()
                .enumerate()
                .all(|(index, segment)| match (segment, keys.get(index)) {
                    (Segment::Key(key), Some(header_key)) => key == "?" || key == header_key,
                    (Segment::Key(key), None) => key != "?",
                    (Segment::Index(_), _) => false,
                });
        if !this_table {
            return path;
        }
        let named = path
            .0
            .iter()
            .enumerate()
            .map(|(index, segment)| match (segment, keys.get(index)) {
                (Segment::Key(key), Some(name)) if key == "?" => Segment::Key((*name).to_owned()),
                _ => segment.clone(),
            })
            .collect();
        KeyPath(named)
    }

    /// Turns a serde error (unknown key, wrong type, unknown mechanism) into a message in
    /// the same words as the checks.
    fn serde_error(&self, error: &serde_path_to_error::Error<toml::de::Error>) -> String {
        let message = error.inner().message();
        let span = error.inner().span();
        let path = self.name_unknown_keys(
            KeyPath::from_serde(error.path()),
            span.as_ref().map(|span| span.start),
        );
        let line = span
            .as_ref()
            .map(|span| line_and_column(self.text, span.start).0)
            .or_else(|| self.line_near(&path));

        // serde's wording is stable: "unknown field `x`, expected one of `a`, `b`".
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let allowed = rest
                .split_once(", expected")
                .map_or("", |(_, allowed)| allowed);
            let allowed: Vec<&str> = allowed.split('`').skip(1).step_by(2).collect();
            let allowed = if allowed.is_empty() {
                "(none)".to_owned()
            } else {
                allowed.join(", ")
            };
            return with_line(
                line,
                format!(
                    "unknown key `{path}` in {}; expected one of: {allowed}",
                    path.parent().section()
                ),
            );
        }
        let bad_key = error
            .path()
            .iter()
            .next_back()
            .is_some_and(|segment| matches!(segment, serde_path_to_error::Segment::Unknown));
        if let Some(allowed) = message
            .strip_prefix("unknown variant `")
            .and_then(|rest| rest.split_once(", expected one of "))
            .map(|(_, allowed)| allowed.split('`').skip(1).step_by(2).collect::<Vec<_>>())
            .filter(|_| bad_key)
        {
            // A table named by a key that must be one of a set (`[policy.<kind>]`).
            return with_line(
                line,
                format!(
                    "unknown key `{path}` in {}; expected one of: {}",
                    path.parent().section(),
                    allowed.join(", ")
                ),
            );
        }
        let value = span
            .and_then(|span| self.excerpt(span))
            .or_else(|| self.value_text(&path))
            .unwrap_or_else(|| "?".to_owned());
        let expected = match describe(&path, &Known::default()) {
            Some(ours) if is_serde_type_mismatch(message) => ours,
            Some(ours) => format!("{ours} ({})", one_line(message)),
            // "unknown variant `x`, expected one of `a`, `b`": the value is quoted already.
            None => match message.split_once(", expected ") {
                Some((found, allowed)) if found.starts_with("unknown variant") => {
                    let allowed: Vec<&str> = allowed.split('`').skip(1).step_by(2).collect();
                    format!("one of: {}", allowed.join(", "))
                }
                _ => one_line(message),
            },
        };
        with_line(line, format!("`{path}` = {value}: expected {expected}"))
    }
}

/// What the expectation of a key may quote: the values the file ends up with, once known.
#[derive(Default)]
struct Known<'a> {
    limits: Option<&'a HostLimits>,
    restart: Option<&'a RestartPolicy>,
}

impl Known<'_> {
    /// "`limits.max_memory_mb` (8192)" once the limits are known, else just the key.
    fn limit(&self, key: &str, value: impl Fn(&HostLimits) -> u64) -> String {
        match self.limits {
            Some(limits) => format!("{} (`limits.{key}`)", value(limits)),
            None => format!("`limits.{key}`"),
        }
    }
}

/// What the key at `path` expects, worded for the host's administrator.
fn describe(path: &KeyPath, known: &Known<'_>) -> Option<String> {
    let millis = |range: &str| format!("an integer number of milliseconds{range}");
    let path_text = "a path (a relative one is relative to this file)";
    let mechanisms = Mechanism::ALL
        .iter()
        .map(|mechanism| mechanism.name())
        .collect::<Vec<_>>()
        .join(", ");
    let text = match path.shape().as_slice() {
        [] => "a TOML table".to_owned(),
        ["plugin_dirs"] => "an array of directories holding bundle directories".to_owned(),
        ["bundles"] => "an array of bundle directories".to_owned(),
        ["plugin_dirs" | "bundles", "[]"]
        | ["trust_store" | "cgroup_root" | "log_file" | "audit_file" | "state_file"] => {
            path_text.to_owned()
        }
        ["allow_unsigned"]
        | ["restart" | "watch", "enabled"]
        | ["watch", "reload_on_change"]
        | ["plugins", _, "enabled" | "audit"] => "true or false".to_owned(),
        ["grace_ms"] | ["plugins", _, "grace_ms"] => millis(&format!(" from 0 to {MAX_GRACE_MS}")),
        ["max_plugins"] => "an integer number of plugins running at once, at least 1".to_owned(),
        ["memory_budget_mb"] => {
            "an integer number of MiB shared by all workers, at least 1".to_owned()
        }
        ["sandbox"] => "a table with require, env and tmpfs_mb".to_owned(),
        ["sandbox", "require"] => format!("an array of mechanisms from: {mechanisms}"),
        ["sandbox", "require", "[]"] => format!("one of: {mechanisms}"),
        ["sandbox", "env"] => {
            "a table of environment variables such as { LANG = \"C.UTF-8\" }".to_owned()
        }
        ["sandbox", "env", _] => "a string without NUL characters".to_owned(),
        ["sandbox", "tmpfs_mb"] => format!(
            "an integer number of MiB from 1 to {}",
            known.limit("max_memory_mb", |limits| limits.max_memory_mb)
        ),
        ["limits"] => "a table of resource defaults and maxima".to_owned(),
        ["limits", key] => describe_limit(key, known)?,
        ["restart"] => "a table with enabled, initial_delay_ms, factor, max_delay_ms, \
                        max_restarts and window_s"
            .to_owned(),
        ["restart", "initial_delay_ms"] => millis(", at least 1"),
        ["restart", "factor"] => {
            "a finite number, at least 1.0 (each delay is the previous one times this)".to_owned()
        }
        ["restart", "max_delay_ms"] => millis(&match known.restart {
            Some(restart) => format!(
                ", at least {} (`restart.initial_delay_ms`)",
                restart.initial_delay_ms
            ),
            None => ", at least `restart.initial_delay_ms`".to_owned(),
        }),
        ["restart", "max_restarts"] => {
            "an integer number of restarts per window (0: never restart)".to_owned()
        }
        ["restart", "window_s"] => "an integer number of seconds, at least 1".to_owned(),
        ["watch"] => "a table with enabled, debounce_ms and reload_on_change".to_owned(),
        ["watch", "debounce_ms"] => {
            millis(&format!(" from {} to {}", DEBOUNCE_MS.0, DEBOUNCE_MS.1))
        }
        ["plugins"] => "a table of plugin sections such as [plugins.hello]".to_owned(),
        ["plugins", _] => "a table with enabled, audit, config, resources and grace_ms".to_owned(),
        ["plugins", _, "config"] => {
            "a table of the plugin's settings (its manifest's [config]), such as { greeting = \"Hi\" }"
                .to_owned()
        }
        ["plugins", _, "config", _] => "a string, integer, float or bool, of the type the \
                                        plugin's manifest declares"
            .to_owned(),
        ["plugins", _, "resources"] => "a table with memory_mb, cpu_percent, max_threads, \
                                        max_open_files, hook_timeout_ms and max_in_flight"
            .to_owned(),
        ["plugins", _, "resources", key] => describe_resource(key, known)?,
        _ => return None,
    };
    Some(text)
}

/// `[plugins.<name>.resources]`: the words of a manifest's `[resources]`.
fn describe_resource(key: &str, known: &Known<'_>) -> Option<String> {
    let text = match key {
        "memory_mb" => format!(
            "an integer number of MiB from 1 to {}",
            known.limit("max_memory_mb", |limits| limits.max_memory_mb)
        ),
        "cpu_percent" => format!(
            "an integer percentage of one CPU (200 = two full cores) from 1 to {}",
            known.limit("max_cpu_percent", |limits| limits.max_cpu_percent.into())
        ),
        "max_threads" => format!(
            "an integer number of threads (pids) from 1 to {}",
            known.limit("max_threads", |limits| limits.max_threads.into())
        ),
        "max_open_files" => format!(
            "an integer number of open files from {MIN_OPEN_FILES} to {}",
            known.limit("max_open_files", |limits| limits.max_open_files.into())
        ),
        "hook_timeout_ms" => format!(
            "an integer number of milliseconds from 1 to {}",
            known.limit("max_hook_timeout_ms", |limits| limits.max_hook_timeout_ms)
        ),
        "max_in_flight" => format!(
            "an integer number of concurrent hook calls from 1 to {}",
            known.limit("max_in_flight", |limits| limits.max_in_flight.into())
        ),
        _ => return None,
    };
    Some(text)
}

/// `[limits]`: a default is worded like the resource it is the default of; a maximum is a
/// plain positive integer of the same unit.
fn describe_limit(key: &str, known: &Known<'_>) -> Option<String> {
    let (resource, unit) = LIMIT_FIELDS
        .iter()
        .find(|field| field.default == key || field.max == key)
        .map(|field| (field.resource, field.unit))?;
    if key.starts_with("default_") {
        describe_resource(resource, known)
    } else {
        Some(format!("an integer number of {unit}, at least 1"))
    }
}

/// The pairs of `[limits]`: the resource they bound, its unit, the default and the maximum.
struct LimitField {
    resource: &'static str,
    unit: &'static str,
    default: &'static str,
    max: &'static str,
    values: fn(&HostLimits) -> (u64, u64),
}

const LIMIT_FIELDS: [LimitField; 6] = [
    LimitField {
        resource: "memory_mb",
        unit: "MiB",
        default: "default_memory_mb",
        max: "max_memory_mb",
        values: |limits| (limits.default_memory_mb, limits.max_memory_mb),
    },
    LimitField {
        resource: "cpu_percent",
        unit: "percent of one CPU",
        default: "default_cpu_percent",
        max: "max_cpu_percent",
        values: |limits| {
            (
                limits.default_cpu_percent.into(),
                limits.max_cpu_percent.into(),
            )
        },
    },
    LimitField {
        resource: "max_threads",
        unit: "threads (pids)",
        default: "default_max_threads",
        max: "max_threads",
        values: |limits| (limits.default_max_threads.into(), limits.max_threads.into()),
    },
    LimitField {
        resource: "max_open_files",
        unit: "open files",
        default: "default_max_open_files",
        max: "max_open_files",
        values: |limits| {
            (
                limits.default_max_open_files.into(),
                limits.max_open_files.into(),
            )
        },
    },
    LimitField {
        resource: "hook_timeout_ms",
        unit: "milliseconds",
        default: "default_hook_timeout_ms",
        max: "max_hook_timeout_ms",
        values: |limits| (limits.default_hook_timeout_ms, limits.max_hook_timeout_ms),
    },
    LimitField {
        resource: "max_in_flight",
        unit: "concurrent hook calls",
        default: "default_max_in_flight",
        max: "max_in_flight",
        values: |limits| {
            (
                limits.default_max_in_flight.into(),
                limits.max_in_flight.into(),
            )
        },
    },
];

/// The smallest allowed value of a resource (as a default or an override).
fn resource_min(resource: &str) -> u64 {
    if resource == "max_open_files" {
        MIN_OPEN_FILES
    } else {
        1
    }
}

/// The checks that need more than serde's types.
struct Checker<'a> {
    source: &'a Source<'a>,
    /// The limits the file ends up with: its `[limits]`, or the configuration's.
    limits: &'a HostLimits,
    /// The rules of the kinds the file's `[policy]` names, its keys over the rules before.
    policy: &'a BTreeMap<ViolationKind, Rule>,
}

impl Checker<'_> {
    /// Section by section; the first problem is reported.
    fn check(&self, parsed: &FileConfig) -> Result<(), String> {
        let known = Known {
            limits: Some(self.limits),
            restart: parsed.restart.as_ref(),
        };
        self.check_top_level(parsed, &known)?;
        self.check_sandbox(&parsed.sandbox, &known)?;
        if parsed.limits.is_some() {
            self.check_limits(&known)?;
        }
        if let Some(restart) = &parsed.restart {
            self.check_restart(restart, &known)?;
        }
        if let Some(watch) = &parsed.watch {
            let path = KeyPath::of(&["watch", "debounce_ms"]);
            self.range(&path, &known, watch.debounce_ms, DEBOUNCE_MS)?;
        }
        for (name, overrides) in &parsed.plugins {
            self.check_plugin(name, overrides, &known)?;
        }
        for (kind, rule) in self.policy {
            self.check_rule(*kind, rule)?;
        }
        for (key, max_mb) in [
            ("audit_max_mb", parsed.audit_max_mb),
            ("log_max_mb", parsed.log_max_mb),
        ] {
            if let Some(megabytes) = max_mb.filter(|megabytes| *megabytes == 0) {
                return Err(self.refuse(
                    &KeyPath::of(&[key]),
                    megabytes,
                    "an integer number of MiB, at least 1",
                ));
            }
        }
        for (key, keep) in [
            ("audit_keep", parsed.audit_keep),
            ("log_keep", parsed.log_keep),
        ] {
            if let Some(keep) = keep.filter(|keep| *keep > 1000) {
                return Err(self.refuse(
                    &KeyPath::of(&[key]),
                    keep,
                    "an integer number of rotated files from 0 to 1000",
                ));
            }
        }
        Ok(())
    }

    /// `[policy.<kind>]`: a count and a window of at least 1; for throttling, a ratio in
    /// (0, 1] sustained at least a second.
    fn check_rule(&self, kind: ViolationKind, rule: &Rule) -> Result<(), String> {
        let path = |key| KeyPath::of(&["policy", kind.as_str(), key]);
        let within = |key, value: u64, expected: &str| {
            if (1..=86_400).contains(&value) {
                Ok(())
            } else {
                Err(self.refuse(&path(key), value, expected))
            }
        };
        within(
            "count",
            u64::from(rule.count),
            "an integer number of violations from 1 to 86400",
        )?;
        within(
            "window_s",
            rule.window_s,
            "an integer number of seconds from 1 to 86400",
        )?;
        within(
            "sustained_s",
            rule.sustained_s,
            "an integer number of seconds from 1 to 86400",
        )?;
        // The rule fires above the ratio, and no more than all periods can be throttled:
        // a ratio of 1 would never fire.
        if !(rule.ratio.is_finite() && rule.ratio > 0.0 && rule.ratio < 1.0) {
            return Err(self.refuse(
                &path("ratio"),
                rule.ratio,
                "a share of CPU periods above 0 and below 1 (0.5 = more than half of them throttled)",
            ));
        }
        Ok(())
    }

    /// A message about the value at `path`: `parsed` is shown (as the default) when the
    /// file does not write the key.
    fn refuse(&self, path: &KeyPath, parsed: impl Display, expected: &str) -> String {
        let value = self
            .source
            .value_text(path)
            .unwrap_or_else(|| format!("{parsed} (the default)"));
        with_line(
            self.source.line_near(path),
            format!("`{path}` = {value}: expected {expected}"),
        )
    }

    fn refuse_described(&self, path: &KeyPath, parsed: impl Display, known: &Known<'_>) -> String {
        let expected = describe(path, known).unwrap_or_else(|| "a valid value".to_owned());
        self.refuse(path, parsed, &expected)
    }

    fn refuse_name(&self, path: &KeyPath, name: &str, expected: &str) -> String {
        with_line(
            self.source.line_near(path),
            format!("`{path}`: the name {name:?} is not allowed: expected {expected}"),
        )
    }

    fn range(
        &self,
        path: &KeyPath,
        known: &Known<'_>,
        value: impl Into<u64> + Copy + Display,
        (min, max): (u64, u64),
    ) -> Result<(), String> {
        if (min..=max).contains(&value.into()) {
            Ok(())
        } else {
            Err(self.refuse_described(path, value, known))
        }
    }

    fn check_top_level(&self, parsed: &FileConfig, known: &Known<'_>) -> Result<(), String> {
        if let Some(grace) = parsed.grace_ms {
            self.range(&KeyPath::of(&["grace_ms"]), known, grace, (0, MAX_GRACE_MS))?;
        }
        if parsed.max_plugins == Some(0) {
            return Err(self.refuse_described(&KeyPath::of(&["max_plugins"]), 0, known));
        }
        if parsed.memory_budget_mb == Some(0) {
            return Err(self.refuse_described(&KeyPath::of(&["memory_budget_mb"]), 0, known));
        }
        Ok(())
    }

    fn check_sandbox(&self, sandbox: &SandboxSection, known: &Known<'_>) -> Result<(), String> {
        let section = KeyPath::of(&["sandbox"]);
        for (name, value) in &sandbox.env {
            let path = section.key("env").key(name);
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(self.refuse_name(&path, name, ENV_NAME));
            }
            if value.contains('\0') {
                return Err(self.refuse_described(&path, format!("{value:?}"), known));
            }
        }
        if let Some(mb) = sandbox.tmpfs_mb {
            let max = self.limits.max_memory_mb;
            self.range(&section.key("tmpfs_mb"), known, mb, (1, max))?;
        }
        Ok(())
    }

    /// Each maximum at least 1; each default from its floor to its maximum.
    fn check_limits(&self, known: &Known<'_>) -> Result<(), String> {
        for field in &LIMIT_FIELDS {
            let (default, max) = (field.values)(self.limits);
            let max_path = KeyPath::of(&["limits", field.max]);
            self.range(&max_path, known, max, (1, u64::MAX))?;
            let default_path = KeyPath::of(&["limits", field.default]);
            self.range(
                &default_path,
                known,
                default,
                (resource_min(field.resource), max),
            )?;
        }
        Ok(())
    }

    fn check_restart(&self, restart: &RestartPolicy, known: &Known<'_>) -> Result<(), String> {
        let path = |key| KeyPath::of(&["restart", key]);
        self.range(
            &path("initial_delay_ms"),
            known,
            restart.initial_delay_ms,
            (1, u64::MAX),
        )?;
        if !(restart.factor.is_finite() && restart.factor >= 1.0) {
            return Err(self.refuse_described(&path("factor"), restart.factor, known));
        }
        self.range(
            &path("max_delay_ms"),
            known,
            restart.max_delay_ms,
            (restart.initial_delay_ms, u64::MAX),
        )?;
        self.range(&path("window_s"), known, restart.window_s, (1, u64::MAX))
    }

    fn check_plugin(
        &self,
        name: &str,
        overrides: &PluginOverrides,
        known: &Known<'_>,
    ) -> Result<(), String> {
        let section = KeyPath::of(&["plugins", name]);
        if !is_plugin_name(name) {
            return Err(self.refuse_name(&section, name, PLUGIN_NAME));
        }
        for (key, value) in &overrides.config {
            // The manifest's types are all scalars; a TOML date-time arrives as a table.
            if value.is_array() || value.is_object() {
                let path = section.key("config").key(key);
                return Err(self.refuse_described(&path, value, known));
            }
        }
        check_resources(&overrides.resources, self.limits, |resource, value| {
            let path = section.key("resources").key(resource);
            self.refuse_described(&path, value, known)
        })?;
        if let Some(grace) = overrides.grace_ms {
            self.range(&section.key("grace_ms"), known, grace, (0, MAX_GRACE_MS))?;
        }
        Ok(())
    }
}

/// Each resource override present within its floor and the host's maximum; `refuse` words
/// the error for the resource and the value.
fn check_resources(
    resources: &Resources,
    limits: &HostLimits,
    refuse: impl Fn(&str, u64) -> String,
) -> Result<(), String> {
    let asked: [(&str, Option<u64>); 6] = [
        ("memory_mb", resources.memory_mb),
        ("cpu_percent", resources.cpu_percent.map(u64::from)),
        ("max_threads", resources.max_threads.map(u64::from)),
        ("max_open_files", resources.max_open_files.map(u64::from)),
        ("hook_timeout_ms", resources.hook_timeout_ms),
        ("max_in_flight", resources.max_in_flight.map(u64::from)),
    ];
    for (resource, value) in asked {
        let Some(value) = value else { continue };
        let max = LIMIT_FIELDS
            .iter()
            .find(|field| field.resource == resource)
            .map_or(u64::MAX, |field| (field.values)(limits).1);
        if !(resource_min(resource)..=max).contains(&value) {
            return Err(refuse(resource, value));
        }
    }
    Ok(())
}

fn with_line(line: Option<usize>, message: String) -> String {
    match line {
        Some(line) => format!("line {line}: {message}"),
        None => message,
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

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A multi-line message on one line, its lines joined with `; `.
fn one_line(text: &str) -> String {
    text.trim()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The first line of `text`, cut at [`MAX_QUOTED_CHARS`], with `…` where something was cut.
fn shorten(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or_default().trim_end();
    let mut shortened: String = first_line.chars().take(MAX_QUOTED_CHARS).collect();
    if shortened.len() < text.len() {
        shortened.push('…');
    }
    shortened
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str) -> Result<EngineConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("host.toml");
        std::fs::write(&file, text).unwrap();
        let mut config = EngineConfig::new(PathBuf::from("/usr/bin/plugboard-host"));
        apply_file(&mut config, &file)
            .map(|()| config)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn a_policy_section_changes_only_the_keys_it_writes() {
        let config = apply(
            "[policy.hook_timeout]\nwindow_s = 120\n[policy.protocol_violation]\nwindow_s = 10\n[policy.memory_limit]\naction = \"stop\"\n",
        )
        .unwrap();
        let built_in = crate::policy::Policy::default();
        let rule = |kind| config.policy.rule(kind);
        // Widened window; the built-in action (restart) and count (3) kept.
        assert_eq!(
            rule(ViolationKind::HookTimeout),
            Rule {
                window_s: 120,
                ..built_in.rule(ViolationKind::HookTimeout)
            }
        );
        assert_eq!(rule(ViolationKind::HookTimeout).action, Action::Restart);
        assert_eq!(rule(ViolationKind::HookTimeout).count, 3);
        assert_eq!(
            rule(ViolationKind::ProtocolViolation).action,
            Action::Quarantine
        );
        assert_eq!(rule(ViolationKind::MemoryLimit).action, Action::Stop);
        assert_eq!(
            rule(ViolationKind::Crash),
            built_in.rule(ViolationKind::Crash)
        );
    }

    #[test]
    fn a_full_file_is_applied_and_relative_paths_follow_the_file() {
        let config = apply(
            "plugin_dirs = [\"plugins\"]\ntrust_store = \"/etc/pb/trust\"\ngrace_ms = 500\n[sandbox]\nrequire = [\"seccomp\", \"cgroup\"]\nenv = { LANG = \"C\" }\ntmpfs_mb = 4\n[limits]\nmax_memory_mb = 512\n",
        )
        .unwrap();
        assert!(config.plugin_dirs[0].ends_with("plugins") && config.plugin_dirs[0].is_absolute());
        assert_eq!(config.grace, Duration::from_millis(500));
        assert_eq!(
            config.worker.require,
            [Mechanism::Seccomp, Mechanism::Cgroup]
        );
        assert_eq!(config.worker.env, [("LANG".to_owned(), "C".to_owned())]);
        assert_eq!(config.worker.tmpfs_bytes, 4 << 20);
        assert_eq!(config.limits.max_memory_mb, 512);
    }

    #[test]
    fn supervision_caps_and_plugin_sections_are_applied() {
        let config = apply(
            "bundles = [\"one/hello\"]\nstate_file = \"state.json\"\nmax_plugins = 8\nmemory_budget_mb = 2048\n\
             [restart]\nfactor = 1.5\nmax_restarts = 0\n\
             [watch]\nenabled = false\ndebounce_ms = 10\n\
             [plugins.hello]\nenabled = false\ngrace_ms = 0\nconfig = { greeting = \"Hi\", ratio = 2 }\nresources = { memory_mb = 300 }\n\
             [limits]\nmax_memory_mb = 300\n",
        )
        .unwrap();
        assert!(config.bundles[0].is_absolute() && config.bundles[0].ends_with("one/hello"));
        assert!(config.state_file.as_ref().unwrap().ends_with("state.json"));
        assert!(config.state_file.as_ref().unwrap().is_absolute());
        assert_eq!(config.max_plugins, Some(8));
        assert_eq!(config.memory_budget_mb, Some(2048));
        assert_eq!(
            config.restart,
            RestartPolicy {
                factor: 1.5,
                max_restarts: 0,
                ..RestartPolicy::default()
            }
        );
        assert!(!config.watch.enabled);
        assert_eq!(config.watch.debounce_ms, 10);
        let hello = &config.plugins["hello"];
        assert_eq!(hello.enabled, Some(false));
        assert_eq!(hello.grace_ms, Some(0));
        assert_eq!(hello.config["greeting"], serde_json::json!("Hi"));
        assert_eq!(hello.config["ratio"], serde_json::json!(2));
        assert_eq!(hello.resources.memory_mb, Some(300));
    }

    #[test]
    fn an_empty_file_changes_nothing() {
        let config = apply("").unwrap();
        let fresh = EngineConfig::new(PathBuf::from("/usr/bin/plugboard-host"));
        assert_eq!(config.restart, fresh.restart);
        assert_eq!(config.watch, fresh.watch);
        assert_eq!(config.limits, fresh.limits);
        assert_eq!(config.grace, fresh.grace);
        assert!(config.plugins.is_empty() && config.bundles.is_empty());
        assert_eq!((config.max_plugins, config.memory_budget_mb), (None, None));
    }

    #[test]
    fn a_refused_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("host.toml");
        std::fs::write(&file, "max_plugins = 3\n[restart]\nfactor = 0.5\n").unwrap();
        let mut config = EngineConfig::new(PathBuf::from("/usr/bin/plugboard-host"));
        apply_file(&mut config, &file).unwrap_err();
        assert_eq!(config.max_plugins, None);
    }

    #[test]
    fn unknown_keys_bad_mechanisms_and_bad_limits_are_refused_with_the_key() {
        let err = apply("plugin_dir = []\n").unwrap_err();
        assert!(
            err.contains("host.toml") && err.contains("line 1") && err.contains("plugin_dir"),
            "{err}"
        );
        let err = apply("[sandbox]\nrequire = [\"selinux\"]\n").unwrap_err();
        assert!(err.contains("selinux") && err.contains("line 2"), "{err}");
        let err = apply("[limits]\ndefault_memory_mb = 900\nmax_memory_mb = 512\n").unwrap_err();
        assert!(
            err.contains("line 2: `limits.default_memory_mb` = 900")
                && err.contains("from 1 to 512 (`limits.max_memory_mb`)"),
            "{err}"
        );
        let err = apply("[limits]\ndefault_max_threads = 90\nmax_threads = 64\n").unwrap_err();
        assert!(
            err.contains("`limits.default_max_threads` = 90")
                && err.contains("from 1 to 64 (`limits.max_threads`)"),
            "{err}"
        );
    }

    #[test]
    fn a_value_left_at_its_default_is_named_as_such() {
        let err = apply("[restart]\ninitial_delay_ms = 60000\n").unwrap_err();
        assert!(
            err.contains("line 1: `restart.max_delay_ms` = 30000 (the default)")
                && err.contains("at least 60000 (`restart.initial_delay_ms`)"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = apply("max_plugins = 3\nbundles = [\n").unwrap_err();
        assert!(err.contains("line 3, column 1: invalid TOML"), "{err}");
    }

    #[test]
    fn the_user_file_comes_before_the_system_one() {
        let root = tempfile::tempdir().unwrap();
        let xdg = root.path().join("xdg");
        let home = root.path().join("home");
        let etc = root.path().join("etc");
        let os = |path: &Path| path.as_os_str().to_owned();
        let place = |dir: &Path| {
            let file = dir.join("plugboard").join(CONFIG_FILE_NAME);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, "").unwrap();
            file
        };
        let find = |xdg_value: Option<&OsStr>, home_value: Option<&OsStr>| {
            first_existing(candidates_in(xdg_value, home_value, &etc))
        };

        assert_eq!(find(Some(&os(&xdg)), Some(&os(&home))), None);
        let system = place(&etc);
        assert_eq!(
            find(Some(&os(&xdg)), Some(&os(&home))),
            Some(system.clone())
        );
        let in_home = place(&home.join(".config"));
        // XDG_CONFIG_HOME set: ~/.config is not looked at.
        assert_eq!(
            find(Some(&os(&xdg)), Some(&os(&home))),
            Some(system.clone())
        );
        // Unset, empty or relative: ~/.config is.
        assert_eq!(find(None, Some(&os(&home))), Some(in_home.clone()));
        assert_eq!(
            find(Some(OsStr::new("")), Some(&os(&home))),
            Some(in_home.clone())
        );
        assert_eq!(
            find(Some(OsStr::new("rel")), Some(&os(&home))),
            Some(in_home)
        );
        let in_xdg = place(&xdg);
        assert_eq!(find(Some(&os(&xdg)), Some(&os(&home))), Some(in_xdg));
        // No usable home at all: only the system file.
        assert_eq!(find(None, None), Some(system.clone()));
        assert_eq!(find(None, Some(OsStr::new(""))), Some(system));

        assert_eq!(
            candidates_in(None, Some(OsStr::new("/home/ada")), Path::new("/etc")),
            [
                PathBuf::from("/home/ada/.config/plugboard/plugboard.toml"),
                PathBuf::from("/etc/plugboard/plugboard.toml")
            ]
        );
    }
}
