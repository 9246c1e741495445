//! Switch mode: a learning L2 switch between the front-ends of all ports, like a Linux bridge
//! joining Xen netback interfaces in Dom0.
//!
//! A transmitted frame's source address is checked and learned for its port; the frame goes to
//! the port that owns its destination, or floods to every other connected port for group and
//! unknown addresses. Each receiver's filter (control queue) is applied. Offloads pass
//! untouched when the receiver acked them (GUEST_CSUM for NEEDS_CSUM, GUEST_TSO4/6 for TCP
//! segmentation); otherwise the switch completes the checksum or segments the frame in
//! software.
//!
//! What one guest can do to the others is bounded (see [`crate::fdb`] and [`crate::flood`]):
//! a frame from a source address the port may not use (pinned elsewhere, or not among the
//! port's own pins) is dropped as [`Drop::TxSpoofed`]; the port's learned addresses are capped
//! and age out; flooded frames beyond the port's rate are dropped as [`Drop::TxFloodLimited`].
//!
//! Ports come and go while the others forward ([`Switch::add_port`], dropping the
//! [`SwitchPort`]): the forwarding path reads the port table as a lock-free snapshot
//! (`arc-swap`), changes copy it under a mutex. A removed port's learned and pinned entries
//! are dropped and its receive queues closed, so no frame reaches its rings afterwards, even
//! from a worker still holding the previous snapshot; port ids are never reused, so a stale
//! table entry cannot point at a newer port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

use crate::device::Acked;
use crate::fdb::{Fdb, FdbConfig, Forward, Learn, PortId};
use crate::flood::FloodLimit;
use crate::guest::Cursor;
use crate::hdr::{Gso, NetHdr};
use crate::mac::{MacAddr, ETH_ADDRS_LEN};
use crate::offload::{complete_checksum, segment_tcp};
use crate::port::{Port, PortState};
use crate::rx::{Outgoing, Payload, RxFrame};
use crate::stats::{Drop, QueueStats};
use crate::worker::BATCH;

/// How the switch protects its ports from each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// The learning table's aging and per-port cap.
    pub fdb: FdbConfig,
    /// Flooded frames per second and port; 0: unlimited.
    pub flood_rate: u32,
}

/// Default `--flood-rate`: frames per second a port may flood (ARP, neighbour discovery and
/// DHCP need a few; a storm is cut to this).
pub const DEFAULT_FLOOD_RATE: u32 = 1000;

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            fdb: FdbConfig::default(),
            flood_rate: DEFAULT_FLOOD_RATE,
        }
    }
}

/// Most ports of one switch.
pub const MAX_PORTS: usize = 64;

/// Why a port cannot join the switch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SwitchError {
    /// The switch has [`MAX_PORTS`] ports.
    #[error("the switch has {MAX_PORTS} ports already")]
    Full,
    /// One of the port's pinned addresses is pinned to another port.
    #[error("MAC {0} is already used by another port of the switch")]
    MacInUse(MacAddr),
}

/// A port of the switch and its flood limit.
#[derive(Debug)]
struct Member {
    port: Arc<Port>,
    flood: FloodLimit,
}

/// The ports, sorted by id.
type Members = Vec<Arc<Member>>;

