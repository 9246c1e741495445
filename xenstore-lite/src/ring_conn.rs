//! Guest domains' connections over their xenstore rings (xs_wire.h
//! `struct xenstore_domain_interface`, docs/misc/xenstore-ring.txt), through the evtchn broker.
//!
//! The daemon connects to the broker as domain 0. On XS_INTRODUCE `domid gfn port` (the gfn
//! being the grant reference of the guest's ring page) it maps the ring and binds the guest's
//! port ([`XsRingBackend::connect`]) before replying ([`BrokerMapper`]: a failure is the error
//! reply), then opens a [`Store`] connection as that domain; on XS_RELEASE it drops both. Every ring shares the one [`Domain`] doorbell, registered in the
//! server's poll loop: each poll round reads every ring's requests and writes every ring's
//! pending output (the rings are few and a check costs a few atomic loads), so output that did
//! not fit in the 1024-byte reply ring goes out in a later round, when the guest has made room
//! and notified.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use evtchn::{BrokerError, DomId, Domain, XsRingBackend, XsRingError};
use thiserror::Error;

use crate::domain::DomainEvent;
use crate::store::{ConnId, RingMapper, Store};
use crate::wire::Errno;

/// Bytes copied out of one ring per read call.
const READ_CHUNK: usize = 4096;

/// Errors of the ring transport.
#[derive(Debug, Error)]
pub enum RingConnError {
    /// The daemon could not connect to the broker as domain 0.
    #[error("cannot connect to the evtchn broker at {path}")]
    Broker {
        /// The broker's socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: BrokerError,
    },
    /// A guest's ring could not be mapped or its port bound.
    #[error("cannot map the xenstore ring of domain {domid}")]
    Map {
        /// The guest.
        domid: u32,
        /// The cause.
        #[source]
        source: XsRingError,
    },
    /// The domain id, grant reference or port is out of range for the broker.
    #[error("domain {0}: id, ring reference or port out of range")]
    Range(u32),
    /// The broker's doorbell could not be read.
    #[error("evtchn doorbell")]
    Doorbell(#[source] BrokerError),
}

struct RingConn {
    ring: XsRingBackend,
    id: ConnId,
    out: Vec<u8>,
    out_pos: usize,
}

/// Rings mapped by XS_INTRODUCE and not yet attached to a store connection.
type Mapped = Arc<Mutex<HashMap<u32, XsRingBackend>>>;

/// The ring connections of every introduced guest, by domain id.
pub struct RingConns {
    domain: Arc<Domain>,
    conns: HashMap<u32, RingConn>,
    mapped: Mapped,
}

/// The [`RingMapper`] of the broker transport: maps a guest's ring when the store handles
/// XS_INTRODUCE and hands it to [`RingConns`].
pub struct BrokerMapper {
    domain: Arc<Domain>,
    mapped: Mapped,
}

impl RingMapper for BrokerMapper {
    fn map(&mut self, domid: u32, gfn: u64, port: u32) -> Result<(), Errno> {
        let ring = map_ring(&self.domain, domid, gfn, port).map_err(|e| {
            log::warn!("XS_INTRODUCE of domain {domid}: {e:?}");
            e.errno()
        })?;
        self.mapped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domid, ring);
        Ok(())
    }
}

fn map_ring(
    domain: &Arc<Domain>,
    domid: u32,
    gfn: u64,
    port: u32,
) -> Result<XsRingBackend, RingConnError> {
    let guest = DomId::try_from(domid).map_err(|_| RingConnError::Range(domid))?;
    let gref = u32::try_from(gfn).map_err(|_| RingConnError::Range(domid))?;
    XsRingBackend::connect(domain.clone(), guest, gref, port)
        .map_err(|source| RingConnError::Map { domid, source })
}

impl RingConnError {
    /// The errno of an XS_INTRODUCE reply that failed with this error.
    fn errno(&self) -> Errno {
        let refused = match self {
            RingConnError::Range(_) => return Errno::EINVAL,
            RingConnError::Map {
                source: XsRingError::Broker(b),
                ..
            } => b.refused_errno().map(|e| e as i32),
            _ => None,
        };
        match refused {
            Some(libc::ENOENT) => Errno::ENOENT,
            Some(libc::EPERM) => Errno::EPERM,
            Some(libc::EINVAL) => Errno::EINVAL,
            _ => Errno::EIO,
        }
    }
}

