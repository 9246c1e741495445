//! `netdisk-compare`: backend-blk on a Ceph RBD image and on an NBD export, against
//! qemu-storage-daemon on the same storage and fio's rbd/nbd engines; 4 KiB random read and
//! write at several queue depths, systems alternated per round; writes
//! `netdisk-report.md` (see benches/README.md). `scripts/bench.sh --netdisk` runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use pvio_benches::netdisk::{self, Daemon, Sample, Storage, System};
use pvio_benches::{BenchError, Result};

/// backend-blk vs qemu-storage-daemon vs the raw library on RBD and NBD.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Seconds measured per run (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 2.0)]
    runtime: f64,
    /// Rounds; each runs every system once per point, in a rotated order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Queue depths.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    depths: Vec<usize>,
    /// Image / export size in MiB (fully written before the runs).
    #[arg(long, default_value_t = 256)]
    image_mib: u64,
    /// A running cluster's ceph.conf (client.admin); default: start a single-host test
    /// cluster under the output folder with scripts/ceph-test-cluster.sh and stop it at the end.
    #[arg(long)]
    ceph_conf: Option<PathBuf>,
    /// Only these storages (rbd, nbd).
    #[arg(long, value_delimiter = ',', default_value = "rbd,nbd")]
    only: Vec<String>,
    /// Output folder.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Folder holding backend-blk built with `--features rbd,nbd` (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// What a run set up, undone on drop: a child process killed, a test cluster stopped, an RBD
/// image (ceph.conf, POOL/IMAGE) removed.
enum Server {
    Process(Child),
    Cluster(PathBuf),
    Image(PathBuf, String),
}

impl Drop for Server {
    fn drop(&mut self) {
        match self {
            Server::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Server::Cluster(dir) => {
                let _ = Command::new("scripts/ceph-test-cluster.sh")
                    .arg("stop")
                    .arg(&*dir)
                    .status();
            }
            Server::Image(conf, spec) => {
                let _ = Command::new("rbd")
                    .arg("-c")
                    .arg(&*conf)
                    .args(["rm", "--no-progress", spec.as_str()])
                    .stdout(Stdio::null())
                    .status();
            }
        }
    }
}

