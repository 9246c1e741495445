//! Parsing a virtio-blk descriptor chain into an owned, validated [`Request`].
//!
//! Layout (virtio 1.2 §5.2.6 and §2.7.4 "message framing"): a 16-byte header
//! `{type: le32, reserved: le32, sector: le64}` in device-readable memory, then the data
//! (device-readable for OUT, DISCARD and WRITE_ZEROES, device-writable for IN and GET_ID), and
//! a one-byte status as the last byte of device-writable memory. Descriptor boundaries carry no
//! meaning (VIRTIO_F_ANY_LAYOUT is implied by VIRTIO_F_VERSION_1), so the chain is read as a
//! device-readable byte stream followed by a device-writable one and split at byte offsets.
//!
//! Parsing only reads guest memory (the header and DISCARD/WRITE_ZEROES segments are copied out
//! once) and does no I/O, and allocates nothing for chains of up to [`INLINE_RANGES`] buffers.
//! Everything guest-controlled is checked: chain termination (a loop,
//! a `next` outside the table, a bad indirect table or an unreadable descriptor ends
//! virtio-queue's iterator early, which shows as a last descriptor still flagged NEXT), chain
//! length, that every buffer lies in guest memory, descriptor order and directions, sector
//! ranges against the capacity, and the read-only mode.

use std::ops::Deref;

use smallvec::SmallVec;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use crate::image::SECTOR_SIZE;

/// Size of the request header `struct virtio_blk_outhdr`, bytes.
pub const HEADER_BYTES: u64 = 16;
/// Size of one DISCARD / WRITE_ZEROES segment `struct virtio_blk_discard_write_zeroes`, bytes.
pub const SEGMENT_BYTES: u64 = 16;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: bit 0 of a segment's flags.
pub const SEGMENT_FLAG_UNMAP: u32 = 1;

/// What the device accepts; requests outside these limits fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Writes, DISCARD and WRITE_ZEROES fail with VIRTIO_BLK_S_IOERR.
    pub read_only: bool,
    /// VIRTIO_BLK_F_DISCARD is offered.
    pub discard: bool,
    /// VIRTIO_BLK_F_WRITE_ZEROES is offered.
    pub write_zeroes: bool,
    /// Largest DISCARD / WRITE_ZEROES segment, 512-byte sectors.
    pub max_zero_sectors: u32,
    /// Most data buffers (after splitting off header and status) in one IN, OUT or GET_ID.
    pub max_buffers: usize,
}

/// Guest ranges a request keeps inline, without a heap allocation: a header, data and status
/// split over a few descriptors (the common case) fit.
pub const INLINE_RANGES: usize = 4;

/// A request's guest ranges, in order.
pub type Ranges = SmallVec<[GuestRange; INLINE_RANGES]>;

/// A guest-physical byte range known to lie inside guest memory when parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// First byte.
    pub addr: GuestAddress,
    /// Length in bytes (never 0 in a parsed request).
    pub len: u32,
}

/// A validated virtio-blk request (virtio 1.2 §5.2.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// VIRTIO_BLK_T_IN: read `sector..` into `buffers` (device-writable); the total length is
    /// a multiple of 512 bytes and inside the capacity.
    Read {
        /// First 512-byte sector.
        sector: u64,
        /// Destination buffers in order.
        buffers: Ranges,
    },
    /// VIRTIO_BLK_T_OUT: write `buffers` (device-readable) at `sector..`; same checks as
    /// [`Request::Read`].
    Write {
        /// First 512-byte sector.
        sector: u64,
        /// Source buffers in order.
        buffers: Ranges,
    },
    /// VIRTIO_BLK_T_FLUSH: make completed writes durable.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: copy up to 20 bytes of device ID into `buffers`.
    GetId {
        /// Destination buffers in order.
        buffers: Ranges,
    },
    /// VIRTIO_BLK_T_DISCARD of one segment inside the capacity.
    Discard {
        /// First 512-byte sector.
        sector: u64,
        /// Number of 512-byte sectors (may be 0).
        sectors: u32,
    },
    /// VIRTIO_BLK_T_WRITE_ZEROES of one segment inside the capacity.
    WriteZeroes {
        /// First 512-byte sector.
        sector: u64,
        /// Number of 512-byte sectors (may be 0).
        sectors: u32,
        /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: the device may deallocate the range.
        unmap: bool,
    },
}

