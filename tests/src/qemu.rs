//! Boots a Linux guest under `qemu-system-x86_64` with vhost-user-blk disks and collects its
//! serial console.
//!
//! The command follows the recipe verified in shared/REAL-CLIENTS.md: guest RAM is a
//! `memory-backend-memfd` with `share=on` (vhost-user back-ends map it), each disk is a
//! `vhost-user-blk-pci` device on a `-chardev socket` to a back-end that already listens,
//! `-no-reboot` turns the guest's `poweroff -f` (and a panic, with `panic=-1`) into QEMU's exit.
//! The accelerator is TCG unless `PVIO_QEMU_ACCEL=kvm`: on this project's machines /dev/kvm is a
//! software KVM under which a Linux kernel crawls, while TCG boots to userspace in ~2.5 s.
//! A run has a deadline; past it QEMU is killed and the run fails with the console so far.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::{self, Console};
use crate::prereq::{self, Missing};

/// The environment variable choosing the accelerator: `tcg` (default) or `kvm`.
pub const ACCEL_ENV: &str = "PVIO_QEMU_ACCEL";

/// Set (to anything) to echo every guest's console to standard error as it runs.
pub const ECHO_ENV: &str = "PVIO_GUEST_ECHO";

/// The kernel command line: serial console, few messages, reboot (so exit, with -no-reboot) at
/// once on panic, and no early check of the timer interrupt (under TCG on a loaded host the
/// kernel otherwise may panic "IO-APIC + timer doesn't work!", seen in a migration test).
const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 no_timer_check";

/// How often a running guest is checked for exit, deadline and cancellation.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Errors of a guest run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// QEMU is not installed.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// `PVIO_QEMU_ACCEL` holds something other than `tcg` or `kvm`.
    #[error("{ACCEL_ENV}={0:?}: expected `tcg` or `kvm`")]
    BadAccel(String),
    /// QEMU could not be started or waited for.
    #[error("running qemu-system-x86_64: {0}")]
    Spawn(#[source] std::io::Error),
    /// The guest did not power off before the deadline; QEMU was killed.
    #[error("the guest did not finish within {deadline:?}; QEMU killed. console:\n{console}")]
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
        /// The console output until then.
        console: String,
    },
    /// The run was cancelled (the cancel flag was set); QEMU was killed.
    #[error("guest run cancelled")]
    Cancelled,
    /// QEMU exited with a failure status.
    #[error("qemu-system-x86_64 exited with {status}; stderr:\n{stderr}\nconsole:\n{console}")]
    Failed {
        /// QEMU's exit status.
        status: ExitStatus,
        /// QEMU's standard error.
        stderr: String,
        /// The console output.
        console: String,
    },
}

/// How QEMU runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's binary translator (`-accel tcg`): works everywhere, slower.
    Tcg,
    /// Hardware virtualization (`-accel kvm -cpu host`): needs VT-x/AMD-V, not a software KVM.
    Kvm,
}

impl Accel {
    /// The accelerator named by `PVIO_QEMU_ACCEL` (`tcg` when unset).
    ///
    /// # Errors
    /// [`Error::BadAccel`] for any other value.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var(ACCEL_ENV).as_deref() {
            Err(_) | Ok("") | Ok("tcg") => Ok(Self::Tcg),
            Ok("kvm") => Ok(Self::Kvm),
            Ok(other) => Err(Error::BadAccel(other.to_string())),
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Tcg => &["-accel", "tcg"],
            Self::Kvm => &["-accel", "kvm", "-cpu", "host"],
        }
    }
}

/// A `vhost-user-blk-pci` disk whose back-end listens on `socket`; the guest sees disks as
/// `/dev/vda`, `/dev/vdb`, ... in the order given.
#[derive(Debug, Clone)]
pub struct BlkDisk {
    /// The back-end's vhost-user socket.
    pub socket: PathBuf,
    /// Number of virtqueues the device offers the driver (`num-queues=`).
    pub num_queues: u16,
    /// Reconnect to the back-end when it goes away (`reconnect=1` on the chardev: QEMU tries
    /// every second and hands the inflight area back).
    pub reconnect: bool,
}

