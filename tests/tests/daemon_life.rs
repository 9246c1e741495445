//! Long life of both daemons: a thousand front-end sessions each — clean ones (full set-up and
//! verified I/O with frontend-guest's mock front-end), ones that disconnect in the middle of
//! the set-up, and ones that send malformed vhost-user messages — must leave the daemon's open
//! file descriptors (`/proc/PID/fd`) and threads (`/proc/PID/task`) where they were after the
//! first session. Counts are polled until they settle (with a deadline), never slept on.
//!
//! Contract under test: a vhost-user back-end serves front-ends one after another for as long
//! as it runs (vhost-user.rst; vhost-daemon's serve loop), releasing every resource of a
//! connection when it ends. Also the life cycle both daemons share through vhost-daemon:
//! `--print-capabilities`, a stale socket replaced, a non-socket never deleted, SIGHUP and
//! SIGUSR1 served without stopping, SIGTERM a clean stop (exit 0, socket removed).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use frontend_guest::host::{
    BlkDevice, BlkOptions, ConnectOptions, HostRam, NetDevice, NetOptions, VhostUserConnection,
};
use frontend_guest::net::NetHdr;
use pvio_tests::backend::is_listening;
use pvio_tests::bins::workspace_bin;
use pvio_tests::procstat::{fds_and_threads, settle_at};
use pvio_tests::tmp::TempDir;

/// Front-end sessions per daemon.
const SESSIONS: usize = 1000;
/// How long the counts may take to settle, and the daemon to start (a loaded 2-core machine).
const SETTLE: Duration = Duration::from_secs(60);
/// vhost-user requests used raw (vhost-user.rst "Front-end message types").
const GET_FEATURES: u32 = 1;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
/// Header flags: protocol version 1, and NEED_REPLY.
const VERSION_1: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;

/// A daemon process, killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(package: &str, args: &[&str], dir: &TempDir) -> Daemon {
        let socket = dir.join("vhost.sock");
        let log = dir.join(&format!("{package}.log"));
        let out = std::fs::File::create(&log).expect("create the daemon log");
        let child = Command::new(workspace_bin(package, package))
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("start the daemon");
        let daemon = Daemon { child, socket, log };
        let deadline = Instant::now() + SETTLE;
        while !is_listening(&daemon.socket) {
            assert!(
                Instant::now() < deadline,
                "{package} does not listen: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Open descriptors and threads of the daemon process.
    fn counts(&self) -> (usize, usize) {
        fds_and_threads(self.child.id())
    }

    /// Waits until the counts equal `want`; returns the last counts seen.
    fn settle_at(&self, want: (usize, usize)) -> (usize, usize) {
        settle_at(self.child.id(), want, SETTLE)
    }

    /// Waits until the counts have not changed for half a second (the daemon is idle, waiting
    /// for a front-end).
    fn settled(&self) -> (usize, usize) {
        let deadline = Instant::now() + SETTLE;
        let mut last = self.counts();
        let mut stable = 0;
        while stable < 25 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.counts();
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
        }
        last
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
            panic!("the daemon exited with {status}: {}", self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect_options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: SETTLE,
        reply_timeout: SETTLE,
    }
}

/// One vhost-user message: header (request, flags, size) and payload.
fn message(request: u32, flags: u32, size: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = request.to_le_bytes().to_vec();
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// A session of malformed messages, variant `n`: the daemon answers with an error or drops
/// the connection; either way it must serve the next front-end and keep nothing.
fn malformed_session(socket: &Path, n: usize) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(SETTLE)).expect("timeout");
    let owner = message(SET_OWNER, VERSION_1, 0, &[]);
    let bad: Vec<u8> = match n % 4 {
        // A request code no version of the protocol has.
        0 => message(0xdead, VERSION_1 | NEED_REPLY, 0, &[]),
        // A payload larger than any message may be.
        1 => message(GET_FEATURES, VERSION_1, 0x1000_0000, &[0; 64]),
        // A memory table that claims regions without their descriptors.
        2 => message(
            SET_MEM_TABLE,
            VERSION_1 | NEED_REPLY,
            8,
            &[4, 0, 0, 0, 0, 0, 0, 0],
        ),
        // Half a header, then the connection ends.
        _ => message(GET_FEATURES, VERSION_1, 0, &[])[..6].to_vec(),
    };
    let _ = s.write_all(&owner);
    let _ = s.write_all(&bad);
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Until the daemon closes its end (or replies and closes), so sessions do not overlap.
    let _ = s.read_to_end(&mut Vec::new());
}

/// A session that leaves at stage `n` of the set-up.
fn mid_setup_session(socket: &Path, n: usize) {
    let mut conn = VhostUserConnection::connect(socket, &connect_options(), 3).expect("connect");
    if n % 3 >= 1 {
        let features = conn.offered_features();
        conn.set_features(features).expect("SET_FEATURES");
    }
    if n % 3 == 2 {
        let ram = HostRam::new(1 << 20).expect("guest RAM");
        conn.set_mem_table(&ram).expect("SET_MEM_TABLE");
    }
}

