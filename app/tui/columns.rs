//! The plugin table's columns: each says its title, how wide it wants to be, what it
//! shows, how it sorts and how soon it is dropped on a narrow terminal. A new snapshot
//! field is one more variant here.

use std::cmp::Ordering;

use plugboard_engine::sandbox::Mechanism;
use plugboard_engine::snapshot::Health;
use plugboard_engine::{PluginSnapshot, PluginState};

use super::format::{self, NONE};
use super::theme::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Name,
    Version,
    State,
    Health,
    Isolation,
    Trust,
    Cpu,
    Memory,
    HooksPerSec,
    P99,
    Errors,
    Violations,
}

/// What a cell shows and how it looks.
#[derive(Debug, Clone, PartialEq)]
pub struct CellText {
    pub text: String,
    pub role: Role,
}

impl CellText {
    fn new(text: impl Into<String>, role: Role) -> Self {
        Self {
            text: text.into(),
            role,
        }
    }
}

/// A value to sort by.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum SortKey {
    Text(String),
    Number(f64),
    /// No value: sorts after every value, whichever the direction.
    Missing,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::Name,
        Column::Version,
        Column::State,
        Column::Health,
        Column::Isolation,
        Column::Trust,
        Column::Cpu,
        Column::Memory,
        Column::HooksPerSec,
        Column::P99,
        Column::Errors,
        Column::Violations,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::Version => "VERSION",
            Column::State => "STATE",
            Column::Health => "HEALTH",
            Column::Isolation => "ISOLATION",
            Column::Trust => "KEY",
            Column::Cpu => "CPU%",
            Column::Memory => "MEM/LIMIT",
            Column::HooksPerSec => "CALLS/S",
            Column::P99 => "P99",
            Column::Errors => "ERR",
            Column::Violations => "VIOL",
        }
    }

    /// Width in cells (the name column takes what is left, at least this much): room for
    /// the title and the sort arrow beside it, and for every value (`☒ Quarantined`).
    #[allow(clippy::match_same_arms)] // one width per column reads best
    pub fn width(self) -> u16 {
        match self {
            Column::Name => 12,
            Column::Version => 8,
            Column::State => 13,
            Column::Health => 7,
            // All eight badges: `uid ns cg rl nnp cap ll sc`.
            Column::Isolation => 26,
            Column::Trust => 16,
            Column::Cpu => 5,
            Column::Memory => 12,
            Column::HooksPerSec => 8,
            Column::P99 => 7,
            Column::Errors => 5,
            Column::Violations => 5,
        }
    }

    /// Lower goes first when the terminal is too narrow for every column.
    fn keep_priority(self) -> u8 {
        match self {
            Column::Name | Column::State => 255,
            Column::Violations => 200,
            Column::Errors => 190,
            Column::HooksPerSec => 150,
            Column::P99 => 140,
            Column::Cpu => 130,
            Column::Memory => 120,
            Column::Health => 110,
            Column::Isolation => 100,
            Column::Version => 90,
            Column::Trust => 80,
        }
    }

    /// Numbers read right-aligned.
    pub fn right_aligned(self) -> bool {
        matches!(
            self,
            Column::Cpu
                | Column::Memory
                | Column::HooksPerSec
                | Column::P99
                | Column::Errors
                | Column::Violations
        )
    }

    /// Numbers sort biggest first by default (the worst plugin on top).
    pub fn descending_by_default(self) -> bool {
        matches!(
            self,
            Column::Cpu
                | Column::Memory
                | Column::HooksPerSec
                | Column::P99
                | Column::Errors
                | Column::Violations
        )
    }

    pub fn cell(self, plugin: &PluginSnapshot) -> CellText {
        match self {
            Column::Name => name_cell(plugin, usize::MAX),
            Column::Version => {
                CellText::new(plugin.version.as_deref().unwrap_or(NONE), Role::Muted)
            }
            Column::State => {
                let look = state_look(plugin.state);
                CellText::new(format!("{} {}", look.symbol, look.label), look.role)
            }
            Column::Health => {
                let (text, role) = health_look(plugin.health);
                CellText::new(text, role)
            }
            Column::Isolation => {
                let (text, role) = isolation_look(plugin);
                CellText::new(text, role)
            }
            Column::Trust => match (&plugin.trust.key_id, plugin.trust.unverified) {
                (_, true) => CellText::new("UNVERIFIED", Role::Error),
                (Some(key), false) => CellText::new(key, Role::Muted),
                (None, false) => CellText::new(NONE, Role::Muted),
            },
            Column::Cpu => metrics::cpu_percent(plugin).map_or_else(
                || CellText::new(NONE, Role::Muted),
                |cpu| CellText::new(format!("{cpu:.0}"), Role::Text),
            ),
            Column::Memory => match metrics::memory(plugin) {
                Some((used, Some(limit))) => {
                    CellText::new(format::bytes_of(used, limit), Role::Text)
                }
                Some((used, None)) => CellText::new(format::bytes(used), Role::Text),
                None => CellText::new(NONE, Role::Muted),
            },
            // A plugin that is not serving has no rate or latency now (its last ones stay
            // in its details).
            Column::HooksPerSec | Column::P99 if !serving(plugin) => {
                CellText::new(NONE, Role::Muted)
            }
            Column::HooksPerSec => {
                let rate = calls_per_sec(plugin);
                CellText::new(
                    format::rate(rate),
                    if rate > 0.0 { Role::Text } else { Role::Muted },
                )
            }
            Column::P99 => worst_p99(plugin).map_or_else(
                || CellText::new(NONE, Role::Muted),
                |p99| CellText::new(format::micros(p99), Role::Text),
            ),
            Column::Errors => {
                let errors = errors(plugin);
                CellText::new(
                    errors.to_string(),
                    if errors > 0 { Role::Warn } else { Role::Muted },
                )
            }
            Column::Violations => CellText::new(
                plugin.violations.to_string(),
                if plugin.violations > 0 {
                    Role::Error
                } else {
                    Role::Muted
                },
            ),
        }
    }

    fn sort_key(self, plugin: &PluginSnapshot) -> SortKey {
        let number = |value: Option<f64>| value.map_or(SortKey::Missing, SortKey::Number);
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        match self {
            Column::Name => SortKey::Text(plugin.name.clone()),
            Column::Version => plugin
                .version
                .as_deref()
                .and_then(|version| semver::Version::parse(version).ok())
                .map_or(SortKey::Missing, |version| {
                    // Orders 0.10 after 0.9, as people read versions.
                    SortKey::Text(format!(
                        "{:010}.{:010}.{:010}",
                        version.major, version.minor, version.patch
                    ))
                }),
            Column::State => SortKey::Number(f64::from(state_rank(plugin.state))),
            Column::Health => health_rank(plugin.health)
                .map_or(SortKey::Missing, |rank| SortKey::Number(f64::from(rank))),
            Column::Isolation => SortKey::Number(plugin.active_mechanisms.len() as f64),
            Column::Trust => plugin
                .trust
                .key_id
                .clone()
                .map_or(SortKey::Missing, SortKey::Text),
            Column::Cpu => number(metrics::cpu_percent(plugin)),
            Column::Memory => number(metrics::memory(plugin).map(|(used, _)| used as f64)),
            Column::HooksPerSec => SortKey::Number(calls_per_sec(plugin)),
            Column::P99 => number(worst_p99(plugin).map(|p99| p99 as f64)),
            Column::Errors => SortKey::Number(errors(plugin) as f64),
            Column::Violations => SortKey::Number(plugin.violations as f64),
        }
    }

    /// Which columns fit in `width` cells (with one cell between columns), in table
    /// order: the most important first, each one that still fits.
    pub fn fitting(width: u16) -> Vec<Column> {
        let mut by_importance = Column::ALL.to_vec();
        by_importance.sort_by_key(|column| std::cmp::Reverse(column.keep_priority()));
        let mut used = 0u16;
        let mut kept = Vec::new();
        for column in by_importance {
            // One cell between columns: none before the first.
            let needed = column.width() + u16::from(!kept.is_empty());
            let essential = matches!(column, Column::Name | Column::State);
            if essential || used + needed <= width {
                used += needed;
                kept.push(column);
            }
        }
        Column::ALL
            .into_iter()
            .filter(|column| kept.contains(column))
            .collect()
    }
}

