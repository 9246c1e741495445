//! The disk image: a raw regular file or a block device, opened once for the daemon's life.
//!
//! Opening finds the size (file length, or the `BLKGETSIZE64` ioctl on a block device), the
//! logical and physical block sizes, whether O_DIRECT is available (it falls back to buffered
//! I/O with one warning where the file system refuses it, e.g. tmpfs), and probes what
//! `fallocate(2)` can do there: `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` (discard) and
//! `FALLOC_FL_ZERO_RANGE` (write zeroes). The probes only ever touch a range past the end of
//! the image, with `FALLOC_FL_KEEP_SIZE`, so they cannot change data or the image size.
//!
//! It also finds whether transfers are better served inline ([`Image::serves_inline`]): on a
//! file system in memory (tmpfs, ramfs) that refuses `RWF_NOWAIT` (Linux 6.18's tmpfs does),
//! io_uring cannot try a read or write without blocking first and hands every one to an
//! io-wq worker thread, which costs two thread switches per request; the data never waits
//! for a device there, so a `preadv`/`pwritev` on the queue's own thread is cheaper.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use log::warn;

/// Bytes per virtio-blk sector: sectors are always 512 bytes (virtio 1.2 §5.2.6).
pub const SECTOR_SIZE: u64 = 512;

/// `BLKGETSIZE64` from linux/fs.h: `_IOR(0x12, 114, size_t)`, the device size in bytes.
const BLKGETSIZE64: libc::c_ulong = (2 << 30) | (8 << 16) | (0x12 << 8) | 114;
/// `BLKPBSZGET` from linux/fs.h: `_IO(0x12, 123)`, the physical block size in bytes.
const BLKPBSZGET: libc::c_ulong = (0x12 << 8) | 123;

/// Largest block size taken from the file system as the physical block size hint, bytes.
const MAX_PHYSICAL_BLOCK: u32 = 4096;

/// What the image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A regular file holding a raw disk image.
    RegularFile,
    /// A block device node.
    BlockDevice,
}

/// What `fallocate(2)` can do on the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FallocateSupport {
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` works: discard and unmapping write zeroes.
    pub punch_hole: bool,
    /// `FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE` works: write zeroes without unmapping.
    pub zero_range: bool,
}

/// Why the image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `stat` or `open` failed (missing, no permission, read-only file system, ...).
    #[error("cannot open image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("image {0} is not a regular file or a block device")]
    NotAFileOrDevice(PathBuf),
    /// A network disk URL (`nbd://`, `rbd:`) whose driver this binary was built without.
    #[error("{spec}: backend-blk was built without the `{feature}` cargo feature")]
    NotBuilt {
        /// The disk as given.
        spec: String,
        /// The cargo feature that adds the driver.
        feature: &'static str,
    },
    /// A network disk cannot be opened (bad URL, server or cluster refused, ...).
    #[error("cannot open {spec}: {reason}")]
    Network {
        /// The disk as given.
        spec: String,
        /// Why, in the storage library's words.
        reason: String,
    },
    /// The size cannot be read (`BLKGETSIZE64` on a block device, `fstat` on a file).
    #[error("cannot get the size of {path}: {source}")]
    Size {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// An open disk image.
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    file: File,
    buffered: Option<File>,
    kind: ImageKind,
    /// Bytes; changes when [`Image::reread_size`] finds the image resized.
    size: AtomicU64,
    direct: bool,
    direct_align: u64,
    logical_block_size: u32,
    physical_block_size: u32,
    read_only: bool,
    fallocate: FallocateSupport,
    inline: bool,
}

