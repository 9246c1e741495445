//! evtchn benchmark: 64-byte messages through a ring.h `SharedRing` plus event channels,
//! against a unix SOCK_SEQPACKET socket pair and a pipe, one process each side. Prints the
//! one-way message rate, the round-trip latency, the doorbells rung per 1000 messages with
//! notification suppression on and off, and the ratios. No pass or fail.
//!
//! - One-way: the sender pushes `--messages` 64-byte messages as fast as it can; the clock stops
//!   when the receiver has taken the last one (the ring's 64-byte responses free the slots, as in
//!   every ring.h protocol; the socket and pipe receivers send one final acknowledgement). The
//!   socket receiver takes one message per `recv` (message boundaries); the pipe receiver reads
//!   up to 64 KiB per `read`, as a byte stream allows.
//! - Round trip: one 64-byte request, one 64-byte reply, `--round-trips` times; both sides block
//!   (the ring sides sleep on their eventfd after `final_check_for_*`, never spin).
//! - Suppression off: each side publishes every message on its own and notifies every time,
//!   ignoring ring.h's `*_event` indices. "eventfd writes" counts the notifies that actually rang
//!   the peer's doorbell (the 2-level pending/upcall bits coalesce some even then).
//!
//! The peer process is this binary re-executed with the hidden `peer` subcommand.
//!
//! `cargo run --release -p pvio-benches --bin evtchn -- [--messages N] [--round-trips N] [--repeats N]`

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use evtchn::{BackRing, Broker, Domain, FrontRing, Port, SendOutcome, SharedRing};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::{pipe, read, write};
use pvio_benches::report::median;

/// One message: 64 bytes, the sequence number in the first 8.
type Msg = [u8; 64];

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(about = "SharedRing + event channel vs socketpair and pipe: rate, latency, doorbells")]
struct Args {
    /// Messages per one-way run.
    #[arg(long, default_value_t = 2_000_000)]
    messages: u64,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 100_000)]
    round_trips: u64,
    /// Runs per point; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Ring sizes to measure, in pages (1 page = 32 slots of 64 bytes, a single-page Xen ring;
    /// 4 pages = 128 slots, as blkif's multi-page rings allow).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    ring_pages: Vec<u32>,
    #[command(subcommand)]
    peer: Option<PeerCmd>,
}

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One-way stream, ring.h notification suppression on.
    OneWay,
    /// One-way stream, every message published and notified on its own.
    OneWayNoSuppress,
    /// Request/reply ping-pong.
    RoundTrip,
}

/// The receiving side, run in a child process.
#[derive(Debug, Subcommand)]
enum PeerCmd {
    /// Hidden: the peer process of one run.
    #[command(hide = true)]
    Peer {
        #[command(subcommand)]
        transport: PeerTransport,
    },
}

#[derive(Debug, Subcommand)]
enum PeerTransport {
    /// Back end of a SharedRing: domain 0, bound to domain 1's ring.
    Ring {
        #[arg(long)]
        broker: PathBuf,
        #[arg(long)]
        gref: u32,
        #[arg(long)]
        port: u32,
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long)]
        count: u64,
    },
    /// One end of a SOCK_SEQPACKET pair (inherited fd).
    Seqpacket {
        #[arg(long)]
        fd: i32,
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long)]
        count: u64,
    },
    /// The far ends of two pipes (inherited fds).
    Pipe {
        #[arg(long)]
        rfd: i32,
        #[arg(long)]
        wfd: i32,
        #[arg(long, value_enum)]
        mode: Mode,
        #[arg(long)]
        count: u64,
    },
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Notifications one side sent.
#[derive(Debug, Default, Clone, Copy)]
struct Doorbells {
    /// `Domain::notify` calls (EVTCHNOP_send).
    notifies: u64,
    /// Of those, the ones that wrote the peer's eventfd.
    eventfd_writes: u64,
}

impl Doorbells {
    fn notify(&mut self, dom: &Domain, port: Port) -> BenchResult<()> {
        self.notifies += 1;
        if dom.notify(port)? == SendOutcome::Raise {
            self.eventfd_writes += 1;
        }
        Ok(())
    }
}

fn msg(seq: u64) -> Msg {
    let mut m = [0u8; 64];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m
}

fn seq_of(m: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&m[..8]);
    u64::from_le_bytes(b)
}

/// Sleeps on the event channel; the caller has just seen `final_check_*` come back empty.
fn sleep_on(dom: &Domain) -> BenchResult<()> {
    if dom.wait(Some(Duration::from_secs(30)))?.is_empty() {
        return Err("no notification in 30 s: lost wake-up".into());
    }
    Ok(())
}

