//! A load generator for vhost-user-blk back-ends: fio for vhost-user-blk, built on the mock
//! front-end ([`crate::host::BlkDevice`]), with no VM in between.
//!
//! One thread per queue keeps `iodepth` requests in flight from pre-allocated guest buffers
//! ([`crate::host::BlkQueue::submit_prepared`]: no per-request allocation or data copy), and
//! records each request's latency from its submission to its used-ring entry. The result
//! ([`Report`]) gives IOPS, MiB/s, latency percentiles in microseconds, and the CPU time per
//! I/O of the back-end process (from `/proc/PID/stat`; the PID comes from SO_PEERCRED on the
//! vhost-user socket or is given) and of this front-end.
//!
//! - [`pattern`]: which operation at which block (fio's randread, randwrite, read, write,
//!   randrw), per queue region.
//! - [`histogram`]: the latency histogram.
//! - [`verify`]: verification mode, checking every read against what was written.
//! - [`cpu`]: process CPU time.
//! - [`worker`]: one queue's loop.
//! - [`cli`]: the `frontend-guest bench blk` command.

pub mod cli;
pub mod cpu;
pub mod histogram;
pub mod pattern;
pub mod verify;
pub mod worker;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::host::{BlkDevice, BlkOptions};
use histogram::Histogram;
pub use pattern::RwMode;
use worker::{QueueResult, Shared};

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The front-end failed (connecting, a virtqueue, guest memory, a timeout).
    #[error("front-end")]
    Host(#[from] crate::host::Error),
    /// The device is smaller than one block per queue (verification: per request in flight).
    #[error("{size} bytes is too small for this block size, queue count and depth")]
    SizeTooSmall {
        /// Bytes of the device used.
        size: u64,
    },
    /// The queue cannot hold `iodepth` requests.
    #[error("iodepth {iodepth} needs {needed} descriptors; the queue size is {size}")]
    QueueTooSmall {
        /// Requests in flight asked for.
        iodepth: u16,
        /// Descriptors they need.
        needed: u32,
        /// Queue size.
        size: u16,
    },
    /// The device returned a completion for no request in flight.
    #[error("completion for token {0}, which is not in flight")]
    UnknownCompletion(u16),
    /// A request failed.
    #[error("{} at byte offset {offset} failed with status {status}", if *write { "write" } else { "read" })]
    RequestFailed {
        /// Write (true) or read.
        write: bool,
        /// Byte offset on the device.
        offset: u64,
        /// The status byte, decoded.
        status: String,
    },
    /// A read returned data other than what was written (verification mode).
    #[error("verification failed at byte offset {offset}: expected write version {version}")]
    Mismatch {
        /// Byte offset on the device of the first wrong byte.
        offset: u64,
        /// Version of the last write to that block.
        version: u32,
    },
    /// A queue thread panicked.
    #[error("queue thread {0} panicked")]
    Panicked(usize),
    /// The back-end's CPU time could not be read.
    #[error("reading the CPU time of process {pid}")]
    Cpu {
        /// Process id.
        pid: i32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Operation mix.
    pub rw: RwMode,
    /// Bytes per request (a multiple of 512).
    pub bs: u32,
    /// Requests in flight per queue.
    pub iodepth: u16,
    /// Queues, one thread each.
    pub queues: u16,
    /// How long to measure.
    pub runtime: Duration,
    /// Bytes of the device to use from offset 0 (0: the whole device).
    pub size: u64,
    /// Check every read of a written block against what was written.
    pub verify: bool,
    /// Largest data segment in bytes; a request is split into segments of this size (like a
    /// guest's page-sized scatter-gather list). At least 512.
    pub segment_bytes: u32,
    /// Use indirect descriptor chains (as Linux's virtio driver does) if offered.
    pub indirect: bool,
    /// Virtqueue size in descriptors (a power of two).
    pub queue_size: u16,
    /// Seed of the I/O pattern.
    pub seed: u64,
    /// How long to wait for one completion before failing.
    pub io_timeout: Duration,
    /// Print a progress line to stderr (only if it is a terminal).
    pub progress: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            rw: RwMode::RandRead,
            bs: 4096,
            iodepth: 32,
            queues: 1,
            runtime: Duration::from_secs(10),
            size: 0,
            verify: false,
            segment_bytes: 1 << 20,
            indirect: true,
            queue_size: 256,
            seed: 0x7076_696f,
            io_timeout: Duration::from_secs(10),
            progress: true,
        }
    }
}

/// Completion latency summary, microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// The summary of a histogram of latencies in nanoseconds.
    pub fn from_histogram(h: &Histogram) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.percentile(50.0)),
            p99: us(h.percentile(99.0)),
            p999: us(h.percentile(99.9)),
            max: us(h.max()),
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The workload run.
    pub workload: Workload,
    /// Measured wall time, seconds.
    pub seconds: f64,
    /// Requests completed in that time.
    pub ios: u64,
    /// Requests per second.
    pub iops: f64,
    /// Data throughput, MiB (2^20 bytes) per second.
    pub mib_s: f64,
    /// Completion latency.
    pub latency: Latency,
    /// Reads checked in verification mode.
    pub verified_reads: u64,
    /// The back-end's process id, if known.
    pub backend_pid: Option<i32>,
    /// Back-end CPU time (user + system, all threads) per completed request, microseconds.
    pub backend_cpu_us_per_io: Option<f64>,
    /// This front-end's CPU time per completed request, microseconds.
    pub frontend_cpu_us_per_io: f64,
}

