//! The io_uring of one queue-pair worker in TAP mode: a batch of READV or WRITEV operations on
//! the (non-blocking) TAP queue goes to the kernel with one `io_uring_enter`, and the batch
//! returns only when every operation has completed, so the iovecs and the guest memory they
//! point into are never released while the kernel may use them.
//!
//! `user_data` is the operation's index in the batch, never a pointer. Reads carry RWF_NOWAIT:
//! io_uring (6.x) ignores the file's O_NONBLOCK and would park a read on an empty TAP queue
//! until a frame comes; with RWF_NOWAIT it completes at once with -EAGAIN instead. Writes to a
//! TAP never wait. So every batch completes within its `io_uring_enter`.

use std::io;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// Most operations in one batch (and submission queue entries of the ring).
pub const BATCH: usize = 64;

/// Failure to set up or drive the ring.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `io_uring_setup` failed (old kernel, RLIMIT_MEMLOCK, seccomp...).
    #[error("cannot create an io_uring of {BATCH} entries")]
    Setup(#[source] io::Error),
    /// `io_uring_enter` failed for a reason other than an interruption.
    #[error("io_uring_enter failed")]
    Enter(#[source] io::Error),
}

/// One operation of a batch.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// READV (false) or WRITEV (true).
    pub write: bool,
    /// File descriptor.
    pub fd: i32,
    /// First iovec.
    pub iov: *const libc::iovec,
    /// Number of iovecs.
    pub count: u32,
}

/// A ring for batches of at most [`BATCH`] operations.
pub struct Ring {
    ring: IoUring<squeue::Entry, cqueue::Entry>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}

impl Ring {
    /// Creates the ring.
    ///
    /// # Errors
    /// [`UringError::Setup`].
    pub fn new() -> Result<Ring, UringError> {
        let ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .build(BATCH as u32)
            .map_err(UringError::Setup)?;
        Ok(Ring { ring })
    }

    /// Runs `ops` (at most [`BATCH`]) and stores each one's result (bytes, or `-errno`) in
    /// `results[i]`.
    ///
    /// # Safety
    /// Every iovec array of `ops`, and every buffer those iovecs point to, must be valid for the
    /// operation (readable for WRITEV, writable for READV) until this function returns.
    ///
    /// # Errors
    /// [`UringError::Enter`]; the results of operations that did not complete are `-EIO`.
    pub unsafe fn run(&mut self, ops: &[Op], results: &mut Vec<i32>) -> Result<(), UringError> {
        results.clear();
        results.resize(ops.len(), -libc::EIO);
        let ops = &ops[..ops.len().min(BATCH)];
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
            // return only after every pushed entry's completion has been reaped (below). The
            // queue has BATCH free slots: each batch is fully reaped before the next.
            if unsafe { self.ring.submission().push(&entry.user_data(i as u64)) }.is_err() {
                return Err(UringError::Enter(io::Error::from_raw_os_error(libc::EBUSY)));
            }
        }
        let mut outstanding = ops.len();
        while outstanding > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(UringError::Enter(e)),
            }
            for c in self.ring.completion() {
                if let Some(r) = results.get_mut(c.user_data() as usize) {
                    *r = c.result();
                    outstanding -= 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn batch_of_writes_and_reads() {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut ring = Ring::new().unwrap();
        let msgs: [&[u8]; 2] = [b"first", b"second!"];
        let iovs: Vec<libc::iovec> = msgs
            .iter()
            .map(|m| libc::iovec {
                iov_base: m.as_ptr() as *mut _,
                iov_len: m.len(),
            })
            .collect();
        let ops: Vec<Op> = iovs
            .iter()
            .map(|v| Op {
                write: true,
                fd: a.as_raw_fd(),
                iov: v,
                count: 1,
            })
            .collect();
        let mut results = Vec::new();
        // SAFETY: msgs and iovs outlive the call.
        unsafe { ring.run(&ops, &mut results) }.unwrap();
        assert_eq!(results, vec![5, 7]);
        let mut bufs = [[0u8; 16]; 3];
        let iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let ops: Vec<Op> = iovs
            .iter()
            .map(|v| Op {
                write: false,
                fd: b.as_raw_fd(),
                iov: v,
                count: 1,
            })
            .collect();
        // SAFETY: bufs and iovs outlive the call.
        unsafe { ring.run(&ops, &mut results) }.unwrap();
        assert_eq!(
            results,
            vec![5, 7, -libc::EAGAIN],
            "the third read finds nothing"
        );
        assert_eq!(&bufs[0][..5], b"first");
        assert_eq!(&bufs[1][..7], b"second!");
    }
}
