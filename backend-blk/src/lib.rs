//! `backend-blk`: a vhost-user-blk back-end daemon. It serves a virtio-blk device
//! (virtio 1.2 §5.2) to a vhost-user front-end (QEMU's `vhost-user-blk-pci`, ...) over a unix
//! socket, doing the I/O on a raw image file or block device with io_uring.
//!
//! Layout, one job per module:
//! - [`cli`]: command line (clap) → validated [`cli::Config`];
//! - [`image`]: opening the image, its size, O_DIRECT fallback, fallocate probes;
//! - [`driver`]: where a request's bytes go: the io_uring file driver, NBD and RBD;
//! - [`device`]: feature bits, `struct virtio_blk_config`, request limits, serial;
//! - [`request`]: descriptor chain → validated [`request::Request`] (pure parsing);
//! - [`status`]: every failure → VIRTIO_BLK_S_* status byte;
//! - [`inflight`]: inflight I/O tracking area (crash-safe reconnect);
//! - [`worker`]: per-queue data path (pop, parse, submit, complete, notify);
//! - [`backend`]: the per-connection back-end (control path, event dispatch);
//! - [`daemon`]: the device as vhost-daemon serves it (listener, signals, serve loop and the
//!   io_uring ring live in the `vhost-daemon` crate);
//! - [`store`]: store mode (`--xenstore`): every disk of the XenStore, XenBus handshake.

use std::process::ExitCode;

pub mod backend;
pub mod cli;
pub mod daemon;
pub mod device;
pub mod driver;
pub mod image;
pub mod inflight;
pub mod request;
pub mod status;
pub mod store;
pub mod worker;

/// Exit code for a command line that cannot be used (clap's convention).
const EXIT_USAGE: u8 = 2;

/// Runs the program for parsed arguments: prints the capabilities, or validates the
/// configuration and serves until SIGTERM/SIGINT. Every failure is one line on stderr.
pub fn run(cli: cli::Cli) -> ExitCode {
    if cli.print_capabilities {
        let (kind, features) = cli::CAPABILITIES;
        return vhost_daemon::capabilities::print(kind, features);
    }
    if let Some(store) = cli.store_config() {
        return run_store(&store);
    }
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("backend-blk: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging();
    match daemon::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend-blk: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

fn run_store(config: &store::StoreConfig) -> ExitCode {
    init_logging();
    match store::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend-blk: error: {}", vhost_daemon::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Reports a command line clap refused: help and version go to stdout with success; an error
/// becomes one line on stderr (clap's multi-line message joined) and exit code 2.
pub fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        // A closed stdout (e.g. `--help | head`) is not worth a panic.
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let text = error.to_string();
    let message = text.split("\n\n").next().unwrap_or_default();
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("backend-blk: {line}");
    ExitCode::from(EXIT_USAGE)
}
