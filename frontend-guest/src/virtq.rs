//! Split virtqueue driver (virtio 1.2 §2.7).
//!
//! A [`SplitQueue`] owns the driver's side of one virtqueue whose three areas (descriptor table,
//! available ring, used ring) live in guest memory at addresses the caller chooses
//! ([`QueueLayout`]). All driver bookkeeping (descriptor free list, chains in flight) sits in
//! fixed-size arrays sized by the const generic `N`, the largest queue size the instance
//! supports, so the driver needs no allocator. The device's writes to guest memory are never
//! trusted for bookkeeping: freed chains are found from the driver's own records, and ids the
//! device puts in the used ring are checked.
//!
//! Life of a request: [`SplitQueue::add`] (or [`SplitQueue::add_indirect`],
//! [`SplitQueue::add_raw`]) writes a descriptor chain and its available ring entry;
//! [`SplitQueue::publish`] makes the entries visible by storing the available index and says
//! whether the device wants a notification; [`SplitQueue::pop_used`] returns each completion
//! (head index, bytes written by the device) and recycles its descriptors;
//! [`SplitQueue::enable_interrupts`] arms the used buffer notification before the driver sleeps.

use core::num::Wrapping;
use core::sync::atomic::{fence, Ordering};

use crate::mem::{self, GuestRam, MemError};

/// Descriptor flag: the chain continues in `next` (virtio 1.2 §2.7.5).
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table (virtio 1.2 §2.7.5.3).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks for no used buffer notifications (virtio 1.2 §2.7.6).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks for no available buffer notifications (virtio 1.2 §2.7.8).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Feature bit: the driver may use indirect descriptor tables (virtio 1.2 §6).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: notifications are suppressed with `used_event` / `avail_event` (virtio 1.2 §6).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Feature bit: the device complies with virtio 1.0 or later (virtio 1.2 §6).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the device uses chains in the order they were made available (virtio 1.2
/// §2.7.9, §6).
pub const VIRTIO_F_IN_ORDER: u32 = 35;
/// Size of one descriptor in bytes (`struct virtq_desc`).
pub const DESC_SIZE: u64 = 16;
/// The largest split queue size (virtio 1.2 §2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Alignment in bytes of the descriptor table, available ring and used ring (virtio 1.2 §2.7).
const DESC_TABLE_ALIGN: u64 = 16;
const AVAIL_RING_ALIGN: u64 = 2;
const USED_RING_ALIGN: u64 = 4;
/// Size of one used ring element (`struct virtq_used_elem { le32 id; le32 len; }`).
const USED_ELEM_SIZE: u64 = 8;

/// A virtqueue operation that could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VirtqError {
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Mem(#[from] MemError),
    /// The queue size is zero, not a power of two, above 32768 or above the driver's capacity.
    #[error("queue size {size} is invalid (power of two, at most {max})")]
    InvalidSize {
        /// Requested queue size in descriptors.
        size: u16,
        /// Largest size this driver instance supports.
        max: u16,
    },
    /// A ring area is misaligned or wraps around the address space.
    #[error("{area} at {gpa:#x} is misaligned (needs {align}) or wraps the address space")]
    BadArea {
        /// Which area: "descriptor table", "available ring" or "used ring".
        area: &'static str,
        /// Its guest-physical address.
        gpa: u64,
        /// Required alignment in bytes.
        align: u64,
    },
    /// A chain with no buffers was given.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// A device-readable buffer follows a device-writable one (virtio 1.2 §2.7.4.2 forbids it).
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
    /// The chain has more descriptors than the queue size (virtio 1.2 §2.7.4.2).
    #[error("chain of {len} descriptors exceeds queue size {size}")]
    ChainTooLong {
        /// Descriptors in the chain.
        len: usize,
        /// Queue size.
        size: u16,
    },
    /// Not enough free descriptors; complete some requests first.
    #[error("{needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: u16,
    },
    /// A raw descriptor's [`RawNext::Chain`] names an index outside the raw chain.
    #[error("raw descriptor {index} links to chain index {next}, chain has {len}")]
    BadRawNext {
        /// Index of the raw descriptor.
        index: usize,
        /// The out-of-range chain index.
        next: usize,
        /// Length of the raw chain.
        len: usize,
    },
    /// The device moved the used index further than the chains in flight allow.
    #[error("device used index {used_idx} is {ahead} entries ahead, only {in_flight} in flight")]
    UsedIndexTooFar {
        /// The used index the device published.
        used_idx: u16,
        /// How many entries it claims are new.
        ahead: u16,
        /// Chains the driver has in flight.
        in_flight: u16,
    },
    /// The device returned a used element whose id is not the head of a chain in flight.
    #[error("device returned used id {id} (len {len}) that is not a chain in flight")]
    BadUsedId {
        /// The id from the used element.
        id: u32,
        /// The len from the used element.
        len: u32,
    },
    /// With VIRTIO_F_IN_ORDER negotiated, the device used a chain before one made available
    /// earlier (virtio 1.2 §2.7.9).
    #[error("device used chain {head} out of order: chain {expected} was made available first")]
    OutOfOrder {
        /// The head the used element names.
        head: u16,
        /// The head of the oldest chain in flight, which had to come first.
        expected: u16,
    },
}

