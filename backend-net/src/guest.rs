//! Guest memory as the data path sees it: descriptor chains walked into host-mapped slices,
//! checked against the memory table, and scatter / gather copies over them.
//!
//! A chain is walked once ([`walk`]); every descriptor's range must lie in guest memory (a range
//! that crosses memory regions becomes several slices), device-readable buffers must precede
//! device-writable ones (virtio 1.2 §2.7.4.2), and the chain must end properly (no link out of
//! the table, no loop, valid indirect tables; virtio-queue's walk is bounded by the queue size).
//! Slices live in one per-batch arena (`Vec<VolatileSlice>`) and chains refer to ranges of it,
//! so a batch allocates once.

use std::mem::size_of;
use std::ops::Range;
use std::ptr::NonNull;

pub use vhost_daemon::memory::{GuestRam, GuestRamAtomic, GuestRamGuard, Vring};
use vhost_daemon::view::{GuestView, RegionMemo, ViewSlice};
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::GuestAddress;

use crate::deferred::Source;
use crate::vq::Batch;

/// A piece of guest memory mapped in this process, from vhost-daemon's [`GuestView`]: its
/// dirty-log bitmap borrows the region's (no reference count per slice).
pub type Slice<'m> = ViewSlice<'m, 'm>;

/// Marks the first `len` bytes of `slices` dirty in the front-end's log, for data the kernel
/// wrote into them (a READV from the TAP), which vm-memory does not see.
pub fn mark_written(slices: &[Slice<'_>], len: usize) {
    let mut left = len;
    for s in slices {
        if left == 0 {
            break;
        }
        let n = s.len().min(left);
        s.bitmap().mark_dirty(0, n);
        left -= n;
    }
}

/// Copies `len` bytes at `from` into `to` from its byte `at` on, as memmove does (a guest may
/// make its buffers overlap), and marks them dirty in the front-end's log while it is armed:
/// the one raw store path of the data path's copies into guest memory.
///
/// # Safety
/// `at + len <= to.len()`, and `from` is valid for reads of `len` bytes during the call.
#[inline]
pub unsafe fn copy_into(to: &Slice<'_>, at: usize, from: *const u8, len: usize) {
    // SAFETY: by the caller's contract the destination range lies in `to`, a slice of a
    // mapping its memory snapshot keeps, and the source is readable; `copy` allows overlap.
    unsafe { std::ptr::copy(from, to.ptr_guard_mut().as_ptr().add(at), len) };
    to.bitmap().mark_dirty(at, len);
}

/// Writes `val` into `to` from its byte `at` on unless those bytes already hold it (then nothing
/// is written or marked dirty: the guest's copy is what the log has, or will have, sent). A
/// read leaves the driver's cache line shared, where a store would take it from the driver's
/// core and make it fetch the line back; a receive buffer's header area nearly always holds
/// the header already, the one its last frame brought (DPDK's vhost library writes its headers
/// the same way, `ASSIGN_UNLESS_EQUAL`).
///
/// # Safety
/// `at + N <= to.len()`.
#[inline]
pub unsafe fn store_unless_equal<const N: usize>(to: &Slice<'_>, at: usize, val: &[u8; N]) {
    // SAFETY: by the caller's contract the N bytes lie in `to`, a slice of a mapping its memory
    // snapshot keeps; every value is valid. Read as one unaligned copy (a few wide loads), as
    // `copy_into` copies guest bytes: a volatile byte array would be N single-byte loads.
    let now = unsafe {
        to.ptr_guard()
            .as_ptr()
            .add(at)
            .cast::<[u8; N]>()
            .read_unaligned()
    };
    if now != *val {
        // SAFETY: the same N bytes, and `val` is readable.
        unsafe { copy_into(to, at, val.as_ptr(), N) };
    }
}

/// Asks the CPU to bring the cache line at `ptr` into its caches ahead of an access
/// (x86-64 PREFETCHT0; nothing elsewhere). The rings and buffers the data path touches were
/// last written by the driver's core, so each first access waits for a line to come over;
/// requested together for a whole batch, those waits overlap (as DPDK's vhost library
/// prefetches descriptors and buffers). A hint only: nothing is read, any address will do.
#[inline(always)]
pub fn prefetch(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch makes no architectural memory access and never faults, whatever the
    // address; SSE, which it needs, is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// [`prefetch`] of a line the data path is about to write (x86-64 PREFETCHW where the
/// processor has it, else PREFETCHT0): the line comes for ownership, so the store after it
/// does not wait for the driver's core to give it up a second time.
#[inline(always)]
pub fn prefetch_write(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        // SAFETY: as `prefetch`: no architectural memory access, no fault, whatever the
        // address; the processor has the instruction (`has_prefetchw`).
        unsafe {
            std::arch::asm!(
                "prefetchw byte ptr [{0}]",
                in(reg) ptr,
                options(nostack, preserves_flags, readonly)
            );
        }
        return;
    }
    prefetch(ptr);
}

/// Whether the processor has PREFETCHW (CPUID 8000_0001h, ECX bit 8: PRFCHW, which Rust's
/// feature detection does not name), asked once.
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0)
}

