//! A thin relay between a front-end's connection and the vhost crate's request handler, for
//! one interoperability gap.
//!
//! QEMU's virtio-net (7.2) sends VHOST_USER_SET_VRING_ENABLE when the device is realized or
//! reset and when the driver picks its queue pairs, all before VHOST_USER_SET_FEATURES, and does
//! not repeat it after. vhost-user.rst says the message "should be sent only when
//! VHOST_USER_F_PROTOCOL_FEATURES has been negotiated", and the vhost crate (0.18) enforces it by
//! dropping the connection. So the relay answers such an early request itself (an ack of 0 when
//! the front-end asked for a reply), remembers the last state asked for each ring, and hands
//! those states to the handler right after SET_FEATURES acks VHOST_USER_F_PROTOCOL_FEATURES
//! (without asking for replies). Every other message passes through unchanged, with its file
//! descriptors, in both directions.
//!
//! The remembered states are bounded by the device's number of rings: an early request for a
//! ring the device does not have is refused (a failure ack when a reply was asked) and not
//! remembered, so a front-end cannot grow the relay's memory.
//!
//! Only the control path crosses the relay (vrings live in shared memory and are signalled
//! through eventfds), so it costs nothing on the data path.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vhost::vhost_user::VhostUserVirtioFeatures;

/// Bytes of a vhost-user message header: request, flags, size (u32 each, little-endian).
const HEADER_BYTES: usize = 12;

/// One message: header, payload, attached descriptors.
struct Message {
    header: [u8; HEADER_BYTES],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }
}

/// Reads one message from `sock`; `None` at end of stream.
fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_BYTES];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_BYTES {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_ATTACHED_FD_ENTRIES]);
        let mut iov = [IoSliceMut::new(&mut header[got..])];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing
                // else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        // A message carries at most MAX_ATTACHED_FD_ENTRIES descriptors (vhost-user.rst), also
        // when its header came in pieces with descriptors on each: refuse it rather than pass
        // on more than the handler can take (it would lose the message).
        if truncated || fds.len() > MAX_ATTACHED_FD_ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more file descriptors than a vhost-user message may carry",
            ));
        }
        if msg.bytes == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += msg.bytes;
    }
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if size > MAX_MSG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    let mut payload = vec![0u8; size];
    (&*sock).read_exact(&mut payload)?;
    Ok(Some(Message {
        header,
        payload,
        fds,
    }))
}

/// Writes one message (header and payload in one sendmsg, descriptors attached).
fn write_message(sock: &UnixStream, m: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(&m.header), IoSlice::new(&m.payload)];
    let total = HEADER_BYTES + m.payload.len();
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        if raw.is_empty() { &[] } else { &cmsgs },
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    if sent < total {
        // The descriptors went with the first byte; the rest is plain data.
        let mut rest = m.header.to_vec();
        rest.extend_from_slice(&m.payload);
        (&*sock).write_all(&rest[sent..])?;
    }
    Ok(())
}

/// Whether `m` must be answered by the relay instead of the handler, given the features acked
/// so far.
fn is_early_ring_enable(m: &Message, acked: u64) -> bool {
    m.request() == u32::from(FrontendReq::SET_VRING_ENABLE)
        && acked & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0
}

/// The ring index and state of a SET_VRING_ENABLE payload (`struct vhost_vring_state`).
fn ring_state(m: &Message) -> Option<(u32, u32)> {
    let p = m.payload.get(..8)?;
    Some((
        u32::from_le_bytes(p[..4].try_into().ok()?),
        u32::from_le_bytes(p[4..].try_into().ok()?),
    ))
}

/// A SET_VRING_ENABLE of ring `index` to `state`, no reply asked.
fn ring_enable(index: u32, state: u32) -> Message {
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(&u32::from(FrontendReq::SET_VRING_ENABLE).to_le_bytes());
    header[4..8].copy_from_slice(&1u32.to_le_bytes());
    header[8..12].copy_from_slice(&8u32.to_le_bytes());
    let mut payload = index.to_le_bytes().to_vec();
    payload.extend_from_slice(&state.to_le_bytes());
    Message {
        header,
        payload,
        fds: Vec::new(),
    }
}

