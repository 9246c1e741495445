//! The data path's split virtqueue (virtio 1.2 §2.7): the rings mapped once per batch and
//! reached with plain, bounds-checked loads and stores.
//!
//! virtio-queue reads every descriptor, available entry and index, and writes every used
//! element and the used index, through vm-memory's generic `Bytes` path (a region lookup and a
//! slice iteration per access), and publishes the used index once per element. A [`Batch`]
//! finds the descriptor table, the available ring and the used ring in guest memory once
//! ([`GuestView::slice_at`]), reads the driver's available index when the chains it saw are
//! used up (not per chain), writes the used elements of the whole batch and stores the used
//! index once, with `Release` ordering after them (virtio 1.2 §2.7.13: the device writes the
//! elements, then the index), and marks every used-ring byte it writes dirty while the
//! front-end's log is armed (vhost-user.rst "Migration").
//!
//! The queue's state stays in virtio-queue's [`Queue`], which VHOST_USER_GET_VRING_BASE,
//! stopping, reconnecting and migration read: a batch starts from the queue's next available
//! and next used indices and writes them back at [`Batch::finish`] (the used elements through
//! [`Queue::record_used`], so `needs_notification`'s VIRTIO_F_EVENT_IDX check spans them all);
//! `avail_event` and `used_event` stay with the queue's `enable_notification` and
//! `needs_notification`, once per kick and batch.
//!
//! Everything from the driver is untrusted and checked as virtio-queue checks it: an available
//! index more than a queue size ahead gives no chains; a chain ends at a link outside its table,
//! after as many descriptors as the table holds (loops), at a nested or malformed indirect
//! table, or when its lengths overflow 32 bits; a used element for a head outside the queue is
//! not written. A ring that does not lie in one memory region, or is not aligned, is reached
//! through the view's generic accessors instead (same results, slower).

use std::mem::{align_of, size_of};
use std::num::Wrapping;
use std::sync::atomic::{AtomicU16, Ordering};

use vhost_daemon::view::{GuestView, RegionMemo, ViewSlice};
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use crate::guest::{prefetch, prefetch_write};

/// Bytes of one descriptor (virtio 1.2 §2.7.5).
const DESC_SIZE: usize = size_of::<Descriptor>();
/// Bytes of one used element (virtio 1.2 §2.7.8).
const USED_ELEM_SIZE: usize = size_of::<VirtqUsedElem>();
/// Used elements in one 64-byte cache line.
const USED_PER_LINE: usize = 64 / USED_ELEM_SIZE;
/// Flags and index before the entries of the available and used rings.
const RING_HEADER: usize = 4;
/// Offset of the index in the available and used rings.
const IDX_OFFSET: usize = 2;

/// A ring or table in guest memory: mapped (in one region, aligned for its entries) or, when
/// not, reached through the view's generic accessors.
#[derive(Clone, Copy, Debug)]
enum Area<'m> {
    Mapped(ViewSlice<'m, 'm>),
    Guest(GuestAddress),
}

