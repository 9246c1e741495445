//! The doorbell of a receiving endpoint: an eventfd that senders write to wake it, standing in
//! for the upcall Xen raises on a vCPU.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::unistd;

/// A non-blocking eventfd used as a doorbell.
#[derive(Debug)]
pub struct Doorbell(OwnedFd);

impl Doorbell {
    /// A new non-blocking, close-on-exec eventfd with counter 0.
    ///
    /// # Errors
    /// The errno of `eventfd`.
    pub fn new() -> nix::Result<Self> {
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self(OwnedFd::from(efd)))
    }

    /// Wraps a doorbell fd received from the broker. Should the fd not be an eventfd, ringing
    /// and draining fail with an errno instead of misbehaving.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Rings: adds 1 to the counter, making the fd readable.
    ///
    /// # Errors
    /// The errno of `write` (EAGAIN, a counter at its maximum, counts as rung).
    pub fn ring(&self) -> nix::Result<()> {
        match unistd::write(&self.0, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resets the counter to 0 without blocking; returns how many rings it held.
    ///
    /// # Errors
    /// The errno of `read` (EAGAIN, nothing rung, returns 0).
    pub fn drain(&self) -> nix::Result<u64> {
        let mut buf = [0u8; 8];
        match unistd::read(&self.0, &mut buf) {
            Ok(8) => Ok(u64::from_ne_bytes(buf)),
            Ok(_) => Err(Errno::EINVAL),
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_then_drain() {
        let d = Doorbell::new().unwrap();
        assert_eq!(d.drain().unwrap(), 0);
        d.ring().unwrap();
        d.ring().unwrap();
        assert_eq!(d.drain().unwrap(), 2);
        assert_eq!(d.drain().unwrap(), 0);
    }
}