/// A `virtio-net-pci` NIC on a `-netdev vhost-user` whose back-end listens on `socket`; the
/// guest sees NICs as `eth0`, `eth1`, ... in the order given. MSI-X is off (`vectors=0`):
/// QEMU 7.2 under TCG crashes with MSI-X on a vhost-user netdev (shared/REAL-CLIENTS.md).
#[derive(Debug, Clone)]
pub struct NetNic {
    /// The back-end's vhost-user socket.
    pub socket: PathBuf,
    /// The NIC's MAC address, e.g. `52:54:00:12:34:56`.
    pub mac: String,
    /// Queue pairs (`queues=` of the netdev; `mq=on` when more than one).
    pub queue_pairs: u16,
}

/// One guest to boot: the machine and what it runs.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The kernel bzImage.
    pub kernel: PathBuf,
    /// The initramfs ([`crate::initramfs::Initramfs::write`]).
    pub initrd: PathBuf,
    /// The accelerator.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// vhost-user-blk disks.
    pub disks: Vec<BlkDisk>,
    /// vhost-user-net NICs.
    pub nics: Vec<NetNic>,
    /// Wall-clock limit for the whole run, boot to power-off.
    pub deadline: Duration,
    /// Echo console lines to standard error as they arrive, each prefixed by this string.
    pub echo: Option<String>,
    /// When set to true by someone else (e.g. a signal handler), the run kills QEMU and fails
    /// with [`Error::Cancelled`].
    pub cancel: Option<&'static AtomicBool>,
    /// A QMP monitor listening on this unix socket (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp: Option<PathBuf>,
    /// Wait for an incoming migration from this URI (`-incoming unix:PATH`) instead of booting.
    pub incoming: Option<String>,
}

/// What a finished run left.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The serial console output.
    pub console: Console,
    /// Wall-clock time from starting QEMU to its exit.
    pub wall: Duration,
}

impl Guest {
    /// A guest with one vCPU, 256 MiB of RAM, no disks, a 180 s deadline, the accelerator of
    /// [`Accel::from_env`], and the console echoed (prefix `guest| `) when `PVIO_GUEST_ECHO` is
    /// set.
    ///
    /// # Errors
    /// [`Error::BadAccel`].
    pub fn new(kernel: &Path, initrd: &Path) -> Result<Self, Error> {
        Ok(Self {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            accel: Accel::from_env()?,
            memory_mib: 256,
            vcpus: 1,
            disks: Vec::new(),
            nics: Vec::new(),
            deadline: Duration::from_secs(180),
            echo: std::env::var_os(ECHO_ENV).map(|_| "guest| ".to_string()),
            cancel: None,
            qmp: None,
            incoming: None,
        })
    }