impl<'m> Area<'m> {
    /// `len` bytes at `addr`, mapped if they lie in one region and the mapping is aligned to
    /// `align` bytes.
    fn new(view: &GuestView<'m>, addr: GuestAddress, len: usize, align: usize) -> Area<'m> {
        match view.slice_at(addr, len) {
            Some(s) if s.len() == len && s.ptr_guard().as_ptr() as usize % align == 0 => {
                Area::Mapped(s)
            }
            _ => Area::Guest(addr),
        }
    }

    /// The host address of `T` at `offset` in a mapped area: `None` when it does not fit the
    /// area or is not aligned for `T`.
    fn host<T>(s: &ViewSlice<'m, 'm>, offset: usize) -> Option<*mut T> {
        let end = offset.checked_add(size_of::<T>())?;
        if end > s.len() {
            return None;
        }
        // `offset + size_of::<T>() <= s.len()`: in the mapping.
        let ptr = s.ptr_guard_mut().as_ptr().wrapping_add(offset).cast::<T>();
        (ptr as usize % align_of::<T>() == 0).then_some(ptr)
    }

    /// Guest address `offset` bytes into a guest area.
    fn at(addr: GuestAddress, offset: usize) -> Option<GuestAddress> {
        addr.checked_add(u64::try_from(offset).ok()?)
    }

    /// Reads a `T` at `offset`.
    fn read<T: ByteValued>(&self, view: &GuestView<'m>, offset: usize) -> Option<T> {
        match self {
            Area::Mapped(s) => {
                let ptr = Self::host::<T>(s, offset)?;
                // SAFETY: `ptr` is aligned for `T` and its `size_of::<T>()` bytes lie in the
                // region's mapping (`host`), which the memory snapshot borrowed for 'm keeps
                // mapped; any bit pattern is a valid `T` (ByteValued). Guest memory is shared
                // with the guest, so it is read volatile, as vm-memory does.
                Some(unsafe { ptr.read_volatile() })
            }
            Area::Guest(addr) => view.read_obj(Self::at(*addr, offset)?).ok(),
        }
    }

    /// Writes `val` at `offset` and marks it dirty; false when it does not fit.
    fn write<T: ByteValued>(&self, view: &GuestView<'m>, offset: usize, val: T) -> bool {
        match self {
            Area::Mapped(s) => {
                let Some(ptr) = Self::host::<T>(s, offset) else {
                    return false;
                };
                // SAFETY: as in `read`; the bytes are the device's to write (a used element).
                unsafe { ptr.write_volatile(val) };
                s.bitmap().mark_dirty(offset, size_of::<T>());
                true
            }
            Area::Guest(addr) => Self::write_unmapped(view, *addr, offset, val),
        }
    }

    /// [`Area::write`] into an area that is not mapped in one piece, through the view's
    /// generic accessor: out of line, so the mapped case stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn write_unmapped<T: ByteValued>(
        view: &GuestView<'m>,
        addr: GuestAddress,
        offset: usize,
        val: T,
    ) -> bool {
        Self::at(addr, offset).is_some_and(|a| view.write_obj(val, a).is_ok())
    }

    /// Loads the little-endian `u16` at `offset` atomically with `order`.
    fn load_u16(&self, view: &GuestView<'m>, offset: usize, order: Ordering) -> Option<u16> {
        let raw = match self {
            Area::Mapped(s) => {
                let ptr = Self::host::<u16>(s, offset)?;
                // SAFETY: `ptr` is aligned for u16 (the alignment of AtomicU16) and in the
                // mapping (`host`), kept mapped for 'm; the guest accesses it concurrently,
                // hence the atomic access.
                unsafe { AtomicU16::from_ptr(ptr) }.load(order)
            }
            Area::Guest(addr) => view.load(Self::at(*addr, offset)?, order).ok()?,
        };
        Some(u16::from_le(raw))
    }

    /// Stores `val` little-endian at `offset` atomically with `order` and marks it dirty;
    /// false when it does not fit.
    fn store_u16(&self, view: &GuestView<'m>, offset: usize, val: u16, order: Ordering) -> bool {
        match self {
            Area::Mapped(s) => {
                let Some(ptr) = Self::host::<u16>(s, offset) else {
                    return false;
                };
                // SAFETY: as in `load_u16`.
                unsafe { AtomicU16::from_ptr(ptr) }.store(val.to_le(), order);
                s.bitmap().mark_dirty(offset, size_of::<u16>());
                true
            }
            Area::Guest(addr) => {
                Self::at(*addr, offset).is_some_and(|a| view.store(val.to_le(), a, order).is_ok())
            }
        }
    }
}

/// The descriptors of one chain, as virtio-queue's `DescriptorChain` yields them (the same
/// checks, the same end), read from the mapped descriptor table.
#[derive(Debug)]
pub struct Descs<'r, 'm> {
    view: &'r GuestView<'m>,
    table: Area<'m>,
    /// Entries in `table`.
    table_len: u16,
    next: u16,
    /// Descriptors left before the walk is cut (a loop).
    ttl: u16,
    indirect: bool,
    /// Bytes of the descriptors so far.
    bytes: u32,
}

impl Descs<'_, '_> {
    /// Moves to the indirect table `desc` names; `None` when it cannot (nested, malformed).
    fn enter_indirect(&mut self, desc: &Descriptor) -> Option<()> {
        let len = usize::try_from(desc.len()).ok()?;
        if self.indirect || len % DESC_SIZE != 0 {
            return None;
        }
        let entries = u16::try_from(len / DESC_SIZE).ok()?;
        self.table = Area::new(self.view, desc.addr(), len, align_of::<Descriptor>());
        self.table_len = entries;
        self.next = 0;
        self.ttl = entries;
        self.indirect = true;
        Some(())
    }
}

