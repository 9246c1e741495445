//! The daemon: backend-blk's [`Device`] for vhost-daemon's serve loop. A fresh [`BlkBackend`]
//! per front-end connection; on stop (SIGTERM/SIGINT, after in-flight I/O has completed) the
//! image is synced with `fdatasync`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, info, warn};
use vhost_daemon::backend::Device;
use vhost_daemon::daemon::{Daemon, DaemonError};
use vhost_daemon::memory::GuestRamAtomic;
use vhost_daemon::signals::Signals;
use vhost_daemon::BoxError;

use crate::backend::BlkBackend;
use crate::cli::Config;
use crate::device::BlockDevice;
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

/// The block device as the daemon serves it.
struct BlkDaemon {
    device: Arc<BlockDevice>,
    connections: AtomicU64,
}

impl Device for BlkDaemon {
    type Backend = BlkBackend;

    fn name(&self) -> &str {
        "backend-blk"
    }

    fn connect(&self, _port: usize, mem: GuestRamAtomic) -> Result<BlkBackend, BoxError> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(BlkBackend::new(self.device.clone(), mem)?)
    }

    fn stats(&self) -> String {
        serde_json::json!({
            "image_bytes": self.device.image().size(),
            "queues": self.device.num_queues(),
            "connections": self.connections.load(Ordering::Relaxed),
        })
        .to_string()
    }

    fn stopped(&self) {
        match self.device.image().sync() {
            Ok(()) => debug!("image synced"),
            Err(e) => warn!("fdatasync of the image failed: {e}"),
        }
    }
}

/// Serves `config` until SIGTERM or SIGINT.
///
/// # Errors
/// [`RunError`] when the socket or the image cannot be set up.
pub fn run(config: &Config) -> Result<(), RunError> {
    let signals = Signals::block().map_err(RunError::Signals)?;
    let image = Image::open(&config.image, config.read_only, config.direct)?;
    let device = Arc::new(BlockDevice::new(config, image));
    let blk = Arc::new(BlkDaemon {
        device: device.clone(),
        connections: AtomicU64::new(0),
    });
    let daemon = Daemon::new(blk, signals, std::slice::from_ref(&config.socket))?;
    info!(
        "serving {} ({} bytes{}{}) with {} queue(s) of up to {} descriptors, features {:#x}",
        config.image.display(),
        device.image().size(),
        if device.image().is_direct() {
            ", O_DIRECT"
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
