//! A minimal XenStore client over the guest's xenstore ring (xs_wire.h
//! `struct xenstore_domain_interface`, docs/misc/xenstore-ring.txt): XS_READ, XS_WRITE,
//! XS_DIRECTORY, XS_WATCH / XS_UNWATCH and transactions (XS_TRANSACTION_START / _END), one
//! request at a time.
//!
//! The page is at the guest-physical address the boot info gives (identity-mapped). Requests
//! go into `req` (bytes 0..1024), replies come from `rsp` (1024..2048); the four free-running
//! u32 indices follow at 2048. After every index update the guest notifies the store (a 4-byte
//! `out` of the port to `XENSTORE_NOTIFY_PORT`); the store's notifications arrive on
//! `XENSTORE_GSI`, and a bounded `hlt` covers a lost one. Indices written by the store are
//! checked (more than 1024 bytes outstanding is an error); replies longer than
//! [`MAX_PAYLOAD`] are an error. Watch events (XS_WATCH_EVENT) arrive on the same ring,
//! interleaved with replies: they are counted while a reply is awaited and handed out by
//! [`Xs::wait_event`]; the waiters re-read what they watch (level-triggered), so the event's
//! path and token are not kept. Replies to other requests are skipped.

use core::sync::atomic::{fence, AtomicU32, Ordering};

use crate::rt::boot_info::{XenstoreInfo, XENSTORE_NOTIFY_PORT};
use crate::Fail;

const RING: u32 = 1024;
const REQ: u64 = 0;
const RSP: u64 = 1024;
const REQ_CONS: u64 = 2048;
const REQ_PROD: u64 = 2052;
const RSP_CONS: u64 = 2056;
const RSP_PROD: u64 = 2060;
/// Largest payload (`XENSTORE_PAYLOAD_MAX`).
pub const MAX_PAYLOAD: usize = 4096;
const HEADER: usize = 16;
const XS_DIRECTORY: u32 = 1;
const XS_READ: u32 = 2;
const XS_WATCH: u32 = 4;
const XS_UNWATCH: u32 = 5;
const XS_TRANSACTION_START: u32 = 6;
const XS_TRANSACTION_END: u32 = 7;
const XS_WRITE: u32 = 11;
const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;
/// How long one request may take, in milliseconds.
const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Longest sleep between ring checks while a reply is awaited (ns).
const POLL_NS: u32 = 2_000_000;
/// Longest sleep between ring checks while an event is awaited (ns): the store's interrupt
/// normally ends it.
const EVENT_POLL_NS: u32 = 50_000_000;
/// Commits tried before a transaction that keeps meeting concurrent changes gives up.
const TRANSACTION_ATTEMPTS: u32 = 16;

/// The shared page: the two rings and their indices.
struct Ring {
    base: u64,
    port: u32,
}

impl Ring {
    fn index(&self, offset: u64) -> &AtomicU32 {
        // SAFETY: the ring page is identity-mapped guest memory for the guest's lifetime and
        // the offsets are 4-byte aligned fields inside it.
        unsafe { &*((self.base + offset) as *const AtomicU32) }
    }

    fn byte(&self, ring: u64, index: u32) -> *mut u8 {
        (self.base + ring + u64::from(index % RING)) as *mut u8
    }

    fn notify(&self) {
        crate::rt::outl(XENSTORE_NOTIFY_PORT, self.port);
    }

    fn wait(deadline: u64) -> Result<(), Fail> {
        if crate::irq::past(deadline) {
            return Err(Fail::new(
                "xenstore did not answer in ms",
                REQUEST_TIMEOUT_MS,
            ));
        }
        crate::irq::wait(POLL_NS);
        Ok(())
    }

    fn send(&self, data: &[u8], deadline: u64) -> Result<(), Fail> {
        let mut done = 0;
        while done < data.len() {
            let cons = self.index(REQ_CONS).load(Ordering::Acquire);
            let prod = self.index(REQ_PROD).load(Ordering::Relaxed);
            let used = prod.wrapping_sub(cons);
            if used > RING {
                return Err(Fail::new(
                    "xenstore request ring index out of range",
                    used.into(),
                ));
            }
            let n = ((RING - used) as usize).min(data.len() - done);
            if n == 0 {
                self.notify();
                Self::wait(deadline)?;
                continue;
            }
            for (i, &b) in data[done..done + n].iter().enumerate() {
                // SAFETY: the byte is inside the req ring of the mapped page.
                unsafe {
                    self.byte(REQ, prod.wrapping_add(i as u32))
                        .write_volatile(b)
                };
            }
            fence(Ordering::Release);
            self.index(REQ_PROD)
                .store(prod.wrapping_add(n as u32), Ordering::Release);
            self.notify();
            done += n;
        }
        Ok(())
    }

    /// Bytes the store has put on the reply ring and the guest not taken yet.
    fn available(&self) -> Result<u32, Fail> {
        let prod = self.index(RSP_PROD).load(Ordering::Acquire);
        let cons = self.index(RSP_CONS).load(Ordering::Relaxed);
        let avail = prod.wrapping_sub(cons);
        if avail > RING {
            return Err(Fail::new(
                "xenstore reply ring index out of range",
                avail.into(),
            ));
        }
        Ok(avail)
    }

