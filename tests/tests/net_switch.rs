//! backend-net's switch shared by guests that do not trust each other, with pvio's mock
//! front-end (frontend-guest's virtio-net driver over vhost-user) as the guests: a guest
//! claiming another's MAC address is dropped and counted (`--switch-port PATH,mac=...`), one
//! filling the learning table is capped (`--fdb-max-per-port`) and its addresses age out
//! (`--fdb-aging`), a flood storm is cut to `--flood-rate`, and random frames and descriptor
//! chains leave every chain returned once, the counters adding up and the other ports served.
//! The daemon's counters come from its stats socket.

mod net_support;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use frontend_guest::host::{NetDevice, NetOptions, Received};
use frontend_guest::net::NetHdr;
use net_support::frames;
use net_support::hostile::{hostile, noise_buffer, runner, transmit, tx_accounted};
use net_support::{
    assert_frames_logged, counter, drops, set_dirty_log, without_receive_offloads, NetDaemon,
};
use proptest::prop_assert_eq;
use proptest::test_runner::TestCaseError;
use pvio_tests::tmp::TempDir;

const WAIT: Duration = Duration::from_secs(10);
const BROADCAST: [u8; 6] = [0xff; 6];
const ETHERTYPE: u16 = 0x88b5;
/// The switch's base MAC: port i has the last octet 1 + i.
const BASE_MAC: &str = "52:54:00:aa:00:01";

fn port_mac(i: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0xaa, 0, 1 + i]
}

fn pin(daemon_dir: &std::path::Path, port: usize, mac: [u8; 6]) -> String {
    let m: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{},mac={}",
        daemon_dir.join(format!("port{port}.sock")).display(),
        m.join(":")
    )
}

fn connect(daemon: &NetDaemon, port: usize) -> NetDevice {
    daemon.connect(port, &NetOptions::default())
}

fn send(dev: &mut NetDevice, frame: &[u8]) {
    let pair = dev.pair(0).unwrap();
    pair.send(&NetHdr::default(), frame).unwrap();
    pair.wait_tx_done().unwrap();
}

/// The next frame whose payload is `payload` (others are skipped); panics after [`WAIT`].
fn recv_payload(dev: &mut NetDevice, payload: &[u8]) -> Received {
    let end = Instant::now() + WAIT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no frame with {payload:?} within {WAIT:?}");
        if let Some(r) = dev.pair(0).unwrap().recv(left).unwrap() {
            if r.frame.get(14..) == Some(payload) {
                return r;
            }
        }
    }
}

/// Nothing arrives on `dev` within a short while (after a frame that must be dropped; the
/// positive cases in the same test bound how long delivery takes).
fn assert_nothing(dev: &mut NetDevice) {
    let got = dev
        .pair(0)
        .unwrap()
        .recv(Duration::from_millis(300))
        .unwrap();
    assert!(got.is_none(), "unexpected frame {got:?}");
}

#[test]
fn a_guest_cannot_send_from_another_guests_address() {
    let dir = TempDir::new("net-switch-spoof").unwrap();
    // Port 0 (the victim) may only send from its own address; port 1 is not pinned.
    let victim = pin(dir.path(), 0, port_mac(0));
    let daemon = NetDaemon::switch(
        dir.path(),
        3,
        &["--mac", BASE_MAC, "--switch-port", &victim],
    );
    let mut a = connect(&daemon, 0);
    let mut spoofer = connect(&daemon, 1);
    let mut c = connect(&daemon, 2);
    let (ma, ms, mc) = (port_mac(0), port_mac(1), port_mac(2));
    send(
        &mut a,
        &frames::ethernet(BROADCAST, ma, ETHERTYPE, b"A is here"),
    );
    recv_payload(&mut c, b"A is here");
    recv_payload(&mut spoofer, b"A is here");
    // The spoofer claims A's address: dropped, counted, and A's station does not move.
    send(
        &mut spoofer,
        &frames::ethernet(mc, ma, ETHERTYPE, b"I am A"),
    );
    send(&mut c, &frames::ethernet(ma, mc, ETHERTYPE, b"to A"));
    recv_payload(&mut a, b"to A");
    // A pinned port sending from any other address is dropped too.
    send(
        &mut a,
        &frames::ethernet(mc, [2, 0, 0, 0, 0, 9], ETHERTYPE, b"not A"),
    );
    // The unpinned port may use other addresses of its own.
    send(
        &mut spoofer,
        &frames::ethernet(mc, ms, ETHERTYPE, b"honest"),
    );
    recv_payload(&mut c, b"honest");
    assert_nothing(&mut c);
    assert_nothing(&mut spoofer);
    let (p0, p1) = (daemon.port(0), daemon.port(1));
    assert_eq!(drops(&p1, "tx_spoofed"), 1, "{p1}");
    assert_eq!(counter(&p1, "tx_frames"), 1, "{p1}");
    assert_eq!(drops(&p0, "tx_spoofed"), 1, "{p0}");
    assert_eq!(counter(&p0, "tx_frames"), 1, "{p0}");
    daemon.stop();
}

