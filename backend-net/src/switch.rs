//! Switch mode: a learning L2 switch between the front-ends of all ports, like a Linux bridge
//! joining Xen netback interfaces in Dom0.
//!
//! A transmitted frame's source address is learned for its port; the frame goes to the port
//! that owns its destination, or floods to every other connected port for group and unknown
//! addresses. Each receiver's filter (control queue) is applied. Offloads pass untouched when
//! the receiver acked them (GUEST_CSUM for NEEDS_CSUM, GUEST_TSO4/6 for TCP segmentation);
//! otherwise the switch completes the checksum or segments the frame in software.

use std::sync::Arc;

use crate::device::Acked;
use crate::fdb::{Fdb, Forward, PortId};
use crate::guest::Cursor;
use crate::hdr::{Gso, NetHdr};
use crate::mac::{MacAddr, ETH_HLEN};
use crate::offload::{complete_checksum, segment_tcp};
use crate::port::Port;
use crate::rx::{Payload, RxFrame};
use crate::stats::Drop;

/// The ports and their shared learning table.
#[derive(Debug)]
pub struct Switch {
    ports: Vec<Arc<Port>>,
    fdb: Fdb,
}

/// A receive queue that got frames in this batch: (port, queue pair).
pub type Touched = Vec<(PortId, usize)>;

/// Whether a driver that acked `acked` can take a frame with header `hdr` as it is.
pub fn offloads_acked(hdr: &NetHdr, acked: Acked) -> bool {
    let gso_ok = match hdr.gso() {
        Gso::None => true,
        Gso::TcpV4 => acked.guest_tso4() && acked.guest_csum(),
        Gso::TcpV6 => acked.guest_tso6() && acked.guest_csum(),
    };
    gso_ok && (!hdr.needs_csum() || acked.guest_csum())
}

impl Switch {
    /// A switch over `ports`.
    pub fn new(ports: Vec<Arc<Port>>) -> Switch {
        Switch {
            ports,
            fdb: Fdb::new(),
        }
    }

    /// The ports.
    pub fn ports(&self) -> &[Arc<Port>] {
        &self.ports
    }

    /// The learning table.
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// A front-end left `port`: its stations are forgotten.
    pub fn port_gone(&self, port: PortId) {
        self.fdb.forget_port(port);
    }

    /// Forwards one checked frame of `len` bytes (`frame` is at its first byte) that port
    /// `from` transmitted on queue pair `q`. Receive queues that got frames are added to
    /// `touched` for the caller to notify once per batch.
    pub fn forward(
        &self,
        from: &Port,
        q: usize,
        hdr: &NetHdr,
        frame: Cursor<'_, '_>,
        len: usize,
        touched: &mut Touched,
    ) {
        let mut eth = [0u8; ETH_HLEN];
        frame.clone().read(&mut eth);
        let (Some(dst), Some(src)) = (MacAddr::destination(&eth), MacAddr::source(&eth)) else {
            return;
        };
        self.fdb.learn(src, from.id);
        let targets: Vec<&Arc<Port>> = match self.fdb.forward(from.id, dst) {
            Forward::Port(p) => self.ports.get(p).into_iter().collect(),
            Forward::Flood => self.ports.iter().filter(|p| p.id != from.id).collect(),
            Forward::Local => Vec::new(),
        };
        let mut local: Option<Vec<u8>> = None;
        let mut delivered_anywhere = false;
        for target in targets {
            let state = target.state();
            if !state.connected {
                continue;
            }
            let Some((tq, rxq)) = target.pick_rx_queue(q, state.active_pairs) else {
                target.stats.queue(0).drop(Drop::RxNoBuffers);
                continue;
            };
            let stats = target.stats.queue(tq);
            if !state.filter.accepts(dst) {
                stats.drop(Drop::RxFiltered);
                continue;
            }
            delivered_anywhere = true;
            if offloads_acked(hdr, state.acked) {
                let rx_hdr = NetHdr {
                    num_buffers: 0,
                    ..*hdr
                };
                let f = RxFrame {
                    hdr: rx_hdr,
                    payload: Payload::Guest(frame.clone()),
                    len,
                };
                rxq.offer(state.acked, &f, stats);
            } else {
                let bytes = local.get_or_insert_with(|| {
                    let mut v = vec![0u8; len];
                    let n = frame.clone().read(&mut v);
                    v.truncate(n);
                    v
                });
                match software_offload(hdr, bytes) {
                    Ok(frames) => {
                        for f in &frames {
                            rxq.offer(state.acked, &RxFrame::local(NetHdr::default(), f), stats);
                        }
                    }
                    Err(e) => {
                        log::debug!("port {}: {e}", from.id);
                        from.stats.queue(q).drop(Drop::TxOffload);
                        continue;
                    }
                }
            }
            if !touched.contains(&(target.id, tq)) {
                touched.push((target.id, tq));
            }
        }
        if delivered_anywhere {
            from.stats.queue(q).tx(len);
        } else {
            from.stats.queue(q).drop(Drop::TxNoDestination);
        }
    }

