//! The xs_wire codec: the `xsd_sockmsg` header, message types, errno names and payload
//! helpers (Xen `xen/include/public/io/xs_wire.h`, `docs/misc/xenstore.txt`).
//!
//! A message is a 16-byte header `{type, req_id, tx_id, len}` of little-endian `u32`s followed
//! by `len` payload bytes, `len <= XENSTORE_PAYLOAD_MAX` (4096). [`Decoder`] turns a byte stream
//! that arrives in arbitrary pieces into whole [`Message`]s; it never panics on any input.

use std::fmt;

use thiserror::Error;

/// Maximum payload of one message in bytes (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Maximum length of an absolute path in bytes (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Maximum length of a path relative to a domain's home in bytes (`XENSTORE_REL_PATH_MAX`).
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// Size of the `xsd_sockmsg` header in bytes.
pub const HEADER_LEN: usize = 16;

/// Errors of the wire layer. Each one ends the connection: the stream cannot be trusted after.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The header announced a payload longer than [`XENSTORE_PAYLOAD_MAX`].
    #[error("payload of {len} bytes exceeds the {XENSTORE_PAYLOAD_MAX}-byte limit")]
    PayloadTooLarge {
        /// The header that carried the length (its req_id and tx_id go into the error reply).
        header: Header,
        /// The announced payload length in bytes.
        len: u32,
    },
}

/// Result type of the wire layer.
pub type Result<T> = std::result::Result<T, WireError>;

