//! A guest domain talks to the daemon over its xenstore ring and event channel (issue #4): the
//! test runs the evtchn broker, starts the daemon with `--evtchn-broker`, and acts as both the
//! toolstack (dom0 over the socket, with xenstore-utils) and the guest (domain 3 over the
//! ring, with raw xs_wire frames).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, TempDir};
use evtchn::{Broker, Domain, ListenerHandle, XsRingFrontend};
use xenstore_lite::wire::{self, Decoder, Message};
use xenstore_lite::{Errno, MsgType, XsOps};

const GUEST: u32 = 3;
/// How long the guest waits for the daemon before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

fn tool(name: &str, socket: &Path, args: &[&str]) -> Output {
    let out = Command::new(name)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} (is xenstore-utils installed?): {e}"));
    assert!(out.status.success(), "{name} {args:?}: {out:?}");
    out
}

/// The guest's xenstore connection: raw xs_wire over its ring.
struct Guest {
    domain: Arc<Domain>,
    ring: XsRingFrontend,
    decoder: Decoder,
    next_req: u32,
    events: Vec<(String, String)>,
}

impl Guest {
    /// Runs `op` until it moves a byte, waiting on the guest's event channel in between, and
    /// fails the test if the daemon has not moved within [`DEADLINE`].
    fn until_moved(&mut self, mut op: impl FnMut(&mut XsRingFrontend) -> usize) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let n = op(&mut self.ring);
            if n > 0 {
                return n;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the daemon did not serve the ring");
            self.domain.wait(Some(left)).expect("event-channel wait");
        }
    }

    fn send(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = self.until_moved(|r| r.try_write(bytes).expect("ring write"));
            bytes = &bytes[n..];
        }
    }

    fn recv(&mut self) -> Message {
        let mut buf = [0u8; 1024];
        loop {
            if let Some(m) = self.decoder.next_message().expect("well-formed reply") {
                return m;
            }
            let n = self.until_moved(|r| r.try_read(&mut buf).expect("ring read"));
            self.decoder.push(&buf[..n]);
        }
    }

    fn keep_event(&mut self, m: &Message) {
        let parts: Vec<String> = wire::split_strings(&m.payload)
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        self.events.push((parts[0].clone(), parts[1].clone()));
    }

    /// Sends one request and returns its reply payload, or the errno of an XS_ERROR reply;
    /// watch events that arrive meanwhile are kept.
    fn request(&mut self, t: MsgType, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let req_id = self.next_req;
        self.next_req += 1;
        self.send(&wire::encode(t, req_id, 0, payload));
        loop {
            let m = self.recv();
            match m.msg_type() {
                Some(MsgType::WATCH_EVENT) => self.keep_event(&m),
                Some(MsgType::ERROR) => {
                    let name = wire::one_arg(&m.payload).unwrap_or("");
                    return Err(Errno::from_name(name).expect("known errno"));
                }
                other => {
                    assert_eq!(other, Some(t), "reply type");
                    assert_eq!(m.header.req_id, req_id, "reply id");
                    return Ok(m.payload);
                }
            }
        }
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), Errno> {
        let mut p = wire::join_strings(&[path]);
        p.extend_from_slice(value.as_bytes());
        self.request(MsgType::WRITE, &p).map(drop)
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        self.request(MsgType::READ, &wire::join_strings(&[path]))
    }

    /// Waits for the next watch event.
    fn next_event(&mut self) -> (String, String) {
        while self.events.is_empty() {
            let m = self.recv();
            assert_eq!(
                m.msg_type(),
                Some(MsgType::WATCH_EVENT),
                "unsolicited reply"
            );
            self.keep_event(&m);
        }
        self.events.remove(0)
    }
}

/// A broker, the daemon using it, and domain 3 introduced with a home it owns.
struct Setup {
    _dir: TempDir,
    broker: Broker,
    _broker: ListenerHandle,
    daemon: Daemon,
    guest: Guest,
}

/// Creates domain 3's ring and plays the toolstack: the guest's home, owned by the guest,
/// then XS_INTRODUCE with the ring's grant reference and port.
fn introduce_guest(broker: &Broker, daemon: &Daemon) -> Guest {
    let domain = Arc::new(broker.connect(GUEST as u16).unwrap());
    let ring = XsRingFrontend::create(domain.clone(), 0).unwrap();
    let home = format!("/local/domain/{GUEST}");
    let mut dom0 = daemon.client();
    dom0.mkdir(&home).unwrap();
    tool(
        "xenstore-chmod",
        &daemon.socket,
        &[&home, &format!("n{GUEST}")],
    );
    dom0.introduce(GUEST, u64::from(ring.gref()), ring.port())
        .unwrap();
    Guest {
        domain,
        ring,
        decoder: Decoder::new(),
        next_req: 1,
        events: Vec::new(),
    }
}