/// Where the three areas of one split virtqueue live in guest memory (virtio 1.2 §2.7).
///
/// Sizes: descriptor table `16 * size` bytes (16-aligned), available ring `6 + 2 * size` bytes
/// (2-aligned, `flags`, `idx`, `ring[size]`, `used_event`), used ring `6 + 8 * size` bytes
/// (4-aligned, `flags`, `idx`, `ring[size]`, `avail_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue size in descriptors (power of two, 1..=32768).
    pub size: u16,
    /// Guest-physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest-physical address of the available ring.
    pub avail_ring: u64,
    /// Guest-physical address of the used ring.
    pub used_ring: u64,
}

impl QueueLayout {
    /// Bytes of a descriptor table for `size` descriptors.
    pub const fn desc_table_bytes(size: u16) -> u64 {
        DESC_SIZE * size as u64
    }

    /// Bytes of an available ring for `size` descriptors, `used_event` included.
    pub const fn avail_ring_bytes(size: u16) -> u64 {
        6 + 2 * size as u64
    }

    /// Bytes of a used ring for `size` descriptors, `avail_event` included.
    pub const fn used_ring_bytes(size: u16) -> u64 {
        6 + USED_ELEM_SIZE * size as u64
    }

    /// Bytes that [`QueueLayout::contiguous`] occupies from its (16-aligned) base.
    pub const fn contiguous_bytes(size: u16) -> u64 {
        let used = (Self::desc_table_bytes(size) + Self::avail_ring_bytes(size))
            .next_multiple_of(USED_RING_ALIGN);
        used + Self::used_ring_bytes(size)
    }

    /// Lays the three areas out back to back from `base`: descriptor table, available ring,
    /// then the used ring at the next 4-byte boundary.
    ///
    /// # Errors
    /// [`VirtqError::InvalidSize`] or [`VirtqError::BadArea`] (`base` not 16-aligned, or the
    /// areas wrap the address space).
    pub fn contiguous(base: u64, size: u16) -> Result<Self, VirtqError> {
        let avail = base.checked_add(Self::desc_table_bytes(size));
        let used = avail
            .and_then(|a| a.checked_add(Self::avail_ring_bytes(size)))
            .and_then(|u| u.checked_next_multiple_of(USED_RING_ALIGN));
        let bad = VirtqError::BadArea {
            area: "used ring",
            gpa: base,
            align: USED_RING_ALIGN,
        };
        let layout = QueueLayout {
            size,
            desc_table: base,
            avail_ring: avail.ok_or(bad)?,
            used_ring: used.ok_or(bad)?,
        };
        layout.validate(MAX_QUEUE_SIZE)?;
        Ok(layout)
    }

