//! Shared memory regions: memfd-backed pages mapped `MAP_SHARED` into each process that holds the
//! file descriptor, the stand-in for a page that Xen's grant tables share between domains.
//!
//! Regions are sealed against resizing, and only sealed regions are mapped, so a peer holding
//! the fd cannot truncate it and make our next access fault (SIGBUS).
//!
//! This module is the only place with `unsafe` ([`crate::ring`] is safe code on top of it).
//! Every access to a mapped region goes through a bounds- and alignment-checked accessor:
//! - fields that both sides update are reached only as atomics ([`SharedRegion::atomic_u32`],
//!   [`SharedRegion::atomic_u64`]);
//! - everything else is copied in or out with volatile accesses ([`SharedRegion::read_obj`],
//!   [`SharedRegion::write_obj`], [`SharedRegion::read_bytes`], [`SharedRegion::write_bytes`]),
//!   so no Rust reference ever points at non-atomic memory that the peer may change, and a value
//!   is fetched once into private memory before it is looked at (no double fetch).
//!
//! It also takes ownership of the descriptors that reach a process with SCM_RIGHTS or `accept4`
//! (the other raw-resource steps of handing a region to a peer), behind safe functions.

use std::io::IoSliceMut;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{accept4, recvmsg, ControlMessageOwned, MsgFlags, SockFlag};
use nix::sys::stat::fstat;
use nix::unistd::ftruncate;

/// Size of one shared page in bytes (Xen's `XEN_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 4096;

/// Largest region the crate maps, in pages (a ring of 2^8 pages is far beyond Xen's
/// `max-ring-page-order` of 4 for blkif).
pub const MAX_REGION_PAGES: usize = 256;

