//! backend-net against pvio's own mock front-end (frontend-guest's virtio-net driver over
//! vhost-user): frames through the switch and through a TAP in a network namespace this test
//! creates, offloads passed through or done in software, multi-queue, control queue commands,
//! malformed transmit chains, the receive backlog and reconnects. Every check crosses the real
//! socket boundary to the real daemon process; the daemon's counters come from its stats socket.

mod net_support;

use std::cell::RefCell;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use frontend_guest::host::net::{NetResult, ALL_FEATURES};
use frontend_guest::host::{NetDevice, NetOptions, Received};
use frontend_guest::net::{
    NetHdr, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_OK,
};
use frontend_guest::virtq::{
    RawDescriptor, RawNext, VIRTIO_F_IN_ORDER, VIRTIO_RING_F_EVENT_IDX, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use frontend_guest::GuestRam;
use net_support::frames::{self, tcp4, udp4};
use net_support::hostile::{hostile, noise_buffer, runner, transmit, tx_accounted};
use net_support::{
    assert_frames_logged, counter, drops, set_dirty_log, tso4_hdr, wait_for,
    without_receive_offloads, NetDaemon, Netns,
};
use proptest::prop_assert_eq;
use proptest::test_runner::TestCaseError;
use pvio_tests::tmp::TempDir;

const WAIT: Duration = Duration::from_secs(10);
const BROADCAST: [u8; 6] = [0xff; 6];

fn with_features(features: u64) -> NetOptions {
    NetOptions {
        features,
        ..NetOptions::default()
    }
}

fn mac(dev: &NetDevice) -> [u8; 6] {
    dev.config().mac
}

fn send(dev: &mut NetDevice, hdr: &NetHdr, frame: &[u8]) {
    let pair = dev.pair(0).unwrap();
    pair.send(hdr, frame).unwrap();
    pair.wait_tx_done().unwrap();
}

/// Receives frames on `pair` until one satisfies `want` (others, e.g. IPv6 neighbour
/// discovery from a namespace, are skipped); panics after [`WAIT`].
fn recv_where(dev: &mut NetDevice, pair: usize, want: impl Fn(&Received) -> bool) -> Received {
    let end = Instant::now() + WAIT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no matching frame within {WAIT:?}");
        if let Some(r) = dev.pair(pair).unwrap().recv(left).unwrap() {
            if want(&r) {
                return r;
            }
        }
    }
}

fn recv_frame(dev: &mut NetDevice) -> Received {
    recv_where(dev, 0, |_| true)
}

/// Nothing arrives on `dev` within a short while (used after a frame that must be dropped;
/// the positive case in the same test bounds how long delivery takes).
fn assert_nothing(dev: &mut NetDevice) -> NetResult<()> {
    let got = dev.pair(0)?.recv(Duration::from_millis(300))?;
    assert!(got.is_none(), "unexpected frame {got:?}");
    Ok(())
}

/// A learns the switch its address with a broadcast that B receives, and B answers.
fn introduce(a: &mut NetDevice, b: &mut NetDevice) {
    let (ma, mb) = (mac(a), mac(b));
    send(
        a,
        &NetHdr::default(),
        &frames::ethernet(BROADCAST, ma, 0x88b5, b"hello from A"),
    );
    assert_eq!(recv_frame(b).frame[6..12], ma);
    send(
        b,
        &NetHdr::default(),
        &frames::ethernet(ma, mb, 0x88b5, b"hello from B"),
    );
    assert_eq!(recv_frame(a).frame[6..12], mb);
}

#[test]
fn switch_passes_frames_of_every_size_and_offloads_untouched() {
    let dir = TempDir::new("net-proto-sizes").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &[]);
    let mut a = daemon.connect(0, &NetOptions::default());
    let mut b = daemon.connect(1, &NetOptions::default());
    // Both drivers negotiated VIRTIO_F_IN_ORDER, so every used element below (the merged
    // buffers of the large frame too) is checked to come in the order its chain was made
    // available (SplitQueue::set_in_order).
    for dev in [&a, &b] {
        assert_ne!(dev.features() & (1 << VIRTIO_F_IN_ORDER), 0);
    }
    introduce(&mut a, &mut b);
    let (ma, mb) = (mac(&a), mac(&b));
    for len in [60usize, 1514, 1518] {
        let frame = frames::ethernet(mb, ma, 0x88b5, &vec![len as u8; len - 14]);
        send(&mut a, &NetHdr::default(), &frame);
        let r = recv_frame(&mut b);
        assert_eq!(r.frame, frame, "{len}-byte frame");
        assert_eq!(r.hdr.gso_type, 0);
    }
    // A 64 KiB TCP segmentation offload frame with a partial checksum: B acked GUEST_TSO4 and
    // GUEST_CSUM, so it arrives as it was sent, spread over many 2 KiB merged buffers.
    let payload: Vec<u8> = (0..62_000u32).map(|i| (i * 7) as u8).collect();
    let frame = tcp4(mb, ma, [10, 80, 0, 1], [10, 80, 0, 2], 1000, &payload, true);
    let hdr = tso4_hdr(1448);
    send(&mut a, &hdr, &frame);
    let r = recv_frame(&mut b);
    assert_eq!(r.frame, frame);
    assert_eq!(
        (r.hdr.gso_type, r.hdr.gso_size, r.hdr.flags),
        (VIRTIO_NET_HDR_GSO_TCPV4, 1448, VIRTIO_NET_HDR_F_NEEDS_CSUM)
    );
    assert!(
        r.hdr.num_buffers > 30,
        "merged buffers: {}",
        r.hdr.num_buffers
    );
    // The same frame scattered over many small descriptors.
    a.pair(0)
        .unwrap()
        .send_scattered(&hdr, &frame, 1000)
        .unwrap();
    assert_eq!(recv_frame(&mut b).frame, frame);
    let p0 = daemon.port(0);
    assert_eq!(counter(&p0, "tx_frames"), 6, "{p0}");
    daemon.stop();
}

