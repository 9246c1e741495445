//! Hot-plug and unplug of the domain's XenBus devices while the guest runs
//! (`vmm run --xenstore`).
//!
//! A thread with its own store connection (as dom0) watches the domain's front-end
//! directories (`/local/domain/<domid>/device`) and its back-end directories
//! (`/local/domain/0/backend/<vbd|vif>/<domid>`) and, at every event, compares the store with
//! the slots (level-triggered, so a missed event costs nothing):
//!
//! - **plug**: a device the VMM does not hold whose front end is Initialising and whose back
//!   end is in InitWait with its `vhost-user-socket` published is connected to the first empty
//!   slot ([`VhostUserMmio::connect`]: ioeventfds, irqfds, the vhost-user session); then the
//!   slot index is written to the front end's `virtio-mmio-slot` node. The guest watches its
//!   device directories, sees the node, probes the slot and walks the handshake itself.
//! - **unplug**: a device the VMM holds whose front end reached Closed (the guest quiesced it),
//!   whose directories are gone, or whose `virtio-mmio-slot` node no longer names its slot (the
//!   toolstack removed the directories and made the device again) is disconnected and its slot
//!   emptied ([`Slots::unplug`]); the node is removed if the directory is still there.
//!
//! The devices connected at boot are held from the start (their nodes are written before the
//! thread runs), so they unplug and re-plug the same way. Back-end paths are computed from the
//! device id, never read from the guest-owned front-end directory.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use frontend_guest::host::HostRam;
use kvm_ioctls::VmFd;
use xenbus::config::read_optional;
use xenbus::layout::{backend_root, frontend_root, node, DeviceId, DeviceKind};
use xenbus::state::XenbusState;
use xenbus::tx::{numeric_children, rm_if_present};
use xenbus::wait::read_state;
use xenstore_lite::{Client, XsOps};

use crate::slots::{place, Slots};
use crate::virtio::VhostUserMmio;
use crate::xenstore::{virtio_kind, XenstoreError, XenstoreGuest};

/// What the hot-plug thread changes: the VM (ioeventfds, irqfds), its RAM (shared with each
/// back end) and the slots.
pub struct Context {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub ram: Arc<HostRam>,
    /// The virtio-mmio slots.
    pub slots: Arc<Slots>,
}

/// The hot-plug thread's state.
struct HotPlug {
    client: Client,
    domid: u32,
    ctx: Context,
    /// The device each slot holds (by slot index).
    held: Vec<Option<DeviceId>>,
    /// Devices whose socket failed to connect, with that socket: not retried until the back
    /// end publishes another one or the device goes away.
    refused: HashSet<(DeviceId, PathBuf)>,
}

/// A store path relevant to the domain's devices.
fn watched(domid: u32) -> Vec<String> {
    let mut v = vec![format!("{}/device", xenbus::layout::domain_path(domid))];
    v.extend(DeviceKind::ALL.map(|k| format!("{}/{domid}", backend_root(k))));
    v
}

/// Writes the boot devices' `virtio-mmio-slot` nodes, watches the domain's device directories
/// and starts the hot-plug thread. `held[i]` is the XenBus device in slot i at boot.
///
/// # Errors
/// [`XenstoreError`]: the store connection, a write, a watch, or the thread.
pub fn start(
    xs: &XenstoreGuest,
    ctx: Context,
    held: Vec<Option<DeviceId>>,
) -> Result<(), XenstoreError> {
    let store_err = |source| XenstoreError::Store {
        path: xs.store.clone(),
        source,
    };
    let mut client = Client::connect(&xs.store).map_err(store_err)?;
    for (i, id) in held.iter().enumerate() {
        if let Some(id) = id {
            write_slot(&mut client, id, i).map_err(store_err)?;
        }
    }
    let domid = xs.domain.domid().into();
    for (n, path) in watched(domid).iter().enumerate() {
        client
            .watch(path, &format!("vmm-hotplug-{n}"))
            .map_err(store_err)?;
    }
    let mut plug = HotPlug {
        client,
        domid,
        ctx,
        held,
        refused: HashSet::new(),
    };
    std::thread::Builder::new()
        .name("xenbus-hotplug".into())
        .spawn(move || plug.run())
        .map_err(|e| XenstoreError::Thread(e.to_string()))?;
    Ok(())
}

fn write_slot(
    client: &mut Client,
    id: &DeviceId,
    slot: usize,
) -> xenstore_lite::client::Result<()> {
    client.write(
        &id.frontend_node(node::VIRTIO_MMIO_SLOT),
        slot.to_string().as_bytes(),
    )
}

/// Whether a device held in `slot` is to be unplugged, given its front end's and back end's
/// `state` (Unknown: the node is gone) and its `virtio-mmio-slot` node: the front end closed,
/// a directory is gone, or the node does not name `slot` (the device was made again, or the
/// guest removed the node).
fn released(front: XenbusState, back: XenbusState, named: Option<&str>, slot: usize) -> bool {
    matches!(front, XenbusState::Closed | XenbusState::Unknown)
        || back == XenbusState::Unknown
        || named.map(str::trim) != Some(slot.to_string().as_str())
}