// ---------------------------------------------------------------- ring: front end (parent)

/// Streams `count` messages; returns the doorbells this side rang.
fn ring_front_one_way(
    front: &mut FrontRing<Msg, Msg>,
    dom: &Domain,
    port: Port,
    count: u64,
    suppress: bool,
) -> BenchResult<Doorbells> {
    let mut bells = Doorbells::default();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < count {
        let mut progressed = false;
        while sent < count && !front.is_full() {
            front.push_request(&msg(sent))?;
            sent += 1;
            progressed = true;
            // Publish every request at once so the back end can start on it; notify only when
            // it asked (suppression on) or always (off).
            if front.push_requests_and_check_notify() || !suppress {
                bells.notify(dom, port)?;
            }
        }
        while let Some(rsp) = front.pop_response()? {
            if seq_of(&rsp) != done {
                return Err(format!("response {} out of order", seq_of(&rsp)).into());
            }
            done += 1;
            progressed = true;
        }
        // Nothing to push or pop: the ring is full (or everything is sent). Sleep until half
        // of what is in flight has been answered, as netfront does, so the back end still has
        // requests to work on when this side wakes and refills.
        if !progressed && !front.final_check_for_responses_after(front.in_flight() / 2)? {
            sleep_on(dom)?;
        }
    }
    Ok(bells)
}

/// `count` round trips; returns each one's latency in nanoseconds.
fn ring_front_round_trips(
    front: &mut FrontRing<Msg, Msg>,
    dom: &Domain,
    port: Port,
    count: u64,
) -> BenchResult<Vec<u64>> {
    let mut lat = Vec::with_capacity(count as usize);
    for i in 0..count {
        let t = Instant::now();
        front.push_request(&msg(i))?;
        if front.push_requests_and_check_notify() {
            dom.notify(port)?;
        }
        loop {
            if let Some(rsp) = front.pop_response()? {
                if seq_of(&rsp) != i {
                    return Err("reply out of order".into());
                }
                break;
            }
            if !front.final_check_for_responses()? {
                sleep_on(dom)?;
            }
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    Ok(lat)
}

// ---------------------------------------------------------------- ring: back end (child)

/// Answers `count` requests, each with a copy of itself.
fn ring_back(
    back: &mut BackRing<Msg, Msg>,
    dom: &Domain,
    port: Port,
    count: u64,
    suppress: bool,
) -> BenchResult<Doorbells> {
    let mut bells = Doorbells::default();
    let mut seen = 0u64;
    while seen < count {
        let mut answered = false;
        while let Some(req) = back.pop_request()? {
            if seq_of(&req) != seen {
                return Err(format!("request {} out of order", seq_of(&req)).into());
            }
            back.push_response(&req)?;
            seen += 1;
            answered = true;
            // Publish every response at once, as blkback and netback do.
            if back.push_responses_and_check_notify() || !suppress {
                bells.notify(dom, port)?;
            }
        }
        if !answered && !back.final_check_for_requests()? {
            sleep_on(dom)?;
        }
    }
    Ok(bells)
}

fn peer_ring(broker: &Path, gref: u32, port: u32, mode: Mode, count: u64) -> BenchResult<()> {
    let dom = Domain::connect(broker, 0)?;
    let region = dom.map_grant(1, gref)?;
    let local = dom.bind_interdomain(1, port)?;
    let mut back = SharedRing::<Msg, Msg>::new(region)?.back(0);
    println!("ready");
    let bells = ring_back(
        &mut back,
        &dom,
        local,
        count,
        mode != Mode::OneWayNoSuppress,
    )?;
    println!("{} {}", bells.notifies, bells.eventfd_writes);
    Ok(())
}

// ---------------------------------------------------------------- socket and pipe peers

fn peer_seqpacket(fd: OwnedFd, mode: Mode, count: u64) -> BenchResult<()> {
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = [0u8; 64];
    for i in 0..count {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n != 64 || seq_of(&buf) != i {
            return Err("seqpacket message lost or reordered".into());
        }
        if mode == Mode::RoundTrip {
            send(fd.as_raw_fd(), &buf, MsgFlags::empty())?;
        }
    }
    if mode != Mode::RoundTrip {
        send(fd.as_raw_fd(), &msg(count), MsgFlags::empty())?;
    }
    println!("0 0");
    Ok(())
}

fn peer_pipe(rfd: OwnedFd, wfd: OwnedFd, mode: Mode, count: u64) -> BenchResult<()> {
    println!("ready");
    std::io::stdout().flush()?;
    let total = count * 64;
    let mut buf = vec![0u8; if mode == Mode::RoundTrip { 64 } else { 65536 }];
    let mut got = 0u64;
    while got < total {
        let n = read(&rfd, &mut buf)?;
        if n == 0 {
            return Err("pipe closed early".into());
        }
        got += n as u64;
        if mode == Mode::RoundTrip {
            write_all(&wfd, &buf[..n])?;
        }
    }
    if mode != Mode::RoundTrip {
        write_all(&wfd, &msg(count))?;
    }
    println!("0 0");
    Ok(())
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> BenchResult<()> {
    while !buf.is_empty() {
        let n = write(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> BenchResult<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = read(fd, &mut buf[done..])?;
        if n == 0 {
            return Err("peer closed".into());
        }
        done += n;
    }
    Ok(())
}

/// Takes an fd number inherited from the parent.
fn inherited(fd: i32) -> BenchResult<OwnedFd> {
    // Validate it is open before taking ownership.
    fcntl(
        // SAFETY: only borrowed for this one fcntl call, which fails cleanly on a closed fd.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        FcntlArg::F_GETFD,
    )?;
    // SAFETY: the parent passed this fd number for this process to own; it is open (checked
    // above) and nothing else in this process uses it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn run_peer(t: PeerTransport) -> BenchResult<()> {
    match t {
        PeerTransport::Ring {
            broker,
            gref,
            port,
            mode,
            count,
        } => peer_ring(&broker, gref, port, mode, count),
        PeerTransport::Seqpacket { fd, mode, count } => peer_seqpacket(inherited(fd)?, mode, count),
        PeerTransport::Pipe {
            rfd,
            wfd,
            mode,
            count,
        } => peer_pipe(inherited(rfd)?, inherited(wfd)?, mode, count),
    }
}

// ---------------------------------------------------------------- parent side

/// A started peer process, ready to run.
struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(args: &[String]) -> BenchResult<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("peer")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().ok_or("no peer stdout")?);
        let mut peer = Self { child, out };
        let line = peer.line()?;
        if line != "ready" {
            return Err(format!("peer said {line:?}").into());
        }
        Ok(peer)
    }

    fn line(&mut self) -> BenchResult<String> {
        let mut s = String::new();
        self.out.read_line(&mut s)?;
        Ok(s.trim().to_string())
    }

    /// Waits for the peer to finish and returns the doorbells it rang.
    fn finish(mut self) -> BenchResult<Doorbells> {
        let line = self.line()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("peer failed: {status}").into());
        }
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(notifies)), Some(Ok(eventfd_writes))) => Ok(Doorbells {
                notifies,
                eventfd_writes,
            }),
            _ => Err(format!("peer printed {line:?}").into()),
        }
    }
}

