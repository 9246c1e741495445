//! A blocking XenStore client over a unix socket, for back-ends, the VMM and tests.
//!
//! It finds the daemon the way libxenstore does: `XENSTORED_PATH`, else
//! `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket`. Watch events that arrive
//! while a reply is awaited are kept and handed out by [`Client::next_event`]. Node
//! operations are the [`XsOps`] trait, implemented by the client (outside transactions) and
//! by [`Transaction`]; [`Client::transaction`] retries the whole closure on `EAGAIN`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::perms::NodePerms;
use crate::wire::{self, Decoder, Errno, Header, Message, MsgType};

/// Default socket of xenstored (libxenstore's `xs_daemon_socket`).
pub const DEFAULT_SOCKET: &str = "/var/run/xenstored/socket";
/// How often [`Client::transaction`] retries on `EAGAIN` before giving up.
pub const MAX_TRANSACTION_ATTEMPTS: usize = 1000;

/// Errors of the client.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket could not be opened.
    #[error("cannot connect to {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket failed or closed.
    #[error("xenstore socket")]
    Io(#[from] io::Error),
    /// The daemon answered with an error.
    #[error("xenstore error {0}")]
    Xs(Errno),
    /// The daemon's reply made no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The daemon's errno, if this is an XS_ERROR reply.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ClientError::Xs(e) => Some(*e),
            _ => None,
        }
    }
}

/// Result type of the client.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A watch event: the changed path (relative for relative watches) and the watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Path of the change.
    pub path: String,
    /// Token given to [`Client::watch`].
    pub token: String,
}

/// The socket path libxenstore would use.
pub fn socket_path_from_env() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("XENSTORED_RUNDIR") {
        return Path::new(&dir).join("socket");
    }
    PathBuf::from(DEFAULT_SOCKET)
}

fn path_payload(path: &str) -> Vec<u8> {
    wire::join_strings(&[path])
}

/// Node operations, inside or outside a transaction.
pub trait XsOps {
    /// Sends one request and returns the reply payload.
    ///
    /// # Errors
    /// [`ClientError::Xs`] for an XS_ERROR reply; I/O and protocol errors.
    fn request(&mut self, msg_type: MsgType, payload: &[u8]) -> Result<Vec<u8>>;

