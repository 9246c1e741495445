//! `net`: backend-net's switch against DPDK's vhost PMD: frames per second, Gbit/s and the
//! back-end's CPU time per frame.
//!
//! Traffic goes between two vhost-user sockets, through either back-end:
//! - **backend-net**: `backend-net --switch` with the two sockets as ports (more columns with
//!   `--ab-arg` / `--base-bin`: the same back-end with other options or another build, in the
//!   same run);
//! - **testpmd-vhost**: `dpdk-testpmd` with two `net_vhost` ports forwarding to each other
//!   (`--forward-mode=io`), the DPDK peer of the switch.
//!
//! CPUs: the load runs on `--load-cpu` and the back-end on `--backend-cpu` (testpmd's
//! forwarding lcore; backend-net's threads through `taskset`), so both back-ends get the same
//! core and the load the other, as on a host that gives its switch one core.
//!
//! Two load sources, each run against every back-end:
//! - pvio's mock front-ends (frontend-guest's virtio-net driver; one sender and one sink thread
//!   per queue pair, sender on one socket, sink on the other): 64-byte and 1500-byte frames and
//!   64 KiB TCP segmentation offload frames, one and two queue pairs; counted at the sink;
//! - DPDK's `net_virtio_user` front-ends in **one** testpmd (both ports, one forwarding lcore,
//!   `--forward-mode=mac`, `start tx_first 32`): frames go round the loop port 0 → back-end →
//!   port 1 → back-end → port 0 with each port's own address as source and the other's as
//!   destination (so the switch forwards unicast); counted as both ports' received frames.
//!   64-byte and 1500-byte frames, one and two queue pairs. A txonly and an rxonly testpmd plus
//!   a busy-polling back-end are three busy pollers, which two cores cannot run (the rates
//!   collapse), so this loop is the DPDK load that fits.
//!
//! DPDK's memory is 4 KiB pages (`--no-huge`) unless `--hugepages` (2 MiB pages, as
//! vhost-user deployments back guest memory).
//!
//! Placement: on a virtual machine the host moves the virtual CPUs, and a cache line's round
//! trip between the load's and the back-end's CPU changes several-fold from second to second
//! (see [`pvio_benches::placement`]). Each window samples it; after the tables, the ratios are
//! shown again over the rounds in which both systems ran with the CPUs near each other, and
//! over those in which both ran with them apart.
//!
//! CPU µs per frame: the back-end process's user + system time (all threads, `/proc/PID/stat`)
//! over the window, divided by the frames counted. Rates are counted over the measuring
//! window, after a warm-up of a quarter of it. Not a test: it prints figures and fails only if
//! something cannot run.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use frontend_guest::bench::cpu::cpu_time;
use frontend_guest::host::{NetDevice, NetOptions, NetQueuePair};
use frontend_guest::net::{NetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
use pvio_benches::placement::{pin_thread, Watch};

/// backend-net vs DPDK testpmd's vhost PMD: Mpps, Gbit/s, CPU µs per frame.
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
    /// Which load sources to run.
    #[arg(long, value_enum, default_value_t = LoadChoice::Both)]
    load: LoadChoice,
    /// Queue pairs to measure (repeat; default 1 and 2).
    #[arg(long = "pairs")]
    pairs: Vec<u16>,
    /// Traffic to measure: 64, 1500 (frame bytes) or tso (repeat; default all).
    #[arg(long = "traffic")]
    traffic: Vec<String>,
    /// CPU of the load (mock front-end threads, the DPDK front-end's forwarding lcore).
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// CPU of the back-end (backend-net's threads, testpmd-vhost's forwarding lcore).
    #[arg(long, default_value_t = 1)]
    backend_cpu: usize,
    /// Run testpmd on 2 MiB hugepages (a mounted hugetlbfs with 1 GiB free per testpmd), the
    /// DPDK front-end's memory thus being the guest memory the back-ends map, as with QEMU's
    /// hugetlbfs memory backends in vhost-user deployments; default `--no-huge` (4 KiB pages,
    /// which place the rings and buffers differently in the caches from run to run).
    #[arg(long)]
    hugepages: bool,
    /// An option for a second backend-net column in the same run (repeat for several
    /// options), e.g. `--ab-arg=--poll-us=0`.
    #[arg(long = "ab-arg", allow_hyphen_values = true)]
    ab_args: Vec<String>,
    /// Another backend-net binary (e.g. an older build) as one more column (repeat for more).
    #[arg(long = "base-bin")]
    base_bins: Vec<PathBuf>,
    /// Scratch folder for sockets and logs.
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
    /// Rounds per point: every system measured once per round, in an order that rotates from
    /// round to round; the report shows each figure's median over the rounds and the median
    /// (lowest–highest) of the per-round ratio (single runs here move by up to 1.8×); each
    /// round's figures also go to stderr.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
}