impl Iterator for Descs<'_, '_> {
    type Item = Descriptor;

    #[inline]
    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.table_len {
                return None;
            }
            let desc: Descriptor = self
                .table
                .read(self.view, usize::from(self.next) * DESC_SIZE)?;
            if desc.refers_to_indirect_table() {
                self.enter_indirect(&desc)?;
                continue;
            }
            self.bytes = self.bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

/// One batch's work on a split virtqueue: chains taken and used elements written, against the
/// rings mapped once; the queue's indices go back to the [`Queue`] at [`Batch::finish`]. Take
/// it while holding the queue's lock, and finish it before letting go.
#[derive(Debug)]
pub struct Batch<'m> {
    view: GuestView<'m>,
    /// Where the chains' buffers are looked up ([`Batch::buffers`]).
    buffers: RegionMemo<'m>,
    size: u16,
    /// Chains may be taken (the queue is ready and has an available ring).
    ready: bool,
    desc: Area<'m>,
    avail: Area<'m>,
    used: Area<'m>,
    next_avail: Wrapping<u16>,
    /// The driver's available index as last read.
    avail_idx: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// Used elements written and not yet published.
    added: u16,
}

impl<'m> Batch<'m> {
    /// A batch on `queue`'s rings in `view`.
    pub fn new(queue: &Queue, view: GuestView<'m>) -> Batch<'m> {
        let size = queue.size();
        let entries = usize::from(size);
        let desc = Area::new(
            &view,
            GuestAddress(queue.desc_table()),
            entries * DESC_SIZE,
            align_of::<Descriptor>(),
        );
        let avail = Area::new(
            &view,
            GuestAddress(queue.avail_ring()),
            RING_HEADER + entries * size_of::<u16>(),
            align_of::<u16>(),
        );
        let used = Area::new(
            &view,
            GuestAddress(queue.used_ring()),
            RING_HEADER + entries * USED_ELEM_SIZE,
            align_of::<VirtqUsedElem>(),
        );
        let next_avail = Wrapping(queue.next_avail());
        Batch {
            view,
            buffers: RegionMemo::new(view),
            size,
            // virtio-queue's `iter` refuses the same queues (a reset without set-up). Its
            // `set_size` accepts powers of two only (virtio 1.2 §2.7), so ring slots are the
            // index's low bits (no division per entry).
            ready: queue.ready() && size.is_power_of_two() && queue.avail_ring() != 0,
            desc,
            avail,
            used,
            next_avail,
            avail_idx: next_avail,
            next_used: Wrapping(queue.next_used()),
            added: 0,
        }
    }

    /// Reads the driver's available index (`Acquire`: the entries it covers are visible after
    /// it) and returns how many chains can be taken now: none when the index is more than a
    /// queue size ahead (virtio 1.2 §2.7.6: a broken driver), the queue is not ready, or the
    /// index is outside guest memory.
    pub fn available(&mut self) -> u16 {
        if !self.ready {
            return 0;
        }
        match self
            .avail
            .load_u16(&self.view, IDX_OFFSET, Ordering::Acquire)
        {
            Some(idx) => self.avail_idx = Wrapping(idx),
            None => return 0,
        }
        let ahead = (self.avail_idx - self.next_avail).0;
        if ahead > self.size {
            0
        } else {
            ahead
        }
    }

    /// Takes the next available chain's head, reading the available index again only when the
    /// chains seen so far are taken; `None` when there is none (or its entry is unreadable).
    #[inline]
    pub fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_idx && self.available() == 0 {
            return None;
        }
        let ahead = (self.avail_idx - self.next_avail).0;
        if ahead == 0 || ahead > self.size {
            return None;
        }
        let head = self.avail_entry(self.next_avail)?;
        self.next_avail += Wrapping(1);
        Some(head)
    }

    /// The available ring's entry for index `at` (its slot: the index's low bits); `None` when
    /// it is not in guest memory. Only for a ready queue (its size a power of two).
    #[inline(always)]
    fn avail_entry(&self, at: Wrapping<u16>) -> Option<u16> {
        let slot = usize::from(at.0 & self.size.wrapping_sub(1));
        let Area::Mapped(s) = &self.avail else {
            return self
                .avail
                .read::<u16>(&self.view, RING_HEADER + slot * size_of::<u16>())
                .map(u16::from_le);
        };
        let entries = s
            .ptr_guard()
            .as_ptr()
            .wrapping_add(RING_HEADER)
            .cast::<u16>();
        // SAFETY: `slot < size` (a ready queue's size is a power of two), and the mapped ring
        // holds its header and `size` entries (`Area::new` checked the length) aligned for u16
        // (its start is, and the header is 4 bytes); the snapshot borrowed for 'm keeps it
        // mapped. The driver writes the ring concurrently, hence the volatile read, as in
        // `Area::read`.
        Some(u16::from_le(unsafe { entries.add(slot).read_volatile() }))
    }

