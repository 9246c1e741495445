//! Inflight I/O tracking for split virtqueues (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD,
//! vhost-user.rst "Inflight I/O tracking"), so that requests survive a back-end crash.
//!
//! The back-end allocates the area (VHOST_USER_GET_INFLIGHT_FD, a sealed memfd) and the
//! front-end keeps it; after the back-end restarts, the front-end hands it back
//! (VHOST_USER_SET_INFLIGHT_FD) and the back-end resubmits exactly the requests it had taken
//! from the available ring but not put in the used ring, in the order it had taken them, even
//! when they had completed out of order.
//!
//! Layout, per queue, little-endian, at a stride of [`queue_region_bytes`] (the stride
//! libvhost-user uses, so any back-end of that family reads the same area):
//! ```text
//! QueueRegionSplit { u64 features; u16 version; u16 desc_num; u16 last_batch_head;
//!                    u16 used_idx; DescStateSplit desc[desc_num]; }          // 16 + 16*n bytes
//! DescStateSplit   { u8 inflight; u8 padding[5]; u16 next; u64 counter; }    // 16 bytes
//! ```
//! Recording, one request at a time (a batch of one): on taking head `h` from the available
//! ring, `desc[h].counter = counter++` then `desc[h].inflight = 1`; before its used element
//! is published, `last_batch_head = h`; after the used index is published,
//! `desc[h].inflight = 0` then `used_idx = <used index>`. Recovery at queue start: if
//! `used_idx` differs from the used ring's index, the crash fell between publishing and
//! clearing, so `desc[last_batch_head].inflight = 0` and `used_idx` takes the ring's value;
//! then every head still in flight is resubmitted by ascending counter, and the next available
//! index becomes `used_idx + <number in flight>` (the front-end rewinds it to the used index).
//!
//! The area is shared with the front-end and therefore untrusted: every field is checked when
//! the area is handed back and again at queue start, and a bad area is refused with an error,
//! never a panic. The file must be sealed against shrinking (F_SEAL_SHRINK), so a front-end
//! cannot truncate it under the mapping (which would raise SIGBUS in the back-end).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// The version of the area this back-end writes and reads (vhost-user.rst: 1; 0 means "not
/// initialized yet").
pub const INFLIGHT_VERSION: u16 = 1;
/// Alignment of each queue's region, bytes.
const QUEUE_REGION_ALIGN: u64 = 64;
/// Bytes of `QueueRegionSplit` before its `desc` array.
const HEADER_BYTES: u64 = 16;
/// Bytes of one `DescStateSplit`.
const DESC_STATE_BYTES: u64 = 16;

// Field offsets in `QueueRegionSplit`.
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
// Field offsets in `DescStateSplit`.
const OFF_INFLIGHT: usize = 0;
const OFF_COUNTER: usize = 8;

/// Bytes one queue's region takes for `queue_size` descriptors: the header and the descriptor
/// states, rounded up to 64 bytes.
pub fn queue_region_bytes(queue_size: u16) -> u64 {
    (HEADER_BYTES + DESC_STATE_BYTES * u64::from(queue_size)).next_multiple_of(QUEUE_REGION_ALIGN)
}