    /// The qemu-system-x86_64 arguments for this guest.
    pub fn args(&self) -> Vec<String> {
        let mem = self.memory_mib;
        let machine = [
            format!("-m {mem}M -smp {} -nic none", self.vcpus),
            format!(
                "-object memory-backend-memfd,id=mem,size={mem}M,share=on -numa node,memdev=mem"
            ),
            "-nographic -monitor none -serial stdio -no-reboot".to_string(),
        ];
        // None of these words has a space inside; paths and the command line are added whole.
        let mut args: Vec<String> = self.accel.args().iter().map(|a| a.to_string()).collect();
        args.extend(
            machine
                .iter()
                .flat_map(|a| a.split(' '))
                .map(str::to_string),
        );
        args.extend(["-kernel".into(), self.kernel.display().to_string()]);
        args.extend(["-initrd".into(), self.initrd.display().to_string()]);
        args.extend(["-append".into(), KERNEL_CMDLINE.into()]);
        if let Some(qmp) = &self.qmp {
            args.push("-qmp".into());
            args.push(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        if let Some(uri) = &self.incoming {
            args.extend(["-incoming".into(), uri.clone()]);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            args.push("-chardev".into());
            let reconnect = if disk.reconnect { ",reconnect=1" } else { "" };
            args.push(format!(
                "socket,id=blk{i},path={}{reconnect}",
                disk.socket.display()
            ));
            args.push("-device".into());
            args.push(format!(
                "vhost-user-blk-pci,chardev=blk{i},num-queues={}",
                disk.num_queues
            ));
        }
        for (i, nic) in self.nics.iter().enumerate() {
            let q = nic.queue_pairs;
            let mq = if q > 1 { ",mq=on" } else { "" };
            args.push("-chardev".into());
            args.push(format!("socket,id=net{i},path={}", nic.socket.display()));
            args.push("-netdev".into());
            args.push(format!("vhost-user,id=n{i},chardev=net{i},queues={q}"));
            args.push("-device".into());
            args.push(format!(
                "virtio-net-pci,netdev=n{i},mac={},vectors=0{mq}",
                nic.mac
            ));
        }
        args
    }

    /// Boots the guest and waits for QEMU to exit (the guest powered off), the deadline, or
    /// cancellation.
    ///
    /// # Errors
    /// QEMU is missing, fails to start, exits non-zero ([`Error::Failed`]), or is killed at the
    /// deadline ([`Error::Timeout`]) or on cancellation ([`Error::Cancelled`]). A guest whose
    /// script failed still powers off normally: check [`Console::check_exit`].
    pub fn run(&self) -> Result<GuestRun, Error> {
        self.spawn()?.finish()
    }

    /// Starts QEMU and returns at once; the console is collected in the background.
    ///
    /// # Errors
    /// QEMU or the kernel is missing, or QEMU fails to start.
    pub fn spawn(&self) -> Result<RunningGuest, Error> {
        let qemu = prereq::program("qemu-system-x86_64", "qemu-system-x86")?;
        prereq::file(&self.kernel, "linux-image-amd64")?;
        let start = Instant::now();
        let mut child = Command::new(qemu)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::Spawn)?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let console_reader = spawn_console_reader(stdout, Arc::clone(&console), self.echo.clone());
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            // A read error only shortens the diagnostics; the exit status tells the outcome.
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        Ok(RunningGuest {
            child,
            console,
            console_reader: Some(console_reader),
            stderr_reader: Some(stderr_reader),
            start,
            deadline: self.deadline,
            cancel: self.cancel,
        })
    }
}

/// A QEMU process started by [`Guest::spawn`]; killed when dropped unfinished.
#[derive(Debug)]
pub struct RunningGuest {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    console_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
    start: Instant,
    deadline: Duration,
    cancel: Option<&'static AtomicBool>,
}

impl RunningGuest {
    /// The console output so far.
    pub fn console(&self) -> Console {
        let raw = self.console.lock().unwrap_or_else(|e| e.into_inner());
        Console::new(&String::from_utf8_lossy(&raw))
    }

