//! One queue pair's data path, run by its own vring worker thread: the transmit queue (frames
//! from the driver), the receive queue (frames to the driver), and in TAP mode the TAP queue of
//! the pair.
//!
//! Transmit: take up to [`BATCH`] chains, check each ([`walk_tx`]: chain in guest memory,
//! device-readable only; [`check_tx`]: header and size valid; bad ones are dropped and
//! counted; the batch's descriptors and headers are prefetched together), pass the
//! good ones on (one WRITEV each, the whole batch in one `io_uring_enter`, or through the
//! switch), return all chains to the used ring and notify the driver once. With EVENT_IDX the
//! queue is re-checked after re-enabling notifications, until really empty.
//!
//! Receive from the TAP: while the driver has buffers, read a batch of frames with one
//! `io_uring_enter`. When every buffer of the next chains can take a whole frame, the READVs
//! point straight into the driver's buffers (no copy); otherwise (mergeable buffers smaller
//! than a frame) frames land in bounce buffers and are then spread over as many chains as they
//! need. Frames that find no buffers wait in a bounded backlog, and the TAP is not read again
//! until the driver returns buffers (it kicks the receive queue).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestAddressSpace;

use crate::device::Acked;
use crate::guest::{
    mark_written, prefetch, walk, walk_head, Chain, Cursor, GuestRam, GuestRamAtomic, Slice, Vring,
};
use crate::hdr::{HdrError, NetHdr, TxLimits, HDR_LEN};
use crate::mac::{MacAddr, ETH_HLEN};
use crate::port::{notify, Port};
use crate::rx::{arm_for_more_buffers, deliver_one, Backlog, Delivery, Pending, RxFrame};
use crate::stats::{Drop, QueueStats};
use crate::switch::{Switch, TxRef};
use crate::tap::TapQueue;
use crate::vq::Batch;
use vhost_daemon::ring::Kick;
use vhost_daemon::uring::{Op, Ring, UringError};
use vhost_daemon::view::GuestView;

/// Most TAP operations (frames) in one io_uring batch, and the ring's submission entries.
pub const BATCH: usize = 64;

/// Longest a worker busy-polls for one event before it goes back to its event loop.
const MAX_POLL_PER_EVENT: Duration = Duration::from_millis(2);

/// What one [`Worker::take_all`] did.
#[derive(Clone, Copy, Debug, Default)]
struct Round {
    /// Chains taken.
    took: usize,
    /// The kick's budget ran out (the rest is left for a fresh kick).
    spent: bool,
}

/// Frames read into bounce buffers per batch (each buffer holds a largest frame).
const BOUNCE_BATCH: usize = 16;

/// A frame taken from the transmit queue that passed the checks.
#[derive(Debug)]
pub struct TxFrame {
    /// Its device-readable slices (header included) in the batch arena.
    pub slices: Range<usize>,
    /// Its header.
    pub hdr: NetHdr,
    /// Frame bytes after the header.
    pub len: usize,
}

/// Walks the transmit chain at `head` in `batch` into `arena` ([`walk_head`]) and checks that
/// it lies in guest memory and is device-readable only; its header is checked apart
/// ([`check_tx`]), so a batch's walks can prefetch every header before the first is read.
///
/// # Errors
/// The drop reason to count ([`Drop::TxBadChain`]).
#[inline]
pub fn walk_tx<'m>(
    batch: &Batch<'m>,
    head: u16,
    mem: &'m GuestRam,
    arena: &mut Vec<Slice<'m>>,
) -> Result<Chain, Drop> {
    let c = walk_head(batch, head, mem, arena).map_err(|e| {
        log::warn!("transmit chain {head}: {e}");
        Drop::TxBadChain
    })?;
    if c.writable_len > 0 {
        log::warn!("transmit chain {head} has device-writable buffers");
        return Err(Drop::TxBadChain);
    }
    Ok(c)
}

