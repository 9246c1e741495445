//! The guest's XenBus front end (xen/include/public/io/xenbus.h), over its xenstore ring.
//!
//! For each device in a virtio-mmio slot (at boot: the boot info's device numbers; later: a
//! hot-plugged one) it reads `backend` from its front-end directory
//! `/local/domain/<domid>/device/<vbd|vif>/<devid>`, watches the back end's `state`, waits
//! for InitWait (or Connected), writes `multi-queue-num-queues` and state Initialised in one
//! transaction, waits for the back end's Connected and writes Connected.
//!
//! - Hot-plug ([`wait_plug`]): the guest watches its `device` directory; the VMM connects a
//!   new device to an empty slot and then writes the slot's index to the device's
//!   `virtio-mmio-slot` node. A device in state Initialising with that node, not yet held,
//!   is probed (its slot's DeviceID must now say blk or net) and walked to Connected.
//! - Unplug ([`wait_unplug`]): when the back end asks for Closing, the guest writes Closing,
//!   quiesces the device (a reset: the jobs leave nothing in flight) and writes Closed; the
//!   slot is empty for the guest from then on (the VMM empties it when it sees Closed).
//!
//! Waiting is event-driven: every watch event makes the waiter read the store again.

use core::fmt::Write;

use crate::println;
use crate::rt::boot_info::{BootInfo, NO_DEVID, XENSTORE_GSI};
use crate::xs::{PathBuf, Xs};
use crate::Fail;

const INITIALISING: u8 = 1;
const INIT_WAIT: u8 = 2;
const INITIALISED: u8 = 3;
const CONNECTED: u8 = 4;
const CLOSING: u8 = 5;
const CLOSED: u8 = 6;
/// Vector of the store's interrupt (after the eight device vectors).
const XENSTORE_VECTOR: u8 = crate::irq::DEVICE_VECTOR_BASE + 8;
/// How long a back end may take for one step, in milliseconds.
const STEP_TIMEOUT_MS: u64 = 60_000;
/// How long [`wait_unplug`] and [`wait_plug`] wait, in milliseconds.
const UNPLUG_TIMEOUT_MS: u64 = 300_000;
/// virtio device ids.
const VIRTIO_ID_NET: u32 = 1;
const VIRTIO_ID_BLOCK: u32 = 2;
/// The virtio-mmio DeviceID register.
const MMIO_DEVICE_ID: u64 = 0x008;
/// The virtio-mmio Status register.
const MMIO_STATUS: u64 = 0x070;
/// Most queues the guest drives per device (`virtio::MAX_QUEUES`).
const MAX_QUEUES: u64 = crate::virtio::MAX_QUEUES as u64;
/// Most device numbers of one kind a hot-plug scan looks at.
const MAX_SCAN: usize = 16;
/// Watch token of the back end's `state` of the device in slot i: `"b" i`.
const BACKEND_TOKEN: &str = "b";

/// A XenBus device class.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A disk (`vbd`, virtio-blk).
    Vbd,
    /// A NIC (`vif`, virtio-net).
    Vif,
}

impl Kind {
    /// Parses `vbd` or `vif`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vbd" => Some(Kind::Vbd),
            "vif" => Some(Kind::Vif),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Vbd => "vbd",
            Kind::Vif => "vif",
        }
    }

    fn device_id(self) -> u32 {
        match self {
            Kind::Vbd => VIRTIO_ID_BLOCK,
            Kind::Vif => VIRTIO_ID_NET,
        }
    }

    fn of(device_id: u32) -> Option<Self> {
        match device_id {
            VIRTIO_ID_BLOCK => Some(Kind::Vbd),
            VIRTIO_ID_NET => Some(Kind::Vif),
            _ => None,
        }
    }
}

/// The XenBus devices in slots: (slot index, kind, device number).
fn devices(info: &BootInfo) -> impl Iterator<Item = (usize, Kind, u32)> + '_ {
    (0..info.num_devices as usize).filter_map(|i| {
        let devid = info.devids[i];
        let kind = Kind::of(info.devices[i].device_id)?;
        (devid != NO_DEVID).then_some((i, kind, devid))
    })
}

fn frontend(info: &BootInfo, kind: Kind, devid: u32, node: &str) -> PathBuf {
    let mut p = PathBuf::new();
    let domid = info.xenstore.domid;
    let _ = write!(
        p,
        "/local/domain/{domid}/device/{}/{devid}/{node}",
        kind.name()
    );
    p
}

