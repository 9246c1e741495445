//! The command line contract of the `backend-blk` binary: bad arguments give one clear line
//! and a non-zero exit, the vhost-user.rst conventions (`--print-capabilities`, `--fd`,
//! aliases) work, and SIGTERM/SIGINT stop an idle daemon cleanly.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::{command, make_image, Daemon, TempDir};
use nix::sys::signal::Signal;

/// Runs the binary and checks: non-zero exit, exactly one stderr line containing `needle`, no
/// panic, and nothing left at `socket`.
fn assert_one_line_error(args: &[&str], needle: &str, socket: Option<&std::path::Path>) {
    let out = command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run backend-blk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} must fail; stderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line expected, got: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    if let Some(socket) = socket {
        assert!(!socket.exists(), "{args:?}: socket file left behind");
    }
}

#[test]
fn bad_arguments_fail_with_one_line() {
    let dir = TempDir::new("cli-bad");
    let image = dir.join("disk.raw");
    make_image(&image, 64);
    let sock = dir.join("s.sock");
    let (s, i) = (sock.to_str().unwrap(), image.to_str().unwrap());
    let missing = dir.join("missing.raw");
    let dir_path = dir.0.to_str().unwrap();
    let in_missing_folder = dir.join("no/such/folder/s.sock");
    let base = |extra: &[&'static str]| [&["--socket", s, "--image", i][..], extra].concat();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--socket", s], "--image"),
        (vec!["--image", i], "--socket"),
        (
            vec!["--socket", s, "--image", missing.to_str().unwrap()],
            "missing.raw",
        ),
        (
            vec!["--socket", s, "--image", dir_path],
            "not a regular file",
        ),
        (
            vec![
                "--socket",
                in_missing_folder.to_str().unwrap(),
                "--image",
                i,
            ],
            "cannot listen",
        ),
        (base(&["--queue-size", "100"]), "power of two"),
        (base(&["--queue-size", "0"]), "power of two"),
        (base(&["--queue-size", "2048"]), "--queue-size"),
        (base(&["--num-queues", "0"]), "--num-queues"),
        (base(&["--num-queues", "x"]), "--num-queues"),
        (base(&["--direct", "maybe"]), "--direct"),
        (base(&["--frobnicate"]), "--frobnicate"),
        (vec!["--socket", s, "--fd", "3", "--image", i], "--fd"),
        (vec!["--fd", "0", "--image", i], "not a listening socket"),
        (vec!["--socket", i, "--image", i], "not a socket"),
    ];
    for (args, needle) in cases {
        assert_one_line_error(&args, needle, Some(&sock));
    }
    assert!(
        image.exists(),
        "an image given as --socket is never removed"
    );
}

#[test]
fn print_capabilities_is_the_vhost_user_json() {
    let out = command().arg("--print-capabilities").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["type"], "block");
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        features.contains(&"read-only") && features.contains(&"blk-file"),
        "{v}"
    );
}

#[test]
fn help_lists_the_options() {
    let out = command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--socket",
        "--socket-path",
        "--fd",
        "--image",
        "--blk-file",
        "--readonly",
        "--read-only",
        "--num-queues",
        "--queue-size",
        "--direct",
        "--serial",
        "--print-capabilities",
    ] {
        assert!(text.contains(option), "--help should list {option}");
    }
}

#[test]
fn sigterm_on_an_idle_daemon_exits_zero_and_removes_the_socket() {
    let dir = TempDir::new("cli-term");
    make_image(&dir.join("disk.raw"), 64);
    let mut d = Daemon::start(&dir, &["--image", dir.join("disk.raw").to_str().unwrap()]);
    d.assert_clean_stop(Signal::SIGTERM);
}

#[test]
fn sigint_with_convention_aliases_exits_zero() {
    let dir = TempDir::new("cli-int");
    make_image(&dir.join("disk.raw"), 64);
    let image = dir.join("disk.raw");
    let args = [
        "--blk-file",
        image.to_str().unwrap(),
        "--read-only",
        "--direct",
        "off",
    ];
    let mut d = Daemon::start(&dir, &args);
    d.assert_clean_stop(Signal::SIGINT);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new("cli-stale");
    make_image(&dir.join("disk.raw"), 64);
    drop(UnixListener::bind(dir.join("blk.sock")).unwrap()); // leaves the file behind
    let mut d = Daemon::start(&dir, &["--image", dir.join("disk.raw").to_str().unwrap()]);
    // The stale file satisfied Daemon::start's wait: wait for the daemon's own socket.
    common::wait_until("the daemon to listen", || {
        std::os::unix::net::UnixStream::connect(&d.socket).is_ok()
    });
    d.assert_clean_stop(Signal::SIGTERM);
}

#[test]
fn inherited_listening_socket_with_fd() {
    let dir = TempDir::new("cli-fd");
    let image = dir.join("disk.raw");
    make_image(&image, 64);
    let path = dir.join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = command();
    cmd.args(["--fd", "3", "--image", image.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 and fcntl are async-signal-safe; they give the child the listener as fd 3
    // without close-on-exec, which is what a launcher passing --fd does. (dup2(3, 3) would keep
    // close-on-exec, hence the fcntl when the listener already is fd 3.)
    unsafe {
        cmd.pre_exec(move || {
            let ret = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if ret < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let frontend = vhost::vhost_user::Frontend::connect(&path, 1).expect("connect");
    let features = vhost::VhostBackend::get_features(&frontend).expect("GET_FEATURES");
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 offered");
    drop(frontend);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        path.exists(),
        "an inherited socket's file belongs to the launcher"
    );
}