fn mode_arg(mode: Mode) -> String {
    mode.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// One one-way run's figures.
#[derive(Debug, Default, Clone, Copy)]
struct OneWay {
    rate: f64,
    front: Doorbells,
    back: Doorbells,
}

/// The parent's domain 1 and the broker the peers connect to.
struct RingSetup {
    dom: Domain,
    path: PathBuf,
    _listener: evtchn::ListenerHandle,
}

impl RingSetup {
    fn new() -> BenchResult<Self> {
        let path =
            std::env::temp_dir().join(format!("pvio-evtchn-bench-{}.sock", std::process::id()));
        let broker = Broker::new();
        let listener = broker.listen(&path)?.spawn()?;
        let dom = Domain::connect(&path, 1)?;
        Ok(Self {
            dom,
            path,
            _listener: listener,
        })
    }

    /// A fresh ring and port, and a peer process bound to them.
    fn start(
        &self,
        pages: u32,
        mode: Mode,
        count: u64,
    ) -> BenchResult<(FrontRing<Msg, Msg>, Port, Peer, u32)> {
        let (gref, region) = self.dom.grant_access(0, pages)?;
        let port = self.dom.alloc_unbound(0)?;
        let shared = SharedRing::<Msg, Msg>::new(region)?;
        shared.init(0);
        let peer = Peer::spawn(&[
            "ring".into(),
            "--broker".into(),
            self.path.display().to_string(),
            "--gref".into(),
            gref.to_string(),
            "--port".into(),
            port.to_string(),
            "--mode".into(),
            mode_arg(mode),
            "--count".into(),
            count.to_string(),
        ])?;
        Ok((shared.front(0), port, peer, gref))
    }

    fn end(&self, port: Port, gref: u32) -> BenchResult<()> {
        self.dom.close(port)?;
        self.dom.end_access(gref)?;
        Ok(())
    }

    fn one_way(&self, pages: u32, count: u64, suppress: bool) -> BenchResult<OneWay> {
        let mode = if suppress {
            Mode::OneWay
        } else {
            Mode::OneWayNoSuppress
        };
        let (mut front, port, peer, gref) = self.start(pages, mode, count)?;
        let t = Instant::now();
        let front_bells = ring_front_one_way(&mut front, &self.dom, port, count, suppress)?;
        let secs = t.elapsed().as_secs_f64();
        let back = peer.finish()?;
        self.end(port, gref)?;
        Ok(OneWay {
            rate: count as f64 / secs,
            front: front_bells,
            back,
        })
    }

    fn round_trips(&self, pages: u32, count: u64) -> BenchResult<Vec<u64>> {
        let (mut front, port, peer, gref) = self.start(pages, Mode::RoundTrip, count)?;
        let lat = ring_front_round_trips(&mut front, &self.dom, port, count)?;
        peer.finish()?;
        self.end(port, gref)?;
        Ok(lat)
    }
}

/// Marks the parent's end close-on-exec so only the child's end reaches the peer.
fn keep_private(fd: &OwnedFd) -> BenchResult<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn seqpacket_run(mode: Mode, count: u64) -> BenchResult<(f64, Vec<u64>)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::empty(),
    )?;
    keep_private(&ours)?;
    let peer = Peer::spawn(&[
        "seqpacket".into(),
        "--fd".into(),
        theirs.as_raw_fd().to_string(),
        "--mode".into(),
        mode_arg(mode),
        "--count".into(),
        count.to_string(),
    ])?;
    drop(theirs);
    let fd = ours.as_raw_fd();
    let mut buf = [0u8; 64];
    let mut lat = Vec::new();
    let t = Instant::now();
    for i in 0..count {
        let ti = Instant::now();
        send(fd, &msg(i), MsgFlags::empty())?;
        if mode == Mode::RoundTrip {
            recv(fd, &mut buf, MsgFlags::empty())?;
            lat.push(ti.elapsed().as_nanos() as u64);
        }
    }
    if mode != Mode::RoundTrip {
        recv(fd, &mut buf, MsgFlags::empty())?;
    }
    let secs = t.elapsed().as_secs_f64();
    peer.finish()?;
    Ok((count as f64 / secs, lat))
}

