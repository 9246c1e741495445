//! A virtio-blk device driven through a vhost-user back-end (virtio 1.2 §5.2).
//!
//! [`BlkDevice::connect`] negotiates features, reads the configuration, shares guest RAM and
//! starts the requested queues. Each [`BlkQueue`] is independent (its own rings, eventfds and
//! request buffers), so queues can be driven from different threads.
//!
//! Data path: `submit*` returns a [`Token`] (the chain's head index) as soon as the request is
//! in the available ring; [`BlkQueue::poll_completion`], [`BlkQueue::wait_completion`] and
//! [`BlkQueue::complete`] return [`Completion`]s carrying the token, the used length, the
//! status, read data and the submit-to-used latency. This keeps a queue full at a given depth
//! naturally: submit until `in_flight() == depth`, then alternate waiting and submitting.
//!
//! Memory: each queue owns one request slot per descriptor of its queue size; a slot holds the
//! header (offset 0), the status byte (16), an indirect table (64) and the data (from
//! [`SLOT_META_BYTES`], up to [`BlkOptions::max_request_bytes`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::VhostUserProtocolFeatures;

use super::ram::HostRam;
use super::vhost::{BackendChannel, ConnectOptions, InflightArea, VhostUserConnection, VringFds};
use super::{Error, Result};
use crate::blk::{
    self, BlkConfig, BlkStatus, DiscardSegment, RequestBuffers, RequestHeader,
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use crate::mem::GuestRam;
use crate::virtq::{
    Buffer, QueueLayout, RawDescriptor, SplitQueue, DESC_SIZE, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Largest queue size the front-end supports.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Bytes at the start of each request slot for header, status and indirect table.
pub const SLOT_META_BYTES: u64 = 8192;
const STATUS_OFFSET: u64 = 16;
const TABLE_OFFSET: u64 = 64;
/// Most data segments in one request (what the indirect table area holds, minus header and
/// status).
pub const MAX_DATA_SEGMENTS: usize = ((SLOT_META_BYTES - TABLE_OFFSET) / DESC_SIZE) as usize - 2;
/// Byte that read buffers are filled with before submission, so data the device did not write
/// shows.
pub const READ_POISON: u8 = 0xa5;

/// The virtio-blk feature bits this front-end understands and acks when offered.
const BLK_FEATURES: [u32; 9] = [
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_WRITE_ZEROES,
];

const fn bit(b: u32) -> u64 {
    1 << b
}

/// How to set the device up.
#[derive(Debug, Clone)]
pub struct BlkOptions {
    /// Queues to start (at most what the device offers). Default 1.
    pub num_queues: u16,
    /// Descriptors per queue (power of two, at most [`MAX_QUEUE_SIZE`]). Default 128.
    pub queue_size: u16,
    /// Largest data size of one request in bytes. Default 1 MiB.
    pub max_request_bytes: u32,
    /// Bytes of guest RAM left free for [`HostRam::alloc`] (raw chains in tests). Default 1 MiB.
    pub scratch_bytes: u64,
    /// Ack VIRTIO_RING_F_EVENT_IDX if offered. Default true.
    pub event_idx: bool,
    /// Ack VIRTIO_RING_F_INDIRECT_DESC if offered. Default true.
    pub indirect_desc: bool,
    /// How long the blocking wrappers wait for a completion. Default 10 s.
    pub io_timeout: Duration,
    /// Connection timing.
    pub connect: ConnectOptions,
    /// Track requests in an inflight area (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: GET and
    /// SET_INFLIGHT_FD at connect, SET_INFLIGHT_FD again at [`BlkDevice::reconnect`]), as
    /// QEMU does. Default false.
    pub inflight: bool,
    /// Open the back-end request channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ) to receive
    /// configuration change notifications. Default false.
    pub backend_channel: bool,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            num_queues: 1,
            queue_size: 128,
            max_request_bytes: 1 << 20,
            scratch_bytes: 1 << 20,
            event_idx: true,
            indirect_desc: true,
            io_timeout: Duration::from_secs(10),
            connect: ConnectOptions::default(),
            inflight: false,
            backend_channel: false,
        }
    }
}

