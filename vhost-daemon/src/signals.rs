//! Signals through a signalfd: SIGINT and SIGTERM stop the daemon cleanly, SIGHUP asks the
//! device to reconfigure itself, SIGUSR1 asks for its counters.
//!
//! The signals are blocked in the calling thread and in every thread it starts later, so
//! [`Signals::block`] must run first in `main`, before any thread exists; no handler ever runs
//! at an arbitrary point.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a signal asks of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGINT or SIGTERM: stop cleanly.
    Stop,
    /// SIGHUP: re-read the device's configuration.
    Reconfigure,
    /// SIGUSR1: log the device's counters.
    Stats,
}

/// The signalfd of the daemon's signals.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks SIGINT, SIGTERM, SIGHUP and SIGUSR1 in this thread (and the threads it starts
    /// later) and opens a signalfd that reads them.
    ///
    /// # Errors
    /// The error of `pthread_sigmask` or `signalfd`.
    pub fn block() -> nix::Result<Signals> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGUSR1,
        ] {
            mask.add(s);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// Waits for the next signal.
    ///
    /// # Errors
    /// The error of `read`; EINTR is retried.
    pub fn next(&self) -> nix::Result<Request> {
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => match i32::try_from(info.ssi_signo).map(Signal::try_from) {
                    Ok(Ok(Signal::SIGHUP)) => return Ok(Request::Reconfigure),
                    Ok(Ok(Signal::SIGUSR1)) => return Ok(Request::Stats),
                    Ok(Ok(Signal::SIGINT | Signal::SIGTERM)) => return Ok(Request::Stop),
                    _ => continue,
                },
                Ok(None) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
