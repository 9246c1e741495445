//! The control virtqueue (virtio 1.2 §5.1.6.5): commands and the receive filter they set.
//!
//! A command is `class u8, command u8, data...` in device-readable buffers and one
//! device-writable `ack u8` (VIRTIO_NET_OK or VIRTIO_NET_ERR). Supported: VIRTIO_NET_CTRL_RX
//! (PROMISC, ALLMULTI and, with CTRL_RX_EXTRA, ALLUNI, NOMULTI, NOUNI, NOBCAST),
//! VIRTIO_NET_CTRL_MAC (TABLE_SET, ADDR_SET) and VIRTIO_NET_CTRL_MQ (VQ_PAIRS_SET). Anything
//! else, or a command whose feature is not negotiated, answers VIRTIO_NET_ERR.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_ALLUNI, VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_NOMULTI, VIRTIO_NET_CTRL_RX_NOUNI, VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_ERR, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_MQ, VIRTIO_NET_OK,
};

use crate::device::Acked;
use crate::mac::MacAddr;

/// Ack byte: the command was carried out.
pub const ACK_OK: u8 = VIRTIO_NET_OK as u8;
/// Ack byte: the command was refused.
pub const ACK_ERR: u8 = VIRTIO_NET_ERR as u8;
/// Most addresses kept per MAC filter table (unicast, multicast); a longer table makes the
/// filter accept every address of that kind, as QEMU does.
pub const MAC_TABLE_ENTRIES: usize = 64;
/// Most bytes of command (class, command, data) read from a chain: two full-size MAC tables
/// with their counts fit easily.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// One of the VIRTIO_NET_CTRL_RX switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxMode {
    /// Receive every frame.
    Promisc,
    /// Receive every multicast frame.
    AllMulti,
    /// Receive every unicast frame.
    AllUni,
    /// Receive no multicast frame.
    NoMulti,
    /// Receive no unicast frame.
    NoUni,
    /// Receive no broadcast frame.
    NoBcast,
}

/// A parsed control command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// VIRTIO_NET_CTRL_RX: switch a receive mode on or off.
    Rx(RxMode, bool),
    /// VIRTIO_NET_CTRL_MAC_TABLE_SET: the unicast and multicast address filters.
    MacTable {
        /// Extra unicast addresses to receive.
        unicast: Vec<MacAddr>,
        /// Multicast addresses to receive.
        multicast: Vec<MacAddr>,
    },
    /// VIRTIO_NET_CTRL_MAC_ADDR_SET: the device's own address.
    MacAddr(MacAddr),
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: how many queue pairs the driver uses.
    QueuePairs(u16),
}

/// Why a command is refused with VIRTIO_NET_ERR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    /// Fewer than the two class and command bytes.
    #[error("control command of {0} bytes lacks class and command")]
    Short(usize),
    /// Unknown class or command, or its feature is not negotiated.
    #[error("control class {class} command {command} is not supported")]
    Unsupported {
        /// The class byte.
        class: u8,
        /// The command byte.
        command: u8,
    },
    /// The data does not have the command's shape.
    #[error("control class {class} command {command}: malformed data of {len} bytes")]
    BadData {
        /// The class byte.
        class: u8,
        /// The command byte.
        command: u8,
        /// Data bytes.
        len: usize,
    },
    /// VQ_PAIRS_SET outside 1..=max.
    #[error("{pairs} queue pairs requested, the device has {max}")]
    QueuePairs {
        /// Requested.
        pairs: u16,
        /// Offered.
        max: u16,
    },
}

