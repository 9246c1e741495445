//! evtchn benchmark: 64-byte messages through a ring.h `SharedRing` plus event channels,
//! against a unix SOCK_SEQPACKET socket pair and a pipe, one process each side. Prints the
//! one-way message rate, the round-trip latency, the doorbells rung and sleeps taken per 1000
//! messages with notification suppression on and off, and the ratios. No pass or fail.
//!
//! - One-way: the sender pushes `--messages` 64-byte messages as fast as it can; the clock stops
//!   when the receiver has taken the last one (the ring's 64-byte responses free the slots, as in
//!   every ring.h protocol; the socket and pipe receivers send one final acknowledgement). The
//!   socket receiver takes one message per `recv` (message boundaries); the pipe receiver reads
//!   up to 64 KiB per `read`, as a byte stream allows.
//! - Round trip: one 64-byte request, one 64-byte reply, `--round-trips` times.
//! - Ring sides publish every entry at once (as blkback/netback do) and, with nothing to do,
//!   run `final_check_for_*` and sleep on their eventfd; they never spin. The front end sleeps
//!   until half of what is in flight has been answered (netfront's hold-off).
//! - Suppression off: every entry is followed by a notify, ignoring ring.h's `*_event` indices.
//!   "eventfd writes" counts the notifies that actually rang the peer's doorbell (the 2-level
//!   pending/upcall bits coalesce some even then); "sleeps" counts blocking waits.
//!
//! The peer process is this binary re-executed with the hidden `peer` subcommand.
//!
//! `cargo run --release -p pvio-benches --bin evtchn -- [--messages N] [--round-trips N]
//! [--repeats N] [--ring-pages 1,4]`

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use evtchn::{BackRing, Broker, Domain, FrontRing, Port, RingError, SendOutcome, SharedRing};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::unistd::{pipe, read, write};
use pvio_benches::report::median;

/// One message: 64 bytes, the sequence number in the first 8.
type Msg = [u8; 64];

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

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
    /// 4 pages = 128 slots, as blkif's multi-page rings allow). The first is used for latency.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    ring_pages: Vec<u32>,
    #[command(subcommand)]
    peer: Option<PeerCmd>,
}

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One-way stream.
    OneWay,
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
        #[arg(long)]
        count: u64,
        /// Honour ring.h's notification suppression (`*_event`).
        #[arg(long)]
        suppress: bool,
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

// ---------------------------------------------------------------- ring sides

/// What one ring side did.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// `Domain::notify` calls (EVTCHNOP_send).
    notifies: u64,
    /// Of those, the ones that wrote the peer's eventfd.
    eventfd_writes: u64,
    /// Blocking waits on this side's eventfd.
    sleeps: u64,
}

/// The final check a ring end makes before sleeping.
trait FinalCheck {
    fn final_check(&mut self) -> Result<bool, RingError>;
}

impl FinalCheck for FrontRing<Msg, Msg> {
    /// Wake when half of what is in flight has been answered (netfront's hold-off).
    fn final_check(&mut self) -> Result<bool, RingError> {
        self.final_check_for_responses_after(self.in_flight() / 2)
    }
}

impl FinalCheck for BackRing<Msg, Msg> {
    fn final_check(&mut self) -> Result<bool, RingError> {
        self.final_check_for_requests()
    }
}

/// One ring side's event channel and behaviour.
struct Side<'a> {
    dom: &'a Domain,
    port: Port,
    suppress: bool,
    counts: Counts,
}

impl<'a> Side<'a> {
    fn new(dom: &'a Domain, port: Port, suppress: bool) -> Self {
        Self {
            dom,
            port,
            suppress,
            counts: Counts::default(),
        }
    }

    /// After publishing one entry: notify if the peer asked, or always without suppression.
    fn published(&mut self, peer_asked: bool) -> BenchResult<()> {
        if peer_asked || !self.suppress {
            self.counts.notifies += 1;
            if self.dom.notify(self.port)? == SendOutcome::Raise {
                self.counts.eventfd_writes += 1;
            }
        }
        Ok(())
    }

    /// Nothing to do: final check, then sleep.
    fn idle(&mut self, ring: &mut impl FinalCheck) -> BenchResult<()> {
        if ring.final_check()? {
            return Ok(());
        }
        self.counts.sleeps += 1;
        if self.dom.wait(Some(Duration::from_secs(30)))?.is_empty() {
            return Err("no notification in 30 s: lost wake-up".into());
        }
        Ok(())
    }
}

