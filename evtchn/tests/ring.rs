//! SharedRing tests in one process: streaming between two threads over two mappings of one
//! memfd, index wrap-around properties, and a hostile peer.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::{make_req, ring_channel, run_back, run_front, Req, Rng, Rsp};
use evtchn::ring::{REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RSP_EVENT_OFFSET, RSP_PROD_OFFSET};
use evtchn::{BackRing, Broker, FrontRing, RingError, SharedRegion, SharedRing};
use proptest::prelude::*;

/// A front and a back ring over two separate mappings of one fresh region, both at `start`.
fn ring_pair<Q: evtchn::RingSlot, S: evtchn::RingSlot>(
    pages: usize,
    start: u32,
) -> (FrontRing<Q, S>, BackRing<Q, S>, SharedRegion) {
    let region = SharedRegion::create("test-ring", pages).unwrap();
    let back_map = SharedRegion::map(region.fd().try_clone_to_owned().unwrap()).unwrap();
    let spy = SharedRegion::map(region.fd().try_clone_to_owned().unwrap()).unwrap();
    let shared = SharedRing::new(region).unwrap();
    shared.init(start);
    (
        shared.front(start),
        SharedRing::new(back_map).unwrap().back(start),
        spy,
    )
}

#[test]
fn two_threads_stream_two_million_requests_in_order() {
    let broker = Broker::new();
    let (mut front, mut back) = ring_channel(&broker);
    const TOTAL: u64 = 2_000_000;
    let back_thread =
        thread::spawn(move || run_back(&mut back.ring, &back.dom, back.port, TOTAL, 7));
    let front_stats = run_front(&mut front.ring, &front.dom, front.port, TOTAL, 11);
    let back_stats = back_thread.join().unwrap();
    // Suppression must have kept notifications well below one per message.
    assert!(
        front_stats.notifies + back_stats.notifies < TOTAL,
        "{front_stats:?} {back_stats:?}"
    );
}

