//! What a daemon implements ([`Device`] for the daemon's life, [`DeviceBackend`] for one
//! front-end connection) and the [`Backend`] wrapper that implements vhost-user-backend's
//! `VhostUserBackend` by forwarding to a [`DeviceBackend`].
//!
//! Everything vhost-user-protocol-wide lives in the wrapper, so protocol features are added in
//! one place: the protocol features offered are the device's set merged with
//! [`CORE_PROTOCOL_FEATURES`]; the configuration-space window is cut here.
//!
//! The wrapper also owns the worker threads' exit events. vhost-user-backend 0.24 takes the
//! `EventConsumer` of [`VhostUserBackend::exit_event`], turns it into a raw descriptor for its
//! epoll and never closes it: one leaked eventfd per worker thread per connection. The wrapper
//! creates each pair itself, keeps the consumer's descriptor ([`OwnedFd`]) and hands the library
//! a consumer that shares the same descriptor number; the library never closes it, the wrapper
//! closes it when it is dropped, which is after the library's worker threads and their epolls
//! (they hold the wrapper) are gone.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};

use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Backend as BackendChannel, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config;
use crate::dirty::DirtyLog;
use crate::memory::{GuestRamAtomic, Vring};
use crate::BoxError;

/// Protocol features the core implements for every device (vhost-user.rst): REPLY_ACK,
/// answered by the vhost crate's request handler; CONFIGURE_MEM_SLOTS (ADD_MEM_REG /
/// REM_MEM_REG / GET_MAX_MEM_SLOTS), the memory table kept by vhost-user-backend (regions past
/// the end of their file refused before they are mapped: vendor patch 7); LOG_SHMFD (SET_LOG_BASE), the
/// dirty-page log on the guest memory's [`crate::memory::DirtyBitmap`] (devices mark what the
/// kernel writes for them; regions added later are logged too, [`crate::dirty::DirtyLog`]);
/// RESET_DEVICE, forwarded to [`DeviceBackend::reset_device`].
pub const CORE_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(VhostUserProtocolFeatures::LOG_SHMFD)
    .union(VhostUserProtocolFeatures::RESET_DEVICE);

/// Virtio feature bits the core adds to every device's: VHOST_F_LOG_ALL (bit 26), the back-end
/// logs the pages it writes (vhost-user.rst "Migration").
pub const CORE_FEATURES: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// The daemon-wide device: makes a fresh [`DeviceBackend`] for each front-end connection and
/// implements the signal hooks.
pub trait Device: Send + Sync + 'static {
    /// The per-connection back-end.
    type Backend: DeviceBackend;

    /// Short name for thread names and logs ("backend-blk").
    fn name(&self) -> &str;

    /// A fresh back-end for a front-end connecting on socket `port` (index of the socket given
    /// to [`crate::daemon::Daemon::run`]), with guest memory `mem`.
    ///
    /// # Errors
    /// Whatever the device cannot set up (an io_uring, ...); the connection is refused.
    fn connect(&self, port: usize, mem: GuestRamAtomic) -> Result<Self::Backend, BoxError>;

    /// SIGHUP: re-read the device's configuration (default: nothing to re-read).
    fn reconfigure(&self) {}

    /// SIGUSR1: the device's counters, one line (logged by the core).
    fn stats(&self) -> String;

    /// Whether front-ends need the early SET_VRING_ENABLE [`crate::relay`] (QEMU's
    /// virtio-net sends it before SET_FEATURES). Default: no relay.
    fn early_enable_relay(&self) -> bool {
        false
    }

    /// The daemon is stopping and every connection has ended (flush what must be flushed).
    fn stopped(&self) {}
}

/// An extra descriptor for a worker thread's epoll (an io_uring completion eventfd, a TAP
/// queue): when it is ready, [`DeviceBackend::handle_event`] gets `device_event` on `thread`.
#[derive(Clone, Copy, Debug)]
pub struct ExtraEvent {
    /// Worker thread index ([`DeviceBackend::queues_per_thread`]).
    pub thread: usize,
    /// The descriptor; it must stay open while the connection lasts.
    pub fd: RawFd,
    /// The epoll events to watch.
    pub events: EventSet,
    /// The device event number: above [`DeviceBackend::num_queues`] (vhost-user-backend uses
    /// the queue indices and `num_queues` itself).
    pub device_event: u16,
}