/// The REPLY_ACK answer to `m`: `status` 0 for success, non-zero for failure.
fn ack(m: &Message, status: u64) -> Message {
    let mut header = [0u8; HEADER_BYTES];
    header[..4].copy_from_slice(&m.header[..4]);
    let flags = VhostUserHeaderFlag::REPLY.bits() | 0x1;
    header[4..8].copy_from_slice(&flags.to_le_bytes());
    header[8..12].copy_from_slice(&8u32.to_le_bytes());
    Message {
        header,
        payload: status.to_le_bytes().to_vec(),
        fds: Vec::new(),
    }
}

/// The ring states asked before SET_FEATURES, one slot per ring of the device.
struct EarlyStates(Vec<Option<u32>>);

impl EarlyStates {
    fn new(num_rings: usize) -> EarlyStates {
        EarlyStates(vec![None; num_rings])
    }

    /// Remembers the state asked for ring `index`; false (nothing remembered) for a ring the
    /// device does not have.
    fn remember(&mut self, index: u32, state: u32) -> bool {
        match usize::try_from(index).ok().and_then(|i| self.0.get_mut(i)) {
            Some(slot) => {
                *slot = Some(state);
                true
            }
            None => false,
        }
    }

    /// The remembered states, in ring order; forgets them.
    fn take(&mut self) -> Vec<(u32, u32)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| Some((u32::try_from(i).ok()?, slot.take()?)))
            .collect()
    }
}

/// Relays between `front` (the front-end) and `inner` (the handler's end) until either side
/// closes, for a device of `num_rings` virtqueues; returns the two relay threads.
///
/// # Errors
/// A socket cannot be cloned or a thread cannot be spawned.
pub fn spawn(
    front: UnixStream,
    inner: UnixStream,
    num_rings: usize,
) -> io::Result<[JoinHandle<()>; 2]> {
    let front_writer = Arc::new(Mutex::new(front.try_clone()?));
    let (front_r, inner_w) = (front.try_clone()?, inner.try_clone()?);
    let writer = front_writer.clone();
    let to_handler = spawn_direction("vhost-relay-in", front_r, inner_w, move |from, to| {
        to_handler(from, to, &writer, num_rings)
    })?;
    let to_front = spawn_direction("vhost-relay-out", inner, front, move |from, _| {
        while let Some(m) = read_message(from)? {
            write_message(&front_writer.lock().unwrap_or_else(|p| p.into_inner()), &m)?;
        }
        Ok(())
    })?;
    Ok([to_handler, to_front])
}

/// A thread that runs `relay(from, to)` and then shuts both sockets down, so the other
/// direction ends too.
fn spawn_direction(
    name: &str,
    from: UnixStream,
    to: UnixStream,
    relay: impl FnOnce(&UnixStream, &UnixStream) -> io::Result<()> + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Err(e) = relay(&from, &to) {
                log::debug!("{thread} ended: {e}");
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        })
}

/// Forwards the front-end's messages to the handler, answering early ring enables and
/// replaying them after SET_FEATURES (see the module documentation).
fn to_handler(
    front: &UnixStream,
    inner: &UnixStream,
    writer: &Mutex<UnixStream>,
    num_rings: usize,
) -> io::Result<()> {
    let mut relay = ToHandler::new(num_rings);
    while relay.forward_one(front, inner, writer)? {}
    Ok(())
}

/// The front-end-to-handler direction of the relay, one message at a time: what the relay
/// thread runs, and what the vhost-user fuzz target drives on its own thread.
pub struct ToHandler {
    /// The virtio features the front-end set last (VHOST_USER_SET_FEATURES).
    acked: u64,
    early: EarlyStates,
}

impl ToHandler {
    /// The relay for a device of `num_rings` virtqueues, before any message.
    pub fn new(num_rings: usize) -> ToHandler {
        ToHandler {
            acked: 0,
            early: EarlyStates::new(num_rings),
        }
    }

