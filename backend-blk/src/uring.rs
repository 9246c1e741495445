//! The io_uring of one queue worker, its completion eventfd, and the slab that owns in-flight
//! operations.
//!
//! An operation's `user_data` is a key into a [`Slab`] of typed in-flight entries, never a
//! pointer. The owner of the slab keeps each entry (and so the buffers its submission entry
//! points to) until the completion with that key has been reaped.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, squeue, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Failure to set up a ring.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `io_uring_setup` failed (old kernel, RLIMIT_MEMLOCK, seccomp...).
    #[error("cannot create an io_uring of {entries} entries: {source}")]
    Setup {
        /// Submission queue size asked.
        entries: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The completion eventfd could not be created or registered.
    #[error("cannot register the io_uring completion eventfd: {0}")]
    EventFd(io::Error),
}

/// One reaped completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The `user_data` of the submission: a slab key.
    pub key: u64,
    /// The result: bytes transferred or 0 on success, `-errno` on failure.
    pub result: i32,
}

/// An io_uring whose completions signal an eventfd.
pub struct Ring {
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    eventfd: EventFd,
}

impl Ring {
    /// Creates a ring with `entries` submission slots (twice as many completion slots) and
    /// registers a non-blocking eventfd that the kernel signals for every completion.
    ///
    /// # Errors
    /// [`UringError`] when the ring or the eventfd cannot be set up.
    pub fn new(entries: u32) -> Result<Ring, UringError> {
        let ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .build(entries)
            .map_err(|source| UringError::Setup { entries, source })?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(UringError::EventFd)?;
        ring.submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(UringError::EventFd)?;
        Ok(Ring { ring, eventfd })
    }

    /// The completion eventfd, for the worker's epoll.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Resets the completion eventfd; call before reaping so no completion goes unnoticed.
    pub fn clear_eventfd(&self) {
        // EAGAIN only says it was already clear.
        let _ = self.eventfd.read();
    }

    /// Queues `entry`; when the submission queue is full, submits it to the kernel first.
    ///
    /// # Safety
    /// Every buffer and iovec array `entry` points to must stay valid, unmoved and otherwise
    /// unused until the completion carrying `entry`'s `user_data` has been reaped.
    ///
    /// # Errors
    /// The error of `io_uring_enter` when the queue is full and cannot be submitted.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller guarantees the buffers outlive the operation.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        self.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))
    }

    /// Whether queued entries wait for [`Ring::submit`].
    pub fn has_unsubmitted(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Submits all queued entries with one `io_uring_enter`, retrying on EINTR.
    ///
    /// # Errors
    /// The error of `io_uring_enter`.
    pub fn submit(&mut self) -> io::Result<usize> {
        loop {
            match self.ring.submit() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Submits queued entries and waits until at least one completion is available.
    ///
    /// # Errors
    /// The error of `io_uring_enter`.
    pub fn submit_and_wait_one(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map(drop),
            }
        }
    }

    /// Moves every available completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.ring.completion().map(|c| Completion {
            key: c.user_data(),
            result: c.result(),
        }));
    }
}

/// Typed owners of in-flight operations, addressed by a small integer key.
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// A slab with room for `capacity` entries before it grows.
    pub fn with_capacity(capacity: usize) -> Slab<T> {
        Slab {
            entries: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            len: 0,
        }
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    /// The entry at `key`, if any.
    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).and_then(Option::as_mut)
    }

    /// Takes the entry at `key` out, if any; the key becomes free.
    pub fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.get_mut(key).and_then(Option::take)?;
        self.free.push(key);
        self.len -= 1;
        Some(value)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slab holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use io_uring::{opcode, types};

    use super::*;

    #[test]
    fn slab_reuses_keys() {
        let mut s = Slab::with_capacity(2);
        let a = s.insert("a");
        let b = s.insert("b");
        assert_ne!(a, b);
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "double remove");
        assert_eq!(s.get_mut(99), None);
        let c = s.insert("c");
        assert_eq!(c, a, "freed key reused");
        assert_eq!(s.get_mut(c), Some(&mut "c"));
        s.remove(b);
        s.remove(c);
        assert!(s.is_empty());
    }

    #[test]
    fn readv_completes_with_eventfd_signalled() {
        let path = std::env::temp_dir().join(format!("pvio-blk-uring-{}", std::process::id()));
        File::create(&path)
            .unwrap()
            .write_all(b"hello, io_uring")
            .unwrap();
        let file = File::open(&path).unwrap();
        let mut ring = Ring::new(8).unwrap();
        let mut buf = [0u8; 5];
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let sqe = opcode::Readv::new(types::Fd(file.as_raw_fd()), iov.as_ptr(), 1)
            .offset(7)
            .build()
            .user_data(42);
        // SAFETY: `buf` and `iov` live until the completion is reaped below.
        unsafe { ring.push(&sqe) }.unwrap();
        assert!(ring.has_unsubmitted());
        ring.submit_and_wait_one().unwrap();
        let mut out = Vec::new();
        ring.reap(&mut out);
        assert_eq!(out, vec![Completion { key: 42, result: 5 }]);
        assert_eq!(&buf, b"io_ur");
        assert!(ring.eventfd.read().unwrap() >= 1, "eventfd signalled");
        std::fs::remove_file(path).unwrap();
    }
}
