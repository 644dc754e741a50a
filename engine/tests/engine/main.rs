//! Integration tests of `plugboard-engine` against real files, real keys and real libraries.

mod loader;
mod manifest;
mod support;
mod trust;
