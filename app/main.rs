//! `plugboard`: the command line of Plugboard. Bundle and key management commands live in
//! `cli`; each is a thin layer over `plugboard-engine`.

mod cli;
mod tui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain: scripts read it, people read it. Parser messages
            // quoted inside (TOML snippets) may span lines; fold them.
            let reason = format!("{err:#}");
            let reason: Vec<&str> = reason
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect();
            eprintln!("plugboard: error: {}", reason.join(" "));
            ExitCode::FAILURE
        }
    }
}
