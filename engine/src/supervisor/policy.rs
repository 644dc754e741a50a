//! Supervision policy: how crashed plugins are restarted, what the host overrides per
//! plugin, and whether bundle directories are watched.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::Resources;

/// How a crashed plugin is restarted: after `initial_delay_ms`, then each delay `factor`
/// times the previous one up to `max_delay_ms`; at most `max_restarts` restarts within
/// `window_s` seconds, after which the plugin stays Failed until an operator starts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    /// Restart crashed plugins at all.
    pub enabled: bool,
    pub initial_delay_ms: u64,
    pub factor: f64,
    pub max_delay_ms: u64,
    /// The budget: restarts allowed per window.
    pub max_restarts: u32,
    pub window_s: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay_ms: 500,
            factor: 2.0,
            max_delay_ms: 30_000,
            max_restarts: 5,
            window_s: 300,
        }
    }
}

impl RestartPolicy {
    /// The delay before restart number `step` (0-based) of the current window.
    pub fn delay(&self, step: u32) -> Duration {
        let cap = Duration::from_millis(self.max_delay_ms);
        let scale = self.factor.powi(i32::try_from(step).unwrap_or(i32::MAX));
        // An overflowing or non-finite product is simply the cap.
        Duration::try_from_secs_f64(
            Duration::from_millis(self.initial_delay_ms).as_secs_f64() * scale,
        )
        .map_or(cap, |delay| delay.min(cap))
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_s)
    }
}

/// `[plugins.<name>]` in the host configuration: the host's say over one plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginOverrides {
    /// `false` keeps the plugin from starting (shown as Disabled).
    pub enabled: Option<bool>,
    /// Config values over the manifest's defaults, checked against its `[config]` schema.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Resource values over the manifest's, each within the host's maxima.
    pub resources: Resources,
    /// This plugin's grace period when stopping, instead of the host-wide one.
    pub grace_ms: Option<u64>,
    /// Audit mode: what its manifest does not allow is recorded instead of blocked
    /// (`plugboard suggest` turns the record into a `[capabilities]` block).
    pub audit: bool,
}

/// Whether bundle directories are watched for changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchPolicy {
    pub enabled: bool,
    /// Changes closer together than this are reported once.
    pub debounce_ms: u64,
    /// Reload a running plugin whose bundle changed on disk (otherwise it is only marked).
    pub reload_on_change: bool,
}

impl Default for WatchPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            debounce_ms: 500,
            reload_on_change: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_factor_and_stops_at_the_cap() {
        let policy = RestartPolicy {
            initial_delay_ms: 100,
            factor: 3.0,
            max_delay_ms: 1000,
            ..RestartPolicy::default()
        };
        let delays: Vec<u64> = (0..5)
            .map(|step| u64::try_from(policy.delay(step).as_millis()).unwrap())
            .collect();
        assert_eq!(delays, [100, 300, 900, 1000, 1000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(1));
    }
}
