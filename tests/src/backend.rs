//! Starts and stops a vhost-user-blk back-end process serving a disk image on a unix socket:
//! pvio's `backend-blk`, or `qemu-storage-daemon`'s vhost-user-blk export (the reference the
//! tests and benchmarks compare against).
//!
//! [`BlkBackend::start`] returns once the back-end listens on its socket, found through
//! `/proc/net/unix` (a listening socket has `__SO_ACCEPTCON`, flag `00010000`) so that no probe
//! connection disturbs it. [`BlkBackend::stop`] sends SIGTERM and waits for the exit; dropping a
//! running back-end kills it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::prereq::{self, Missing};

/// How long a back-end may take to listen, and to exit after SIGTERM.
const PROCESS_DEADLINE: Duration = Duration::from_secs(20);

/// How often the socket and the process are checked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// `__SO_ACCEPTCON` as `/proc/net/unix` prints it in the Flags column: the socket listens.
const PROC_NET_UNIX_LISTENING: &str = "00010000";

/// Errors of a back-end process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// qemu-storage-daemon is not installed.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// The log file could not be created or the process not started or signalled.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The back-end exited before it listened on its socket.
    #[error("{program} exited with {status} before listening on {socket}; its log:\n{log}")]
    ExitedEarly {
        /// The program.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The socket it should have listened on.
        socket: PathBuf,
        /// Its standard output and error.
        log: String,
    },
    /// The back-end did not listen, or did not exit after SIGTERM, in time; it was killed.
    #[error("{program} did not {what} within {PROCESS_DEADLINE:?}; killed. its log:\n{log}")]
    Stuck {
        /// The program.
        program: String,
        /// "listen on its socket" or "exit after SIGTERM".
        what: &'static str,
        /// Its standard output and error.
        log: String,
    },
}

/// Which program serves the disk.
#[derive(Debug, Clone)]
pub enum BlkBackendKind {
    /// pvio's `backend-blk` at this path (see [`crate::bins::workspace_bin`]).
    Pvio(PathBuf),
    /// `qemu-storage-daemon` from `PATH` with a `vhost-user-blk` export (file driver, io_uring).
    QemuStorageDaemon,
}

impl BlkBackendKind {
    /// pvio's backend-blk, built with the running test's profile.
    pub fn pvio() -> Self {
        Self::Pvio(crate::bins::workspace_bin("backend-blk", "backend-blk"))
    }

    /// A short name for messages: `backend-blk` or `qemu-storage-daemon`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pvio(_) => "backend-blk",
            Self::QemuStorageDaemon => "qemu-storage-daemon",
        }
    }
}

/// What the back-end serves and how.
#[derive(Debug, Clone)]
pub struct BlkBackendConfig {
    /// The raw disk image.
    pub image: PathBuf,
    /// The vhost-user socket to listen on (must not exist yet).
    pub socket: PathBuf,
    /// Number of virtqueues offered.
    pub num_queues: u16,
    /// Serve the image read-only (VIRTIO_BLK_F_RO).
    pub readonly: bool,
    /// Open the image with O_DIRECT (`Some(true)`), without (`Some(false)`), or as the
    /// back-end does by default (`None`).
    pub direct: Option<bool>,
    /// Another back-end instance serves the same image at the same time (live migration):
    /// qemu-storage-daemon then needs `locking=off`; backend-blk takes no lock.
    pub shared: bool,
    /// backend-blk's busy-poll window in µs (`--poll-us`), or its default (`None`).
    pub poll_us: Option<u32>,
}

impl BlkBackendConfig {
    /// Serves `image` writable on `socket` with `num_queues` queues and the default cache mode.
    pub fn new(image: &Path, socket: &Path, num_queues: u16) -> Self {
        Self {
            image: image.into(),
            socket: socket.into(),
            num_queues,
            readonly: false,
            direct: None,
            shared: false,
            poll_us: None,
        }
    }

