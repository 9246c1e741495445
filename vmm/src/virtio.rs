//! A virtio-mmio device whose device side is a vhost-user back-end (vhost-user.rst).
//!
//! The VMM is the vhost-user front-end. At creation it connects to the back-end, checks the
//! features the guest will need, and wires each queue's doorbell and interrupt straight to it:
//! the queue's kick eventfd is a KVM ioeventfd on QueueNotify (4-byte write, data = queue
//! index) and its call eventfd is a KVM irqfd on the device's GSI. When the guest sets
//! DRIVER_OK the device sends VHOST_USER_SET_FEATURES, _SET_MEM_TABLE, _SET_VRING_NUM for every
//! queue, then each queue's address, base, call, err, kick and enable; a Status write of 0
//! stops every started queue with VHOST_USER_GET_VRING_BASE. Configuration reads are
//! VHOST_USER_GET_CONFIG. No data-path access reaches the VMM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use frontend_guest::host::{ConnectOptions, HostRam, VhostUserConnection, VringFds};
use frontend_guest::virtq::{QueueLayout, VIRTIO_F_VERSION_1};
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::mmio::{self, AccessError, Action, ConfigSpace, MmioTransport};

/// Virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Queue size offered to the guest (QueueNumMax).
pub const QUEUE_MAX_SIZE: u16 = 256;
/// How long the VMM retries while a back-end's socket is missing or refuses connections.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit, never offered to the guest.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// virtio-net features this transport hides: the control queue and multiqueue (it exposes one
/// receive / transmit pair).
const NET_HIDDEN: u64 = 1 << 17 | 1 << 18 | 1 << 20 | 1 << 22 | 1 << 23;
/// virtio-blk configuration offset of `num_queues` (virtio 1.2 §5.2.4).
const BLK_NUM_QUEUES_OFFSET: u64 = 34;
/// VIRTIO_BLK_F_MQ.
const BLK_F_MQ: u64 = 1 << 12;

/// Errors setting a device up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The vhost-user session failed.
    #[error("{device} ({socket}): {source}")]
    Vhost {
        /// The device name, e.g. "disk0".
        device: String,
        /// Its socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: frontend_guest::host::Error,
    },
    /// The back-end lacks a feature the transport needs.
    #[error("{device} ({socket}): the back-end does not offer {feature}")]
    MissingFeature {
        /// The device name.
        device: String,
        /// Its socket.
        socket: PathBuf,
        /// Spec name of the feature.
        feature: &'static str,
    },
    /// More queues were asked for than the back-end has.
    #[error("{device} ({socket}): {requested} queues asked for, the back-end has {available}")]
    TooManyQueues {
        /// The device name.
        device: String,
        /// Its socket.
        socket: PathBuf,
        /// Queues asked for.
        requested: usize,
        /// Queues the back-end has.
        available: u64,
    },
    /// Registering an ioeventfd or irqfd with KVM failed.
    #[error("{device}: registering {what} with KVM: {source}")]
    Kvm {
        /// The device name.
        device: String,
        /// "ioeventfd" or "irqfd".
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// What kind of device, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-blk with this many request queues.
    Blk {
        /// Request queues (1 unless VIRTIO_BLK_F_MQ is offered).
        num_queues: u16,
    },
    /// virtio-net with one receive / transmit pair, optionally overriding the MAC address.
    Net {
        /// MAC address the guest reads from configuration space instead of the back-end's.
        mac: Option<[u8; 6]>,
    },
}

impl DeviceKind {
    fn device_id(&self) -> u32 {
        match self {
            DeviceKind::Blk { .. } => VIRTIO_ID_BLOCK,
            DeviceKind::Net { .. } => VIRTIO_ID_NET,
        }
    }

    fn num_queues(&self) -> usize {
        match self {
            DeviceKind::Blk { num_queues } => usize::from(*num_queues),
            DeviceKind::Net { .. } => 2,
        }
    }

    /// Features offered to the guest out of the back-end's.
    fn guest_features(&self, backend: u64) -> u64 {
        let hidden = match self {
            DeviceKind::Blk { num_queues: 1 } => BLK_F_MQ,
            DeviceKind::Blk { .. } => 0,
            DeviceKind::Net { .. } => NET_HIDDEN,
        };
        backend & !PROTOCOL_FEATURES_BIT & !hidden
    }

