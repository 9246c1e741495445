//! A port: one vhost-user socket, and the state of whichever front-end is connected to it that
//! other threads need (counters, acked features, receive filter, receive queues). A port lives
//! as long as the daemon; front-ends come and go.
//!
//! In switch mode other ports' workers put frames into this port's receive queues
//! ([`RxQueue::offer`]); when the driver has no receive buffers the frames wait in a bounded
//! backlog, and this port's own worker moves them in when the driver kicks the receive queue
//! ([`RxQueue::drain`]).

use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use vhost_user_backend::VringT;
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use crate::ctrl::RxFilter;
use crate::deferred::Copies;
use crate::device::Acked;
use crate::fdb::PortId;
use crate::guest::{GuestRamAtomic, Vring};
use crate::mac::MacAddr;
use crate::rx::{
    arm_for_more_buffers, deliver, Backlog, Delivery, Outgoing, Payload, Pending, RxFrame,
};
use crate::stats::{Drop, PortStats, QueueStats};
use crate::vq::Batch;
use vhost_daemon::view::GuestView;

/// What the connected front-end negotiated and asked for.
#[derive(Clone, Debug)]
pub struct PortState {
    /// A front-end is connected and has acked its features.
    pub connected: bool,
    /// The features it acked.
    pub acked: Acked,
    /// Its receive filter.
    pub filter: RxFilter,
    /// Queue pairs it uses (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; all offered ones until then).
    pub active_pairs: u16,
}

/// One port.
#[derive(Debug)]
pub struct Port {
    /// The switch's port id (in TAP mode and on the command line: the socket's index).
    pub id: PortId,
    /// MAC address in the configuration space.
    pub mac: MacAddr,
    /// MTU in bytes.
    pub mtu: u16,
    /// Queue pairs offered.
    pub queue_pairs: u16,
    /// Counters.
    pub stats: PortStats,
    /// Switch: the only source addresses this port may send from (`--switch-port
    /// SOCKET,mac=...`); empty: any address not pinned to another port.
    pub pinned: Vec<MacAddr>,
    /// How long this port's queue threads busy-poll after their last work (`--poll-us`).
    pub poll: Duration,
    /// Worker threads a connection's queue pairs are spread over (`--worker-threads`), 1 to
    /// `queue_pairs`, by default [`crate::threads::default_threads`]; see [`crate::threads`].
    pub worker_threads: u16,
    rx: Vec<RxQueue>,
    state: RwLock<PortState>,
}

impl Port {
    /// A port with no front-end yet.
    pub fn new(id: PortId, mac: MacAddr, mtu: u16, queue_pairs: u16, rx_backlog: usize) -> Port {
        Port {
            id,
            mac,
            mtu,
            queue_pairs,
            stats: PortStats::new(queue_pairs),
            pinned: Vec::new(),
            poll: Duration::ZERO,
            worker_threads: crate::threads::default_threads(queue_pairs),
            rx: (0..queue_pairs).map(|_| RxQueue::new(rx_backlog)).collect(),
            state: RwLock::new(PortState {
                connected: false,
                acked: Acked::default(),
                filter: RxFilter::new(mac),
                active_pairs: queue_pairs,
            }),
        }
    }

    /// This port allowed to send only from `macs` (none: from any address).
    pub fn with_pinned(self, macs: Vec<MacAddr>) -> Port {
        Port {
            pinned: macs,
            ..self
        }
    }

    /// This port's queue threads busy-polling for `poll` after their last work.
    pub fn with_poll(self, poll: Duration) -> Port {
        Port { poll, ..self }
    }

    /// This port's queue pairs served by `threads` worker threads (clamped to 1 to the
    /// number of pairs).
    pub fn with_worker_threads(self, threads: u16) -> Port {
        Port {
            worker_threads: threads.clamp(1, self.queue_pairs.max(1)),
            ..self
        }
    }

    /// Whether this port may send a frame with source address `src` (by its own pins; the
    /// switch's table knows the other ports' pins).
    pub fn may_send_from(&self, src: MacAddr) -> bool {
        self.pinned.is_empty() || self.pinned.contains(&src)
    }

