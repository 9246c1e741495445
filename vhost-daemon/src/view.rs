//! A borrowed view of one guest-memory snapshot for the data path: every access finds its
//! region once and reaches the mapping through the region's host address, with a dirty-log
//! bitmap that borrows the region's instead of cloning it.
//!
//! vm-memory's `GuestMemoryMmap` hands out slices whose bitmap is an owned copy of the region's
//! ([`DirtyBitmap`]: one `Arc` clone and drop per access), so every descriptor read, header
//! read, status byte and used entry paid atomic reference counting on cache lines that all
//! queue threads share. [`GuestView`] implements vm-memory's [`GuestMemory`] over the same
//! [`GuestRam`], so virtio-queue's descriptor walk and used ring, and vm-memory's `Bytes`
//! accessors, run on it unchanged; its slices carry a [`RefSlice`] of the region's bitmap.
//! Writes through it mark the dirty log exactly as vm-memory's own slices do (after the
//! write, only while the log is armed, see [`crate::dirty`]).
//!
//! Everything is bounds-checked: an address outside every region, or a range that runs past
//! the last region it touches, yields an error item and ends the iteration, as vm-memory's
//! `GuestMemoryBackendSliceIterator` does.

use std::cell::Cell;
use std::iter::FusedIterator;
use std::marker::PhantomData;

use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Address, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress, MmapRegion, Permissions, VolatileSlice,
};

use crate::memory::{DirtyBitmap, GuestRam};

/// The bitmap of a [`GuestView`] slice: the region's [`DirtyBitmap`], borrowed, at an offset.
pub type ViewBitmap<'a> = RefSlice<'a, DirtyBitmap>;

/// A piece of guest memory inside one region, as a [`GuestView`] hands it out.
pub type ViewSlice<'s, 'a> = VolatileSlice<'s, ViewBitmap<'a>>;

/// Guest memory of one snapshot (a [`crate::memory::GuestRamGuard`] the caller holds) for the
/// data path. Cheap to copy: one reference.
#[derive(Clone, Copy, Debug)]
pub struct GuestView<'a> {
    ram: &'a GuestRam,
}

impl<'a> GuestView<'a> {
    /// A view of `ram`.
    pub fn new(ram: &'a GuestRam) -> GuestView<'a> {
        GuestView { ram }
    }

    /// The longest part of `addr..addr + len` that lies in one region, from `addr`: `None` when
    /// `addr` is in no region.
    #[inline]
    pub fn slice_at(&self, addr: GuestAddress, len: usize) -> Option<ViewSlice<'a, 'a>> {
        slice_in(self.ram.find_region(addr)?, addr, len)
    }

    /// Marks `addr..addr + len` dirty in the front-end's log (while it is armed), for bytes a
    /// device wrote without this view (the kernel filling an iovec). Parts outside guest memory
    /// are ignored.
    pub fn mark_dirty(&self, addr: GuestAddress, len: usize) {
        for slice in self.slices(addr, len).map_while(Result::ok) {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }

    /// The slices that together cover `addr..addr + count`, region by region.
    pub fn slices(&self, addr: GuestAddress, count: usize) -> Slices<'a, 'a> {
        Slices {
            view: *self,
            addr,
            count,
            _slices: PhantomData,
        }
    }
}

/// A region of guest memory, as [`GuestRam`] holds it.
type Region = GuestRegionMmap<DirtyBitmap>;

/// The longest part of `addr..addr + len` that lies in `region`, from `addr`; `region` holds
/// `addr` (as `find_region` answers). `None` when the region has no host address for it.
#[inline]
fn slice_in(region: &Region, addr: GuestAddress, len: usize) -> Option<ViewSlice<'_, '_>> {
    let offset = addr
        .raw_value()
        .checked_sub(region.start_addr().raw_value())?;
    let room = region.len().checked_sub(offset)?;
    let count = usize::try_from(room).map_or(len, |room| room.min(len));
    let host = region.get_host_address(MemoryRegionAddress(offset)).ok()?;
    let mapping: &MmapRegion<DirtyBitmap> = region;
    // `offset < region.len()` (get_host_address checked it), the size of a mapping in this
    // address space.
    let bitmap = RefSlice::new(mapping.bitmap(), offset as usize);
    // SAFETY: `host..host + count` lies inside the region's mapping (offset + count <= region
    // length), which the snapshot the region is borrowed from keeps mapped; guest memory is
    // shared with the guest and accessed through volatile slices only, as vm-memory's own.
    Some(unsafe { VolatileSlice::with_bitmap(host, count, bitmap, None) })
}

/// A [`GuestView`] for one batch of buffers that remembers the region its last lookup found
/// and tries it first: a driver's buffers nearly always lie in one region (a guest's RAM, a
/// DPDK hugepage file), so a batch looks a region up once instead of searching the region
/// list per buffer. Answers as [`GuestView::slice_at`].
#[derive(Debug)]
pub struct RegionMemo<'a> {
    view: GuestView<'a>,
    last: Cell<Option<&'a Region>>,
}

impl<'a> RegionMemo<'a> {
    /// A memo over `view` that remembers nothing yet.
    pub fn new(view: GuestView<'a>) -> RegionMemo<'a> {
        RegionMemo {
            view,
            last: Cell::new(None),
        }
    }

    /// As [`GuestView::slice_at`]; the region found is remembered for the next lookup.
    #[inline]
    pub fn slice_at(&self, addr: GuestAddress, len: usize) -> Option<ViewSlice<'a, 'a>> {
        let region = match self.last.get() {
            Some(r) if r.start_addr() <= addr && addr <= r.last_addr() => r,
            _ => {
                let r = self.view.ram.find_region(addr)?;
                self.last.set(Some(r));
                r
            }
        };
        slice_in(region, addr, len)
    }
}

/// Iterator over the [`ViewSlice`]s of a range ([`GuestView::slices`]): an error item (and
/// then the end) where the range leaves guest memory or its address overflows.
#[derive(Debug)]
pub struct Slices<'s, 'a> {
    view: GuestView<'a>,
    addr: GuestAddress,
    count: usize,
    _slices: PhantomData<&'s ()>,
}

impl<'s, 'a: 's> Iterator for Slices<'s, 'a> {
    type Item = Result<ViewSlice<'s, 'a>, GuestMemoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.count == 0 {
            return None;
        }
        let Some(slice) = self.view.slice_at(self.addr, self.count) else {
            self.count = 0;
            return Some(Err(GuestMemoryError::InvalidGuestAddress(self.addr)));
        };
        self.count -= slice.len();
        if self.count > 0 {
            match self.addr.checked_add(slice.len() as u64) {
                Some(next) => self.addr = next,
                None => {
                    self.count = 0;
                    return Some(Err(GuestMemoryError::GuestAddressOverflow));
                }
            }
        }
        Some(Ok(slice))
    }
}

