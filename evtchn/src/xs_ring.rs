//! The xenstore ring: two byte streams in one shared page, laid out as Xen's
//! `struct xenstore_domain_interface` (public/io/xs_wire.h, docs/misc/xenstore-ring.txt), plus
//! the event channel that goes with it. xs_wire messages travel over it unchanged.
//!
//! | bytes      | field                                                        |
//! |------------|--------------------------------------------------------------|
//! | 0..1024    | `req`: requests, guest → xenstored                            |
//! | 1024..2048 | `rsp`: replies and watch events, xenstored → guest            |
//! | 2048..2064 | `req_cons`, `req_prod`, `rsp_cons`, `rsp_prod` (free-running u32) |
//! | 2064..2068 | `server_features` (RECONNECTION 1, ERROR 2)                    |
//! | 2068..2072 | `connection` (CONNECTED 0, RECONNECT 1)                        |
//! | 2072..2076 | `error` (NONE 0, COMM 1, RINGIDX 2, PROTO 3)                   |
//! | 2076..2080 | `evtchn_port`                                                 |
//!
//! Byte `x` of a stream sits at `x % 1024`. Indices come from the page and are validated on every
//! use (more than 1024 bytes outstanding is an error, never an out-of-bounds copy). As the
//! protocol requires, every index update is followed by a notification; there is no
//! suppression on this ring.
//!
//! - [`XsRingBackend`] is xenstored's side of one guest domain, created on XS_INTRODUCE from
//!   the guest's (domid, grant ref, port). It never blocks: register the [`Domain`]'s fd
//!   (`AsFd`) in the server's poll loop, and on readiness call [`Domain::pending`] and
//!   [`XsRingBackend::read_available`] for the guests whose [`XsRingBackend::local_port`] fired.
//! - [`XsRingFrontend`] is the guest's side, a blocking `Read + Write` byte stream, so a
//!   xenstore client written for a socket runs over it unchanged.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::broker::{BrokerError, Domain};
use crate::mapping::{MappingError, SharedRegion};
use crate::{DomId, GrantRef, Port};

/// Size of each byte ring (`XENSTORE_RING_SIZE`).
pub const XENSTORE_RING_SIZE: usize = 1024;
/// Byte offset of the `req` ring.
pub const REQ_OFFSET: usize = 0;
/// Byte offset of the `rsp` ring.
pub const RSP_OFFSET: usize = 1024;
/// Byte offset of `req_cons`.
pub const REQ_CONS_OFFSET: usize = 2048;
/// Byte offset of `req_prod`.
pub const REQ_PROD_OFFSET: usize = 2052;
/// Byte offset of `rsp_cons`.
pub const RSP_CONS_OFFSET: usize = 2056;
/// Byte offset of `rsp_prod`.
pub const RSP_PROD_OFFSET: usize = 2060;
/// Byte offset of `server_features`.
pub const SERVER_FEATURES_OFFSET: usize = 2064;
/// Byte offset of `connection`.
pub const CONNECTION_OFFSET: usize = 2068;
/// Byte offset of `error`.
pub const ERROR_OFFSET: usize = 2072;
/// Byte offset of `evtchn_port`.
pub const EVTCHN_PORT_OFFSET: usize = 2076;