fn setup(tag: &str) -> Setup {
    let dir = TempDir::new(tag);
    let broker = Broker::new();
    let broker_path = dir.join("broker");
    let handle = broker.listen(&broker_path).unwrap().spawn().unwrap();
    let socket = dir.join("xs");
    let daemon = Daemon::start(&socket, &["--evtchn-broker", broker_path.to_str().unwrap()]);
    let guest = introduce_guest(&broker, &daemon);
    Setup {
        _dir: dir,
        broker,
        _broker: handle,
        daemon,
        guest,
    }
}

#[test]
fn guest_writes_and_reads_its_home_through_the_ring() {
    let mut s = setup("ring-rw");
    s.guest
        .write("/local/domain/3/data/name", "guest three")
        .unwrap();
    assert_eq!(
        s.guest.read("/local/domain/3/data/name").unwrap(),
        b"guest three"
    );
    // A value larger than the 1024-byte rings (within the guest node-size quota) crosses them
    // in several pieces both ways.
    let big = "x".repeat(1500);
    s.guest.write("/local/domain/3/data/big", &big).unwrap();
    assert_eq!(
        s.guest.read("/local/domain/3/data/big").unwrap(),
        big.as_bytes()
    );
    let out = tool(
        "xenstore-read",
        &s.daemon.socket,
        &["/local/domain/3/data/name"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "guest three\n");
    let perms = s
        .daemon
        .client()
        .get_perms("/local/domain/3/data/name")
        .unwrap();
    assert_eq!(perms.owner(), GUEST, "the guest owns what it wrote");
}

#[test]
fn guest_is_refused_outside_its_home() {
    let mut s = setup("ring-eacces");
    for path in ["/local/domain/0/x", "/tool/x"] {
        assert_eq!(s.guest.write(path, "no"), Err(Errno::EACCES), "{path}");
    }
    assert!(matches!(
        s.daemon.client().read("/tool/x"),
        Err(e) if e.errno() == Some(Errno::ENOENT)
    ));
    // The connection goes on after a refusal.
    s.guest.write("/local/domain/3/ok", "yes").unwrap();
}

#[test]
fn guest_watch_fires_on_dom0_write() {
    let mut s = setup("ring-watch");
    s.guest
        .request(
            MsgType::WATCH,
            &wire::join_strings(&["/local/domain/3/device", "tok"]),
        )
        .unwrap();
    assert_eq!(
        s.guest.next_event(),
        ("/local/domain/3/device".to_owned(), "tok".to_owned()),
        "the first event comes on registration"
    );
    tool(
        "xenstore-write",
        &s.daemon.socket,
        &["/local/domain/3/device/vbd", "51712"],
    );
    assert_eq!(
        s.guest.next_event(),
        ("/local/domain/3/device/vbd".to_owned(), "tok".to_owned())
    );
}

#[test]
fn release_drops_the_guest_and_its_home() {
    let mut s = setup("ring-release");
    s.guest.write("/local/domain/3/state", "1").unwrap();
    let mut dom0 = s.daemon.client();
    dom0.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(dom0.next_event().unwrap().path, "@releaseDomain");
    dom0.release(GUEST).unwrap();
    assert_eq!(dom0.next_event().unwrap().path, "@releaseDomain");
    assert!(!dom0.is_domain_introduced(GUEST).unwrap());
    assert!(matches!(
        dom0.read("/local/domain/3/state"),
        Err(e) if e.errno() == Some(Errno::ENOENT)
    ));
    // The domain comes back with a new ring (as after a reboot): served on that one.
    let mut again = introduce_guest(&s.broker, &s.daemon);
    again.write("/local/domain/3/state", "2").unwrap();
    assert_eq!(dom0.read("/local/domain/3/state").unwrap(), b"2");
}

/// XS_INTRODUCE answers after the ring is mapped: a ring reference with no grant behind it is
/// an error reply, and the domain is not introduced.
#[test]
fn introduce_with_an_unmappable_ring_is_an_error_reply() {
    let s = setup("ring-bad-introduce");
    let mut dom0 = s.daemon.client();
    let err = dom0.introduce(7, 4242, 9).unwrap_err();
    assert!(
        matches!(
            err.errno(),
            Some(Errno::ENOENT | Errno::EPERM | Errno::EINVAL)
        ),
        "{err:?}"
    );
    assert!(!dom0.is_domain_introduced(7).unwrap());
    // A grant reference beyond 32 bits is out of range.
    let err = dom0.introduce(8, 1 << 40, 9).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EINVAL));
    // The introduced guest is still served.
    let mut g = s.guest;
    g.write("/local/domain/3/after", "yes").unwrap();
}
