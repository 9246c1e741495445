//! virtio-net for the driver core (virtio 1.2 §5.1): feature bits, the per-frame header, the
//! configuration layout, queue numbering and control queue commands.
//!
//! Queues: receiveq N is `2N`, transmitq N is `2N + 1`, the controlq follows the last pair. A
//! transmitted frame is one device-readable chain: the header (10 bytes, or 12 with
//! VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF) then the frame. A receive buffer is a
//! device-writable chain; with VIRTIO_NET_F_MRG_RXBUF one frame may span several, the first
//! one's header giving their number (`num_buffers`). A control command is `class u8,
//! command u8, data` device-readable plus one device-writable ack byte.

use crate::mem::{GuestRam, MemError};
use crate::virtq::{Buffer, SplitQueue, VirtqError};

/// Feature bit: the device handles partial checksums from the driver (NEEDS_CSUM on transmit).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature bit: the driver handles partial checksums (NEEDS_CSUM on receive).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature bit: `mtu` in the configuration is valid.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Feature bit: `mac` in the configuration is valid.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the driver takes TCPv4 segmentation offload frames.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature bit: the driver takes TCPv6 segmentation offload frames.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature bit: the device takes TCPv4 segmentation offload frames.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature bit: the device takes TCPv6 segmentation offload frames.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Feature bit: a received frame may span several buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Feature bit: `status` in the configuration is valid.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Feature bit: there is a control queue.
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// Feature bit: the control queue takes receive mode and MAC table commands.
pub const VIRTIO_NET_F_CTRL_RX: u32 = 18;
/// Feature bit: the control queue takes the extra receive mode commands (ALLUNI...).
pub const VIRTIO_NET_F_CTRL_RX_EXTRA: u32 = 20;
/// Feature bit: several queue pairs (`max_virtqueue_pairs`).
pub const VIRTIO_NET_F_MQ: u32 = 22;
/// Feature bit: the control queue takes MAC_ADDR_SET.
pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u32 = 23;

/// Header flag: the checksum from `csum_start` on is partial.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag (receive): the checksum was verified.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: no segmentation.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: TCP over IPv6.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// Control class: receive mode.
pub const VIRTIO_NET_CTRL_RX: u8 = 0;
/// Receive mode command: promiscuous.
pub const VIRTIO_NET_CTRL_RX_PROMISC: u8 = 0;
/// Receive mode command: all multicast.
pub const VIRTIO_NET_CTRL_RX_ALLMULTI: u8 = 1;
/// Receive mode command: no broadcast.
pub const VIRTIO_NET_CTRL_RX_NOBCAST: u8 = 5;
/// Control class: MAC filter.
pub const VIRTIO_NET_CTRL_MAC: u8 = 1;
/// MAC command: set the unicast and multicast tables.
pub const VIRTIO_NET_CTRL_MAC_TABLE_SET: u8 = 0;
/// MAC command: set the device's address.
pub const VIRTIO_NET_CTRL_MAC_ADDR_SET: u8 = 1;
/// Control class: multiqueue.
pub const VIRTIO_NET_CTRL_MQ: u8 = 4;
/// Multiqueue command: number of queue pairs used.
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// Ack: done.
pub const VIRTIO_NET_OK: u8 = 0;
/// Ack: refused.
pub const VIRTIO_NET_ERR: u8 = 1;

/// Bytes of the header with `num_buffers`.
pub const HDR_LEN: usize = 12;
/// Bytes of the legacy header.
pub const LEGACY_HDR_LEN: usize = 10;
/// Bytes of `struct virtio_net_config` up to and including `mtu`.
pub const CONFIG_BYTES: usize = 12;

/// The receive queue of pair `pair`.
pub const fn rx_queue(pair: u16) -> usize {
    2 * pair as usize
}

/// The transmit queue of pair `pair`.
pub const fn tx_queue(pair: u16) -> usize {
    2 * pair as usize + 1
}

/// The control queue of a device with `pairs` queue pairs.
pub const fn ctrl_queue(pairs: u16) -> usize {
    2 * pairs as usize
}

