//! A process's connection to the broker as one domain: grant-table and event-channel
//! operations, with libxenevtchn's shape (pending ports, an fd to poll, unmask after handling).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, UnixAddr};

use super::server::seqpacket_socket;
use super::wire::{self, Op, Reply, Request};
use super::{BrokerError, Result};
use crate::doorbell::Doorbell;
use crate::mapping::SharedRegion;
use crate::shared_info::{SendOutcome, SharedInfo};
use crate::{DomId, GrantRef, Port};

/// Another endpoint's event-channel page and doorbell, as a sender holds them.
#[derive(Debug)]
struct RemoteEndpoint {
    shared_info: SharedInfo,
    doorbell: Doorbell,
}

impl RemoteEndpoint {
    fn from_fds(op: Op, fds: Vec<OwnedFd>) -> Result<Self> {
        let mut fds = fds.into_iter();
        let (Some(page), Some(doorbell)) = (fds.next(), fds.next()) else {
            return Err(BrokerError::MissingFds { op: op.name() });
        };
        Ok(Self {
            shared_info: SharedInfo::new(SharedRegion::map(page)?)?,
            doorbell: Doorbell::from_fd(doorbell),
        })
    }

    /// Sets `port` pending in this endpoint's page and rings its doorbell if that is needed.
    fn send(&self, port: Port) -> Result<SendOutcome> {
        let outcome = self.shared_info.send(port);
        if outcome == SendOutcome::Raise {
            self.doorbell.ring().map_err(BrokerError::Doorbell)?;
        }
        Ok(outcome)
    }
}

/// Where sends on a local port go.
#[derive(Clone, Debug)]
struct Route {
    remote_port: Port,
    endpoint: Arc<RemoteEndpoint>,
}

/// This endpoint's ports (value: the route, once known) and the remote endpoints it sends to,
/// keyed by the broker's endpoint id so each is mapped once.
#[derive(Debug, Default)]
struct Routes {
    ports: HashMap<Port, Option<Route>>,
    endpoints: HashMap<u32, Arc<RemoteEndpoint>>,
}

impl Routes {
    /// Records the route in a BindInterdomain or Route reply for `port`.
    fn learn(&mut self, op: Op, vals: [u32; 3], fds: Vec<OwnedFd>) -> Result<Route> {
        let [port, endpoint_id, remote_port] = vals;
        let endpoint = match self.endpoints.get(&endpoint_id) {
            Some(e) => e.clone(),
            None => {
                let e = Arc::new(RemoteEndpoint::from_fds(op, fds)?);
                self.endpoints.insert(endpoint_id, e.clone());
                e
            }
        };
        let route = Route {
            remote_port,
            endpoint,
        };
        self.ports.insert(port, Some(route.clone()));
        Ok(route)
    }
}

/// One process's connection to the [`super::Broker`] as domain `domid`: a receiving endpoint
/// with its own event-channel page and doorbell eventfd (see the module docs).
///
/// All methods take `&self`; share it with `Arc` between the threads of a back-end.
#[derive(Debug)]
pub struct Domain {
    domid: DomId,
    sock: Mutex<OwnedFd>,
    shared_info: SharedInfo,
    doorbell: Doorbell,
    routes: Mutex<Routes>,
}

impl Domain {
    /// Connects to a broker listening at `path` and says hello as `domid`.
    ///
    /// # Errors
    /// [`BrokerError::Socket`] if the socket cannot connect; hello errors as in
    /// [`Domain::from_socket`].
    pub fn connect(path: &Path, domid: DomId) -> Result<Self> {
        let sock = seqpacket_socket().map_err(BrokerError::Socket)?;
        let addr = UnixAddr::new(path).map_err(BrokerError::Socket)?;
        connect(sock.as_raw_fd(), &addr).map_err(BrokerError::Socket)?;
        Self::from_socket(sock, domid)
    }

