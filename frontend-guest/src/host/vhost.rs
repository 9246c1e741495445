//! The vhost-user control path of the front-end (vhost-user.rst): connecting with a deadline,
//! feature and protocol feature negotiation, the memory table, and vring setup and teardown.
//!
//! Messages go through `vhost::vhost_user::Frontend`. Once VHOST_USER_PROTOCOL_F_REPLY_ACK is
//! negotiated every message is sent with NEED_REPLY, so a request the back-end rejects fails
//! right there instead of breaking the next one. Every request runs under a [`Watchdog`] that
//! shuts the socket down if the back-end does not answer in time, so a silent back-end gives
//! [`Error::ControlTimeout`] instead of a hang (a socket read timeout cannot be used: the vhost
//! crate retries `EAGAIN` in a loop).

use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
    VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ram::HostRam;
use super::{Error, Result};
use crate::virtq::QueueLayout;

/// Protocol features the front-end uses when offered: MQ (GET_QUEUE_NUM), REPLY_ACK (errors
/// per message), CONFIG (GET_CONFIG), CONFIGURE_MEM_SLOTS (ADD_MEM_REG / REM_MEM_REG /
/// GET_MAX_MEM_SLOTS), LOG_SHMFD (SET_LOG_BASE with a shared-memory dirty log) and
/// RESET_DEVICE.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(VhostUserProtocolFeatures::LOG_SHMFD)
    .union(VhostUserProtocolFeatures::RESET_DEVICE);

/// The memory-slot protocol feature and its spec name.
const MEM_SLOTS: VhostUserProtocolFeatures = VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
const MEM_SLOTS_NAME: &str = "VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS";

/// Interval between connection attempts while the back-end's socket is not there yet.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Connection timing.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// How long to keep trying while the socket file is missing or refuses connections.
    pub connect_timeout: Duration,
    /// How long one vhost-user request may take, reply included.
    pub reply_timeout: Duration,
}

impl Default for ConnectOptions {
    /// 10 s to connect, 10 s per request.
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(10),
        }
    }
}

/// Shuts a socket down unless disarmed within a timeout, failing any request blocked on it.
#[derive(Debug)]
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts watching `sock` (a duplicate is kept) for `timeout`.
    ///
    /// # Errors
    /// [`Error::Socket`] if the socket cannot be duplicated.
    pub fn arm(sock: &UnixStream, timeout: Duration) -> Result<Self> {
        let sock = sock.try_clone().map_err(Error::Socket)?;
        let (stop, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&fired);
        let thread = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                    flag.store(true, Ordering::SeqCst);
                    let _ = sock.shutdown(Shutdown::Both);
                }
            })
            .map_err(Error::Socket)?;
        Ok(Watchdog {
            stop: Some(stop),
            thread: Some(thread),
            fired,
        })
    }

    /// Stops watching; returns true if the timeout had already fired and shut the socket down.
    pub fn disarm(mut self) -> bool {
        self.stop_thread();
        self.fired.load(Ordering::SeqCst)
    }

    fn stop_thread(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// An owned vhost-user session with one back-end.
pub struct VhostUserConnection {
    frontend: Frontend,
    /// A duplicate of the socket for the watchdog.
    sock: UnixStream,
    reply_timeout: Duration,
    offered_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    queue_num: Option<u64>,
}

impl std::fmt::Debug for VhostUserConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserConnection")
            .field(
                "offered_features",
                &format_args!("{:#x}", self.offered_features),
            )
            .field("protocol_features", &self.protocol_features)
            .field("queue_num", &self.queue_num)
            .finish()
    }
}

impl VhostUserConnection {
    /// Connects to the back-end listening on `path` (retrying until the socket exists and
    /// accepts, up to `opts.connect_timeout`), then sends VHOST_USER_SET_OWNER,
    /// VHOST_USER_GET_FEATURES and, if VHOST_USER_F_PROTOCOL_FEATURES is offered,
    /// GET/SET_PROTOCOL_FEATURES (MQ, REPLY_ACK, CONFIG as offered) and GET_QUEUE_NUM.
    /// `max_queues` bounds the queue indices used before GET_QUEUE_NUM is known.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Socket`], [`Error::Vhost`], [`Error::ControlTimeout`].
    pub fn connect(path: &Path, opts: &ConnectOptions, max_queues: u64) -> Result<Self> {
        Self::connect_with(path, opts, max_queues, VhostUserProtocolFeatures::empty())
    }

