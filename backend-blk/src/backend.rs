//! The vhost-user back-end: answers the control path (features, configuration space, queue
//! stop and reset) and dispatches worker-thread events to the per-queue [`QueueWorker`]s.
//!
//! Queue `i` is served by vhost-user-backend's worker thread `i` alone
//! ([`DeviceBackend::queues_per_thread`]), which also watches that queue's io_uring
//! completion eventfd. A fresh [`BlkBackend`] is made for every front-end connection.

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use log::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_daemon::backend::{DeviceBackend, ExtraEvent};
use vhost_daemon::memory::{GuestRamAtomic, Vring};
use vmm_sys_util::epoll::EventSet;

use crate::device::BlockDevice;
use crate::driver::QueueError;
use crate::inflight::{DeviceQueues, InflightArea};
use crate::worker::QueueWorker;

/// Failure to set up the back-end for a connection.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A queue's I/O engine (io_uring, network connection) could not be set up.
    #[error("queue {queue}: {source}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// Why.
        source: QueueError,
    },
}

/// virtio-blk over vhost-user, one [`QueueWorker`] per queue.
pub struct BlkBackend {
    device: Arc<BlockDevice>,
    workers: Vec<Mutex<QueueWorker>>,
    /// The back-end request channel (VHOST_USER_SET_BACKEND_REQ_FD), once the front-end
    /// opened it; the daemon holds a weak reference to notify configuration changes.
    backend_req: Arc<Mutex<Option<Backend>>>,
}

/// Where a connection keeps its back-end request channel.
pub type ChannelSlot = Mutex<Option<Backend>>;