/// A virtio-blk device served by a vhost-user back-end.
#[derive(Debug)]
pub struct BlkDevice {
    conn: VhostUserConnection,
    path: PathBuf,
    opts: BlkOptions,
    ram: Arc<HostRam>,
    config: BlkConfig,
    features: u64,
    queues: Vec<BlkQueue>,
    /// The inflight area the back-end allocated, kept across reconnects.
    inflight: Option<InflightArea>,
    channel: Option<BackendChannel>,
}

impl BlkDevice {
    /// Connects to the vhost-user-blk back-end on `path` and starts `opts.num_queues` queues.
    /// VIRTIO_F_VERSION_1 and VHOST_USER_PROTOCOL_F_CONFIG are required; the virtio-blk
    /// features of this front-end, INDIRECT_DESC and EVENT_IDX are acked when offered.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Vhost`], [`Error::MissingFeature`],
    /// [`Error::TooManyQueues`], [`Error::BadConfig`], RAM and virtqueue errors.
    pub fn connect(path: impl AsRef<Path>, opts: &BlkOptions) -> Result<Self> {
        let mut conn = connect(path.as_ref(), opts)?;
        let offered = conn.offered_features();
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(Error::MissingFeature {
                name: "VIRTIO_F_VERSION_1",
            });
        }
        let raw_config = conn.config(BlkConfig::BYTES as u32)?;
        let config = BlkConfig::parse(&raw_config).ok_or(Error::BadConfig {
            len: raw_config.len(),
        })?;
        let features = offered & wanted_features(opts);
        let available = available_queues(&conn, &config, features);
        if opts.num_queues == 0 || u64::from(opts.num_queues) > available {
            return Err(Error::TooManyQueues {
                requested: opts.num_queues,
                available,
            });
        }
        let channel = opts
            .backend_channel
            .then(|| conn.open_backend_channel())
            .transpose()?;
        conn.set_features(features)?;
        let ram = Arc::new(HostRam::new(ram_bytes(opts))?);
        conn.set_mem_table(&ram)?;
        let inflight = if opts.inflight {
            let area = conn.get_inflight_fd(opts.num_queues, opts.queue_size)?;
            conn.set_inflight_fd(&area)?;
            Some(area)
        } else {
            None
        };
        let mut queues = Vec::with_capacity(usize::from(opts.num_queues));
        for index in 0..usize::from(opts.num_queues) {
            let queue = BlkQueue::new(index, &ram, opts, features)?;
            conn.start_vring(index, queue.vq.layout(), &ram, &queue.fds)?;
            queues.push(queue);
        }
        Ok(BlkDevice {
            conn,
            path: path.as_ref().to_path_buf(),
            opts: opts.clone(),
            ram,
            config,
            features,
            queues,
            inflight,
            channel,
        })
    }

    /// Connects again after the back-end went away (e.g. it crashed and was restarted on the
    /// same socket), as QEMU's vhost-user-blk does: same features and memory table, the
    /// inflight area handed back (VHOST_USER_SET_INFLIGHT_FD), and each vring restarted at the
    /// used index (the back-end's last available index is lost with it). Requests in flight
    /// stay pending and complete when the back-end resubmits them.
    ///
    /// # Errors
    /// As [`BlkDevice::connect`].
    pub fn reconnect(&mut self) -> Result<()> {
        self.channel = None;
        let mut conn = connect(&self.path, &self.opts)?;
        self.channel = self
            .opts
            .backend_channel
            .then(|| conn.open_backend_channel())
            .transpose()?;
        conn.set_features(self.features)?;
        conn.set_mem_table(&self.ram)?;
        if let Some(area) = &self.inflight {
            conn.set_inflight_fd(area)?;
        }
        for queue in &self.queues {
            let base = queue.vq.device_used_idx(&*self.ram)?;
            conn.start_vring_at(queue.index, queue.vq.layout(), &self.ram, &queue.fds, base)?;
        }
        self.conn = conn;
        Ok(())
    }

    /// The inflight area the back-end allocated (VHOST_USER_GET_INFLIGHT_FD), e.g. to hand a
    /// damaged copy to a back-end in a test.
    pub fn inflight_area(&self) -> Option<&InflightArea> {
        self.inflight.as_ref()
    }

    /// The back-end request channel, if [`BlkOptions::backend_channel`] opened it.
    pub fn backend_channel(&self) -> Option<&BackendChannel> {
        self.channel.as_ref()
    }

    /// Reads the configuration space again (VHOST_USER_GET_CONFIG), e.g. after a configuration
    /// change notification, and keeps it as [`BlkDevice::config`].
    ///
    /// # Errors
    /// [`Error::BadConfig`], [`Error::Vhost`], [`Error::ControlTimeout`].
    pub fn reread_config(&mut self) -> Result<&BlkConfig> {
        let raw = self.conn.config(BlkConfig::BYTES as u32)?;
        self.config = BlkConfig::parse(&raw).ok_or(Error::BadConfig { len: raw.len() })?;
        Ok(&self.config)
    }

    /// The device configuration read at connect time.
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    /// The negotiated virtio feature bits (VHOST_USER_F_PROTOCOL_FEATURES not included).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether feature bit `b` was negotiated.
    pub fn has_feature(&self, b: u32) -> bool {
        self.features & bit(b) != 0
    }

    /// The feature bits the back-end offered.
    pub fn offered_features(&self) -> u64 {
        self.conn.offered_features()
    }

    /// The vhost-user session (protocol features, queue count).
    pub fn connection(&self) -> &VhostUserConnection {
        &self.conn
    }

    /// The vhost-user session, to send control messages (memory regions, dirty log, reset).
    pub fn connection_mut(&mut self) -> &mut VhostUserConnection {
        &mut self.conn
    }

    /// Guest RAM, e.g. to allocate and fill buffers for [`BlkQueue::submit_raw`].
    pub fn ram(&self) -> &Arc<HostRam> {
        &self.ram
    }

    /// Queue `index`.
    ///
    /// # Errors
    /// [`Error::NoSuchQueue`].
    pub fn queue(&mut self, index: usize) -> Result<&mut BlkQueue> {
        let count = self.queues.len();
        self.queues
            .get_mut(index)
            .ok_or(Error::NoSuchQueue { index, count })
    }

    /// All queues, e.g. to drive them from several threads.
    pub fn queues_mut(&mut self) -> &mut [BlkQueue] {
        &mut self.queues
    }

    /// Stops every vring (VHOST_USER_GET_VRING_BASE) and closes the connection. Returns each
    /// queue's next available index as the back-end reported it.
    ///
    /// # Errors
    /// [`Error::Vhost`]; the connection is closed either way.
    pub fn disconnect(mut self) -> Result<Vec<u32>> {
        (0..self.queues.len())
            .map(|index| self.conn.stop_vring(index))
            .collect()
    }
}