/// Front end, one-way: streams `count` messages.
fn ring_front_one_way(
    front: &mut FrontRing<Msg, Msg>,
    side: &mut Side<'_>,
    count: u64,
) -> BenchResult<()> {
    let (mut sent, mut done) = (0u64, 0u64);
    while done < count {
        let mut progressed = false;
        while sent < count && !front.is_full() {
            front.push_request(&msg(sent))?;
            sent += 1;
            progressed = true;
            let asked = front.push_requests_and_check_notify();
            side.published(asked)?;
        }
        while let Some(rsp) = front.pop_response()? {
            if seq_of(&rsp) != done {
                return Err(format!("response {} out of order", seq_of(&rsp)).into());
            }
            done += 1;
            progressed = true;
        }
        if !progressed {
            side.idle(front)?;
        }
    }
    Ok(())
}

/// Front end, `count` round trips; returns each one's latency in nanoseconds.
fn ring_front_round_trips(
    front: &mut FrontRing<Msg, Msg>,
    side: &mut Side<'_>,
    count: u64,
) -> BenchResult<Vec<u64>> {
    let mut lat = Vec::with_capacity(count as usize);
    for i in 0..count {
        let t = Instant::now();
        front.push_request(&msg(i))?;
        let asked = front.push_requests_and_check_notify();
        side.published(asked)?;
        loop {
            if let Some(rsp) = front.pop_response()? {
                if seq_of(&rsp) != i {
                    return Err("reply out of order".into());
                }
                break;
            }
            side.idle(front)?;
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    Ok(lat)
}

/// Back end: answers `count` requests, each with a copy of itself.
fn ring_back(back: &mut BackRing<Msg, Msg>, side: &mut Side<'_>, count: u64) -> BenchResult<()> {
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
            let asked = back.push_responses_and_check_notify();
            side.published(asked)?;
        }
        if !answered {
            side.idle(back)?;
        }
    }
    Ok(())
}

fn peer_ring(
    broker: &std::path::Path,
    gref: u32,
    port: u32,
    count: u64,
    suppress: bool,
) -> BenchResult<()> {
    let dom = Domain::connect(broker, 0)?;
    let region = dom.map_grant(1, gref)?;
    let local = dom.bind_interdomain(1, port)?;
    let mut back = SharedRing::<Msg, Msg>::new(region)?.back(0);
    println!("ready");
    let mut side = Side::new(&dom, local, suppress);
    ring_back(&mut back, &mut side, count)?;
    let c = side.counts;
    println!("{} {} {}", c.notifies, c.eventfd_writes, c.sleeps);
    Ok(())
}

// ---------------------------------------------------------------- socket and pipe peers

fn peer_seqpacket(fd: OwnedFd, mode: Mode, count: u64) -> BenchResult<()> {
    println!("ready");
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
    if mode == Mode::OneWay {
        send(fd.as_raw_fd(), &msg(count), MsgFlags::empty())?;
    }
    println!("0 0 0");
    Ok(())
}