    /// Checks the size (power of two, at most `max`) and each area's alignment, and that no
    /// area wraps the address space, so address arithmetic on a valid layout cannot overflow.
    ///
    /// # Errors
    /// [`VirtqError::InvalidSize`] or [`VirtqError::BadArea`].
    pub fn validate(&self, max: u16) -> Result<(), VirtqError> {
        let max = max.min(MAX_QUEUE_SIZE);
        if !self.size.is_power_of_two() || self.size > max {
            return Err(VirtqError::InvalidSize {
                size: self.size,
                max,
            });
        }
        let areas = [
            (
                "descriptor table",
                self.desc_table,
                DESC_TABLE_ALIGN,
                Self::desc_table_bytes(self.size),
            ),
            (
                "available ring",
                self.avail_ring,
                AVAIL_RING_ALIGN,
                Self::avail_ring_bytes(self.size),
            ),
            (
                "used ring",
                self.used_ring,
                USED_RING_ALIGN,
                Self::used_ring_bytes(self.size),
            ),
        ];
        for (area, gpa, align, bytes) in areas {
            if gpa % align != 0 || gpa.checked_add(bytes).is_none() {
                return Err(VirtqError::BadArea { area, gpa, align });
            }
        }
        Ok(())
    }

    fn desc_addr(&self, slot: u16) -> u64 {
        self.desc_table + DESC_SIZE * u64::from(slot)
    }

    fn avail_idx_addr(&self) -> u64 {
        self.avail_ring + 2
    }

    fn avail_entry_addr(&self, slot: u16) -> u64 {
        self.avail_ring + 4 + 2 * u64::from(slot)
    }

    fn used_event_addr(&self) -> u64 {
        self.avail_entry_addr(self.size)
    }

    fn used_idx_addr(&self) -> u64 {
        self.used_ring + 2
    }

    fn used_elem_addr(&self, slot: u16) -> u64 {
        self.used_ring + 4 + USED_ELEM_SIZE * u64::from(slot)
    }

    fn avail_event_addr(&self) -> u64 {
        self.used_elem_addr(self.size)
    }
}

/// One descriptor as stored in a descriptor table (`struct virtq_desc`, virtio 1.2 §2.7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor when `flags` has [`VIRTQ_DESC_F_NEXT`].
    pub next: u16,
}

impl Descriptor {
    /// The 16-byte little-endian wire form.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// Parses the 16-byte little-endian wire form.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = *b;
        Descriptor {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }
}

/// A buffer of a well-formed chain: guest-physical address, length in bytes, direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// True if the device writes it ([`VIRTQ_DESC_F_WRITE`]).
    pub writable: bool,
}

impl Buffer {
    /// A device-readable buffer.
    pub const fn readable(addr: u64, len: u32) -> Self {
        Buffer {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub const fn writable(addr: u64, len: u32) -> Self {
        Buffer {
            addr,
            len,
            writable: true,
        }
    }
}

/// Where a raw descriptor's `next` field points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawNext {
    /// The descriptor at this index of the same raw chain (any index: loops are allowed).
    Chain(usize),
    /// This exact descriptor table index, written as is (may be out of range).
    Slot(u16),
}

/// A descriptor of a deliberately arbitrary chain ([`SplitQueue::add_raw`]): address, length and
/// flags are written exactly as given, so tests can build malformed chains (loops, missing
/// `NEXT`, wrong directions, bad indirect tables, addresses outside guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Guest-physical address (any value).
    pub addr: u64,
    /// Length in bytes (any value).
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags, written verbatim (`NEXT` is not added).
    pub flags: u16,
    /// The `next` field.
    pub next: RawNext,
}

/// A completion taken from the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the completed chain, as returned by `add*`.
    pub head: u16,
    /// Bytes the device wrote into the chain's device-writable buffers (used element `len`).
    pub len: u32,
}

/// Descriptors of one chain in flight: they form a run of the free list from the head to `tail`.
#[derive(Debug, Clone, Copy)]
struct ChainSlots {
    tail: u16,
    count: u16,
}

