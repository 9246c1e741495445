//! The broker server: grant and port tables, one thread per connection.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, getsockopt, listen, socket, socketpair, sockopt, AddressFamily, Backlog, SockFlag,
    SockType, UnixAddr,
};

use super::wire::{self, Op, Reply, Request};
use super::{BrokerError, Domain, Result, GNTTAB_NR_RESERVED_ENTRIES, MAX_GRANTS_PER_DOMAIN};
use crate::doorbell::Doorbell;
use crate::mapping::{accept_cloexec, SharedRegion, MAX_REGION_PAGES, PAGE_SIZE};
use crate::shared_info::NR_EVENT_CHANNELS;
use crate::{DomId, GrantRef, Port};

/// Identifies one connection (one receiving endpoint) inside the broker.
type EndpointId = u32;

/// A connection's event-delivery objects.
struct Endpoint {
    domid: DomId,
    shared_info: SharedRegion,
    doorbell: Doorbell,
}

/// Xen's `struct evtchn` states that matter between domains.
#[derive(Clone, Copy, Debug)]
enum PortState {
    /// Allocated for `remote`, which may bind to it.
    Unbound { remote: DomId },
    /// Connected to `remote_port` of `remote`.
    Interdomain { remote: DomId, remote_port: Port },
}

struct PortEntry {
    owner: EndpointId,
    state: PortState,
}

struct Grant {
    owner: EndpointId,
    remote: DomId,
    region: SharedRegion,
}

/// One domain's grant table and port table.
#[derive(Default)]
struct DomainTables {
    ports: BTreeMap<Port, PortEntry>,
    grants: BTreeMap<GrantRef, Grant>,
}

#[derive(Default)]
struct State {
    domains: HashMap<DomId, DomainTables>,
    endpoints: HashMap<EndpointId, Endpoint>,
    next_endpoint: EndpointId,
}

/// A successful operation: reply values and the descriptors to attach.
struct Answer {
    vals: [u32; 3],
    /// Duplicates of the table's descriptors, so the reply is sent after the lock is released
    /// (a client that does not read its replies must not stall the broker).
    fds: Vec<OwnedFd>,
}

impl Answer {
    fn vals(vals: [u32; 3]) -> Self {
        Self {
            vals,
            fds: Vec::new(),
        }
    }

    /// An answer carrying duplicates of `fds`; EMFILE/ENFILE if they cannot be duplicated.
    fn with_fds(vals: [u32; 3], fds: &[BorrowedFd<'_>]) -> OpResult {
        let fds = fds
            .iter()
            .map(|f| f.try_clone_to_owned())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| e.raw_os_error().map_or(Errno::EMFILE, Errno::from_raw))?;
        Ok(Self { vals, fds })
    }
}

type OpResult = std::result::Result<Answer, Errno>;

impl State {
    fn tables(&mut self, domid: DomId) -> &mut DomainTables {
        self.domains.entry(domid).or_default()
    }

    fn hello(&mut self, domid: DomId) -> Result<EndpointId> {
        let shared_info = SharedRegion::create("evtchn-shared-info", 1)?;
        let doorbell = Doorbell::new().map_err(BrokerError::Doorbell)?;
        let id = self.next_endpoint;
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        self.endpoints.insert(
            id,
            Endpoint {
                domid,
                shared_info,
                doorbell,
            },
        );
        Ok(id)
    }

    /// Answer carrying endpoint `id`'s event-channel page and doorbell.
    fn endpoint_answer(&self, id: EndpointId, vals: [u32; 3]) -> OpResult {
        let ep = self.endpoints.get(&id).ok_or(Errno::ESRCH)?;
        Answer::with_fds(vals, &[ep.shared_info.fd(), ep.doorbell.as_fd()])
    }

