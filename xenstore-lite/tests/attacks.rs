//! An unprivileged domain attacking the store, after Xen's security advisories (XSA-326,
//! XSA-418/419, XSA-484): through the daemon's real sockets, with xenstore-utils as dom0's
//! probe. Each attack must end in errors or throttling for the attacker while dom0 keeps
//! being served; dom0's latency during the attack is measured and must stay bounded (loosely:
//! these run on loaded CI machines).

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, TempDir};
use xenstore_lite::perms::NodePerms;
use xenstore_lite::wire::{self, MsgType};
use xenstore_lite::{Client, Errno, Quotas, XsOps};

/// The attacker's domain.
const GUEST: u32 = 5;
/// Longest dom0 request round trip accepted while an attack runs (xenstore-utils process
/// start included; generous for a loaded 2-core machine).
const DOM0_BOUND: Duration = Duration::from_secs(10);

struct Setup {
    _dir: TempDir,
    daemon: Daemon,
    guest_socket: PathBuf,
}

fn start(tag: &str, extra: &[&str]) -> Setup {
    start_with(tag, extra, None)
}

fn start_with(tag: &str, extra: &[&str], nofile: Option<u64>) -> Setup {
    let dir = TempDir::new(tag);
    let guest_socket = dir.join("guest.sock");
    let spec = format!("{GUEST}:{}", guest_socket.display());
    let mut args = vec!["--domain-socket", &spec];
    args.extend_from_slice(extra);
    let socket = dir.join("xs.sock");
    let daemon = match nofile {
        Some(n) => Daemon::start_fd_limited(&socket, &args, n),
        None => Daemon::start(&socket, &args),
    };
    let mut c = daemon.client();
    let home = format!("/local/domain/{GUEST}");
    c.write(&home, b"").unwrap();
    c.set_perms(&home, &NodePerms::parse(&[&format!("n{GUEST}")]).unwrap())
        .unwrap();
    Setup {
        _dir: dir,
        daemon,
        guest_socket,
    }
}

impl Setup {
    fn guest(&self) -> Client {
        Client::connect(&self.guest_socket).expect("connect to the guest socket")
    }
}

/// Runs an xenstore-utils tool as dom0 and returns how long it took; panics when it fails or
/// does not finish within [`DOM0_BOUND`].
fn dom0_tool(socket: &Path, name: &str, args: &[&str]) -> Duration {
    let t0 = Instant::now();
    let mut child = Command::new(name)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name} (is xenstore-utils installed?): {e}"));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{name} {args:?} failed: {status}");
            return t0.elapsed();
        }
        if t0.elapsed() > DOM0_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dom0's {name} {args:?} got no answer within {DOM0_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// dom0 writes and reads back through xenstore-utils; returns the slower round trip.
fn dom0_probe(socket: &Path, i: usize) -> Duration {
    let v = i.to_string();
    let w = dom0_tool(socket, "xenstore-write", &["/probe", &v]);
    let r = dom0_tool(socket, "xenstore-read", &["/probe"]);
    w.max(r)
}

fn xs_errno(r: Result<(), xenstore_lite::ClientError>) -> Option<Errno> {
    r.err().and_then(|e| e.errno())
}

/// Connections beyond the quota are closed at once: a domain socket's clients cannot take
/// the daemon's file descriptors and lock dom0 out (before the quota, a daemon at its fd
/// limit could not accept dom0's next connection).
#[test]
fn connection_flood_is_capped_and_dom0_is_served() {
    let s = start_with("att-conns", &[], Some(128));
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(UnixStream::connect(&s.guest_socket).expect("connect"));
    }
    let latency = dom0_probe(&s.daemon.socket, 0);
    println!("dom0 round trip during a 200-connection flood: {latency:?}");
    // The guest keeps at most its quota of live connections.
    let mut live = 0;
    for mut c in held {
        use std::io::{Read, Write};
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let req = wire::encode(MsgType::GET_DOMAIN_PATH, 1, 0, b"5\0");
        if c.write_all(&req).is_err() {
            continue;
        }
        let mut buf = [0u8; 64];
        if matches!(c.read(&mut buf), Ok(n) if n > 0) {
            live += 1;
        }
    }
    assert!(
        live <= Quotas::default().connections,
        "{live} connections served"
    );
    dom0_probe(&s.daemon.socket, 1);
}