    /// Notifies every receive queue in `touched` (once each) and empties it.
    pub fn notify(&self, touched: &mut Touched) {
        for (p, q) in touched.drain(..) {
            if let Some(rxq) = self.ports.get(p).and_then(|port| port.rx_queue(q)) {
                rxq.notify();
            }
        }
    }
}

/// The frames to deliver instead of `frame` to a driver without its offloads: the segments of
/// a GSO frame, or the frame with its checksum completed. Each has complete checksums.
fn software_offload(
    hdr: &NetHdr,
    frame: &[u8],
) -> Result<Vec<Vec<u8>>, crate::offload::OffloadError> {
    if hdr.gso() != Gso::None {
        return segment_tcp(frame, hdr);
    }
    let mut f = frame.to_vec();
    if hdr.needs_csum() {
        complete_checksum(&mut f, hdr.csum_start, hdr.csum_offset)?;
    }
    Ok(vec![f])
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    };

    use super::*;
    use crate::hdr::F_NEEDS_CSUM;
    use crate::offload::tests::tcp4_frame;

    #[test]
    fn offload_compatibility() {
        let csum = NetHdr {
            flags: F_NEEDS_CSUM,
            ..Default::default()
        };
        let tso4 = NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            gso_size: 1000,
            ..csum
        };
        let tso6 = NetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
            gso_size: 1000,
            ..csum
        };
        let none = Acked(0);
        let c = Acked(1 << VIRTIO_NET_F_GUEST_CSUM);
        let c4 = Acked(c.0 | 1 << VIRTIO_NET_F_GUEST_TSO4);
        let c6 = Acked(c.0 | 1 << VIRTIO_NET_F_GUEST_TSO6);
        assert!(offloads_acked(&NetHdr::default(), none));
        assert!(!offloads_acked(&csum, none) && offloads_acked(&csum, c));
        assert!(
            !offloads_acked(&tso4, c) && offloads_acked(&tso4, c4) && !offloads_acked(&tso4, c6)
        );
        assert!(offloads_acked(&tso6, c6) && !offloads_acked(&tso6, c4));
    }

    #[test]
    fn software_offload_segments_or_checksums() {
        let frame = tcp4_frame(&[5u8; 3000]);
        let tso = NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            gso_size: 1000,
            ..Default::default()
        };
        assert_eq!(software_offload(&tso, &frame).unwrap().len(), 3);
        let mut partial = frame.clone();
        partial[50..52].copy_from_slice(&[0, 0]);
        let csum = NetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        let out = software_offload(&csum, &partial).unwrap();
        assert_eq!(out.len(), 1);
        assert_ne!(&out[0][50..52], &[0, 0]);
        assert_eq!(
            software_offload(&NetHdr::default(), &frame).unwrap(),
            vec![frame]
        );
    }
}