/// Checks the header of the transmit chain `c` ([`walk_tx`], its slices in `arena`): a header
/// of `acked.hdr_len()` bytes that passes [`NetHdr::check_tx`] with `limits`. A driver that
/// negotiated no transmit offload may ask for nothing in it (virtio 1.2 §5.1.6.2: flags zero,
/// gso_type NONE), so it is not read (one cache line of the driver's less per frame, as DPDK's
/// vhost library does) and the frame goes on with a zero header; its length is still checked.
///
/// # Errors
/// The drop reason to count.
#[inline(always)]
pub fn check_tx(
    c: &Chain,
    arena: &[Slice<'_>],
    acked: Acked,
    limits: &TxLimits,
) -> Result<TxFrame, Drop> {
    let hdr_len = acked.hdr_len();
    let parsed = if limits.any_offload() {
        read_header(&arena[c.readable.clone()], hdr_len)
    } else if c.readable_len < hdr_len {
        Err(HdrError::Short {
            len: c.readable_len,
            hdr_len,
        })
    } else {
        Ok(NetHdr::default())
    };
    let checked = parsed.and_then(|h| {
        let len = c.readable_len - hdr_len;
        h.check_tx(len, limits).map(|()| TxFrame {
            slices: c.readable.clone(),
            hdr: h,
            len,
        })
    });
    checked.map_err(|e| {
        log::warn!("transmit chain {}: {e}", c.head);
        match e {
            HdrError::FrameTooLarge { .. } => Drop::TxTooBig,
            _ => Drop::TxBadHeader,
        }
    })
}

/// Reads and parses the `hdr_len`-byte virtio-net header at the start of `slices`.
///
/// # Errors
/// [`HdrError::Short`] when the slices hold fewer bytes; as [`NetHdr::parse`].
#[inline]
fn read_header(slices: &[Slice<'_>], hdr_len: usize) -> Result<NetHdr, HdrError> {
    let mut cursor = Cursor::new(slices);
    let mut bytes = [0u8; HDR_LEN];
    let got = match cursor.peek::<HDR_LEN>() {
        Some(whole) if hdr_len == HDR_LEN => {
            bytes = whole;
            HDR_LEN
        }
        _ => cursor.read(&mut bytes[..hdr_len]),
    };
    if got < hdr_len {
        return Err(HdrError::Short { len: got, hdr_len });
    }
    NetHdr::parse(&bytes[..hdr_len])
}

/// Prefetches the lines of a transmit chain's first buffer (`slices[0]`) that hold what the
/// checks and the switch read first: the Ethernet header after the `hdr_len`-byte virtio-net
/// header, and the virtio-net header itself when `header` (a driver that pushes the header in
/// front of the frame often has the two in different lines).
#[inline]
fn prefetch_headers(slices: &[Slice<'_>], hdr_len: usize, header: bool) {
    let Some(first) = slices.first() else { return };
    let start = first.ptr_guard().as_ptr();
    let from = if header { 0 } else { hdr_len };
    let last = (hdr_len + ETH_HLEN).min(first.len()).saturating_sub(1);
    prefetch(start.wrapping_add(from.min(last)));
    prefetch(start.wrapping_add(last));
}

/// Where a pair's frames go.
#[derive(Debug)]
pub enum Path {
    /// To and from this TAP queue.
    Tap(Box<TapPath>),
    /// Through the switch.
    Switch(Arc<Switch>),
}

/// The TAP side of a pair.
#[derive(Debug)]
pub struct TapPath {
    tap: Arc<TapQueue>,
    ring: Ring,
    backlog: Backlog,
    attached: bool,
    bounce: Vec<Vec<u8>>,
}

impl TapPath {
    /// Serves `tap` with a fresh io_uring; up to `backlog` frames wait for receive buffers.
    /// The TAP queue is detached (as [`crate::tap::open`] leaves it, and as a front-end that
    /// left should have left it) until the pair's receive queue runs.
    ///
    /// # Errors
    /// [`UringError`] when the ring cannot be created.
    pub fn new(tap: Arc<TapQueue>, backlog: usize) -> Result<TapPath, UringError> {
        if let Err(e) = tap.set_attached(false) {
            log::warn!("{e}");
        }
        Ok(TapPath {
            tap,
            ring: Ring::new(BATCH as u32)?,
            backlog: Backlog::new(backlog),
            attached: false,
            bounce: Vec::new(),
        })
    }
}

/// The worker state of one queue pair.
#[derive(Debug)]
pub struct Worker {
    q: usize,
    port: Arc<Port>,
    mem: GuestRamAtomic,
    path: Path,
}

impl Worker {
    /// The worker of pair `q` of `port`.
    pub fn new(q: usize, port: Arc<Port>, mem: GuestRamAtomic, path: Path) -> Worker {
        Worker { q, port, mem, path }
    }

    fn stats(&self) -> &QueueStats {
        self.port.stats.queue(self.q)
    }

    /// The driver kicked the receive queue (it added buffers), or the ring just started: the
    /// port's receive queue is attached (the switch delivers into it; in TAP mode it only
    /// records that the queue runs, [`Port::rx_queues_ready`]).
    pub fn rx_kick(&mut self, rx: &Vring) {
        let Some(rxq) = self.port.rx_queue(self.q) else {
            return;
        };
        rxq.attach(rx, &self.mem);
        match &mut self.path {
            Path::Switch(_) => {
                if rxq.drain(self.port.acked(), self.port.stats.queue(self.q)) {
                    rxq.notify();
                }
            }
            Path::Tap(_) => self.tap_rx(rx),
        }
    }

    /// The TAP queue became readable.
    pub fn tap_readable(&mut self, rx: &Vring) {
        self.tap_rx(rx);
    }

    /// The driver kicked the transmit queue of the pair whose receive queue is `rx`: in TAP
    /// mode, a TAP queue not attached yet is attached (and read) if `rx` runs. A front-end
    /// whose kick eventfds start at zero (QEMU's start at one, which is a receive kick at ring
    /// start) may never kick a receive queue whose buffers it posted before the ring started,
    /// as after a live migration; its first transmission then attaches the TAP queue.
    pub fn tx_kicked_rx(&mut self, rx: &Vring) {
        if matches!(&self.path, Path::Tap(t) if !t.attached) {
            self.tap_rx(rx);
        }
    }

    /// Attaches or detaches the TAP queue (the driver changed the number of pairs it uses).
    pub fn set_tap_attached(&mut self, attached: bool) {
        if let Path::Tap(t) = &mut self.path {
            set_attached(t, attached);
        }
    }

    /// Stops using the TAP queue (the ring stopped or the front-end left).
    pub fn detach_tap(&mut self) {
        if let Path::Tap(t) = &mut self.path {
            set_attached(t, false);
            t.backlog.clear();
        }
    }

    /// The driver kicked the transmit queue: takes every chain, then busy-polls for the
    /// port's poll window after the last one (notifications stay off meanwhile, so the driver
    /// does not kick), then re-enables notifications and looks again until the queue is really
    /// empty (with VIRTIO_RING_F_EVENT_IDX this also publishes avail_event). A queue that keeps
    /// the worker busy for [`MAX_POLL_PER_EVENT`] is handed to the event loop with a kick of the
    /// worker's own and notifications still off: turning them on between two busy rounds only
    /// had the driver kick (2,400 kicks a second from a DPDK driver at 64 B, against none).
    pub fn tx_kick(&mut self, tx: &Vring) {
        let guard = self.mem.memory();
        let mem: &GuestRam = &guard;
        let started = Instant::now();
        let mut kick = Kick::default();
        loop {
            if let Err(e) = tx.disable_notification() {
                log::warn!("transmit queue {}: {e}", self.q);
            }
            let Some(round) = self.take_all(tx, mem, &mut kick) else {
                // VHOST_USER_GET_VRING_BASE stopped the ring; it waits for this call.
                break;
            };
            if !round.spent && self.poll(tx, mem, started, &mut kick).is_none() {
                break;
            }
            if !kick.go_round_again(tx, mem, round.took > 0, "transmit queue") {
                break;
            }
        }
        notify(tx);
    }

    /// Takes and forwards batches of chains until the transmit queue is empty or `kick`'s
    /// budget is spent; `None` once the ring was stopped.
    fn take_all(&mut self, tx: &Vring, mem: &GuestRam, kick: &mut Kick) -> Option<Round> {
        let acked = self.port.acked();
        let limits = acked.tx_limits(self.port.mtu);
        // Descriptors and used entries through the view: one region lookup, no bitmap clone.
        let view = GuestView::new(mem);
        let mut round = Round::default();
        // One allocation each per round, not per batch.
        let mut heads = Vec::with_capacity(BATCH);
        let mut arena = Vec::with_capacity(BATCH * 2);
        let mut walked = Vec::with_capacity(BATCH);
        let mut frames = Vec::with_capacity(BATCH);
        loop {
            if !kick.step() {
                round.spent = true;
                return Some(round);
            }
            heads.clear();
            arena.clear();
            frames.clear();
            let batch = pop_batch(tx, view, &mut heads)?;
            log::trace!("transmit queue {}: {} chains", self.q, heads.len());
            if heads.is_empty() {
                return Some(round);
            }
            round.took += heads.len();
            // Descriptors, then headers, each requested for the whole batch before the first
            // is read.
            for &head in &heads {
                batch.prefetch_descriptor(head);
            }
            batch.prefetch_used(heads.len());
            // A header that is read is checked after the batch's walks (its line prefetched
            // meanwhile); a header that is not read is checked at once.
            let header = limits.any_offload();
            for &head in &heads {
                let mark = arena.len();
                match walk_tx(&batch, head, mem, &mut arena) {
                    Ok(c) => {
                        prefetch_headers(&arena[c.readable.clone()], acked.hdr_len(), header);
                        if header {
                            walked.push(c);
                        } else {
                            self.keep(check_tx(&c, &arena, acked, &limits), &mut frames);
                        }
                    }
                    Err(why) => {
                        arena.truncate(mark);
                        self.stats().drop(why);
                    }
                }
            }
            for c in walked.drain(..) {
                self.keep(check_tx(&c, &arena, acked, &limits), &mut frames);
            }
            self.transmit(&frames, &arena, acked);
            let mut state = tx.get_mut();
            let queue = state.get_queue_mut();
            let mut used = Batch::new(queue, view);
            for &head in &heads {
                used.add_used(head, 0);
            }
            used.finish(queue);
        }
    }

    /// Adds a frame that passed [`check_tx`] to `frames`; one that did not is counted.
    #[inline(always)]
    fn keep(&self, checked: Result<TxFrame, Drop>, frames: &mut Vec<TxFrame>) {
        match checked {
            Ok(f) => frames.push(f),
            Err(why) => self.stats().drop(why),
        }
    }

    /// Busy-polls the transmit queue until nothing came for the port's poll window, or until
    /// the event that started at `started` has been served for [`MAX_POLL_PER_EVENT`] or
    /// `kick`'s budget is spent; then the turn ends ([`Kick::end_turn`]) and the queue, still
    /// busy, waits for a kick of the worker's own, notifications off, while the control path
    /// (which waits for this worker) and the thread's other events get their turn. An idle
    /// turn yields the CPU to other runnable threads (on a shared core, the other queues'
    /// workers); the time they run does not count as this queue's idle time. Frames moved are
    /// signalled to the driver as they go. `None` once the ring was stopped.
    fn poll(
        &mut self,
        tx: &Vring,
        mem: &GuestRam,
        started: Instant,
        kick: &mut Kick,
    ) -> Option<()> {
        let window = self.port.poll;
        if window.is_zero() {
            return Some(());
        }
        let mut last_work = Instant::now();
        loop {
            let round = self.take_all(tx, mem, kick)?;
            let now = Instant::now();
            if round.took > 0 {
                last_work = now;
                notify(tx);
            } else if now.duration_since(last_work) >= window {
                return Some(());
            }
            if round.spent || now.duration_since(started) >= MAX_POLL_PER_EVENT {
                kick.end_turn();
                return Some(());
            }
            if round.took == 0 {
                std::thread::yield_now();
                last_work += now.elapsed();
            }
        }
    }

    fn transmit(&mut self, frames: &[TxFrame], arena: &[Slice<'_>], acked: Acked) {
        let stats = self.port.stats.queue(self.q);
        match &mut self.path {
            Path::Switch(sw) => {
                let hdr_len = acked.hdr_len();
                let frames = frames.iter().map(|f| {
                    let mut frame = Cursor::new(&arena[f.slices.clone()]);
                    frame.skip(hdr_len);
                    TxRef {
                        hdr: f.hdr,
                        frame,
                        len: f.len,
                    }
                });
                sw.forward(&self.port, self.q, frames);
            }
            Path::Tap(t) => tap_write(t, frames, arena, acked.hdr_len(), stats),
        }
    }

    /// Reads frames from the TAP into the receive queue while the driver has buffers.
    fn tap_rx(&mut self, rx: &Vring) {
        let Path::Tap(t) = &mut self.path else { return };
        let port = &self.port;
        let q = self.q;
        let ready = running(rx) && usize::from(port.active_pairs()) > q;
        if !ready {
            set_attached(t, false);
            return;
        }
        set_attached(t, true);
        let guard = self.mem.memory();
        let mem: &GuestRam = &guard;
        let acked = port.acked();
        let rx_need = acked.hdr_len() + acked.max_rx_frame(port.mtu);
        let stats = port.stats.queue(q);
        let mut delivered = false;
        // A ring stopped meanwhile ends the loop (its chains can no longer be taken).
        while running(rx) {
            let (moved, backlog_empty) = drain_backlog(t, rx, mem, acked, stats);
            delivered |= moved;
            if !backlog_empty {
                break;
            }
            let avail = available(rx, mem);
            if avail == 0 {
                match rx.enable_notification() {
                    Ok(true) => continue,
                    _ => break,
                }
            }
            let cx = RxContext {
                rx,
                mem,
                acked,
                need: rx_need,
                port,
                q,
            };
            let outcome = match direct_read(t, &cx, avail.min(BATCH)) {
                Some(o) => o,
                None => bounce_read(t, &cx, avail.min(BOUNCE_BATCH)),
            };
            delivered |= outcome.delivered;
            if outcome.tap_empty {
                break;
            }
        }
        if delivered {
            notify(rx);
        }
    }
}

/// Takes up to [`BATCH`] chains from the transmit queue into `heads`, reading the driver's
/// available index once (it shares a cache line with a driver that keeps writing it); returns
/// the batch (its rings mapped, for walking the chains). `None` once the ring was stopped (then
/// nothing is taken, and re-enabling notifications would report the chains left forever). An
/// available index more than a queue size ahead gives no chains, as virtio-queue's `iter` does.
fn pop_batch<'m>(tx: &Vring, view: GuestView<'m>, heads: &mut Vec<u16>) -> Option<Batch<'m>> {
    let mut state = tx.get_mut();
    let queue = state.get_queue_mut();
    if !queue.ready() {
        return None;
    }
    let mut batch = Batch::new(queue, view);
    batch.pop_many(BATCH, heads);
    queue.set_next_avail(batch.next_avail());
    Some(batch)
}

/// Whether the ring runs: started and not stopped by VHOST_USER_GET_VRING_BASE.
fn running(vring: &Vring) -> bool {
    let state = vring.get_ref();
    state.is_enabled() && state.get_queue().ready()
}

/// The result of one receive batch.
struct ReadOutcome {
    /// Frames went into the used ring.
    delivered: bool,
    /// A read found the TAP queue empty.
    tap_empty: bool,
}

fn set_attached(t: &mut TapPath, attached: bool) {
    if t.attached == attached {
        return;
    }
    match t.tap.set_attached(attached) {
        Ok(()) => {
            log::debug!(
                "TAP {} queue {}",
                t.tap.name(),
                if attached { "attached" } else { "detached" }
            );
            t.attached = attached;
        }
        Err(e) => log::warn!("{e}"),
    }
}

/// Chains the driver made available and the device has not taken yet.
fn available(rx: &Vring, mem: &GuestRam) -> usize {
    let state = rx.get_ref();
    let queue = state.get_queue();
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => usize::from((idx - std::num::Wrapping(queue.next_avail())).0)
            .min(usize::from(queue.size())),
        Err(_) => 0,
    }
}

/// Moves backlogged frames into receive buffers; returns (some moved, backlog now empty).
fn drain_backlog(
    t: &mut TapPath,
    rx: &Vring,
    mem: &GuestRam,
    acked: Acked,
    stats: &QueueStats,
) -> (bool, bool) {
    let mut moved = false;
    let mut arena = Vec::new();
    while let Some(p) = t.backlog.front() {
        let mut state = rx.get_mut();
        let len = p.frame.len();
        match deliver_one(
            state.get_queue_mut(),
            mem,
            acked,
            &RxFrame::local(p.hdr, &p.frame),
            &mut arena,
            stats,
        ) {
            Delivery::Delivered(_) => {
                stats.rx(len);
                moved = true;
            }
            Delivery::TooBig => stats.drop(Drop::RxTooBig),
            Delivery::NoBuffers { seen_avail } => {
                if arm_for_more_buffers(state.get_queue_mut(), mem, seen_avail) {
                    continue;
                }
                return (moved, false);
            }
        }
        t.backlog.pop();
    }
    (moved, true)
}

/// What a receive batch from the TAP works with.
#[derive(Clone, Copy)]
struct RxContext<'a> {
    rx: &'a Vring,
    mem: &'a GuestRam,
    acked: Acked,
    /// Header plus largest frame, bytes.
    need: usize,
    port: &'a Port,
    q: usize,
}

