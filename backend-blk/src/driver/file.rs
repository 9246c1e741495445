//! The file driver: a raw image file or block device with io_uring, one ring per queue.
//!
//! Data moves with READV/WRITEV whose iovecs point straight into guest memory; flush is
//! `fdatasync`; discard punches a hole and write zeroes uses `FALLOC_FL_ZERO_RANGE` (or a
//! punched hole, which reads as zeroes too, when the driver allows unmapping or zero-range is
//! missing), all with `FALLOC_FL_KEEP_SIZE`.
//!
//! On an image that [`Image::serves_inline`] (tmpfs), reads and writes are done at once with
//! `preadv`/`pwritev` on the queue's thread instead; their results wait in the queue until the
//! worker reaps them with the ring's, so the worker's flow is the same for both.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};
use vhost_daemon::uring::{Completion, Ring, UringError};

use super::{Capabilities, Op, QueueDriver};
use crate::image::{FallocateSupport, Image};

/// Most iovecs one READV/WRITEV takes (`UIO_MAXIOV`).
pub const MAX_IOVECS_PER_OP: usize = 1024;

/// What a file or block device can do: flush always, discard with hole punching, write
/// zeroes with either fallocate mode; nothing but reads when read-only.
pub fn capabilities(image: &Image) -> Capabilities {
    let fallocate = image.fallocate_support();
    let read_only = image.is_read_only();
    Capabilities {
        read_only,
        flush: true,
        discard: !read_only && fallocate.punch_hole,
        write_zeroes: !read_only && (fallocate.punch_hole || fallocate.zero_range),
        zeroes_may_unmap: fallocate.punch_hole,
    }
}

/// One queue's io_uring on the image.
pub struct FileQueue {
    ring: Ring,
    /// The main descriptor: flush and fallocate go here.
    fd: RawFd,
    fallocate: FallocateSupport,
    /// Transfers run inline ([`Image::serves_inline`]).
    inline: bool,
    /// Results of inline transfers not yet reaped.
    done: Vec<Completion>,
}

impl FileQueue {
    /// A ring of `entries` entries with a completion eventfd.
    ///
    /// # Errors
    /// [`UringError`] when the ring cannot be set up.
    pub fn new(image: &Image, entries: u32) -> Result<FileQueue, UringError> {
        Ok(FileQueue {
            ring: Ring::with_eventfd(entries)?,
            fd: image.fd(),
            fallocate: image.fallocate_support(),
            inline: image.serves_inline(),
            done: Vec::with_capacity(entries as usize),
        })
    }
}

/// Runs the current part of a transfer with `preadv`/`pwritev` now: its completion result
/// (bytes, or `-errno`).
///
/// # Safety
/// The iovecs of `iovecs[next..]` must point to memory valid for the transfer (writable for
/// a read) during the call.
unsafe fn transfer_now(write: bool, fd: RawFd, iovecs: &[libc::iovec], offset: u64) -> i32 {
    // At most MAX_IOVECS_PER_OP, which fits in i32.
    let count = iovecs.len().min(MAX_IOVECS_PER_OP) as libc::c_int;
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return -libc::EFBIG;
    };
    let ret = if write {
        // SAFETY: the caller guarantees the iovecs point to readable memory.
        unsafe { libc::pwritev(fd, iovecs.as_ptr(), count, offset) }
    } else {
        // SAFETY: the caller guarantees the iovecs point to writable memory.
        unsafe { libc::preadv(fd, iovecs.as_ptr(), count, offset) }
    };
    if ret < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        super::done_bytes(ret as u64)
    }
}

/// The submission entry for the current state of `op`, tagged with `key`; flush and
/// fallocate go to `image_fd`.
pub fn sqe(op: &Op, key: usize, image_fd: RawFd, fallocate: FallocateSupport) -> squeue::Entry {
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let fallocate_entry = |mode, offset, len| {
        opcode::Fallocate::new(types::Fd(image_fd), len)
            .offset(offset)
            .mode(mode)
            .build()
    };
    let entry = match op {
        Op::Transfer {
            write,
            fd,
            iovecs,
            next,
            offset,
            ..
        } => {
            let iov = &iovecs.0[*next..];
            // At most MAX_IOVECS_PER_OP, which fits in u32.
            let count = iov.len().min(MAX_IOVECS_PER_OP) as u32;
            if *write {
                opcode::Writev::new(types::Fd(*fd), iov.as_ptr(), count)
                    .offset(*offset)
                    .build()
            } else {
                opcode::Readv::new(types::Fd(*fd), iov.as_ptr(), count)
                    .offset(*offset)
                    .build()
            }
        }
        Op::Flush => opcode::Fsync::new(types::Fd(image_fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build(),
        Op::Discard { offset, len } => fallocate_entry(punch, *offset, *len),
        Op::WriteZeroes { offset, len, unmap } => {
            // Without ZERO_RANGE a punched hole reads as zeroes too.
            let mode = if (*unmap && fallocate.punch_hole) || !fallocate.zero_range {
                punch
            } else {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            };
            fallocate_entry(mode, *offset, *len)
        }
    };
    entry.user_data(key as u64)
}

impl QueueDriver for FileQueue {
    fn completion_fd(&self) -> Option<RawFd> {
        self.ring.eventfd()
    }

    fn on_event(&mut self) {
        self.ring.clear_eventfd();
    }

    unsafe fn push(&mut self, key: usize, op: &Op) -> io::Result<()> {
        if let (
            true,
            Op::Transfer {
                write,
                fd,
                iovecs,
                next,
                offset,
                ..
            },
        ) = (self.inline, op)
        {
            let iov = iovecs.0.get(*next..).unwrap_or_default();
            // SAFETY: the caller keeps the memory behind the iovecs valid (longer than this
            // call, which is all a synchronous transfer needs).
            let result = unsafe { transfer_now(*write, *fd, iov, *offset) };
            self.done.push(Completion {
                key: key as u64,
                result,
            });
            return Ok(());
        }
        let entry = sqe(op, key, self.fd, self.fallocate);
        // SAFETY: the caller keeps the iovec array and the memory behind it valid and unmoved
        // until the completion tagged `key` is reaped.
        unsafe { self.ring.push(&entry) }
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.ring.has_unsubmitted() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        self.ring.reap(out);
        out.append(&mut self.done);
    }

    fn wait_one(&mut self) -> io::Result<()> {
        if !self.done.is_empty() {
            return Ok(());
        }
        self.ring.submit_and_wait_one()
    }
}