fn pipe_run(mode: Mode, count: u64) -> BenchResult<(f64, Vec<u64>)> {
    let (to_peer_r, to_peer_w) = pipe()?;
    let (from_peer_r, from_peer_w) = pipe()?;
    keep_private(&to_peer_w)?;
    keep_private(&from_peer_r)?;
    let peer = Peer::spawn(&[
        "pipe".into(),
        "--rfd".into(),
        to_peer_r.as_raw_fd().to_string(),
        "--wfd".into(),
        from_peer_w.as_raw_fd().to_string(),
        "--mode".into(),
        mode_arg(mode),
        "--count".into(),
        count.to_string(),
    ])?;
    drop((to_peer_r, from_peer_w));
    let mut buf = [0u8; 64];
    let mut lat = Vec::new();
    let t = Instant::now();
    for i in 0..count {
        let ti = Instant::now();
        write_all(&to_peer_w, &msg(i))?;
        if mode == Mode::RoundTrip {
            read_exact(&from_peer_r, &mut buf)?;
            lat.push(ti.elapsed().as_nanos() as u64);
        }
    }
    if mode != Mode::RoundTrip {
        read_exact(&from_peer_r, &mut buf)?;
    }
    let secs = t.elapsed().as_secs_f64();
    peer.finish()?;
    Ok((count as f64 / secs, lat))
}

// ---------------------------------------------------------------- report

/// Latency summary in microseconds: (mean, p50, p99).
fn latency(mut ns: Vec<u64>) -> (f64, f64, f64) {
    if ns.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64;
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64;
    (mean / 1e3, at(0.5) / 1e3, at(0.99) / 1e3)
}

fn med(xs: impl IntoIterator<Item = f64>) -> f64 {
    median(&xs.into_iter().collect::<Vec<_>>()).unwrap_or(f64::NAN)
}

fn per_1000(n: u64, msgs: u64) -> f64 {
    n as f64 * 1000.0 / msgs as f64
}

