//! One request queue's data path: pop descriptor chains, parse them, submit their I/O to this
//! queue's io_uring, complete them into the used ring and notify the driver once per batch.
//!
//! Data moves with READV/WRITEV whose iovecs point straight into guest memory (a buffer that
//! crosses guest memory regions becomes several iovecs). A transfer that completes short, or
//! that has more iovecs than one `readv` takes (`UIO_MAXIOV`), is resubmitted for the rest.
//! Each in-flight request owns a load guard of the guest memory it points into, so a
//! VHOST_USER_SET_MEM_TABLE or REM_MEM_REG cannot unmap it while the kernel may still touch it.
//!
//! Guest memory is reached through vhost-daemon's [`GuestView`] of the request's memory
//! snapshot: one region lookup per access and no copy of the dirty bitmap, for virtio-queue's
//! descriptor walk, the header, the iovecs, the status byte and the used ring alike.
//!
//! Dirty-page logging (live migration, vhost-user.rst "Migration"): guest memory carries
//! vhost-daemon's `DirtyBitmap`, so writes through the view (status bytes, GET_ID data,
//! used-ring entries) mark their pages in the front-end's log by themselves. The storage's
//! writes for a read do not pass through it: a read keeps its guest buffers and marks them
//! once when it completes, before the chain is put in the used ring.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, log, trace, warn, Level};
use vhost_daemon::view::GuestView;
use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use crate::device::BlockDevice;
use crate::driver::{IoVecs, Op, QueueDriver, QueueError, QueueIo};
use crate::image::SECTOR_SIZE;
use crate::inflight::QueueInflight;
use crate::request::{self, GuestRange, Parsed, Ranges, Rejected, Request, RequestError};
use crate::status::Status;
use vhost_daemon::memory::{GuestRam, GuestRamAtomic, GuestRamGuard, Vring};
use vhost_daemon::ring::Kick;
use vhost_daemon::uring::{Completion, Slab};

/// How often an operation that fails with EAGAIN or EINTR is tried again before IOERR.
const MAX_RETRIES: u8 = 8;

/// Longest a worker busy-polls for one event before it goes back to its event loop.
const MAX_POLL_PER_EVENT: Duration = Duration::from_millis(2);

/// A request handed to io_uring and not yet completed.
struct InFlight {
    head_index: u16,
    status: GuestAddress,
    /// Bytes written to device-writable buffers when the request succeeds (IN data).
    data_written: u32,
    retries: u8,
    op: Op,
    /// Guest buffers the storage writes (a read's): marked in the dirty log at completion.
    dirty: Ranges,
    /// Keeps the guest memory that `op` points into mapped.
    mem: GuestRamGuard,
}

/// What a completion means for its request.
enum Progress {
    /// Submit the next part.
    Again,
    /// Complete with this status.
    Done(Status),
}

impl InFlight {
    /// The end of the image range the operation touches, bytes (`None` for a flush).
    fn end(&self) -> Option<u64> {
        match &self.op {
            Op::Transfer {
                offset, remaining, ..
            } => Some(offset.saturating_add(*remaining)),
            Op::Discard { offset, len } | Op::WriteZeroes { offset, len, .. } => {
                Some(offset.saturating_add(*len))
            }
            Op::Flush => None,
        }
    }

    /// Accounts for a completion with `result` (bytes or `-errno`).
    fn advance(&mut self, result: i32) -> Progress {
        if result == -libc::EAGAIN || result == -libc::EINTR {
            self.retries += 1;
            return if self.retries <= MAX_RETRIES {
                Progress::Again
            } else {
                Progress::Done(Status::IoErr)
            };
        }
        if result < 0 {
            return Progress::Done(Status::from_errno(-result));
        }
        let Op::Transfer {
            iovecs,
            next,
            offset,
            remaining,
            ..
        } = &mut self.op
        else {
            return Progress::Done(Status::Ok);
        };
        // result >= 0 here.
        let done = (result as u64).min(*remaining);
        *remaining -= done;
        *offset += done;
        consume(&mut iovecs.0, next, done);
        if *remaining == 0 {
            Progress::Done(Status::Ok)
        } else if done == 0 {
            // End of file before the end of the request: the image shrank under us.
            Progress::Done(Status::IoErr)
        } else {
            Progress::Again
        }
    }
}