    /// As [`VhostUserConnection::connect`], also acking the protocol features in `extra` that
    /// the back-end offers (e.g. INFLIGHT_SHMFD, BACKEND_REQ).
    ///
    /// # Errors
    /// As [`VhostUserConnection::connect`].
    pub fn connect_with(
        path: &Path,
        opts: &ConnectOptions,
        max_queues: u64,
        extra: VhostUserProtocolFeatures,
    ) -> Result<Self> {
        let stream = connect_with_deadline(path, opts.connect_timeout)?;
        let sock = stream.try_clone().map_err(Error::Socket)?;
        let mut conn = VhostUserConnection {
            frontend: Frontend::from_stream(stream, max_queues),
            sock,
            reply_timeout: opts.reply_timeout,
            offered_features: 0,
            protocol_features: VhostUserProtocolFeatures::empty(),
            queue_num: None,
        };
        conn.call("VHOST_USER_SET_OWNER", |f| f.set_owner())?;
        conn.offered_features = conn.call("VHOST_USER_GET_FEATURES", |f| f.get_features())?;
        if conn.offered_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            conn.negotiate_protocol_features(extra)?;
        }
        Ok(conn)
    }

    fn negotiate_protocol_features(&mut self, extra: VhostUserProtocolFeatures) -> Result<()> {
        let offered = self.call("VHOST_USER_GET_PROTOCOL_FEATURES", |f| {
            f.get_protocol_features()
        })?;
        let acked = offered & (WANTED_PROTOCOL_FEATURES | extra);
        self.call("VHOST_USER_SET_PROTOCOL_FEATURES", |f| {
            f.set_protocol_features(acked)
        })?;
        self.protocol_features = acked;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            self.queue_num = Some(self.call("VHOST_USER_GET_QUEUE_NUM", |f| f.get_queue_num())?);
        }
        Ok(())
    }

    /// Runs one request under the watchdog.
    fn call<T>(
        &mut self,
        request: &'static str,
        op: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let dog = Watchdog::arm(&self.sock, self.reply_timeout)?;
        let res = op(&mut self.frontend);
        let fired = dog.disarm();
        res.map_err(|source| {
            if fired {
                Error::ControlTimeout {
                    request,
                    timeout: self.reply_timeout,
                }
            } else {
                Error::Vhost { request, source }
            }
        })
    }

    /// The process id of the back-end on the other end of the socket (SO_PEERCRED), e.g. to
    /// read its CPU time from /proc.
    ///
    /// # Errors
    /// [`Error::Socket`] if the socket option cannot be read.
    pub fn peer_pid(&self) -> Result<i32> {
        nix::sys::socket::getsockopt(&self.sock, nix::sys::socket::sockopt::PeerCredentials)
            .map(|cred| cred.pid())
            .map_err(|e| Error::Socket(e.into()))
    }

    /// The virtio feature bits the back-end offered (VHOST_USER_GET_FEATURES).
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// The negotiated protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// The back-end's queue count (VHOST_USER_GET_QUEUE_NUM), if MQ was negotiated.
    pub fn queue_num(&self) -> Option<u64> {
        self.queue_num
    }

    /// Reads `len` bytes of device configuration space from offset 0 (VHOST_USER_GET_CONFIG).
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_CONFIG; [`Error::Vhost`],
    /// [`Error::ControlTimeout`].
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>> {
        self.config_at(0, len)
    }

    /// Reads `len` bytes of device configuration space from byte `offset`
    /// (VHOST_USER_GET_CONFIG), e.g. for one guest access to a transport's config window.
    ///
    /// # Errors
    /// As [`VhostUserConnection::config`].
    pub fn config_at(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::MissingFeature {
                name: "VHOST_USER_PROTOCOL_F_CONFIG",
            });
        }
        let buf = vec![0u8; len as usize];
        let (_, payload) = self.call("VHOST_USER_GET_CONFIG", |f| {
            f.get_config(offset, len, VhostUserConfigFlags::empty(), &buf)
        })?;
        Ok(payload)
    }

    fn require(&self, feature: VhostUserProtocolFeatures, name: &'static str) -> Result<()> {
        if self.protocol_features.contains(feature) {
            Ok(())
        } else {
            Err(Error::MissingFeature { name })
        }
    }

    /// Asks the back-end for an inflight I/O tracking area for `num_queues` queues of
    /// `queue_size` descriptors (VHOST_USER_GET_INFLIGHT_FD): its description and its file.
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD; [`Error::Vhost`],
    /// [`Error::ControlTimeout`].
    pub fn get_inflight_fd(&mut self, num_queues: u16, queue_size: u16) -> Result<InflightArea> {
        self.require(
            VhostUserProtocolFeatures::INFLIGHT_SHMFD,
            "VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD",
        )?;
        let ask = VhostUserInflight::new(0, 0, num_queues, queue_size);
        let (info, file) = self.call("VHOST_USER_GET_INFLIGHT_FD", |f| f.get_inflight_fd(&ask))?;
        Ok(InflightArea { info, file })
    }

    /// Hands an inflight area to the back-end (VHOST_USER_SET_INFLIGHT_FD).
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD; [`Error::Vhost`]
    /// (e.g. the back-end refused the area), [`Error::ControlTimeout`].
    pub fn set_inflight_fd(&mut self, area: &InflightArea) -> Result<()> {
        self.require(
            VhostUserProtocolFeatures::INFLIGHT_SHMFD,
            "VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD",
        )?;
        self.call("VHOST_USER_SET_INFLIGHT_FD", |f| {
            f.set_inflight_fd(&area.info, area.file.as_raw_fd())
        })
    }

    /// Opens the back-end's request channel (VHOST_USER_SET_BACKEND_REQ_FD) and serves it on a
    /// thread that counts VHOST_USER_BACKEND_CONFIG_CHANGE_MSG notifications.
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_BACKEND_REQ; [`Error::Vhost`],
    /// [`Error::ControlTimeout`], [`Error::Socket`].
    pub fn open_backend_channel(&mut self) -> Result<BackendChannel> {
        self.require(
            VhostUserProtocolFeatures::BACKEND_REQ,
            "VHOST_USER_PROTOCOL_F_BACKEND_REQ",
        )?;
        let watch = Arc::new(ConfigWatch::default());
        let mut handler = FrontendReqHandler::new(Arc::clone(&watch))
            .map_err(|e| Error::Socket(io::Error::other(e)))?;
        handler.set_reply_ack_flag(
            self.protocol_features
                .contains(VhostUserProtocolFeatures::REPLY_ACK),
        );
        let tx = handler.get_tx_raw_fd();
        self.call("VHOST_USER_SET_BACKEND_REQ_FD", |f| {
            f.set_backend_request_fd(&tx)
        })?;
        BackendChannel::serve(handler, watch)
    }

    /// Acks `features` (VHOST_USER_SET_FEATURES), adding VHOST_USER_F_PROTOCOL_FEATURES when
    /// the back-end offered it.
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::ControlTimeout`].
    pub fn set_features(&mut self, features: u64) -> Result<()> {
        let acked =
            features | (self.offered_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
        self.call("VHOST_USER_SET_FEATURES", |f| f.set_features(acked))
    }

    /// Shares `ram` with the back-end (VHOST_USER_SET_MEM_TABLE, one region).
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::ControlTimeout`], [`Error::Mem`].
    pub fn set_mem_table(&mut self, ram: &HostRam) -> Result<()> {
        let region = ram.region_info()?;
        self.call("VHOST_USER_SET_MEM_TABLE", |f| {
            f.set_mem_table(&[region]).map(|_| ())
        })
    }

    /// Starts vring `index` on the rings at `layout` in `ram`: VHOST_USER_SET_VRING_NUM, then
    /// as [`VhostUserConnection::attach_vring`].
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::ControlTimeout`], [`Error::Mem`].
    pub fn start_vring(
        &mut self,
        index: usize,
        layout: &QueueLayout,
        ram: &HostRam,
        fds: &VringFds,
    ) -> Result<()> {
        self.start_vring_at(index, layout, ram, fds, 0)
    }

    /// As [`VhostUserConnection::start_vring`], with VHOST_USER_SET_VRING_BASE `base` (e.g.
    /// the used index after a back-end crash, as QEMU rewinds).
    ///
    /// # Errors
    /// As [`VhostUserConnection::start_vring`].
    pub fn start_vring_at(
        &mut self,
        index: usize,
        layout: &QueueLayout,
        ram: &HostRam,
        fds: &VringFds,
        base: u16,
    ) -> Result<()> {
        self.set_vring_num(index, layout.size)?;
        self.attach_vring(index, layout, ram, fds, base)
    }

    /// Sets vring `index`'s size in descriptors (VHOST_USER_SET_VRING_NUM). A front-end that
    /// starts several vrings at once (a VM's transport on DRIVER_OK) sends this for every vring
    /// first, then [`VhostUserConnection::attach_vring`] for each.
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::ControlTimeout`].
    pub fn set_vring_num(&mut self, index: usize, size: u16) -> Result<()> {
        self.call("VHOST_USER_SET_VRING_NUM", |f| f.set_vring_num(index, size))
    }

    /// Attaches vring `index` to the rings at `layout` in `ram` and starts it:
    /// VHOST_USER_SET_VRING_ADDR (front-end virtual addresses), _BASE `base` (the next
    /// available index the back-end starts from), _CALL, _ERR, _KICK, and _ENABLE 1 when
    /// protocol features are negotiated. The size must have been set.
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::ControlTimeout`], [`Error::Mem`].
    pub fn attach_vring(
        &mut self,
        index: usize,
        layout: &QueueLayout,
        ram: &HostRam,
        fds: &VringFds,
        base: u16,
    ) -> Result<()> {
        let config = VringConfigData {
            queue_max_size: layout.size,
            queue_size: layout.size,
            flags: 0,
            desc_table_addr: ram.host_address(layout.desc_table)?,
            used_ring_addr: ram.host_address(layout.used_ring)?,
            avail_ring_addr: ram.host_address(layout.avail_ring)?,
            log_addr: None,
        };
        self.call("VHOST_USER_SET_VRING_ADDR", |f| {
            f.set_vring_addr(index, &config)
        })?;
        self.call("VHOST_USER_SET_VRING_BASE", |f| {
            f.set_vring_base(index, base)
        })?;
        self.call("VHOST_USER_SET_VRING_CALL", |f| {
            f.set_vring_call(index, &fds.call)
        })?;
        self.call("VHOST_USER_SET_VRING_ERR", |f| {
            f.set_vring_err(index, &fds.err)
        })?;
        self.call("VHOST_USER_SET_VRING_KICK", |f| {
            f.set_vring_kick(index, &fds.kick)
        })?;
        if self.offered_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            self.call("VHOST_USER_SET_VRING_ENABLE", |f| {
                f.set_vring_enable(index, true)
            })?;
        }
        Ok(())
    }

    /// The number of memory slots the back-end supports (VHOST_USER_GET_MAX_MEM_SLOTS).
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS;
    /// [`Error::Vhost`], [`Error::ControlTimeout`].
    pub fn max_mem_slots(&mut self) -> Result<u64> {
        self.require(MEM_SLOTS, MEM_SLOTS_NAME)?;
        self.call("VHOST_USER_GET_MAX_MEM_SLOTS", |f| f.get_max_mem_slots())
    }

    /// Adds one guest memory region (VHOST_USER_ADD_MEM_REG); `region.mmap_handle` is sent as
    /// the region's file descriptor and may be any descriptor (tests send bad ones on purpose).
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS;
    /// [`Error::Vhost`] when the back-end refuses the region, [`Error::ControlTimeout`].
    pub fn add_mem_region(&mut self, region: &VhostUserMemoryRegionInfo) -> Result<()> {
        self.require(MEM_SLOTS, MEM_SLOTS_NAME)?;
        self.call("VHOST_USER_ADD_MEM_REG", |f| {
            f.add_mem_region(region).map(|_| ())
        })
    }

    /// Removes the guest memory region `region` (VHOST_USER_REM_MEM_REG; the back-end matches
    /// it by guest-physical address and size).
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS;
    /// [`Error::Vhost`] when the back-end refuses, [`Error::ControlTimeout`].
    pub fn remove_mem_region(&mut self, region: &VhostUserMemoryRegionInfo) -> Result<()> {
        self.require(MEM_SLOTS, MEM_SLOTS_NAME)?;
        self.call("VHOST_USER_REM_MEM_REG", |f| f.remove_mem_region(region))
    }

    /// Hands the back-end the dirty-page log (VHOST_USER_SET_LOG_BASE with a shared-memory
    /// region: one bit per 4 KiB guest page, vhost-user.rst "Migration").
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_LOG_SHMFD; [`Error::Vhost`]
    /// when the back-end refuses, [`Error::ControlTimeout`].
    pub fn set_log_base(&mut self, region: VhostUserDirtyLogRegion) -> Result<()> {
        self.require(
            VhostUserProtocolFeatures::LOG_SHMFD,
            "VHOST_USER_PROTOCOL_F_LOG_SHMFD",
        )?;
        self.call("VHOST_USER_SET_LOG_BASE", |f| {
            f.set_log_base(0, Some(region))
        })
    }

    /// Resets the device (VHOST_USER_RESET_DEVICE): the back-end stops every ring and forgets
    /// the acked features, keeping the protocol state.
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_RESET_DEVICE; [`Error::Vhost`],
    /// [`Error::ControlTimeout`].
    pub fn reset_device(&mut self) -> Result<()> {
        self.require(
            VhostUserProtocolFeatures::RESET_DEVICE,
            "VHOST_USER_PROTOCOL_F_RESET_DEVICE",
        )?;
        self.call("VHOST_USER_RESET_DEVICE", |f| f.reset_device())
    }

    /// Stops vring `index` and returns its next available index (VHOST_USER_GET_VRING_BASE).
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::ControlTimeout`].
    pub fn stop_vring(&mut self, index: usize) -> Result<u32> {
        self.call("VHOST_USER_GET_VRING_BASE", |f| f.get_vring_base(index))
    }
}

