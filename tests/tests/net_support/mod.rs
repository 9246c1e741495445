//! Shared parts of the backend-net tests: the daemon as a process with its counters, network
//! namespaces and TAP devices that remove themselves, and DPDK's testpmd as a vhost-user-net
//! front-end.
//!
//! Everything a test creates is named after the test process (pid and a counter), so tests run
//! in parallel under nextest, and is removed on drop, also when the test fails. Network traffic
//! only ever goes to addresses inside namespaces the test made.
#![allow(dead_code)]

pub mod frames;
pub mod hostile;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use frontend_guest::host::net::ALL_FEATURES;
use frontend_guest::host::{HostRam, NetDevice, NetOptions};
use frontend_guest::net::NetHdr;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pvio_tests::bins::workspace_bin;
use pvio_tests::prereq;
use serde_json::Value;

/// How long a process may take to start listening or to exit.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// How long testpmd may take to answer a command: its EAL set-up alone takes ~15 s on an idle
/// 2-core machine and more than 30 s while the rest of the suite runs beside it.
const TESTPMD_DEADLINE: Duration = Duration::from_secs(120);
/// How often a condition with a deadline is checked.
pub const POLL: Duration = Duration::from_millis(20);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `<prefix><pid % 100000>x<n>`, at most 15 bytes for
/// prefixes up to 3 bytes (interface names).
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Polls `f` until it returns `Some` or `deadline` passes; panics naming `what` then.
pub fn wait_for<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, f)
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Polls `f` until it returns `Some` (returned) or `deadline` passes (`None`).
fn poll_until<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace made for one test (`ip netns add`), deleted on drop with everything in
/// it. Creating one needs root (CAP_SYS_ADMIN); without it the test fails saying so.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `pvio-<unique>` with its loopback up.
    pub fn new() -> Netns {
        prereq::program("ip", "iproute2").unwrap_or_else(|e| panic!("{e}"));
        let name = unique("pvio-ns");
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "cannot create network namespace {name}: {} (the backend-net TAP and QEMU tests need \
             root: CAP_SYS_ADMIN and CAP_NET_ADMIN)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `program ARGS` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The MAC address of interface `dev` in the namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let text = self.exec("cat", &[&format!("/sys/class/net/{dev}/address")]);
        let v: Vec<u8> = text
            .trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// A permanent neighbour entry: `ip` is at `mac` behind `dev`.
    pub fn add_neighbour(&self, ip: &str, mac: [u8; 6], dev: &str) {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        self.ip(&[
            "neigh",
            "add",
            ip,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    /// Creates TAP `name` (multi_queue when `multi_queue`) with `addr` (CIDR) and brings it up.
    pub fn add_tap(&self, name: &str, multi_queue: bool, addr: &str) {
        let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap"];
        if multi_queue {
            args.push("multi_queue");
        }
        self.ip(&args);
        self.ip(&["addr", "add", addr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its TAPs and addresses.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A running backend-net with a stats socket.
#[derive(Debug)]
pub struct NetDaemon {
    child: Option<Child>,
    sockets: Vec<PathBuf>,
    stats: PathBuf,
    log: PathBuf,
}

/// The backend-net binary, built with the test's profile.
pub fn backend_net() -> PathBuf {
    workspace_bin("backend-net", "backend-net")
}

impl NetDaemon {
    /// `backend-net --switch` with `ports` sockets `port<i>.sock` in `dir`, plus `extra`
    /// arguments.
    pub fn switch(dir: &Path, ports: usize, extra: &[&str]) -> NetDaemon {
        Self::switch_logging(dir, ports, extra, "info")
    }

    /// As [`NetDaemon::switch`], logging with the `RUST_LOG` filter `log` (unless the test
    /// runs with `RUST_LOG` set), e.g. every front-end request the relay passes on.
    pub fn switch_logging(dir: &Path, ports: usize, extra: &[&str], log: &str) -> NetDaemon {
        let sockets: Vec<PathBuf> = (0..ports)
            .map(|i| dir.join(format!("port{i}.sock")))
            .collect();
        let mut args: Vec<String> = vec!["--switch".into()];
        for s in &sockets {
            args.extend(["--socket".into(), s.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(Command::new(backend_net()), dir, sockets, &args, log)
    }

    /// `backend-net --tap TAP` run inside `netns`, socket `tap.sock` in `dir`, plus `extra`.
    pub fn tap(dir: &Path, netns: &Netns, tap: &str, extra: &[&str]) -> NetDaemon {
        Self::tap_on(dir, "tap.sock", netns, tap, extra)
    }

    /// As [`NetDaemon::tap`] with socket `socket` in `dir` (several daemons on one TAP).
    pub fn tap_on(dir: &Path, socket: &str, netns: &Netns, tap: &str, extra: &[&str]) -> NetDaemon {
        let socket = dir.join(socket);
        let mut args: Vec<String> = vec![
            "--tap".into(),
            tap.into(),
            "--socket".into(),
            socket.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(
            netns.command(&backend_net()),
            dir,
            vec![socket],
            &args,
            "info",
        )
    }

    /// Runs `cmd` with `args`, the stats socket and the log in `dir`, logging with the
    /// `RUST_LOG` filter `log_filter` unless the test runs with `RUST_LOG` set.
    fn start(
        mut cmd: Command,
        dir: &Path,
        sockets: Vec<PathBuf>,
        args: &[String],
        log_filter: &str,
    ) -> NetDaemon {
        let stats = dir.join(format!("stats-{}.sock", unique("")));
        let log = dir.join(format!("backend-net-{}.log", unique("")));
        let out = File::create(&log).expect("create the daemon log");
        cmd.args(args)
            .arg("--stats-socket")
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", log_filter);
        }
        let child = cmd.spawn().expect("start backend-net");
        let mut d = NetDaemon {
            child: Some(child),
            sockets,
            stats,
            log,
        };
        // The stats socket is bound after the vhost-user sockets listen: once it answers, all do.
        wait_for("backend-net to listen", PROCESS_DEADLINE, || {
            if let Some(status) = d.try_wait() {
                panic!(
                    "backend-net exited with {status} before listening; log:\n{}",
                    d.log()
                );
            }
            d.try_stats()
        });
        d
    }

    /// The vhost-user sockets, by port.
    pub fn sockets(&self) -> &[PathBuf] {
        &self.sockets
    }

    /// Connects pvio's mock front-end to port `i` with `opts` and waits until the daemon
    /// reports one of its receive queues ready (`rx_queues_ready`): the front-end's messages
    /// are all answered when it returns, but the daemon attaches a receive queue on its worker
    /// thread, and a frame sent to the port before then is dropped, as on a link not yet up.
    pub fn connect(&self, i: usize, opts: &NetOptions) -> NetDevice {
        let dev = NetDevice::connect(&self.sockets[i], opts)
            .unwrap_or_else(|e| panic!("connect to port {i}: {e}\n{}", self.log()));
        self.wait_port(i, "a receive queue of the port to be ready", |p| {
            p["rx_queues_ready"].as_u64().unwrap_or(0) > 0
        });
        dev
    }

    /// Its standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn try_stats(&self) -> Option<Value> {
        let mut s = UnixStream::connect(&self.stats).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The counters of port `i` (see backend-net's stats module).
    pub fn port(&self, i: usize) -> Value {
        self.try_port(i)
            .unwrap_or_else(|| panic!("stats socket does not answer; log:\n{}", self.log()))
    }

    /// The counters of port `i`, or `None` when the stats socket does not answer.
    pub fn try_port(&self, i: usize) -> Option<Value> {
        self.try_stats().map(|all| all["ports"][i].clone())
    }

    /// Polls port `i`'s counters until `pred` holds.
    pub fn wait_port(&self, i: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let end = Instant::now() + PROCESS_DEADLINE;
        loop {
            last = self
                .try_stats()
                .map(|v| v["ports"][i].clone())
                .unwrap_or(last);
            if pred(&last) {
                return last;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; port {i}: {last}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM, waits for a clean exit (status 0) and checks the sockets are gone.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM).expect("SIGTERM backend-net");
        let status = wait_for(
            "backend-net to exit after SIGTERM",
            PROCESS_DEADLINE,
            || child.try_wait().ok().flatten(),
        );
        assert!(
            status.success(),
            "backend-net exited with {status}; log:\n{}",
            self.log()
        );
        for s in self.sockets.iter().chain([&self.stats]) {
            assert!(!s.exists(), "{} left behind", s.display());
        }
    }
}

impl Drop for NetDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("backend-net's log:\n{}", self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A dirty log (VHOST_USER_SET_LOG_BASE, one bit per 4 KiB page) for guest addresses below
/// `covers` bytes, set on `dev`'s connection; keep it for [`assert_frames_logged`].
pub fn set_dirty_log(dev: &mut NetDevice, covers: u64) -> HostRam {
    let log_bytes = covers.div_ceil(4096 * 8);
    let log = HostRam::new(log_bytes).unwrap();
    dev.connection_mut()
        .set_log_base(vhost::VhostUserDirtyLogRegion {
            mmap_size: log_bytes,
            mmap_offset: 0,
            mmap_handle: log.region_info().unwrap().mmap_handle,
        })
        .expect("VHOST_USER_SET_LOG_BASE");
    log
}

/// Finds `payloads` in `dev`'s guest RAM (receive buffers are reused, so at least the last
/// ones are there) and asserts that every page holding one is in `log`; `writer` names what
/// wrote them in a failure. Panics when none is found.
pub fn assert_frames_logged(dev: &NetDevice, log: &HostRam, payloads: &[Vec<u8>], writer: &str) {
    let mem = dev.ram().read_vec(0, dev.ram().size() as usize).unwrap();
    let mut found = 0;
    for (i, p) in payloads.iter().enumerate() {
        let Some(at) = mem.windows(p.len()).position(|w| w == p) else {
            continue;
        };
        found += 1;
        for page in (at as u64 / 4096)..=((at + p.len() - 1) as u64 / 4096) {
            let byte = log.read_vec(page / 8, 1).unwrap()[0];
            assert!(
                byte & (1 << (page % 8)) != 0,
                "frame {i} at {at:#x}: page {page} written by {writer} is not logged"
            );
        }
    }
    assert!(found > 0, "no received frame found in guest RAM");
}

/// Mock front-end options acking every feature but the receive offloads (GUEST_CSUM,
/// GUEST_TSO4/6): the switch checksums and segments in software for such a guest.
pub fn without_receive_offloads() -> NetOptions {
    use frontend_guest::net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    };
    NetOptions {
        features: ALL_FEATURES
            & !(1 << VIRTIO_NET_F_GUEST_TSO4
                | 1 << VIRTIO_NET_F_GUEST_TSO6
                | 1 << VIRTIO_NET_F_GUEST_CSUM),
        ..NetOptions::default()
    }
}

/// The virtio-net header of a TCP/IPv4 segmentation offload frame built by [`frames::tcp4`]
/// with a partial checksum: segments of `gso_size` payload bytes.
pub fn tso4_hdr(gso_size: u16) -> NetHdr {
    use frontend_guest::net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
    NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// Counter `key` of a port's JSON (0 if absent).
pub fn counter(port: &Value, key: &str) -> u64 {
    port[key].as_u64().unwrap_or(0)
}

/// Drop counter `reason` of a port's JSON.
pub fn drops(port: &Value, reason: &str) -> u64 {
    port["drops"][reason].as_u64().unwrap_or(0)
}

/// DPDK testpmd in interactive mode with one `net_virtio_user` port: a vhost-user-net
/// front-end without a VM (shared/REAL-CLIENTS.md).
pub struct TestPmd {
    child: Child,
    stdin: ChildStdin,
    /// What it printed on stdout: prompts, command echoes and answers. Kept apart from its
    /// stderr (log lines from other threads), which could land in the middle of a prompt.
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    prefix: String,
}

/// testpmd's prompt.
const PROMPT: &str = "testpmd> ";

/// The Debian package with dpdk-testpmd.
pub const DPDK_PACKAGE: &str = "dpdk-dev";

impl TestPmd {
    /// Starts testpmd on `lcores` (main lcore first: "1,0" forwards on lcore 0) with a
    /// `net_virtio_user` port on `socket` with `queues` queue pairs, forwarding mode `mode`
    /// (txonly, rxonly, io...), `extra` testpmd arguments, and waits for the prompt (the port
    /// is then connected and started).
    pub fn start(socket: &Path, lcores: &str, queues: u16, mode: &str, extra: &[&str]) -> TestPmd {
        let program =
            prereq::program("dpdk-testpmd", DPDK_PACKAGE).unwrap_or_else(|e| panic!("{e}"));
        let prefix = unique("pvio-dpdk-");
        let main = lcores.split(',').next().expect("lcore list");
        // testpmd prints with stdio, block-buffered on a pipe: stdbuf makes it line-buffered so
        // each command's output arrives before the next prompt.
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL")
            .arg(program)
            .args([
                "-l",
                lcores,
                "--main-lcore",
                main,
                "--no-pci",
                "--no-huge",
                "-m",
                "512",
            ])
            .args(["--file-prefix", &prefix, "--log-level", "lib.eal:error"])
            .arg("--vdev")
            .arg(format!(
                "net_virtio_user0,path={},queues={queues}",
                socket.display()
            ))
            .args([
                "--",
                "-i",
                "--total-num-mbufs=16384",
                &format!("--forward-mode={mode}"),
            ])
            .args([
                format!("--rxq={queues}"),
                format!("--txq={queues}"),
                format!("--nb-cores={}", 1),
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start dpdk-testpmd");
        let stdin = child.stdin.take().expect("piped");
        let stdout = collect(child.stdout.take().expect("piped"));
        let stderr = collect(child.stderr.take().expect("piped"));
        let mut t = TestPmd {
            child,
            stdin,
            stdout,
            stderr,
            prefix,
        };
        t.wait_prompt(0, "");
        t
    }

    /// Waits for the prompt that follows `echo` (the command line as testpmd echoes it) after
    /// byte `from` of its stdout, and returns what came between them.
    fn wait_prompt(&mut self, from: usize, echo: &str) -> String {
        let output = self.stdout.clone();
        let mut exited = None;
        let text = poll_until(TESTPMD_DEADLINE, || {
            let text = output.lock().unwrap();
            let rest = &text[from.min(text.len())..];
            let after_echo = rest.find(echo).map(|e| e + echo.len())?;
            if let Some(at) = rest[after_echo..].find(PROMPT) {
                return Some(rest[after_echo..after_echo + at].to_string());
            }
            exited = self.child.try_wait().ok().flatten();
            exited.map(|_| String::new())
        });
        if let Some(status) = exited {
            panic!("dpdk-testpmd exited with {status}:\n{}", self.output());
        }
        text.unwrap_or_else(|| {
            panic!(
                "timed out after {TESTPMD_DEADLINE:?} waiting for testpmd's prompt after {echo:?}; \
                 it printed:\n{}",
                self.output()
            )
        })
    }

    /// Everything testpmd printed so far: stdout, then stderr.
    pub fn output(&self) -> String {
        format!(
            "{}\n--- stderr ---\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Runs one interactive command and returns what it printed.
    pub fn command(&mut self, line: &str) -> String {
        let from = self.stdout.lock().unwrap().len();
        writeln!(self.stdin, "{line}").expect("write to testpmd");
        self.wait_prompt(from, line)
    }

    /// Port 0's (RX-packets, TX-packets) from `show port stats 0`.
    pub fn port_stats(&mut self) -> (u64, u64) {
        let text = self.command("show port stats 0");
        let field = |name: &str| -> u64 {
            let at = text
                .find(name)
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
            text[at + name.len()..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad {name} in:\n{text}"))
        };
        (field("RX-packets:"), field("TX-packets:"))
    }

    /// Quits and waits for the exit.
    pub fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let status = wait_for("testpmd to quit", PROCESS_DEADLINE, || {
            self.child.try_wait().ok().flatten()
        });
        assert!(
            status.success(),
            "testpmd exited with {status}:\n{}",
            self.output()
        );
    }
}

/// Appends everything `pipe` gives to the returned text, on a thread of its own.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let out = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Drop for TestPmd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}