    /// Overrides configuration bytes the transport decides: blk `num_queues`, net `mac`.
    fn patch_config(&self, offset: u64, data: &mut [u8]) {
        let (field_at, field): (u64, Vec<u8>) = match self {
            DeviceKind::Blk { num_queues } => {
                (BLK_NUM_QUEUES_OFFSET, num_queues.to_le_bytes().to_vec())
            }
            DeviceKind::Net { mac: Some(mac) } => (0, mac.to_vec()),
            DeviceKind::Net { mac: None } => return,
        };
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            if at >= field_at && at < field_at + field.len() as u64 {
                *b = field[(at - field_at) as usize];
            }
        }
    }
}

/// Where a device sits: its register window and interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePlace {
    /// Guest-physical base of the register window.
    pub mmio_base: u64,
    /// GSI (IOAPIC input) of its interrupt.
    pub gsi: u32,
}

/// A virtio-mmio device served by a vhost-user back-end.
pub struct VhostUserMmio {
    name: String,
    socket: PathBuf,
    kind: DeviceKind,
    transport: MmioTransport,
    conn: VhostUserConnection,
    vrings: Vec<VringFds>,
    ram: Arc<HostRam>,
    place: DevicePlace,
    started: bool,
}

impl std::fmt::Debug for VhostUserMmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserMmio")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("started", &self.started)
            .finish()
    }
}

/// Configuration space reads and writes through VHOST_USER_GET_CONFIG.
struct VhostConfig<'a> {
    conn: &'a mut VhostUserConnection,
    kind: &'a DeviceKind,
    name: &'a str,
}

impl ConfigSpace for VhostConfig<'_> {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        // offset < 0x1000 and len <= 8 (checked by the transport).
        match self.conn.config_at(offset as u32, data.len() as u32) {
            Ok(bytes) if bytes.len() == data.len() => data.copy_from_slice(&bytes),
            Ok(bytes) => log::warn!(
                "{}: GET_CONFIG at {offset} returned {} bytes, wanted {}",
                self.name,
                bytes.len(),
                data.len()
            ),
            Err(e) => log::warn!("{}: GET_CONFIG at {offset}: {e}", self.name),
        }
        self.kind.patch_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::warn!(
            "{}: configuration write at {offset} ignored (read-only here)",
            self.name
        );
    }
}