    fn recv(&self, out: &mut [u8], deadline: u64) -> Result<(), Fail> {
        let mut done = 0;
        while done < out.len() {
            let avail = self.available()?;
            let cons = self.index(RSP_CONS).load(Ordering::Relaxed);
            let n = (avail as usize).min(out.len() - done);
            if n == 0 {
                Self::wait(deadline)?;
                continue;
            }
            for (i, b) in out[done..done + n].iter_mut().enumerate() {
                // SAFETY: the byte is inside the rsp ring of the mapped page.
                *b = unsafe { self.byte(RSP, cons.wrapping_add(i as u32)).read_volatile() };
            }
            fence(Ordering::Release);
            self.index(RSP_CONS)
                .store(cons.wrapping_add(n as u32), Ordering::Release);
            self.notify();
            done += n;
        }
        Ok(())
    }
}

/// The answer to one request: a payload, or the store's error (`EACCES`, `ENOENT`, ...).
enum Reply {
    /// The reply's payload length (the payload is in `Xs::buf`).
    Ok(usize),
    /// XS_ERROR; its errno name (NUL-terminated) is in `Xs::buf`.
    Error(usize),
}

/// The guest's XenStore connection.
pub struct Xs {
    ring: Ring,
    req_id: u32,
    /// The open transaction's id (0: none).
    tx: u32,
    /// Watch events that arrived and were not handed out yet.
    events: u32,
    buf: [u8; MAX_PAYLOAD],
}

impl Xs {
    /// The connection the boot info describes; `None` without XenStore.
    pub fn new(info: &XenstoreInfo) -> Option<Self> {
        (info.ring_gpa != 0).then_some(Xs {
            ring: Ring {
                base: info.ring_gpa,
                port: info.port,
            },
            req_id: 0,
            tx: 0,
            events: 0,
            buf: [0; MAX_PAYLOAD],
        })
    }

