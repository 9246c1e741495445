//! `backend-net`: the vhost-user-net daemon. Parses the command line and runs
//! [`backend_net::server::run`]; every error is one line on stderr and a non-zero exit.

use std::process::ExitCode;

use backend_net::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_capabilities {
        let (kind, features) = backend_net::cli::CAPABILITIES;
        return vhost_daemon::capabilities::print(kind, features);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Some(store) = cli.store_config() {
        return match backend_net::store::run(&store) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("backend-net: {}", backend_net::error_chain(&e));
                ExitCode::FAILURE
            }
        };
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("backend-net: {e}");
            return ExitCode::FAILURE;
        }
    };
    match backend_net::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend-net: {}", backend_net::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
