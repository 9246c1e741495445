//! Store mode (`--xenstore PATH --run-dir DIR`): one daemon serves every NIC the toolstack
//! writes under `/local/domain/0/backend/vif` and walks the XenBus handshake for each
//! (vhost-daemon's store module, the xenbus crate's manager and state machine). Per vif with
//! a `tap` node it opens the TAP device, listens on `DIR/vif-<domid>-<devid>.sock` offering
//! the vif's `mac` and `mtu`, publishes the socket with InitWait, serves from Initialised,
//! drains and stops on Closing, and the socket goes when the toolstack removes the nodes. A vif on a `switch` is Closed with an `error` node for now:
//! the switch's ports are fixed when it starts, and store mode needs them to come and go.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost_daemon::listener::SocketSource;
use vhost_daemon::store::{self, Built, StoreDevice, StoreError};
use xenbus::{DeviceConfig, DeviceKind, NetLink};

use crate::cli::{Config, Mode, MAX_MTU, MAX_QUEUE_PAIRS, MIN_MTU};
use crate::mac::MacAddr;
use crate::server::NetDevice;
use crate::switch::SwitchConfig;
use crate::tap::TapError;

/// What store mode needs from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store's dom0 socket.
    pub xenstore: PathBuf,
    /// Folder of the NICs' vhost-user sockets.
    pub run_dir: PathBuf,
    /// Largest virtqueue size, for every NIC.
    pub queue_size: u16,
    /// Frames that may wait per receive queue, for every NIC.
    pub rx_backlog: usize,
}

/// Why one NIC cannot be served (its `error` node).
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// The device in the vif directory is not a NIC.
    #[error("not a vif")]
    NotAVif,
    /// Switch vifs are not served in store mode yet.
    #[error("switch {0:?}: store mode serves TAP vifs only so far")]
    Switch(String),
    /// `num-queue-pairs` is above what backend-net serves.
    #[error("num-queue-pairs {0} is out of range: 1 to {MAX_QUEUE_PAIRS}")]
    QueuePairs(u16),
    /// `mtu` is out of range.
    #[error("mtu {0} is out of range: {MIN_MTU} to {MAX_MTU}")]
    Mtu(u16),
    /// The TAP device cannot be used.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// Serves the store's NICs until SIGTERM or SIGINT.
///
/// # Errors
/// [`StoreError`] when signals, the run folder or the store cannot be set up, or the store
/// goes away.
pub fn run(config: &StoreConfig) -> Result<(), StoreError> {
    store::run(
        &config.xenstore,
        &config.run_dir,
        DeviceKind::Vif,
        Nics(config.clone()),
    )
}

/// Builds each NIC with the daemon's settings.
#[derive(Clone)]
struct Nics(StoreConfig);

impl StoreDevice for Nics {
    type Device = NetDevice;
    type Error = NicError;

    fn build(&self, config: &DeviceConfig, socket: &Path) -> Result<Built<Self>, NicError> {
        let DeviceConfig::Vif(vif) = config else {
            return Err(NicError::NotAVif);
        };
        let tap = match &vif.link {
            NetLink::Tap(name) => name.clone(),
            NetLink::Switch(name) => return Err(NicError::Switch(name.clone())),
        };
        if vif.num_queue_pairs > MAX_QUEUE_PAIRS {
            return Err(NicError::QueuePairs(vif.num_queue_pairs));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&vif.mtu) {
            return Err(NicError::Mtu(vif.mtu));
        }
        let daemon_config = Config {
            mode: Mode::Tap(tap),
            sockets: vec![SocketSource::Path(socket.to_owned())],
            queue_pairs: vif.num_queue_pairs,
            mac: MacAddr(vif.mac.0),
            mtu: vif.mtu,
            queue_size: self.0.queue_size,
            rx_backlog: self.0.rx_backlog,
            stats_socket: None,
            pinned: vec![Vec::new()],
            switch: SwitchConfig::default(),
        };
        Ok((Arc::new(NetDevice::new(&daemon_config)?), Vec::new()))
    }
}