/// Drops `bytes` from the front of `iovecs[*next..]`.
fn consume(iovecs: &mut [libc::iovec], next: &mut usize, mut bytes: u64) {
    while bytes > 0 {
        let Some(iov) = iovecs.get_mut(*next) else {
            return;
        };
        let len = iov.iov_len as u64;
        if bytes >= len {
            bytes -= len;
            *next += 1;
        } else {
            // bytes < len, which is a usize.
            iov.iov_base = iov.iov_base.wrapping_byte_add(bytes as usize);
            iov.iov_len -= bytes as usize;
            bytes = 0;
        }
    }
}

/// How a parsed request proceeds.
enum Start {
    /// Complete now with this status and this many bytes written to device-writable buffers.
    Done(Status, u32),
    /// Submit this operation; on success the request wrote this many bytes into `dirty`.
    Submit {
        op: Op,
        data_written: u32,
        dirty: Ranges,
    },
}

/// The state of one request queue, driven by its worker thread (and, to stop the queue, by the
/// vhost-user control thread, under the back-end's per-queue mutex).
pub struct QueueWorker {
    queue_index: u16,
    device: Arc<BlockDevice>,
    mem: GuestRamAtomic,
    /// Where the requests' operations go (the disk's driver).
    io: QueueIo,
    inflight: Slab<InFlight>,
    /// The vring this worker serves, remembered from the first kick.
    vring: Option<Vring>,
    /// Used entries were added since the last notification decision.
    used_added: bool,
    completions: Vec<Completion>,
    /// iovec arrays of finished transfers, cleared, for the next ones: a request allocates
    /// nothing once the queue has run at its depth.
    spare_iovecs: Vec<IoVecs>,
    /// Inflight I/O tracking, when the front-end set up an inflight area.
    tracker: Option<QueueInflight>,
    /// The queue (re)started: bring the inflight area in line and resubmit before going on.
    needs_recovery: bool,
}

impl QueueWorker {
    /// A worker for queue `queue_index` with an I/O engine (the file driver's io_uring, ...) of
    /// `device.queue_size()` entries (at most one operation per descriptor chain is in flight,
    /// so it never overflows).
    ///
    /// # Errors
    /// [`QueueError`] when the engine cannot be set up.
    pub fn new(
        queue_index: u16,
        device: Arc<BlockDevice>,
        mem: GuestRamAtomic,
    ) -> Result<QueueWorker, QueueError> {
        let entries = u32::from(device.queue_size()).max(2);
        Ok(QueueWorker {
            queue_index,
            io: device.disk().queue_io(entries)?,
            inflight: Slab::with_capacity(entries as usize),
            completions: Vec::with_capacity(2 * entries as usize),
            spare_iovecs: Vec::with_capacity(entries as usize),
            device,
            mem,
            vring: None,
            used_added: false,
            tracker: None,
            needs_recovery: true,
        })
    }

    /// Tracks this queue's requests in `tracker` from now on (VHOST_USER_GET_INFLIGHT_FD or
    /// SET_INFLIGHT_FD); the next kick first resubmits what the area says is in flight.
    pub fn set_inflight(&mut self, tracker: Option<QueueInflight>) {
        self.tracker = tracker;
        self.needs_recovery = true;
    }

    /// The descriptor the driver makes readable for completions.
    pub fn completion_fd(&self) -> Option<RawFd> {
        self.io.completion_fd()
    }

    /// Number of requests waiting for the kernel.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Handles a kick: takes every available descriptor chain, submits their I/O with one
    /// `io_uring_enter` and completes what is already done, then busy-polls the available ring
    /// and the completions for [`BlockDevice::poll`] after the last work (notifications stay
    /// off meanwhile, so the driver does not kick); then re-enables notifications and looks
    /// again until the available ring is really empty (with VIRTIO_RING_F_EVENT_IDX this also
    /// publishes avail_event).
    pub fn process_queue(&mut self, vring: &Vring) {
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
        if std::mem::take(&mut self.needs_recovery) {
            self.recover(vring);
        }
        let started = Instant::now();
        let mut kick = Kick::default();
        loop {
            if let Err(e) = vring.disable_notification() {
                warn!(
                    "queue {}: cannot disable notifications: {e}",
                    self.queue_index
                );
            }
            let took = self.take_available(vring, &mut kick) > 0;
            self.run_ring();
            self.poll(vring, started, &mut kick);
            if !kick.go_round_again(vring, &self.mem.memory(), took, "request queue") {
                break;
            }
        }
    }

