//! The front end of a ring (ring.h's `struct <name>_front_ring`): produces requests, consumes
//! responses.

use super::notify::{final_check, load_producer, publish, Index};
use super::{Result, RingError, SharedRing};
use crate::mapping::RingSlot;

/// The front end's private state over a [`SharedRing`]: `req_prod_pvt` (requests written but not
/// yet published) and `rsp_cons` (next response to consume).
#[derive(Debug)]
pub struct FrontRing<Req, Rsp> {
    ring: SharedRing<Req, Rsp>,
    /// Next request slot to fill.
    req_prod_pvt: u32,
    /// Last `req_prod` this end published. Kept privately so a peer scribbling on the header
    /// cannot change what we believe we published.
    req_prod: u32,
    /// Next response to consume.
    rsp_cons: u32,
    /// Last validated `rsp_prod`, so popping a batch reads the shared index once.
    rsp_prod: u32,
}

/// Number of responses available given the peer's `rsp_prod`, or an error if it is behind
/// `rsp_cons` or ahead of the requests we published.
fn check_responses(rsp_prod: u32, rsp_cons: u32, req_prod: u32) -> Result<u32> {
    let available = rsp_prod.wrapping_sub(rsp_cons);
    if available > req_prod.wrapping_sub(rsp_cons) {
        return Err(RingError::ResponseOverflow {
            rsp_prod,
            rsp_cons,
            req_prod,
        });
    }
    Ok(available)
}

impl<Req: RingSlot, Rsp: RingSlot> FrontRing<Req, Rsp> {
    pub(super) fn new(ring: SharedRing<Req, Rsp>, start: u32) -> Self {
        Self {
            ring,
            req_prod_pvt: start,
            req_prod: start,
            rsp_cons: start,
            rsp_prod: start,
        }
    }

    /// Number of slots in the ring.
    pub fn size(&self) -> u32 {
        self.ring.size()
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`): size minus requests not yet answered
    /// and consumed.
    pub fn free_requests(&self) -> u32 {
        self.ring.size() - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// `RING_FULL`: no slot is free for a request.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the next free slot (`RING_GET_REQUEST(req_prod_pvt++)`). The peer sees
    /// it only after [`FrontRing::push_requests_and_check_notify`].
    ///
    /// # Errors
    /// [`RingError::Full`] if no slot is free: consume responses first.
    pub fn push_request(&mut self, req: &Req) -> Result<()> {
        if self.is_full() {
            return Err(RingError::Full);
        }
        self.ring.write_slot(self.req_prod_pvt, req)?;
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes every request pushed so far and returns
    /// true if the back end asked to be notified (its `req_event` lies among them). Notify the
    /// back end's event channel when this returns true.
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_prod;
        self.req_prod = self.req_prod_pvt;
        publish(
            &self.ring,
            Index::ReqProd,
            Index::ReqEvent,
            old,
            self.req_prod,
        )
    }

    /// `RING_HAS_UNCONSUMED_RESPONSES`: responses published by the back end and not yet popped.
    ///
    /// # Errors
    /// [`RingError::ResponseOverflow`] if the back end's `rsp_prod` is invalid.
    pub fn unconsumed_responses(&mut self) -> Result<u32> {
        let check = self.checker();
        let (prod, n) = load_producer(&self.ring, Index::RspProd, check)?;
        self.rsp_prod = prod;
        Ok(n)
    }

    /// Copies the next response out of its slot (once) and consumes it; `None` if there is none.
    ///
    /// # Errors
    /// [`RingError::ResponseOverflow`] if the back end's `rsp_prod` is invalid.
    pub fn pop_response(&mut self) -> Result<Option<Rsp>> {
        if self.rsp_cons == self.rsp_prod && self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.ring.read_slot(self.rsp_cons)?;
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: true if responses are waiting; otherwise sets
    /// `rsp_event = rsp_cons + 1` so the back end notifies on the next response, and checks again.
    /// Sleep on the event channel only after this returned false.
    ///
    /// # Errors
    /// [`RingError::ResponseOverflow`] if the back end's `rsp_prod` is invalid.
    pub fn final_check_for_responses(&mut self) -> Result<bool> {
        self.final_check_for_responses_after(1)
    }

    /// [`FrontRing::final_check_for_responses`] that asks to be woken only once `count` more
    /// responses are published (`rsp_event = rsp_cons + count`), the hold-off netfront uses to
    /// batch completions (it waits for half of the requests in flight). `count` is clamped to
    /// `1..=in_flight()` so the wake-up is certain to come once the back end answers every
    /// request.
    ///
    /// # Errors
    /// [`RingError::ResponseOverflow`] if the back end's `rsp_prod` is invalid.
    pub fn final_check_for_responses_after(&mut self, count: u32) -> Result<bool> {
        let count = count.clamp(1, self.in_flight().max(1));
        let check = self.checker();
        let (prod, n) = final_check(
            &self.ring,
            Index::RspProd,
            Index::RspEvent,
            self.rsp_cons.wrapping_add(count),
            check,
        )?;
        self.rsp_prod = prod;
        Ok(n != 0)
    }

    /// Validation of a `rsp_prod` value against the current private indices.
    fn checker(&self) -> impl Fn(u32) -> Result<u32> {
        let (cons, req_prod) = (self.rsp_cons, self.req_prod);
        move |p| check_responses(p, cons, req_prod)
    }

    /// Requests pushed and published but not yet answered and consumed.
    pub fn in_flight(&self) -> u32 {
        self.req_prod.wrapping_sub(self.rsp_cons)
    }
}