    fn dispatch(&mut self, me: EndpointId, domid: DomId, req: Request) -> OpResult {
        let [a, b, _] = req.args;
        match req.op {
            Op::Hello => Err(Errno::EISCONN),
            Op::GrantAccess => self.grant_access(me, domid, a, b),
            Op::MapGrant => self.map_grant(domid, a, b),
            Op::EndAccess => self.end_access(me, domid, a),
            Op::AllocUnbound => self.alloc_unbound(me, domid, a),
            Op::BindInterdomain => self.bind_interdomain(me, domid, a, b),
            Op::Route => self.route(me, domid, a),
            Op::Close => self.close(me, domid, a).map(|()| Answer::vals([0; 3])),
        }
    }

    fn grant_access(&mut self, me: EndpointId, domid: DomId, remote: u32, pages: u32) -> OpResult {
        let remote = domid_arg(remote)?;
        let pages_usize = pages as usize;
        if pages_usize == 0 || pages_usize > MAX_REGION_PAGES {
            return Err(Errno::EINVAL);
        }
        let tables = self.tables(domid);
        if tables.grants.len() >= MAX_GRANTS_PER_DOMAIN {
            return Err(Errno::ENOSPC);
        }
        let gref = (GNTTAB_NR_RESERVED_ENTRIES..)
            .find(|g| !tables.grants.contains_key(g))
            .ok_or(Errno::ENOSPC)?;
        let region = SharedRegion::create("evtchn-grant", pages_usize).map_err(|e| {
            log::warn!("grant for domain {domid}: {e}");
            Errno::ENOMEM
        })?;
        let answer = Answer::with_fds([gref, pages, 0], &[region.fd()])?;
        tables.grants.insert(
            gref,
            Grant {
                owner: me,
                remote,
                region,
            },
        );
        Ok(answer)
    }

    fn map_grant(&mut self, domid: DomId, granter: u32, gref: GrantRef) -> OpResult {
        let granter = domid_arg(granter)?;
        let grant = self
            .domains
            .get(&granter)
            .and_then(|t| t.grants.get(&gref))
            .ok_or(Errno::ENOENT)?;
        if grant.remote != domid {
            return Err(Errno::EPERM);
        }
        let pages = (grant.region.len() / PAGE_SIZE) as u32;
        Answer::with_fds([pages, 0, 0], &[grant.region.fd()])
    }

    fn end_access(&mut self, me: EndpointId, domid: DomId, gref: GrantRef) -> OpResult {
        let grants = &mut self.tables(domid).grants;
        match grants.get(&gref) {
            Some(g) if g.owner == me => {
                grants.remove(&gref);
                Ok(Answer::vals([0; 3]))
            }
            Some(_) => Err(Errno::EPERM),
            None => Err(Errno::ENOENT),
        }
    }

    /// Lowest free port of `domid`, from 1 (port 0 is never valid in Xen).
    fn free_port(&mut self, domid: DomId) -> std::result::Result<Port, Errno> {
        let ports = &self.tables(domid).ports;
        (1..NR_EVENT_CHANNELS)
            .find(|p| !ports.contains_key(p))
            .ok_or(Errno::ENOSPC)
    }

    fn alloc_unbound(&mut self, me: EndpointId, domid: DomId, remote: u32) -> OpResult {
        let remote = domid_arg(remote)?;
        let port = self.free_port(domid)?;
        self.tables(domid).ports.insert(
            port,
            PortEntry {
                owner: me,
                state: PortState::Unbound { remote },
            },
        );
        Ok(Answer::vals([port, 0, 0]))
    }

    fn bind_interdomain(
        &mut self,
        me: EndpointId,
        domid: DomId,
        remote: u32,
        remote_port: Port,
    ) -> OpResult {
        let remote = domid_arg(remote)?;
        let target = match self.tables(remote).ports.get(&remote_port) {
            Some(PortEntry {
                owner,
                state: PortState::Unbound { remote: allowed },
            }) if *allowed == domid => *owner,
            _ => return Err(Errno::EINVAL),
        };
        let port = self.free_port(domid)?;
        self.tables(domid).ports.insert(
            port,
            PortEntry {
                owner: me,
                state: PortState::Interdomain {
                    remote,
                    remote_port,
                },
            },
        );
        if let Some(entry) = self.tables(remote).ports.get_mut(&remote_port) {
            entry.state = PortState::Interdomain {
                remote: domid,
                remote_port: port,
            };
        }
        self.endpoint_answer(target, [port, target, remote_port])
    }