/// The load sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LoadChoice {
    Mock,
    Dpdk,
    Both,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    frames_per_s: f64,
    bits_per_s: f64,
    /// Back-end CPU time per frame, µs.
    cpu_us: f64,
    /// Median cache line round trip between the load's and the back-end's CPU over the
    /// window, ns ([`Watch`]; `None` when no sample met).
    trip_ns: Option<f64>,
}

impl Measured {
    /// Each figure's median over `runs` (the upper middle one for an even count); `None` for
    /// no runs.
    fn median(runs: &[Measured]) -> Option<Measured> {
        let mid = |field: fn(&Measured) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(field).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        Some(Measured {
            frames_per_s: mid(|m| m.frames_per_s)?,
            bits_per_s: mid(|m| m.bits_per_s)?,
            cpu_us: mid(|m| m.cpu_us)?,
            trip_ns: None,
        })
    }

    fn show(self) -> String {
        format!(
            "{:>7.3} {:>6.2} {:>6.2}",
            self.frames_per_s / 1e6,
            self.bits_per_s / 1e9,
            self.cpu_us
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

    fn parse(s: &str) -> Result<Traffic, String> {
        match s {
            "tso" => Ok(Traffic::Tso),
            n => n
                .parse()
                .map(Traffic::Frames)
                .map_err(|_| format!("--traffic {n}: a frame size in bytes or tso")),
        }
    }
}

/// A back-end under test.
#[derive(Debug, Clone)]
enum Backend {
    /// backend-net: this binary with these extra options.
    Pvio { bin: PathBuf, args: Vec<String> },
    /// testpmd with two net_vhost ports in io forwarding.
    TestpmdVhost,
}

/// A column of the report.
#[derive(Debug, Clone)]
struct System {
    label: String,
    backend: Backend,
}

/// Where the processes run, and what memory DPDK uses.
#[derive(Debug, Clone, Copy)]
struct Cpus {
    load: usize,
    backend: usize,
    /// testpmd on 2 MiB hugepages (`--hugepages`) instead of `--no-huge`.
    hugepages: bool,
}

/// A child process stopped (SIGINT, then killed) on drop.
struct Process {
    child: Child,
    name: String,
}

impl Process {
    fn pid(&self) -> i32 {
        // Process ids fit i32 (pid_t).
        self.child.id() as i32
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
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

/// testpmd on lcores `main` (the main lcore, mostly asleep) and `fwd` (the forwarding lcore).
/// With `huge`, its memory is 2 MiB hugepages in one file per memory segment list (so that
/// a virtio_user port shares it in a few vhost-user memory regions).
fn testpmd(
    main: usize,
    fwd: usize,
    huge: bool,
    tag: &str,
    vdevs: &[String],
    app: &[&str],
) -> Command {
    let mut cmd = Command::new("stdbuf");
    let (main, lcores) = (main.to_string(), format!("{main},{fwd}"));
    cmd.args([
        "-oL",
        "dpdk-testpmd",
        "-l",
        &lcores,
        "--main-lcore",
        &main,
        "--no-pci",
    ]);
    cmd.args(if huge {
        ["--single-file-segments", "-m", "1024"].as_slice()
    } else {
        ["--no-huge", "-m", "1024"].as_slice()
    });
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
    backend: &Backend,
    dir: &Path,
    a: &Path,
    b: &Path,
    pairs: u16,
    cpus: Cpus,
) -> Fallible<Process> {
    let _ = std::fs::remove_file(a);
    let _ = std::fs::remove_file(b);
    let p = match backend {
        Backend::Pvio { bin, args } => {
            let mut cmd = Command::new("taskset");
            // The sink never sends, so its address is never learned and every frame floods:
            // no flood limit, as testpmd's io forwarding has none.
            cmd.args(["-c", &cpus.backend.to_string()])
                .arg(bin)
                .args(["--switch", "--num-queue-pairs", &pairs.to_string()])
                .args(["--flood-rate", "0"])
                .arg("--socket")
                .arg(a)
                .arg("--socket")
                .arg(b)
                .args(args);
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
                &mut testpmd(
                    cpus.load,
                    cpus.backend,
                    cpus.hugepages,
                    "vhost",
                    &vdevs,
                    &app,
                ),
                &dir.join("testpmd-vhost.log"),
            )?
        }
    };
    wait_listening(a, &p.name)?;
    wait_listening(b, &p.name)?;
    Ok(p)
}

/// The measuring window: the back-end's CPU time over it, and where the host placed the
/// load's and the back-end's CPUs meanwhile ([`Watch`]).
struct Window {
    pid: i32,
    start: Duration,
    watch: Watch,
}

impl Window {
    fn start(pid: i32, cpus: Cpus) -> Fallible<Window> {
        Ok(Window {
            pid,
            start: cpu_time(Some(pid))?,
            watch: Watch::start(cpus.load, cpus.backend),
        })
    }

    /// `frames` were counted since the start: µs of CPU per frame and the median cache line
    /// round trip between the two CPUs in ns (`None` if no sample met).
    fn finish(self, frames: f64) -> Fallible<(f64, Option<f64>)> {
        let used = cpu_time(Some(self.pid))?.saturating_sub(self.start);
        let trip = self.watch.stop()?;
        Ok((used.as_secs_f64() * 1e6 / frames.max(1.0), trip))
    }
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

/// The sink's counters.
#[derive(Default)]
struct Counted {
    frames: AtomicU64,
    bytes: AtomicU64,
}

/// Runs one point with pvio's mock front-ends: a sender on `a`, a sink on `b`, their threads on
/// `cpus.load`; `None` when the back-end does not offer TSO.
fn mock_point(
    a: &Path,
    b: &Path,
    pairs: u16,
    traffic: Traffic,
    window: Duration,
    cpus: Cpus,
    backend_pid: i32,
) -> Fallible<Option<Measured>> {
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
    let counted = Counted::default();
    let mut measured = Measured::default();
    let mut cpu_error = None;
    let load = std::thread::scope(|s| {
        let load = s.spawn(|| {
            pin_thread(cpus.load).map_err(|e| e.to_string())?;
            load_loop(
                sender.pairs_mut(),
                sink.pairs_mut(),
                &stop,
                &counting,
                &counted,
            )
        });
        std::thread::sleep(window / 4);
        let cpu = Window::start(backend_pid, cpus);
        counting.store(true, Ordering::Release);
        let t0 = Instant::now();
        std::thread::sleep(window);
        counting.store(false, Ordering::Release);
        let elapsed = t0.elapsed().as_secs_f64();
        let f = counted.frames.load(Ordering::Acquire) as f64;
        let by = counted.bytes.load(Ordering::Acquire) as f64;
        match cpu.and_then(|c| c.finish(f)) {
            Ok((cpu_us, trip)) => (measured.cpu_us, measured.trip_ns) = (cpu_us, trip),
            Err(e) => cpu_error = Some(e.to_string()),
        }
        stop.store(true, Ordering::Release);
        measured.frames_per_s = f / elapsed;
        measured.bits_per_s = by * 8.0 / elapsed;
        load.join()
            .unwrap_or_else(|_| Err("the load thread panicked".into()))
            .map_err(|e| e.to_string())
    });
    load?;
    if let Some(e) = cpu_error {
        return Err(e.into());
    }
    Ok(Some(measured))
}

/// The load: one thread, pinned, that keeps every sender pair's transmit queue full and empties
/// every sink pair's receive queue, polling both like a DPDK lcore (it never sleeps, so the
/// back-ends' used-buffer notifications are not needed and the scheduler plays no part: a
/// sleeping sink that shares a core with a spinning sender made the rates swing by 4x with
/// when the scheduler let it run). Counts the sink's frames while `counting`.
fn load_loop(
    senders: &mut [NetQueuePair],
    sinks: &mut [NetQueuePair],
    stop: &AtomicBool,
    counting: &AtomicBool,
    counted: &Counted,
) -> Result<(), String> {
    let err = |e: frontend_guest::host::NetError| e.to_string();
    while !stop.load(Ordering::Acquire) {
        for p in senders.iter_mut() {
            p.send_primed(64).map_err(err)?;
        }
        for p in sinks.iter_mut() {
            let (f, b) = p.drain_rx().map_err(err)?;
            if f > 0 && counting.load(Ordering::Relaxed) {
                counted.frames.fetch_add(f, Ordering::Relaxed);
                counted.bytes.fetch_add(b, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// testpmd in interactive mode, its output collected by a reader thread.
struct Interactive {
    process: Process,
    stdin: ChildStdin,
    output: Arc<Mutex<String>>,
}

impl Interactive {
    fn start(mut cmd: Command, name: &str) -> Fallible<Interactive> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let output = Arc::new(Mutex::new(String::new()));
        let collected = output.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut t = Interactive {
            process: Process {
                child,
                name: name.into(),
            },
            stdin,
            output,
        };
        t.wait_for(0, "testpmd> ", 1, Duration::from_secs(120))?;
        Ok(t)
    }

    fn len(&self) -> usize {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until the output after byte `from` holds `what` `count` times; returns that text.
    fn wait_for(
        &mut self,
        from: usize,
        what: &str,
        count: usize,
        timeout: Duration,
    ) -> Fallible<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.output.lock().unwrap_or_else(|e| e.into_inner())[from..].to_string();
            if text.matches(what).count() >= count {
                return Ok(text);
            }
            if Instant::now() > deadline || matches!(self.process.child.try_wait(), Ok(Some(_))) {
                return Err(format!("{} did not print {what:?}: {text}", self.process.name).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn command(&mut self, line: &str) -> Fallible<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(())
    }

    /// Frames and bytes received on all `ports` so far (`show port stats all`).
    fn received(&mut self, ports: usize) -> Fallible<(u64, u64)> {
        let from = self.len();
        self.command("show port stats all")?;
        let text = self.wait_for(from, "Tx-bps:", ports, Duration::from_secs(10))?;
        Ok((
            sum_field(&text, "RX-packets:"),
            sum_field(&text, "RX-bytes:"),
        ))
    }
}

/// The sum of the numbers after every `name` in `text`.
fn sum_field(text: &str, name: &str) -> u64 {
    text.match_indices(name)
        .filter_map(|(at, _)| {
            text[at + name.len()..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Runs one point with DPDK's virtio_user front-ends: one testpmd with a port on each socket,
/// mac forwarding between them, its forwarding lcore on `cpus.load`.
fn dpdk_point(
    a: &Path,
    b: &Path,
    pairs: u16,
    size: usize,
    window: Duration,
    cpus: Cpus,
    backend_pid: i32,
) -> Fallible<Measured> {
    let (mac0, mac1) = ("02:00:00:00:00:01", "02:00:00:00:00:02");
    let vdevs = [
        format!(
            "net_virtio_user0,path={},queues={pairs},mac={mac0}",
            a.display()
        ),
        format!(
            "net_virtio_user1,path={},queues={pairs},mac={mac1}",
            b.display()
        ),
    ];
    let app = [
        "-i".to_string(),
        "--forward-mode=mac".into(),
        format!("--eth-peer=0,{mac1}"),
        format!("--eth-peer=1,{mac0}"),
        "--nb-cores=1".into(),
        "--total-num-mbufs=32768".into(),
        format!("--rxq={pairs}"),
        format!("--txq={pairs}"),
        format!("--txpkts={size}"),
    ];
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut pmd = Interactive::start(
        testpmd(
            cpus.backend,
            cpus.load,
            cpus.hugepages,
            "loop",
            &vdevs,
            &app,
        ),
        "testpmd virtio_user",
    )?;
    pmd.command("start tx_first 32")?;
    std::thread::sleep(window / 4);
    let (f0, b0) = pmd.received(2)?;
    let cpu = Window::start(backend_pid, cpus)?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let (f1, b1) = pmd.received(2)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let frames = f1.saturating_sub(f0) as f64;
    let (cpu_us, trip_ns) = cpu.finish(frames)?;
    let _ = pmd.command("stop");
    let _ = pmd.command("quit");
    Ok(Measured {
        frames_per_s: frames / elapsed,
        bits_per_s: b1.saturating_sub(b0) as f64 * 8.0 / elapsed,
        cpu_us,
        trip_ns,
    })
}

/// backend-net's frames per second over the peer's, when both measured.
fn ratio(a: Option<Measured>, b: Option<Measured>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.frames_per_s > 0.0 => Some(a.frames_per_s / b.frames_per_s),
        _ => None,
    }
}

/// The per-round ratios as the report shows them: one figure, or the median (upper middle for
/// an even count) and the range for several; "n/a" for none.
fn show_ratios(ratios: &[f64]) -> String {
    let mut v = ratios.to_vec();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "n/a".into(),
        [one] => format!("{one:.2}"),
        [first, .., last] => format!("{:.2} ({first:.2}–{last:.2})", v[v.len() / 2]),
    }
}

/// The rounds' ratios ([`round_ratio`]) where both systems ran with the CPUs near each other
/// (median round trip below [`NEAR`] times `fastest`), and where both ran with them apart.
fn ratios_by_placement(taken: &[Vec<Option<Measured>>], fastest: f64) -> (Vec<f64>, Vec<f64>) {
    let near = |r: Option<Measured>| trip(r).map(|t| t < NEAR * fastest);
    let (mut near_both, mut apart_both) = (Vec::new(), Vec::new());
    for results in taken {
        let (Some(r), [first, .., peer]) = (round_ratio(results), results.as_slice()) else {
            continue;
        };
        match (near(*first), near(*peer)) {
            (Some(true), Some(true)) => near_both.push(r),
            (Some(false), Some(false)) => apart_both.push(r),
            _ => {}
        }
    }
    (near_both, apart_both)
}

/// A run's median round trip between the CPUs.
fn trip(r: Option<Measured>) -> Option<f64> {
    r.and_then(|m| m.trip_ns)
}

fn show_trip(t: Option<f64>) -> String {
    t.map_or_else(|| "?".into(), |t| format!("{t:.0}"))
}

fn show(r: Option<Measured>) -> String {
    r.map_or_else(|| format!("{:>21}", "n/a"), Measured::show)
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("net bench: {e}");
        std::process::exit(1);
    }
}

/// The report's columns: backend-net, its variants, then testpmd-vhost.
fn systems(args: &Args, bin: &Path) -> Vec<System> {
    let mut v = vec![System {
        label: "backend-net".into(),
        backend: Backend::Pvio {
            bin: bin.to_path_buf(),
            args: Vec::new(),
        },
    }];
    if !args.ab_args.is_empty() {
        v.push(System {
            label: format!("backend-net {}", args.ab_args.join(" ")),
            backend: Backend::Pvio {
                bin: bin.to_path_buf(),
                args: args.ab_args.clone(),
            },
        });
    }
    for base in &args.base_bins {
        v.push(System {
            label: format!("backend-net {}", base.display()),
            backend: Backend::Pvio {
                bin: base.clone(),
                args: Vec::new(),
            },
        });
    }
    if !args.no_dpdk {
        v.push(System {
            label: "testpmd-vhost".into(),
            backend: Backend::TestpmdVhost,
        });
    }
    v
}

fn header(systems: &[System]) {
    for (i, s) in systems.iter().enumerate() {
        println!("  [{i}] {}", s.label);
    }
    print!("{:<11} {:>5}", "traffic", "pairs");
    for i in 0..systems.len() {
        print!("  {:>21}", format!("[{i}] Mpps Gbit/s µs/f"));
    }
    println!("  {:>6}", "ratio");
}

/// A run counts as taken with the CPUs near each other when the median cache line round trip
/// over its window stayed below this many times the fastest of the whole benchmark.
const NEAR: f64 = 2.0;

/// Per round, each system's result.
type Rounds = Vec<Vec<Option<Measured>>>;

/// One row: every system on one point, `rounds` times (in rotating order, so no system
/// always runs first), then each figure's median and backend-net's rate over the last
/// system's (per round; the median and range of several). Returns the rounds, for
/// [`by_placement`].
fn row(
    systems: &[System],
    (name, pairs): (&str, u16),
    mut measure: impl FnMut(&System) -> Fallible<Option<Measured>>,
    (turn, rounds): (usize, u16),
) -> Fallible<Rounds> {
    let n = systems.len();
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); n];
    let mut taken = Rounds::new();
    for round in 0..usize::from(rounds) {
        let mut results = vec![None; n];
        for k in 0..n {
            let i = (k + turn + round) % n;
            results[i] =
                measure(&systems[i]).map_err(|e| format!("{} {name}: {e}", systems[i].label))?;
        }
        if rounds > 1 {
            // Each round on stderr: the report's medians hide which rounds went together.
            let figures: Vec<String> = results.iter().map(|r| show(*r)).collect();
            let trips: Vec<String> = results.iter().map(|r| show_trip(trip(*r))).collect();
            eprintln!(
                "{name} {pairs} pair(s), round {}: {}  [round trip ns: {}]",
                round + 1,
                figures.join("  "),
                trips.join(" ")
            );
        }
        for (r, v) in results.iter().zip(&mut runs) {
            v.extend(*r);
        }
        taken.push(results);
    }
    let all: Vec<f64> = taken.iter().filter_map(|r| round_ratio(r)).collect();
    print!("{name:<11} {pairs:>5}");
    for v in &runs {
        print!("  {}", show(Measured::median(v)));
    }
    println!("  {:>6}", show_ratios(&all));
    Ok(taken)
}

/// The ratio column again, over the rounds in which both backend-net and the peer ran with
/// the CPUs near each other, and over those in which both ran with them apart (see
/// [`pvio_benches::placement`]); `rows` are each row's name and rounds.
fn by_placement(rows: &[(String, Rounds)]) {
    let fastest = rows
        .iter()
        .flat_map(|(_, r)| r.iter().flatten())
        .filter_map(|&r| trip(r))
        .fold(f64::INFINITY, f64::min);
    println!(
        "\nBy where the host placed the two CPUs (median cache line round trip over each window; \
         near: below {NEAR} x the fastest, {fastest:.0} ns), rounds in which both ran alike:"
    );
    println!("{:<19}  {:>26}  {:>26}", "", "ratio, near", "ratio, apart");
    for (name, rounds) in rows {
        let (near, apart) = ratios_by_placement(rounds, fastest);
        let cell = |v: &[f64]| format!("{} in {}/{}", show_ratios(v), v.len(), rounds.len());
        println!("{name:<19}  {:>26}  {:>26}", cell(&near), cell(&apart));
    }
}

/// A round's rate of the first system over the last one's.
fn round_ratio(results: &[Option<Measured>]) -> Option<f64> {
    match results {
        [first, .., peer] => ratio(*first, *peer),
        _ => None,
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
    let cpus = Cpus {
        load: args.load_cpu,
        backend: args.backend_cpu,
        hugepages: args.hugepages,
    };
    let systems = systems(args, &bin);
    let pairs = if args.pairs.is_empty() {
        vec![1, 2]
    } else {
        args.pairs.clone()
    };
    let traffic: Vec<Traffic> = if args.traffic.is_empty() {
        vec![Traffic::Frames(64), Traffic::Frames(1500), Traffic::Tso]
    } else {
        args.traffic
            .iter()
            .map(|t| Traffic::parse(t))
            .collect::<Result<_, _>>()?
    };
    let mut turn = 0;
    let mut rows = Vec::new();
    if args.load != LoadChoice::Dpdk {
        println!(
            "Load from pvio's mock front-ends (sender → back-end → sink) on CPU {}, back-ends on CPU {}; rate at the sink",
            cpus.load, cpus.backend
        );
        header(&systems);
        for &p in &pairs {
            for &t in &traffic {
                let rounds = row(
                    &systems,
                    (&t.name(), p),
                    |s| {
                        let be = start_backend(&s.backend, &dir, &a, &b, p, cpus)?;
                        mock_point(&a, &b, p, t, window, cpus, be.pid())
                    },
                    (turn, args.rounds),
                )?;
                rows.push((format!("mock {} {p}", t.name()), rounds));
                turn += 1;
            }
        }
    }
    if args.load != LoadChoice::Mock && !args.no_dpdk {
        println!(
            "\nLoad from DPDK net_virtio_user: one testpmd, both ports, mac forwarding in a loop \
             (start tx_first 32) on CPU {}, back-ends on CPU {}; frames received by both ports; \
             DPDK memory: {}",
            cpus.load,
            cpus.backend,
            if cpus.hugepages {
                "2 MiB hugepages"
            } else {
                "4 KiB pages (--no-huge)"
            }
        );
        header(&systems);
        for &p in &pairs {
            for &t in &traffic {
                let Traffic::Frames(size) = t else { continue };
                let rounds = row(
                    &systems,
                    (&t.name(), p),
                    |s| {
                        let be = start_backend(&s.backend, &dir, &a, &b, p, cpus)?;
                        dpdk_point(&a, &b, p, size, window, cpus, be.pid()).map(Some)
                    },
                    (turn, args.rounds),
                )?;
                rows.push((format!("dpdk {} {p}", t.name()), rounds));
                turn += 1;
            }
        }
    }
    by_placement(&rows);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(frames: f64, cpu: f64) -> Measured {
        Measured {
            frames_per_s: frames,
            bits_per_s: frames * 512.0,
            cpu_us: cpu,
            trip_ns: None,
        }
    }

    fn at(frames: f64, trip: f64) -> Option<Measured> {
        Some(Measured {
            trip_ns: Some(trip),
            ..m(frames, 0.1)
        })
    }

    #[test]
    fn rounds_are_told_apart_by_placement() {
        let taken = vec![
            vec![at(4.0, 50.0), None, at(4.0, 60.0)],
            vec![at(2.0, 400.0), at(1.0, 50.0), at(4.0, 50.0)],
            vec![at(3.0, 90.0), at(1.0, 50.0), at(2.0, 99.0)],
            vec![None, at(1.0, 50.0), at(2.0, 50.0)],
            vec![at(3.0, 50.0), at(1.0, 50.0), Some(m(2.0, 0.1))],
            vec![at(1.0, 300.0), at(1.0, 50.0), at(4.0, 400.0)],
        ];
        let ratios: Vec<f64> = taken.iter().filter_map(|r| round_ratio(r)).collect();
        assert_eq!(ratios, [1.0, 0.5, 1.5, 1.5, 0.25]);
        let (near, apart) = ratios_by_placement(&taken, 50.0);
        assert_eq!(near, [1.0, 1.5], "round 2 mixed, round 5's peer unknown");
        assert_eq!(apart, [0.25]);
        assert_eq!(round_ratio(&[at(1.0, 1.0)]), None, "no peer");
    }

    #[test]
    fn medians_are_taken_figure_by_figure() {
        assert!(Measured::median(&[]).is_none());
        let med = Measured::median(&[m(3.0, 0.1), m(1.0, 0.3), m(2.0, 0.2)]).unwrap();
        assert_eq!((med.frames_per_s, med.cpu_us), (2.0, 0.2));
        let med = Measured::median(&[m(1.0, 0.4), m(5.0, 0.1)]).unwrap();
        assert_eq!((med.frames_per_s, med.cpu_us), (5.0, 0.4));
    }

    #[test]
    fn ratios_show_one_figure_or_median_and_range() {
        assert_eq!(show_ratios(&[]), "n/a");
        assert_eq!(show_ratios(&[0.5]), "0.50");
        assert_eq!(show_ratios(&[1.2, 0.4, 0.9]), "0.90 (0.40–1.20)");
        assert_eq!(ratio(Some(m(2.0, 0.0)), Some(m(4.0, 0.0))), Some(0.5));
        assert_eq!(ratio(Some(m(2.0, 0.0)), Some(m(0.0, 0.0))), None);
        assert_eq!(ratio(None, Some(m(4.0, 0.0))), None);
    }
}