    /// Reads one message (header, payload, descriptors) from the front-end's `front` and
    /// passes it to the handler's `inner`, or answers an early SET_VRING_ENABLE itself on
    /// `answers` (the front-end's socket). Returns false at the end of the front-end's stream.
    ///
    /// # Errors
    /// A socket error, a message cut short or one above vhost-user's MAX_MSG_SIZE (4096 bytes
    /// of payload): the relay ends.
    pub fn forward_one(
        &mut self,
        front: &UnixStream,
        inner: &UnixStream,
        answers: &Mutex<UnixStream>,
    ) -> io::Result<bool> {
        let Some(m) = read_message(front)? else {
            return Ok(false);
        };
        log::trace!(
            "front-end request {} ({} bytes, {} fds)",
            m.request(),
            m.payload.len(),
            m.fds.len()
        );
        if m.request() == u32::from(FrontendReq::SET_FEATURES) {
            self.acked = m
                .payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
        }
        if is_early_ring_enable(&m, self.acked) {
            log::debug!("answering SET_VRING_ENABLE sent before SET_FEATURES");
            let known =
                ring_state(&m).is_some_and(|(index, state)| self.early.remember(index, state));
            if !known {
                log::warn!("early SET_VRING_ENABLE of a ring the device lacks");
            }
            if m.flags() & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
                write_message(
                    &answers.lock().unwrap_or_else(|p| p.into_inner()),
                    &ack(&m, u64::from(!known)),
                )?;
            }
            return Ok(true);
        }
        write_message(inner, &m)?;
        if m.request() == u32::from(FrontendReq::SET_FEATURES) {
            let protocol = self.acked & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
            for (index, state) in self.early.take() {
                if protocol {
                    write_message(inner, &ring_enable(index, state))?;
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    fn message(request: FrontendReq, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = u32::from(request).to_le_bytes().to_vec();
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Found by the vhost_user fuzz target: a header written in pieces, each with descriptors,
    /// added up to more than a message may carry; the relay passed them all on in one message,
    /// the handler lost it and read the next message as its rest. Now it is refused.
    #[test]
    fn refuses_more_descriptors_than_a_message_may_carry() {
        let (front, qemu) = UnixStream::pair().unwrap();
        let (inner, handler) = UnixStream::pair().unwrap();
        let answers = Mutex::new(front.try_clone().unwrap());
        let file = File::open("/dev/null").unwrap();
        let fds = [file.as_raw_fd(); 8];
        let header = message(FrontendReq::GET_FEATURES, 0x1, &[]);
        // Five pieces of eight descriptors each: 40 in all.
        for piece in [
            &header[..2],
            &header[2..4],
            &header[4..6],
            &header[6..8],
            &header[8..],
        ] {
            sendmsg::<()>(
                qemu.as_raw_fd(),
                &[IoSlice::new(piece)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
        let mut relay = ToHandler::new(1);
        let refused = relay.forward_one(&front, &inner, &answers);
        assert_eq!(
            refused.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::InvalidData)
        );
        handler.set_nonblocking(true).unwrap();
        assert!(
            read_message(&handler).is_err(),
            "nothing was passed to the handler"
        );
    }

    #[test]
    fn answers_early_ring_enables_and_passes_the_rest_with_fds() {
        let (front, qemu) = UnixStream::pair().unwrap();
        let (inner, handler) = UnixStream::pair().unwrap();
        let threads = spawn(front, inner, 3).unwrap();
        let need_reply = 0x1 | VhostUserHeaderFlag::NEED_REPLY.bits();
        // An early SET_VRING_ENABLE with NEED_REPLY: answered by the relay, not forwarded.
        let state = [0u8, 0, 0, 0, 1, 0, 0, 0];
        (&qemu)
            .write_all(&message(FrontendReq::SET_VRING_ENABLE, need_reply, &state))
            .unwrap();
        let mut reply = [0u8; 20];
        (&qemu).read_exact(&mut reply).unwrap();
        assert_eq!(
            u32::from_le_bytes(reply[..4].try_into().unwrap()),
            u32::from(FrontendReq::SET_VRING_ENABLE)
        );
        assert_eq!(u32::from_le_bytes(reply[4..8].try_into().unwrap()), 0x5);
        assert_eq!(&reply[12..], &[0; 8]);
        // A message with a descriptor passes through, descriptor included.
        let file = File::open("/dev/null").unwrap();
        let kick = message(FrontendReq::SET_VRING_KICK, 0x1, &0u64.to_le_bytes());
        let fds = [file.as_raw_fd()];
        sendmsg::<()>(
            qemu.as_raw_fd(),
            &[IoSlice::new(&kick)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let got = read_message(&handler).unwrap().unwrap();
        assert_eq!(got.request(), u32::from(FrontendReq::SET_VRING_KICK));
        assert_eq!(got.fds.len(), 1);
        // After SET_FEATURES with PROTOCOL_FEATURES, the remembered state is handed over
        // (no reply asked), and later ring enables pass through.
        let features = VhostUserVirtioFeatures::PROTOCOL_FEATURES
            .bits()
            .to_le_bytes();
        (&qemu)
            .write_all(&message(FrontendReq::SET_FEATURES, 0x1, &features))
            .unwrap();
        let later_state = [1u8, 0, 0, 0, 0, 0, 0, 0];
        (&qemu)
            .write_all(&message(FrontendReq::SET_VRING_ENABLE, 0x1, &later_state))
            .unwrap();
        let features_msg = read_message(&handler).unwrap().unwrap();
        assert_eq!(features_msg.request(), u32::from(FrontendReq::SET_FEATURES));
        let replayed = read_message(&handler).unwrap().unwrap();
        assert_eq!(replayed.request(), u32::from(FrontendReq::SET_VRING_ENABLE));
        assert_eq!(ring_state(&replayed), Some((0, 1)));
        assert_eq!(replayed.flags() & VhostUserHeaderFlag::NEED_REPLY.bits(), 0);
        assert_eq!(
            ring_state(&read_message(&handler).unwrap().unwrap()),
            Some((1, 0))
        );
        // Replies flow back; closing one side ends both threads.
        (&handler)
            .write_all(&message(
                FrontendReq::GET_FEATURES,
                0x5,
                &7u64.to_le_bytes(),
            ))
            .unwrap();
        let mut back = [0u8; 20];
        (&qemu).read_exact(&mut back).unwrap();
        assert_eq!(&back[12..], &7u64.to_le_bytes());
        drop(qemu);
        for t in threads {
            t.join().unwrap();
        }
        assert!(read_message(&handler).unwrap().is_none());
    }

    #[test]
    fn early_states_are_bounded_by_the_rings() {
        let (front, qemu) = UnixStream::pair().unwrap();
        let (inner, handler) = UnixStream::pair().unwrap();
        let threads = spawn(front, inner, 3).unwrap();
        let need_reply = 0x1 | VhostUserHeaderFlag::NEED_REPLY.bits();
        // Thousands of distinct ring indices before SET_FEATURES: only the device's 3 rings
        // are remembered; the others are refused.
        for index in 0u32..5000 {
            let mut state = index.to_le_bytes().to_vec();
            state.extend_from_slice(&1u32.to_le_bytes());
            (&qemu)
                .write_all(&message(FrontendReq::SET_VRING_ENABLE, need_reply, &state))
                .unwrap();
            let mut reply = [0u8; 20];
            (&qemu).read_exact(&mut reply).unwrap();
            let status = u64::from_le_bytes(reply[12..].try_into().unwrap());
            assert_eq!(status != 0, index >= 3, "ring {index}");
        }
        let features = VhostUserVirtioFeatures::PROTOCOL_FEATURES
            .bits()
            .to_le_bytes();
        (&qemu)
            .write_all(&message(FrontendReq::SET_FEATURES, 0x1, &features))
            .unwrap();
        assert_eq!(
            read_message(&handler).unwrap().unwrap().request(),
            u32::from(FrontendReq::SET_FEATURES)
        );
        let replayed: Vec<_> = (0..3)
            .map(|_| ring_state(&read_message(&handler).unwrap().unwrap()))
            .collect();
        assert_eq!(replayed, vec![Some((0, 1)), Some((1, 1)), Some((2, 1))]);
        // Nothing else was replayed: the next message is the front-end's next one.
        (&qemu)
            .write_all(&message(FrontendReq::GET_FEATURES, 0x1, &[]))
            .unwrap();
        assert_eq!(
            read_message(&handler).unwrap().unwrap().request(),
            u32::from(FrontendReq::GET_FEATURES)
        );
        drop(qemu);
        for t in threads {
            t.join().unwrap();
        }
    }
}