    /// Whether QEMU has exited.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the console holds at least `count` `@@pvio key ...` markers or QEMU exits;
    /// returns whether it does by `timeout`.
    pub fn wait_markers(&mut self, key: &str, count: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.console().markers(key).len() >= count {
                return true;
            }
            if self.has_exited() || Instant::now() > until {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits for QEMU to exit (the guest powered off, or QEMU was told to quit), the run's
    /// deadline (counted from the start), or cancellation.
    ///
    /// # Errors
    /// As [`Guest::run`].
    pub fn finish(mut self) -> Result<GuestRun, Error> {
        let waited = self.wait();
        // QEMU has exited (or was killed): its pipes are closed, the readers end.
        if let Some(reader) = self.console_reader.take() {
            let _ = reader.join();
        }
        let stderr = self
            .stderr_reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        let console = self.console();
        match waited {
            Ok(status) if status.success() => Ok(GuestRun {
                console,
                wall: self.start.elapsed(),
            }),
            Ok(status) => Err(Error::Failed {
                status,
                stderr,
                console: console.text().to_string(),
            }),
            Err(WaitEnd::Timeout) => Err(Error::Timeout {
                deadline: self.deadline,
                console: console.text().to_string(),
            }),
            Err(WaitEnd::Cancelled) => Err(Error::Cancelled),
            Err(WaitEnd::Io(e)) => Err(Error::Spawn(e)),
        }
    }

    /// Polls the child until it exits; kills it at the deadline or on cancellation.
    fn wait(&mut self) -> Result<ExitStatus, WaitEnd> {
        loop {
            if let Some(status) = self.child.try_wait().map_err(WaitEnd::Io)? {
                return Ok(status);
            }
            let cancelled = self.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
            if cancelled || self.start.elapsed() > self.deadline {
                // Killing an exited child fails harmlessly; wait reaps it either way.
                let _ = self.child.kill();
                self.child.wait().map_err(WaitEnd::Io)?;
                return Err(if cancelled {
                    WaitEnd::Cancelled
                } else {
                    WaitEnd::Timeout
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Why waiting for QEMU ended without an exit status of its own.
enum WaitEnd {
    Timeout,
    Cancelled,
    Io(std::io::Error),
}

/// Reads QEMU's standard output (the guest's serial console) into `console` until it closes,
/// echoing each line to standard error after `echo` when given.
fn spawn_console_reader(
    stdout: impl Read + Send + 'static,
    console: Arc<Mutex<Vec<u8>>>,
    echo: Option<String>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(prefix) = &echo {
                        let text = String::from_utf8_lossy(&line);
                        eprintln!("{prefix}{}", console::strip_escapes(text.trim_end()));
                    }
                    console
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&line);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_shared_memory_and_one_device_per_disk() {
        let mut guest = Guest::new(Path::new("/k"), Path::new("/i")).unwrap();
        guest.accel = Accel::Tcg;
        guest.memory_mib = 512;
        guest.vcpus = 2;
        guest.disks = vec![
            BlkDisk {
                socket: "/s/a.sock".into(),
                num_queues: 2,
                reconnect: false,
            },
            BlkDisk {
                socket: "/s/b.sock".into(),
                num_queues: 1,
                reconnect: true,
            },
        ];
        let args = guest.args().join(" ");
        assert!(args.starts_with("-accel tcg -m 512M -smp 2 "), "{args}");
        assert!(args.contains(
            "-object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem"
        ));
        assert!(
            args.contains("-chardev socket,id=blk0,path=/s/a.sock -device"),
            "{args}"
        );
        assert!(
            args.contains("-chardev socket,id=blk1,path=/s/b.sock,reconnect=1 -device"),
            "{args}"
        );
        assert!(
            args.contains("-device vhost-user-blk-pci,chardev=blk0,num-queues=2"),
            "{args}"
        );
        assert!(
            args.contains("-device vhost-user-blk-pci,chardev=blk1,num-queues=1"),
            "{args}"
        );
        assert!(args.contains("-no-reboot") && args.contains("-kernel /k -initrd /i -append"));
    }

    #[test]
    fn nics_are_vhost_user_netdevs_without_msix() {
        let mut guest = Guest::new(Path::new("/k"), Path::new("/i")).unwrap();
        guest.nics = vec![NetNic {
            socket: "/s/n.sock".into(),
            mac: "52:54:00:00:00:01".into(),
            queue_pairs: 2,
        }];
        let args = guest.args().join(" ");
        assert!(
            args.contains("-chardev socket,id=net0,path=/s/n.sock"),
            "{args}"
        );
        assert!(
            args.contains("-netdev vhost-user,id=n0,chardev=net0,queues=2"),
            "{args}"
        );
        assert!(
            args.contains("-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,vectors=0,mq=on"),
            "{args}"
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        assert_eq!(Accel::Kvm.args(), ["-accel", "kvm", "-cpu", "host"]);
    }
}