/// XSA-326: a guest that watches its home with long tokens and never reads cannot make the
/// daemon queue more than its memory quota of events, however much dom0 writes under it.
#[test]
fn watch_event_queue_of_a_slow_reader_is_bounded() {
    let s = start("att-slow", &[]);
    let mut g = s.guest();
    let token = "t".repeat(3000);
    let watches = Quotas::default().watches;
    for i in 0..watches {
        g.watch(
            &format!("/local/domain/{GUEST}/dev"),
            &format!("{i}{token}"),
        )
        .unwrap();
    }
    let mut worst = Duration::ZERO;
    let mut dom0 = s.daemon.client();
    // Each write fires `watches` events of ~3 KiB: 40 writes are ~15 MiB of events.
    for i in 0..40 {
        let t0 = Instant::now();
        dom0.write(
            &format!("/local/domain/{GUEST}/dev"),
            i.to_string().as_bytes(),
        )
        .unwrap();
        worst = worst.max(t0.elapsed());
        if i % 10 == 0 {
            worst = worst.max(dom0_probe(&s.daemon.socket, i));
        }
    }
    println!("dom0 worst round trip while queueing events for a non-reader: {worst:?}");
    assert!(worst < DOM0_BOUND);
    // Now the guest reads: everything up to the reply of a fresh request is what was queued.
    let req = wire::encode(MsgType::GET_DOMAIN_PATH, 7777, 0, b"0\0");
    g.send_raw(&req).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut event_bytes = 0usize;
        loop {
            let (h, payload) = g.recv_raw().unwrap();
            if h.req_id == 7777 {
                break;
            }
            event_bytes += wire::HEADER_LEN + payload.len();
        }
        tx.send(event_bytes).unwrap();
    });
    let event_bytes = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the guest's output stalled: its reply never came");
    println!("queued event bytes for the non-reader: {event_bytes}");
    // The quota in the store, the same again in the transport's send buffer, and the
    // kernel's socket buffer.
    let bound = 2 * Quotas::default().memory + (2 << 20);
    assert!(event_bytes < bound, "{event_bytes} bytes of events queued");
}

/// XSA-326 "huge transactions": a guest's open transactions cannot hold more than its memory
/// quota of node copies; the attacker gets ENOMEM, and gets room back when it ends them.
#[test]
fn transactions_cannot_hoard_memory() {
    let s = start("att-tx", &[]);
    let mut g = s.guest();
    let q = Quotas::default();
    let value = vec![b'v'; 1900];
    let mut accepted = 0usize;
    let mut refused = None;
    let mut txs = Vec::new();
    'outer: for t in 0..q.transactions {
        let id = g.transaction_start().unwrap();
        txs.push(id);
        for n in 0..q.transaction_nodes {
            let r = g.in_transaction(id).write(&format!("t{t}/n{n}"), &value);
            match xs_errno(r) {
                None => accepted += value.len(),
                Some(Errno::ENOSPC) => break,
                Some(e) => {
                    refused = Some(e);
                    break 'outer;
                }
            }
        }
    }
    println!("bytes the guest put into transactions before refusal: {accepted}");
    assert_eq!(refused, Some(Errno::ENOMEM));
    assert!(
        accepted <= q.memory,
        "{accepted} bytes held in transactions"
    );
    dom0_probe(&s.daemon.socket, 0);
    for id in txs {
        g.transaction_end(id, false).unwrap();
    }
    g.write("after", &value).unwrap();
}

