//! Integration tests of `plugboard-engine` against real files, real keys and real libraries.

mod manifest;
mod trust;
