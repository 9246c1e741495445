//! backend-net's control-queue commands (virtio 1.2 §5.1.6.5): parsing for any acked
//! features and queue-pair count, and applying the result to the receive filter.
#![no_main]

use backend_net::ctrl::{parse, RxFilter};
use backend_net::device::Acked;
use backend_net::mac::MacAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (head, rest) = data.split_at(10);
    let acked = Acked(u64::from_le_bytes(head[..8].try_into().unwrap()));
    let max_pairs = u16::from_le_bytes([head[8], head[9]]);
    let mut filter = RxFilter::new(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    // Several commands in a row: each is one length byte then its bytes.
    let mut rest = rest;
    while let [len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        if let Ok(cmd) = parse(&tail[..n], acked, max_pairs) {
            filter.apply(&cmd);
        }
        let _ = filter.accepts(MacAddr([0xff; 6]));
        let _ = filter.accepts(filter.mac());
        rest = &tail[n..];
    }
});
