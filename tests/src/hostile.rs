//! A hostile vhost-user front-end (vhost-user.rst): raw sessions that send what a buggy or
//! malicious VMM could, to check that a back-end daemon answers each with an error reply or a
//! clean disconnect, keeps serving, and leaks neither file descriptors nor threads.
//!
//! Each [`Attack`] is one session on a fresh connection: it sends its messages, then shuts
//! its sending side and reads until the daemon closes the connection (bounded by a timeout),
//! so that when [`Attack::run`] returns the daemon has finished with the session.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// `VHOST_USER_*` front-end request codes (vhost-user.rst "Front-end message types").
pub mod req {
    /// VHOST_USER_GET_FEATURES.
    pub const GET_FEATURES: u32 = 1;
    /// VHOST_USER_SET_FEATURES.
    pub const SET_FEATURES: u32 = 2;
    /// VHOST_USER_SET_OWNER.
    pub const SET_OWNER: u32 = 3;
    /// VHOST_USER_SET_MEM_TABLE.
    pub const SET_MEM_TABLE: u32 = 5;
    /// VHOST_USER_SET_VRING_NUM.
    pub const SET_VRING_NUM: u32 = 8;
    /// VHOST_USER_SET_VRING_ADDR.
    pub const SET_VRING_ADDR: u32 = 9;
    /// VHOST_USER_SET_VRING_BASE.
    pub const SET_VRING_BASE: u32 = 10;
    /// VHOST_USER_GET_VRING_BASE.
    pub const GET_VRING_BASE: u32 = 11;
    /// VHOST_USER_SET_VRING_KICK.
    pub const SET_VRING_KICK: u32 = 12;
    /// VHOST_USER_SET_VRING_CALL.
    pub const SET_VRING_CALL: u32 = 13;
    /// VHOST_USER_GET_PROTOCOL_FEATURES.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// VHOST_USER_SET_VRING_ENABLE.
    pub const SET_VRING_ENABLE: u32 = 18;
    /// VHOST_USER_SET_VRING_ERR.
    pub const SET_VRING_ERR: u32 = 14;
    /// VHOST_USER_SET_PROTOCOL_FEATURES.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// VHOST_USER_GET_QUEUE_NUM.
    pub const GET_QUEUE_NUM: u32 = 17;
}

/// Header flags: protocol version 1.
const VERSION_1: u32 = 0x1;
/// Bytes of the message header (request, flags, size: three `u32`).
pub const HEADER_LEN: usize = 12;
/// Bytes of guest memory the attacks map (one memfd).
const MEM_BYTES: u64 = 1 << 20;
/// How long a session may take to be closed by the daemon.
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);

/// One message: header fields, payload and the descriptors sent with it.
pub struct Msg {
    /// Request code.
    pub request: u32,
    /// Header size field (normally the payload length).
    pub size: u32,
    /// Payload bytes actually sent.
    pub payload: Vec<u8>,
    /// Descriptors sent with the header (SCM_RIGHTS).
    pub fds: Vec<RawFd>,
}

impl Msg {
    /// A well-formed message.
    pub fn new(request: u32, payload: Vec<u8>) -> Msg {
        Msg {
            request,
            size: payload.len() as u32,
            payload,
            fds: Vec::new(),
        }
    }

    /// The same message with descriptors attached.
    pub fn with_fds(mut self, fds: Vec<RawFd>) -> Msg {
        self.fds = fds;
        self
    }

    /// Header and payload as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.payload.len());
        b.extend_from_slice(&self.request.to_le_bytes());
        b.extend_from_slice(&VERSION_1.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.payload);
        b
    }
}

fn u64_payload(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}

fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [desc, used, avail, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// A memory region: guest address, size, front-end address, offset in its fd (vhost-user.rst
/// "Memory region description").
type Region = (u64, u64, u64, u64);

fn mem_table(regions: &[Region]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 32 * regions.len());
    b.extend_from_slice(&(regions.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for (gpa, size, uaddr, off) in regions {
        for v in [gpa, size, uaddr, off] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

/// A memfd of [`MEM_BYTES`] bytes.
fn memfd() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and valid flags; the returned fd is checked and owned.
    let fd = unsafe { libc::memfd_create(c"pvio-hostile".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fd is a valid memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_BYTES as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// An eventfd for kicks and calls.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain flags; the returned fd is checked and owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a hostile session does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Ring and memory set-up before SET_OWNER.
    BeforeOwner,
    /// A header announcing more payload than arrives, then the end of the stream.
    TruncatedPayload,
    /// A header announcing a payload far beyond any message's size.
    OversizedPayload,
    /// A request code no version of the protocol defines.
    UnknownRequest,
    /// SET_MEM_TABLE with zero regions.
    ZeroRegions,
    /// SET_MEM_TABLE with two regions at overlapping guest addresses.
    OverlappingRegions,
    /// SET_MEM_TABLE with a region larger than its fd (cannot be mapped).
    UnmappableRegion,
    /// SET_MEM_TABLE naming two regions with one fd.
    MissingFd,
    /// SET_MEM_TABLE naming one region with three fds.
    ExtraFds,
    /// SET_VRING_ADDR with rings outside guest memory.
    RingsOutsideMemory,
    /// SET_VRING_NUM with a size that is not a power of two.
    QueueSizeNotPowerOfTwo,
    /// SET_VRING_NUM above the 32768 maximum of split rings.
    QueueSizeAboveMaximum,
    /// A kick (and enable) before the ring is set up.
    KickBeforeSetup,
    /// SET_VRING_BASE beyond the ring (and a queue index beyond the device's).
    VringBaseBeyondRing,
    /// The valid opening of a session cut after `n` bytes.
    DisconnectAt(usize),
}

impl Attack {
    /// Every attack, with disconnects at a spread of offsets through the opening messages.
    pub fn all() -> Vec<Attack> {
        let mut v = vec![
            Attack::BeforeOwner,
            Attack::TruncatedPayload,
            Attack::OversizedPayload,
            Attack::UnknownRequest,
            Attack::ZeroRegions,
            Attack::OverlappingRegions,
            Attack::UnmappableRegion,
            Attack::MissingFd,
            Attack::ExtraFds,
            Attack::RingsOutsideMemory,
            Attack::QueueSizeNotPowerOfTwo,
            Attack::QueueSizeAboveMaximum,
            Attack::KickBeforeSetup,
            Attack::VringBaseBeyondRing,
        ];
        let opening: usize = opening(-1).iter().map(|m| m.bytes().len()).sum();
        v.extend((1..opening).step_by(3).map(Attack::DisconnectAt));
        v
    }

    /// Runs the attack as one session against the daemon listening at `socket`.
    ///
    /// # Errors
    /// The daemon could not be reached, or did not close the session within
    /// [`SESSION_TIMEOUT`].
    pub fn run(self, socket: &Path) -> io::Result<()> {
        let stream = connect(socket)?;
        let mem = memfd()?;
        let mem2 = memfd()?;
        let kick = eventfd()?;
        let m = mem.as_raw_fd();
        let m2 = mem2.as_raw_fd();
        let k = kick.as_raw_fd();
        let mut msgs = Vec::new();
        if self != Attack::BeforeOwner {
            msgs.extend(opening(m).into_iter().take(2));
        }
        let region = (0, MEM_BYTES, 0x7000_0000, 0);
        match self {
            Attack::BeforeOwner => {
                msgs.push(Msg::new(req::SET_MEM_TABLE, mem_table(&[region])).with_fds(vec![m]));
                msgs.push(Msg::new(req::SET_VRING_NUM, vring_state(0, 8)));
                msgs.push(Msg::new(req::SET_VRING_KICK, u64_payload(0)).with_fds(vec![k]));
            }
            Attack::TruncatedPayload => msgs.push(Msg {
                size: 40,
                ..Msg::new(req::SET_VRING_ADDR, vec![0; 12])
            }),
            Attack::OversizedPayload => msgs.push(Msg {
                size: 0x1000_0000,
                ..Msg::new(req::SET_FEATURES, vec![0xff; 64])
            }),
            Attack::UnknownRequest => {
                msgs.push(Msg::new(9999, vec![1, 2, 3, 4]));
                msgs.push(Msg::new(0, Vec::new()));
            }
            Attack::ZeroRegions => msgs.push(Msg::new(req::SET_MEM_TABLE, mem_table(&[]))),
            Attack::OverlappingRegions => msgs.push(
                Msg::new(
                    req::SET_MEM_TABLE,
                    mem_table(&[region, (MEM_BYTES / 2, MEM_BYTES, 0x8000_0000, 0)]),
                )
                .with_fds(vec![m, m2]),
            ),
            Attack::UnmappableRegion => msgs.push(
                Msg::new(
                    req::SET_MEM_TABLE,
                    mem_table(&[(0, MEM_BYTES << 20, 0x7000_0000, u64::MAX - 4095)]),
                )
                .with_fds(vec![m]),
            ),
            Attack::MissingFd => msgs.push(
                Msg::new(
                    req::SET_MEM_TABLE,
                    mem_table(&[region, (MEM_BYTES, MEM_BYTES, 0x8000_0000, 0)]),
                )
                .with_fds(vec![m]),
            ),
            Attack::ExtraFds => msgs
                .push(Msg::new(req::SET_MEM_TABLE, mem_table(&[region])).with_fds(vec![m, m2, k])),
            Attack::RingsOutsideMemory => {
                msgs.push(opening(m).remove(2));
                msgs.push(Msg::new(req::SET_VRING_NUM, vring_state(0, 8)));
                let far = 0x7000_0000 + (1 << 40);
                msgs.push(Msg::new(
                    req::SET_VRING_ADDR,
                    vring_addr(0, far, far + 0x1000, u64::MAX - 8),
                ));
                msgs.push(Msg::new(req::SET_VRING_KICK, u64_payload(0)).with_fds(vec![k]));
                msgs.push(Msg::new(req::SET_VRING_ENABLE, vring_state(0, 1)));
            }
            Attack::QueueSizeNotPowerOfTwo => {
                msgs.push(Msg::new(req::SET_VRING_NUM, vring_state(0, 3)));
                msgs.push(Msg::new(req::SET_VRING_NUM, vring_state(0, 0)));
            }
            Attack::QueueSizeAboveMaximum => {
                msgs.push(Msg::new(req::SET_VRING_NUM, vring_state(0, 65535)));
                msgs.push(Msg::new(req::SET_VRING_NUM, vring_state(0, 1 << 16)));
            }
            Attack::KickBeforeSetup => {
                msgs.push(Msg::new(req::SET_VRING_KICK, u64_payload(0)).with_fds(vec![k]));
                msgs.push(Msg::new(req::SET_VRING_ENABLE, vring_state(0, 1)));
                msgs.push(Msg::new(req::SET_VRING_CALL, u64_payload(0x100)));
            }
            Attack::VringBaseBeyondRing => {
                msgs.push(opening(m).remove(2));
                msgs.push(Msg::new(req::SET_VRING_NUM, vring_state(0, 8)));
                msgs.push(Msg::new(req::SET_VRING_BASE, vring_state(0, 70000)));
                msgs.push(Msg::new(req::SET_VRING_BASE, vring_state(4000, 1)));
                msgs.push(Msg::new(req::GET_VRING_BASE, vring_state(4000, 0)));
            }
            Attack::DisconnectAt(n) => return cut_session(stream, &opening(m), n),
        }
        if matches!(self, Attack::RingsOutsideMemory | Attack::KickBeforeSetup) {
            // SAFETY: writing 8 bytes from a valid u64 to an eventfd.
            unsafe { libc::write(k, 1u64.to_le_bytes().as_ptr().cast(), 8) };
        }
        for msg in &msgs {
            if send(&stream, msg).is_err() {
                break;
            }
        }
        finish(stream)
    }
}

/// The valid start of a session: SET_OWNER, GET_FEATURES, SET_MEM_TABLE (fd `mem`).
fn opening(mem: RawFd) -> Vec<Msg> {
    let fds = if mem >= 0 { vec![mem] } else { Vec::new() };
    vec![
        Msg::new(req::SET_OWNER, Vec::new()),
        Msg::new(req::GET_PROTOCOL_FEATURES, Vec::new()),
        Msg::new(
            req::SET_MEM_TABLE,
            mem_table(&[(0, MEM_BYTES, 0x7000_0000, 0)]),
        )
        .with_fds(fds),
    ]
}

/// Sends the first `n` bytes of `msgs` (each message's descriptors with its first byte), then
/// disconnects.
fn cut_session(stream: UnixStream, msgs: &[Msg], mut n: usize) -> io::Result<()> {
    for msg in msgs {
        let bytes = msg.bytes();
        let take = n.min(bytes.len());
        send_bytes(&stream, &bytes[..take], &msg.fds)?;
        n -= take;
        if n == 0 {
            break;
        }
    }
    finish(stream)
}

fn connect(socket: &Path) -> io::Result<UnixStream> {
    let deadline = Instant::now() + SESSION_TIMEOUT;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn send(stream: &UnixStream, msg: &Msg) -> io::Result<()> {
    send_bytes(stream, &msg.bytes(), &msg.fds)
}

fn send_bytes(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let iov = [io::IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    if n < bytes.len() {
        (&*stream).write_all(&bytes[n..])?;
    }
    Ok(())
}

/// Ends our side and waits until the daemon closes the connection.
fn finish(mut stream: UnixStream) -> io::Result<()> {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    stream.set_read_timeout(Some(SESSION_TIMEOUT))?;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Open file descriptors and threads of process `pid` (from /proc).
///
/// # Errors
/// /proc could not be read.
pub fn fds_and_threads(pid: u32) -> io::Result<(usize, usize)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))?.count();
    Ok((fds, threads))
}