/// XSA-418/419-style growth: long paths make each node cost more than its value; the
/// memory quota binds before the node quota.
#[test]
fn node_growth_by_long_paths_hits_the_memory_quota() {
    let s = start("att-nodes", &[]);
    let mut g = s.guest();
    let q = Quotas::default();
    let name = "p".repeat(1500);
    let value = vec![b'v'; 1900];
    let mut created = 0;
    // Short child names under the long one: no parent outgrows the node-size quota.
    let err = loop {
        let path = format!("{name}/c{}/d{}", created / 40, created % 40);
        match xs_errno(g.write(&path, &value)) {
            None => created += 1,
            Some(e) => break e,
        }
        assert!(created <= q.nodes, "no quota stopped the guest");
    };
    println!("guest nodes before refusal: {created}");
    assert_eq!(err, Errno::ENOMEM);
    assert!(created < q.nodes);
    // xenstore-utils as the guest: refused too, the tool fails.
    let more = format!("{name}/more");
    let st = Command::new("xenstore-write")
        .args([more.as_str(), &"v".repeat(1900)])
        .env("XENSTORED_PATH", &s.guest_socket)
        .stderr(Stdio::null())
        .status()
        .expect("xenstore-write");
    assert!(!st.success());
    dom0_probe(&s.daemon.socket, 0);
}

/// The node quota: 1000 nodes per domain, then ENOSPC (spread over directories, so that no
/// parent reaches the node-size quota first).
#[test]
fn node_count_quota_holds() {
    let s = start("att-count", &[]);
    let mut g = s.guest();
    let q = Quotas::default();
    let mut leaves = 0;
    let err = loop {
        match xs_errno(g.write(&format!("d{}/n{}", leaves / 30, leaves % 30), b"")) {
            None => leaves += 1,
            Some(e) => break e,
        }
        assert!(leaves <= q.nodes, "no quota stopped the guest");
    };
    assert_eq!(err, Errno::ENOSPC);
    // The home node and the directories are the guest's too.
    let dirs = leaves.div_ceil(30);
    assert_eq!(1 + dirs + leaves, q.nodes);
    dom0_probe(&s.daemon.socket, 0);
}

/// Watches and transactions are counted per domain, not per connection: more connections
/// do not give a guest more of them.
#[test]
fn watch_and_transaction_quotas_span_connections() {
    let s = start("att-span", &[]);
    let q = Quotas::default();
    let mut conns: Vec<Client> = (0..3).map(|_| s.guest()).collect();
    let mut watches = 0;
    let mut txs = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        for w in 0..q.watches {
            if c.watch("dev", &format!("{i}-{w}")).is_ok() {
                watches += 1;
            }
        }
        for _ in 0..q.transactions {
            if c.transaction_start().is_ok() {
                txs += 1;
            }
        }
    }
    assert_eq!(watches, q.watches);
    assert_eq!(txs, q.transactions);
    assert_eq!(
        xs_errno(conns[2].watch("dev", "one-more")),
        Some(Errno::E2BIG)
    );
    dom0_probe(&s.daemon.socket, 0);
}

/// Deep paths and watches on them: the path-length quota bounds the depth, removal of a deep
/// tree works, and dom0 is served throughout.
#[test]
fn deep_paths_and_watches_on_them() {
    let s = start("att-deep", &[]);
    let mut g = s.guest();
    let q = Quotas::default();
    // As deep as the path quota allows ("a/" per level).
    let levels = (q.path_max - 1) / 2;
    let deep = vec!["a"; levels].join("/");
    g.watch(&deep, "deep").unwrap();
    let too_deep = format!("{deep}/a/a");
    assert_eq!(xs_errno(g.write(&too_deep, b"x")), Some(Errno::EINVAL));
    assert_eq!(xs_errno(g.watch(&too_deep, "x")), Some(Errno::EINVAL));
    // A deep chain of nodes: each level is a node, so the node quota bounds it.
    let r = g.write(&deep, b"x");
    assert!(
        matches!(xs_errno(r), None | Some(Errno::ENOSPC)),
        "unexpected error"
    );
    let t = dom0_probe(&s.daemon.socket, 0);
    println!("dom0 round trip after a {levels}-level chain: {t:?}");
    let mut dom0 = s.daemon.client();
    dom0.rm(&format!("/local/domain/{GUEST}/a")).unwrap_or(());
    dom0_probe(&s.daemon.socket, 1);
}

