//! Store mode shared by the daemons (`--xenstore PATH --run-dir DIR`): one daemon serves
//! every device of its kind that the toolstack writes into the XenStore, through the xenbus
//! crate's device manager and XenBus handshake. A daemon says only how to build one device
//! from its store configuration ([`StoreDevice`]); each device is then served on
//! `DIR/<kind>-<domid>-<devid>.sock` by its own [`PortServer`], from InitWait until the back
//! end drains it at Closing or the toolstack removes it. SIGTERM/SIGINT stop every device
//! cleanly and leave the store as it is, so a restarted daemon serves the devices again;
//! SIGUSR1 logs the daemon's counters ([`StoreDevice::stats`]).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use xenbus::{
    ActionsFactory, DeviceActions, DeviceConfig, DeviceId, DeviceKind, Manager, Published,
};
use xenstore_lite::Client;

use crate::backend::Device;
use crate::daemon::{DaemonError, PortServer};
use crate::listener::SocketSource;
use crate::signals::{Request, Signals};

/// How a daemon builds one device of the store (its settings from the command line).
pub trait StoreDevice: Clone {
    /// The vhost-user device served for each store device.
    type Device: Device;
    /// Why a device cannot be built (its `error` node).
    type Error: Display;

    /// Builds the device `config` describes (opens the image, the TAP, ...), to be served on
    /// `socket`, and returns it with the facts to publish next to the socket.
    ///
    /// # Errors
    /// The device cannot be served with `config`.
    fn build(&self, config: &DeviceConfig, socket: &Path) -> Result<Built<Self>, Self::Error>;

    /// The counters of every device served now, as one line (logged on SIGUSR1); `None`:
    /// the daemon has none to show.
    fn stats(&self) -> Option<String> {
        None
    }
}

/// A built device and the facts to publish (name, value).
pub type Built<S> = (Arc<<S as StoreDevice>::Device>, Vec<(&'static str, String)>);

/// Why one device cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError<E: Display> {
    /// The daemon could not build it.
    #[error("{0}")]
    Device(E),
    /// Its socket cannot be listened on.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

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

/// Serves the `kind` devices of the store at `xenstore`, built by `builder`, until SIGTERM
/// or SIGINT. Blocks the daemon's signals first: call it before starting threads.
///
/// # Errors
/// [`StoreError`] when signals, the run folder or the store cannot be set up, or the store
/// goes away.
pub fn run<S: StoreDevice + Send + 'static>(
    xenstore: &Path,
    run_dir: &Path,
    kind: DeviceKind,
    builder: S,
) -> Result<(), StoreError> {
    let factory = Factory {
        builder: builder.clone(),
        run_dir: run_dir.to_owned(),
    };
    let signals = Signals::block().map_err(StoreError::Signals)?;
    std::fs::create_dir_all(run_dir).map_err(|source| StoreError::RunDir {
        path: run_dir.to_owned(),
        source,
    })?;
    let client = Client::connect(xenstore).map_err(xenbus::XenbusError::from)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The manager polls `stop`; this thread turns SIGTERM/SIGINT into it and logs the
    // counters on SIGUSR1.
    std::thread::Builder::new()
        .name("store-signals".into())
        .spawn(move || wait_for_stop(&signals, &flag, &builder))
        .map_err(StoreError::Thread)?;
    log::info!("serving the {kind}s of {}", xenstore.display());
    Manager::new(client, kind, factory).run(&stop)?;
    log::info!("stopped");
    Ok(())
}

fn wait_for_stop<S: StoreDevice>(signals: &Signals, stop: &AtomicBool, builder: &S) {
    loop {
        match signals.next() {
            Ok(Request::Stop) => break,
            Ok(Request::Stats) => {
                if let Some(stats) = builder.stats() {
                    log::info!("stats: {stats}");
                }
            }
            Ok(Request::Reconfigure) => {}
            Err(e) => {
                log::error!("reading signals: {e}");
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
}

/// Makes each device's actions.
struct Factory<S> {
    builder: S,
    run_dir: PathBuf,
}

impl<S: StoreDevice> ActionsFactory for Factory<S> {
    type Actions = Served<S>;

    fn actions(&mut self, dev: &DeviceId) -> Served<S> {
        Served {
            socket: socket_path(&self.run_dir, dev),
            builder: self.builder.clone(),
            server: None,
        }
    }
}

/// One device: its socket and, while served, its server.
struct Served<S> {
    socket: PathBuf,
    builder: S,
    server: Option<PortServer>,
}

impl<S: StoreDevice> DeviceActions for Served<S> {
    type Error = ServeError<S::Error>;

    fn prepare(&mut self, config: &DeviceConfig) -> Result<Published, Self::Error> {
        self.drain();
        let (device, facts) = self
            .builder
            .build(config, &self.socket)
            .map_err(ServeError::Device)?;
        let source = SocketSource::Path(self.socket.clone());
        self.server = Some(PortServer::start(device, &source)?);
        Ok(Published {
            socket: self.socket.clone(),
            facts,
        })
    }

    fn connect(&mut self) -> Result<(), Self::Error> {
        // The server accepts the front end whenever it connects: nothing more to start.
        Ok(())
    }

    fn drain(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    fn remove(&mut self) {
        // Stopping removes the socket file.
        self.drain();
    }
}