/// The driver side of one split virtqueue of up to `N` descriptors (virtio 1.2 §2.7).
#[derive(Debug)]
pub struct SplitQueue<const N: usize> {
    layout: QueueLayout,
    event_idx: bool,
    /// Free list links by descriptor index (the driver's own copy, never read back from guest
    /// memory); a chain in flight keeps its descriptors linked here from head to tail.
    free_next: [u16; N],
    free_head: u16,
    num_free: u16,
    chains: [Option<ChainSlots>; N],
    chains_in_flight: u16,
    /// VIRTIO_F_IN_ORDER was negotiated ([`SplitQueue::set_in_order`]).
    in_order: bool,
    /// The driver's copy of the available ring's entries, by slot.
    avail_heads: [u16; N],
    /// Next available index to fill (the driver's shadow of `avail.idx`).
    next_avail: Wrapping<u16>,
    /// Last available index stored to guest memory.
    published_avail: Wrapping<u16>,
    /// Next used ring entry to consume.
    last_used: Wrapping<u16>,
}

impl<const N: usize> SplitQueue<N> {
    /// Sets up an empty queue at `layout`: zeroes the three areas and builds the free list.
    /// `event_idx` says whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    ///
    /// # Errors
    /// [`VirtqError::InvalidSize`] if `layout.size` exceeds `N`; [`VirtqError::BadArea`];
    /// [`VirtqError::Mem`] if the areas are outside guest memory.
    pub fn new(
        mem: &impl GuestRam,
        layout: QueueLayout,
        event_idx: bool,
    ) -> Result<Self, VirtqError> {
        layout.validate(u16::try_from(N).unwrap_or(MAX_QUEUE_SIZE))?;
        let size = layout.size;
        mem::zero(mem, layout.desc_table, QueueLayout::desc_table_bytes(size))?;
        mem::zero(mem, layout.avail_ring, QueueLayout::avail_ring_bytes(size))?;
        mem::zero(mem, layout.used_ring, QueueLayout::used_ring_bytes(size))?;
        let mut free_next = [0u16; N];
        for (i, next) in free_next.iter_mut().enumerate().take(usize::from(size)) {
            // i < size <= 32768, so i + 1 fits in u16.
            *next = (i + 1) as u16;
        }
        Ok(SplitQueue {
            layout,
            event_idx,
            free_next,
            free_head: 0,
            num_free: size,
            chains: [None; N],
            chains_in_flight: 0,
            in_order: false,
            avail_heads: [0; N],
            next_avail: Wrapping(0),
            published_avail: Wrapping(0),
            last_used: Wrapping(0),
        })
    }

    /// VIRTIO_F_IN_ORDER was negotiated: [`SplitQueue::pop_used`] then checks that the device
    /// uses the chains in the order they were made available, one used element each (virtio
    /// 1.2 §2.7.9; this driver does not take the batched form, one element for several chains).
    pub fn set_in_order(&mut self, in_order: bool) {
        self.in_order = in_order;
    }

    /// The ring layout.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// Queue size in descriptors.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// The used index as the device last published it (`used.idx`).
    ///
    /// # Errors
    /// [`VirtqError::Mem`].
    pub fn device_used_idx(&self, mem: &impl GuestRam) -> Result<u16, VirtqError> {
        Ok(mem.load_u16(self.layout.used_idx_addr(), Ordering::Acquire)?)
    }

    /// Chains added and not yet returned by [`SplitQueue::pop_used`].
    pub fn chains_in_flight(&self) -> u16 {
        self.chains_in_flight
    }