/// The header size for the negotiated `features`: 12 bytes with VERSION_1 or MRG_RXBUF.
pub const fn hdr_len(features: u64) -> usize {
    if features & (1 << 32 | 1 << VIRTIO_NET_F_MRG_RXBUF) != 0 {
        HDR_LEN
    } else {
        LEGACY_HDR_LEN
    }
}

/// The virtio-net header (`struct virtio_net_hdr_v1`), host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Bytes of headers (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, after `csum_start`.
    pub csum_offset: u16,
    /// Receive buffers the frame spans.
    pub num_buffers: u16,
}

impl NetHdr {
    /// The 12-byte little-endian wire form (the legacy form is its first 10 bytes).
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Parses 10 or more bytes (`num_buffers` is 1 without the last two).
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < LEGACY_HDR_LEN {
            return None;
        }
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: if b.len() >= HDR_LEN { le(10) } else { 1 },
        })
    }
}

/// The start of `struct virtio_net_config` (virtio 1.2 §5.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The device's MAC address.
    pub mac: [u8; 6],
    /// `VIRTIO_NET_S_*` (LINK_UP 1).
    pub status: u16,
    /// Most queue pairs.
    pub max_virtqueue_pairs: u16,
    /// MTU in bytes.
    pub mtu: u16,
}

impl NetConfig {
    /// Parses at least [`CONFIG_BYTES`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..CONFIG_BYTES)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[..6]);
        Some(NetConfig {
            mac,
            status: le(6),
            max_virtqueue_pairs: le(8),
            mtu: le(10),
        })
    }
}

/// Writes the header (its first `hdr_len` bytes) at `at` and adds a transmit chain of the
/// header followed by the `frame` buffers (device-readable). Returns the head index.
///
/// # Errors
/// [`VirtqError`] (queue full, memory).
pub fn add_tx<const N: usize>(
    vq: &mut SplitQueue<N>,
    mem: &impl GuestRam,
    hdr: &NetHdr,
    at: u64,
    hdr_len: usize,
    frame: &[Buffer],
) -> Result<u16, VirtqError> {
    mem.write(at, &hdr.to_bytes()[..hdr_len])?;
    // hdr_len is 10 or 12.
    let header = [Buffer::readable(at, hdr_len as u32)];
    vq.add(mem, &[&header, frame])
}

/// Adds a receive buffer of `len` bytes at `at` (one device-writable descriptor).
///
/// # Errors
/// [`VirtqError`].
pub fn add_rx<const N: usize>(
    vq: &mut SplitQueue<N>,
    mem: &impl GuestRam,
    at: u64,
    len: u32,
) -> Result<u16, VirtqError> {
    vq.add(mem, &[&[Buffer::writable(at, len)]])
}

/// Writes a control command (`class`, `command`, `data`) at `at` and its ack sentinel
/// ([`VIRTIO_NET_ERR`] + 0x10, which no device writes) right after, and adds the chain.
/// Returns (head index, ack address).
///
/// # Errors
/// [`VirtqError`].
pub fn add_ctrl<const N: usize>(
    vq: &mut SplitQueue<N>,
    mem: &impl GuestRam,
    at: u64,
    class: u8,
    command: u8,
    data: &[u8],
) -> Result<(u16, u64), VirtqError> {
    mem.write(at, &[class, command])?;
    mem.write(at + 2, data)?;
    let len = 2 + data.len() as u64;
    let ack = at + len;
    mem.write(ack, &[ACK_SENTINEL])?;
    let out = [Buffer::readable(at, len as u32)];
    let inp = [Buffer::writable(ack, 1)];
    let head = vq.add(mem, &[&out, &inp])?;
    Ok((head, ack))
}

/// The ack byte's value before the device writes it.
pub const ACK_SENTINEL: u8 = 0x11;

/// Writes `struct virtio_net_ctrl_mac` (`le32 entries`, then the addresses) for `macs` into
/// `out`; returns the bytes used, or `None` if `out` is too small.
pub fn mac_table(macs: &[[u8; 6]], out: &mut [u8]) -> Option<usize> {
    let len = 4 + 6 * macs.len();
    let out = out.get_mut(..len)?;
    out[..4].copy_from_slice(&u32::try_from(macs.len()).ok()?.to_le_bytes());
    for (chunk, mac) in out[4..].chunks_exact_mut(6).zip(macs) {
        chunk.copy_from_slice(mac);
    }
    Some(len)
}

