//! Putting one frame into a driver's receive queue (virtio 1.2 §5.1.6.3 and §5.1.6.4).
//!
//! With VIRTIO_NET_F_MRG_RXBUF a frame may span several descriptor chains: the device takes
//! chains until their device-writable space holds the header and the frame, writes the header
//! (with `num_buffers` = chains used) at the start of the first, the frame after it, and puts
//! each chain in the used ring with the bytes written into it. Without it a frame must fit one
//! chain. Chains taken but not needed (the frame did not fit after all) are given back by
//! moving the queue's next available index back, so nothing is lost. An unusable chain is
//! returned empty; one found after usable chains were taken ends them (they are returned empty
//! too, since moving the index back would pass over it), so every head taken is in the used
//! ring exactly once and none is skipped.

use std::collections::VecDeque;

use smallvec::SmallVec;
use virtio_queue::{Queue, QueueT};

use crate::deferred::{Copies, Source};
use crate::device::Acked;
use crate::guest::{one_buffer, walk_head, Cursor, GuestRam, Slice};
use crate::hdr::NetHdr;
use crate::stats::{Drop, QueueStats};
use crate::vq::Batch;
use vhost_daemon::view::GuestView;

/// Where the frame's bytes come from.
#[derive(Clone, Debug)]
pub enum Payload<'a, 'm> {
    /// Guest memory (another guest's transmit chain, after its header).
    Guest(Cursor<'a, 'm>),
    /// A local buffer (a backlogged or re-segmented frame, or a TAP bounce buffer).
    Local(&'a [u8]),
}

/// A frame to put into a receive queue.
#[derive(Clone, Debug)]
pub struct RxFrame<'a, 'm> {
    /// Its header (`num_buffers` is set on delivery).
    pub hdr: NetHdr,
    /// Its bytes.
    pub payload: Payload<'a, 'm>,
    /// Bytes of frame in `payload`.
    pub len: usize,
}

impl<'a> RxFrame<'a, 'static> {
    /// A frame held in local memory.
    pub fn local(hdr: NetHdr, bytes: &'a [u8]) -> RxFrame<'a, 'static> {
        RxFrame {
            hdr,
            payload: Payload::Local(bytes),
            len: bytes.len(),
        }
    }
}

/// A frame the switch collected for a receive queue during one transmit batch: borrowed from
/// the sender's chain, or its own bytes (made by the software offloads).
#[derive(Debug)]
pub enum Outgoing<'a, 'm> {
    /// A frame in guest memory.
    Borrowed(RxFrame<'a, 'm>),
    /// A frame of its own, with its header.
    Owned(NetHdr, Vec<u8>),
}

impl<'m> Outgoing<'_, 'm> {
    /// The frame to deliver.
    pub fn frame(&self) -> RxFrame<'_, 'm> {
        match self {
            Outgoing::Borrowed(f) => f.clone(),
            Outgoing::Owned(hdr, bytes) => RxFrame {
                hdr: *hdr,
                payload: Payload::Local(bytes),
                len: bytes.len(),
            },
        }
    }
}

/// What happened to a frame offered to a receive queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written into this many chains.
    Delivered(u16),
    /// Not enough receive buffers now; nothing was consumed. `seen_avail` is the driver's
    /// available index the attempt ran up to (for [`arm_for_more_buffers`]).
    NoBuffers {
        /// The available index seen when the buffers ran out.
        seen_avail: u16,
    },
    /// Can never fit the driver's buffers (one chain too small without MRG_RXBUF).
    TooBig,
}