/// A parsed request and where its status byte goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The request.
    pub request: Request,
    /// Guest address of the status byte (inside guest memory, device-writable).
    pub status: GuestAddress,
}

/// A chain that cannot be served, and where its status byte goes if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Guest address of a usable status byte; `None` when the chain has none (then the chain
    /// is completed with used length 0 and nothing is written).
    pub status: Option<GuestAddress>,
    /// Why.
    pub error: RequestError,
}

/// Why a descriptor chain is refused. [`crate::status`] maps each to a VIRTIO_BLK_S_* code.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain has no descriptor (e.g. an empty or unreadable indirect table).
    #[error("descriptor chain is empty")]
    EmptyChain,
    /// The chain ended while its last descriptor still had NEXT set: a loop, a `next` outside
    /// the table, a bad indirect table or a descriptor that could not be read.
    #[error(
        "descriptor chain breaks off after {0} descriptors (loop, bad next or indirect table)"
    )]
    BrokenChain(usize),
    /// More descriptors than the device accepts.
    #[error("descriptor chain is longer than {0} descriptors")]
    TooLong(usize),
    /// The chain does not end with a device-writable byte for the status.
    #[error("descriptor chain does not end with a device-writable status byte")]
    NoStatus,
    /// A descriptor's buffer is not entirely inside guest memory.
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is outside guest memory")]
    OutsideMemory {
        /// Position in the chain.
        index: usize,
        /// Guest address.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor {0} follows a device-writable one")]
    ReadableAfterWritable(usize),
    /// The header is in device-writable memory.
    #[error("request header is in device-writable memory")]
    HeaderWritable,
    /// Fewer than 16 device-readable bytes for the header.
    #[error("request header has {0} bytes, not 16")]
    ShortHeader(u64),
    /// Guest memory could not be read although it was checked.
    #[error("cannot read guest memory at {0:#x}")]
    MemoryRead(u64),
    /// IN data in device-readable memory, or OUT/FLUSH/DISCARD data in device-writable memory.
    #[error("{request} request has {bytes} data bytes in the wrong direction")]
    WrongDirection {
        /// Request name.
        request: &'static str,
        /// Bytes in the wrong direction.
        bytes: u64,
    },
    /// IN/OUT data length is not a multiple of 512.
    #[error("data length {0} is not a multiple of 512 bytes")]
    NotSectorMultiple(u64),
    /// The sector range is not inside the capacity (or overflows).
    #[error("sectors {sector}..+{sectors} are outside the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write, DISCARD or WRITE_ZEROES on a read-only device.
    #[error("{0} request on a read-only device")]
    ReadOnly(&'static str),
    /// More data buffers than the device accepts.
    #[error("request has {0} data buffers, more than {1}")]
    TooManyBuffers(usize, usize),
    /// DISCARD / WRITE_ZEROES payload is not exactly one 16-byte segment.
    #[error("discard/write-zeroes payload of {0} bytes is not one 16-byte segment")]
    BadSegments(u64),
    /// Segment flags other than UNMAP.
    #[error("unknown discard/write-zeroes segment flags {0:#x}")]
    UnknownSegmentFlags(u32),
    /// DISCARD with the UNMAP flag (virtio 1.2 §5.2.6.2: VIRTIO_BLK_S_UNSUPP).
    #[error("discard segment with the unmap flag")]
    DiscardUnmap,
    /// A segment longer than the advertised maximum.
    #[error("segment of {sectors} sectors is longer than the maximum {max}")]
    SegmentTooLong {
        /// Sectors asked.
        sectors: u32,
        /// Maximum.
        max: u32,
    },
    /// A request type the device does not implement or did not offer.
    #[error("request type {0:#x} is not supported")]
    Unsupported(u32),
}

/// One descriptor as walked.
#[derive(Clone, Copy, Debug)]
struct Desc {
    range: GuestRange,
    writable: bool,
}

/// A walked chain: a direct or indirect chain of a header, a data buffer and a status byte
/// (plus the indirect head) fits inline.
type Descs = SmallVec<[Desc; INLINE_RANGES]>;

/// Parses `chain` against `limits`.
///
/// # Errors
/// [`Rejected`] with the reason and, when the chain has a usable status byte, its address.
pub fn parse<M>(chain: DescriptorChain<M>, limits: &Limits) -> Result<Parsed, Rejected>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let no_status = |error| Rejected {
        status: None,
        error,
    };
    let descs = walk(chain.clone(), limits.max_buffers + 2).map_err(no_status)?;
    let status = status_byte(&descs).ok_or(no_status(RequestError::NoStatus))?;
    if !mem.check_range(status, 1, Permissions::Write) {
        let last = descs.iter().rposition(|d| d.range.len > 0).unwrap_or(0);
        return Err(no_status(outside(last, &descs[last])));
    }
    let with_status = |error| Rejected {
        status: Some(status),
        error,
    };
    parse_body(mem, &descs, limits)
        .map(|request| Parsed { request, status })
        .map_err(with_status)
}

