//! `vmm run --xenstore PATH --domid N --evtchn-broker PATH`: the VMM's part in the XenBus
//! handshake (Xen's split-driver model over xenstore-lite, see xenbus/README.md).
//!
//! As Xen's toolstack and hypervisor do for a PV guest, the VMM
//! 1. connects to the evtchn broker as domain N, grants a fresh page to domain 0 and allocates
//!    an unbound event channel for it: the guest's xenstore ring (xs_wire.h
//!    `struct xenstore_domain_interface`, its `evtchn_port` field filled in);
//!    The guest's doorbell (a 4-byte `out` of the port to [`XENSTORE_NOTIFY_PORT`]) is a KVM
//!    ioeventfd, turned into EVTCHNOP_send by a VMM thread: the vCPU does not exit for it;
//! 2. introduces the domain to xenstore-lite (XS_INTRODUCE `N gref port`, recorded in
//!    `/local/domain/N/store/{ring-ref,port}`), which then serves the guest over that ring;
//! 3. reads the domain's `device/vbd` and `device/vif` directories, waits (bounded) for each
//!    back end's InitWait with its `vhost-user-socket`, and makes each device a virtio-mmio
//!    transport connected to that socket.
//!
//! The page becomes guest memory at [`XENSTORE_RING_GPA`] (a KVM memory slot over the same
//! mapping); the guest learns the address, the port and which slot is which device from the
//! boot info, and then speaks XenBus itself (state transitions are the guest's, not the VMM's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use evtchn::xs_ring::EVTCHN_PORT_OFFSET;
use evtchn::{Domain, GrantRef, Port, SharedRegion};
use xenbus::frontend::Frontend;
use xenbus::layout::{domain_path, node};
use xenbus::tx::transaction;
use xenbus::{DeviceId, DeviceKind};
use xenstore_lite::{Client, XsOps};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot_info::{XenstoreInfo, XENSTORE_GSI, XENSTORE_NOTIFY_PORT};
use crate::cli::DeviceSpec;
use crate::vm::VmError;

/// Guest-physical address of the xenstore ring page (just above the largest guest RAM,
/// below the virtio-mmio windows).
pub const XENSTORE_RING_GPA: u64 = 0xc000_0000;