    /// The back-end's command line for `kind`, as a shell would show it (for messages).
    ///
    /// # Errors
    /// qemu-storage-daemon is not installed.
    pub fn command_line(&self, kind: &BlkBackendKind) -> Result<String, Missing> {
        let cmd = self.command(kind)?;
        let words = std::iter::once(cmd.get_program()).chain(cmd.get_args());
        Ok(words
            .map(|w| w.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "))
    }

    fn command(&self, kind: &BlkBackendKind) -> Result<Command, Missing> {
        let on_off = |b: bool| if b { "on" } else { "off" };
        match kind {
            BlkBackendKind::Pvio(binary) => {
                let mut cmd = Command::new(binary);
                cmd.arg("--socket")
                    .arg(&self.socket)
                    .arg("--image")
                    .arg(&self.image);
                cmd.args(["--num-queues", &self.num_queues.to_string()]);
                if self.readonly {
                    cmd.arg("--readonly");
                }
                if let Some(direct) = self.direct {
                    cmd.args(["--direct", on_off(direct)]);
                }
                if let Some(poll_us) = self.poll_us {
                    cmd.args(["--poll-us", &poll_us.to_string()]);
                }
                Ok(cmd)
            }
            BlkBackendKind::QemuStorageDaemon => {
                let mut cmd =
                    Command::new(prereq::program("qemu-storage-daemon", "qemu-system-x86")?);
                let direct = format!(",cache.direct={}", on_off(self.direct.unwrap_or(false)));
                let locking = if self.shared { ",locking=off" } else { "" };
                cmd.arg("--blockdev").arg(format!(
                    "driver=file,node-name=file0,filename={},aio=io_uring{direct}{locking}",
                    self.image.display()
                ));
                cmd.args([
                    "--blockdev",
                    "driver=raw,node-name=disk0,file=file0",
                    "--export",
                ]);
                cmd.arg(format!(
                    "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable={},num-queues={}",
                    self.socket.display(),
                    on_off(!self.readonly),
                    self.num_queues
                ));
                Ok(cmd)
            }
        }
    }
}

/// A running back-end process.
#[derive(Debug)]
pub struct BlkBackend {
    child: Child,
    program: &'static str,
    socket: PathBuf,
    log: PathBuf,
}

impl BlkBackend {
    /// Starts `kind` with `config`, its standard output and error going to file `log`, and waits
    /// until it listens on `config.socket`.
    ///
    /// # Errors
    /// The program is missing or cannot start, exits early, or does not listen in time.
    pub fn start(
        kind: &BlkBackendKind,
        config: &BlkBackendConfig,
        log: &Path,
    ) -> Result<Self, Error> {
        let mut cmd = config.command(kind)?;
        let io = |what: String| move |source| Error::Io { what, source };
        let out = File::create(log).map_err(io(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("dup {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().map_err(io(format!("start {cmd:?}")))?;
        let mut backend = Self {
            child,
            program: kind.name(),
            socket: config.socket.clone(),
            log: log.into(),
        };
        backend.wait_listening()?;
        Ok(backend)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its standard output and error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    ///
    /// # Errors
    /// It cannot be signalled, or does not exit in time (it is then killed).
    pub fn stop(mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pids fit i32"));
        kill(pid, Signal::SIGTERM).map_err(|e| Error::Io {
            what: format!("SIGTERM {}", self.program),
            source: e.into(),
        })?;
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(self.stuck("exit after SIGTERM"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the process with SIGKILL (a crash: no clean-up, the socket file stays) and waits
    /// for it to be gone; returns its exit status.
    ///
    /// # Errors
    /// It cannot be signalled or waited for.
    pub fn kill(mut self) -> Result<ExitStatus, Error> {
        let io = |what: &str, source| Error::Io {
            what: format!("{what} {}", self.program),
            source,
        };
        self.child.kill().map_err(|e| io("SIGKILL", e))?;
        self.child.wait().map_err(|e| io("wait for", e))
    }

    fn wait_listening(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(Error::ExitedEarly {
                    program: self.program.to_string(),
                    status,
                    socket: self.socket.clone(),
                    log: self.log(),
                });
            }
            if is_listening(&self.socket) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.stuck("listen on its socket"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        self.child.try_wait().map_err(|source| Error::Io {
            what: format!("wait for {}", self.program),
            source,
        })
    }

    fn stuck(&mut self, what: &'static str) -> Error {
        // Kill errors only mean it is already gone; wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        Error::Stuck {
            program: self.program.to_string(),
            what,
            log: self.log(),
        }
    }
}

impl Drop for BlkBackend {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether some process listens on unix socket `path` (per `/proc/net/unix`).
pub fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let Some(path) = path.to_str() else {
        return false;
    };
    // Columns: Num RefCount Protocol Flags Type St Inode Path
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 8 && cols[3] == PROC_NET_UNIX_LISTENING && cols[7] == path
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::tmp::TempDir;

    #[test]
    fn a_bound_socket_listens_and_an_absent_one_does_not() {
        let dir = TempDir::new("backend-test").unwrap();
        let path = dir.join("s.sock");
        assert!(!is_listening(&path));
        let listener = UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path));
        drop(listener);
        assert!(!is_listening(&path));
    }

    #[test]
    fn qemu_storage_daemon_command_exports_the_image() {
        let mut config = BlkBackendConfig::new(Path::new("/d/img.raw"), Path::new("/d/s.sock"), 2);
        config.readonly = true;
        config.direct = Some(true);
        let cmd = config.command(&BlkBackendKind::QemuStorageDaemon).unwrap();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args[1].contains("filename=/d/img.raw,aio=io_uring,cache.direct=on"),
            "{args:?}"
        );
        assert!(
            args[5].contains("addr.path=/d/s.sock,writable=off,num-queues=2"),
            "{args:?}"
        );
    }

    #[test]
    fn backend_blk_command_follows_its_cli() {
        let mut config = BlkBackendConfig::new(Path::new("/d/img.raw"), Path::new("/d/s.sock"), 4);
        config.direct = Some(false);
        let line = config
            .command_line(&BlkBackendKind::Pvio("/x/backend-blk".into()))
            .unwrap();
        assert_eq!(
            line,
            "/x/backend-blk --socket /d/s.sock --image /d/img.raw --num-queues 4 --direct off"
        );
    }

    #[test]
    fn an_early_exit_is_reported_with_the_log() {
        let dir = TempDir::new("backend-test").unwrap();
        let config = BlkBackendConfig::new(&dir.join("missing.raw"), &dir.join("s.sock"), 1);
        let err = BlkBackend::start(
            &BlkBackendKind::QemuStorageDaemon,
            &config,
            &dir.join("log"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ExitedEarly { .. }), "{msg}");
        assert!(msg.contains("missing.raw"), "{msg}");
    }
}
