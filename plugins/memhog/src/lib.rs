//! `memhog` (zoo): allocates memory and writes every byte of it until something stops it.
//! In its sandbox that is the cgroup's memory limit (`memory_mb = 32`): the kernel's OOM
//! killer ends the worker and the engine reports an `oom_kill` violation.
//!
//! Hooks: `ping` answers `pong`; `chaos` starts hogging and, if it is ever allowed to
//! finish (`max_mb` reached), answers how much it holds. Settings: `chaos_after_ms` (hog
//! that long after start, on a thread of its own; 0 = never), `chunk_mb` (MiB per step),
//! `max_mb` (stop there: a safety net for running outside a cgroup).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Memhog {
    hog: Arc<Hog>,
}

#[derive(Debug)]
struct Hog {
    chunk_bytes: usize,
    max_bytes: usize,
    /// What was allocated, kept so none of it is freed.
    held: Mutex<Vec<Vec<u8>>>,
}

impl Hog {
    /// Allocates `chunk_bytes` at a time, every byte written (so every page is really
    /// backed), until `max_bytes` are held; returns how many bytes are held.
    fn hog(&self) -> usize {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total: usize = held.iter().map(Vec::len).sum();
        while total < self.max_bytes {
            // `vec![x; n]` with a non-zero byte writes all of it: no lazily mapped zero pages.
            held.push(std::hint::black_box(vec![0xa5_u8; self.chunk_bytes]));
            total += self.chunk_bytes;
        }
        total
    }
}

fn setting(config: &Config, key: &str, default: i64) -> Result<u64, Error> {
    let value = config.get_i64(key).unwrap_or(default);
    u64::try_from(value)
        .map_err(|_| Error::invalid_input(format!("`{key}` must not be negative, got {value}")))
}

fn mib(value: u64, key: &str) -> Result<usize, Error> {
    usize::try_from(value)
        .ok()
        .and_then(|value| value.checked_mul(1 << 20))
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| Error::invalid_input(format!("`{key}` must be at least 1 MiB, got {value}")))
}

impl Plugin for Memhog {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let hog = Arc::new(Hog {
            chunk_bytes: mib(setting(&config, "chunk_mb", 1)?, "chunk_mb")?,
            max_bytes: mib(setting(&config, "max_mb", 1024)?, "max_mb")?,
            held: Mutex::new(Vec::new()),
        });
        let after = setting(&config, "chaos_after_ms", 0)?;
        if after > 0 {
            let hog = Arc::clone(&hog);
            std::thread::Builder::new()
                .name("memhog-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    host.warn("chaos_after_ms elapsed: hogging memory");
                    let held = hog.hog();
                    host.warn(&format!("holding {} MiB and still alive", held >> 20));
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(Self { hog })
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => {
                let held = self.hog.hog();
                Ok(format!("holding {} MiB and still alive", held >> 20).into_bytes())
            }
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Memhog);
