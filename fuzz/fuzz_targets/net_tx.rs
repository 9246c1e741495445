//! backend-net's transmit path on one header + frame from the input: header parsing and
//! checks (virtio 1.2 §5.1.6.2), checksum completion and TCP segmentation offload. Never
//! panics; every segment is bounded by the frame and the MTU rules.
#![no_main]

use backend_net::hdr::{Gso, NetHdr, TxLimits, HDR_LEN};
use backend_net::offload::{complete_checksum, segment_tcp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [opts, rest @ ..] = data else {
        return;
    };
    if rest.len() < HDR_LEN {
        return;
    }
    let (hdr, frame) = rest.split_at(HDR_LEN);
    let Ok(hdr) = NetHdr::parse(hdr) else {
        return;
    };
    let limits = TxLimits {
        csum: opts & 1 != 0,
        tso4: opts & 2 != 0,
        tso6: opts & 4 != 0,
        max_frame: 1514 + 4,
    };
    if hdr.check_tx(frame.len(), &limits).is_err() {
        return;
    }
    let mut frame = frame.to_vec();
    if hdr.gso() != Gso::None {
        if let Ok(segments) = segment_tcp(&frame, &hdr) {
            for s in &segments {
                assert!(s.len() <= frame.len() + usize::from(hdr.hdr_len) + 128);
            }
        }
    } else if hdr.needs_csum() {
        let _ = complete_checksum(&mut frame, hdr.csum_start, hdr.csum_offset);
    }
});