/// Walks the chain; fails when it is empty, longer than `max` or broken off.
fn walk<M>(chain: DescriptorChain<M>, max: usize) -> Result<Descs, RequestError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut descs = Descs::new();
    let mut open = false;
    for d in chain {
        if descs.len() == max {
            return Err(RequestError::TooLong(max));
        }
        open = d.has_next();
        descs.push(Desc {
            range: GuestRange {
                addr: d.addr(),
                len: d.len(),
            },
            writable: d.is_write_only(),
        });
    }
    if descs.is_empty() {
        return Err(RequestError::EmptyChain);
    }
    if open {
        return Err(RequestError::BrokenChain(descs.len()));
    }
    Ok(descs)
}

/// The last byte of the chain, if the last non-empty descriptor is device-writable.
fn status_byte(descs: &[Desc]) -> Option<GuestAddress> {
    let last = descs.iter().rev().find(|d| d.range.len > 0)?;
    if !last.writable {
        return None;
    }
    last.range.addr.checked_add(u64::from(last.range.len) - 1)
}

fn outside(index: usize, d: &Desc) -> RequestError {
    RequestError::OutsideMemory {
        index,
        addr: d.range.addr.raw_value(),
        len: d.range.len,
    }
}

/// Checks memory and direction of every descriptor, reads the header and builds the request.
fn parse_body<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Desc],
    limits: &Limits,
) -> Result<Request, RequestError> {
    let mut readable = Ranges::new();
    let mut writable = Ranges::new();
    for (index, d) in descs.iter().enumerate() {
        if d.range.len == 0 {
            continue;
        }
        let access = if d.writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(d.range.addr, d.range.len as usize, access) {
            return Err(outside(index, d));
        }
        if d.writable {
            writable.push(d.range);
        } else if writable.is_empty() {
            readable.push(d.range);
        } else {
            return Err(RequestError::ReadableAfterWritable(index));
        }
    }
    let readable_bytes = total(&readable);
    if readable_bytes < HEADER_BYTES {
        return Err(if readable.is_empty() {
            RequestError::HeaderWritable
        } else {
            RequestError::ShortHeader(readable_bytes)
        });
    }
    let (header, out_data) = split_at(&readable, HEADER_BYTES);
    let mut raw = [0u8; HEADER_BYTES as usize];
    read_ranges(mem, &header, &mut raw)?;
    let request_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    // Everything device-writable except the status byte.
    let (in_data, _status) = split_at(&writable, total(&writable) - 1);
    let body = Body {
        sector,
        out_data,
        in_data,
    };
    match request_type {
        VIRTIO_BLK_T_IN => body.read(limits),
        VIRTIO_BLK_T_OUT => body.write(limits),
        VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
        VIRTIO_BLK_T_GET_ID => body.get_id(limits),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => body.zeroes(mem, request_type, limits),
        other => Err(RequestError::Unsupported(other)),
    }
}

/// The parts of a chain after the header, before the status byte.
struct Body {
    sector: u64,
    out_data: Ranges,
    in_data: Ranges,
}

impl Body {
    fn read(self, limits: &Limits) -> Result<Request, RequestError> {
        none_in(&self.out_data, "IN")?;
        let sector = self.sector;
        let buffers = transfer_buffers(self.in_data, sector, limits)?;
        Ok(Request::Read { sector, buffers })
    }

    fn write(self, limits: &Limits) -> Result<Request, RequestError> {
        if limits.read_only {
            return Err(RequestError::ReadOnly("OUT"));
        }
        none_in(&self.in_data, "OUT")?;
        let sector = self.sector;
        let buffers = transfer_buffers(self.out_data, sector, limits)?;
        Ok(Request::Write { sector, buffers })
    }