/// `server_features` bit: the server supports the reconnection protocol.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `server_features` bit: the server reports ring errors in `error`.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `connection`: normal operation.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: the guest asked for a reconnection.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error`: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (for example an oversized payload).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// Errors of the xenstore ring.
#[derive(Debug, thiserror::Error)]
pub enum XsRingError {
    /// A grant or event-channel operation failed.
    #[error("grant or event-channel operation failed")]
    Broker(#[from] BrokerError),
    /// A shared-memory access failed.
    #[error("shared memory access failed")]
    Mapping(#[from] MappingError),
    /// The indices of one byte ring claim more than [`XENSTORE_RING_SIZE`] bytes outstanding
    /// (`XENSTORE_ERROR_RINGIDX`).
    #[error("{ring} ring indices are invalid: cons {cons}, prod {prod}")]
    BadIndices {
        /// "req" or "rsp".
        ring: &'static str,
        /// Consumer index read from the page.
        cons: u32,
        /// Producer index read from the page.
        prod: u32,
    },
    /// The server set the page's `error` field (an `XENSTORE_ERROR_*` value).
    #[error("xenstore server reported ring error {0}")]
    Server(u32),
}

impl From<XsRingError> for io::Error {
    fn from(e: XsRingError) -> Self {
        io::Error::other(e)
    }
}

/// Result type of the xenstore ring.
pub type Result<T> = std::result::Result<T, XsRingError>;

/// One direction of the page: its data area and its two indices.
struct ByteRing {
    name: &'static str,
    data: usize,
    cons: usize,
    prod: usize,
}

/// Guest → server.
const REQUESTS: ByteRing = ByteRing {
    name: "req",
    data: REQ_OFFSET,
    cons: REQ_CONS_OFFSET,
    prod: REQ_PROD_OFFSET,
};
/// Server → guest.
const RESPONSES: ByteRing = ByteRing {
    name: "rsp",
    data: RSP_OFFSET,
    cons: RSP_CONS_OFFSET,
    prod: RSP_PROD_OFFSET,
};

impl ByteRing {
    fn index<'a>(&self, page: &'a SharedRegion, offset: usize) -> Result<&'a AtomicU32> {
        Ok(page.atomic_u32(offset)?)
    }

    /// Bytes outstanding between `cons` and `prod`, validated.
    fn outstanding(&self, cons: u32, prod: u32) -> Result<usize> {
        let n = prod.wrapping_sub(cons) as usize;
        if n > XENSTORE_RING_SIZE {
            return Err(XsRingError::BadIndices {
                ring: self.name,
                cons,
                prod,
            });
        }
        Ok(n)
    }

    /// The (up to two) data-area pieces holding `len` bytes from stream position `pos`.
    fn pieces(&self, pos: u32, len: usize) -> [(usize, usize); 2] {
        let start = pos as usize % XENSTORE_RING_SIZE;
        let first = len.min(XENSTORE_RING_SIZE - start);
        [(self.data + start, first), (self.data, len - first)]
    }

