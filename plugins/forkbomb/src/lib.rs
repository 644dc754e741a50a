//! `forkbomb` (zoo): starts child processes in a loop, each one staying alive, until a
//! start fails. Without the `spawn` capability the very first is refused by the seccomp
//! filter (`clone`, reported by the engine as a `forbidden_syscall`); with it, the cgroup's
//! pids limit (`max_threads`) refuses one with EAGAIN (`pids_limit`). The children it got
//! are then killed and reaped, so the plugin goes on answering.
//!
//! Hooks: `ping` answers `pong`; `chaos` runs the loop and answers how many it started and
//! what stopped it. Settings: `chaos_after_ms` (run it that long after start; 0 = never),
//! `max_children` (a safety net for running outside a cgroup).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plugboard_sdk::{Config, Error, Host, Plugin, export_plugin};

/// A long sleep: every child holds a pid until it is killed.
const PROGRAMS: [&str; 2] = ["/usr/bin/sleep", "/bin/sleep"];

#[derive(Debug)]
pub struct Forkbomb {
    max_children: usize,
}

fn setting(config: &Config, key: &str, default: i64) -> Result<u64, Error> {
    let value = config.get_i64(key).unwrap_or(default);
    u64::try_from(value)
        .map_err(|_| Error::invalid_input(format!("`{key}` must not be negative, got {value}")))
}

fn start_child() -> std::io::Result<Child> {
    let program = PROGRAMS
        .iter()
        .find(|path| std::path::Path::new(path).exists())
        .copied()
        .unwrap_or(PROGRAMS[0]);
    // `sleep` writes nothing: its output may stay the worker's. (`Stdio::null()` for
    // output would open /dev/null for writing, which the sandbox refuses.)
    Command::new(program)
        .arg("3600")
        .stdin(Stdio::null())
        .spawn()
}

/// Starts children until one fails (or `max` are running), then kills and reaps them all.
fn bomb(max: usize) -> String {
    let mut children = Vec::new();
    let stopped_by = loop {
        if children.len() >= max {
            break format!("the safety net of {max} children");
        }
        match start_child() {
            Ok(child) => children.push(child),
            Err(err) => break err.to_string(),
        }
    };
    let started = children.len();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    format!("started {started} processes, then: {stopped_by}")
}

impl Plugin for Forkbomb {
    fn create(host: Host, config: Config) -> Result<Self, Error> {
        let max_children = usize::try_from(setting(&config, "max_children", 1000)?)
            .map_err(|_| Error::invalid_input("`max_children` is too large"))?;
        let after = setting(&config, "chaos_after_ms", 0)?;
        if after > 0 {
            std::thread::Builder::new()
                .name("forkbomb-chaos".to_owned())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(after));
                    host.warn(&format!("chaos_after_ms elapsed: {}", bomb(max_children)));
                })
                .map_err(|err| Error::new(format!("cannot start the chaos timer: {err}")))?;
        }
        Ok(Self { max_children })
    }

    fn call(&self, hook: &str, _payload: &[u8]) -> Result<Vec<u8>, Error> {
        match hook {
            "ping" => Ok(b"pong".to_vec()),
            "chaos" => Ok(bomb(self.max_children).into_bytes()),
            other => Err(Error::unknown_hook(other)),
        }
    }
}

export_plugin!(Forkbomb);