fn print_doorbells(label: &str, runs: &[OneWay], msgs: u64) {
    let f = |g: fn(&OneWay) -> u64| med(runs.iter().map(|r| per_1000(g(r), msgs)));
    println!(
        "  {label:<16} requests: {:>8.2} notifies {:>8.2} eventfd writes | responses: {:>8.2} notifies {:>8.2} eventfd writes",
        f(|r| r.front.notifies),
        f(|r| r.front.eventfd_writes),
        f(|r| r.back.notifies),
        f(|r| r.back.eventfd_writes),
    );
}

/// Slots of a ring of `pages` pages of 64-byte messages.
fn slots(pages: u32) -> BenchResult<u32> {
    let region = evtchn::SharedRegion::create("probe", pages as usize)?;
    Ok(SharedRing::<Msg, Msg>::new(region)?.size())
}

/// The one-way runs of one ring size.
struct RingRuns {
    pages: u32,
    slots: u32,
    on: Vec<OneWay>,
    off: Vec<OneWay>,
}

fn run(args: &Args) -> BenchResult<()> {
    let ring = RingSetup::new()?;
    let mut rings = Vec::new();
    for &pages in &args.ring_pages {
        rings.push(RingRuns {
            pages,
            slots: slots(pages)?,
            on: Vec::new(),
            off: Vec::new(),
        });
    }
    let rtt_pages = *args.ring_pages.first().ok_or("--ring-pages is empty")?;
    println!(
        "evtchn benchmark: 64-byte messages, {} one-way, {} round trips, median of {} runs, one process each side",
        args.messages, args.round_trips, args.repeats
    );
    let (mut sock_rate, mut pipe_rate) = (Vec::new(), Vec::new());
    let (mut ring_lat, mut sock_lat, mut pipe_lat) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        for r in &mut rings {
            r.on.push(ring.one_way(r.pages, args.messages, true)?);
            r.off.push(ring.one_way(r.pages, args.messages, false)?);
        }
        sock_rate.push(seqpacket_run(Mode::OneWay, args.messages)?.0);
        pipe_rate.push(pipe_run(Mode::OneWay, args.messages)?.0);
        ring_lat.extend(ring.round_trips(rtt_pages, args.round_trips)?);
        sock_lat.extend(seqpacket_run(Mode::RoundTrip, args.round_trips)?.1);
        pipe_lat.extend(pipe_run(Mode::RoundTrip, args.round_trips)?.1);
    }
    let sock = med(sock_rate);
    let pipe = med(pipe_rate);
    println!("\none-way message rate (messages/s)");
    for r in &rings {
        let on = med(r.on.iter().map(|o| o.rate));
        let off = med(r.off.iter().map(|o| o.rate));
        let name = format!("SharedRing {} page(s)/{} slots", r.pages, r.slots);
        println!("  {name:<34} suppression on  {on:>12.0}");
        println!("  {name:<34} suppression off {off:>12.0}");
        println!(
            "    ratios: vs socketpair {:.1}x, vs pipe {:.1}x, suppression on/off {:.2}x",
            on / sock,
            on / pipe,
            on / off
        );
    }
    println!("  {:<50} {sock:>12.0}", "unix SOCK_SEQPACKET socketpair");
    println!("  {:<50} {pipe:>12.0}", "pipe");

    let (rm, r50, r99) = latency(ring_lat);
    let (sm, s50, s99) = latency(sock_lat);
    let (pm, p50, p99) = latency(pipe_lat);
    println!("\nround-trip latency (microseconds): mean / p50 / p99");
    println!("  SharedRing + evtchn              {rm:>8.2} / {r50:>8.2} / {r99:>8.2}");
    println!("  unix SOCK_SEQPACKET socketpair   {sm:>8.2} / {s50:>8.2} / {s99:>8.2}");
    println!("  pipe                             {pm:>8.2} / {p50:>8.2} / {p99:>8.2}");
    println!(
        "  ratios (mean): socketpair/ring {:.2}x, pipe/ring {:.2}x",
        sm / rm,
        pm / rm
    );

    println!("\ndoorbells per 1000 messages (one-way runs; notifies = EVTCHNOP_send calls)");
    for r in &rings {
        println!("  SharedRing {} page(s)/{} slots", r.pages, r.slots);
        print_doorbells("suppression on", &r.on, args.messages);
        print_doorbells("suppression off", &r.off, args.messages);
    }
    Ok(())
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let result = match args.peer {
        Some(PeerCmd::Peer { transport }) => run_peer(transport),
        None => run(&args),
    };
    if let Err(e) = result {
        eprintln!("evtchn bench: {e}");
        std::process::exit(1);
    }
}