impl BlkBackend {
    /// Creates the queue workers (one io_uring each) for a new connection; `mem` must be the
    /// guest memory handle given to the `VhostUserDaemon` too.
    ///
    /// # Errors
    /// [`BackendError::Queue`] when a queue's I/O engine cannot be set up.
    pub fn new(device: Arc<BlockDevice>, mem: GuestRamAtomic) -> Result<BlkBackend, BackendError> {
        let workers = (0..device.num_queues())
            .map(|queue| {
                QueueWorker::new(queue, device.clone(), mem.clone())
                    .map(Mutex::new)
                    .map_err(|source| BackendError::Queue { queue, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(BlkBackend {
            device,
            workers,
            backend_req: Arc::new(Mutex::new(None)),
        })
    }

    /// The `device_event` of the io_uring completion eventfds: past the range vhost-user-backend
    /// reserves for queues and its exit event.
    fn completion_event(&self) -> u16 {
        self.device.num_queues() + 1
    }

    /// Waits for the in-flight requests of every queue and completes them.
    pub fn drain(&self) {
        for worker in &self.workers {
            lock(worker).drain();
        }
    }

    /// The device's queue count and size, which bound an inflight area.
    fn device_queues(&self) -> DeviceQueues {
        DeviceQueues {
            count: self.device.num_queues(),
            max_size: self.device.queue_size(),
        }
    }

    /// Hands each queue worker its part of `area`.
    fn use_inflight(&self, area: &Arc<InflightArea>) {
        for (queue, worker) in (0u16..).zip(&self.workers) {
            lock(worker).set_inflight(area.queue(queue));
        }
    }

    /// This connection's back-end request channel, for [`notify_config_change`] while the
    /// connection lasts.
    pub fn channel_slot(&self) -> Weak<ChannelSlot> {
        Arc::downgrade(&self.backend_req)
    }

    /// Requests in flight, summed over the queues.
    pub fn in_flight(&self) -> usize {
        self.workers.iter().map(|w| lock(w).in_flight()).sum()
    }
}

/// Tells the front-end of `slot`'s connection that the configuration space changed
/// (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG), e.g. the capacity after a resize; waits for its ack
/// when REPLY_ACK was negotiated.
///
/// # Errors
/// The front-end did not open the back-end request channel, or the message failed.
pub fn notify_config_change(slot: &ChannelSlot) -> io::Result<()> {
    let channel = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match channel {
        Some(channel) => channel.handle_config_change().map(drop),
        None => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the front-end did not open the back-end request channel",
        )),
    }
}

/// Locks a worker; a worker whose thread panicked is still drained rather than abandoned.
fn lock(worker: &Mutex<QueueWorker>) -> MutexGuard<'_, QueueWorker> {
    worker.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DeviceBackend for BlkBackend {
    fn num_queues(&self) -> usize {
        usize::from(self.device.num_queues())
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.queue_size())
    }

    fn features(&self) -> u64 {
        self.device.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.device.protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        // Each vring's Queue tracks VIRTIO_RING_F_EVENT_IDX itself.
        debug!("VIRTIO_RING_F_EVENT_IDX negotiated: {enabled}");
    }

    fn config_space(&self) -> Vec<u8> {
        self.device.config_space()
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        debug!("back-end request channel open");
        *self
            .backend_req
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(backend);
    }

    fn update_memory(&self, _mem: GuestRamAtomic) -> io::Result<()> {
        // The workers load the same GuestMemoryAtomic for each batch; requests in flight keep
        // their own snapshot mapped.
        debug!("guest memory table updated");
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn get_inflight_fd(
        &self,
        inflight: &VhostUserInflight,
    ) -> io::Result<(VhostUserInflight, File)> {
        let allocated = InflightArea::allocate(
            inflight.num_queues,
            inflight.queue_size,
            self.device_queues(),
        )
        .map_err(|e| {
            warn!("VHOST_USER_GET_INFLIGHT_FD refused: {e}");
            io::Error::other(e)
        })?;
        info!(
            "inflight area of {} bytes for {} queue(s) of {} descriptors",
            allocated.size, inflight.num_queues, inflight.queue_size
        );
        self.use_inflight(&allocated.area);
        let reply =
            VhostUserInflight::new(allocated.size, 0, inflight.num_queues, inflight.queue_size);
        Ok((reply, allocated.file))
    }

    fn set_inflight_fd(&self, inflight: &VhostUserInflight, file: File) -> io::Result<()> {
        let area = InflightArea::open(
            file,
            inflight.mmap_size,
            inflight.mmap_offset,
            (inflight.num_queues, inflight.queue_size),
            self.device_queues(),
        )
        .map_err(|e| {
            warn!("VHOST_USER_SET_INFLIGHT_FD refused: {e}");
            io::Error::other(e)
        })?;
        info!(
            "inflight area handed back: {} queue(s) of {} descriptors",
            area.num_queues(),
            area.queue_size()
        );
        self.use_inflight(&Arc::new(area));
        Ok(())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(worker) = usize::try_from(queue_index)
            .ok()
            .and_then(|i| self.workers.get(i))
        {
            lock(worker).drain();
        }
        Ok(())
    }

    fn reset_device(&self) {
        self.drain();
    }

    /// Queue `i`'s io_uring completion eventfd joins worker thread `i`.
    fn extra_events(&self) -> Vec<ExtraEvent> {
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(thread, worker)| {
                Some(ExtraEvent {
                    thread,
                    fd: lock(worker).completion_fd()?,
                    events: EventSet::IN,
                    device_event: self.completion_event(),
                })
            })
            .collect()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) {
        let Some(worker) = self.workers.get(thread_id) else {
            warn!("event {device_event} for unknown worker thread {thread_id}");
            return;
        };
        let mut worker = lock(worker);
        if device_event == self.completion_event() {
            worker.process_completions();
        } else if let Some(vring) = vrings.get(usize::from(device_event)) {
            worker.process_queue(vring);
        } else {
            warn!("worker thread {thread_id}: unexpected event {device_event}");
        }
    }

    fn disconnected(&self) {
        let in_flight = self.in_flight();
        if in_flight > 0 {
            log::info!("waiting for {in_flight} in-flight request(s)");
        }
        self.drain();
        self.device.disk().front_end_left();
    }
}
