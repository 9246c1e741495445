//! The io_uring of a queue worker, its optional completion eventfd, and the invariant every
//! user relies on: **the ring never returns from [`Ring::run_batch`] and is never dropped while
//! the kernel may still read or write a buffer of an operation it was given**.
//!
//! The ring counts the operations pushed and not yet reaped. [`Ring::run_batch`] (a batch that
//! completes within the call) returns only when that count is back to zero, on every path.
//! Dropping the ring waits for the operations still in flight first. If the kernel refuses to
//! even wait for completions (a failure of `io_uring_enter` that is not EINTR/EAGAIN/EBUSY,
//! which only a broken ring gives), the process aborts rather than let the kernel write into
//! freed memory.
//!
//! An operation's `user_data` is chosen by the caller: an index in the batch, or a key into a
//! [`Slab`] of typed in-flight entries, never a pointer.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
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
    /// The `user_data` of the submission.
    pub key: u64,
    /// The result: bytes transferred or 0 on success, `-errno` on failure.
    pub result: i32,
}

/// One READV or WRITEV of a batch for [`Ring::run_batch`].
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// WRITEV (true) or READV (false). Reads carry RWF_NOWAIT: io_uring (6.x) ignores a file's
    /// O_NONBLOCK and would park a read of an empty TAP queue until data comes; with
    /// RWF_NOWAIT it completes at once with -EAGAIN instead.
    pub write: bool,
    /// File descriptor.
    pub fd: RawFd,
    /// First iovec.
    pub iov: *const libc::iovec,
    /// Number of iovecs.
    pub count: u32,
}

/// An io_uring that counts its operations in flight.
pub struct Ring {
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    eventfd: Option<EventFd>,
    /// Pushed and not yet reaped (submitted or still in the submission queue).
    in_flight: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Creates a ring with `entries` submission slots (twice as many completion slots).
    ///
    /// # Errors
    /// [`UringError::Setup`].
    pub fn new(entries: u32) -> Result<Ring, UringError> {
        let ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .build(entries)
            .map_err(|source| UringError::Setup { entries, source })?;
        Ok(Ring {
            ring,
            eventfd: None,
            in_flight: 0,
        })
    }

    /// [`Ring::new`], plus a non-blocking eventfd the kernel signals for every completion
    /// (for a worker's epoll).
    ///
    /// # Errors
    /// [`UringError`] when the ring or the eventfd cannot be set up.
    pub fn with_eventfd(entries: u32) -> Result<Ring, UringError> {
        let mut ring = Ring::new(entries)?;
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(UringError::EventFd)?;
        ring.ring
            .submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .map_err(UringError::EventFd)?;
        ring.eventfd = Some(eventfd);
        Ok(ring)
    }

