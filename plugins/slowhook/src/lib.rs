//! `slowhook` (zoo): answers too late. Its `chaos` hook has a 200 ms timeout and sleeps
//! `sleep_ms` (1 s): the engine gives up on the call, reports a `hook_timeout` violation
//! and discards the late reply.
//!
//! Hooks: `ping` answers `pong`; `chaos` sleeps (a payload of digits is the duration in
//! ms), then answers `slept N ms`; `work` answers `done`, after sleeping once
//! `chaos_after_ms` has elapsed. Settings: `chaos_after_ms` (0 = `work` stays quick),
//! `sleep_ms`, `create_ms` (0 = created at once; else creation takes that long and logs a
//! line every `create_log_ms` meanwhile — 1000 by default, 0 for a flood: a constructor that
//! keeps talking but never finishes in time).

use std::time::{Duration, Instant};

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Slowhook {
    sleep: Duration,
    /// From when on `work` is slow.
    work_slow_from: Option<Instant>,
}

fn setting(config: &Config, key: &str, default: i64) -> Result<u64, Error> {
    let value = config.get_i64(key).unwrap_or(default);
    u64::try_from(value)
        .map_err(|_| Error::invalid_input(format!("`{key}` must not be negative, got {value}")))
}

fn slept(duration: Duration) -> Vec<u8> {
    std::thread::sleep(duration);
    format!("slept {} ms", duration.as_millis()).into_bytes()
}

impl Plugin for Slowhook {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let creating = Duration::from_millis(setting(&config, "create_ms", 0)?);
        let pause = Duration::from_millis(setting(&config, "create_log_ms", 1000)?);
        let began = Instant::now();
        while began.elapsed() < creating {
            host.info(&format!(
                "still creating ({} ms)",
                began.elapsed().as_millis()
            ));
            std::thread::sleep(pause.min(creating));
        }
        let after = setting(&config, "chaos_after_ms", 0)?;
        Ok(Self {
            sleep: Duration::from_millis(setting(&config, "sleep_ms", 1000)?),
            work_slow_from: (after > 0).then(|| Instant::now() + Duration::from_millis(after)),
        })
    }

    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => {
                let text = String::from_utf8_lossy(payload);
                let duration = match text.trim() {
                    "" => self.sleep,
                    millis => Duration::from_millis(millis.parse().map_err(|_| {
                        Error::invalid_input("chaos takes an optional duration in ms")
                    })?),
                };
                Ok(slept(duration))
            }
            "work" => {
                if self
                    .work_slow_from
                    .is_some_and(|from| Instant::now() >= from)
                {
                    return Ok(slept(self.sleep));
                }
                Ok(b"done".to_vec())
            }
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Slowhook);