/// Connects to `path`, retrying while the socket file is missing or refuses connections.
fn connect_with_deadline(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(source) => {
                return Err(Error::Connect {
                    path: path.to_path_buf(),
                    timeout,
                    source,
                })
            }
        }
    }
}

/// The three eventfds of one vring: kick (front-end → back-end, available buffers), call
/// (back-end → front-end, used buffers) and err (back-end → front-end, vring errors).
#[derive(Debug)]
pub struct VringFds {
    kick: EventFd,
    call: EventFd,
    err: EventFd,
}

impl VringFds {
    /// Creates three non-blocking eventfds.
    ///
    /// # Errors
    /// [`Error::EventFd`].
    pub fn new() -> Result<Self> {
        let new = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        Ok(VringFds {
            kick: new()?,
            call: new()?,
            err: new()?,
        })
    }

    /// The kick eventfd (given to the back-end in VHOST_USER_SET_VRING_KICK), e.g. to make it
    /// a VMM's ioeventfd so the guest's doorbell write signals the back-end directly.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (VHOST_USER_SET_VRING_CALL), e.g. to make it a VMM's irqfd so the
    /// back-end's used buffer notification interrupts the guest directly.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Sends an available buffer notification (kick).
    ///
    /// # Errors
    /// [`Error::EventFd`].
    pub fn kick(&self) -> Result<()> {
        self.kick.write(1).map_err(Error::EventFd)
    }