#[test]
fn switch_segments_and_checksums_for_a_receiver_without_offloads() {
    let dir = TempDir::new("net-proto-gso").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &[]);
    let mut a = daemon.connect(0, &NetOptions::default());
    let mut b = daemon.connect(1, &without_receive_offloads());
    introduce(&mut a, &mut b);
    let (ma, mb) = (mac(&a), mac(&b));
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 13) as u8).collect();
    let frame = tcp4(mb, ma, [10, 80, 0, 1], [10, 80, 0, 2], 5000, &payload, true);
    let hdr = tso4_hdr(1448);
    send(&mut a, &hdr, &frame);
    let mut joined = Vec::new();
    for i in 0..3 {
        let r = recv_frame(&mut b);
        assert_eq!(r.hdr.gso_type, 0, "segment {i} is a plain frame");
        assert!(frames::tcp4_checksums_ok(&r.frame), "segment {i} checksums");
        assert!(frames::tcp4_payload(&r.frame).len() <= 1448);
        joined.extend_from_slice(frames::tcp4_payload(&r.frame));
    }
    assert_eq!(joined, payload);
    // A single frame with a partial checksum arrives with the checksum filled in.
    let small = tcp4(
        mb,
        ma,
        [10, 80, 0, 1],
        [10, 80, 0, 2],
        9,
        b"partial checksum",
        true,
    );
    let csum = NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..NetHdr::default()
    };
    send(&mut a, &csum, &small);
    let r = recv_frame(&mut b);
    assert!(frames::tcp4_checksums_ok(&r.frame));
    assert_eq!(
        r.frame,
        tcp4(
            mb,
            ma,
            [10, 80, 0, 1],
            [10, 80, 0, 2],
            9,
            b"partial checksum",
            false
        )
    );
    daemon.stop();
}

#[test]
fn switch_learns_floods_and_forgets() {
    let dir = TempDir::new("net-proto-learn").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 3, &[]);
    let mut a = daemon.connect(0, &NetOptions::default());
    let mut b = daemon.connect(1, &NetOptions::default());
    let mut c = daemon.connect(2, &NetOptions::default());
    let (ma, mb) = (mac(&a), mac(&b));
    // B has not sent anything: a frame to B floods, C sees it too.
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(mb, ma, 0x88b5, b"before learning"),
    );
    assert_eq!(recv_frame(&mut b).frame[14..], *b"before learning");
    assert_eq!(recv_frame(&mut c).frame[14..], *b"before learning");
    // Once B has sent, frames to B go to B only.
    send(
        &mut b,
        &NetHdr::default(),
        &frames::ethernet(ma, mb, 0x88b5, b"B speaks"),
    );
    assert_eq!(recv_frame(&mut a).frame[14..], *b"B speaks");
    // A was learned from its first frame: B's answer went to A only.
    assert_nothing(&mut c).unwrap();
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(mb, ma, 0x88b5, b"after learning"),
    );
    assert_eq!(recv_frame(&mut b).frame[14..], *b"after learning");
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(mb, ma, 0x88b5, b"again"),
    );
    assert_eq!(recv_frame(&mut b).frame[14..], *b"again");
    assert_nothing(&mut c).unwrap();
    // B goes away: the switch forgets it and floods again; a new B connects and gets them.
    drop(b);
    daemon.wait_port(1, "B's disconnect", |p| counter(p, "connections") == 1);
    let mut b2 = daemon.connect(1, &NetOptions::default());
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(mb, ma, 0x88b5, b"after B left"),
    );
    assert_eq!(recv_frame(&mut c).frame[14..], *b"after B left");
    assert_eq!(recv_frame(&mut b2).frame[14..], *b"after B left");
    assert_eq!(counter(&daemon.port(1), "connections"), 2);
    daemon.stop();
}

