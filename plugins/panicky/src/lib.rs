//! `panicky`: a misbehaving plugin whose `panic` hook panics. The SDK turns the panic into
//! an error reply carrying the message; the host keeps running and the plugin keeps
//! answering. With the setting `panic_in_create = true` it panics while being created.

use std::sync::atomic::{AtomicU64, Ordering};

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

#[derive(Debug)]
pub struct Panicky {
    panics: AtomicU64,
}

impl Plugin for Panicky {
    fn create(_host: Host, config: Config) -> Result<Self, Error> {
        assert!(
            !config.get_bool("panic_in_create").unwrap_or(false),
            "asked to panic in create"
        );
        Ok(Self {
            panics: AtomicU64::new(0),
        })
    }

    fn call(&self, hook: &str, payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "panic" => {
                let n = self.panics.fetch_add(1, Ordering::SeqCst) + 1;
                panic!("panic number {n}: {}", String::from_utf8_lossy(payload));
            }
            "ok" => Ok(format!(
                "still alive after {} panics",
                self.panics.load(Ordering::SeqCst)
            )
            .into_bytes()),
            other => Err(Error::unknown_hook(other)),
        }
    }

    fn health(&self) -> Result<(), Error> {
        if self.panics.load(Ordering::SeqCst) > 0 {
            return Err(Error::new("has panicked"));
        }
        Ok(())
    }
}

export_plugin!(Panicky);