    fn route(&mut self, me: EndpointId, domid: DomId, port: Port) -> OpResult {
        let (remote, remote_port) = match self.owned_port(me, domid, port)? {
            PortState::Interdomain {
                remote,
                remote_port,
            } => (remote, remote_port),
            PortState::Unbound { .. } => return Err(Errno::ENOTCONN),
        };
        let target = self
            .tables(remote)
            .ports
            .get(&remote_port)
            .map(|e| e.owner)
            .ok_or(Errno::ENOTCONN)?;
        self.endpoint_answer(target, [port, target, remote_port])
    }

    fn owned_port(
        &mut self,
        me: EndpointId,
        domid: DomId,
        port: Port,
    ) -> std::result::Result<PortState, Errno> {
        match self.tables(domid).ports.get(&port) {
            Some(e) if e.owner == me => Ok(e.state),
            _ => Err(Errno::EINVAL),
        }
    }

    /// EVTCHNOP_close: the peer's end (if any) goes back to unbound, waiting for this domain.
    fn close(
        &mut self,
        me: EndpointId,
        domid: DomId,
        port: Port,
    ) -> std::result::Result<(), Errno> {
        if let PortState::Interdomain {
            remote,
            remote_port,
        } = self.owned_port(me, domid, port)?
        {
            if let Some(peer) = self.tables(remote).ports.get_mut(&remote_port) {
                peer.state = PortState::Unbound { remote: domid };
            }
        }
        self.tables(domid).ports.remove(&port);
        Ok(())
    }

    /// A connection went away: close its ports, revoke its grants, forget the endpoint.
    fn disconnect(&mut self, me: EndpointId) {
        let Some(ep) = self.endpoints.remove(&me) else {
            return;
        };
        let tables = self.tables(ep.domid);
        let ports: Vec<Port> = tables
            .ports
            .iter()
            .filter(|(_, e)| e.owner == me)
            .map(|(p, _)| *p)
            .collect();
        tables.grants.retain(|_, g| g.owner != me);
        for port in ports {
            if let Err(e) = self.close(me, ep.domid, port) {
                log::warn!("closing port {port} of domain {}: {e}", ep.domid);
            }
        }
    }
}

/// A domain id from a request argument (domid_t is 16 bits).
fn domid_arg(v: u32) -> std::result::Result<DomId, Errno> {
    DomId::try_from(v).map_err(|_| Errno::EINVAL)
}

/// The broker: every domain's grant table and port table (see the module docs).
///
/// Cloning gives another handle to the same tables.
#[derive(Clone, Default)]
pub struct Broker {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with no domains. It starts no thread until a connection is served.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves tables that are still consistent per entry;
        // keep serving the other domains.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one SOCK_SEQPACKET connection on a new thread. With `domid` set (the toolstack
    /// created the socket pair for that domain), the peer's hello must name that domain
    /// (EPERM otherwise); with `None` the peer's claim is trusted.
    ///
    /// # Errors
    /// [`BrokerError::Thread`] if the thread cannot be started.
    pub fn serve(&self, sock: OwnedFd, domid: Option<DomId>) -> Result<JoinHandle<()>> {
        let broker = self.clone();
        std::thread::Builder::new()
            .name("evtchn-broker".into())
            .spawn(move || broker.run_connection(&sock, domid))
            .map_err(BrokerError::Thread)
    }

    /// Connects an in-process [`Domain`] as `domid` over a fresh socket pair.
    ///
    /// # Errors
    /// Socket, thread or hello errors.
    pub fn connect(&self, domid: DomId) -> Result<Domain> {
        let (ours, theirs) = seqpacket_pair()?;
        self.serve(theirs, Some(domid))?;
        Domain::from_socket(ours, domid)
    }

