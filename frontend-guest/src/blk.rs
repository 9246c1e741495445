//! virtio-blk requests (virtio 1.2 §5.2).
//!
//! A request is one descriptor chain: a 16-byte device-readable header
//! `{type: le32, reserved: le32, sector: le64}`, data buffers (device-readable for OUT,
//! DISCARD and WRITE_ZEROES, device-writable for IN and GET_ID), and a 1-byte device-writable
//! status. [`add_request`] writes the header and a status sentinel into guest memory and adds
//! the chain to a [`SplitQueue`]; [`read_status`] reads the status back. Sectors are always
//! 512 bytes, whatever the device's `blk_size`.

use crate::mem::{self, GuestRam};
use crate::virtq::{Buffer, SplitQueue, VirtqError};

/// Feature bit: `size_max` in the configuration is the largest segment size.
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Feature bit: `seg_max` in the configuration is the largest number of data segments.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` in the configuration is the optimal block size.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: the device supports VIRTIO_BLK_T_FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature bit: the configuration has the topology fields.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// Feature bit: `num_queues` in the configuration is valid.
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// Feature bit: the device supports VIRTIO_BLK_T_DISCARD.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature bit: the device supports VIRTIO_BLK_T_WRITE_ZEROES.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Request type: read (device writes the data buffers).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write (device reads the data buffers).
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the device's write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the device id string ([`VIRTIO_BLK_ID_BYTES`] bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard ranges given as [`DiscardSegment`]s.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes to ranges given as [`DiscardSegment`]s.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: device or driver error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request unsupported by the device.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Write-zeroes segment flag: the device may unmap (deallocate) the range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Bytes of the GET_ID answer (not NUL-terminated when the id is this long).
pub const VIRTIO_BLK_ID_BYTES: u32 = 20;
/// Bytes per sector in request headers and segments.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Bytes of the request header.
pub const HEADER_BYTES: u32 = 16;
/// Bytes of one [`DiscardSegment`].
pub const SEGMENT_BYTES: usize = 16;
/// Value [`add_request`] puts in the status byte before the device runs: no valid status has
/// it, so a request completed without a status write is recognisable.
pub const STATUS_SENTINEL: u8 = 0xff;

/// The request header (`struct virtio_blk_req` without data and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*` (any value, so unknown types can be tried).
    pub request_type: u32,
    /// First 512-byte sector (0 for types without one).
    pub sector: u64,
}

impl RequestHeader {
    /// The 16-byte little-endian wire form (reserved field 0).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.request_type.to_le_bytes());
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// A DISCARD / WRITE_ZEROES range (`struct virtio_blk_discard_write_zeroes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardSegment {
    /// First 512-byte sector.
    pub sector: u64,
    /// Number of 512-byte sectors.
    pub num_sectors: u32,
    /// Flags; bit 0 is [`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`].
    pub flags: u32,
}

impl DiscardSegment {
    /// The 16-byte little-endian wire form.
    pub fn to_bytes(&self) -> [u8; SEGMENT_BYTES] {
        let mut b = [0u8; SEGMENT_BYTES];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// A request's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkStatus {
    /// [`VIRTIO_BLK_S_OK`].
    Ok,
    /// [`VIRTIO_BLK_S_IOERR`].
    IoErr,
    /// [`VIRTIO_BLK_S_UNSUPP`].
    Unsupp,
    /// Any other value, e.g. [`STATUS_SENTINEL`] when the device never wrote it.
    Other(u8),
}

impl From<u8> for BlkStatus {
    fn from(v: u8) -> Self {
        match v {
            VIRTIO_BLK_S_OK => BlkStatus::Ok,
            VIRTIO_BLK_S_IOERR => BlkStatus::IoErr,
            VIRTIO_BLK_S_UNSUPP => BlkStatus::Unsupp,
            other => BlkStatus::Other(other),
        }
    }
}

/// The device configuration (`struct virtio_blk_config`, virtio 1.2 §5.2.4) up to
/// `write_zeroes_may_unmap`. Fields whose feature was not offered hold whatever the device put
/// there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment in bytes (VIRTIO_BLK_F_SIZE_MAX).
    pub size_max: u32,
    /// Most data segments in a request (VIRTIO_BLK_F_SEG_MAX).
    pub seg_max: u32,
    /// Geometry cylinders / heads / sectors (VIRTIO_BLK_F_GEOMETRY).
    pub geometry: (u16, u8, u8),
    /// Optimal block size in bytes (VIRTIO_BLK_F_BLK_SIZE).
    pub blk_size: u32,
    /// log2 of logical blocks per physical block (VIRTIO_BLK_F_TOPOLOGY).
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block (VIRTIO_BLK_F_TOPOLOGY).
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in blocks (VIRTIO_BLK_F_TOPOLOGY).
    pub min_io_size: u16,
    /// Optimal sustained I/O size in blocks (VIRTIO_BLK_F_TOPOLOGY).
    pub opt_io_size: u32,
    /// Write-back cache mode (VIRTIO_BLK_F_CONFIG_WCE).
    pub writeback: u8,
    /// Number of request queues (VIRTIO_BLK_F_MQ).
    pub num_queues: u16,
    /// Largest discard in sectors (VIRTIO_BLK_F_DISCARD).
    pub max_discard_sectors: u32,
    /// Most segments in a discard (VIRTIO_BLK_F_DISCARD).
    pub max_discard_seg: u32,
    /// Discard alignment in sectors (VIRTIO_BLK_F_DISCARD).
    pub discard_sector_alignment: u32,
    /// Largest write-zeroes in sectors (VIRTIO_BLK_F_WRITE_ZEROES).
    pub max_write_zeroes_sectors: u32,
    /// Most segments in a write-zeroes (VIRTIO_BLK_F_WRITE_ZEROES).
    pub max_write_zeroes_seg: u32,
    /// Whether write-zeroes may unmap (VIRTIO_BLK_F_WRITE_ZEROES).
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// Bytes of configuration space [`BlkConfig::parse`] reads (offsets 0..60).
    pub const BYTES: usize = 60;