    /// Says hello as `domid` on a connected SOCK_SEQPACKET socket to the broker (for example one
    /// end of a socket pair the toolstack passed to this process) and maps the endpoint's
    /// event-channel page.
    ///
    /// # Errors
    /// [`BrokerError::Refused`] (EPERM if the toolstack served this socket for another domain),
    /// [`BrokerError::MissingFds`], socket and mapping errors.
    pub fn from_socket(sock: OwnedFd, domid: DomId) -> Result<Self> {
        let (_, fds) = call_on(&sock, Op::Hello, [u32::from(domid), 0, 0])?;
        let me = RemoteEndpoint::from_fds(Op::Hello, fds)?;
        Ok(Self {
            domid,
            sock: Mutex::new(sock),
            shared_info: me.shared_info,
            doorbell: me.doorbell,
            routes: Mutex::new(Routes::default()),
        })
    }

    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    fn call(&self, op: Op, args: [u32; 3]) -> Result<([u32; 3], Vec<OwnedFd>)> {
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        call_on(&sock, op, args)
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants domain `remote` access to a new zeroed region of `pages` pages
    /// (`gnttab_grant_foreign_access`). Returns the grant reference to publish (as a ring-ref)
    /// and this domain's mapping of the region.
    ///
    /// # Errors
    /// [`BrokerError::Refused`] with EINVAL for 0 or too many pages, ENOSPC when the grant table
    /// is full; socket and mapping errors.
    pub fn grant_access(&self, remote: DomId, pages: u32) -> Result<(GrantRef, SharedRegion)> {
        let (vals, fds) = self.call(Op::GrantAccess, [u32::from(remote), pages, 0])?;
        Ok((vals[0], map_first(Op::GrantAccess, fds)?))
    }

    /// Maps grant `gref` of domain `granter` (GNTTABOP_map_grant_ref).
    ///
    /// # Errors
    /// [`BrokerError::Refused`] with ENOENT for an unknown grant, EPERM if it was granted to
    /// another domain; socket and mapping errors.
    pub fn map_grant(&self, granter: DomId, gref: GrantRef) -> Result<SharedRegion> {
        let (_, fds) = self.call(Op::MapGrant, [u32::from(granter), gref, 0])?;
        map_first(Op::MapGrant, fds)
    }

    /// Ends grant `gref` (`gnttab_end_foreign_access`): nobody can map it any more; existing
    /// mappings stay valid until unmapped.
    ///
    /// # Errors
    /// [`BrokerError::Refused`] with ENOENT for an unknown grant, EPERM for another endpoint's.
    pub fn end_access(&self, gref: GrantRef) -> Result<()> {
        self.call(Op::EndAccess, [gref, 0, 0]).map(drop)
    }

    /// EVTCHNOP_alloc_unbound: a new port of this domain that domain `remote` may bind to.
    /// Publish it (as an event-channel node) for the peer.
    ///
    /// # Errors
    /// [`BrokerError::Refused`] with ENOSPC when all ports are in use; socket errors.
    pub fn alloc_unbound(&self, remote: DomId) -> Result<Port> {
        let (vals, _) = self.call(Op::AllocUnbound, [u32::from(remote), 0, 0])?;
        self.routes().ports.insert(vals[0], None);
        Ok(vals[0])
    }

    /// EVTCHNOP_bind_interdomain: binds a new local port to port `remote_port` of domain
    /// `remote`, which must have been allocated unbound for this domain.
    ///
    /// # Errors
    /// [`BrokerError::Refused`] with EINVAL if that port does not exist, is bound, or was
    /// allocated for another domain; socket and mapping errors.
    pub fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port> {
        let (vals, fds) = self.call(Op::BindInterdomain, [u32::from(remote), remote_port, 0])?;
        self.routes().learn(Op::BindInterdomain, vals, fds)?;
        Ok(vals[0])
    }

    /// EVTCHNOP_send on local port `port`: sets the peer's port pending and rings the peer's
    /// doorbell when it must be woken. A send on a port whose peer has not bound yet is dropped
    /// (as Xen drops it) and reports [`SendOutcome::Unbound`].
    ///
    /// The first send on a port allocated unbound asks the broker where the peer is; later
    /// sends touch only shared memory and, when needed, the peer's eventfd.
    ///
    /// # Errors
    /// [`BrokerError::InvalidPort`] for a port this endpoint does not hold; broker errors on the
    /// first send; [`BrokerError::Doorbell`].
    pub fn notify(&self, port: Port) -> Result<SendOutcome> {
        let known = match self.routes().ports.get(&port) {
            None => return Err(BrokerError::InvalidPort(port)),
            Some(route) => route.clone(),
        };
        let route = match known {
            Some(r) => r,
            None => match self.call(Op::Route, [port, 0, 0]) {
                Ok((vals, fds)) => self.routes().learn(Op::Route, vals, fds)?,
                Err(e) if e.refused_errno() == Some(Errno::ENOTCONN) => {
                    return Ok(SendOutcome::Unbound)
                }
                Err(e) => return Err(e),
            },
        };
        route.endpoint.send(route.remote_port)
    }

    fn check_port(&self, port: Port) -> Result<()> {
        if self.routes().ports.contains_key(&port) {
            Ok(())
        } else {
            Err(BrokerError::InvalidPort(port))
        }
    }

    /// Masks `port` (a guest sets the mask bit in its own page, as here): sends then leave it
    /// pending without ringing the doorbell.
    ///
    /// # Errors
    /// [`BrokerError::InvalidPort`].
    pub fn mask(&self, port: Port) -> Result<()> {
        self.check_port(port)?;
        self.shared_info.mask(port);
        Ok(())
    }

    /// EVTCHNOP_unmask: clears the mask bit; if `port` is pending, rings this endpoint's own
    /// doorbell so the next [`Domain::wait`] or a poll of its fd (`AsFd`) delivers it.
    ///
    /// # Errors
    /// [`BrokerError::InvalidPort`], [`BrokerError::Doorbell`].
    pub fn unmask(&self, port: Port) -> Result<()> {
        self.check_port(port)?;
        if self.shared_info.unmask(port) {
            self.doorbell.ring().map_err(BrokerError::Doorbell)?;
        }
        Ok(())
    }

    /// EVTCHNOP_close: unbinds `port`; the peer's end goes back to unbound.
    ///
    /// # Errors
    /// [`BrokerError::InvalidPort`], broker errors.
    pub fn close(&self, port: Port) -> Result<()> {
        self.check_port(port)?;
        self.call(Op::Close, [port, 0, 0])?;
        self.routes().ports.remove(&port);
        Ok(())
    }

    /// Takes the ports that became pending since the last call (clearing their pending bits and
    /// the doorbell), in ascending order, without blocking. Masked ports stay pending. Ports
    /// this endpoint does not hold (a misbehaving peer's scribbles) are dropped.
    ///
    /// Call it when this endpoint's fd (`AsFd`) polls readable, then check the rings of the
    /// returned ports (with the rings' final check before sleeping again).
    ///
    /// # Errors
    /// [`BrokerError::Doorbell`] if the eventfd cannot be read.
    pub fn pending(&self) -> Result<Vec<Port>> {
        self.doorbell.drain().map_err(BrokerError::Doorbell)?;
        // The doorbell is drained before the page is scanned: a send that lands after the scan
        // started rings the doorbell again (the upcall flag was cleared first), so it is never
        // left both unscanned and unsignalled.
        let mut ports = Vec::new();
        self.shared_info.take_pending(&mut ports);
        let routes = self.routes();
        ports.retain(|p| routes.ports.contains_key(p));
        Ok(ports)
    }

    /// Blocks until some port is pending and returns [`Domain::pending`]'s list, or an empty
    /// list once `timeout` (if any) has passed.
    ///
    /// # Errors
    /// [`BrokerError::Doorbell`] if polling or reading the eventfd fails.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Vec<Port>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // Without a raised upcall nothing can be pending that was not already taken: skip the
        // scan (and its eventfd read) and go straight to sleep.
        let mut ports = if self.shared_info.upcall_pending() {
            self.pending()?
        } else {
            Vec::new()
        };
        loop {
            if !ports.is_empty() {
                return Ok(ports);
            }
            let poll_timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(ports);
                    }
                    // Round up so the last poll does not end just before the deadline.
                    let ms = left.as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.doorbell.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(BrokerError::Doorbell(e)),
            }
            // Always drain after a poll, so a doorbell rung late cannot keep poll returning.
            ports = self.pending()?;
        }
    }

    /// Whether `port`'s pending bit is set in this endpoint's page.
    pub fn is_pending(&self, port: Port) -> bool {
        self.shared_info.is_pending(port)
    }

    /// Whether `port`'s mask bit is set in this endpoint's page.
    pub fn is_masked(&self, port: Port) -> bool {
        self.shared_info.is_masked(port)
    }
}