/// The sort order of the plugin table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            column: Column::Name,
            descending: false,
        }
    }
}

impl Sort {
    pub fn by(column: Column) -> Sort {
        Sort {
            column,
            descending: column.descending_by_default(),
        }
    }

    /// Orders plugins by the column; ties (and missing values) keep name order.
    pub fn compare(self, a: &PluginSnapshot, b: &PluginSnapshot) -> Ordering {
        let (key_a, key_b) = (self.column.sort_key(a), self.column.sort_key(b));
        let primary = match (&key_a, &key_b) {
            (SortKey::Missing, SortKey::Missing) => Ordering::Equal,
            (SortKey::Missing, _) => return Ordering::Greater,
            (_, SortKey::Missing) => return Ordering::Less,
            _ => {
                let order = key_a.partial_cmp(&key_b).unwrap_or(Ordering::Equal);
                if self.descending {
                    order.reverse()
                } else {
                    order
                }
            }
        };
        primary.then_with(|| a.name.cmp(&b.name))
    }
}

/// Whether a plugin matches the table's filter: every word is found in its name, state,
/// health or version (so `run` finds running ones, `hello fail` failed hellos).
pub fn matches_filter(plugin: &PluginSnapshot, filter: &str) -> bool {
    let haystack = format!(
        "{} {} {} {} {}",
        plugin.name,
        plugin.state.as_str(),
        state_look(plugin.state).label,
        health_look(plugin.health).0,
        plugin.version.as_deref().unwrap_or_default()
    )
    .to_lowercase();
    filter
        .split_whitespace()
        .all(|word| haystack.contains(&word.to_lowercase()))
}

