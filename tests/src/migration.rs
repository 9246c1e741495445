//! Live migration of a running guest between two QEMU processes on this machine.
//!
//! The source QEMU boots the guest with a QMP monitor; the destination QEMU starts with the
//! same machine and devices plus `-incoming unix:PATH` and waits. Each QEMU has its own
//! vhost-user back-end instance (same image, or same TAP). [`migrate`] sends QMP `migrate` to
//! the source, polls `query-migrate` until the state is `completed` (or fails on `failed` /
//! `cancelled`) and then tells the source to `quit`; the guest goes on in the destination, whose
//! serial console continues where the source's stopped (QMP: qapi/migration.json).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How often `query-migrate` is asked while a migration runs.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of a QMP session or a migration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The monitor socket could not be reached, read or written.
    #[error("QMP on {path}: {source}")]
    Io {
        /// The monitor socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered a command with an error, or with something that is not QMP.
    #[error("QMP {command}: {reply}")]
    Command {
        /// The command.
        command: String,
        /// The reply.
        reply: String,
    },
    /// The migration ended in a state other than `completed`.
    #[error("migration ended {status}: {info}")]
    Failed {
        /// `failed` or `cancelled`.
        status: String,
        /// The last `query-migrate` answer.
        info: String,
    },
    /// The migration did not complete in time.
    #[error("migration not completed within {timeout:?}; last state: {info}")]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// The last `query-migrate` answer.
        info: String,
    },
}

/// A QMP session on a unix socket: capabilities negotiated, one command at a time.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the monitor on `path`, retrying until QEMU listens (up to `timeout`), reads
    /// the greeting and sends `qmp_capabilities`.
    ///
    /// # Errors
    /// [`Error::Io`] if QEMU does not listen in time, [`Error::Command`] on a bad greeting.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let until = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < until => std::thread::sleep(POLL_INTERVAL),
                Err(e) => return Err(io(e)),
            }
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Command {
                command: "greeting".into(),
                reply: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value; asynchronous events
    /// that arrive meanwhile are skipped.
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::Command`] when QEMU answers with `error`.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, Error> {
        let request = json!({ "execute": command, "arguments": arguments });
        let line = format!("{request}\n");
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io(source))?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                continue;
            }
            return match reply.get("return") {
                Some(value) => Ok(value.clone()),
                None => Err(Error::Command {
                    command: command.into(),
                    reply: reply.to_string(),
                }),
            };
        }
    }

    fn read_message(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| self.io(source))?;
        if n == 0 {
            return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&line).map_err(|_| Error::Command {
            command: "(reading)".into(),
            reply: line,
        })
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Figures of a completed migration, as `query-migrate` reported them.
#[derive(Debug, Clone, Copy)]
pub struct MigrationStats {
    /// Total time of the migration, ms.
    pub total_ms: u64,
    /// Time the guest was stopped, ms.
    pub downtime_ms: u64,
}

/// Migrates the guest behind the source's monitor `source` to `uri` (where a destination QEMU
/// waits with `-incoming uri`; for `unix:PATH`, once it listens there), waits up to `timeout`
/// for `completed`, then tells the source to quit.
///
/// # Errors
/// [`Error::Failed`], [`Error::Timeout`], or a QMP error (e.g. QEMU refusing to migrate:
/// "Migration disabled: vhost-user backend lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD feature").
pub fn migrate(source: &mut Qmp, uri: &str, timeout: Duration) -> Result<MigrationStats, Error> {
    let until = Instant::now() + timeout;
    if let Some(path) = uri.strip_prefix("unix:") {
        // A destination QEMU that has just started may not listen yet.
        while !crate::backend::is_listening(Path::new(path)) {
            if Instant::now() > until {
                return Err(Error::Timeout {
                    timeout,
                    info: format!("nothing listens on {path}"),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    source.execute("migrate", json!({ "uri": uri }))?;
    loop {
        let info = source.execute("query-migrate", json!({}))?;
        match info.get("status").and_then(Value::as_str).unwrap_or("") {
            "completed" => {
                let ms = |key: &str| info.get(key).and_then(Value::as_u64).unwrap_or(0);
                let stats = MigrationStats {
                    total_ms: ms("total-time"),
                    downtime_ms: ms("downtime"),
                };
                // The source is paused for good now; it exits on `quit` (the reply may race the
                // exit, so its loss is not an error).
                let _ = source.execute("quit", json!({}));
                return Ok(stats);
            }
            status @ ("failed" | "cancelled") => {
                return Err(Error::Failed {
                    status: status.into(),
                    info: info.to_string(),
                })
            }
            _ if Instant::now() > until => {
                return Err(Error::Timeout {
                    timeout,
                    info: info.to_string(),
                })
            }
            _ => std::thread::sleep(POLL_INTERVAL),
        }
    }
}
