//! Guest memory access for the driver core.
//!
//! The driver never dereferences guest addresses itself: every access goes through [`GuestRam`],
//! implemented by whoever hosts the driver (memfd-backed memory in [`crate::host`], identity
//! mapped RAM in a guest kernel). The device runs concurrently (another thread or process), so
//! ring indices are accessed with explicit atomic orderings through [`GuestRam::load_u16`] and
//! [`GuestRam::store_u16`].

use core::sync::atomic::Ordering;

/// A guest memory access that could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The range `gpa .. gpa + len` (guest-physical address, bytes) is not inside guest RAM.
    #[error("guest memory range {gpa:#x}+{len} bytes is outside guest RAM")]
    OutOfRange {
        /// First guest-physical address of the access.
        gpa: u64,
        /// Length of the access in bytes.
        len: usize,
    },
    /// An atomic access at `gpa` is not aligned to its size `align` (bytes).
    #[error("guest-physical address {gpa:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// Guest-physical address of the access.
        gpa: u64,
        /// Required alignment in bytes.
        align: u64,
    },
}

/// Access to guest RAM by guest-physical address (gpa).
///
/// `read` and `write` are plain copies with no ordering guarantee; the ring index accessors are
/// single atomic accesses with the given [`Ordering`], which together with
/// [`core::sync::atomic::fence`] order the driver's accesses against the device's (virtio 1.2
/// §2.7.13 and §2.7.14 give the required barriers).
pub trait GuestRam {
    /// Copies `buf.len()` bytes starting at `gpa` into `buf`.
    ///
    /// # Errors
    /// [`MemError::OutOfRange`] if any byte of the range is outside guest RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Copies `data` to guest RAM starting at `gpa`.
    ///
    /// # Errors
    /// [`MemError::OutOfRange`] if any byte of the range is outside guest RAM.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError>;

    /// Loads the little-endian `u16` at the 2-byte aligned `gpa` as one atomic access.
    ///
    /// # Errors
    /// [`MemError::OutOfRange`] or [`MemError::Misaligned`].
    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemError>;

    /// Stores `val` little-endian at the 2-byte aligned `gpa` as one atomic access.
    ///
    /// # Errors
    /// [`MemError::OutOfRange`] or [`MemError::Misaligned`].
    fn store_u16(&self, gpa: u64, val: u16, order: Ordering) -> Result<(), MemError>;
}

/// Reads the little-endian `u32` at `gpa` (no ordering).
pub(crate) fn read_u32(mem: &(impl GuestRam + ?Sized), gpa: u64) -> Result<u32, MemError> {
    let mut b = [0u8; 4];
    mem.read(gpa, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads one byte at `gpa`.
pub(crate) fn read_u8(mem: &(impl GuestRam + ?Sized), gpa: u64) -> Result<u8, MemError> {
    let mut b = [0u8; 1];
    mem.read(gpa, &mut b)?;
    Ok(b[0])
}

/// Writes `len` zero bytes at `gpa`, in small chunks (no allocation).
pub(crate) fn zero(mem: &(impl GuestRam + ?Sized), gpa: u64, len: u64) -> Result<(), MemError> {
    const CHUNK: [u8; 256] = [0; 256];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK.len() as u64);
        let at = gpa.checked_add(done).ok_or(MemError::OutOfRange {
            gpa,
            len: len as usize,
        })?;
        // `n` is at most 256, so the cast and the slice are in range.
        mem.write(at, &CHUNK[..n as usize])?;
        done += n;
    }
    Ok(())
}
