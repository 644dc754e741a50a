//! `counter`: keeps state across calls. `count` adds the `step` setting and answers
//! `{"count": n}`; `reset` goes back to the `start` setting and emits `counter.reset`.

use std::sync::atomic::{AtomicI64, Ordering};

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin, json};
use serde::Serialize;

#[derive(Debug)]
pub struct Counter {
    host: Host,
    start: i64,
    step: i64,
    value: AtomicI64,
}

#[derive(Serialize)]
struct CountReply {
    count: i64,
}

impl Plugin for Counter {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let start = config.get_i64("start").unwrap_or(0);
        let step = config.get_i64("step").unwrap_or(1);
        if step == 0 {
            return Err(Error::invalid_input("`step` must not be 0"));
        }
        Ok(Self {
            host,
            start,
            step,
            value: AtomicI64::new(start),
        })
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "count" => {
                let count = self.value.fetch_add(self.step, Ordering::SeqCst) + self.step;
                json::encode(&CountReply { count })
            }
            "reset" => {
                self.value.store(self.start, Ordering::SeqCst);
                self.host.info("counter reset");
                // The count still resets when nobody can be told; say so in the reply.
                let notified = self
                    .host
                    .emit("counter.reset", self.start.to_string().as_bytes())
                    .is_ok();
                json::encode(&serde_json::json!({ "count": self.start, "notified": notified }))
            }
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Counter);
