//! xenstore-lite's xs_wire decoder and the store behind it: the input is a sequence of byte
//! chunks, each for one of three connections (dom0, and two of guest domain 5). Checked
//! against a simple model of the protocol: every whole request of a connection gets exactly
//! one reply, in order, with its req_id and tx_id (watch events aside); the tree keeps its
//! invariants (children listed once, owner counts and bytes exact); the store still serves
//! dom0 afterwards.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use xenstore_lite::wire::{self, Decoder, MsgType};
use xenstore_lite::{ConnId, Store};

struct Conn {
    id: ConnId,
    /// The model's view of the requests sent: (req_id, tx_id) not yet answered.
    expected: VecDeque<(u32, u32)>,
    requests: Decoder,
    replies: Decoder,
    closed: bool,
}

impl Conn {
    fn drain(&mut self, store: &mut Store) {
        self.replies.push(&store.take_output(self.id));
        while let Ok(Some(m)) = self.replies.next_message() {
            if m.msg_type() == Some(MsgType::WATCH_EVENT) && m.header.req_id == 0 {
                continue;
            }
            let want = self
                .expected
                .pop_front()
                .expect("a reply without a request");
            assert_eq!(
                (m.header.req_id, m.header.tx_id),
                want,
                "reply out of order"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut store = Store::in_memory();
    let mut conns: Vec<Conn> = [0, 5, 5]
        .into_iter()
        .map(|d| Conn {
            id: store.connect(d),
            expected: VecDeque::new(),
            requests: Decoder::new(),
            replies: Decoder::new(),
            closed: false,
        })
        .collect();
    let mut rest = data;
    while let [sel, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let c = &mut conns[usize::from(*sel) % 3];
        let chunk = &tail[..n];
        rest = &tail[n..];
        if c.closed {
            continue;
        }
        c.requests.push(chunk);
        loop {
            match c.requests.next_message() {
                Ok(Some(m)) => c.expected.push_back((m.header.req_id, m.header.tx_id)),
                Ok(None) => break,
                Err(_) => {
                    // Oversized: one E2BIG reply, then the connection ends.
                    c.closed = true;
                    break;
                }
            }
        }
        let r = store.feed(c.id, chunk);
        if c.closed {
            assert!(r.is_err() && store.is_closed(c.id));
            // The E2BIG reply names the offending header.
            c.replies.push(&store.take_output(c.id));
            c.expected.clear();
            continue;
        }
        // Take the output (the transport would) and let the store go on with what the
        // outstanding-request quota held back.
        loop {
            c.drain(&mut store);
            let before = c.expected.len();
            let _ = store.process(c.id);
            c.drain(&mut store);
            if c.expected.len() == before {
                break;
            }
        }
        assert!(c.expected.is_empty(), "requests left unanswered");
    }
    store.tree().check().unwrap();
    // dom0 is still served.
    let dom0 = store.connect(0);
    let mut req = b"/fuzz-probe\0".to_vec();
    req.extend_from_slice(b"v");
    store
        .feed(dom0, &wire::encode(MsgType::WRITE, 1, 0, &req))
        .unwrap();
    let out = store.take_output(dom0);
    let mut d = Decoder::new();
    d.push(&out);
    let m = d.next_message().unwrap().unwrap();
    assert_eq!(m.msg_type(), Some(MsgType::WRITE), "dom0's write failed");
});
