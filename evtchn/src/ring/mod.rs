//! Xen's request/response ring (xen/include/public/io/ring.h) on a [`SharedRegion`].
//!
//! Layout of the shared region (ring.h's `struct <name>_sring`), all indices little-endian `u32`:
//!
//! | bytes      | field                                                     |
//! |------------|-----------------------------------------------------------|
//! | 0..4       | `req_prod`: requests published by the front end            |
//! | 4..8       | `req_event`: the back end wants a notification when `req_prod` passes this |
//! | 8..12      | `rsp_prod`: responses published by the back end            |
//! | 12..16     | `rsp_event`: the front end wants a notification when `rsp_prod` passes this |
//! | 16..64     | padding (ring.h keeps private bytes here; pvio leaves them zero) |
//! | 64..       | `ring[N]`: slots, each a union of one request and one response |
//!
//! `N` is the largest power of two such that `N` slots fit after the header ([`SharedRing::size`]).
//! Indices are free-running `u32` and wrap; slot = `idx & (N - 1)`.
//!
//! The front end ([`FrontRing`]) keeps `req_prod_pvt` and `rsp_cons` privately; the back end
//! ([`BackRing`]) keeps `req_cons` and `rsp_prod_pvt`. Producers batch entries privately, then
//! publish them with `push_*_and_check_notify`, which says whether the peer asked to be woken
//! (`*_event`). A consumer that runs out of work calls `final_check_for_*`, which re-arms
//! `*_event` and checks once more, so no wake-up is lost between "nothing to do" and sleeping.
//!
//! The peer is untrusted: every index read from the shared header is validated (more
//! outstanding entries than `N`, or an index that moves backwards, is
//! [`RingError::RequestOverflow`] / [`RingError::ResponseOverflow`]), slot positions are always
//! masked, and each slot is copied out exactly once.

mod back;
mod front;
mod notify;

use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU32, Ordering};

pub use back::BackRing;
pub use front::FrontRing;
use notify::{Index, RingIndices};

use crate::mapping::{MappingError, RingSlot, SharedRegion};

/// Size of the ring header in bytes: entries start at this offset (ring.h: the four indices, then
/// private and padding bytes up to 64).
pub const RING_HEADER_SIZE: usize = 64;
/// Byte offset of `req_prod` in the shared header.
pub const REQ_PROD_OFFSET: usize = 0;
/// Byte offset of `req_event` in the shared header.
pub const REQ_EVENT_OFFSET: usize = 4;
/// Byte offset of `rsp_prod` in the shared header.
pub const RSP_PROD_OFFSET: usize = 8;
/// Byte offset of `rsp_event` in the shared header.
pub const RSP_EVENT_OFFSET: usize = 12;

/// Errors of the ring module.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The slot type does not fit the region: zero-sized, aligned above 64 bytes, or no slot fits
    /// after the header.
    #[error("a {slot_size}-byte slot (align {slot_align}) does not fit a {region_len}-byte ring")]
    Layout {
        /// `max(size_of::<Req>(), size_of::<Rsp>())` in bytes.
        slot_size: usize,
        /// `max(align_of::<Req>(), align_of::<Rsp>())` in bytes.
        slot_align: usize,
        /// Size of the shared region in bytes.
        region_len: usize,
    },
    /// No free slot for another request: wait for responses.
    #[error("ring is full")]
    Full,
    /// `push_response` without a consumed request left to answer.
    #[error("no consumed request is waiting for a response")]
    NoRequestToAnswer,
    /// The front end published a `req_prod` that is behind `req_cons` or more than `size` ahead
    /// of the responses (ring.h's `RING_REQUEST_PROD_OVERFLOW`).
    #[error(
        "peer's req_prod {req_prod} is invalid (req_cons {req_cons}, rsp_prod_pvt {rsp_prod_pvt}, \
         ring size {size})"
    )]
    RequestOverflow {
        /// The value read from the shared header.
        req_prod: u32,
        /// The back end's private consumer index.
        req_cons: u32,
        /// The back end's private response producer index.
        rsp_prod_pvt: u32,
        /// Slots in the ring.
        size: u32,
    },
    /// The back end published a `rsp_prod` that is behind `rsp_cons` or ahead of the published
    /// requests.
    #[error("peer's rsp_prod {rsp_prod} is invalid (rsp_cons {rsp_cons}, req_prod {req_prod})")]
    ResponseOverflow {
        /// The value read from the shared header.
        rsp_prod: u32,
        /// The front end's private consumer index.
        rsp_cons: u32,
        /// The front end's published request producer index.
        req_prod: u32,
    },
    /// A shared-memory access failed (cannot happen for a validated layout; kept as an error
    /// rather than a panic).
    #[error("shared memory access failed")]
    Mapping(#[from] MappingError),
}

/// Result type of the ring module.
pub type Result<T> = std::result::Result<T, RingError>;

/// A ring.h shared ring of `Req` requests and `Rsp` responses laid over a [`SharedRegion`].
///
/// This is the shared part only; turn it into the private state of one end with
/// [`SharedRing::front`] or [`SharedRing::back`].
#[derive(Debug)]
pub struct SharedRing<Req, Rsp> {
    region: SharedRegion,
    size: u32,
    stride: usize,
    _slots: PhantomData<fn(Req) -> Rsp>,
}

