//! The daemon over real sockets: bad input, disconnects, many clients, conflicting
//! transactions.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::thread;

use common::{Daemon, TempDir};
use xenstore_lite::wire::{encode, Header, MsgType};
use xenstore_lite::{ClientError, Errno, XsOps};

fn start(tag: &str) -> (TempDir, Daemon) {
    let dir = TempDir::new(tag);
    let d = Daemon::start(&dir.join("xs.sock"), &[]);
    (dir, d)
}

#[test]
fn oversized_payload_is_refused_and_the_daemon_goes_on() {
    let (_dir, d) = start("big");
    let mut c = d.client();
    let h = Header {
        msg_type: MsgType::WRITE as u32,
        req_id: 42,
        tx_id: 0,
        len: 4097,
    };
    // Header and payload in one write: the daemon answers after the header and closes, so a
    // second write could meet a closed socket (EPIPE) before the answer is read.
    let mut request = h.encode().to_vec();
    request.extend_from_slice(&[b'a'; 4097]);
    c.send_raw(&request).unwrap();
    let (hdr, payload) = c.recv_raw().unwrap();
    assert_eq!(hdr.msg_type, MsgType::ERROR as u32);
    assert_eq!(hdr.req_id, 42);
    assert_eq!(payload, b"E2BIG\0");
    assert!(
        c.recv_raw().is_err(),
        "the connection is closed after a protocol error"
    );
    let mut other = d.client();
    other.write("/still", b"alive").unwrap();
    assert_eq!(other.read("/still").unwrap(), b"alive");
    assert!(!other.exists("/a").unwrap());
}

#[test]
fn bad_requests_get_errors_with_their_ids() {
    let (_dir, d) = start("bad");
    let mut c = d.client();
    let cases: &[(u32, &[u8], &[u8])] = &[
        (999, b"", b"ENOSYS\0"),
        (MsgType::READ as u32, b"/a//b\0", b"EINVAL\0"),
        (MsgType::READ as u32, b"/trailing/\0", b"EINVAL\0"),
        (MsgType::READ as u32, b"/bad char\0", b"EINVAL\0"),
        (MsgType::WRITE as u32, b"@introduceDomain\0x", b"EINVAL\0"),
        (MsgType::READ as u32, b"/missing\0", b"ENOENT\0"),
    ];
    for (i, (t, payload, err)) in cases.iter().enumerate() {
        let h = Header {
            msg_type: *t,
            req_id: 1000 + i as u32,
            tx_id: 0,
            len: payload.len() as u32,
        };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(payload);
        c.send_raw(&bytes).unwrap();
        let (hdr, reply) = c.recv_raw().unwrap();
        assert_eq!(hdr.msg_type, MsgType::ERROR as u32);
        assert_eq!((hdr.req_id, hdr.tx_id), (1000 + i as u32, 0));
        assert_eq!(reply, *err, "case {i}");
    }
    // A transaction id that was never started.
    let r = c.request_in(77, MsgType::READ, b"/tool\0");
    assert!(matches!(r, Err(ClientError::Xs(Errno::ENOENT))), "{r:?}");
    let long = format!("/{}", "a".repeat(3072));
    assert!(matches!(
        c.write(&long, b"x"),
        Err(ClientError::Xs(Errno::EINVAL))
    ));
}

#[test]
fn many_requests_in_one_write_are_answered_in_order() {
    let (_dir, d) = start("pipeline");
    let mut c = d.client();
    let mut bytes = Vec::new();
    for i in 0..200u32 {
        let mut p = format!("/p/{i}\0").into_bytes();
        p.extend_from_slice(i.to_string().as_bytes());
        bytes.extend_from_slice(&encode(MsgType::WRITE, i, 0, &p));
    }
    c.send_raw(&bytes).unwrap();
    for i in 0..200u32 {
        let (h, payload) = c.recv_raw().unwrap();
        assert_eq!(h.req_id, i);
        assert_eq!(payload, b"OK\0");
    }
    assert_eq!(c.directory("/p").unwrap().len(), 200);
}

#[test]
fn disconnects_mid_message_and_mid_transaction_leave_nothing() {
    let (_dir, d) = start("disc");
    {
        let mut c = d.client();
        let id = c.transaction_start().unwrap();
        c.in_transaction(id)
            .write("/txn/uncommitted", b"1")
            .unwrap();
        c.watch("/", "w").unwrap();
        let msg = encode(MsgType::WRITE, 9, 0, b"/half\0written");
        c.send_raw(&msg[..msg.len() - 4]).unwrap();
    }
    let mut other = d.client();
    // Commit something that would have fired the dropped watch.
    other.write("/after", b"1").unwrap();
    assert!(!other.exists("/txn").unwrap());
    assert!(!other.exists("/half").unwrap());
    assert_eq!(other.read("/after").unwrap(), b"1");
}