macro_rules! msg_types {
    ($($(#[$doc:meta])* $name:ident = $val:expr),* $(,)?) => {
        /// XenStore message types (`enum xsd_sockmsg_type` in xs_wire.h).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum MsgType {
            $($(#[$doc])* $name = $val,)*
        }

        impl MsgType {
            /// The type for a wire value, `None` when xs_wire.h does not define it.
            pub fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $($val => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// The name used in xenstored's logs, e.g. `"WRITE"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }
        }
    };
}

msg_types! {
    /// XS_CONTROL (formerly XS_DEBUG).
    CONTROL = 0,
    /// XS_DIRECTORY: list a node's children.
    DIRECTORY = 1,
    /// XS_READ: read a node's value.
    READ = 2,
    /// XS_GET_PERMS: read a node's permissions.
    GET_PERMS = 3,
    /// XS_WATCH: register a watch.
    WATCH = 4,
    /// XS_UNWATCH: drop a watch.
    UNWATCH = 5,
    /// XS_TRANSACTION_START.
    TRANSACTION_START = 6,
    /// XS_TRANSACTION_END.
    TRANSACTION_END = 7,
    /// XS_INTRODUCE: register a guest domain (privileged).
    INTRODUCE = 8,
    /// XS_RELEASE: forget a guest domain (privileged).
    RELEASE = 9,
    /// XS_GET_DOMAIN_PATH.
    GET_DOMAIN_PATH = 10,
    /// XS_WRITE.
    WRITE = 11,
    /// XS_MKDIR.
    MKDIR = 12,
    /// XS_RM (recursive).
    RM = 13,
    /// XS_SET_PERMS.
    SET_PERMS = 14,
    /// XS_WATCH_EVENT (server to client only).
    WATCH_EVENT = 15,
    /// XS_ERROR (server to client only).
    ERROR = 16,
    /// XS_IS_DOMAIN_INTRODUCED (privileged).
    IS_DOMAIN_INTRODUCED = 17,
    /// XS_RESUME (privileged).
    RESUME = 18,
    /// XS_SET_TARGET (privileged).
    SET_TARGET = 19,
    /// XS_RESTRICT (obsolete).
    RESTRICT = 20,
    /// XS_RESET_WATCHES.
    RESET_WATCHES = 21,
    /// XS_DIRECTORY_PART: list children from a byte offset.
    DIRECTORY_PART = 22,
    /// XS_GET_FEATURE (optional).
    GET_FEATURE = 23,
    /// XS_SET_FEATURE (optional).
    SET_FEATURE = 24,
    /// XS_GET_QUOTA (optional).
    GET_QUOTA = 25,
    /// XS_SET_QUOTA (optional).
    SET_QUOTA = 26,
    /// XS_INVALID.
    INVALID = 0xffff,
}

macro_rules! errnos {
    ($($(#[$doc:meta])* $name:ident = $num:expr),* $(,)?) => {
        /// The errno values XenStore sends in XS_ERROR replies, by name, in xs_wire.h's order
        /// (`xsd_errors[]`). The payload of an XS_ERROR is the name, NUL-terminated.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Errno {
            $($(#[$doc])* $name,)*
        }

        impl Errno {
            /// Every errno in xs_wire.h's order.
            pub const ALL: &'static [Errno] = &[$(Errno::$name),*];

            /// The name as sent on the wire, e.g. `"ENOENT"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }

            /// The Linux errno number.
            pub fn raw(self) -> i32 {
                match self {
                    $(Self::$name => $num,)*
                }
            }

            /// The errno for a wire name; `None` for a name xs_wire.h does not list.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($name) => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    /// Invalid argument (bad path, malformed payload).
    EINVAL = libc::EINVAL,
    /// Permission denied.
    EACCES = libc::EACCES,
    /// Already exists (duplicate watch).
    EEXIST = libc::EEXIST,
    /// Is a directory.
    EISDIR = libc::EISDIR,
    /// No such node, transaction or domain.
    ENOENT = libc::ENOENT,
    /// Out of memory.
    ENOMEM = libc::ENOMEM,
    /// Quota exhausted (nodes, node size, transactions).
    ENOSPC = libc::ENOSPC,
    /// I/O error (journal write failed).
    EIO = libc::EIO,
    /// Directory not empty.
    ENOTEMPTY = libc::ENOTEMPTY,
    /// Unknown or unsupported message type.
    ENOSYS = libc::ENOSYS,
    /// Read-only.
    EROFS = libc::EROFS,
    /// Busy (nested transaction).
    EBUSY = libc::EBUSY,
    /// Transaction conflict: retry the whole transaction.
    EAGAIN = libc::EAGAIN,
    /// Already connected.
    EISCONN = libc::EISCONN,
    /// Too big (reply over the payload limit, watch quota).
    E2BIG = libc::E2BIG,
    /// Operation not permitted (changing a node's owner).
    EPERM = libc::EPERM,
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Errno {}

/// The `xsd_sockmsg` header. `msg_type` stays raw so unknown types can be answered (ENOSYS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Message type (`MsgType` value, or unknown).
    pub msg_type: u32,
    /// Request id chosen by the client, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0 = none), echoed in the reply.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Decodes a header from its 16 little-endian bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// Encodes the header as 16 little-endian bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, w) in [self.msg_type, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

/// One whole message: header plus payload (`payload.len() == header.len`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header as received.
    pub header: Header,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// The message type, `None` when unknown.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.header.msg_type)
    }
}

/// Encodes one message.
///
/// # Panics
/// Panics if `payload` is longer than `u32::MAX` bytes (callers keep it under 4096).
pub fn encode(msg_type: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payloads are bounded by XENSTORE_PAYLOAD_MAX");
    let header = Header {
        msg_type: msg_type as u32,
        req_id,
        tx_id,
        len,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

/// Encodes an XS_ERROR reply carrying `errno`'s name for the request `header`.
pub fn encode_error(header: &Header, errno: Errno) -> Vec<u8> {
    let mut payload = Vec::with_capacity(12);
    payload.extend_from_slice(errno.name().as_bytes());
    payload.push(0);
    encode(MsgType::ERROR, header.req_id, header.tx_id, &payload)
}

/// Incremental decoder of a byte stream into [`Message`]s.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Number of buffered bytes not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// [`WireError::PayloadTooLarge`] when a header announces more than 4096 bytes; the
    /// decoder then stays in that state (the connection must be closed).
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        let pending = &self.buf[self.start..];
        let Some(head) = pending.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(head);
        let len = header.len as usize;
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(WireError::PayloadTooLarge {
                header,
                len: header.len,
            });
        }
        let Some(payload) = pending.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = Message {
            header,
            payload: payload.to_vec(),
        };
        self.start += HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }
}

/// Splits a payload into its NUL-terminated strings. Bytes after the last NUL are ignored,
/// as C xenstored's `get_strings` does.
pub fn split_strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(nul) = rest.iter().position(|&b| b == 0) {
        out.push(&rest[..nul]);
        rest = &rest[nul + 1..];
    }
    out
}

/// The single string of a payload that must hold exactly one NUL, at its end (`onearg`).
/// `None` for anything else or for non-UTF-8 bytes (paths are ASCII).
pub fn one_arg(payload: &[u8]) -> Option<&str> {
    let (last, body) = payload.split_last()?;
    if *last != 0 || body.contains(&0) {
        return None;
    }
    std::str::from_utf8(body).ok()
}

/// The strings of a payload as `&str`, requiring exactly `n` of them and that the payload
/// ends with the last NUL. `None` otherwise.
pub fn exact_strings(payload: &[u8], n: usize) -> Option<Vec<&str>> {
    if payload.last() != Some(&0) {
        return None;
    }
    let parts = split_strings(payload);
    if parts.len() != n {
        return None;
    }
    parts
        .into_iter()
        .map(|p| std::str::from_utf8(p).ok())
        .collect()
}

/// Builds a payload of NUL-terminated strings.
pub fn join_strings<S: AsRef<[u8]>>(parts: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn header_roundtrip_is_little_endian() {
        let h = Header {
            msg_type: 11,
            req_id: 0x01020304,
            tx_id: 7,
            len: 5,
        };
        let b = h.encode();
        assert_eq!(&b[..4], &[11, 0, 0, 0]);
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn errno_names_follow_xs_wire_order() {
        let names: Vec<_> = Errno::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "EINVAL",
                "EACCES",
                "EEXIST",
                "EISDIR",
                "ENOENT",
                "ENOMEM",
                "ENOSPC",
                "EIO",
                "ENOTEMPTY",
                "ENOSYS",
                "EROFS",
                "EBUSY",
                "EAGAIN",
                "EISCONN",
                "E2BIG",
                "EPERM"
            ]
        );
        for e in Errno::ALL {
            assert_eq!(Errno::from_name(e.name()), Some(*e));
        }
        assert_eq!(Errno::from_name("EQUOTA"), None);
    }

    #[test]
    fn oversized_payload_is_an_error_not_a_panic() {
        let mut d = Decoder::new();
        let h = Header {
            msg_type: 2,
            req_id: 9,
            tx_id: 0,
            len: 4097,
        };
        d.push(&h.encode());
        match d.next_message() {
            Err(WireError::PayloadTooLarge { header, len }) => {
                assert_eq!(len, 4097);
                assert_eq!(header.req_id, 9);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn payload_helpers() {
        assert_eq!(one_arg(b"/a\0"), Some("/a"));
        assert_eq!(one_arg(b"/a"), None);
        assert_eq!(one_arg(b"/a\0b\0"), None);
        assert_eq!(one_arg(b""), None);
        assert_eq!(exact_strings(b"p\0t\0", 2), Some(vec!["p", "t"]));
        assert_eq!(exact_strings(b"p\0t", 2), None);
        assert_eq!(split_strings(b"a\0\0b"), vec![&b"a"[..], &b""[..]]);
        assert_eq!(join_strings(&["x", "y"]), b"x\0y\0");
    }

    fn arb_message() -> impl Strategy<Value = (u32, u32, u32, Vec<u8>)> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
    }

    proptest! {
        /// Any sequence of valid messages, cut into arbitrary pieces, decodes to the same
        /// messages in order.
        #[test]
        fn decode_reassembles_any_split(
            msgs in proptest::collection::vec(arb_message(), 0..8),
            cuts in proptest::collection::vec(1usize..64, 1..32),
        ) {
            let mut stream = Vec::new();
            for (t, r, x, p) in &msgs {
                let h = Header { msg_type: *t, req_id: *r, tx_id: *x, len: p.len() as u32 };
                stream.extend_from_slice(&h.encode());
                stream.extend_from_slice(p);
            }
            let mut d = Decoder::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - pos);
                d.push(&stream[pos..pos + n]);
                pos += n;
                i += 1;
                while let Some(m) = d.next_message().expect("valid stream") {
                    got.push(m);
                }
            }
            prop_assert_eq!(got.len(), msgs.len());
            for (m, (t, r, x, p)) in got.iter().zip(&msgs) {
                prop_assert_eq!(m.header.msg_type, *t);
                prop_assert_eq!(m.header.req_id, *r);
                prop_assert_eq!(m.header.tx_id, *x);
                prop_assert_eq!(&m.payload, p);
            }
            prop_assert_eq!(d.buffered(), 0);
        }

        /// Arbitrary bytes never panic the decoder; every message it yields is within limits,
        /// and an error only comes from an oversized length.
        #[test]
        fn decode_never_panics_on_garbage(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)
        ) {
            let mut d = Decoder::new();
            'outer: for c in &chunks {
                d.push(c);
                loop {
                    match d.next_message() {
                        Ok(Some(m)) => {
                            prop_assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
                            prop_assert_eq!(m.payload.len(), m.header.len as usize);
                        }
                        Ok(None) => break,
                        Err(WireError::PayloadTooLarge { len, .. }) => {
                            prop_assert!(len as usize > XENSTORE_PAYLOAD_MAX);
                            break 'outer;
                        }
                    }
                }
            }
        }
    }
}