    /// A copy of the front-end's state.
    pub fn state(&self) -> PortState {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The features the front-end acked.
    pub fn acked(&self) -> Acked {
        self.state.read().unwrap_or_else(|p| p.into_inner()).acked
    }

    /// Whether the front-end's receive filter takes frames to `dst`.
    pub fn accepts(&self, dst: MacAddr) -> bool {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .filter
            .accepts(dst)
    }

    /// Queue pairs the front-end uses.
    pub fn active_pairs(&self) -> u16 {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .active_pairs
    }

    /// Changes the front-end's state.
    pub fn update(&self, f: impl FnOnce(&mut PortState)) {
        f(&mut self.state.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Back to no front-end: reset filter, queues detached, backlogs dropped.
    pub fn reset(&self) {
        self.update(|s| {
            *s = PortState {
                connected: false,
                acked: Acked::default(),
                filter: RxFilter::new(self.mac),
                active_pairs: self.queue_pairs,
            }
        });
        self.rx.iter().for_each(RxQueue::detach);
    }

    /// The port left the switch: its receive queues are detached and stay closed (a delivery
    /// in progress is waited for; later ones are refused).
    pub fn close(&self) {
        self.rx.iter().for_each(RxQueue::close);
    }

    /// Receive queues frames can go to now: the front-end acked its features and, among the
    /// pairs it uses, the queue's vring is attached (its first kick was served) and enabled.
    /// A frame sent to the port before it has one is dropped (`rx_no_buffers`), as on a
    /// link that is not up yet.
    pub fn rx_queues_ready(&self) -> usize {
        let state = self.state();
        if !state.connected {
            return 0;
        }
        let pairs = usize::from(state.active_pairs).min(self.rx.len());
        self.rx[..pairs].iter().filter(|q| q.is_ready()).count()
    }

    /// Receive queue of pair `q`.
    pub fn rx_queue(&self, q: usize) -> Option<&RxQueue> {
        self.rx.get(q)
    }

    /// The receive queue a frame that arrived on the sender's queue pair `from_q` goes to:
    /// among the pairs the driver uses whose receive queue is running, the `from_q`-th modulo
    /// their number (so one flow stays on one queue and in order).
    pub fn pick_rx_queue(&self, from_q: usize, active_pairs: u16) -> Option<(usize, &RxQueue)> {
        let usable = &self.rx[..usize::from(active_pairs).min(self.rx.len())];
        let ready = || usable.iter().enumerate().filter(|(_, rxq)| rxq.is_ready());
        let n = ready().count();
        let (q, rxq) = ready().nth(from_q % n.max(1))?;
        Some((q, rxq))
    }
}

/// A receive queue other threads deliver into.
pub struct RxQueue {
    inner: Mutex<RxInner>,
}

impl std::fmt::Debug for RxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("RxQueue")
            .field("attached", &inner.ring.is_some())
            .field("backlog", &inner.backlog.len())
            .finish()
    }
}

struct RxInner {
    ring: Option<(Vring, GuestRamAtomic)>,
    backlog: Backlog,
    /// The port left the switch: nothing attaches again.
    closed: bool,
}

impl RxQueue {
    fn new(backlog: usize) -> RxQueue {
        RxQueue {
            inner: Mutex::new(RxInner {
                ring: None,
                backlog: Backlog::new(backlog),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RxInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the running vring (and the guest memory it lives in) the target of deliveries.
    pub fn attach(&self, vring: &Vring, mem: &GuestRamAtomic) {
        let mut inner = self.lock();
        if inner.ring.is_none() && !inner.closed {
            inner.ring = Some((vring.clone(), mem.clone()));
        }
    }

    /// Detaches for good ([`Port::close`]).
    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.ring = None;
        inner.backlog.clear();
    }

    /// Stops deliveries (the vring stopped or the front-end left) and drops the backlog.
    pub fn detach(&self) {
        let mut inner = self.lock();
        inner.ring = None;
        inner.backlog.clear();
    }

    /// Whether a running, enabled vring is attached.
    pub fn is_ready(&self) -> bool {
        self.lock()
            .ring
            .as_ref()
            .is_some_and(|(v, _)| v.get_ref().is_enabled())
    }

    /// Frames in the backlog.
    pub fn backlog_len(&self) -> usize {
        self.lock().backlog.len()
    }

    /// Offers `frames`, in order, to a driver that acked `acked`, under one lock of the queue
    /// and one [`Batch`] of its ring: into its buffers while nothing waits before them and
    /// buffers are there, the rest into the backlog, beyond it dropped ([`Drop::RxNoBuffers`]);
    /// a frame that can never fit is dropped as [`Drop::RxTooBig`]. Counted in `stats`. The
    /// driver is notified once, if it wants to be (EVENT_IDX respected).
    pub fn offer(&self, acked: Acked, frames: &[Outgoing<'_, '_>], stats: &QueueStats) {
        let mut inner = self.lock();
        let RxInner { ring, backlog, .. } = &mut *inner;
        let Some((vring, mem)) = ring.as_ref() else {
            frames.iter().for_each(|_| stats.drop(Drop::RxNoBuffers));
            return;
        };
        let mut rest = frames;
        if backlog.is_empty() {
            let (consumed, moved) =
                deliver_while_buffers(vring, mem, acked, frames.iter().map(Outgoing::frame), stats);
            rest = &frames[consumed..];
            if moved {
                notify(vring);
            }
        }
        for f in rest {
            let frame = f.frame();
            let pending = Pending {
                hdr: frame.hdr,
                frame: payload_bytes(&frame),
            };
            if !backlog.push(pending) {
                stats.drop(Drop::RxNoBuffers);
            }
        }
    }

    /// Moves backlogged frames into the driver's buffers while there are some; true if any
    /// moved (the caller then notifies). With the backlog empty the driver's available buffer
    /// notifications are suppressed (virtio 1.2 §2.7.10, as Linux's vhost-net does for its
    /// receive queues): a kick on every refill would only wake this port's worker for nothing.
    /// A delivery that finds no buffers turns them back on ([`arm_for_more_buffers`]), under
    /// the same lock, so a kick is never missed while frames wait.
    pub fn drain(&self, acked: Acked, stats: &QueueStats) -> bool {
        let mut inner = self.lock();
        let RxInner { ring, backlog, .. } = &mut *inner;
        let Some((vring, mem)) = ring.as_ref() else {
            return false;
        };
        let frames = backlog.iter().map(|p| RxFrame::local(p.hdr, &p.frame));
        let (consumed, moved) = deliver_while_buffers(vring, mem, acked, frames, stats);
        for _ in 0..consumed {
            backlog.pop();
        }
        if backlog.is_empty() {
            if let Err(e) = vring.disable_notification() {
                log::warn!("receive queue: {e}");
            }
        }
        moved
    }

    /// Sends the driver a used buffer notification if it wants one (EVENT_IDX respected).
    pub fn notify(&self) {
        let inner = self.lock();
        if let Some((vring, _)) = inner.ring.as_ref() {
            notify(vring);
        }
    }
}

/// Sends a used buffer notification on `vring` if the driver wants one.
pub fn notify(vring: &Vring) {
    match vring.needs_notification() {
        Ok(true) => {
            if let Err(e) = vring.signal_used_queue() {
                log::warn!("cannot signal used queue: {e}");
            }
        }
        Ok(false) => {}
        Err(e) => log::warn!("cannot check for notification: {e}"),
    }
}

/// Bytes of frames after which a delivery batch publishes its used elements: large frames
/// (64 KiB segmentation-offload frames take dozens of receive buffers each) reach the driver
/// while the rest of the batch is copied, so it can hand buffers back for them instead of the
/// rest going to the backlog (a copy each); small frames are published once per batch.
const PUBLISH_BYTES: usize = 32 * 1024;

/// Delivers `frames` in order into `vring` under one lock and one [`Batch`] (the used
/// elements published once, or every [`PUBLISH_BYTES`]) until the driver's buffers run out;
/// when they do, re-arms the driver's notifications and goes on if buffers arrived meanwhile
/// (so a kick is never missed). Returns the frames consumed (delivered, or dropped as too big:
/// counted) and whether any was delivered.
fn deliver_while_buffers<'f, 'g: 'f>(
    vring: &Vring,
    mem: &GuestRamAtomic,
    acked: Acked,
    frames: impl Iterator<Item = RxFrame<'f, 'g>>,
    stats: &QueueStats,
) -> (usize, bool) {
    let guard = mem.memory();
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    let mut batch = Batch::new(queue, GuestView::new(&guard));
    batch.prefetch_used(frames.size_hint().0);
    let mut arena = Vec::new();
    let mut copies = Copies::with_capacity(frames.size_hint().0);
    let (mut consumed, mut delivered, mut bytes) = (0, 0u64, 0u64);
    let mut unpublished = 0usize;
    'frames: for frame in frames {
        loop {
            match deliver(
                &mut batch,
                &guard,
                acked,
                &frame,
                &mut arena,
                Some(&mut copies),
                stats,
            ) {
                Delivery::Delivered(_) => {
                    delivered += 1;
                    bytes += frame.len as u64;
                    unpublished += frame.len;
                    if unpublished >= PUBLISH_BYTES {
                        publish(&mut batch, queue, &mut copies);
                        unpublished = 0;
                    }
                }
                Delivery::TooBig => stats.drop(Drop::RxTooBig),
                Delivery::NoBuffers { seen_avail } => {
                    publish(&mut batch, queue, &mut copies);
                    if arm_for_more_buffers(queue, &guard, seen_avail) {
                        continue;
                    }
                    break 'frames;
                }
            }
            consumed += 1;
            break;
        }
    }
    publish(&mut batch, queue, &mut copies);
    stats.rx_batch(delivered, bytes);
    (consumed, delivered > 0)
}

/// Publishes a delivery batch: the frames' bytes go in before the used elements that hand
/// their buffers over.
fn publish(batch: &mut Batch<'_>, queue: &mut Queue, copies: &mut Copies<'_, '_>) {
    copies.run();
    batch.finish(queue);
}

/// A copy of the frame's bytes.
fn payload_bytes(frame: &RxFrame<'_, '_>) -> Vec<u8> {
    let len = frame.len;
    match frame.payload.clone() {
        Payload::Local(b) => b[..len.min(b.len())].to_vec(),
        Payload::Guest(mut c) => {
            let mut v = vec![0u8; len];
            let n = c.read(&mut v);
            v.truncate(n);
            v
        }
    }
}
