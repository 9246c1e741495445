//! Guest-memory types of every back-end: vm-memory's mmap-backed guest memory (regions the
//! front-end shares with VHOST_USER_SET_MEM_TABLE and ADD_MEM_REG), the atomic handle the
//! request handler swaps on a new table, and vhost-user-backend's vring over it. A region mapped
//! past the end of its file is refused before it is mapped (vendor patch 7, vendor/PATCHES.md).
//!
//! Every region carries a [`DirtyBitmap`], the dirty-page bitmap that VHOST_USER_SET_LOG_BASE
//! switches on (vhost-user.rst "Migration", LOG_SHMFD; see [`crate::dirty`]): every write
//! through vm-memory (status bytes, copies, used-ring entries) marks its 4 KiB pages in the
//! front-end's log. Writes that bypass vm-memory (the kernel filling an iovec for an io_uring
//! READV or a TAP read) must be marked by the device with the slices' bitmaps
//! (`vm_memory::bitmap::Bitmap::mark_dirty`) when they complete.

pub use crate::dirty::DirtyBitmap;
use vhost_user_backend::VringRwLock;
use vm_memory::{GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory as the back-end maps it, with the dirty-page bitmap.
pub type GuestRam = GuestMemoryMmap<DirtyBitmap>;
/// The handle the request handler updates on VHOST_USER_SET_MEM_TABLE.
pub type GuestRamAtomic = GuestMemoryAtomic<GuestRam>;
/// One snapshot of the guest memory table, kept while a request uses it.
pub type GuestRamGuard = GuestMemoryLoadGuard<GuestRam>;
/// A virtqueue as vhost-user-backend keeps it.
pub type Vring = VringRwLock<GuestRamAtomic>;

/// A fresh, empty guest memory handle for a new front-end connection.
pub fn new_guest_ram() -> GuestRamAtomic {
    GuestMemoryAtomic::new(GuestMemoryMmap::new())
}
