//! `fdleak` (zoo): opens `/dev/null` again and again, keeping every descriptor, until the
//! kernel refuses with EMFILE at its `max_open_files` limit (32). The engine's sampler sees
//! the worker's descriptor table full and reports `fd_limit`. After `hold_ms` (or on
//! `release`) it closes them and is well again.
//!
//! Hooks: `ping` answers `pong`; `chaos` leaks and answers how many it opened and the
//! error that stopped it; `release` closes the leaked ones. Settings: `chaos_after_ms`
//! (leak that long after start; 0 = never), `hold_ms` (0 = hold until `release`).

use std::fs::File;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

/// A safety net for running without a descriptor limit.
const MAX_LEAK: usize = 1 << 20;

#[derive(Debug)]
pub struct Fdleak {
    leak: Arc<Leak>,
}

#[derive(Debug)]
struct Leak {
    hold: Duration,
    held: Mutex<Vec<File>>,
}

impl Leak {
    /// Opens until refused; returns what it says for the reply.
    fn leak(self: &Arc<Self>) -> String {
        let mut opened = Vec::new();
        let stopped_by = loop {
            if opened.len() >= MAX_LEAK {
                break format!("the safety net of {MAX_LEAK}");
            }
            match File::open("/dev/null") {
                Ok(file) => opened.push(file),
                Err(err) => break err.to_string(),
            }
        };
        let count = opened.len();
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(opened);
        if !self.hold.is_zero() {
            let leak = Arc::clone(self);
            // Needs no descriptor: a thread is only a pid.
            let _ = std::thread::Builder::new()
                .name("fdleak-hold".to_owned())
                .spawn(move || {
                    std::thread::sleep(leak.hold);
                    leak.release();
                });
        }
        format!("opened {count} descriptors, then: {stopped_by}")
    }

    fn release(&self) -> usize {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.len();
        held.clear();
        count
    }
}

fn setting(config: &Config, key: &str, default: i64) -> Result<u64, Error> {
    let value = config.get_i64(key).unwrap_or(default);
    u64::try_from(value)
        .map_err(|_| Error::invalid_input(format!("`{key}` must not be negative, got {value}")))
}

impl Plugin for Fdleak {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let leak = Arc::new(Leak {
            hold: Duration::from_millis(setting(&config, "hold_ms", 5000)?),
            held: Mutex::new(Vec::new()),
        });
        let after = setting(&config, "chaos_after_ms", 0)?;
        if after > 0 {
            let leak = Arc::clone(&leak);
            std::thread::Builder::new()
                .name("fdleak-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    host.warn(&format!("chaos_after_ms elapsed: {}", leak.leak()));
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(Self { leak })
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => Ok(self.leak.leak().into_bytes()),
            "release" => Ok(format!("closed {} descriptors", self.leak.release()).into_bytes()),
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Fdleak);
