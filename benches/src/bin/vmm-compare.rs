//! vmm benchmark: pvio's guest's block workload through `vmm` on backend-blk, beside the same
//! workload through the mock front-end (`frontend-guest bench blk`, no VM) on the same daemon,
//! plus doorbells and interrupts per request and the time from starting the VMM to the guest's
//! first serial byte. No pass or fail.
//!
//! The guest measures itself (TSC, calibrated on the LAPIC timer) and prints requests, kicks,
//! interrupts and microseconds per job; IOPS is requests / time and the mean latency is
//! time × queue depth / requests (Little's law, all requests in flight). On hosts whose
//! /dev/kvm is kvm_pvm the guest's CPL0 code runs in KVM's instruction emulator (~290 ns per
//! instruction): the guest's figures measure that, not the back-end (see vmm/README.md).
//!
//! `cargo build --release -p vmm -p backend-blk -p frontend-guest &&
//! cargo run --release -p pvio-benches --bin vmm-compare -- [--mib N] [--runtime-ms N]`

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use pvio_benches::matrix::Point;
use pvio_benches::report::median;
use pvio_benches::systems::{run_loadgen, Daemon, Image, Load, Medium, Programs, System};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(about = "pvio's guest through vmm vs the mock front-end, on backend-blk")]
struct Args {
    /// MiB each guest job covers (a power of two of blocks for the random points).
    #[arg(long, default_value_t = 4)]
    mib: u64,
    /// Runtime of each mock front-end point, milliseconds.
    #[arg(long, default_value_t = 2000)]
    runtime_ms: u64,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// VM starts measured for the start-up time.
    #[arg(long, default_value_t = 5)]
    starts: usize,
}

/// What the guest printed for one job.
struct GuestRun {
    requests: f64,
    kicks: f64,
    irqs: f64,
    us: f64,
}

fn field(line: &str, key: &str) -> BenchResult<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key}= in {line:?}").into())
}

fn run_guest(vmm: &PathBuf, socket: &PathBuf, words: &[String]) -> BenchResult<GuestRun> {
    let out = Command::new(vmm)
        .arg("run")
        .arg("--guest")
        .arg(vmm::GUEST_PAYLOAD)
        .arg("--disk")
        .arg(socket)
        .arg("--")
        .args(words)
        .stdin(Stdio::null())
        .output()?;
    let console = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        return Err(format!("vmm {words:?}: {}\n{console}\n{log}", out.status).into());
    }
    let line = console
        .lines()
        .find(|l| l.contains("pvio-guest: blk "))
        .ok_or_else(|| format!("no job line in {console}"))?;
    Ok(GuestRun {
        requests: field(line, "requests")?,
        kicks: field(line, "kicks")?,
        irqs: field(line, "irqs")?,
        us: field(line, "us")?,
    })
}

/// Milliseconds from spawning the VMM to the first byte on its standard output.
fn first_byte_ms(vmm: &PathBuf) -> BenchResult<f64> {
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .args(["run", "--guest", vmm::GUEST_PAYLOAD])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut byte = [0u8; 1];
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    stdout.read_exact(&mut byte)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest)?;
    child.wait()?;
    Ok(ms)
}

fn main() -> BenchResult<()> {
    let args = Args::parse();
    let progs = Programs::find(&args.bin_dir)?;
    let vmm = args.bin_dir.join("vmm");
    let size = args.mib << 20;
    let image = Image::create(std::path::Path::new("/dev/shm"), Medium::Tmpfs, size)?;
    let mut daemon = Daemon::start(&progs, System::Pvio, &image, 1)?;
    let socket = daemon.socket.clone();
    let points: [(&str, &str, u32, u16); 5] = [
        ("randread", "read", 4096, 1),
        ("randread", "read", 4096, 32),
        ("randwrite", "write-raw", 4096, 1),
        ("randwrite", "write-raw", 4096, 32),
        ("read", "read", 1 << 20, 1),
    ];
    println!("| workload | vmm guest IOPS | vmm mean lat µs | kicks/req | irqs/req | mock front-end IOPS | mock p50 µs |");
    println!("|---|---|---|---|---|---|---|");
    for (rw, op, bs, qd) in points {
        let random = rw.starts_with("rand");
        let mut words = vec!["irq".to_string(), format!("qd={qd}"), format!("bs={bs}")];
        if random {
            words.push("random".into());
        }
        words.push(format!("{op}=0+{size}"));
        let g = run_guest(&vmm, &socket, &words)?;
        let point = Point {
            rw,
            bs,
            iodepth: qd,
            queues: 1,
        };
        let runtime = Duration::from_millis(args.runtime_ms);
        let mock = run_loadgen(&progs, Load::Pvio, &mut daemon, &point, &image, runtime)?;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} |",
            point.label(),
            g.requests / g.us * 1e6,
            g.us * f64::from(qd) / g.requests,
            g.kicks / g.requests,
            g.irqs / g.requests,
            mock.iops,
            mock.p50
        );
    }
    let mut starts = Vec::with_capacity(args.starts);
    for _ in 0..args.starts {
        starts.push(first_byte_ms(&vmm)?);
    }
    println!(
        "\nVM start to the guest's first serial byte: median {:.1} ms over {} starts",
        median(&starts).unwrap_or(f64::NAN),
        args.starts
    );
    Ok(())
}