/// Why an inflight area cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The front-end's queue count or size does not fit the device.
    #[error(
        "inflight area for {num_queues} queue(s) of {queue_size} descriptors: the device has \
         {max_queues} queue(s) of at most {max_queue_size}"
    )]
    Shape {
        /// Queues the front-end asked for.
        num_queues: u16,
        /// Queue size the front-end asked for.
        queue_size: u16,
        /// Queues of the device.
        max_queues: u16,
        /// Largest queue size of the device.
        max_queue_size: u16,
    },
    /// The memfd could not be created, sized or sealed.
    #[error("cannot create the inflight area: {0}")]
    Create(io::Error),
    /// The area handed back is smaller than its queues need.
    #[error("the inflight area is {size} bytes, {needed} needed")]
    TooSmall {
        /// `mmap_size` of the message.
        size: u64,
        /// Bytes the queues need.
        needed: u64,
    },
    /// The area does not start on a page boundary of its file.
    #[error("the inflight area's offset {0:#x} is not page-aligned")]
    Unaligned(u64),
    /// The area extends past the end of its file.
    #[error("the inflight area ends at byte {end} of a {file_size}-byte file")]
    PastEnd {
        /// Offset plus the bytes needed.
        end: u64,
        /// Size of the file.
        file_size: u64,
    },
    /// The file is not sealed against shrinking and cannot be.
    #[error("the inflight file cannot be sealed against shrinking: {0}")]
    Unsealed(nix::Error),
    /// The area cannot be mapped.
    #[error("cannot map the inflight area: {0}")]
    Map(String),
    /// A queue's region has an unknown version.
    #[error("queue {queue}: inflight region version {version}, expected 0 or {INFLIGHT_VERSION}")]
    Version {
        /// Queue index.
        queue: u16,
        /// The version found.
        version: u16,
    },
    /// A queue's region tracks another number of descriptors than the area's queue size.
    #[error("queue {queue}: inflight region tracks {desc_num} descriptors, expected {expected}")]
    DescNum {
        /// Queue index.
        queue: u16,
        /// `desc_num` found.
        desc_num: u16,
        /// The area's queue size.
        expected: u16,
    },
    /// The virtqueue is larger than the region tracks.
    #[error(
        "queue {queue}: virtqueue of {size} descriptors, the inflight region tracks {desc_num}"
    )]
    QueueTooLarge {
        /// Queue index.
        queue: u16,
        /// The virtqueue's size.
        size: u16,
        /// `desc_num` of the region.
        desc_num: u16,
    },
    /// A descriptor's `inflight` byte is neither 0 nor 1.
    #[error("queue {queue}: descriptor {index} has inflight byte {value}")]
    InflightByte {
        /// Queue index.
        queue: u16,
        /// Descriptor index.
        index: u16,
        /// The byte found.
        value: u8,
    },
    /// `last_batch_head`, or a descriptor in flight, is past the virtqueue.
    #[error("queue {queue}: descriptor {index} is past the virtqueue of {size} descriptors")]
    HeadPastQueue {
        /// Queue index.
        queue: u16,
        /// Descriptor index.
        index: u16,
        /// The virtqueue's size.
        size: u16,
    },
    /// Two descriptors in flight share a counter, so their order is unknown.
    #[error("queue {queue}: descriptors {first} and {second} in flight share counter {counter}")]
    DuplicateCounter {
        /// Queue index.
        queue: u16,
        /// One descriptor index.
        first: u16,
        /// The other descriptor index.
        second: u16,
        /// The counter.
        counter: u64,
    },
    /// A counter is so large that the next one would overflow.
    #[error("queue {queue}: descriptor {index} has counter {counter}, too large to go on from")]
    CounterOverflow {
        /// Queue index.
        queue: u16,
        /// Descriptor index.
        index: u16,
        /// The counter.
        counter: u64,
    },
}

/// The device's queues, which bound any inflight area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceQueues {
    /// Number of queues.
    pub count: u16,
    /// Largest queue size.
    pub max_size: u16,
}

/// One inflight area: `num_queues` regions of `queue_size` descriptor states, mapped shared.
#[derive(Debug)]
pub struct InflightArea {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
}

/// What the back-end answers to VHOST_USER_GET_INFLIGHT_FD.
#[derive(Debug)]
pub struct Allocated {
    /// The area, already in use by this back-end.
    pub area: Arc<InflightArea>,
    /// The memfd to send to the front-end (the area is at offset 0).
    pub file: File,
    /// Size of the area in bytes (`mmap_size` of the reply).
    pub size: u64,
}