    /// Adds a well-formed chain: the buffers of `segs`, in order, linked with
    /// [`VIRTQ_DESC_F_NEXT`], and its available ring entry (not yet visible to the device: see
    /// [`SplitQueue::publish`]). Returns the head descriptor index, which the matching
    /// [`Used::head`] carries back.
    ///
    /// # Errors
    /// [`VirtqError::EmptyChain`], [`VirtqError::ReadableAfterWritable`],
    /// [`VirtqError::ChainTooLong`], [`VirtqError::QueueFull`], [`VirtqError::Mem`]. Nothing is
    /// added on error.
    pub fn add(&mut self, mem: &impl GuestRam, segs: &[&[Buffer]]) -> Result<u16, VirtqError> {
        let count = self.check_chain(segs)?;
        self.check_free(count)?;
        let mut slot = self.free_head;
        for (i, buf) in segs.iter().flat_map(|s| s.iter()).enumerate() {
            let next = (i + 1 < count).then(|| self.free_next[usize::from(slot)]);
            mem.write(self.layout.desc_addr(slot), &linked(buf, next).to_bytes())?;
            slot = next.unwrap_or(0);
        }
        self.commit(mem, count)
    }

    /// Adds a chain as one descriptor with [`VIRTQ_DESC_F_INDIRECT`] pointing to an indirect
    /// table written at `table` (`16 * n` bytes for `n` buffers; virtio 1.2 §2.7.5.3). The
    /// caller owns the table memory until the chain is used. Requires
    /// `VIRTIO_RING_F_INDIRECT_DESC`. Returns the head descriptor index.
    ///
    /// # Errors
    /// As [`SplitQueue::add`]; the table may hold at most the queue size of buffers.
    pub fn add_indirect(
        &mut self,
        mem: &impl GuestRam,
        table: u64,
        segs: &[&[Buffer]],
    ) -> Result<u16, VirtqError> {
        let count = self.check_chain(segs)?;
        self.check_free(1)?;
        for (i, buf) in segs.iter().flat_map(|s| s.iter()).enumerate() {
            // i + 1 <= count <= queue size <= 32768.
            let next = (i + 1 < count).then_some((i + 1) as u16);
            write_table_entry(mem, table, i, &linked(buf, next))?;
        }
        let head = Descriptor {
            addr: table,
            // count <= 32768, so 16 * count fits in u32.
            len: (count as u32) * DESC_SIZE as u32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        };
        mem.write(self.layout.desc_addr(self.free_head), &head.to_bytes())?;
        self.commit(mem, 1)
    }

    /// Adds `descs` exactly as given (flags verbatim, [`RawNext`] resolved to the descriptor
    /// indices the chain occupies) and makes `descs[0]` the head in the available ring. Meant
    /// for tests of a device's handling of malformed chains. All descriptors are recycled when
    /// the head comes back in the used ring. Returns the head descriptor index.
    ///
    /// # Errors
    /// [`VirtqError::EmptyChain`], [`VirtqError::QueueFull`], [`VirtqError::BadRawNext`],
    /// [`VirtqError::Mem`]. Nothing is added on error.
    pub fn add_raw(
        &mut self,
        mem: &impl GuestRam,
        descs: &[RawDescriptor],
    ) -> Result<u16, VirtqError> {
        if descs.is_empty() {
            return Err(VirtqError::EmptyChain);
        }
        self.check_free(descs.len())?;
        let mut slot = self.free_head;
        for (index, raw) in descs.iter().enumerate() {
            let next = match raw.next {
                RawNext::Slot(n) => n,
                RawNext::Chain(next) if next < descs.len() => self.nth_free(next),
                RawNext::Chain(next) => {
                    return Err(VirtqError::BadRawNext {
                        index,
                        next,
                        len: descs.len(),
                    })
                }
            };
            let desc = Descriptor {
                addr: raw.addr,
                len: raw.len,
                flags: raw.flags,
                next,
            };
            mem.write(self.layout.desc_addr(slot), &desc.to_bytes())?;
            slot = self.free_next[usize::from(slot)];
        }
        self.commit(mem, descs.len())
    }

