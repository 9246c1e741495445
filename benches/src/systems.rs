//! The systems under test and their plumbing: test images, back-end daemons (killed and their
//! sockets removed on drop, also when a run fails), the two load sources (pvio's generator with
//! fio as the raw ceiling, libblkio with its own io_uring driver as the raw ceiling).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::matrix::Point;
use crate::{BenchError, Result};

/// Where an image lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// /dev/shm, buffered I/O: the back-end's own cost dominates.
    Tmpfs,
    /// The local disk, O_DIRECT: the device dominates.
    Disk,
}

impl Medium {
    /// Short name used in the report and file names.
    pub fn name(self) -> &'static str {
        match self {
            Medium::Tmpfs => "tmpfs",
            Medium::Disk => "disk-odirect",
        }
    }

    /// Whether I/O to it uses O_DIRECT.
    pub fn direct(self) -> bool {
        self == Medium::Disk
    }
}

/// A test image file, removed (with its folder) on drop.
#[derive(Debug)]
pub struct Image {
    /// The folder (also holds the sockets).
    pub dir: PathBuf,
    /// The image file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Where it lives.
    pub medium: Medium,
}

impl Image {
    /// Creates a fully written (not sparse) image of `size` bytes in a fresh folder under
    /// `parent`, so reads hit real data.
    ///
    /// # Errors
    /// [`BenchError::Io`].
    pub fn create(parent: &Path, medium: Medium, size: u64) -> Result<Self> {
        let dir = parent.join(format!(
            "pvio-bench-{}-{}",
            medium.name(),
            std::process::id()
        ));
        fs::create_dir_all(&dir).map_err(BenchError::io(format!("creating {}", dir.display())))?;
        let image = Image {
            path: dir.join("disk.raw"),
            dir,
            size,
            medium,
        };
        let mut f = fs::File::create(&image.path)
            .map_err(BenchError::io(format!("creating {}", image.path.display())))?;
        let chunk: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])
                .map_err(BenchError::io("writing the image"))?;
            left -= n as u64;
        }
        f.sync_all().map_err(BenchError::io("syncing the image"))?;
        Ok(image)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// pvio's backend-blk.
    Pvio,
    /// qemu-storage-daemon's vhost-user-blk export, aio=io_uring.
    Qsd,
    /// fio with io_uring on the image itself: the upper bound.
    Raw,
}

impl System {
    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            System::Pvio => "pvio",
            System::Qsd => "qemu-storage-daemon",
            System::Raw => "raw io_uring (fio)",
        }
    }
}

/// What drives the back-ends (and measures the raw ceiling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// pvio's `frontend-guest bench blk`; raw: fio with io_uring.
    Pvio,
    /// libblkio's `virtio-blk-vhost-user` driver (`blkio-load`); raw: libblkio's `io_uring`
    /// driver on the image.
    Libblkio,
}

impl Load {
    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Load::Pvio => "pvio load generator",
            Load::Libblkio => "libblkio",
        }
    }

    /// Short name for file names.
    pub fn tag(self) -> &'static str {
        match self {
            Load::Pvio => "pvio",
            Load::Libblkio => "libblkio",
        }
    }
}

/// Paths of the programs used.
#[derive(Debug, Clone)]
pub struct Programs {
    /// pvio's load generator.
    pub frontend_guest: PathBuf,
    /// The libblkio load generator.
    pub blkio_load: PathBuf,
    /// Extra arguments for backend-blk (e.g. `--poll-us 50`).
    pub pvio_args: Vec<String>,
    /// pvio's back-end.
    pub backend_blk: PathBuf,
    /// qemu-storage-daemon.
    pub qsd: PathBuf,
    /// fio.
    pub fio: PathBuf,
}

impl Programs {
    /// The pvio binaries in `bin_dir`, the others from PATH.
    ///
    /// # Errors
    /// [`BenchError::Missing`] for the first program not found.
    pub fn find(bin_dir: &Path) -> Result<Self> {
        let local = |name: &str| {
            let p = bin_dir.join(name);
            p.is_file()
                .then_some(p)
                .ok_or_else(|| BenchError::Missing(bin_dir.join(name)))
        };
        let on_path = |name: &str| {
            std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(name))
                        .find(|p| p.is_file())
                })
                .ok_or_else(|| BenchError::Missing(PathBuf::from(name)))
        };
        Ok(Programs {
            frontend_guest: local("frontend-guest")?,
            blkio_load: local("blkio-load")?,
            pvio_args: Vec::new(),
            backend_blk: local("backend-blk")?,
            qsd: on_path("qemu-storage-daemon")?,
            fio: on_path("fio")?,
        })
    }
}