/// The back end's node `node`, from the front end's `backend`.
fn backend(
    xs: &mut Xs,
    info: &BootInfo,
    kind: Kind,
    devid: u32,
    node: &str,
) -> Result<PathBuf, Fail> {
    let value = xs.read(frontend(info, kind, devid, "backend").as_str())?;
    let mut p = PathBuf::new();
    let text = core::str::from_utf8(value).map_err(|_| Fail::new("backend node not UTF-8", 0))?;
    write!(p, "{}/{node}", text.trim_end_matches('\0'))
        .map_err(|_| Fail::new("backend path too long", value.len() as u64))?;
    Ok(p)
}

fn token(slot: usize) -> PathBuf {
    let mut t = PathBuf::new();
    let _ = write!(t, "{BACKEND_TOKEN}{slot}");
    t
}

fn parse_number(v: &[u8]) -> Option<u64> {
    core::str::from_utf8(v)
        .ok()?
        .trim_end_matches('\0')
        .trim()
        .parse()
        .ok()
}

fn state(xs: &mut Xs, path: &str) -> Result<u8, Fail> {
    let v = xs.read(path)?;
    match v {
        [d @ b'0'..=b'9'] => Ok(d - b'0'),
        _ => Err(Fail::new("state node is not a XenbusState", v.len() as u64)),
    }
}

/// Prints a front-end state change. The console line comes first: once the store holds the
/// state the toolstack may stop the VM (destroy waits for Closed, then ends the VMM), and the
/// line must not be lost.
fn announce(kind: Kind, devid: u32, s: u8) {
    println!("pvio-guest: xenbus {}/{devid} state {s}", kind.name());
}

fn set_state(xs: &mut Xs, info: &BootInfo, kind: Kind, devid: u32, s: u8) -> Result<(), Fail> {
    announce(kind, devid, s);
    xs.write(frontend(info, kind, devid, "state").as_str(), &[b'0' + s])
}

/// Waits (on watch events) until the back end at `path` is in one of `want`; returns that
/// state. A back end in Closed that was not wanted is an error.
fn wait_backend(xs: &mut Xs, path: &str, want: &[u8], ms: u64) -> Result<u8, Fail> {
    let deadline = crate::irq::deadline_ms(ms);
    loop {
        let s = state(xs, path)?;
        if want.contains(&s) {
            return Ok(s);
        }
        if s == CLOSED {
            return Err(Fail::new("back end closed the device", s.into()));
        }
        if !xs.wait_event(deadline)? {
            return Err(Fail::new(
                "back end did not reach the state, it is in",
                s.into(),
            ));
        }
    }
}

/// Walks the device in `slot` to Connected: watch the back end's state, InitWait, then
/// `multi-queue-num-queues` and Initialised in one transaction, the back end's Connected,
/// Connected.
fn connect(xs: &mut Xs, info: &BootInfo, slot: usize, kind: Kind, devid: u32) -> Result<(), Fail> {
    let back = backend(xs, info, kind, devid, "state")?;
    xs.watch(back.as_str(), token(slot).as_str())?;
    wait_backend(xs, back.as_str(), &[INIT_WAIT, CONNECTED], STEP_TIMEOUT_MS)?;
    // The transport exposes one receive / transmit pair; a disk up to MAX_QUEUES queues.
    let queues = match kind {
        Kind::Vif => 1,
        Kind::Vbd => {
            let offered = backend(xs, info, kind, devid, "num-queues")?;
            let n = xs.read_optional(offered.as_str())?.and_then(parse_number);
            n.unwrap_or(1).clamp(1, MAX_QUEUES)
        }
    };
    let mut value = PathBuf::new();
    let _ = write!(value, "{queues}");
    announce(kind, devid, INITIALISED);
    xs.write_all(&[
        (
            frontend(info, kind, devid, "multi-queue-num-queues").as_str(),
            value.as_str().as_bytes(),
        ),
        (
            frontend(info, kind, devid, "state").as_str(),
            &[b'0' + INITIALISED],
        ),
    ])?;
    wait_backend(xs, back.as_str(), &[CONNECTED], STEP_TIMEOUT_MS)?;
    set_state(xs, info, kind, devid, CONNECTED)
}

/// Walks every XenBus device the boot info lists to Connected and watches the `device`
/// directory for hot-plug. Without XenStore (boot info) it does nothing.
///
/// # Errors
/// Store errors, a back end that closed or did not move.
pub fn connect_all(info: &BootInfo) -> Result<Option<Xs>, Fail> {
    let Some(mut xs) = Xs::new(&info.xenstore) else {
        return Ok(None);
    };
    crate::irq::route(XENSTORE_GSI, XENSTORE_VECTOR);
    let mut dir = PathBuf::new();
    let _ = write!(dir, "/local/domain/{}/device", info.xenstore.domid);
    xs.watch(dir.as_str(), "device")?;
    for (slot, kind, devid) in devices(info) {
        connect(&mut xs, info, slot, kind, devid)?;
    }
    Ok(Some(xs))
}

