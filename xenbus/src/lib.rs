//! xenbus: Xen's split-driver device handshake (XenBus) over xenstore-lite, shared by the
//! back-end daemons, the toolstack (`pvctl`) and the front ends.
//!
//! - [`state`]: XenbusState as the text of `state` nodes (`io/xenbus.h`).
//! - [`layout`]: the store layout of devices and Xen's permissions on it.
//! - [`config`]: typed back-end nodes: what the toolstack asks for, what a back end publishes.
//! - [`device`]: the toolstack's side: create, close, remove, status (one transaction each).
//! - [`backend`]: the back end's state machine, pure, with a trait for the device actions.
//! - [`manager`]: the watch-driven loop of a back-end daemon serving every device of a kind.
//! - [`frontend`]: the front end's side of the handshake.
//! - [`wait`], [`tx`]: waiting on watches; transactions with the caller's error type.
//! - `mock_guest` (feature `mock-frontend`): a process playing a guest's disk front end.

pub mod backend;
pub mod config;
pub mod device;
pub mod error;
pub mod frontend;
pub mod layout;
pub mod manager;
#[cfg(feature = "mock-frontend")]
pub mod mock_guest;
pub mod state;
pub mod tx;
pub mod wait;

pub use backend::{BackendMachine, DeviceActions, DeviceView, Update};
pub use config::{DeviceConfig, Mac, NetLink, Published, VbdConfig, VifConfig};
pub use error::{Result, XenbusError};
pub use frontend::{BackendReady, Frontend};
pub use layout::{DeviceId, DeviceKind};
pub use manager::{ActionsFactory, Manager};
pub use state::XenbusState;
