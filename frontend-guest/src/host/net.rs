//! A virtio-net device driven through a vhost-user back-end (virtio 1.2 §5.1): the mock
//! front-end's network card, for protocol tests and as a packet generator and sink.
//!
//! [`NetDevice::connect`] negotiates features, reads the configuration, shares guest RAM,
//! starts the queue pairs (and the control queue when negotiated) and fills every receive
//! queue. Each [`NetQueuePair`] is independent, so pairs can be driven from different threads.
//!
//! Memory: per pair, one transmit slot per transmit descriptor (header, then a frame of up to
//! [`NetOptions::max_frame_bytes`]) and one receive buffer per receive descriptor of
//! [`NetOptions::rx_buffer_bytes`]. Sending copies the frame into a free slot
//! ([`NetQueuePair::send`]), or reuses frames written once into every slot
//! ([`NetQueuePair::prime_tx`], [`NetQueuePair::send_primed`]) for load generation. Receiving
//! copies the frame out ([`NetQueuePair::recv`]) or only counts it ([`NetQueuePair::drain_rx`]);
//! either way the buffers go straight back to the device.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ram::HostRam;
use super::vhost::{ConnectOptions, VhostUserConnection, VringFds};
use super::Error;
use crate::mem::GuestRam;
use crate::net::{
    self, NetConfig, NetHdr, CONFIG_BYTES, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use crate::virtq::{
    Buffer, QueueLayout, RawDescriptor, SplitQueue, VirtqError, VIRTIO_F_IN_ORDER,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Largest queue size the front-end supports.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Largest frame a TCP segmentation offload carries (64 KiB of IP plus Ethernet and VLAN).
pub const MAX_GSO_FRAME: u32 = 65_536 + 18;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Every feature this front-end understands.
pub const ALL_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_F_IN_ORDER)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_CTRL_VQ)
    | bit(VIRTIO_NET_F_CTRL_RX)
    | bit(VIRTIO_NET_F_CTRL_RX_EXTRA)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_NET_F_CTRL_MAC_ADDR);

/// Errors of the virtio-net front-end.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The vhost-user session, guest RAM or a virtqueue failed.
    #[error(transparent)]
    Host(#[from] Error),
    /// A frame does not fit a transmit slot.
    #[error("frame of {len} bytes exceeds the {max}-byte transmit slot")]
    FrameTooLarge {
        /// Frame bytes.
        len: usize,
        /// [`NetOptions::max_frame_bytes`].
        max: u32,
    },
    /// The device returned a receive buffer that breaks the rules (used length shorter than
    /// the header or longer than the buffer, `num_buffers` 0 or more than posted).
    #[error("bad receive from the device: {0}")]
    BadReceive(String),
    /// The device has no control queue (VIRTIO_NET_F_CTRL_VQ not negotiated).
    #[error("VIRTIO_NET_F_CTRL_VQ is not negotiated")]
    NoControlQueue,
}

impl From<VirtqError> for NetError {
    fn from(e: VirtqError) -> Self {
        NetError::Host(Error::Virtq(e))
    }
}

impl From<crate::mem::MemError> for NetError {
    fn from(e: crate::mem::MemError) -> Self {
        NetError::Host(Error::Mem(e))
    }
}

/// Result of the virtio-net front-end.
pub type NetResult<T> = std::result::Result<T, NetError>;

