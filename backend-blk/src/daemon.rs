//! The daemon: backend-blk's [`Device`] for vhost-daemon's serve loop. A fresh [`BlkBackend`]
//! per front-end connection; on stop (SIGTERM/SIGINT, after in-flight I/O has completed) the
//! image is synced with `fdatasync`. SIGHUP re-reads the image size and tells the connected
//! front-end about a new capacity (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;

use log::{debug, info, warn};
use vhost_daemon::backend::Device;
use vhost_daemon::daemon::{Daemon, DaemonError};
use vhost_daemon::memory::GuestRamAtomic;
use vhost_daemon::signals::Signals;
use vhost_daemon::BoxError;

use crate::backend::{notify_config_change, BlkBackend, ChannelSlot};
use crate::cli::Config;
use crate::device::BlockDevice;
use crate::driver::Disk;
use crate::image::{Image, ImageError};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// SIGTERM/SIGINT/SIGHUP/SIGUSR1 could not be routed to a signalfd.
    #[error("cannot set up signal handling: {0}")]
    Signals(nix::Error),
    /// The image cannot be served.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The socket or the serve loop failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// The block device as the daemon serves it: vhost-daemon's [`Device`], a fresh
/// [`BlkBackend`] per front-end connection.
pub struct BlkDaemon {
    device: Arc<BlockDevice>,
    connections: AtomicU64,
    /// The back-end request channel of the connection being served, if any.
    channel: Mutex<Weak<ChannelSlot>>,
}

impl Device for BlkDaemon {
    type Backend = BlkBackend;

    fn name(&self) -> &str {
        "backend-blk"
    }

    fn connect(&self, _port: usize, mem: GuestRamAtomic) -> Result<BlkBackend, BoxError> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.device.disk().front_end_connected();
        let backend = BlkBackend::new(self.device.clone(), mem)?;
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = backend.channel_slot();
        Ok(backend)
    }

    /// SIGHUP: re-reads the image size and, when the capacity changed and a front-end is
    /// connected, tells it from a thread of its own, so a front-end slow to ack does not hold
    /// up the daemon.
    fn reconfigure(&self) {
        match self.device.resize() {
            Ok(None) => info!(
                "SIGHUP: image size unchanged ({} bytes)",
                self.device.disk().size()
            ),
            Ok(Some((old, new))) => {
                info!("SIGHUP: capacity changed from {old} to {new} sectors");
                let slot = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = slot.upgrade() {
                    notify_in_background(slot);
                }
            }
            Err(e) => warn!("SIGHUP: {e}"),
        }
    }

    fn stats(&self) -> String {
        serde_json::json!({
            "image_bytes": self.device.disk().size(),
            "queues": self.device.num_queues(),
            "connections": self.connections.load(Ordering::Relaxed),
        })
        .to_string()
    }

    fn stopped(&self) {
        match self.device.disk().sync() {
            Ok(()) => debug!("image synced"),
            Err(e) => warn!("final sync of the disk failed: {e}"),
        }
    }
}

impl BlkDaemon {
    /// Opens the image of `config` and makes the device.
    ///
    /// # Errors
    /// [`ImageError`] when the image cannot be served.
    pub fn open(config: &Config) -> Result<Arc<BlkDaemon>, ImageError> {
        let disk = Disk::open(&config.image, config.read_only, config.direct)?;
        Ok(Arc::new(BlkDaemon {
            device: Arc::new(BlockDevice::new(config, disk)),
            connections: AtomicU64::new(0),
            channel: Mutex::new(Weak::new()),
        }))
    }

    /// The device.
    pub(crate) fn device(&self) -> &Arc<BlockDevice> {
        &self.device
    }
}

fn notify_in_background(slot: Arc<ChannelSlot>) {
    let spawned = thread::Builder::new()
        .name("config-change".to_string())
        .spawn(move || match notify_config_change(&slot) {
            Ok(()) => info!("front-end notified of the new capacity"),
            Err(e) => warn!("cannot notify the front-end of the new capacity: {e}"),
        });
    if let Err(e) = spawned {
        warn!("cannot start the configuration change thread: {e}");
    }
}

/// Serves `config` until SIGTERM or SIGINT.
///
/// # Errors
/// [`RunError`] when the socket or the image cannot be set up.
pub fn run(config: &Config) -> Result<(), RunError> {
    let signals = Signals::block().map_err(RunError::Signals)?;
    let blk = BlkDaemon::open(config)?;
    let device = blk.device().clone();
    let daemon = Daemon::new(blk, signals, std::slice::from_ref(&config.socket))?;
    info!(
        "serving {} ({} bytes{}{}{}) with {} queue(s) of up to {} descriptors, features {:#x}",
        config.image.display(),
        device.disk().size(),
        if device.disk().is_direct() {
            ", O_DIRECT"
        } else {
            ""
        },
        if device.disk().file().is_some_and(Image::serves_inline) {
            ", reads and writes inline (tmpfs)"
        } else {
            ""
        },
        if config.read_only { ", read-only" } else { "" },
        device.num_queues(),
        device.queue_size(),
        device.features()
    );
    daemon.run()?;
    Ok(())
}