    /// The completion eventfd, if the ring has one ([`Ring::with_eventfd`]).
    pub fn eventfd(&self) -> Option<RawFd> {
        self.eventfd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Resets the completion eventfd; call before reaping so no completion goes unnoticed.
    pub fn clear_eventfd(&self) {
        if let Some(eventfd) = &self.eventfd {
            // EAGAIN only says it was already clear.
            let _ = eventfd.read();
        }
    }

    /// Operations pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `entry`; when the submission queue is full, submits it to the kernel first.
    ///
    /// # Safety
    /// Every buffer and iovec array `entry` points to must stay valid, unmoved and otherwise
    /// unused until the completion carrying `entry`'s `user_data` has been reaped.
    ///
    /// # Errors
    /// The error of `io_uring_enter` when the queue is full and cannot be submitted; the entry
    /// was not queued then.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller guarantees the buffers outlive the operation.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            self.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))?;
        }
        self.in_flight += 1;
        Ok(())
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
        let before = out.len();
        out.extend(self.ring.completion().map(|c| Completion {
            key: c.user_data(),
            result: c.result(),
        }));
        self.in_flight = self.in_flight.saturating_sub(out.len() - before);
    }

    /// Submits what is queued and waits until every operation in flight has completed, moving
    /// the completions into `out`. Retries EINTR, EAGAIN and EBUSY (the kernel is short of
    /// memory or of completion slots: reaping frees them); any other failure aborts the process
    /// (see the module documentation).
    pub fn wait_all(&mut self, out: &mut Vec<Completion>) {
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    log::error!(
                        "io_uring_enter failed with {} operations in flight: {e}; aborting \
                         rather than letting the kernel write into freed memory",
                        self.in_flight
                    );
                    std::process::abort();
                }
            }
            self.reap(out);
        }
    }

    /// Runs `ops` and stores each one's result (bytes, or `-errno`) in `results[i]`. Returns
    /// only when every operation given to the kernel has completed. An operation that cannot
    /// be queued (more than the ring holds) gets `-EBUSY` and is not run.
    ///
    /// # Safety
    /// Every iovec array of `ops`, and every buffer those iovecs point to, must be valid for the
    /// operation (readable for WRITEV, writable for READV) until this function returns.
    pub unsafe fn run_batch(&mut self, ops: &[Op], results: &mut Vec<i32>) {
        results.clear();
        results.resize(ops.len(), -libc::EBUSY);
        let base = self.in_flight;
        debug_assert_eq!(base, 0, "a batch ring runs one batch at a time");
        for (i, op) in ops.iter().enumerate() {
            let fd = types::Fd(op.fd);
            let entry = if op.write {
                opcode::Writev::new(fd, op.iov, op.count).build()
            } else {
                opcode::Readv::new(fd, op.iov.cast_mut(), op.count)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
            };
            // SAFETY: the caller keeps the iovecs and buffers valid until we return, and we
            // return only after `wait_all` reaped every pushed entry's completion.
            if unsafe { self.push(&entry.user_data(i as u64)) }.is_err() {
                break;
            }
        }
        let mut completions = Vec::with_capacity(ops.len());
        self.wait_all(&mut completions);
        for c in completions {
            if let Some(r) = usize::try_from(c.key).ok().and_then(|i| results.get_mut(i)) {
                *r = c.result;
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            log::warn!(
                "io_uring dropped with {} operations in flight: waiting for them",
                self.in_flight
            );
            self.wait_all(&mut Vec::new());
        }
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
    use std::os::unix::net::UnixDatagram;

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
        let path = std::env::temp_dir().join(format!("vhost-daemon-uring-{}", std::process::id()));
        File::create(&path)
            .unwrap()
            .write_all(b"hello, io_uring")
            .unwrap();
        let file = File::open(&path).unwrap();
        let mut ring = Ring::with_eventfd(8).unwrap();
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
        assert_eq!(ring.in_flight(), 1);
        ring.submit_and_wait_one().unwrap();
        let mut out = Vec::new();
        ring.reap(&mut out);
        assert_eq!(out, vec![Completion { key: 42, result: 5 }]);
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(&buf, b"io_ur");
        assert!(
            ring.eventfd.as_ref().unwrap().read().unwrap() >= 1,
            "eventfd signalled"
        );
        std::fs::remove_file(path).unwrap();
    }

    fn ops(iovs: &[libc::iovec], fd: RawFd, write: bool) -> Vec<Op> {
        iovs.iter()
            .map(|v| Op {
                write,
                fd,
                iov: v,
                count: 1,
            })
            .collect()
    }

    #[test]
    fn batch_of_writes_and_reads() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut ring = Ring::new(8).unwrap();
        let msgs: [&[u8]; 2] = [b"first", b"second!"];
        let iovs: Vec<libc::iovec> = msgs
            .iter()
            .map(|m| libc::iovec {
                iov_base: m.as_ptr() as *mut _,
                iov_len: m.len(),
            })
            .collect();
        let mut results = Vec::new();
        // SAFETY: msgs and iovs outlive the call.
        unsafe { ring.run_batch(&ops(&iovs, a.as_raw_fd(), true), &mut results) };
        assert_eq!(results, vec![5, 7]);
        let mut bufs = [[0u8; 16]; 3];
        let iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: bufs and iovs outlive the call.
        unsafe { ring.run_batch(&ops(&iovs, b.as_raw_fd(), false), &mut results) };
        assert_eq!(
            results,
            vec![5, 7, -libc::EAGAIN],
            "the third read finds nothing"
        );
        assert_eq!(&bufs[0][..5], b"first");
        assert_eq!(&bufs[1][..7], b"second!");
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn batch_larger_than_the_ring_waits_for_all() {
        // A ring of 2 entries given 5 writes: the push of the 3rd submits the first two; every
        // operation given to the kernel completes before run_batch returns.
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut ring = Ring::new(2).unwrap();
        let msg = *b"x";
        let iovs = vec![
            libc::iovec {
                iov_base: msg.as_ptr() as *mut _,
                iov_len: 1,
            };
            5
        ];
        let mut results = Vec::new();
        // SAFETY: msg and iovs outlive the call.
        unsafe { ring.run_batch(&ops(&iovs, a.as_raw_fd(), true), &mut results) };
        assert_eq!(ring.in_flight(), 0);
        assert!(
            results.iter().all(|&r| r == 1 || r == -libc::EBUSY),
            "{results:?}"
        );
        let sent = results.iter().filter(|&&r| r == 1).count();
        let mut got = 0;
        b.set_nonblocking(true).unwrap();
        while b.recv(&mut [0u8; 4]).is_ok() {
            got += 1;
        }
        assert_eq!(got, sent);
    }
}