    /// Binds and listens on the privileged unix SOCK_SEQPACKET socket at `path` (which must
    /// not exist): its clients may claim any domain id, so the file is made mode 0600 before
    /// anyone can connect, and a client whose SO_PEERCRED uid is neither root nor the broker's
    /// own is closed at once. Guests get [`Broker::listen_domain`] sockets instead. Nothing is
    /// accepted until [`BrokerListener::spawn`], so a process may fork between the two while it
    /// has no threads.
    ///
    /// # Errors
    /// [`BrokerError::Listen`] on socket, bind, chmod or listen failure.
    pub fn listen(&self, path: &Path) -> Result<BrokerListener> {
        self.listen_as(path, None)
    }

    /// Binds and listens on a socket for one domain at `path` (mode 0600; the toolstack gives
    /// it to the guest's user): every client is `domid`, whatever it claims (a hello naming
    /// another domain is refused with EPERM).
    ///
    /// # Errors
    /// As [`Broker::listen`].
    pub fn listen_domain(&self, path: &Path, domid: DomId) -> Result<BrokerListener> {
        self.listen_as(path, Some(domid))
    }

    fn listen_as(&self, path: &Path, domid: Option<DomId>) -> Result<BrokerListener> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let listen_err = |e: std::io::Error| {
            BrokerError::Listen(Errno::from_raw(
                e.raw_os_error().unwrap_or(Errno::EIO as i32),
            ))
        };
        let sock = seqpacket_socket().map_err(BrokerError::Listen)?;
        let addr = UnixAddr::new(path).map_err(BrokerError::Listen)?;
        bind(sock.as_raw_fd(), &addr).map_err(BrokerError::Listen)?;
        // Before listen(): until then no one can connect, whatever the umask made of the file.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        // The file is ours: its owner is the broker's user.
        let uid = std::fs::metadata(path).map_err(listen_err)?.uid();
        listen(&sock, Backlog::MAXCONN).map_err(BrokerError::Listen)?;
        Ok(BrokerListener {
            sock,
            broker: self.clone(),
            path: path.to_owned(),
            domid,
            uid,
        })
    }

    fn run_connection(&self, sock: &OwnedFd, expected: Option<DomId>) {
        let Some((me, domid)) = self.handshake(sock, expected) else {
            return;
        };
        loop {
            let buf = match wire::recv(sock.as_fd()) {
                Ok(Some((buf, _fds))) => buf,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("broker connection of domain {domid}: {e}");
                    break;
                }
            };
            let answer = match Request::decode(&buf) {
                Ok(req) => self.lock().dispatch(me, domid, req),
                Err(e) => {
                    log::warn!("domain {domid} sent {e}");
                    Err(Errno::EINVAL)
                }
            };
            // Sent without the lock held: a client slow to read stalls only its own thread.
            if let Err(e) = reply(sock, answer) {
                log::warn!("replying to domain {domid}: {e}");
                break;
            }
        }
        self.lock().disconnect(me);
    }

    /// Reads the hello, registers the endpoint and replies with its page and doorbell.
    fn handshake(&self, sock: &OwnedFd, expected: Option<DomId>) -> Option<(EndpointId, DomId)> {
        let (buf, _fds) = wire::recv(sock.as_fd()).ok().flatten()?;
        let claimed = Request::decode(&buf)
            .ok()
            .filter(|r| r.op == Op::Hello)
            .map(|r| domid_arg(r.args[0]));
        let domid = match (claimed, expected) {
            (Some(Ok(d)), Some(e)) if d != e => Err(Errno::EPERM),
            (Some(Ok(d)), _) => Ok(d),
            _ => Err(Errno::EINVAL),
        };
        let (registered, answer) = {
            let mut state = self.lock();
            let registered = domid.and_then(|d| {
                state.hello(d).map(|id| (id, d)).map_err(|e| {
                    log::warn!("hello from domain {d}: {e}");
                    Errno::ENOMEM
                })
            });
            let answer = registered.and_then(|(id, _)| state.endpoint_answer(id, [id, 0, 0]));
            (registered, answer)
        };
        match (registered, reply(sock, answer)) {
            (Ok(r), Ok(())) => Some(r),
            (Ok((id, _)), Err(_)) => {
                self.lock().disconnect(id);
                None
            }
            _ => None,
        }
    }
}