impl Image {
    /// Opens `path` read-write (read-only with `read_only`), with O_DIRECT when `direct` and the
    /// file system supports it, and probes its size and fallocate support.
    ///
    /// # Errors
    /// [`ImageError`] when the image is missing, not accessible in the asked mode, not a file or
    /// block device, or its size cannot be read.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Image, ImageError> {
        let open_err = |source| ImageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let kind = if meta.file_type().is_block_device() {
            ImageKind::BlockDevice
        } else if meta.is_file() {
            ImageKind::RegularFile
        } else {
            return Err(ImageError::NotAFileOrDevice(path.to_path_buf()));
        };
        let buffered = open_file(path, read_only, false).map_err(open_err)?;
        let (file, buffered, direct) = if direct {
            match open_file(path, read_only, true) {
                Ok(f) => (f, Some(buffered), true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    warn!(
                        "{}: the file system does not support O_DIRECT; using buffered I/O",
                        path.display()
                    );
                    (buffered, None, false)
                }
                Err(e) => return Err(open_err(e)),
            }
        } else {
            (buffered, None, false)
        };
        let (size, logical_block_size, physical_block_size) = match kind {
            ImageKind::RegularFile => {
                let fs_block = u32::try_from(meta.blksize()).unwrap_or(MAX_PHYSICAL_BLOCK);
                let physical = fs_block.clamp(SECTOR_SIZE as u32, MAX_PHYSICAL_BLOCK);
                (meta.len(), SECTOR_SIZE as u32, physical)
            }
            ImageKind::BlockDevice => {
                let size = device_size(&file).map_err(|source| ImageError::Size {
                    path: path.to_path_buf(),
                    source,
                })?;
                let logical = block_ioctl(&file, libc::BLKSSZGET as libc::c_ulong)
                    .unwrap_or(SECTOR_SIZE as u32);
                let physical = block_ioctl(&file, BLKPBSZGET).unwrap_or(logical);
                (size, logical, physical.max(logical))
            }
        };
        if size % SECTOR_SIZE != 0 {
            warn!(
                "{}: size {size} is not a multiple of 512; the last {} bytes are not served",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let direct_align = if direct {
            direct_io_alignment(&file).unwrap_or(u64::from(logical_block_size))
        } else {
            1
        };
        let fallocate = if read_only {
            FallocateSupport::default()
        } else {
            probe_fallocate(&file, kind, size)
        };
        let inline = kind == ImageKind::RegularFile && memory_fs_without_nowait(&file);
        Ok(Image {
            path: path.to_path_buf(),
            file,
            buffered,
            kind,
            size: AtomicU64::new(size),
            direct,
            direct_align,
            logical_block_size,
            physical_block_size,
            read_only,
            fallocate,
            inline,
        })
    }

    /// Whether reads and writes are done with `preadv`/`pwritev` on the queue's thread rather
    /// than through io_uring: the image is a regular file on tmpfs or ramfs, whose reads never
    /// wait for a device, and the file system refuses `RWF_NOWAIT`, so io_uring would punt
    /// every transfer to an io-wq worker thread (see the module documentation).
    pub fn serves_inline(&self) -> bool {
        self.inline
    }

    /// The image path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image path for messages.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Regular file or block device.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Reads the size again (file length or `BLKGETSIZE64`), e.g. after the image was resized
    /// on the host, and serves that size from now on; returns it in bytes.
    ///
    /// # Errors
    /// [`ImageError::Size`] when it cannot be read; the old size stays.
    pub fn reread_size(&self) -> Result<u64, ImageError> {
        let size = match self.kind {
            ImageKind::RegularFile => self.file.metadata().map(|m| m.len()),
            ImageKind::BlockDevice => device_size(&self.file),
        }
        .map_err(|source| ImageError::Size {
            path: self.path.clone(),
            source,
        })?;
        self.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// Capacity in 512-byte sectors (a trailing partial sector is not served).
    pub fn capacity_sectors(&self) -> u64 {
        self.size() / SECTOR_SIZE
    }

    /// Whether the main descriptor was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Logical block size in bytes (512 for a regular file, `BLKSSZGET` for a device).
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    /// Physical block size hint in bytes (the file system block size up to 4096 for a file,
    /// `BLKPBSZGET` for a device).
    pub fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }

    /// Whether the image was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// What fallocate can do here (all false when read-only).
    pub fn fallocate_support(&self) -> FallocateSupport {
        self.fallocate
    }

    /// The descriptor for I/O of `len` bytes at byte `offset` whose memory buffers are
    /// `buffers` (host address, length): the O_DIRECT one when everything is aligned to the
    /// direct I/O alignment, else the buffered one (O_DIRECT would fail with EINVAL).
    pub fn fd_for(&self, offset: u64, buffers: impl IntoIterator<Item = (u64, u64)>) -> RawFd {
        let Some(buffered) = &self.buffered else {
            return self.file.as_raw_fd();
        };
        let mask = self.direct_align - 1;
        let aligned = offset & mask == 0 && buffers.into_iter().all(|(a, l)| (a | l) & mask == 0);
        if aligned {
            self.file.as_raw_fd()
        } else {
            buffered.as_raw_fd()
        }
    }

    /// The main descriptor (O_DIRECT when [`Image::is_direct`]): flush and fallocate go here.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `fdatasync(2)` on the image.
    ///
    /// # Errors
    /// The OS error of `fdatasync`.
    pub fn sync(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

fn open_file(path: &Path, read_only: bool, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
}

fn device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points to a live local u64;
    // the descriptor is owned by `file` and open.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// A block-device ioctl that returns an `int` (BLKSSZGET, BLKPBSZGET).
fn block_ioctl(file: &File, request: libc::c_ulong) -> Option<u32> {
    let mut value: libc::c_int = 0;
    // SAFETY: the request writes one int to the pointer, which points to a live local int;
    // the descriptor is owned by `file` and open.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), request, &mut value as *mut libc::c_int) };
    if ret < 0 {
        return None;
    }
    u32::try_from(value).ok().filter(|v| v.is_power_of_two())
}

/// Memory and offset alignment O_DIRECT needs on this file (`statx` STATX_DIOALIGN), bytes.
fn direct_io_alignment(file: &File) -> Option<u64> {
    // SAFETY: statx is plain old data; all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes at most one `struct statx` to the pointer, which points to a live
    // local; the empty path with AT_EMPTY_PATH names the open descriptor owned by `file`.
    let ret = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret < 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let align = u64::from(stx.stx_dio_mem_align.max(stx.stx_dio_offset_align));
    align.is_power_of_two().then_some(align)
}

/// `statfs(2)` magic numbers of file systems that keep files in memory (linux/magic.h).
const MEMORY_FS_MAGIC: [i64; 2] = [
    0x0102_1994, /* TMPFS_MAGIC */
    0x8584_58f6, /* RAMFS_MAGIC */
];

/// Whether `file` lives on tmpfs or ramfs and refuses a `RWF_NOWAIT` read (EOPNOTSUPP).
fn memory_fs_without_nowait(file: &File) -> bool {
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs` is a valid, writable statfs; the descriptor is open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } < 0
        || !MEMORY_FS_MAGIC.contains(&(fs.f_type as i64))
    {
        return false;
    }
    let mut byte = 0u8;
    let iov = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    // SAFETY: `iov` points to one writable byte that outlives the call.
    let ret = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Probes fallocate modes on a range past the end of the image, where they cannot change data.
fn probe_fallocate(file: &File, kind: ImageKind, size: u64) -> FallocateSupport {
    const PROBE_LEN: u64 = 4096;
    let past_end = size.div_ceil(PROBE_LEN).saturating_add(1) * PROBE_LEN;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    let works = |mode| match fallocate(file.as_raw_fd(), mode, past_end, PROBE_LEN) {
        Ok(()) => true,
        // A block device checks the mode before the range: EINVAL means "mode accepted, range
        // past the end". A regular file accepts a range past EOF, so it must succeed.
        Err(e) => kind == ImageKind::BlockDevice && e.raw_os_error() == Some(libc::EINVAL),
    };
    let punch_hole = works(punch);
    let zero_range = works(zero);
    if kind == ImageKind::RegularFile && zero_range && punch_hole {
        // Zero-range past EOF may have preallocated a block beyond the end: give it back.
        let _ = fallocate(file.as_raw_fd(), punch, past_end, PROBE_LEN);
    }
    FallocateSupport {
        punch_hole,
        zero_range,
    }
}

fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate only takes integers; `fd` is an open descriptor owned by the caller.
    if unsafe { libc::fallocate(fd, mode, offset, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp_image(tag: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pvio-blk-image-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.raw");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    #[test]
    fn regular_file_size_and_probes_keep_data() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        let path = temp_image("probe", &data);
        let img = Image::open(&path, false, false).unwrap();
        assert_eq!(img.kind(), ImageKind::RegularFile);
        assert_eq!(img.size(), 8192);
        assert_eq!(img.capacity_sectors(), 16);
        assert!(!img.is_direct());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            data,
            "probes changed nothing"
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8192, "probes kept the size");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn read_only_offers_no_fallocate() {
        let path = temp_image("ro", &[0u8; 1024]);
        let img = Image::open(&path, true, true).unwrap();
        assert!(img.is_read_only());
        assert_eq!(img.fallocate_support(), FallocateSupport::default());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn missing_and_odd_images_are_errors() {
        let err = Image::open(Path::new("/nonexistent/pvio.raw"), false, false).unwrap_err();
        assert!(matches!(err, ImageError::Open { .. }), "{err}");
        let err = Image::open(&std::env::temp_dir(), false, false).unwrap_err();
        assert!(matches!(err, ImageError::NotAFileOrDevice(_)), "{err}");
    }

    #[test]
    fn no_o_direct_falls_back_to_buffered_io() {
        // procfs refuses O_DIRECT with EINVAL, like the file systems without it (tmpfs before
        // Linux 6.6, some FUSE and network file systems).
        let img = Image::open(Path::new("/proc/version"), true, true).unwrap();
        assert!(!img.is_direct());
        assert!(!img.serves_inline(), "procfs is not a memory file system");
        assert_eq!(
            img.fd_for(1, [(1, 1)]),
            img.fd(),
            "one descriptor for everything"
        );
    }

    #[test]
    fn fd_choice_follows_alignment() {
        let path = temp_image("align", &[0u8; 8192]);
        let img = Image::open(&path, false, true).unwrap();
        if img.is_direct() {
            assert_eq!(img.fd_for(4096, [(0x10000, 4096)]), img.fd());
            assert_ne!(img.fd_for(4096, [(0x10001, 4096)]), img.fd());
            assert_ne!(img.fd_for(4097, [(0x10000, 4096)]), img.fd());
        } else {
            assert_eq!(img.fd_for(4097, [(0x10001, 1)]), img.fd());
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
