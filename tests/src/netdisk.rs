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

/// Starts `cmd` and waits until it listens on the unix socket `socket`.
///
/// # Panics
/// When it cannot start, exits, or does not listen within [`START_TIMEOUT`].
pub fn start_listening(cmd: &mut Command, socket: &Path) -> Proc {
    let mut child = Proc(
        cmd.stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
    );
    let deadline = Instant::now() + START_TIMEOUT;
    while !crate::backend::is_listening(socket) {
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