/// How to set the device up.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Queue pairs to start (at most what the device offers). Default 1.
    pub queue_pairs: u16,
    /// Descriptors per queue (power of two, at most [`MAX_QUEUE_SIZE`]). Default 256.
    pub queue_size: u16,
    /// Features to ack when offered (VIRTIO_F_VERSION_1 is required). Default [`ALL_FEATURES`].
    pub features: u64,
    /// Bytes per receive buffer. Default 2048 (one MTU-sized frame; with MRG_RXBUF larger
    /// frames span several). Without MRG_RXBUF but with a GUEST_TSO feature, raise it to
    /// [`MAX_GSO_FRAME`] + 12.
    pub rx_buffer_bytes: u32,
    /// Largest frame to send, bytes. Default [`MAX_GSO_FRAME`].
    pub max_frame_bytes: u32,
    /// Bytes of guest RAM left free for [`HostRam::alloc`] (raw chains). Default 1 MiB.
    pub scratch_bytes: u64,
    /// How long blocking calls wait. Default 10 s.
    pub io_timeout: Duration,
    /// Connection timing.
    pub connect: ConnectOptions,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            queue_pairs: 1,
            queue_size: 256,
            features: ALL_FEATURES,
            rx_buffer_bytes: 2048,
            max_frame_bytes: MAX_GSO_FRAME,
            scratch_bytes: 1 << 20,
            io_timeout: Duration::from_secs(10),
            connect: ConnectOptions::default(),
        }
    }
}

/// A received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Its header (`num_buffers` as the device wrote it).
    pub hdr: NetHdr,
    /// The frame without header.
    pub frame: Vec<u8>,
}

/// A virtio-net device served by a vhost-user back-end.
#[derive(Debug)]
pub struct NetDevice {
    conn: VhostUserConnection,
    ram: Arc<HostRam>,
    config: NetConfig,
    features: u64,
    pairs: Vec<NetQueuePair>,
    ctrl: Option<CtrlQueue>,
}