    /// Makes every chain added since the last call visible to the device by storing the
    /// available index, then says whether the device asked to be notified (virtio 1.2 §2.7.10:
    /// `avail_event` with `VIRTIO_RING_F_EVENT_IDX`, else [`VIRTQ_USED_F_NO_NOTIFY`]).
    ///
    /// # Errors
    /// [`VirtqError::Mem`].
    pub fn publish(&mut self, mem: &impl GuestRam) -> Result<bool, VirtqError> {
        let old = self.published_avail;
        let new = self.next_avail;
        if old == new {
            return Ok(false);
        }
        // Release: the descriptors and available ring entries written before are visible to
        // the device before it can see the new index (virtio 1.2 §2.7.13.3).
        mem.store_u16(self.layout.avail_idx_addr(), new.0, Ordering::Release)?;
        self.published_avail = new;
        // The index store must be ordered before the loads of avail_event / used flags below
        // (store-load ordering): otherwise a device that just re-enabled notifications could be
        // missed and never kicked (virtio 1.2 §2.7.13.4).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = mem.load_u16(self.layout.avail_event_addr(), Ordering::Relaxed)?;
            Ok(need_event(event, new.0, old.0))
        } else {
            let flags = mem.load_u16(self.layout.used_ring, Ordering::Relaxed)?;
            Ok(flags & VIRTQ_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Takes the next completion from the used ring, if any, and frees its descriptors. With
    /// `VIRTIO_RING_F_EVENT_IDX` it also moves `used_event` past it, asking for a notification
    /// at the next completion.
    ///
    /// # Errors
    /// [`VirtqError::UsedIndexTooFar`] (the device published more entries than chains in
    /// flight; nothing is consumed), [`VirtqError::BadUsedId`] (the entry is consumed and
    /// dropped), [`VirtqError::OutOfOrder`] (the entry is consumed and its chain freed),
    /// [`VirtqError::Mem`].
    pub fn pop_used(&mut self, mem: &impl GuestRam) -> Result<Option<Used>, VirtqError> {
        // Acquire: pairs with the device's release of used.idx, so the used element read below
        // is the one the device wrote before publishing the index (virtio 1.2 §2.7.14).
        let used_idx = Wrapping(mem.load_u16(self.layout.used_idx_addr(), Ordering::Acquire)?);
        if used_idx == self.last_used {
            return Ok(None);
        }
        let ahead = (used_idx - self.last_used).0;
        if ahead > self.chains_in_flight {
            return Err(VirtqError::UsedIndexTooFar {
                used_idx: used_idx.0,
                ahead,
                in_flight: self.chains_in_flight,
            });
        }
        let slot = self.last_used.0 & (self.layout.size - 1);
        let elem = self.layout.used_elem_addr(slot);
        let id = mem::read_u32(mem, elem)?;
        let len = mem::read_u32(mem, elem + 4)?;
        self.last_used += 1;
        if self.event_idx {
            // Ordering against the device is provided by enable_interrupts before sleeping.
            self.store_used_event(mem)?;
        }
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.layout.size && self.chains[usize::from(h)].is_some())
            .ok_or(VirtqError::BadUsedId { id, len })?;
        self.release(head);
        let expected = self.avail_heads[usize::from(slot)];
        if self.in_order && head != expected {
            return Err(VirtqError::OutOfOrder { head, expected });
        }
        Ok(Some(Used { head, len }))
    }

    /// Asks for a used buffer notification at the next completion (`used_event`, or clearing
    /// [`VIRTQ_AVAIL_F_NO_INTERRUPT`]) and re-reads the used index afterwards. Returns true if
    /// completions are already waiting, in which case the driver must poll instead of sleeping
    /// (otherwise a completion published just before the request could be slept through).
    ///
    /// # Errors
    /// [`VirtqError::Mem`].
    pub fn enable_interrupts(&mut self, mem: &impl GuestRam) -> Result<bool, VirtqError> {
        if self.event_idx {
            self.store_used_event(mem)?;
        } else {
            mem.store_u16(self.layout.avail_ring, 0, Ordering::Relaxed)?;
        }
        // The store above must be visible before the used index is read again (store-load
        // ordering), or the device may skip the notification for an entry we then do not see.
        fence(Ordering::SeqCst);
        let used_idx = mem.load_u16(self.layout.used_idx_addr(), Ordering::Acquire)?;
        Ok(used_idx != self.last_used.0)
    }

    /// Asks for a notification once the device uses the entry after the last one consumed.
    fn store_used_event(&self, mem: &impl GuestRam) -> Result<(), VirtqError> {
        mem.store_u16(
            self.layout.used_event_addr(),
            self.last_used.0,
            Ordering::Relaxed,
        )?;
        Ok(())
    }

    /// Counts the buffers of a well-formed chain and checks its shape.
    fn check_chain(&self, segs: &[&[Buffer]]) -> Result<usize, VirtqError> {
        let mut count = 0usize;
        let mut seen_writable = false;
        for buf in segs.iter().flat_map(|s| s.iter()) {
            if seen_writable && !buf.writable {
                return Err(VirtqError::ReadableAfterWritable);
            }
            seen_writable |= buf.writable;
            count += 1;
        }
        if count == 0 {
            return Err(VirtqError::EmptyChain);
        }
        if count > usize::from(self.layout.size) {
            return Err(VirtqError::ChainTooLong {
                len: count,
                size: self.layout.size,
            });
        }
        Ok(count)
    }

    fn check_free(&self, needed: usize) -> Result<(), VirtqError> {
        if needed > usize::from(self.num_free) {
            return Err(VirtqError::QueueFull {
                needed,
                free: self.num_free,
            });
        }
        Ok(())
    }

    /// The `n`th descriptor of the free list.
    fn nth_free(&self, n: usize) -> u16 {
        (0..n).fold(self.free_head, |slot, _| self.free_next[usize::from(slot)])
    }

    /// Takes the first `count` free descriptors (already written) as a chain in flight and
    /// puts its head into the next available ring entry.
    fn commit(&mut self, mem: &impl GuestRam, count: usize) -> Result<u16, VirtqError> {
        let head = self.free_head;
        let avail_slot = self.next_avail.0 & (self.layout.size - 1);
        mem.write(
            self.layout.avail_entry_addr(avail_slot),
            &head.to_le_bytes(),
        )?;
        self.avail_heads[usize::from(avail_slot)] = head;
        let tail = self.nth_free(count - 1);
        self.free_head = self.free_next[usize::from(tail)];
        // count <= num_free <= 32768 was checked by the caller.
        let count = count as u16;
        self.num_free -= count;
        self.chains[usize::from(head)] = Some(ChainSlots { tail, count });
        self.chains_in_flight += 1;
        self.next_avail += 1;
        Ok(head)
    }

    /// Returns the chain headed by `head` (known to be in flight) to the free list.
    fn release(&mut self, head: u16) {
        if let Some(chain) = self.chains[usize::from(head)].take() {
            self.free_next[usize::from(chain.tail)] = self.free_head;
            self.free_head = head;
            self.num_free += chain.count;
            self.chains_in_flight -= 1;
        }
    }
}

/// Writes entry `index` of a descriptor table at `table`, e.g. to build an indirect table by
/// hand for [`SplitQueue::add_raw`] (its `next` fields index the table itself).
///
/// # Errors
/// [`VirtqError::Mem`]; [`MemError::OutOfRange`] also if the entry address overflows.
pub fn write_table_entry(
    mem: &impl GuestRam,
    table: u64,
    index: usize,
    desc: &Descriptor,
) -> Result<(), VirtqError> {
    let at = (index as u64)
        .checked_mul(DESC_SIZE)
        .and_then(|off| table.checked_add(off))
        .ok_or(MemError::OutOfRange {
            gpa: table,
            len: 16,
        })?;
    mem.write(at, &desc.to_bytes())?;
    Ok(())
}

/// The descriptor for `buf`, linked to `next` if the chain goes on.
fn linked(buf: &Buffer, next: Option<u16>) -> Descriptor {
    let write = if buf.writable { VIRTQ_DESC_F_WRITE } else { 0 };
    Descriptor {
        addr: buf.addr,
        len: buf.len,
        flags: write | if next.is_some() { VIRTQ_DESC_F_NEXT } else { 0 },
        next: next.unwrap_or(0),
    }
}

/// `vring_need_event` (virtio 1.2 §2.7.10): true if moving an index from `old` to `new` passed
/// `event`, the index at which the other side asked to be notified.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_config as cfg;
    use virtio_bindings::bindings::virtio_ring as ring;