impl InflightArea {
    /// Allocates a zeroed, sealed memfd area for `num_queues` queues of `queue_size`
    /// descriptors (VHOST_USER_GET_INFLIGHT_FD) and initializes every queue's header.
    ///
    /// # Errors
    /// [`InflightError::Shape`] when the front-end asks for more than the device has;
    /// [`InflightError::Create`] or [`InflightError::Map`] when the memfd fails.
    pub fn allocate(
        num_queues: u16,
        queue_size: u16,
        device: DeviceQueues,
    ) -> Result<Allocated, InflightError> {
        check_shape(num_queues, queue_size, device)?;
        let size = u64::from(num_queues) * queue_region_bytes(queue_size);
        let create = |e: nix::Error| InflightError::Create(e.into());
        let fd: OwnedFd = memfd_create(
            "pvio-inflight",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(create)?;
        let file = File::from(fd);
        file.set_len(size).map_err(InflightError::Create)?;
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(create)?;
        let reply = file.try_clone().map_err(InflightError::Create)?;
        let area = InflightArea::map(file, 0, num_queues, queue_size)?;
        for queue in 0..num_queues {
            area.init_header(queue);
        }
        Ok(Allocated {
            area: Arc::new(area),
            file: reply,
            size,
        })
    }

    /// Takes back an area the front-end hands over (VHOST_USER_SET_INFLIGHT_FD): `size` bytes
    /// at `offset` of `file`, for `num_queues` queues of `queue_size` descriptors (the
    /// message's fields). Checks the
    /// shape, the file (size, seal against shrinking) and every queue's region.
    ///
    /// # Errors
    /// Any [`InflightError`] describing what is wrong with the area.
    pub fn open(
        file: File,
        size: u64,
        offset: u64,
        (num_queues, queue_size): (u16, u16),
        device: DeviceQueues,
    ) -> Result<InflightArea, InflightError> {
        check_shape(num_queues, queue_size, device)?;
        let needed = u64::from(num_queues) * queue_region_bytes(queue_size);
        if size < needed {
            return Err(InflightError::TooSmall { size, needed });
        }
        if offset % page_size() != 0 {
            return Err(InflightError::Unaligned(offset));
        }
        seal_against_shrinking(&file)?;
        let file_size = file.metadata().map_err(InflightError::Create)?.len();
        let end = offset.saturating_add(needed);
        if end > file_size {
            return Err(InflightError::PastEnd { end, file_size });
        }
        let area = InflightArea::map(file, offset, num_queues, queue_size)?;
        for queue in 0..num_queues {
            area.region(queue).check(queue_size)?;
        }
        Ok(area)
    }

    fn map(
        file: File,
        offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightArea, InflightError> {
        let bytes = u64::from(num_queues) * queue_region_bytes(queue_size);
        // At most 65535 queues of 1 MiB: fits in usize on 64-bit hosts.
        let map = MmapRegion::from_file(FileOffset::new(file, offset), bytes as usize)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        Ok(InflightArea {
            map,
            num_queues,
            queue_size,
        })
    }

    /// Number of queues the area tracks.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptors per queue the area tracks.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The tracker of queue `queue`, if the area has it.
    pub fn queue(self: &Arc<Self>, queue: u16) -> Option<QueueInflight> {
        (queue < self.num_queues).then(|| QueueInflight {
            area: Arc::clone(self),
            queue,
            counter: 0,
        })
    }

    fn region(&self, queue: u16) -> Region<'_> {
        Region {
            area: self,
            queue,
            base: usize::from(queue) * queue_region_bytes(self.queue_size) as usize,
        }
    }

    fn init_header(&self, queue: u16) {
        let r = self.region(queue);
        r.store_u16(OFF_DESC_NUM, self.queue_size);
        r.store_u16(OFF_VERSION, INFLIGHT_VERSION);
    }
}

fn check_shape(
    num_queues: u16,
    queue_size: u16,
    device: DeviceQueues,
) -> Result<(), InflightError> {
    if num_queues == 0
        || num_queues > device.count
        || queue_size == 0
        || queue_size > device.max_size
    {
        return Err(InflightError::Shape {
            num_queues,
            queue_size,
            max_queues: device.count,
            max_queue_size: device.max_size,
        });
    }
    Ok(())
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Makes sure `file` cannot shrink under a mapping: F_SEAL_SHRINK already set, or added now.
fn seal_against_shrinking(file: &File) -> Result<(), InflightError> {
    let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).map_err(InflightError::Unsealed)?;
    if SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
        return Ok(());
    }
    fcntl(file.as_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK))
        .map(drop)
        .map_err(InflightError::Unsealed)
}

/// One queue's region of the area. Accesses are volatile and bounds-checked by vm-memory; the
/// offsets used are inside the region by construction, so an access error cannot happen and
/// is read as zero.
struct Region<'a> {
    area: &'a InflightArea,
    queue: u16,
    base: usize,
}

