//! `pvio-blk-manager`: the stand-in for backend-blk's store mode in tests (see
//! `pvio_tests::blk_manager`). Serves every vbd in the store until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use pvio_tests::backend::BlkBackendKind;
use pvio_tests::blk_manager::ProcessBlkFactory;
use xenbus::{DeviceKind, Manager};
use xenstore_lite::Client;

/// Serves every vbd found in the store with one backend-blk process each.
#[derive(Debug, Parser)]
struct Args {
    /// The store's dom0 socket.
    #[arg(long)]
    xenstore: PathBuf,
    /// Where the vhost-user sockets and the back-ends' logs go.
    #[arg(long)]
    run_dir: PathBuf,
    /// The backend-blk binary.
    #[arg(long)]
    backend_blk: PathBuf,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    // Blocked here, the signals are taken by the waiting thread only; children get an
    // empty mask from std's spawn.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("pvio-blk-manager: block signals: {e}");
        return ExitCode::FAILURE;
    }
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = signals.wait();
        flag.store(true, Ordering::Relaxed);
    });
    let client = match Client::connect(&args.xenstore) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pvio-blk-manager: {e}");
            return ExitCode::FAILURE;
        }
    };
    let factory = ProcessBlkFactory::new(BlkBackendKind::Pvio(args.backend_blk), &args.run_dir);
    match Manager::new(client, DeviceKind::Vbd, factory).run(&stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvio-blk-manager: {e}");
            ExitCode::FAILURE
        }
    }
}
