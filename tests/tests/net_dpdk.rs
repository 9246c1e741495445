//! backend-net's switch mode judged by a third-party vhost-user-net front-end: DPDK's
//! `net_virtio_user` in `dpdk-testpmd` (Debian package dpdk-dev), no VM involved.
//!
//! One testpmd sends 64-byte frames (txonly) into port 0 of the switch; they go to an unknown
//! destination, so the switch floods them to port 1, where a second testpmd receives them
//! (rxonly). The counts must agree exactly at every hop: what testpmd sent is what the switch
//! took from port 0, what the switch put into port 1 (plus what it dropped for lack of receive
//! buffers, counted) is what it took, and what testpmd received is what the switch delivered.

mod net_support;

use net_support::{counter, drops, NetDaemon, TestPmd};
use pvio_tests::tmp::TempDir;

/// Frames to see through the switch before stopping the sender.
const TARGET_FRAMES: u64 = 100_000;

#[test]
fn testpmd_txonly_to_testpmd_rxonly_through_the_switch() {
    through_the_switch(1);
}

/// Two queue pairs on both sides: both transmit queues of the sender and both receive queues
/// of the receiver carry frames.
#[test]
fn testpmd_two_queue_pairs_through_the_switch() {
    let (p0, p1) = through_the_switch(2);
    for q in 0..2 {
        assert!(
            p0["queues"][q]["tx_frames"].as_u64().unwrap() > 0,
            "transmit queue {q}: {p0}"
        );
        assert!(
            p1["queues"][q]["rx_frames"].as_u64().unwrap() > 0,
            "receive queue {q}: {p1}"
        );
    }
}

/// Runs the sender and the receiver with `pairs` queue pairs each; returns the counters of
/// port 0 and port 1 at the end.
fn through_the_switch(pairs: u16) -> (serde_json::Value, serde_json::Value) {
    let dir = TempDir::new("net-dpdk").unwrap();
    // Every frame floods (unknown destination): no flood limit.
    // Every vhost-user request in the log: a failure shows how far each testpmd got.
    let daemon = NetDaemon::switch_logging(
        dir.path(),
        2,
        &["--num-queue-pairs", &pairs.to_string(), "--flood-rate", "0"],
        "info,vhost_daemon::relay=trace",
    );
    // Receiver forwards on lcore 1, sender on lcore 0 (shared/REAL-CLIENTS.md: separate CPUs).
    let mut rx = TestPmd::start(&daemon.sockets()[1], "0,1", pairs, "rxonly", &[]);
    rx.command("start");
    let mut tx = TestPmd::start(
        &daemon.sockets()[0],
        "1,0",
        pairs,
        "txonly",
        &["--txpkts=64"],
    );
    tx.command("start");

    daemon.wait_port(1, "frames through the switch", |p| {
        counter(p, "rx_frames") >= TARGET_FRAMES
    });
    tx.command("stop");
    let (_, sent) = tx.port_stats();
    let p0 = daemon.wait_port(0, "the switch to take every frame sent", |p| {
        counter(p, "tx_frames") == sent
    });
    for reason in [
        "tx_bad_header",
        "tx_bad_chain",
        "tx_too_big",
        "tx_no_destination",
        "tx_offload",
    ] {
        assert_eq!(drops(&p0, reason), 0, "{reason}: {p0}");
    }
    assert_eq!(counter(&p0, "tx_bytes"), sent * 64, "64-byte frames: {p0}");

    let p1 = daemon.wait_port(1, "every frame delivered or dropped", |p| {
        counter(p, "rx_frames") + drops(p, "rx_no_buffers") == sent
    });
    let delivered = counter(&p1, "rx_frames");
    assert!(delivered >= TARGET_FRAMES, "{p1}");
    assert_eq!(counter(&p1, "rx_bytes"), delivered * 64, "{p1}");
    let received = net_support::wait_for(
        "testpmd to receive what the switch delivered",
        net_support::PROCESS_DEADLINE,
        || {
            let (r, _) = rx.port_stats();
            (r == delivered).then_some(r)
        },
    );
    rx.command("stop");
    println!("sent {sent}, delivered {delivered}, testpmd received {received}, dropped for lack of buffers {}", drops(&p1, "rx_no_buffers"));
    tx.quit();
    rx.quit();
    let p0 = daemon.port(0);
    assert_eq!(counter(&p0, "connections"), 1);
    let p1 = daemon.port(1);
    daemon.stop();
    (p0, p1)
}