/// A descriptor chain the device cannot use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    OutOfMemory {
        /// Guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// The walk stopped early: a link outside the descriptor table, a loop, or a bad indirect
    /// table.
    #[error("descriptor chain is broken (bad link, loop or indirect table)")]
    Broken,
    /// A device-readable buffer after a device-writable one.
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
}

/// The buffers of one walked chain: ranges of the arena passed to [`walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Head descriptor index, for the used ring.
    pub head: u16,
    /// Device-readable slices.
    pub readable: Range<usize>,
    /// Device-writable slices.
    pub writable: Range<usize>,
    /// Bytes in the device-readable buffers.
    pub readable_len: usize,
    /// Bytes in the device-writable buffers.
    pub writable_len: usize,
}

/// Walks the chain at `head` whose descriptors `chain` yields (virtio-queue's
/// `DescriptorChain` or the fast path's [`crate::vq::Descs`], which end the same way at a bad
/// link, a loop or a bad indirect table), appending its buffers' slices (mapped through `mem`)
/// to `arena`.
///
/// # Errors
/// [`ChainError`]; `arena` may then hold slices of the partial walk, which the caller drops
/// with `arena.truncate`.
pub fn walk<'m>(
    head: u16,
    chain: impl IntoIterator<Item = Descriptor>,
    mem: &'m GuestRam,
    arena: &mut Vec<Slice<'m>>,
) -> Result<Chain, ChainError> {
    let start = arena.len();
    let mut first_writable = None;
    let (mut readable_len, mut writable_len) = (0usize, 0usize);
    let mut ended = false;
    for desc in chain {
        if desc.is_write_only() {
            first_writable.get_or_insert(arena.len());
            writable_len += desc.len() as usize;
        } else if first_writable.is_some() {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            readable_len += desc.len() as usize;
        }
        map(mem, desc.addr(), desc.len(), arena)?;
        ended = !desc.has_next();
    }
    if !ended {
        return Err(ChainError::Broken);
    }
    let split = first_writable.unwrap_or(arena.len());
    Ok(Chain {
        head,
        readable: start..split,
        writable: split..arena.len(),
        readable_len,
        writable_len,
    })
}

/// [`walk`] of the chain at `head` in `batch`, with a fast path for the chains drivers mostly
/// post: one descriptor ([`one_buffer`]) is mapped without the general walk (same result).
///
/// # Errors
/// As [`walk`].
#[inline]
pub fn walk_head<'m>(
    batch: &Batch<'m>,
    head: u16,
    mem: &'m GuestRam,
    arena: &mut Vec<Slice<'m>>,
) -> Result<Chain, ChainError> {
    let Some((desc, slice)) = batch
        .head_descriptor(head)
        .and_then(|d| Some((d, one_buffer(&d, batch.buffers())?)))
    else {
        return walk(head, batch.chain(head), mem, arena);
    };
    let at = arena.len();
    arena.push(slice);
    let (split, readable_len, writable_len) = if desc.is_write_only() {
        (at, 0, slice.len())
    } else {
        (at + 1, slice.len(), 0)
    };
    Ok(Chain {
        head,
        readable: at..split,
        writable: split..at + 1,
        readable_len,
        writable_len,
    })
}

