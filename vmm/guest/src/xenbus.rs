//! The guest's XenBus front end (xen/include/public/io/xenbus.h): for each device the boot
//! info marks as a XenBus device, it reads `backend` from its front-end directory
//! `/local/domain/<domid>/device/<vbd|vif>/<devid>`, waits for the back end's InitWait (or
//! Connected), writes Initialised, waits for the back end's Connected and writes Connected.
//! [`wait_unplug`] waits for the back end's Closing, quiesces (the block jobs reset their
//! device after each job, so nothing is in flight) and writes Closing, then Closed.
//! Back-end states are polled (one XS_READ per check, a bounded `hlt` between checks).

use core::fmt::Write;

use crate::println;
use crate::rt::boot_info::{BootInfo, NO_DEVID, XENSTORE_GSI};
use crate::xs::{PathBuf, Xs};
use crate::Fail;

const INIT_WAIT: u8 = 2;
const INITIALISED: u8 = 3;
const CONNECTED: u8 = 4;
const CLOSING: u8 = 5;
const CLOSED: u8 = 6;
/// Vector of the store's interrupt (after the eight device vectors).
const XENSTORE_VECTOR: u8 = crate::irq::DEVICE_VECTOR_BASE + 8;
/// How long a back end may take for one step, in milliseconds.
const STEP_TIMEOUT_MS: u64 = 60_000;
/// How long [`wait_unplug`] waits for the back end's Closing, in milliseconds.
const UNPLUG_TIMEOUT_MS: u64 = 300_000;
/// Sleep between two checks of a back end's state (ns).
const CHECK_NS: u32 = 20_000_000;

/// The XenBus devices: (boot-info index, directory name, device number).
fn devices(info: &BootInfo) -> impl Iterator<Item = (usize, &'static str, u32)> + '_ {
    (0..info.num_devices as usize).filter_map(|i| {
        let devid = info.devids[i];
        let kind = if info.devices[i].device_id == 2 {
            "vbd"
        } else {
            "vif"
        };
        (devid != NO_DEVID).then_some((i, kind, devid))
    })
}

fn frontend(info: &BootInfo, kind: &str, devid: u32, node: &str) -> PathBuf {
    let mut p = PathBuf::new();
    let domid = info.xenstore.domid;
    let _ = write!(p, "/local/domain/{domid}/device/{kind}/{devid}/{node}");
    p
}

fn backend_dir(xs: &mut Xs, info: &BootInfo, kind: &str, devid: u32) -> Result<PathBuf, Fail> {
    let value = xs.read(frontend(info, kind, devid, "backend").as_str())?;
    let mut p = PathBuf::new();
    let text = core::str::from_utf8(value).map_err(|_| Fail::new("backend node not UTF-8", 0))?;
    write!(p, "{}/state", text.trim_end_matches('\0'))
        .map_err(|_| Fail::new("backend path too long", value.len() as u64))?;
    Ok(p)
}

fn state(xs: &mut Xs, path: &str) -> Result<u8, Fail> {
    let v = xs.read(path)?;
    match v {
        [d @ b'0'..=b'9'] => Ok(d - b'0'),
        _ => Err(Fail::new("state node is not a XenbusState", v.len() as u64)),
    }
}

/// Writes the front end's `state`. The console line comes first: once the store holds the
/// state the toolstack may stop the VM (destroy waits for Closed, then ends the VMM), and the
/// line must not be lost; a failed write is reported after it.
fn set_state(xs: &mut Xs, info: &BootInfo, kind: &str, devid: u32, s: u8) -> Result<(), Fail> {
    println!("pvio-guest: xenbus {kind}/{devid} state {s}");
    xs.write(frontend(info, kind, devid, "state").as_str(), &[b'0' + s])
}

/// Waits (polling) until the back end at `path` is in one of `want`; returns that state. A
/// back end in Closed that was not wanted is an error.
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
        if crate::irq::past(deadline) {
            return Err(Fail::new(
                "back end did not reach the state, it is in",
                s.into(),
            ));
        }
        crate::irq::wait(CHECK_NS);
    }
}

/// Walks every XenBus device to Connected. Without XenStore (boot info) it does nothing.
///
/// # Errors
/// Store errors, a back end that closed or did not move.
pub fn connect_all(info: &BootInfo) -> Result<Option<Xs>, Fail> {
    let Some(mut xs) = Xs::new(&info.xenstore) else {
        return Ok(None);
    };
    crate::irq::route(XENSTORE_GSI, XENSTORE_VECTOR);
    for (_, kind, devid) in devices(info) {
        let back = backend_dir(&mut xs, info, kind, devid)?;
        wait_backend(
            &mut xs,
            back.as_str(),
            &[INIT_WAIT, CONNECTED],
            STEP_TIMEOUT_MS,
        )?;
        set_state(&mut xs, info, kind, devid, INITIALISED)?;
        wait_backend(&mut xs, back.as_str(), &[CONNECTED], STEP_TIMEOUT_MS)?;
        set_state(&mut xs, info, kind, devid, CONNECTED)?;
    }
    Ok(Some(xs))
}

/// Waits for the back end of every XenBus device to ask for Closing, then closes the front
/// end: Closing, (the device is already quiet) Closed.
///
/// # Errors
/// No XenStore, store errors, a timeout.
pub fn wait_unplug(xs: Option<&mut Xs>, info: &BootInfo) -> Result<(), Fail> {
    let xs = xs.ok_or(Fail::new("unplug-wait needs XenStore (vmm --xenstore)", 0))?;
    for (index, kind, devid) in devices(info) {
        let back = backend_dir(xs, info, kind, devid)?;
        wait_backend(xs, back.as_str(), &[CLOSING], UNPLUG_TIMEOUT_MS)?;
        set_state(xs, info, kind, devid, CLOSING)?;
        // Quiesce: the device was reset after its last job; reset again in case a job failed.
        crate::rt::mmio_write32(info.devices[index].mmio_base + 0x70, 0);
        set_state(xs, info, kind, devid, CLOSED)?;
    }
    Ok(())
}
