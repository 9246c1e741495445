//! `frontend-guest`: the mock vhost-user front-end's command-line tools (see
//! [`frontend_guest::bench`]).

use clap::Parser;

fn main() {
    env_logger::init();
    let cli = frontend_guest::bench::cli::Cli::parse();
    std::process::exit(frontend_guest::bench::cli::main_with(cli));
}