/// Connects and negotiates the protocol features `opts` asks for.
fn connect(path: &Path, opts: &BlkOptions) -> Result<VhostUserConnection> {
    let mut extra = VhostUserProtocolFeatures::empty();
    if opts.inflight {
        extra |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
    }
    if opts.backend_channel {
        extra |= VhostUserProtocolFeatures::BACKEND_REQ;
    }
    VhostUserConnection::connect_with(path, &opts.connect, u64::from(opts.num_queues), extra)
}

fn wanted_features(opts: &BlkOptions) -> u64 {
    let mut wanted = BLK_FEATURES
        .iter()
        .fold(bit(VIRTIO_F_VERSION_1), |acc, &b| acc | bit(b));
    if opts.event_idx {
        wanted |= bit(VIRTIO_RING_F_EVENT_IDX);
    }
    if opts.indirect_desc {
        wanted |= bit(VIRTIO_RING_F_INDIRECT_DESC);
    }
    wanted
}

/// Queues the device has: `num_queues` with VIRTIO_BLK_F_MQ (else 1), bounded by
/// VHOST_USER_GET_QUEUE_NUM.
fn available_queues(conn: &VhostUserConnection, config: &BlkConfig, features: u64) -> u64 {
    let device = if features & bit(VIRTIO_BLK_F_MQ) != 0 {
        u64::from(config.num_queues)
    } else {
        1
    };
    conn.queue_num().map_or(device, |n| n.min(device))
}

