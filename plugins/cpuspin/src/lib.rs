//! `cpuspin` (zoo): busy-loops on several threads for a while. With `cpu_percent = 10` its
//! cgroup's CPU quota throttles it in nearly every period, which the engine's sampler
//! reports as `cpu_throttled` once it lasts as long as the host's policy says.
//!
//! Hooks: `ping` answers `pong`; `chaos` starts the spinning threads and answers at once
//! (a payload of digits is the duration in ms). Settings: `chaos_after_ms` (spin that
//! long after start; 0 = never), `spin_ms` (how long a burst lasts), `threads` (how many
//! spin).

use std::time::{Duration, Instant};

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Cpuspin {
    spin: Duration,
    threads: u32,
}

fn setting(config: &Config, key: &str, default: i64) -> Result<u64, Error> {
    let value = config.get_i64(key).unwrap_or(default);
    u64::try_from(value)
        .map_err(|_| Error::invalid_input(format!("`{key}` must not be negative, got {value}")))
}

/// Starts `threads` threads that each burn CPU for `spin`; returns how many started.
fn spin(threads: u32, spin: Duration) -> u32 {
    let mut started = 0;
    for n in 0..threads {
        let spawned = std::thread::Builder::new()
            .name(format!("cpuspin-{n}"))
            .spawn(move || {
                let until = Instant::now() + spin;
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                while Instant::now() < until {
                    for _ in 0..10_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                    }
                    std::hint::black_box(x);
                }
            });
        if spawned.is_ok() {
            started += 1;
        }
    }
    started
}

impl Plugin for Cpuspin {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let this = Self {
            spin: Duration::from_millis(setting(&config, "spin_ms", 3000)?),
            threads: u32::try_from(setting(&config, "threads", 2)?)
                .map_err(|_| Error::invalid_input("`threads` is too large"))?
                .max(1),
        };
        let after = setting(&config, "chaos_after_ms", 0)?;
        if after > 0 {
            let (threads, duration) = (this.threads, this.spin);
            std::thread::Builder::new()
                .name("cpuspin-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    let started = spin(threads, duration);
                    host.warn(&format!(
                        "chaos_after_ms elapsed: spinning {started} threads for {} ms",
                        duration.as_millis()
                    ));
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(this)
    }

    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => {
                let text = String::from_utf8_lossy(payload);
                let duration = match text.trim() {
                    "" => self.spin,
                    millis => Duration::from_millis(millis.parse().map_err(|_| {
                        Error::invalid_input("chaos takes an optional duration in ms")
                    })?),
                };
                let started = spin(self.threads, duration);
                Ok(
                    format!("spinning {started} threads for {} ms", duration.as_millis())
                        .into_bytes(),
                )
            }
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Cpuspin);
