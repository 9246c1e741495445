//! Errors of the xenbus crate.

use std::time::Duration;

use thiserror::Error;
use xenstore_lite::{ClientError, Errno};

use crate::layout::DeviceId;

/// Errors of store access and of the handshake.
#[derive(Debug, Error)]
pub enum XenbusError {
    /// The store could not be reached or answered with an error.
    #[error(transparent)]
    Store(#[from] ClientError),
    /// A node held a value that does not parse.
    #[error("{path}: {why}")]
    BadNode {
        /// The node.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// A required node is absent.
    #[error("{0} is missing")]
    Missing(String),
    /// The guest domain has no `/local/domain/<domid>` directory.
    #[error("domain {0} does not exist")]
    NoSuchDomain(u32),
    /// The device already has a front-end or back-end directory.
    #[error("device {0} already exists")]
    DeviceExists(DeviceId),
    /// The device has neither directory.
    #[error("device {0} does not exist")]
    NoSuchDevice(DeviceId),
    /// The back end gave up on the device (its `error` node).
    #[error("back end of {device} failed: {message}")]
    BackendFailed {
        /// The device.
        device: DeviceId,
        /// The back end's `error` node.
        message: String,
    },
    /// A state was not reached in time.
    #[error("{what}: not reached within {timeout:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
    },
}

impl XenbusError {
    /// The store's errno, if the store refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XenbusError::Store(e) => e.errno(),
            _ => None,
        }
    }
}

/// Result type of the crate.
pub type Result<T> = std::result::Result<T, XenbusError>;