    /// Waits up to `timeout` for a used buffer notification (call) and consumes it. Returns
    /// false on timeout.
    ///
    /// # Errors
    /// [`Error::EventFd`].
    pub fn wait_call(&self, timeout: Duration) -> Result<bool> {
        // SAFETY: the raw fd belongs to `self.call`, which outlives the borrow (this call).
        let fd = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => Ok(false),
            Ok(_) => self.drain(&self.call).map(|_| true),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(Error::EventFd(e.into())),
        }
    }

    /// Whether the back-end signalled a vring error since the last call.
    ///
    /// # Errors
    /// [`Error::EventFd`].
    pub fn take_err(&self) -> Result<bool> {
        self.drain(&self.err)
    }

    /// Reads a non-blocking eventfd; false if it was not signalled.
    fn drain(&self, fd: &EventFd) -> Result<bool> {
        match fd.read() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(Error::EventFd(e)),
        }
    }
}

/// Counts VHOST_USER_BACKEND_CONFIG_CHANGE_MSG notifications.
#[derive(Debug, Default)]
struct ConfigWatch {
    changes: Mutex<u64>,
    changed: Condvar,
}

impl VhostUserFrontendReqHandler for ConfigWatch {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        *changes += 1;
        self.changed.notify_all();
        Ok(0)
    }
}

