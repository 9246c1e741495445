//! `evtchn-broker --socket PATH`: runs the grant-table and event-channel broker (the
//! hypervisor's part in pvio's process-based Xen model) on a unix socket until SIGTERM or
//! SIGINT, then removes the socket. xenstore-lite (`--evtchn-broker`), the VMM (`vmm run
//! --evtchn-broker`) and the back ends connect to it as their domains.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use evtchn::Broker;
use nix::sys::signal::{SigSet, Signal};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "evtchn-broker",
    version,
    about = "pvio's grant and event-channel broker"
)]
struct Cli {
    /// Unix socket to listen on (must not exist).
    #[arg(long)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    // Blocked before any thread starts, so every thread inherits the mask and sigwait below
    // is the only receiver.
    if let Err(e) = signals.thread_block() {
        eprintln!("evtchn-broker: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let broker = Broker::new();
    let handle = match broker.listen(&cli.socket).and_then(|l| l.spawn()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("evtchn-broker: {}: {e}", cli.socket.display());
            return ExitCode::FAILURE;
        }
    };
    log::info!("listening on {}", handle.path().display());
    match signals.wait() {
        Ok(sig) => log::info!("{sig}: stopping"),
        Err(e) => eprintln!("evtchn-broker: waiting for a signal: {e}"),
    }
    drop(handle);
    ExitCode::SUCCESS
}