    /// XS_READ: the value of `path` (absolute, or relative to the caller's home).
    ///
    /// # Errors
    /// `Xs(ENOENT)`, `Xs(EACCES)`, ...
    fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        self.request(MsgType::READ, &path_payload(path))
    }

    /// XS_READ as UTF-8 text (lossy).
    ///
    /// # Errors
    /// As [`XsOps::read`].
    fn read_string(&mut self, path: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read(path)?).into_owned())
    }

    /// Whether `path` exists and is readable.
    ///
    /// # Errors
    /// Errors other than `ENOENT` and `EACCES`.
    fn exists(&mut self, path: &str) -> Result<bool> {
        match self.read(path) {
            Ok(_) => Ok(true),
            Err(ClientError::Xs(Errno::ENOENT | Errno::EACCES)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// XS_WRITE: sets `value` (up to 4096 bytes minus the path), creating missing parents.
    ///
    /// # Errors
    /// `Xs(EACCES)`, `Xs(ENOSPC)`, `Xs(EINVAL)`, ...
    fn write(&mut self, path: &str, value: &[u8]) -> Result<()> {
        let mut payload = path_payload(path);
        payload.extend_from_slice(value);
        self.request(MsgType::WRITE, &payload).map(drop)
    }

    /// XS_MKDIR.
    ///
    /// # Errors
    /// As [`XsOps::write`].
    fn mkdir(&mut self, path: &str) -> Result<()> {
        self.request(MsgType::MKDIR, &path_payload(path)).map(drop)
    }

    /// XS_RM: removes `path` and its subtree.
    ///
    /// # Errors
    /// `Xs(ENOENT)` when the parent is missing, `Xs(EACCES)`, ...
    fn rm(&mut self, path: &str) -> Result<()> {
        self.request(MsgType::RM, &path_payload(path)).map(drop)
    }

    /// XS_DIRECTORY: the children of `path`; falls back to XS_DIRECTORY_PART when the list
    /// does not fit one reply (`E2BIG`).
    ///
    /// # Errors
    /// `Xs(ENOENT)`, `Xs(EACCES)`, ...
    fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        let bytes = match self.request(MsgType::DIRECTORY, &path_payload(path)) {
            Err(ClientError::Xs(Errno::E2BIG)) => directory_by_parts(self, path)?,
            other => other?,
        };
        Ok(wire::split_strings(&bytes)
            .into_iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// XS_GET_PERMS.
    ///
    /// # Errors
    /// `Xs(ENOENT)`, `Xs(EACCES)`; a malformed reply.
    fn get_perms(&mut self, path: &str) -> Result<NodePerms> {
        let bytes = self.request(MsgType::GET_PERMS, &path_payload(path))?;
        let parts: Vec<String> = wire::split_strings(&bytes)
            .into_iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        NodePerms::parse(&parts).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// XS_SET_PERMS.
    ///
    /// # Errors
    /// `Xs(EACCES)`, `Xs(EPERM)`, `Xs(ENOENT)`, ...
    fn set_perms(&mut self, path: &str, perms: &NodePerms) -> Result<()> {
        let mut payload = path_payload(path);
        payload.extend_from_slice(&perms.to_payload());
        self.request(MsgType::SET_PERMS, &payload).map(drop)
    }
}

/// Reads a directory with XS_DIRECTORY_PART, restarting if it changes meanwhile.
fn directory_by_parts<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<Vec<u8>> {
    'restart: for _ in 0..MAX_TRANSACTION_ATTEMPTS {
        let mut all = Vec::new();
        let mut generation: Option<Vec<u8>> = None;
        loop {
            let offset = all.len().to_string();
            let reply = ops.request(
                MsgType::DIRECTORY_PART,
                &wire::join_strings(&[path, &offset]),
            )?;
            let nul = reply
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| ClientError::Protocol("DIRECTORY_PART without generation".into()))?;
            let (gen, body) = (&reply[..nul], &reply[nul + 1..]);
            if generation.as_deref().is_some_and(|g| g != gen) {
                continue 'restart;
            }
            generation = Some(gen.to_vec());
            let done = body == b"\0" || body.ends_with(b"\0\0");
            if done {
                all.extend_from_slice(&body[..body.len() - 1]);
                return Ok(all);
            }
            if body.is_empty() {
                return Err(ClientError::Protocol("empty DIRECTORY_PART chunk".into()));
            }
            all.extend_from_slice(body);
        }
    }
    Err(ClientError::Xs(Errno::EAGAIN))
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    decoder: Decoder,
    next_req: u32,
    events: VecDeque<WatchEvent>,
}

impl Client {
    /// Connects to the socket at `path`.
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Client {
            stream,
            decoder: Decoder::new(),
            next_req: 1,
            events: VecDeque::new(),
        })
    }

    /// Connects where libxenstore would ([`socket_path_from_env`]).
    ///
    /// # Errors
    /// [`ClientError::Connect`].
    pub fn from_env() -> Result<Self> {
        Self::connect(socket_path_from_env())
    }

    fn recv(&mut self) -> Result<Message> {
        let mut buf = [0u8; 8192];
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.decoder.push(&buf[..n]);
        }
    }

    fn keep_event(&mut self, m: &Message) -> Result<()> {
        let parts = wire::split_strings(&m.payload);
        let [path, token, ..] = parts.as_slice() else {
            return Err(ClientError::Protocol("short WATCH_EVENT".into()));
        };
        self.events.push_back(WatchEvent {
            path: String::from_utf8_lossy(path).into_owned(),
            token: String::from_utf8_lossy(token).into_owned(),
        });
        Ok(())
    }

    /// Sends a request with transaction id `tx_id` and waits for its reply.
    ///
    /// # Errors
    /// As [`XsOps::request`].
    pub fn request_in(&mut self, tx_id: u32, msg_type: MsgType, payload: &[u8]) -> Result<Vec<u8>> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.stream
            .write_all(&wire::encode(msg_type, req_id, tx_id, payload))?;
        loop {
            let m = self.recv()?;
            match m.msg_type() {
                Some(MsgType::WATCH_EVENT) => self.keep_event(&m)?,
                _ if m.header.req_id != req_id => {
                    return Err(ClientError::Protocol(format!(
                        "reply for request {} while waiting for {req_id}",
                        m.header.req_id
                    )))
                }
                Some(MsgType::ERROR) => {
                    let name = wire::one_arg(&m.payload).unwrap_or("");
                    return Err(match Errno::from_name(name) {
                        Some(e) => ClientError::Xs(e),
                        None => ClientError::Protocol(format!("unknown error {name:?}")),
                    });
                }
                Some(t) if t == msg_type => return Ok(m.payload),
                _ => {
                    return Err(ClientError::Protocol(format!(
                        "reply type {} to {}",
                        m.header.msg_type,
                        msg_type.name()
                    )))
                }
            }
        }
    }

    /// Sends raw bytes (tests of malformed input).
    ///
    /// # Errors
    /// I/O errors.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.stream.write_all(bytes)?)
    }

    /// Receives the next message whatever it is (tests of malformed input).
    ///
    /// # Errors
    /// I/O errors, end of stream.
    pub fn recv_raw(&mut self) -> Result<(Header, Vec<u8>)> {
        let m = self.recv()?;
        Ok((m.header, m.payload))
    }

    /// XS_WATCH on `path` with `token`; the first event arrives right away.
    ///
    /// # Errors
    /// `Xs(EEXIST)` for a duplicate, `Xs(E2BIG)` over quota, `Xs(EINVAL)`.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(MsgType::WATCH, &wire::join_strings(&[path, token]))
            .map(drop)
    }

    /// XS_WATCH limited to `depth` levels below `path`.
    ///
    /// # Errors
    /// As [`Client::watch`].
    pub fn watch_depth(&mut self, path: &str, token: &str, depth: u32) -> Result<()> {
        let d = depth.to_string();
        self.request(MsgType::WATCH, &wire::join_strings(&[path, token, &d]))
            .map(drop)
    }

    /// XS_UNWATCH.
    ///
    /// # Errors
    /// `Xs(ENOENT)` when no such watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(MsgType::UNWATCH, &wire::join_strings(&[path, token]))
            .map(drop)
    }

    /// XS_RESET_WATCHES: drops this connection's watches and transactions.
    ///
    /// # Errors
    /// I/O errors.
    pub fn reset_watches(&mut self) -> Result<()> {
        self.request(MsgType::RESET_WATCHES, b"").map(drop)
    }

    /// The next watch event, blocking until one arrives.
    ///
    /// # Errors
    /// I/O errors, end of stream.
    pub fn next_event(&mut self) -> Result<WatchEvent> {
        self.stream.set_read_timeout(None)?;
        self.wait_event()
    }

    /// The next watch event, or `None` after `timeout`.
    ///
    /// # Errors
    /// I/O errors, end of stream.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        let r = match self.wait_event() {
            Ok(e) => Ok(Some(e)),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        };
        self.stream.set_read_timeout(None)?;
        r
    }

    fn wait_event(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            let m = self.recv()?;
            if m.msg_type() != Some(MsgType::WATCH_EVENT) {
                return Err(ClientError::Protocol(format!(
                    "unexpected message type {} while waiting for events",
                    m.header.msg_type
                )));
            }
            self.keep_event(&m)?;
        }
    }

    /// An endless iterator of watch events (blocking).
    pub fn events(&mut self) -> impl Iterator<Item = Result<WatchEvent>> + '_ {
        std::iter::repeat_with(move || self.next_event())
    }

    /// XS_TRANSACTION_START: the new transaction's id.
    ///
    /// # Errors
    /// `Xs(ENOSPC)` over quota.
    pub fn transaction_start(&mut self) -> Result<u32> {
        let reply = self.request(MsgType::TRANSACTION_START, b"\0")?;
        wire::one_arg(&reply)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol("bad transaction id".into()))
    }

    /// XS_TRANSACTION_END: commits (`commit`) or aborts transaction `id`.
    ///
    /// # Errors
    /// `Xs(EAGAIN)` when a concurrent change conflicts (nothing was applied).
    pub fn transaction_end(&mut self, id: u32, commit: bool) -> Result<()> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request_in(id, MsgType::TRANSACTION_END, arg).map(drop)
    }

    /// A handle for operations inside transaction `id`.
    pub fn in_transaction(&mut self, id: u32) -> Transaction<'_> {
        Transaction { client: self, id }
    }

    /// Runs `f` in a transaction and commits, running it again from the start as long as
    /// the commit fails with `EAGAIN` (at most [`MAX_TRANSACTION_ATTEMPTS`] times). An error
    /// from `f` aborts the transaction and is returned.
    ///
    /// # Errors
    /// `f`'s error, or the commit's.
    pub fn transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        for _ in 0..MAX_TRANSACTION_ATTEMPTS {
            let id = self.transaction_start()?;
            let value = match f(&mut self.in_transaction(id)) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(id, false);
                    return Err(e);
                }
            };
            match self.transaction_end(id, true) {
                Ok(()) => return Ok(value),
                Err(ClientError::Xs(Errno::EAGAIN)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Xs(Errno::EAGAIN))
    }

    /// XS_INTRODUCE: registers guest `domid` with its ring frame and event channel.
    ///
    /// # Errors
    /// `Xs(EACCES)` unless privileged, `Xs(EINVAL)`.
    pub fn introduce(&mut self, domid: u32, gfn: u64, port: u32) -> Result<()> {
        let args = [domid.to_string(), gfn.to_string(), port.to_string()];
        self.request(MsgType::INTRODUCE, &wire::join_strings(&args))
            .map(drop)
    }

    /// XS_RELEASE: forgets `domid` and removes the nodes it owns.
    ///
    /// # Errors
    /// `Xs(ENOENT)` when not introduced.
    pub fn release(&mut self, domid: u32) -> Result<()> {
        self.request(MsgType::RELEASE, &path_payload(&domid.to_string()))
            .map(drop)
    }

    /// XS_IS_DOMAIN_INTRODUCED.
    ///
    /// # Errors
    /// `Xs(EACCES)` unless privileged.
    pub fn is_domain_introduced(&mut self, domid: u32) -> Result<bool> {
        let r = self.request(
            MsgType::IS_DOMAIN_INTRODUCED,
            &path_payload(&domid.to_string()),
        )?;
        Ok(r.first() == Some(&b'T'))
    }

    /// XS_GET_DOMAIN_PATH: `/local/domain/<domid>`.
    ///
    /// # Errors
    /// I/O and protocol errors.
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String> {
        let r = self.request(MsgType::GET_DOMAIN_PATH, &path_payload(&domid.to_string()))?;
        wire::one_arg(&r)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("bad domain path".into()))
    }

    /// XS_SET_TARGET: `domid` gets the rights of `target`.
    ///
    /// # Errors
    /// `Xs(ENOENT)` when either is not introduced.
    pub fn set_target(&mut self, domid: u32, target: u32) -> Result<()> {
        let args = [domid.to_string(), target.to_string()];
        self.request(MsgType::SET_TARGET, &wire::join_strings(&args))
            .map(drop)
    }
}

impl XsOps for Client {
    fn request(&mut self, msg_type: MsgType, payload: &[u8]) -> Result<Vec<u8>> {
        self.request_in(0, msg_type, payload)
    }
}

/// Operations inside one transaction.
#[derive(Debug)]
pub struct Transaction<'a> {
    client: &'a mut Client,
    id: u32,
}

impl Transaction<'_> {
    /// The transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl XsOps for Transaction<'_> {
    fn request(&mut self, msg_type: MsgType, payload: &[u8]) -> Result<Vec<u8>> {
        self.client.request_in(self.id, msg_type, payload)
    }
}
