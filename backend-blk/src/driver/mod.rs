//! The storage driver layer: where a request's bytes go.
//!
//! The request parser, the status mapping and the queue worker do not know the storage. The
//! worker turns each request into an [`Op`] and hands it to its queue's [`QueueIo`], which
//! completes it into the worker's event loop through one descriptor the worker's epoll watches
//! ([`QueueDriver::completion_fd`]). Drivers:
//! - [`file`]: a raw image file or block device with io_uring (always built; the hot path);
//! - `nbd` (cargo feature `nbd`): an NBD export through libnbd's AIO API;
//! - `rbd` (cargo feature `rbd`): a Ceph RBD image through librbd's aio API.
//!
//! [`Disk`] is the device-level side (size, capabilities, resize, final sync), opened once per
//! daemon; [`QueueIo`] is the per-queue side. Both are enums over the drivers, so the file
//! hot path pays one `match` and no allocation or dynamic dispatch.

use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use vhost_daemon::uring::{Completion, UringError};

use crate::image::{Image, ImageError, SECTOR_SIZE};

pub mod file;
#[cfg(feature = "nbd")]
pub mod nbd;
#[cfg(feature = "rbd")]
pub mod rbd;

/// iovecs pointing into guest memory.
pub struct IoVecs(pub Vec<libc::iovec>);

// SAFETY: the pointers refer to guest memory mapped by the `GuestRamGuard` the worker holds
// next to them for as long as the operation is in flight; this process hands them to the
// kernel or to a storage library only, so moving them to another thread is sound.
unsafe impl Send for IoVecs {}

/// One operation a driver executes for a request. Offsets and lengths are in bytes.
pub enum Op {
    /// Read (`write == false`) or write of the not-yet-transferred iovecs.
    Transfer {
        /// Write to the disk (OUT) rather than read from it (IN).
        write: bool,
        /// The file driver's descriptor for this transfer (O_DIRECT or buffered); unused (-1)
        /// by the other drivers.
        fd: RawFd,
        /// The guest buffers.
        iovecs: IoVecs,
        /// First iovec not fully transferred.
        next: usize,
        /// Disk offset of `iovecs[next]`'s start.
        offset: u64,
        /// Bytes still to transfer.
        remaining: u64,
    },
    /// Make completed writes durable.
    Flush,
    /// Deallocate a range (VIRTIO_BLK_T_DISCARD); its contents become unspecified.
    Discard {
        /// First byte.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Make a range read as zeroes (VIRTIO_BLK_T_WRITE_ZEROES).
    WriteZeroes {
        /// First byte.
        offset: u64,
        /// Length.
        len: u64,
        /// The driver allows deallocating the range (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
        unmap: bool,
    },
}

/// What a disk can do; decides the virtio-blk feature bits offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Writes are refused (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Flush does something (VIRTIO_BLK_F_FLUSH); without it writes are durable at completion.
    pub flush: bool,
    /// Discard is supported (VIRTIO_BLK_F_DISCARD).
    pub discard: bool,
    /// Write zeroes is supported (VIRTIO_BLK_F_WRITE_ZEROES).
    pub write_zeroes: bool,
    /// Write zeroes may deallocate (`write_zeroes_may_unmap`).
    pub zeroes_may_unmap: bool,
}

/// Why a queue's I/O engine cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The file driver's io_uring.
    #[error(transparent)]
    Uring(#[from] UringError),
    /// A network driver's connection or handle.
    #[error("{0}")]
    Network(String),
}

/// One queue's I/O engine: takes operations tagged with a key and reports their completions
/// as `(key, result)` with `result` the bytes transferred (or 0 for operations without data)
/// or `-errno`. A driver may transfer less than asked (the worker submits the rest again).
pub trait QueueDriver {
    /// The descriptor the worker's epoll watches (readable when completions may be waiting).
    fn completion_fd(&self) -> Option<RawFd>;
    /// Called when [`QueueDriver::completion_fd`] became readable: consume the event and let
    /// the engine make progress.
    fn on_event(&mut self);
    /// Queues `op` tagged `key`.
    ///
    /// # Safety
    /// The memory `op`'s iovecs point into, and the iovec array itself, must stay valid and
    /// unmoved until the completion tagged `key` was reaped.
    ///
    /// # Errors
    /// The operation cannot be queued; the request fails.
    unsafe fn push(&mut self, key: usize, op: &Op) -> io::Result<()>;
    /// Sends queued operations to the storage.
    ///
    /// # Errors
    /// The submission failed (logged by the caller; the operations stay queued).
    fn submit(&mut self) -> io::Result<()>;
    /// Appends every available completion to `out`.
    fn reap(&mut self, out: &mut Vec<Completion>);
    /// Blocks until at least one completion may be available (for draining).
    ///
    /// # Errors
    /// The engine cannot wait (the caller stops draining).
    fn wait_one(&mut self) -> io::Result<()>;
}

