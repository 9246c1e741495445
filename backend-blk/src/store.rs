//! Store mode (`--xenstore PATH --run-dir DIR`): one daemon serves every disk the toolstack
//! writes under `/local/domain/0/backend/vbd` and walks the XenBus handshake for each (the
//! xenbus crate's device manager and back-end state machine). Per disk it opens the image,
//! listens on `DIR/vbd-<domid>-<devid>.sock` (a [`PortServer`]), publishes the socket and
//! the disk's facts with InitWait, serves from Initialised (Connected), drains and stops on
//! Closing (Closed), and the socket goes when the toolstack removes the nodes. A disk that
//! cannot be served is Closed with an `error` node; the others go on. SIGTERM/SIGINT stop
//! every disk cleanly and leave the store as it is, so a restarted daemon serves them again.

use std::path::PathBuf;

use vhost_daemon::daemon::{DaemonError, PortServer};
use vhost_daemon::store::{self, StoreError};
use xenbus::{ActionsFactory, DeviceActions, DeviceConfig, DeviceId, DeviceKind, Published};

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
    let factory = DiskFactory(config.clone());
    store::run(&config.xenstore, &config.run_dir, DeviceKind::Vbd, factory)
}

/// Makes each disk's actions.
struct DiskFactory(StoreConfig);

impl ActionsFactory for DiskFactory {
    type Actions = Disk;

    fn actions(&mut self, dev: &DeviceId) -> Disk {
        Disk {
            socket: store::socket_path(&self.0.run_dir, dev),
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
