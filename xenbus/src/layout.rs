//! Where devices live in the store (Xen's `docs/misc/xenstore-paths.markdown`, with the node
//! names libxl uses for `specification=virtio` devices served by external back-ends) and the
//! permissions Xen gives them.
//!
//! - Front end: `/local/domain/<domid>/device/<kind>/<devid>/`, owned by the guest, readable
//!   by dom0 (`n<domid>,r0`).
//! - Back end: `/local/domain/0/backend/<kind>/<domid>/<devid>/`, owned by dom0, readable by
//!   the guest (`n0,r<domid>`).

use std::fmt;
use std::str::FromStr;

use xenstore_lite::perms::{NodePerms, PermEntry, PermKind};

/// The back-end domain: pvio's back-end daemons act as dom0.
pub const BACKEND_DOMID: u32 = 0;
/// Largest guest domain id (`DOMID_FIRST_RESERVED` - 1 in xen.h).
pub const MAX_DOMID: u32 = 0x7fef;

/// Node names shared by both directories.
pub mod node {
    /// XenbusState as decimal text.
    pub const STATE: &str = "state";
    /// Front end: the back-end directory's path.
    pub const BACKEND: &str = "backend";
    /// Front end: the back-end domain id.
    pub const BACKEND_ID: &str = "backend-id";
    /// Back end: the front-end directory's path.
    pub const FRONTEND: &str = "frontend";
    /// Back end: the guest's domain id.
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Back end: `1` while the toolstack wants the device, `0` once it detaches it.
    pub const ONLINE: &str = "online";
    /// libxl: `virtio` for devices the guest drives with virtio (here: always).
    pub const SPECIFICATION: &str = "specification";
    /// libxl: the virtio transport, `mmio`.
    pub const TRANSPORT: &str = "transport";
    /// Back end: why the back end gave up on the device (with state Closed).
    pub const ERROR: &str = "error";
    /// Back end: the vhost-user socket the front end connects to, published at InitWait.
    pub const VHOST_USER_SOCKET: &str = "vhost-user-socket";
    /// vbd back end: the image path (libxl `params`).
    pub const PARAMS: &str = "params";
    /// vbd back end: `r` or `w`.
    pub const MODE: &str = "mode";
    /// vbd back end: virtqueues to offer.
    pub const NUM_QUEUES: &str = "num-queues";
    /// vbd back end (published): capacity in 512-byte sectors.
    pub const SECTORS: &str = "sectors";
    /// vbd back end (published): logical sector size in bytes.
    pub const SECTOR_SIZE: &str = "sector-size";
    /// vbd back end (published): blkif `VDISK_*` flags (4 = read-only).
    pub const INFO: &str = "info";
    /// vbd back end (published): `1` when FLUSH is offered.
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    /// vbd back end (published): `1` when DISCARD is offered.
    pub const FEATURE_DISCARD: &str = "feature-discard";
    /// vif, both sides: the guest's MAC address `xx:xx:xx:xx:xx:xx`.
    pub const MAC: &str = "mac";
    /// vif back end: MTU in bytes.
    pub const MTU: &str = "mtu";
    /// vif back end: the switch to join (exclusive with `tap`).
    pub const SWITCH: &str = "switch";
    /// vif back end: the TAP device to bridge to (exclusive with `switch`).
    pub const TAP: &str = "tap";
    /// vif back end: queue pairs to offer.
    pub const NUM_QUEUE_PAIRS: &str = "num-queue-pairs";
    /// Front end, written by the VMM (dom0) once the device is live in the guest: the index
    /// of the virtio-mmio slot it is connected to (slot i: window `0xd0000000 + 0x1000 i`,
    /// GSI `5 + i`, as the guest's boot info lists them). Absent while the device is not
    /// (or no longer) in a slot.
    pub const VIRTIO_MMIO_SLOT: &str = "virtio-mmio-slot";
    /// Front end, written by the guest with its `state` Initialised (one transaction): the
    /// queues (vbd) or queue pairs (vif) it uses (Linux blkfront/netfront's name).
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
}

/// `specification` value of every pvio device.
pub const SPECIFICATION_VIRTIO: &str = "virtio";
/// `transport` value of every pvio device.
pub const TRANSPORT_MMIO: &str = "mmio";
/// blkif.h `VDISK_READONLY`, in a vbd's `info`.
pub const VDISK_READONLY: u32 = 4;