fn slot_stride(opts: &BlkOptions) -> u64 {
    SLOT_META_BYTES + u64::from(opts.max_request_bytes).next_multiple_of(4096)
}

fn ram_bytes(opts: &BlkOptions) -> u64 {
    let size = opts.queue_size;
    let per_queue = QueueLayout::contiguous_bytes(size).next_multiple_of(4096)
        + slot_stride(opts) * u64::from(size);
    per_queue * u64::from(opts.num_queues) + opts.scratch_bytes.next_multiple_of(4096)
}

/// Identifies a submitted request on its queue (the head descriptor index of its chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub u16);

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The token [`BlkQueue::submit`] returned.
    pub token: Token,
    /// Bytes the device says it wrote (used element `len`: data plus the status byte).
    pub used_len: u32,
    /// The status byte; `None` for raw chains, whose buffers the caller owns.
    pub status: Option<BlkStatus>,
    /// The device-writable data buffers (IN, GET_ID) in order, whatever `used_len` says;
    /// empty otherwise.
    pub data: Vec<u8>,
    /// From the available index store to the moment the completion was taken from the used
    /// ring.
    pub latency: Duration,
}

/// The data part of a request.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// No data buffers (FLUSH).
    None,
    /// Device-readable segments (OUT, DISCARD, WRITE_ZEROES), one descriptor each.
    Out(&'a [&'a [u8]]),
    /// Device-writable segments of these byte lengths (IN, GET_ID), one descriptor each.
    In(&'a [u32]),
}

/// How the chain is put in the descriptor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainForm {
    /// One descriptor per buffer in the queue's table.
    Direct,
    /// One descriptor pointing to an indirect table (needs VIRTIO_RING_F_INDIRECT_DESC).
    Indirect,
}

/// A virtio-blk request to submit.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `VIRTIO_BLK_T_*`, or any value to test a device's handling of unknown types.
    pub request_type: u32,
    /// First 512-byte sector.
    pub sector: u64,
    /// Data segments.
    pub data: Data<'a>,
    /// Direct or indirect chain.
    pub form: ChainForm,
}

/// A request in flight.
#[derive(Debug)]
struct Pending {
    /// Request slot (`None` for raw chains).
    slot: Option<u64>,
    /// Bytes of device-writable data to copy back.
    read_len: usize,
    submitted: Instant,
}

/// One virtio-blk request queue.
#[derive(Debug)]
pub struct BlkQueue {
    index: usize,
    ram: Arc<HostRam>,
    vq: SplitQueue<MAX_QUEUE_SIZE>,
    fds: VringFds,
    indirect: bool,
    max_request_bytes: u32,
    io_timeout: Duration,
    /// Guest-physical addresses of free request slots.
    free_slots: Vec<u64>,
    /// Requests in flight by head index.
    pending: Vec<Option<Pending>>,
    /// Completions taken from the used ring but not yet handed out.
    ready: VecDeque<Completion>,
}

