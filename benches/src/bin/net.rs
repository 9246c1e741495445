//! `net`: backend-net's switch against DPDK's vhost PMD, frames per second and Gbit/s.
//!
//! Traffic goes from a sender front-end on one socket to a sink front-end on the other, through
//! either back-end:
//! - **backend-net**: `backend-net --switch` with the two sockets as ports;
//! - **testpmd-vhost**: `dpdk-testpmd` with two `net_vhost` ports forwarding to each other
//!   (`--forward-mode=io`), the DPDK peer of the switch.
//!
//! Two load sources, each run against both back-ends:
//! - pvio's mock front-ends (frontend-guest's virtio-net driver, one thread per queue pair on
//!   each side): 64-byte and 1500-byte frames, and 64 KiB TCP segmentation offload frames, with
//!   one and two queue pairs;
//! - DPDK's `net_virtio_user` front-ends (testpmd txonly into one socket, rxonly on the other):
//!   64-byte and 1500-byte frames.
//!
//! Rates are counted at the sink over the measuring window, after a warm-up. This machine has
//! two cores: sender, back-end and sink share them, so absolute figures are far below what
//! separate cores give; the ratios compare the back-ends under the same load. Not a test: it
//! prints figures and fails only if something cannot run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use frontend_guest::host::{NetDevice, NetOptions, NetQueuePair};
use frontend_guest::net::{NetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};

/// backend-net vs DPDK testpmd's vhost PMD, frames/s and Gbit/s.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Seconds of measurement per point (after a warm-up of a quarter of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Folder holding the backend-net binary (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Skip the DPDK runs (testpmd not installed).
    #[arg(long)]
    no_dpdk: bool,
    /// Scratch folder for sockets and logs.
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

/// What a run measured at the sink.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    frames_per_s: f64,
    bits_per_s: f64,
}

impl Rate {
    fn show(self) -> String {
        format!(
            "{:>8.3} Mpps {:>7.2} Gbit/s",
            self.frames_per_s / 1e6,
            self.bits_per_s / 1e9
        )
    }
}

/// The traffic of one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    /// Plain frames of this many bytes.
    Frames(usize),
    /// 64 KiB TCP segmentation offload frames.
    Tso,
}

impl Traffic {
    fn name(self) -> String {
        match self {
            Traffic::Frames(n) => format!("{n} B"),
            Traffic::Tso => "64 KiB TSO".into(),
        }
    }
}

/// Which back-end serves the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Pvio,
    TestpmdVhost,
}

