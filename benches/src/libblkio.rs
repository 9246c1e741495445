//! libblkio as a second load source beside pvio's own generator, so that the ratios do not
//! depend on pvio's client: the `virtio-blk-vhost-user` driver (libblkio's own vhost-user
//! front-end) against a back-end's socket, or the `io_uring` driver on the image file itself,
//! the raw ceiling through the same library. One thread per queue keeps `iodepth` requests in
//! flight from buffers in one libblkio memory region, on the same I/O pattern as
//! `frontend-guest bench blk` ([`frontend_guest::bench::pattern::Pattern`]); the result is that
//! tool's [`Report`], so the runner reads both alike.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, Errno, ReqFlags};
use frontend_guest::bench::cpu::cpu_time;
use frontend_guest::bench::histogram::Histogram;
use frontend_guest::bench::pattern::Pattern;
use frontend_guest::bench::{Latency, Report, Workload};

/// How long one wait for a completion may take before the run fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What libblkio drives.
#[derive(Debug, Clone)]
pub enum Target {
    /// A vhost-user-blk back-end's socket (`virtio-blk-vhost-user`).
    VhostUser(String),
    /// The image file itself (`io_uring`), with O_DIRECT or not.
    File {
        /// The image path.
        path: String,
        /// Open it with O_DIRECT.
        direct: bool,
    },
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// libblkio refused something.
    #[error("libblkio: {what}: {message}")]
    Blkio {
        /// What was being done.
        what: &'static str,
        /// libblkio's message.
        message: String,
    },
    /// A request failed.
    #[error("request at byte offset {offset} failed: {ret}")]
    Request {
        /// Byte offset.
        offset: u64,
        /// Its negative errno.
        ret: i32,
    },
    /// No completion came within [`IO_TIMEOUT`].
    #[error("no completion within {IO_TIMEOUT:?}")]
    Timeout,
    /// The device is smaller than one block per queue.
    #[error("the device ({0} bytes) is too small for the workload")]
    TooSmall(u64),
    /// A queue thread panicked.
    #[error("queue thread {0} panicked")]
    Panicked(usize),
}

fn blkio_err(what: &'static str) -> impl FnOnce(blkio::Error) -> LoadError {
    move |e| LoadError::Blkio {
        what,
        message: e.message().to_owned(),
    }
}

/// How long to retry connecting while a back-end just started is not listening yet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A connected libblkio instance of `driver` on `path`; retries while the socket is missing
/// or refuses (the back-end is still starting), up to [`CONNECT_TIMEOUT`].
fn connect(driver: &str, path: &str, target: &Target) -> Result<Blkio, LoadError> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let mut b = Blkio::new(driver).map_err(blkio_err("creating the instance"))?;
        b.set_str("path", path).map_err(blkio_err("path"))?;
        if let Target::File { direct, .. } = target {
            b.set_bool("direct", *direct).map_err(blkio_err("direct"))?;
        }
        match b.connect() {
            Ok(()) => return Ok(b),
            Err(e)
                if matches!(e.errno(), Errno::NOENT | Errno::CONNREFUSED)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(blkio_err("connecting")(e)),
        }
    }
}

/// What one queue thread measured.
#[derive(Default)]
struct QueueResult {
    ios: u64,
    latency: Histogram,
}

