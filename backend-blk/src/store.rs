//! Store mode (`--xenstore PATH --run-dir DIR`): one daemon serves every disk the toolstack
//! writes under `/local/domain/0/backend/vbd` and walks the XenBus handshake for each (the
//! xenbus crate's device manager and back-end state machine, run by vhost-daemon's store
//! module). Per disk it opens the image, listens on `DIR/vbd-<domid>-<devid>.sock`, publishes
//! the socket and the disk's facts with InitWait, serves from Initialised (Connected), drains
//! and stops on
//! Closing (Closed), and the socket goes when the toolstack removes the nodes. A disk that
//! cannot be served is Closed with an `error` node; the others go on. SIGTERM/SIGINT stop
//! every disk cleanly and leave the store as it is, so a restarted daemon serves them again.

use std::path::{Path, PathBuf};

use vhost_daemon::store::{self, Built, StoreDevice, StoreError};
use xenbus::{DeviceConfig, DeviceKind, Published};

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
    /// Busy-poll window of the queue threads, µs, for every disk.
    pub poll_us: u32,
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
}

/// Serves the store's disks until SIGTERM or SIGINT.
///
/// # Errors
/// [`StoreError`] when signals, the run folder or the store cannot be set up, or the store
/// goes away.
pub fn run(config: &StoreConfig) -> Result<(), StoreError> {
    store::run(
        &config.xenstore,
        &config.run_dir,
        DeviceKind::Vbd,
        Disks(config.clone()),
    )
}

/// Builds each disk with the daemon's settings.
#[derive(Clone)]
struct Disks(StoreConfig);

impl StoreDevice for Disks {
    type Device = BlkDaemon;
    type Error = DiskError;

    fn build(&self, config: &DeviceConfig, socket: &Path) -> Result<Built<Self>, DiskError> {
        let DeviceConfig::Vbd(vbd) = config else {
            return Err(DiskError::NotADisk);
        };
        if vbd.num_queues > MAX_NUM_QUEUES {
            return Err(DiskError::NumQueues(vbd.num_queues));
        }
        let daemon_config = Config {
            socket: SocketSource::Path(socket.to_owned()),
            image: vbd.image.clone(),
            read_only: vbd.readonly,
            num_queues: vbd.num_queues,
            queue_size: self.0.queue_size,
            direct: self.0.direct,
            poll_us: self.0.poll_us,
            serial: None,
        };
        let blk = BlkDaemon::open(&daemon_config)?;
        let facts = Published::vbd_facts(blk.device().disk().size(), vbd.readonly);
        Ok((blk, facts))
    }
}