/// The doorbell eventfd: readable when a port may be pending. Register it in an epoll or mio
/// loop (level-triggered, or edge-triggered with [`Domain::pending`] called until empty) and call
/// [`Domain::pending`] when it fires.
impl AsFd for Domain {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }
}

impl AsRawFd for Domain {
    fn as_raw_fd(&self) -> RawFd {
        self.doorbell.as_raw_fd()
    }
}

/// One request/reply exchange on a broker socket.
fn call_on(sock: &OwnedFd, op: Op, args: [u32; 3]) -> Result<([u32; 3], Vec<OwnedFd>)> {
    wire::send(sock.as_fd(), &Request { op, args }.encode(), &[])?;
    let (buf, fds) = wire::recv(sock.as_fd())?.ok_or(BrokerError::Disconnected)?;
    match Reply::decode(&buf)?.0 {
        Ok(vals) => Ok((vals, fds)),
        Err(errno) => Err(BrokerError::Refused {
            op: op.name(),
            errno,
        }),
    }
}

fn map_first(op: Op, fds: Vec<OwnedFd>) -> Result<SharedRegion> {
    let fd = fds
        .into_iter()
        .next()
        .ok_or(BrokerError::MissingFds { op: op.name() })?;
    Ok(SharedRegion::map(fd)?)
}
