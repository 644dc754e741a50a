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
        // The reader went away (`plugboard audit F | head`): nothing is left to say to it,
        // and saying why on stderr would only be noise, as with any Unix filter.
        Err(err) if cli::output::is_stdout_closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            cli::output::write_error_line(format_args!(
                "plugboard: error: {}",
                cli::output::one_line_reason(&err)
            ));
            ExitCode::FAILURE
        }
    }
}
