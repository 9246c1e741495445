//! Network-disk rows: backend-blk on a Ceph RBD image or an NBD export, against
//! qemu-storage-daemon on the same storage (its `rbd` and `nbd` block drivers) and fio's `rbd`
//! and `nbd` engines (the storage library alone, no vhost-user in between: the ceiling).
//!
//! Both vhost-user-blk back-ends are driven by the same client, libblkio (the `blkio` crate's
//! `virtio-blk-vhost-user` driver, [`blkio_load`]), so the ratios do not depend on pvio's own
//! front-end. Each run keeps `depth` 4 KiB requests in flight at random aligned offsets and
//! reports IOPS, the mean and 99th percentile completion latency (µs, submit to completion
//! as the client sees it) and the back-end's CPU time per I/O (µs, from `/proc/PID/stat`,
//! all threads: librbd's and libnbd's work included). fio's CPU is not reported: it counts its
//! job thread only, not the library's threads.

use std::fs;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};
use serde_json::Value;

use crate::{BenchError, Result};

/// Bytes per request.
pub const BLOCK: usize = 4096;

/// Which storage the rows are about.
#[derive(Debug, Clone)]
pub enum Storage {
    /// RBD image `pool/image` of the cluster of `conf` (user admin).
    Rbd {
        /// ceph.conf.
        conf: PathBuf,
        /// Pool.
        pool: String,
        /// Image.
        image: String,
    },
    /// NBD export on the unix socket `socket` (export name "").
    Nbd {
        /// nbdkit's socket.
        socket: PathBuf,
    },
}

