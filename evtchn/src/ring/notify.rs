//! The index and notification-suppression protocol of ring.h, written once for both directions
//! (requests: front end produces; responses: back end produces) and generic over where the four
//! shared indices live, so the model-checking tests below run this very code on loom's atomics.
//!
//! The protocol is a store-buffering handshake. Producer: store `prod`, full fence, load
//! `event`. Consumer about to sleep: store `event`, full fence, load `prod`. With a full fence on
//! each side at least one of them sees the other's store, so either the producer notifies or the
//! consumer sees the new entries and does not sleep: no wake-up is lost.

use std::sync::atomic::Ordering;

/// One of the four shared indices of the ring header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Index {
    ReqProd,
    ReqEvent,
    RspProd,
    RspEvent,
}

impl Index {
    /// Byte offset in the shared header.
    pub(crate) fn offset(self) -> usize {
        match self {
            Index::ReqProd => super::REQ_PROD_OFFSET,
            Index::ReqEvent => super::REQ_EVENT_OFFSET,
            Index::RspProd => super::RSP_PROD_OFFSET,
            Index::RspEvent => super::RSP_EVENT_OFFSET,
        }
    }
}

/// Access to the four shared indices and a full memory barrier.
pub(crate) trait RingIndices {
    /// Atomically loads index `i`.
    fn load(&self, i: Index, order: Ordering) -> u32;
    /// Atomically stores `value` into index `i`.
    fn store(&self, i: Index, value: u32, order: Ordering);
    /// A full (sequentially consistent) fence: ring.h's `mb()`.
    fn full_fence(&self);
}

/// The producer half of `RING_PUSH_{REQUESTS,RESPONSES}_AND_CHECK_NOTIFY`: publishes `new` as
/// the producer index `prod` (previously published: `old`) and says whether the consumer asked to
/// be woken for an index in `(old, new]` through `event`.
pub(crate) fn publish<I: RingIndices>(
    h: &I,
    prod: Index,
    event: Index,
    old: u32,
    new: u32,
) -> bool {
    // Release: every slot written for indices [old, new) becomes visible before the new producer
    // index does (ring.h's wmb() before the store). Pairs with the Acquire in `load_producer`.
    h.store(prod, new, Ordering::Release);
    // Full fence: the producer-index store above is ordered before the event-index load below
    // (ring.h's mb()). Pairs with the fence in `final_check`.
    h.full_fence();
    // Relaxed: ordered after the store by the fence above; the value only decides whether to
    // notify (a garbage value from a hostile peer costs it a wake-up, nothing else).
    let event = h.load(event, Ordering::Relaxed);
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Loads the peer's producer index `prod` and validates it with `check`, which turns the raw
/// value into the number of unconsumed entries or an error. Returns `(prod, unconsumed)`.
pub(crate) fn load_producer<I: RingIndices, E>(
    h: &I,
    prod: Index,
    check: impl Fn(u32) -> Result<u32, E>,
) -> Result<(u32, u32), E> {
    // Acquire: pairs with the Release store in `publish`, so the slots up to this producer index
    // are visible before we copy them out (ring.h's rmb() after reading the producer).
    let p = h.load(prod, Ordering::Acquire);
    Ok((p, check(p)?))
}

/// `RING_FINAL_CHECK_FOR_{REQUESTS,RESPONSES}`: if nothing is unconsumed, asks the producer for a
/// notification when it publishes the entry before index `wake_at` (ring.h uses `cons + 1`: the
/// next entry) and checks once more. Returns `(prod, unconsumed)`; the caller may sleep only if
/// `unconsumed` is 0, and only if the producer is certain to reach `wake_at`.
pub(crate) fn final_check<I: RingIndices, E>(
    h: &I,
    prod: Index,
    event: Index,
    wake_at: u32,
    check: impl Fn(u32) -> Result<u32, E>,
) -> Result<(u32, u32), E> {
    let first = load_producer(h, prod, &check)?;
    if first.1 != 0 {
        return Ok(first);
    }
    // Relaxed: ordered before the re-check below by the fence that follows.
    h.store(event, wake_at, Ordering::Relaxed);
    // Full fence: the event-index store above is ordered before the producer-index load in the
    // re-check (ring.h's mb()). Pairs with the fence in `publish`: either the producer sees our
    // event index and notifies, or we see its new producer index here.
    h.full_fence();
    load_producer(h, prod, &check)
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Run with `RUSTFLAGS="--cfg loom" cargo test -p evtchn --release --lib loom`
    //! (about a second). Deleting the fence in `publish` makes loom report a deadlock here,
    //! i.e. a lost wake-up.
    use loom::sync::atomic::{fence, AtomicU32};
    use loom::sync::{Arc, Notify};
    use loom::thread;

    use super::*;

    /// The four indices as loom atomics; `fence` is loom's.
    struct LoomIndices([AtomicU32; 4]);

    impl LoomIndices {
        fn new() -> Self {
            // SHARED_RING_INIT: producers 0, events 1.
            Self([
                AtomicU32::new(0),
                AtomicU32::new(1),
                AtomicU32::new(0),
                AtomicU32::new(1),
            ])
        }
        fn cell(&self, i: Index) -> &AtomicU32 {
            &self.0[i.offset() / 4]
        }
    }

    impl RingIndices for LoomIndices {
        fn load(&self, i: Index, order: Ordering) -> u32 {
            self.cell(i).load(order)
        }
        fn store(&self, i: Index, value: u32, order: Ordering) {
            self.cell(i).store(value, order);
        }
        fn full_fence(&self) {
            fence(Ordering::SeqCst);
        }
    }

    /// One producer publishes `total` entries in `batches`, notifying only when `publish` says
    /// so; the consumer drains, runs the final check and sleeps on a Notify (a binary semaphore,
    /// like an eventfd: a notify before the wait is not lost). If a wake-up were lost the consumer
    /// would sleep forever and loom reports a deadlock.
    fn no_lost_wakeup(batches: &'static [u32]) {
        let mut model = loom::model::Builder::new();
        // Bounded preemption keeps the search to minutes; lost wake-ups in this protocol need
        // only one or two preemptions between a store and the fence.
        model.preemption_bound = Some(3);
        model.check(move || {
            let idx = Arc::new(LoomIndices::new());
            let doorbell = Arc::new(Notify::new());
            let total: u32 = batches.iter().sum();

            let producer = {
                let idx = idx.clone();
                let doorbell = doorbell.clone();
                thread::spawn(move || {
                    let mut published = 0u32;
                    for b in batches {
                        let new = published + b;
                        if publish(&*idx, Index::ReqProd, Index::ReqEvent, published, new) {
                            doorbell.notify();
                        }
                        published = new;
                    }
                })
            };

            let mut cons = 0u32;
            let check = |p: u32, cons: u32| -> Result<u32, ()> { Ok(p.wrapping_sub(cons)) };
            while cons != total {
                let (_, n) = load_producer(&*idx, Index::ReqProd, |p| check(p, cons)).unwrap();
                cons += n;
                if cons == total {
                    break;
                }
                let (_, n) = final_check(&*idx, Index::ReqProd, Index::ReqEvent, cons + 1, |p| {
                    check(p, cons)
                })
                .unwrap();
                if n == 0 {
                    doorbell.wait();
                }
            }
            producer.join().unwrap();
        });
    }

    #[test]
    fn loom_no_lost_wakeup_single_entries() {
        no_lost_wakeup(&[1, 1, 1]);
    }

    #[test]
    fn loom_no_lost_wakeup_batches() {
        no_lost_wakeup(&[2, 1]);
    }
}