    use super::*;

    #[test]
    fn constants_match_virtio_bindings() {
        assert_eq!(u32::from(VIRTQ_DESC_F_NEXT), ring::VRING_DESC_F_NEXT);
        assert_eq!(u32::from(VIRTQ_DESC_F_WRITE), ring::VRING_DESC_F_WRITE);
        assert_eq!(
            u32::from(VIRTQ_DESC_F_INDIRECT),
            ring::VRING_DESC_F_INDIRECT
        );
        assert_eq!(
            u32::from(VIRTQ_AVAIL_F_NO_INTERRUPT),
            ring::VRING_AVAIL_F_NO_INTERRUPT
        );
        assert_eq!(
            u32::from(VIRTQ_USED_F_NO_NOTIFY),
            ring::VRING_USED_F_NO_NOTIFY
        );
        assert_eq!(
            VIRTIO_RING_F_INDIRECT_DESC,
            ring::VIRTIO_RING_F_INDIRECT_DESC
        );
        assert_eq!(VIRTIO_RING_F_EVENT_IDX, ring::VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(VIRTIO_F_VERSION_1, cfg::VIRTIO_F_VERSION_1);
        assert_eq!(VIRTIO_F_IN_ORDER, cfg::VIRTIO_F_IN_ORDER);
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        // Moving 5 -> 8 passes events 5, 6 and 7 only.
        assert!(!need_event(4, 8, 5));
        assert!(need_event(5, 8, 5));
        assert!(need_event(7, 8, 5));
        assert!(!need_event(8, 8, 5));
        // Across the u16 wrap.
        assert!(need_event(65535, 1, 65534));
        assert!(!need_event(1, 1, 65534));
    }

    #[test]
    fn contiguous_layout_has_spec_sizes_and_alignment() {
        let l = QueueLayout::contiguous(0x1000, 256).unwrap();
        assert_eq!(l.avail_ring, 0x1000 + 16 * 256);
        assert_eq!(
            l.used_ring,
            (l.avail_ring + 6 + 2 * 256).next_multiple_of(4)
        );
        assert_eq!(
            QueueLayout::contiguous_bytes(256),
            l.used_ring + 6 + 8 * 256 - 0x1000
        );
        assert!(matches!(
            QueueLayout::contiguous(0x1008, 8),
            Err(VirtqError::BadArea { .. })
        ));
        assert!(matches!(
            QueueLayout::contiguous(0, 12),
            Err(VirtqError::InvalidSize { .. })
        ));
        assert!(matches!(
            QueueLayout::contiguous(0, 0),
            Err(VirtqError::InvalidSize { .. })
        ));
        assert!(matches!(
            QueueLayout::contiguous(u64::MAX - 15, 8),
            Err(VirtqError::BadArea { .. })
        ));
        let odd = QueueLayout {
            avail_ring: 0x2001,
            ..l
        };
        assert!(matches!(
            odd.validate(MAX_QUEUE_SIZE),
            Err(VirtqError::BadArea {
                area: "available ring",
                ..
            })
        ));
        assert!(matches!(
            l.validate(128),
            Err(VirtqError::InvalidSize {
                size: 256,
                max: 128
            })
        ));
    }

    #[test]
    fn descriptor_wire_form_round_trips() {
        let d = Descriptor {
            addr: 0x0102_0304_0506_0708,
            len: 0x0a0b_0c0d,
            flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            next: 0x1234,
        };
        let b = d.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[8], 0x0d);
        assert_eq!(b[12], 3);
        assert_eq!(b[14], 0x34);
        assert_eq!(Descriptor::from_bytes(&b), d);
    }
}
