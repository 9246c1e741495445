//! The daemon: one thread, one mio poll loop, many unix-socket clients.
//!
//! With an evtchn broker, introduced guests also talk over their xenstore rings
//! ([`crate::ring_conn`]), whose shared doorbell is one more source in the same loop.
//!
//! Every client of the main socket is domain 0 (privileged), as with xenstored's socket.
//! Optional domain sockets make their clients act as a given unprivileged domain, which lets
//! tests and tools exercise guests' permissions and quotas before shared-ring transports
//! exist.
//!
//! One poll round: read what the ready sockets have (at most [`READ_BUDGET`] bytes each),
//! feed it to the [`Store`], then [`Store::sync`] the journal once for the whole round (group
//! commit), and only then write the round's replies and events. So no reply of a change
//! leaves before the change is on disk (with `--sync always|batch`).

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use thiserror::Error;

use crate::journal::{Journal, JournalError, SyncMode};
use crate::quota::Quotas;
use crate::ring_conn::{RingConnError, RingConns};
use crate::store::{ConnId, Store};
use crate::tree::Tree;

/// Bytes read from one connection per poll round before others get their turn.
pub const READ_BUDGET: usize = 256 * 1024;
/// Default journal size in bytes that triggers a snapshot.
pub const DEFAULT_COMPACT_AFTER: u64 = 16 << 20;

const WAKER: Token = Token(usize::MAX);
const DOORBELL: Token = Token(usize::MAX - 1);
const FIRST_CONN: usize = 1 << 20;

/// Errors of the daemon.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A socket could not be bound.
    #[error("cannot listen on {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another daemon already answers on the socket.
    #[error("{0} is in use by a running daemon")]
    InUse(PathBuf),
    /// The data directory could not be loaded or written.
    #[error("journal")]
    Journal(#[from] JournalError),
    /// The evtchn broker could not be reached or its doorbell read.
    #[error("evtchn")]
    Evtchn(#[from] RingConnError),
    /// The poll loop failed.
    #[error("poll")]
    Poll(#[source] io::Error),
}

/// Result type of the daemon.
pub type Result<T> = std::result::Result<T, ServerError>;

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The main socket (clients are domain 0).
    pub socket: PathBuf,
    /// Extra sockets whose clients act as the given unprivileged domain.
    pub domain_sockets: Vec<(u32, PathBuf)>,
    /// Where the journal and snapshot live; `None` keeps the store in memory.
    pub data_dir: Option<PathBuf>,
    /// When journal records are synced.
    pub sync: SyncMode,
    /// Limits for unprivileged domains.
    pub quotas: Quotas,
    /// Journal size in bytes that triggers a snapshot.
    pub compact_after: u64,
    /// The evtchn broker's socket: when set, the daemon connects as domain 0 and serves
    /// introduced guests over their xenstore rings.
    pub evtchn_broker: Option<PathBuf>,
}

impl ServerConfig {
    /// An in-memory daemon on `socket` with default quotas.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ServerConfig {
            socket: socket.into(),
            domain_sockets: Vec::new(),
            data_dir: None,
            sync: SyncMode::Batch,
            quotas: Quotas::default(),
            compact_after: DEFAULT_COMPACT_AFTER,
            evtchn_broker: None,
        }
    }
}

/// Stops a running [`Server`] from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Asks the loop to end after its current round.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            log::warn!("cannot wake the server: {e}");
        }
    }
}

struct Listener {
    socket: UnixListener,
    domid: u32,
    path: PathBuf,
}

struct SocketConn {
    stream: UnixStream,
    id: ConnId,
    out: Vec<u8>,
    out_pos: usize,
    writable: bool,
    hup: bool,
}

/// The daemon.
pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: HashMap<Token, SocketConn>,
    by_id: HashMap<ConnId, Token>,
    next_token: usize,
    store: Store,
    stop: StopHandle,
    again: BTreeSet<Token>,
    paused: BTreeSet<Token>,
    rings: Option<RingConns>,
    rings_again: bool,
}

fn bind(path: &Path) -> Result<UnixListener> {
    if StdUnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse(path.to_owned()));
    }
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed stale socket {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_owned(),
        source,
    })
}