/// The bytes written into the next buffer, of `capacity` bytes, when `left` bytes remain to be
/// written: buffers are filled in turn. Saturates at `u32::MAX` (a frame is far smaller).
fn fill(capacity: usize, left: &mut usize) -> u32 {
    let n = capacity.min(*left);
    *left -= n;
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// How `total` bytes spread over buffers of `capacities` ([`fill`] in turn): the bytes written
/// per buffer, or `None` when they do not fit.
#[cfg(test)]
fn split_lengths(capacities: &[usize], total: usize) -> Option<Vec<u32>> {
    let mut left = total;
    let out: Vec<u32> = capacities
        .iter()
        .map_while(|&cap| (left > 0).then(|| fill(cap, &mut left)))
        .collect();
    (left == 0).then_some(out)
}

/// Writes `frame.hdr` (its first `acked.hdr_len()` bytes, `num_buffers` set) and the frame
/// into the receive queue through `batch` (the used elements are published when the caller
/// finishes the batch). With `copies`, a frame for a chain of one buffer (the fast path below)
/// is only recorded there, and the caller runs the copies before it finishes the batch. Chains that
/// cannot be used (outside guest memory, broken, device-readable parts, no writable space) are
/// returned to the driver empty and counted as [`Drop::RxBadChain`] in `stats`. `arena` is
/// scratch space, left as it was found. A next chain that is one writable buffer holding the
/// whole frame is taken without the general walk.
#[inline(always)]
pub fn deliver<'m, 'f, 'g: 'f>(
    batch: &mut Batch<'m>,
    mem: &'m GuestRam,
    acked: Acked,
    frame: &RxFrame<'f, 'g>,
    arena: &mut Vec<Slice<'m>>,
    copies: Option<&mut Copies<'m, 'f>>,
    stats: &QueueStats,
) -> Delivery {
    let needed = acked.hdr_len() + frame.len;
    let Some(head) = batch.pop() else {
        return Delivery::NoBuffers {
            seen_avail: batch.next_avail(),
        };
    };
    if let Some(to) = single_buffer(batch, head, needed) {
        write_one(to, acked, frame, copies);
        batch.add_used(head, u32::try_from(needed).unwrap_or(u32::MAX));
        return Delivery::Delivered(1);
    }
    // Any other chain: walked, several of them with VIRTIO_NET_F_MRG_RXBUF, bad ones
    // returned empty.
    batch.give_back(1);
    let base = arena.len();
    // A frame rarely takes more than a few chains: no allocation per frame.
    let mut heads: SmallVec<[(u16, usize); 4]> = SmallVec::new();
    let mut capacity = 0usize;
    while capacity < needed {
        if !acked.mrg_rxbuf() && !heads.is_empty() {
            give_back(batch, heads.len());
            arena.truncate(base);
            return Delivery::TooBig;
        }
        let Some(head) = batch.pop() else {
            let seen_avail = batch.next_avail();
            give_back(batch, heads.len());
            arena.truncate(base);
            return Delivery::NoBuffers { seen_avail };
        };
        match walk_head(batch, head, mem, arena) {
            Ok(c) if c.readable_len == 0 && c.writable_len > 0 => {
                capacity += c.writable_len;
                heads.push((c.head, c.writable_len));
            }
            bad => {
                match bad {
                    Ok(_) => {
                        log::warn!("receive chain {head} has no writable space or readable parts")
                    }
                    Err(e) => log::warn!("receive chain {head}: {e}"),
                }
                stop_at_bad_chain(batch, &mut heads, head, stats);
                capacity = 0;
                arena.truncate(base);
            }
        }
    }
    let num_buffers = u16::try_from(heads.len()).unwrap_or(u16::MAX);
    write_now(&arena[base..], acked, frame, num_buffers);
    // Every head taken holds part of the frame: chains were taken until they held it all.
    let mut left = needed;
    for &(head, capacity) in &heads {
        batch.add_used(head, fill(capacity, &mut left));
    }
    arena.truncate(base);
    Delivery::Delivered(num_buffers)
}

/// The chain at `head` when it is one device-writable buffer, in one memory region, that
/// holds `needed` bytes (the receive buffers Linux and DPDK drivers post): the fast path of
/// [`deliver`], without the general walk. `None` leaves the chain to the general path.
#[inline(always)]
fn single_buffer<'m>(batch: &Batch<'m>, head: u16, needed: usize) -> Option<Slice<'m>> {
    let desc = batch.head_descriptor(head)?;
    let fits = usize::try_from(desc.len()).is_ok_and(|len| len >= needed);
    if !desc.is_write_only() || !fits {
        return None;
    }
    one_buffer(&desc, batch.buffers())
}

