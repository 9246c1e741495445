//! The vhost-user message stream as pvio's daemons receive it (vhost-user.rst): headers,
//! payloads and attached file descriptors from a front-end, through the vhost crate's back-end
//! request handler (vhost 0.18 `BackendReqHandler`) over a socketpair, with vhost-daemon's
//! `Backend` wrapper and a real device behind it: backend-blk's (an image in a memfd) or
//! backend-net's (a switch port, behind vhost-daemon's early SET_VRING_ENABLE relay as the
//! daemon runs it). One connection per input, on a device that lives as long as the process,
//! like the daemon's.
//!
//! Input: one byte picking the device (even: backend-blk, odd: backend-net), then records,
//! each what the front-end writes in one `sendmsg`: a descriptor byte, a little-endian u16
//! length and that many bytes (cut to what is left). The descriptor byte attaches
//! `min(b & 0xf, 8)` descriptors, the first of kind `(b >> 4) & 3`, the others of kind
//! `b >> 6`: 0 the guest memory (a 512 MiB memfd), 1 an eventfd, 2 `/dev/null`, 3 a unix
//! socket (a back-end request channel); `b & 0xf == 15` attaches the last descriptor the
//! back-end sent instead (the inflight area, handed back as QEMU does). After each record the back-end handles every message
//! it can read, one `handle_request` at a time on this thread; an error ends the connection,
//! as in the daemon. `fuzz/capture-vhost-seeds.sh` writes QEMU's traffic in this format.
//!
//! Checks: no panic or hang; the back-end sends at most one reply per message handled, and
//! each is a whole, well-formed reply (vhost-user.rst "Message Specification": version 1, the
//! reply flag, a payload of at most 4096 bytes) to that message's request; after the
//! connection ends and the session is closed (worker threads joined), the process has no more
//! file descriptors open than before it.
#![no_main]

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, Once, OnceLock};