/// A child process killed on drop.
struct Process {
    child: Child,
    name: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        log::warn!("{} did not stop on SIGINT; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Fallible<Process> {
    let out = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(Process {
        child,
        name: name.into(),
    })
}

/// Waits until `path` is a listening unix socket (per /proc/net/unix).
fn wait_listening(path: &Path, what: &str) -> Fallible<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let p = path.to_string_lossy().into_owned();
    loop {
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        if table
            .lines()
            .any(|l| l.ends_with(&p) && l.split_whitespace().nth(3) == Some("00010000"))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} does not listen on {p}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A unique testpmd --file-prefix.
fn prefix(tag: &str) -> String {
    format!("pvio-bench-{tag}-{}", std::process::id())
}

fn testpmd(lcores: &str, tag: &str, vdevs: &[String], app: &[&str]) -> Command {
    let mut cmd = Command::new("stdbuf");
    let main = lcores.split(',').next().unwrap_or("0").to_string();
    cmd.args([
        "-oL",
        "dpdk-testpmd",
        "-l",
        lcores,
        "--main-lcore",
        &main,
        "--no-pci",
        "--no-huge",
        "-m",
        "1024",
    ]);
    cmd.args([
        "--file-prefix",
        &prefix(tag),
        "--log-level",
        "lib.eal:error",
    ]);
    for v in vdevs {
        cmd.args(["--vdev", v]);
    }
    cmd.arg("--").args(app);
    cmd
}

/// Starts the back-end on sockets `a` and `b`.
fn start_backend(
    kind: Backend,
    bin: &Path,
    dir: &Path,
    a: &Path,
    b: &Path,
    pairs: u16,
) -> Fallible<Process> {
    let _ = std::fs::remove_file(a);
    let _ = std::fs::remove_file(b);
    let p = match kind {
        Backend::Pvio => {
            let mut cmd = Command::new(bin);
            // The sink never sends, so its address is never learned and every frame floods:
            // no flood limit, as testpmd's io forwarding has none.
            cmd.args(["--switch", "--num-queue-pairs", &pairs.to_string()])
                .args(["--flood-rate", "0"])
                .arg("--socket")
                .arg(a)
                .arg("--socket")
                .arg(b);
            cmd.env("RUST_LOG", "warn");
            spawn("backend-net", &mut cmd, &dir.join("backend-net.log"))?
        }
        Backend::TestpmdVhost => {
            let q = format!("--rxq={pairs}");
            let tq = format!("--txq={pairs}");
            let vdevs = [
                format!("net_vhost0,iface={},queues={pairs},tso=1", a.display()),
                format!("net_vhost1,iface={},queues={pairs},tso=1", b.display()),
            ];
            let app = [
                "--forward-mode=io",
                "--auto-start",
                "--nb-cores=1",
                "--total-num-mbufs=32768",
                "--stats-period=1",
                &q,
                &tq,
            ];
            spawn(
                "testpmd-vhost",
                &mut testpmd("0,1", "vhost", &vdevs, &app),
                &dir.join("testpmd-vhost.log"),
            )?
        }
    };
    wait_listening(a, &p.name)?;
    wait_listening(b, &p.name)?;
    Ok(p)
}

/// A 64 KiB TCP/IPv4 frame with a partial checksum and its TSO header.
fn tso_frame(dst: [u8; 6], src: [u8; 6]) -> (NetHdr, Vec<u8>) {
    let payload = 65_536 - 40 - 1;
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[
        0x08, 0x00, 0x45, 0, 0xff, 0xff, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f.extend_from_slice(&[
        0x13, 0x88, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f.resize(f.len() + payload, 0x5a);
    let hdr = NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    (hdr, f)
}

/// Runs one point with pvio's mock front-ends: a sender on `a`, a sink on `b`.
fn mock_point(
    a: &Path,
    b: &Path,
    pairs: u16,
    traffic: Traffic,
    window: Duration,
) -> Fallible<Option<Rate>> {
    let opts = NetOptions {
        queue_pairs: pairs,
        queue_size: 256,
        ..NetOptions::default()
    };
    let mut sink = NetDevice::connect(b, &opts)?;
    let mut sender = NetDevice::connect(a, &opts)?;
    if traffic == Traffic::Tso && !sender.has_feature(frontend_guest::net::VIRTIO_NET_F_HOST_TSO4) {
        return Ok(None);
    }
    let (dst, src) = (sink.config().mac, sender.config().mac);
    let (hdr, frame) = match traffic {
        Traffic::Frames(n) => {
            let mut f = dst.to_vec();
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0x88, 0xb5]);
            f.resize(n.max(60), 0);
            (NetHdr::default(), f)
        }
        Traffic::Tso => tso_frame(dst, src),
    };
    for p in sender.pairs_mut() {
        p.prime_tx(&hdr, &frame)?;
    }
    let stop = AtomicBool::new(false);
    let counting = AtomicBool::new(false);
    let (frames, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for p in sink.pairs_mut() {
            s.spawn(|| {
                if let Err(e) = sink_loop(p, &stop, &counting, &frames, &bytes) {
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e.to_string());
                }
            });
        }
        for p in sender.pairs_mut() {
            s.spawn(|| {
                if let Err(e) = send_loop(p, &stop) {
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e.to_string());
                }
            });
        }
        std::thread::sleep(window / 4);
        counting.store(true, Ordering::Release);
        let t0 = Instant::now();
        std::thread::sleep(window);
        counting.store(false, Ordering::Release);
        let elapsed = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Release);
        let f = frames.load(Ordering::Acquire) as f64;
        let by = bytes.load(Ordering::Acquire) as f64;
        frames.store((f / elapsed) as u64, Ordering::Release);
        bytes.store((by * 8.0 / elapsed) as u64, Ordering::Release);
    });
    if let Some(e) = errors.into_inner().unwrap_or_default().into_iter().next() {
        return Err(e.into());
    }
    Ok(Some(Rate {
        frames_per_s: frames.load(Ordering::Acquire) as f64,
        bits_per_s: bytes.load(Ordering::Acquire) as f64,
    }))
}

fn send_loop(p: &mut NetQueuePair, stop: &AtomicBool) -> Fallible<()> {
    while !stop.load(Ordering::Acquire) {
        if p.send_primed(64)? == 0 {
            std::thread::yield_now();
        }
    }
    Ok(())
}