    /// Consumer side: copies up to `buf.len()` available bytes out and advances `cons`.
    fn read(&self, page: &SharedRegion, buf: &mut [u8]) -> Result<usize> {
        let cons_ix = self.index(page, self.cons)?;
        // Relaxed: only this side writes the consumer index.
        let cons = cons_ix.load(Ordering::Relaxed);
        // Acquire: pairs with the producer's Release store, so the bytes before `prod` are
        // visible before we copy them.
        let prod = self.index(page, self.prod)?.load(Ordering::Acquire);
        let n = self.outstanding(cons, prod)?.min(buf.len());
        let mut done = 0;
        for (offset, len) in self.pieces(cons, n) {
            page.read_bytes(offset, &mut buf[done..done + len])?;
            done += len;
        }
        // Release: our copies out of the ring complete before the producer can see the space
        // freed and overwrite it.
        cons_ix.store(cons.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// Producer side: copies as much of `buf` as fits and advances `prod`.
    fn write(&self, page: &SharedRegion, buf: &[u8]) -> Result<usize> {
        let prod_ix = self.index(page, self.prod)?;
        // Relaxed: only this side writes the producer index.
        let prod = prod_ix.load(Ordering::Relaxed);
        // Acquire: pairs with the consumer's Release store, so its reads of the space it freed
        // are done before we overwrite it.
        let cons = self.index(page, self.cons)?.load(Ordering::Acquire);
        let n = (XENSTORE_RING_SIZE - self.outstanding(cons, prod)?).min(buf.len());
        let mut done = 0;
        for (offset, len) in self.pieces(prod, n) {
            page.write_bytes(offset, &buf[done..done + len])?;
            done += len;
        }
        // Release: the bytes are in the ring before the consumer sees the new producer index.
        prod_ix.store(prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }
}

/// Reads a `u32` field of the page. Acquire: a flag the peer set after other writes comes with
/// them.
fn load_field(page: &SharedRegion, offset: usize) -> Result<u32> {
    Ok(page.atomic_u32(offset)?.load(Ordering::Acquire))
}

/// Writes a `u32` field of the page. Release: our earlier writes are visible with it.
fn store_field(page: &SharedRegion, offset: usize, value: u32) -> Result<()> {
    page.atomic_u32(offset)?.store(value, Ordering::Release);
    Ok(())
}

/// Notifies `port` if `moved` bytes changed an index ("signal after every index update").
fn notify_if(domain: &Domain, port: Port, moved: usize) -> Result<()> {
    if moved > 0 {
        domain.notify(port)?;
    }
    Ok(())
}

/// xenstored's end of one guest domain's xenstore ring (see the module docs).
#[derive(Debug)]
pub struct XsRingBackend {
    domain: Arc<Domain>,
    page: SharedRegion,
    guest: DomId,
    local_port: Port,
}

impl XsRingBackend {
    /// What xenstored does on XS_INTRODUCE `guest gref port`: maps the guest's ring page (grant
    /// `gref` of `guest`), binds a local port to the guest's unbound `port`, and advertises
    /// [`XENSTORE_SERVER_FEATURE_ERROR`]. Requests may already be waiting: call
    /// [`XsRingBackend::read_available`] once after connecting.
    ///
    /// # Errors
    /// [`XsRingError::Broker`] if the grant or port is refused (not granted to this domain, not
    /// allocated for it, already bound).
    pub fn connect(domain: Arc<Domain>, guest: DomId, gref: GrantRef, port: Port) -> Result<Self> {
        let page = domain.map_grant(guest, gref)?;
        let local_port = domain.bind_interdomain(guest, port)?;
        store_field(&page, SERVER_FEATURES_OFFSET, XENSTORE_SERVER_FEATURE_ERROR)?;
        Ok(Self {
            domain,
            page,
            guest,
            local_port,
        })
    }

    /// The guest's domain id: every request read here is that domain's.
    pub fn guest(&self) -> DomId {
        self.guest
    }

    /// The local port bound to the guest's event channel; [`Domain::pending`] lists it when
    /// the guest has notified.
    pub fn local_port(&self) -> Port {
        self.local_port
    }

    /// The server's [`Domain`], whose fd is the doorbell for every guest it serves.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// Copies up to `buf.len()` request bytes out of the ring without blocking and notifies the
    /// guest if any were taken (so it may write more). Returns 0 when none are waiting.
    ///
    /// # Errors
    /// [`XsRingError::BadIndices`] if the guest's indices are invalid; the page's `error` is
    /// then set to [`XENSTORE_ERROR_RINGIDX`] and the connection should be dropped.
    pub fn read_available(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.flag_errors(REQUESTS.read(&self.page, buf))?;
        notify_if(&self.domain, self.local_port, n)?;
        Ok(n)
    }

    /// Copies as much of `buf` as fits into the reply ring without blocking and notifies the
    /// guest if anything was written. Returns the bytes written, possibly fewer than
    /// `buf.len()` (0 if the ring is full): keep the rest and retry after the guest notifies.
    ///
    /// # Errors
    /// As for [`XsRingBackend::read_available`].
    pub fn write(&mut self, buf: &[u8]) -> Result<usize> {
        let n = self.flag_errors(RESPONSES.write(&self.page, buf))?;
        notify_if(&self.domain, self.local_port, n)?;
        Ok(n)
    }

    /// Records a ring-index error in the page's `error` field for the guest to see.
    fn flag_errors(&self, r: Result<usize>) -> Result<usize> {
        if let Err(XsRingError::BadIndices { .. }) = r {
            store_field(&self.page, ERROR_OFFSET, XENSTORE_ERROR_RINGIDX)?;
        }
        r
    }
}

/// The doorbell of the server's [`Domain`] (shared by every guest it serves).
impl AsFd for XsRingBackend {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.domain.as_fd()
    }
}

impl Drop for XsRingBackend {
    fn drop(&mut self) {
        if let Err(e) = self.domain.close(self.local_port) {
            log::warn!("closing the xenstore port of domain {}: {e}", self.guest);
        }
    }
}

/// A guest's end of its xenstore ring: a blocking byte stream (see the module docs).
///
/// Blocking waits take every pending event of its [`Domain`], so give the xenstore client a
/// `Domain` connection of its own (a process may connect several times as the same domain,
/// as it may open /dev/xen/evtchn several times).
#[derive(Debug)]
pub struct XsRingFrontend {
    domain: Arc<Domain>,
    page: SharedRegion,
    gref: GrantRef,
    port: Port,
}

impl XsRingFrontend {
    /// Sets up a guest's xenstore ring for the server domain `backend` (usually 0): grants a
    /// fresh zeroed page to it, allocates an unbound port for it and records the port in
    /// `evtchn_port`. Hand [`XsRingFrontend::gref`] and [`XsRingFrontend::port`] to the
    /// toolstack for XS_INTRODUCE. Writes before the server connects wait in the ring.
    ///
    /// # Errors
    /// [`XsRingError::Broker`] if the grant or port cannot be made.
    pub fn create(domain: Arc<Domain>, backend: DomId) -> Result<Self> {
        let (gref, page) = domain.grant_access(backend, 1)?;
        let port = domain.alloc_unbound(backend)?;
        store_field(&page, EVTCHN_PORT_OFFSET, port)?;
        Ok(Self {
            domain,
            page,
            gref,
            port,
        })
    }

    /// The grant reference of the ring page (XS_INTRODUCE's gfn argument).
    pub fn gref(&self) -> GrantRef {
        self.gref
    }

    /// The guest's event-channel port for the ring (XS_INTRODUCE's evtchn argument).
    pub fn port(&self) -> Port {
        self.port
    }

    /// The server's feature bits (`XENSTORE_SERVER_FEATURE_*`; 0 until it connects).
    ///
    /// # Errors
    /// [`XsRingError::Mapping`] (cannot happen for a one-page ring).
    pub fn server_features(&self) -> Result<u32> {
        load_field(&self.page, SERVER_FEATURES_OFFSET)
    }

    fn check_server_error(&self) -> Result<()> {
        match load_field(&self.page, ERROR_OFFSET)? {
            XENSTORE_ERROR_NONE => Ok(()),
            e => Err(XsRingError::Server(e)),
        }
    }

    /// Copies up to `buf.len()` reply bytes out without blocking; notifies the server if any
    /// were taken. Returns 0 when none are waiting.
    ///
    /// # Errors
    /// [`XsRingError::Server`] if the server flagged an error, [`XsRingError::BadIndices`].
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.check_server_error()?;
        let n = RESPONSES.read(&self.page, buf)?;
        notify_if(&self.domain, self.port, n)?;
        Ok(n)
    }

    /// Copies as much of `buf` as fits into the request ring without blocking; notifies the
    /// server if anything was written. Returns the bytes written (0 if the ring is full).
    ///
    /// # Errors
    /// As for [`XsRingFrontend::try_read`].
    pub fn try_write(&mut self, buf: &[u8]) -> Result<usize> {
        self.check_server_error()?;
        let n = REQUESTS.write(&self.page, buf)?;
        notify_if(&self.domain, self.port, n)?;
        Ok(n)
    }

    /// Runs `op` until it moves at least one byte, sleeping on the event channel in between.
    /// A notification that arrives between `op` finding nothing and the wait is not lost: it
    /// leaves the port pending and the doorbell rung, so the wait returns at once.
    fn blocking(&mut self, mut op: impl FnMut(&mut Self) -> Result<usize>) -> io::Result<usize> {
        loop {
            let n = op(self)?;
            if n > 0 {
                return Ok(n);
            }
            self.domain.wait(None).map_err(XsRingError::from)?;
        }
    }
}

/// Blocks until at least one reply byte is available (never returns 0 for a non-empty buffer).
impl io::Read for XsRingFrontend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.blocking(|s| s.try_read(buf))
    }
}

/// Blocks until at least one byte fits; `write_all` loops over partial writes.
impl io::Write for XsRingFrontend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.blocking(|s| s.try_write(buf))
    }

    /// Bytes are in shared memory as soon as `write` returns: nothing to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for XsRingFrontend {
    fn drop(&mut self) {
        if let Err(e) = self.domain.close(self.port) {
            log::warn!("closing the xenstore port: {e}");
        }
        if let Err(e) = self.domain.end_access(self.gref) {
            log::warn!("ending the xenstore ring grant: {e}");
        }
    }
}
