//! `panicker` (zoo): panics inside hooks. The SDK catches a panic at the ABI boundary and
//! turns it into an error reply with status `panic` and the message: no crash, no restart,
//! and the next call is answered as usual.
//!
//! Hooks: `ping` answers `pong`; `panics` answers how many panics so far; `chaos` panics;
//! `work` answers `done`, or panics once `chaos_after_ms` has elapsed. Settings: `chaos_after_ms`
//! (0 = `work` never panics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Panicker {
    panics: AtomicU64,
    /// From when on `work` panics.
    work_panics_from: Option<Instant>,
}

impl Panicker {
    fn panic(&self, hook: &str) -> ! {
        let n = self.panics.fetch_add(1, Ordering::SeqCst) + 1;
        panic!("panicker: panic number {n}, in `{hook}`, on purpose");
    }
}

impl Plugin for Panicker {
    fn create(_host: Host, config: Config) -> Result<Self, Error> {
        let after = config.get_i64("chaos_after_ms").unwrap_or(0);
        let after = u64::try_from(after).map_err(|_| {
            Error::invalid_input(format!(
                "`chaos_after_ms` must not be negative, got {after}"
            ))
        })?;
        Ok(Self {
            panics: AtomicU64::new(0),
            work_panics_from: (after > 0).then(|| Instant::now() + Duration::from_millis(after)),
        })
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "panics" => Ok(self.panics.load(Ordering::SeqCst).to_string().into_bytes()),
            "chaos" => self.panic(hook),
            "work" => {
                if self
                    .work_panics_from
                    .is_some_and(|from| Instant::now() >= from)
                {
                    self.panic(hook);
                }
                Ok(b"done".to_vec())
            }
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Panicker);
