//! One queue's load loop: keep `iodepth` requests in flight on one [`BlkQueue`] from
//! pre-allocated guest buffers (one per request in flight, reused), until the deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::histogram::Histogram;
use super::pattern::{Op, Pattern};
use super::verify::{self, BlockMap};
use super::{BenchError, Workload};
use crate::blk::{BlkStatus, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use crate::host::{BlkQueue, ChainForm, Completion, HostRam};
use crate::virtq::Buffer;
use crate::GuestRam;

/// What one queue measured.
#[derive(Debug, Default)]
pub struct QueueResult {
    /// Completion latencies (submit to used-ring entry), nanoseconds, of requests that
    /// completed before the deadline.
    pub latency: Histogram,
    /// Requests completed before the deadline.
    pub ios: u64,
    /// Data bytes of those requests.
    pub bytes: u64,
    /// Reads whose data was checked (verification mode).
    pub verified_reads: u64,
}

/// A request in flight: its buffer and operation.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    buf: usize,
    op: Op,
    version: u32,
}

/// Shared counters for the progress line and the stop flag.
#[derive(Debug, Default)]
pub struct Shared {
    /// Requests completed so far, all queues.
    pub completed: AtomicU64,
    /// Set when any queue fails, so the others stop early.
    pub stop: AtomicBool,
}

/// The state of one queue's loop.
struct Worker<'a> {
    queue: &'a mut BlkQueue,
    ram: std::sync::Arc<HostRam>,
    w: &'a Workload,
    pattern: Pattern,
    /// Guest-physical address of each buffer.
    bufs: Vec<u64>,
    free: Vec<usize>,
    /// By token (head index).
    in_flight: Vec<Option<InFlight>>,
    segments: Vec<Buffer>,
    map: Option<BlockMap>,
    scratch: Vec<u8>,
    result: QueueResult,
}

/// Runs queue `queue_no` of `queues` until `deadline`, then drains it.
///
/// # Errors
/// [`BenchError`] on a front-end error, a failed request or a verification mismatch.
pub fn run_queue(
    queue: &mut BlkQueue,
    queue_no: u16,
    w: &Workload,
    deadline: Instant,
    shared: &Shared,
) -> Result<QueueResult, BenchError> {
    let mut worker = Worker::new(queue, queue_no, w)?;
    let res = worker.run(deadline, shared);
    if res.is_err() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    let drained = worker.drain();
    res.and(drained).map(|()| worker.result)
}

impl<'a> Worker<'a> {
    fn new(queue: &'a mut BlkQueue, queue_no: u16, w: &'a Workload) -> Result<Self, BenchError> {
        let blocks = w.size / u64::from(w.bs);
        let pattern = Pattern::new(w.rw, blocks, queue_no, w.queues, w.seed)
            .ok_or(BenchError::SizeTooSmall { size: w.size })?;
        let ram = std::sync::Arc::clone(queue.ram());
        let depth = usize::from(w.iodepth);
        let mut scratch = vec![0u8; w.bs as usize];
        let mut bufs = Vec::with_capacity(depth);
        for i in 0..depth {
            let gpa = ram.alloc(u64::from(w.bs), 4096)?;
            // Writes without verification send this fixed, non-zero content.
            verify::fill(&mut scratch, i as u64, 1);
            ram.write(gpa, &scratch).map_err(crate::host::Error::from)?;
            bufs.push(gpa);
        }
        let (first, len) = pattern.region();
        Ok(Worker {
            in_flight: vec![None; usize::from(queue.size())],
            queue,
            ram,
            w,
            pattern,
            free: (0..depth).rev().collect(),
            bufs,
            segments: Vec::new(),
            map: w.verify.then(|| BlockMap::new(first, len)),
            scratch,
            result: QueueResult::default(),
        })
    }

    fn run(&mut self, deadline: Instant, shared: &Shared) -> Result<(), BenchError> {
        while !self.free.is_empty() {
            self.submit_next()?;
        }
        loop {
            let c = self.queue.wait_completion(self.w.io_timeout)?;
            if Instant::now() >= deadline || shared.stop.load(Ordering::Relaxed) {
                return self.finish(c, false);
            }
            self.finish(c, true)?;
            shared.completed.fetch_add(1, Ordering::Relaxed);
            self.submit_next()?;
        }
    }

