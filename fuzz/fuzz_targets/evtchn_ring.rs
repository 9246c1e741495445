//! evtchn's request/response ring (io/ring.h) with a scribbling front end: the input is a
//! sequence of writes of the peer into the shared page (indices and slots) interleaved with
//! the back end consuming requests and producing responses. The back end never panics, never
//! reads more than the ring holds, and reports corrupt indices as errors.
#![no_main]

use evtchn::{SharedRegion, SharedRing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let region = SharedRegion::create("fuzz-ring", 1).unwrap();
    let peer = SharedRegion::map(region.fd().try_clone_to_owned().unwrap()).unwrap();
    let ring = SharedRing::<[u8; 64], [u8; 64]>::new(region).unwrap();
    ring.init(0);
    let size = ring.size();
    let mut back = ring.back(0);
    let mut rest = data;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 4 {
            // The peer writes bytes at an offset.
            0 => {
                let [o0, o1, n, tail @ ..] = rest else { return };
                let off = usize::from(u16::from_le_bytes([*o0, *o1])) % peer.len();
                let n = usize::from(*n).min(tail.len()).min(peer.len() - off);
                peer.write_bytes(off, &tail[..n]).unwrap();
                rest = &tail[n..];
            }
            // The back end consumes what it can.
            1 => {
                let mut got = 0;
                loop {
                    match back.pop_request() {
                        Ok(Some(_)) => got += 1,
                        Ok(None) | Err(_) => break,
                    }
                    assert!(got <= size, "consumed more than the ring holds");
                }
            }
            2 => {
                let _ = back.push_response(&[0xaa; 64]);
                let _ = back.push_responses_and_check_notify();
            }
            _ => {
                let _ = back.unconsumed_requests();
                let _ = back.final_check_for_requests();
            }
        }
    }
});