impl Server {
    /// Loads the data directory (if any) and binds every socket.
    ///
    /// # Errors
    /// A socket in use or not bindable, or a journal that cannot be loaded.
    pub fn bind(cfg: &ServerConfig) -> Result<Self> {
        let (tree, journal) = match &cfg.data_dir {
            Some(dir) => {
                let (j, t) = Journal::open(dir, cfg.sync, cfg.compact_after)?;
                log::info!("loaded {} nodes from {}", t.len(), dir.display());
                (t, Some(j))
            }
            None => (Tree::new(), None),
        };
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServerError::Poll)?);
        let mut listeners = Vec::new();
        let all =
            std::iter::once((0, cfg.socket.clone())).chain(cfg.domain_sockets.iter().cloned());
        for (i, (domid, path)) in all.enumerate() {
            let mut socket = bind(&path)?;
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)
                .map_err(ServerError::Poll)?;
            log::info!("listening on {} as domain {domid}", path.display());
            listeners.push(Listener {
                socket,
                domid,
                path,
            });
        }
        let rings = match &cfg.evtchn_broker {
            Some(path) => {
                let rings = RingConns::connect(path)?;
                poll.registry()
                    .register(
                        &mut SourceFd(&rings.doorbell()),
                        DOORBELL,
                        Interest::READABLE,
                    )
                    .map_err(ServerError::Poll)?;
                log::info!(
                    "serving guest rings through the broker at {}",
                    path.display()
                );
                Some(rings)
            }
            None => None,
        };
        let mut store = Store::new(tree, journal, cfg.quotas);
        if let Some(r) = &rings {
            store.set_ring_mapper(Box::new(r.mapper()));
        }
        Ok(Server {
            poll,
            listeners,
            conns: HashMap::new(),
            by_id: HashMap::new(),
            next_token: FIRST_CONN,
            store,
            stop: StopHandle {
                stop: Arc::new(AtomicBool::new(false)),
                waker,
            },
            again: BTreeSet::new(),
            paused: BTreeSet::new(),
            rings,
            rings_again: false,
        })
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Serves until stopped.
    ///
    /// # Errors
    /// The poll failed, or the journal could not be synced (the replies of that round are
    /// not sent; the daemon must stop rather than acknowledge what may be lost).
    pub fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        while !self.stop.stop.load(Ordering::SeqCst) {
            let busy = !self.again.is_empty() || self.rings_again;
            let timeout = busy.then_some(std::time::Duration::ZERO);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Poll(e)),
            }
            let mut writable = Vec::new();
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                }
                if t == DOORBELL {
                    if let Some(r) = &self.rings {
                        r.clear_doorbell()?;
                    }
                    continue;
                }
                if t.0 < self.listeners.len() {
                    self.accept(t.0);
                    continue;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.again.insert(t);
                }
                if ev.is_writable() {
                    writable.push(t);
                }
            }
            for t in std::mem::take(&mut self.again) {
                self.read(t);
            }
            self.read_rings();
            self.store.sync()?;
            let ready = self.store.take_ready();
            let ready = ready
                .into_iter()
                .filter_map(|id| self.by_id.get(&id).copied());
            for t in writable.into_iter().chain(ready).collect::<BTreeSet<_>>() {
                self.flush(t);
            }
            if let Some(r) = &mut self.rings {
                r.flush_all(&mut self.store);
            }
            self.resume_paused();
        }
        self.shutdown();
        Ok(())
    }

    /// Follows introduced and released guests, then reads every guest ring.
    fn read_rings(&mut self) {
        let events = self.store.take_domain_events();
        let Some(r) = &mut self.rings else {
            return;
        };
        r.apply(&mut self.store, events);
        self.rings_again = r.read_all(&mut self.store);
    }

    fn accept(&mut self, index: usize) {
        loop {
            let listener = &self.listeners[index];
            let (mut stream, _) = match listener.socket.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept on {}: {e}", listener.path.display());
                    return;
                }
            };
            if !self.store.may_connect(listener.domid) {
                log::warn!(
                    "domain {} is at its connections quota; closing a new connection",
                    listener.domid
                );
                continue;
            }
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                log::warn!("cannot register a connection: {e}");
                continue;
            }
            let id = self.store.connect(listener.domid);
            log::debug!("connection {id} as domain {}", listener.domid);
            self.by_id.insert(id, token);
            self.conns.insert(
                token,
                SocketConn {
                    stream,
                    id,
                    out: Vec::new(),
                    out_pos: 0,
                    writable: false,
                    hup: false,
                },
            );
            // Bytes may have arrived before registration; edge-triggered polls would not
            // report them.
            self.again.insert(token);
        }
    }

    fn read(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        let mut budget = READ_BUDGET;
        let _ = self.store.process(c.id);
        loop {
            if !self.store.wants_input(c.id) {
                if !self.store.is_closed(c.id) {
                    self.paused.insert(t);
                }
                break;
            }
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.hup = true;
                    break;
                }
                Ok(n) => {
                    if self.store.feed(c.id, &buf[..n]).is_err() {
                        break;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.again.insert(t);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("connection {}: read: {e}", c.id);
                    c.hup = true;
                    break;
                }
            }
        }
        if c.hup {
            self.flush(t);
        }
    }

    fn flush(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        // Takes the store's next output whenever the previous is all written: output queued
        // while the socket was full has no other round to go out in.
        loop {
            if c.out_pos == c.out.len() {
                c.out = self.store.take_output(c.id);
                c.out_pos = 0;
                if c.out.is_empty() {
                    break;
                }
            }
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("connection {}: write: {e}", c.id);
                    c.hup = true;
                    break;
                }
            }
        }
        let pending = c.out_pos < c.out.len();
        if pending != c.writable && !c.hup {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self.poll.registry().reregister(&mut c.stream, t, interest) {
                log::warn!("connection {}: reregister: {e}", c.id);
                c.hup = true;
            }
            c.writable = pending;
        }
        if c.hup || (!pending && self.store.is_closed(c.id)) {
            self.close(t);
        }
    }

    fn resume_paused(&mut self) {
        let resumable: Vec<Token> = self
            .paused
            .iter()
            .copied()
            .filter(|t| {
                self.conns
                    .get(t)
                    .is_some_and(|c| self.store.wants_input(c.id))
            })
            .collect();
        for t in resumable {
            self.paused.remove(&t);
            self.again.insert(t);
        }
    }

    fn close(&mut self, t: Token) {
        if let Some(mut c) = self.conns.remove(&t) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.store.disconnect(c.id);
            self.by_id.remove(&c.id);
            log::debug!("connection {} closed", c.id);
        }
        self.again.remove(&t);
        self.paused.remove(&t);
    }

    fn shutdown(&mut self) {
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for t in tokens {
            self.close(t);
        }
        for l in &self.listeners {
            let _ = std::fs::remove_file(&l.path);
        }
    }
}