#[test]
fn control_queue_sets_the_receive_filter_and_refuses_the_rest() {
    let dir = TempDir::new("net-proto-ctrl").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &["--num-queue-pairs", "2"]);
    let mut a = daemon.connect(0, &NetOptions::default());
    let mut b = daemon.connect(1, &NetOptions::default());
    let (ma, mb) = (mac(&a), mac(&b));
    let other = [0x52, 0x54, 0, 0x99, 0, 1];
    let extra = [0x52, 0x54, 0, 0x99, 0, 2];
    assert_eq!(
        b.ctrl(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[0])
            .unwrap(),
        VIRTIO_NET_OK
    );
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(other, ma, 0x88b5, b"to nobody"),
    );
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(mb, ma, 0x88b5, b"to B"),
    );
    assert_eq!(
        recv_frame(&mut b).frame[14..],
        *b"to B",
        "the unknown address was filtered"
    );
    let mut tables = vec![0u8; 64];
    let n = frontend_guest::net::mac_table(&[extra], &mut tables).unwrap();
    let m = frontend_guest::net::mac_table(&[], &mut tables[n..]).unwrap();
    tables.truncate(n + m);
    assert_eq!(
        b.ctrl(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, &tables)
            .unwrap(),
        VIRTIO_NET_OK
    );
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(extra, ma, 0x88b5, b"to the table"),
    );
    assert_eq!(recv_frame(&mut b).frame[14..], *b"to the table");
    assert_eq!(
        b.ctrl(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST, &[1])
            .unwrap(),
        VIRTIO_NET_OK
    );
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(BROADCAST, ma, 0x88b5, b"broadcast"),
    );
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(mb, ma, 0x88b5, b"after broadcast"),
    );
    assert_eq!(recv_frame(&mut b).frame[14..], *b"after broadcast");
    let p1 = daemon.port(1);
    assert_eq!(drops(&p1, "rx_filtered"), 2, "{p1}");
    // Unknown classes and commands, and bad arguments, are refused; the queue goes on.
    assert_eq!(b.ctrl(9, 0, &[]).unwrap(), VIRTIO_NET_ERR, "unknown class");
    assert_eq!(
        b.ctrl(VIRTIO_NET_CTRL_RX, 7, &[1]).unwrap(),
        VIRTIO_NET_ERR,
        "unknown command"
    );
    assert_eq!(
        b.ctrl(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1, 2])
            .unwrap(),
        VIRTIO_NET_ERR,
        "bad data"
    );
    assert_eq!(
        b.ctrl(
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &0u16.to_le_bytes()
        )
        .unwrap(),
        VIRTIO_NET_ERR
    );
    assert_eq!(
        b.ctrl(
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &3u16.to_le_bytes()
        )
        .unwrap(),
        VIRTIO_NET_ERR
    );
    assert_eq!(
        b.ctrl(
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &2u16.to_le_bytes()
        )
        .unwrap(),
        VIRTIO_NET_OK
    );
    // A control chain with no room for the ack is returned unused and counted.
    let buf = b.ram().alloc(64, 8).unwrap();
    let used = b
        .ctrl_raw(&[RawDescriptor {
            addr: buf,
            len: 3,
            flags: 0,
            next: RawNext::Slot(0),
        }])
        .unwrap();
    assert_eq!(used, 0);
    assert_eq!(
        b.ctrl(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1])
            .unwrap(),
        VIRTIO_NET_OK,
        "still working"
    );
    let p1 = daemon.port(1);
    assert_eq!(
        (counter(&p1, "ctrl_ok"), counter(&p1, "ctrl_err")),
        (5, 6),
        "{p1}"
    );
    daemon.stop();
}

/// A driver that negotiated no transmit offload may ask for nothing in the header (virtio 1.2
/// §5.1.6.2: flags zero, gso_type NONE), so backend-net does not read it, as DPDK's vhost
/// library does not: what such a driver leaves in it is ignored and the frame goes on with a
/// zero header; a chain shorter than the header and a frame above the MTU are still dropped.
#[test]
fn transmit_headers_are_not_read_without_transmit_offloads() {
    let dir = TempDir::new("net-proto-no-tx-offload").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &[]);
    let offloads =
        1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6;
    let mut a = daemon.connect(0, &with_features(ALL_FEATURES & !offloads));
    let mut b = daemon.connect(1, &NetOptions::default());
    let (ma, mb) = (mac(&a), mac(&b));
    let left_over = NetHdr {
        flags: 2 | VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        gso_size: 100,
        csum_start: 9999,
        csum_offset: 77,
        ..NetHdr::default()
    };
    let good = frames::ethernet(mb, ma, 0x88b5, b"its header is not read");
    send(&mut a, &left_over, &good);
    let got = recv_frame(&mut b);
    assert_eq!(got.frame, good);
    assert_eq!(
        NetHdr {
            num_buffers: 0,
            ..got.hdr
        },
        NetHdr::default()
    );
    send(
        &mut a,
        &left_over,
        &frames::ethernet(mb, ma, 0x88b5, &[0u8; 3000]),
    );
    let ram = a.ram().clone();
    let buf = ram.alloc(64, 64).unwrap();
    let short = RawDescriptor {
        addr: buf,
        len: 5,
        flags: 0,
        next: RawNext::Slot(0),
    };
    a.pair(0).unwrap().send_raw(&[short]).unwrap();
    a.pair(0).unwrap().wait_tx_done().unwrap();
    assert_nothing(&mut b).unwrap();
    let p0 = daemon.port(0);
    assert_eq!(drops(&p0, "tx_bad_header"), 1, "{p0}");
    assert_eq!(drops(&p0, "tx_too_big"), 1, "{p0}");
    assert_eq!(counter(&p0, "tx_frames"), 1, "{p0}");
    daemon.stop();
}

