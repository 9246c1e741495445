//! Runs pvio's VMM (`vmm run`) with pvio's own guest as a child process with a deadline, and
//! collects its console (standard output), its log (standard error) and its exit status.
//!
//! [`VmmRun::spawn`] starts it; [`RunningVmm::wait`] waits for the exit (the VMM exits with the
//! guest's status) and checks that the process is gone; past the deadline the VMM is killed
//! and the test fails with both outputs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::bins::workspace_bin;

/// How long a guest run may take on a loaded 2-core machine (the guest's CPL0 code runs in
/// KVM's instruction emulator there: about 3 MB/s of pattern I/O).
pub const VMM_DEADLINE: Duration = Duration::from_secs(240);

/// The VMM binary, built with the running test's profile.
pub fn vmm_bin() -> PathBuf {
    workspace_bin("vmm", "vmm")
}

/// A `vmm run` command line.
#[derive(Debug, Clone, Default)]
pub struct VmmRun {
    args: Vec<String>,
    guest_args: Vec<String>,
}

impl VmmRun {
    /// `vmm run --guest <pvio's guest>`.
    pub fn new() -> Self {
        VmmRun {
            args: vec!["--guest".into(), ::vmm::GUEST_PAYLOAD.into()],
            guest_args: Vec::new(),
        }
    }

    /// Adds VMM arguments.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// `--disk SOCKET,num-queues=N`.
    pub fn disk(self, socket: &Path, num_queues: u16) -> Self {
        self.arg("--disk")
            .arg(format!("{},num-queues={num_queues}", socket.display()))
    }

    /// `--net SOCKET`.
    pub fn net(self, socket: &Path) -> Self {
        self.arg("--net").arg(socket.display().to_string())
    }

    /// Guest arguments (after `--`).
    pub fn guest(mut self, words: &[&str]) -> Self {
        self.guest_args.extend(words.iter().map(|w| w.to_string()));
        self
    }

    /// Starts the VMM; its outputs go to `<dir>/<name>.out` and `.err`.
    pub fn spawn(&self, dir: &Path, name: &str) -> RunningVmm {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let mut cmd = Command::new(vmm_bin());
        cmd.arg("run")
            .args(&self.args)
            .arg("--")
            .args(&self.guest_args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create the VMM console file"))
            .stderr(File::create(&err).expect("create the VMM log file"));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().expect("start vmm");
        RunningVmm { child, out, err }
    }

    /// Runs the VMM to its end.
    pub fn run(&self, dir: &Path, name: &str) -> VmmOutput {
        self.spawn(dir, name).wait()
    }
}

/// A VMM process.
#[derive(Debug)]
pub struct RunningVmm {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

/// How a VMM run ended.
#[derive(Debug)]
pub struct VmmOutput {
    /// Exit status (the guest's).
    pub status: ExitStatus,
    /// The guest's console.
    pub console: String,
    /// The VMM's log and error messages.
    pub log: String,
}

impl VmmOutput {
    /// Panics with both outputs unless the VMM exited 0.
    pub fn assert_success(&self) {
        assert!(self.status.success(), "vmm failed: {self}");
    }
}

impl std::fmt::Display for VmmOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- console ---\n{}\n--- log ---\n{}",
            self.status, self.console, self.log
        )
    }
}

impl RunningVmm {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit (killing the VMM past [`VMM_DEADLINE`], which fails the test) and
    /// checks that no process of it is left.
    pub fn wait(mut self) -> VmmOutput {
        let end = Instant::now() + VMM_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for vmm") {
                break status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "vmm still running after {VMM_DEADLINE:?}; killed\n{}",
                    self.output_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let pid = self.child.id();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "vmm process {pid} still exists after its exit"
        );
        VmmOutput {
            status,
            console: std::fs::read_to_string(&self.out).unwrap_or_default(),
            log: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }

    fn output_text(&self) -> String {
        format!(
            "--- console ---\n{}\n--- log ---\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
