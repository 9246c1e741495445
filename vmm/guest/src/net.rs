//! The network workload: two guests on one switch exchange numbered frames, stop-and-wait.
//!
//! `net-send=N` sends DATA frames 0 .. N-1, each until the peer acknowledges it (so frames
//! sent before the peer is up are simply repeated); `net-recv=N` checks each DATA frame's
//! payload byte by byte against [`pattern::frame_byte`], acknowledges it, and after the N-th
//! keeps answering repeats until the line has been quiet for a while. Frames are broadcast
//! Ethernet frames of EtherType 0x88b5 (local experimental) carrying `"PVIO"`, a kind byte, a
//! pad byte, a little-endian sequence number and the payload.

use frontend_guest::net::{self as vnet, NetHdr};
use frontend_guest::virtq::Buffer;
use frontend_guest::GuestRam;

use crate::args::{find_device, Args, NetJob};
use crate::ram::{Heap, Ram};
use crate::rt::boot_info::BootInfo;
use crate::virtio::{Device, QUEUE_SIZE};
use crate::{irq, pattern, println, Completion, Fail};

const VIRTIO_ID_NET: u32 = 1;
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// Receive buffers kept posted.
const RX_BUFFERS: usize = 32;
/// Bytes per receive buffer: header and a full Ethernet frame.
const RX_BUFFER_BYTES: u32 = 2048;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const MAGIC: &[u8; 4] = b"PVIO";
const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;
/// Bytes before the payload: Ethernet header (14) and ours (10).
const HEADER_BYTES: usize = 24;
/// Shortest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;
/// Largest payload: 1514-byte frames.
const MAX_PAYLOAD: usize = 1514 - HEADER_BYTES;
/// How long the sender waits for an acknowledgement before repeating a frame (ms).
const RETRY_MS: u64 = 100;
/// How often the sender tries one frame before it gives up.
const MAX_TRIES: u32 = 600;
/// How long the receiver keeps answering after the last frame (ms).
const LINGER_MS: u64 = 1000;
/// How long the receiver waits for the whole exchange (ms).
const RECV_LIMIT_MS: u64 = 120_000;

/// A received frame still in its receive buffer.
struct Frame {
    head: u16,
    addr: u64,
    len: usize,
}

struct Nic<'a> {
    dev: Device,
    ram: &'a Ram,
    mode: Completion,
    hdr_len: usize,
    mac: [u8; 6],
    rx_addr: [u64; QUEUE_SIZE],
    tx_hdr: u64,
    tx_buf: u64,
    sent: u64,
    received: u64,
}

impl<'a> Nic<'a> {
    fn open(
        info: &BootInfo,
        ram: &'a Ram,
        heap: &mut Heap,
        mode: Completion,
    ) -> Result<Self, Fail> {
        let (base, gsi, index) = find_device(info, VIRTIO_ID_NET)?;
        let wanted = Device::COMMON_FEATURES | 1 << vnet::VIRTIO_NET_F_MAC;
        let mut dev = Device::probe(base, VIRTIO_ID_NET, wanted)?;
        let mut mac = [0x02, 0x70, 0x76, 0x69, 0x6f, index as u8];
        if dev.has(vnet::VIRTIO_NET_F_MAC) {
            dev.config(0, &mut mac);
        }
        dev.setup_queues(ram, heap, 2)?;
        irq::route(gsi, irq::DEVICE_VECTOR_BASE + index as u8);
        dev.driver_ok()?;
        let oom = Fail::new("RAM exhausted for network buffers", 0);
        let mut nic = Nic {
            hdr_len: vnet::hdr_len(dev.features),
            dev,
            ram,
            mode,
            mac,
            rx_addr: [0; QUEUE_SIZE],
            tx_hdr: heap.alloc(16, 16).ok_or(oom)?,
            tx_buf: heap.alloc(2048, 4096).ok_or(oom)?,
            sent: 0,
            received: 0,
        };
        let rx = heap
            .alloc(RX_BUFFERS as u64 * u64::from(RX_BUFFER_BYTES), 4096)
            .ok_or(oom)?;
        for i in 0..RX_BUFFERS as u64 {
            nic.post_rx(rx + i * u64::from(RX_BUFFER_BYTES))?;
        }
        nic.publish(RX_QUEUE)?;
        Ok(nic)
    }

