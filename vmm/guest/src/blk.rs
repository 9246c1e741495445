//! The block workload: write or verify a disk pattern over a byte range, at a queue depth per
//! queue, over one or more queues, completing by interrupt or by polling.

use frontend_guest::blk::{self, BlkStatus, RequestBuffers, RequestHeader};
use frontend_guest::virtq::Buffer;

use crate::pattern;
use crate::ram::{Heap, Ram};
use crate::virtio::{Device, QUEUE_SIZE};
use crate::{Completion, Fail};

/// What to do over a range.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write pattern `seed`.
    Write(u64),
    /// Read and check pattern `seed`.
    Verify(u64),
    /// Read only.
    Read,
    /// Write whatever the buffers hold (no pattern generation: for measuring I/O alone).
    WriteRaw,
}

/// One block job.
#[derive(Clone, Copy)]
pub struct Job {
    /// The operation.
    pub op: Op,
    /// First disk byte (a multiple of 512).
    pub offset: u64,
    /// Bytes (a multiple of `bs`).
    pub len: u64,
    /// Bytes per request (a multiple of 512).
    pub bs: u32,
    /// Interrupts or polling.
    pub completion: Completion,
    /// Put each request in an indirect descriptor table (VIRTIO_RING_F_INDIRECT_DESC).
    pub indirect: bool,
    /// Generate and check data at CPL0 (emulated on kvm_pvm) instead of CPL3.
    pub cpl0_data: bool,
    /// Visit the blocks in a scrambled order (an odd multiplier modulo the power-of-two block
    /// count) instead of ascending.
    pub random: bool,
}

/// Results of a job.
pub struct Stats {
    /// Requests completed.
    pub requests: u64,
    /// Doorbells rung.
    pub kicks: u64,
    /// Interrupts taken.
    pub irqs: u64,
    /// TSC cycles elapsed.
    pub cycles: u64,
}

/// Per-request memory: header, data, status.
#[derive(Clone, Copy, Default)]
struct Slot {
    header: u64,
    data: u64,
    status: u64,
    /// Indirect descriptor table for header, data and status (3 × 16 bytes).
    table: u64,
    offset: u64,
    busy: bool,
}

const MAX_SLOTS: usize = 64;

/// Memory for one queue's requests.
pub struct QueueSlots {
    slots: [Slot; MAX_SLOTS],
    /// Slot of each head index in flight.
    by_head: [u8; QUEUE_SIZE],
    count: usize,
}

impl QueueSlots {
    /// Allocates `qd` slots of `bs` data bytes each.
    pub fn new(heap: &mut Heap, qd: usize, bs: u32) -> Result<Self, Fail> {
        let count = qd.min(MAX_SLOTS);
        let mut slots = [Slot::default(); MAX_SLOTS];
        for s in slots.iter_mut().take(count) {
            let oom = Fail::new("RAM exhausted for request buffers", bs.into());
            s.header = heap.alloc(16, 16).ok_or(oom)?;
            s.status = heap.alloc(1, 1).ok_or(oom)?;
            s.table = heap.alloc(48, 16).ok_or(oom)?;
            s.data = heap.alloc(bs.into(), 4096).ok_or(oom)?;
        }
        Ok(QueueSlots {
            slots,
            by_head: [0; QUEUE_SIZE],
            count,
        })
    }

    /// No slots (a queue not in use).
    pub fn empty() -> Self {
        QueueSlots {
            slots: [Slot::default(); MAX_SLOTS],
            by_head: [0; QUEUE_SIZE],
            count: 0,
        }
    }
}

/// Runs `job` on `dev` with `slots` (one per queue).
pub fn run(
    dev: &mut Device,
    ram: &Ram,
    slots: &mut [QueueSlots],
    job: &Job,
) -> Result<Stats, Fail> {
    let bs = u64::from(job.bs);
    let total = job.len / bs;
    if job.random && !total.is_power_of_two() {
        return Err(Fail::new(
            "random order needs a power-of-two block count",
            total,
        ));
    }
    let block = |i: u64| {
        if job.random {
            i.wrapping_mul(0x9e37_79b1) & (total - 1)
        } else {
            i
        }
    };
    let (mut issued, mut done, mut kicks) = (0u64, 0u64, 0u64);
    let irq0 = crate::irq::count();
    let t0 = crate::rt::rdtsc();
    let nq = dev.num_queues.min(slots.len());
    while done < total {
        for q in 0..nq {
            let mut added = false;
            while issued < total {
                let Some(i) = (0..slots[q].count).find(|&i| !slots[q].slots[i].busy) else {
                    break;
                };
                let offset = job.offset + block(issued) * bs;
                submit(dev, ram, q, &mut slots[q], i, offset, job)?;
                issued += 1;
                added = true;
            }
            let vq = dev.queues[q]
                .as_mut()
                .ok_or(Fail::new("no queue", q as u64))?;
            if added && vq.publish(ram).map_err(Fail::virtq)? {
                dev.notify(q);
                kicks += 1;
            }
        }
        let mut reaped = 0;
        for q in 0..nq {
            reaped += reap(dev, ram, q, &mut slots[q], job)?;
        }
        done += reaped;
        if reaped == 0 && done < total {
            crate::wait_for_used(dev, ram, job.completion)?;
        }
    }
    Ok(Stats {
        requests: total,
        kicks,
        irqs: crate::irq::count() - irq0,
        cycles: crate::rt::rdtsc() - t0,
    })
}

