//! Xen-style event channels and shared-memory request/response rings between processes.
//!
//! In Xen, domains talk through pages of shared memory (granted with the grant table) and event
//! channels (a pending bit plus an upcall). pvio rebuilds that between ordinary processes:
//!
//! | Xen                                  | here                                               |
//! |--------------------------------------|----------------------------------------------------|
//! | a granted page, its grant ref        | a memfd mapped `MAP_SHARED` ([`SharedRegion`]), named by (domain id, [`GrantRef`]) |
//! | io/ring.h shared ring                | [`SharedRing`], [`FrontRing`], [`BackRing`]          |
//! | `struct xenstore_domain_interface`   | [`xs_ring`]: [`XsRingFrontend`], [`XsRingBackend`]   |
//! | `shared_info` 2-level bitmaps        | [`shared_info::SharedInfo`], one page per receiving endpoint |
//! | the upcall to a vCPU                 | an eventfd per receiving endpoint ([`Doorbell`]) |
//! | grant-table and event-channel hypercalls | [`Broker`] (VMM or toolstack) and [`Domain`] (each process), over a unix socket with SCM_RIGHTS |
//!
//! A typical split driver: the front end ([`Domain::grant_access`] a ring page,
//! [`Domain::alloc_unbound`] a port, publish both in XenStore); the back end maps the grant
//! ([`Domain::map_grant`]), binds ([`Domain::bind_interdomain`]); then both push to their ring
//! and [`Domain::notify`] only when `push_*_and_check_notify` says so, and wait on
//! the [`Domain`]'s fd (`AsFd`) after `final_check_for_*` came back empty.
//!
//! Shared memory is touched only through atomics and volatile copies in [`mapping`]; indices
//! and slots written by the peer are untrusted and validated. `unsafe` lives in [`mapping`]
//! only; the rings are safe code over its accessors.

pub mod broker;
pub mod doorbell;
pub mod mapping;
pub mod ring;
pub mod shared_info;
pub mod xs_ring;

pub use broker::{Broker, BrokerError, BrokerListener, Domain, ListenerHandle};
pub use doorbell::Doorbell;
pub use mapping::{MappingError, RingSlot, SharedRegion, PAGE_SIZE};
pub use ring::{BackRing, FrontRing, RingError, SharedRing};
pub use shared_info::SendOutcome;
pub use xs_ring::{XsRingBackend, XsRingError, XsRingFrontend};

/// A domain id (Xen's `domid_t`). Domain 0 is the privileged control domain.
pub type DomId = u16;
/// An event-channel port number, local to one domain (Xen's `evtchn_port_t`). Port 0 is never
/// valid.
pub type Port = u32;
/// A grant reference, local to the granting domain (Xen's `grant_ref_t`).
pub type GrantRef = u32;
