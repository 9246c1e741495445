//! Store mode (`--xenstore PATH --run-dir DIR`): one daemon serves every NIC the toolstack
//! writes under `/local/domain/0/backend/vif` and walks the XenBus handshake for each
//! (vhost-daemon's store module, the xenbus crate's manager and state machine). Per vif it
//! listens on `DIR/vif-<domid>-<devid>.sock` offering the vif's `mac` and `mtu`, publishes
//! the socket with InitWait, serves from Initialised, drains and stops on Closing, and the
//! socket goes when the toolstack removes the nodes.
//!
//! A vif with a `tap` node is bridged to that TAP device. A vif with a `switch` node becomes a
//! port of the daemon's learning switch of that name (created with its first port, gone with
//! its last): the port is added when the vif is prepared and removed when it is drained, while
//! the other ports forward; the vif's `mac` is pinned to the port, so the guest sends only from
//! the address the toolstack gave it, and no other port may use that address.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use vhost_daemon::listener::SocketSource;
use vhost_daemon::store::{self, Built, StoreDevice, StoreError};
use xenbus::{DeviceConfig, DeviceKind, NetLink, VifConfig};

use crate::cli::{Config, Mode, MAX_MTU, MAX_QUEUE_PAIRS, MIN_MTU};
use crate::mac::MacAddr;
use crate::port::Port;
use crate::server::{port_json, BuildError, NetDevice};
use crate::switch::{Switch, SwitchConfig, SwitchError};

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
    /// Busy-poll window of the queue threads, for every NIC.
    pub poll: std::time::Duration,
}

/// Why one NIC cannot be served (its `error` node).
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// The device in the vif directory is not a NIC.
    #[error("not a vif")]
    NotAVif,
    /// The vif cannot join its switch.
    #[error("switch {name:?}: {source}")]
    Switch {
        /// The switch.
        name: String,
        /// Why.
        #[source]
        source: SwitchError,
    },
    /// `num-queue-pairs` is above what backend-net serves.
    #[error("num-queue-pairs {0} is out of range: 1 to {MAX_QUEUE_PAIRS}")]
    QueuePairs(u16),
    /// `mtu` is out of range.
    #[error("mtu {0} is out of range: {MIN_MTU} to {MAX_MTU}")]
    Mtu(u16),
    /// The TAP device cannot be used.
    #[error(transparent)]
    Build(#[from] BuildError),
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
        Nics {
            config: config.clone(),
            switches: Arc::default(),
        },
    )
}

/// Builds each NIC with the daemon's settings.
#[derive(Clone)]
struct Nics {
    config: StoreConfig,
    /// The named switches that have ports.
    switches: Arc<Mutex<HashMap<String, Weak<Switch>>>>,
}

impl Nics {
    /// The switch `name`, created if it has no port now.
    fn switch(&self, name: &str) -> Arc<Switch> {
        let mut switches = self.switches.lock().unwrap_or_else(|p| p.into_inner());
        switches.retain(|_, s| s.strong_count() > 0);
        if let Some(s) = switches.get(name).and_then(Weak::upgrade) {
            return s;
        }
        log::info!("switch {name}: created");
        let s = Arc::new(Switch::new(SwitchConfig::default()));
        switches.insert(name.to_owned(), Arc::downgrade(&s));
        s
    }

    /// A port of switch `name` for `vif`, its MAC pinned, served on `socket`.
    fn switch_port(
        &self,
        name: &str,
        vif: &VifConfig,
        socket: &Path,
    ) -> Result<NetDevice, NicError> {
        let mac = MacAddr(vif.mac.0);
        let (mtu, pairs, backlog) = (vif.mtu, vif.num_queue_pairs, self.config.rx_backlog);
        let member = self
            .switch(name)
            .add_port(|id| {
                Port::new(id, mac, mtu, pairs, backlog)
                    .with_pinned(vec![mac])
                    .with_poll(self.config.poll)
            })
            .map_err(|source| NicError::Switch {
                name: name.to_owned(),
                source,
            })?;
        log::info!("switch {name}: port {} for MAC {mac}", member.port().id);
        Ok(NetDevice::switch_port(
            member,
            SocketSource::Path(socket.to_owned()),
            self.config.queue_size,
            backlog,
        ))
    }
}

impl StoreDevice for Nics {
    type Device = NetDevice;
    type Error = NicError;

    fn build(&self, config: &DeviceConfig, socket: &Path) -> Result<Built<Self>, NicError> {
        let DeviceConfig::Vif(vif) = config else {
            return Err(NicError::NotAVif);
        };
        if vif.num_queue_pairs > MAX_QUEUE_PAIRS {
            return Err(NicError::QueuePairs(vif.num_queue_pairs));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&vif.mtu) {
            return Err(NicError::Mtu(vif.mtu));
        }
        let tap = match &vif.link {
            NetLink::Tap(name) => name.clone(),
            NetLink::Switch(name) => {
                return Ok((Arc::new(self.switch_port(name, vif, socket)?), Vec::new()))
            }
        };
        let daemon_config = Config {
            mode: Mode::Tap(tap),
            sockets: vec![SocketSource::Path(socket.to_owned())],
            queue_pairs: vif.num_queue_pairs,
            worker_threads: crate::threads::default_threads(vif.num_queue_pairs),
            mac: MacAddr(vif.mac.0),
            mtu: vif.mtu,
            queue_size: self.config.queue_size,
            rx_backlog: self.config.rx_backlog,
            poll: self.config.poll,
            stats_socket: None,
            pinned: vec![Vec::new()],
            switch: SwitchConfig::default(),
        };
        Ok((Arc::new(NetDevice::new(&daemon_config)?), Vec::new()))
    }

    /// Every switch port's counters: `{"switches": {NAME: [{"port", "mac", ...PortStats}]}}`.
    fn stats(&self) -> Option<String> {
        let switches = self.switches.lock().unwrap_or_else(|p| p.into_inner());
        let all: serde_json::Map<String, serde_json::Value> = switches
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.upgrade()?)))
            .map(|(name, s)| (name, s.ports().iter().map(|p| port_json(p)).collect()))
            .collect();
        Some(serde_json::json!({ "switches": all }).to_string())
    }
}