    /// Takes up to `n` available chains' heads into `heads`, as [`Batch::pop`] one by one
    /// would (the available index read once).
    pub fn pop_many(&mut self, n: usize, heads: &mut Vec<u16>) {
        if self.next_avail == self.avail_idx {
            self.available();
        }
        let ahead = (self.avail_idx - self.next_avail).0;
        if ahead > self.size {
            return;
        }
        let take = usize::from(ahead).min(n);
        for _ in 0..take {
            let Some(head) = self.avail_entry(self.next_avail) else {
                return;
            };
            heads.push(head);
            self.next_avail += Wrapping(1);
        }
    }

    /// Gives the last `n` chains taken back (they are taken again next).
    pub fn give_back(&mut self, n: u16) {
        self.next_avail -= Wrapping(n);
    }

    /// The next available index: after [`Batch::pop`] found nothing, the driver's available
    /// index the batch saw.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// The lookup for the buffers of the batch's chains: it remembers the last region found,
    /// which the next buffer is nearly always in.
    pub fn buffers(&self) -> &RegionMemo<'m> {
        &self.buffers
    }

    /// The descriptors of the chain at `head`.
    pub fn chain(&self, head: u16) -> Descs<'_, 'm> {
        Descs {
            view: &self.view,
            table: self.desc,
            table_len: self.size,
            next: head,
            ttl: self.size,
            indirect: false,
            bytes: 0,
        }
    }

    /// The descriptor at `head` in the descriptor table, as is (not followed into an indirect
    /// table); `None` for a head outside the queue or an unreadable table.
    #[inline]
    pub fn head_descriptor(&self, head: u16) -> Option<Descriptor> {
        if head >= self.size {
            return None;
        }
        let Area::Mapped(s) = &self.desc else {
            return self.desc.read(&self.view, usize::from(head) * DESC_SIZE);
        };
        let table = s.ptr_guard().as_ptr().cast::<Descriptor>();
        // SAFETY: `head < size`, and the mapped table holds `size` descriptors (`Area::new`
        // checked the length) aligned for them; the snapshot borrowed for 'm keeps it mapped.
        // Any bit pattern is a descriptor; the driver may write the table concurrently, hence
        // the volatile read, as in `Area::read`.
        Some(unsafe { table.add(usize::from(head)).read_volatile() })
    }

    /// Prefetches ([`prefetch`]) the descriptor at `head` (a head outside the queue or a table
    /// not mapped: nothing).
    #[inline]
    pub fn prefetch_descriptor(&self, head: u16) {
        if let (Area::Mapped(s), true) = (&self.desc, head < self.size) {
            // In the table: `head < size`, and the table holds `size` descriptors.
            prefetch(
                s.ptr_guard()
                    .as_ptr()
                    .wrapping_add(usize::from(head) * DESC_SIZE),
            );
        }
    }

    /// Prefetches for writing ([`prefetch_write`]) the used ring entries the next `n` used
    /// elements go to (a ring not mapped: nothing): the driver's core reads them, so each line
    /// has to come back before the batch can write it.
    pub fn prefetch_used(&self, n: usize) {
        let Area::Mapped(s) = &self.used else { return };
        let n = n.min(usize::from(self.size));
        let entry = |i: usize| {
            let slot =
                usize::from(self.next_used.0.wrapping_add(i as u16) & self.size.wrapping_sub(1));
            // In the ring: `slot < size`, and the ring holds `size` elements after its header.
            prefetch_write(
                s.ptr_guard()
                    .as_ptr()
                    .wrapping_add(RING_HEADER + slot * USED_ELEM_SIZE),
            );
        };
        (0..n).step_by(USED_PER_LINE).for_each(entry);
        if n > 0 {
            entry(n - 1);
        }
    }

    /// Writes the used element (`head`, `len` bytes written into the chain) at the next used
    /// position; it is published at [`Batch::finish`]. A head outside the queue is refused and
    /// logged, as virtio-queue's `add_used` does.
    #[inline(always)]
    pub fn add_used(&mut self, head: u16, len: u32) {
        if head >= self.size {
            return refused_head(head, self.size);
        }
        let slot = usize::from(self.next_used.0 & self.size.wrapping_sub(1));
        // struct virtq_used_elem: le32 id, le32 len.
        let elem = [u32::from(head).to_le(), len.to_le()];
        if !self
            .used
            .write(&self.view, RING_HEADER + slot * USED_ELEM_SIZE, elem)
        {
            return used_entry_outside(slot);
        }
        self.next_used += Wrapping(1);
        self.added = self.added.wrapping_add(1);
    }

    /// Publishes the used elements written (one store of the used index, `Release`: after
    /// them) and hands the indices back to `queue` (the one the batch was made from). The batch
    /// may go on afterwards (it stays in step with the queue).
    pub fn finish(&mut self, queue: &mut Queue) {
        queue.set_next_avail(self.next_avail.0);
        if self.added == 0 {
            return;
        }
        if !self
            .used
            .store_u16(&self.view, IDX_OFFSET, self.next_used.0, Ordering::Release)
        {
            log::warn!("used ring index is outside guest memory");
        }
        queue.record_used(self.added);
        self.added = 0;
    }
}

