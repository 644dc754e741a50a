//! Integration tests of `plugboard-engine` against real files, real keys, real libraries,
//! real worker processes and the real kernel.

mod cgroup;
mod confine;
mod host_config;
mod in_process;
mod inprocess;
mod ipc;
mod loader;
mod manifest;
mod monitor;
mod runtime;
mod supervision;
mod support;
mod trust;
mod watcher;
mod worker;
mod zoo;
