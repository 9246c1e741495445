//! Store mode shared by the daemons (`--xenstore PATH --run-dir DIR`): one daemon serves
//! every device of its kind that the toolstack writes into the XenStore, through the xenbus
//! crate's device manager (XenBus handshake, one [`crate::daemon::PortServer`] per device in
//! the daemon's actions). SIGTERM/SIGINT stop every device cleanly and leave the store as it
//! is, so a restarted daemon serves the devices again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use xenbus::{ActionsFactory, DeviceId, DeviceKind, Manager};
use xenstore_lite::Client;

use crate::signals::{Request, Signals};

/// Why store mode could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SIGTERM/SIGINT could not be routed to a signalfd.
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
    /// The run folder cannot be created.
    #[error("cannot create {path}: {source}")]
    RunDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The signal thread cannot be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The store is not reachable or went away.
    #[error(transparent)]
    Xenbus(#[from] xenbus::XenbusError),
}

/// The vhost-user socket of `dev` in `run_dir`: `<kind>-<domid>-<devid>.sock`.
pub fn socket_path(run_dir: &Path, dev: &DeviceId) -> PathBuf {
    run_dir.join(format!("{}-{}-{}.sock", dev.kind, dev.domid, dev.devid))
}

/// Serves the `kind` devices of the store at `xenstore` with `factory`'s actions until
/// SIGTERM or SIGINT. Blocks the daemon's signals first: call it before starting threads.
///
/// # Errors
/// [`StoreError`] when signals, the run folder or the store cannot be set up, or the store
/// goes away.
pub fn run<F: ActionsFactory>(
    xenstore: &Path,
    run_dir: &Path,
    kind: DeviceKind,
    factory: F,
) -> Result<(), StoreError> {
    let signals = Signals::block().map_err(StoreError::Signals)?;
    std::fs::create_dir_all(run_dir).map_err(|source| StoreError::RunDir {
        path: run_dir.to_owned(),
        source,
    })?;
    let client = Client::connect(xenstore).map_err(xenbus::XenbusError::from)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The manager polls `stop`; this thread turns SIGTERM/SIGINT into it.
    std::thread::Builder::new()
        .name("store-signals".into())
        .spawn(move || wait_for_stop(&signals, &flag))
        .map_err(StoreError::Thread)?;
    log::info!("serving the {kind}s of {}", xenstore.display());
    Manager::new(client, kind, factory).run(&stop)?;
    log::info!("stopped");
    Ok(())
}

fn wait_for_stop(signals: &Signals, stop: &AtomicBool) {
    loop {
        match signals.next() {
            Ok(Request::Stop) => break,
            Ok(Request::Stats | Request::Reconfigure) => {}
            Err(e) => {
                log::error!("reading signals: {e}");
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
}
