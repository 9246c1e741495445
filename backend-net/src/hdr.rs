//! The virtio-net header that precedes every frame on the receive and transmit queues
//! (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6), and the checks a transmitted one must pass.
//!
//! Wire form, little-endian: `flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16,
//! csum_offset u16, num_buffers u16` = 12 bytes with VIRTIO_F_VERSION_1 or
//! VIRTIO_NET_F_MRG_RXBUF, else the first 10 bytes only (legacy `struct virtio_net_hdr`).

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

use crate::mac::ETH_HLEN;

/// Bytes of the header with `num_buffers` (VERSION_1 or MRG_RXBUF).
pub const HDR_LEN: usize = 12;
/// Bytes of the legacy header without `num_buffers`.
pub const LEGACY_HDR_LEN: usize = 10;
/// Largest frame a segmentation offload may carry: 64 KiB of IP packet plus Ethernet and VLAN
/// headers (Linux's `GSO_MAX_SIZE` for virtio-net), bytes without the virtio-net header.
pub const MAX_GSO_FRAME: usize = 65_536 + ETH_HLEN + 4;
/// Bytes of a VLAN tag (IEEE 802.1Q) a frame may carry on top of the MTU.
pub const VLAN_HLEN: usize = 4;

/// `flags` bit: the checksum from `csum_start` to the end is not yet computed.
pub const F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `flags` bit (receive only): the checksum was verified.
pub const F_DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;

/// The segmentation offload a frame asks for (`gso_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gso {
    /// A single frame (VIRTIO_NET_HDR_GSO_NONE).
    None,
    /// TCP over IPv4 to cut into `gso_size`-byte segments (VIRTIO_NET_HDR_GSO_TCPV4).
    TcpV4,
    /// TCP over IPv6 (VIRTIO_NET_HDR_GSO_TCPV6).
    TcpV6,
}

/// A virtio-net header, host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, possibly with the ECN bit.
    pub gso_type: u8,
    /// Bytes of Ethernet + IP + TCP headers (a hint).
    pub hdr_len: u16,
    /// Bytes of payload per segment when `gso_type` is not NONE.
    pub gso_size: u16,
    /// Offset from the start of the frame where checksumming starts.
    pub csum_start: u16,
    /// Offset after `csum_start` where the checksum is stored.
    pub csum_offset: u16,
    /// Receive buffers the frame spans (MRG_RXBUF); 1 otherwise.
    pub num_buffers: u16,
}

/// What the driver acked that governs the transmit path, and the size limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxLimits {
    /// VIRTIO_NET_F_CSUM: the driver may leave checksums to the device.
    pub csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4.
    pub tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6.
    pub tso6: bool,
    /// Largest frame without segmentation offload: MTU + Ethernet + VLAN headers, bytes.
    pub max_frame: usize,
}

impl TxLimits {
    /// Whether the driver may ask for any transmit offload (checksum or segmentation).
    pub fn any_offload(&self) -> bool {
        self.csum || self.tso4 || self.tso6
    }
}

/// A transmitted header or frame that breaks the rules: the frame is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    /// The chain holds fewer bytes than the header.
    #[error("chain of {len} bytes is shorter than the {hdr_len}-byte virtio-net header")]
    Short {
        /// Bytes in the chain.
        len: usize,
        /// Header size.
        hdr_len: usize,
    },
    /// `flags` has bits other than NEEDS_CSUM.
    #[error("header flags {0:#x} are not valid on the transmit queue")]
    Flags(u8),
    /// NEEDS_CSUM without VIRTIO_NET_F_CSUM.
    #[error("NEEDS_CSUM set but VIRTIO_NET_F_CSUM is not negotiated")]
    CsumNotNegotiated,
    /// The checksum location lies outside the frame.
    #[error("checksum at {start}+{offset} is outside the {len}-byte frame")]
    CsumRange {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length in bytes.
        len: usize,
    },
    /// An unknown `gso_type`, or one (UDP, ECN) this device does not offer.
    #[error("gso_type {0:#x} is not supported")]
    GsoType(u8),
    /// A GSO type whose HOST_TSO feature is not negotiated.
    #[error("gso_type {0:#x} used but its HOST_TSO feature is not negotiated")]
    GsoNotNegotiated(u8),
    /// A GSO frame with `gso_size` 0.
    #[error("gso_size 0 with gso_type {0:#x}")]
    GsoSize(u8),
    /// Shorter than an Ethernet header.
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    FrameShort(usize),
    /// Longer than the MTU (or the GSO limit) allows.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Frame length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
}

