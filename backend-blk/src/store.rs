//! Store mode (`--xenstore PATH --run-dir DIR`): one daemon serves every disk the toolstack
//! writes under `/local/domain/0/backend/vbd` and walks the XenBus handshake for each (the
//! xenbus crate's device manager and back-end state machine). Per disk it opens the image,
//! listens on `DIR/vbd-<domid>-<devid>.sock` (a [`PortServer`]), publishes the socket and
//! the disk's facts with InitWait, serves from Initialised (Connected), drains and stops on
//! Closing (Closed), and the socket goes when the toolstack removes the nodes. A disk that
//! cannot be served is Closed with an `error` node; the others go on. SIGTERM/SIGINT stop
//! every disk cleanly and leave the store as it is, so a restarted daemon serves them again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vhost_daemon::daemon::{DaemonError, PortServer};
use vhost_daemon::signals::{Request, Signals};
use xenbus::{
    ActionsFactory, DeviceActions, DeviceConfig, DeviceId, DeviceKind, Manager, Published,
};
use xenstore_lite::Client;

use crate::cli::{Config, SocketSource, MAX_NUM_QUEUES};
use crate::daemon::BlkDaemon;
use crate::image::ImageError;

/// What store mode needs from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store's dom0 socket.
    pub xenstore: PathBuf,
    /// Folder of the disks' vhost-user sockets.
    pub run_dir: PathBuf,
    /// Largest virtqueue size, for every disk.
    pub queue_size: u16,
    /// Ask for O_DIRECT, for every disk.
    pub direct: bool,
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

/// Why one disk cannot be served (its `error` node).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The device in the vbd directory is not a disk.
    #[error("not a vbd")]
    NotADisk,
    /// `num-queues` is above what backend-blk serves.
    #[error("num-queues {0} is out of range: 1 to {MAX_NUM_QUEUES}")]
    NumQueues(u16),
    /// The image cannot be served.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The socket cannot be listened on.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Serves the store's disks until SIGTERM or SIGINT.
///
/// # Errors
/// [`StoreError`] when signals, the run folder or the store cannot be set up, or the store
/// goes away.
pub fn run(config: &StoreConfig) -> Result<(), StoreError> {
    let signals = Signals::block().map_err(StoreError::Signals)?;
    std::fs::create_dir_all(&config.run_dir).map_err(|source| StoreError::RunDir {
        path: config.run_dir.clone(),
        source,
    })?;
    let client = Client::connect(&config.xenstore).map_err(xenbus::XenbusError::from)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // The manager polls `stop`; this thread turns SIGTERM/SIGINT into it.
    std::thread::Builder::new()
        .name("backend-blk-signals".into())
        .spawn(move || wait_for_stop(&signals, &flag))
        .map_err(StoreError::Thread)?;
    log::info!("serving the vbds of {}", config.xenstore.display());
    let factory = DiskFactory(config.clone());
    Manager::new(client, DeviceKind::Vbd, factory).run(&stop)?;
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

/// Makes each disk's actions.
struct DiskFactory(StoreConfig);

impl ActionsFactory for DiskFactory {
    type Actions = Disk;

    fn actions(&mut self, dev: &DeviceId) -> Disk {
        let name = format!("vbd-{}-{}.sock", dev.domid, dev.devid);
        Disk {
            socket: self.0.run_dir.join(name),
            config: self.0.clone(),
            server: None,
        }
    }
}

/// One disk: its socket and, while served, its server.
struct Disk {
    socket: PathBuf,
    config: StoreConfig,
    server: Option<PortServer>,
}

impl Disk {
    fn daemon_config(&self, config: &DeviceConfig) -> Result<Config, DiskError> {
        let DeviceConfig::Vbd(vbd) = config else {
            return Err(DiskError::NotADisk);
        };
        if vbd.num_queues > MAX_NUM_QUEUES {
            return Err(DiskError::NumQueues(vbd.num_queues));
        }
        Ok(Config {
            socket: SocketSource::Path(self.socket.clone()),
            image: vbd.image.clone(),
            read_only: vbd.readonly,
            num_queues: vbd.num_queues,
            queue_size: self.config.queue_size,
            direct: self.config.direct,
            serial: None,
        })
    }
}

impl DeviceActions for Disk {
    type Error = DiskError;

    fn prepare(&mut self, config: &DeviceConfig) -> Result<Published, DiskError> {
        let daemon_config = self.daemon_config(config)?;
        self.drain();
        let blk = BlkDaemon::open(&daemon_config)?;
        let size = blk.device().image().size();
        self.server = Some(PortServer::start(blk, &daemon_config.socket)?);
        Ok(Published {
            socket: self.socket.clone(),
            facts: Published::vbd_facts(size, daemon_config.read_only),
        })
    }

    fn connect(&mut self) -> Result<(), DiskError> {
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