impl RingConns {
    /// Connects to the broker at `path` as domain 0.
    ///
    /// # Errors
    /// [`RingConnError::Broker`].
    pub fn connect(path: &Path) -> Result<Self, RingConnError> {
        let domain = Domain::connect(path, 0).map_err(|source| RingConnError::Broker {
            path: path.to_owned(),
            source,
        })?;
        Ok(RingConns {
            domain: Arc::new(domain),
            conns: HashMap::new(),
            mapped: Mapped::default(),
        })
    }

    /// The mapper to give the store ([`Store::set_ring_mapper`]).
    pub fn mapper(&self) -> BrokerMapper {
        BrokerMapper {
            domain: self.domain.clone(),
            mapped: self.mapped.clone(),
        }
    }

    /// The doorbell fd to register in the poll loop (readable when some guest notified).
    pub fn doorbell(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.domain.as_raw_fd()
    }

    /// Clears the doorbell after it polled readable; the rings are checked by
    /// [`RingConns::read_all`].
    ///
    /// # Errors
    /// [`RingConnError::Doorbell`].
    pub fn clear_doorbell(&self) -> Result<(), RingConnError> {
        self.domain.pending().map_err(RingConnError::Doorbell)?;
        Ok(())
    }

    /// Follows introduced and released guests: attaches a ring the [`BrokerMapper`] mapped
    /// (replacing any previous one of that guest) or drops it with its store connection.
    pub fn apply(&mut self, store: &mut Store, events: Vec<DomainEvent>) {
        for ev in events {
            match ev {
                DomainEvent::Introduced { domid, .. } => {
                    self.detach(store, domid);
                    self.attach(store, domid);
                }
                DomainEvent::Released(domid) => self.detach(store, domid),
            }
        }
    }

    fn attach(&mut self, store: &mut Store, domid: u32) {
        let ring = self
            .mapped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&domid);
        let Some(ring) = ring else {
            log::warn!("domain {domid} was introduced without a mapped ring");
            return;
        };
        let id = store.connect(domid);
        log::info!("domain {domid}: xenstore ring connected as connection {id}");
        self.conns.insert(
            domid,
            RingConn {
                ring,
                id,
                out: Vec::new(),
                out_pos: 0,
            },
        );
    }

    fn detach(&mut self, store: &mut Store, domid: u32) {
        if let Some(c) = self.conns.remove(&domid) {
            store.disconnect(c.id);
            log::info!("domain {domid}: xenstore ring disconnected");
        }
    }

    /// Feeds every ring's waiting requests to the store, as far as each connection takes
    /// input. Returns true when some ring may still hold requests its connection did not take
    /// yet (read again after its output has been sent).
    pub fn read_all(&mut self, store: &mut Store) -> bool {
        let mut more = false;
        let mut broken = Vec::new();
        let mut buf = [0u8; READ_CHUNK];
        for (&domid, c) in &mut self.conns {
            let _ = store.process(c.id);
            loop {
                if !store.wants_input(c.id) {
                    // Once its output is handed over, it takes input again; with output still
                    // unsent, the guest's notification when it makes room starts the round.
                    more |= !store.is_closed(c.id) && c.out_pos == c.out.len();
                    break;
                }
                match c.ring.read_available(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if store.feed(c.id, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        log::warn!("domain {domid}: xenstore ring: {e}");
                        broken.push(domid);
                        break;
                    }
                }
            }
        }
        for domid in broken {
            self.detach(store, domid);
        }
        more
    }

    /// Writes every ring's queued replies and watch events as far as the reply rings have
    /// room; drops connections that have ended and sent everything.
    pub fn flush_all(&mut self, store: &mut Store) {
        let mut done = Vec::new();
        for (&domid, c) in &mut self.conns {
            if c.out_pos == c.out.len() {
                c.out = store.take_output(c.id);
                c.out_pos = 0;
            }
            while c.out_pos < c.out.len() {
                match c.ring.write(&c.out[c.out_pos..]) {
                    Ok(0) => break,
                    Ok(n) => c.out_pos += n,
                    Err(e) => {
                        log::warn!("domain {domid}: xenstore ring: {e}");
                        done.push(domid);
                        break;
                    }
                }
            }
            if c.out_pos == c.out.len() && store.is_closed(c.id) {
                done.push(domid);
            }
        }
        for domid in done {
            self.detach(store, domid);
        }
    }
}