impl BlkQueue {
    fn new(index: usize, ram: &Arc<HostRam>, opts: &BlkOptions, features: u64) -> Result<Self> {
        let size = opts.queue_size;
        let base = ram.alloc(QueueLayout::contiguous_bytes(size), 4096)?;
        let layout = QueueLayout::contiguous(base, size)?;
        let vq = SplitQueue::new(&**ram, layout, features & bit(VIRTIO_RING_F_EVENT_IDX) != 0)?;
        let stride = slot_stride(opts);
        let slots = ram.alloc(stride * u64::from(size), 4096)?;
        Ok(BlkQueue {
            index,
            ram: Arc::clone(ram),
            vq,
            fds: VringFds::new()?,
            indirect: features & bit(VIRTIO_RING_F_INDIRECT_DESC) != 0,
            max_request_bytes: opts.max_request_bytes,
            io_timeout: opts.io_timeout,
            free_slots: (0..u64::from(size))
                .rev()
                .map(|i| slots + i * stride)
                .collect(),
            pending: (0..size).map(|_| None).collect(),
            ready: VecDeque::new(),
        })
    }

    /// The queue index on the device.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Queue size in descriptors.
    pub fn size(&self) -> u16 {
        self.vq.size()
    }

    /// Where the queue's descriptor table and rings are in guest memory.
    pub fn layout(&self) -> &QueueLayout {
        self.vq.layout()
    }

    /// Requests submitted and not yet handed out as completions.
    pub fn in_flight(&self) -> usize {
        usize::from(self.vq.chains_in_flight()) + self.ready.len()
    }

    /// Guest RAM (shared with the device).
    pub fn ram(&self) -> &Arc<HostRam> {
        &self.ram
    }

    /// Whether the back-end signalled an error on this vring's err eventfd since the last call.
    ///
    /// # Errors
    /// [`Error::EventFd`].
    pub fn take_vring_error(&self) -> Result<bool> {
        self.fds.take_err()
    }

    /// Submits `req`: header, data and status go into a request slot, the chain into the
    /// available ring, and the device is kicked if it asked for it.
    ///
    /// # Errors
    /// [`Error::RequestTooLarge`], [`Error::TooManySegments`], [`Error::IndirectNotNegotiated`],
    /// [`Error::Virtq`] (e.g. queue full), [`Error::EventFd`].
    pub fn submit(&mut self, req: &Request<'_>) -> Result<Token> {
        self.check_request(req)?;
        let slot = self.take_slot()?;
        match self.add_request(slot, req) {
            Ok((head, read_len)) => self.publish(head, Some(slot), read_len),
            Err(e) => {
                self.free_slots.push(slot);
                Err(e)
            }
        }
    }

    /// Submits a request whose data segments are caller-owned guest buffers (from
    /// [`HostRam::alloc`], reused across requests; each [`Buffer`] gives its direction): only
    /// the 16-byte header and the status sentinel are written; the data is neither copied in,
    /// poisoned nor copied back, so the [`Completion`]'s `data` is empty and nothing is
    /// allocated per request. This is the load generator's zero-copy path.
    ///
    /// # Errors
    /// [`Error::TooManySegments`], [`Error::IndirectNotNegotiated`], [`Error::Virtq`] (e.g.
    /// queue full, or a buffer outside guest RAM), [`Error::EventFd`].
    pub fn submit_prepared(
        &mut self,
        request_type: u32,
        sector: u64,
        data: &[Buffer],
        form: ChainForm,
    ) -> Result<Token> {
        if data.len() > MAX_DATA_SEGMENTS {
            return Err(Error::TooManySegments {
                segments: data.len(),
                max: MAX_DATA_SEGMENTS,
            });
        }
        if form == ChainForm::Indirect && !self.indirect {
            return Err(Error::IndirectNotNegotiated);
        }
        let slot = self.take_slot()?;
        let header = RequestHeader {
            request_type,
            sector,
        };
        match self.add_chain(slot, &header, data, form) {
            Ok(head) => self.publish(head, Some(slot), 0),
            Err(e) => {
                self.free_slots.push(slot);
                Err(e)
            }
        }
    }

    /// Submits an arbitrary chain (see [`SplitQueue::add_raw`]); the caller owns and reads its
    /// buffers (allocate them with [`HostRam::alloc`]). The completion has no status or data.
    ///
    /// # Errors
    /// [`Error::Virtq`], [`Error::EventFd`].
    pub fn submit_raw(&mut self, descs: &[RawDescriptor]) -> Result<Token> {
        let head = self.vq.add_raw(&*self.ram, descs)?;
        self.publish(head, None, 0)
    }

