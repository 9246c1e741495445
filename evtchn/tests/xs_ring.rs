//! The xenstore ring: a guest-side blocking byte stream against xenstored's non-blocking side,
//! partial writes, wrap-around, and a guest that corrupts the indices.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::thread;

use common::{Rng, WAKE_DEADLINE};
use evtchn::xs_ring::{
    RSP_CONS_OFFSET, XENSTORE_ERROR_RINGIDX, XENSTORE_RING_SIZE, XENSTORE_SERVER_FEATURE_ERROR,
};
use evtchn::{Broker, Domain, XsRingBackend, XsRingError, XsRingFrontend};

/// A guest (domain 3) front end and dom0's back end, connected.
fn connected(broker: &Broker) -> (XsRingFrontend, XsRingBackend) {
    let guest = Arc::new(broker.connect(3).unwrap());
    let dom0 = Arc::new(broker.connect(0).unwrap());
    let front = XsRingFrontend::create(guest, 0).unwrap();
    let back = XsRingBackend::connect(dom0, 3, front.gref(), front.port()).unwrap();
    (front, back)
}

/// An xs_wire-shaped message: 16-byte header (type, req_id, tx_id, len) and `len` payload bytes.
fn message(req_id: u32, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + len);
    for w in [2u32, req_id, 0, len as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend((0..len).map(|i| (i as u32 ^ req_id) as u8));
    m
}

/// xenstored's loop for one guest: echo every byte back, waiting on the server domain's doorbell
/// and keeping unsent bytes when the reply ring is full.
fn echo_server(mut back: XsRingBackend, total: usize) {
    let dom: Arc<Domain> = back.domain().clone();
    let (mut echoed, mut buf, mut unsent) = (0, vec![0u8; 700], Vec::new());
    while echoed < total {
        let n = back.read_available(&mut buf).unwrap();
        unsent.extend_from_slice(&buf[..n]);
        let w = back.write(&unsent).unwrap();
        unsent.drain(..w);
        echoed += w;
        if n == 0 && w == 0 {
            let ports = dom.wait(Some(WAKE_DEADLINE)).unwrap();
            assert!(
                ports.contains(&back.local_port()),
                "server lost a wake-up: {ports:?}"
            );
        }
    }
}

#[test]
fn guest_streams_messages_through_the_ring_both_ways() {
    let broker = Broker::new();
    let (mut front, back) = connected(&broker);
    let mut rng = Rng::new(17);
    let msgs: Vec<Vec<u8>> = (0..3000)
        .map(|i| message(i, (rng.next() % 4097) as usize))
        .collect();
    let total: usize = msgs.iter().map(Vec::len).sum();
    let server = thread::spawn(move || echo_server(back, total));
    // Each message is bigger than the ring's free space at times, so writes and reads block
    // partway and resume on notifications from the server thread.
    for m in &msgs {
        front.write_all(m).unwrap();
        let mut echo = vec![0u8; m.len()];
        front.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, m);
    }
    server.join().unwrap();
    assert!(
        total > 100 * XENSTORE_RING_SIZE,
        "indices must wrap many times"
    );
}

#[test]
fn writes_are_partial_when_the_reply_ring_is_full() {
    let broker = Broker::new();
    let (mut front, mut back) = connected(&broker);
    assert_eq!(
        front.server_features().unwrap(),
        XENSTORE_SERVER_FEATURE_ERROR
    );
    let big = vec![7u8; 3000];
    assert_eq!(back.write(&big).unwrap(), XENSTORE_RING_SIZE);
    assert_eq!(back.write(&big).unwrap(), 0);
    let mut got = vec![0u8; 100];
    assert_eq!(front.try_read(&mut got).unwrap(), 100);
    assert_eq!(back.write(&big).unwrap(), 100);
    // Requests are waiting even before the server looks; it finds them without a notification.
    assert_eq!(front.try_write(b"hello").unwrap(), 5);
    let mut req = [0u8; 16];
    assert_eq!(back.read_available(&mut req).unwrap(), 5);
    assert_eq!(&req[..5], b"hello");
    assert_eq!(back.read_available(&mut req).unwrap(), 0);
}

#[test]
fn requests_written_before_the_server_connects_wait_in_the_ring() {
    let broker = Broker::new();
    let guest = Arc::new(broker.connect(3).unwrap());
    let mut front = XsRingFrontend::create(guest, 0).unwrap();
    front.write_all(b"early").unwrap();
    let dom0 = Arc::new(broker.connect(0).unwrap());
    let mut back = XsRingBackend::connect(dom0, 3, front.gref(), front.port()).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(back.read_available(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"early");
}

#[test]
fn a_guest_with_corrupt_indices_gets_an_error_not_a_crash() {
    let broker = Broker::new();
    let guest = Arc::new(broker.connect(3).unwrap());
    let dom0 = Arc::new(broker.connect(0).unwrap());
    let mut front = XsRingFrontend::create(guest, 0).unwrap();
    // A second mapping of the page (dom0's, as the grant is for dom0 only) to write garbage into
    // the guest's index, as a broken guest would.
    let dom0_view = dom0.map_grant(3, front.gref()).unwrap();
    let mut back = XsRingBackend::connect(dom0, 3, front.gref(), front.port()).unwrap();
    // rsp_cons far ahead of rsp_prod: more than a ring's worth "free".
    dom0_view
        .atomic_u32(RSP_CONS_OFFSET)
        .unwrap()
        .store(5000, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        back.write(b"x"),
        Err(XsRingError::BadIndices { ring: "rsp", .. })
    ));
    let mut buf = [0u8; 4];
    assert!(
        matches!(front.try_read(&mut buf), Err(XsRingError::Server(e)) if e == XENSTORE_ERROR_RINGIDX)
    );
    assert!(
        front.read(&mut buf).is_err(),
        "the blocking reader reports it too"
    );
}

#[test]
fn the_server_cannot_attach_to_a_ring_not_granted_to_it() {
    let broker = Broker::new();
    let guest = Arc::new(broker.connect(3).unwrap());
    let front = XsRingFrontend::create(guest, 0).unwrap();
    let dom5 = Arc::new(broker.connect(5).unwrap());
    assert!(matches!(
        XsRingBackend::connect(dom5, 3, front.gref(), front.port()),
        Err(XsRingError::Broker(_))
    ));
}