    /// Parses the first [`BlkConfig::BYTES`] bytes of configuration space (little-endian).
    /// Returns `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::BYTES] = b.get(..Self::BYTES)?.try_into().ok()?;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | u64::from(u32_at(o + 4)) << 32;
        Some(BlkConfig {
            capacity: u64_at(0),
            size_max: u32_at(8),
            seg_max: u32_at(12),
            geometry: (u16_at(16), b[18], b[19]),
            blk_size: u32_at(20),
            physical_block_exp: b[24],
            alignment_offset: b[25],
            min_io_size: u16_at(26),
            opt_io_size: u32_at(28),
            writeback: b[32],
            num_queues: u16_at(34),
            max_discard_sectors: u32_at(36),
            max_discard_seg: u32_at(40),
            discard_sector_alignment: u32_at(44),
            max_write_zeroes_sectors: u32_at(48),
            max_write_zeroes_seg: u32_at(52),
            write_zeroes_may_unmap: b[56],
        })
    }
}

/// Where one request's pieces sit in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct RequestBuffers<'a> {
    /// Guest-physical address of 16 bytes for the header.
    pub header: u64,
    /// Data buffers, with their direction (writable for IN and GET_ID).
    pub data: &'a [Buffer],
    /// Guest-physical address of the status byte.
    pub status: u64,
    /// If set, the chain goes into an indirect table at this guest-physical address
    /// (`16 * (data.len() + 2)` bytes); needs VIRTIO_RING_F_INDIRECT_DESC.
    pub indirect_table: Option<u64>,
}

/// Writes `header` and [`STATUS_SENTINEL`] at their addresses and adds the chain
/// header → data → status to `vq` (not yet published). Returns the head descriptor index.
///
/// # Errors
/// As [`SplitQueue::add`] / [`SplitQueue::add_indirect`].
pub fn add_request<const N: usize>(
    vq: &mut SplitQueue<N>,
    mem: &impl GuestRam,
    header: &RequestHeader,
    bufs: &RequestBuffers<'_>,
) -> Result<u16, VirtqError> {
    mem.write(bufs.header, &header.to_bytes())?;
    mem.write(bufs.status, &[STATUS_SENTINEL])?;
    let segs: [&[Buffer]; 3] = [
        &[Buffer::readable(bufs.header, HEADER_BYTES)],
        bufs.data,
        &[Buffer::writable(bufs.status, 1)],
    ];
    match bufs.indirect_table {
        Some(table) => vq.add_indirect(mem, table, &segs),
        None => vq.add(mem, &segs),
    }
}