/// Reads up to `n` frames straight into receive chains that each hold a largest frame
/// (`cx.need` bytes). `None` when the next chain is smaller (use bounce buffers instead).
fn direct_read(t: &mut TapPath, cx: &RxContext<'_>, n: usize) -> Option<ReadOutcome> {
    let RxContext {
        rx,
        mem,
        acked,
        need,
        port,
        q,
    } = *cx;
    let stats = port.stats.queue(q);
    let hdr_len = acked.hdr_len();
    let mut state = rx.get_mut();
    let queue = state.get_queue_mut();
    let mut arena = Vec::with_capacity(n);
    let mut kept: Vec<(u16, Range<usize>)> = Vec::with_capacity(n);
    let mut consumed_bad = false;
    while kept.len() < n {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let mark = arena.len();
        let usable = match walk(head, chain, mem, &mut arena) {
            Ok(c) if c.readable_len == 0 && c.writable_len >= need => Some(c.writable),
            Ok(c) if c.readable_len == 0 && c.writable_len > 0 => None,
            Ok(_) | Err(_) => {
                arena.truncate(mark);
                if kept.is_empty() {
                    // Nothing taken before it: return it empty and go on.
                    log::warn!("receive chain {head} is unusable");
                    stats.drop(Drop::RxBadChain);
                    if let Err(e) = queue.add_used(mem, head, 0) {
                        log::warn!("receive queue {q}: add_used({head}): {e}");
                    }
                    consumed_bad = true;
                    continue;
                }
                queue.go_to_previous_position();
                break;
            }
        };
        match usable {
            Some(range) => kept.push((head, range)),
            None => {
                arena.truncate(mark);
                queue.go_to_previous_position();
                if kept.is_empty() {
                    drop(state);
                    if consumed_bad {
                        notify(rx);
                    }
                    return None;
                }
                break;
            }
        }
    }
    if kept.is_empty() {
        return Some(ReadOutcome {
            delivered: consumed_bad,
            tap_empty: false,
        });
    }
    let mut iovecs = Vec::with_capacity(kept.len() * 2);
    let mut spans = Vec::with_capacity(kept.len());
    for (_, range) in &kept {
        let start = iovecs.len();
        Cursor::new(&arena[range.clone()]).iovecs(need, &mut iovecs);
        spans.push((start, iovecs.len() - start));
    }
    let results = run(t, &iovecs, &spans, false);
    // Frames go into the first chains, in order; a chain whose read found nothing (or a
    // filtered frame) is filled by the next frame, so the unused chains are the last ones
    // taken and can be given back.
    let mut next = 0usize;
    let mut tap_empty = false;
    for (i, &r) in results.iter().enumerate() {
        let Ok(bytes) = usize::try_from(r) else {
            tap_empty |= r == -libc::EAGAIN;
            if r != -libc::EAGAIN {
                log::warn!("TAP read failed: {}", std::io::Error::from_raw_os_error(-r));
            }
            continue;
        };
        let src = &arena[kept[i].1.clone()];
        // The kernel wrote the frame into the chain: log it even if the frame is dropped.
        mark_written(src, bytes);
        if bytes < hdr_len + crate::mac::ETH_HLEN {
            continue;
        }
        let mut dst_mac = [0u8; 6];
        let mut c = Cursor::new(src);
        c.skip(hdr_len);
        c.read(&mut dst_mac);
        if !port.accepts(MacAddr(dst_mac)) {
            stats.drop(Drop::RxFiltered);
            continue;
        }
        if i != next {
            let dst = &arena[kept[next].1.clone()];
            Cursor::new(dst).copy_from_cursor(&mut Cursor::new(src), bytes);
        }
        let slot = &arena[kept[next].1.clone()];
        if hdr_len == HDR_LEN {
            let mut c = Cursor::new(slot);
            c.skip(HDR_LEN - 2);
            c.write(&1u16.to_le_bytes());
        }
        // bytes <= need, which is far below u32::MAX.
        if let Err(e) = queue.add_used(mem, kept[next].0, bytes as u32) {
            log::warn!("receive queue {q}: add_used: {e}");
        }
        stats.rx(bytes - hdr_len);
        next += 1;
    }
    for _ in next..kept.len() {
        queue.go_to_previous_position();
    }
    Some(ReadOutcome {
        delivered: next > 0 || consumed_bad,
        tap_empty,
    })
}