/// Errors of the mapping module.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// `memfd_create` failed.
    #[error("memfd_create failed")]
    Memfd(#[source] Errno),
    /// Sizing the memfd with `ftruncate` failed.
    #[error("sizing the shared region failed")]
    Truncate(#[source] Errno),
    /// `fstat` on a received region fd failed.
    #[error("fstat on the shared region fd failed")]
    Stat(#[source] Errno),
    /// `mmap` failed.
    #[error("mmap of the shared region failed")]
    Map(#[source] Errno),
    /// The region is empty, not a whole number of pages, or larger than [`MAX_REGION_PAGES`].
    #[error("shared region of {len} bytes is not 1..={MAX_REGION_PAGES} whole pages")]
    BadSize {
        /// Size in bytes.
        len: u64,
    },
    /// An access fell outside the region.
    #[error("access of {len} bytes at offset {offset} is outside the {size}-byte region")]
    OutOfBounds {
        /// Offset of the access in bytes.
        offset: usize,
        /// Length of the access in bytes.
        len: usize,
        /// Size of the region in bytes.
        size: usize,
    },
    /// Sealing a new memfd against resizing failed.
    #[error("sealing the shared region failed")]
    Seal(#[source] Errno),
    /// A received region is not sealed against shrinking: the peer could truncate it under our
    /// mapping and turn the next access into SIGBUS.
    #[error("received shared region is not sealed against shrinking")]
    Unsealed,
    /// An access was not aligned for its type.
    #[error("access at offset {offset} is not {align}-byte aligned")]
    Misaligned {
        /// Offset of the access in bytes.
        offset: usize,
        /// Required alignment in bytes.
        align: usize,
    },
}

/// Result type of the mapping module.
pub type Result<T> = std::result::Result<T, MappingError>;

/// Plain data that may be copied in and out of shared memory as raw bytes.
///
/// Ring slots (ring.h's request and response structs) and any other value kept in a shared page
/// implement this trait.
///
/// # Safety
///
/// An implementer must guarantee that the type
/// - is `#[repr(C)]` (or `#[repr(transparent)]`, or a primitive) so its layout is fixed and the
///   same in both processes;
/// - has no padding bytes, so writing it never copies uninitialised bytes into shared memory;
/// - is valid for every bit pattern (no `bool`, `char`, enums, references or pointers), because
///   the peer may write anything into the slot and the value is read back as-is;
/// - has alignment of at most 64 bytes (the ring header size).
///
/// This is the contract of vm-memory's `ByteValued`, plus the alignment bound.
pub unsafe trait RingSlot: Copy + Send + Sync + 'static {}

// SAFETY: primitive integers are plain data, valid for every bit pattern, without padding, and
// aligned to at most 8 bytes.
unsafe impl RingSlot for u8 {}
// SAFETY: as above.
unsafe impl RingSlot for u16 {}
// SAFETY: as above.
unsafe impl RingSlot for u32 {}
// SAFETY: as above.
unsafe impl RingSlot for u64 {}
// SAFETY: as above.
unsafe impl RingSlot for i8 {}
// SAFETY: as above.
unsafe impl RingSlot for i16 {}
// SAFETY: as above.
unsafe impl RingSlot for i32 {}
// SAFETY: as above.
unsafe impl RingSlot for i64 {}
// SAFETY: an array of plain data has no padding between elements (its stride is the element
// size), is valid for every bit pattern of its elements and has the element's alignment.
unsafe impl<T: RingSlot, const N: usize> RingSlot for [T; N] {}

/// A memfd mapped read-write and `MAP_SHARED`, a whole number of [`PAGE_SIZE`] pages long.
///
/// Every process that maps the same memfd sees the same bytes. The mapping is removed on drop.
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: `SharedRegion` owns its mapping (unmapped only on drop) and its fd. The raw pointer is
// only dereferenced through the checked accessors below, which use atomics or volatile copies,
// both of which are sound to perform from any thread concurrently (the peer process does the same
// anyway), so moving the region to another thread is sound.
unsafe impl Send for SharedRegion {}
// SAFETY: all accessors take `&self` and touch memory only through atomics or volatile copies; no
// `&mut` to the mapped memory is ever created, so sharing references between threads adds no
// aliasing beyond what the peer process already does.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a zero-filled memfd of `pages` pages named `name` (shown in /proc/PID/maps),
    /// seals its size (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, so no holder of the fd can
    /// truncate it under another process's mapping) and maps it.
    ///
    /// # Errors
    /// [`MappingError::BadSize`] if `pages` is 0 or above [`MAX_REGION_PAGES`]; the syscall's error
    /// otherwise.
    pub fn create(name: &str, pages: usize) -> Result<Self> {
        let len = Self::checked_len(pages.saturating_mul(PAGE_SIZE) as u64)?;
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(MappingError::Memfd)?;
        ftruncate(&fd, len as i64).map_err(MappingError::Truncate)?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(MappingError::Seal)?;
        Self::map_len(fd, len)
    }

    /// Maps a region fd received from the peer (for example over SCM_RIGHTS). Its size is taken
    /// from `fstat`; it must be sealed against shrinking (as [`SharedRegion::create`] does), so a
    /// peer cannot make our accesses fault.
    ///
    /// # Errors
    /// [`MappingError::Unsealed`] for a file that may shrink; [`MappingError::BadSize`] if the
    /// file is not 1..=[`MAX_REGION_PAGES`] whole pages; the syscall's error otherwise.
    pub fn map(fd: OwnedFd) -> Result<Self> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(|_| MappingError::Unsealed)?;
        if SealFlag::from_bits_truncate(seals) & SealFlag::F_SEAL_SHRINK != SealFlag::F_SEAL_SHRINK
        {
            return Err(MappingError::Unsealed);
        }
        let st = fstat(&fd).map_err(MappingError::Stat)?;
        let len = Self::checked_len(u64::try_from(st.st_size).unwrap_or(0))?;
        Self::map_len(fd, len)
    }

    fn checked_len(len: u64) -> Result<usize> {
        let max = (MAX_REGION_PAGES * PAGE_SIZE) as u64;
        if len == 0 || len > max || len % PAGE_SIZE as u64 != 0 {
            return Err(MappingError::BadSize { len });
        }
        // The bound above keeps `len` far below usize::MAX.
        Ok(len as usize)
    }

    fn map_len(fd: OwnedFd, len: usize) -> Result<Self> {
        let length = NonZeroUsize::new(len).ok_or(MappingError::BadSize { len: 0 })?;
        // SAFETY: we ask the kernel for a fresh mapping (no fixed address), so no existing Rust
        // object is overlaid; `fd` is a valid open fd of at least `len` bytes (checked by the
        // caller via ftruncate or fstat); the result is checked for errors.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(MappingError::Map)?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
            fd,
        })
    }

    /// Size of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region is at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Host address of the first byte of the mapping (valid while the region lives), for a
    /// VMM that hands the page to a guest as guest memory (a KVM memory slot).
    pub fn host_address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The memfd behind the mapping, to pass to the peer over SCM_RIGHTS.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Checks that `len` bytes at `offset` lie inside the region and that `offset` is a multiple
    /// of `align`, and returns a pointer to them.
    fn ptr_at(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > self.len) {
            return Err(MappingError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        // The mapping is page aligned, so alignment of the offset is alignment of the address.
        if offset % align != 0 {
            return Err(MappingError::Misaligned { offset, align });
        }
        // SAFETY: `offset + len <= self.len`, so the result stays inside the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(offset) })
    }

    /// The `u32` at byte `offset` as an atomic shared with the peer.
    ///
    /// # Errors
    /// [`MappingError::OutOfBounds`] or [`MappingError::Misaligned`] (4-byte alignment).
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32> {
        let p = self.ptr_at(offset, 4, align_of::<AtomicU32>())?;
        // SAFETY: `p` is in bounds and 4-byte aligned (checked), lives as long as `&self` (the
        // mapping is removed only on drop), and is only ever accessed atomically by this process;
        // AtomicU32 has the layout of u32 and tolerates concurrent writes by the peer.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// The `u64` at byte `offset` as an atomic shared with the peer.
    ///
    /// # Errors
    /// [`MappingError::OutOfBounds`] or [`MappingError::Misaligned`] (8-byte alignment).
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64> {
        let p = self.ptr_at(offset, 8, align_of::<AtomicU64>())?;
        // SAFETY: as in `atomic_u32`, for an 8-byte aligned, in-bounds u64.
        Ok(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// Copies a `T` out of the region at byte `offset` with one volatile read.
    ///
    /// # Errors
    /// [`MappingError::OutOfBounds`] or [`MappingError::Misaligned`] (alignment of `T`).
    pub fn read_obj<T: RingSlot>(&self, offset: usize) -> Result<T> {
        let p = self.ptr_at(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: `p` is in bounds and aligned for T (checked); T is valid for every bit pattern
        // (RingSlot contract), so whatever the peer wrote is a valid T; the volatile read copies
        // it once into private memory.
        Ok(unsafe { p.cast::<T>().read_volatile() })
    }

    /// Copies `val` into the region at byte `offset` with one volatile write.
    ///
    /// # Errors
    /// [`MappingError::OutOfBounds`] or [`MappingError::Misaligned`] (alignment of `T`).
    pub fn write_obj<T: RingSlot>(&self, offset: usize, val: &T) -> Result<()> {
        let p = self.ptr_at(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: `p` is in bounds and aligned for T (checked); T has no padding (RingSlot
        // contract), so only initialised bytes reach shared memory.
        unsafe { p.cast::<T>().write_volatile(*val) };
        Ok(())
    }

    /// Copies `buf.len()` bytes out of the region starting at byte `offset`.
    ///
    /// # Errors
    /// [`MappingError::OutOfBounds`].
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let p = self.ptr_at(offset, buf.len(), 1)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `p + i` is in bounds because `offset + buf.len()` is (checked); u8 has no
            // invalid bit patterns.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copies `buf` into the region starting at byte `offset`.
    ///
    /// # Errors
    /// [`MappingError::OutOfBounds`].
    pub fn write_bytes(&self, offset: usize, buf: &[u8]) -> Result<()> {
        let p = self.ptr_at(offset, buf.len(), 1)?;
        for (i, b) in buf.iter().enumerate() {
            // SAFETY: `p + i` is in bounds because `offset + buf.len()` is (checked).
            unsafe { p.add(i).write_volatile(*b) };
        }
        Ok(())
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping made in `map_len`, which nothing else unmaps;
        // every reference handed out borrows `self`, so none outlives this call.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            log::warn!("munmap of a shared region failed: {e}");
        }
    }
}

/// Receives one message into `buf` with `recvmsg(MSG_CMSG_CLOEXEC)` and takes ownership of the
/// descriptors that came with it (SCM_RIGHTS), so they are closed when dropped. Returns the
/// message length, the message flags (check `MSG_TRUNC` / `MSG_CTRUNC`) and the descriptors.
///
/// # Errors
/// The errno of `recvmsg`.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> nix::Result<(usize, MsgFlags, Vec<OwnedFd>)> {
    let mut space = vec![0u8; nix::sys::socket::cmsg_space::<RawFd>() * max_fds.max(1)];
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel installed each of these descriptors in our table while it
            // processed this recvmsg's SCM_RIGHTS message; nothing else in the process has seen
            // the numbers, so this is their first and only owner, and each is a valid open fd.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, msg.flags, fds))
}

/// Accepts one connection on a listening socket with `accept4(SOCK_CLOEXEC)` and owns it.
///
/// # Errors
/// The errno of `accept4`.
pub(crate) fn accept_cloexec(listener: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_of_one_memfd_share_bytes() {
        let a = SharedRegion::create("test", 2).unwrap();
        let b = SharedRegion::map(a.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(b.len(), 2 * PAGE_SIZE);
        a.write_obj(4096, &0xdead_beef_u32).unwrap();
        assert_eq!(b.read_obj::<u32>(4096).unwrap(), 0xdead_beef);
        b.atomic_u64(8).unwrap().store(7, Ordering::SeqCst);
        assert_eq!(a.atomic_u64(8).unwrap().load(Ordering::SeqCst), 7);
        a.write_bytes(100, b"hello").unwrap();
        let mut buf = [0u8; 5];
        b.read_bytes(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn accessors_reject_out_of_bounds_and_misaligned() {
        let r = SharedRegion::create("test", 1).unwrap();
        assert!(matches!(
            r.atomic_u32(PAGE_SIZE - 2),
            Err(MappingError::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.atomic_u32(2),
            Err(MappingError::Misaligned {
                offset: 2,
                align: 4
            })
        ));
        assert!(matches!(
            r.read_obj::<u64>(usize::MAX - 3),
            Err(MappingError::OutOfBounds { .. })
        ));
        let mut big = vec![0u8; PAGE_SIZE + 1];
        assert!(r.read_bytes(0, &mut big).is_err());
        assert!(r.write_bytes(PAGE_SIZE, &[1]).is_err());
        assert!(r.write_bytes(PAGE_SIZE, &[]).is_ok());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            SharedRegion::create("test", 0),
            Err(MappingError::BadSize { len: 0 })
        ));
        assert!(SharedRegion::create("test", MAX_REGION_PAGES + 1).is_err());
        let fd = memfd_create("odd", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        ftruncate(&fd, 100).unwrap();
        fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
        assert!(matches!(
            SharedRegion::map(fd),
            Err(MappingError::BadSize { len: 100 })
        ));
    }

    #[test]
    fn regions_cannot_be_truncated_under_a_mapping() {
        let r = SharedRegion::create("test", 1).unwrap();
        assert!(
            ftruncate(r.fd(), 0).is_err(),
            "a peer must not shrink the region"
        );
        assert!(ftruncate(r.fd(), 2 * PAGE_SIZE as i64).is_err());
        // An unsealed file from a peer is refused before it is mapped.
        let fd = memfd_create("unsealed", MFdFlags::MFD_CLOEXEC).unwrap();
        ftruncate(&fd, PAGE_SIZE as i64).unwrap();
        assert!(matches!(SharedRegion::map(fd), Err(MappingError::Unsealed)));
    }
}