#[test]
fn a_guest_filling_the_table_is_capped_and_its_addresses_age_out() {
    let dir = TempDir::new("net-switch-fill").unwrap();
    let daemon = NetDaemon::switch(
        dir.path(),
        3,
        &[
            "--mac",
            BASE_MAC,
            "--fdb-max-per-port",
            "4",
            "--fdb-aging",
            "3",
        ],
    );
    let mut victim = connect(&daemon, 0);
    let mut filler = connect(&daemon, 1);
    let mut c = connect(&daemon, 2);
    let (mv, mc) = (port_mac(0), port_mac(2));
    // The filler sends from 20 addresses (to C): 4 are learned (well within the aging time).
    send(
        &mut c,
        &frames::ethernet(BROADCAST, mc, ETHERTYPE, b"C is here"),
    );
    let sources: Vec<[u8; 6]> = (0..20u8).map(|i| [2, 0, 0, 0, 1, i]).collect();
    for (i, &src) in sources.iter().enumerate() {
        send(
            &mut filler,
            &frames::ethernet(mc, src, ETHERTYPE, &[i as u8]),
        );
    }
    let p1 = daemon.wait_port(1, "the filler's frames", |p| counter(p, "tx_frames") == 20);
    assert_eq!(counter(&p1, "fdb_refused"), 16, "{p1}");
    // Unicast to the victim is still delivered.
    send(
        &mut victim,
        &frames::ethernet(mc, mv, ETHERTYPE, b"victim speaks"),
    );
    recv_payload(&mut c, b"victim speaks");
    send(
        &mut c,
        &frames::ethernet(mv, mc, ETHERTYPE, b"to the victim"),
    );
    recv_payload(&mut victim, b"to the victim");
    // After the aging time the filler's addresses are forgotten: a frame to the first one
    // floods again (the victim sees it), and the table counts them as aged.
    let end = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < end, "no aging; {}", daemon.port(1));
        send(
            &mut c,
            &frames::ethernet(sources[0], mc, ETHERTYPE, b"to the first source"),
        );
        let flooded = victim
            .pair(0)
            .unwrap()
            .recv(Duration::from_millis(100))
            .unwrap()
            .is_some_and(|r| r.frame.get(14..) == Some(&b"to the first source"[..]));
        if flooded && counter(&daemon.port(1), "fdb_aged") == 4 {
            break;
        }
    }
    // Room again: four new addresses are learned, none refused.
    for i in 0..4u8 {
        send(
            &mut filler,
            &frames::ethernet(mc, [2, 0, 0, 0, 2, i], ETHERTYPE, &[i]),
        );
    }
    let p1 = daemon.port(1);
    assert_eq!(counter(&p1, "fdb_refused"), 16, "{p1}");
    drop(filler);
    daemon.stop();
}