/// A hot-plugged device of `kind` ready to take: front end Initialising with a
/// `virtio-mmio-slot` naming a slot the guest sees as empty. Returns (slot, devid).
fn find_plugged(xs: &mut Xs, info: &BootInfo, kind: Kind) -> Result<Option<(usize, u32)>, Fail> {
    let mut root = PathBuf::new();
    let _ = write!(
        root,
        "/local/domain/{}/device/{}",
        info.xenstore.domid,
        kind.name()
    );
    let mut devids = [0u32; MAX_SCAN];
    let mut n = 0;
    for name in xs.directory(root.as_str())?.split(|&b| b == 0) {
        if let (Some(d), Some(slot)) = (parse_number(name), devids.get_mut(n)) {
            *slot = d as u32;
            n += 1;
        }
    }
    for &devid in &devids[..n] {
        if devices(info).any(|(_, k, d)| k == kind && d == devid) {
            continue;
        }
        let front = xs.read_optional(frontend(info, kind, devid, "state").as_str())?;
        if front.and_then(parse_number) != Some(INITIALISING.into()) {
            continue;
        }
        let slot = xs.read_optional(frontend(info, kind, devid, "virtio-mmio-slot").as_str())?;
        let Some(slot) = slot.and_then(parse_number).map(|s| s as usize) else {
            continue;
        };
        if slot < info.num_devices as usize && info.devices[slot].device_id == 0 {
            return Ok(Some((slot, devid)));
        }
    }
    Ok(None)
}

/// Waits for a device of `kind` to be hot-plugged, probes its slot and walks it to
/// Connected; the jobs after this one find it in `info`.
///
/// # Errors
/// No XenStore, store errors, a slot that holds no device of `kind`, a timeout.
pub fn wait_plug(xs: Option<&mut Xs>, info: &mut BootInfo, kind: Kind) -> Result<(), Fail> {
    let xs = xs.ok_or(Fail::new("plug-wait needs XenStore (vmm --xenstore)", 0))?;
    let deadline = crate::irq::deadline_ms(UNPLUG_TIMEOUT_MS);
    loop {
        if let Some((slot, devid)) = find_plugged(xs, info, kind)? {
            let found = crate::rt::mmio_read32(info.devices[slot].mmio_base + MMIO_DEVICE_ID);
            if found != kind.device_id() {
                return Err(Fail::new("hot-plugged slot holds device id", found.into()));
            }
            println!(
                "pvio-guest: xenbus {}/{devid} plugged in slot {slot}",
                kind.name()
            );
            info.devices[slot].device_id = found;
            info.devids[slot] = devid;
            return connect(xs, info, slot, kind, devid);
        }
        if !xs.wait_event(deadline)? {
            return Err(Fail::new("no device plugged within ms", UNPLUG_TIMEOUT_MS));
        }
    }
}

/// Waits for the back end of every XenBus device (of `kind`, or of both kinds) to ask for
/// Closing, in whatever order they do, and closes each front end: Closing, a reset of the
/// device (it is quiet: every job resets its device when done), Closed. The slots are empty
/// for the jobs after this one.
///
/// # Errors
/// No XenStore, store errors, a timeout.
pub fn wait_unplug(
    xs: Option<&mut Xs>,
    info: &mut BootInfo,
    kind: Option<Kind>,
) -> Result<(), Fail> {
    let xs = xs.ok_or(Fail::new("unplug-wait needs XenStore (vmm --xenstore)", 0))?;
    let deadline = crate::irq::deadline_ms(UNPLUG_TIMEOUT_MS);
    loop {
        let mut left = 0;
        for slot in 0..info.num_devices as usize {
            let Some((_, k, devid)) = devices(info).find(|&(i, _, _)| i == slot) else {
                continue;
            };
            if kind.is_some_and(|want| want != k) {
                continue;
            }
            let back = backend(xs, info, k, devid, "state")?;
            if state(xs, back.as_str())? != CLOSING {
                left += 1;
                continue;
            }
            set_state(xs, info, k, devid, CLOSING)?;
            crate::rt::mmio_write32(info.devices[slot].mmio_base + MMIO_STATUS, 0);
            set_state(xs, info, k, devid, CLOSED)?;
            // The watch only wakes waiters; one left behind costs nothing.
            let _ = xs.unwatch(back.as_str(), token(slot).as_str());
            info.devices[slot].device_id = 0;
            info.devids[slot] = NO_DEVID;
        }
        if left == 0 {
            return Ok(());
        }
        if !xs.wait_event(deadline)? {
            return Err(Fail::new(
                "back ends not closing within ms",
                UNPLUG_TIMEOUT_MS,
            ));
        }
    }
}
