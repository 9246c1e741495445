//! The xenstore byte ring (xs_wire.h `struct xenstore_domain_interface`) as xenstore-lite's
//! back end consumes it, facing a guest that scribbles on its ring page: indices, bytes and
//! all. The back end never panics, never returns more than asked, and reports impossible
//! indices as errors.
#![no_main]

use std::sync::{Arc, OnceLock};

use evtchn::{Broker, Domain, SharedRegion, XsRingBackend};
use libfuzzer_sys::fuzz_target;

struct World {
    _broker: Broker,
    dom0: Arc<Domain>,
    guest: Domain,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let broker = Broker::new();
        World {
            dom0: Arc::new(broker.connect(0).unwrap()),
            guest: broker.connect(1).unwrap(),
            _broker: broker,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let (gref, page): (u32, SharedRegion) = w.guest.grant_access(0, 1).unwrap();
    let port = w.guest.alloc_unbound(0).unwrap();
    let mut back = XsRingBackend::connect(w.dom0.clone(), 1, gref, port).unwrap();
    let mut buf = [0u8; 4096];
    let mut rest = data;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op % 3 {
            0 => {
                let [o0, o1, n, tail @ ..] = rest else { break };
                let off = usize::from(u16::from_le_bytes([*o0, *o1])) % page.len();
                let n = usize::from(*n).min(tail.len()).min(page.len() - off);
                page.write_bytes(off, &tail[..n]).unwrap();
                rest = &tail[n..];
            }
            1 => {
                let want = usize::from(rest.first().copied().unwrap_or(0)) * 16 + 1;
                if let Ok(n) = back.read_available(&mut buf[..want.min(4096)]) {
                    assert!(n <= want.min(4096));
                }
            }
            _ => {
                let n = usize::from(rest.first().copied().unwrap_or(0)) * 8;
                if let Ok(k) = back.write(&buf[..n]) {
                    assert!(k <= n);
                }
            }
        }
    }
    drop(back);
    let _ = w.guest.end_access(gref);
    let _ = w.guest.close(port);
});
