//! The guest's arguments and the block job driver around [`crate::blk`].

use crate::blk::{self, Op, QueueSlots};
use crate::println;
use crate::ram::{Heap, Ram};
use crate::rt::boot_info::BootInfo;
use crate::virtio::{Device, MAX_QUEUES};
use crate::xenbus::Kind;
use crate::{Completion, Fail};

/// Most jobs on one command line.
const MAX_JOBS: usize = 16;
/// virtio device id of a block device.
const VIRTIO_ID_BLOCK: u32 = 2;

/// A block job's range.
#[derive(Clone, Copy)]
pub struct BlkJob {
    /// The operation.
    pub op: Op,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A network job.
#[derive(Clone, Copy)]
pub enum NetJob {
    /// Send this many frames.
    Send(u32),
    /// Receive this many frames.
    Recv(u32),
}

/// A deliberate fault, to test the VMM's reports.
#[derive(Clone, Copy)]
pub enum Crash {
    /// Run an SSE instruction at CPL0 (KVM's emulator fails on it).
    Sse,
    /// Load an empty IDT and raise #UD: a triple fault.
    Triple,
}

/// One job.
#[derive(Clone, Copy)]
pub enum Job {
    /// On the first disk.
    Blk(BlkJob),
    /// On the first network device.
    Net(NetJob),
    /// Read and write an unknown port and an unknown MMIO address, twice each.
    TouchUnknown,
    /// Fault on purpose.
    Crash(Crash),
    /// Time the pattern loop over this many bytes at CPL0 and at CPL3.
    CplCompare(u64),
    /// Wait for the back ends to close the XenBus devices (of one kind, or all), then close
    /// the front ends.
    UnplugWait(Option<Kind>),
    /// Wait for a XenBus device of this kind to be hot-plugged and connect it.
    PlugWait(Kind),
}

/// Parsed arguments.
pub struct Args {
    /// Completion mode.
    pub completion: Completion,
    /// Requests in flight per queue.
    pub qd: usize,
    /// Bytes per block request.
    pub bs: u32,
    /// Queues to use (0: all).
    pub queues: usize,
    /// Frame payload bytes.
    pub frame: usize,
    /// Scrambled block order.
    pub random: bool,
    /// Pattern work at CPL0 instead of CPL3.
    pub cpl0_data: bool,
    /// Indirect descriptor tables for block requests.
    pub indirect: bool,
    jobs: [Option<Job>; MAX_JOBS],
}

fn number(s: &str) -> Result<u64, Fail> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K') | Some(b'k') => (&s[..s.len() - 1], 10),
        Some(b'M') | Some(b'm') => (&s[..s.len() - 1], 20),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| Fail::new("bad number in arguments", 0))?;
    n.checked_shl(shift).ok_or(Fail::new("number too large", n))
}

/// Parses a XenBus device kind, `vbd` or `vif`.
fn kind(s: &str) -> Result<Kind, Fail> {
    Kind::parse(s).ok_or(Fail::new("device kind is not vbd or vif", 0))
}

/// Parses `OFFSET+LEN`.
fn range(s: &str) -> Result<(u64, u64), Fail> {
    let (o, l) = s
        .split_once('+')
        .ok_or(Fail::new("range is not OFFSET+LEN", 0))?;
    Ok((number(o)?, number(l)?))
}

/// Parses `SEED@OFFSET+LEN`.
fn seeded(s: &str) -> Result<(u64, u64, u64), Fail> {
    let (seed, r) = s
        .split_once('@')
        .ok_or(Fail::new("range is not SEED@OFFSET+LEN", 0))?;
    let (o, l) = range(r)?;
    Ok((number(seed)?, o, l))
}

