//! The request processor: connections, the dispatch table, and the handlers of every
//! message type (C xenstored `core.c` `wire_funcs[]` / `process_message`).
//!
//! A connection is a domain id plus a byte stream: the transport (a unix socket today, a
//! shared-memory ring later) [`Store::feed`]s the bytes it receives and sends what
//! [`Store::take_output`] returns; the processor does not know how bytes travel. Each request
//! is answered in order with its own req_id and tx_id; watch events (req_id = tx_id = 0) are
//! queued after the reply of the request that caused them.
//!
//! The dispatch step checks centrally, before any handler runs: an unknown type
//! (`ENOSYS`), a privileged type from an unprivileged caller (`EACCES`), and the transaction
//! id (`ENOENT` when unknown) unless the type ignores it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::domain::{DomainEvent, Domains, DOMID_SELF};
use crate::journal::{Journal, JournalError};
use crate::ops;
use crate::path::{self, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use crate::perms::{Caller, NodePerms};
use crate::quota::Quotas;
use crate::transaction::{Committed, Lookup, Overlay, Transaction, TxView};
use crate::tree::Tree;
use crate::watch::{self, PendingEvent, Watch};
use crate::wire::{
    self, Decoder, Errno, Header, Message, MsgType, WireError, XENSTORE_PAYLOAD_MAX,
};

/// Identifies a connection within a [`Store`].
pub type ConnId = u64;

/// Output kept for a connection that does not read, beyond which watch events are dropped
/// (bytes).
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Queued output beyond which no further request of the connection is read, privileged or
/// not (bytes): a client that sends without reading cannot make the daemon grow.
pub const INPUT_STOP_BYTES: usize = 1 << 20;

type Result<T> = std::result::Result<T, Errno>;

/// Dispatch flag: only privileged callers (`XS_FLAG_PRIV`).
const PRIV: u8 = 1;
/// Dispatch flag: the header's tx_id is ignored (`XS_FLAG_NOTID`).
const NOTID: u8 = 2;

type Handler = fn(&mut Store, &Req<'_>) -> Result<Vec<u8>>;

/// The dispatch table: handler and flags of each supported type.
fn op_table(t: MsgType) -> Option<(Handler, u8)> {
    use MsgType as T;
    Some(match t {
        T::DIRECTORY => (Store::do_directory, 0),
        T::READ => (Store::do_read, 0),
        T::GET_PERMS => (Store::do_get_perms, 0),
        T::WATCH => (Store::do_watch, NOTID),
        T::UNWATCH => (Store::do_unwatch, NOTID),
        T::TRANSACTION_START => (Store::do_transaction_start, 0),
        T::TRANSACTION_END => (Store::do_transaction_end, 0),
        T::INTRODUCE => (Store::do_introduce, PRIV),
        T::RELEASE => (Store::do_release, PRIV),
        T::GET_DOMAIN_PATH => (Store::do_get_domain_path, 0),
        T::WRITE => (Store::do_write, 0),
        T::MKDIR => (Store::do_mkdir, 0),
        T::RM => (Store::do_rm, 0),
        T::SET_PERMS => (Store::do_set_perms, 0),
        T::IS_DOMAIN_INTRODUCED => (Store::do_is_domain_introduced, PRIV),
        T::RESUME => (Store::do_resume, PRIV),
        T::SET_TARGET => (Store::do_set_target, PRIV),
        T::RESET_WATCHES => (Store::do_reset_watches, 0),
        T::DIRECTORY_PART => (Store::do_directory_part, 0),
        _ => return None,
    })
}

/// One request being handled.
struct Req<'a> {
    conn: ConnId,
    caller: Caller,
    payload: &'a [u8],
    /// The open transaction named by the header, if any.
    tx: Option<u32>,
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

/// A payload string as text (paths, numbers and tokens are ASCII); `EINVAL` otherwise.
fn text(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| Errno::EINVAL)
}

fn parse_domid(s: &str) -> Result<u32> {
    s.parse::<u32>()
        .ok()
        .filter(|d| *d <= 0xffff)
        .ok_or(Errno::EINVAL)
}

fn encode_event(path: &str, token: &[u8]) -> Option<Vec<u8>> {
    let mut payload = Vec::with_capacity(path.len() + token.len() + 2);
    payload.extend_from_slice(path.as_bytes());
    payload.push(0);
    payload.extend_from_slice(token);
    payload.push(0);
    (payload.len() <= XENSTORE_PAYLOAD_MAX)
        .then(|| wire::encode(MsgType::WATCH_EVENT, 0, 0, &payload))
}

/// Maps a guest's xenstore ring when XS_INTRODUCE names it, so that the reply says whether
/// the guest can be served (C xenstored maps the ring before it answers).
pub trait RingMapper: Send {
    /// Maps the ring page `gfn` of `domid` and binds its event-channel `port`, keeping them
    /// for the transport.
    ///
    /// # Errors
    /// The errno to reply with: the ring cannot be mapped or the port not bound.
    fn map(&mut self, domid: u32, gfn: u64, port: u32) -> Result<()>;
}

#[derive(Debug)]
struct ConnState {
    domid: u32,
    decoder: Decoder,
    out: Vec<u8>,
    replies: usize,
    watches: Vec<Watch>,
    transactions: HashMap<u32, Transaction>,
    next_tx: u32,
    closed: bool,
}

impl ConnState {
    /// Bytes this connection charges to its domain's memory quota: queued output, buffered
    /// input, watches (path and token) and open transactions' node copies.
    fn memory(&self) -> usize {
        self.out.len()
            + self.decoder.buffered()
            + self
                .watches
                .iter()
                .map(|w| w.path.len() + w.token.len())
                .sum::<usize>()
            + self
                .transactions
                .values()
                .map(|t| t.overlay.bytes())
                .sum::<usize>()
    }
}

/// The whole store: tree, domains, connections, and the journal when durable.
#[derive(Debug)]
pub struct Store {
    tree: Tree,
    domains: Domains,
    conns: BTreeMap<ConnId, ConnState>,
    next_conn: ConnId,
    quotas: Quotas,
    journal: Option<Journal>,
    ready: BTreeSet<ConnId>,
    deferred: Vec<(ConnId, Vec<u8>)>,
    domain_events: Vec<DomainEvent>,
    mapper: Option<Box<dyn RingMapper>>,
}

impl std::fmt::Debug for dyn RingMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingMapper")
    }
}

