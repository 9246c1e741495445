//! The broker: the part of Xen's hypervisor that grant tables and event channels need, as a
//! small server that hands shared memory and doorbells to processes over unix sockets.
//!
//! - [`Broker`] (run by the VMM or the toolstack) keeps the grant and port tables of every
//!   domain. It creates each shared region (a memfd) and each endpoint's event-channel page and
//!   doorbell eventfd, and passes them with SCM_RIGHTS, named by (domain id, grant ref) and
//!   (domain id, port).
//! - [`Domain`] is one process's connection as a domain: grant operations
//!   ([`Domain::grant_access`], [`Domain::map_grant`], [`Domain::end_access`]) and event-channel
//!   operations ([`Domain::alloc_unbound`], [`Domain::bind_interdomain`], [`Domain::notify`],
//!   [`Domain::mask`], [`Domain::unmask`], [`Domain::close`], [`Domain::pending`],
//!   [`Domain::wait`]).
//!
//! Each connection is one receiving endpoint: it owns its ports, gets its own 2-level
//! event-channel page ([`crate::shared_info`]) and its own doorbell, as each open of Linux's
//! /dev/xen/evtchn does. Port numbers are per domain, so two processes of dom0 share dom0's port
//! space but never see each other's events. Sends do not go through the broker: a bound sender
//! holds the receiver's page and doorbell and sets the pending bit itself, as the hypervisor
//! would; the broker is asked only once per port for the route.
//!
//! Trust: a domain's identity comes from what it cannot forge. A connection to a per-domain
//! socket ([`Broker::listen_domain`], mode 0600, given to that guest's user) or to a socket
//! the toolstack handed over ([`Broker::serve`] with a domain id) is that domain, whatever its
//! hello claims (EPERM otherwise). Only the privileged socket ([`Broker::listen`], mode 0600,
//! clients checked by SO_PEERCRED to be root or the broker's user) trusts the claimed id. A domain that holds a peer's page and doorbell can cause spurious events or
//! swallow that endpoint's wake-ups (denial of service); it can never make the receiver read out
//! of bounds, panic or spin, because every bitmap state is valid and rings validate indices.

mod domain;
mod server;
mod wire;

pub use domain::Domain;
pub use server::{Broker, BrokerListener, ListenerHandle};

use nix::errno::Errno;

use crate::mapping::MappingError;
use crate::Port;

/// Grant references below this are reserved, as in Xen (`GNTTAB_NR_RESERVED_ENTRIES`).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Most grants one domain may have outstanding (a quota: each is a memfd).
pub const MAX_GRANTS_PER_DOMAIN: usize = 1024;

/// Errors of the broker and of a domain's connection to it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A socket call on the broker connection failed.
    #[error("broker socket operation failed")]
    Socket(#[source] Errno),
    /// A message had the wrong size, an unknown op code, or truncated descriptors.
    #[error("malformed broker message ({len} bytes, code {code})")]
    Malformed {
        /// Bytes received.
        len: usize,
        /// The op code, when one was read.
        code: u32,
    },
    /// The broker refused the operation with an errno, as the hypercall would (EINVAL for a
    /// bad port or a port bound for another domain, EPERM for a grant made to someone else,
    /// ENOENT for an unknown grant, ENOSPC when the table is full, ENOTCONN for an unbound
    /// port's route).
    #[error("{op} refused: {errno}")]
    Refused {
        /// The operation's Xen name.
        op: &'static str,
        /// The reason.
        errno: Errno,
    },
    /// A reply came without the descriptors it must carry.
    #[error("{op} reply lacks its descriptors")]
    MissingFds {
        /// The operation's Xen name.
        op: &'static str,
    },
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Disconnected,
    /// Mapping a received region failed.
    #[error("mapping a shared region failed")]
    Mapping(#[from] MappingError),
    /// Reading or writing a doorbell eventfd failed.
    #[error("doorbell eventfd operation failed")]
    Doorbell(#[source] Errno),
    /// The port is not one this endpoint allocated or bound.
    #[error("port {0} is not bound by this endpoint")]
    InvalidPort(Port),
    /// Setting up the listening socket failed.
    #[error("broker listening socket setup failed")]
    Listen(#[source] Errno),
    /// Starting a broker thread failed.
    #[error("starting a broker thread failed")]
    Thread(#[source] std::io::Error),
}

impl BrokerError {
    /// The errno of a refused operation, if that is what this is.
    pub fn refused_errno(&self) -> Option<Errno> {
        match self {
            BrokerError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Result type of the broker module.
pub type Result<T> = std::result::Result<T, BrokerError>;