/// The back-end request channel (VHOST_USER_PROTOCOL_F_BACKEND_REQ), served on its own
/// thread until dropped.
pub struct BackendChannel {
    watch: Arc<ConfigWatch>,
    /// A duplicate of the channel's receiving socket, shut down to stop the thread.
    stop: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackendChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendChannel")
            .field("config_changes", &self.config_changes())
            .finish()
    }
}

impl BackendChannel {
    fn serve(
        mut handler: FrontendReqHandler<ConfigWatch>,
        watch: Arc<ConfigWatch>,
    ) -> Result<Self> {
        // SAFETY: dup only creates a new descriptor for the handler's open socket.
        let dup = unsafe { libc::dup(handler.as_raw_fd()) };
        if dup < 0 {
            return Err(Error::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a fresh descriptor owned by nothing else.
        let stop = unsafe { UnixStream::from_raw_fd(dup) };
        let thread = std::thread::Builder::new()
            .name("vhost-user-backend-channel".into())
            .spawn(move || {
                // A request the handler refuses keeps the channel; a socket error ends it.
                while let Ok(_) | Err(vhost::vhost_user::Error::ReqHandlerError(_)) =
                    handler.handle_request()
                {}
            })
            .map_err(Error::Socket)?;
        Ok(BackendChannel {
            watch,
            stop,
            thread: Some(thread),
        })
    }

    /// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG notifications received so far.
    pub fn config_changes(&self) -> u64 {
        *self.watch.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` until more than `seen` notifications were received; returns the
    /// count (equal to `seen` on timeout).
    pub fn wait_config_change(&self, seen: u64, timeout: Duration) -> u64 {
        let changes = self.watch.changes.lock().unwrap_or_else(|e| e.into_inner());
        let (changes, _) = self
            .watch
            .changed
            .wait_timeout_while(changes, timeout, |n| *n <= seen)
            .unwrap_or_else(|e| e.into_inner());
        *changes
    }
}

impl Drop for BackendChannel {
    fn drop(&mut self) {
        let _ = self.stop.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An inflight I/O tracking area (vhost-user.rst "Inflight I/O tracking"): where it is in its
/// file, and the file.
pub struct InflightArea {
    /// `mmap_size`, `mmap_offset`, `num_queues`, `queue_size` as the back-end described it.
    pub info: VhostUserInflight,
    /// The memfd holding it.
    pub file: File,
}

impl std::fmt::Debug for InflightArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightArea")
            .field("mmap_size", &self.info.mmap_size)
            .field("mmap_offset", &self.info.mmap_offset)
            .field("num_queues", &self.info.num_queues)
            .field("queue_size", &self.info.queue_size)
            .finish()
    }
}
