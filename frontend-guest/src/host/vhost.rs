//! The vhost-user control path of the front-end (vhost-user.rst): connecting with a deadline,
//! feature and protocol feature negotiation, the memory table, and vring setup and teardown.
//!
//! Messages go through `vhost::vhost_user::Frontend`. Once VHOST_USER_PROTOCOL_F_REPLY_ACK is
//! negotiated every message is sent with NEED_REPLY, so a request the back-end rejects fails
//! right there instead of breaking the next one. The socket has a read timeout, so a back-end
//! that never answers gives an error instead of a hang.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ram::HostRam;
use super::{Error, Result};
use crate::virtq::QueueLayout;

/// Protocol features the front-end uses when offered: MQ (GET_QUEUE_NUM), REPLY_ACK (errors
/// per message) and CONFIG (GET_CONFIG).
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIG);

/// Interval between connection attempts while the back-end's socket is not there yet.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Connection timing.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// How long to keep trying while the socket file is missing or refuses connections.
    pub connect_timeout: Duration,
    /// How long to wait for any one reply from the back-end.
    pub reply_timeout: Duration,
}

impl Default for ConnectOptions {
    /// 10 s to connect, 10 s per reply.
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(10),
        }
    }
}

fn vhost_err(request: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { request, source }
}

/// An owned vhost-user session with one back-end.
pub struct VhostUserConnection {
    frontend: Frontend,
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
    /// [`Error::Connect`], [`Error::Socket`], [`Error::Vhost`].
    pub fn connect(path: &Path, opts: &ConnectOptions, max_queues: u64) -> Result<Self> {
        let stream = connect_with_deadline(path, opts.connect_timeout)?;
        stream
            .set_read_timeout(Some(opts.reply_timeout))
            .map_err(Error::Socket)?;
        let mut frontend = Frontend::from_stream(stream, max_queues);
        frontend
            .set_owner()
            .map_err(vhost_err("VHOST_USER_SET_OWNER"))?;
        let offered_features = frontend
            .get_features()
            .map_err(vhost_err("VHOST_USER_GET_FEATURES"))?;
        let mut protocol_features = VhostUserProtocolFeatures::empty();
        let mut queue_num = None;
        if offered_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(vhost_err("VHOST_USER_GET_PROTOCOL_FEATURES"))?;
            protocol_features = offered & WANTED_PROTOCOL_FEATURES;
            frontend
                .set_protocol_features(protocol_features)
                .map_err(vhost_err("VHOST_USER_SET_PROTOCOL_FEATURES"))?;
            if protocol_features.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol_features.contains(VhostUserProtocolFeatures::MQ) {
                queue_num = Some(
                    frontend
                        .get_queue_num()
                        .map_err(vhost_err("VHOST_USER_GET_QUEUE_NUM"))?,
                );
            }
        }
        Ok(VhostUserConnection {
            frontend,
            offered_features,
            protocol_features,
            queue_num,
        })
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
    /// [`Error::MissingFeature`] without VHOST_USER_PROTOCOL_F_CONFIG; [`Error::Vhost`].
    pub fn config(&mut self, len: u32) -> Result<Vec<u8>> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::MissingFeature {
                name: "VHOST_USER_PROTOCOL_F_CONFIG",
            });
        }
        let buf = vec![0u8; len as usize];
        let (_, payload) = self
            .frontend
            .get_config(
                0,
                len,
                vhost::vhost_user::message::VhostUserConfigFlags::empty(),
                &buf,
            )
            .map_err(vhost_err("VHOST_USER_GET_CONFIG"))?;
        Ok(payload)
    }

    /// Acks `features` (VHOST_USER_SET_FEATURES), adding VHOST_USER_F_PROTOCOL_FEATURES when
    /// the back-end offered it.
    ///
    /// # Errors
    /// [`Error::Vhost`].
    pub fn set_features(&mut self, features: u64) -> Result<()> {
        let protocol = self.offered_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend
            .set_features(features | protocol)
            .map_err(vhost_err("VHOST_USER_SET_FEATURES"))
    }

    /// Shares `ram` with the back-end (VHOST_USER_SET_MEM_TABLE, one region).
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::Mem`].
    pub fn set_mem_table(&mut self, ram: &HostRam) -> Result<()> {
        self.frontend
            .set_mem_table(&[ram.region_info()?])
            .map(|_| ())
            .map_err(vhost_err("VHOST_USER_SET_MEM_TABLE"))
    }

    /// Starts vring `index` on the rings at `layout` in `ram`: VHOST_USER_SET_VRING_NUM,
    /// _ADDR (front-end virtual addresses), _BASE 0, _CALL, _ERR, _KICK, and _ENABLE 1 when
    /// protocol features are negotiated.
    ///
    /// # Errors
    /// [`Error::Vhost`], [`Error::Mem`].
    pub fn start_vring(
        &mut self,
        index: usize,
        layout: &QueueLayout,
        ram: &HostRam,
        fds: &VringFds,
    ) -> Result<()> {
        let f = &mut self.frontend;
        f.set_vring_num(index, layout.size)
            .map_err(vhost_err("VHOST_USER_SET_VRING_NUM"))?;
        let config = VringConfigData {
            queue_max_size: layout.size,
            queue_size: layout.size,
            flags: 0,
            desc_table_addr: ram.host_address(layout.desc_table)?,
            used_ring_addr: ram.host_address(layout.used_ring)?,
            avail_ring_addr: ram.host_address(layout.avail_ring)?,
            log_addr: None,
        };
        f.set_vring_addr(index, &config)
            .map_err(vhost_err("VHOST_USER_SET_VRING_ADDR"))?;
        f.set_vring_base(index, 0)
            .map_err(vhost_err("VHOST_USER_SET_VRING_BASE"))?;
        f.set_vring_call(index, &fds.call)
            .map_err(vhost_err("VHOST_USER_SET_VRING_CALL"))?;
        f.set_vring_err(index, &fds.err)
            .map_err(vhost_err("VHOST_USER_SET_VRING_ERR"))?;
        f.set_vring_kick(index, &fds.kick)
            .map_err(vhost_err("VHOST_USER_SET_VRING_KICK"))?;
        if self.offered_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            f.set_vring_enable(index, true)
                .map_err(vhost_err("VHOST_USER_SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops vring `index` and returns its next available index (VHOST_USER_GET_VRING_BASE).
    ///
    /// # Errors
    /// [`Error::Vhost`].
    pub fn stop_vring(&mut self, index: usize) -> Result<u32> {
        self.frontend
            .get_vring_base(index)
            .map_err(vhost_err("VHOST_USER_GET_VRING_BASE"))
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
