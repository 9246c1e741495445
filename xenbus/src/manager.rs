//! The back-end device manager: one daemon serving every device of its kind.
//!
//! It watches `/local/domain/0/backend/<kind>` and each device's front-end `state`; at every
//! event it rescans the directory, runs each device's [`BackendMachine`] on a fresh
//! [`DeviceView`] and writes the machine's [`Update`] in one transaction (skipped if the
//! toolstack removed the device meanwhile, so removed nodes never come back). Devices whose
//! nodes are gone get [`DeviceActions::remove`]. A failure of one device is that device's
//! `error` node; the others go on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xenstore_lite::{Client, XsOps};

use crate::backend::{BackendMachine, DeviceActions, DeviceView, Update};
use crate::config::{read_optional, DeviceConfig};
use crate::error::Result;
use crate::layout::{backend_root, node, DeviceId, DeviceKind};
use crate::tx::{numeric_children, rm_if_present, transaction};
use crate::wait::read_state;

/// How often [`Manager::run`] looks at its stop flag while no event comes.
pub const STOP_POLL: Duration = Duration::from_millis(200);

/// Makes the actions of each new device.
pub trait ActionsFactory {
    /// The per-device actions.
    type Actions: DeviceActions;

    /// Actions for `dev`, which the manager has just found.
    fn actions(&mut self, dev: &DeviceId) -> Self::Actions;
}

struct Managed<A> {
    machine: BackendMachine,
    actions: A,
    token: String,
}

/// Serves every device of one kind found in the store.
pub struct Manager<F: ActionsFactory> {
    client: Client,
    kind: DeviceKind,
    factory: F,
    devices: BTreeMap<DeviceId, Managed<F::Actions>>,
}

const ROOT_TOKEN: &str = "backend-root";

impl<F: ActionsFactory> Manager<F> {
    /// A manager of `kind` devices over `client` (a dom0 connection).
    pub fn new(client: Client, kind: DeviceKind, factory: F) -> Self {
        Manager {
            client,
            kind,
            factory,
            devices: BTreeMap::new(),
        }
    }

    /// The devices currently managed.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.devices.keys()
    }

    /// Watches the back-end directory and handles events until `stop` is set; then removes
    /// every device's local resources (the store is left as it is, so a restarted daemon
    /// finds its devices again).
    ///
    /// # Errors
    /// Store errors (the store went away).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        self.client.watch(&backend_root(self.kind), ROOT_TOKEN)?;
        let result = self.event_loop(stop);
        self.shutdown();
        result
    }

    fn event_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if self.client.next_event_timeout(STOP_POLL)?.is_some() {
                self.rescan()?;
            }
        }
        Ok(())
    }

    /// Drops every device's local resources (sockets, serving).
    pub fn shutdown(&mut self) {
        for (dev, mut m) in std::mem::take(&mut self.devices) {
            log::info!("{dev}: stopping");
            m.actions.remove();
        }
    }

    /// Looks at every device once: new ones are adopted, gone ones removed, each machine
    /// stepped.
    ///
    /// # Errors
    /// Store errors.
    pub fn rescan(&mut self) -> Result<()> {
        let present = self.present()?;
        let gone: Vec<DeviceId> = self
            .devices
            .keys()
            .filter(|d| !present.contains(d))
            .copied()
            .collect();
        for dev in gone {
            self.forget(&dev)?;
        }
        for dev in present {
            self.adopt(&dev)?;
            self.step(&dev)?;
        }
        Ok(())
    }

    fn present(&mut self) -> Result<Vec<DeviceId>> {
        let root = backend_root(self.kind);
        let mut v = Vec::new();
        for domid in numeric_children(&mut self.client, &root)? {
            for devid in numeric_children(&mut self.client, &format!("{root}/{domid}"))? {
                v.push(DeviceId::new(self.kind, domid, devid));
            }
        }
        Ok(v)
    }

    fn adopt(&mut self, dev: &DeviceId) -> Result<()> {
        if self.devices.contains_key(dev) {
            return Ok(());
        }
        log::info!("{dev}: new device");
        let token = format!("frontend {dev}");
        self.client.watch(&dev.frontend_node(node::STATE), &token)?;
        let actions = self.factory.actions(dev);
        self.devices.insert(
            *dev,
            Managed {
                machine: BackendMachine::new(),
                actions,
                token,
            },
        );
        Ok(())
    }

    fn forget(&mut self, dev: &DeviceId) -> Result<()> {
        if let Some(mut m) = self.devices.remove(dev) {
            log::info!("{dev}: nodes removed");
            m.actions.remove();
            self.client
                .unwatch(&dev.frontend_node(node::STATE), &m.token)?;
        }
        Ok(())
    }

    fn step(&mut self, dev: &DeviceId) -> Result<()> {
        let view = read_view(&mut self.client, dev)?;
        let Some(m) = self.devices.get_mut(dev) else {
            return Ok(());
        };
        if let Some(update) = m.machine.step(&view, &mut m.actions) {
            log::info!("{dev}: {} -> {}", view.backend_state, update.state);
            apply(&mut self.client, dev, &update)?;
        }
        Ok(())
    }
}

/// Reads the snapshot of `dev` a [`BackendMachine`] works on.
///
/// # Errors
/// Store errors.
pub fn read_view<O: XsOps + ?Sized>(ops: &mut O, dev: &DeviceId) -> Result<DeviceView> {
    let online = read_optional(ops, &dev.backend_node(node::ONLINE))?;
    Ok(DeviceView {
        backend_state: read_state(ops, &dev.backend_node(node::STATE))?,
        frontend_state: read_state(ops, &dev.frontend_node(node::STATE))?,
        online: online.as_deref().map(str::trim) != Some("0"),
        config: DeviceConfig::read(ops, dev).map_err(|e| e.to_string()),
    })
}

/// Writes `update` to the back-end directory of `dev` in one transaction, unless the
/// directory is gone.
///
/// # Errors
/// Store errors.
pub fn apply(client: &mut Client, dev: &DeviceId, update: &Update) -> Result<()> {
    transaction(client, |tx| {
        if !tx.exists(&dev.backend())? {
            return Ok(());
        }
        for name in &update.remove {
            rm_if_present(tx, &dev.backend_node(name))?;
        }
        for (name, value) in &update.nodes {
            tx.write(&dev.backend_node(name), value.as_bytes())?;
        }
        tx.write(
            &dev.backend_node(node::STATE),
            update.state.as_node_value().as_bytes(),
        )?;
        Ok(())
    })
}