/// Attaches libblkio to `target` and runs `w` (its `rw`, `bs`, `iodepth`, `queues`,
/// `runtime`, `size`, `seed`); the back-end's CPU time per I/O is read for `backend_pid`.
///
/// # Errors
/// [`LoadError`].
pub fn run(target: &Target, w: &Workload, backend_pid: Option<i32>) -> Result<Report, LoadError> {
    let (driver, path) = match target {
        Target::VhostUser(socket) => ("virtio-blk-vhost-user", socket.as_str()),
        Target::File { path, .. } => ("io_uring", path.as_str()),
    };
    let mut b = connect(driver, path, target)?;
    b.set_i32("num-queues", i32::from(w.queues.max(1)))
        .map_err(blkio_err("num-queues"))?;
    let mut queues = b.start().map_err(blkio_err("starting"))?.queues;
    let capacity = b.get_u64("capacity").map_err(blkio_err("capacity"))?;
    let size = if w.size == 0 {
        capacity
    } else {
        w.size.min(capacity)
    };
    let blocks = size / u64::from(w.bs);
    let depth = usize::from(w.iodepth.max(1));
    let slot_bytes = w.bs as usize;
    let align = usize::try_from(b.get_u64("mem-region-alignment").unwrap_or(4096)).unwrap_or(4096);
    let len = (slot_bytes * depth * queues.len()).next_multiple_of(align.max(4096));
    let mem = b.alloc_mem_region(len).map_err(blkio_err("allocating"))?;
    b.map_mem_region(&mem).map_err(blkio_err("mapping"))?;
    let cpu_before = backend_pid.and_then(|p| cpu_time(Some(p)).ok());
    let self_before = cpu_time(None).unwrap_or_default();
    let start = Instant::now();
    let deadline = start + w.runtime;
    let results: Vec<Result<QueueResult, LoadError>> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                // Queue counts are u16.
                let pattern = Pattern::new(w.rw, blocks, i as u16, w.queues, w.seed);
                let base = mem.addr + i * slot_bytes * depth;
                s.spawn(move || {
                    let pattern = pattern.ok_or(LoadError::TooSmall(size))?;
                    drive(q, pattern, base, w.bs, depth, deadline)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().unwrap_or(Err(LoadError::Panicked(i))))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64().min(w.runtime.as_secs_f64());
    let cpu_after = backend_pid.and_then(|p| cpu_time(Some(p)).ok());
    let self_cpu = cpu_time(None).unwrap_or_default() - self_before;
    let mut latency = Histogram::default();
    let mut ios = 0;
    for r in results {
        let r = r?;
        ios += r.ios;
        latency.merge(&r.latency);
    }
    drop(queues);
    let per_io = |d: Duration| d.as_secs_f64() * 1e6 / ios.max(1) as f64;
    Ok(Report {
        workload: Workload { size, ..w.clone() },
        seconds,
        ios,
        iops: ios as f64 / seconds.max(1e-9),
        mib_s: (ios * u64::from(w.bs)) as f64 / seconds.max(1e-9) / f64::from(1u32 << 20),
        latency: Latency::from_histogram(&latency),
        verified_reads: 0,
        backend_pid,
        backend_cpu_us_per_io: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| per_io(b.saturating_sub(a))),
        frontend_cpu_us_per_io: per_io(self_cpu),
    })
}

/// Keeps `depth` requests in flight on `q` until `deadline`, request `i` using the buffer at
/// `base + i * bs`; counts those completed before the deadline, then waits for the rest.
fn drive(
    q: &mut Blkioq,
    mut pattern: Pattern,
    base: usize,
    bs: u32,
    depth: usize,
    deadline: Instant,
) -> Result<QueueResult, LoadError> {
    let mut result = QueueResult::default();
    let mut submitted = vec![(Instant::now(), 0u64); depth];
    let mut submit = |q: &mut Blkioq, submitted: &mut [(Instant, u64)], slot: usize| {
        let op = pattern.next_op();
        let offset = op.block * u64::from(bs);
        let buf = base + slot * bs as usize;
        submitted[slot] = (Instant::now(), offset);
        if op.write {
            q.write(
                offset,
                buf as *const u8,
                bs as usize,
                slot,
                ReqFlags::empty(),
            );
        } else {
            q.read(offset, buf as *mut u8, bs as usize, slot, ReqFlags::empty());
        }
    };
    for slot in 0..depth {
        submit(q, &mut submitted, slot);
    }
    let mut in_flight = depth;
    let mut completions: Vec<MaybeUninit<Completion>> = std::iter::repeat_with(MaybeUninit::uninit)
        .take(depth)
        .collect();
    while in_flight > 0 {
        let mut timeout = IO_TIMEOUT;
        let n = q
            .do_io(&mut completions, 1, Some(&mut timeout), None)
            .map_err(blkio_err("do_io"))?;
        if n == 0 {
            return Err(LoadError::Timeout);
        }
        let now = Instant::now();
        for c in &completions[..n] {
            // SAFETY: do_io initialized the first `n` entries.
            let c = unsafe { c.assume_init_ref() };
            let slot = c.user_data;
            let (at, offset) = submitted.get(slot).copied().unwrap_or((now, 0));
            if c.ret != 0 {
                return Err(LoadError::Request { offset, ret: c.ret });
            }
            in_flight -= 1;
            if now < deadline {
                result.ios += 1;
                result
                    .latency
                    .record(u64::try_from(now.duration_since(at).as_nanos()).unwrap_or(u64::MAX));
                submit(q, &mut submitted, slot);
                in_flight += 1;
            }
        }
    }
    Ok(result)
}