/// The ports and their shared learning table.
#[derive(Debug)]
pub struct Switch {
    /// Read by every frame without a lock; replaced whole by [`Switch::add_port`] and
    /// [`SwitchPort`]'s drop.
    members: ArcSwap<Members>,
    /// Serializes changes of `members`; the next port id.
    changes: Mutex<PortId>,
    config: SwitchConfig,
    fdb: Fdb,
    start: Instant,
    /// Milliseconds since `start` when aged entries are next removed.
    next_expiry_ms: AtomicU64,
}

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
    /// A switch without ports, protected by `config`.
    pub fn new(config: SwitchConfig) -> Switch {
        let start = Instant::now();
        Switch {
            members: ArcSwap::from_pointee(Vec::new()),
            changes: Mutex::new(0),
            config,
            fdb: Fdb::new(config.fdb, start),
            start,
            next_expiry_ms: AtomicU64::new(0),
        }
    }

    /// Adds the port `make` builds with the switch's next port id; its pinned addresses
    /// ([`Port::pinned`]) become static entries of the table. The port forwards until the
    /// returned [`SwitchPort`] is dropped.
    ///
    /// # Errors
    /// [`SwitchError::Full`]; [`SwitchError::MacInUse`] when a pinned address is another
    /// port's (nothing is changed then).
    pub fn add_port(
        self: &Arc<Self>,
        make: impl FnOnce(PortId) -> Port,
    ) -> Result<SwitchPort, SwitchError> {
        let mut next_id = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let members = self.members.load_full();
        if members.len() >= MAX_PORTS {
            return Err(SwitchError::Full);
        }
        let port = Arc::new(make(*next_id));
        if let Some(&mac) = port
            .pinned
            .iter()
            .find(|&&mac| self.fdb.pinned_to(mac).is_some_and(|p| p != port.id))
        {
            return Err(SwitchError::MacInUse(mac));
        }
        *next_id = next_id.max(port.id) + 1;
        for &mac in &port.pinned {
            self.fdb.pin(mac, port.id);
        }
        let mut next: Members = members.as_ref().clone();
        next.push(Arc::new(Member {
            port: port.clone(),
            flood: FloodLimit::new(self.config.flood_rate, Instant::now()),
        }));
        next.sort_by_key(|m| m.port.id);
        self.members.store(Arc::new(next));
        Ok(SwitchPort {
            switch: self.clone(),
            port,
        })
    }

    /// Takes port `id` out: later frames neither come from it nor go to it, its learned and
    /// pinned entries are dropped, its receive queues closed (waiting for a delivery in
    /// progress).
    fn remove_port(&self, id: PortId) {
        let _changing = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let members = self.members.load_full();
        let Some(gone) = find(&members, id).cloned() else {
            return;
        };
        let next: Members = members
            .iter()
            .filter(|m| m.port.id != id)
            .cloned()
            .collect();
        self.members.store(Arc::new(next));
        self.fdb.remove_port(id);
        gone.port.close();
    }

    /// The ports now.
    pub fn ports(&self) -> Vec<Arc<Port>> {
        self.members.load().iter().map(|m| m.port.clone()).collect()
    }

    /// Removes aged entries, at most every quarter of the aging time (between 10 ms and 1 s),
    /// counting them as `fdb_aged` of their port.
    fn expire(&self, now: Instant) {
        let Some(aging) = self.fdb.config().aging else {
            return;
        };
        let now_ms = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX);
        let due = self.next_expiry_ms.load(Ordering::Relaxed);
        let every = (aging / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let next = now_ms.saturating_add(u64::try_from(every.as_millis()).unwrap_or(1000));
        if now_ms < due
            || self
                .next_expiry_ms
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let members = self.members.load();
        for p in self.fdb.expire(now) {
            if let Some(m) = find(&members, p) {
                m.port.stats.fdb_aged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Checks and learns the source of a frame `batch`'s sender sent, and decides where it goes
    /// among the batch's members; `None` when it is dropped (counted). `recent` holds the
    /// batch's last learned source and looked-up destination, which the next frames with the
    /// same addresses reuse (a batch is mostly one flow): one table lookup per batch and flow.
    fn admit(
        &self,
        batch: &Sender<'_>,
        (src, dst): (MacAddr, MacAddr),
        recent: &mut Recent,
    ) -> Option<(Forward, usize)> {
        let Sender {
            members,
            from,
            q,
            now,
        } = *batch;
        let stats = from.stats.queue(q);
        let Some(sender_at) = find_index(members, from.id) else {
            // A worker of a port that was just removed.
            stats.drop(Drop::TxNoDestination);
            return None;
        };
        if !from.may_send_from(src) {
            stats.drop(Drop::TxSpoofed);
            return None;
        }
        match recent.learn(&self.fdb, src, from.id, now) {
            Learn::Spoofed => {
                stats.drop(Drop::TxSpoofed);
                return None;
            }
            Learn::Refused => {
                from.stats.fdb_refused.fetch_add(1, Ordering::Relaxed);
            }
            Learn::Known | Learn::Learned => {}
        }
        let forward = recent.forward(dst, || match self.fdb.forward(from.id, dst, now) {
            Forward::Port(p) if find(members, p).is_none() => {
                // Learned by a port being removed meanwhile: unknown now.
                self.fdb.remove_port(p);
                Forward::Flood
            }
            f => f,
        });
        if forward == Forward::Flood && !take_flood(&members[sender_at], stats, now) {
            return None;
        }
        Some((forward, sender_at))
    }

    /// The learning table.
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// A front-end left `port`: its stations are forgotten.
    pub fn port_gone(&self, port: PortId) {
        self.fdb.forget_port(port);
    }

    /// Forwards a batch of checked frames that port `from` transmitted on queue pair `q`: one
    /// clock read, one look at the port table and at most one table lookup per flow for the
    /// batch; the frames for each receive queue are delivered together at the end (one lock
    /// of the queue, one batch of its ring, one notification).
    pub fn forward<'a, 'm: 'a>(
        &self,
        from: &Port,
        q: usize,
        frames: impl IntoIterator<Item = TxRef<'a, 'm>>,
    ) {
        let now = Instant::now();
        self.expire(now);
        let members = self.members.load();
        let batch = Sender {
            members: &members,
            from,
            q,
            now,
        };
        let mut targets: Vec<Target<'a, 'm>> = Vec::new();
        let mut recent = Recent::default();
        let (mut sent, mut bytes) = (0u64, 0u64);
        for f in frames {
            let len = f.len;
            if self.route(&batch, &f, &mut recent, &mut targets) {
                sent += 1;
                bytes += len as u64;
            }
        }
        from.stats.queue(q).tx_batch(sent, bytes);
        for t in &targets {
            if let Some((tq, rxq)) = t.queue.and_then(|tq| Some((tq, t.port.rx_queue(tq)?))) {
                if !t.frames.is_empty() {
                    rxq.offer(t.state.acked, &t.frames, t.port.stats.queue(tq));
                }
            }
        }
    }

    /// Decides where one frame goes and adds it to its targets' frames (`targets`: the batch's
    /// receive queues so far). Each frame is counted once on the sender: `true` when it was
    /// passed on (the caller counts those for the batch), else why it went nowhere. A frame of
    /// the flow the batch last routed ([`Recent`]'s route) goes the same way; others are
    /// decided by [`Switch::decide`].
    #[inline]
    fn route<'a, 'm: 'a>(
        &self,
        batch: &Sender<'_>,
        f: &TxRef<'a, 'm>,
        recent: &mut Recent,
        targets: &mut Vec<Target<'a, 'm>>,
    ) -> bool {
        // One 12-byte load where the addresses lie in one slice (as a value: no stack copy the
        // comparisons would read back in another width).
        let addrs = f.frame.peek::<ETH_ADDRS_LEN>().unwrap_or_else(|| {
            let mut a = [0u8; ETH_ADDRS_LEN];
            f.frame.clone().read(&mut a);
            a
        });
        let (dst, src) = MacAddr::pair(addrs);
        let plain = f.hdr.gso() == Gso::None && !f.hdr.needs_csum();
        let Some(r) = recent
            .route
            .as_ref()
            .filter(|r| plain && r.src == src && r.dst == dst)
        else {
            return self.decide(batch, f, (src, dst), plain, recent, targets);
        };
        let Sender {
            members,
            from,
            q,
            now,
        } = *batch;
        if r.flood && !take_flood(&members[r.sender_at], from.stats.queue(q), now) {
            return false;
        }
        for &i in &r.to {
            targets[i].frames.push(borrowed(f));
        }
        true
    }

    /// [`Switch::route`] of a frame from `src` to `dst` (`addresses`; `plain`: without
    /// offloads) that the batch's last route does not cover: admitted ([`Switch::admit`]),
    /// passed to its destination port or flooded (converted in software for a port that did not
    /// ack its offloads), and kept as the batch's route when every port took it.
    #[inline(never)]
    fn decide<'a, 'm: 'a>(
        &self,
        batch: &Sender<'_>,
        f: &TxRef<'a, 'm>,
        (src, dst): (MacAddr, MacAddr),
        plain: bool,
        recent: &mut Recent,
        targets: &mut Vec<Target<'a, 'm>>,
    ) -> bool {
        let Some((forward, sender_at)) = self.admit(batch, (src, dst), recent) else {
            return false;
        };
        let Sender {
            members, from, q, ..
        } = *batch;
        // The owner of a known destination, or every other port for a flood (no allocation).
        let owner = match forward {
            Forward::Port(p) => find(members, p).map(|m| &m.port),
            Forward::Flood | Forward::Local => None,
        };
        let flood = forward == Forward::Flood;
        let ports = owner.into_iter().chain(
            members
                .iter()
                .map(|m| &m.port)
                .filter(|p| flood && p.id != from.id),
        );
        let mut local: Option<Vec<u8>> = None;
        let mut delivered_anywhere = false;
        let mut offload_failed = false;
        // Where the frame went, for the next frames of the flow, while every port took it.
        let mut to: Option<SmallVec<[usize; 4]>> = Some(SmallVec::new());
        for port in ports {
            let (i, t) = Target::find_or_add(targets, port, q);
            if !t.state.connected {
                continue;
            }
            let Some(tq) = t.queue else {
                port.stats.queue(0).drop(Drop::RxNoBuffers);
                to = None;
                continue;
            };
            let stats = port.stats.queue(tq);
            if !t.state.filter.accepts(dst) {
                stats.drop(Drop::RxFiltered);
                to = None;
                continue;
            }
            if offloads_acked(&f.hdr, t.state.acked) {
                t.frames.push(borrowed(f));
                if let Some(to) = &mut to {
                    to.push(i);
                }
            } else {
                let bytes = local.get_or_insert_with(|| {
                    let mut v = vec![0u8; f.len];
                    let n = f.frame.clone().read(&mut v);
                    v.truncate(n);
                    v
                });
                match software_offload(&f.hdr, bytes) {
                    Ok(frames) => t.frames.extend(
                        frames
                            .into_iter()
                            .map(|b| Outgoing::Owned(NetHdr::default(), b)),
                    ),
                    Err(e) => {
                        log::debug!("port {}: {e}", from.id);
                        offload_failed = true;
                        continue;
                    }
                }
            }
            delivered_anywhere = true;
        }
        let stats = from.stats.queue(q);
        match (delivered_anywhere, offload_failed) {
            (true, _) => {}
            (false, true) => stats.drop(Drop::TxOffload),
            (false, false) => stats.drop(Drop::TxNoDestination),
        }
        recent.route = to
            .filter(|to| plain && !to.is_empty() && recent.knows(src))
            .map(|to| Route {
                src,
                dst,
                flood,
                sender_at,
                to,
            });
        delivered_anywhere
    }
}

