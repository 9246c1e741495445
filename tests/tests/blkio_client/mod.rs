//! libblkio (the `blkio` crate) as a [`Client`] of pvio_tests' verified random workload: one
//! queue of libblkio's `virtio-blk-vhost-user` driver attached to a back-end's socket, each
//! request in flight owning a slot of [`MAX_SECTORS`] sectors in one memory region libblkio
//! allocated and mapped (so the back-end reaches it through VHOST_USER_ADD_MEM_REG).

use std::mem::MaybeUninit;
use std::path::Path;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use pvio_tests::workload::{Client, Kind, MAX_SECTORS};

/// libblkio's driver for a vhost-user-blk back-end.
const DRIVER: &str = "virtio-blk-vhost-user";
/// Bytes of one slot: the largest request.
const SLOT_BYTES: usize = MAX_SECTORS as usize * 512;

/// One libblkio queue on a back-end, with `depth` request slots.
pub struct BlkioClient {
    // Field order is drop order: the queue before the instance that owns it.
    queue: Blkioq,
    blkio: Blkio,
    mem: MemoryRegion,
    /// Per slot: the length in bytes of the read it holds (0 for other requests), or `None`
    /// when free.
    slots: Vec<Option<usize>>,
}

impl BlkioClient {
    /// Attaches to the vhost-user-blk back-end listening on `socket` with one queue and room
    /// for `depth` requests in flight.
    ///
    /// # Panics
    /// libblkio cannot attach (the message names libblkio's error).
    pub fn attach(socket: &Path, depth: usize) -> BlkioClient {
        let attach = || -> blkio::Result<BlkioClient> {
            let mut blkio = Blkio::new(DRIVER)?;
            blkio.set_str("path", socket.to_str().expect("a UTF-8 socket path"))?;
            blkio.connect()?;
            blkio.set_i32("num-queues", 1)?;
            let mut started = blkio.start()?;
            let align = usize::try_from(blkio.get_u64("mem-region-alignment")?).unwrap_or(4096);
            let mem = blkio.alloc_mem_region((depth * SLOT_BYTES).next_multiple_of(align))?;
            blkio.map_mem_region(&mem)?;
            Ok(BlkioClient {
                queue: started.queues.remove(0),
                blkio,
                mem,
                slots: vec![None; depth],
            })
        };
        attach().unwrap_or_else(|e| {
            panic!(
                "libblkio cannot attach to {}: {} (errno {:?})",
                socket.display(),
                e.message(),
                e.errno()
            )
        })
    }

    /// The device's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").expect("libblkio capacity")
    }

    /// Whether the device takes discard and write-zeroes requests (libblkio's
    /// `max-discard-len` and `max-write-zeroes-len`, from virtio-blk's configuration, are not
    /// 0).
    pub fn zeroes(&self) -> (bool, bool) {
        let limit = |name: &str| self.blkio.get_u64(name).is_ok_and(|v| v > 0);
        (limit("max-discard-len"), limit("max-write-zeroes-len"))
    }

    /// Slot `slot`'s bytes.
    fn slot(&mut self, slot: usize) -> &mut [u8] {
        assert!(
            slot < self.slots.len(),
            "slot {slot} of {}",
            self.slots.len()
        );
        // SAFETY: libblkio allocated and mapped `mem` (addr, len) read-write, `len` covers
        // every slot; it stays mapped while `self.blkio` lives, and `&mut self` makes this the
        // only slice over it (libblkio only touches slots of requests in flight, which the
        // caller does not read or write until their completion).
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.mem.addr + slot * SLOT_BYTES) as *mut u8,
                SLOT_BYTES,
            )
        }
    }
}

impl Client for BlkioClient {
    type Token = usize;

    fn submit(&mut self, start: u64, len: u64, kind: &Kind) -> Option<usize> {
        let slot = self.slots.iter().position(Option::is_none)?;
        let (offset, bytes) = (start * 512, usize::try_from(len).ok()? * 512);
        let buf = self.slot(slot).as_mut_ptr();
        let no_flags = ReqFlags::empty();
        let read_len = match kind {
            Kind::Write(data) => {
                self.slot(slot)[..data.len()].copy_from_slice(data);
                self.queue.write(offset, buf, data.len(), slot, no_flags);
                0
            }
            Kind::Read => {
                self.queue.read(offset, buf, bytes, slot, no_flags);
                bytes
            }
            Kind::Zeroes => {
                self.queue
                    .write_zeroes(offset, bytes as u64, slot, no_flags);
                0
            }
            Kind::Discard => {
                self.queue.discard(offset, bytes as u64, slot, no_flags);
                0
            }
        };
        self.slots[slot] = Some(read_len);
        Some(slot)
    }

    fn complete(&mut self, timeout: Duration) -> (Option<usize>, Result<Vec<u8>, String>) {
        let mut done = [const { MaybeUninit::<Completion>::uninit() }; 1];
        let mut left = timeout;
        let n = match self.queue.do_io(&mut done, 1, Some(&mut left), None) {
            Ok(n) => n,
            Err(e) => return (None, Err(format!("libblkio do_io: {}", e.message()))),
        };
        if n == 0 {
            return (None, Err(format!("no completion within {timeout:?}")));
        }
        // SAFETY: do_io initialized the first `n` (here 1) entries.
        let c = unsafe { done[0].assume_init_ref() };
        let slot = c.user_data;
        let Some(read_len) = self.slots.get_mut(slot).and_then(Option::take) else {
            return (None, Err(format!("completion of free slot {slot}")));
        };
        if c.ret != 0 {
            return (Some(slot), Err(format!("libblkio: ret {}", c.ret)));
        }
        (Some(slot), Ok(self.slot(slot)[..read_len].to_vec()))
    }
}
