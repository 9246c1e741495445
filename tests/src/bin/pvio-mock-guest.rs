//! `pvio-mock-guest`: plays guest domain N for one disk or NIC over the guest's store socket:
//! the XenBus handshake, then I/O, then it waits for the unplug (back end Closing) and closes.
//! Prints one line per step.
//!
//! Disk (default): verified I/O. NIC (`--nic`): answers the pings of other mock guests until
//! the unplug; with `--ping MAC` it first pings that guest `--count` times and prints each
//! round trip. A ping or pong is an Ethernet frame of the IEEE 802 local experimental
//! ethertype 0x88b5 carrying its kind (1 ping, 2 pong) and a big-endian sequence number.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use frontend_guest::net::NetHdr;
use xenbus::config::Mac;
use xenbus::mock_guest::{MockBlkFrontend, MockError, MockNetFrontend, MockResult};
use xenbus::wait::read_state;
use xenbus::{DeviceId, DeviceKind, XenbusState};
use xenstore_lite::Client;

/// Plays a guest's disk or NIC front end.
#[derive(Debug, Parser)]
struct Args {
    /// The store socket whose clients act as the guest domain.
    #[arg(long)]
    xenstore: PathBuf,
    /// The guest domain.
    #[arg(long)]
    domid: u32,
    /// The device number.
    #[arg(long, default_value_t = 0)]
    devid: u32,
    /// Play a NIC (vif) instead of a disk.
    #[arg(long)]
    nic: bool,
    /// NIC: ping the mock guest with this MAC address first.
    #[arg(long, requires = "nic")]
    ping: Option<Mac>,
    /// Pings to send with --ping.
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// Seconds each handshake step (and each ping) may take.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// The ethertype of pings and pongs (IEEE 802 local experimental).
const ETHERTYPE: u16 = 0x88b5;
const PING: u8 = 1;
const PONG: u8 = 2;
/// How often the NIC looks at the back end's state while answering pings.
const POLL: Duration = Duration::from_millis(100);

fn run(args: &Args) -> MockResult<()> {
    let client = Client::connect(&args.xenstore).map_err(xenbus::XenbusError::from)?;
    let timeout = Duration::from_secs(args.timeout);
    if args.nic {
        return run_nic(args, client, timeout);
    }
    let dev = DeviceId::new(DeviceKind::Vbd, args.domid, args.devid);
    let mut guest = MockBlkFrontend::attach(client, dev, timeout)?;
    println!("{dev}: Connected to {}", guest.backend().socket.display());
    guest.verified_io(0xa5)?;
    println!("{dev}: verified I/O done");
    guest.wait_unplug()?;
    println!("{dev}: unplugged, Closed");
    Ok(())
}

fn run_nic(args: &Args, client: Client, timeout: Duration) -> MockResult<()> {
    let dev = DeviceId::new(DeviceKind::Vif, args.domid, args.devid);
    let mut guest = MockNetFrontend::attach(client, dev, timeout)?;
    let me = Mac(nic(&mut guest)?.config().mac);
    println!(
        "{dev}: Connected to {} as {me}",
        guest.backend().socket.display()
    );
    if let Some(peer) = args.ping {
        for seq in 0..args.count {
            let rtt = ping(&mut guest, me, peer, seq, timeout)?;
            println!("{dev}: pong {seq} from {peer} in {} µs", rtt.as_micros());
        }
    }
    println!("{dev}: answering pings");
    let mut answered = 0u64;
    while !closing(&mut guest, &dev)? {
        answered += answer(&mut guest, me, POLL)?;
    }
    guest.wait_unplug()?;
    println!("{dev}: unplugged after answering {answered} pings, Closed");
    Ok(())
}

fn nic(guest: &mut MockNetFrontend) -> MockResult<&mut frontend_guest::host::net::NetDevice> {
    guest
        .device()
        .ok_or_else(|| MockError::Mismatch("the NIC is unplugged".into()))
}

/// Whether the back end asks the front end to close.
fn closing(guest: &mut MockNetFrontend, dev: &DeviceId) -> MockResult<bool> {
    let state = read_state(guest.client(), &dev.backend_node("state"))?;
    Ok(matches!(state, XenbusState::Closing | XenbusState::Closed))
}

/// A ping or pong frame.
fn frame(dst: Mac, src: Mac, kind: u8, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.push(kind);
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(64, 0x5a);
    f
}

/// (source, kind, sequence number) of a ping or pong.
fn parse(f: &[u8]) -> Option<(Mac, u8, u32)> {
    if f.len() < 19 || f[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    let src = Mac(f[6..12].try_into().ok()?);
    Some((src, f[14], u32::from_be_bytes(f[15..19].try_into().ok()?)))
}

/// Pings `peer` until pong `seq` arrives (sending again every second: a peer not yet
/// connected drops it); returns the round trip of the answered ping.
fn ping(
    guest: &mut MockNetFrontend,
    me: Mac,
    peer: Mac,
    seq: u32,
    timeout: Duration,
) -> MockResult<Duration> {
    let deadline = Instant::now() + timeout;
    let pair = nic(guest)?.pair(0)?;
    while Instant::now() < deadline {
        let sent = Instant::now();
        pair.send(&NetHdr::default(), &frame(peer, me, PING, seq))?;
        pair.wait_tx_done()?;
        while let Some(r) = pair.recv(Duration::from_secs(1))? {
            if parse(&r.frame) == Some((peer, PONG, seq)) {
                return Ok(sent.elapsed());
            }
        }
    }
    Err(MockError::Mismatch(format!("no pong {seq} from {peer}")))
}

/// Answers the pings that arrive within `wait`; returns how many.
fn answer(guest: &mut MockNetFrontend, me: Mac, wait: Duration) -> MockResult<u64> {
    let pair = nic(guest)?.pair(0)?;
    let mut n = 0;
    let mut left = wait;
    while let Some(r) = pair.recv(left)? {
        if let Some((src, PING, seq)) = parse(&r.frame) {
            pair.send(&NetHdr::default(), &frame(src, me, PONG, seq))?;
            pair.wait_tx_done()?;
            n += 1;
        }
        left = Duration::ZERO;
    }
    Ok(n)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvio-mock-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