/// Takes one frame from `sender`'s flood budget at `now`; false (counted in `stats` as
/// [`Drop::TxFloodLimited`]) when it is spent.
fn take_flood(sender: &Member, stats: &QueueStats, now: Instant) -> bool {
    let ok = sender.flood.take(now);
    if !ok {
        stats.drop(Drop::TxFloodLimited);
    }
    ok
}

/// `f` as a frame for a receive queue, borrowed from the sender's chain.
fn borrowed<'a, 'm>(f: &TxRef<'a, 'm>) -> Outgoing<'a, 'm> {
    Outgoing::Borrowed(RxFrame {
        hdr: NetHdr {
            num_buffers: 0,
            ..f.hdr
        },
        payload: Payload::Guest(f.frame.clone()),
        len: f.len,
    })
}

/// A checked frame a port transmitted, for [`Switch::forward`].
#[derive(Clone, Debug)]
pub struct TxRef<'a, 'm: 'a> {
    /// Its virtio-net header.
    pub hdr: NetHdr,
    /// Its bytes, from its first (after the header).
    pub frame: Cursor<'a, 'm>,
    /// Its length in bytes.
    pub len: usize,
}

/// A port that frames of one batch go to: its state as the batch found it, the receive queue
/// pair picked for the batch's sender queue, and the frames collected for it.
struct Target<'a, 'm: 'a> {
    port: Arc<Port>,
    state: PortState,
    /// `None`: no receive queue of the port is ready.
    queue: Option<usize>,
    frames: Vec<Outgoing<'a, 'm>>,
}