impl Store {
    /// A store serving `tree`, journaling into `journal` when given.
    pub fn new(tree: Tree, journal: Option<Journal>, quotas: Quotas) -> Self {
        Store {
            tree,
            domains: Domains::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            quotas,
            journal,
            ready: BTreeSet::new(),
            deferred: Vec::new(),
            domain_events: Vec::new(),
            mapper: None,
        }
    }

    /// Has XS_INTRODUCE of a guest map its ring through `mapper` before replying (without
    /// one, introducing only records the domain).
    pub fn set_ring_mapper(&mut self, mapper: Box<dyn RingMapper>) {
        self.mapper = Some(mapper);
    }

    /// An in-memory store with the initial tree and Xen's default quotas.
    pub fn in_memory() -> Self {
        Self::new(Tree::new(), None, Quotas::default())
    }

    /// The committed tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The introduced domains.
    pub fn domains(&self) -> &Domains {
        &self.domains
    }

    /// Guests introduced or released since the last call, in order, for the transport that
    /// serves their rings.
    pub fn take_domain_events(&mut self) -> Vec<DomainEvent> {
        std::mem::take(&mut self.domain_events)
    }

    /// Bytes `domid` uses toward its memory quota (see [`crate::quota`]).
    pub fn domain_memory(&self, domid: u32) -> usize {
        self.tree.owned_bytes(domid)
            + self
                .domain_conns(domid)
                .map(ConnState::memory)
                .sum::<usize>()
    }

    fn domain_conns(&self, domid: u32) -> impl Iterator<Item = &ConnState> {
        self.conns.values().filter(move |c| c.domid == domid)
    }

    /// Whether another connection of `domid` is within the connections quota (always for
    /// dom0).
    pub fn may_connect(&self, domid: u32) -> bool {
        domid == 0 || self.domain_conns(domid).count() < self.quotas.connections
    }