/// Connects to the vhost-user-blk back-end on `socket` and runs `w`. `backend_pid` overrides
/// the SO_PEERCRED lookup of the back-end's process id.
///
/// # Errors
/// [`BenchError`].
pub fn run(socket: &Path, w: &Workload, backend_pid: Option<i32>) -> Result<Report, BenchError> {
    let mut w = w.clone();
    let depth = u32::from(w.iodepth.max(1));
    w.iodepth = w.iodepth.max(1);
    let segments = w.bs.div_ceil(w.segment_bytes.max(512));
    let per_request = if w.indirect { 1 } else { segments + 2 };
    let needed = depth * per_request;
    if needed > u32::from(w.queue_size) {
        return Err(BenchError::QueueTooSmall {
            iodepth: w.iodepth,
            needed,
            size: w.queue_size,
        });
    }
    let opts = BlkOptions {
        num_queues: w.queues,
        queue_size: w.queue_size,
        max_request_bytes: 4096,
        scratch_bytes: (u64::from(w.bs) * u64::from(depth) + 4096 * u64::from(depth))
            * u64::from(w.queues),
        indirect_desc: w.indirect,
        io_timeout: w.io_timeout,
        ..BlkOptions::default()
    };
    let mut dev = BlkDevice::connect(socket, &opts)?;
    let capacity = dev.config().capacity * 512;
    w.size = if w.size == 0 {
        capacity
    } else {
        w.size.min(capacity)
    };
    let blocks_per_queue = w.size / u64::from(w.bs) / u64::from(w.queues.max(1));
    if blocks_per_queue == 0 || (w.verify && blocks_per_queue <= u64::from(depth)) {
        return Err(BenchError::SizeTooSmall { size: w.size });
    }
    let pid = match backend_pid {
        Some(p) => Some(p),
        None => dev.connection().peer_pid().ok().filter(|&p| p > 0),
    };
    let cpu_before = backend_cpu(pid)?;
    let self_before = cpu::cpu_time(None).unwrap_or_default();
    let start = Instant::now();
    let results = run_queues(&mut dev, &w, start + w.runtime)?;
    let seconds = start
        .elapsed()
        .as_secs_f64()
        .min(w.runtime.as_secs_f64().max(1e-9));
    let cpu_after = backend_cpu(pid)?;
    let self_cpu = cpu::cpu_time(None).unwrap_or_default() - self_before;
    // Best effort: the numbers are in; a back-end slow to stop its vrings is not our result.
    let _ = dev.disconnect();
    Ok(summarize(
        w,
        seconds,
        &results,
        pid,
        cpu_before.zip(cpu_after),
        self_cpu,
    ))
}

fn backend_cpu(pid: Option<i32>) -> Result<Option<Duration>, BenchError> {
    pid.map(|pid| cpu::cpu_time(Some(pid)).map_err(|source| BenchError::Cpu { pid, source }))
        .transpose()
}

fn run_queues(
    dev: &mut BlkDevice,
    w: &Workload,
    deadline: Instant,
) -> Result<Vec<QueueResult>, BenchError> {
    let shared = Shared::default();
    let progress = w.progress && std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        let handles: Vec<_> = dev
            .queues_mut()
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                let shared = &shared;
                // Queue counts are u16.
                s.spawn(move || worker::run_queue(q, i as u16, w, deadline, shared))
            })
            .collect();
        if progress {
            show_progress(&shared, &handles, deadline);
        }
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().map_err(|_| BenchError::Panicked(i))?)
            .collect()
    })
}

/// Prints completions per second once a second until the threads end.
fn show_progress<T>(
    shared: &Shared,
    handles: &[std::thread::ScopedJoinHandle<'_, T>],
    deadline: Instant,
) {
    let start = Instant::now();
    let mut last = (start, 0u64);
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now.duration_since(last.0) < Duration::from_secs(1) && now < deadline {
            continue;
        }
        let done = shared.completed.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let left = deadline.saturating_duration_since(now).as_secs();
        eprint!(
            "\r[{:>4.0}s] {rate:>10.0} IOPS, {done} I/Os, {left}s left   ",
            now.duration_since(start).as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        last = (now, done);
    }
    eprintln!();
}

fn summarize(
    workload: Workload,
    seconds: f64,
    results: &[QueueResult],
    backend_pid: Option<i32>,
    backend_cpu: Option<(Duration, Duration)>,
    self_cpu: Duration,
) -> Report {
    let mut latency = Histogram::default();
    let (mut ios, mut bytes, mut verified_reads) = (0, 0, 0);
    for r in results {
        latency.merge(&r.latency);
        ios += r.ios;
        bytes += r.bytes;
        verified_reads += r.verified_reads;
    }
    let per_io = |d: Duration| d.as_secs_f64() * 1e6 / ios.max(1) as f64;
    Report {
        workload,
        seconds,
        ios,
        iops: ios as f64 / seconds,
        mib_s: bytes as f64 / seconds / f64::from(1u32 << 20),
        latency: Latency::from_histogram(&latency),
        verified_reads,
        backend_pid,
        backend_cpu_us_per_io: backend_cpu.map(|(a, b)| per_io(b.saturating_sub(a))),
        frontend_cpu_us_per_io: per_io(self_cpu),
    }
}