/// A queue's engine, one variant per driver.
// One per queue, never moved on the data path: the file driver's larger variant stays inline
// (no indirection on the hot path) rather than boxed.
#[allow(clippy::large_enum_variant)]
pub enum QueueIo {
    /// io_uring on a file or block device.
    File(file::FileQueue),
    /// libnbd AIO on an NBD connection.
    #[cfg(feature = "nbd")]
    Nbd(nbd::NbdQueue),
    /// librbd aio on an RBD image.
    #[cfg(feature = "rbd")]
    Rbd(rbd::RbdQueue),
}

/// Calls `$call` on the driver inside a [`QueueIo`].
macro_rules! each_queue {
    ($self:expr, $q:ident => $call:expr) => {
        match $self {
            QueueIo::File($q) => $call,
            #[cfg(feature = "nbd")]
            QueueIo::Nbd($q) => $call,
            #[cfg(feature = "rbd")]
            QueueIo::Rbd($q) => $call,
        }
    };
}

impl QueueDriver for QueueIo {
    fn completion_fd(&self) -> Option<RawFd> {
        each_queue!(self, q => q.completion_fd())
    }

    fn on_event(&mut self) {
        each_queue!(self, q => q.on_event())
    }

    unsafe fn push(&mut self, key: usize, op: &Op) -> io::Result<()> {
        // SAFETY: the caller's guarantee is passed on unchanged.
        each_queue!(self, q => unsafe { q.push(key, op) })
    }

    fn submit(&mut self) -> io::Result<()> {
        each_queue!(self, q => q.submit())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        each_queue!(self, q => q.reap(out))
    }

    fn wait_one(&mut self) -> io::Result<()> {
        each_queue!(self, q => q.wait_one())
    }
}

/// The storage a device serves, opened once for the daemon's life.
pub enum Disk {
    /// A raw image file or block device.
    File(Image),
    /// An NBD export.
    #[cfg(feature = "nbd")]
    Nbd(nbd::NbdDisk),
    /// An RBD image.
    #[cfg(feature = "rbd")]
    Rbd(rbd::RbdDisk),
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Disk").field(&self.name()).finish()
    }
}

/// Calls `$call` on the driver inside a [`Disk`].
macro_rules! each_disk {
    ($self:expr, $d:ident => $call:expr) => {
        match $self {
            Disk::File($d) => $call,
            #[cfg(feature = "nbd")]
            Disk::Nbd($d) => $call,
            #[cfg(feature = "rbd")]
            Disk::Rbd($d) => $call,
        }
    };
}

/// The URL schemes of the network drivers and the cargo feature each needs.
const SCHEMES: [(&str, &str); 3] = [("nbd://", "nbd"), ("nbd+unix://", "nbd"), ("rbd:", "rbd")];

impl Disk {
    /// Opens `spec`: `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH` (NBD),
    /// `rbd:POOL/IMAGE[@SNAP][:conf=PATH][:id=USER]` (RBD), anything else a file or block
    /// device path (`direct` asks for O_DIRECT there).
    ///
    /// # Errors
    /// [`ImageError`] when the disk cannot be served, or its driver was not built in.
    pub fn open(spec: &Path, read_only: bool, direct: bool) -> Result<Disk, ImageError> {
        let text = spec.to_string_lossy();
        #[cfg(feature = "nbd")]
        if text.starts_with("nbd://") || text.starts_with("nbd+unix://") {
            return nbd::NbdDisk::open(&text, read_only).map(Disk::Nbd);
        }
        #[cfg(feature = "rbd")]
        if let Some(rest) = text.strip_prefix("rbd:") {
            return rbd::RbdDisk::open(rest, read_only).map(Disk::Rbd);
        }
        if let Some((_, feature)) = SCHEMES.iter().find(|(s, _)| text.starts_with(s)) {
            return Err(ImageError::NotBuilt {
                spec: text.into_owned(),
                feature,
            });
        }
        Image::open(spec, read_only, direct).map(Disk::File)
    }

