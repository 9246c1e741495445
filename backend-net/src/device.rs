//! What the virtio-net device offers (virtio 1.2 §5.1.3): feature bits, the configuration space
//! (`struct virtio_net_config`, §5.1.4), and what follows from the features the driver acked:
//! header size, transmit limits, receive offloads, and the TAP offload flags.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::ByteValued;

use crate::hdr::{TxLimits, HDR_LEN, LEGACY_HDR_LEN, MAX_GSO_FRAME, VLAN_HLEN};
use crate::mac::{MacAddr, ETH_HLEN};

/// The virtio feature bits offered, by spec name. VIRTIO_F_IN_ORDER (virtio 1.2 §2.7.9): both
/// queues use their chains in the order the driver made them available, one used element per
/// chain (frames go into receive chains in order, and chains taken but not used are given back
/// as the last ones taken; transmit chains come back as they were taken, dropped ones
/// included), so a driver that acks it may keep its own ring state in step with the used ring
/// (DPDK's in-order paths read a used element's `len`, not its `id`).
pub const OFFERED_FEATURES: [u32; 19] = [
    VIRTIO_F_VERSION_1,
    VIRTIO_F_IN_ORDER,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_MQ,
];

/// Bytes of the configuration space served: `struct virtio_net_config`.
pub const CONFIG_SPACE_BYTES: usize = std::mem::size_of::<virtio_net_config>();

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The feature word offered in VHOST_USER_GET_FEATURES: [`OFFERED_FEATURES`] plus
/// VHOST_USER_F_PROTOCOL_FEATURES (bit 30); VIRTIO_NET_F_MQ only with more than one pair.
pub fn features(queue_pairs: u16) -> u64 {
    let mut f = OFFERED_FEATURES.iter().fold(
        VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        |acc, &b| acc | bit(b),
    );
    if queue_pairs == 1 {
        f &= !bit(VIRTIO_NET_F_MQ);
    }
    f
}

/// The device's protocol features: MQ, CONFIG (vhost-user.rst); vhost-daemon adds its own
/// (REPLY_ACK).
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
}

/// `struct virtio_net_config` as guest-visible bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(transparent)]
struct ConfigSpace(virtio_net_config);

// SAFETY: virtio_net_config is a packed repr(C) struct of integers and byte arrays: plain old
// data with no padding and no invalid bit patterns.
unsafe impl ByteValued for ConfigSpace {}

/// The configuration space of one port: `mac`, `status` (link up), `max_virtqueue_pairs`, `mtu`,
/// little-endian (VERSION_1).
pub fn config_space(mac: MacAddr, queue_pairs: u16, mtu: u16) -> Vec<u8> {
    let c = virtio_net_config {
        mac: mac.0,
        status: (VIRTIO_NET_S_LINK_UP as u16).to_le(),
        max_virtqueue_pairs: queue_pairs.to_le(),
        mtu: mtu.to_le(),
        ..Default::default()
    };
    ConfigSpace(c).as_slice().to_vec()
}

/// `size` bytes of `config` from byte `offset`, as VHOST_USER_GET_CONFIG returns them: bytes
/// past the end read as zero, so any offset and size are answered without panicking.
pub fn config_window(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = offset as usize;
    (start..start.saturating_add(size as usize))
        .map(|i| config.get(i).copied().unwrap_or(0))
        .collect()
}

/// The features a driver acked (VHOST_USER_SET_FEATURES) and what follows from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acked(pub u64);

impl Acked {
    /// Whether feature bit `b` was acked.
    pub fn has(&self, b: u32) -> bool {
        self.0 & bit(b) != 0
    }