impl VhostUserMmio {
    /// Connects to the back-end on `socket`, checks it offers VIRTIO_F_VERSION_1 (and enough
    /// queues), and registers every queue's kick eventfd as an ioeventfd on QueueNotify and
    /// its call eventfd as an irqfd on `place.gsi`.
    ///
    /// # Errors
    /// [`DeviceError`].
    pub fn connect(
        name: &str,
        socket: &Path,
        kind: DeviceKind,
        ram: Arc<HostRam>,
        vm: &VmFd,
        place: DevicePlace,
    ) -> Result<Self, DeviceError> {
        let vhost_err = |source| DeviceError::Vhost {
            device: name.into(),
            socket: socket.into(),
            source,
        };
        let opts = ConnectOptions {
            connect_timeout: CONNECT_TIMEOUT,
            ..ConnectOptions::default()
        };
        let num_queues = kind.num_queues();
        let conn =
            VhostUserConnection::connect(socket, &opts, num_queues as u64).map_err(vhost_err)?;
        let offered = conn.offered_features();
        if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(DeviceError::MissingFeature {
                device: name.into(),
                socket: socket.into(),
                feature: "VIRTIO_F_VERSION_1",
            });
        }
        if let Some(available) = conn.queue_num() {
            if num_queues as u64 > available {
                return Err(DeviceError::TooManyQueues {
                    device: name.into(),
                    socket: socket.into(),
                    requested: num_queues,
                    available,
                });
            }
        }
        let kvm_err = |what| {
            move |source| DeviceError::Kvm {
                device: name.into(),
                what,
                source,
            }
        };
        let mut vrings = Vec::with_capacity(num_queues);
        for q in 0..num_queues {
            let fds = VringFds::new().map_err(vhost_err)?;
            let notify = IoEventAddress::Mmio(place.mmio_base + mmio::QUEUE_NOTIFY);
            vm.register_ioevent(fds.kick_fd(), &notify, q as u32)
                .map_err(kvm_err("ioeventfd"))?;
            vm.register_irqfd(fds.call_fd(), place.gsi)
                .map_err(kvm_err("irqfd"))?;
            vrings.push(fds);
        }
        let transport = MmioTransport::new(
            kind.device_id(),
            kind.guest_features(offered),
            num_queues,
            QUEUE_MAX_SIZE,
        );
        Ok(VhostUserMmio {
            name: name.into(),
            socket: socket.into(),
            kind,
            transport,
            conn,
            vrings,
            ram,
            place,
            started: false,
        })
    }

    /// Takes the device out of the VM (hot-unplug): stops its vrings if the guest left them
    /// running, unregisters every ioeventfd and irqfd, and closes the vhost-user connection.
    /// Failures are logged: the slot is given up either way.
    pub fn disconnect(mut self, vm: &VmFd) {
        self.stop();
        let notify = IoEventAddress::Mmio(self.place.mmio_base + mmio::QUEUE_NOTIFY);
        for (q, fds) in self.vrings.iter().enumerate() {
            if let Err(e) = vm.unregister_ioevent(fds.kick_fd(), &notify, q as u32) {
                log::warn!("{}: unregistering ioeventfd {q}: {e}", self.name);
            }
            if let Err(e) = vm.unregister_irqfd(fds.call_fd(), self.place.gsi) {
                log::warn!("{}: unregistering irqfd {q}: {e}", self.name);
            }
        }
        log::info!("{} ({}): disconnected", self.name, self.socket.display());
    }

    /// The virtio device id.
    pub fn device_id(&self) -> u32 {
        self.kind.device_id()
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A guest read at `offset` in the register window.
    ///
    /// # Errors
    /// [`AccessError`] (the data reads as zeros).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let mut config = VhostConfig {
            conn: &mut self.conn,
            kind: &self.kind,
            name: &self.name,
        };
        self.transport.read(offset, data, &mut config)
    }

    /// A guest write at `offset` in the register window; DRIVER_OK starts the back-end's
    /// vrings, a reset stops them. A back-end failure sets DEVICE_NEEDS_RESET and is logged.
    ///
    /// # Errors
    /// [`AccessError`] (the write is ignored).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let mut config = VhostConfig {
            conn: &mut self.conn,
            kind: &self.kind,
            name: &self.name,
        };
        match self.transport.write(offset, data, &mut config)? {
            Action::None => {}
            Action::DriverOk => {
                if let Err(e) = self.start() {
                    log::error!("{}: starting the back-end failed: {e}", self.name);
                    self.transport.needs_reset();
                }
            }
            Action::Reset => self.stop(),
            Action::Notify(q) => self.notify(q),
        }
        Ok(())
    }

    fn notify(&self, queue: u32) {
        if let Some(fds) = self.vrings.get(queue as usize) {
            if let Err(e) = fds.kick() {
                log::warn!("{}: kick of queue {queue}: {e}", self.name);
            }
        }
    }

    /// Runs the vhost-user start sequence for the ready queues.
    fn start(&mut self) -> frontend_guest::host::Result<()> {
        self.conn.set_features(self.transport.driver_features())?;
        self.conn.set_mem_table(&self.ram)?;
        let ready: Vec<(usize, QueueLayout)> = self
            .transport
            .queues()
            .iter()
            .enumerate()
            .filter(|(_, q)| q.ready)
            .map(|(i, q)| {
                let layout = QueueLayout {
                    size: q.size,
                    desc_table: q.desc,
                    avail_ring: q.driver,
                    used_ring: q.device,
                };
                (i, layout)
            })
            .collect();
        for (i, layout) in &ready {
            layout.validate(QUEUE_MAX_SIZE)?;
            self.conn.set_vring_num(*i, layout.size)?;
        }
        self.started = true;
        for (i, layout) in &ready {
            self.conn
                .attach_vring(*i, layout, &self.ram, &self.vrings[*i], 0)?;
        }
        log::info!(
            "{} ({}): started {} queue(s), features {:#x}",
            self.name,
            self.socket.display(),
            ready.len(),
            self.transport.driver_features()
        );
        Ok(())
    }

    /// Stops every vring after a guest reset.
    fn stop(&mut self) {
        if !std::mem::take(&mut self.started) {
            return;
        }
        for i in 0..self.vrings.len() {
            match self.conn.stop_vring(i) {
                Ok(base) => log::debug!("{}: queue {i} stopped at {base}", self.name),
                Err(e) => log::warn!("{}: GET_VRING_BASE {i}: {e}", self.name),
            }
        }
    }
}