#[test]
fn malformed_transmit_chains_are_dropped_and_counted() {
    let dir = TempDir::new("net-proto-bad-tx").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &[]);
    let mut a = daemon.connect(0, &NetOptions::default());
    let mut b = daemon.connect(1, &NetOptions::default());
    let (ma, mb) = (mac(&a), mac(&b));
    let ram = a.ram().clone();
    let buf = ram.alloc(8192, 64).unwrap();
    let good = frames::ethernet(mb, ma, 0x88b5, b"a good frame");
    ram.write(buf, &NetHdr::default().to_bytes()).unwrap();
    ram.write(buf + 12, &good).unwrap();
    let raw = |addr, len, flags, next| RawDescriptor {
        addr,
        len,
        flags,
        next,
    };
    let outside = ram.size() + 0x10_000;
    let chains: Vec<(&str, Vec<RawDescriptor>)> = vec![
        ("short header", vec![raw(buf, 5, 0, RawNext::Slot(0))]),
        (
            "outside guest memory",
            vec![
                raw(buf, 12, VIRTQ_DESC_F_NEXT, RawNext::Chain(1)),
                raw(outside, 60, 0, RawNext::Slot(0)),
            ],
        ),
        (
            "device-writable buffer",
            vec![raw(buf, 12 + 60, VIRTQ_DESC_F_WRITE, RawNext::Slot(0))],
        ),
        (
            "broken link",
            vec![raw(buf, 12, VIRTQ_DESC_F_NEXT, RawNext::Slot(999))],
        ),
    ];
    for (what, descs) in &chains {
        a.pair(0)
            .unwrap()
            .send_raw(descs)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        a.pair(0)
            .unwrap()
            .wait_tx_done()
            .unwrap_or_else(|e| panic!("{what} not returned: {e}"));
    }
    let bad_headers = [
        NetHdr {
            flags: 2,
            ..NetHdr::default()
        },
        NetHdr {
            gso_type: 3,
            gso_size: 100,
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            ..NetHdr::default()
        },
        NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 0,
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            ..NetHdr::default()
        },
        NetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 60,
            csum_offset: 16,
            ..NetHdr::default()
        },
    ];
    for h in &bad_headers {
        send(&mut a, h, &good);
    }
    send(
        &mut a,
        &NetHdr::default(),
        &frames::ethernet(mb, ma, 0x88b5, &[0u8; 3000]),
    );
    send(&mut a, &NetHdr::default(), &good[..10]);
    // The device went on: a good frame still arrives, and only it.
    send(&mut a, &NetHdr::default(), &good);
    assert_eq!(recv_frame(&mut b).frame, good);
    assert_nothing(&mut b).unwrap();
    let p0 = daemon.port(0);
    assert_eq!(drops(&p0, "tx_bad_chain"), 3, "{p0}");
    assert_eq!(drops(&p0, "tx_bad_header"), 6, "{p0}");
    assert_eq!(drops(&p0, "tx_too_big"), 1, "{p0}");
    assert_eq!(counter(&p0, "tx_frames"), 1, "{p0}");
    daemon.stop();
}

/// A on port 0 with default options, B on port 1 with `b_opts` and a 64-entry receive queue,
/// each having heard from the other.
fn sender_and_small_receiver(daemon: &NetDaemon, b_opts: NetOptions) -> (NetDevice, NetDevice) {
    let mut a = daemon.connect(0, &NetOptions::default());
    let small = NetOptions {
        queue_size: 64,
        ..b_opts
    };
    let mut b = daemon.connect(1, &small);
    introduce(&mut a, &mut b);
    (a, b)
}

#[test]
fn receive_backlog_holds_then_drops_and_delivers_in_order() {
    let dir = TempDir::new("net-proto-backlog").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &["--rx-backlog", "32"]);
    let (mut a, mut b) = sender_and_small_receiver(&daemon, NetOptions::default());
    let (ma, mb) = (mac(&a), mac(&b));
    // B does not take frames: 64 fill its buffers, 32 wait, 20 are dropped.
    for seq in 0..116u32 {
        send(
            &mut a,
            &NetHdr::default(),
            &frames::ethernet(mb, ma, 0x88b5, &seq.to_be_bytes()),
        );
    }
    let p1 = daemon.wait_port(1, "the backlog to fill", |p| {
        drops(p, "rx_no_buffers") == 20
    });
    assert_eq!(counter(&p1, "rx_frames"), 64 + 1, "{p1}");
    for seq in 0..96u32 {
        let r = recv_frame(&mut b);
        assert_eq!(r.frame[14..18], seq.to_be_bytes(), "frames arrive in order");
    }
    assert_nothing(&mut b).unwrap();
    let p1 = daemon.port(1);
    assert_eq!(
        (counter(&p1, "rx_frames"), drops(&p1, "rx_no_buffers")),
        (96 + 1, 20),
        "{p1}"
    );
    daemon.stop();
}

#[test]
fn receive_kicks_are_asked_for_only_while_frames_wait_for_buffers() {
    let dir = TempDir::new("net-proto-rx-kicks").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &["--rx-backlog", "32"]);
    // Without VIRTIO_RING_F_EVENT_IDX (as DPDK's virtio-user drives it) the used ring's flags
    // say whether to kick.
    let no_event_idx = with_features(ALL_FEATURES & !(1 << VIRTIO_RING_F_EVENT_IDX));
    let (mut a, mut b) = sender_and_small_receiver(&daemon, no_event_idx);
    assert!(!b.has_feature(VIRTIO_RING_F_EVENT_IDX));
    let (ma, mb) = (mac(&a), mac(&b));
    let frame = |seq: u32| frames::ethernet(mb, ma, 0x88b5, &seq.to_be_bytes());
    // B's buffers never ran out: refilling them after each frame does not kick (the device
    // keeps VIRTQ_USED_F_NO_NOTIFY set, virtio 1.2 §2.7.10).
    let kicks = b.pair(0).unwrap().rx_kicks();
    for seq in 0..100u32 {
        send(&mut a, &NetHdr::default(), &frame(seq));
        assert_eq!(recv_frame(&mut b).frame[14..18], seq.to_be_bytes());
    }
    assert_eq!(b.pair(0).unwrap().rx_kicks(), kicks, "refills kicked");
    // 64 frames fill B's buffers and 8 wait: now a refill kicks, and the 8 follow in order.
    for seq in 0..72u32 {
        send(&mut a, &NetHdr::default(), &frame(seq));
    }
    for seq in 0..72u32 {
        assert_eq!(recv_frame(&mut b).frame[14..18], seq.to_be_bytes());
    }
    assert!(
        b.pair(0).unwrap().rx_kicks() > kicks,
        "no kick for waiting frames"
    );
    assert_nothing(&mut b).unwrap();
    let p1 = daemon.port(1);
    assert_eq!(drops(&p1, "rx_no_buffers"), 0, "{p1}");
    daemon.stop();
}