use backend_blk::daemon::BlkDaemon;
use backend_net::server::NetDevice;
use clap::Parser;
use libfuzzer_sys::fuzz_target;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{recv, recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vhost_daemon::backend::{Backend, Device, DeviceBackend};
use vhost_daemon::daemon::Session;
use vhost_daemon::relay::ToHandler;

/// Bytes of a vhost-user message header: request, flags, size (u32 each, little-endian).
const HEADER: usize = 12;
/// vhost-user's largest payload (vhost 0.18 `MAX_MSG_SIZE`).
const MAX_PAYLOAD: usize = 4096;
/// Header flags: the version (bits 0-1, always 1) and the reply bit.
const VERSION_MASK: u32 = 0x3;
const REPLY: u32 = 0x4;
/// Guest memory the front-end shares: sparse, so only what the back-end touches is allocated.
const GUEST_RAM_BYTES: u64 = 512 << 20;
/// Descriptors attached to one record at most (QEMU sends at most 8 memory regions).
const MAX_FDS: usize = 8;
/// The descriptor count that attaches the last descriptor the back-end sent instead (the
/// inflight area of VHOST_USER_GET_INFLIGHT_FD, which the front-end hands back with
/// VHOST_USER_SET_INFLIGHT_FD).
const RETURNED: u8 = 0xf;

/// The descriptors a record may attach, made afresh for each input.
struct FdSet {
    guest_ram: OwnedFd,
    event: EventFd,
    null: File,
    /// The back-end request channel's two ends; the back-end gets `channel.1`.
    channel: (UnixStream, UnixStream),
}

impl FdSet {
    fn new() -> FdSet {
        let guest_ram = memfd_create(c"pvio-fuzz-guest-ram", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&guest_ram, GUEST_RAM_BYTES as i64).unwrap();
        FdSet {
            guest_ram,
            event: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap(),
            null: File::open("/dev/null").unwrap(),
            channel: UnixStream::pair().unwrap(),
        }
    }

    fn kind(&self, kind: u8) -> RawFd {
        match kind & 3 {
            0 => self.guest_ram.as_raw_fd(),
            1 => self.event.as_fd().as_raw_fd(),
            2 => self.null.as_raw_fd(),
            _ => self.channel.1.as_raw_fd(),
        }
    }

    /// The descriptors of a record's descriptor byte; `returned` is the last descriptor the
    /// back-end sent (its inflight area).
    fn pick(&self, b: u8, returned: Option<RawFd>) -> Vec<RawFd> {
        if b & 0xf == RETURNED {
            return returned.into_iter().collect();
        }
        let count = usize::from(b & 0xf).min(MAX_FDS);
        (0..count)
            .map(|i| self.kind(if i == 0 { b >> 4 } else { b >> 6 }))
            .collect()
    }
}

/// Splits the next record off `data`: (descriptor byte, bytes, rest).
fn next_record(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let [fds, lo, hi, rest @ ..] = data else {
        return None;
    };
    let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
    let (bytes, rest) = rest.split_at(len);
    Some((*fds, bytes, rest))
}

/// Everything the back-end has sent on `sock` so far; the last descriptor it sent is kept in
/// `returned`, the others are closed.
fn drain(sock: &UnixStream, returned: &mut Option<OwnedFd>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; 32]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) else {
            return out;
        };
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: SCM_RIGHTS just installed these descriptors here; nothing else owns
                // them.
                fds.into_iter()
                    .for_each(|fd| *returned = Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 {
            return out;
        }
        let n = msg.bytes;
        out.extend_from_slice(&buf[..n]);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Checks what the back-end sent on `sock` after handling a message whose request code was
/// `request` (`None`: not known): at most one whole, well-formed reply to it.
fn check_replies(sock: &UnixStream, request: Option<u32>, returned: &mut Option<OwnedFd>) {
    let sent = drain(sock, returned);
    if sent.is_empty() {
        return;
    }
    assert!(sent.len() >= HEADER, "a cut reply header: {sent:02x?}");
    let (code, flags, size) = (u32_at(&sent, 0), u32_at(&sent, 4), u32_at(&sent, 8));
    assert_eq!(flags & VERSION_MASK, 1, "reply version, flags {flags:#x}");
    assert_ne!(flags & REPLY, 0, "reply flag, flags {flags:#x}");
    assert!(
        size as usize <= MAX_PAYLOAD,
        "reply payload of {size} bytes"
    );
    assert_eq!(
        sent.len(),
        HEADER + size as usize,
        "one whole reply (request {code})"
    );
    if let Some(request) = request {
        assert_eq!(code, request, "the reply answers the message handled");
    }
}

/// The header of the next message `sock` holds, if a whole one can be peeked (a peek stops
/// where descriptors were attached).
fn peek_header(sock: BorrowedFd<'_>) -> Option<(u32, usize)> {
    let mut header = [0u8; HEADER];
    let n = recv(
        sock.as_raw_fd(),
        &mut header,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    (n == HEADER).then(|| (u32_at(&header, 0), u32_at(&header, 8) as usize))
}

/// Bytes queued on `sock` (FIONREAD: all of them, on a stream socket).
fn queued(sock: BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(r, 0, "FIONREAD");
    usize::try_from(n).unwrap_or(0)
}

/// Whether a reader of `sock` has a whole message to read: a blocked daemon would go on now.
/// Reading less would wait for the front-end's next write (the vhost crate waits for a whole
/// header), which a single thread cannot do.
fn whole_message(sock: BorrowedFd<'_>) -> bool {
    let n = queued(sock);
    n >= HEADER && peek_header(sock).is_none_or(|(_, size)| n >= HEADER + size)
}

/// The relay of a device that has one (backend-net): the relay itself, its end of the
/// front-end's socket, the front-end's socket for its own answers (a clone of that end), and
/// its end towards the handler, where the handler's replies arrive (the daemon's relay copies
/// them to the front-end).
struct Relay {
    relay: ToHandler,
    from_front: UnixStream,
    answers: Mutex<UnixStream>,
    inner: UnixStream,
    /// The relay has read the front-end's end of stream, or failed (and shut the handler's
    /// socket down for writing, as the daemon's relay does).
    ended: bool,
}

/// One front-end connection, the back-end's side driven on this thread.
struct Connection<H> {
    front: UnixStream,
    relay: Option<Relay>,
    handler: H,
    /// The handler has failed (the daemon would close the connection).
    ended: bool,
    /// The last descriptor the back-end sent.
    returned: Option<OwnedFd>,
}

impl<B: DeviceBackend> Connection<vhost_user_backend::DaemonReqHandler<Arc<Backend<B>>>> {
    fn new(session: &Session<B>, relay: bool) -> Self {
        let (front, back) = UnixStream::pair().unwrap();
        let (relay, handler_end) = if relay {
            let (inner, handler_end) = UnixStream::pair().unwrap();
            back.set_nonblocking(true).unwrap();
            let relay = Relay {
                relay: ToHandler::new(session.device().num_queues()),
                answers: Mutex::new(back.try_clone().unwrap()),
                from_front: back,
                inner,
                ended: false,
            };
            (Some(relay), handler_end)
        } else {
            (None, back)
        };
        handler_end.set_nonblocking(true).unwrap();
        Connection {
            front,
            relay,
            handler: session.request_handler(handler_end),
            ended: false,
            returned: None,
        }
    }

    /// The back-end handles what it can: every whole message, or everything up to the end of
    /// the stream once the writer upstream has finished (`last`).
    fn pump(&mut self, last: bool) {
        let mut upstream_done = last;
        if let Some(r) = &mut self.relay {
            while !r.ended && (last || whole_message(r.from_front.as_fd())) {
                match r.relay.forward_one(&r.from_front, &r.inner, &r.answers) {
                    Ok(true) => check_replies(&self.front, None, &mut self.returned),
                    Ok(false) | Err(_) => {
                        r.ended = true;
                        let _ = r.inner.shutdown(std::net::Shutdown::Write);
                    }
                }
            }
            upstream_done = r.ended;
        }
        // SAFETY: the handler owns the descriptor and outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.handler.as_raw_fd()) };
        while !self.ended && (upstream_done || whole_message(fd)) {
            let request = peek_header(fd).map(|(code, _)| code);
            let handled = self.handler.handle_request();
            let replies = match &self.relay {
                Some(r) => &r.inner,
                None => &self.front,
            };
            check_replies(replies, request, &mut self.returned);
            if trace() {
                eprintln!("request {request:?}: {handled:?}");
            }
            self.ended = handled.is_err();
        }
    }

    /// Whether the connection has ended (the back-end would close it).
    fn ended(&self) -> bool {
        self.ended || self.relay.as_ref().is_some_and(|r| r.ended)
    }
}

/// One front-end connection to `device` writing `records`.
fn connection<D: Device>(device: &D, records: &[u8], fds: &FdSet) {
    let session = Session::open(device, 0).expect("a fresh back-end");
    let mut conn = Connection::new(&session, device.early_enable_relay());
    let mut rest = records;
    while let Some((fd_byte, bytes, tail)) = next_record(rest) {
        rest = tail;
        let attached = fds.pick(fd_byte, conn.returned.as_ref().map(AsRawFd::as_raw_fd));
        if conn.ended() || !send(&conn.front, bytes, &attached) {
            break;
        }
        conn.pump(false);
    }
    // The front-end leaves: the back-end reads to the end of the stream.
    let _ = conn.front.shutdown(std::net::Shutdown::Write);
    conn.pump(true);
    drop(conn);
    session.close();
}

/// Writes `bytes` with `fds` attached in one `sendmsg`; false if the socket refused them
/// (the back-end has gone).
fn send(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let iov = [std::io::IoSlice::new(bytes)];
    matches!(
        sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, None),
        Ok(n) if n == bytes.len()
    )
}

fn blk() -> &'static Arc<BlkDaemon> {
    static BLK: OnceLock<(Arc<BlkDaemon>, OwnedFd)> = OnceLock::new();
    &BLK.get_or_init(|| {
        // A 1 MiB image in a memfd, opened by path as the daemon opens its image.
        let image = memfd_create(c"pvio-fuzz-image", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&image, 1 << 20).unwrap();
        let path = format!("/proc/self/fd/{}", image.as_raw_fd());
        let args = ["backend-blk", "--socket", "/nonexistent", "--image", &path];
        let cli = backend_blk::cli::Cli::try_parse_from(args).unwrap();
        let config = cli.into_config().unwrap();
        (BlkDaemon::open(&config).unwrap(), image)
    })
    .0
}

fn net() -> &'static NetDevice {
    static NET: OnceLock<NetDevice> = OnceLock::new();
    NET.get_or_init(|| {
        let args = ["backend-net", "--switch", "--socket", "/nonexistent"];
        let cli = backend_net::cli::Cli::try_parse_from(args).unwrap();
        NetDevice::new(&cli.into_config().unwrap()).unwrap()
    })
}

/// `PVIO_FUZZ_TRACE=1`: print each message's request code and the handler's result (to see
/// how deep a seed goes).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("PVIO_FUZZ_TRACE").is_some())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn run(data: &[u8]) {
    let Some((device, records)) = data.split_first() else {
        return;
    };
    let fds = FdSet::new();
    if device & 1 == 0 {
        connection(&**blk(), records, &fds);
    } else {
        connection(net(), records, &fds);
    }
}

fuzz_target!(|data: &[u8]| {
    // Both devices and whatever their first connection sets up once for the process.
    static WARM_UP: Once = Once::new();
    WARM_UP.call_once(|| {
        run(&[0]);
        run(&[1]);
    });
    let before = open_fds();
    run(data);
    assert_eq!(
        open_fds(),
        before,
        "file descriptors leaked by one connection"
    );
});