/// Reads up to `n` frames into bounce buffers of `cx.need` bytes, then spreads each over as many
/// receive chains as it needs; frames that find no buffers go to the backlog.
fn bounce_read(t: &mut TapPath, cx: &RxContext<'_>, n: usize) -> ReadOutcome {
    let RxContext {
        rx,
        mem,
        acked,
        need,
        port,
        q,
    } = *cx;
    let stats = port.stats.queue(q);
    let hdr_len = acked.hdr_len();
    let n = n.max(1);
    if t.bounce.len() < n || t.bounce.first().is_some_and(|b| b.len() != need) {
        t.bounce = (0..n).map(|_| vec![0u8; need]).collect();
    }
    let iovecs: Vec<libc::iovec> = t.bounce[..n]
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let spans: Vec<(usize, usize)> = (0..n).map(|i| (i, 1)).collect();
    let results = run(t, &iovecs, &spans, false);
    let mut out = ReadOutcome {
        delivered: false,
        tap_empty: false,
    };
    let mut arena = Vec::new();
    for (i, &r) in results.iter().enumerate() {
        let Ok(bytes) = usize::try_from(r) else {
            out.tap_empty |= r == -libc::EAGAIN;
            continue;
        };
        let buf = &t.bounce[i][..bytes.min(need)];
        let (Ok(hdr), Some(frame)) = (
            NetHdr::parse(&buf[..hdr_len.min(buf.len())]),
            buf.get(hdr_len..),
        ) else {
            continue;
        };
        if !MacAddr::destination(frame).is_some_and(|d| port.accepts(d)) {
            stats.drop(Drop::RxFiltered);
            continue;
        }
        let hdr = NetHdr {
            num_buffers: 0,
            ..hdr
        };
        if !t.backlog.is_empty() {
            backlog_or_drop(&mut t.backlog, hdr, frame, stats);
            continue;
        }
        let mut state = rx.get_mut();
        match deliver_one(
            state.get_queue_mut(),
            mem,
            acked,
            &RxFrame::local(hdr, frame),
            &mut arena,
            stats,
        ) {
            Delivery::Delivered(_) => {
                stats.rx(frame.len());
                out.delivered = true;
            }
            Delivery::TooBig => stats.drop(Drop::RxTooBig),
            Delivery::NoBuffers { .. } => backlog_or_drop(&mut t.backlog, hdr, frame, stats),
        }
    }
    out
}