    fn get_id(self, limits: &Limits) -> Result<Request, RequestError> {
        none_in(&self.out_data, "GET_ID")?;
        if self.in_data.len() > limits.max_buffers {
            return Err(RequestError::TooManyBuffers(
                self.in_data.len(),
                limits.max_buffers,
            ));
        }
        Ok(Request::GetId {
            buffers: self.in_data,
        })
    }

    fn zeroes<M: GuestMemory + ?Sized>(
        self,
        mem: &M,
        request_type: u32,
        limits: &Limits,
    ) -> Result<Request, RequestError> {
        let discard = request_type == VIRTIO_BLK_T_DISCARD;
        let name = if discard { "DISCARD" } else { "WRITE_ZEROES" };
        if limits.read_only {
            return Err(RequestError::ReadOnly(name));
        }
        if !(if discard {
            limits.discard
        } else {
            limits.write_zeroes
        }) {
            return Err(RequestError::Unsupported(request_type));
        }
        none_in(&self.in_data, name)?;
        let payload = total(&self.out_data);
        if payload != SEGMENT_BYTES {
            return Err(RequestError::BadSegments(payload));
        }
        let mut raw = [0u8; SEGMENT_BYTES as usize];
        read_ranges(mem, &self.out_data, &mut raw)?;
        let sector = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        if flags & !SEGMENT_FLAG_UNMAP != 0 {
            return Err(RequestError::UnknownSegmentFlags(flags));
        }
        let unmap = flags & SEGMENT_FLAG_UNMAP != 0;
        if discard && unmap {
            return Err(RequestError::DiscardUnmap);
        }
        if sectors > limits.max_zero_sectors {
            return Err(RequestError::SegmentTooLong {
                sectors,
                max: limits.max_zero_sectors,
            });
        }
        check_range(sector, u64::from(sectors), limits)?;
        Ok(if discard {
            Request::Discard { sector, sectors }
        } else {
            Request::WriteZeroes {
                sector,
                sectors,
                unmap,
            }
        })
    }
}

/// Fails when `ranges` (data in the wrong direction for `request`) holds any byte.
fn none_in(ranges: &[GuestRange], request: &'static str) -> Result<(), RequestError> {
    match total(ranges) {
        0 => Ok(()),
        bytes => Err(RequestError::WrongDirection { request, bytes }),
    }
}

/// Checks an IN/OUT data list: buffer count, whole sectors, inside the capacity.
fn transfer_buffers(buffers: Ranges, sector: u64, limits: &Limits) -> Result<Ranges, RequestError> {
    if buffers.len() > limits.max_buffers {
        return Err(RequestError::TooManyBuffers(
            buffers.len(),
            limits.max_buffers,
        ));
    }
    let bytes = total(&buffers);
    if bytes % SECTOR_SIZE != 0 {
        return Err(RequestError::NotSectorMultiple(bytes));
    }
    check_range(sector, bytes / SECTOR_SIZE, limits)?;
    Ok(buffers)
}

fn check_range(sector: u64, sectors: u64, limits: &Limits) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity: limits.capacity_sectors,
        }),
    }
}

/// Total bytes of `ranges`.
pub fn total(ranges: &[GuestRange]) -> u64 {
    ranges.iter().map(|r| u64::from(r.len)).sum()
}

/// Splits `ranges` after `n` bytes (`n` at most the total) into the front and the rest.
fn split_at(ranges: &[GuestRange], n: u64) -> (Ranges, Ranges) {
    let mut front = Ranges::new();
    let mut back = Ranges::new();
    let mut left = n;
    for r in ranges {
        let len = u64::from(r.len);
        if left >= len {
            front.push(*r);
            left -= len;
        } else if left > 0 {
            // left < len <= u32::MAX, so both parts fit in u32.
            let head = left as u32;
            front.push(GuestRange {
                addr: r.addr,
                len: head,
            });
            back.push(GuestRange {
                addr: r.addr.unchecked_add(left),
                len: r.len - head,
            });
            left = 0;
        } else {
            back.push(*r);
        }
    }
    (front, back)
}

/// Copies `buf.len()` bytes from the front of `ranges` (which hold at least that many).
fn read_ranges<M: GuestMemory + ?Sized>(
    mem: &M,
    ranges: &[GuestRange],
    buf: &mut [u8],
) -> Result<(), RequestError> {
    let mut done = 0;
    for r in ranges {
        if done == buf.len() {
            break;
        }
        let n = (r.len as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], r.addr)
            .map_err(|_| RequestError::MemoryRead(r.addr.raw_value()))?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