    /// Waits for every request still in flight (not counted).
    fn drain(&mut self) -> Result<(), BenchError> {
        while self.queue.in_flight() > 0 {
            let c = self.queue.wait_completion(self.w.io_timeout)?;
            self.finish(c, false)?;
        }
        Ok(())
    }

    fn next_op(&mut self) -> Op {
        let op = self.pattern.next_op();
        let Some(map) = &self.map else { return op };
        if !map.is_busy(op.block) {
            return op;
        }
        // Another request holds this block; the region has more blocks than requests in
        // flight (checked at start), so a free one comes up.
        loop {
            let op = self.pattern.next_op();
            if !map.is_busy(op.block) {
                return op;
            }
        }
    }

    fn submit_next(&mut self) -> Result<(), BenchError> {
        let Some(buf) = self.free.pop() else {
            return Ok(());
        };
        let op = self.next_op();
        let version = self.prepare(buf, op)?;
        let bs = self.w.bs;
        let gpa = self.bufs[buf];
        self.segments.clear();
        let seg = self.w.segment_bytes.min(bs).max(1);
        let mut off = 0;
        while off < bs {
            let len = seg.min(bs - off);
            let addr = gpa + u64::from(off);
            self.segments.push(if op.write {
                Buffer::readable(addr, len)
            } else {
                Buffer::writable(addr, len)
            });
            off += len;
        }
        let request_type = if op.write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        let sector = op.block * u64::from(bs) / 512;
        let form = if self.w.indirect {
            ChainForm::Indirect
        } else {
            ChainForm::Direct
        };
        let token = self
            .queue
            .submit_prepared(request_type, sector, &self.segments, form)?;
        self.in_flight[usize::from(token.0)] = Some(InFlight { buf, op, version });
        Ok(())
    }

    /// In verification mode: marks the block busy, and fills a write's buffer with the
    /// block's next version. Returns the version written or expected.
    fn prepare(&mut self, buf: usize, op: Op) -> Result<u32, BenchError> {
        let Some(map) = &mut self.map else {
            return Ok(0);
        };
        if !op.write {
            return Ok(map.start_read(op.block));
        }
        let version = map.start_write(op.block);
        verify::fill(&mut self.scratch, op.block, version);
        self.ram
            .write(self.bufs[buf], &self.scratch)
            .map_err(crate::host::Error::from)?;
        Ok(version)
    }

    fn finish(&mut self, c: Completion, count: bool) -> Result<(), BenchError> {
        let slot = self
            .in_flight
            .get_mut(usize::from(c.token.0))
            .and_then(Option::take)
            .ok_or(BenchError::UnknownCompletion(c.token.0))?;
        self.free.push(slot.buf);
        let ok = c.status == Some(BlkStatus::Ok);
        self.check(&slot, ok)?;
        if !ok {
            return Err(BenchError::RequestFailed {
                write: slot.op.write,
                offset: slot.op.block * u64::from(self.w.bs),
                status: format!("{:?}", c.status),
            });
        }
        if count {
            self.result.ios += 1;
            self.result.bytes += u64::from(self.w.bs);
            let ns = u64::try_from(c.latency.as_nanos()).unwrap_or(u64::MAX);
            self.result.latency.record(ns);
        }
        Ok(())
    }

    /// In verification mode: records the block's new state and checks a read's data.
    fn check(&mut self, slot: &InFlight, ok: bool) -> Result<(), BenchError> {
        let Some(map) = &mut self.map else {
            return Ok(());
        };
        let block = slot.op.block;
        if slot.op.write {
            map.finish(block, Some((slot.version, ok)));
            return Ok(());
        }
        map.finish(block, None);
        if !ok || slot.version == 0 {
            return Ok(());
        }
        self.ram
            .read(self.bufs[slot.buf], &mut self.scratch)
            .map_err(crate::host::Error::from)?;
        if let Some(at) = verify::first_mismatch(&self.scratch, block, slot.version) {
            return Err(BenchError::Mismatch {
                offset: block * u64::from(self.w.bs) + at as u64,
                version: slot.version,
            });
        }
        self.result.verified_reads += 1;
        Ok(())
    }
}