/// Writes the header (its first `acked.hdr_len()` bytes, `num_buffers` 1) and the frame into
/// `to`, one buffer that holds both: recorded in `copies` when the frame's source is
/// contiguous, else written at once. `to` comes by value, so an inlined [`Copies::push`] stores
/// it into its record from registers: put on the stack first, it was stored in 8-byte parts and
/// loaded back in 16-byte ones, which the store buffer cannot forward.
#[inline(always)]
fn write_one<'m, 'f, 'g: 'f>(
    to: Slice<'m>,
    acked: Acked,
    frame: &RxFrame<'f, 'g>,
    copies: Option<&mut Copies<'m, 'f>>,
) {
    let RxFrame { hdr, payload, len } = frame;
    let len = *len;
    let h = NetHdr {
        num_buffers: 1,
        ..*hdr
    }
    .to_bytes();
    let source = match payload {
        Payload::Guest(src) => src.contiguous_source(len),
        Payload::Local(bytes) => (*bytes).get(..len).map(Source::local),
    };
    if let (Some(c), Some(from)) = (copies, source) {
        if c.push(to, h, acked.hdr_len(), from) {
            return;
        }
    }
    write_now(&[to], acked, frame, 1);
}

/// Writes the header (its first `acked.hdr_len()` bytes, `num_buffers` set) and the frame
/// into `to`, the writable buffers of the chains taken (together at least that long), at once.
fn write_now(to: &[Slice<'_>], acked: Acked, frame: &RxFrame<'_, '_>, num_buffers: u16) {
    let RxFrame { hdr, payload, len } = frame;
    let len = *len;
    let h = NetHdr {
        num_buffers,
        ..*hdr
    }
    .to_bytes();
    let mut dst = Cursor::new(to);
    dst.write(&h[..acked.hdr_len()]);
    match payload {
        Payload::Guest(src) => dst.copy_from_cursor(&mut src.clone(), len),
        Payload::Local(bytes) => dst.write(&bytes[..len.min(bytes.len())]),
    };
}

/// [`deliver`] of one frame into `queue`, its used elements published at once.
pub fn deliver_one<'m>(
    queue: &mut Queue,
    mem: &'m GuestRam,
    acked: Acked,
    frame: &RxFrame<'_, '_>,
    arena: &mut Vec<Slice<'m>>,
    stats: &QueueStats,
) -> Delivery {
    let mut batch = Batch::new(queue, GuestView::new(mem));
    let d = deliver(&mut batch, mem, acked, frame, arena, None, stats);
    batch.finish(queue);
    d
}

/// Asks the driver to kick the queue when it makes buffers available beyond index
/// `seen_avail` (from [`Delivery::NoBuffers`]; virtio 1.2 §2.7.10), and says whether it already
/// has (then the caller tries again instead of waiting).
///
/// With VIRTIO_RING_F_EVENT_IDX, `avail_event` is set to `seen_avail`, not to the device's next
/// available index: after chains were given back because a frame needed more than were there,
/// the next index lags behind, and arming there would report "more buffers" at once and forever
/// while suppressing the kick the device waits for. A stopped queue has none.
pub fn arm_for_more_buffers(queue: &mut Queue, mem: &GuestRam, seen_avail: u16) -> bool {
    if !queue.ready() {
        // Stopped: no chain can be taken, so there is nothing to try again for.
        return false;
    }
    let next = queue.next_avail();
    queue.set_next_avail(seen_avail);
    let more = queue.enable_notification(mem);
    queue.set_next_avail(next);
    more.unwrap_or(false)
}

/// Moves the next available index back over `n` chains taken and not used.
fn give_back(batch: &mut Batch<'_>, n: usize) {
    // At most a queue size (<= 1024) of chains is taken for one frame.
    batch.give_back(u16::try_from(n).unwrap_or(u16::MAX));
}

/// Ends the chains taken so far at an unusable chain `bad`: it is completed as an error
/// (returned with nothing written, counted as [`Drop::RxBadChain`]), and so are the usable chains
/// `taken` before it, returned empty. They cannot be given back by moving the available index
/// back, which would hand `bad` out a second time and leave the first taken head unused; so each
/// head taken so far is in the used ring exactly once, and the frame goes on with the next
/// chains.
fn stop_at_bad_chain(
    batch: &mut Batch<'_>,
    taken: &mut SmallVec<[(u16, usize); 4]>,
    bad: u16,
    stats: &QueueStats,
) {
    stats.drop(Drop::RxBadChain);
    for head in taken.drain(..).map(|(head, _)| head).chain([bad]) {
        batch.add_used(head, 0);
    }
}

