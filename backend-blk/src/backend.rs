//! The vhost-user back-end: answers the control path (features, configuration space, queue
//! stop and reset) and dispatches worker-thread events to the per-queue [`QueueWorker`]s.
//!
//! Queue `i` is served by vhost-user-backend's worker thread `i` alone
//! ([`VhostUserBackend::queues_per_thread`]), which also watches that queue's io_uring
//! completion eventfd. A fresh [`BlkBackend`] is made for every front-end connection.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::device::BlockDevice;
use crate::uring::UringError;
use crate::worker::{GuestRamAtomic, QueueWorker, Vring};

/// Failure to set up the back-end for a connection.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A queue's io_uring could not be created.
    #[error("queue {queue}: {source}")]
    Uring {
        /// Queue index.
        queue: u16,
        /// Why.
        source: UringError,
    },
    /// A completion eventfd could not join its worker thread's epoll.
    #[error("queue {queue}: cannot watch the io_uring completion eventfd: {source}")]
    RegisterCompletions {
        /// Queue index.
        queue: usize,
        /// The OS error.
        source: io::Error,
    },
}

/// virtio-blk over vhost-user, one [`QueueWorker`] per queue.
pub struct BlkBackend {
    device: Arc<BlockDevice>,
    workers: Vec<Mutex<QueueWorker>>,
}

impl BlkBackend {
    /// Creates the queue workers (one io_uring each) for a new connection; `mem` must be the
    /// guest memory handle given to the `VhostUserDaemon` too.
    ///
    /// # Errors
    /// [`BackendError::Uring`] when a ring cannot be created.
    pub fn new(device: Arc<BlockDevice>, mem: GuestRamAtomic) -> Result<BlkBackend, BackendError> {
        let workers = (0..device.num_queues())
            .map(|queue| {
                QueueWorker::new(queue, device.clone(), mem.clone())
                    .map(Mutex::new)
                    .map_err(|source| BackendError::Uring { queue, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(BlkBackend { device, workers })
    }

    /// The `device_event` of the io_uring completion eventfds: past the range vhost-user-backend
    /// reserves for queues and its exit event.
    pub fn completion_event(&self) -> u16 {
        self.device.num_queues() + 1
    }

    /// Adds each queue's completion eventfd to the epoll of the worker thread serving it.
    ///
    /// # Errors
    /// [`BackendError::RegisterCompletions`] when `epoll_ctl` fails.
    pub fn register_completions(
        &self,
        handlers: &[Arc<VringEpollHandler<Arc<BlkBackend>>>],
    ) -> Result<(), BackendError> {
        for (queue, handler) in handlers.iter().enumerate() {
            let Some(worker) = self.workers.get(queue) else {
                break;
            };
            let fd = lock(worker).completion_fd();
            handler
                .register_listener(fd, EventSet::IN, u64::from(self.completion_event()))
                .map_err(|source| BackendError::RegisterCompletions { queue, source })?;
        }
        Ok(())
    }

    /// Waits for the in-flight requests of every queue and completes them.
    pub fn drain(&self) {
        for worker in &self.workers {
            lock(worker).drain();
        }
    }

    /// Requests in flight, summed over the queues.
    pub fn in_flight(&self) -> usize {
        self.workers.iter().map(|w| lock(w).in_flight()).sum()
    }
}

/// Locks a worker; a worker whose thread panicked is still drained rather than abandoned.
fn lock(worker: &Mutex<QueueWorker>) -> MutexGuard<'_, QueueWorker> {
    worker.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = BitmapMmapRegion;
    type Vring = Vring;

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

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.config_window(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        warn!(
            "front-end wrote {} bytes at offset {offset} of the read-only configuration space",
            buf.len()
        );
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }

    fn update_memory(&self, mem: GuestRamAtomic) -> io::Result<()> {
        // The workers load the same GuestMemoryAtomic for each batch; requests in flight keep
        // their own snapshot mapped. A refused table ends the session (vhost-user-backend).
        if let Err(e) = crate::memcheck::check_region_files(&mem.memory()) {
            warn!("refusing the front-end's memory table: {e}");
            return Err(e);
        }
        debug!("guest memory table updated");
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                warn!("cannot create a worker exit event: {e}");
                None
            }
        }
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

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Errors are logged, never returned: an error would end the worker thread for good.
        let Some(worker) = self.workers.get(thread_id) else {
            warn!("event {device_event} for unknown worker thread {thread_id}");
            return Ok(());
        };
        let mut worker = lock(worker);
        if device_event == self.completion_event() {
            worker.process_completions();
        } else if let Some(vring) = vrings.get(usize::from(device_event)) {
            worker.process_queue(vring);
        } else {
            warn!("worker thread {thread_id}: unexpected event {device_event}");
        }
        Ok(())
    }
}