/// The back-end of one front-end connection: the device part of vhost-user-backend's
/// `VhostUserBackend` (see its documentation for each method's message).
pub trait DeviceBackend: Send + Sync + 'static {
    /// Number of virtqueues.
    fn num_queues(&self) -> usize;
    /// Largest queue size the front-end may set.
    fn max_queue_size(&self) -> usize;
    /// Device feature bits offered (VHOST_USER_GET_FEATURES); the core adds [`CORE_FEATURES`].
    fn features(&self) -> u64;
    /// The features the driver acked (VHOST_USER_SET_FEATURES).
    fn acked_features(&self, _features: u64) {}
    /// The device's protocol features; merged with [`CORE_PROTOCOL_FEATURES`].
    fn protocol_features(&self) -> VhostUserProtocolFeatures;
    /// VIRTIO_RING_F_EVENT_IDX was negotiated or not.
    fn set_event_idx(&self, _enabled: bool) {}
    /// The whole configuration space (the core cuts the window the front-end asks for).
    fn config_space(&self) -> Vec<u8>;
    /// VHOST_USER_SET_CONFIG. Default: the configuration space is read-only.
    ///
    /// # Errors
    /// The error replied to the front-end.
    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        log::warn!(
            "front-end wrote {} bytes at offset {offset} of the read-only configuration space",
            buf.len()
        );
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    /// New guest memory table (the atomic the back-end holds is already updated).
    ///
    /// # Errors
    /// The error replied to the front-end.
    fn update_memory(&self, _mem: GuestRamAtomic) -> io::Result<()> {
        Ok(())
    }
    /// VHOST_USER_SET_BACKEND_REQ_FD: the channel for back-end requests to the front-end
    /// (VHOST_USER_PROTOCOL_F_BACKEND_REQ), e.g. configuration change notifications. Default:
    /// dropped.
    fn set_backend_req_fd(&self, _channel: BackendChannel) {}
    /// VHOST_USER_GET_INFLIGHT_FD (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): allocate the
    /// inflight I/O tracking area; returns its description and file. Default: not supported.
    ///
    /// # Errors
    /// The error replied to the front-end.
    fn get_inflight_fd(
        &self,
        _inflight: &VhostUserInflight,
    ) -> io::Result<(VhostUserInflight, File)> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// VHOST_USER_SET_INFLIGHT_FD: use the inflight area the front-end hands back (untrusted).
    /// Default: not supported.
    ///
    /// # Errors
    /// The error replied to the front-end.
    fn set_inflight_fd(&self, _inflight: &VhostUserInflight, _file: File) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    /// Queues served by each worker thread, as bit masks.
    fn queues_per_thread(&self) -> Vec<u64>;
    /// VHOST_USER_GET_VRING_BASE: queue `queue_index` stops.
    ///
    /// # Errors
    /// The error replied to the front-end.
    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        Ok(())
    }
    /// VHOST_USER_RESET_DEVICE / RESET_OWNER.
    fn reset_device(&self) {}
    /// An event on worker thread `thread_id`: a queue kick (`device_event` = the queue's index
    /// within the thread's vrings) or an [`ExtraEvent`]. Errors are logged, never returned (an
    /// error would end the worker thread for good).
    fn handle_event(&self, device_event: u16, evset: EventSet, vrings: &[Vring], thread_id: usize);
    /// Extra descriptors for the worker threads' epolls.
    fn extra_events(&self) -> Vec<ExtraEvent> {
        Vec::new()
    }
    /// The front-end left and the worker threads have stopped: finish in-flight work.
    fn disconnected(&self) {}
}

/// vhost-user-backend's `VhostUserBackend` for a [`DeviceBackend`].
pub struct Backend<B> {
    device: B,
    /// The consumers of the worker threads' exit events (see the module documentation).
    exit_consumers: Mutex<Vec<OwnedFd>>,
    /// Keeps regions added after VHOST_USER_SET_LOG_BASE logged.
    dirty_log: DirtyLog,
}

impl<B: DeviceBackend> Backend<B> {
    /// Wraps `device`.
    pub fn new(device: B) -> Backend<B> {
        Backend {
            device,
            exit_consumers: Mutex::new(Vec::new()),
            dirty_log: DirtyLog::default(),
        }
    }

    /// The device back-end.
    pub fn device(&self) -> &B {
        &self.device
    }

    fn new_exit_event(&self) -> io::Result<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        // SAFETY: `into_raw_fd` gives up the consumer's ownership of a descriptor just created,
        // which the OwnedFd now owns alone.
        let owned = unsafe { OwnedFd::from_raw_fd(consumer.into_raw_fd()) };
        // SAFETY: the library only registers this consumer's descriptor with its epoll and
        // turns it back into a raw number without closing it (vhost-user-backend 0.24
        // event_loop.rs, `VringEpollHandler::new`); `owned` stays the only owner that closes it.
        let shared = unsafe { EventConsumer::from_raw_fd(owned.as_raw_fd()) };
        self.exit_consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(owned);
        Ok((shared, notifier))
    }
}