/// Errors of the XenStore set-up.
#[derive(Debug, thiserror::Error)]
pub enum XenstoreError {
    /// The broker refused or is not there.
    #[error("evtchn broker {path}: {source}")]
    Broker {
        /// The broker's socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: evtchn::BrokerError,
    },
    /// The ring page could not be written.
    #[error("xenstore ring page: {0}")]
    Page(#[from] evtchn::MappingError),
    /// The store is not there or refused a request.
    #[error("xenstore {path}: {source}")]
    Store {
        /// The store's socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: xenstore_lite::ClientError,
    },
    /// A device's handshake could not start.
    #[error("{0}")]
    Xenbus(#[from] xenbus::XenbusError),
    /// The domain id is not a guest's (1..=32751).
    #[error("domain id {0} is not a guest domain")]
    BadDomid(u32),
    /// A thread could not be started.
    #[error("starting a thread: {0}")]
    Thread(String),
}

/// One device of the domain found in the store.
#[derive(Debug, Clone)]
pub struct StoreDevice {
    /// Which device (kind, domain, device number).
    pub id: DeviceId,
    /// How to connect it.
    pub spec: DeviceSpec,
}

/// The guest's xenstore ring and its event channel, and the domain's devices.
#[derive(Debug)]
pub struct XenstoreGuest {
    /// The VMM's connection to the broker as the guest domain (notifications both ways).
    pub domain: Arc<Domain>,
    /// The ring page (mapped into the guest at [`XENSTORE_RING_GPA`]).
    pub page: SharedRegion,
    /// Grant reference of the page (XS_INTRODUCE's gfn).
    pub gref: GrantRef,
    /// The guest's port of the ring's event channel.
    pub port: Port,
    /// The domain's devices, in device-number order (vbd first).
    pub devices: Vec<StoreDevice>,
    /// The store's socket (the hot-plug thread opens its own connection).
    pub store: PathBuf,
}

/// Sets up domain `domid`'s ring, introduces it to the store at `store` and collects its
/// devices (each back end gets `timeout` to publish its socket).
///
/// # Errors
/// [`XenstoreError`]: broker, store, a back end that failed or did not become ready.
pub fn setup(
    store: &Path,
    broker: &Path,
    domid: u32,
    timeout: Duration,
) -> Result<XenstoreGuest, XenstoreError> {
    let guest = evtchn::DomId::try_from(domid)
        .ok()
        .filter(|&d| d != 0 && u32::from(d) <= xenbus::layout::MAX_DOMID)
        .ok_or(XenstoreError::BadDomid(domid))?;
    let broker_err = |source| XenstoreError::Broker {
        path: broker.to_owned(),
        source,
    };
    let domain = Arc::new(Domain::connect(broker, guest).map_err(broker_err)?);
    let (gref, page) = domain.grant_access(0, 1).map_err(broker_err)?;
    let port = domain.alloc_unbound(0).map_err(broker_err)?;
    page.atomic_u32(EVTCHN_PORT_OFFSET)?
        .store(port, std::sync::atomic::Ordering::Release);
    let store_err = |source| XenstoreError::Store {
        path: store.to_owned(),
        source,
    };
    let mut client = Client::connect(store).map_err(store_err)?;
    introduce(&mut client, domid, gref, port).map_err(store_err)?;
    let devices = devices(&mut client, domid, timeout)?;
    Ok(XenstoreGuest {
        domain,
        page,
        gref,
        port,
        devices,
        store: store.to_owned(),
    })
}

/// XS_INTRODUCE and the `store/ring-ref`, `store/port` nodes Xen keeps beside it.
fn introduce(
    client: &mut Client,
    domid: u32,
    gref: GrantRef,
    port: Port,
) -> xenstore_lite::client::Result<()> {
    client.introduce(domid, gref.into(), port)?;
    let home = domain_path(domid);
    transaction(client, |tx| {
        tx.write(
            &format!("{home}/store/ring-ref"),
            gref.to_string().as_bytes(),
        )?;
        tx.write(&format!("{home}/store/port"), port.to_string().as_bytes())
    })
}

fn devices(
    client: &mut Client,
    domid: u32,
    timeout: Duration,
) -> Result<Vec<StoreDevice>, XenstoreError> {
    let mut found = Vec::new();
    for kind in DeviceKind::ALL {
        for devid in xenbus::device::devids(client, domid, kind)? {
            let id = DeviceId::new(kind, domid, devid);
            let ready = Frontend::open(client, id)?.wait_backend_ready(client, timeout)?;
            let kind = virtio_kind(kind, ready.number(node::NUM_QUEUES));
            log::info!("{id}: back end ready at {}", ready.socket.display());
            found.push(StoreDevice {
                id,
                spec: DeviceSpec {
                    socket: ready.socket,
                    kind,
                },
            });
        }
    }
    Ok(found)
}

/// The virtio device for a XenBus device of `kind` whose back end offers `num_queues`
/// (vbd; absent or out of range: 1). A vif is one receive / transmit pair with the back
/// end's MAC.
pub fn virtio_kind(kind: DeviceKind, num_queues: Option<u64>) -> crate::virtio::DeviceKind {
    match kind {
        DeviceKind::Vbd => crate::virtio::DeviceKind::Blk {
            num_queues: num_queues
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n >= 1)
                .unwrap_or(1),
        },
        DeviceKind::Vif => crate::virtio::DeviceKind::Net { mac: None },
    }
}

/// Makes the ring page guest memory at [`XENSTORE_RING_GPA`] (KVM memory slot 1), starts
/// the thread that turns the store's notifications into interrupts on [`XENSTORE_GSI`] (a
/// KVM irqfd) and the one that turns the guest's doorbell (a KVM ioeventfd on
/// [`XENSTORE_NOTIFY_PORT`]) into EVTCHNOP_send. `ram_bytes` is the guest RAM size (it must end below the ring).
///
/// # Errors
/// [`VmError::Kvm`], [`VmError::Thread`].
pub fn attach(vm: &VmFd, xs: &Arc<XenstoreGuest>, ram_bytes: u64) -> Result<(), VmError> {
    let kvm_err = |what| move |source| VmError::Kvm { what, source };
    debug_assert!(ram_bytes <= XENSTORE_RING_GPA);
    let region = kvm_userspace_memory_region {
        slot: 1,
        flags: 0,
        guest_phys_addr: XENSTORE_RING_GPA,
        memory_size: xs.page.len() as u64,
        userspace_addr: xs.page.host_address(),
    };
    // SAFETY: the region is the live mapping of the ring page, which `xs` owns; the caller
    // keeps `xs` (in the vCPUs' bus) for as long as the VM can run.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (xenstore ring)"))?;
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Kvm {
        what: "eventfd",
        source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    vm.register_irqfd(&irq, XENSTORE_GSI)
        .map_err(kvm_err("KVM_IRQFD (xenstore)"))?;
    let domain = Arc::clone(&xs.domain);
    std::thread::Builder::new()
        .name("xenstore-evtchn".into())
        .spawn(move || forward_events(&domain, &irq))
        .map_err(VmError::Thread)?;
    let doorbell = EventFd::new(0).map_err(|e| VmError::Kvm {
        what: "eventfd",
        source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let port = IoEventAddress::Pio(XENSTORE_NOTIFY_PORT.into());
    vm.register_ioevent(&doorbell, &port, xs.port)
        .map_err(kvm_err("KVM_IOEVENTFD (xenstore doorbell)"))?;
    let (domain, port) = (Arc::clone(&xs.domain), xs.port);
    std::thread::Builder::new()
        .name("xenstore-doorbell".into())
        .spawn(move || forward_doorbell(&doorbell, &domain, port))
        .map_err(VmError::Thread)?;
    Ok(())
}

/// Turns the guest's doorbell writes (a KVM ioeventfd on [`XENSTORE_NOTIFY_PORT`]: 4 bytes,
/// data = the ring's port; the vCPU does not exit) into EVTCHNOP_send to the store, one per
/// batch, until the eventfd fails.
fn forward_doorbell(doorbell: &EventFd, domain: &Domain, port: Port) {
    loop {
        if let Err(e) = doorbell.read() {
            log::warn!("xenstore doorbell: {e}; the store is no longer notified");
            return;
        }
        if let Err(e) = domain.notify(port) {
            log::warn!("xenstore notify: {e}");
        }
    }
}

/// Raises the guest's interrupt for every batch of the store's notifications, until the
/// broker goes away.
fn forward_events(domain: &Domain, irq: &EventFd) {
    loop {
        match domain.wait(None) {
            Ok(_) => {
                if let Err(e) = irq.write(1) {
                    log::warn!("xenstore irqfd: {e}");
                }
            }
            Err(e) => {
                log::warn!("xenstore event channel: {e}; the guest is no longer notified");
                return;
            }
        }
    }
}

/// The boot-info section describing the ring.
pub fn boot_info(xs: &XenstoreGuest) -> XenstoreInfo {
    XenstoreInfo {
        ring_gpa: XENSTORE_RING_GPA,
        port: xs.port,
        domid: xs.domain.domid().into(),
    }
}