    /// Bytes of the virtio-net header: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub fn hdr_len(&self) -> usize {
        if self.has(VIRTIO_F_VERSION_1) || self.has(VIRTIO_NET_F_MRG_RXBUF) {
            HDR_LEN
        } else {
            LEGACY_HDR_LEN
        }
    }

    /// VIRTIO_NET_F_MRG_RXBUF: a received frame may span several buffers.
    pub fn mrg_rxbuf(&self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    /// VIRTIO_NET_F_GUEST_CSUM: received frames may carry NEEDS_CSUM.
    pub fn guest_csum(&self) -> bool {
        self.has(VIRTIO_NET_F_GUEST_CSUM)
    }

    /// VIRTIO_NET_F_GUEST_TSO4.
    pub fn guest_tso4(&self) -> bool {
        self.has(VIRTIO_NET_F_GUEST_TSO4)
    }

    /// VIRTIO_NET_F_GUEST_TSO6.
    pub fn guest_tso6(&self) -> bool {
        self.has(VIRTIO_NET_F_GUEST_TSO6)
    }

    /// The index of the control virtqueue for a device offering `max_pairs` queue pairs
    /// (virtio 1.2 §5.1.2): after the last pair the negotiated features allow, so
    /// 2 × `max_pairs` with VIRTIO_NET_F_MQ and 2 without it (one pair), as QEMU and Linux place
    /// it.
    pub fn ctrl_queue(&self, max_pairs: u16) -> usize {
        if self.has(VIRTIO_NET_F_MQ) {
            2 * usize::from(max_pairs)
        } else {
            2
        }
    }

    /// Queue pairs the driver may use at most: `max_pairs` with VIRTIO_NET_F_MQ, else 1.
    pub fn usable_pairs(&self, max_pairs: u16) -> u16 {
        if self.has(VIRTIO_NET_F_MQ) {
            max_pairs
        } else {
            1
        }
    }

    /// Transmit rules for a device with this `mtu` (bytes).
    pub fn tx_limits(&self, mtu: u16) -> TxLimits {
        TxLimits {
            csum: self.has(VIRTIO_NET_F_CSUM),
            tso4: self.has(VIRTIO_NET_F_HOST_TSO4),
            tso6: self.has(VIRTIO_NET_F_HOST_TSO6),
            max_frame: max_frame(mtu),
        }
    }

    /// Largest frame (without the virtio-net header) that may be received: a GSO frame when a
    /// GUEST_TSO feature is acked, else MTU-sized.
    pub fn max_rx_frame(&self, mtu: u16) -> usize {
        if self.guest_tso4() || self.guest_tso6() {
            MAX_GSO_FRAME
        } else {
            max_frame(mtu)
        }
    }

    /// The TUNSETOFFLOAD flags matching the receive offloads the driver acked: what the TAP
    /// may hand over unsegmented or without checksum (`TUN_F_*`, linux/if_tun.h).
    pub fn tun_offloads(&self) -> u32 {
        let mut f = 0;
        if self.guest_csum() {
            f |= libc::TUN_F_CSUM;
            if self.guest_tso4() {
                f |= libc::TUN_F_TSO4;
            }
            if self.guest_tso6() {
                f |= libc::TUN_F_TSO6;
            }
        }
        f
    }
}

/// MTU plus Ethernet and VLAN headers, bytes.
pub fn max_frame(mtu: u16) -> usize {
    usize::from(mtu) + ETH_HLEN + VLAN_HLEN
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn offered_features() {
        let f = features(2);
        for b in OFFERED_FEATURES {
            assert_ne!(f & bit(b), 0, "bit {b}");
        }
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert_eq!(features(1) & bit(VIRTIO_NET_F_MQ), 0);
        assert_eq!(
            f & bit(virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_UFO),
            0
        );
    }

    #[test]
    fn config_space_layout() {
        let c = config_space(MacAddr([2, 0, 0, 0, 0, 7]), 4, 9000);
        assert_eq!(c.len(), CONFIG_SPACE_BYTES);
        assert_eq!(&c[..6], &[2, 0, 0, 0, 0, 7]);
        let at = |o: usize| u16::from_le_bytes([c[o], c[o + 1]]);
        assert_eq!(at(offset_of!(virtio_net_config, status)), 1);
        assert_eq!(at(offset_of!(virtio_net_config, max_virtqueue_pairs)), 4);
        assert_eq!(at(offset_of!(virtio_net_config, mtu)), 9000);
        assert_eq!(config_window(&c, 6, 2), vec![1, 0]);
        assert_eq!(config_window(&c, u32::MAX, 3), vec![0; 3]);
        assert_eq!(config_window(&c, 20, 8).len(), 8);
    }

    #[test]
    fn acked_feature_consequences() {
        let legacy = Acked(0);
        assert_eq!(legacy.hdr_len(), LEGACY_HDR_LEN);
        assert_eq!(legacy.tun_offloads(), 0);
        assert_eq!(legacy.max_rx_frame(1500), 1518);
        let modern = Acked(
            bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4),
        );
        assert_eq!(modern.hdr_len(), HDR_LEN);
        assert_eq!(modern.tun_offloads(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        assert_eq!(modern.max_rx_frame(1500), MAX_GSO_FRAME);
        let tso_without_csum = Acked(bit(VIRTIO_NET_F_GUEST_TSO6));
        assert_eq!(tso_without_csum.tun_offloads(), 0);
        assert_eq!(Acked(bit(VIRTIO_NET_F_MRG_RXBUF)).hdr_len(), HDR_LEN);
        let l = Acked(bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO6)).tx_limits(9000);
        assert!(l.csum && !l.tso4 && l.tso6);
        assert_eq!(l.max_frame, 9018);
    }
}