fn submit(
    dev: &mut Device,
    ram: &Ram,
    q: usize,
    qs: &mut QueueSlots,
    i: usize,
    offset: u64,
    job: &Job,
) -> Result<(), Fail> {
    let slot = &mut qs.slots[i];
    let (request_type, writable) = match job.op {
        Op::Write(seed) => {
            // SAFETY: the slot's data buffer is not in flight (not busy).
            let buf = unsafe { ram.slice_mut(slot.data, job.bs as usize) }.map_err(Fail::mem)?;
            if job.cpl0_data {
                pattern::fill_disk(buf, seed, offset);
            } else {
                crate::cpl::fill_disk(buf, seed, offset);
            }
            (blk::VIRTIO_BLK_T_OUT, false)
        }
        Op::WriteRaw => (blk::VIRTIO_BLK_T_OUT, false),
        Op::Verify(_) | Op::Read => (blk::VIRTIO_BLK_T_IN, true),
    };
    let data = [Buffer {
        addr: slot.data,
        len: job.bs,
        writable,
    }];
    let header = RequestHeader {
        request_type,
        sector: offset >> blk::SECTOR_SHIFT,
    };
    let bufs = RequestBuffers {
        header: slot.header,
        data: &data,
        status: slot.status,
        indirect_table: job.indirect.then_some(slot.table),
    };
    let vq = dev.queues[q]
        .as_mut()
        .ok_or(Fail::new("no queue", q as u64))?;
    let head = blk::add_request(vq, ram, &header, &bufs).map_err(Fail::virtq)?;
    slot.offset = offset;
    slot.busy = true;
    qs.by_head[usize::from(head)] = i as u8;
    Ok(())
}

fn reap(
    dev: &mut Device,
    ram: &Ram,
    q: usize,
    qs: &mut QueueSlots,
    job: &Job,
) -> Result<u64, Fail> {
    let vq = dev.queues[q]
        .as_mut()
        .ok_or(Fail::new("no queue", q as u64))?;
    let mut n = 0;
    while let Some(used) = vq.pop_used(ram).map_err(Fail::virtq)? {
        let i = usize::from(qs.by_head[usize::from(used.head)]);
        let slot = &mut qs.slots[i];
        slot.busy = false;
        let status = blk::read_status(ram, slot.status).map_err(Fail::virtq)?;
        if status != BlkStatus::Ok {
            return Err(Fail::new("request failed at disk offset", slot.offset));
        }
        if let Op::Verify(seed) = job.op {
            // SAFETY: the device returned the buffer (used), nothing else holds it.
            let buf = unsafe { ram.slice_mut(slot.data, job.bs as usize) }.map_err(Fail::mem)?;
            let bad = if job.cpl0_data {
                pattern::check_disk(buf, seed, slot.offset)
            } else {
                crate::cpl::check_disk(buf, seed, slot.offset)
            };
            if let Some(at) = bad {
                return Err(Fail::new("pattern mismatch at disk offset", at));
            }
        }
        n += 1;
    }
    Ok(n)
}

/// Reads the capacity in bytes from the configuration.
pub fn capacity(dev: &Device) -> u64 {
    let mut cfg = [0u8; 8];
    dev.config(0, &mut cfg);
    u64::from_le_bytes(cfg) << blk::SECTOR_SHIFT
}

/// Reads `num_queues` from the configuration (1 without VIRTIO_BLK_F_MQ).
pub fn num_queues(dev: &Device) -> usize {
    if !dev.has(blk::VIRTIO_BLK_F_MQ) {
        return 1;
    }
    let mut b = [0u8; 2];
    dev.config(34, &mut b);
    usize::from(u16::from_le_bytes(b)).max(1)
}
