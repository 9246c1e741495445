//! The broker's wire format on a unix SOCK_SEQPACKET socket: one fixed 16-byte message per
//! request and per reply, little-endian, descriptors attached with SCM_RIGHTS.
//!
//! Request: `op: u32, args: [u32; 3]`. Reply: `errno: i32` (0 on success, a positive errno value
//! as the hypercall would return negated), `vals: [u32; 3]`, plus up to [`MAX_FDS`] descriptors.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::{BrokerError, Result};
use crate::mapping::recv_with_fds;

/// Size of every request and reply in bytes.
pub(crate) const MSG_SIZE: usize = 16;
/// Most descriptors one reply carries (an event-channel page and a doorbell).
pub(crate) const MAX_FDS: usize = 2;

/// Broker operations, named after the hypercalls they stand in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Identify the connection as domain `args[0]`; the reply carries the endpoint's
    /// event-channel page and doorbell eventfd.
    Hello,
    /// GNTTABOP-style grant: a new region of `args[1]` pages readable and writable by domain
    /// `args[0]`. Reply: `[gref, pages]` + the region fd.
    GrantAccess,
    /// Map grant `args[1]` of domain `args[0]`. Reply: `[pages]` + the region fd.
    MapGrant,
    /// End grant `args[0]` (gnttab_end_foreign_access); existing mappings stay valid.
    EndAccess,
    /// EVTCHNOP_alloc_unbound for remote domain `args[0]`. Reply: `[port]`.
    AllocUnbound,
    /// EVTCHNOP_bind_interdomain to port `args[1]` of domain `args[0]`. Reply:
    /// `[local port, remote endpoint id, remote port]` + the remote endpoint's page and doorbell.
    BindInterdomain,
    /// Where a send on local port `args[0]` goes. Reply: like BindInterdomain's, with
    /// `vals[0]` = the local port; ENOTCONN while the port is unbound.
    Route,
    /// EVTCHNOP_close of local port `args[0]`.
    Close,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::Hello,
        Op::GrantAccess,
        Op::MapGrant,
        Op::EndAccess,
        Op::AllocUnbound,
        Op::BindInterdomain,
        Op::Route,
        Op::Close,
    ];

    fn code(self) -> u32 {
        Self::ALL
            .iter()
            .position(|&op| op == self)
            .map_or(0, |i| i as u32 + 1)
    }

    fn from_code(code: u32) -> Option<Self> {
        Self::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// The Xen name of the operation, for errors and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::GrantAccess => "gnttab_grant_foreign_access",
            Op::MapGrant => "GNTTABOP_map_grant_ref",
            Op::EndAccess => "gnttab_end_foreign_access",
            Op::AllocUnbound => "EVTCHNOP_alloc_unbound",
            Op::BindInterdomain => "EVTCHNOP_bind_interdomain",
            Op::Route => "route",
            Op::Close => "EVTCHNOP_close",
        }
    }
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) args: [u32; 3],
}

impl Request {
    pub(crate) fn encode(&self) -> [u8; MSG_SIZE] {
        encode_words(self.op.code(), self.args)
    }

    /// Decodes a request.
    ///
    /// # Errors
    /// [`BrokerError::Malformed`] for a wrong length or an unknown op.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self> {
        let (code, args) = decode_words(buf)?;
        let op = Op::from_code(code).ok_or(BrokerError::Malformed {
            len: buf.len(),
            code,
        })?;
        Ok(Self { op, args })
    }
}

/// A decoded reply: the values, or the errno the broker refused the request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply(pub(crate) std::result::Result<[u32; 3], Errno>);

impl Reply {
    pub(crate) fn encode(&self) -> [u8; MSG_SIZE] {
        match self.0 {
            Ok(vals) => encode_words(0, vals),
            Err(e) => encode_words(e as i32 as u32, [0; 3]),
        }
    }

    /// Decodes a reply.
    ///
    /// # Errors
    /// [`BrokerError::Malformed`] for a wrong length.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self> {
        let (errno, vals) = decode_words(buf)?;
        Ok(Self(match errno {
            0 => Ok(vals),
            e => Err(Errno::from_raw(e as i32)),
        }))
    }
}

fn encode_words(first: u32, rest: [u32; 3]) -> [u8; MSG_SIZE] {
    let mut out = [0u8; MSG_SIZE];
    for (chunk, w) in out
        .chunks_exact_mut(4)
        .zip([first, rest[0], rest[1], rest[2]])
    {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn decode_words(buf: &[u8]) -> Result<(u32, [u32; 3])> {
    let bytes: &[u8; MSG_SIZE] = buf.try_into().map_err(|_| BrokerError::Malformed {
        len: buf.len(),
        code: 0,
    })?;
    let mut w = [0u32; 4];
    for (word, chunk) in w.iter_mut().zip(bytes.chunks_exact(4)) {
        let mut le = [0u8; 4];
        le.copy_from_slice(chunk);
        *word = u32::from_le_bytes(le);
    }
    Ok((w[0], [w[1], w[2], w[3]]))
}

/// Sends one message with `fds` attached.
///
/// # Errors
/// [`BrokerError::Socket`] from sendmsg.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    msg: &[u8; MSG_SIZE],
    fds: &[BorrowedFd<'_>],
) -> Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(msg)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(BrokerError::Socket(e)),
            Ok(_) => return Ok(()),
        }
    }
}

/// Receives one message and the descriptors attached to it; `None` when the peer has closed.
///
/// # Errors
/// [`BrokerError::Socket`] from recvmsg; [`BrokerError::Malformed`] if the message or its
/// descriptors were truncated (the received descriptors are closed).
pub(crate) fn recv(sock: BorrowedFd<'_>) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    // One byte more than a message, so an oversized message shows up as a wrong length.
    let mut buf = vec![0u8; MSG_SIZE + 1];
    let (len, flags, fds) = loop {
        match recv_with_fds(sock, &mut buf, MAX_FDS) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(BrokerError::Socket(e)),
            Ok(r) => break r,
        }
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if flags.intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC) {
        return Err(BrokerError::Malformed { len, code: 0 });
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip() {
        for op in Op::ALL {
            let r = Request {
                op,
                args: [1, u32::MAX, 7],
            };
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let ok = Reply(Ok([3, 4, 5]));
        assert_eq!(Reply::decode(&ok.encode()).unwrap(), ok);
        let err = Reply(Err(Errno::EPERM));
        assert_eq!(Reply::decode(&err.encode()).unwrap(), err);
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(Request::decode(&[0u8; 15]).is_err());
        assert!(Request::decode(&[0u8; 17]).is_err());
        let mut unknown = [0u8; MSG_SIZE];
        unknown[0] = 99;
        assert!(matches!(
            Request::decode(&unknown),
            Err(BrokerError::Malformed { code: 99, .. })
        ));
        assert!(Request::decode(&[0u8; MSG_SIZE]).is_err());
    }
}