/// Parses `bytes` (class, command, data) for a driver that acked `acked`, on a device with
/// `max_pairs` queue pairs.
///
/// # Errors
/// [`CtrlError`]; the caller answers VIRTIO_NET_ERR.
pub fn parse(bytes: &[u8], acked: Acked, max_pairs: u16) -> Result<Command, CtrlError> {
    let [class, command, data @ ..] = bytes else {
        return Err(CtrlError::Short(bytes.len()));
    };
    let (class, command) = (*class, *command);
    let unsupported = CtrlError::Unsupported { class, command };
    let bad = CtrlError::BadData {
        class,
        command,
        len: data.len(),
    };
    match (u32::from(class), u32::from(command)) {
        (VIRTIO_NET_CTRL_RX, c) if acked.has(VIRTIO_NET_F_CTRL_RX) => {
            let mode = rx_mode(c, acked).ok_or(unsupported)?;
            match data {
                [on] => Ok(Command::Rx(mode, *on != 0)),
                _ => Err(bad),
            }
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) if acked.has(VIRTIO_NET_F_CTRL_RX) => {
            let (unicast, rest) = mac_table(data).ok_or(bad.clone())?;
            let (multicast, rest) = mac_table(rest).ok_or(bad.clone())?;
            if !rest.is_empty() {
                return Err(bad);
            }
            Ok(Command::MacTable { unicast, multicast })
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET)
            if acked.has(VIRTIO_NET_F_CTRL_MAC_ADDR) =>
        {
            let mac: [u8; 6] = data.try_into().map_err(|_| bad)?;
            Ok(Command::MacAddr(MacAddr(mac)))
        }
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if acked.has(VIRTIO_NET_F_MQ) => {
            let pairs = u16::from_le_bytes(data.try_into().map_err(|_| bad)?);
            if pairs == 0 || pairs > max_pairs {
                return Err(CtrlError::QueuePairs {
                    pairs,
                    max: max_pairs,
                });
            }
            Ok(Command::QueuePairs(pairs))
        }
        _ => Err(unsupported),
    }
}

fn rx_mode(command: u32, acked: Acked) -> Option<RxMode> {
    let extra = acked.has(VIRTIO_NET_F_CTRL_RX_EXTRA);
    Some(match command {
        VIRTIO_NET_CTRL_RX_PROMISC => RxMode::Promisc,
        VIRTIO_NET_CTRL_RX_ALLMULTI => RxMode::AllMulti,
        VIRTIO_NET_CTRL_RX_ALLUNI if extra => RxMode::AllUni,
        VIRTIO_NET_CTRL_RX_NOMULTI if extra => RxMode::NoMulti,
        VIRTIO_NET_CTRL_RX_NOUNI if extra => RxMode::NoUni,
        VIRTIO_NET_CTRL_RX_NOBCAST if extra => RxMode::NoBcast,
        _ => return None,
    })
}

/// One `struct virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6]; }` from the front of
/// `data`, and what follows it.
fn mac_table(data: &[u8]) -> Option<(Vec<MacAddr>, &[u8])> {
    let (count, rest) = data.split_first_chunk::<4>()?;
    let count = usize::try_from(u32::from_le_bytes(*count)).ok()?;
    let bytes = count.checked_mul(6)?;
    let (macs, rest) = rest.split_at_checked(bytes)?;
    let table = macs
        .chunks_exact(6)
        .filter_map(|m| m.try_into().ok().map(MacAddr))
        .collect();
    Some((table, rest))
}

/// Which frames the driver wants (virtio 1.2 §5.1.6.5.1 and §5.1.6.5.2). A device starts
/// promiscuous, as QEMU's does: a driver without VIRTIO_NET_F_CTRL_RX gets every frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFilter {
    mac: MacAddr,
    promisc: bool,
    all_multi: bool,
    all_uni: bool,
    no_multi: bool,
    no_uni: bool,
    no_bcast: bool,
    unicast: Vec<MacAddr>,
    multicast: Vec<MacAddr>,
    unicast_overflow: bool,
    multicast_overflow: bool,
}