/// The buffer of a chain that is just `desc` (no next descriptor, no indirect table, not empty)
/// when it lies in one memory region, mapped (looked up through `buffers`, a batch's
/// [`Batch::buffers`]); `None` otherwise (the chain then takes [`walk`]).
#[inline]
pub fn one_buffer<'m>(desc: &Descriptor, buffers: &RegionMemo<'m>) -> Option<Slice<'m>> {
    let len = usize::try_from(desc.len()).ok()?;
    if desc.has_next() || desc.refers_to_indirect_table() || len == 0 {
        return None;
    }
    buffers
        .slice_at(desc.addr(), len)
        .filter(|s| s.len() == len)
}

/// Appends the slices that map `len` bytes at `addr`.
fn map<'m>(
    mem: &'m GuestRam,
    addr: GuestAddress,
    len: u32,
    arena: &mut Vec<Slice<'m>>,
) -> Result<(), ChainError> {
    let bad = ChainError::OutOfMemory { addr: addr.0, len };
    let view = GuestView::new(mem);
    // Nearly every buffer lies in one region: one lookup, no iteration.
    if let Some(slice) = view
        .slice_at(addr, len as usize)
        .filter(|s| len > 0 && s.len() == len as usize)
    {
        arena.push(slice);
        return Ok(());
    }
    for slice in view.slices(addr, len as usize) {
        arena.push(slice.map_err(|_| bad)?);
    }
    Ok(())
}

/// A read or write position in a list of slices.
#[derive(Clone, Debug)]
pub struct Cursor<'a, 'm> {
    slices: &'a [Slice<'m>],
    index: usize,
    offset: usize,
}