impl<'s, 'a: 's> FusedIterator for Slices<'s, 'a> {}

impl<'s, 'a: 's> GuestMemorySliceIterator<'s, ViewBitmap<'a>> for Slices<'s, 'a> {}

impl<'a> GuestMemory for GuestView<'a> {
    type PhysicalMemory = GuestRam;
    type Bitmap = ViewBitmap<'a>;

    fn check_range(&self, addr: GuestAddress, count: usize, _access: Permissions) -> bool {
        self.slices(addr, count).all(|s| s.is_ok())
    }

    fn get_slices<'s>(
        &'s self,
        addr: GuestAddress,
        count: usize,
        _access: Permissions,
    ) -> Result<
        impl GuestMemorySliceIterator<'s, <Self::Bitmap as WithBitmapSlice<'s>>::S>,
        GuestMemoryError,
    > {
        Ok(Slices::<'s, 'a> {
            view: *self,
            addr,
            count,
            _slices: PhantomData,
        })
    }

    fn physical_memory(&self) -> Option<&GuestRam> {
        Some(self.ram)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    /// Two regions with a hole between them: 0x1000..0x3000 and 0x4000..0x5000.
    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[
            (GuestAddress(0x1000), 0x2000),
            (GuestAddress(0x4000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn reads_and_writes_match_vm_memory() {
        let ram = ram();
        let view = GuestView::new(&ram);
        view.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x2ffc))
            .unwrap_err();
        view.write_obj(0x1122_3344u32, GuestAddress(0x2ffc))
            .unwrap();
        assert_eq!(
            ram.read_obj::<u32>(GuestAddress(0x2ffc)).unwrap(),
            0x1122_3344
        );
        ram.write_slice(&[7; 16], GuestAddress(0x4100)).unwrap();
        let mut buf = [0u8; 16];
        view.read_slice(&mut buf, GuestAddress(0x4100)).unwrap();
        assert_eq!(buf, [7; 16]);
    }

    #[test]
    fn the_region_memo_answers_as_the_view_does() {
        let ram = ram();
        let view = GuestView::new(&ram);
        let memo = RegionMemo::new(view);
        // Into the first region, then the second, back, into the hole, past the end, and
        // ranges that run out of their region: each answer as the view's own.
        for (addr, len) in [
            (0x1000, 0x10),
            (0x2ff0, 0x40),
            (0x4800, 0x10),
            (0x4ff0, 0x40),
            (0x1800, 8),
            (0x3000, 1),
            (0x4800, 8),
            (0x5000, 1),
            (0x0fff, 1),
        ] {
            let ours = memo.slice_at(GuestAddress(addr), len);
            let theirs = view.slice_at(GuestAddress(addr), len);
            assert_eq!(
                ours.map(|s| (s.ptr_guard().as_ptr(), s.len())),
                theirs.map(|s| (s.ptr_guard().as_ptr(), s.len())),
                "{addr:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn ranges_are_checked_against_every_region() {
        let ram = ram();
        let view = GuestView::new(&ram);
        let check = |addr, len| view.check_range(GuestAddress(addr), len, Permissions::Read);
        assert!(check(0x1000, 0x2000));
        assert!(!check(0x1000, 0x2001), "runs into the hole");
        assert!(!check(0x3000, 1), "in the hole");
        assert!(!check(0x4fff, 2), "past the last region");
        assert!(!check(u64::MAX, 2), "wraps around");
        assert!(check(0x4fff, 1));
        assert!(check(0x9999, 0), "an empty range is always inside");
        let pieces: Vec<_> = view
            .slices(GuestAddress(0x1f00), 0x200)
            .map(|s| s.unwrap().len())
            .collect();
        assert_eq!(pieces, [0x200]);
    }

    #[test]
    fn ranges_across_adjacent_regions_are_split() {
        let ram =
            GuestRam::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
                .unwrap();
        let view = GuestView::new(&ram);
        let pieces: Vec<_> = view
            .slices(GuestAddress(0xf00), 0x200)
            .map(|s| s.unwrap().len())
            .collect();
        assert_eq!(pieces, [0x100, 0x100]);
        view.write_slice(&[9; 0x200], GuestAddress(0xf00)).unwrap();
        let mut buf = [0u8; 0x200];
        ram.read_slice(&mut buf, GuestAddress(0xf00)).unwrap();
        assert!(buf.iter().all(|&b| b == 9));
    }
}