/// qemu-storage-daemon's `--export` argument: node `disk0` as a writable vhost-user-blk export
/// with `queues` queues on unix socket `socket`, served by iothread `iot0`.
pub fn qsd_export(socket: &Path, queues: u16) -> String {
    format!(
        "type=vhost-user-blk,id=exp0,node-name=disk0,iothread=iot0,addr.type=unix,\
         addr.path={},writable=on,num-queues={queues}",
        socket.display()
    )
}

/// A running back-end daemon: killed, reaped and its socket removed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    name: &'static str,
}

impl Daemon {
    /// Starts `system`'s daemon on `image` with `queues` queues.
    ///
    /// # Errors
    /// [`BenchError::Io`] if it cannot be started.
    pub fn start(progs: &Programs, system: System, image: &Image, queues: u16) -> Result<Self> {
        let socket = image.dir.join(format!(
            "{}.sock",
            system.name().split(' ').next().unwrap_or("sock")
        ));
        let _ = fs::remove_file(&socket);
        let mut cmd = match system {
            System::Pvio => {
                let mut c = Command::new(&progs.backend_blk);
                c.arg("--socket")
                    .arg(&socket)
                    .arg("--image")
                    .arg(&image.path);
                c.args(["--num-queues", &queues.to_string(), "--queue-size", "256"]);
                c.args(["--direct", if image.medium.direct() { "on" } else { "off" }]);
                c.args(&progs.pvio_args);
                c.env("RUST_LOG", "warn");
                c
            }
            System::Qsd | System::Raw => {
                let mut c = Command::new(&progs.qsd);
                let direct = if image.medium.direct() { "on" } else { "off" };
                c.arg("--blockdev").arg(format!(
                    "driver=file,node-name=file0,filename={},aio=io_uring,cache.direct={direct}",
                    image.path.display()
                ));
                c.args(["--blockdev", "driver=raw,node-name=disk0,file=file0"]);
                c.args(["--object", "iothread,id=iot0"]);
                c.arg("--export").arg(qsd_export(&socket, queues));
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(BenchError::io(format!("starting {}", system.name())))?;
        Ok(Daemon {
            child,
            socket,
            name: system.name(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the daemon has exited.
    ///
    /// # Errors
    /// [`BenchError::Program`].
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(BenchError::Program {
                program: self.name.to_owned(),
                status: status.to_string(),
                stderr: "exited during the run (its stderr is above)".to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

/// One measured run of one point on one system.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Requests per second.
    pub iops: f64,
    /// MiB/s.
    pub mib_s: f64,
    /// Mean completion latency, microseconds.
    pub mean: f64,
    /// Completion latency percentiles, microseconds.
    pub p50: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Back-end CPU time per I/O, microseconds (not measured for raw io_uring).
    pub cpu_us_per_io: Option<f64>,
    /// The 1-minute load average when the run ended (`/proc/loadavg`).
    pub load1: f64,
}

/// The 1-minute load average now (0 if unreadable).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn run(cmd: &mut Command, program: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::io(format!("running {program}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(BenchError::Program {
            program: program.to_owned(),
            status: out.status.to_string(),
            stderr: tail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn field(v: &Value, path: &[&str], program: &str) -> Result<f64> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .ok_or_else(|| BenchError::Output {
            program: program.to_owned(),
            detail: format!("no {}", path.join(".")),
        })
}

fn parse_json(text: &str, program: &str) -> Result<Value> {
    // fio may print notes before its JSON.
    let start = text.find('{').unwrap_or(0);
    serde_json::from_str(&text[start..]).map_err(|e| BenchError::Output {
        program: program.to_owned(),
        detail: e.to_string(),
    })
}

/// The common arguments of both load generators for point `p`.
fn load_args(cmd: &mut Command, p: &Point, image: &Image, runtime: Duration) {
    cmd.args(["--rw", p.rw]);
    cmd.args([
        "--bs",
        &p.bs.to_string(),
        "--iodepth",
        &p.iodepth.to_string(),
    ]);
    cmd.args([
        "--queues",
        &p.queues.to_string(),
        "--size",
        &image.size.to_string(),
    ]);
    cmd.args(["--runtime", &format!("{}ms", runtime.as_millis())]);
}

/// Runs `load`'s generator against `daemon` for `runtime`.
///
/// # Errors
/// [`BenchError`] if it fails or prints something unexpected.
pub fn run_loadgen(
    progs: &Programs,
    load: Load,
    daemon: &mut Daemon,
    p: &Point,
    image: &Image,
    runtime: Duration,
) -> Result<Sample> {
    let (mut cmd, program) = match load {
        Load::Pvio => {
            let mut c = Command::new(&progs.frontend_guest);
            c.args(["bench", "blk", "--json", "--no-progress"]);
            (c, "frontend-guest bench blk")
        }
        Load::Libblkio => (Command::new(&progs.blkio_load), "blkio-load"),
    };
    cmd.arg("--socket").arg(&daemon.socket);
    load_args(&mut cmd, p, image, runtime);
    cmd.args(["--backend-pid", &daemon.pid().to_string()]);
    let out = run(&mut cmd, program);
    daemon.check_alive()?;
    parse_loadgen(&out?, program)
}

/// The raw io_uring ceiling for `load`: fio, or libblkio's io_uring driver on the image.
///
/// # Errors
/// [`BenchError`] if the program fails or prints something unexpected.
pub fn run_raw(
    progs: &Programs,
    load: Load,
    p: &Point,
    image: &Image,
    runtime: Duration,
) -> Result<Sample> {
    if load == Load::Pvio {
        return run_fio(progs, p, image, runtime);
    }
    let mut cmd = Command::new(&progs.blkio_load);
    cmd.arg("--file").arg(&image.path);
    if image.medium.direct() {
        cmd.arg("--direct");
    }
    load_args(&mut cmd, p, image, runtime);
    parse_loadgen(&run(&mut cmd, "blkio-load --file")?, "blkio-load")
}

/// A sample from the JSON object `frontend-guest bench blk --json` and `blkio-load` print.
fn parse_loadgen(out: &str, program: &str) -> Result<Sample> {
    let v = parse_json(out, program)?;
    let f = |path: &[&str]| field(&v, path, program);
    Ok(Sample {
        iops: f(&["iops"])?,
        mib_s: f(&["mib_s"])?,
        mean: f(&["lat_us", "mean"])?,
        p50: f(&["lat_us", "p50"])?,
        p99: f(&["lat_us", "p99"])?,
        p999: f(&["lat_us", "p99_9"])?,
        cpu_us_per_io: v.get("backend_cpu_us_per_io").and_then(Value::as_f64),
        load1: load_average(),
    })
}

/// Runs fio with io_uring directly on the image: one job per queue, each on its own region
/// (as the load generator's queues), same depth and block size.
///
/// # Errors
/// [`BenchError`] if fio fails or prints something unexpected.
pub fn run_fio(progs: &Programs, p: &Point, image: &Image, runtime: Duration) -> Result<Sample> {
    let region = image.size / u64::from(p.queues) / u64::from(p.bs) * u64::from(p.bs);
    let mut cmd = Command::new(&progs.fio);
    cmd.args([
        "--name=raw",
        "--ioengine=io_uring",
        "--output-format=json",
        "--group_reporting",
    ]);
    cmd.arg(format!("--filename={}", image.path.display()));
    cmd.arg(format!("--rw={}", p.rw))
        .arg(format!("--bs={}", p.bs));
    cmd.arg(format!("--iodepth={}", p.iodepth))
        .arg(format!("--numjobs={}", p.queues));
    cmd.arg(format!("--size={region}"))
        .arg(format!("--offset_increment={region}"));
    cmd.arg(format!("--direct={}", u8::from(image.medium.direct())));
    cmd.arg("--time_based")
        .arg(format!("--runtime={}ms", runtime.as_millis()));
    cmd.args(["--randrepeat=0", "--norandommap", "--invalidate=0"]);
    let v = parse_json(&run(&mut cmd, "fio")?, "fio")?;
    let dir = if p.rw.contains("read") {
        "read"
    } else {
        "write"
    };
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .cloned()
        .unwrap_or(Value::Null);
    let f = |path: &[&str]| field(&job, path, "fio");
    let pct = |k: &str| f(&[dir, "clat_ns", "percentile", k]).map(|ns| ns / 1000.0);
    Ok(Sample {
        iops: f(&[dir, "iops"])?,
        mib_s: f(&[dir, "bw_bytes"])? / f64::from(1u32 << 20),
        mean: f(&[dir, "clat_ns", "mean"])? / 1000.0,
        p50: pct("50.000000")?,
        p99: pct("99.000000")?,
        p999: pct("99.900000")?,
        cpu_us_per_io: None,
        load1: load_average(),
    })
}
