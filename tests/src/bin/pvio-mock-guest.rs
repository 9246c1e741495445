//! `pvio-mock-guest`: plays guest domain N for one disk over the guest's store socket: the
//! XenBus handshake, verified I/O, then it waits for the unplug (back end Closing) and closes.
//! Prints one line per step.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use xenbus::mock_guest::{MockBlkFrontend, MockResult};
use xenbus::{DeviceId, DeviceKind};
use xenstore_lite::Client;

/// Plays a guest's disk front end.
#[derive(Debug, Parser)]
struct Args {
    /// The store socket whose clients act as the guest domain.
    #[arg(long)]
    xenstore: PathBuf,
    /// The guest domain.
    #[arg(long)]
    domid: u32,
    /// The disk's device number.
    #[arg(long, default_value_t = 0)]
    devid: u32,
    /// Seconds each handshake step may take.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

fn run(args: &Args) -> MockResult<()> {
    let client = Client::connect(&args.xenstore).map_err(xenbus::XenbusError::from)?;
    let dev = DeviceId::new(DeviceKind::Vbd, args.domid, args.devid);
    let mut guest = MockBlkFrontend::attach(client, dev, Duration::from_secs(args.timeout))?;
    println!("{dev}: Connected to {}", guest.backend().socket.display());
    guest.verified_io(0xa5)?;
    println!("{dev}: verified I/O done");
    guest.wait_unplug()?;
    println!("{dev}: unplugged, Closed");
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvio-mock-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