    /// Reads one message into `buf`: (type, request id, payload length). Watch events are
    /// counted.
    fn recv_message(&mut self, deadline: u64) -> Result<(u32, u32, usize), Fail> {
        let mut h = [0u8; HEADER];
        self.ring.recv(&mut h, deadline)?;
        let field =
            |i: usize| u32::from_le_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]]);
        let (ty, id, len) = (field(0), field(1), field(3) as usize);
        if len > MAX_PAYLOAD {
            return Err(Fail::new("xenstore message too long", len as u64));
        }
        self.ring.recv(&mut self.buf[..len], deadline)?;
        if ty == XS_WATCH_EVENT {
            self.events = self.events.saturating_add(1);
        }
        Ok((ty, id, len))
    }

    /// Sends one request (`parts` concatenated as the payload, in the open transaction if
    /// any) and waits for its reply.
    fn exchange(&mut self, ty: u32, parts: &[&[u8]]) -> Result<Reply, Fail> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_PAYLOAD {
            return Err(Fail::new("xenstore request too long", len as u64));
        }
        self.req_id = self.req_id.wrapping_add(1);
        let deadline = crate::irq::deadline_ms(REQUEST_TIMEOUT_MS);
        let mut header = [0u8; HEADER];
        for (i, v) in [ty, self.req_id, self.tx, len as u32].iter().enumerate() {
            header[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        self.ring.send(&header, deadline)?;
        for p in parts {
            self.ring.send(p, deadline)?;
        }
        loop {
            let (rty, rid, rlen) = self.recv_message(deadline)?;
            if rty == XS_WATCH_EVENT || rid != self.req_id {
                continue; // a watch event or a stale reply
            }
            match rty {
                XS_ERROR => return Ok(Reply::Error(rlen)),
                t if t == ty => return Ok(Reply::Ok(rlen)),
                _ => return Err(Fail::new("xenstore reply of another type", rty.into())),
            }
        }
    }

    /// Whether an XS_ERROR reply of `n` bytes names `errno` (e.g. `b"ENOENT"`).
    fn is_error(&self, n: usize, errno: &[u8]) -> bool {
        self.buf[..n].split(|&b| b == 0).next() == Some(errno)
    }

    /// [`Xs::exchange`] with XS_ERROR as a failure.
    fn request(&mut self, ty: u32, parts: &[&[u8]]) -> Result<usize, Fail> {
        match self.exchange(ty, parts)? {
            Reply::Ok(n) => Ok(n),
            Reply::Error(_) => Err(Fail::new("xenstore refused request type", ty.into())),
        }
    }

    /// [`Xs::exchange`] with `ENOENT` as `None`.
    fn request_optional(&mut self, ty: u32, parts: &[&[u8]]) -> Result<Option<&[u8]>, Fail> {
        match self.exchange(ty, parts)? {
            Reply::Ok(n) => Ok(Some(&self.buf[..n])),
            Reply::Error(n) if self.is_error(n, b"ENOENT") => Ok(None),
            Reply::Error(_) => Err(Fail::new("xenstore refused request type", ty.into())),
        }
    }

    /// XS_READ of `path`: the value.
    ///
    /// # Errors
    /// The store refused (no such node, no permission), ring errors, a timeout.
    pub fn read(&mut self, path: &str) -> Result<&[u8], Fail> {
        let n = self.request(XS_READ, &[path.as_bytes(), b"\0"])?;
        Ok(&self.buf[..n])
    }

    /// XS_READ of `path`; `None` when the node does not exist.
    ///
    /// # Errors
    /// As [`Xs::read`], but for `ENOENT`.
    pub fn read_optional(&mut self, path: &str) -> Result<Option<&[u8]>, Fail> {
        self.request_optional(XS_READ, &[path.as_bytes(), b"\0"])
    }

    /// XS_DIRECTORY of `path`: the children's names, each NUL-terminated (empty when `path`
    /// does not exist).
    ///
    /// # Errors
    /// As [`Xs::read`], but for `ENOENT`.
    pub fn directory(&mut self, path: &str) -> Result<&[u8], Fail> {
        Ok(self
            .request_optional(XS_DIRECTORY, &[path.as_bytes(), b"\0"])?
            .unwrap_or(&[]))
    }

    /// XS_WRITE of `value` at `path`.
    ///
    /// # Errors
    /// As [`Xs::read`].
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Fail> {
        self.request(XS_WRITE, &[path.as_bytes(), b"\0", value])?;
        Ok(())
    }

    /// Writes every `(path, value)` in one transaction (all or none), from the start again
    /// while the commit meets a concurrent change (`EAGAIN`).
    ///
    /// # Errors
    /// A refused write (the transaction is abandoned: nothing is written), ring errors, a
    /// transaction that kept failing.
    pub fn write_all(&mut self, writes: &[(&str, &[u8])]) -> Result<(), Fail> {
        for _ in 0..TRANSACTION_ATTEMPTS {
            let n = self.request(XS_TRANSACTION_START, &[b"\0"])?;
            self.tx = parse_decimal(&self.buf[..n])
                .filter(|&id| id != 0)
                .ok_or(Fail::new("bad transaction id, bytes", n as u64))?;
            let mut result = Ok(());
            for (path, value) in writes {
                result = self.write(path, value);
                if result.is_err() {
                    break;
                }
            }
            let end: &[u8] = if result.is_ok() { b"T\0" } else { b"F\0" };
            let reply = self.exchange(XS_TRANSACTION_END, &[end]);
            self.tx = 0;
            result?;
            match reply? {
                Reply::Ok(_) => return Ok(()),
                Reply::Error(n) if self.is_error(n, b"EAGAIN") => continue,
                Reply::Error(_) => return Err(Fail::new("xenstore refused the commit", 0)),
            }
        }
        Err(Fail::new(
            "transaction kept meeting changes, attempts",
            TRANSACTION_ATTEMPTS.into(),
        ))
    }

    /// XS_WATCH of `path` (and its subtree) with `token`. The store fires it once at once.
    ///
    /// # Errors
    /// As [`Xs::read`].
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), Fail> {
        let parts: [&[u8]; 4] = [path.as_bytes(), b"\0", token.as_bytes(), b"\0"];
        self.request(XS_WATCH, &parts)?;
        Ok(())
    }

    /// XS_UNWATCH of `path` with `token`.
    ///
    /// # Errors
    /// As [`Xs::read`].
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Fail> {
        let parts: [&[u8]; 4] = [path.as_bytes(), b"\0", token.as_bytes(), b"\0"];
        self.request(XS_UNWATCH, &parts)?;
        Ok(())
    }

    /// Waits until a watch event arrives (or arrived since the last call): `true`, or the TSC
    /// passes `deadline`: `false`.
    ///
    /// # Errors
    /// Ring errors, a message that does not complete in time.
    pub fn wait_event(&mut self, deadline: u64) -> Result<bool, Fail> {
        loop {
            if self.events > 0 {
                self.events = 0;
                return Ok(true);
            }
            if self.ring.available()? as usize >= HEADER {
                // Not a reply anyone waits for: an event, or a stale reply.
                self.recv_message(crate::irq::deadline_ms(REQUEST_TIMEOUT_MS))?;
                continue;
            }
            if crate::irq::past(deadline) {
                return Ok(false);
            }
            crate::irq::wait(EVENT_POLL_NS);
        }
    }
}

/// A decimal number (a transaction id), NUL-terminated or not.
fn parse_decimal(b: &[u8]) -> Option<u32> {
    let digits = b.split(|&c| c == 0).next()?;
    core::str::from_utf8(digits).ok()?.parse().ok()
}

/// A path built with `write!` in a fixed buffer.
pub struct PathBuf {
    buf: [u8; 256],
    len: usize,
}

impl PathBuf {
    /// An empty path.
    pub const fn new() -> Self {
        PathBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Write for PathBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
