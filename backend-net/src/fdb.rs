//! The switch's forwarding database: which port each station MAC address was last seen on
//! (IEEE 802.1D learning, as a Linux bridge or Xen's bridged netback set-up does it).
//!
//! Source addresses of transmitted frames are learned; a frame to a learned unicast address
//! goes to that one port; group addresses and unknown destinations flood to every other port;
//! a port that goes away is forgotten. What a guest can do to the table is bounded:
//! - **aging**: a learned address not seen for the aging time (300 s by default, as a Linux
//!   bridge's `ageing_time`) no longer counts and is removed by the next [`Fdb::expire`];
//! - **per-port cap**: a port holds at most `max_per_port` learned addresses; more are refused
//!   (frames to them flood) until some age out, so one guest sending from random source
//!   addresses cannot push the others' stations out, and the whole table is bounded too
//!   ([`MAX_ENTRIES`]);
//! - **pinning**: addresses configured for a port ([`Fdb::pin`]) are static entries that never
//!   age or move; a frame from another port claiming one is refused ([`Learn::Spoofed`]).
//!
//! Times are [`Instant`]s passed in by the caller (one clock read per frame or batch), so the
//! aging is testable without waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::mac::MacAddr;

/// Index of a switch port (the position of its `--socket` on the command line).
pub type PortId = usize;

/// Most stations the table holds, over all ports.
pub const MAX_ENTRIES: usize = 4096;
/// Default aging time: a Linux bridge's default `ageing_time`.
pub const DEFAULT_AGING: Duration = Duration::from_secs(300);
/// Default cap of learned addresses per port.
pub const DEFAULT_MAX_PER_PORT: usize = 256;

/// How the table learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbConfig {
    /// A learned address not seen for this long is forgotten; `None`: never.
    pub aging: Option<Duration>,
    /// Learned (not pinned) addresses per port, at least 1.
    pub max_per_port: usize,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            aging: Some(DEFAULT_AGING),
            max_per_port: DEFAULT_MAX_PER_PORT,
        }
    }
}

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

/// What learning a source address did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    /// Known on this port already (its age is reset), or not a station address.
    Known,
    /// Added, or moved here from another port.
    Learned,
    /// Not added: the port holds `max_per_port` addresses, or the table [`MAX_ENTRIES`].
    Refused,
    /// The address is pinned to another port: the frame claims someone else's address.
    Spoofed,
}

#[derive(Debug)]
struct Entry {
    port: PortId,
    /// Milliseconds since the table's start when last seen.
    seen_ms: AtomicU64,
    /// Configured, not learned: never ages, never moves, not counted in the cap.
    pinned: bool,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<MacAddr, Entry>,
    /// Learned entries per port.
    learned: HashMap<PortId, usize>,
}

impl Table {
    fn remove(&mut self, mac: &MacAddr) -> Option<Entry> {
        let e = self.entries.remove(mac)?;
        if !e.pinned {
            self.uncount(e.port);
        }
        Some(e)
    }

    fn uncount(&mut self, port: PortId) {
        if let Some(n) = self.learned.get_mut(&port) {
            *n = n.saturating_sub(1);
        }
    }

    fn count(&self, port: PortId) -> usize {
        self.learned.get(&port).copied().unwrap_or(0)
    }
}

/// A bounded, aging MAC learning table, shared by every port's workers.
#[derive(Debug)]
pub struct Fdb {
    table: RwLock<Table>,
    config: FdbConfig,
    start: Instant,
}

impl Fdb {
    /// An empty table learning by `config`, its clock starting at `start`.
    pub fn new(config: FdbConfig, start: Instant) -> Fdb {
        Fdb {
            table: RwLock::new(Table::default()),
            config,
            start,
        }
    }