impl NetHdr {
    /// Parses the first 10 or 12 bytes of `bytes` (`num_buffers` is read only when `bytes`
    /// has 12, else 1).
    ///
    /// # Errors
    /// [`HdrError::Short`] when `bytes` has fewer than 10 bytes.
    pub fn parse(bytes: &[u8]) -> Result<NetHdr, HdrError> {
        let short = HdrError::Short {
            len: bytes.len(),
            hdr_len: LEGACY_HDR_LEN,
        };
        let b = bytes.get(..LEGACY_HDR_LEN).ok_or(short)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let num_buffers = bytes
            .get(10..12)
            .map_or(1, |n| u16::from_le_bytes([n[0], n[1]]));
        Ok(NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers,
        })
    }

    /// The 12-byte wire form; the legacy form is its first 10 bytes.
    ///
    /// Assembled as two little-endian integers (bytes 0..8 and 8..12) and stored as such: a
    /// caller that copies the result as an 8-byte and a 4-byte load then reads what two stores
    /// wrote. Stored field by field, each of those loads spanned several narrower stores, which
    /// the store buffer cannot forward (the load waits until they reach the cache).
    #[inline]
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let low = u64::from(self.flags)
            | u64::from(self.gso_type) << 8
            | u64::from(self.hdr_len) << 16
            | u64::from(self.gso_size) << 32
            | u64::from(self.csum_start) << 48;
        let high = u32::from(self.csum_offset) | u32::from(self.num_buffers) << 16;
        let mut b = [0u8; HDR_LEN];
        b[..8].copy_from_slice(&low.to_le_bytes());
        b[8..].copy_from_slice(&high.to_le_bytes());
        b
    }

    /// Whether the checksum is left to the receiver (NEEDS_CSUM).
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// The segmentation offload, for a header that passed [`NetHdr::check_tx`].
    pub fn gso(&self) -> Gso {
        match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_TCPV4 => Gso::TcpV4,
            VIRTIO_NET_HDR_GSO_TCPV6 => Gso::TcpV6,
            _ => Gso::None,
        }
    }

    /// Checks a header the driver put on the transmit queue in front of a `frame_len`-byte
    /// frame (virtio 1.2 §5.1.6.2): known flags and GSO types only, offloads only if
    /// negotiated, the checksum location inside the frame, the size within `limits`.
    ///
    /// # Errors
    /// The first rule broken, as a [`HdrError`].
    pub fn check_tx(&self, frame_len: usize, limits: &TxLimits) -> Result<(), HdrError> {
        if self.flags & !F_NEEDS_CSUM != 0 {
            return Err(HdrError::Flags(self.flags));
        }
        if frame_len < ETH_HLEN {
            return Err(HdrError::FrameShort(frame_len));
        }
        if self.needs_csum() {
            if !limits.csum {
                return Err(HdrError::CsumNotNegotiated);
            }
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(HdrError::CsumRange {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len: frame_len,
                });
            }
        }
        if self.gso_type & VIRTIO_NET_HDR_GSO_ECN as u8 != 0 {
            return Err(HdrError::GsoType(self.gso_type));
        }
        let max = match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => limits.max_frame,
            VIRTIO_NET_HDR_GSO_TCPV4 if !limits.tso4 => {
                return Err(HdrError::GsoNotNegotiated(self.gso_type))
            }
            VIRTIO_NET_HDR_GSO_TCPV6 if !limits.tso6 => {
                return Err(HdrError::GsoNotNegotiated(self.gso_type))
            }
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 if self.gso_size == 0 => {
                return Err(HdrError::GsoSize(self.gso_type))
            }
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => MAX_GSO_FRAME,
            _ => return Err(HdrError::GsoType(self.gso_type)),
        };
        if frame_len > max {
            return Err(HdrError::FrameTooLarge {
                len: frame_len,
                max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use virtio_bindings::virtio_net::{virtio_net_hdr_v1, VIRTIO_NET_HDR_GSO_UDP};

    use super::*;

    const ALL: TxLimits = TxLimits {
        csum: true,
        tso4: true,
        tso6: true,
        max_frame: 1518,
    };

    fn tso4(gso_size: u16) -> NetHdr {
        NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len: 54,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn wire_form_matches_the_binding_layout() {
        assert_eq!(std::mem::size_of::<virtio_net_hdr_v1>(), HDR_LEN);
        let h = NetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 0x090a,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9]);
        assert_eq!(NetHdr::parse(&b).unwrap(), h);
        let legacy = NetHdr::parse(&b[..LEGACY_HDR_LEN]).unwrap();
        assert_eq!(
            legacy,
            NetHdr {
                num_buffers: 1,
                ..h
            }
        );
        assert_eq!(
            NetHdr::parse(&b[..9]),
            Err(HdrError::Short {
                len: 9,
                hdr_len: LEGACY_HDR_LEN
            })
        );
    }

    #[test]
    fn valid_transmit_headers() {
        assert_eq!(NetHdr::default().check_tx(60, &ALL), Ok(()));
        assert_eq!(NetHdr::default().check_tx(1518, &ALL), Ok(()));
        assert_eq!(tso4(1448).check_tx(65_000, &ALL), Ok(()));
        assert_eq!(tso4(1448).gso(), Gso::TcpV4);
        let csum = NetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        assert_eq!(csum.check_tx(42, &ALL), Ok(()));
    }

    #[test]
    fn invalid_transmit_headers() {
        let none = TxLimits {
            csum: false,
            tso4: false,
            tso6: false,
            max_frame: 1518,
        };
        assert_eq!(
            NetHdr::default().check_tx(1519, &ALL),
            Err(HdrError::FrameTooLarge {
                len: 1519,
                max: 1518
            })
        );
        assert_eq!(
            NetHdr::default().check_tx(13, &ALL),
            Err(HdrError::FrameShort(13))
        );
        assert_eq!(
            tso4(1448).check_tx(3000, &none),
            Err(HdrError::CsumNotNegotiated)
        );
        let no_csum_tso = NetHdr {
            flags: 0,
            ..tso4(1448)
        };
        assert_eq!(
            no_csum_tso.check_tx(3000, &none),
            Err(HdrError::GsoNotNegotiated(1))
        );
        assert_eq!(tso4(0).check_tx(3000, &ALL), Err(HdrError::GsoSize(1)));
        assert!(matches!(
            tso4(1448).check_tx(MAX_GSO_FRAME + 1, &ALL),
            Err(HdrError::FrameTooLarge { .. })
        ));
        let udp = NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_UDP as u8,
            ..tso4(1448)
        };
        assert_eq!(udp.check_tx(3000, &ALL), Err(HdrError::GsoType(3)));
        let ecn = NetHdr {
            gso_type: 0x81,
            ..tso4(1448)
        };
        assert_eq!(ecn.check_tx(3000, &ALL), Err(HdrError::GsoType(0x81)));
        let flags = NetHdr {
            flags: F_DATA_VALID,
            ..Default::default()
        };
        assert_eq!(flags.check_tx(60, &ALL), Err(HdrError::Flags(2)));
        let csum = NetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 40,
            csum_offset: 16,
            ..Default::default()
        };
        assert!(matches!(
            csum.check_tx(57, &ALL),
            Err(HdrError::CsumRange { .. })
        ));
    }

    proptest! {
        /// Any 12 bytes parse, and a header that passes the check keeps its checksum field and
        /// size inside the frame.
        #[test]
        fn any_bytes_parse_and_checked_headers_are_in_range(
            bytes in any::<[u8; 12]>(), frame_len in 0usize..70_000,
        ) {
            let h = NetHdr::parse(&bytes).unwrap();
            prop_assert_eq!(h.to_bytes(), bytes);
            if h.check_tx(frame_len, &ALL).is_ok() {
                prop_assert!(frame_len >= ETH_HLEN);
                prop_assert!(frame_len <= MAX_GSO_FRAME);
                if h.needs_csum() {
                    prop_assert!(usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= frame_len);
                }
                if h.gso() == Gso::None {
                    prop_assert!(frame_len <= ALL.max_frame);
                    prop_assert_eq!(h.gso_type, 0);
                }
            }
        }
    }
}
