//! `plugboard`: the command line of Plugboard. Bundle and key management commands live in
//! `cli`; each is a thin layer over `plugboard-engine`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain: scripts read it, people read it.
            eprintln!("plugboard: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