    /// Starts every chain of the available ring, as many as `kick`'s budget allows; returns
    /// how many.
    fn take_available(&mut self, vring: &Vring, kick: &mut Kick) -> usize {
        let mem = self.mem.memory();
        let view = GuestView::new(&mem);
        let mut taken = 0;
        while kick.step() {
            // The vring lock must be released before `start` adds used entries.
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(&view);
            let Some(chain) = chain else { break };
            if let Some(tracker) = &mut self.tracker {
                tracker.fetched(chain.head_index());
            }
            self.start(chain, &mem);
            taken += 1;
        }
        taken
    }

    /// Busy-polls the available ring and the completions until nothing came for
    /// [`BlockDevice::poll`]. Gives up once the event that started at `started` has been served
    /// for [`MAX_POLL_PER_EVENT`], so the control path (which waits for this worker's lock)
    /// and the worker's other events get their turn. Chains taken count against `kick`.
    fn poll(&mut self, vring: &Vring, started: Instant, kick: &mut Kick) {
        let window = self.device.poll();
        if window.is_zero() {
            return;
        }
        let mut last_work = Instant::now();
        loop {
            let taken = self.take_available(vring, kick);
            let completed = self.run_ring();
            let now = Instant::now();
            if taken > 0 || completed {
                last_work = now;
            } else if now.duration_since(last_work) >= window {
                return;
            }
            if now.duration_since(started) >= MAX_POLL_PER_EVENT {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Handles the completion descriptor: reaps and completes finished requests.
    pub fn process_completions(&mut self) {
        self.io.on_event();
        self.run_ring();
    }

    /// At queue start with an inflight area: brings the area in line with the used ring,
    /// resubmits the requests it names in the order they were taken, and goes on from the used
    /// index plus their number (vhost-user.rst "Inflight I/O tracking"). A bad area is logged
    /// and tracking stops for this queue; the queue goes on from the front-end's base.
    fn recover(&mut self, vring: &Vring) {
        let Some(tracker) = &mut self.tracker else {
            return;
        };
        let mem = self.mem.memory();
        let Some((used_idx, size, desc_table)) = ring_position(vring, &mem, self.queue_index)
        else {
            return;
        };
        let recovery = match tracker.recover(used_idx, size) {
            Ok(recovery) => recovery,
            Err(e) => {
                warn!(
                    "queue {}: inflight area refused, not tracking this queue: {e}",
                    self.queue_index
                );
                self.tracker = None;
                return;
            }
        };
        {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            queue.set_next_avail(recovery.next_avail);
            queue.set_next_used(used_idx);
        }
        if !recovery.resubmit.is_empty() {
            info!(
                "queue {}: resubmitting {} request(s) left in flight: heads {:?}",
                self.queue_index,
                recovery.resubmit.len(),
                recovery.resubmit
            );
        }
        let view = GuestView::new(&mem);
        for head in recovery.resubmit {
            let chain = DescriptorChain::new(&view, GuestAddress(desc_table), size, head);
            self.start(chain, &mem);
        }
    }

    /// Waits until every in-flight request has completed and is in the used ring. Used when
    /// the front-end stops the queue (VHOST_USER_GET_VRING_BASE), resets the device, or leaves.
    pub fn drain(&mut self) {
        self.needs_recovery = true;
        while !self.inflight.is_empty() {
            if let Err(e) = self.io.wait_one() {
                warn!(
                    "queue {}: cannot wait for {} in-flight requests: {e}",
                    self.queue_index,
                    self.inflight.len()
                );
                return;
            }
            self.reap_once();
        }
        self.notify();
    }

    /// Parses one chain (walked over `mem`) and starts (or at once completes) its request.
    fn start(&mut self, chain: DescriptorChain<&GuestView<'_>>, mem: &GuestRamGuard) {
        let head = chain.head_index();
        let Parsed { request, status } = match request::parse(chain, &self.device.limits()) {
            Ok(parsed) => parsed,
            Err(rejected) => return self.reject(head, rejected, mem),
        };
        trace!("queue {}: chain {head}: {request:?}", self.queue_index);
        match self.plan(request, mem) {
            Start::Done(result, written) => self.complete(head, status, result, written, mem),
            Start::Submit {
                op,
                data_written,
                dirty,
            } => {
                let key = self.inflight.insert(InFlight {
                    head_index: head,
                    status,
                    data_written,
                    retries: 0,
                    op,
                    dirty,
                    mem: mem.clone(),
                });
                self.push(key);
            }
        }
    }

    /// Completes a chain that cannot be served: status byte (if any) and used entry.
    fn reject(&mut self, head: u16, rejected: Rejected, mem: &GuestRam) {
        let level = match rejected.error {
            RequestError::Unsupported(_) => Level::Debug,
            _ => Level::Warn,
        };
        log!(
            level,
            "queue {}: descriptor chain {head}: {}",
            self.queue_index,
            rejected.error
        );
        let result = Status::from(&rejected.error);
        match rejected.status {
            Some(addr) => self.complete(head, addr, result, 0, mem),
            None => self.add_used(head, 0, mem),
        }
    }

    /// Turns a request into a driver operation, or completes it at once.
    fn plan(&mut self, request: Request, mem: &GuestRam) -> Start {
        match request {
            Request::Read { sector, buffers } => self.plan_transfer(false, sector, buffers, mem),
            Request::Write { sector, buffers } => self.plan_transfer(true, sector, buffers, mem),
            // Without a flush capability writes are durable when they complete.
            Request::Flush if !self.device.capabilities().flush => Start::Done(Status::Ok, 0),
            Request::Flush => Start::Submit {
                op: Op::Flush,
                data_written: 0,
                dirty: Ranges::new(),
            },
            Request::GetId { buffers } => match write_ranges(mem, &buffers, self.device.serial()) {
                Some(written) => Start::Done(Status::Ok, written),
                None => Start::Done(Status::IoErr, 0),
            },
            Request::Discard { sector, sectors } => {
                plan_range(sector, sectors, |offset, len| Op::Discard { offset, len })
            }
            Request::WriteZeroes {
                sector,
                sectors,
                unmap,
            } => plan_range(sector, sectors, |offset, len| Op::WriteZeroes {
                offset,
                len,
                unmap,
            }),
        }
    }

    fn plan_transfer(
        &mut self,
        write: bool,
        sector: u64,
        buffers: Ranges,
        mem: &GuestRam,
    ) -> Start {
        let remaining = request::total(&buffers);
        if remaining == 0 {
            return Start::Done(Status::Ok, 0);
        }
        let mut iovecs = self.spare_iovecs.pop().unwrap_or(IoVecs(Vec::new()));
        if host_iovecs(GuestView::new(mem), &buffers, &mut iovecs.0).is_none() {
            self.recycle(iovecs);
            warn!(
                "queue {}: guest buffers vanished from guest memory",
                self.queue_index
            );
            return Start::Done(Status::IoErr, 0);
        }
        // The parser checked sector + length against the capacity, so this cannot overflow.
        let offset = sector * SECTOR_SIZE;
        let fd = self.device.disk().file().map_or(-1, |image| {
            image.fd_for(
                offset,
                iovecs
                    .0
                    .iter()
                    .map(|v| (v.iov_base as u64, v.iov_len as u64)),
            )
        });
        // A chain's total length fits in u32 (virtio-queue bounds it).
        let data_written = if write {
            0
        } else {
            u32::try_from(remaining).unwrap_or(u32::MAX)
        };
        let op = Op::Transfer {
            write,
            fd,
            iovecs,
            next: 0,
            offset,
            remaining,
        };
        // The storage writes a read's buffers, which the dirty log must learn at completion.
        let dirty = if write { Ranges::new() } else { buffers };
        Start::Submit {
            op,
            data_written,
            dirty,
        }
    }

    /// Queues the operation of in-flight entry `key`; fails the request if that is impossible.
    fn push(&mut self, key: usize) {
        let Some(entry) = self.inflight.get_mut(key) else {
            return;
        };
        // SAFETY: the entry at `key` owns the iovec array (its heap buffer does not move when
        // the slab grows) and the guard that keeps the guest memory behind the iovecs mapped;
        // it leaves the slab only when the completion tagged `key` is reaped, or just below if
        // the driver never took the operation.
        if let Err(e) = unsafe { self.io.push(key, &entry.op) } {
            warn!("queue {}: cannot queue I/O: {e}", self.queue_index);
            if let Some(entry) = self.inflight.remove(key) {
                self.finish(entry, Status::IoErr);
            }
        }
    }

    /// Submits queued operations, completes finished ones until none is left, then notifies;
    /// returns whether any completed.
    fn run_ring(&mut self) -> bool {
        let mut any = false;
        loop {
            if let Err(e) = self.io.submit() {
                warn!("queue {}: submit failed: {e}", self.queue_index);
            }
            if !self.reap_once() {
                break;
            }
            any = true;
        }
        self.notify();
        any
    }

    /// Handles every available completion; returns whether there was any.
    fn reap_once(&mut self) -> bool {
        let mut completions = std::mem::take(&mut self.completions);
        self.io.reap(&mut completions);
        let any = !completions.is_empty();
        for c in completions.drain(..) {
            self.on_completion(c);
        }
        self.completions = completions;
        any
    }

    fn on_completion(&mut self, c: Completion) {
        trace!("queue {}: completion {c:?}", self.queue_index);
        let key = usize::try_from(c.key).unwrap_or(usize::MAX);
        let Some(entry) = self.inflight.get_mut(key) else {
            warn!(
                "queue {}: completion for unknown operation {key}",
                self.queue_index
            );
            return;
        };
        let progress = entry.advance(c.result);
        let end = entry.end();
        match progress {
            Progress::Again => self.push(key),
            Progress::Done(mut status) => {
                let size = self.device.disk().size();
                if status == Status::Ok && end.is_some_and(|end| end > size) {
                    // The image shrank (SIGHUP) while this request was in flight.
                    warn!(
                        "queue {}: descriptor chain {}: past the end of the image ({size} \
                         bytes) after a resize",
                        self.queue_index, entry.head_index
                    );
                    status = Status::IoErr;
                } else if status != Status::Ok {
                    let why = if c.result < 0 {
                        std::io::Error::from_raw_os_error(-c.result).to_string()
                    } else {
                        "unexpected end of file".to_string()
                    };
                    warn!(
                        "queue {}: descriptor chain {}: I/O failed: {why}",
                        self.queue_index, entry.head_index
                    );
                }
                if let Some(entry) = self.inflight.remove(key) {
                    self.finish(entry, status);
                }
            }
        }
    }

    fn finish(&mut self, entry: InFlight, status: Status) {
        // The storage may have written any part of a read's buffers, even one that failed.
        let view = GuestView::new(&entry.mem);
        for range in &entry.dirty {
            view.mark_dirty(range.addr, range.len as usize);
        }
        let written = if status == Status::Ok {
            entry.data_written
        } else {
            0
        };
        self.complete(entry.head_index, entry.status, status, written, &entry.mem);
        if let Op::Transfer { iovecs, .. } = entry.op {
            self.recycle(iovecs);
        }
    }

    /// Keeps the iovec array of a finished (or never started) transfer for the next one.
    fn recycle(&mut self, mut iovecs: IoVecs) {
        iovecs.0.clear();
        self.spare_iovecs.push(iovecs);
    }

    /// Writes the status byte and adds the chain to the used ring with the bytes written to
    /// device-writable buffers (`written` data bytes plus the status byte).
    fn complete(
        &mut self,
        head: u16,
        addr: GuestAddress,
        status: Status,
        written: u32,
        mem: &GuestRam,
    ) {
        if let Err(e) = GuestView::new(mem).write_obj(status.byte(), addr) {
            warn!(
                "queue {}: cannot write the status byte at {:#x}: {e}",
                self.queue_index, addr.0
            );
        }
        self.add_used(head, written.saturating_add(1), mem);
    }

    /// Puts chain `head` in the used ring (in guest memory `mem`) with `len` bytes written.
    fn add_used(&mut self, head: u16, len: u32, mem: &GuestRam) {
        let Some(vring) = &self.vring else {
            warn!(
                "queue {}: no vring to complete chain {head}",
                self.queue_index
            );
            return;
        };
        if let Some(tracker) = &self.tracker {
            tracker.before_used(head);
        }
        let added = {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            queue
                .add_used(&GuestView::new(mem), head, len)
                .map(|()| queue.next_used())
        };
        match added {
            Ok(next_used) => {
                self.used_added = true;
                if let Some(tracker) = &self.tracker {
                    tracker.after_used(head, next_used);
                }
            }
            Err(e) => warn!(
                "queue {}: cannot add chain {head} to the used ring: {e}",
                self.queue_index
            ),
        }
    }

    /// Signals the driver once for everything added since the last call, if it wants it.
    fn notify(&mut self) {
        if !std::mem::take(&mut self.used_added) {
            return;
        }
        let Some(vring) = &self.vring else { return };
        let mem = self.mem.memory();
        let needed = vring
            .get_mut()
            .get_queue_mut()
            .needs_notification(&GuestView::new(&mem));
        match needed {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    warn!(
                        "queue {}: cannot signal the used ring: {e}",
                        self.queue_index
                    );
                }
            }
            Ok(false) => {}
            Err(e) => warn!("queue {}: cannot read used_event: {e}", self.queue_index),
        }
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        self.drain();
        if !self.inflight.is_empty() {
            // The kernel may still write into the guest memory these entries keep mapped:
            // leak them rather than unmap it under the kernel.
            std::mem::forget(std::mem::take(&mut self.inflight));
        }
    }
}

/// The used index the driver sees, the queue size and the descriptor table address of
/// `vring`; `None` (logged) when the used ring cannot be read.
fn ring_position(vring: &Vring, mem: &GuestRam, queue_index: u16) -> Option<(u16, u16, u64)> {
    let state = vring.get_ref();
    let queue = state.get_queue();
    match queue.used_idx(mem, Ordering::Acquire) {
        Ok(used_idx) => Some((used_idx.0, queue.size(), queue.desc_table())),
        Err(e) => {
            warn!("queue {queue_index}: cannot read the used index: {e}");
            None
        }
    }
}

/// A DISCARD or WRITE_ZEROES of `sectors` 512-byte sectors from `sector` as the operation
/// `op(offset, len)` (bytes); an empty range completes at once.
fn plan_range(sector: u64, sectors: u32, op: impl FnOnce(u64, u64) -> Op) -> Start {
    if sectors == 0 {
        return Start::Done(Status::Ok, 0);
    }
    // Checked against the capacity by the parser: no overflow.
    let op = op(sector * SECTOR_SIZE, u64::from(sectors) * SECTOR_SIZE);
    Start::Submit {
        op,
        data_written: 0,
        dirty: Ranges::new(),
    }
}

/// Appends the host iovecs of guest `buffers` to `iovecs`: one per guest memory region each
/// buffer touches; `None` when a buffer is no longer in guest memory.
fn host_iovecs(
    view: GuestView<'_>,
    buffers: &[GuestRange],
    iovecs: &mut Vec<libc::iovec>,
) -> Option<()> {
    for b in buffers {
        for slice in view.slices(b.addr, b.len as usize) {
            let slice = slice.ok()?;
            iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Some(())
}

/// Copies `data` into the front of `buffers` (as much as fits); returns the bytes written.
fn write_ranges(mem: &GuestRam, buffers: &[GuestRange], data: &[u8]) -> Option<u32> {
    let mut done = 0usize;
    for b in buffers {
        if done == data.len() {
            break;
        }
        let n = (b.len as usize).min(data.len() - done);
        GuestView::new(mem)
            .write_slice(&data[done..done + n], b.addr)
            .ok()?;
        done += n;
    }
    u32::try_from(done).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(base: usize, len: usize) -> libc::iovec {
        libc::iovec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        }
    }

    fn transfer(iovecs: Vec<libc::iovec>) -> InFlight {
        let ram = GuestRam::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let remaining = iovecs.iter().map(|v| v.iov_len as u64).sum();
        InFlight {
            head_index: 3,
            status: GuestAddress(0x10),
            data_written: 0,
            retries: 0,
            op: Op::Transfer {
                write: false,
                fd: 7,
                iovecs: IoVecs(iovecs),
                next: 0,
                offset: 4096,
                remaining,
            },
            dirty: Ranges::new(),
            mem: vm_memory::GuestMemoryAtomic::new(ram).memory(),
        }
    }

    fn state(f: &InFlight) -> (usize, u64, u64) {
        match &f.op {
            Op::Transfer {
                next,
                offset,
                remaining,
                ..
            } => (*next, *offset, *remaining),
            _ => unreachable!(),
        }
    }

    #[test]
    fn short_transfers_resume_where_they_stopped() {
        let mut f = transfer(vec![iov(0x1000, 512), iov(0x3000, 1024)]);
        assert!(matches!(f.advance(700), Progress::Again));
        assert_eq!(state(&f), (1, 4096 + 700, 836));
        let sqe = format!(
            "{:?}",
            crate::driver::file::sqe(&f.op, 9, 5, Default::default())
        );
        assert!(sqe.contains("user_data: 9"), "{sqe}");
        assert!(matches!(f.advance(836), Progress::Done(Status::Ok)));
    }

    #[test]
    fn end_of_file_errors_and_retries_are_bounded() {
        let mut f = transfer(vec![iov(0x1000, 512)]);
        assert!(matches!(f.advance(0), Progress::Done(Status::IoErr)), "EOF");
        let mut f = transfer(vec![iov(0x1000, 512)]);
        assert!(matches!(
            f.advance(-libc::EIO),
            Progress::Done(Status::IoErr)
        ));
        let mut f = transfer(vec![iov(0x1000, 512)]);
        assert!(matches!(
            f.advance(-libc::EOPNOTSUPP),
            Progress::Done(Status::Unsupp)
        ));
        let mut f = transfer(vec![iov(0x1000, 512)]);
        for _ in 0..MAX_RETRIES {
            assert!(matches!(f.advance(-libc::EAGAIN), Progress::Again));
        }
        assert!(matches!(
            f.advance(-libc::EAGAIN),
            Progress::Done(Status::IoErr)
        ));
    }

    #[test]
    fn more_iovecs_than_one_readv_takes_are_split() {
        use crate::driver::file::MAX_IOVECS_PER_OP;
        let many: Vec<_> = (0..MAX_IOVECS_PER_OP + 10)
            .map(|i| iov(0x1000 * (i + 1), 512))
            .collect();
        let mut f = transfer(many);
        let first = (MAX_IOVECS_PER_OP * 512) as i32;
        assert!(matches!(f.advance(first), Progress::Again));
        assert_eq!(
            state(&f),
            (MAX_IOVECS_PER_OP, 4096 + first as u64, 10 * 512)
        );
        assert!(matches!(f.advance(10 * 512), Progress::Done(Status::Ok)));
    }

    #[test]
    fn consume_walks_iovecs() {
        let mut v = vec![iov(0x1000, 512), iov(0x3000, 1024)];
        let mut next = 0;
        consume(&mut v, &mut next, 100);
        assert_eq!(
            (next, v[0].iov_base as usize, v[0].iov_len),
            (0, 0x1064, 412)
        );
        consume(&mut v, &mut next, 412);
        assert_eq!(next, 1);
        consume(&mut v, &mut next, 1000);
        assert_eq!(
            (next, v[1].iov_base as usize, v[1].iov_len),
            (1, 0x33e8, 24)
        );
        consume(&mut v, &mut next, 24);
        assert_eq!(next, 2);
        consume(&mut v, &mut next, 5);
        assert_eq!(next, 2, "past the end is ignored");
    }
}