fn blk_clean_session(socket: &Path, n: usize) {
    let opts = BlkOptions {
        queue_size: 16,
        max_request_bytes: 64 << 10,
        scratch_bytes: 64 << 10,
        connect: connect_options(),
        ..BlkOptions::default()
    };
    let mut dev = BlkDevice::connect(socket, &opts).expect("connect");
    let data = vec![n as u8; 4096];
    let sector = (n % 64) as u64 * 8;
    let q = dev.queue(0).expect("queue 0");
    q.write(sector, &data).expect("write");
    let (_, back) = q.read(sector, 4096).expect("read");
    assert_eq!(back, data, "session {n}: data read back");
    dev.disconnect().expect("disconnect");
}

fn net_clean_session(socket: &Path, n: usize) {
    let opts = NetOptions {
        queue_size: 16,
        max_frame_bytes: 2048,
        scratch_bytes: 64 << 10,
        connect: connect_options(),
        ..NetOptions::default()
    };
    let mut dev = NetDevice::connect(socket, &opts).expect("connect");
    // A broadcast frame into the one-port switch: transmitted, completed, counted.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, n as u8]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.resize(60, 0x5a);
    let pair = dev.pair(0).expect("pair 0");
    pair.fill_rx().expect("fill rx");
    pair.send(&NetHdr::default(), &frame).expect("send");
    pair.wait_tx_done().expect("transmit completes");
    dev.disconnect().expect("disconnect");
}

/// Runs the sessions against `daemon` and checks its descriptors and threads.
fn long_life(mut daemon: Daemon, clean: fn(&Path, usize)) {
    let socket = daemon.socket.clone();
    // The first session sets up what lives for the whole run (logger, lazily made state).
    clean(&socket, 0);
    let start = daemon.settled();
    let began = Instant::now();
    for n in 1..SESSIONS {
        match n % 4 {
            0 => clean(&socket, n),
            1 => mid_setup_session(&socket, n / 4),
            _ => malformed_session(&socket, n / 2),
        }
    }
    clean(&socket, SESSIONS);
    let took = began.elapsed();
    daemon.assert_running();
    let end = daemon.settle_at(start);
    eprintln!(
        "{SESSIONS} sessions in {:.1} s; (fds, threads) {start:?} -> {end:?}",
        took.as_secs_f64()
    );
    assert_eq!(
        end,
        start,
        "(open fds, threads) after {SESSIONS} sessions; daemon log:\n{}",
        daemon.log()
    );
}

#[test]
fn backend_blk_keeps_no_fds_or_threads_across_front_ends() {
    let dir = TempDir::new("daemon-life-blk").expect("temp dir");
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let image_arg = image.display().to_string();
    let daemon = Daemon::start(
        "backend-blk",
        &[
            "--image",
            &image_arg,
            "--direct",
            "off",
            "--queue-size",
            "16",
        ],
        &dir,
    );
    long_life(daemon, blk_clean_session);
}

#[test]
fn backend_net_keeps_no_fds_or_threads_across_front_ends() {
    let dir = TempDir::new("daemon-life-net").expect("temp dir");
    let daemon = Daemon::start("backend-net", &["--switch", "--queue-size", "16"], &dir);
    long_life(daemon, net_clean_session);
}

/// The daemon's arguments besides the socket, for the life-cycle checks.
fn daemon_args(package: &str, dir: &TempDir) -> Vec<String> {
    if package == "backend-net" {
        return vec!["--switch".into()];
    }
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    vec![
        "--image".into(),
        image.display().to_string(),
        "--direct".into(),
        "off".into(),
    ]
}

/// Waits for `predicate` on the daemon's log.
fn wait_log(daemon: &Daemon, what: &str) {
    let deadline = Instant::now() + SETTLE;
    while !daemon.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn life_cycle(package: &str, kind: &str) {
    let bin = workspace_bin(package, package);
    let out = Command::new(&bin)
        .arg("--print-capabilities")
        .output()
        .expect("run");
    assert!(out.status.success());
    let caps: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(caps["type"], kind);
    assert!(caps["features"].is_array());

    let dir = TempDir::new(&format!("daemon-cycle-{package}")).expect("temp dir");
    let args = daemon_args(package, &dir);
    // A regular file at the socket path: refused, never deleted.
    let socket = dir.join("vhost.sock");
    std::fs::write(&socket, b"not a socket").expect("file");
    let out = Command::new(&bin)
        .args(&args)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&socket).expect("kept"), b"not a socket");
    std::fs::remove_file(&socket).expect("remove");

    // A stale socket (its listener gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = Daemon::start(package, &args, &dir);
    for (signal, answer) in [
        (nix::sys::signal::Signal::SIGUSR1, "stats: {"),
        (nix::sys::signal::Signal::SIGHUP, "SIGHUP"),
    ] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.child.id() as i32), signal)
            .expect("signal");
        wait_log(&daemon, answer);
        daemon.assert_running();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = daemon.child.wait().expect("wait");
    assert!(status.success(), "{status}: {}", daemon.log());
    assert!(!socket.exists(), "the socket is removed on a clean stop");
}

#[test]
fn backend_blk_life_cycle() {
    life_cycle("backend-blk", "block");
}

#[test]
fn backend_net_life_cycle() {
    life_cycle("backend-net", "net");
}