impl<'a, 'm: 'a> Target<'a, 'm> {
    /// `port`'s entry in `targets`, added (its state read, its queue picked for frames from
    /// the sender's pair `q`) on first use.
    fn find_or_add<'t>(
        targets: &'t mut Vec<Target<'a, 'm>>,
        port: &Arc<Port>,
        q: usize,
    ) -> (usize, &'t mut Target<'a, 'm>) {
        let i = match targets.iter().position(|t| t.port.id == port.id) {
            Some(i) => i,
            None => {
                let state = port.state();
                let queue = port.pick_rx_queue(q, state.active_pairs).map(|(tq, _)| tq);
                targets.push(Target {
                    port: port.clone(),
                    state,
                    queue,
                    frames: Vec::with_capacity(BATCH),
                });
                targets.len() - 1
            }
        };
        (i, &mut targets[i])
    }
}

/// Who sends one batch and when: the sending port `from`, its queue pair `q`, the port table
/// `members` as the batch found it and the batch's clock reading `now`.
#[derive(Clone, Copy)]
struct Sender<'b> {
    members: &'b Members,
    from: &'b Port,
    q: usize,
    now: Instant,
}

/// The last source learned, destination looked up and frame routed in one batch.
#[derive(Debug, Default)]
struct Recent {
    learned: Option<(MacAddr, Learn)>,
    forward: Option<(MacAddr, Forward)>,
    route: Option<Route>,
}