fn sink_loop(
    p: &mut NetQueuePair,
    stop: &AtomicBool,
    counting: &AtomicBool,
    frames: &AtomicU64,
    bytes: &AtomicU64,
) -> Fallible<()> {
    while !stop.load(Ordering::Acquire) {
        let (f, b) = p.drain_rx()?;
        if f == 0 {
            p.wait_rx(Duration::from_millis(10))?;
        } else if counting.load(Ordering::Acquire) {
            frames.fetch_add(f, Ordering::Relaxed);
            bytes.fetch_add(b, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Runs one point with DPDK's virtio_user front-ends (txonly into `a`, rxonly on `b`); the
/// rate is the receiver's median Rx-pps over the window.
fn dpdk_point(
    dir: &Path,
    a: &Path,
    b: &Path,
    pairs: u16,
    size: usize,
    window: Duration,
) -> Fallible<Rate> {
    let q = [format!("--rxq={pairs}"), format!("--txq={pairs}")];
    let rx_vdev = [format!(
        "net_virtio_user0,path={},queues={pairs}",
        b.display()
    )];
    let tx_vdev = [format!(
        "net_virtio_user0,path={},queues={pairs}",
        a.display()
    )];
    let mut rx_cmd = testpmd(
        "0,1",
        "rx",
        &rx_vdev,
        &[
            "--forward-mode=rxonly",
            "--auto-start",
            "--nb-cores=1",
            "--total-num-mbufs=16384",
            "--stats-period=1",
            &q[0],
            &q[1],
        ],
    );
    rx_cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut rx_child = rx_cmd.spawn()?;
    let lines = Arc::new(Mutex::new(Vec::<f64>::new()));
    let stdout = rx_child.stdout.take().ok_or("no stdout")?;
    let collected = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(v) = line
                .trim()
                .strip_prefix("Rx-pps:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
            {
                collected.lock().unwrap_or_else(|e| e.into_inner()).push(v);
            }
        }
    });
    let rx = Process {
        child: rx_child,
        name: "testpmd rxonly".into(),
    };
    std::thread::sleep(Duration::from_secs(2));
    let txpkts = format!("--txpkts={size}");
    let tx = spawn(
        "testpmd txonly",
        &mut testpmd(
            "1,0",
            "tx",
            &tx_vdev,
            &[
                "--forward-mode=txonly",
                "--auto-start",
                "--nb-cores=1",
                "--total-num-mbufs=16384",
                "--stats-period=1",
                &txpkts,
                &q[0],
                &q[1],
            ],
        ),
        &dir.join("testpmd-tx.log"),
    )?;
    std::thread::sleep(window / 4 + Duration::from_secs(1));
    let skip = lines.lock().unwrap_or_else(|e| e.into_inner()).len();
    std::thread::sleep(window);
    let mut samples: Vec<f64> = lines.lock().unwrap_or_else(|e| e.into_inner())[skip..].to_vec();
    drop(tx);
    drop(rx);
    let _ = reader.join();
    samples.sort_by(f64::total_cmp);
    let pps = samples
        .get(samples.len() / 2)
        .copied()
        .ok_or("testpmd printed no Rx-pps")?;
    Ok(Rate {
        frames_per_s: pps,
        bits_per_s: pps * size as f64 * 8.0,
    })
}

fn ratio(a: Option<Rate>, b: Option<Rate>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.frames_per_s > 0.0 => {
            format!("{:.2}", a.frames_per_s / b.frames_per_s)
        }
        _ => "n/a".into(),
    }
}

fn show(r: Option<Rate>) -> String {
    r.map_or_else(|| format!("{:>27}", "n/a"), Rate::show)
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("net bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Fallible<()> {
    let bin_dir = args
        .bin_dir
        .clone()
        .or_else(|| std::env::current_exe().ok()?.parent().map(PathBuf::from))
        .unwrap_or_default();
    let bin = bin_dir.join("backend-net");
    if !bin.exists() {
        return Err(format!(
            "{} not found (cargo build --release -p backend-net)",
            bin.display()
        )
        .into());
    }
    let dir = args
        .scratch
        .join(format!("pvio-net-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    let window = Duration::from_secs_f64(args.seconds.max(0.5));
    let backends: Vec<Backend> = if args.no_dpdk {
        vec![Backend::Pvio]
    } else {
        vec![Backend::Pvio, Backend::TestpmdVhost]
    };
    println!("Load from pvio's mock front-ends (sender → back-end → sink), rate at the sink");
    println!(
        "{:<12} {:>5}  {:>27}  {:>27}  {:>6}",
        "traffic", "pairs", "backend-net", "testpmd-vhost", "ratio"
    );
    for pairs in [1u16, 2] {
        for traffic in [Traffic::Frames(64), Traffic::Frames(1500), Traffic::Tso] {
            let mut rates = Vec::new();
            for &kind in &backends {
                let _backend = start_backend(kind, &bin, &dir, &a, &b, pairs)?;
                rates.push(
                    mock_point(&a, &b, pairs, traffic, window)
                        .map_err(|e| format!("{kind:?} {}: {e}", traffic.name()))?,
                );
            }
            let peer = rates.get(1).copied().flatten();
            println!(
                "{:<12} {:>5}  {}  {}  {:>6}",
                traffic.name(),
                pairs,
                show(rates[0]),
                show(peer),
                ratio(rates[0], peer)
            );
        }
    }
    if !args.no_dpdk {
        println!("\nLoad from DPDK net_virtio_user (testpmd txonly → back-end → testpmd rxonly), receiver's Rx-pps");
        println!(
            "{:<12} {:>5}  {:>27}  {:>27}  {:>6}",
            "traffic", "pairs", "backend-net", "testpmd-vhost", "ratio"
        );
        for pairs in [1u16, 2] {
            for size in [64usize, 1500] {
                let mut rates = Vec::new();
                for &kind in &backends {
                    let _backend = start_backend(kind, &bin, &dir, &a, &b, pairs)?;
                    rates.push(Some(dpdk_point(&dir, &a, &b, pairs, size, window)?));
                }
                println!(
                    "{:<12} {:>5}  {}  {}  {:>6}",
                    Traffic::Frames(size).name(),
                    pairs,
                    show(rates[0]),
                    show(rates[1]),
                    ratio(rates[0], rates[1])
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
