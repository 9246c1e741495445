//! `backend-blk` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match backend_blk::cli::Cli::try_parse() {
        Ok(cli) => backend_blk::run(cli),
        Err(e) => backend_blk::usage_error(e),
    }
}