impl Region<'_> {
    fn load<T: vm_memory::AtomicAccess + Default>(&self, offset: usize) -> T {
        self.area
            .map
            .as_volatile_slice()
            .load(self.base + offset, Ordering::Acquire)
            .unwrap_or_default()
    }

    fn store<T: vm_memory::AtomicAccess>(&self, offset: usize, value: T) {
        // In bounds by construction (see the type's comment).
        let _ =
            self.area
                .map
                .as_volatile_slice()
                .store(value, self.base + offset, Ordering::Release);
    }

    fn load_u16(&self, offset: usize) -> u16 {
        u16::from_le(self.load(offset))
    }

    fn store_u16(&self, offset: usize, value: u16) {
        self.store(offset, value.to_le());
    }

    fn desc(index: u16) -> usize {
        (HEADER_BYTES + DESC_STATE_BYTES * u64::from(index)) as usize
    }

    fn inflight(&self, index: u16) -> u8 {
        self.load(Self::desc(index) + OFF_INFLIGHT)
    }

    fn set_inflight(&self, index: u16, value: u8) {
        self.store(Self::desc(index) + OFF_INFLIGHT, value);
    }

    fn counter(&self, index: u16) -> u64 {
        u64::from_le(self.load(Self::desc(index) + OFF_COUNTER))
    }

    fn set_counter(&self, index: u16, value: u64) {
        self.store(Self::desc(index) + OFF_COUNTER, value.to_le());
    }

    /// Checks the header and every descriptor state against an area of `queue_size`
    /// descriptors. A region with version 0 is not initialized yet and always fine.
    fn check(&self, queue_size: u16) -> Result<(), InflightError> {
        let queue = self.queue;
        match self.load_u16(OFF_VERSION) {
            0 => return Ok(()),
            INFLIGHT_VERSION => {}
            version => return Err(InflightError::Version { queue, version }),
        }
        let desc_num = self.load_u16(OFF_DESC_NUM);
        if desc_num != queue_size {
            return Err(InflightError::DescNum {
                queue,
                desc_num,
                expected: queue_size,
            });
        }
        self.in_flight(queue_size).map(drop)
    }

    /// The heads in flight, by ascending counter, checked against a virtqueue of `size`.
    fn in_flight(&self, size: u16) -> Result<Vec<(u64, u16)>, InflightError> {
        let queue = self.queue;
        let mut heads = Vec::new();
        for index in 0..self.area.queue_size {
            match self.inflight(index) {
                0 => {}
                1 if index < size => heads.push((self.counter(index), index)),
                1 => return Err(InflightError::HeadPastQueue { queue, index, size }),
                value => {
                    return Err(InflightError::InflightByte {
                        queue,
                        index,
                        value,
                    })
                }
            }
        }
        heads.sort_unstable();
        if let Some(pair) = heads.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(InflightError::DuplicateCounter {
                queue,
                first: pair[0].1,
                second: pair[1].1,
                counter: pair[0].0,
            });
        }
        if let Some(&(counter, index)) = heads.last().filter(|(c, _)| *c == u64::MAX) {
            return Err(InflightError::CounterOverflow {
                queue,
                index,
                counter,
            });
        }
        Ok(heads)
    }
}

/// The inflight tracking of one queue, used by its worker only.
#[derive(Debug)]
pub struct QueueInflight {
    area: Arc<InflightArea>,
    queue: u16,
    /// Counter for the next head taken from the available ring.
    counter: u64,
}

/// The outcome of [`QueueInflight::recover`].
#[derive(Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Heads to resubmit, in the order they were first taken from the available ring.
    pub resubmit: Vec<u16>,
    /// The next available index to go on from: the used index plus the heads in flight.
    pub next_avail: u16,
}