    fn queue(&mut self, q: usize) -> Result<&mut frontend_guest::SplitQueue<QUEUE_SIZE>, Fail> {
        self.dev.queues[q]
            .as_mut()
            .ok_or(Fail::new("no queue", q as u64))
    }

    fn publish(&mut self, q: usize) -> Result<(), Fail> {
        let ram = self.ram;
        if self.queue(q)?.publish(ram).map_err(Fail::virtq)? {
            self.dev.notify(q);
        }
        Ok(())
    }

    fn post_rx(&mut self, addr: u64) -> Result<(), Fail> {
        let ram = self.ram;
        let head =
            vnet::add_rx(self.queue(RX_QUEUE)?, ram, addr, RX_BUFFER_BYTES).map_err(Fail::virtq)?;
        self.rx_addr[usize::from(head)] = addr;
        Ok(())
    }

    /// Sends one frame of `kind` and `seq` with `payload` bytes and waits for the device to
    /// take it.
    fn send(&mut self, kind: u8, seq: u32, payload: usize) -> Result<(), Fail> {
        let len = (HEADER_BYTES + payload).max(MIN_FRAME);
        // SAFETY: the transmit buffer is not in flight (the last send completed).
        let f = unsafe { self.ram.slice_mut(self.tx_buf, len) }.map_err(Fail::mem)?;
        f.fill(0);
        f[0..6].fill(0xff);
        f[6..12].copy_from_slice(&self.mac);
        f[12..14].copy_from_slice(&ETHERTYPE);
        f[14..18].copy_from_slice(MAGIC);
        f[18] = kind;
        f[20..24].copy_from_slice(&seq.to_le_bytes());
        if kind == KIND_DATA {
            for (i, b) in f[HEADER_BYTES..HEADER_BYTES + payload]
                .iter_mut()
                .enumerate()
            {
                *b = pattern::frame_byte(seq, i);
            }
        }
        let (ram, hdr_len, tx_hdr, tx_buf) = (self.ram, self.hdr_len, self.tx_hdr, self.tx_buf);
        let frame = [Buffer::readable(tx_buf, len as u32)];
        vnet::add_tx(
            self.queue(TX_QUEUE)?,
            ram,
            &NetHdr::default(),
            tx_hdr,
            hdr_len,
            &frame,
        )
        .map_err(Fail::virtq)?;
        self.publish(TX_QUEUE)?;
        while self
            .queue(TX_QUEUE)?
            .pop_used(ram)
            .map_err(Fail::virtq)?
            .is_none()
        {
            crate::wait_for_used(&mut self.dev, ram, self.mode)?;
        }
        self.sent += 1;
        Ok(())
    }

    /// The next received frame, if one is there.
    fn poll_rx(&mut self) -> Result<Option<Frame>, Fail> {
        let ram = self.ram;
        let Some(used) = self.queue(RX_QUEUE)?.pop_used(ram).map_err(Fail::virtq)? else {
            return Ok(None);
        };
        self.received += 1;
        let addr = self.rx_addr[usize::from(used.head)];
        let len = (used.len as usize)
            .min(RX_BUFFER_BYTES as usize)
            .saturating_sub(self.hdr_len);
        Ok(Some(Frame {
            head: used.head,
            addr: addr + self.hdr_len as u64,
            len,
        }))
    }

    /// Gives a frame's buffer back to the device.
    fn recycle(&mut self, frame: Frame) -> Result<(), Fail> {
        let addr = self.rx_addr[usize::from(frame.head)];
        self.post_rx(addr)?;
        self.publish(RX_QUEUE)
    }

    /// (kind, seq) of a frame of ours, `None` for anything else.
    fn parse(&self, frame: &Frame) -> Result<Option<(u8, u32)>, Fail> {
        if frame.len < HEADER_BYTES {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_BYTES];
        self.ram.read(frame.addr, &mut h).map_err(Fail::mem)?;
        if h[12..14] != ETHERTYPE || &h[14..18] != MAGIC {
            return Ok(None);
        }
        Ok(Some((
            h[18],
            u32::from_le_bytes([h[20], h[21], h[22], h[23]]),
        )))
    }

    fn wait(&mut self) -> Result<(), Fail> {
        let ram = self.ram;
        crate::wait_for_used(&mut self.dev, ram, self.mode)
    }
}

