//! Helpers for tests that run the `xenstore-lite` daemon binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use xenstore_lite::Client;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_xenstore-lite");

/// A fresh directory unique to this process and call, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("xs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
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

/// A running daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `xenstore-lite serve --socket <socket> <extra...>` and waits until it answers.
    pub fn start(socket: &Path, extra: &[&str]) -> Daemon {
        Self::start_with(socket, extra, Command::new(BIN))
    }

    /// Like [`Daemon::start`] with at most `nofile` open file descriptors.
    pub fn start_fd_limited(socket: &Path, extra: &[&str], nofile: u64) -> Daemon {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(BIN);
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::start_with(socket, extra, cmd)
    }

    fn start_with(socket: &Path, extra: &[&str], mut cmd: Command) -> Daemon {
        let child = cmd
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn xenstore-lite serve");
        let mut d = Daemon {
            child,
            socket: socket.to_owned(),
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited early: {status}");
            }
            if let Ok(mut c) = Client::connect(&self.socket) {
                if c.get_domain_path(0).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to daemon")
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
