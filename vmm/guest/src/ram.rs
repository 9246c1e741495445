//! Guest RAM as the driver core sees it: identity-mapped physical memory, and a bump allocator
//! for rings and buffers above the program image.

use core::sync::atomic::{AtomicU16, Ordering};

use frontend_guest::{GuestRam, MemError};

/// Lowest address handed out or accessed: the first page is never touched.
const LOW: u64 = 0x1000;

/// RAM at guest-physical `0 .. size`, identity-mapped.
pub struct Ram {
    size: u64,
}

impl Ram {
    /// RAM of `size` bytes.
    pub fn new(size: u64) -> Self {
        Ram { size }
    }

    fn check(&self, gpa: u64, len: usize) -> Result<(), MemError> {
        let end = gpa.checked_add(len as u64);
        if gpa >= LOW && end.is_some_and(|e| e <= self.size) {
            Ok(())
        } else {
            Err(MemError::OutOfRange { gpa, len })
        }
    }

    fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16, MemError> {
        self.check(gpa, 2)?;
        if gpa % 2 != 0 {
            return Err(MemError::Misaligned { gpa, align: 2 });
        }
        // SAFETY: checked in RAM and aligned; RAM is shared with the device and only accessed
        // atomically at ring index addresses.
        Ok(unsafe { AtomicU16::from_ptr(gpa as *mut u16) })
    }

    /// The bytes at `gpa .. gpa + len` (checked in RAM).
    ///
    /// # Safety
    /// No other reference to the range may live while the slice does (buffers the caller
    /// allocated and the device does not own at the moment).
    pub unsafe fn slice_mut(&self, gpa: u64, len: usize) -> Result<&mut [u8], MemError> {
        self.check(gpa, len)?;
        // SAFETY: checked in RAM; exclusive by the caller's contract.
        Ok(unsafe { core::slice::from_raw_parts_mut(gpa as *mut u8, len) })
    }
}

impl GuestRam for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(gpa, buf.len())?;
        // SAFETY: the range is in RAM and does not overlap `buf` (a stack or image buffer).
        unsafe { core::ptr::copy_nonoverlapping(gpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.check(gpa, data.len())?;
        // SAFETY: as read.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), gpa as *mut u8, data.len()) };
        Ok(())
    }

    fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16, MemError> {
        Ok(u16::from_le(self.atomic_u16(gpa)?.load(order)))
    }

    fn store_u16(&self, gpa: u64, val: u16, order: Ordering) -> Result<(), MemError> {
        self.atomic_u16(gpa)?.store(val.to_le(), order);
        Ok(())
    }
}

/// A bump allocator over `next .. end`.
pub struct Heap {
    next: u64,
    end: u64,
}

impl Heap {
    /// Hands out `start .. end`.
    pub fn new(start: u64, end: u64) -> Self {
        Heap { next: start, end }
    }

    /// `len` bytes aligned to `align` (a power of two), or `None` when RAM is exhausted.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let start = self.next.checked_next_multiple_of(align)?;
        let end = start.checked_add(len).filter(|&e| e <= self.end)?;
        self.next = end;
        Some(start)
    }
}