/// [`Batch::add_used`] of a head outside the queue: logged, nothing written (out of line, so
/// the data path's copy of `add_used` stays small).
#[cold]
#[inline(never)]
fn refused_head(head: u16, size: u16) {
    log::warn!("used element for head {head} outside a queue of {size}");
}

/// [`Batch::add_used`] whose used ring entry `slot` is not in guest memory: logged.
#[cold]
#[inline(never)]
fn used_entry_outside(slot: usize) {
    log::warn!("used ring entry {slot} is outside guest memory");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::{
        VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{DescriptorChain, QueueOwnedT};
    use vm_memory::Bytes;

    use super::*;
    use crate::guest::GuestRam;

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)])
            .unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> Descriptor {
        Descriptor::new(addr, len, flags as u16, next)
    }

    /// Fields of a descriptor, for comparisons.
    fn fields(d: &Descriptor) -> (u64, u32, u16, u16) {
        (d.addr().0, d.len(), d.flags(), d.next())
    }

    /// A queue of 16 whose driver made `heads` available (descriptor tables written by the
    /// test).
    fn queue<'a>(mem: &'a GuestRam, heads: &[u16]) -> (MockSplitQueue<'a, GuestRam>, Queue) {
        let vq = MockSplitQueue::new(mem, 16);
        for (i, &h) in heads.iter().enumerate() {
            vq.avail().ring().ref_at(i).unwrap().store(u16::to_le(h));
        }
        vq.avail().idx().store(u16::to_le(heads.len() as u16));
        let q = vq.create_queue().unwrap();
        (vq, q)
    }

    #[test]
    fn takes_the_heads_the_driver_made_available() {
        let mem = ram();
        let (_vq, mut q) = queue(&mem, &[3, 7, 1]);
        let mut b = Batch::new(&q, GuestView::new(&mem));
        assert_eq!(b.available(), 3);
        assert_eq!([b.pop(), b.pop()], [Some(3), Some(7)]);
        b.give_back(1);
        assert_eq!([b.pop(), b.pop(), b.pop()], [Some(7), Some(1), None]);
        assert_eq!(b.next_avail(), 3);
        b.finish(&mut q);
        assert_eq!((q.next_avail(), q.next_used()), (3, 0));
    }

    /// Prefetching takes nothing: the same chains come out after it, heads outside the queue
    /// and counts past the ring are ignored.
    #[test]
    fn prefetching_takes_nothing() {
        let mem = ram();
        let (_vq, mut q) = queue(&mem, &[3, 99, 1]);
        let mut b = Batch::new(&q, GuestView::new(&mem));
        b.prefetch_used(64);
        b.prefetch_descriptor(99);
        assert_eq!(
            [b.pop(), b.pop(), b.pop(), b.pop()],
            [Some(3), Some(99), Some(1), None]
        );
        b.finish(&mut q);
        assert_eq!((q.next_avail(), q.next_used()), (3, 0));
    }

    /// virtio 1.2 §2.7.6: a driver whose available index runs more than a queue size ahead of
    /// the device's broke its ring; nothing is taken (as virtio-queue's `iter` refuses).
    #[test]
    fn an_index_more_than_a_queue_ahead_gives_nothing() {
        let mem = ram();
        let (vq, q) = queue(&mem, &[0]);
        vq.avail().idx().store(u16::to_le(17));
        let mut b = Batch::new(&q, GuestView::new(&mem));
        assert_eq!(b.available(), 0);
        assert_eq!(b.pop(), None);
        vq.avail().idx().store(u16::to_le(16));
        assert_eq!(b.available(), 16, "a full ring is fine");
    }

    #[test]
    fn a_stopped_queue_gives_nothing_but_takes_used_elements() {
        let mem = ram();
        let (vq, mut q) = queue(&mem, &[2]);
        q.set_ready(false);
        let mut b = Batch::new(&q, GuestView::new(&mem));
        assert_eq!(b.pop(), None);
        b.add_used(2, 0);
        b.finish(&mut q);
        assert_eq!(vq.used().idx().load(), u16::to_le(1));
    }

    /// Used elements are written in order from the queue's next used index, published with
    /// one index store, and counted for the EVENT_IDX notification check: a driver that asked
    /// to be notified after the second element is, even though the batch added three.
    #[test]
    fn used_elements_are_published_once_and_notify() {
        let mem = ram();
        let (vq, mut q) = queue(&mem, &[0, 1, 2]);
        q.set_event_idx(true);
        q.set_next_used(65534);
        vq.used().idx().store(u16::to_le(65534));
        // used_event (after the available ring's 16 entries): notify once index 65535 is used.
        mem.write_obj(u16::to_le(65535), vq.avail_addr().unchecked_add(4 + 2 * 16))
            .unwrap();
        let mut b = Batch::new(&q, GuestView::new(&mem));
        b.add_used(0, 10);
        b.add_used(1, 20);
        assert_eq!(
            vq.used().idx().load(),
            u16::to_le(65534),
            "nothing published before finish"
        );
        b.add_used(16, 5);
        b.add_used(2, 30);
        b.finish(&mut q);
        assert_eq!(q.next_used(), 1);
        assert_eq!(vq.used().idx().load(), u16::to_le(1));
        let elems: Vec<(u32, u32)> = [14usize, 15, 0]
            .iter()
            .map(|&i| {
                let e = vq.used().ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect();
        assert_eq!(elems, [(0, 10), (1, 20), (2, 30)], "head 16 was refused");
        assert!(q.needs_notification(&mem).unwrap());
        assert!(!q.needs_notification(&mem).unwrap(), "nothing new since");
    }

    /// Without VIRTIO_F_EVENT_IDX, a driver that set VRING_AVAIL_F_NO_INTERRUPT (a polling
    /// driver, like DPDK's virtio PMD) gets no used buffer notification, and one that clears it
    /// gets one again (virtio 1.2 §2.7.7.2; the vendored virtio-queue's patch).
    #[test]
    fn no_interrupt_flag_suppresses_notifications() {
        let mem = ram();
        let (vq, mut q) = queue(&mem, &[0, 1]);
        mem.write_obj(
            u16::to_le(VRING_AVAIL_F_NO_INTERRUPT as u16),
            vq.avail_addr(),
        )
        .unwrap();
        let mut b = Batch::new(&q, GuestView::new(&mem));
        b.add_used(0, 10);
        b.finish(&mut q);
        assert!(!q.needs_notification(&mem).unwrap(), "the driver polls");
        mem.write_obj(0u16, vq.avail_addr()).unwrap();
        let mut b = Batch::new(&q, GuestView::new(&mem));
        b.add_used(1, 10);
        b.finish(&mut q);
        assert!(q.needs_notification(&mem).unwrap(), "the driver waits");
    }

    /// A ring that straddles two memory regions is reached through the generic accessors, with
    /// the same results.
    #[test]
    fn rings_across_regions_work() {
        let mem = ram();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0xff80), 16);
        vq.avail().ring().ref_at(0).unwrap().store(u16::to_le(5));
        vq.avail().idx().store(u16::to_le(1));
        let descs: [RawDescriptor; 1] = [RawDescriptor::from(desc(0x8000, 64, 0, 0))];
        vq.desc_table().store(5, descs[0]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut b = Batch::new(&q, GuestView::new(&mem));
        assert!(
            matches!(b.desc, Area::Guest(_)),
            "the table crosses 0x10000"
        );
        let head = b.pop().unwrap();
        let got: Vec<_> = b.chain(head).map(|d| fields(&d)).collect();
        assert_eq!(got, [(0x8000, 64, 0, 0)]);
        b.add_used(head, 0);
        b.finish(&mut q);
        assert_eq!(vq.used().idx().load(), u16::to_le(1));
    }

    /// Walks `head` of a 16-entry table holding `table` with both walkers.
    fn both_walks(
        mem: &GuestRam,
        table: &[Descriptor],
        head: u16,
    ) -> (Vec<Descriptor>, Vec<Descriptor>) {
        let (vq, q) = queue(mem, &[head]);
        for (i, d) in table.iter().enumerate() {
            vq.desc_table()
                .store(i as u16, RawDescriptor::from(*d))
                .unwrap();
        }
        let view = GuestView::new(mem);
        let b = Batch::new(&q, view);
        let ours: Vec<_> = b.chain(head).collect();
        let theirs: Vec<_> =
            DescriptorChain::new(mem, GuestAddress(q.desc_table()), 16, head).collect();
        (ours, theirs)
    }

    #[test]
    fn chains_end_at_loops_and_bad_links() {
        let mem = ram();
        let looped = [
            desc(0x1000, 8, VRING_DESC_F_NEXT, 1),
            desc(0x2000, 8, VRING_DESC_F_NEXT, 0),
        ];
        let (ours, _) = both_walks(&mem, &looped, 0);
        assert_eq!(ours.len(), 16, "a loop ends after a table's worth");
        let bad_link = [desc(0x1000, 8, VRING_DESC_F_NEXT, 40)];
        let (ours, _) = both_walks(&mem, &bad_link, 0);
        assert_eq!(ours.len(), 1, "the link out of the table is not followed");
        let (ours, _) = both_walks(&mem, &bad_link, 16);
        assert!(ours.is_empty(), "a head outside the table");
        mem.write_obj(desc(0x3000, 8, VRING_DESC_F_WRITE, 0), GuestAddress(0x9000))
            .unwrap();
        let indirect = [desc(0x9000, 16, VRING_DESC_F_INDIRECT, 0)];
        let (ours, _) = both_walks(&mem, &indirect, 0);
        assert_eq!(
            ours.iter().map(fields).collect::<Vec<_>>(),
            [(0x3000, 8, 2, 0)]
        );
        let nested = [desc(0x9000, 16, VRING_DESC_F_INDIRECT, 0)];
        mem.write_obj(
            desc(0x9000, 16, VRING_DESC_F_INDIRECT, 0),
            GuestAddress(0x9000),
        )
        .unwrap();
        let (ours, _) = both_walks(&mem, &nested, 0);
        assert!(ours.is_empty(), "nested indirect tables are refused");
    }

    fn any_desc() -> impl Strategy<Value = Descriptor> {
        (
            prop_oneof![Just(0x1000u64), Just(0x9000), Just(0x1fff0), Just(0x3_0000)],
            prop_oneof![
                Just(0u32),
                Just(8),
                Just(16),
                Just(32),
                Just(17),
                any::<u32>()
            ],
            0u16..8,
            0u16..20,
        )
            .prop_map(|(addr, len, flags, next)| Descriptor::new(addr, len, flags, next))
    }

    proptest! {
        /// Any descriptor table, any head, indirect tables included: the fast walk yields
        /// exactly what virtio-queue's `DescriptorChain` yields.
        #[test]
        fn walks_like_virtio_queue(
            table in proptest::collection::vec(any_desc(), 16),
            indirect in proptest::collection::vec(any_desc(), 2),
            head in 0u16..18,
        ) {
            let mem = ram();
            for (i, d) in indirect.iter().enumerate() {
                mem.write_obj(*d, GuestAddress(0x9000 + 16 * i as u64)).unwrap();
            }
            let (ours, theirs) = both_walks(&mem, &table, head);
            let ours: Vec<_> = ours.iter().map(fields).collect();
            let theirs: Vec<_> = theirs.iter().map(fields).collect();
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn pops_through_a_virtio_queue_iterator_agree() {
        let mem = ram();
        let (_vq, mut q) = queue(&mem, &[4, 5]);
        let theirs: Vec<u16> = q.iter(&mem).unwrap().map(|c| c.head_index()).collect();
        q.set_next_avail(0);
        let mut b = Batch::new(&q, GuestView::new(&mem));
        let ours: Vec<u16> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(ours, theirs);
    }
}
