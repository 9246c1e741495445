//! pvio's VMM runs two of pvio's guests on one `backend-net --switch`: one sends numbered
//! frames, the other checks each frame's payload byte by byte and acknowledges it
//! (stop-and-wait), by interrupt and by polling. The switch's counters confirm the frames
//! crossed it.

mod net_support;

use net_support::{counter, NetDaemon};
use pvio_tests::tmp::TempDir;
use pvio_tests::vmm::{VmmOutput, VmmRun};
use pvio_tests::OrPanic;

/// Runs a sender and a receiver guest of `frames` frames with `payload` bytes each.
fn exchange(label: &str, mode: &str, frames: u32, payload: usize) -> (VmmOutput, VmmOutput) {
    let dir = TempDir::new(label).or_panic("temp dir");
    let switch = NetDaemon::switch(dir.path(), 2, &[]);
    let count = frames.to_string();
    let frame = format!("frame={payload}");
    let recv_arg = format!("net-recv={count}");
    let send_arg = format!("net-send={count}");
    let receiver = VmmRun::new()
        .net(&switch.sockets()[1])
        .guest(&[mode, &frame, &recv_arg])
        .spawn(dir.path(), "receiver");
    let sender = VmmRun::new()
        .net(&switch.sockets()[0])
        .guest(&[mode, &frame, &send_arg])
        .spawn(dir.path(), "sender");
    let sent = sender.wait();
    let received = receiver.wait();
    sent.assert_success();
    received.assert_success();
    let port0 = switch.port(0);
    let port1 = switch.port(1);
    switch.stop();
    // Every DATA frame (repeats included) went from the sender's port into the receiver's
    // receive queue, and every ACK back.
    for (port, key) in [
        (&port0, "tx_frames"),
        (&port1, "rx_frames"),
        (&port1, "tx_frames"),
    ] {
        let n = counter(port, key);
        assert!(
            n >= u64::from(frames),
            "{key} {n}, want at least {frames}: port 0 {port0}\nport 1 {port1}"
        );
    }
    (sent, received)
}

fn assert_line(out: &VmmOutput, start: &str) {
    assert!(
        out.console.lines().any(|l| l.starts_with(start)),
        "no line starting {start:?}\n{out}"
    );
}

#[test]
fn two_guests_exchange_frames_with_interrupts() {
    let (sent, received) = exchange("vmm-net-irq", "irq", 24, 256);
    assert_line(&sent, "pvio-guest: net send ok frames=24 payload=256");
    assert_line(&received, "pvio-guest: net recv ok frames=24 payload=256");
}

#[test]
fn two_guests_exchange_full_size_frames_polling() {
    let (sent, received) = exchange("vmm-net-poll", "poll", 8, 1490);
    assert_line(&sent, "pvio-guest: net send ok frames=8 payload=1490");
    assert_line(&received, "pvio-guest: net recv ok frames=8 payload=1490");
}