impl Storage {
    /// "RBD" or "NBD".
    pub fn name(&self) -> &'static str {
        match self {
            Storage::Rbd { .. } => "RBD",
            Storage::Nbd { .. } => "NBD",
        }
    }

    /// Waits until no client watches the RBD image (`rbd status`: a client that has not
    /// closed it yet, or a killed one whose watch the cluster has not timed out), at most
    /// [`RELEASE_TIMEOUT`]; returns how long it waited. NBD: nothing to wait for.
    ///
    /// # Errors
    /// `rbd status` fails or prints something unexpected, or a client still watches the
    /// image after [`RELEASE_TIMEOUT`].
    pub fn wait_released(&self) -> Result<Duration> {
        let Storage::Rbd { conf, pool, image } = self else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        loop {
            let watchers = rbd_watchers(conf, &format!("{pool}/{image}"))?;
            if watchers == 0 {
                return Ok(started.elapsed());
            }
            if started.elapsed() > RELEASE_TIMEOUT {
                return Err(BenchError::Output {
                    program: "rbd status".into(),
                    detail: format!(
                        "{watchers} client(s) still watch {pool}/{image} after {} s",
                        RELEASE_TIMEOUT.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// backend-blk's `--image`.
    fn backend_blk_url(&self) -> String {
        match self {
            Storage::Rbd { conf, pool, image } => {
                format!("rbd:{pool}/{image}:conf={}", conf.display())
            }
            Storage::Nbd { socket } => format!("nbd+unix:///?socket={}", socket.display()),
        }
    }

    /// qemu-storage-daemon's `--blockdev` for it.
    fn qsd_blockdev(&self) -> String {
        match self {
            Storage::Rbd { conf, pool, image } => format!(
                "driver=rbd,node-name=disk0,pool={pool},image={image},conf={},user=admin,\
                 cache.direct=on",
                conf.display()
            ),
            Storage::Nbd { socket } => format!(
                "driver=nbd,node-name=disk0,server.type=unix,server.path={}",
                socket.display()
            ),
        }
    }
}

/// Longest wait for the clients of an RBD image to go away between two systems (a killed
/// client's watch lasts until the OSD's `osd_client_watch_timeout`, 30 s by default).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The number of clients watching RBD image `spec` (`POOL/IMAGE`) of the cluster of `conf`.
fn rbd_watchers(conf: &Path, spec: &str) -> Result<usize> {
    let out = Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(["status", "--format", "json", spec])
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::io("running rbd status"))?;
    if !out.status.success() {
        return Err(BenchError::Program {
            program: "rbd status".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Output {
        program: "rbd status".into(),
        detail: e.to_string(),
    })?;
    v["watchers"]
        .as_array()
        .map(Vec::len)
        .ok_or_else(|| BenchError::Output {
            program: "rbd status".into(),
            detail: "no watchers list".into(),
        })
}

/// One system of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// backend-blk, driven by libblkio.
    BackendBlk,
    /// qemu-storage-daemon's vhost-user-blk export, driven by libblkio.
    Qsd,
    /// fio with the storage's own engine (`rbd` or `nbd`).
    Fio,
}

impl System {
    /// All, in the first round's order.
    pub const ALL: [System; 3] = [System::BackendBlk, System::Qsd, System::Fio];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            System::BackendBlk => "backend-blk",
            System::Qsd => "qemu-storage-daemon",
            System::Fio => "fio (raw library)",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Requests per second.
    pub iops: f64,
    /// Mean completion latency, µs.
    pub mean_us: f64,
    /// 99th percentile completion latency, µs.
    pub p99_us: f64,
    /// CPU time per I/O of the back-end process, µs (NaN for fio: not measured).
    pub cpu_us_per_io: f64,
}

/// A vhost-user-blk back-end process on `storage`, killed on drop.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `system` (backend-blk or qemu-storage-daemon) on `storage`, listening on a
    /// socket in `dir`, and waits until libblkio can attach.
    ///
    /// # Errors
    /// It cannot start or does not listen within a minute.
    pub fn start(
        system: System,
        backend_blk: &Path,
        storage: &Storage,
        dir: &Path,
    ) -> Result<Self> {
        let socket = dir.join("vhost.sock");
        let _ = fs::remove_file(&socket);
        let mut cmd = match system {
            System::BackendBlk => {
                let mut c = Command::new(backend_blk);
                c.arg("--socket").arg(&socket);
                c.args(["--image", &storage.backend_blk_url(), "--queue-size", "256"]);
                c.env("RUST_LOG", "warn");
                c
            }
            System::Qsd => {
                let mut c = Command::new("qemu-storage-daemon");
                c.args(["--blockdev", &storage.qsd_blockdev()]);
                c.args(["--object", "iothread,id=iot0", "--export"]);
                c.arg(crate::systems::qsd_export(&socket, 1));
                c
            }
            System::Fio => unreachable!("fio is not a daemon"),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(BenchError::io(format!("starting {}", system.name())))?;
        let mut daemon = Daemon { child, socket };
        let until = Instant::now() + Duration::from_secs(60);
        while !daemon.socket.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(BenchError::Program {
                    program: system.name().into(),
                    status: status.to_string(),
                    stderr: "exited before listening (its stderr is above)".into(),
                });
            }
            if Instant::now() > until {
                return Err(BenchError::Output {
                    program: system.name().into(),
                    detail: "does not listen within 60 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }
}

/// Longest wait for a daemon to exit after SIGTERM before it is killed. qemu-storage-daemon
/// 7.2 sometimes never exits (its main thread in `vhost_user_server_stop`'s `aio_poll`, its
/// iothread waiting for the AioContext lock); a killed librbd client leaves its watch on the
/// image until the cluster times it out (about 30 s), which [`Storage::wait_released`] waits
/// out before the next system.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

impl Drop for Daemon {
    /// SIGTERM, so that the daemon closes its storage, then waits for its exit; SIGKILL (said
    /// on stderr) if it is still there after [`EXIT_TIMEOUT`].
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let asked = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if asked.elapsed() > EXIT_TIMEOUT {
                eprintln!(
                    "pid {} did not exit within {} s of SIGTERM: killed",
                    self.child.id(),
                    EXIT_TIMEOUT.as_secs()
                );
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        if asked.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "pid {} took {:.1} s to exit after SIGTERM",
                self.child.id(),
                asked.elapsed().as_secs_f64()
            );
        }
        let _ = fs::remove_file(&self.socket);
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s times (USER_HZ: 100 on x86 Linux).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system, all threads) of process `pid` so far, µs.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(BenchError::io(format!("reading /proc/{pid}/stat")))?;
    // Fields after the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((ticks(14) + ticks(15)) * 1e6 / USER_HZ)
}

/// libblkio's error as the harness's.
fn blkio_err(what: &str) -> impl FnOnce(blkio::Error) -> BenchError + '_ {
    move |e| load_err(format!("{what}: {}", e.message()))
}

/// A failure of the libblkio load.
fn load_err(detail: String) -> BenchError {
    BenchError::Output {
        program: "libblkio".into(),
        detail,
    }
}

/// A small deterministic generator (xorshift64*) for the offsets.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A libblkio instance connected to the back-end on `socket`, retried for up to 10 s (the
/// socket file exists a moment before the daemon listens on it).
fn attach(socket: &Path) -> Result<Blkio> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut blkio = Blkio::new("virtio-blk-vhost-user").map_err(blkio_err("new"))?;
        let path = socket.to_str().unwrap_or_default();
        blkio.set_str("path", path).map_err(blkio_err("path"))?;
        match blkio.connect() {
            Ok(()) => return Ok(blkio),
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(blkio_err("connect")(e)),
        }
    }
}

/// Waits up to 30 s for at least one of `q`'s requests to complete and fills the first
/// entries of `done` with the completions; returns how many.
///
/// # Errors
/// libblkio fails, or nothing completes within 30 s.
fn wait_completions(q: &mut blkio::Blkioq, done: &mut [MaybeUninit<Completion>]) -> Result<usize> {
    let mut timeout = Duration::from_secs(30);
    let n = q
        .do_io(done, 1, Some(&mut timeout), None)
        .map_err(blkio_err("do_io"))?;
    if n == 0 {
        return Err(load_err("no completion within 30 s".into()));
    }
    Ok(n)
}

/// Drives the back-end `daemon` with libblkio: `depth` 4 KiB random reads (or writes) over
/// the first `span` bytes for `runtime`.
///
/// # Errors
/// libblkio cannot attach, or a request fails.
pub fn blkio_load(
    daemon: &Daemon,
    write: bool,
    depth: usize,
    span: u64,
    runtime: Duration,
) -> Result<Sample> {
    let mut blkio = attach(&daemon.socket)?;
    blkio
        .set_i32("num-queues", 1)
        .map_err(blkio_err("num-queues"))?;
    let mut started = blkio.start().map_err(blkio_err("start"))?;
    let mut q = started.queues.remove(0);
    let mem = blkio
        .alloc_mem_region(depth * BLOCK)
        .map_err(blkio_err("alloc_mem_region"))?;
    blkio
        .map_mem_region(&mem)
        .map_err(blkio_err("map_mem_region"))?;
    let blocks = span / BLOCK as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut issued_at = vec![Instant::now(); depth];
    let mut submit = |q: &mut blkio::Blkioq, slot: usize, at: &mut [Instant]| {
        let offset = rng.below(blocks) * BLOCK as u64;
        let buf = mem.addr + slot * BLOCK;
        at[slot] = Instant::now();
        if write {
            q.write(offset, buf as *const u8, BLOCK, slot, ReqFlags::empty());
        } else {
            q.read(offset, buf as *mut u8, BLOCK, slot, ReqFlags::empty());
        }
    };
    // A short warm-up (connections, the cluster's caches) before measuring.
    let warm_up = Instant::now() + runtime / 5;
    let mut lat_us: Vec<f64> = Vec::new();
    let mut measuring: Option<(Instant, f64)> = None;
    for slot in 0..depth {
        submit(&mut q, slot, &mut issued_at);
    }
    let mut done: Vec<MaybeUninit<Completion>> =
        (0..depth).map(|_| MaybeUninit::uninit()).collect();
    loop {
        let now = Instant::now();
        if measuring.is_none() && now >= warm_up {
            measuring = Some((now, cpu_us(daemon.child.id())?));
            lat_us.clear();
        }
        if let Some((start, _)) = measuring {
            if now.duration_since(start) >= runtime {
                break;
            }
        }
        let n = wait_completions(&mut q, &mut done)?;
        let end = Instant::now();
        for c in &done[..n] {
            // SAFETY: do_io initialized the first `n` entries.
            let c = unsafe { c.assume_init_ref() };
            if c.ret != 0 {
                return Err(load_err(format!("a request failed: {}", c.ret)));
            }
            let slot = c.user_data;
            lat_us.push(end.duration_since(issued_at[slot]).as_secs_f64() * 1e6);
            submit(&mut q, slot, &mut issued_at);
        }
    }
    let (start, cpu0) = measuring.expect("measuring started");
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_us(daemon.child.id())? - cpu0;
    // Let the last `depth` requests complete before libblkio disconnects: qemu-storage-daemon
    // 7.2 on RBD left with requests in flight did not exit on SIGTERM (killed after 60 s,
    // then its watch held the image 30 s more).
    let mut outstanding = depth;
    while outstanding > 0 {
        let n = wait_completions(&mut q, &mut done)?;
        outstanding = outstanding.saturating_sub(n);
    }
    Ok(summarize(&mut lat_us, secs, cpu))
}

/// IOPS, mean and p99 of `lat_us` over `secs`, and `cpu` µs spread over the I/Os.
fn summarize(lat_us: &mut [f64], secs: f64, cpu: f64) -> Sample {
    let n = lat_us.len().max(1) as f64;
    lat_us.sort_by(f64::total_cmp);
    let p99 = lat_us
        .get((lat_us.len() * 99 / 100).min(lat_us.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    Sample {
        iops: n / secs,
        mean_us: lat_us.iter().sum::<f64>() / n,
        p99_us: p99,
        cpu_us_per_io: cpu / n,
    }
}

/// A copy of `conf` (next to it, `*.nocache`) that turns librbd's cache off, as both
/// back-ends run it: fio's rbd engine has no option for it, and with the cache on its
/// writes complete in client memory.
fn uncached_conf(conf: &Path) -> Result<PathBuf> {
    let text =
        fs::read_to_string(conf).map_err(BenchError::io(format!("reading {}", conf.display())))?;
    let copy = conf.with_extension("nocache");
    fs::write(&copy, format!("{text}\n[client]\nrbd cache = false\n"))
        .map_err(BenchError::io(format!("writing {}", copy.display())))?;
    Ok(copy)
}

/// fio with the storage's engine: one job, `depth` 4 KiB random reads (or writes) over the
/// first `span` bytes for `runtime`.
///
/// # Errors
/// fio fails or prints something unexpected.
pub fn fio(
    storage: &Storage,
    write: bool,
    depth: usize,
    span: u64,
    runtime: Duration,
) -> Result<Sample> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=raw",
        "--output-format=json",
        "--randrepeat=0",
        "--norandommap",
    ]);
    match storage {
        Storage::Rbd { conf, pool, image } => {
            cmd.env("CEPH_CONF", uncached_conf(conf)?);
            cmd.args(["--ioengine=rbd", "--clientname=admin"]);
            cmd.arg(format!("--pool={pool}"))
                .arg(format!("--rbdname={image}"));
        }
        Storage::Nbd { socket } => {
            cmd.arg("--ioengine=nbd");
            cmd.arg(format!("--uri=nbd+unix:///?socket={}", socket.display()));
        }
    }
    cmd.arg(format!(
        "--rw={}",
        if write { "randwrite" } else { "randread" }
    ));
    cmd.arg(format!("--bs={BLOCK}"))
        .arg(format!("--iodepth={depth}"));
    cmd.arg(format!("--size={span}"));
    cmd.arg("--time_based")
        .arg(format!("--runtime={}ms", runtime.as_millis()))
        .arg(format!("--ramp_time={}ms", (runtime / 5).as_millis()));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::io("running fio"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::Program {
            program: "fio".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let start = text.find('{').unwrap_or(0);
    let v: Value = serde_json::from_str(&text[start..]).map_err(|e| BenchError::Output {
        program: "fio".into(),
        detail: e.to_string(),
    })?;
    let job = &v["jobs"][0];
    let dir = if write { "write" } else { "read" };
    let num = |path: &[&str]| {
        path.iter()
            .fold(job, |v, k| &v[*k])
            .as_f64()
            .ok_or_else(|| BenchError::Output {
                program: "fio".into(),
                detail: format!("no {}", path.join(".")),
            })
    };
    Ok(Sample {
        iops: num(&[dir, "iops"])?,
        mean_us: num(&[dir, "clat_ns", "mean"])? / 1000.0,
        p99_us: num(&[dir, "clat_ns", "percentile", "99.000000"])? / 1000.0,
        // fio's usr_cpu/sys_cpu count its job thread, not librbd's or libnbd's threads.
        cpu_us_per_io: f64::NAN,
    })
}