impl QueueInflight {
    fn region(&self) -> Region<'_> {
        self.area.region(self.queue)
    }

    /// Brings the region in line with the used ring at queue start and returns what to
    /// resubmit. `used_idx` is the used ring's index as the driver sees it, `size` the
    /// virtqueue's size. A region never initialized is initialized and nothing is resubmitted.
    ///
    /// # Errors
    /// Any [`InflightError`] about the region's content or a virtqueue larger than it tracks;
    /// the region is left as it was.
    pub fn recover(&mut self, used_idx: u16, size: u16) -> Result<Recovery, InflightError> {
        let r = self.region();
        let queue = self.queue;
        let desc_num = self.area.queue_size;
        if size > desc_num {
            return Err(InflightError::QueueTooLarge {
                queue,
                size,
                desc_num,
            });
        }
        if r.load_u16(OFF_VERSION) == 0 {
            self.area.init_header(queue);
            r.store_u16(OFF_USED_IDX, used_idx);
            self.counter = 0;
            return Ok(Recovery {
                resubmit: Vec::new(),
                next_avail: used_idx,
            });
        }
        r.check(desc_num)?;
        if r.load_u16(OFF_USED_IDX) != used_idx {
            // The crash fell between publishing the last used element and clearing its head.
            let head = r.load_u16(OFF_LAST_BATCH_HEAD);
            if head >= size {
                return Err(InflightError::HeadPastQueue {
                    queue,
                    index: head,
                    size,
                });
            }
            r.set_inflight(head, 0);
            r.store_u16(OFF_USED_IDX, used_idx);
        }
        let heads = r.in_flight(size)?;
        self.counter = heads.last().map_or(0, |(c, _)| c + 1);
        // At most `size` (<= 32768) heads: fits in u16.
        let next_avail = used_idx.wrapping_add(heads.len() as u16);
        Ok(Recovery {
            resubmit: heads.into_iter().map(|(_, h)| h).collect(),
            next_avail,
        })
    }

    /// Records that `head` was taken from the available ring.
    pub fn fetched(&mut self, head: u16) {
        if head >= self.area.queue_size {
            return;
        }
        let r = self.region();
        r.set_counter(head, self.counter);
        r.set_inflight(head, 1);
        self.counter += 1;
    }

    /// Records that `head`'s used element is about to be published.
    pub fn before_used(&self, head: u16) {
        if head < self.area.queue_size {
            self.region().store_u16(OFF_LAST_BATCH_HEAD, head);
        }
    }

    /// Records that `head`'s used element is published and the used index is now `used_idx`.
    pub fn after_used(&self, head: u16, used_idx: u16) {
        let r = self.region();
        if head < self.area.queue_size {
            r.set_inflight(head, 0);
        }
        r.store_u16(OFF_USED_IDX, used_idx);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use super::*;

    const QUEUES: u16 = 2;
    const SIZE: u16 = 8;
    const DEVICE: DeviceQueues = DeviceQueues {
        count: QUEUES,
        max_size: SIZE,
    };

    fn allocate() -> Allocated {
        InflightArea::allocate(QUEUES, SIZE, DEVICE).unwrap()
    }

    /// Reopens the area as a restarted back-end would.
    fn reopen(a: &Allocated) -> Result<Arc<InflightArea>, InflightError> {
        let file = a.file.try_clone().unwrap();
        InflightArea::open(file, a.size, 0, (QUEUES, SIZE), DEVICE).map(Arc::new)
    }

    /// Queue 0 of `a` started at used index `used`, with `heads` taken in this order.
    fn taken(a: &Allocated, used: u16, heads: &[u16]) -> QueueInflight {
        let mut q = a.area.queue(0).unwrap();
        assert_eq!(q.recover(used, SIZE).unwrap().resubmit, Vec::<u16>::new());
        for &head in heads {
            q.fetched(head);
        }
        q
    }

    /// A driver's view: used ring index and what the device completed, per queue.
    fn complete(q: &mut QueueInflight, used: &mut u16, head: u16) {
        q.before_used(head);
        *used = used.wrapping_add(1);
        q.after_used(head, *used);
    }

    fn poke(a: &Allocated, offset: u64, bytes: &[u8]) {
        let mut f = a.file.try_clone().unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn desc_offset(queue: u16, index: u16) -> u64 {
        u64::from(queue) * queue_region_bytes(SIZE)
            + HEADER_BYTES
            + DESC_STATE_BYTES * u64::from(index)
    }

    #[test]
    fn layout_matches_the_spec() {
        assert_eq!(queue_region_bytes(128), 16 + 16 * 128 + 48);
        assert_eq!(queue_region_bytes(1), 64);
        let a = allocate();
        assert_eq!(a.size, 2 * queue_region_bytes(SIZE));
        let mut bytes = Vec::new();
        a.file.try_clone().unwrap().read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, a.size);
        let second = queue_region_bytes(SIZE) as usize;
        for base in [0, second] {
            assert_eq!(&bytes[base + 8..base + 12], &[1, 0, SIZE as u8, 0]);
        }
        let mut q = a.area.queue(1).unwrap();
        q.recover(0, SIZE).unwrap();
        q.fetched(3);
        q.fetched(5);
        a.file
            .try_clone()
            .unwrap()
            .seek(SeekFrom::Start(0))
            .unwrap();
        let mut bytes = Vec::new();
        let mut f = a.file.try_clone().unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut bytes).unwrap();
        let d5 = desc_offset(1, 5) as usize;
        assert_eq!(bytes[d5], 1, "inflight byte");
        assert_eq!(&bytes[d5 + 8..d5 + 16], &1u64.to_le_bytes(), "counter");
        q.before_used(5);
        q.after_used(5, 1);
        let mut f = a.file.try_clone().unwrap();
        let mut header = [0u8; 16];
        f.seek(SeekFrom::Start(second as u64)).unwrap();
        f.read_exact(&mut header).unwrap();
        assert_eq!(&header[12..16], &[5, 0, 1, 0], "last_batch_head, used_idx");
        assert!(a.area.queue(2).is_none());
    }

    #[test]
    fn out_of_order_completions_are_resubmitted_in_fetch_order() {
        let a = allocate();
        let mut q = taken(&a, 0, &[6, 1, 4, 2]);
        let mut used = 0u16;
        // The second and fourth complete first; then the back-end dies.
        complete(&mut q, &mut used, 1);
        complete(&mut q, &mut used, 2);
        drop(q);
        let area = reopen(&a).unwrap();
        let mut q = area.queue(0).unwrap();
        let r = q.recover(used, SIZE).unwrap();
        assert_eq!(r.resubmit, vec![6, 4]);
        // A plain rewind would resume at avail index 2 and take 4 and 2 (again); the area says
        // two requests are still out, so new ones start at 4.
        assert_eq!(r.next_avail, 4);
        // New requests get counters after the old ones.
        q.fetched(7);
        let r = area.queue(0).unwrap().recover(used, SIZE).unwrap();
        assert_eq!(r.resubmit, vec![6, 4, 7]);
        // The other queue saw nothing.
        let r = area.queue(1).unwrap().recover(0, SIZE).unwrap();
        assert_eq!(r.resubmit, Vec::<u16>::new());
    }

    #[test]
    fn a_crash_between_used_index_and_clearing_is_repaired() {
        let a = allocate();
        taken(&a, 10, &[3, 0]).before_used(0);
        // The used element and index went out (the ring says 11), then the back-end died
        // before clearing descriptor 0.
        let mut q = reopen(&a).unwrap().queue(0).unwrap();
        let r = q.recover(11, SIZE).unwrap();
        assert_eq!(r.resubmit, vec![3]);
        assert_eq!(r.next_avail, 12);
        // Had it died before the used index moved, 0 would still be in flight.
        let b = allocate();
        taken(&b, 10, &[3, 0]).before_used(0);
        let r = reopen(&b)
            .unwrap()
            .queue(0)
            .unwrap()
            .recover(10, SIZE)
            .unwrap();
        assert_eq!(r.resubmit, vec![3, 0]);
    }

    #[test]
    fn used_index_wraps() {
        let a = allocate();
        let mut used = u16::MAX;
        let mut q = taken(&a, used, &[2, 5]);
        complete(&mut q, &mut used, 5);
        let r = reopen(&a)
            .unwrap()
            .queue(0)
            .unwrap()
            .recover(used, SIZE)
            .unwrap();
        assert_eq!((r.resubmit, r.next_avail), (vec![2], 1));
    }

    #[test]
    fn bad_shapes_and_files_are_refused() {
        let a = allocate();
        let file = || a.file.try_clone().unwrap();
        let open = |size, offset, n, qs| InflightArea::open(file(), size, offset, (n, qs), DEVICE);
        assert!(matches!(
            open(a.size, 0, 3, SIZE),
            Err(InflightError::Shape { .. })
        ));
        assert!(matches!(
            open(a.size, 0, 1, SIZE * 2),
            Err(InflightError::Shape { .. })
        ));
        assert!(matches!(
            open(a.size, 0, 0, SIZE),
            Err(InflightError::Shape { .. })
        ));
        assert!(matches!(
            open(a.size - 1, 0, QUEUES, SIZE),
            Err(InflightError::TooSmall { .. })
        ));
        assert!(matches!(
            open(a.size, 64, QUEUES, SIZE),
            Err(InflightError::Unaligned(64))
        ));
        assert!(matches!(
            open(a.size, 4096, QUEUES, SIZE),
            Err(InflightError::PastEnd { .. })
        ));
        // A regular file cannot be sealed.
        let path = std::env::temp_dir().join(format!("pvio-inflight-{}", std::process::id()));
        let plain = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        plain.set_len(a.size).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            InflightArea::open(plain, a.size, 0, (QUEUES, SIZE), DEVICE),
            Err(InflightError::Unsealed(_))
        ));
        // An unsealed memfd is sealed on the way in.
        let fd = memfd_create("t", MFdFlags::MFD_ALLOW_SEALING).unwrap();
        let f = File::from(fd);
        f.set_len(a.size).unwrap();
        InflightArea::open(f.try_clone().unwrap(), a.size, 0, (QUEUES, SIZE), DEVICE).unwrap();
        assert!(f.set_len(1).is_err(), "sealed against shrinking");
    }

    #[test]
    fn corrupted_regions_are_refused() {
        let cases: Vec<(&str, u64, Vec<u8>)> = vec![
            ("version", 8, vec![7, 0]),
            ("desc_num", 10, vec![SIZE as u8 + 1, 0]),
            ("inflight byte", desc_offset(0, 2), vec![2]),
        ];
        for (what, offset, bytes) in cases {
            let a = allocate();
            poke(&a, offset, &bytes);
            assert!(reopen(&a).is_err(), "{what}");
        }
        // Two heads in flight with the same counter.
        let a = allocate();
        for index in [1, 2] {
            poke(&a, desc_offset(0, index), &[1]);
        }
        assert!(matches!(
            reopen(&a),
            Err(InflightError::DuplicateCounter { .. })
        ));
        // A counter that cannot go on.
        let a = allocate();
        poke(&a, desc_offset(1, 0), &[1]);
        poke(&a, desc_offset(1, 0) + 8, &u64::MAX.to_le_bytes());
        assert!(matches!(
            reopen(&a),
            Err(InflightError::CounterOverflow { .. })
        ));
    }

    #[test]
    fn recovery_checks_against_the_virtqueue() {
        let a = allocate();
        // Head 6 in flight, but the virtqueue now has 4 descriptors.
        taken(&a, 0, &[6]);
        let area = reopen(&a).unwrap();
        assert!(matches!(
            area.queue(0).unwrap().recover(0, 4),
            Err(InflightError::HeadPastQueue { index: 6, .. })
        ));
        assert!(matches!(
            area.queue(0).unwrap().recover(0, SIZE * 2),
            Err(InflightError::QueueTooLarge { .. })
        ));
        // A last_batch_head past the virtqueue while the used index moved.
        poke(&a, 12, &[200, 0]);
        assert!(matches!(
            area.queue(0).unwrap().recover(1, SIZE),
            Err(InflightError::HeadPastQueue { index: 200, .. })
        ));
        // The same area is still good for the right virtqueue.
        poke(&a, 12, &[0, 0]);
        let r = area.queue(0).unwrap().recover(0, SIZE).unwrap();
        assert_eq!(r.resubmit, vec![6]);
    }

    #[test]
    fn an_area_zeroed_by_the_front_end_starts_afresh() {
        let a = allocate();
        poke(&a, 0, &vec![0u8; a.size as usize]);
        let area = reopen(&a).unwrap();
        let r = area.queue(1).unwrap().recover(42, SIZE).unwrap();
        assert_eq!((r.resubmit, r.next_avail), (Vec::<u16>::new(), 42));
    }
}
