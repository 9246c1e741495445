//! Helpers shared by backend-blk's integration tests: unique temporary folders, image files,
//! and the daemon as a child process.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a test waits for the daemon to reach a state.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pvio-blk-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The content of sector `s` in test images: its number, then a repeating byte.
pub fn sector_pattern(s: u64) -> Vec<u8> {
    let mut v = format!("sector {s:08}").into_bytes();
    v.resize(512, (s % 251) as u8);
    v
}

/// Creates an image of `sectors` 512-byte sectors filled with [`sector_pattern`].
pub fn make_image(path: &Path, sectors: u64) {
    let data: Vec<u8> = (0..sectors).flat_map(sector_pattern).collect();
    std::fs::write(path, data).expect("write image");
}

/// The backend-blk binary under test.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backend-blk"))
}

/// Polls `cond` every millisecond until it holds or [`DEADLINE`] passes.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_or(what, cond, String::new);
}

/// [`wait_until`], adding `context()` (e.g. the daemon log) to the failure message.
pub fn wait_until_or(what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A running daemon (killed on drop if still running); its log goes to `log`.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `backend-blk --socket <dir>/blk.sock <args>` and waits for the socket file.
    pub fn start(dir: &TempDir, args: &[&str]) -> Daemon {
        let socket = dir.join("blk.sock");
        let log = dir.join("daemon.log");
        let child = command()
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn backend-blk");
        let mut d = Daemon { child, socket, log };
        wait_until("the socket file", || {
            assert!(
                d.child.try_wait().unwrap().is_none(),
                "daemon exited: {}",
                d.log_text()
            );
            d.socket.exists()
        });
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and checks the daemon exits with status 0 and removes its socket file.
    pub fn assert_clean_stop(&mut self, signal: nix::sys::signal::Signal) {
        let status = self.signal_and_wait(signal);
        assert!(
            status.success(),
            "exit status {status}; log: {}",
            self.log_text()
        );
        assert!(!self.socket.exists(), "socket file removed");
    }

    /// Sends `signal` and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("send signal");
        let mut status = None;
        wait_until("the daemon to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