impl NetDevice {
    /// Connects to the vhost-user-net back-end on `path`, acks `opts.features & offered`, starts
    /// `opts.queue_pairs` pairs (and the control queue), fills the receive queues, and with
    /// more than one pair tells the device so (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VERSION_1,
    /// [`Error::TooManyQueues`], and connection, RAM and queue errors.
    pub fn connect(path: impl AsRef<Path>, opts: &NetOptions) -> NetResult<Self> {
        let max_queues = 2 * u64::from(opts.queue_pairs) + 1;
        let mut conn =
            VhostUserConnection::connect(path.as_ref(), &opts.connect, max_queues.max(3))?;
        let offered = conn.offered_features();
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(Error::MissingFeature {
                name: "VIRTIO_F_VERSION_1",
            }
            .into());
        }
        let config = read_config(&mut conn)?;
        let mut features = offered & opts.features;
        let max_pairs = if features & bit(VIRTIO_NET_F_MQ) != 0 {
            config.max_virtqueue_pairs.max(1)
        } else {
            1
        };
        // A back-end that counts the control queue in VHOST_USER_GET_QUEUE_NUM serves it;
        // DPDK's vhost PMD counts queue pairs and leaves the control queue to the front-end.
        let ctrl_index = net::ctrl_queue(max_pairs);
        if conn.queue_num().is_some_and(|n| n <= ctrl_index as u64) {
            features &= !bit(VIRTIO_NET_F_CTRL_VQ);
        }
        if opts.queue_pairs == 0 || opts.queue_pairs > max_pairs {
            return Err(Error::TooManyQueues {
                requested: opts.queue_pairs,
                available: u64::from(max_pairs),
            }
            .into());
        }
        conn.set_features(features)?;
        let ram = Arc::new(HostRam::new(ram_bytes(opts))?);
        conn.set_mem_table(&ram)?;
        let mut pairs = Vec::with_capacity(usize::from(opts.queue_pairs));
        for p in 0..opts.queue_pairs {
            let pair = NetQueuePair::new(p, &ram, opts, features)?;
            conn.start_vring(net::rx_queue(p), pair.rx.layout(), &ram, &pair.rx_fds)?;
            conn.start_vring(net::tx_queue(p), pair.tx.layout(), &ram, &pair.tx_fds)?;
            pairs.push(pair);
        }
        let ctrl = if features & bit(VIRTIO_NET_F_CTRL_VQ) != 0 {
            let c = CtrlQueue::new(&ram, opts, features)?;
            conn.start_vring(net::ctrl_queue(max_pairs), c.vq.layout(), &ram, &c.fds)?;
            Some(c)
        } else {
            None
        };
        let mut dev = NetDevice {
            conn,
            ram,
            config,
            features,
            pairs,
            ctrl,
        };
        for pair in &mut dev.pairs {
            pair.fill_rx()?;
        }
        if opts.queue_pairs > 1 && dev.ctrl.is_some() {
            let ack = dev.ctrl(
                VIRTIO_NET_CTRL_MQ,
                VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                &opts.queue_pairs.to_le_bytes(),
            )?;
            if ack != net::VIRTIO_NET_OK {
                return Err(NetError::BadReceive(format!("VQ_PAIRS_SET answered {ack}")));
            }
        }
        Ok(dev)
    }

    /// The configuration read at connect time.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The negotiated features (VHOST_USER_F_PROTOCOL_FEATURES not included).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether feature bit `b` was negotiated.
    pub fn has_feature(&self, b: u32) -> bool {
        self.features & bit(b) != 0
    }

    /// The vhost-user session.
    pub fn connection(&self) -> &VhostUserConnection {
        &self.conn
    }

    /// The vhost-user session, to send control messages (memory regions, dirty log, reset).
    pub fn connection_mut(&mut self) -> &mut VhostUserConnection {
        &mut self.conn
    }

    /// Guest RAM, e.g. for buffers of raw chains.
    pub fn ram(&self) -> &Arc<HostRam> {
        &self.ram
    }

    /// Queue pair `index`.
    ///
    /// # Errors
    /// [`Error::NoSuchQueue`].
    pub fn pair(&mut self, index: usize) -> NetResult<&mut NetQueuePair> {
        let count = self.pairs.len();
        self.pairs
            .get_mut(index)
            .ok_or(NetError::Host(Error::NoSuchQueue { index, count }))
    }

    /// All pairs, e.g. to drive them from several threads.
    pub fn pairs_mut(&mut self) -> &mut [NetQueuePair] {
        &mut self.pairs
    }

    /// Sends a control command and waits for its ack byte (VIRTIO_NET_OK or VIRTIO_NET_ERR).
    ///
    /// # Errors
    /// [`NetError::NoControlQueue`], [`Error::Timeout`], queue errors.
    pub fn ctrl(&mut self, class: u8, command: u8, data: &[u8]) -> NetResult<u8> {
        let ram = self.ram.clone();
        let c = self.ctrl.as_mut().ok_or(NetError::NoControlQueue)?;
        let (head, ack) = net::add_ctrl(&mut c.vq, &*ram, c.slot, class, command, data)?;
        c.run(&ram, head)?;
        Ok(net::read_ack(&*ram, ack)?)
    }

    /// Adds an arbitrary chain to the control queue and waits until the device returns it;
    /// returns the used length. For tests of malformed control chains.
    ///
    /// # Errors
    /// As [`NetDevice::ctrl`].
    pub fn ctrl_raw(&mut self, descs: &[RawDescriptor]) -> NetResult<u32> {
        let ram = self.ram.clone();
        let c = self.ctrl.as_mut().ok_or(NetError::NoControlQueue)?;
        let head = c.vq.add_raw(&*ram, descs)?;
        c.run(&ram, head)
    }

    /// Stops vring `index` (VHOST_USER_GET_VRING_BASE) and returns the device's next available
    /// index for it; the back-end must have put every chain it took in the used ring by then.
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::ControlTimeout`].
    pub fn stop_vring(&mut self, index: usize) -> NetResult<u32> {
        Ok(self.conn.stop_vring(index)?)
    }

    /// Stops every vring (VHOST_USER_GET_VRING_BASE) and closes the connection.
    ///
    /// # Errors
    /// [`Error::Vhost`].
    pub fn disconnect(mut self) -> NetResult<()> {
        for p in 0..self.pairs.len() as u16 {
            self.conn.stop_vring(net::rx_queue(p))?;
            self.conn.stop_vring(net::tx_queue(p))?;
        }
        Ok(())
    }
}

/// Numbers the made-up MAC addresses of devices without a configuration space.
static LOCAL_MACS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The configuration space, or, when the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG
/// (DPDK's vhost PMD), one made up as a VMM would: a locally administered MAC address unique
/// in this process, link up, the queue pairs of VHOST_USER_GET_QUEUE_NUM, MTU 1500.
fn read_config(conn: &mut VhostUserConnection) -> NetResult<NetConfig> {
    match conn.config(CONFIG_BYTES as u32) {
        Ok(raw) => Ok(NetConfig::parse(&raw).ok_or(Error::BadConfig { len: raw.len() })?),
        Err(Error::MissingFeature { .. }) => {
            let n = LOCAL_MACS
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_be_bytes();
            let pid = (std::process::id() as u16).to_be_bytes();
            Ok(NetConfig {
                mac: [0x02, pid[0], pid[1], n[1], n[2], n[3]],
                status: 1,
                max_virtqueue_pairs: conn
                    .queue_num()
                    .map_or(1, |q| u16::try_from(q).unwrap_or(u16::MAX)),
                mtu: 1500,
            })
        }
        Err(e) => Err(e.into()),
    }
}

fn tx_slot_bytes(opts: &NetOptions) -> u64 {
    (net::HDR_LEN as u64 + u64::from(opts.max_frame_bytes)).next_multiple_of(64)
}

fn ram_bytes(opts: &NetOptions) -> u64 {
    let size = u64::from(opts.queue_size);
    let rings = 2 * QueueLayout::contiguous_bytes(opts.queue_size).next_multiple_of(4096);
    let per_pair =
        rings + size * (tx_slot_bytes(opts) + u64::from(opts.rx_buffer_bytes).next_multiple_of(64));
    let ctrl = QueueLayout::contiguous_bytes(16).next_multiple_of(4096) + 4096;
    per_pair * u64::from(opts.queue_pairs) + ctrl + opts.scratch_bytes.next_multiple_of(4096)
}

/// One receive queue and one transmit queue.
#[derive(Debug)]
pub struct NetQueuePair {
    pair: u16,
    ram: Arc<HostRam>,
    hdr_len: usize,
    mrg: bool,
    io_timeout: Duration,
    rx: SplitQueue<MAX_QUEUE_SIZE>,
    rx_fds: VringFds,
    rx_buffer_bytes: u32,
    /// Receive buffer address by head index, while posted.
    rx_posted: Vec<Option<u64>>,
    /// Receive buffers not posted.
    rx_free: Vec<u64>,
    /// Receive queue kicks sent (available buffer notifications the device asked for).
    rx_kicks: u64,
    tx: SplitQueue<MAX_QUEUE_SIZE>,
    tx_fds: VringFds,
    max_frame_bytes: u32,
    /// Transmit slot by head index, while in flight (`None` for raw chains).
    tx_pending: Vec<Option<Option<u64>>>,
    tx_free: Vec<u64>,
    /// Length of the frame [`NetQueuePair::prime_tx`] wrote into every slot.
    primed_len: Option<u32>,
}

impl NetQueuePair {
    fn new(pair: u16, ram: &Arc<HostRam>, opts: &NetOptions, features: u64) -> NetResult<Self> {
        let size = opts.queue_size;
        let event_idx = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let new_queue = || -> NetResult<SplitQueue<MAX_QUEUE_SIZE>> {
            let base = ram.alloc(QueueLayout::contiguous_bytes(size), 4096)?;
            let mut q = SplitQueue::new(&**ram, QueueLayout::contiguous(base, size)?, event_idx)?;
            q.set_in_order(features & bit(VIRTIO_F_IN_ORDER) != 0);
            Ok(q)
        };
        let (rx, tx) = (new_queue()?, new_queue()?);
        let rx_stride = u64::from(opts.rx_buffer_bytes).next_multiple_of(64);
        let rx_base = ram.alloc(rx_stride * u64::from(size), 4096)?;
        let tx_stride = tx_slot_bytes(opts);
        let tx_base = ram.alloc(tx_stride * u64::from(size), 4096)?;
        Ok(NetQueuePair {
            pair,
            ram: ram.clone(),
            hdr_len: net::hdr_len(features),
            mrg: features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
            io_timeout: opts.io_timeout,
            rx,
            rx_fds: VringFds::new()?,
            rx_buffer_bytes: opts.rx_buffer_bytes,
            rx_posted: vec![None; usize::from(size)],
            rx_free: free_slots(rx_base, rx_stride, size),
            rx_kicks: 0,
            tx,
            tx_fds: VringFds::new()?,
            max_frame_bytes: opts.max_frame_bytes,
            tx_pending: vec![None; usize::from(size)],
            tx_free: free_slots(tx_base, tx_stride, size),
            primed_len: None,
        })
    }

    /// The pair's index.
    pub fn index(&self) -> u16 {
        self.pair
    }

    /// Bytes of the virtio-net header on this device.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Transmit chains the device has not returned yet.
    pub fn tx_in_flight(&self) -> usize {
        usize::from(self.tx.chains_in_flight())
    }

    /// Receive buffers posted to the device.
    pub fn rx_posted(&self) -> usize {
        usize::from(self.rx.chains_in_flight())
    }

    /// Receive queue kicks sent so far: refills after which the device asked to be notified
    /// (virtio 1.2 §2.7.10).
    pub fn rx_kicks(&self) -> u64 {
        self.rx_kicks
    }

    /// Posts every free receive buffer and kicks the device if it wants it.
    ///
    /// # Errors
    /// Queue and eventfd errors.
    pub fn fill_rx(&mut self) -> NetResult<()> {
        while let Some(addr) = self.rx_free.pop() {
            let head = net::add_rx(&mut self.rx, &*self.ram, addr, self.rx_buffer_bytes)?;
            self.rx_posted[usize::from(head)] = Some(addr);
        }
        if self.rx.publish(&*self.ram)? {
            self.rx_fds.kick().map_err(NetError::from)?;
            self.rx_kicks += 1;
        }
        Ok(())
    }

    /// Queues `frame` with header `hdr` (copied into a free transmit slot; completed transmits
    /// are reaped first when none is free) and kicks the device if it wants it.
    ///
    /// # Errors
    /// [`NetError::FrameTooLarge`], [`Error::Timeout`] when no slot frees up, queue errors.
    pub fn send(&mut self, hdr: &NetHdr, frame: &[u8]) -> NetResult<()> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= self.max_frame_bytes);
        let len = len.ok_or(NetError::FrameTooLarge {
            len: frame.len(),
            max: self.max_frame_bytes,
        })?;
        let slot = self.take_tx_slot()?;
        self.ram.write(slot, &hdr.to_bytes()[..self.hdr_len])?;
        self.ram.write(slot + self.hdr_len as u64, frame)?;
        self.add_contiguous(slot, len)?;
        self.flush_tx()
    }

    /// Adds the one-descriptor chain of the header and `len` frame bytes laid out in `slot`.
    fn add_contiguous(&mut self, slot: u64, len: u32) -> NetResult<()> {
        // hdr_len is 10 or 12 and len is at most max_frame_bytes, both far below u32::MAX.
        let buf = [Buffer::readable(slot, self.hdr_len as u32 + len)];
        let head = self.tx.add(&*self.ram, &[&buf])?;
        self.tx_pending[usize::from(head)] = Some(Some(slot));
        Ok(())
    }

    /// Sends a frame whose header and data are split over several descriptors: the header,
    /// then `frame` cut into pieces of `piece` bytes (for tests of the device's chain walk).
    ///
    /// # Errors
    /// As [`NetQueuePair::send`].
    pub fn send_scattered(&mut self, hdr: &NetHdr, frame: &[u8], piece: usize) -> NetResult<()> {
        let pieces = frame.len().div_ceil(piece.max(1));
        self.wait_tx_descriptors(1 + pieces)?;
        let slot = self.take_tx_slot()?;
        let data = slot + self.hdr_len as u64;
        self.ram.write(data, frame)?;
        let bufs: Vec<Buffer> = frame
            .chunks(piece.max(1))
            .scan(data, |at, c| {
                let b = Buffer::readable(*at, c.len() as u32);
                *at += c.len() as u64;
                Some(b)
            })
            .collect();
        self.add_tx(hdr, slot, &bufs)?;
        self.flush_tx()
    }

    /// Adds an arbitrary chain to the transmit queue and kicks; the caller owns its buffers.
    ///
    /// # Errors
    /// Queue and eventfd errors.
    pub fn send_raw(&mut self, descs: &[RawDescriptor]) -> NetResult<u16> {
        let head = self.tx.add_raw(&*self.ram, descs)?;
        self.tx_pending[usize::from(head)] = Some(None);
        self.flush_tx()?;
        Ok(head)
    }

    /// Waits for every transmit to complete, then writes `frame` with `hdr` into every transmit
    /// slot, for [`NetQueuePair::send_primed`].
    ///
    /// # Errors
    /// [`NetError::FrameTooLarge`], memory errors.
    pub fn prime_tx(&mut self, hdr: &NetHdr, frame: &[u8]) -> NetResult<()> {
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l <= self.max_frame_bytes)
            .ok_or(NetError::FrameTooLarge {
                len: frame.len(),
                max: self.max_frame_bytes,
            })?;
        self.wait_tx_done()?;
        for &slot in &self.tx_free {
            self.ram.write(slot, &hdr.to_bytes()[..self.hdr_len])?;
            self.ram.write(slot + self.hdr_len as u64, frame)?;
        }
        self.primed_len = Some(len);
        Ok(())
    }

    /// Sends up to `n` primed frames (as many as there are free slots after reaping), with one
    /// publication and at most one kick; returns how many went (0 before
    /// [`NetQueuePair::prime_tx`]).
    ///
    /// # Errors
    /// Queue and eventfd errors.
    pub fn send_primed(&mut self, n: usize) -> NetResult<usize> {
        let Some(len) = self.primed_len else {
            return Ok(0);
        };
        self.reap_tx()?;
        let mut sent = 0;
        while sent < n {
            let Some(slot) = self.tx_free.pop() else {
                break;
            };
            self.add_contiguous(slot, len)?;
            sent += 1;
        }
        self.flush_tx()?;
        Ok(sent)
    }

    /// Takes completed transmits from the used ring; returns how many.
    ///
    /// # Errors
    /// Queue errors (a misbehaving device).
    pub fn reap_tx(&mut self) -> NetResult<usize> {
        let mut n = 0;
        while let Some(used) = self.tx.pop_used(&*self.ram)? {
            if let Some(Some(slot)) = self
                .tx_pending
                .get_mut(usize::from(used.head))
                .and_then(Option::take)
            {
                self.tx_free.push(slot);
            }
            n += 1;
        }
        Ok(n)
    }

    /// Waits until the device has returned every transmit chain.
    ///
    /// # Errors
    /// [`Error::Timeout`], queue errors.
    pub fn wait_tx_done(&mut self) -> NetResult<()> {
        let deadline = Instant::now() + self.io_timeout;
        loop {
            self.reap_tx()?;
            if self.tx.chains_in_flight() == 0 {
                return Ok(());
            }
            sleep_on(
                &mut self.tx,
                &self.tx_fds,
                &self.ram,
                deadline,
                self.io_timeout,
            )?;
        }
    }

    /// Takes the next received frame if one is there (its buffers go back to the device).
    ///
    /// # Errors
    /// [`NetError::BadReceive`], queue errors.
    pub fn try_recv(&mut self) -> NetResult<Option<Received>> {
        let Some((hdr, frame, _)) = self.take_frame(true)? else {
            return Ok(None);
        };
        self.fill_rx()?;
        Ok(Some(Received { hdr, frame }))
    }

    /// Waits up to `timeout` for a frame.
    ///
    /// # Errors
    /// As [`NetQueuePair::try_recv`]; a timeout gives `Ok(None)`.
    pub fn recv(&mut self, timeout: Duration) -> NetResult<Option<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv()? {
                return Ok(Some(r));
            }
            match sleep_on(&mut self.rx, &self.rx_fds, &self.ram, deadline, timeout) {
                Ok(()) => {}
                Err(NetError::Host(Error::Timeout(_))) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes every frame received so far without copying it out; returns (frames, bytes
    /// without headers). For the packet sink.
    ///
    /// # Errors
    /// As [`NetQueuePair::try_recv`].
    pub fn drain_rx(&mut self) -> NetResult<(u64, u64)> {
        let (mut frames, mut bytes) = (0u64, 0u64);
        while let Some((_, _, len)) = self.take_frame(false)? {
            frames += 1;
            bytes += len;
        }
        if frames > 0 {
            self.fill_rx()?;
        }
        Ok((frames, bytes))
    }

    /// Arms the receive notification and waits up to `timeout` for it (unless frames are
    /// already there).
    ///
    /// # Errors
    /// Queue and eventfd errors; a timeout is not an error.
    pub fn wait_rx(&mut self, timeout: Duration) -> NetResult<()> {
        let deadline = Instant::now() + timeout;
        match sleep_on(&mut self.rx, &self.rx_fds, &self.ram, deadline, timeout) {
            Err(NetError::Host(Error::Timeout(_))) => Ok(()),
            other => other,
        }
    }

    /// Pops one frame (all its buffers with MRG_RXBUF): its header, its bytes when `copy`
    /// (else empty), and its length without header.
    fn take_frame(&mut self, copy: bool) -> NetResult<Option<(NetHdr, Vec<u8>, u64)>> {
        let Some(first) = self.rx.pop_used(&*self.ram)? else {
            return Ok(None);
        };
        let (addr, len) = self.release_rx(first.head, first.len)?;
        if len < self.hdr_len as u64 {
            return Err(NetError::BadReceive(format!(
                "used length {len} is shorter than the header"
            )));
        }
        let mut head_bytes = [0u8; net::HDR_LEN];
        self.ram.read(addr, &mut head_bytes[..self.hdr_len])?;
        let hdr = NetHdr::parse(&head_bytes[..self.hdr_len])
            .ok_or_else(|| NetError::BadReceive("short header".into()))?;
        let buffers = if self.mrg { hdr.num_buffers } else { 1 };
        if buffers == 0 || buffers > self.rx.size() {
            return Err(NetError::BadReceive(format!("num_buffers {buffers}")));
        }
        let mut total = len - self.hdr_len as u64;
        let mut frame = Vec::new();
        if copy {
            frame = self
                .ram
                .read_vec(addr + self.hdr_len as u64, total as usize)?;
        }
        let deadline = Instant::now() + self.io_timeout;
        for _ in 1..buffers {
            // The device adds the buffers of one frame together; the rest follow at once.
            let used = loop {
                if let Some(u) = self.rx.pop_used(&*self.ram)? {
                    break u;
                }
                if Instant::now() > deadline {
                    return Err(NetError::BadReceive(format!(
                        "{buffers} buffers announced, fewer came"
                    )));
                }
                std::hint::spin_loop();
            };
            let (a, l) = self.release_rx(used.head, used.len)?;
            if copy {
                frame.extend(self.ram.read_vec(a, l as usize)?);
            }
            total += l;
        }
        Ok(Some((hdr, frame, total)))
    }

    /// Returns a used receive buffer to the free list: (address, bytes written).
    fn release_rx(&mut self, head: u16, len: u32) -> NetResult<(u64, u64)> {
        let addr = self
            .rx_posted
            .get_mut(usize::from(head))
            .and_then(Option::take)
            .ok_or_else(|| NetError::BadReceive(format!("unknown receive head {head}")))?;
        self.rx_free.push(addr);
        if len > self.rx_buffer_bytes {
            return Err(NetError::BadReceive(format!(
                "used length {len} of a {}-byte buffer",
                self.rx_buffer_bytes
            )));
        }
        Ok((addr, u64::from(len)))
    }

    /// Waits until at least `n` descriptors of the transmit queue are free.
    fn wait_tx_descriptors(&mut self, n: usize) -> NetResult<()> {
        let deadline = Instant::now() + self.io_timeout;
        while usize::from(self.tx.num_free()) < n {
            self.reap_tx()?;
            if usize::from(self.tx.num_free()) >= n {
                break;
            }
            sleep_on(
                &mut self.tx,
                &self.tx_fds,
                &self.ram,
                deadline,
                self.io_timeout,
            )?;
        }
        Ok(())
    }

    fn take_tx_slot(&mut self) -> NetResult<u64> {
        if self.tx_free.is_empty() {
            self.reap_tx()?;
        }
        let deadline = Instant::now() + self.io_timeout;
        loop {
            if let Some(slot) = self.tx_free.pop() {
                return Ok(slot);
            }
            sleep_on(
                &mut self.tx,
                &self.tx_fds,
                &self.ram,
                deadline,
                self.io_timeout,
            )?;
            self.reap_tx()?;
        }
    }

    fn add_tx(&mut self, hdr: &NetHdr, slot: u64, frame: &[Buffer]) -> NetResult<()> {
        let head = net::add_tx(&mut self.tx, &*self.ram, hdr, slot, self.hdr_len, frame)?;
        self.tx_pending[usize::from(head)] = Some(Some(slot));
        Ok(())
    }

    fn flush_tx(&mut self) -> NetResult<()> {
        if self.tx.publish(&*self.ram)? {
            self.tx_fds.kick().map_err(NetError::from)?;
        }
        Ok(())
    }
}

/// Arms `vq`'s used buffer notification and sleeps until it fires or `deadline`, unless
/// completions are already waiting.
fn sleep_on(
    vq: &mut SplitQueue<MAX_QUEUE_SIZE>,
    fds: &VringFds,
    ram: &HostRam,
    deadline: Instant,
    timeout: Duration,
) -> NetResult<()> {
    if vq.enable_interrupts(ram)? {
        return Ok(());
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Timeout(timeout).into());
    }
    fds.wait_call(left)?;
    Ok(())
}

/// The control queue: one command at a time.
#[derive(Debug)]
struct CtrlQueue {
    vq: SplitQueue<16>,
    fds: VringFds,
    slot: u64,
    timeout: Duration,
}

impl CtrlQueue {
    fn new(ram: &Arc<HostRam>, opts: &NetOptions, features: u64) -> NetResult<Self> {
        let base = ram.alloc(QueueLayout::contiguous_bytes(16), 4096)?;
        let event_idx = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut vq = SplitQueue::new(&**ram, QueueLayout::contiguous(base, 16)?, event_idx)?;
        vq.set_in_order(features & bit(VIRTIO_F_IN_ORDER) != 0);
        Ok(CtrlQueue {
            vq,
            fds: VringFds::new()?,
            slot: ram.alloc(4096, 64)?,
            timeout: opts.io_timeout,
        })
    }

    /// Publishes, kicks and waits for the chain `head` to come back; returns its used length.
    fn run(&mut self, ram: &HostRam, head: u16) -> NetResult<u32> {
        if self.vq.publish(ram)? {
            self.fds.kick()?;
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(used) = self.vq.pop_used(ram)? {
                if used.head == head {
                    return Ok(used.len);
                }
                continue;
            }
            if self.vq.enable_interrupts(ram)? {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(self.timeout).into());
            }
            self.fds.wait_call(left)?;
        }
    }
}

/// The guest addresses of `count` buffer slots of `stride` bytes from `base`, as a stack whose
/// top (the last element) is the lowest slot.
fn free_slots(base: u64, stride: u64, count: u16) -> Vec<u64> {
    (0..u64::from(count))
        .rev()
        .map(|i| base + i * stride)
        .collect()
}
