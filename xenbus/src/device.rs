//! The toolstack's side of a device's life: creating both directories, asking the back end
//! to close, removing them, and reading a device's status. Every multi-node change is one
//! transaction, so a failure leaves nothing half-made.

use std::time::Duration;

use xenstore_lite::client::Transaction;
use xenstore_lite::perms::NodePerms;
use xenstore_lite::{Client, XsOps};

use crate::config::{read_optional, DeviceConfig};
use crate::error::{Result, XenbusError};
use crate::layout::{
    backend_perms, backend_root, domain_path, frontend_perms, frontend_root, node, DeviceId,
    DeviceKind, BACKEND_DOMID, SPECIFICATION_VIRTIO, TRANSPORT_MMIO,
};
use crate::state::XenbusState;
use crate::tx::{numeric_children, rm_if_present, transaction};
use crate::wait::{read_state, wait_state};

/// Whether guest domain `domid` exists (`/local/domain/<domid>` is present).
///
/// # Errors
/// Store errors.
pub fn domain_exists<O: XsOps + ?Sized>(ops: &mut O, domid: u32) -> Result<bool> {
    Ok(ops.exists(&domain_path(domid))?)
}

/// The device numbers of `kind` that `domid` has on either side, sorted.
///
/// # Errors
/// Store errors.
pub fn devids<O: XsOps + ?Sized>(ops: &mut O, domid: u32, kind: DeviceKind) -> Result<Vec<u32>> {
    let mut v = numeric_children(ops, &frontend_root(domid, kind))?;
    v.extend(numeric_children(
        ops,
        &format!("{}/{domid}", backend_root(kind)),
    )?);
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// The lowest device number of `kind` that `domid` does not use.
///
/// # Errors
/// Store errors.
pub fn free_devid<O: XsOps + ?Sized>(ops: &mut O, domid: u32, kind: DeviceKind) -> Result<u32> {
    let used = devids(ops, domid, kind)?;
    Ok((0..)
        .find(|n| used.binary_search(n).is_err())
        .expect("fewer than 2^32 devices"))
}

fn write_dir(
    tx: &mut Transaction<'_>,
    dir: &str,
    perms: &NodePerms,
    nodes: &[(&str, String)],
) -> Result<()> {
    tx.mkdir(dir)?;
    tx.set_perms(dir, perms)?;
    // Children inherit the directory's permissions.
    for (name, value) in nodes {
        tx.write(&format!("{dir}/{name}"), value.as_bytes())?;
    }
    Ok(())
}

/// Creates `dev` with `config`: the back-end directory (owned by dom0, readable by the
/// guest) and the front-end directory (owned by the guest, readable by dom0), both in state
/// Initialising, in one transaction.
///
/// # Errors
/// [`XenbusError::NoSuchDomain`], [`XenbusError::DeviceExists`] (nothing is written then),
/// store errors.
pub fn create(client: &mut Client, dev: &DeviceId, config: &DeviceConfig) -> Result<()> {
    let init = XenbusState::Initialising.as_node_value();
    let mut back = vec![
        (node::FRONTEND, dev.frontend()),
        (node::FRONTEND_ID, dev.domid.to_string()),
        (node::ONLINE, "1".to_owned()),
        (node::SPECIFICATION, SPECIFICATION_VIRTIO.to_owned()),
        (node::TRANSPORT, TRANSPORT_MMIO.to_owned()),
    ];
    back.extend(config.backend_nodes());
    back.push((node::STATE, init.clone()));
    let mut front = vec![
        (node::BACKEND, dev.backend()),
        (node::BACKEND_ID, BACKEND_DOMID.to_string()),
        (node::SPECIFICATION, SPECIFICATION_VIRTIO.to_owned()),
        (node::TRANSPORT, TRANSPORT_MMIO.to_owned()),
    ];
    front.extend(config.frontend_nodes());
    front.push((node::STATE, init));
    transaction(client, |tx| {
        if !domain_exists(tx, dev.domid)? {
            return Err(XenbusError::NoSuchDomain(dev.domid));
        }
        if tx.exists(&dev.frontend())? || tx.exists(&dev.backend())? {
            return Err(XenbusError::DeviceExists(*dev));
        }
        write_dir(tx, &dev.backend(), &backend_perms(dev.domid), &back)?;
        write_dir(tx, &dev.frontend(), &frontend_perms(dev.domid), &front)
    })
}

/// Asks the back end to let go of `dev` the way libxl does: `online` = 0 and back-end
/// `state` = Closing, in one transaction.
///
/// # Errors
/// [`XenbusError::NoSuchDevice`], store errors.
pub fn request_close(client: &mut Client, dev: &DeviceId) -> Result<()> {
    transaction(client, |tx| {
        if !tx.exists(&dev.backend())? {
            return Err(XenbusError::NoSuchDevice(*dev));
        }
        tx.write(&dev.backend_node(node::ONLINE), b"0")?;
        let closing = XenbusState::Closing.as_node_value();
        let state = read_state(tx, &dev.backend_node(node::STATE))?;
        if state < XenbusState::Closing {
            tx.write(&dev.backend_node(node::STATE), closing.as_bytes())?;
        }
        Ok(())
    })
}

/// Waits until the back end of `dev` is Closed (or its directory is gone).
///
/// # Errors
/// [`XenbusError::Timeout`], store errors.
pub fn wait_backend_closed(client: &mut Client, dev: &DeviceId, timeout: Duration) -> Result<()> {
    let path = dev.backend_node(node::STATE);
    wait_state(client, &path, timeout, |s| {
        matches!(s, XenbusState::Closed | XenbusState::Unknown)
    })
    .map(drop)
}

/// Removes both directories of `dev` (and the back end's per-domain directory when it is
/// left empty) in one transaction. Absent directories are not an error.
///
/// # Errors
/// Store errors.
pub fn remove(client: &mut Client, dev: &DeviceId) -> Result<()> {
    transaction(client, |tx| {
        rm_if_present(tx, &dev.frontend())?;
        rm_if_present(tx, &dev.backend())?;
        let per_domain = format!("{}/{}", backend_root(dev.kind), dev.domid);
        if crate::tx::children(tx, &per_domain)?.is_empty() {
            rm_if_present(tx, &per_domain)?;
        }
        Ok(())
    })
}

/// One device as `pvctl list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// The device.
    pub id: DeviceId,
    /// Front-end state (Unknown without a front-end directory).
    pub frontend_state: XenbusState,
    /// Back-end state (Unknown without a back-end directory).
    pub backend_state: XenbusState,
    /// The published vhost-user socket.
    pub socket: Option<String>,
    /// The back end's `error` node.
    pub error: Option<String>,
    /// `params` (vbd) or `mac` (vif).
    pub detail: Option<String>,
}

/// Reads the status of `dev`.
///
/// # Errors
/// Store errors.
pub fn status<O: XsOps + ?Sized>(ops: &mut O, dev: &DeviceId) -> Result<DeviceStatus> {
    let detail = match dev.kind {
        DeviceKind::Vbd => node::PARAMS,
        DeviceKind::Vif => node::MAC,
    };
    Ok(DeviceStatus {
        id: *dev,
        frontend_state: read_state(ops, &dev.frontend_node(node::STATE))?,
        backend_state: read_state(ops, &dev.backend_node(node::STATE))?,
        socket: read_optional(ops, &dev.backend_node(node::VHOST_USER_SOCKET))?,
        error: read_optional(ops, &dev.backend_node(node::ERROR))?,
        detail: read_optional(ops, &dev.backend_node(detail))?,
    })
}