/// Where the batch's last frame without offloads went, when every port it was meant for took
/// it and its source was known: the next frames with the same addresses and no offloads go the
/// same way without deciding again (the batch's port states and table answers are the same for
/// them; a flood still takes from the flood budget per frame).
#[derive(Debug)]
struct Route {
    src: MacAddr,
    dst: MacAddr,
    flood: bool,
    /// The sender among the batch's members.
    sender_at: usize,
    /// The batch's targets it was added to.
    to: SmallVec<[usize; 4]>,
}

impl Recent {
    /// Learns `src` for `port` unless the batch just did: a station learned (new or moved)
    /// changes the table, so the cached destination is looked up again.
    fn learn(&mut self, fdb: &Fdb, src: MacAddr, port: PortId, now: Instant) -> Learn {
        if let Some((mac, learn)) = self.learned {
            if mac == src {
                return learn;
            }
        }
        let learn = fdb.learn(src, port, now);
        let again = if learn == Learn::Learned {
            self.forward = None;
            self.route = None;
            Learn::Known
        } else {
            learn
        };
        self.learned = Some((src, again));
        learn
    }

    /// Whether `src` is the batch's last source and is in the table (no refusal to count).
    fn knows(&self, src: MacAddr) -> bool {
        self.learned == Some((src, Learn::Known))
    }

    /// Where frames to `dst` go: as the batch last found, or `look_up`.
    fn forward(&mut self, dst: MacAddr, look_up: impl FnOnce() -> Forward) -> Forward {
        match self.forward {
            Some((mac, f)) if mac == dst => f,
            _ => {
                let f = look_up();
                self.forward = Some((dst, f));
                f
            }
        }
    }
}

/// Port `id` among `members` (sorted by id).
fn find(members: &Members, id: PortId) -> Option<&Arc<Member>> {
    find_index(members, id).map(|i| &members[i])
}