    /// Submits a read of `len` bytes from 512-byte sector `sector` (VIRTIO_BLK_T_IN).
    ///
    /// # Errors
    /// As [`BlkQueue::submit`].
    pub fn submit_read(&mut self, sector: u64, len: u32) -> Result<Token> {
        self.submit(&simple(VIRTIO_BLK_T_IN, sector, Data::In(&[len])))
    }

    /// Submits a write of `data` at 512-byte sector `sector` (VIRTIO_BLK_T_OUT).
    ///
    /// # Errors
    /// As [`BlkQueue::submit`].
    pub fn submit_write(&mut self, sector: u64, data: &[u8]) -> Result<Token> {
        self.submit(&simple(VIRTIO_BLK_T_OUT, sector, Data::Out(&[data])))
    }

    /// Submits a cache flush (VIRTIO_BLK_T_FLUSH).
    ///
    /// # Errors
    /// As [`BlkQueue::submit`].
    pub fn submit_flush(&mut self) -> Result<Token> {
        self.submit(&simple(VIRTIO_BLK_T_FLUSH, 0, Data::None))
    }

    /// Submits a device id query (VIRTIO_BLK_T_GET_ID, 20 bytes).
    ///
    /// # Errors
    /// As [`BlkQueue::submit`].
    pub fn submit_get_id(&mut self) -> Result<Token> {
        self.submit(&simple(
            VIRTIO_BLK_T_GET_ID,
            0,
            Data::In(&[VIRTIO_BLK_ID_BYTES]),
        ))
    }

    /// Submits a discard of `segments` (VIRTIO_BLK_T_DISCARD).
    ///
    /// # Errors
    /// As [`BlkQueue::submit`].
    pub fn submit_discard(&mut self, segments: &[DiscardSegment]) -> Result<Token> {
        self.submit_segments(VIRTIO_BLK_T_DISCARD, segments)
    }

    /// Submits a write-zeroes of `segments` (VIRTIO_BLK_T_WRITE_ZEROES).
    ///
    /// # Errors
    /// As [`BlkQueue::submit`].
    pub fn submit_write_zeroes(&mut self, segments: &[DiscardSegment]) -> Result<Token> {
        self.submit_segments(VIRTIO_BLK_T_WRITE_ZEROES, segments)
    }

    /// Takes a completion if one is ready, without waiting.
    ///
    /// # Errors
    /// [`Error::Virtq`] if the device's used ring is inconsistent, [`Error::Mem`].
    pub fn poll_completion(&mut self) -> Result<Option<Completion>> {
        match self.ready.pop_front() {
            Some(c) => Ok(Some(c)),
            None => self.reap(),
        }
    }