/// Reads the ack byte at `at`.
///
/// # Errors
/// [`MemError`].
pub fn read_ack(mem: &impl GuestRam, at: u64) -> Result<u8, MemError> {
    let mut b = [0u8];
    mem.read(at, &mut b)?;
    Ok(b[0])
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_net as vn;

    use super::*;

    #[test]
    fn constants_match_virtio_bindings() {
        let pairs = [
            (VIRTIO_NET_F_CSUM, vn::VIRTIO_NET_F_CSUM),
            (VIRTIO_NET_F_GUEST_CSUM, vn::VIRTIO_NET_F_GUEST_CSUM),
            (VIRTIO_NET_F_MTU, vn::VIRTIO_NET_F_MTU),
            (VIRTIO_NET_F_MAC, vn::VIRTIO_NET_F_MAC),
            (VIRTIO_NET_F_GUEST_TSO4, vn::VIRTIO_NET_F_GUEST_TSO4),
            (VIRTIO_NET_F_GUEST_TSO6, vn::VIRTIO_NET_F_GUEST_TSO6),
            (VIRTIO_NET_F_HOST_TSO4, vn::VIRTIO_NET_F_HOST_TSO4),
            (VIRTIO_NET_F_HOST_TSO6, vn::VIRTIO_NET_F_HOST_TSO6),
            (VIRTIO_NET_F_MRG_RXBUF, vn::VIRTIO_NET_F_MRG_RXBUF),
            (VIRTIO_NET_F_STATUS, vn::VIRTIO_NET_F_STATUS),
            (VIRTIO_NET_F_CTRL_VQ, vn::VIRTIO_NET_F_CTRL_VQ),
            (VIRTIO_NET_F_CTRL_RX, vn::VIRTIO_NET_F_CTRL_RX),
            (VIRTIO_NET_F_CTRL_RX_EXTRA, vn::VIRTIO_NET_F_CTRL_RX_EXTRA),
            (VIRTIO_NET_F_MQ, vn::VIRTIO_NET_F_MQ),
            (VIRTIO_NET_F_CTRL_MAC_ADDR, vn::VIRTIO_NET_F_CTRL_MAC_ADDR),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours, theirs);
        }
        assert_eq!(
            u32::from(VIRTIO_NET_HDR_GSO_TCPV4),
            vn::VIRTIO_NET_HDR_GSO_TCPV4
        );
        assert_eq!(
            u32::from(VIRTIO_NET_HDR_GSO_TCPV6),
            vn::VIRTIO_NET_HDR_GSO_TCPV6
        );
        assert_eq!(u32::from(VIRTIO_NET_CTRL_MQ), vn::VIRTIO_NET_CTRL_MQ);
        assert_eq!(
            u32::from(VIRTIO_NET_CTRL_RX_NOBCAST),
            vn::VIRTIO_NET_CTRL_RX_NOBCAST
        );
        assert_eq!(core::mem::size_of::<vn::virtio_net_hdr_v1>(), HDR_LEN);
    }

    #[test]
    fn header_and_config_round_trip() {
        let h = NetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 3,
        };
        assert_eq!(NetHdr::parse(&h.to_bytes()), Some(h));
        assert_eq!(
            NetHdr::parse(&h.to_bytes()[..10]).map(|p| p.num_buffers),
            Some(1)
        );
        assert_eq!(NetHdr::parse(&[0; 9]), None);
        let c = NetConfig::parse(&[2, 0, 0, 0, 0, 1, 1, 0, 4, 0, 0xdc, 5]).unwrap();
        assert_eq!(
            c,
            NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                status: 1,
                max_virtqueue_pairs: 4,
                mtu: 1500
            }
        );
        assert_eq!(hdr_len(1 << 32), HDR_LEN);
        assert_eq!(hdr_len(0), LEGACY_HDR_LEN);
        assert_eq!((rx_queue(1), tx_queue(1), ctrl_queue(2)), (2, 3, 4));
        let mut buf = [0u8; 16];
        assert_eq!(mac_table(&[[1, 2, 3, 4, 5, 6]], &mut buf), Some(10));
        assert_eq!(&buf[..10], &[1, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(mac_table(&[[0; 6]; 3], &mut buf), None);
    }
}