/// Where port `id` is among `members` (sorted by id).
fn find_index(members: &Members, id: PortId) -> Option<usize> {
    members.binary_search_by_key(&id, |m| m.port.id).ok()
}

/// A port's place on the switch: the port forwards while this lives; dropping it removes the
/// port ([`Switch`] module documentation).
#[derive(Debug)]
pub struct SwitchPort {
    switch: Arc<Switch>,
    port: Arc<Port>,
}

impl SwitchPort {
    /// The port.
    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// The switch.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }
}

impl std::ops::Drop for SwitchPort {
    fn drop(&mut self) {
        self.switch.remove_port(self.port.id);
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

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn pinned(n: u8) -> impl FnOnce(PortId) -> Port {
        move |id| Port::new(id, mac(n), 1500, 1, 4).with_pinned(vec![mac(n)])
    }

    fn ids(sw: &Switch) -> Vec<PortId> {
        sw.ports().iter().map(|p| p.id).collect()
    }

    #[test]
    fn ports_come_and_go() {
        let sw = Arc::new(Switch::new(SwitchConfig::default()));
        let a = sw.add_port(pinned(1)).unwrap();
        let b = sw.add_port(pinned(2)).unwrap();
        assert_eq!(ids(&sw), vec![0, 1]);
        assert_eq!(
            sw.add_port(pinned(1)).unwrap_err(),
            SwitchError::MacInUse(mac(1)),
            "a pinned MAC is one port's"
        );
        assert_eq!(ids(&sw), vec![0, 1], "a refused port leaves nothing");
        let now = Instant::now();
        assert_eq!(sw.fdb().learn(mac(9), 0, now), Learn::Learned);
        drop(a);
        assert_eq!(ids(&sw), vec![1]);
        assert_eq!(sw.fdb().pinned_to(mac(1)), None, "its pin is gone");
        assert_eq!(
            sw.fdb().forward(1, mac(9), now),
            Forward::Flood,
            "and what it learned"
        );
        let c = sw.add_port(pinned(1)).unwrap();
        assert_eq!(c.port().id, 2, "ids are not reused");
        assert_eq!(sw.fdb().pinned_to(mac(1)), Some(2));
        drop((b, c));
        assert!(sw.ports().is_empty() && sw.fdb().is_empty());
    }

    /// A batch reuses its last lookups, but a station it learns (new or moved) changes the
    /// table, so the destination is looked up again: a frame to a station that just turned
    /// out to live on the sender's own port is not flooded.
    #[test]
    fn a_batch_looks_up_again_after_learning() {
        let fdb = Fdb::new(FdbConfig::default(), Instant::now());
        let now = Instant::now();
        let mut recent = Recent::default();
        let mut lookups = 0;
        let mut forward = |recent: &mut Recent| {
            recent.forward(mac(2), || {
                lookups += 1;
                fdb.forward(0, mac(2), now)
            })
        };
        assert_eq!(recent.learn(&fdb, mac(1), 0, now), Learn::Learned);
        assert_eq!(forward(&mut recent), Forward::Flood);
        assert_eq!(recent.learn(&fdb, mac(1), 0, now), Learn::Known);
        assert_eq!(forward(&mut recent), Forward::Flood);
        assert_eq!(recent.learn(&fdb, mac(2), 0, now), Learn::Learned);
        assert_eq!(
            forward(&mut recent),
            Forward::Local,
            "mac(2) is on port 0 now"
        );
        assert_eq!(lookups, 2, "one lookup per destination and table change");
    }

    #[test]
    fn a_switch_has_at_most_max_ports() {
        let sw = Arc::new(Switch::new(SwitchConfig::default()));
        let members: Vec<SwitchPort> = (0..MAX_PORTS)
            .map(|n| sw.add_port(pinned(n as u8)).unwrap())
            .collect();
        assert_eq!(sw.add_port(pinned(200)).unwrap_err(), SwitchError::Full);
        drop(members);
        assert!(sw.add_port(pinned(200)).is_ok());
    }

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