#[test]
fn control_queue_follows_the_negotiated_pairs() {
    let dir = TempDir::new("net-proto-ctrl-index").unwrap();
    let daemon = NetDaemon::switch(dir.path(), 2, &["--num-queue-pairs", "2"]);
    // A negotiates VIRTIO_NET_F_MQ: its control queue is vring 4 (2 × max_virtqueue_pairs).
    let two = NetOptions {
        queue_pairs: 2,
        ..NetOptions::default()
    };
    let mut a = daemon.connect(0, &two);
    // B does not: one pair, and the control queue is vring 2 (virtio 1.2 §5.1.2).
    let mut b = daemon.connect(1, &with_features(ALL_FEATURES & !(1 << VIRTIO_NET_F_MQ)));
    assert!(a.has_feature(VIRTIO_NET_F_MQ) && !b.has_feature(VIRTIO_NET_F_MQ));
    introduce(&mut a, &mut b);
    for dev in [&mut a, &mut b] {
        for (command, on) in [
            (VIRTIO_NET_CTRL_RX_PROMISC, 0),
            (VIRTIO_NET_CTRL_RX_NOBCAST, 1),
        ] {
            assert_eq!(
                dev.ctrl(VIRTIO_NET_CTRL_RX, command, &[on]).unwrap(),
                VIRTIO_NET_OK
            );
        }
    }
    // The commands took effect: broadcasts are filtered both ways, unicast still arrives.
    let mut devs = [a, b];
    for (from, to) in [(0, 1), (1, 0)] {
        let (src, dst) = (mac(&devs[from]), mac(&devs[to]));
        send(
            &mut devs[from],
            &NetHdr::default(),
            &frames::ethernet(BROADCAST, src, 0x88b5, b"bcast"),
        );
        send(
            &mut devs[from],
            &NetHdr::default(),
            &frames::ethernet(dst, src, 0x88b5, b"unicast"),
        );
        assert_eq!(
            recv_frame(&mut devs[to]).frame[14..],
            *b"unicast",
            "port {from} to {to}"
        );
    }
    // A also set its pairs (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) when it connected.
    for (p, commands) in [(0, 3), (1, 2)] {
        let port = daemon.port(p);
        assert_eq!(counter(&port, "ctrl_ok"), commands, "{port}");
        assert_eq!(drops(&port, "rx_filtered"), 1, "{port}");
    }
    daemon.stop();
}

/// `--worker-threads 1`: one thread serves both pairs of each port (its epoll holds all five
/// kick fds). Every queue must be served: both receive queues become ready (their first kick),
/// each sender queue's frames arrive on the receiver's queue of the same index (the switch
/// keeps a flow on `from_q` modulo the ready queues, so a pair whose kicks were never served
/// would show as a missing frame or a frame on the wrong queue), the control queue (vring 4)
/// answers, and the per-queue counters add up.
#[test]
fn one_worker_thread_serves_both_queue_pairs() {
    const FRAMES: u64 = 16;
    let dir = TempDir::new("net-proto-one-thread").unwrap();
    let daemon = NetDaemon::switch(
        dir.path(),
        2,
        &["--num-queue-pairs", "2", "--worker-threads", "1"],
    );
    let two = NetOptions {
        queue_pairs: 2,
        ..NetOptions::default()
    };
    let mut devs = [daemon.connect(0, &two), daemon.connect(1, &two)];
    for i in 0..2 {
        daemon.wait_port(i, "both receive queues ready", |p| {
            counter(p, "rx_queues_ready") == 2
        });
    }
    let [a, b] = &mut devs;
    introduce(a, b);
    for (from, to) in [(0, 1), (1, 0)] {
        let (src, dst) = (mac(&devs[from]), mac(&devs[to]));
        for q in 0..2usize {
            for n in 0..FRAMES {
                let tag = format!("from {from} on pair {q}, frame {n}");
                let frame = frames::ethernet(dst, src, 0x88b5, tag.as_bytes());
                let pair = devs[from].pair(q).unwrap();
                pair.send(&NetHdr::default(), &frame).unwrap();
                pair.wait_tx_done().unwrap();
                let got = recv_where(&mut devs[to], q, |_| true);
                assert_eq!(got.frame[14..], *tag.as_bytes(), "{}", daemon.log());
            }
        }
    }
    // introduce() sent one frame each way on pair 0.
    for i in 0..2 {
        let p = daemon.port(i);
        for (q, extra) in [(0, 1), (1, 0)] {
            let queue = &p["queues"][q];
            for key in ["tx_frames", "rx_frames"] {
                assert_eq!(counter(queue, key), FRAMES + extra, "{key} {q}: {p}");
            }
        }
        assert_eq!(counter(&p, "tx_frames"), 2 * FRAMES + 1, "{p}");
        assert_eq!(counter(&p, "rx_frames"), 2 * FRAMES + 1, "{p}");
        // VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET at connect, on vring 4 of the same thread.
        assert_eq!(counter(&p, "ctrl_ok"), 1, "{p}");
    }
    drop(devs);
    daemon.stop();
}