fn peer_pipe(rfd: OwnedFd, wfd: OwnedFd, mode: Mode, count: u64) -> BenchResult<()> {
    println!("ready");
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
    if mode == Mode::OneWay {
        write_all(&wfd, &msg(count))?;
    }
    println!("0 0 0");
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
    // SAFETY: only borrowed for this one fcntl call, which fails cleanly on a closed fd.
    fcntl(unsafe { BorrowedFd::borrow_raw(fd) }, FcntlArg::F_GETFD)?;
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
            count,
            suppress,
        } => peer_ring(&broker, gref, port, count, suppress),
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

    /// Waits for the peer to finish and returns its counts.
    fn finish(mut self) -> BenchResult<Counts> {
        let line = self.line()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("peer failed: {status}").into());
        }
        let v: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        match v[..] {
            [notifies, eventfd_writes, sleeps] => Ok(Counts {
                notifies,
                eventfd_writes,
                sleeps,
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

/// One ring run's figures.
#[derive(Debug, Default, Clone)]
struct RingRun {
    /// Messages per second (one-way runs).
    rate: f64,
    /// Round-trip latencies in nanoseconds (round-trip runs).
    lat: Vec<u64>,
    front: Counts,
    back: Counts,
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

    /// One run: a fresh ring and port of `pages` pages, a peer process bound to them, and the
    /// front end doing `mode` for `count` messages.
    fn run(&self, pages: u32, mode: Mode, count: u64, suppress: bool) -> BenchResult<RingRun> {
        let (gref, region) = self.dom.grant_access(0, pages)?;
        let port = self.dom.alloc_unbound(0)?;
        let shared = SharedRing::<Msg, Msg>::new(region)?;
        shared.init(0);
        let mut front = shared.front(0);
        let mut args = vec![
            "ring".into(),
            "--broker".into(),
            self.path.display().to_string(),
            "--gref".into(),
            gref.to_string(),
            "--port".into(),
            port.to_string(),
            "--count".into(),
            count.to_string(),
        ];
        if suppress {
            args.push("--suppress".into());
        }
        let peer = Peer::spawn(&args)?;
        let mut side = Side::new(&self.dom, port, suppress);
        let mut run = RingRun::default();
        let t = Instant::now();
        match mode {
            Mode::OneWay => {
                ring_front_one_way(&mut front, &mut side, count)?;
                run.rate = count as f64 / t.elapsed().as_secs_f64();
            }
            Mode::RoundTrip => run.lat = ring_front_round_trips(&mut front, &mut side, count)?,
        }
        run.front = side.counts;
        run.back = peer.finish()?;
        self.dom.close(port)?;
        self.dom.end_access(gref)?;
        Ok(run)
    }
}

/// Marks the parent's end close-on-exec so only the child's end reaches the peer.
fn keep_private(fd: &OwnedFd) -> BenchResult<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// A kernel-transport run: (messages per second, round-trip latencies in nanoseconds).
type KernelRun = (f64, Vec<u64>);

/// Times `count` messages with `send_one(i)` and, for round trips, `recv_one()` after each;
/// one-way runs end with one `recv_one()` for the receiver's acknowledgement.
fn time_kernel(
    mode: Mode,
    count: u64,
    mut send_one: impl FnMut(u64) -> BenchResult<()>,
    mut recv_one: impl FnMut() -> BenchResult<()>,
) -> BenchResult<KernelRun> {
    let mut lat = Vec::new();
    let t = Instant::now();
    for i in 0..count {
        let ti = Instant::now();
        send_one(i)?;
        if mode == Mode::RoundTrip {
            recv_one()?;
            lat.push(ti.elapsed().as_nanos() as u64);
        }
    }
    if mode == Mode::OneWay {
        recv_one()?;
    }
    Ok((count as f64 / t.elapsed().as_secs_f64(), lat))
}

fn peer_args(kind: &str, fds: &[(&str, &OwnedFd)], mode: Mode, count: u64) -> Vec<String> {
    let mut args = vec![kind.to_string()];
    for (name, fd) in fds {
        args.push(format!("--{name}"));
        args.push(fd.as_raw_fd().to_string());
    }
    args.extend([
        "--mode".into(),
        mode_arg(mode),
        "--count".into(),
        count.to_string(),
    ]);
    args
}

fn seqpacket_run(mode: Mode, count: u64) -> BenchResult<KernelRun> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::empty(),
    )?;
    keep_private(&ours)?;
    let peer = Peer::spawn(&peer_args("seqpacket", &[("fd", &theirs)], mode, count))?;
    drop(theirs);
    let fd = ours.as_raw_fd();
    let mut buf = [0u8; 64];
    let run = time_kernel(
        mode,
        count,
        |i| Ok(send(fd, &msg(i), MsgFlags::empty()).map(drop)?),
        || Ok(recv(fd, &mut buf, MsgFlags::empty()).map(drop)?),
    )?;
    peer.finish()?;
    Ok(run)
}

fn pipe_run(mode: Mode, count: u64) -> BenchResult<KernelRun> {
    let (to_peer_r, to_peer_w) = pipe()?;
    let (from_peer_r, from_peer_w) = pipe()?;
    keep_private(&to_peer_w)?;
    keep_private(&from_peer_r)?;
    let fds = [("rfd", &to_peer_r), ("wfd", &from_peer_w)];
    let peer = Peer::spawn(&peer_args("pipe", &fds, mode, count))?;
    drop((to_peer_r, from_peer_w));
    let mut buf = [0u8; 64];
    let run = time_kernel(
        mode,
        count,
        |i| write_all(&to_peer_w, &msg(i)),
        || read_exact(&from_peer_r, &mut buf),
    )?;
    peer.finish()?;
    Ok(run)
}

// ---------------------------------------------------------------- report

/// Latency summary in microseconds: (mean, p50, p99).
fn latency(ns: &[u64]) -> (f64, f64, f64) {
    if ns.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut ns = ns.to_vec();
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64;
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64;
    (mean / 1e3, at(0.5) / 1e3, at(0.99) / 1e3)
}

fn med(xs: impl IntoIterator<Item = f64>) -> f64 {
    median(&xs.into_iter().collect::<Vec<_>>()).unwrap_or(f64::NAN)
}

/// One ring configuration under test.
struct RingCase {
    label: String,
    pages: u32,
    suppress: bool,
    runs: Vec<RingRun>,
}

impl RingCase {
    fn rate(&self) -> f64 {
        med(self.runs.iter().map(|r| r.rate))
    }

    /// Median per 1000 messages of one count.
    fn per_1000(&self, msgs: u64, f: impl Fn(&RingRun) -> u64) -> f64 {
        med(self.runs.iter().map(|r| f(r) as f64 * 1000.0 / msgs as f64))
    }
}

fn print_rates(cases: &[RingCase], sock: f64, pipe: f64) {
    println!("\none-way message rate (messages/s; ratios against socketpair and pipe)");
    for c in cases {
        let r = c.rate();
        println!(
            "  {:<46} {r:>11.0}   {:>5.1}x {:>5.1}x",
            c.label,
            r / sock,
            r / pipe
        );
    }
    println!("  {:<46} {sock:>11.0}", "unix SOCK_SEQPACKET socketpair");
    println!("  {:<46} {pipe:>11.0}", "pipe");
}

fn print_counts(cases: &[RingCase], msgs: u64) {
    println!("\nper 1000 messages, one-way runs: requests side | responses side");
    println!(
        "  (notifies = EVTCHNOP_send calls; eventfd = doorbells rung; sleeps = blocking waits)"
    );
    for c in cases {
        let side = |pick: fn(&RingRun) -> Counts| {
            (
                c.per_1000(msgs, |r| pick(r).notifies),
                c.per_1000(msgs, |r| pick(r).eventfd_writes),
                c.per_1000(msgs, |r| pick(r).sleeps),
            )
        };
        let (fn_, fe, fs) = side(|r| r.front);
        let (bn, be, bs) = side(|r| r.back);
        println!(
            "  {:<46} notifies {fn_:>7.1} eventfd {fe:>6.1} sleeps {fs:>6.1} | notifies {bn:>7.1} eventfd {be:>6.1} sleeps {bs:>6.1}",
            c.label
        );
    }
}

fn print_latency(rows: &[(String, Vec<u64>)]) {
    println!("\nround-trip latency (microseconds): mean / p50 / p99, and mean against the ring's");
    let base = latency(&rows[0].1).0;
    for (label, ns) in rows {
        let (m, p50, p99) = latency(ns);
        println!(
            "  {label:<46} {m:>8.2} / {p50:>8.2} / {p99:>8.2}   {:>5.2}x",
            m / base
        );
    }
}

fn run(args: &Args) -> BenchResult<()> {
    let setup = RingSetup::new()?;
    let rtt_pages = *args.ring_pages.first().ok_or("--ring-pages is empty")?;
    let mut cases = Vec::new();
    for &pages in &args.ring_pages {
        let region = evtchn::SharedRegion::create("probe", pages as usize)?;
        let slots = SharedRing::<Msg, Msg>::new(region)?.size();
        for suppress in [true, false] {
            let on_off = if suppress { "on" } else { "off" };
            cases.push(RingCase {
                label: format!("ring {pages} page(s)/{slots} slots, suppression {on_off}"),
                pages,
                suppress,
                runs: Vec::new(),
            });
        }
    }
    println!(
        "evtchn benchmark: 64-byte messages, {} one-way, {} round trips, median of {} runs, \
         one process each side",
        args.messages, args.round_trips, args.repeats
    );
    let (mut sock_rate, mut pipe_rate) = (Vec::new(), Vec::new());
    let mut lat: [(String, Vec<u64>); 3] = [
        (format!("ring {rtt_pages} page(s)"), Vec::new()),
        ("unix SOCK_SEQPACKET socketpair".into(), Vec::new()),
        ("pipe".into(), Vec::new()),
    ];
    for _ in 0..args.repeats {
        for c in &mut cases {
            let run = setup.run(c.pages, Mode::OneWay, args.messages, c.suppress)?;
            c.runs.push(run);
        }
        sock_rate.push(seqpacket_run(Mode::OneWay, args.messages)?.0);
        pipe_rate.push(pipe_run(Mode::OneWay, args.messages)?.0);
        let rt = args.round_trips;
        lat[0]
            .1
            .extend(setup.run(rtt_pages, Mode::RoundTrip, rt, true)?.lat);
        lat[1].1.extend(seqpacket_run(Mode::RoundTrip, rt)?.1);
        lat[2].1.extend(pipe_run(Mode::RoundTrip, rt)?.1);
    }
    print_rates(&cases, med(sock_rate), med(pipe_rate));
    print_latency(&lat);
    print_counts(&cases, args.messages);
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
