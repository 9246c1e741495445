//! Guest-memory types of every back-end: vm-memory's mmap-backed guest memory (regions the
//! front-end shares with VHOST_USER_SET_MEM_TABLE), the atomic handle the request handler swaps
//! on a new table, and vhost-user-backend's vring over it. No dirty-page bitmap yet (`()`).

use vhost_user_backend::VringRwLock;
use vm_memory::{GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory as the back-end maps it.
pub type GuestRam = GuestMemoryMmap<()>;
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
