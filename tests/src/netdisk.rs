//! backend-blk on network storage (NBD, Ceph RBD): the storage servers as child processes and
//! backend-blk serving a disk URL, for tests/blk_nbd.rs and tests/blk_rbd.rs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server or backend-blk may take to listen (a loaded 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// Where a server listens.
#[derive(Debug, Clone, Copy)]
pub enum Listen<'a> {
    /// A unix socket.
    Unix(&'a Path),
    /// TCP port on 127.0.0.1.
    Tcp(u16),
}

impl Listen<'_> {
    /// Whether some process listens there now.
    pub fn is_listening(self) -> bool {
        match self {
            Listen::Unix(socket) => crate::backend::is_listening(socket),
            Listen::Tcp(port) => is_listening_tcp(port),
        }
    }
}

/// `/proc/net/tcp`'s state of a listening socket.
const TCP_LISTEN: &str = "0A";

/// Whether some process listens on 127.0.0.1:`port` or on all addresses (per
/// `/proc/net/tcp`, so that no probe connection disturbs it).
pub fn is_listening_tcp(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    // Columns: sl local_address rem_address st ...
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() > 3 && cols[3] == TCP_LISTEN && wanted.iter().any(|w| w == cols[1])
    })
}

/// A TCP port of 127.0.0.1 that is free now (the kernel's pick for an ephemeral bind).
///
/// # Panics
/// No port can be bound.
pub fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Starts `cmd` and waits until it listens on the unix socket `socket`.
///
/// # Panics
/// When it cannot start, exits, or does not listen within [`START_TIMEOUT`].
pub fn start_listening(cmd: &mut Command, socket: &Path) -> Proc {
    start_listening_on(cmd, Listen::Unix(socket))
}

/// Starts `cmd` and waits until it listens at `at`.
///
/// # Panics
/// When it cannot start, exits, or does not listen within [`START_TIMEOUT`].
pub fn start_listening_on(cmd: &mut Command, at: Listen<'_>) -> Proc {
    let mut child = Proc(
        cmd.stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
    );
    let deadline = Instant::now() + START_TIMEOUT;
    while !at.is_listening() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("{cmd:?} exited ({status}) instead of listening");
        }
        assert!(Instant::now() < deadline, "{cmd:?} does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// backend-blk serving `url` (`--image URL`) on `dir/blk.sock`, with `extra` arguments.
pub fn backend_blk(dir: &Path, url: &str, extra: &[&str]) -> (Proc, PathBuf) {
    let socket = dir.join("blk.sock");
    let bin = crate::bins::workspace_bin("backend-blk", "backend-blk");
    let proc = start_listening(
        Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .args(["--image", url])
            .args(extra),
        &socket,
    );
    (proc, socket)
}
