//! A vhost-user front-end that runs the driver core without a VM (vhost-user.rst).
//!
//! - [`ram`]: guest RAM in a memfd shared with the back-end, with a bump allocator.
//! - [`vhost`]: the control path: connecting, feature and protocol feature negotiation, the
//!   memory table, vring setup and teardown, and the kick / call / err eventfds.
//! - [`blk`]: a virtio-blk device on top ([`BlkDevice`], [`BlkQueue`]): submit requests, get
//!   completions with tokens and latencies, or use the blocking wrappers.
//!
//! Any vhost-user-blk back-end can serve it; it is tested against qemu-storage-daemon.

pub mod blk;
pub mod net;
pub mod ram;
pub mod vhost;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The protocol feature set type of [`VhostUserConnection::protocol_features`].
pub use ::vhost::vhost_user::VhostUserProtocolFeatures;
pub use blk::{BlkDevice, BlkOptions, BlkQueue, ChainForm, Completion, Data, Request, Token};
pub use net::{NetDevice, NetError, NetOptions, NetQueuePair, Received};
pub use ram::HostRam;
pub use vhost::{
    BackendChannel, ConnectOptions, InflightArea, VhostUserConnection, VringFds, Watchdog,
};

use crate::mem::MemError;
use crate::virtq::VirtqError;

/// Errors of the front-end host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No back-end accepted a connection on the socket before the deadline.
    #[error("no vhost-user back-end accepted a connection on {path} within {timeout:?}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// How long we tried.
        timeout: Duration,
        /// The last connect error.
        #[source]
        source: io::Error,
    },
    /// The socket could not be duplicated for the watchdog, or its thread not started.
    #[error("setting up the vhost-user socket watchdog")]
    Socket(#[source] io::Error),
    /// The back-end did not answer a request in time; the socket was shut down.
    #[error("vhost-user {request}: no answer within {timeout:?}, connection shut down")]
    ControlTimeout {
        /// The request, e.g. "VHOST_USER_GET_FEATURES".
        request: &'static str,
        /// [`ConnectOptions::reply_timeout`].
        timeout: Duration,
    },
    /// A vhost-user request failed or was rejected (with REPLY_ACK: the back-end answered non-zero).
    #[error("vhost-user {request} failed")]
    Vhost {
        /// The request, e.g. "VHOST_USER_SET_MEM_TABLE".
        request: &'static str,
        /// The cause from the vhost crate.
        #[source]
        source: ::vhost::Error,
    },
    /// The back-end lacks a feature the front-end needs.
    #[error("the back-end does not offer {name}")]
    MissingFeature {
        /// Spec name of the feature, e.g. "VIRTIO_F_VERSION_1".
        name: &'static str,
    },
    /// More queues were requested than the back-end has.
    #[error("{requested} queues requested, the back-end has {available}")]
    TooManyQueues {
        /// Queues asked for.
        requested: u16,
        /// Queues the back-end offers.
        available: u64,
    },
    /// The configuration space reply was too short to parse.
    #[error("configuration space reply of {len} bytes is too short")]
    BadConfig {
        /// Bytes received.
        len: usize,
    },
    /// Creating or sizing the guest RAM memfd failed.
    #[error("creating the guest RAM memfd")]
    Memfd(#[source] io::Error),
    /// Mapping guest RAM failed.
    #[error("mapping guest RAM")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
    /// The bump allocator has no room left.
    #[error("guest RAM exhausted: {requested} bytes requested, {free} free")]
    OutOfRam {
        /// Bytes requested.
        requested: u64,
        /// Bytes left.
        free: u64,
    },
    /// A guest memory access failed.
    #[error("guest memory")]
    Mem(#[from] MemError),
    /// A virtqueue operation failed (including a misbehaving device's used ring).
    #[error("virtqueue")]
    Virtq(#[from] VirtqError),
    /// An eventfd could not be created, written, read or polled.
    #[error("eventfd")]
    EventFd(#[source] io::Error),
    /// No completion arrived in time.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
    /// A request's data exceeds the per-request buffer.
    #[error("request of {bytes} bytes exceeds the {max}-byte request buffer")]
    RequestTooLarge {
        /// Data bytes of the request.
        bytes: u64,
        /// The limit ([`BlkOptions::max_request_bytes`]).
        max: u32,
    },
    /// A request has more data segments than the indirect table area holds.
    #[error("request of {segments} data segments exceeds the limit of {max}")]
    TooManySegments {
        /// Data segments of the request.
        segments: usize,
        /// The limit.
        max: usize,
    },
    /// An indirect chain was asked for but VIRTIO_RING_F_INDIRECT_DESC is not negotiated.
    #[error("indirect descriptors requested but VIRTIO_RING_F_INDIRECT_DESC is not negotiated")]
    IndirectNotNegotiated,
    /// No queue with this index.
    #[error("queue {index} does not exist ({count} queues)")]
    NoSuchQueue {
        /// Index asked for.
        index: usize,
        /// Queues set up.
        count: usize,
    },
    /// The token is not a request in flight on this queue.
    #[error("token {0} is not a request in flight")]
    UnknownToken(u16),
}

/// Result of the front-end host.
pub type Result<T> = std::result::Result<T, Error>;