impl RxFilter {
    /// The reset state for a device whose address is `mac`: promiscuous, empty tables.
    pub fn new(mac: MacAddr) -> RxFilter {
        RxFilter {
            mac,
            promisc: true,
            all_multi: false,
            all_uni: false,
            no_multi: false,
            no_uni: false,
            no_bcast: false,
            unicast: Vec::new(),
            multicast: Vec::new(),
            unicast_overflow: false,
            multicast_overflow: false,
        }
    }

    /// The device's own address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Whether a frame to `dst` is delivered.
    pub fn accepts(&self, dst: MacAddr) -> bool {
        if self.promisc {
            return true;
        }
        if dst.is_broadcast() {
            return !self.no_bcast;
        }
        if dst.is_multicast() {
            return !self.no_multi
                && (self.all_multi || self.multicast_overflow || self.multicast.contains(&dst));
        }
        !self.no_uni
            && (self.all_uni
                || self.unicast_overflow
                || dst == self.mac
                || self.unicast.contains(&dst))
    }

    /// Carries out a filter command (not [`Command::QueuePairs`], which is the data path's).
    pub fn apply(&mut self, command: &Command) {
        match command {
            Command::Rx(mode, on) => {
                let flag = match mode {
                    RxMode::Promisc => &mut self.promisc,
                    RxMode::AllMulti => &mut self.all_multi,
                    RxMode::AllUni => &mut self.all_uni,
                    RxMode::NoMulti => &mut self.no_multi,
                    RxMode::NoUni => &mut self.no_uni,
                    RxMode::NoBcast => &mut self.no_bcast,
                };
                *flag = *on;
            }
            Command::MacTable { unicast, multicast } => {
                self.unicast_overflow = unicast.len() > MAC_TABLE_ENTRIES;
                self.multicast_overflow = multicast.len() > MAC_TABLE_ENTRIES;
                self.unicast = unicast.iter().copied().take(MAC_TABLE_ENTRIES).collect();
                self.multicast = multicast.iter().copied().take(MAC_TABLE_ENTRIES).collect();
            }
            Command::MacAddr(mac) => self.mac = *mac,
            Command::QueuePairs(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ALL: Acked = Acked(
        1 << VIRTIO_NET_F_CTRL_RX
            | 1 << VIRTIO_NET_F_CTRL_RX_EXTRA
            | 1 << VIRTIO_NET_F_CTRL_MAC_ADDR
            | 1 << VIRTIO_NET_F_MQ,
    );
    const OWN: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
    const MCAST: MacAddr = MacAddr([1, 0, 0x5e, 0, 0, 1]);

    fn table(macs: &[MacAddr]) -> Vec<u8> {
        let mut v = (macs.len() as u32).to_le_bytes().to_vec();
        macs.iter().for_each(|m| v.extend_from_slice(&m.0));
        v
    }

    #[test]
    fn parses_supported_commands() {
        assert_eq!(
            parse(&[0, 0, 1], ALL, 4),
            Ok(Command::Rx(RxMode::Promisc, true))
        );
        assert_eq!(
            parse(&[0, 5, 0], ALL, 4),
            Ok(Command::Rx(RxMode::NoBcast, false))
        );
        let mut mac_table = vec![1, 0];
        mac_table.extend(table(&[OTHER]));
        mac_table.extend(table(&[MCAST, MCAST]));
        assert_eq!(
            parse(&mac_table, ALL, 4),
            Ok(Command::MacTable {
                unicast: vec![OTHER],
                multicast: vec![MCAST, MCAST]
            })
        );
        assert_eq!(
            parse(&[1, 1, 2, 0, 0, 0, 0, 9], ALL, 4),
            Ok(Command::MacAddr(MacAddr([2, 0, 0, 0, 0, 9])))
        );
        assert_eq!(parse(&[4, 0, 3, 0], ALL, 4), Ok(Command::QueuePairs(3)));
    }

    #[test]
    fn refuses_the_rest() {
        assert_eq!(parse(&[0], ALL, 4), Err(CtrlError::Short(1)));
        assert!(matches!(
            parse(&[0, 6, 1], ALL, 4),
            Err(CtrlError::Unsupported { .. })
        ));
        assert!(
            matches!(
                parse(&[2, 0, 1, 0], ALL, 4),
                Err(CtrlError::Unsupported { .. })
            ),
            "VLAN"
        );
        assert!(
            matches!(parse(&[3, 0], ALL, 4), Err(CtrlError::Unsupported { .. })),
            "ANNOUNCE"
        );
        assert!(matches!(
            parse(&[0, 0, 1, 1], ALL, 4),
            Err(CtrlError::BadData { .. })
        ));
        assert!(matches!(
            parse(&[0, 0], ALL, 4),
            Err(CtrlError::BadData { .. })
        ));
        assert!(matches!(
            parse(&[0, 0, 1], Acked(0), 4),
            Err(CtrlError::Unsupported { .. })
        ));
        let no_extra = Acked(1 << VIRTIO_NET_F_CTRL_RX);
        assert!(matches!(
            parse(&[0, 2, 1], no_extra, 4),
            Err(CtrlError::Unsupported { .. })
        ));
        assert_eq!(
            parse(&[4, 0, 5, 0], ALL, 4),
            Err(CtrlError::QueuePairs { pairs: 5, max: 4 })
        );
        assert_eq!(
            parse(&[4, 0, 0, 0], ALL, 4),
            Err(CtrlError::QueuePairs { pairs: 0, max: 4 })
        );
        let mut short_table = vec![1, 0];
        short_table.extend(&2u32.to_le_bytes());
        short_table.extend(&OTHER.0);
        assert!(matches!(
            parse(&short_table, ALL, 4),
            Err(CtrlError::BadData { .. })
        ));
        let mut trailing = vec![1, 0];
        trailing.extend(table(&[]));
        trailing.extend(table(&[]));
        trailing.push(0);
        assert!(matches!(
            parse(&trailing, ALL, 4),
            Err(CtrlError::BadData { .. })
        ));
        let mut huge = vec![1, 0];
        huge.extend(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&huge, ALL, 4),
            Err(CtrlError::BadData { .. })
        ));
    }

    #[test]
    fn filter_follows_the_commands() {
        let mut f = RxFilter::new(OWN);
        assert!(
            f.accepts(OTHER) && f.accepts(MCAST),
            "promiscuous after reset"
        );
        f.apply(&Command::Rx(RxMode::Promisc, false));
        assert!(f.accepts(OWN) && f.accepts(MacAddr::BROADCAST));
        assert!(!f.accepts(OTHER) && !f.accepts(MCAST));
        f.apply(&Command::MacTable {
            unicast: vec![OTHER],
            multicast: vec![MCAST],
        });
        assert!(f.accepts(OTHER) && f.accepts(MCAST));
        f.apply(&Command::Rx(RxMode::NoBcast, true));
        assert!(!f.accepts(MacAddr::BROADCAST));
        f.apply(&Command::Rx(RxMode::NoMulti, true));
        assert!(!f.accepts(MCAST));
        f.apply(&Command::Rx(RxMode::NoUni, true));
        assert!(!f.accepts(OWN));
        f.apply(&Command::MacAddr(OTHER));
        assert_eq!(f.mac(), OTHER);
        let mut g = RxFilter::new(OWN);
        g.apply(&Command::Rx(RxMode::Promisc, false));
        g.apply(&Command::Rx(RxMode::AllMulti, true));
        assert!(g.accepts(MacAddr([1, 2, 3, 4, 5, 6])) && !g.accepts(OTHER));
        g.apply(&Command::MacTable {
            unicast: vec![OTHER; MAC_TABLE_ENTRIES + 1],
            multicast: vec![],
        });
        assert!(
            g.accepts(MacAddr([2, 9, 9, 9, 9, 9])),
            "overflowed unicast table accepts all"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes, ALL, 4);
        }
    }
}
