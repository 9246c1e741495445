//! Guest RAM for a front-end without a VM: one memfd mapped `MAP_SHARED` at guest-physical
//! address 0, handed to the back-end in VHOST_USER_SET_MEM_TABLE, with a bump allocator for
//! rings and buffers.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use nix::sys::memfd::{memfd_create, MFdFlags};
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{Error, Result};
use crate::mem::{GuestRam, MemError};

/// Guest RAM of `size` bytes at guest-physical addresses `0..size`.
#[derive(Debug)]
pub struct HostRam {
    mem: GuestMemoryMmap,
    /// A descriptor of the memfd (the mapping holds its own).
    file: File,
    size: u64,
    /// Next free guest-physical address of the bump allocator.
    next: Mutex<u64>,
}

impl HostRam {
    /// Creates `size` bytes (rounded up to 4 KiB) of zeroed, shared guest RAM.
    ///
    /// # Errors
    /// [`Error::Memfd`] or [`Error::Mmap`].
    pub fn new(size: u64) -> Result<Self> {
        let size = size.next_multiple_of(4096);
        let fd = memfd_create("pvio-guest-ram", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::Memfd(e.into()))?;
        let file = File::from(fd);
        file.set_len(size).map_err(Error::Memfd)?;
        let map_file = file.try_clone().map_err(Error::Memfd)?;
        let len = usize::try_from(size).map_err(|_| Error::OutOfRam {
            requested: size,
            free: 0,
        })?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            len,
            Some(FileOffset::new(map_file, 0)),
        )])
        .map_err(Error::Mmap)?;
        Ok(HostRam {
            mem,
            file,
            size,
            next: Mutex::new(0),
        })
    }

    /// The mapping, for device-side code in the same process (tests).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reserves `len` bytes aligned to `align` (a power of two) and returns their guest-physical
    /// address. Reservations are never freed.
    ///
    /// # Errors
    /// [`Error::OutOfRam`].
    pub fn alloc(&self, len: u64, align: u64) -> Result<u64> {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = next.checked_next_multiple_of(align.max(1));
        let end = start
            .and_then(|s| s.checked_add(len))
            .filter(|&e| e <= self.size);
        match (start, end) {
            (Some(start), Some(end)) => {
                *next = end;
                Ok(start)
            }
            _ => Err(Error::OutOfRam {
                requested: len,
                free: self.size.saturating_sub(*next),
            }),
        }
    }

    /// Copies `len` bytes at `gpa` out of guest RAM.
    ///
    /// # Errors
    /// [`Error::Mem`].
    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read(gpa, &mut buf)?;
        Ok(buf)
    }

    /// The front-end's virtual address of guest-physical `gpa` (what VHOST_USER_SET_VRING_ADDR
    /// carries).
    ///
    /// # Errors
    /// [`Error::Mem`] if `gpa` is outside guest RAM.
    pub fn host_address(&self, gpa: u64) -> Result<u64> {
        let ptr = self
            .mem
            .get_host_address(GuestAddress(gpa))
            .map_err(|_| MemError::OutOfRange { gpa, len: 1 })?;
        Ok(ptr as u64)
    }

    /// The region to send in VHOST_USER_SET_MEM_TABLE; its `mmap_handle` stays valid while
    /// `self` lives.
    ///
    /// # Errors
    /// [`Error::Mem`] (cannot happen for a non-empty RAM).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo> {
        Ok(VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: self.size,
            userspace_addr: self.host_address(0)?,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        })
    }
}

fn check_align(gpa: u64) -> std::result::Result<(), MemError> {
    if gpa % 2 == 0 {
        Ok(())
    } else {
        Err(MemError::Misaligned { gpa, align: 2 })
    }
}

impl GuestRam for HostRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> std::result::Result<(), MemError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError::OutOfRange {
                gpa,
                len: buf.len(),
            })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> std::result::Result<(), MemError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| MemError::OutOfRange {
                gpa,
                len: data.len(),
            })
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> std::result::Result<u16, MemError> {
        check_align(gpa)?;
        self.mem
            .load::<u16>(GuestAddress(gpa), order)
            .map(u16::from_le)
            .map_err(|_| MemError::OutOfRange { gpa, len: 2 })
    }

    fn store_u16(&self, gpa: u64, val: u16, order: Ordering) -> std::result::Result<(), MemError> {
        check_align(gpa)?;
        self.mem
            .store(val.to_le(), GuestAddress(gpa), order)
            .map_err(|_| MemError::OutOfRange { gpa, len: 2 })
    }
}