    /// How the table learns.
    pub fn config(&self) -> FdbConfig {
        self.config
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    fn live(&self, e: &Entry, now_ms: u64) -> bool {
        match self.config.aging {
            Some(aging) if !e.pinned => {
                let age = now_ms.saturating_sub(e.seen_ms.load(Ordering::Relaxed));
                u128::from(age) < aging.as_millis()
            }
            _ => true,
        }
    }

    /// Makes `mac` a static entry of `port`: it never ages or moves, and frames from other
    /// ports with it as source are [`Learn::Spoofed`].
    pub fn pin(&self, mac: MacAddr, port: PortId) {
        let mut t = self.write();
        t.remove(&mac);
        t.entries.insert(
            mac,
            Entry {
                port,
                seen_ms: AtomicU64::new(0),
                pinned: true,
            },
        );
    }

    /// Records that `src` sent from `port` at `now`. Group and all-zero addresses are not
    /// learned; a new or moving station is refused when `port` holds its cap or the table
    /// [`MAX_ENTRIES`].
    pub fn learn(&self, src: MacAddr, port: PortId, now: Instant) -> Learn {
        if !src.is_station() {
            return Learn::Known;
        }
        let now_ms = self.ms(now);
        if let Some(e) = self.read().entries.get(&src) {
            if e.pinned {
                return if e.port == port {
                    Learn::Known
                } else {
                    Learn::Spoofed
                };
            }
            if e.port == port {
                e.seen_ms.store(now_ms, Ordering::Relaxed);
                return Learn::Known;
            }
        }
        let mut t = self.write();
        let existing = t.entries.get(&src).map(|e| (e.port, e.pinned));
        match existing {
            Some((p, true)) => {
                return if p == port {
                    Learn::Known
                } else {
                    Learn::Spoofed
                }
            }
            Some((p, false)) if p == port => return Learn::Known,
            _ => {}
        }
        let full = existing.is_none() && t.entries.len() >= MAX_ENTRIES;
        if full || t.count(port) >= self.config.max_per_port {
            return Learn::Refused;
        }
        t.remove(&src);
        t.entries.insert(
            src,
            Entry {
                port,
                seen_ms: AtomicU64::new(now_ms),
                pinned: false,
            },
        );
        *t.learned.entry(port).or_insert(0) += 1;
        Learn::Learned
    }

    /// Where a frame from `from` to `dst` goes at `now` (an aged entry counts as unknown).
    pub fn forward(&self, from: PortId, dst: MacAddr, now: Instant) -> Forward {
        if dst.is_multicast() {
            return Forward::Flood;
        }
        let now_ms = self.ms(now);
        match self.read().entries.get(&dst) {
            Some(e) if !self.live(e, now_ms) => Forward::Flood,
            Some(e) if e.port == from => Forward::Local,
            Some(e) => Forward::Port(e.port),
            None => Forward::Flood,
        }
    }

    /// Removes the learned entries that aged by `now`; returns the port of each.
    pub fn expire(&self, now: Instant) -> Vec<PortId> {
        let now_ms = self.ms(now);
        let aged: Vec<MacAddr> = self
            .read()
            .entries
            .iter()
            .filter(|(_, e)| !self.live(e, now_ms))
            .map(|(mac, _)| *mac)
            .collect();
        if aged.is_empty() {
            return Vec::new();
        }
        let mut t = self.write();
        aged.iter()
            .filter_map(|mac| {
                let e = t.entries.get(mac)?;
                if self.live(e, now_ms) {
                    return None;
                }
                t.remove(mac).map(|e| e.port)
            })
            .collect()
    }

    /// Forgets every station learned on `port` (pinned ones stay).
    pub fn forget_port(&self, port: PortId) {
        let mut t = self.write();
        t.entries.retain(|_, e| e.pinned || e.port != port);
        t.learned.remove(&port);
    }

    /// The port `mac` is pinned to, if it is.
    pub fn pinned_to(&self, mac: MacAddr) -> Option<PortId> {
        self.read()
            .entries
            .get(&mac)
            .filter(|e| e.pinned)
            .map(|e| e.port)
    }

    /// Forgets `port` altogether (it left the switch): its learned and pinned stations.
    pub fn remove_port(&self, port: PortId) {
        let mut t = self.write();
        t.entries.retain(|_, e| e.port != port);
        t.learned.remove(&port);
    }

    /// Number of stations known (pinned ones included).
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// Whether no station is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Learned (not pinned) stations of `port`.
    pub fn learned_on(&self, port: PortId) -> usize {
        self.read().count(port)
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn unlimited() -> Fdb {
        Fdb::new(
            FdbConfig {
                aging: None,
                max_per_port: MAX_ENTRIES,
            },
            Instant::now(),
        )
    }

    #[test]
    fn learn_forward_move_forget() {
        let fdb = unlimited();
        let now = Instant::now();
        assert_eq!(
            fdb.forward(0, mac(1), now),
            Forward::Flood,
            "unknown floods"
        );
        assert_eq!(fdb.learn(mac(1), 1, now), Learn::Learned);
        assert_eq!(fdb.learn(mac(1), 1, now), Learn::Known);
        fdb.learn(mac(2), 2, now);
        assert_eq!(fdb.forward(0, mac(1), now), Forward::Port(1));
        assert_eq!(fdb.forward(1, mac(1), now), Forward::Local);
        assert_eq!(fdb.forward(0, MacAddr::BROADCAST, now), Forward::Flood);
        assert_eq!(
            fdb.forward(0, MacAddr([1, 0, 0x5e, 0, 0, 1]), now),
            Forward::Flood
        );
        assert_eq!(fdb.learn(mac(1), 3, now), Learn::Learned);
        assert_eq!(fdb.forward(0, mac(1), now), Forward::Port(3), "moved");
        assert_eq!((fdb.learned_on(1), fdb.learned_on(3)), (0, 1));
        fdb.forget_port(3);
        assert_eq!(fdb.forward(0, mac(1), now), Forward::Flood);
        assert_eq!(fdb.forward(0, mac(2), now), Forward::Port(2));
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn group_and_zero_sources_are_not_learned() {
        let fdb = unlimited();
        let now = Instant::now();
        fdb.learn(MacAddr::BROADCAST, 1, now);
        fdb.learn(MacAddr([1, 0, 0x5e, 0, 0, 1]), 1, now);
        fdb.learn(MacAddr([0; 6]), 1, now);
        assert!(fdb.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let fdb = unlimited();
        let now = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let b = i.to_be_bytes();
            fdb.learn(MacAddr([2, 0, b[0], b[1], b[2], b[3]]), 1, now);
        }
        assert_eq!(fdb.len(), MAX_ENTRIES);
        let first = MacAddr([2, 0, 0, 0, 0, 0]);
        fdb.learn(first, 2, now);
        assert_eq!(
            fdb.forward(0, first, now),
            Forward::Port(2),
            "known stations still move"
        );
    }

    #[test]
    fn each_port_holds_at_most_its_cap() {
        let start = Instant::now();
        let fdb = Fdb::new(
            FdbConfig {
                aging: None,
                max_per_port: 3,
            },
            start,
        );
        for n in 0..3 {
            assert_eq!(fdb.learn(mac(n), 1, start), Learn::Learned);
        }
        assert_eq!(fdb.learn(mac(9), 1, start), Learn::Refused);
        assert_eq!(fdb.forward(0, mac(9), start), Forward::Flood);
        // Another port is not affected, and a station moving away frees a place.
        assert_eq!(fdb.learn(mac(20), 2, start), Learn::Learned);
        assert_eq!(fdb.learn(mac(0), 2, start), Learn::Learned);
        assert_eq!(fdb.learn(mac(9), 1, start), Learn::Learned);
        assert_eq!((fdb.learned_on(1), fdb.learned_on(2)), (3, 2));
    }

    #[test]
    fn entries_age_out() {
        let start = Instant::now();
        let aging = Duration::from_secs(300);
        let fdb = Fdb::new(
            FdbConfig {
                aging: Some(aging),
                max_per_port: 1,
            },
            start,
        );
        fdb.learn(mac(1), 1, start);
        let later = start + Duration::from_secs(200);
        assert_eq!(fdb.learn(mac(2), 1, later), Learn::Refused, "capped");
        // Seen again at 200 s: still known at 450 s, aged at 500 s.
        fdb.learn(mac(1), 1, later);
        assert_eq!(
            fdb.forward(0, mac(1), later + Duration::from_secs(250)),
            Forward::Port(1)
        );
        assert!(fdb.expire(later + Duration::from_secs(250)).is_empty());
        let aged_at = later + aging;
        assert_eq!(fdb.forward(0, mac(1), aged_at), Forward::Flood);
        assert_eq!(fdb.expire(aged_at), vec![1]);
        assert!(fdb.is_empty());
        assert_eq!(fdb.learn(mac(2), 1, aged_at), Learn::Learned, "room again");
    }

    #[test]
    fn pinned_addresses_never_move_or_age() {
        let start = Instant::now();
        let fdb = Fdb::new(
            FdbConfig {
                aging: Some(Duration::from_secs(1)),
                max_per_port: 1,
            },
            start,
        );
        fdb.pin(mac(1), 1);
        fdb.pin(mac(2), 1);
        assert_eq!(fdb.learn(mac(1), 1, start), Learn::Known);
        assert_eq!(fdb.learn(mac(1), 2, start), Learn::Spoofed);
        assert_eq!(
            fdb.learn(mac(3), 1, start),
            Learn::Learned,
            "pins are not capped"
        );
        let much_later = start + Duration::from_secs(1000);
        assert_eq!(fdb.forward(0, mac(1), much_later), Forward::Port(1));
        assert_eq!(fdb.expire(much_later), vec![1], "only the learned one ages");
        fdb.forget_port(1);
        assert_eq!(fdb.forward(0, mac(2), much_later), Forward::Port(1));
        assert_eq!(fdb.pinned_to(mac(2)), Some(1));
        fdb.remove_port(1);
        assert_eq!(fdb.pinned_to(mac(2)), None);
        assert_eq!(fdb.forward(0, mac(2), much_later), Forward::Flood);
        assert!(fdb.is_empty());
    }

    proptest! {
        /// Against a model: the last port each station was learned on, minus forgotten ports.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..3, 0u8..8, 0usize..4), 0..200)) {
            let fdb = unlimited();
            let now = Instant::now();
            let mut model = HashMap::new();
            for (op, station, port) in ops {
                match op {
                    0 | 1 => { fdb.learn(mac(station), port, now); model.insert(station, port); }
                    _ => { fdb.forget_port(port); model.retain(|_, p| *p != port); }
                }
            }
            for station in 0..8u8 {
                let want = match model.get(&station) {
                    Some(&0) => Forward::Local,
                    Some(&p) => Forward::Port(p),
                    None => Forward::Flood,
                };
                prop_assert_eq!(fdb.forward(0, mac(station), now), want);
            }
        }

        /// Hostile sources from any port at any time: no port ever holds more than its cap,
        /// the per-port counts match the entries, and pinned stations stay where they are.
        #[test]
        fn caps_and_pins_hold(ops in proptest::collection::vec((any::<u8>(), 0usize..4, 0u64..5000, 0u8..4), 0..300)) {
            let start = Instant::now();
            let cap = 5;
            let fdb = Fdb::new(FdbConfig { aging: Some(Duration::from_millis(700)), max_per_port: cap }, start);
            fdb.pin(mac(255), 0);
            let mut t_ms = 0;
            for (station, port, dt, op) in ops {
                t_ms += dt % 400;
                let now = start + Duration::from_millis(t_ms);
                match op {
                    0..=2 => { fdb.learn(mac(station), port, now); }
                    _ => { fdb.expire(now); }
                }
                let t = fdb.read();
                for p in 0..4 {
                    let n = t.entries.values().filter(|e| !e.pinned && e.port == p).count();
                    prop_assert_eq!(n, t.count(p));
                    prop_assert!(n <= cap);
                }
                drop(t);
                prop_assert_eq!(fdb.forward(1, mac(255), now), Forward::Port(0));
            }
        }
    }
}
