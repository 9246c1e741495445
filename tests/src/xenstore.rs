//! Runs a `xenstore-lite` daemon for a test: a dom0 socket plus one socket per guest domain
//! (`--domain-socket`), whose clients act as that unprivileged domain.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xenstore_lite::Client;

/// How long the daemon may take to answer after starting.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running xenstore-lite, killed on drop.
#[derive(Debug)]
pub struct XenstoreDaemon {
    child: Child,
    dir: PathBuf,
}

impl XenstoreDaemon {
    /// Starts `xenstore-lite serve` with its sockets in `dir`: `xs.sock` for dom0 and
    /// `dom<N>.sock` for each domain in `guests`; returns once it answers.
    ///
    /// # Panics
    /// When it cannot start or does not answer in time (the test cannot go on).
    pub fn start(dir: &Path, guests: &[u32]) -> Self {
        Self::start_with(dir, guests, &[])
    }

    /// As [`XenstoreDaemon::start`], with more `serve` arguments (e.g. `--evtchn-broker`).
    ///
    /// # Panics
    /// As [`XenstoreDaemon::start`].
    pub fn start_with(dir: &Path, guests: &[u32], extra: &[&std::ffi::OsStr]) -> Self {
        let bin = crate::bins::workspace_bin("xenstore-lite", "xenstore-lite");
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--socket").arg(dir.join("xs.sock"));
        for domid in guests {
            let sock = dir.join(format!("dom{domid}.sock"));
            cmd.arg("--domain-socket")
                .arg(format!("{domid}:{}", sock.display()));
        }
        let child = cmd
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start xenstore-lite");
        let mut daemon = XenstoreDaemon {
            child,
            dir: dir.into(),
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("xenstore-lite exited early: {status}");
            }
            if let Ok(mut c) = Client::connect(self.socket()) {
                if c.get_domain_path(0).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "xenstore-lite did not answer");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The dom0 socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("xs.sock")
    }

    /// Runs the toolstack against this store: `pvctl --xenstore <dom0 socket> ARGS`.
    ///
    /// # Panics
    /// When pvctl cannot be started.
    pub fn pvctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(crate::bins::workspace_bin("pvctl", "pvctl"))
            .arg("--xenstore")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("start pvctl")
    }

    /// The socket of guest `domid` (given to [`XenstoreDaemon::start`]).
    pub fn domain_socket(&self, domid: u32) -> PathBuf {
        self.dir.join(format!("dom{domid}.sock"))
    }

    /// `xenstore-ls -f PATH` through Debian's tool, as dom0.
    ///
    /// # Panics
    /// When xenstore-utils is missing or the tool fails.
    pub fn ls(&self, path: &str) -> String {
        let ls = crate::prereq::program("xenstore-ls", "xenstore-utils").unwrap();
        let out = Command::new(ls)
            .args(["-f", path])
            .env("XENSTORED_PATH", self.socket())
            .output()
            .unwrap();
        assert!(out.status.success(), "xenstore-ls {path}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A dom0 connection.
    ///
    /// # Panics
    /// When the daemon does not accept it.
    pub fn client(&self) -> Client {
        Client::connect(self.socket()).expect("connect to xenstore-lite as dom0")
    }

    /// A connection acting as guest `domid`.
    ///
    /// # Panics
    /// When the daemon does not accept it.
    pub fn guest_client(&self, domid: u32) -> Client {
        Client::connect(self.domain_socket(domid)).expect("connect to xenstore-lite as a guest")
    }
}

impl Drop for XenstoreDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