#[test]
fn watch_events_reach_other_clients() {
    let (_dir, d) = start("events");
    let mut w = d.client();
    w.watch("/dev", "tok").unwrap();
    let first = w.next_event().unwrap();
    assert_eq!((first.path.as_str(), first.token.as_str()), ("/dev", "tok"));
    let mut c = d.client();
    c.write("/dev/vbd/state", b"1").unwrap();
    c.transaction(|tx| {
        tx.write("/dev/a", b"1")?;
        tx.write("/dev/b", b"2")
    })
    .unwrap();
    let got: Vec<String> = (0..3).map(|_| w.next_event().unwrap().path).collect();
    assert_eq!(got, ["/dev/vbd/state", "/dev/a", "/dev/b"]);
    w.unwatch("/dev", "tok").unwrap();
    c.write("/dev/c", b"3").unwrap();
    assert!(w
        .next_event_timeout(std::time::Duration::from_millis(200))
        .unwrap()
        .is_none());
}

/// Two transactions that read what the other writes, committed one after the other: the
/// second gets EAGAIN and leaves no trace.
#[test]
fn crossed_transactions_one_fails() {
    let (_dir, d) = start("crossed");
    let mut a = d.client();
    let mut b = d.client();
    a.write("/x", b"0").unwrap();
    a.write("/y", b"0").unwrap();
    let ta = a.transaction_start().unwrap();
    let tb = b.transaction_start().unwrap();
    a.in_transaction(ta).read("/x").unwrap();
    b.in_transaction(tb).read("/y").unwrap();
    a.in_transaction(ta).write("/y", b"a").unwrap();
    b.in_transaction(tb).write("/x", b"b").unwrap();
    b.in_transaction(tb).write("/trace", b"b").unwrap();
    a.transaction_end(ta, true).unwrap();
    let r = b.transaction_end(tb, true);
    assert!(matches!(r, Err(ClientError::Xs(Errno::EAGAIN))), "{r:?}");
    assert_eq!(a.read("/x").unwrap(), b"0");
    assert_eq!(a.read("/y").unwrap(), b"a");
    assert!(!a.exists("/trace").unwrap());
}

/// Several clients increment one counter in transactions, each attempt also writing a log
/// key of its own. The committed attempts must be exactly those whose log key exists, the
/// counter values they read must be 0..n (a serial order), and failed attempts leave nothing.
#[test]
fn concurrent_transactions_are_serializable() {
    const CLIENTS: usize = 6;
    const COMMITS: usize = 25;
    let (_dir, d) = start("serial");
    d.client().write("/counter", b"0").unwrap();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let mut c = d.client();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut committed = Vec::new();
                let mut failed = Vec::new();
                let mut attempt = 0;
                while committed.len() < COMMITS {
                    attempt += 1;
                    let id = c.transaction_start().unwrap();
                    let mut tx = c.in_transaction(id);
                    let v: u64 = tx.read_string("/counter").unwrap().parse().unwrap();
                    tx.write("/counter", (v + 1).to_string().as_bytes())
                        .unwrap();
                    let key = format!("/log/c{k}-a{attempt}");
                    tx.write(&key, v.to_string().as_bytes()).unwrap();
                    match c.transaction_end(id, true) {
                        Ok(()) => committed.push((key, v)),
                        Err(ClientError::Xs(Errno::EAGAIN)) => failed.push(key),
                        Err(e) => panic!("commit: {e}"),
                    }
                }
                (committed, failed)
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    let mut committed_keys = BTreeSet::new();
    let mut failures = 0;
    let mut c = d.client();
    for h in handles {
        let (committed, failed) = h.join().unwrap();
        for (key, v) in committed {
            assert_eq!(c.read_string(&key).unwrap(), v.to_string());
            assert!(seen.insert(v), "two commits read counter {v}");
            committed_keys.insert(key.trim_start_matches("/log/").to_owned());
        }
        for key in failed {
            assert!(!c.exists(&key).unwrap(), "{key} of a failed commit exists");
            failures += 1;
        }
    }
    let total = CLIENTS * COMMITS;
    assert_eq!(seen, (0..total as u64).collect());
    assert_eq!(c.read_string("/counter").unwrap(), total.to_string());
    let logged: BTreeSet<String> = c.directory("/log").unwrap().into_iter().collect();
    assert_eq!(logged, committed_keys);
    eprintln!("{total} commits, {failures} EAGAIN retries");
}