    /// `ENOMEM` when `domid` is unprivileged and `extra` more bytes would take it over its
    /// memory quota.
    fn charge(&self, caller: &Caller, extra: usize) -> Result<()> {
        if caller.privileged || self.domain_memory(caller.domid) + extra <= self.quotas.memory {
            Ok(())
        } else {
            Err(Errno::ENOMEM)
        }
    }

    /// Opens a connection for a client of domain `domid` (0 = privileged).
    pub fn connect(&mut self, domid: u32) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            ConnState {
                domid,
                decoder: Decoder::new(),
                out: Vec::new(),
                replies: 0,
                watches: Vec::new(),
                transactions: HashMap::new(),
                next_tx: 1,
                closed: false,
            },
        );
        id
    }

    /// Drops a connection with its open transactions (uncommitted, so nothing changes) and
    /// its watches.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.ready.remove(&conn);
    }

    /// Feeds bytes received on `conn` and handles every whole request they complete, as far
    /// as the outstanding-request quota allows (the rest stays buffered; see
    /// [`Store::process`]).
    ///
    /// # Errors
    /// A protocol error that ends the connection (an E2BIG error reply is queued first and
    /// the connection is marked closed).
    pub fn feed(&mut self, conn: ConnId, bytes: &[u8]) -> std::result::Result<(), WireError> {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.decoder.push(bytes);
        }
        self.process(conn)
    }

    /// Handles buffered whole requests of `conn` while it may take more.
    ///
    /// # Errors
    /// As [`Store::feed`].
    pub fn process(&mut self, conn: ConnId) -> std::result::Result<(), WireError> {
        while self.wants_input(conn) {
            let Some(c) = self.conns.get_mut(&conn) else {
                return Ok(());
            };
            match c.decoder.next_message() {
                Ok(Some(msg)) => self.handle_message(conn, &msg),
                Ok(None) => return Ok(()),
                Err(e) => {
                    let WireError::PayloadTooLarge { header, .. } = &e;
                    log::warn!("connection {conn}: {e}; closing it");
                    self.queue(conn, wire::encode_error(header, Errno::E2BIG), true);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.closed = true;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether `conn` may take another request: it is open, has less than
    /// [`INPUT_STOP_BYTES`] of output waiting and, for an unprivileged domain, fewer replies
    /// waiting than the outstanding-request quota.
    pub fn wants_input(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            !c.closed
                && c.out.len() < INPUT_STOP_BYTES
                && (c.domid == 0 || c.replies < self.quotas.outstanding)
        })
    }

    /// Whether `conn` has ended (protocol error, or its domain was released): send its
    /// remaining output, then drop it.
    pub fn is_closed(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_none_or(|c| c.closed)
    }

    /// Connections with output waiting, emptying the set.
    pub fn take_ready(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.ready).into_iter().collect()
    }

    /// Everything queued for `conn`: replies and watch events, in order.
    pub fn take_output(&mut self, conn: ConnId) -> Vec<u8> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        c.replies = 0;
        std::mem::take(&mut c.out)
    }

    /// Makes appended journal records durable and compacts the journal when it has grown.
    /// Call once per poll round before sending any output of that round.
    ///
    /// # Errors
    /// The journal could not be synced; replies of this round must not be sent.
    pub fn sync(&mut self) -> std::result::Result<(), JournalError> {
        let Some(j) = &mut self.journal else {
            return Ok(());
        };
        j.sync()?;
        if j.wants_compaction() {
            if let Err(e) = j.compact(&self.tree) {
                log::error!("snapshot failed, keeping the journal: {e}");
            }
        }
        Ok(())
    }

    fn queue(&mut self, conn: ConnId, bytes: Vec<u8>, reply: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !reply && c.out.len() > MAX_QUEUED_BYTES {
            log::warn!("connection {conn} does not read; dropping a watch event");
            return;
        }
        c.replies += usize::from(reply);
        c.out.extend_from_slice(&bytes);
        self.ready.insert(conn);
    }

    fn caller_for(domains: &Domains, domid: u32) -> Caller {
        Caller {
            domid,
            privileged: domid == 0,
            target: domains.target_of(domid),
        }
    }

    /// Handles one request and queues its reply, then the watch events it caused.
    pub fn handle_message(&mut self, conn: ConnId, msg: &Message) {
        let header = msg.header;
        let reply = match self.dispatch(conn, msg) {
            Ok(payload) if payload.len() <= XENSTORE_PAYLOAD_MAX => {
                let mut out = Vec::with_capacity(wire::HEADER_LEN + payload.len());
                out.extend_from_slice(
                    &Header {
                        len: payload.len() as u32,
                        ..header
                    }
                    .encode(),
                );
                out.extend_from_slice(&payload);
                out
            }
            Ok(_) => wire::encode_error(&header, Errno::E2BIG),
            Err(e) => {
                log::debug!("connection {conn}: {:?} failed: {e}", msg.msg_type());
                wire::encode_error(&header, e)
            }
        };
        self.queue(conn, reply, true);
        self.queue_events();
    }

    /// Queues the deferred watch events, dropping those that would take an unprivileged
    /// domain over its memory quota.
    fn queue_events(&mut self) {
        let mut used: HashMap<u32, usize> = HashMap::new();
        for (c, ev) in std::mem::take(&mut self.deferred) {
            let Some(domid) = self.conns.get(&c).map(|s| s.domid) else {
                continue;
            };
            if domid != 0 {
                let u = match used.get_mut(&domid) {
                    Some(u) => u,
                    None => used.entry(domid).or_insert(self.domain_memory(domid)),
                };
                if *u + ev.len() > self.quotas.memory {
                    log::warn!("domain {domid} is over its memory quota; dropping a watch event");
                    continue;
                }
                *u += ev.len();
            }
            self.queue(c, ev, false);
        }
    }

    fn dispatch(&mut self, conn: ConnId, msg: &Message) -> Result<Vec<u8>> {
        let (handler, flags) = msg.msg_type().and_then(op_table).ok_or(Errno::ENOSYS)?;
        let c = self.conns.get(&conn).ok_or(Errno::EINVAL)?;
        let caller = Self::caller_for(&self.domains, c.domid);
        if flags & PRIV != 0 && !caller.privileged {
            return Err(Errno::EACCES);
        }
        let id = msg.header.tx_id;
        let tx = if flags & NOTID != 0 || id == 0 {
            None
        } else if c.transactions.contains_key(&id) {
            Some(id)
        } else {
            return Err(Errno::ENOENT);
        };
        let req = Req {
            conn,
            caller,
            payload: &msg.payload,
            tx,
        };
        handler(self, &req)
    }

    fn canonical(&self, req: &Req<'_>, raw: &str, allow_special: bool) -> Result<String> {
        let rel_max = (!req.caller.privileged).then_some(self.quotas.path_max);
        path::canonicalize(req.caller.domid, raw, allow_special, rel_max)
    }

    fn path_arg(&self, req: &Req<'_>, allow_special: bool) -> Result<String> {
        let raw = wire::one_arg(req.payload).ok_or(Errno::EINVAL)?;
        self.canonical(req, raw, allow_special)
    }

    /// Runs `f` in the request's transaction as one all-or-nothing step.
    fn in_transaction<T>(
        &mut self,
        req: &Req<'_>,
        id: u32,
        f: impl FnOnce(&mut TxView<'_>, &Caller, &Quotas) -> Result<T>,
    ) -> Result<T> {
        let memory = (!req.caller.privileged).then(|| self.domain_memory(req.caller.domid));
        let tx = self
            .conns
            .get_mut(&req.conn)
            .and_then(|c| c.transactions.get_mut(&id))
            .ok_or(Errno::ENOENT)?;
        let before = tx.overlay.bytes();
        tx.overlay.begin_op();
        let mut r = f(
            &mut TxView::new(&self.tree, &mut tx.overlay),
            &req.caller,
            &self.quotas,
        );
        if r.is_ok()
            && !req.caller.privileged
            && tx.overlay.accessed() > self.quotas.transaction_nodes
        {
            r = Err(Errno::ENOSPC);
        }
        if r.is_ok()
            && memory
                .is_some_and(|m| m + tx.overlay.bytes().saturating_sub(before) > self.quotas.memory)
        {
            r = Err(Errno::ENOMEM);
        }
        if r.is_ok() {
            tx.overlay.end_op();
        } else {
            tx.overlay.rollback_op();
        }
        r
    }

    fn read_op(
        &mut self,
        req: &Req<'_>,
        f: impl FnOnce(&mut dyn Lookup, &Caller) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        match req.tx {
            None => f(&mut Committed(&self.tree), &req.caller),
            Some(id) => self.in_transaction(req, id, |view, caller, _| f(view, caller)),
        }
    }

    fn mutate(
        &mut self,
        req: &Req<'_>,
        f: impl FnOnce(&mut TxView<'_>, &Caller, &Quotas) -> Result<()>,
    ) -> Result<Vec<u8>> {
        match req.tx {
            Some(id) => self.in_transaction(req, id, f)?,
            None => {
                let mut overlay = Overlay::new();
                f(
                    &mut TxView::new(&self.tree, &mut overlay),
                    &req.caller,
                    &self.quotas,
                )?;
                // The copies bound what the change adds (a rewrite counts twice: refused only
                // at the very edge of the quota).
                self.charge(&req.caller, overlay.bytes())?;
                self.commit(overlay)?;
            }
        }
        Ok(ok())
    }

    /// Journals, applies and announces an overlay's changes.
    fn commit(&mut self, overlay: Overlay) -> Result<()> {
        let (changes, events) = overlay.finish();
        if !changes.is_empty() {
            if let Some(j) = &mut self.journal {
                j.append(&changes, &self.tree).map_err(|e| {
                    log::error!("journal append failed, change refused: {e}");
                    Errno::EIO
                })?;
            }
            self.tree.apply(&changes);
        }
        for ev in &events {
            self.fire(ev);
        }
        Ok(())
    }

    /// Queues (deferred) an event for every watch it reaches.
    fn fire(&mut self, ev: &PendingEvent) {
        let parent = if ev.path.starts_with('@') {
            Some("/")
        } else {
            path::parent(&ev.path)
        };
        let parent_perms = parent.and_then(|p| self.tree.get(p)).map(|n| &n.perms);
        for (id, c) in &self.conns {
            let caller = Self::caller_for(&self.domains, c.domid);
            let mut allowed = None;
            for w in &c.watches {
                if !w.matches(&ev.path, ev.exact) {
                    continue;
                }
                let ok =
                    *allowed.get_or_insert_with(|| watch::permitted(&caller, ev, parent_perms));
                if !ok {
                    break;
                }
                if let Some(bytes) = encode_event(w.reported_path(&ev.path), &w.token) {
                    self.deferred.push((*id, bytes));
                }
            }
        }
    }

    fn fire_special(&mut self, path: &str) {
        let perms = self
            .tree
            .get(path)
            .map(|n| n.perms.clone())
            .into_iter()
            .collect();
        self.fire(&PendingEvent {
            path: path.to_owned(),
            exact: true,
            perms,
        });
    }

    fn do_read(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let p = self.path_arg(req, false)?;
        self.read_op(req, |v, c| ops::read(v, c, &p))
    }

    fn do_directory(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let p = self.path_arg(req, false)?;
        self.read_op(req, |v, c| ops::directory(v, c, &p))
    }

    fn do_directory_part(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let args = wire::exact_strings(req.payload, 2).ok_or(Errno::EINVAL)?;
        let p = self.canonical(req, args[0], false)?;
        let offset: usize = args[1].parse().map_err(|_| Errno::EINVAL)?;
        self.read_op(req, |v, c| ops::directory_part(v, c, &p, offset))
    }

    fn do_get_perms(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let p = self.path_arg(req, true)?;
        self.read_op(req, |v, c| ops::get_perms(v, c, &p))
    }

    fn do_write(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let nul = req
            .payload
            .iter()
            .position(|&b| b == 0)
            .ok_or(Errno::EINVAL)?;
        let raw = text(&req.payload[..nul])?;
        let p = self.canonical(req, raw, false)?;
        let value = &req.payload[nul + 1..];
        self.mutate(req, |tx, c, q| ops::write(tx, c, q, &p, value))
    }

    fn do_mkdir(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let p = self.path_arg(req, false)?;
        self.mutate(req, |tx, c, q| ops::mkdir(tx, c, q, &p))
    }

    fn do_rm(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let p = self.path_arg(req, false)?;
        self.mutate(req, |tx, c, _| ops::rm(tx, c, &p))
    }

    fn do_set_perms(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let parts = wire::split_strings(req.payload);
        let (raw, entries) = parts.split_first().ok_or(Errno::EINVAL)?;
        let raw = text(raw)?;
        let entries = entries
            .iter()
            .copied()
            .map(text)
            .collect::<Result<Vec<_>>>()?;
        let perms = NodePerms::parse(&entries).map_err(|_| Errno::EINVAL)?;
        let p = self.canonical(req, raw, true)?;
        self.mutate(req, |tx, c, q| ops::set_perms(tx, c, q, &p, perms))
    }

    fn do_watch(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let parts = wire::split_strings(req.payload);
        if !(2..=3).contains(&parts.len()) || req.payload.last() != Some(&0) {
            return Err(Errno::EINVAL);
        }
        let raw = text(parts[0])?;
        let depth = match parts.get(2) {
            Some(d) => Some(text(d)?.parse::<usize>().map_err(|_| Errno::EINVAL)?),
            None => None,
        };
        let canonical = self.canonical(req, raw, true)?;
        let relative = !raw.starts_with('/') && !raw.starts_with('@');
        let watch = Watch {
            relative_prefix: if relative {
                path::domain_home(req.caller.domid).len() + 1
            } else {
                0
            },
            path: canonical,
            token: parts[1].to_vec(),
            depth,
        };
        let c = self.conns.get(&req.conn).ok_or(Errno::EINVAL)?;
        if c.watches
            .iter()
            .any(|w| w.path == watch.path && w.token == watch.token)
        {
            return Err(Errno::EEXIST);
        }
        let watches: usize = self
            .domain_conns(req.caller.domid)
            .map(|c| c.watches.len())
            .sum();
        if !req.caller.privileged && watches >= self.quotas.watches {
            return Err(Errno::E2BIG);
        }
        self.charge(&req.caller, watch.path.len() + watch.token.len())?;
        let c = self.conns.get_mut(&req.conn).ok_or(Errno::EINVAL)?;
        if let Some(ev) = encode_event(raw, &watch.token) {
            self.deferred.push((req.conn, ev));
        }
        c.watches.push(watch);
        Ok(ok())
    }

    fn do_unwatch(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let args = wire::split_strings(req.payload);
        if args.len() != 2 {
            return Err(Errno::EINVAL);
        }
        let raw = text(args[0])?;
        let canonical = self.canonical(req, raw, true)?;
        let c = self.conns.get_mut(&req.conn).ok_or(Errno::EINVAL)?;
        let i = c
            .watches
            .iter()
            .position(|w| w.path == canonical && w.token == args[1])
            .ok_or(Errno::ENOENT)?;
        c.watches.remove(i);
        Ok(ok())
    }

    fn do_transaction_start(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        if req.tx.is_some() {
            return Err(Errno::EBUSY);
        }
        let open: usize = self
            .domain_conns(req.caller.domid)
            .map(|c| c.transactions.len())
            .sum();
        if !req.caller.privileged && open >= self.quotas.transactions {
            return Err(Errno::ENOSPC);
        }
        let c = self.conns.get_mut(&req.conn).ok_or(Errno::EINVAL)?;
        let mut id = c.next_tx;
        while id == 0 || c.transactions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        c.next_tx = id.wrapping_add(1);
        c.transactions.insert(
            id,
            Transaction {
                id,
                overlay: Overlay::new(),
            },
        );
        let mut reply = id.to_string().into_bytes();
        reply.push(0);
        Ok(reply)
    }

    fn do_transaction_end(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let commit = match wire::one_arg(req.payload) {
            Some("T") => true,
            Some("F") => false,
            _ => return Err(Errno::EINVAL),
        };
        let id = req.tx.ok_or(Errno::ENOENT)?;
        let tx = self
            .conns
            .get_mut(&req.conn)
            .and_then(|c| c.transactions.remove(&id))
            .ok_or(Errno::ENOENT)?;
        if commit {
            if tx.overlay.conflicts_with(&self.tree) {
                return Err(Errno::EAGAIN);
            }
            let domid = req.caller.domid;
            if !req.caller.privileged
                && tx.overlay.grows(domid)
                && tx.overlay.owned_after(&self.tree, domid) > self.quotas.nodes as i64
            {
                return Err(Errno::ENOSPC);
            }
            self.commit(tx.overlay)?;
        }
        Ok(ok())
    }

    fn do_introduce(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let args = wire::split_strings(req.payload);
        if args.len() < 3 {
            return Err(Errno::EINVAL);
        }
        let domid = parse_domid(text(args[0])?)?;
        let gfn: u64 = text(args[1])?.parse().map_err(|_| Errno::EINVAL)?;
        let port: u32 = text(args[2])?.parse().map_err(|_| Errno::EINVAL)?;
        if port == 0 || domid == DOMID_SELF {
            return Err(Errno::EINVAL);
        }
        if let (Some(m), true) = (&mut self.mapper, domid != 0) {
            m.map(domid, gfn, port)?;
        }
        if self.domains.introduce(domid, gfn, port) && domid != 0 {
            self.fire_special(INTRODUCE_DOMAIN);
        }
        if domid != 0 {
            self.domain_events
                .push(DomainEvent::Introduced { domid, gfn, port });
        }
        Ok(ok())
    }

    fn domid_arg(req: &Req<'_>) -> Result<u32> {
        parse_domid(wire::one_arg(req.payload).ok_or(Errno::EINVAL)?)
    }

    fn do_release(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let domid = Self::domid_arg(req)?;
        self.domains.release(domid)?;
        for c in self.conns.values_mut().filter(|c| c.domid == domid) {
            c.watches.clear();
            c.transactions.clear();
            c.closed = true;
        }
        self.remove_domain_nodes(domid);
        self.fire_special(RELEASE_DOMAIN);
        self.domain_events.push(DomainEvent::Released(domid));
        Ok(ok())
    }

    /// Removes every subtree whose top node the released domain owns (C
    /// `domain_tree_remove`).
    fn remove_domain_nodes(&mut self, domid: u32) {
        let mut roots = Vec::new();
        let mut stack = vec!["/".to_owned()];
        while let Some(p) = stack.pop() {
            let Some(node) = self.tree.get(&p) else {
                continue;
            };
            if node.perms.owner() == domid {
                roots.push(p);
                continue;
            }
            stack.extend(node.children.iter().map(|c| path::child(&p, c)));
        }
        if roots.is_empty() {
            return;
        }
        let mut overlay = Overlay::new();
        let mut view = TxView::new(&self.tree, &mut overlay);
        for r in &roots {
            if let Err(e) = ops::rm(&mut view, &Caller::DOM0, r) {
                log::warn!("cannot remove {r} of released domain {domid}: {e}");
            }
        }
        if let Err(e) = self.commit(overlay) {
            log::error!("cannot remove the nodes of released domain {domid}: {e}");
        }
    }

    fn do_get_domain_path(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let mut out = path::domain_home(Self::domid_arg(req)?).into_bytes();
        out.push(0);
        Ok(out)
    }

    fn do_is_domain_introduced(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let yes = self.domains.is_introduced(Self::domid_arg(req)?);
        Ok(if yes { b"T\0" } else { b"F\0" }.to_vec())
    }

    fn do_resume(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let domid = Self::domid_arg(req)?;
        if domid == 0 {
            return Err(Errno::EINVAL);
        }
        self.domains.get(domid).ok_or(Errno::ENOENT)?;
        Ok(ok())
    }

    fn do_set_target(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let args = wire::split_strings(req.payload);
        if args.len() < 2 {
            return Err(Errno::EINVAL);
        }
        let id = |b| text(b).and_then(parse_domid);
        self.domains.set_target(id(args[0])?, id(args[1])?)?;
        Ok(ok())
    }

    fn do_reset_watches(&mut self, req: &Req<'_>) -> Result<Vec<u8>> {
        let c = self.conns.get_mut(&req.conn).ok_or(Errno::EINVAL)?;
        c.watches.clear();
        c.transactions.clear();
        Ok(ok())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