impl HotPlug {
    fn run(&mut self) {
        loop {
            if let Err(e) = self.reconcile() {
                log::warn!("hot-plug: {e}");
            }
            if let Err(e) = self.client.next_event() {
                log::warn!("hot-plug: store connection lost ({e}); devices stay as they are");
                return;
            }
        }
    }

    /// Unplugs what should go, then plugs what is ready.
    fn reconcile(&mut self) -> xenbus::Result<()> {
        for slot in 0..self.held.len() {
            if let Some(id) = self.held[slot] {
                if self.gone(&id, slot)? {
                    self.unplug(slot, &id);
                }
            }
        }
        for kind in DeviceKind::ALL {
            for devid in numeric_children(&mut self.client, &frontend_root(self.domid, kind))? {
                let id = DeviceId::new(kind, self.domid, devid);
                if self.held.contains(&Some(id)) {
                    continue;
                }
                if let Some((socket, queues)) = self.ready(&id)? {
                    self.plug(id, socket, queues);
                }
            }
        }
        Ok(())
    }

    /// Whether the device in `slot` is to be unplugged: front end Closed or gone, back end
    /// gone, or its slot node no longer naming `slot` (a new device under the same number).
    fn gone(&mut self, id: &DeviceId, slot: usize) -> xenbus::Result<bool> {
        let front = read_state(&mut self.client, &id.frontend_node(node::STATE))?;
        let back = read_state(&mut self.client, &id.backend_node(node::STATE))?;
        let named = read_optional(&mut self.client, &id.frontend_node(node::VIRTIO_MMIO_SLOT))?;
        Ok(released(front, back, named.as_deref(), slot))
    }

    /// The socket and back-end `num-queues` of a device ready to plug: front end
    /// Initialising, back end InitWait with its socket published, not refused before.
    fn ready(&mut self, id: &DeviceId) -> xenbus::Result<Option<(PathBuf, Option<u64>)>> {
        let c = &mut self.client;
        if read_state(c, &id.frontend_node(node::STATE))? != XenbusState::Initialising
            || read_state(c, &id.backend_node(node::STATE))? != XenbusState::InitWait
        {
            // A device made again goes through Initialising: its new socket is tried.
            self.refused.retain(|(d, _)| d != id);
            return Ok(None);
        }
        let Some(socket) = read_optional(c, &id.backend_node(node::VHOST_USER_SOCKET))? else {
            return Ok(None);
        };
        let socket = PathBuf::from(socket);
        if self.refused.contains(&(*id, socket.clone())) {
            return Ok(None);
        }
        let queues = read_optional(c, &id.backend_node(node::NUM_QUEUES))?
            .and_then(|v| v.trim().parse().ok());
        Ok(Some((socket, queues)))
    }

    fn plug(&mut self, id: DeviceId, socket: PathBuf, queues: Option<u64>) {
        let Some(slot) = self.ctx.slots.free() else {
            log::warn!("hot-plug: {id}: every virtio-mmio slot is taken");
            return;
        };
        let ctx = &self.ctx;
        let kind = virtio_kind(id.kind, queues);
        let name = id.to_string();
        let dev = match VhostUserMmio::connect(
            &name,
            &socket,
            kind,
            Arc::clone(&ctx.ram),
            &ctx.vm,
            place(slot),
        ) {
            Ok(dev) => dev,
            Err(e) => {
                log::error!("hot-plug: {e}");
                self.refused.insert((id, socket));
                return;
            }
        };
        if let Err(dev) = ctx.slots.plug(slot, dev) {
            dev.disconnect(&ctx.vm);
            return;
        }
        self.held[slot] = Some(id);
        match write_slot(&mut self.client, &id, slot) {
            Ok(()) => log::info!("hot-plug: {id} in slot {slot} ({})", socket.display()),
            // The guest cannot learn about it: give the slot up again.
            Err(e) => {
                log::warn!("hot-plug: {id}: writing its slot: {e}");
                self.unplug(slot, &id);
            }
        }
    }

    fn unplug(&mut self, slot: usize, id: &DeviceId) {
        self.ctx.slots.unplug(slot, &self.ctx.vm);
        self.held[slot] = None;
        self.refused.retain(|(d, _)| d != id);
        let node = id.frontend_node(node::VIRTIO_MMIO_SLOT);
        if let Err(e) = rm_if_present(&mut self.client, &node) {
            log::warn!("hot-plug: removing {node}: {e}");
        }
        log::info!("hot-plug: {id} left slot {slot}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use XenbusState::*;

    #[test]
    fn a_device_is_released_when_closed_gone_or_made_again() {
        // Connected, or on its way there or out: it stays.
        for front in [Initialising, Initialised, Connected, Closing] {
            assert!(!released(front, Connected, Some("2"), 2), "{front:?}");
        }
        assert!(!released(Connected, Closing, Some("2"), 2));
        assert!(!released(Connected, Closed, Some("2"), 2));
        // The guest let go, or the toolstack removed a directory.
        assert!(released(Closed, Closed, Some("2"), 2));
        assert!(released(Unknown, Connected, Some("2"), 2));
        assert!(released(Connected, Unknown, Some("2"), 2));
        // A new device under the same number (no node yet), or a node naming another slot.
        assert!(released(Initialising, InitWait, None, 2));
        assert!(released(Connected, Connected, Some("3"), 2));
        assert!(released(Connected, Connected, Some("x"), 2));
    }
}
