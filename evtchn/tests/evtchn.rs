//! Event channels and grants through a real broker: semantics of Xen's operations, errors,
//! polling from an epoll loop, and a tight notify/wait loop that would hang on a lost wake-up.

mod common;

use std::os::fd::AsFd;
use std::thread;
use std::time::Duration;

use common::{next_or_sleep, ring_channel, temp_path, WAKE_DEADLINE};
use evtchn::{Broker, BrokerError, Domain, SendOutcome};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// Two domains with one interdomain channel: (front dom 1, its port, back dom 0, its port).
fn channel(broker: &Broker) -> (Domain, u32, Domain, u32) {
    let front = broker.connect(1).unwrap();
    let back = broker.connect(0).unwrap();
    let fp = front.alloc_unbound(0).unwrap();
    let bp = back.bind_interdomain(1, fp).unwrap();
    (front, fp, back, bp)
}

fn readable_now(dom: &Domain) -> bool {
    let mut fds = [PollFd::new(dom.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
}

fn refused(r: Result<impl std::fmt::Debug, BrokerError>) -> Errno {
    r.expect_err("operation should be refused")
        .refused_errno()
        .expect("a refusal, not another error")
}

#[test]
fn notify_wakes_the_peer_in_both_directions() {
    let broker = Broker::new();
    let (front, fp, back, bp) = channel(&broker);
    assert_eq!(front.notify(fp).unwrap(), SendOutcome::Raise);
    assert!(readable_now(&back));
    assert_eq!(back.wait(Some(WAKE_DEADLINE)).unwrap(), vec![bp]);
    assert!(!readable_now(&back));
    assert_eq!(back.notify(bp).unwrap(), SendOutcome::Raise);
    assert_eq!(front.wait(Some(WAKE_DEADLINE)).unwrap(), vec![fp]);
    // A second send before the receiver looked is coalesced into the first.
    assert_eq!(front.notify(fp).unwrap(), SendOutcome::Raise);
    assert_eq!(front.notify(fp).unwrap(), SendOutcome::AlreadyPending);
    assert_eq!(back.pending().unwrap(), vec![bp]);
    assert!(back.pending().unwrap().is_empty());
}

#[test]
fn masked_port_stays_pending_and_unmask_wakes() {
    let broker = Broker::new();
    let (front, fp, back, bp) = channel(&broker);
    back.mask(bp).unwrap();
    assert_eq!(front.notify(fp).unwrap(), SendOutcome::Masked);
    assert!(back.is_pending(bp));
    assert!(
        !readable_now(&back),
        "a masked port must not ring the doorbell"
    );
    assert!(back.pending().unwrap().is_empty());
    back.unmask(bp).unwrap();
    assert!(
        readable_now(&back),
        "unmask of a pending port rings the doorbell"
    );
    assert_eq!(back.wait(Some(WAKE_DEADLINE)).unwrap(), vec![bp]);
    assert!(!back.is_masked(bp));
}

#[test]
fn wait_times_out_without_events() {
    let broker = Broker::new();
    let (_front, _fp, back, _bp) = channel(&broker);
    assert!(back
        .wait(Some(Duration::from_millis(20)))
        .unwrap()
        .is_empty());
}

#[test]
fn sends_before_the_peer_binds_are_dropped() {
    let broker = Broker::new();
    let front = broker.connect(3).unwrap();
    let back = broker.connect(0).unwrap();
    let fp = front.alloc_unbound(0).unwrap();
    assert_eq!(front.notify(fp).unwrap(), SendOutcome::Unbound);
    let bp = back.bind_interdomain(3, fp).unwrap();
    assert!(back.pending().unwrap().is_empty());
    assert_eq!(front.notify(fp).unwrap(), SendOutcome::Raise);
    assert_eq!(back.wait(Some(WAKE_DEADLINE)).unwrap(), vec![bp]);
}

#[test]
fn binding_is_refused_as_xen_refuses_it() {
    let broker = Broker::new();
    let guest = broker.connect(3).unwrap();
    let dom0 = broker.connect(0).unwrap();
    let other = broker.connect(4).unwrap();
    let port = guest.alloc_unbound(0).unwrap();
    assert_eq!(
        refused(other.bind_interdomain(3, port)),
        Errno::EINVAL,
        "allocated for dom0 only"
    );
    assert_eq!(
        refused(dom0.bind_interdomain(3, port + 1)),
        Errno::EINVAL,
        "no such port"
    );
    assert_eq!(
        refused(dom0.bind_interdomain(9, port)),
        Errno::EINVAL,
        "no such domain"
    );
    dom0.bind_interdomain(3, port).unwrap();
    assert_eq!(
        refused(dom0.bind_interdomain(3, port)),
        Errno::EINVAL,
        "already bound"
    );
    assert!(matches!(
        guest.notify(999),
        Err(BrokerError::InvalidPort(999))
    ));
    assert!(matches!(guest.mask(0), Err(BrokerError::InvalidPort(0))));
    assert!(matches!(
        dom0.close(port + 7),
        Err(BrokerError::InvalidPort(_))
    ));
}

#[test]
fn close_returns_the_peer_port_to_unbound() {
    let broker = Broker::new();
    let (front, fp, back, bp) = channel(&broker);
    back.close(bp).unwrap();
    assert!(matches!(back.notify(bp), Err(BrokerError::InvalidPort(_))));
    // The front end's cached route still points at the closed port: the back end ignores it.
    front.notify(fp).unwrap();
    assert!(back.pending().unwrap().is_empty());
    // The front end's port is unbound again, waiting for dom0: it can be bound anew.
    let bp2 = back.bind_interdomain(1, fp).unwrap();
    let front2 = broker.connect(1).unwrap();
    let fp2 = front2.alloc_unbound(0).unwrap();
    let bp3 = back.bind_interdomain(1, fp2).unwrap();
    assert_eq!(front2.notify(fp2).unwrap(), SendOutcome::Raise);
    assert_eq!(back.wait(Some(WAKE_DEADLINE)).unwrap(), vec![bp3]);
    assert_ne!(bp2, bp3);
}

#[test]
fn a_disconnected_endpoint_releases_its_ports_and_grants() {
    let broker = Broker::new();
    let dom0 = broker.connect(0).unwrap();
    let guest = broker.connect(5).unwrap();
    let gp = guest.alloc_unbound(0).unwrap();
    let (gref, _) = guest.grant_access(0, 1).unwrap();
    let p0 = dom0.alloc_unbound(5).unwrap();
    guest.bind_interdomain(0, p0).unwrap();
    drop(guest);
    // The connection thread cleans up after EOF; poll the broker until it has.
    let deadline = std::time::Instant::now() + WAKE_DEADLINE;
    let guest2 = broker.connect(5).unwrap();
    loop {
        match guest2.bind_interdomain(0, p0) {
            Ok(_) => break,
            Err(e) if e.refused_errno() == Some(Errno::EINVAL) => {
                assert!(std::time::Instant::now() < deadline, "port never released");
                thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused(dom0.map_grant(5, gref)), Errno::ENOENT);
    assert_eq!(refused(dom0.bind_interdomain(5, gp)), Errno::EINVAL);
}

#[test]
fn two_endpoints_of_one_domain_keep_their_events_apart() {
    let broker = Broker::new();
    let guest = broker.connect(2).unwrap();
    let xenstored = broker.connect(0).unwrap();
    let blkback = broker.connect(0).unwrap();
    let p1 = guest.alloc_unbound(0).unwrap();
    let p2 = guest.alloc_unbound(0).unwrap();
    let x = xenstored.bind_interdomain(2, p1).unwrap();
    let b = blkback.bind_interdomain(2, p2).unwrap();
    assert_ne!(x, b, "ports are numbered per domain");
    guest.notify(p2).unwrap();
    assert!(xenstored.pending().unwrap().is_empty());
    assert_eq!(blkback.wait(Some(WAKE_DEADLINE)).unwrap(), vec![b]);
}

#[test]
fn grants_are_mapped_only_by_their_grantee() {
    let broker = Broker::new();
    let guest = broker.connect(3).unwrap();
    let dom0 = broker.connect(0).unwrap();
    let dom4 = broker.connect(4).unwrap();
    let (gref, mine) = guest.grant_access(0, 2).unwrap();
    assert!(gref >= evtchn::broker::GNTTAB_NR_RESERVED_ENTRIES);
    assert_eq!(mine.len(), 2 * evtchn::PAGE_SIZE);
    assert_eq!(refused(dom4.map_grant(3, gref)), Errno::EPERM);
    assert_eq!(refused(dom0.map_grant(3, gref + 1)), Errno::ENOENT);
    let theirs = dom0.map_grant(3, gref).unwrap();
    mine.write_bytes(5000, b"ring-ref").unwrap();
    let mut buf = [0u8; 8];
    theirs.read_bytes(5000, &mut buf).unwrap();
    assert_eq!(&buf, b"ring-ref");
    assert_eq!(
        refused(dom0.end_access(gref)),
        Errno::ENOENT,
        "dom0 has no such grant"
    );
    guest.end_access(gref).unwrap();
    assert_eq!(refused(dom0.map_grant(3, gref)), Errno::ENOENT);
    // The existing mapping stays valid after the grant ended.
    theirs.read_bytes(5000, &mut buf).unwrap();
    assert_eq!(refused(guest.grant_access(0, 0)), Errno::EINVAL);
}

#[test]
fn the_doorbell_works_from_an_epoll_loop() {
    let broker = Broker::new();
    let (front, fp, back, bp) = channel(&broker);
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    epoll
        .add(back.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 42))
        .unwrap();
    let notifier = thread::spawn(move || front.notify(fp).unwrap());
    let mut events = [EpollEvent::empty(); 4];
    let n = epoll.wait(&mut events, 20_000u16).unwrap();
    assert_eq!(n, 1);
    assert_eq!(events[0].data(), 42);
    assert_eq!(back.pending().unwrap(), vec![bp]);
    assert_eq!(notifier.join().unwrap(), SendOutcome::Raise);
}

#[test]
fn domains_connect_through_a_listening_socket() {
    let broker = Broker::new();
    let path = temp_path("broker");
    let handle = broker.listen(&path).unwrap().spawn().unwrap();
    let guest = Domain::connect(&path, 7).unwrap();
    let dom0 = Domain::connect(&path, 0).unwrap();
    assert_eq!(guest.domid(), 7);
    let gp = guest.alloc_unbound(0).unwrap();
    let p = dom0.bind_interdomain(7, gp).unwrap();
    guest.notify(gp).unwrap();
    assert_eq!(dom0.wait(Some(WAKE_DEADLINE)).unwrap(), vec![p]);
    drop(handle);
    assert!(
        !path.exists(),
        "the socket file is removed with the listener"
    );
    // Accepted connections outlive the listener.
    dom0.notify(p).unwrap();
    assert_eq!(guest.wait(Some(WAKE_DEADLINE)).unwrap(), vec![gp]);
}

#[test]
fn a_toolstack_socket_pins_the_domain_id() {
    let broker = Broker::new();
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    broker.serve(theirs, Some(3)).unwrap();
    assert_eq!(refused(Domain::from_socket(ours, 0)), Errno::EPERM);
}

#[test]
fn tight_notify_and_wait_loop_loses_no_wake_up() {
    // One request at a time: each side sleeps after every message, so a single lost wake-up
    // stalls the loop and fails the deadline in `next_or_sleep`.
    let broker = Broker::new();
    let (mut front, mut back) = ring_channel(&broker);
    const ROUND_TRIPS: u64 = 50_000;

    let back_thread = thread::spawn(move || {
        for i in 0..ROUND_TRIPS {
            let req = next_or_sleep(&mut back.ring, &back.dom, "back end");
            assert_eq!(req[0], i);
            back.ring.push_response(&[i, 0]).unwrap();
            if back.ring.push_responses_and_check_notify() {
                back.dom.notify(back.port).unwrap();
            }
        }
    });
    for i in 0..ROUND_TRIPS {
        front.ring.push_request(&[i; 8]).unwrap();
        if front.ring.push_requests_and_check_notify() {
            front.dom.notify(front.port).unwrap();
        }
        assert_eq!(
            next_or_sleep(&mut front.ring, &front.dom, "front end")[0],
            i
        );
    }
    back_thread.join().unwrap();
}

/// A per-domain socket fixes the client's identity: a hello claiming another domain is
/// refused, and the socket file is mode 0600.
#[test]
fn a_domain_socket_client_cannot_claim_another_domain() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Broker::new();
    let path = temp_path("dom5");
    let _h = broker.listen_domain(&path, 5).unwrap().spawn().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    for claim in [0, 3] {
        assert_eq!(refused(Domain::connect(&path, claim)), Errno::EPERM);
    }
    let me = Domain::connect(&path, 5).unwrap();
    // The broker serves it as domain 5: dom0 can bind to a port it allocated for dom0.
    let back = broker.connect(0).unwrap();
    let p = me.alloc_unbound(0).unwrap();
    back.bind_interdomain(5, p).unwrap();
}

/// Another user cannot reach the broker's sockets (mode 0600). Needs root to switch users.
#[test]
fn other_users_cannot_connect_to_the_broker() {
    use std::os::unix::process::CommandExt;
    // SAFETY: getuid has no preconditions.
    if unsafe { nix::libc::getuid() } != 0 {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let broker = Broker::new();
    let privileged = temp_path("priv");
    let dom = temp_path("dom6");
    let _a = broker.listen(&privileged).unwrap().spawn().unwrap();
    let _b = broker.listen_domain(&dom, 6).unwrap().spawn().unwrap();
    for path in [privileged, dom] {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        use std::os::fd::AsRawFd;
        let addr = UnixAddr::new(&path).unwrap();
        let mut cmd = std::process::Command::new("true");
        cmd.uid(65534).gid(65534);
        // SAFETY: only async-signal-safe calls (socket, connect, close) between fork and exec;
        // the outcome travels back as the spawn error.
        unsafe {
            cmd.pre_exec(move || {
                let s = socket(
                    AddressFamily::Unix,
                    SockType::SeqPacket,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                connect(s.as_raw_fd(), &addr)?;
                Ok(())
            });
        }
        let err = cmd
            .status()
            .expect_err("a client of another user got through");
        assert_eq!(
            err.raw_os_error(),
            Some(nix::libc::EACCES),
            "{path:?}: {err}"
        );
    }
}