#[test]
fn stopping_a_transmit_queue_waits_for_the_chains_it_took() {
    let dir = TempDir::new("net-proto-stop").unwrap();
    // B never sends: A's frames flood to it, all of them.
    let daemon = NetDaemon::switch(dir.path(), 2, &["--flood-rate", "0"]);
    let mut a = daemon.connect(0, &NetOptions::default());
    let b = daemon.connect(1, &without_receive_offloads());
    // 60 KB TCP segmentation offload frames, which the switch cuts into 42 segments each for
    // B: a batch of transmit chains takes the worker a while.
    let payload = vec![0x5a; 60_000];
    let frame = tcp4(
        mac(&b),
        mac(&a),
        [10, 81, 0, 1],
        [10, 81, 0, 2],
        1,
        &payload,
        true,
    );
    let hdr = tso4_hdr(1448);
    let pair = a.pair(0).unwrap();
    pair.prime_tx(&hdr, &frame).unwrap();
    let sent = pair.send_primed(usize::MAX).unwrap();
    // Once the first chains come back, the device is in the middle of the others.
    let mut returned = wait_for("the first transmit chains", WAIT, || {
        let n = pair.reap_tx().unwrap();
        (n > 0).then_some(n)
    });
    let base = a.stop_vring(frontend_guest::net::tx_queue(0)).unwrap();
    // Every chain the device took is in the used ring when GET_VRING_BASE answers...
    returned += a.pair(0).unwrap().reap_tx().unwrap();
    assert_eq!(returned as u32, base, "{sent} sent; log:\n{}", daemon.log());
    // ... and nothing is written after it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.pair(0).unwrap().reap_tx().unwrap(), 0);
    drop((a, b));
    daemon.stop();
}

/// Runs `f` on a thread inside network namespace `ns` (setns affects only that thread).
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file =
        std::fs::File::open(format!("/var/run/netns/{}", ns.name())).expect("open the namespace");
    std::thread::spawn(move || {
        // SAFETY: setns on this thread with a namespace file descriptor that stays open for
        // the call; it changes only this thread's network namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn tap_carries_frames_both_ways_in_a_namespace() {
    let dir = TempDir::new("net-proto-tap").unwrap();
    let ns = Netns::new();
    ns.add_tap("tap0", false, "10.79.0.1/24");
    let daemon = NetDaemon::tap(dir.path(), &ns, "tap0", &[]);
    let mut dev = daemon.connect(0, &NetOptions::default());
    let me = mac(&dev);
    let tap_mac = ns.mac("tap0");
    ns.add_neighbour("10.79.0.2", me, "tap0");
    // Mock → namespace: an ICMP echo request is answered.
    let echo = frames::icmp_echo(
        tap_mac,
        me,
        [10, 79, 0, 2],
        [10, 79, 0, 1],
        0x77,
        1,
        &[0xab; 200],
    );
    send(&mut dev, &NetHdr::default(), &echo);
    let reply = recv_where(&mut dev, 0, |r| {
        r.frame.len() >= 42 && r.frame[23] == 1 && r.frame[34] == 0
    });
    assert_eq!(
        reply.frame[42..],
        echo[42..],
        "echo reply carries the payload"
    );
    // Namespace → mock: UDP datagrams from a socket in the namespace.
    in_netns(&ns, || {
        let s = UdpSocket::bind("10.79.0.1:7000").unwrap();
        for i in 0..10u8 {
            s.send_to(&[i; 1000], "10.79.0.2:7001").unwrap();
        }
    });
    for i in 0..10u8 {
        let r = recv_where(&mut dev, 0, |r| {
            frames::udp4_payload(&r.frame).is_some_and(|(p, _)| p == 7001)
        });
        let (_, data) = frames::udp4_payload(&r.frame).unwrap();
        assert_eq!(data, &[i; 1000][..]);
    }
    // Mock → namespace UDP, checked by a socket there.
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let receiver = in_netns_spawn(&ns, got.clone());
    let dgram = udp4(
        tap_mac,
        me,
        ([10, 79, 0, 2], 7003),
        ([10, 79, 0, 1], 7002),
        b"to the namespace",
    );
    net_support::wait_for("the namespace's UDP socket", WAIT, || {
        send(&mut dev, &NetHdr::default(), &dgram);
        (!got.lock().unwrap().is_empty()).then_some(())
    });
    receiver.join().unwrap();
    assert_eq!(got.lock().unwrap()[0], b"to the namespace");
    let p = daemon.port(0);
    assert!(
        counter(&p, "tx_frames") >= 2 && counter(&p, "rx_frames") >= 11,
        "{p}"
    );
    assert_eq!(
        drops(&p, "tx_tap_error") + drops(&p, "tx_bad_header"),
        0,
        "{p}"
    );
    drop(dev);
    daemon.stop();
}

/// A thread in `ns` that receives one datagram on 10.79.0.1:7002 into `got`.
fn in_netns_spawn(
    ns: &Netns,
    got: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) -> std::thread::JoinHandle<()> {
    let file =
        std::fs::File::open(format!("/var/run/netns/{}", ns.name())).expect("open the namespace");
    std::thread::spawn(move || {
        // SAFETY: as in `in_netns`.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0);
        let s = UdpSocket::bind("10.79.0.1:7002").unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 2000];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        got.lock().unwrap().push(buf[..n].to_vec());
    })
}

#[test]
fn tap_with_two_queue_pairs_spreads_flows() {
    tap_with_two_queue_pairs("net-proto-tap-mq", &[]);
}

/// The same with both pairs and both TAP queues on one worker thread (each TAP queue's
/// readiness is its own event in that thread's epoll).
#[test]
fn tap_with_two_queue_pairs_on_one_worker_thread() {
    tap_with_two_queue_pairs("net-proto-tap-mq-1t", &["--worker-threads", "1"]);
}