/// How a state looks: a symbol (so meaning survives without colour), a label, a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLook {
    pub symbol: &'static str,
    pub label: &'static str,
    pub role: Role,
}

pub fn state_look(state: PluginState) -> StateLook {
    let look = |symbol, label, role| StateLook {
        symbol,
        label,
        role,
    };
    match state {
        PluginState::Running => look("●", "Running", Role::Ok),
        PluginState::Starting => look("◐", "Starting", Role::Warn),
        PluginState::Reloading => look("◑", "Reloading", Role::Warn),
        PluginState::Stopping => look("◒", "Stopping", Role::Warn),
        PluginState::Degraded => look("▲", "Degraded", Role::Warn),
        PluginState::BackingOff => look("↻", "BackingOff", Role::Warn),
        PluginState::Failed => look("✗", "Failed", Role::Error),
        PluginState::Rejected => look("⊘", "Rejected", Role::Error),
        PluginState::Quarantined => look("☒", "Quarantined", Role::Error),
        PluginState::Stopped => look("○", "Stopped", Role::Idle),
        PluginState::Verified => look("✓", "Verified", Role::Idle),
        PluginState::Discovered => look("·", "Discovered", Role::Idle),
        PluginState::Disabled => look("–", "Disabled", Role::Muted),
        PluginState::Unloaded => look("◌", "Unloaded", Role::Muted),
    }
}

/// The plugin's name in `width` characters, marked when its bundle on disk changed (`*`)
/// or is gone (` (removed)`) since it was verified. A path (a duplicate bundle's name) is
/// cut from its start: its end tells it apart.
pub fn name_cell(plugin: &PluginSnapshot, width: usize) -> CellText {
    let mark = if plugin.removed_from_disk {
        " (removed)"
    } else if plugin.changed_on_disk {
        "*"
    } else {
        ""
    };
    let room = width.saturating_sub(mark.chars().count());
    let name = format::truncate_name(&plugin.name, room);
    let role = if mark.is_empty() {
        Role::Text
    } else {
        Role::Warn
    };
    CellText::new(format!("{name}{mark}"), role)
}

/// Sorting by state puts trouble first, then what runs, then the rest.
fn state_rank(state: PluginState) -> u8 {
    match state {
        PluginState::Failed => 0,
        PluginState::Quarantined => 1,
        PluginState::Rejected => 2,
        PluginState::BackingOff => 3,
        PluginState::Degraded => 4,
        PluginState::Starting => 5,
        PluginState::Reloading => 6,
        PluginState::Stopping => 7,
        PluginState::Running => 8,
        PluginState::Verified => 9,
        PluginState::Stopped => 10,
        PluginState::Discovered => 11,
        PluginState::Disabled => 12,
        PluginState::Unloaded => 13,
    }
}

