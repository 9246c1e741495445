//! pvio's network back-end: a vhost-user-net daemon (vhost-user.rst, virtio 1.2 §5.1).
//!
//! It serves virtio-net to vhost-user front-ends (QEMU, cloud-hypervisor, DPDK virtio-user)
//! and bridges their frames either to a TAP device (`--tap`, one front-end) or between
//! front-ends through a learning L2 switch (`--switch`, one socket per port), the equivalent of
//! Xen's netback with a bridge in Dom0.
//!
//! Modules, control path apart from data path:
//! - [`cli`]: command line and validated [`cli::Config`].
//! - [`device`]: feature bits, configuration space, consequences of the acked features.
//! - [`hdr`]: the virtio-net header and the checks a transmitted one must pass.
//! - [`ctrl`]: control queue commands and the receive filter.
//! - [`mac`], [`fdb`], [`flood`]: MAC addresses, the switch's learning table (aging, per-port
//!   cap, pinned addresses) and its per-port flood limit.
//! - [`offload`]: software checksum and TCP segmentation for receivers without the offload.
//! - [`guest`]: descriptor chains walked into guest memory slices.
//! - [`rx`]: filling receive buffers (merged buffers) and the backlog of waiting frames.
//! - [`deferred`]: frame copies into receive buffers made together at the end of a batch.
//! - [`stats`]: counters per port and queue pair.
//! - [`tap`]: the TAP device (the io_uring that moves frames is vhost-daemon's).
//! - [`vq`]: the split virtqueue's rings mapped once per batch (the data path's fast path).
//! - [`port`], [`switch`], [`worker`]: per-port state, the switch, the queue-pair data path.
//! - [`threads`]: which worker thread serves which queue pairs (`--worker-threads`).
//! - [`backend`], [`server`]: the per-connection back-end and the device as vhost-daemon
//!   serves it (listener, signals, serve loop, early-enable relay live in `vhost-daemon`).
//! - [`store`]: store mode (`--xenstore`): every TAP vif of the XenStore, XenBus handshake.
#![deny(missing_docs)]

pub mod backend;
pub mod cli;
pub mod ctrl;
pub mod deferred;
pub mod device;
pub mod fdb;
pub mod flood;
pub mod guest;
pub mod hdr;
pub mod mac;
pub mod offload;
pub mod port;
pub mod rx;
pub mod server;
pub mod stats;
pub mod store;
pub mod switch;
pub mod tap;
pub mod threads;
pub mod vq;
pub mod worker;

pub use vhost_daemon::error_chain;