impl<B: DeviceBackend> VhostUserBackend for Backend<B> {
    type Bitmap = crate::memory::DirtyBitmap;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.device.num_queues()
    }

    fn max_queue_size(&self) -> usize {
        self.device.max_queue_size()
    }

    fn features(&self) -> u64 {
        self.device.features() | CORE_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.device.acked_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.device.protocol_features() | CORE_PROTOCOL_FEATURES
    }

    fn set_event_idx(&self, enabled: bool) {
        self.device.set_event_idx(enabled);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config::window(&self.device.config_space(), offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.device.set_config(offset, buf)
    }

    fn update_memory(&self, mem: GuestRamAtomic) -> io::Result<()> {
        // vhost-user-backend has already installed the table; refusing it ends the session.
        if let Err(e) = self.dirty_log.follow(&mem) {
            log::warn!("refusing the front-end's memory table: {e}");
            return Err(e);
        }
        self.device.update_memory(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.device.queues_per_thread()
    }

    fn set_backend_req_fd(&self, channel: BackendChannel) {
        self.device.set_backend_req_fd(channel);
    }

    fn get_inflight_fd(
        &self,
        inflight: &VhostUserInflight,
    ) -> io::Result<(VhostUserInflight, File)> {
        self.device.get_inflight_fd(inflight)
    }

    fn set_inflight_fd(&self, inflight: &VhostUserInflight, file: File) -> io::Result<()> {
        self.device.set_inflight_fd(inflight, file)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.new_exit_event()
            .map_err(|e| log::error!("cannot create a worker exit event: {e}"))
            .ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.device.stop_vring(queue_index)
    }

    fn reset_device(&self) {
        self.device.reset_device();
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        self.device
            .handle_event(device_event, evset, vrings, thread_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl DeviceBackend for Nothing {
        fn num_queues(&self) -> usize {
            1
        }
        fn max_queue_size(&self) -> usize {
            8
        }
        fn features(&self) -> u64 {
            0
        }
        fn protocol_features(&self) -> VhostUserProtocolFeatures {
            VhostUserProtocolFeatures::CONFIG
        }
        fn config_space(&self) -> Vec<u8> {
            vec![1, 2]
        }
        fn queues_per_thread(&self) -> Vec<u64> {
            vec![1]
        }
        fn handle_event(&self, _: u16, _: EventSet, _: &[Vring], _: usize) {}
    }

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the flags of a descriptor number; a closed one fails.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// A device without inflight tracking refuses the messages (the forwarding to one that has
    /// it is exercised end to end by backend-blk's reconnect tests).
    #[test]
    fn inflight_messages_are_refused_by_default() {
        let msg = VhostUserInflight::new(64, 0, 1, 8);
        let plain = Backend::new(Nothing);
        let refused = plain.get_inflight_fd(&msg).map(drop);
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(io::ErrorKind::Unsupported)
        );
        let file = File::open("/dev/null").unwrap();
        let refused = plain.set_inflight_fd(&msg, file);
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(io::ErrorKind::Unsupported)
        );
    }

    #[test]
    fn merges_protocol_features_and_cuts_the_config_window() {
        let b = Backend::new(Nothing);
        assert_eq!(
            b.protocol_features(),
            VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::LOG_SHMFD
                | VhostUserProtocolFeatures::RESET_DEVICE
        );
        assert_eq!(
            b.features() & CORE_FEATURES,
            CORE_FEATURES,
            "VHOST_F_LOG_ALL"
        );
        assert_eq!(b.get_config(1, 3), vec![2, 0, 0]);
    }

    #[test]
    fn exit_events_are_closed_with_the_backend() {
        let b = Backend::new(Nothing);
        let consumers: Vec<RawFd> = (0..3)
            .map(|thread| {
                let (consumer, notifier) = b.exit_event(thread).unwrap();
                drop(notifier);
                // As vhost-user-backend 0.24 does: the consumer becomes a raw number, never
                // closed by the library.
                consumer.into_raw_fd()
            })
            .collect();
        assert!(
            consumers.iter().all(|&fd| is_open(fd)),
            "open while the back-end lives"
        );
        drop(b);
        assert!(
            consumers.iter().all(|&fd| !is_open(fd)),
            "no exit event outlives the back-end"
        );
    }
}
