//! `crasher` (zoo): dies of a segmentation fault — a real one, from writing to an
//! unmapped address. The engine sees the worker end with SIGSEGV and reports a `crash`
//! violation with the signal; the default policy restarts it with backoff.
//!
//! Hooks: `ping` answers `pong`; `chaos` faults (there is no reply). Settings:
//! `chaos_after_ms` (fault that long after start, on a thread of its own; 0 = never).

use std::time::Duration;

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

mod fault;

#[derive(Debug)]
pub struct Crasher;

impl Plugin for Crasher {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let after = config.get_i64("chaos_after_ms").unwrap_or(0);
        let after = u64::try_from(after).map_err(|_| {
            Error::invalid_input(format!(
                "`chaos_after_ms` must not be negative, got {after}"
            ))
        })?;
        if after > 0 {
            std::thread::Builder::new()
                .name("crasher-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    host.warn("chaos_after_ms elapsed: segfaulting");
                    fault::segfault();
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(Self)
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => fault::segfault(),
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Crasher);
