//! The back end of a ring (ring.h's `struct <name>_back_ring`): consumes requests, produces
//! responses into the same slots.

use super::notify::{final_check, load_producer, publish, Index};
use super::{Result, RingError, SharedRing};
use crate::mapping::RingSlot;

/// The back end's private state over a [`SharedRing`]: `req_cons` (next request to consume) and
/// `rsp_prod_pvt` (responses written but not yet published).
#[derive(Debug)]
pub struct BackRing<Req, Rsp> {
    ring: SharedRing<Req, Rsp>,
    /// Next request to consume.
    req_cons: u32,
    /// Next response slot to fill.
    rsp_prod_pvt: u32,
    /// Last `rsp_prod` this end published (private: never read back from the shared page).
    rsp_prod: u32,
    /// Last validated `req_prod`, so popping a batch reads the shared index once.
    req_prod: u32,
}

/// Number of requests available given the peer's `req_prod`, or an error if it is behind
/// `req_cons` or more than a ring's worth ahead of the responses (`RING_REQUEST_PROD_OVERFLOW`).
fn check_requests(req_prod: u32, req_cons: u32, rsp_prod_pvt: u32, size: u32) -> Result<u32> {
    let outstanding = req_prod.wrapping_sub(rsp_prod_pvt);
    let consumed = req_cons.wrapping_sub(rsp_prod_pvt);
    if outstanding > size || outstanding < consumed {
        return Err(RingError::RequestOverflow {
            req_prod,
            req_cons,
            rsp_prod_pvt,
            size,
        });
    }
    Ok(outstanding - consumed)
}

impl<Req: RingSlot, Rsp: RingSlot> BackRing<Req, Rsp> {
    pub(super) fn new(ring: SharedRing<Req, Rsp>, start: u32) -> Self {
        Self {
            ring,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod: start,
            req_prod: start,
        }
    }

    /// Number of slots in the ring.
    pub fn size(&self) -> u32 {
        self.ring.size()
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS`: requests published by the front end and not yet popped.
    ///
    /// # Errors
    /// [`RingError::RequestOverflow`] if the front end's `req_prod` is invalid.
    pub fn unconsumed_requests(&mut self) -> Result<u32> {
        let check = self.checker();
        let (prod, n) = load_producer(&self.ring, Index::ReqProd, check)?;
        self.req_prod = prod;
        Ok(n)
    }

    /// Copies the next request out of its slot (once: the front end may rewrite the slot, we
    /// never look at it again) and consumes it; `None` if there is none.
    ///
    /// # Errors
    /// [`RingError::RequestOverflow`] if the front end's `req_prod` is invalid.
    pub fn pop_request(&mut self) -> Result<Option<Req>> {
        if self.req_cons == self.req_prod && self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let req = self.ring.read_slot(self.req_cons)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes `rsp` into the slot of the oldest consumed, unanswered request
    /// (`RING_GET_RESPONSE(rsp_prod_pvt++)`). The front end sees it only after
    /// [`BackRing::push_responses_and_check_notify`].
    ///
    /// # Errors
    /// [`RingError::NoRequestToAnswer`] if every consumed request already has a response.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<()> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        self.ring.write_slot(self.rsp_prod_pvt, rsp)?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes every response pushed so far and returns
    /// true if the front end asked to be notified (its `rsp_event` lies among them).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_prod;
        self.rsp_prod = self.rsp_prod_pvt;
        publish(
            &self.ring,
            Index::RspProd,
            Index::RspEvent,
            old,
            self.rsp_prod,
        )
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: true if requests are waiting; otherwise sets
    /// `req_event = req_cons + 1` so the front end notifies on the next request, and checks
    /// again. Sleep on the event channel only after this returned false.
    ///
    /// # Errors
    /// [`RingError::RequestOverflow`] if the front end's `req_prod` is invalid.
    pub fn final_check_for_requests(&mut self) -> Result<bool> {
        let check = self.checker();
        let (prod, n) = final_check(
            &self.ring,
            Index::ReqProd,
            Index::ReqEvent,
            self.req_cons.wrapping_add(1),
            check,
        )?;
        self.req_prod = prod;
        Ok(n != 0)
    }

    /// Validation of a `req_prod` value against the current private indices.
    fn checker(&self) -> impl Fn(u32) -> Result<u32> {
        let (cons, rsp, size) = (self.req_cons, self.rsp_prod_pvt, self.ring.size());
        move |p| check_requests(p, cons, rsp, size)
    }
}