    /// Waits up to `timeout` for the next completion (any token).
    ///
    /// # Errors
    /// [`Error::Timeout`], and as [`BlkQueue::poll_completion`].
    pub fn wait_completion(&mut self, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.poll_completion()? {
                return Ok(c);
            }
            self.sleep_until(deadline, timeout)?;
        }
    }

    /// Waits up to `timeout` for the completion of `token`; other completions that arrive
    /// meanwhile are kept for [`BlkQueue::poll_completion`] / [`BlkQueue::wait_completion`].
    ///
    /// # Errors
    /// [`Error::UnknownToken`], [`Error::Timeout`], and as [`BlkQueue::poll_completion`].
    pub fn complete(&mut self, token: Token, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        let known = self
            .pending
            .get(usize::from(token.0))
            .is_some_and(Option::is_some)
            || self.ready.iter().any(|c| c.token == token);
        if !known {
            return Err(Error::UnknownToken(token.0));
        }
        loop {
            if let Some(pos) = self.ready.iter().position(|c| c.token == token) {
                if let Some(c) = self.ready.remove(pos) {
                    return Ok(c);
                }
            }
            match self.reap()? {
                Some(c) => self.ready.push_back(c),
                None => self.sleep_until(deadline, timeout)?,
            }
        }
    }

    /// Submits `req` and waits for it ([`BlkOptions::io_timeout`]).
    ///
    /// # Errors
    /// As [`BlkQueue::submit`] and [`BlkQueue::complete`].
    pub fn run(&mut self, req: &Request<'_>) -> Result<Completion> {
        let token = self.submit(req)?;
        self.complete(token, self.io_timeout)
    }

    /// Reads `len` bytes at sector `sector` and waits: (status, data).
    ///
    /// # Errors
    /// As [`BlkQueue::run`].
    pub fn read(&mut self, sector: u64, len: u32) -> Result<(BlkStatus, Vec<u8>)> {
        let token = self.submit_read(sector, len)?;
        self.wait_status_data(token)
    }

    /// Writes `data` at sector `sector` and waits for the status.
    ///
    /// # Errors
    /// As [`BlkQueue::run`].
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<BlkStatus> {
        let token = self.submit_write(sector, data)?;
        self.wait_status(token)
    }

    /// Flushes and waits for the status.
    ///
    /// # Errors
    /// As [`BlkQueue::run`].
    pub fn flush(&mut self) -> Result<BlkStatus> {
        let token = self.submit_flush()?;
        self.wait_status(token)
    }

    /// Gets the device id (20 bytes) and waits: (status, id bytes).
    ///
    /// # Errors
    /// As [`BlkQueue::run`].
    pub fn get_id(&mut self) -> Result<(BlkStatus, Vec<u8>)> {
        let token = self.submit_get_id()?;
        self.wait_status_data(token)
    }

    /// Discards `segments` and waits for the status.
    ///
    /// # Errors
    /// As [`BlkQueue::run`].
    pub fn discard(&mut self, segments: &[DiscardSegment]) -> Result<BlkStatus> {
        let token = self.submit_discard(segments)?;
        self.wait_status(token)
    }

    /// Writes zeroes to `segments` and waits for the status.
    ///
    /// # Errors
    /// As [`BlkQueue::run`].
    pub fn write_zeroes(&mut self, segments: &[DiscardSegment]) -> Result<BlkStatus> {
        let token = self.submit_write_zeroes(segments)?;
        self.wait_status(token)
    }

    fn wait_status_data(&mut self, token: Token) -> Result<(BlkStatus, Vec<u8>)> {
        let c = self.complete(token, self.io_timeout)?;
        Ok((
            c.status.unwrap_or(BlkStatus::Other(blk::STATUS_SENTINEL)),
            c.data,
        ))
    }

    fn wait_status(&mut self, token: Token) -> Result<BlkStatus> {
        self.wait_status_data(token).map(|(status, _)| status)
    }

    fn submit_segments(&mut self, request_type: u32, segments: &[DiscardSegment]) -> Result<Token> {
        let bytes: Vec<u8> = segments.iter().flat_map(|s| s.to_bytes()).collect();
        self.submit(&simple(request_type, 0, Data::Out(&[&bytes])))
    }

    fn check_request(&self, req: &Request<'_>) -> Result<()> {
        let (segments, bytes) = match req.data {
            Data::None => (0, 0),
            Data::Out(segs) => (segs.len(), segs.iter().map(|s| s.len() as u64).sum()),
            Data::In(lens) => (lens.len(), lens.iter().map(|&l| u64::from(l)).sum()),
        };
        if segments > MAX_DATA_SEGMENTS {
            return Err(Error::TooManySegments {
                segments,
                max: MAX_DATA_SEGMENTS,
            });
        }
        if bytes > u64::from(self.max_request_bytes) {
            return Err(Error::RequestTooLarge {
                bytes,
                max: self.max_request_bytes,
            });
        }
        if req.form == ChainForm::Indirect && !self.indirect {
            return Err(Error::IndirectNotNegotiated);
        }
        Ok(())
    }

    /// Lays the request out in `slot` and adds its chain; returns (head, bytes to read back).
    fn add_request(&mut self, slot: u64, req: &Request<'_>) -> Result<(u16, usize)> {
        let mut addr = slot + SLOT_META_BYTES;
        let mut data = Vec::new();
        match req.data {
            Data::None => {}
            Data::Out(segs) => {
                for seg in segs {
                    self.ram.write(addr, seg)?;
                    // Segment lengths were checked against max_request_bytes (u32).
                    data.push(Buffer::readable(addr, seg.len() as u32));
                    addr += seg.len() as u64;
                }
            }
            Data::In(lens) => {
                for &len in lens {
                    self.ram.write(addr, &vec![READ_POISON; len as usize])?;
                    data.push(Buffer::writable(addr, len));
                    addr += u64::from(len);
                }
            }
        }
        let read_len = match req.data {
            Data::In(lens) => lens.iter().map(|&l| l as usize).sum(),
            _ => 0,
        };
        let header = RequestHeader {
            request_type: req.request_type,
            sector: req.sector,
        };
        let head = self.add_chain(slot, &header, &data, req.form)?;
        Ok((head, read_len))
    }

    /// Takes a free request slot.
    fn take_slot(&mut self) -> Result<u64> {
        Ok(self
            .free_slots
            .pop()
            .ok_or(crate::virtq::VirtqError::QueueFull {
                needed: 1,
                free: self.vq.num_free(),
            })?)
    }

    /// Adds the chain header → `data` → status of a request laid out in `slot`.
    fn add_chain(
        &mut self,
        slot: u64,
        header: &RequestHeader,
        data: &[Buffer],
        form: ChainForm,
    ) -> Result<u16> {
        let bufs = RequestBuffers {
            header: slot,
            data,
            status: slot + STATUS_OFFSET,
            indirect_table: (form == ChainForm::Indirect).then_some(slot + TABLE_OFFSET),
        };
        Ok(blk::add_request(&mut self.vq, &*self.ram, header, &bufs)?)
    }

    /// Records the request, publishes the available index and kicks if the device wants it.
    fn publish(&mut self, head: u16, slot: Option<u64>, read_len: usize) -> Result<Token> {
        let submitted = Instant::now();
        self.pending[usize::from(head)] = Some(Pending {
            slot,
            read_len,
            submitted,
        });
        if self.vq.publish(&*self.ram)? {
            self.fds.kick()?;
        }
        Ok(Token(head))
    }

    /// Takes one completion from the used ring.
    fn reap(&mut self) -> Result<Option<Completion>> {
        let Some(used) = self.vq.pop_used(&*self.ram)? else {
            return Ok(None);
        };
        let pending = self
            .pending
            .get_mut(usize::from(used.head))
            .and_then(Option::take)
            .ok_or(Error::UnknownToken(used.head))?;
        let latency = pending.submitted.elapsed();
        let (status, data) = match pending.slot {
            Some(slot) => {
                self.free_slots.push(slot);
                let status = blk::read_status(&*self.ram, slot + STATUS_OFFSET)?;
                (
                    Some(status),
                    self.ram
                        .read_vec(slot + SLOT_META_BYTES, pending.read_len)?,
                )
            }
            None => (None, Vec::new()),
        };
        Ok(Some(Completion {
            token: Token(used.head),
            used_len: used.len,
            status,
            data,
            latency,
        }))
    }

    /// Arms the used buffer notification and sleeps until it fires, unless completions are
    /// already waiting.
    fn sleep_until(&mut self, deadline: Instant, timeout: Duration) -> Result<()> {
        if self.vq.enable_interrupts(&*self.ram)? {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(timeout));
        }
        self.fds.wait_call(left)?;
        Ok(())
    }
}

fn simple(request_type: u32, sector: u64, data: Data<'_>) -> Request<'_> {
    Request {
        request_type,
        sector,
        data,
        form: ChainForm::Direct,
    }
}
