//! Each daemon against a hostile vhost-user front-end ([`pvio_tests::hostile`]): a thousand
//! bad sessions (messages before SET_OWNER, truncated and oversized payloads, unknown
//! requests, bad memory tables and fd counts, rings outside memory, bad queue sizes, kicks
//! before set-up, SET_VRING_BASE beyond the ring, disconnects inside every message). Each ends
//! in an error reply or a clean disconnect; the daemon never exits, serves a good front-end
//! afterwards, and has the same threads and open file descriptors as before.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use frontend_guest::host::{BlkDevice, BlkOptions, NetDevice, NetOptions};
use pvio_tests::bins::workspace_bin;
use pvio_tests::hostile::{fds_and_threads, Attack};
use pvio_tests::tmp::TempDir;

const SESSIONS: usize = 1000;
/// How long the daemon may take to settle back to its resource counts after a session.
const SETTLE: Duration = Duration::from_secs(20);

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, args: &[&std::ffi::OsStr]) -> Daemon {
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn daemon");
    Daemon { child }
}

/// Waits until the daemon's (fds, threads) equal `want`; returns what it last saw.
fn settle(pid: u32, want: (usize, usize)) -> (usize, usize) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = fds_and_threads(pid).expect("read /proc");
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A good front-end's connection, retried while the daemon gets back to listening.
fn retry<T, E: std::fmt::Display>(connect: impl Fn() -> Result<T, E>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        match connect() {
            Ok(dev) => return dev,
            Err(e) if Instant::now() > deadline => panic!("good front-end refused: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Resource counts (fds, threads) before and after.
type Counts = ((usize, usize), (usize, usize));

/// A thousand hostile sessions between two good ones; checks survival and threads, returns
/// the counts.
fn hammer(d: &mut Daemon, socket: &Path, good: impl Fn()) -> Counts {
    good();
    let pid = d.child.id();
    let before = settle(pid, (0, 0));
    let before = settle(pid, before);
    let attacks = Attack::all();
    for i in 0..SESSIONS {
        let a = attacks[i % attacks.len()];
        a.run(socket)
            .unwrap_or_else(|e| panic!("session {i} ({a:?}): {e}"));
        assert!(
            matches!(d.child.try_wait(), Ok(None)),
            "the daemon exited after {a:?}"
        );
    }
    good();
    let after = settle(pid, before);
    println!(
        "daemon (fds, threads) before {before:?}, after {SESSIONS} hostile sessions {after:?}"
    );
    assert_eq!(after.1, before.1, "threads leaked");
    (before, after)
}

fn assert_no_fd_leak((before, after): Counts) {
    assert_eq!(after.0, before.0, "file descriptors leaked");
}

/// Before vhost-daemon's exit-event fix (issue 9) one fd leaked per session.
#[test]
fn backend_blk_survives_hostile_front_ends_and_leaks_nothing() {
    assert_no_fd_leak(blk_hostile_sessions());
}

fn blk_hostile_sessions() -> Counts {
    let dir = TempDir::new("hostile-blk").unwrap();
    let image = dir.join("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let socket = dir.join("blk.sock");
    let bin = workspace_bin("backend-blk", "backend-blk");
    let mut d = spawn(
        &bin,
        &[
            "--socket".as_ref(),
            socket.as_os_str(),
            "--image".as_ref(),
            image.as_os_str(),
        ],
    );
    let good = || {
        let opts = BlkOptions {
            num_queues: 1,
            ..BlkOptions::default()
        };
        let dev = retry(|| BlkDevice::connect(&socket, &opts));
        dev.disconnect().expect("good session");
    };
    hammer(&mut d, &socket, good)
}

/// Before vhost-daemon's exit-event fix (issue 9) one fd leaked per session.
#[test]
fn backend_net_survives_hostile_front_ends_and_leaks_nothing() {
    assert_no_fd_leak(net_hostile_sessions());
}

fn net_hostile_sessions() -> Counts {
    let dir = TempDir::new("hostile-net").unwrap();
    let socket = dir.join("net.sock");
    let bin = workspace_bin("backend-net", "backend-net");
    let mut d = spawn(
        &bin,
        &["--switch".as_ref(), "--socket".as_ref(), socket.as_os_str()],
    );
    let good = || {
        let dev = retry(|| NetDevice::connect(&socket, &NetOptions::default()));
        dev.disconnect().expect("good session");
    };
    hammer(&mut d, &socket, good)
}