fn backlog_or_drop(backlog: &mut Backlog, hdr: NetHdr, frame: &[u8], stats: &QueueStats) {
    if !backlog.push(Pending {
        hdr,
        frame: frame.to_vec(),
    }) {
        stats.drop(Drop::RxNoBuffers);
    }
}

/// Writes the checked transmit frames to the TAP, one WRITEV each (our copy of the header, then
/// the frame straight from guest memory), in one batch.
fn tap_write(
    t: &mut TapPath,
    frames: &[TxFrame],
    arena: &[Slice<'_>],
    hdr_len: usize,
    stats: &QueueStats,
) {
    if frames.is_empty() {
        return;
    }
    let hdrs: Vec<[u8; HDR_LEN]> = frames
        .iter()
        .map(|f| {
            NetHdr {
                num_buffers: 0,
                ..f.hdr
            }
            .to_bytes()
        })
        .collect();
    let mut iovecs = Vec::with_capacity(frames.len() * 3);
    let mut spans = Vec::with_capacity(frames.len());
    for (f, h) in frames.iter().zip(&hdrs) {
        let start = iovecs.len();
        iovecs.push(libc::iovec {
            iov_base: h.as_ptr().cast_mut().cast(),
            iov_len: hdr_len,
        });
        let mut c = Cursor::new(&arena[f.slices.clone()]);
        c.skip(hdr_len);
        c.iovecs(f.len, &mut iovecs);
        spans.push((start, iovecs.len() - start));
    }
    let results = run(t, &iovecs, &spans, true);
    for (f, r) in frames.iter().zip(results) {
        if r < 0 {
            log::debug!(
                "TAP write failed: {}",
                std::io::Error::from_raw_os_error(-r)
            );
            stats.drop(Drop::TxTapError);
        } else {
            stats.tx(f.len);
        }
    }
}

/// Runs one READV or WRITEV per span of `iovecs` on the TAP; returns each one's result.
fn run(t: &mut TapPath, iovecs: &[libc::iovec], spans: &[(usize, usize)], write: bool) -> Vec<i32> {
    let fd = t.tap.fd();
    let ops: Vec<Op> = spans
        .iter()
        .map(|&(start, count)| Op {
            write,
            fd,
            iov: iovecs[start..].as_ptr(),
            // At most a chain's descriptors (<= 1024 queue size) plus region splits.
            count: u32::try_from(count).unwrap_or(u32::MAX),
        })
        .collect();
    let mut results = Vec::with_capacity(ops.len());
    // SAFETY: `iovecs` and the buffers they point to (guest memory kept mapped by the caller's
    // memory guard, or our own header and bounce buffers) are borrowed for this whole call, and
    // `Ring::run_batch` returns only after every operation it gave the kernel completed.
    unsafe { t.ring.run_batch(&ops, &mut results) };
    results
}