/// A device class: Xen's directory names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKind {
    /// A block device (`vbd`), served by backend-blk.
    Vbd,
    /// A network interface (`vif`), served by backend-net.
    Vif,
}

impl DeviceKind {
    /// Every kind, in listing order.
    pub const ALL: [DeviceKind; 2] = [DeviceKind::Vbd, DeviceKind::Vif];

    /// The directory name: `vbd` or `vif`.
    pub fn dir_name(self) -> &'static str {
        match self {
            DeviceKind::Vbd => "vbd",
            DeviceKind::Vif => "vif",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

impl FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vbd" => Ok(DeviceKind::Vbd),
            "vif" => Ok(DeviceKind::Vif),
            _ => Err(format!("unknown device kind {s:?} (vbd or vif)")),
        }
    }
}

/// `/local/domain/<domid>`.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// `/local/domain/0/backend/<kind>`: the directory one back-end daemon watches.
pub fn backend_root(kind: DeviceKind) -> String {
    format!("{}/backend/{kind}", domain_path(BACKEND_DOMID))
}

/// `/local/domain/<domid>/device/<kind>`.
pub fn frontend_root(domid: u32, kind: DeviceKind) -> String {
    format!("{}/device/{kind}", domain_path(domid))
}

/// One device of one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId {
    /// Its class.
    pub kind: DeviceKind,
    /// The guest (front-end) domain.
    pub domid: u32,
    /// The device number within the guest and kind.
    pub devid: u32,
}

impl DeviceId {
    /// The device `devid` of kind `kind` of domain `domid`.
    pub fn new(kind: DeviceKind, domid: u32, devid: u32) -> Self {
        DeviceId { kind, domid, devid }
    }

    /// The front-end directory `/local/domain/<domid>/device/<kind>/<devid>`.
    pub fn frontend(&self) -> String {
        format!("{}/{}", frontend_root(self.domid, self.kind), self.devid)
    }

    /// The back-end directory `/local/domain/0/backend/<kind>/<domid>/<devid>`.
    pub fn backend(&self) -> String {
        format!("{}/{}/{}", backend_root(self.kind), self.domid, self.devid)
    }

    /// A node in the front-end directory.
    pub fn frontend_node(&self, name: &str) -> String {
        format!("{}/{name}", self.frontend())
    }

    /// A node in the back-end directory.
    pub fn backend_node(&self, name: &str) -> String {
        format!("{}/{name}", self.backend())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.domid, self.devid)
    }
}

fn perms(owner: u32, reader: u32) -> NodePerms {
    NodePerms::from_entries(vec![
        PermEntry {
            domid: owner,
            kind: PermKind::None,
        },
        PermEntry {
            domid: reader,
            kind: PermKind::Read,
        },
    ])
    .expect("two entries")
}

/// Back-end directory permissions: owned by dom0, readable by the guest (`n0,r<domid>`).
pub fn backend_perms(domid: u32) -> NodePerms {
    perms(BACKEND_DOMID, domid)
}

/// Front-end directory permissions: owned by the guest, readable by dom0 (`n<domid>,r0`).
pub fn frontend_perms(domid: u32) -> NodePerms {
    perms(domid, BACKEND_DOMID)
}

/// Permissions of the guest's home and of nodes the guest may read but not change
/// (`n0,r<domid>`, libxl's `roperms`).
pub fn domain_ro_perms(domid: u32) -> NodePerms {
    perms(BACKEND_DOMID, domid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_xen() {
        let d = DeviceId::new(DeviceKind::Vbd, 3, 51712);
        assert_eq!(d.frontend(), "/local/domain/3/device/vbd/51712");
        assert_eq!(d.backend(), "/local/domain/0/backend/vbd/3/51712");
        assert_eq!(
            DeviceId::new(DeviceKind::Vif, 7, 0).backend_node(node::MAC),
            "/local/domain/0/backend/vif/7/0/mac"
        );
        assert_eq!(backend_perms(3).to_string(), "n0,r3");
        assert_eq!(frontend_perms(3).to_string(), "n3,r0");
        assert_eq!("vif".parse(), Ok(DeviceKind::Vif));
        assert!("vbdx".parse::<DeviceKind>().is_err());
    }
}
