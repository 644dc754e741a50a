//! End-to-end tests of the `plugboard` binary with real keys, real bundles and real
//! plugin libraries.

mod audit;
mod call;
mod cli;
mod dashboard;
mod headless;
mod pipes;
mod pty;
mod quarantine;
mod scaffold;
mod suggest;
mod support;
mod zoo;
