//! Shared pieces of the evtchn integration tests: message shapes, a seeded generator, and the
//! front-end and back-end loops that stream requests through a ring with event channels.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use evtchn::{BackRing, Broker, Domain, FrontRing, Port, SendOutcome, SharedRing};

/// A 64-byte request: word 0 is the sequence number, the rest is derived from it.
pub type Req = [u64; 8];
/// A 16-byte response: the sequence number and a checksum of the request body.
pub type Rsp = [u64; 2];

/// How long a side waits for a notification before declaring a lost wake-up.
pub const WAKE_DEADLINE: Duration = Duration::from_secs(20);

pub fn make_req(seq: u64) -> Req {
    let mut r = [0u64; 8];
    r[0] = seq;
    for (i, w) in r.iter_mut().enumerate().skip(1) {
        *w = seq
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(i as u32 * 7)
            ^ i as u64;
    }
    r
}

pub fn checksum(req: &Req) -> u64 {
    req[1..].iter().fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ w).wrapping_mul(0x100_0000_01b3)
    })
}

/// xorshift64*: a small seeded generator so failures replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 1..=max.
    pub fn batch(&mut self, max: u32) -> u32 {
        (self.next() % u64::from(max)) as u32 + 1
    }
}

/// Counts of what a side did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub notifies: u64,
    pub doorbells: u64,
    pub waits: u64,
}

impl Stats {
    fn notify(&mut self, dom: &Domain, port: Port) {
        self.notifies += 1;
        if dom.notify(port).expect("notify") == SendOutcome::Raise {
            self.doorbells += 1;
        }
    }

    fn wait(&mut self, dom: &Domain, side: &str) {
        self.waits += 1;
        let ports = dom.wait(Some(WAKE_DEADLINE)).expect("wait");
        assert!(
            !ports.is_empty(),
            "{side}: lost wake-up (no notification in {WAKE_DEADLINE:?})"
        );
    }
}

/// Front end: pushes `total` requests in random batches, checks every response's order and
/// content, and sleeps on the event channel only after the final check.
pub fn run_front(
    ring: &mut FrontRing<Req, Rsp>,
    dom: &Domain,
    port: Port,
    total: u64,
    seed: u64,
) -> Stats {
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < total {
        let mut progressed = false;
        let batch = u64::from(rng.batch(2 * ring.size())).min(total - sent);
        let n = batch.min(u64::from(ring.free_requests()));
        for _ in 0..n {
            ring.push_request(&make_req(sent)).expect("push_request");
            sent += 1;
        }
        if n > 0 {
            progressed = true;
            if ring.push_requests_and_check_notify() {
                stats.notify(dom, port);
            }
        }
        while let Some(rsp) = ring.pop_response().expect("pop_response") {
            assert_eq!(rsp[0], received, "responses out of order");
            assert_eq!(
                rsp[1],
                checksum(&make_req(received)),
                "response {received} corrupted"
            );
            received += 1;
            progressed = true;
        }
        if !progressed
            && received < total
            && !ring.final_check_for_responses().expect("final check")
        {
            stats.wait(dom, "front end");
        }
    }
    stats
}

/// Back end: consumes `total` requests in random batches, checks order and content, answers
/// each, and sleeps only after the final check.
pub fn run_back(
    ring: &mut BackRing<Req, Rsp>,
    dom: &Domain,
    port: Port,
    total: u64,
    seed: u64,
) -> Stats {
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let mut seen = 0u64;
    while seen < total {
        let batch = rng.batch(2 * ring.size());
        let mut answered = 0;
        for _ in 0..batch {
            let Some(req) = ring.pop_request().expect("pop_request") else {
                break;
            };
            assert_eq!(
                req,
                make_req(seen),
                "request {seen} out of order or corrupted"
            );
            ring.push_response(&[req[0], checksum(&req)])
                .expect("push_response");
            seen += 1;
            answered += 1;
        }
        if answered > 0 {
            if ring.push_responses_and_check_notify() {
                stats.notify(dom, port);
            }
        } else if !ring.final_check_for_requests().expect("final check") {
            stats.wait(dom, "back end");
        }
    }
    stats
}

/// A fresh path under the temp dir, unique per process and call.
pub fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("evtchn-{tag}-{}-{n}", std::process::id()))
}

/// One end of a ring channel: its domain connection, its port and its ring.
pub struct End<R> {
    pub dom: Domain,
    pub port: Port,
    pub ring: R,
}

/// The front end of a test ring channel.
pub type FrontEnd = End<FrontRing<Req, Rsp>>;
/// The back end of a test ring channel.
pub type BackEnd = End<BackRing<Req, Rsp>>;

/// A one-page ring between domain 1 (front end) and domain 0 (back end), set up as a split
/// driver does: grant + unbound port on the front, map + bind on the back.
pub fn ring_channel(broker: &Broker) -> (FrontEnd, BackEnd) {
    let front_dom = broker.connect(1).unwrap();
    let back_dom = broker.connect(0).unwrap();
    let (gref, region) = front_dom.grant_access(0, 1).unwrap();
    let front_port = front_dom.alloc_unbound(0).unwrap();
    let back_region = back_dom.map_grant(1, gref).unwrap();
    let back_port = back_dom.bind_interdomain(1, front_port).unwrap();
    let shared = SharedRing::<Req, Rsp>::new(region).unwrap();
    shared.init(0);
    let front = End {
        dom: front_dom,
        port: front_port,
        ring: shared.front(0),
    };
    let back = End {
        dom: back_dom,
        port: back_port,
        ring: SharedRing::new(back_region).unwrap().back(0),
    };
    (front, back)
}

/// The consuming half of either ring end, for loops that take one entry at a time.
pub trait Consumer {
    type Item;
    fn pop(&mut self) -> Option<Self::Item>;
    fn final_check(&mut self) -> bool;
}

impl Consumer for FrontRing<Req, Rsp> {
    type Item = Rsp;
    fn pop(&mut self) -> Option<Rsp> {
        self.pop_response().unwrap()
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_responses().unwrap()
    }
}

impl Consumer for BackRing<Req, Rsp> {
    type Item = Req;
    fn pop(&mut self) -> Option<Req> {
        self.pop_request().unwrap()
    }
    fn final_check(&mut self) -> bool {
        self.final_check_for_requests().unwrap()
    }
}

/// Takes the next entry, sleeping on `dom` after an empty final check; fails on a lost
/// wake-up (no notification within [`WAKE_DEADLINE`]).
pub fn next_or_sleep<C: Consumer>(ring: &mut C, dom: &Domain, side: &str) -> C::Item {
    loop {
        if let Some(item) = ring.pop() {
            return item;
        }
        if !ring.final_check() {
            let ports = dom.wait(Some(WAKE_DEADLINE)).unwrap();
            assert!(!ports.is_empty(), "{side} lost a wake-up");
        }
    }
}