/// A frame waiting for receive buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its header.
    pub hdr: NetHdr,
    /// The frame without header.
    pub frame: Vec<u8>,
}

/// Frames waiting for receive buffers, at most `capacity` of them.
#[derive(Debug)]
pub struct Backlog {
    frames: VecDeque<Pending>,
    capacity: usize,
}

impl Backlog {
    /// An empty backlog holding up to `capacity` frames.
    pub fn new(capacity: usize) -> Backlog {
        Backlog {
            frames: VecDeque::new(),
            capacity,
        }
    }

    /// Queues a frame; false (frame dropped) when full.
    pub fn push(&mut self, p: Pending) -> bool {
        if self.frames.len() >= self.capacity {
            return false;
        }
        self.frames.push_back(p);
        true
    }

    /// The oldest frame.
    pub fn front(&self) -> Option<&Pending> {
        self.frames.front()
    }

    /// The frames, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.frames.iter()
    }

    /// Removes the oldest frame.
    pub fn pop(&mut self) -> Option<Pending> {
        self.frames.pop_front()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::hdr::HDR_LEN;

    const MRG: Acked = Acked(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF);
    const PLAIN: Acked = Acked(1 << VIRTIO_F_VERSION_1);

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap()
    }

    fn writable(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(
            addr,
            len,
            VRING_DESC_F_WRITE as u16,
            0,
        ))
    }

    /// A queue of size 16 offering one single-buffer chain per entry of `bufs` (addr, len).
    fn queue_with<'a>(
        mem: &'a GuestRam,
        bufs: &[(u64, u32)],
    ) -> (MockSplitQueue<'a, GuestRam>, Queue) {
        let vq = MockSplitQueue::new(mem, 16);
        let descs: Vec<RawDescriptor> = bufs.iter().map(|&(a, l)| writable(a, l)).collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        let q = vq.create_queue().unwrap();
        (vq, q)
    }

    fn used(mem: &GuestRam, vq: &MockSplitQueue<'_, GuestRam>, i: u64) -> (u32, u32) {
        let at = vq.used_addr().checked_add(4 + 8 * i).unwrap();
        (
            mem.read_obj(at).unwrap(),
            mem.read_obj(at.checked_add(4).unwrap()).unwrap(),
        )
    }

    #[test]
    fn merges_a_frame_over_three_buffers() {
        let mem = ram();
        let (vq, mut q) = queue_with(
            &mem,
            &[
                (0x10000, 100),
                (0x20000, 100),
                (0x30000, 100),
                (0x40000, 100),
            ],
        );
        let frame: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let stats = QueueStats::default();
        let mut arena = Vec::new();
        let hdr = NetHdr {
            flags: 2,
            ..Default::default()
        };
        let d = deliver_one(
            &mut q,
            &mem,
            MRG,
            &RxFrame {
                hdr,
                payload: Payload::Local(&frame),
                len: frame.len(),
            },
            &mut arena,
            &stats,
        );
        assert_eq!(d, Delivery::Delivered(3));
        assert!(arena.is_empty());
        let mut h = [0u8; HDR_LEN];
        mem.read_slice(&mut h, GuestAddress(0x10000)).unwrap();
        assert_eq!(
            NetHdr::parse(&h).unwrap(),
            NetHdr {
                flags: 2,
                num_buffers: 3,
                ..Default::default()
            }
        );
        let mut got = vec![0u8; 250];
        mem.read_slice(&mut got[..88], GuestAddress(0x10000 + 12))
            .unwrap();
        mem.read_slice(&mut got[88..188], GuestAddress(0x20000))
            .unwrap();
        mem.read_slice(&mut got[188..], GuestAddress(0x30000))
            .unwrap();
        assert_eq!(got, frame);
        assert_eq!(used(&mem, &vq, 0), (0, 100));
        assert_eq!(used(&mem, &vq, 1), (1, 100));
        assert_eq!(used(&mem, &vq, 2), (2, 62));
        assert_eq!(q.next_used(), 3);
        assert_eq!(q.next_avail(), 3, "the fourth chain stays available");
    }

    #[test]
    fn gives_chains_back_when_short_of_buffers() {
        let mem = ram();
        let (_vq, mut q) = queue_with(&mem, &[(0x10000, 100), (0x20000, 100)]);
        let stats = QueueStats::default();
        let mut arena = Vec::new();
        let d = deliver_one(
            &mut q,
            &mem,
            MRG,
            &RxFrame {
                hdr: NetHdr::default(),
                payload: Payload::Local(&[0; 300]),
                len: 300,
            },
            &mut arena,
            &stats,
        );
        assert!(matches!(d, Delivery::NoBuffers { .. }));
        assert_eq!((q.next_avail(), q.next_used()), (0, 0));
        let d = deliver_one(
            &mut q,
            &mem,
            PLAIN,
            &RxFrame {
                hdr: NetHdr::default(),
                payload: Payload::Local(&[0; 150]),
                len: 150,
            },
            &mut arena,
            &stats,
        );
        assert_eq!(
            d,
            Delivery::TooBig,
            "without MRG_RXBUF one chain must hold it"
        );
        assert_eq!(q.next_avail(), 0);
        let d = deliver_one(
            &mut q,
            &mem,
            PLAIN,
            &RxFrame {
                hdr: NetHdr::default(),
                payload: Payload::Local(&[0; 60]),
                len: 60,
            },
            &mut arena,
            &stats,
        );
        assert_eq!(d, Delivery::Delivered(1));
    }

    #[test]
    fn arming_after_a_short_attempt_waits_for_new_buffers() {
        let mem = ram();
        let (vq, mut q) = queue_with(&mem, &[(0x10000, 100), (0x20000, 100)]);
        q.set_event_idx(true);
        let stats = QueueStats::default();
        let mut arena = Vec::new();
        let frame = RxFrame::local(NetHdr::default(), &[0; 300]);
        let d = deliver_one(&mut q, &mem, MRG, &frame, &mut arena, &stats);
        assert_eq!(d, Delivery::NoBuffers { seen_avail: 2 });
        assert!(
            !arm_for_more_buffers(&mut q, &mem, 2),
            "no buffers beyond the two seen"
        );
        assert_eq!(q.next_avail(), 0, "the two chains stay available");
        let avail_event = vq.used_addr().checked_add(4 + 8 * 16).unwrap();
        assert_eq!(
            mem.read_obj::<u16>(avail_event).unwrap(),
            2,
            "kick wanted past index 2"
        );
        vq.add_desc_chains(&[writable(0x30000, 200)], 2).unwrap();
        assert!(
            arm_for_more_buffers(&mut q, &mem, 2),
            "a new buffer arrived"
        );
        assert_eq!(
            deliver_one(&mut q, &mem, MRG, &frame, &mut arena, &stats),
            Delivery::Delivered(3)
        );
    }

    #[test]
    fn bad_receive_chains_are_returned_empty() {
        let mem = ram();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x10000, 10, 0, 0)),
            writable(0x7fff_0000, 100),
            writable(0x20000, 1000),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let stats = QueueStats::default();
        let mut arena = Vec::new();
        let d = deliver_one(
            &mut q,
            &mem,
            MRG,
            &RxFrame {
                hdr: NetHdr::default(),
                payload: Payload::Local(&[1; 60]),
                len: 60,
            },
            &mut arena,
            &stats,
        );
        assert_eq!(d, Delivery::Delivered(1));
        assert_eq!(stats.drops(Drop::RxBadChain), 2);
        assert_eq!(used(&mem, &vq, 0), (0, 0));
        assert_eq!(used(&mem, &vq, 1), (1, 0));
        assert_eq!(used(&mem, &vq, 2), (2, 72));
    }

    /// The heads in the used ring so far.
    fn used_heads(mem: &GuestRam, vq: &MockSplitQueue<'_, GuestRam>, q: &Queue) -> Vec<u32> {
        (0..u64::from(q.next_used()))
            .map(|i| used(mem, vq, i).0)
            .collect()
    }

    #[test]
    fn a_bad_chain_after_a_taken_one_is_never_used_twice() {
        let mem = ram();
        let vq = MockSplitQueue::new(&mem, 16);
        // A usable chain, then one outside guest memory, then nothing: the frame needs more.
        vq.add_desc_chains(&[writable(0x10000, 100), writable(0x7fff_0000, 100)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let stats = QueueStats::default();
        let mut arena = Vec::new();
        let frame = RxFrame::local(NetHdr::default(), &[7; 300]);
        let d = deliver_one(&mut q, &mem, MRG, &frame, &mut arena, &stats);
        assert!(matches!(d, Delivery::NoBuffers { .. }), "{d:?}");
        assert_eq!(stats.drops(Drop::RxBadChain), 1);
        // Both heads are used once, none is offered again.
        assert_eq!(used_heads(&mem, &vq, &q), vec![0, 1]);
        assert_eq!(q.next_avail(), 2);
        // Buffers arrive: the frame goes into them, and no head appears twice.
        vq.add_desc_chains(&[writable(0x20000, 200), writable(0x30000, 200)], 2)
            .unwrap();
        let d = deliver_one(&mut q, &mem, MRG, &frame, &mut arena, &stats);
        assert_eq!(d, Delivery::Delivered(2));
        assert_eq!(used_heads(&mem, &vq, &q), vec![0, 1, 2, 3]);
        assert_eq!(used(&mem, &vq, 3), (3, 112));
        assert_eq!(stats.drops(Drop::RxBadChain), 1);
    }

    #[test]
    fn copies_from_another_guests_chain() {
        let mem = ram();
        mem.write_slice(&[9u8; 500], GuestAddress(0x50000)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                0x10000,
                40,
                (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                1,
            )),
            writable(0x11000, 2000),
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut src_arena = Vec::new();
        crate::guest::tests::map_for_test(&mem, 0x50000, 500, &mut src_arena);
        let stats = QueueStats::default();
        let mut arena = Vec::new();
        let src = Cursor::new(&src_arena);
        let d = deliver_one(
            &mut q,
            &mem,
            PLAIN,
            &RxFrame {
                hdr: NetHdr::default(),
                payload: Payload::Guest(src),
                len: 500,
            },
            &mut arena,
            &stats,
        );
        assert_eq!(d, Delivery::Delivered(1));
        let mut got = [0u8; 500];
        mem.read_slice(&mut got[..28], GuestAddress(0x10000 + 12))
            .unwrap();
        mem.read_slice(&mut got[28..], GuestAddress(0x11000))
            .unwrap();
        assert!(got.iter().all(|&b| b == 9));
        assert_eq!(used(&mem, &vq, 0), (0, 512));
    }

    #[test]
    fn backlog_is_bounded() {
        let mut b = Backlog::new(2);
        let p = Pending {
            hdr: NetHdr::default(),
            frame: vec![1],
        };
        assert!(b.push(p.clone()) && b.push(p.clone()));
        assert!(!b.push(p.clone()));
        assert_eq!(b.len(), 2);
        assert_eq!(b.pop(), Some(p));
        b.clear();
        assert!(b.is_empty());
    }

    /// A receive chain a hostile driver may post: usable (writable, this many bytes), outside
    /// guest memory, or device-readable.
    #[derive(Clone, Copy, Debug)]
    enum Posted {
        Usable(u32),
        Outside,
        Readable,
    }

    fn posted() -> impl Strategy<Value = Posted> {
        prop_oneof![
            3 => (1u32..3000).prop_map(Posted::Usable),
            1 => Just(Posted::Outside),
            1 => Just(Posted::Readable),
        ]
    }

    proptest! {
        /// Hostile receive queues: any mix of usable and unusable chains, frames of any size,
        /// with or without MRG_RXBUF. After every delivery each chain the device took is in the
        /// used ring exactly once (none twice, none leaked: the used heads are exactly the
        /// first `next_avail` ones), chains not taken stay available, and the bad-chain counter
        /// matches the unusable chains taken.
        #[test]
        fn hostile_receive_chains_are_each_used_once(
            chains in proptest::collection::vec(posted(), 1..16),
            frames in proptest::collection::vec(14usize..5000, 1..10),
            mrg in any::<bool>(),
        ) {
            let mem = ram();
            // The mock lays its used ring over the second half of the available ring (a mock
            // artifact): a queue of 64 keeps the 16 entries used here clear of it.
            let vq = MockSplitQueue::new(&mem, 64);
            prop_assert!(vq.used_addr().0 >= vq.avail_addr().0 + 4 + 2 * 16);
            let descs: Vec<RawDescriptor> = chains
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let addr = 0x10000 * (i as u64 + 1);
                    match *c {
                        Posted::Usable(len) => writable(addr, len),
                        Posted::Outside => writable(0x7fff_0000, 100),
                        Posted::Readable => {
                            RawDescriptor::from(SplitDescriptor::new(addr, 100, 0, 0))
                        }
                    }
                })
                .collect();
            vq.add_desc_chains(&descs, 0).unwrap();
            let mut q: Queue = vq.create_queue().unwrap();
            let acked = if mrg { MRG } else { PLAIN };
            let stats = QueueStats::default();
            let mut arena = Vec::new();
            for len in frames {
                let frame = vec![0x5a; len];
                deliver_one(&mut q, &mem, acked, &RxFrame::local(NetHdr::default(), &frame), &mut arena, &stats);
                prop_assert!(arena.is_empty());
                let taken = usize::from(q.next_avail());
                let mut heads = used_heads(&mem, &vq, &q);
                heads.sort_unstable();
                prop_assert_eq!(heads, (0..taken as u32).collect::<Vec<_>>());
                let bad = chains[..taken]
                    .iter()
                    .filter(|c| !matches!(c, Posted::Usable(_)))
                    .count();
                prop_assert_eq!(stats.drops(Drop::RxBadChain), bad as u64);
            }
        }

        /// The lengths cover the total exactly, each within its buffer, all but the last full.
        #[test]
        fn split_lengths_fill_in_order(caps in proptest::collection::vec(1usize..5000, 1..40), total in 0usize..70_000) {
            match split_lengths(&caps, total) {
                Some(lens) => {
                    prop_assert_eq!(lens.iter().map(|&l| l as usize).sum::<usize>(), total);
                    for (i, &l) in lens.iter().enumerate() {
                        prop_assert!(l as usize <= caps[i]);
                        if i + 1 < lens.len() {
                            prop_assert_eq!(l as usize, caps[i]);
                        }
                        prop_assert!(l > 0);
                    }
                }
                None => prop_assert!(caps.iter().sum::<usize>() < total),
            }
        }

        /// Frames of any size into buffers of any sizes: delivered iff they fit, and then the
        /// bytes read back in order.
        #[test]
        fn deliver_round_trips(sizes in proptest::collection::vec(16u32..3000, 1..10), len in 14usize..8000) {
            let mem = ram();
            let bufs: Vec<(u64, u32)> = sizes.iter().enumerate().map(|(i, &s)| (0x10000 * (i as u64 + 1), s)).collect();
            let (_vq, mut q) = queue_with(&mem, &bufs);
            let frame: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let stats = QueueStats::default();
            let mut arena = Vec::new();
            let d = deliver_one(&mut q, &mem, MRG, &RxFrame::local(NetHdr::default(), &frame), &mut arena, &stats);
            let total: usize = sizes.iter().map(|&s| s as usize).sum();
            if total >= len + HDR_LEN {
                let lens = split_lengths(&sizes.iter().map(|&s| s as usize).collect::<Vec<_>>(), len + HDR_LEN).unwrap();
                prop_assert_eq!(d, Delivery::Delivered(lens.len() as u16));
                let mut got = Vec::new();
                for (i, &l) in lens.iter().enumerate() {
                    let mut b = vec![0u8; l as usize];
                    mem.read_slice(&mut b, GuestAddress(bufs[i].0)).unwrap();
                    got.extend(b);
                }
                prop_assert_eq!(&got[HDR_LEN..], &frame[..]);
            } else {
                prop_assert!(matches!(d, Delivery::NoBuffers { .. }), "{:?}", d);
                prop_assert_eq!(q.next_avail(), 0);
            }
        }
    }
}
