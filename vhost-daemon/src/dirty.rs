//! The dirty-page log of live migration (vhost-user.rst "Migration", LOG_SHMFD): the bitmap
//! every guest memory region carries, and the bookkeeping that keeps regions the front-end
//! adds after VHOST_USER_SET_LOG_BASE logged too.
//!
//! vhost-user-backend 0.24 maps the front-end's log on SET_LOG_BASE and arms the bitmap of each
//! region of the memory table of that moment ([`BitmapReplace::replace`]); regions of a later
//! ADD_MEM_REG or SET_MEM_TABLE get a fresh, unarmed bitmap and would never be logged.
//! [`DirtyBitmap`] wraps the library's [`BitmapMmapRegion`] and remembers the log it was armed
//! with, so [`DirtyLog::follow`], run on every memory-table update, finds the log (in the new
//! table, the previous one, or its own copy) and arms the new regions with it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vhost_user_backend::bitmap::{
    AtomicBitmapMmap, BitmapMmapRegion, BitmapReplace, MemRegionBitmap, MmapLogReg,
};
use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};
use vm_memory::mmap::NewBitmap;
use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{GuestRam, GuestRamAtomic, GuestRamGuard};

/// The dirty bitmap of one guest memory region (or a slice of it, from `base` bytes into the
/// region): the library's [`BitmapMmapRegion`] plus the log it was armed with, shared by all
/// slices of the region through one `Arc`.
///
/// Until the log is armed, [`Bitmap::mark_dirty`] is one load of a flag that nothing writes:
/// the library's bitmap takes a read lock (an atomic write on a line every queue thread
/// shares) on every call, armed or not.
#[derive(Clone, Debug, Default)]
pub struct DirtyBitmap {
    shared: Arc<Shared>,
    base: usize,
}

/// What every slice of a region's [`DirtyBitmap`] shares.
#[derive(Debug, Default)]
struct Shared {
    /// The library's bitmap of the whole region (offsets from the region's start).
    inner: BitmapMmapRegion,
    /// The log `inner` writes to, once armed.
    log: RwLock<Option<Arc<MmapLogReg>>>,
    /// `inner` has a log: set (Release) after it was installed.
    armed: AtomicBool,
}

impl DirtyBitmap {
    /// The log this region's bitmap writes to, once armed.
    fn log(&self) -> Option<Arc<MmapLogReg>> {
        self.shared
            .log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Marks `len` bytes at `offset` in the armed log.
    #[inline(never)]
    fn mark_armed(&self, offset: usize, len: usize) {
        self.shared
            .inner
            .mark_dirty(self.base.saturating_add(offset), len);
    }
}

impl Bitmap for DirtyBitmap {
    // Inlined into the data paths (other crates): while the log is not armed, marking is the
    // one load, without a call.
    #[inline]
    fn mark_dirty(&self, offset: usize, len: usize) {
        if self.shared.armed.load(Ordering::Acquire) {
            self.mark_armed(offset, len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.shared.inner.dirty_at(self.base.saturating_add(offset))
    }

    fn slice_at(&self, offset: usize) -> Self {
        DirtyBitmap {
            shared: Arc::clone(&self.shared),
            base: self.base.saturating_add(offset),
        }
    }
}

impl WithBitmapSlice<'_> for DirtyBitmap {
    type S = Self;
}

impl BitmapSlice for DirtyBitmap {}

impl NewBitmap for DirtyBitmap {
    fn with_len(_len: usize) -> Self {
        Self::default()
    }
}

/// A region's bitmap over the front-end's log, with the log itself.
#[derive(Debug)]
pub struct ArmedBitmap {
    bitmap: AtomicBitmapMmap,
    log: Arc<MmapLogReg>,
}

impl MemRegionBitmap for ArmedBitmap {
    fn new<R: GuestMemoryRegion>(region: &R, log: Arc<MmapLogReg>) -> io::Result<Self> {
        Ok(ArmedBitmap {
            bitmap: AtomicBitmapMmap::new(region, Arc::clone(&log))?,
            log,
        })
    }
}

impl BitmapReplace for DirtyBitmap {
    type InnerBitmap = ArmedBitmap;

    fn replace(&self, armed: ArmedBitmap) {
        *self
            .shared
            .log
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(armed.log);
        self.shared.inner.replace(armed.bitmap);
        self.shared.armed.store(true, Ordering::Release);
    }
}

/// What one connection knows about its dirty log across memory-table updates.
#[derive(Debug, Default)]
pub struct DirtyLog {
    /// The table of the previous update (SET_LOG_BASE arms its regions in place).
    previous: Mutex<Option<GuestRamGuard>>,
    /// The log last seen armed.
    log: Mutex<Option<Arc<MmapLogReg>>>,
}

impl DirtyLog {
    /// Called on every memory-table update (the table in `mem` is already installed): once a
    /// log exists, arms every region of the new table that is not armed yet.
    ///
    /// # Errors
    /// A region does not fit in the front-end's log (the update is then refused).
    pub fn follow(&self, mem: &GuestRamAtomic) -> io::Result<()> {
        let table = mem.memory();
        let mut previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        let mut known = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let found = armed_log(&table).or_else(|| previous.as_deref().and_then(armed_log));
        if let Some(log) = found {
            *known = Some(log);
        }
        if let Some(log) = known.as_ref() {
            arm_unarmed(&table, log)?;
        }
        *previous = Some(table);
        Ok(())
    }
}

/// The log of the first armed region of `table`.
fn armed_log(table: &GuestRam) -> Option<Arc<MmapLogReg>> {
    table.iter().find_map(|region| region.bitmap().log())
}

/// Arms every region of `table` that has no log yet with `log`.
fn arm_unarmed(table: &GuestRam, log: &Arc<MmapLogReg>) -> io::Result<()> {
    for region in table.iter() {
        if region.bitmap().log().is_none() {
            let armed = ArmedBitmap::new(region, Arc::clone(log))?;
            region.bitmap().replace(armed);
        }
    }
    Ok(())
}