/// Reads the status byte at `gpa`.
///
/// # Errors
/// [`VirtqError::Mem`].
pub fn read_status(mem: &impl GuestRam, gpa: u64) -> Result<BlkStatus, VirtqError> {
    Ok(BlkStatus::from(mem::read_u8(mem, gpa)?))
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_blk as vb;

    use super::*;

    #[test]
    fn constants_match_virtio_bindings() {
        let pairs = [
            (VIRTIO_BLK_F_SIZE_MAX, vb::VIRTIO_BLK_F_SIZE_MAX),
            (VIRTIO_BLK_F_SEG_MAX, vb::VIRTIO_BLK_F_SEG_MAX),
            (VIRTIO_BLK_F_RO, vb::VIRTIO_BLK_F_RO),
            (VIRTIO_BLK_F_BLK_SIZE, vb::VIRTIO_BLK_F_BLK_SIZE),
            (VIRTIO_BLK_F_FLUSH, vb::VIRTIO_BLK_F_FLUSH),
            (VIRTIO_BLK_F_TOPOLOGY, vb::VIRTIO_BLK_F_TOPOLOGY),
            (VIRTIO_BLK_F_MQ, vb::VIRTIO_BLK_F_MQ),
            (VIRTIO_BLK_F_DISCARD, vb::VIRTIO_BLK_F_DISCARD),
            (VIRTIO_BLK_F_WRITE_ZEROES, vb::VIRTIO_BLK_F_WRITE_ZEROES),
            (VIRTIO_BLK_T_IN, vb::VIRTIO_BLK_T_IN),
            (VIRTIO_BLK_T_OUT, vb::VIRTIO_BLK_T_OUT),
            (VIRTIO_BLK_T_FLUSH, vb::VIRTIO_BLK_T_FLUSH),
            (VIRTIO_BLK_T_GET_ID, vb::VIRTIO_BLK_T_GET_ID),
            (VIRTIO_BLK_T_DISCARD, vb::VIRTIO_BLK_T_DISCARD),
            (VIRTIO_BLK_T_WRITE_ZEROES, vb::VIRTIO_BLK_T_WRITE_ZEROES),
            (u32::from(VIRTIO_BLK_S_OK), vb::VIRTIO_BLK_S_OK),
            (u32::from(VIRTIO_BLK_S_IOERR), vb::VIRTIO_BLK_S_IOERR),
            (u32::from(VIRTIO_BLK_S_UNSUPP), vb::VIRTIO_BLK_S_UNSUPP),
            (
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
                vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            ),
            (VIRTIO_BLK_ID_BYTES, vb::VIRTIO_BLK_ID_BYTES),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn config_parses_at_the_spec_offsets() {
        let c = vb::virtio_blk_config {
            capacity: 8192,
            size_max: 65536,
            seg_max: 126,
            blk_size: 4096,
            min_io_size: 8,
            opt_io_size: 64,
            num_queues: 4,
            max_discard_sectors: 1000,
            max_discard_seg: 1,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: 2000,
            max_write_zeroes_seg: 3,
            write_zeroes_may_unmap: 1,
            ..Default::default()
        };
        // SAFETY: virtio_blk_config is a repr(C) struct of integers; viewing it as bytes is sound.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&c as *const vb::virtio_blk_config).cast::<u8>(),
                core::mem::size_of_val(&c),
            )
        };
        let p = BlkConfig::parse(bytes).unwrap();
        assert_eq!(
            (p.capacity, p.size_max, p.seg_max, p.blk_size),
            (8192, 65536, 126, 4096)
        );
        assert_eq!((p.min_io_size, p.opt_io_size, p.num_queues), (8, 64, 4));
        assert_eq!(
            (
                p.max_discard_sectors,
                p.max_discard_seg,
                p.discard_sector_alignment
            ),
            (1000, 1, 8)
        );
        assert_eq!(
            (
                p.max_write_zeroes_sectors,
                p.max_write_zeroes_seg,
                p.write_zeroes_may_unmap
            ),
            (2000, 3, 1)
        );
        assert_eq!(BlkConfig::parse(&bytes[..59]), None);
    }

    #[test]
    fn header_and_segment_wire_forms() {
        let h = RequestHeader {
            request_type: VIRTIO_BLK_T_OUT,
            sector: 0x1122_3344_5566_7788,
        };
        assert_eq!(
            h.to_bytes(),
            [1, 0, 0, 0, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        let s = DiscardSegment {
            sector: 3,
            num_sectors: 5,
            flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        };
        assert_eq!(
            s.to_bytes(),
            [3, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(BlkStatus::from(0), BlkStatus::Ok);
        assert_eq!(BlkStatus::from(1), BlkStatus::IoErr);
        assert_eq!(BlkStatus::from(2), BlkStatus::Unsupp);
        assert_eq!(BlkStatus::from(STATUS_SENTINEL), BlkStatus::Other(0xff));
    }
}