#[test]
fn wrap_around_the_u32_index_space() {
    // Start 3 entries before the wrap so every index wraps early.
    let (mut front, mut back, _) = ring_pair::<Req, Rsp>(1, u32::MAX - 2);
    for seq in 0..1000u64 {
        front.push_request(&make_req(seq)).unwrap();
        front.push_requests_and_check_notify();
        let req = back.pop_request().unwrap().unwrap();
        back.push_response(&[req[0], 0]).unwrap();
        back.push_responses_and_check_notify();
        assert_eq!(front.pop_response().unwrap().unwrap()[0], seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// From any start index, any interleaving of batched pushes, consumes, answers and pops keeps
    /// FIFO order, never errors, and keeps free_requests consistent.
    #[test]
    fn indices_wrap_and_order_holds(start in any::<u32>(), ops in proptest::collection::vec((0u8..4, 1u32..80), 1..200)) {
        let (mut front, mut back, _) = ring_pair::<u64, u64>(1, start);
        let size = front.size();
        let (mut next_req, mut next_back, mut next_rsp) = (0u64, 0u64, 0u64);
        let mut unanswered = std::collections::VecDeque::new();
        for (op, n) in ops {
            for _ in 0..n {
                match op {
                    0 => match front.push_request(&next_req) {
                        Ok(()) => next_req += 1,
                        Err(RingError::Full) => { prop_assert_eq!(front.free_requests(), 0); break }
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    },
                    1 => match back.pop_request().unwrap() {
                        Some(v) => { prop_assert_eq!(v, next_back); next_back += 1; unanswered.push_back(v) }
                        None => break,
                    },
                    2 => match unanswered.pop_front() {
                        Some(v) => back.push_response(&(v ^ 0xffff)).unwrap(),
                        None => { prop_assert!(matches!(back.push_response(&0), Err(RingError::NoRequestToAnswer))); break }
                    },
                    _ => match front.pop_response().unwrap() {
                        Some(v) => { prop_assert_eq!(v, next_rsp ^ 0xffff); next_rsp += 1 }
                        None => break,
                    },
                }
            }
            front.push_requests_and_check_notify();
            back.push_responses_and_check_notify();
            prop_assert_eq!(u64::from(size - front.free_requests()), next_req - next_rsp);
        }
    }

    /// The notify decision is exactly ring.h's: notify iff the peer's event index lies in
    /// (old, new], across wrap-around.
    #[test]
    fn notify_iff_event_in_published_range(start in any::<u32>(), first in 0u32..32, second in 1u32..32, event_off in 0u32..70) {
        let (mut front, mut back, spy) = ring_pair::<u64, u64>(1, start);
        for i in 0..first { front.push_request(&u64::from(i)).unwrap(); }
        front.push_requests_and_check_notify();
        for _ in 0..first { back.pop_request().unwrap().unwrap(); back.push_response(&0).unwrap(); }
        back.push_responses_and_check_notify();
        while front.pop_response().unwrap().is_some() {}
        let old = start.wrapping_add(first);
        let event = old.wrapping_add(event_off);
        spy.atomic_u32(REQ_EVENT_OFFSET).unwrap().store(event, Ordering::SeqCst);
        for i in 0..second { front.push_request(&u64::from(i)).unwrap(); }
        let notify = front.push_requests_and_check_notify();
        prop_assert_eq!(notify, event_off >= 1 && event_off <= second);
    }
}

#[test]
fn final_check_arms_the_event_index() {
    let (mut front, mut back, spy) = ring_pair::<u64, u64>(1, 100);
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(spy.read_obj::<u32>(REQ_EVENT_OFFSET).unwrap(), 101);
    front.push_request(&1).unwrap();
    assert!(
        front.push_requests_and_check_notify(),
        "the back end asked to be woken at 101"
    );
    front.push_request(&2).unwrap();
    assert!(
        !front.push_requests_and_check_notify(),
        "no new request for a notification"
    );
    assert!(back.final_check_for_requests().unwrap());
    assert!(!front.final_check_for_responses().unwrap());
    assert_eq!(spy.read_obj::<u32>(RSP_EVENT_OFFSET).unwrap(), 101);
}

#[test]
fn response_hold_off_wakes_after_the_asked_count() {
    let (mut front, mut back, spy) = ring_pair::<u64, u64>(1, 7);
    for i in 0..10 {
        front.push_request(&i).unwrap();
    }
    front.push_requests_and_check_notify();
    // Ask to be woken after 4 of the 10 in flight.
    assert!(!front.final_check_for_responses_after(4).unwrap());
    assert_eq!(spy.read_obj::<u32>(RSP_EVENT_OFFSET).unwrap(), 7 + 4);
    let mut notified_at = None;
    for i in 0..10 {
        back.pop_request().unwrap().unwrap();
        back.push_response(&i).unwrap();
        if back.push_responses_and_check_notify() {
            notified_at.get_or_insert(i + 1);
        }
    }
    assert_eq!(notified_at, Some(4));
    // More than is in flight is clamped, so the wake-up can always come.
    while front.pop_response().unwrap().is_some() {}
    front.push_request(&0).unwrap();
    front.push_requests_and_check_notify();
    assert!(!front.final_check_for_responses_after(1000).unwrap());
    assert_eq!(spy.read_obj::<u32>(RSP_EVENT_OFFSET).unwrap(), 7 + 10 + 1);
}

#[test]
fn hostile_header_values_are_errors() {
    let (mut front, mut back, spy) = ring_pair::<u64, u64>(1, 0);
    let size = front.size();
    // A req_prod more than a ring ahead of the responses.
    spy.atomic_u32(REQ_PROD_OFFSET)
        .unwrap()
        .store(size + 1, Ordering::SeqCst);
    assert!(matches!(
        back.pop_request(),
        Err(RingError::RequestOverflow { .. })
    ));
    assert!(matches!(
        back.final_check_for_requests(),
        Err(RingError::RequestOverflow { .. })
    ));
    // Exactly a ring's worth is fine (the front end may fill every slot).
    spy.atomic_u32(REQ_PROD_OFFSET)
        .unwrap()
        .store(size, Ordering::SeqCst);
    assert_eq!(back.unconsumed_requests().unwrap(), size);
    for _ in 0..3 {
        back.pop_request().unwrap().unwrap();
    }
    // req_prod moving backwards behind req_cons (seen at the next read of the header).
    spy.atomic_u32(REQ_PROD_OFFSET)
        .unwrap()
        .store(2, Ordering::SeqCst);
    assert!(matches!(
        back.unconsumed_requests(),
        Err(RingError::RequestOverflow { .. })
    ));
    // Responses the front end never asked for.
    spy.atomic_u32(RSP_PROD_OFFSET)
        .unwrap()
        .store(1, Ordering::SeqCst);
    assert!(matches!(
        front.pop_response(),
        Err(RingError::ResponseOverflow { .. })
    ));
    front.push_request(&5).unwrap();
    front.push_requests_and_check_notify();
    // One response for one request is valid; the slot holds what the peer left there (the request).
    assert_eq!(front.pop_response().unwrap(), Some(5));
    spy.atomic_u32(RSP_PROD_OFFSET)
        .unwrap()
        .store(u32::MAX, Ordering::SeqCst);
    assert!(matches!(
        front.final_check_for_responses(),
        Err(RingError::ResponseOverflow { .. })
    ));
}

#[test]
fn hostile_peer_scribbling_concurrently_never_breaks_the_other_side() {
    // The spy scribbles random values over the header and every slot while a front end and a
    // back end run. Each call must return Ok or a ring error; nothing may panic or hang.
    let (mut front, mut back, spy) = ring_pair::<Req, Rsp>(1, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut rng = Rng::new(99);
            let words = spy.len() / 4;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 10_000 {
                let w = if rng.next() % 2 == 0 {
                    rng.next() % 16
                } else {
                    rng.next() % words as u64
                };
                spy.atomic_u32(w as usize * 4)
                    .unwrap()
                    .store(rng.next() as u32, Ordering::Relaxed);
                n += 1;
            }
            n
        })
    };
    let mut rng = Rng::new(5);
    let (mut ok, mut errors) = (0u64, 0u64);
    for i in 0..200_000u64 {
        let r = match rng.next() % 6 {
            0 => front.push_request(&make_req(i)).map(drop),
            1 => {
                front.push_requests_and_check_notify();
                Ok(())
            }
            2 => front.pop_response().map(drop),
            3 => front.final_check_for_responses().map(drop),
            4 => back.pop_request().and_then(|r| match r {
                Some(req) => back.push_response(&[req[0], 0]),
                None => back.final_check_for_requests().map(drop),
            }),
            _ => {
                back.push_responses_and_check_notify();
                Ok(())
            }
        };
        match r {
            Ok(()) => ok += 1,
            Err(
                RingError::RequestOverflow { .. }
                | RingError::ResponseOverflow { .. }
                | RingError::Full
                | RingError::NoRequestToAnswer,
            ) => errors += 1,
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let scribbles = scribbler.join().unwrap();
    assert!(scribbles >= 10_000);
    assert!(errors > 0, "the scribbles were never noticed");
    assert!(ok > 0);
}