#[test]
fn a_flood_storm_is_cut_to_the_ports_rate() {
    let dir = TempDir::new("net-switch-storm").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &["--mac", BASE_MAC, "--flood-rate", "20/s"]);
    let mut a = connect(&daemon, 0);
    let mut b = connect(&daemon, 1);
    let (ma, mb) = (port_mac(0), port_mac(1));
    // B makes itself known (from its own flood budget).
    send(
        &mut b,
        &frames::ethernet(BROADCAST, mb, ETHERTYPE, b"B is here"),
    );
    recv_payload(&mut a, b"B is here");
    let start = Instant::now();
    const STORM: u64 = 200;
    for i in 0..STORM {
        send(
            &mut a,
            &frames::ethernet(BROADCAST, ma, ETHERTYPE, &i.to_be_bytes()),
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Unicast to a known station is not limited.
    for i in 0..50u64 {
        send(
            &mut a,
            &frames::ethernet(mb, ma, ETHERTYPE, &i.to_le_bytes()),
        );
    }
    let p0 = daemon.wait_port(0, "the storm to be counted", |p| {
        counter(p, "tx_frames") + drops(p, "tx_flood_limited") == STORM + 50
    });
    let limited = drops(&p0, "tx_flood_limited");
    let passed = STORM - limited;
    // A full bucket (one second's worth) plus the rate over the storm's duration.
    let allowed = 20.0 + 20.0 * elapsed;
    assert!(
        passed as f64 <= allowed + 1.0,
        "{passed} flooded in {elapsed:.2} s; {p0}"
    );
    assert!(passed >= 20, "the first second's worth passes; {p0}");
    let p1 = daemon.wait_port(1, "B's frames", |p| counter(p, "rx_frames") == passed + 50);
    assert_eq!(drops(&p1, "rx_no_buffers"), 0, "{p1}");
    daemon.stop();
}

#[test]
fn hostile_frames_and_chains_leave_the_switch_consistent() {
    let dir = TempDir::new("net-switch-hostile").unwrap();
    let (pinned_b, pinned_c) = (
        pin(dir.path(), 1, port_mac(1)),
        pin(dir.path(), 2, port_mac(2)),
    );
    let daemon = NetDaemon::switch(
        dir.path(),
        3,
        &[
            "--mac",
            BASE_MAC,
            "--fdb-max-per-port",
            "8",
            "--flood-rate",
            "200/s",
            "--switch-port",
            &pinned_b,
            "--switch-port",
            &pinned_c,
        ],
    );
    // A is hostile; B and C are well-behaved and pinned to their addresses (so A cannot take
    // them over). C acks no receive offloads: A's offload frames to it go through the
    // software fallback.
    let a = connect(&daemon, 0);
    let b = connect(&daemon, 1);
    let c = daemon.connect(2, &without_receive_offloads());
    let buf = noise_buffer(&a);
    let ram_size = a.ram().size();
    let addresses = [port_mac(0), port_mac(1), port_mac(2), BROADCAST];
    let devs = RefCell::new((a, b, c, 0u64));
    let steps = proptest::collection::vec(hostile(buf, ram_size), 1..24);
    let result = runner(24).run(&steps, |steps| {
        let mut guard = devs.borrow_mut();
        let (a, b, c, sent) = &mut *guard;
        for step in steps {
            *sent += 1;
            // Every chain comes back exactly once (a head used twice or unknown is an error).
            transmit(a, step, &addresses)
                .map_err(|e| TestCaseError::fail(format!("transmit chains: {e}")))?;
            let p0 = daemon.port(0);
            prop_assert_eq!(tx_accounted(&p0), *sent, "{}", p0);
            // The receivers' rings stay consistent too.
            for dev in [&mut *b, &mut *c] {
                dev.pair(0)
                    .unwrap()
                    .drain_rx()
                    .map_err(|e| TestCaseError::fail(format!("receive: {e}")))?;
            }
        }
        // The switch goes on serving the other ports.
        let marker = format!("case after {sent} transmits");
        send(
            c,
            &frames::ethernet(port_mac(1), port_mac(2), ETHERTYPE, marker.as_bytes()),
        );
        recv_payload(b, marker.as_bytes());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nlog:\n{}", daemon.log());
    }
    for p in [1, 2] {
        let port = daemon.port(p);
        assert_eq!(drops(&port, "tx_spoofed"), 0, "{port}");
    }
    let (a, b, c, sent) = devs.into_inner();
    assert!(sent >= 24, "{sent} transmits");
    eprintln!("{sent} hostile transmits; port 0: {}", daemon.port(0));
    drop((a, b, c));
    daemon.stop();
}

/// While a receiver's front-end logs dirty pages (VHOST_USER_SET_LOG_BASE, live migration),
/// every page the switch copies a frame into is in its log: the switch writes through
/// vhost-daemon's guest-memory view, whose slices mark the log as vm-memory's own do.
#[test]
fn frames_the_switch_delivers_are_in_the_receivers_dirty_log() {
    let dir = TempDir::new("net-switch-log").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &["--mac", BASE_MAC]);
    let mut tx = connect(&daemon, 0);
    let mut rx = connect(&daemon, 1);
    let ram_size = rx.ram().size();
    let log = set_dirty_log(&mut rx, ram_size);
    // Frames that straddle pages, each with its own bytes.
    let payloads: Vec<Vec<u8>> = (0..8u8)
        .map(|i| (0..1400u32).map(|j| (j as u8) ^ i ^ 0x3c).collect())
        .collect();
    for p in &payloads {
        let frame = frames::ethernet(port_mac(1), port_mac(0), ETHERTYPE, p);
        send(&mut tx, &frame);
        recv_payload(&mut rx, p);
    }
    assert_frames_logged(&rx, &log, &payloads, "the switch");
    daemon.stop();
}