fn reply(sock: &OwnedFd, answer: OpResult) -> Result<()> {
    let (msg, fds) = match answer {
        Ok(a) => (Reply(Ok(a.vals)), a.fds),
        Err(e) => (Reply(Err(e)), Vec::new()),
    };
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    wire::send(sock.as_fd(), &msg.encode(), &borrowed)
}

/// A new unconnected, close-on-exec unix SOCK_SEQPACKET socket.
pub(crate) fn seqpacket_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// A connected pair of SOCK_SEQPACKET unix sockets.
pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(BrokerError::Socket)
}

/// A bound, listening broker socket that accepts nothing until [`BrokerListener::spawn`].
#[derive(Debug)]
pub struct BrokerListener {
    sock: OwnedFd,
    broker: Broker,
    path: PathBuf,
    /// The domain of every client ([`Broker::listen_domain`]), `None` on the privileged
    /// socket.
    domid: Option<DomId>,
    /// The broker's user.
    uid: u32,
}

/// Whether a client of the privileged socket runs as root or as the broker's user.
fn privileged_peer(conn: &OwnedFd, broker_uid: u32) -> bool {
    match getsockopt(conn, sockopt::PeerCredentials) {
        Ok(cred) => {
            let ok = cred.uid() == 0 || cred.uid() == broker_uid;
            if !ok {
                log::warn!(
                    "broker: refusing pid {} (uid {}) on the privileged socket",
                    cred.pid(),
                    cred.uid()
                );
            }
            ok
        }
        Err(e) => {
            log::warn!("broker: SO_PEERCRED: {e}");
            false
        }
    }
}

impl BrokerListener {
    /// Starts the accept thread; each connection then gets its own thread.
    ///
    /// # Errors
    /// [`BrokerError::Doorbell`] if the stop eventfd cannot be made, [`BrokerError::Thread`].
    pub fn spawn(self) -> Result<ListenerHandle> {
        let stop = Arc::new(Doorbell::new().map_err(BrokerError::Doorbell)?);
        let path = self.path.clone();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("evtchn-broker-accept".into())
            .spawn(move || self.accept_loop(&thread_stop))
            .map_err(BrokerError::Thread)?;
        Ok(ListenerHandle {
            stop,
            thread: Some(thread),
            path,
        })
    }

    fn accept_loop(&self, stop: &Doorbell) {
        loop {
            let mut fds = [
                PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("broker listener poll: {e}");
                    return;
                }
                Ok(_) => {}
            }
            if fds[1].any().unwrap_or(true) {
                return;
            }
            match accept_cloexec(self.sock.as_fd()) {
                Ok(conn) => {
                    if self.domid.is_none() && !privileged_peer(&conn, self.uid) {
                        continue;
                    }
                    if let Err(e) = self.broker.serve(conn, self.domid) {
                        log::error!("broker: {e}");
                    }
                }
                Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EAGAIN) => {}
                Err(e) => {
                    log::error!("broker accept: {e}");
                    return;
                }
            }
        }
    }
}

/// The running accept thread of a [`BrokerListener`]. Dropping it stops accepting, joins the
/// thread and removes the socket file; connections already accepted keep being served.
#[derive(Debug)]
pub struct ListenerHandle {
    stop: Arc<Doorbell>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ListenerHandle {
    /// Path of the listening socket.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop.ring() {
            log::warn!("stopping the broker listener: {e}");
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::warn!("broker listener thread panicked");
            }
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("removing {}: {e}", self.path.display());
        }
    }
}