impl Args {
    /// Parses the argument string.
    pub fn parse(cmdline: &str) -> Result<Self, Fail> {
        let mut a = Args {
            completion: Completion::Irq,
            qd: 8,
            bs: 4096,
            queues: 0,
            frame: 256,
            random: false,
            cpl0_data: false,
            indirect: false,
            jobs: [None; MAX_JOBS],
        };
        let mut n = 0;
        for word in cmdline.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            if a.setting(key, value)? {
                continue;
            }
            let job = match key {
                "write" | "verify" => {
                    let (seed, offset, len) = seeded(value)?;
                    let op = if key == "write" {
                        Op::Write(seed)
                    } else {
                        Op::Verify(seed)
                    };
                    Job::Blk(BlkJob { op, offset, len })
                }
                "read" | "write-raw" => {
                    let (offset, len) = range(value)?;
                    let op = if key == "read" {
                        Op::Read
                    } else {
                        Op::WriteRaw
                    };
                    Job::Blk(BlkJob { op, offset, len })
                }
                "net-send" => Job::Net(NetJob::Send(number(value)? as u32)),
                "net-recv" => Job::Net(NetJob::Recv(number(value)? as u32)),
                "touch-unknown" => Job::TouchUnknown,
                "unplug-wait" if value.is_empty() => Job::UnplugWait(None),
                "unplug-wait" => Job::UnplugWait(Some(kind(value)?)),
                "plug-wait" => Job::PlugWait(kind(value)?),
                "cpl-compare" => Job::CplCompare(number(value)? & !7),
                "crash" => Job::Crash(match value {
                    "sse" => Crash::Sse,
                    "triple" => Crash::Triple,
                    _ => return Err(Fail::new("crash= takes sse or triple", 0)),
                }),
                _ => {
                    println!("pvio-guest: unknown argument {word}");
                    return Err(Fail::new("unknown argument", 0));
                }
            };
            *a.jobs
                .get_mut(n)
                .ok_or(Fail::new("too many jobs", n as u64))? = Some(job);
            n += 1;
        }
        if a.bs == 0 || a.bs % 512 != 0 || a.qd == 0 {
            return Err(Fail::new(
                "bs must be a multiple of 512 and qd at least 1",
                a.bs.into(),
            ));
        }
        Ok(a)
    }

    /// Applies `key[=value]` if it is a setting rather than a job; says whether it was.
    fn setting(&mut self, key: &str, value: &str) -> Result<bool, Fail> {
        match key {
            "irq" => self.completion = Completion::Irq,
            "poll" => self.completion = Completion::Poll,
            "random" => self.random = true,
            "cpl0-data" => self.cpl0_data = true,
            "indirect" => self.indirect = true,
            "qd" => self.qd = number(value)? as usize,
            "bs" => self.bs = number(value)? as u32,
            "queues" => self.queues = number(value)? as usize,
            "frame" => self.frame = number(value)? as usize,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The jobs in order.
    pub fn jobs(&self) -> impl Iterator<Item = Job> + '_ {
        self.jobs.iter().flatten().copied()
    }
}

/// The first device of type `device_id` in the boot info: (MMIO base, GSI, index).
pub fn find_device(info: &BootInfo, device_id: u32) -> Result<(u64, u32, usize), Fail> {
    info.devices[..info.num_devices as usize]
        .iter()
        .enumerate()
        .find(|(_, d)| d.device_id == device_id)
        .map(|(i, d)| (d.mmio_base, d.gsi, i))
        .ok_or(Fail::new("no device of type", device_id.into()))
}

/// Probes the first disk, runs one block job on it, prints the result, and resets the device.
pub fn run_blk(
    info: &BootInfo,
    ram: &Ram,
    heap: &mut Heap,
    args: &Args,
    job: BlkJob,
) -> Result<(), Fail> {
    let (base, gsi, index) = find_device(info, VIRTIO_ID_BLOCK)?;
    let wanted = Device::COMMON_FEATURES | 1 << frontend_guest::blk::VIRTIO_BLK_F_MQ;
    let mut dev = Device::probe(base, VIRTIO_ID_BLOCK, wanted)?;
    let capacity = blk::capacity(&dev);
    let available = blk::num_queues(&dev).min(MAX_QUEUES);
    let nq = if args.queues == 0 {
        available
    } else {
        args.queues.min(available)
    };
    let bs = u64::from(args.bs);
    if job.offset % 512 != 0 || job.len % bs != 0 || job.offset + job.len > capacity {
        return Err(Fail::new(
            "job range is unaligned or past the capacity",
            capacity,
        ));
    }
    if args.indirect && !dev.has(frontend_guest::virtq::VIRTIO_RING_F_INDIRECT_DESC) {
        return Err(Fail::new(
            "indirect asked for, VIRTIO_RING_F_INDIRECT_DESC not offered",
            0,
        ));
    }
    dev.setup_queues(ram, heap, nq)?;
    crate::irq::route(gsi, crate::irq::DEVICE_VECTOR_BASE + index as u8);
    dev.driver_ok()?;
    let mut slots: [Option<QueueSlots>; MAX_QUEUES] = [const { None }; MAX_QUEUES];
    for s in slots.iter_mut().take(nq) {
        *s = Some(QueueSlots::new(heap, args.qd, args.bs)?);
    }
    let mut list: [QueueSlots; MAX_QUEUES] = slots.map(|s| s.unwrap_or(QueueSlots::empty()));
    let j = blk::Job {
        op: job.op,
        offset: job.offset,
        len: job.len,
        bs: args.bs,
        completion: args.completion,
        random: args.random,
        cpl0_data: args.cpl0_data,
        indirect: args.indirect,
    };
    let stats = blk::run(&mut dev, ram, &mut list[..nq], &j)?;
    dev.reset();
    let name = match job.op {
        Op::Write(_) => "write",
        Op::Verify(_) => "verify",
        Op::Read => "read",
        Op::WriteRaw => "write-raw",
    };
    println!(
        "pvio-guest: blk {name} ok bytes={} requests={} queues={nq} qd={} bs={} indirect={} kicks={} irqs={} us={}",
        job.len,
        stats.requests,
        args.qd,
        args.bs,
        args.indirect,
        stats.kicks,
        stats.irqs,
        crate::irq::cycles_to_us(stats.cycles)
    );
    Ok(())
}