/// Runs one network job.
pub fn run(
    info: &BootInfo,
    ram: &Ram,
    heap: &mut Heap,
    args: &Args,
    job: NetJob,
) -> Result<(), Fail> {
    if args.frame > MAX_PAYLOAD {
        return Err(Fail::new(
            "frame payload too large, max",
            MAX_PAYLOAD as u64,
        ));
    }
    let mut nic = Nic::open(info, ram, heap, args.completion)?;
    let irq0 = irq::count();
    let t0 = crate::rt::rdtsc();
    let (name, n, retries) = match job {
        NetJob::Send(n) => ("send", n, send(&mut nic, n, args.frame)?),
        NetJob::Recv(n) => ("recv", n, recv(&mut nic, n, args.frame)?),
    };
    nic.dev.reset();
    println!(
        "pvio-guest: net {name} ok frames={n} payload={} retries={retries} tx={} rx={} irqs={} us={}",
        args.frame,
        nic.sent,
        nic.received,
        irq::count() - irq0,
        irq::cycles_to_us(crate::rt::rdtsc() - t0)
    );
    Ok(())
}

/// Sends DATA 0 .. n-1, each until acknowledged; returns the number of repeats.
fn send(nic: &mut Nic<'_>, n: u32, payload: usize) -> Result<u64, Fail> {
    let mut retries = 0u64;
    for seq in 0..n {
        let mut tries = 0;
        loop {
            nic.send(KIND_DATA, seq, payload)?;
            if wait_ack(nic, seq)? {
                break;
            }
            tries += 1;
            retries += 1;
            if tries >= MAX_TRIES {
                return Err(Fail::new("no acknowledgement for frame", seq.into()));
            }
        }
    }
    Ok(retries)
}

/// Waits up to [`RETRY_MS`] for ACK `seq`, dropping anything else.
fn wait_ack(nic: &mut Nic<'_>, seq: u32) -> Result<bool, Fail> {
    let deadline = irq::deadline_ms(RETRY_MS);
    loop {
        while let Some(frame) = nic.poll_rx()? {
            let what = nic.parse(&frame)?;
            nic.recycle(frame)?;
            if what == Some((KIND_ACK, seq)) {
                return Ok(true);
            }
        }
        if irq::past(deadline) {
            return Ok(false);
        }
        nic.wait()?;
    }
}

/// Receives DATA 0 .. n-1 in order, checking each payload, acknowledging each (repeats too).
fn recv(nic: &mut Nic<'_>, n: u32, payload: usize) -> Result<u64, Fail> {
    let mut expected = 0u32;
    let mut repeats = 0u64;
    let limit = irq::deadline_ms(RECV_LIMIT_MS);
    let mut quiet_until = u64::MAX;
    loop {
        if let Some(frame) = nic.poll_rx()? {
            let what = nic.parse(&frame)?;
            if let Some((KIND_DATA, seq)) = what {
                check_payload(nic, &frame, seq, payload)?;
                match seq.cmp(&expected) {
                    core::cmp::Ordering::Equal => expected += 1,
                    core::cmp::Ordering::Less => repeats += 1,
                    core::cmp::Ordering::Greater => {
                        return Err(Fail::new("frame out of order, sequence", seq.into()))
                    }
                }
                nic.recycle(frame)?;
                nic.send(KIND_ACK, seq, 0)?;
                if expected == n {
                    quiet_until = irq::deadline_ms(LINGER_MS);
                }
            } else {
                nic.recycle(frame)?;
            }
            continue;
        }
        if expected == n && irq::past(quiet_until) {
            return Ok(repeats);
        }
        if irq::past(limit) {
            return Err(Fail::new(
                "frames received before the time limit",
                expected.into(),
            ));
        }
        nic.wait()?;
    }
}

fn check_payload(nic: &Nic<'_>, frame: &Frame, seq: u32, payload: usize) -> Result<(), Fail> {
    if frame.len < HEADER_BYTES + payload {
        return Err(Fail::new("short frame, bytes", frame.len as u64));
    }
    // SAFETY: the device returned this buffer; it is not re-posted until recycled.
    let data = unsafe { nic.ram.slice_mut(frame.addr + HEADER_BYTES as u64, payload) }
        .map_err(Fail::mem)?;
    match data
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != pattern::frame_byte(seq, i))
    {
        Some((i, _)) => Err(Fail::new("frame payload mismatch at byte", i as u64)),
        None => Ok(()),
    }
}