impl<'a, 'm> Cursor<'a, 'm> {
    /// A cursor at the start of `slices`.
    pub fn new(slices: &'a [Slice<'m>]) -> Self {
        Cursor {
            slices,
            index: 0,
            offset: 0,
        }
    }

    /// The next piece of at most `max` bytes, advancing past it; `None` at the end.
    pub fn next_piece(&mut self, max: usize) -> Option<Slice<'m>> {
        while let Some(s) = self.slices.get(self.index) {
            let left = s.len() - self.offset;
            if left == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = left.min(max);
            let piece = s.subslice(self.offset, n).ok()?;
            self.offset += n;
            return Some(piece);
        }
        None
    }

    /// The current slice and the offset in it when its next `n` bytes are contiguous there and
    /// `n` is more than a word: the fast path of the copies below (one copy, one dirty mark,
    /// no sub-slices). Shorter or split copies go piece by piece through vm-memory, which
    /// copies up to a word with volatile accesses; longer ones it copies as this does.
    fn contiguous(&self, n: usize) -> Option<(&'a Slice<'m>, usize)> {
        let s = self.slices.get(self.index)?;
        (n > size_of::<usize>() && s.len() - self.offset >= n).then_some((s, self.offset))
    }

    /// The next `n` bytes as a copy [`Source`], when they are contiguous in the current slice
    /// and `n` is more than a word (the cursor's fast-path condition); the cursor does not move.
    #[inline]
    pub fn contiguous_source(&self, n: usize) -> Option<Source<'m>> {
        let (s, at) = self.contiguous(n)?;
        // SAFETY: `at + n <= s.len()` (`contiguous`), so the `n` bytes lie in the slice's
        // mapping, which the memory snapshot keeps for 'm; a mapping's address is not null.
        unsafe {
            let ptr = NonNull::new(s.ptr_guard().as_ptr().add(at).cast_mut())?;
            Some(Source::from_raw(ptr, n))
        }
    }

    /// The next `N` bytes when they lie in one slice, loaded as one value (a constant length:
    /// a few moves, no `memcpy` call); the cursor does not move. `None` otherwise: read them
    /// with [`Cursor::read`].
    #[inline]
    pub fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        // At the end of a slice the next bytes are at the start of the next one.
        let (s, at) = match self.slices.get(self.index)? {
            s if s.len() > self.offset => (s, self.offset),
            _ => (self.slices.get(self.index + 1)?, 0),
        };
        if s.len() - at < N {
            return None;
        }
        // SAFETY: `at + N <= s.len()`, so the bytes lie in the slice's mapping, which the
        // memory snapshot keeps for 'm; a byte array needs no alignment.
        Some(unsafe {
            s.ptr_guard()
                .as_ptr()
                .add(at)
                .cast::<[u8; N]>()
                .read_unaligned()
        })
    }

    /// Skips `n` bytes; returns how many were skipped (fewer at the end).
    pub fn skip(&mut self, n: usize) -> usize {
        if self
            .slices
            .get(self.index)
            .is_some_and(|s| s.len() - self.offset >= n)
        {
            self.offset += n;
            return n;
        }
        let mut done = 0;
        while done < n {
            match self.next_piece(n - done) {
                Some(p) => done += p.len(),
                None => break,
            }
        }
        done
    }

    /// Copies up to `out.len()` bytes out; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        if let Some((s, at)) = self.contiguous(out.len()) {
            // SAFETY: `at + out.len() <= s.len()` (`contiguous`), so the source lies in the
            // slice's mapping, which the memory snapshot keeps for 'm; `out` is our own
            // memory, not guest memory, so they do not overlap.
            unsafe {
                let src = s.ptr_guard().as_ptr().add(at);
                std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len());
            }
            self.offset += out.len();
            return out.len();
        }
        let mut done = 0;
        while done < out.len() {
            match self.next_piece(out.len() - done) {
                Some(p) => done += p.copy_to(&mut out[done..]),
                None => break,
            }
        }
        done
    }

    /// Copies up to `data.len()` bytes in; returns how many.
    pub fn write(&mut self, data: &[u8]) -> usize {
        if let Some((s, at)) = self.contiguous(data.len()) {
            // SAFETY: `at + data.len() <= s.len()` (`contiguous`); `data` is readable.
            unsafe { copy_into(s, at, data.as_ptr(), data.len()) };
            self.offset += data.len();
            return data.len();
        }
        let mut done = 0;
        while done < data.len() {
            match self.next_piece(data.len() - done) {
                Some(p) => {
                    p.copy_from(&data[done..done + p.len()]);
                    done += p.len();
                }
                None => break,
            }
        }
        done
    }

    /// Copies up to `len` bytes from `src` into this cursor's slices; returns how many.
    pub fn copy_from_cursor(&mut self, src: &mut Cursor<'_, '_>, len: usize) -> usize {
        if let (Some((d, d_at)), Some((s, s_at))) = (self.contiguous(len), src.contiguous(len)) {
            // SAFETY: both ranges lie in their slices (`contiguous`), whose mappings the memory
            // snapshots they borrow keep.
            unsafe { copy_into(d, d_at, s.ptr_guard().as_ptr().add(s_at), len) };
            self.offset += len;
            src.offset += len;
            return len;
        }
        let mut done = 0;
        while done < len {
            let Some(from) = src.next_piece(len - done) else {
                break;
            };
            let mut moved = 0;
            while moved < from.len() {
                let Some(to) = self.next_piece(from.len() - moved) else {
                    return done + moved;
                };
                // `to.len() <= from.len() - moved`, so the subslice is in range.
                let n = to.len();
                if let Ok(part) = from.subslice(moved, n) {
                    part.copy_to_volatile_slice(to);
                }
                moved += n;
            }
            done += moved;
        }
        done
    }

    /// Appends `iovec`s for the rest of the slices, at most `len` bytes, to `out`; returns the
    /// bytes they cover.
    pub fn iovecs(&mut self, len: usize, out: &mut Vec<libc::iovec>) -> usize {
        let mut done = 0;
        while done < len {
            let Some(p) = self.next_piece(len - done) else {
                break;
            };
            out.push(libc::iovec {
                iov_base: p.ptr_guard_mut().as_ptr().cast(),
                iov_len: p.len(),
            });
            done += p.len();
        }
        done
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use proptest::prelude::*;

    /// Two regions with a hole: [0, 64 KiB) and [128 KiB, 192 KiB).
    pub(crate) fn two_region_ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)])
            .unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    /// Builds a queue holding one chain of `descs` and walks it.
    fn walk_descs(mem: &GuestRam, descs: &[RawDescriptor]) -> Result<(Chain, usize), ChainError> {
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(mem).unwrap().next().unwrap();
        let mut arena = Vec::new();
        walk(chain.head_index(), chain, mem, &mut arena).map(|c| (c, arena.len()))
    }

    /// Maps `len` bytes at `addr` into `arena` (for tests of other modules).
    pub(crate) fn map_for_test<'m>(
        mem: &'m GuestRam,
        addr: u64,
        len: u32,
        arena: &mut Vec<Slice<'m>>,
    ) {
        map(mem, GuestAddress(addr), len, arena).unwrap();
    }

    #[test]
    fn stores_only_bytes_that_differ() {
        let mem = two_region_ram();
        let mut arena = Vec::new();
        map_for_test(&mem, 0x1000, 16, &mut arena);
        mem.write_slice(&[5u8; 16], GuestAddress(0x1000)).unwrap();
        let mut got = [0u8; 16];
        // SAFETY: 2 + 12 <= 16 bytes of the slice.
        unsafe { store_unless_equal(&arena[0], 2, &[5u8; 12]) };
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, [5u8; 16]);
        let new = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        // SAFETY: as above.
        unsafe { store_unless_equal(&arena[0], 2, &new) };
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got[..2], &[5, 5]);
        assert_eq!(&got[2..14], &new);
        assert_eq!(&got[14..], &[5, 5]);
    }

    #[test]
    fn walks_readable_then_writable() {
        let mem = two_region_ram();
        let (c, slices) = walk_descs(
            &mem,
            &[
                desc(0x1000, 12, VRING_DESC_F_NEXT, 1),
                desc(0x2000, 100, VRING_DESC_F_NEXT, 2),
                desc(0x3000, 200, VRING_DESC_F_WRITE, 0),
            ],
        )
        .unwrap();
        assert_eq!(c.readable, 0..2);
        assert_eq!(c.writable, 2..3);
        assert_eq!((c.readable_len, c.writable_len, slices), (112, 200, 3));
    }

    #[test]
    fn rejects_bad_chains() {
        let mem = two_region_ram();
        let outside = walk_descs(&mem, &[desc(0x18000, 16, 0, 0)]);
        assert_eq!(
            outside,
            Err(ChainError::OutOfMemory {
                addr: 0x18000,
                len: 16
            })
        );
        let crossing_hole = walk_descs(&mem, &[desc(0xff00, 0x200, 0, 0)]);
        assert!(matches!(crossing_hole, Err(ChainError::OutOfMemory { .. })));
        let order = walk_descs(
            &mem,
            &[
                desc(0x1000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(0x2000, 16, 0, 0),
            ],
        );
        assert_eq!(order, Err(ChainError::ReadableAfterWritable));
        let bad_link = walk_descs(&mem, &[desc(0x1000, 16, VRING_DESC_F_NEXT, 99)]);
        assert_eq!(bad_link, Err(ChainError::Broken));
        let bad_indirect = walk_descs(&mem, &[desc(0x1000, 17, VRING_DESC_F_INDIRECT, 0)]);
        assert_eq!(bad_indirect, Err(ChainError::Broken));
    }

    /// "hello world" at 0x100 in `mem`, mapped as two slices: "hello" and " world".
    fn hello_world(mem: &GuestRam) -> Vec<Slice<'_>> {
        mem.write_slice(b"hello world", GuestAddress(0x100))
            .unwrap();
        let mut arena = Vec::new();
        map(mem, GuestAddress(0x100), 5, &mut arena).unwrap();
        map(mem, GuestAddress(0x105), 6, &mut arena).unwrap();
        arena
    }

    /// `peek` gives the bytes at the cursor only when one slice holds them all (at a slice's
    /// end, the next one), and does not move it.
    #[test]
    fn peek_reads_within_the_current_slice_only() {
        let mem = two_region_ram();
        let arena = hello_world(&mem);
        let mut c = Cursor::new(&arena);
        assert_eq!(c.peek::<5>(), Some(*b"hello"));
        assert_eq!(c.peek::<6>(), None, "crosses into the next slice");
        c.skip(5);
        assert_eq!(c.peek::<6>(), Some(*b" world"));
        assert_eq!(c.peek::<7>(), None, "past the end");
        let mut rest = [0u8; 6];
        assert_eq!(c.read(&mut rest), 6);
    }

    #[test]
    fn cursor_copies_across_slices() {
        let mem = two_region_ram();
        let arena = hello_world(&mem);
        let mut out = [0u8; 11];
        assert_eq!(Cursor::new(&arena).read(&mut out), 11);
        assert_eq!(&out, b"hello world");
        let mut c = Cursor::new(&arena);
        assert_eq!(c.skip(6), 6);
        let mut rest = [0u8; 10];
        assert_eq!(c.read(&mut rest), 5);
        let mut dst = Vec::new();
        map(&mem, GuestAddress(0x20000), 3, &mut dst).unwrap();
        map(&mem, GuestAddress(0x20010), 20, &mut dst).unwrap();
        let n = Cursor::new(&dst).copy_from_cursor(&mut Cursor::new(&arena), 11);
        assert_eq!(n, 11);
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(&got, b"hel");
        let mut got = [0u8; 8];
        mem.read_slice(&mut got, GuestAddress(0x20010)).unwrap();
        assert_eq!(&got, b"lo world");
        let mut iov = Vec::new();
        let mut c = Cursor::new(&dst);
        c.skip(2);
        assert_eq!(c.iovecs(10, &mut iov), 10);
        assert_eq!(
            iov.iter().map(|v| v.iov_len).collect::<Vec<_>>(),
            vec![1, 9]
        );
        assert_eq!(Cursor::new(&dst).write(b"0123456789012345678901234"), 23);
    }

    fn any_desc() -> impl Strategy<Value = RawDescriptor> {
        (
            prop_oneof![Just(0x1000u64), Just(0xff00), Just(0x18000), Just(0x2fff0)],
            prop_oneof![Just(0u32), Just(1), Just(0x100), Just(0x200), any::<u32>()],
            prop_oneof![
                Just(0),
                Just(VRING_DESC_F_WRITE),
                Just(VRING_DESC_F_NEXT),
                Just(VRING_DESC_F_INDIRECT),
                Just(VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
            ],
            0u16..4,
        )
            .prop_map(|(addr, len, flags, next)| desc(addr, len, flags, next))
    }

    proptest! {
        /// `walk_head`'s one-descriptor fast path and the general walk agree on every chain:
        /// the same result (or error) and the same slices.
        #[test]
        fn walk_head_walks_like_walk(
            table in proptest::collection::vec(any_desc(), 4),
            head in 0u16..5,
        ) {
            let mem = two_region_ram();
            let vq = MockSplitQueue::new(&mem, 16);
            for (i, d) in table.iter().enumerate() {
                vq.desc_table().store(i as u16, *d).unwrap();
            }
            let q: Queue = vq.create_queue().unwrap();
            let batch = Batch::new(&q, GuestView::new(&mem));
            let (mut fast, mut general) = (Vec::new(), Vec::new());
            let ours = walk_head(&batch, head, &mem, &mut fast);
            let theirs = walk(head, batch.chain(head), &mem, &mut general);
            prop_assert_eq!(&ours, &theirs);
            if ours.is_ok() {
                let spans = |a: &[Slice<'_>]| -> Vec<(usize, usize)> {
                    a.iter().map(|s| (s.ptr_guard().as_ptr() as usize, s.len())).collect()
                };
                prop_assert_eq!(spans(&fast), spans(&general));
            }
        }
    }
}
