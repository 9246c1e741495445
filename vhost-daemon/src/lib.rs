//! `vhost-daemon`: the vhost-user back-end core that pvio's daemons (backend-blk, backend-net)
//! share, so each of them keeps only its device logic.
//!
//! Layout, one job per module:
//! - [`listener`]: the listening socket (`--socket-path`/`--socket`, `--fd`, stale sockets);
//! - [`signals`]: SIGINT/SIGTERM/SIGHUP/SIGUSR1 through a signalfd;
//! - [`store`]: store mode, every device of a kind from the XenStore (xenbus's manager);
//! - [`daemon`]: the serve loop, one front-end after another with a fresh back-end each;
//! - [`backend`]: the [`backend::Device`] / [`backend::DeviceBackend`] traits the daemons
//!   implement and the [`backend::Backend`] wrapper that implements vhost-user-backend's
//!   `VhostUserBackend` on top of them;
//! - [`relay`]: the early SET_VRING_ENABLE relay between a front-end and the request handler;
//! - [`ring`]: helpers for the devices' virtqueue loops;
//! - [`uring`]: the io_uring ring and its in-flight invariant;
//! - [`memory`]: guest-memory types; [`view`]: the data path's borrowed view of one memory
//!   snapshot; [`dirty`]: the dirty-page log's bitmap; [`config`]: the
//!   configuration-space window; [`capabilities`]: `--print-capabilities` (vhost-user.rst
//!   "Back-end program conventions").

pub mod backend;
pub mod capabilities;
pub mod config;
pub mod daemon;
pub mod dirty;
pub mod listener;
pub mod memory;
pub mod relay;
pub mod ring;
pub mod signals;
pub mod store;
pub mod uring;
pub mod view;

/// A boxed error from a device hook, sent across threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use xenstore_lite::error_chain;