/// XSA-484: XS_RESET_WATCHES sent inside a transaction (it crashed C xenstored). The
/// transaction ends with the watches; the connection and the daemon go on.
#[test]
fn reset_watches_inside_a_transaction() {
    let s = start("att-reset", &[]);
    let mut g = s.guest();
    g.watch("dev", "tok").unwrap();
    let id = g.transaction_start().unwrap();
    g.in_transaction(id).write("dev/x", b"1").unwrap();
    g.in_transaction(id)
        .request(MsgType::RESET_WATCHES, b"")
        .unwrap();
    assert_eq!(
        xs_errno(g.in_transaction(id).write("dev/y", b"2")),
        Some(Errno::ENOENT)
    );
    assert_eq!(xs_errno(g.transaction_end(id, true)), Some(Errno::ENOENT));
    assert_eq!(
        g.unwatch("dev", "tok").unwrap_err().errno(),
        Some(Errno::ENOENT)
    );
    // The same from dom0, twice in a row.
    let mut dom0 = s.daemon.client();
    let id = dom0.transaction_start().unwrap();
    dom0.in_transaction(id).write("/x", b"1").unwrap();
    for _ in 0..2 {
        let r = dom0.in_transaction(id).request(MsgType::RESET_WATCHES, b"");
        assert!(r.is_ok() || r.unwrap_err().errno() == Some(Errno::ENOENT));
    }
    g.write("dev/z", b"3").unwrap();
    dom0_probe(&s.daemon.socket, 0);
}

/// Transactions left open by a guest block nobody: dom0 changes the nodes they read, and the
/// guest's commits fail with EAGAIN.
#[test]
fn transactions_left_open_block_nobody() {
    let s = start("att-open", &[]);
    let mut g = s.guest();
    let q = Quotas::default();
    let ids: Vec<u32> = (0..q.transactions)
        .map(|i| {
            let id = g.transaction_start().unwrap();
            g.in_transaction(id)
                .write(&format!("open{i}"), b"x")
                .unwrap();
            g.in_transaction(id)
                .read_string(&format!("/local/domain/{GUEST}"))
                .unwrap();
            id
        })
        .collect();
    assert_eq!(
        g.transaction_start().unwrap_err().errno(),
        Some(Errno::ENOSPC)
    );
    let mut dom0 = s.daemon.client();
    dom0.write(&format!("/local/domain/{GUEST}"), b"changed")
        .unwrap();
    dom0_probe(&s.daemon.socket, 0);
    for id in ids {
        assert_eq!(xs_errno(g.transaction_end(id, true)), Some(Errno::EAGAIN));
    }
}

/// XSA-326: a guest that sends requests and never reads a reply is throttled (the daemon
/// stops reading it); dom0 is served meanwhile.
#[test]
fn a_guest_that_never_reads_replies_is_throttled() {
    let s = start("att-noread", &[]);
    let stream = UnixStream::connect(&s.guest_socket).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let req = wire::encode(MsgType::READ, 1, 0, b"/local/domain/5\0");
    let flood: Vec<u8> = req.iter().copied().cycle().take(req.len() * 4096).collect();
    let mut sent = 0usize;
    {
        use std::io::Write;
        let mut w = &stream;
        // The writes block once the daemon stops reading us and the socket buffers are full.
        while sent < 64 << 20 {
            match w.write(&flood) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
    }
    println!("bytes of requests the non-reader could push: {sent}");
    assert!(
        sent < 64 << 20,
        "the daemon kept reading a client that never reads"
    );
    let t = dom0_probe(&s.daemon.socket, 0);
    println!("dom0 round trip with a throttled non-reader: {t:?}");
}
