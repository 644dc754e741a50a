//! `flaky` (zoo): healthy until told otherwise; then each health check fails with a chance
//! of `failure_percent` (50%). The engine counts failures in a row against the manifest's
//! `[health]` threshold and reports `health_failed` when it is reached (the default policy
//! restarts the plugin, whose fresh instance is healthy again).
//!
//! Hooks: `ping` answers `pong`; `chaos` turns it flaky; `steady` turns it healthy again.
//! Settings: `chaos_after_ms` (turn flaky that long after start; 0 = only on `chaos`),
//! `failure_percent`.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Flaky {
    /// Told to be flaky (`chaos`; `steady` clears it).
    on: AtomicBool,
    /// From when on it is flaky without being told.
    on_from: Option<Instant>,
    failure_percent: u64,
    /// xorshift64 state; seeded from the standard library's per-process random keys.
    rng: AtomicU64,
    checks: AtomicU64,
}

impl Flaky {
    fn roll(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x % 100
    }

    fn is_flaky(&self) -> bool {
        self.on.load(Ordering::SeqCst) || self.on_from.is_some_and(|from| Instant::now() >= from)
    }
}

fn setting(config: &Config, key: &str, default: i64) -> Result<u64, Error> {
    let value = config.get_i64(key).unwrap_or(default);
    u64::try_from(value)
        .map_err(|_| Error::invalid_input(format!("`{key}` must not be negative, got {value}")))
}

impl Plugin for Flaky {
    fn create(_host: Host, config: Config) -> Result<Self, Error> {
        let after = setting(&config, "chaos_after_ms", 0)?;
        let failure_percent = setting(&config, "failure_percent", 50)?;
        if failure_percent > 100 {
            return Err(Error::invalid_input(format!(
                "`failure_percent` is a percentage (0 to 100), got {failure_percent}"
            )));
        }
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u32(std::process::id());
        Ok(Self {
            on: AtomicBool::new(false),
            on_from: (after > 0).then(|| Instant::now() + Duration::from_millis(after)),
            failure_percent,
            rng: AtomicU64::new(seed.finish() | 1),
            checks: AtomicU64::new(0),
        })
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => {
                self.on.store(true, Ordering::SeqCst);
                Ok(
                    format!("flaky now: {}% of health checks fail", self.failure_percent)
                        .into_bytes(),
                )
            }
            "steady" => {
                self.on.store(false, Ordering::SeqCst);
                Ok(b"steady now: health checks pass".to_vec())
            }
            other => Err(Error::unknown_hook(other)),
        }
    }

    fn health(&self) -> Result<(), Error> {
        let check = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if self.is_flaky() && self.roll() < self.failure_percent {
            return Err(Error::new(format!(
                "flaky: health check {check} failed at random ({}% of them do)",
                self.failure_percent
            )));
        }
        Ok(())
    }
}

export_plugin!(Flaky);
