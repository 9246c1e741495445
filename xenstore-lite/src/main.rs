//! The `xenstore-lite` binary: the daemon (`serve`) and the xenstore-utils-shaped client
//! commands. All logic lives in the library ([`xenstore_lite::cli`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    xenstore_lite::cli::run(xenstore_lite::cli::Cli::parse())
}