/// Runs `cmd` to completion, failing on a non-zero exit.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::io(format!("running {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(BenchError::Program {
        program: what.into(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The RBD image to measure (created and fully written), and what to undo at the end (the
/// image, then the cluster if this run started it).
fn rbd_storage(args: &Args, bytes: u64) -> Result<(Storage, Vec<Server>)> {
    let (conf, cluster) = match &args.ceph_conf {
        Some(conf) => (conf.clone(), None),
        None => {
            let dir = std::path::absolute(args.out.join("ceph"))
                .map_err(BenchError::io("cluster folder"))?;
            run(
                Command::new("scripts/ceph-test-cluster.sh")
                    .arg("start")
                    .arg(&dir)
                    .arg("3620"),
                "ceph-test-cluster.sh start",
            )?;
            (dir.join("ceph.conf"), Some(Server::Cluster(dir)))
        }
    };
    let image = format!("bench-{}", std::process::id());
    let spec = format!("rbd/{image}");
    let rbd =
        |args: &[&str], what: &str| run(Command::new("rbd").arg("-c").arg(&conf).args(args), what);
    // Without exclusive-lock (and so object-map and fast-diff): the systems take turns on the
    // image, and one that left without releasing the lock would stall the next one's writes.
    rbd(
        &[
            "create",
            "--size",
            &format!("{bytes}B"),
            "--image-feature",
            "layering",
            &spec,
        ],
        "rbd create",
    )?;
    let undo = vec![Server::Image(conf.clone(), spec.clone())];
    let undo = undo.into_iter().chain(cluster).collect();
    rbd(
        &[
            "bench",
            "--io-type",
            "write",
            "--io-pattern",
            "seq",
            "--io-size",
            "4M",
            "--io-threads",
            "4",
            "--io-total",
            &format!("{bytes}B"),
            &spec,
        ],
        "rbd bench (fill)",
    )?;
    let storage = Storage::Rbd {
        conf,
        pool: "rbd".into(),
        image,
    };
    Ok((storage, undo))
}

/// nbdkit's memory plugin on a unix socket in `dir`, fully written.
fn nbd_storage(dir: &Path, bytes: u64) -> Result<(Storage, Vec<Server>)> {
    let socket = dir.join("nbdkit.sock");
    let _ = std::fs::remove_file(&socket);
    let child = Command::new("nbdkit")
        .args(["--foreground", "--exit-with-parent", "-U"])
        .arg(&socket)
        .args(["memory", &bytes.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .map_err(BenchError::io("starting nbdkit"))?;
    let server = vec![Server::Process(child)];
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    run(
        Command::new("fio").args([
            "--name=fill",
            "--ioengine=nbd",
            &format!("--uri=nbd+unix:///?socket={}", socket.display()),
            "--rw=write",
            "--bs=1M",
            &format!("--size={bytes}"),
        ]),
        "fio (fill)",
    )?;
    Ok((Storage::Nbd { socket }, server))
}

/// One run of `system` at one point.
fn measure(
    system: System,
    backend_blk: &Path,
    storage: &Storage,
    dir: &Path,
    point: (bool, usize),
    span: u64,
    runtime: Duration,
) -> Result<Sample> {
    let (write, depth) = point;
    let waited = storage.wait_released()?;
    if waited > Duration::from_secs(1) {
        eprintln!(
            "waited {:.1} s for the last client to leave the image",
            waited.as_secs_f64()
        );
    }
    match system {
        System::Fio => netdisk::fio(storage, write, depth, span, runtime),
        _ => {
            let daemon = Daemon::start(system, backend_blk, storage, dir)?;
            netdisk::blkio_load(&daemon, write, depth, span, runtime)
        }
    }
}

/// The median of `xs` (the mean of the middle two for an even count; empty: 0).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// The load average (1, 5, 15 minutes) as /proc/loadavg says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs every point of `storage` and returns its Markdown table.
fn rows(args: &Args, backend_blk: &Path, storage: &Storage, span: u64) -> Result<String> {
    let runtime = Duration::from_secs_f64(args.runtime);
    let dir = args.out.join("netdisk");
    std::fs::create_dir_all(&dir).map_err(BenchError::io("output folder"))?;
    let mut table = format!(
        "| {} 4 KiB | QD | backend-blk IOPS (min–max) | qsd IOPS (min–max) | fio IOPS (min–max) | blk/qsd | blk/fio | mean µs blk / qsd / fio | p99 µs blk / qsd / fio | CPU µs/IO blk / qsd / fio |\n|---|---|---|---|---|---|---|---|---|---|\n",
        storage.name()
    );
    for write in [false, true] {
        for &depth in &args.depths {
            let mut samples: [Vec<Sample>; 3] = Default::default();
            for round in 0..args.rounds {
                for i in 0..System::ALL.len() {
                    let at = (i + round) % System::ALL.len();
                    let system = System::ALL[at];
                    let s = measure(
                        system,
                        backend_blk,
                        storage,
                        &dir,
                        (write, depth),
                        span,
                        runtime,
                    )?;
                    eprintln!(
                        "{} {} QD{depth} round {round}: {}: {:.0} IOPS, mean {:.0} µs, CPU {:.1} µs/IO",
                        storage.name(),
                        if write { "randwrite" } else { "randread" },
                        system.name(),
                        s.iops,
                        s.mean_us,
                        s.cpu_us_per_io
                    );
                    samples[at].push(s);
                }
            }
            let med = |f: fn(&Sample) -> f64| -> [f64; 3] {
                samples
                    .each_ref()
                    .map(|v| median(&mut v.iter().map(f).collect::<Vec<_>>()))
            };
            let (iops, mean, p99, cpu) = (
                med(|s| s.iops),
                med(|s| s.mean_us),
                med(|s| s.p99_us),
                med(|s| s.cpu_us_per_io),
            );
            // A figure a system does not give (fio's CPU per I/O is NaN) prints as "–".
            let triple = |v: [f64; 3], digits: usize| {
                v.map(|x| {
                    if x.is_nan() {
                        "–".to_string()
                    } else {
                        format!("{x:.digits$}")
                    }
                })
                .join(" / ")
            };
            let spread = |at: usize| {
                let (lo, hi) = samples[at]
                    .iter()
                    .fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
                        (lo.min(s.iops), hi.max(s.iops))
                    });
                format!("{:.0} ({lo:.0}–{hi:.0})", iops[at])
            };
            table += &format!(
                "| {} | {depth} | {} | {} | {} | {:.2}× | {:.2}× | {} | {} | {} |\n",
                if write { "randwrite" } else { "randread" },
                spread(0),
                spread(1),
                spread(2),
                iops[0] / iops[1],
                iops[0] / iops[2],
                triple(mean, 0),
                triple(p99, 0),
                triple(cpu, 1),
            );
        }
    }
    Ok(table)
}

fn main() -> std::process::ExitCode {
    env_logger::init();
    let args = Args::parse();
    match run_all(&args) {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netdisk-compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_all(args: &Args) -> Result<String> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(BenchError::io("current_exe"))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let backend_blk = bin_dir.join("backend-blk");
    if !backend_blk.exists() {
        return Err(BenchError::Missing(backend_blk));
    }
    std::fs::create_dir_all(&args.out).map_err(BenchError::io("output folder"))?;
    let bytes = args.image_mib << 20;
    let mut report = format!(
        "# backend-blk on network storage\n\nlibblkio client (1 queue) for backend-blk and \
         qemu-storage-daemon, fio's own engine for the raw library; {} s per run, {} rounds \
         (systems rotated per round), medians of each figure. Load average at start: {}.\n\n",
        args.runtime,
        args.rounds,
        load_average()
    );
    for which in &args.only {
        let (storage, _server) = match which.as_str() {
            "rbd" => rbd_storage(args, bytes)?,
            "nbd" => nbd_storage(&args.out, bytes)?,
            other => {
                return Err(BenchError::Output {
                    program: "netdisk-compare".into(),
                    detail: format!("--only {other}: expected rbd or nbd"),
                })
            }
        };
        report += &rows(args, &backend_blk, &storage, bytes)?;
        report += "\n";
    }
    report += &format!("Load average at the end: {}.\n", load_average());
    let path = args.out.join("netdisk-report.md");
    std::fs::write(&path, &report)
        .map_err(BenchError::io(format!("writing {}", path.display())))?;
    Ok(report)
}
