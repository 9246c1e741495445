//! A minimal XenStore client over the guest's xenstore ring (xs_wire.h
//! `struct xenstore_domain_interface`, docs/misc/xenstore-ring.txt): XS_READ and XS_WRITE,
//! one request at a time.
//!
//! The page is at the guest-physical address the boot info gives (identity-mapped). Requests
//! go into `req` (bytes 0..1024), replies come from `rsp` (1024..2048); the four free-running
//! u32 indices follow at 2048. After every index update the guest notifies the store (a 4-byte
//! `out` of the port to `XENSTORE_NOTIFY_PORT`); the store's notifications arrive on
//! `XENSTORE_GSI`, and a bounded `hlt` covers a lost one. Indices written by the store are
//! checked (more than 1024 bytes outstanding is an error); replies longer than
//! [`MAX_PAYLOAD`], replies to other requests and watch events are skipped.

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
const XS_READ: u32 = 2;
const XS_WRITE: u32 = 11;
const XS_ERROR: u32 = 16;
/// How long one request may take, in milliseconds.
const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Longest sleep between ring checks (ns).
const POLL_NS: u32 = 2_000_000;

/// The guest's XenStore connection.
pub struct Xs {
    base: u64,
    port: u32,
    req_id: u32,
    buf: [u8; MAX_PAYLOAD],
}

impl Xs {
    /// The connection the boot info describes; `None` without XenStore.
    pub fn new(info: &XenstoreInfo) -> Option<Self> {
        (info.ring_gpa != 0).then_some(Xs {
            base: info.ring_gpa,
            port: info.port,
            req_id: 0,
            buf: [0; MAX_PAYLOAD],
        })
    }

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

    fn send(&mut self, data: &[u8], deadline: u64) -> Result<(), Fail> {
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

    fn recv(&mut self, out: &mut [u8], deadline: u64) -> Result<(), Fail> {
        let mut done = 0;
        while done < out.len() {
            let prod = self.index(RSP_PROD).load(Ordering::Acquire);
            let cons = self.index(RSP_CONS).load(Ordering::Relaxed);
            let avail = prod.wrapping_sub(cons);
            if avail > RING {
                return Err(Fail::new(
                    "xenstore reply ring index out of range",
                    avail.into(),
                ));
            }
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

    /// Sends one request (`parts` concatenated as the payload) and returns the reply's payload
    /// length (the payload is in `self.buf`).
    fn request(&mut self, ty: u32, parts: &[&[u8]]) -> Result<usize, Fail> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_PAYLOAD {
            return Err(Fail::new("xenstore request too long", len as u64));
        }
        self.req_id = self.req_id.wrapping_add(1);
        let deadline = crate::irq::deadline_ms(REQUEST_TIMEOUT_MS);
        let mut header = [0u8; 16];
        for (i, v) in [ty, self.req_id, 0, len as u32].iter().enumerate() {
            header[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        self.send(&header, deadline)?;
        for p in parts {
            self.send(p, deadline)?;
        }
        loop {
            let mut h = [0u8; 16];
            self.recv(&mut h, deadline)?;
            let field =
                |i: usize| u32::from_le_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]]);
            let (rty, rid, rlen) = (field(0), field(1), field(3) as usize);
            if rlen > MAX_PAYLOAD {
                return Err(Fail::new("xenstore reply too long", rlen as u64));
            }
            let mut body = [0u8; MAX_PAYLOAD];
            self.recv(&mut body[..rlen], deadline)?;
            if rid != self.req_id || (rty != ty && rty != XS_ERROR) {
                continue; // a watch event or a stale reply
            }
            if rty == XS_ERROR {
                return Err(Fail::new("xenstore refused request type", ty.into()));
            }
            self.buf[..rlen].copy_from_slice(&body[..rlen]);
            return Ok(rlen);
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

    /// XS_WRITE of `value` at `path`.
    ///
    /// # Errors
    /// As [`Xs::read`].
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Fail> {
        self.request(XS_WRITE, &[path.as_bytes(), b"\0", value])?;
        Ok(())
    }
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