/// A two-pair TAP port (daemon options `extra`): flows from the namespace arrive on both
/// receive queues, and both transmit queues reach the TAP.
fn tap_with_two_queue_pairs(name: &str, extra: &[&str]) {
    let dir = TempDir::new(name).unwrap();
    let ns = Netns::new();
    ns.add_tap("tap0", true, "10.79.1.1/24");
    let args = [&["--num-queue-pairs", "2"], extra].concat();
    let daemon = NetDaemon::tap(dir.path(), &ns, "tap0", &args);
    let mut dev = daemon.connect(
        0,
        &NetOptions {
            queue_pairs: 2,
            ..NetOptions::default()
        },
    );
    let me = mac(&dev);
    ns.add_neighbour("10.79.1.2", me, "tap0");
    // 64 flows (source ports) from the namespace: the TAP hashes them over its two queues.
    send_flows(&ns, "10.79.1.1", "10.79.1.2:7001");
    let per_pair = receive_flows(&mut dev, 2, WAIT);
    assert_eq!(
        per_pair.iter().sum::<usize>(),
        FLOWS,
        "datagrams per pair: {per_pair:?}"
    );
    assert!(
        per_pair[0] > 0 && per_pair[1] > 0,
        "both receive queues used: {per_pair:?}"
    );
    // Both transmit queues reach the TAP.
    let tap_mac = ns.mac("tap0");
    for q in 0..2u16 {
        let echo = frames::icmp_echo(tap_mac, me, [10, 79, 1, 2], [10, 79, 1, 1], 0x99, q, b"mq");
        dev.pair(usize::from(q))
            .unwrap()
            .send(&NetHdr::default(), &echo)
            .unwrap();
    }
    let p = daemon.wait_port(0, "both transmit queues", |p| {
        (0..2).all(|q| p["queues"][q]["tx_frames"].as_u64().unwrap_or(0) >= 1)
    });
    assert_eq!(drops(&p, "tx_tap_error"), 0, "{p}");
    drop(dev);
    daemon.stop();
}

/// Flows [`send_flows`] sends: one datagram from each of as many source ports.
const FLOWS: usize = 64;

/// Sends [`FLOWS`] UDP datagrams from `src_ip` in `ns` to `dst`, each from its own source port
/// (so the TAP hashes them over its attached queues).
fn send_flows(ns: &Netns, src_ip: &'static str, dst: &'static str) {
    in_netns(ns, move || {
        for port in 0..FLOWS as u16 {
            let s = UdpSocket::bind((src_ip, 20000 + port)).unwrap();
            s.send_to(&port.to_be_bytes(), dst).unwrap();
        }
    });
}

/// Counts the datagrams to port 7001 that reach each of `dev`'s first `pairs` receive queues
/// until [`FLOWS`] arrived or `wait` passed.
fn receive_flows(dev: &mut NetDevice, pairs: usize, wait: Duration) -> Vec<usize> {
    let mut per_pair = vec![0usize; pairs];
    let end = Instant::now() + wait;
    while per_pair.iter().sum::<usize>() < FLOWS && Instant::now() < end {
        for (q, count) in per_pair.iter_mut().enumerate() {
            let pair = dev.pair(q).unwrap();
            while let Some(r) = pair.try_recv().unwrap() {
                if frames::udp4_payload(&r.frame).is_some_and(|(p, _)| p == 7001) {
                    *count += 1;
                }
            }
        }
        dev.pair(0)
            .unwrap()
            .wait_rx(Duration::from_millis(20))
            .unwrap();
    }
    per_pair
}

/// Two daemons on one multi-queue TAP, as the two ends of a live migration: a daemon without a
/// front-end, or whose front-end left, holds no attached TAP queue, so the kernel steers every
/// flow to the daemon whose receive queue runs; a daemon whose front-end starts its rings gets
/// its share of the flows again.
#[test]
fn shared_tap_steers_frames_only_to_running_receive_queues() {
    let dir = TempDir::new("net-proto-tap-shared").unwrap();
    let ns = Netns::new();
    ns.add_tap("tap0", true, "10.79.2.1/24");
    let a = NetDaemon::tap_on(dir.path(), "a.sock", &ns, "tap0", &[]);
    let b = NetDaemon::tap_on(dir.path(), "b.sock", &ns, "tap0", &[]);
    let mut dev = a.connect(0, &NetOptions::default());
    ns.add_neighbour("10.79.2.2", mac(&dev), "tap0");
    send_flows(&ns, "10.79.2.1", "10.79.2.2:7001");
    let got = receive_flows(&mut dev, 1, WAIT);
    assert_eq!(
        got[0], FLOWS,
        "flows lost to the daemon without a front-end"
    );
    // A front-end runs b's rings, then leaves.
    let mut other = b.connect(0, &NetOptions::default());
    send_flows(&ns, "10.79.2.1", "10.79.2.2:7001");
    let (got_a, got_b) = (
        receive_flows(&mut dev, 1, Duration::from_secs(2))[0],
        receive_flows(&mut other, 1, Duration::from_secs(2))[0],
    );
    assert_eq!(got_a + got_b, FLOWS, "a {got_a}, b {got_b}");
    assert!(got_b > 0, "b's running receive queue got no flow");
    drop(other);
    b.wait_port(0, "the front-end gone", |p| {
        counter(p, "rx_queues_ready") == 0
    });
    send_flows(&ns, "10.79.2.1", "10.79.2.2:7001");
    let got = receive_flows(&mut dev, 1, WAIT);
    assert_eq!(
        got[0], FLOWS,
        "flows lost to the daemon whose front-end left"
    );
    drop(dev);
    a.stop();
    b.stop();
}