/// Sorting by health, as by state, puts trouble first; not checked comes last.
fn health_rank(health: Health) -> Option<u8> {
    match health {
        Health::Unhealthy => Some(0),
        Health::Degraded => Some(1),
        Health::Healthy => Some(2),
        Health::Unknown => None,
    }
}

pub fn health_look(health: Health) -> (&'static str, Role) {
    match health {
        Health::Unknown => (NONE, Role::Muted),
        Health::Healthy => ("♥ ok", Role::Ok),
        Health::Degraded => ("▲ degr", Role::Warn),
        Health::Unhealthy => ("✗ sick", Role::Error),
    }
}

/// The isolation cell: what is missing when a mechanism the worker reported is not
/// active (a host that lowered `require`), since that is what an operator must see; else
/// the badges, `IN-PROCESS` (no isolation to speak of) or `–` before the first start.
pub fn isolation_look(plugin: &PluginSnapshot) -> (String, Role) {
    let missing: Vec<&str> = Mechanism::ALL
        .iter()
        .filter(|mechanism| {
            plugin
                .mechanisms
                .get(mechanism.name())
                .is_some_and(|state| !state.active)
        })
        .map(|mechanism| mechanism.badge())
        .collect();
    if plugin.isolation != "in-process" && !missing.is_empty() {
        return (format!("✗ missing {}", missing.join(" ")), Role::Error);
    }
    let role = if plugin.isolation == "in-process" {
        Role::Warn
    } else {
        Role::Info
    };
    (isolation_badges(plugin), role)
}

/// `IN-PROCESS` for in-process plugins (no isolation to speak of); otherwise the badges of
/// the active mechanisms, `–` before the first start.
pub fn isolation_badges(plugin: &PluginSnapshot) -> String {
    if plugin.isolation == "in-process" {
        return "IN-PROCESS".to_owned();
    }
    if plugin.active_mechanisms.is_empty() {
        return NONE.to_owned();
    }
    plugin.active_mechanisms.join(" ")
}

/// Calls a second now (over the last 5 to 10 s): 0 soon after traffic stops, where the
/// minute's average would linger for a minute.
pub fn calls_per_sec(plugin: &PluginSnapshot) -> f64 {
    plugin
        .hooks
        .values()
        .map(|hook| hook.calls_per_sec_10s)
        .sum()
}

/// The slowest hook's p99 over the last minute; when no hook was called in it, the
/// slowest lifetime p99. (A hook called once, slowly, long ago — a chaos act — must not
/// stand for the plugin while its other hooks serve fast.)
pub fn worst_p99(plugin: &PluginSnapshot) -> Option<u64> {
    let called = || plugin.hooks.values().filter(|hook| hook.calls > 0);
    called()
        .map(|hook| hook.recent.p99_us)
        .max()
        .filter(|p99| *p99 > 0)
        .or_else(|| called().map(|hook| hook.since_start.p99_us).max())
        // Calls that were never timed (the worker died under them, busy refusals): no
        // latency to show, not 0 µs.
        .filter(|p99| *p99 > 0)
}

/// Errors and timeouts over every hook.
pub fn errors(plugin: &PluginSnapshot) -> u64 {
    plugin
        .hooks
        .values()
        .map(|hook| hook.errors + hook.timeouts)
        .sum()
}

/// Resource figures of a plugin, from the engine's newest sample of its worker (`–` until
/// the first sample, and for in-process plugins, which have none of their own).
pub mod metrics {
    use plugboard_engine::PluginSnapshot;

    /// CPU use in percent of one CPU.
    pub fn cpu_percent(plugin: &PluginSnapshot) -> Option<f64> {
        plugin.resources.as_ref().map(|sample| sample.cpu_percent)
    }

    /// Memory in use and the limit, in bytes.
    pub fn memory(plugin: &PluginSnapshot) -> Option<(u64, Option<u64>)> {
        plugin
            .resources
            .as_ref()
            .map(|sample| (sample.memory_bytes, sample.memory_limit_bytes))
    }
}

/// Whether the plugin takes calls now.
pub(crate) fn serving(plugin: &PluginSnapshot) -> bool {
    use plugboard_engine::PluginState;
    matches!(
        plugin.state,
        PluginState::Running | PluginState::Degraded | PluginState::Reloading
    )
}
