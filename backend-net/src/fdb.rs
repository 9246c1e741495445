//! The switch's forwarding database: which port each station MAC address was last seen on
//! (IEEE 802.1D learning, as a Linux bridge or Xen's bridged netback set-up does it).
//!
//! Source addresses of transmitted frames are learned; a frame to a learned unicast address
//! goes to that one port; group addresses and unknown destinations flood to every other port;
//! a port that goes away is forgotten. The table is bounded, so a guest sending from random
//! source addresses cannot grow it without limit: when it is full, new stations are not
//! learned and frames to them flood.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::mac::MacAddr;

/// Index of a switch port (the position of its `--socket` on the command line).
pub type PortId = usize;

/// Most stations the table holds.
pub const MAX_ENTRIES: usize = 4096;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// To this one port.
    Port(PortId),
    /// To every port but the one it came from.
    Flood,
    /// Nowhere: the destination lives on the port the frame came from.
    Local,
}

/// A bounded MAC learning table, shared by every port's workers.
#[derive(Debug, Default)]
pub struct Fdb {
    table: RwLock<HashMap<MacAddr, PortId>>,
}

impl Fdb {
    /// An empty table.
    pub fn new() -> Fdb {
        Fdb::default()
    }

    /// Records that `src` sent from `port`. Group and all-zero addresses are not learned, and
    /// no new station is added once [`MAX_ENTRIES`] are known (a known one may still move).
    pub fn learn(&self, src: MacAddr, port: PortId) {
        if !src.is_station() || self.read().get(&src) == Some(&port) {
            return;
        }
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if table.len() < MAX_ENTRIES || table.contains_key(&src) {
            table.insert(src, port);
        }
    }

    /// Where a frame from `from` to `dst` goes.
    pub fn forward(&self, from: PortId, dst: MacAddr) -> Forward {
        if dst.is_multicast() {
            return Forward::Flood;
        }
        match self.read().get(&dst) {
            Some(&p) if p == from => Forward::Local,
            Some(&p) => Forward::Port(p),
            None => Forward::Flood,
        }
    }

    /// Forgets every station learned on `port`.
    pub fn forget_port(&self, port: PortId) {
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| *p != port);
    }

    /// Number of stations known.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no station is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<MacAddr, PortId>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn learn_forward_move_forget() {
        let fdb = Fdb::new();
        assert_eq!(fdb.forward(0, mac(1)), Forward::Flood, "unknown floods");
        fdb.learn(mac(1), 1);
        fdb.learn(mac(2), 2);
        assert_eq!(fdb.forward(0, mac(1)), Forward::Port(1));
        assert_eq!(fdb.forward(1, mac(1)), Forward::Local);
        assert_eq!(fdb.forward(0, MacAddr::BROADCAST), Forward::Flood);
        assert_eq!(
            fdb.forward(0, MacAddr([1, 0, 0x5e, 0, 0, 1])),
            Forward::Flood
        );
        fdb.learn(mac(1), 3);
        assert_eq!(fdb.forward(0, mac(1)), Forward::Port(3), "station moved");
        fdb.forget_port(3);
        assert_eq!(fdb.forward(0, mac(1)), Forward::Flood);
        assert_eq!(fdb.forward(0, mac(2)), Forward::Port(2));
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn group_and_zero_sources_are_not_learned() {
        let fdb = Fdb::new();
        fdb.learn(MacAddr::BROADCAST, 1);
        fdb.learn(MacAddr([1, 0, 0x5e, 0, 0, 1]), 1);
        fdb.learn(MacAddr([0; 6]), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let fdb = Fdb::new();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let b = i.to_be_bytes();
            fdb.learn(MacAddr([2, 0, b[0], b[1], b[2], b[3]]), 1);
        }
        assert_eq!(fdb.len(), MAX_ENTRIES);
        let first = MacAddr([2, 0, 0, 0, 0, 0]);
        fdb.learn(first, 2);
        assert_eq!(
            fdb.forward(0, first),
            Forward::Port(2),
            "known stations still move"
        );
    }

    proptest! {
        /// Against a model: the last port each station was learned on, minus forgotten ports.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..3, 0u8..8, 0usize..4), 0..200)) {
            let fdb = Fdb::new();
            let mut model = HashMap::new();
            for (op, station, port) in ops {
                match op {
                    0 | 1 => { fdb.learn(mac(station), port); model.insert(station, port); }
                    _ => { fdb.forget_port(port); model.retain(|_, p| *p != port); }
                }
            }
            for station in 0..8u8 {
                let want = match model.get(&station) {
                    Some(&0) => Forward::Local,
                    Some(&p) => Forward::Port(p),
                    None => Forward::Flood,
                };
                prop_assert_eq!(fdb.forward(0, mac(station)), want);
            }
        }
    }
}
