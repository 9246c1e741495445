//! The front end's side of the XenBus handshake, as a guest (domain `domid`) does it over
//! its own store connection:
//!
//! 1. [`Frontend::open`] reads `device/<kind>/<devid>/backend`.
//! 2. [`Frontend::wait_backend_ready`]: the back end's InitWait (or Connected) and its
//!    published `vhost-user-socket` and facts.
//! 3. The caller connects to the socket, then [`Frontend::set_state`] Initialised.
//! 4. [`Frontend::wait_backend_state`] Connected, then Connected itself.
//! 5. When the back end goes Closing, the caller quiesces and writes Closing, then Closed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use xenstore_lite::{Client, XsOps};

use crate::config::read_optional;
use crate::error::{Result, XenbusError};
use crate::layout::{node, DeviceId};
use crate::state::XenbusState;
use crate::tx::children;
use crate::wait::{read_state, wait_state, wait_until};

/// The front end of one device.
#[derive(Debug, Clone)]
pub struct Frontend {
    dev: DeviceId,
    backend: String,
}

/// What the back end published when it became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReady {
    /// Its state (InitWait, or Connected after a back-end restart).
    pub state: XenbusState,
    /// The vhost-user socket to connect to.
    pub socket: PathBuf,
    /// Every node of the back-end directory (name, value), e.g. `sectors`.
    pub nodes: BTreeMap<String, String>,
}

impl BackendReady {
    /// A published node parsed as a number.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.nodes.get(name).and_then(|v| v.trim().parse().ok())
    }
}

impl Frontend {
    /// Reads the front-end directory of `dev` for its back end.
    ///
    /// # Errors
    /// [`XenbusError::Missing`] without a `backend` node; store errors.
    pub fn open<O: XsOps + ?Sized>(ops: &mut O, dev: DeviceId) -> Result<Self> {
        let path = dev.frontend_node(node::BACKEND);
        let backend = read_optional(ops, &path)?.ok_or(XenbusError::Missing(path))?;
        Ok(Frontend { dev, backend })
    }

    /// The device.
    pub fn device(&self) -> &DeviceId {
        &self.dev
    }

    /// The back-end directory named by the `backend` node.
    pub fn backend_dir(&self) -> &str {
        &self.backend
    }

    /// Writes this side's `state`.
    ///
    /// # Errors
    /// Store errors (`EACCES` when the directory is not the caller's).
    pub fn set_state<O: XsOps + ?Sized>(&self, ops: &mut O, state: XenbusState) -> Result<()> {
        let path = self.dev.frontend_node(node::STATE);
        Ok(ops.write(&path, state.as_node_value().as_bytes())?)
    }

    /// The back end's `state`.
    ///
    /// # Errors
    /// Store errors.
    pub fn backend_state<O: XsOps + ?Sized>(&self, ops: &mut O) -> Result<XenbusState> {
        read_state(ops, &format!("{}/{}", self.backend, node::STATE))
    }

    /// Waits until the back end's state satisfies `accept`.
    ///
    /// # Errors
    /// [`XenbusError::Timeout`], store errors.
    pub fn wait_backend_state(
        &self,
        client: &mut Client,
        timeout: Duration,
        accept: impl Fn(XenbusState) -> bool,
    ) -> Result<XenbusState> {
        let path = format!("{}/{}", self.backend, node::STATE);
        wait_state(client, &path, timeout, accept)
    }

    /// Waits for the back end's InitWait (or Connected) with a published socket.
    ///
    /// # Errors
    /// [`XenbusError::BackendFailed`] when the back end is Closed with an `error` node;
    /// [`XenbusError::Timeout`], store errors.
    pub fn wait_backend_ready(
        &self,
        client: &mut Client,
        timeout: Duration,
    ) -> Result<BackendReady> {
        let what = format!("{} InitWait with a socket", self.backend);
        wait_until(client, &self.backend.clone(), &what, timeout, |c| {
            self.check_ready(c)
        })
    }

    fn check_ready(&self, client: &mut Client) -> Result<Option<BackendReady>> {
        let state = self.backend_state(client)?;
        if state == XenbusState::Closed {
            let error = format!("{}/{}", self.backend, node::ERROR);
            if let Some(message) = read_optional(client, &error)? {
                return Err(XenbusError::BackendFailed {
                    device: self.dev,
                    message,
                });
            }
        }
        if !matches!(state, XenbusState::InitWait | XenbusState::Connected) {
            return Ok(None);
        }
        let mut nodes = BTreeMap::new();
        for name in children(client, &self.backend)? {
            if let Some(v) = read_optional(client, &format!("{}/{name}", self.backend))? {
                nodes.insert(name, v);
            }
        }
        Ok(nodes
            .get(node::VHOST_USER_SOCKET)
            .map(PathBuf::from)
            .map(|socket| BackendReady {
                state,
                socket,
                nodes,
            }))
    }
}