impl<Req: RingSlot, Rsp: RingSlot> SharedRing<Req, Rsp> {
    /// Lays a ring over `region` without writing to it (`__RING_SIZE`: the slot stride is
    /// `max(size_of::<Req>(), size_of::<Rsp>())` rounded up to the larger alignment).
    ///
    /// # Errors
    /// [`RingError::Layout`] if no slot fits or a slot type is zero-sized or aligned above 64.
    pub fn new(region: SharedRegion) -> Result<Self> {
        let slot_size = size_of::<Req>().max(size_of::<Rsp>());
        let slot_align = align_of::<Req>().max(align_of::<Rsp>());
        let layout_err = RingError::Layout {
            slot_size,
            slot_align,
            region_len: region.len(),
        };
        if slot_size == 0 || slot_align > RING_HEADER_SIZE {
            return Err(layout_err);
        }
        let stride = slot_size.next_multiple_of(slot_align);
        let fit = (region.len() - RING_HEADER_SIZE) / stride;
        if fit == 0 {
            return Err(layout_err);
        }
        // Largest power of two <= fit; the region is at most 1 MiB so this fits a u32.
        let size = 1u32 << fit.ilog2();
        Ok(Self {
            region,
            size,
            stride,
            _slots: PhantomData,
        })
    }

    /// ring.h's `SHARED_RING_INIT`, generalised to a start index: sets `req_prod` and `rsp_prod`
    /// to `start` and both event indices to `start + 1`. The front end calls it on a fresh region
    /// before it publishes the ring-ref (Xen always starts at 0; another start models a ring
    /// reattached after free-running indices moved on, as with `FRONT_RING_ATTACH`).
    pub fn init(&self, start: u32) {
        for (index, value) in [
            (Index::ReqProd, start),
            (Index::RspProd, start),
            (Index::ReqEvent, start.wrapping_add(1)),
            (Index::RspEvent, start.wrapping_add(1)),
        ] {
            // Release: ordered after any earlier writes this process made to the slots. The peer
            // first learns of the ring through the ring-ref hand-off (a syscall), which orders
            // these stores before anything it reads.
            self.store(index, value, Ordering::Release);
        }
    }

    /// Number of slots `N` (a power of two).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The front end's private state over this ring (`FRONT_RING_ATTACH` at `start`;
    /// `FRONT_RING_INIT` is `start = 0`). `start` must be the ring's current `req_prod`.
    pub fn front(self, start: u32) -> FrontRing<Req, Rsp> {
        FrontRing::new(self, start)
    }

    /// The back end's private state over this ring (`BACK_RING_ATTACH` at `start`;
    /// `BACK_RING_INIT` is `start = 0`). `start` must be the ring's current `rsp_prod`.
    pub fn back(self, start: u32) -> BackRing<Req, Rsp> {
        BackRing::new(self, start)
    }

    /// Byte offset of the slot for free-running index `idx`.
    fn slot_offset(&self, idx: u32) -> usize {
        RING_HEADER_SIZE + (idx & (self.size - 1)) as usize * self.stride
    }

    /// Copies the slot for `idx` out as a `T` (once: no double fetch).
    fn read_slot<T: RingSlot>(&self, idx: u32) -> Result<T> {
        Ok(self.region.read_obj(self.slot_offset(idx))?)
    }

    /// Copies `val` into the slot for `idx`.
    fn write_slot<T: RingSlot>(&self, idx: u32, val: &T) -> Result<()> {
        Ok(self.region.write_obj(self.slot_offset(idx), val)?)
    }

    fn index(&self, i: Index) -> &AtomicU32 {
        self.region
            .atomic_u32(i.offset())
            .expect("ring header lies in the region: SharedRing::new checked its size")
    }
}

impl<Req: RingSlot, Rsp: RingSlot> RingIndices for SharedRing<Req, Rsp> {
    fn load(&self, i: Index, order: Ordering) -> u32 {
        self.index(i).load(order)
    }

    fn store(&self, i: Index, value: u32, order: Ordering) {
        self.index(i).store(value, order);
    }

    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::PAGE_SIZE;

    #[test]
    fn size_is_the_largest_power_of_two_that_fits() {
        let r = SharedRegion::create("t", 1).unwrap();
        // 64-byte slots: (4096 - 64) / 64 = 63 -> 32.
        assert_eq!(SharedRing::<[u8; 64], u64>::new(r).unwrap().size(), 32);
        let r = SharedRegion::create("t", 1).unwrap();
        // blkif-like 112-byte slots: 36 fit -> 32.
        assert_eq!(SharedRing::<[u64; 14], u32>::new(r).unwrap().size(), 32);
        let r = SharedRegion::create("t", 4).unwrap();
        assert_eq!(SharedRing::<u32, [u8; 3]>::new(r).unwrap().size(), 2048);
        let r = SharedRegion::create("t", 1).unwrap();
        assert!(matches!(
            SharedRing::<[u8; PAGE_SIZE], u8>::new(r),
            Err(RingError::Layout { .. })
        ));
    }

    #[test]
    fn init_sets_producers_and_events() {
        let r = SharedRegion::create("t", 1).unwrap();
        let view = SharedRegion::map(r.fd().try_clone_to_owned().unwrap()).unwrap();
        let ring = SharedRing::<u64, u64>::new(r).unwrap();
        ring.init(u32::MAX);
        assert_eq!(view.read_obj::<u32>(REQ_PROD_OFFSET).unwrap(), u32::MAX);
        assert_eq!(view.read_obj::<u32>(RSP_PROD_OFFSET).unwrap(), u32::MAX);
        assert_eq!(view.read_obj::<u32>(REQ_EVENT_OFFSET).unwrap(), 0);
        assert_eq!(view.read_obj::<u32>(RSP_EVENT_OFFSET).unwrap(), 0);
    }
}