#[test]
fn tap_survives_hostile_transmits() {
    let dir = TempDir::new("net-proto-tap-hostile").unwrap();
    let ns = Netns::new();
    ns.add_tap("tap0", false, "10.78.0.1/24");
    let daemon = NetDaemon::tap(dir.path(), &ns, "tap0", &[]);
    let dev = daemon.connect(0, &NetOptions::default());
    let me = mac(&dev);
    let tap_mac = ns.mac("tap0");
    ns.add_neighbour("10.78.0.2", me, "tap0");
    let buf = noise_buffer(&dev);
    let ram_size = dev.ram().size();
    let addresses = [tap_mac, me, BROADCAST];
    let state = RefCell::new((dev, 0u64, 0u16));
    let steps = proptest::collection::vec(hostile(buf, ram_size), 1..24);
    let result = runner(16).run(&steps, |steps| {
        let mut guard = state.borrow_mut();
        let (dev, sent, seq) = &mut *guard;
        for step in steps {
            *sent += 1;
            transmit(dev, step, &addresses)
                .map_err(|e| TestCaseError::fail(format!("transmit chains: {e}")))?;
            let p = daemon.port(0);
            prop_assert_eq!(tx_accounted(&p), *sent, "{}", p);
            dev.pair(0)
                .unwrap()
                .drain_rx()
                .map_err(|e| TestCaseError::fail(format!("receive: {e}")))?;
        }
        // The daemon goes on serving: an echo request is still answered.
        *sent += 1;
        *seq += 1;
        let id = *seq;
        let echo = frames::icmp_echo(
            tap_mac,
            me,
            [10, 78, 0, 2],
            [10, 78, 0, 1],
            0x55,
            id,
            b"still",
        );
        send(dev, &NetHdr::default(), &echo);
        recv_where(dev, 0, |r| {
            r.frame.len() >= 42
                && r.frame[23] == 1
                && r.frame[34] == 0
                && r.frame[40..42] == id.to_be_bytes()
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nlog:\n{}", daemon.log());
    }
    drop(state);
    daemon.stop();
}

/// The dirty log (VHOST_USER_SET_LOG_BASE) marks the pages of receive buffers the kernel
/// filled straight from the TAP; memory regions added and removed on the fly
/// (VHOST_USER_ADD_MEM_REG / REM_MEM_REG) leave the data path working.
#[test]
fn tap_receive_is_logged_and_memory_slots_change_on_the_fly() {
    let dir = TempDir::new("net-proto-log").unwrap();
    let ns = Netns::new();
    ns.add_tap("tap0", false, "10.81.0.1/24");
    let daemon = NetDaemon::tap(dir.path(), &ns, "tap0", &[]);
    // Whole-frame receive buffers (no MRG_RXBUF, no GUEST_TSO) that straddle pages: the TAP
    // reads straight into them and nothing else writes a frame's pages (no num_buffers).
    let no_merge = !(1u64 << VIRTIO_NET_F_MRG_RXBUF
        | 1 << VIRTIO_NET_F_GUEST_TSO4
        | 1 << VIRTIO_NET_F_GUEST_TSO6);
    let opts = NetOptions {
        features: ALL_FEATURES & no_merge,
        rx_buffer_bytes: 3000,
        ..NetOptions::default()
    };
    let mut dev = daemon.connect(0, &opts);
    assert!(
        dev.connection().offered_features() & (1 << 26) != 0,
        "VHOST_F_LOG_ALL"
    );
    ns.add_neighbour("10.81.0.2", mac(&dev), "tap0");
    // The log covers guest memory up to the end of the region added below.
    let (extra_gpa, extra_bytes) = (1u64 << 30, 1u64 << 20);
    let log = set_dirty_log(&mut dev, extra_gpa + extra_bytes);

    let payload = |i: u8| -> Vec<u8> { (0..1000u32).map(|j| (j as u8) ^ i ^ 0xa5).collect() };
    let exchange = |dev: &mut NetDevice, port: u16| {
        in_netns(&ns, move || {
            let s = UdpSocket::bind("10.81.0.1:0").unwrap();
            for i in 0..8u8 {
                s.send_to(&payload(i), ("10.81.0.2", port)).unwrap();
            }
        });
        for i in 0..8u8 {
            let r = recv_where(dev, 0, |r| {
                frames::udp4_payload(&r.frame).is_some_and(|(p, _)| p == port)
            });
            assert_eq!(frames::udp4_payload(&r.frame).unwrap().1, &payload(i)[..]);
        }
    };
    exchange(&mut dev, 7101);
    let payloads: Vec<Vec<u8>> = (0..8u8).map(payload).collect();
    assert_frames_logged(&dev, &log, &payloads, "the TAP read");

    let extra = frontend_guest::host::HostRam::new(extra_bytes).unwrap();
    let mut region = extra.region_info().unwrap();
    region.guest_phys_addr = extra_gpa;
    dev.connection_mut()
        .add_mem_region(&region)
        .expect("VHOST_USER_ADD_MEM_REG");
    exchange(&mut dev, 7102);
    dev.connection_mut()
        .remove_mem_region(&region)
        .expect("VHOST_USER_REM_MEM_REG");
    exchange(&mut dev, 7103);
    drop(dev);
    daemon.stop();
}