    /// The disk as named on the command line.
    pub fn name(&self) -> String {
        each_disk!(self, d => d.name())
    }

    /// The image file, for the file driver.
    pub fn file(&self) -> Option<&Image> {
        match self {
            Disk::File(image) => Some(image),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Size in bytes, as last read.
    pub fn size(&self) -> u64 {
        each_disk!(self, d => d.size())
    }

    /// Capacity in 512-byte sectors (a trailing partial sector is not served).
    pub fn capacity_sectors(&self) -> u64 {
        self.size() / SECTOR_SIZE
    }

    /// Logical block size in bytes.
    pub fn logical_block_size(&self) -> u32 {
        match self {
            Disk::File(image) => image.logical_block_size(),
            #[allow(unreachable_patterns)]
            _ => SECTOR_SIZE as u32,
        }
    }

    /// Physical block size hint in bytes.
    pub fn physical_block_size(&self) -> u32 {
        match self {
            Disk::File(image) => image.physical_block_size(),
            #[allow(unreachable_patterns)]
            _ => 4096,
        }
    }

    /// What the disk can do.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Disk::File(image) => file::capabilities(image),
            #[cfg(feature = "nbd")]
            Disk::Nbd(d) => d.capabilities(),
            #[cfg(feature = "rbd")]
            Disk::Rbd(d) => d.capabilities(),
        }
    }

    /// Reads the size again (after a resize) and serves it from now on; returns it in bytes.
    ///
    /// # Errors
    /// [`ImageError`] when it cannot be read; the old size stays.
    pub fn reread_size(&self) -> Result<u64, ImageError> {
        each_disk!(self, d => d.reread_size())
    }

    /// A front-end connected: forget what the driver cached from before, since other clients
    /// (the source back-end of a live migration) may have written the storage meanwhile.
    pub fn front_end_connected(&self) {
        #[cfg(feature = "rbd")]
        if let Disk::Rbd(d) = self {
            d.front_end_connected();
        }
    }

    /// The front-end left and its requests completed: make its writes durable and let other
    /// clients take the storage over (RBD: release the image's exclusive lock).
    pub fn front_end_left(&self) {
        #[cfg(feature = "rbd")]
        if let Disk::Rbd(d) = self {
            d.front_end_left();
        }
    }

    /// Makes everything written durable, at stop.
    ///
    /// # Errors
    /// The storage's error.
    pub fn sync(&self) -> io::Result<()> {
        each_disk!(self, d => d.sync())
    }

    /// An I/O engine for one queue of at most `entries` operations in flight.
    ///
    /// # Errors
    /// [`QueueError`] when it cannot be set up (ring, connection).
    pub fn queue_io(&self, entries: u32) -> Result<QueueIo, QueueError> {
        match self {
            Disk::File(image) => Ok(QueueIo::File(file::FileQueue::new(image, entries)?)),
            #[cfg(feature = "nbd")]
            Disk::Nbd(d) => d.queue_io().map(QueueIo::Nbd),
            #[cfg(feature = "rbd")]
            Disk::Rbd(d) => d.queue_io().map(QueueIo::Rbd),
        }
    }

    /// Whether the file driver uses O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.file().is_some_and(Image::is_direct)
    }
}

/// Bytes a transfer completed, as a completion result: at most `i32::MAX` (the worker submits
/// the rest of a longer one again).
pub fn done_bytes(bytes: u64) -> i32 {
    i32::try_from(bytes).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_drivers_not_built_are_refused_by_name() {
        for (url, feature) in [
            ("nbd://localhost/x", "nbd"),
            ("nbd+unix:///?socket=/s", "nbd"),
            ("rbd:pool/image", "rbd"),
        ] {
            if (feature == "nbd" && cfg!(feature = "nbd"))
                || (feature == "rbd" && cfg!(feature = "rbd"))
            {
                continue;
            }
            match Disk::open(Path::new(url), false, false) {
                Err(ImageError::NotBuilt { feature: f, .. }) => assert_eq!(f, feature),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_path_is_a_file() {
        let disk = Disk::open(Path::new("/proc/version"), true, false).unwrap();
        assert!(disk.file().is_some());
        assert!(disk.capabilities().read_only);
        assert!(!disk.capabilities().discard);
    }
}
