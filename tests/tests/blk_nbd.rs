//! backend-blk's NBD driver (cargo feature `nbd`; run with `--features pvio-tests/nbd`):
//! the real daemon serving an NBD export from nbdkit's memory plugin (on a unix socket and on
//! TCP, 127.0.0.1) and from qemu-nbd on a raw file, driven by frontend-guest's vhost-user front-end with verified random I/O; a server
//! that goes away mid-run fails requests with VIRTIO_BLK_S_IOERR and the daemon survives.
//!
//! Contract under test: `backend-blk --image nbd+unix:///EXPORT?socket=PATH` (and
//! `nbd://HOST:PORT/EXPORT`), FLUSH/DISCARD/WRITE_ZEROES offered per the export's flags.
#![cfg(feature = "nbd")]

use std::path::{Path, PathBuf};
use std::process::Command;

use frontend_guest::blk::{BlkStatus, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use frontend_guest::host::{BlkDevice, BlkOptions};
use pvio_tests::netdisk::{backend_blk, free_tcp_port, start_listening, start_listening_on};
use pvio_tests::netdisk::{Listen, Proc};
use pvio_tests::tmp::TempDir;
use pvio_tests::workload::{random_io, DiskModel};

const DISK_BYTES: usize = 16 << 20;

/// nbdkit's memory plugin listening at `at` (any export name).
fn nbdkit_memory_on(at: Listen<'_>) -> Proc {
    let mut cmd = Command::new("nbdkit");
    cmd.args(["--foreground", "--exit-with-parent"]);
    match at {
        Listen::Unix(socket) => cmd.arg("-U").arg(socket),
        Listen::Tcp(port) => cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]),
    };
    cmd.args(["memory", &DISK_BYTES.to_string()]);
    start_listening_on(&mut cmd, at)
}

/// nbdkit's memory plugin on a unix socket in `dir`.
fn nbdkit_memory(dir: &TempDir) -> (Proc, PathBuf) {
    let socket = dir.join("nbdkit.sock");
    (nbdkit_memory_on(Listen::Unix(&socket)), socket)
}

fn backend(dir: &TempDir, url: &str) -> (Proc, PathBuf) {
    backend_blk(dir.path(), url, &[])
}

fn connect(socket: &Path) -> BlkDevice {
    BlkDevice::connect(socket, &BlkOptions::default()).expect("connect to backend-blk")
}

fn unix_url(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// The device's DISCARD and WRITE_ZEROES features.
fn zeroes(dev: &BlkDevice) -> (bool, bool) {
    (
        dev.has_feature(VIRTIO_BLK_F_DISCARD),
        dev.has_feature(VIRTIO_BLK_F_WRITE_ZEROES),
    )
}

#[test]
fn random_io_on_nbdkit_memory_at_queue_depths_1_to_64() {
    let dir = TempDir::new("nbd-mem").unwrap();
    let (_nbdkit, nbd_socket) = nbdkit_memory(&dir);
    random_io_at_depths(&dir, &unix_url(&nbd_socket));
}

/// Verified random I/O at queue depths 1 to 64 on the export behind `url`.
fn random_io_at_depths(dir: &TempDir, url: &str) {
    let (_blk, socket) = backend(dir, url);
    let mut dev = connect(&socket);
    assert_eq!(dev.config().capacity, DISK_BYTES as u64 / 512);
    let features = zeroes(&dev);
    assert_eq!(features, (true, true), "nbdkit memory trims and zeroes");
    let mut model = DiskModel::new(vec![0; DISK_BYTES]);
    let q = dev.queue(0).unwrap();
    for (depth, seed) in [(1, 11), (16, 12), (64, 13)] {
        random_io(q, &mut model, 300, depth, seed, features);
    }
}

#[test]
fn random_io_over_tcp_on_nbdkit_memory() {
    let dir = TempDir::new("nbd-tcp").unwrap();
    let port = free_tcp_port();
    let _nbdkit = nbdkit_memory_on(Listen::Tcp(port));
    random_io_at_depths(&dir, &format!("nbd://127.0.0.1:{port}/disk"));
}

#[test]
fn random_io_on_qemu_nbd_reaches_the_file() {
    let dir = TempDir::new("nbd-qemu").unwrap();
    let image = dir.join("disk.raw");
    let initial: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 7 / 512) as u8).collect();
    std::fs::write(&image, &initial).unwrap();
    let nbd_socket = dir.join("qemu-nbd.sock");
    let _qemu_nbd = start_listening(
        Command::new("qemu-nbd")
            .args([
                "--persistent",
                "--shared=8",
                "--format=raw",
                "--discard=unmap",
            ])
            .arg("--socket")
            .arg(&nbd_socket)
            .arg(&image),
        &nbd_socket,
    );
    let (_blk, socket) = backend(&dir, &unix_url(&nbd_socket));
    let mut model = DiskModel::new(initial);
    {
        let mut dev = connect(&socket);
        let features = zeroes(&dev);
        let q = dev.queue(0).unwrap();
        random_io(q, &mut model, 400, 32, 21, features);
        assert_eq!(q.flush().unwrap(), BlkStatus::Ok);
    }
    let on_disk = std::fs::read(&image).unwrap();
    assert_eq!(
        model.mismatch(0, &on_disk),
        None,
        "the file holds the bytes"
    );
}

#[test]
fn server_gone_mid_run_fails_requests_and_the_daemon_survives() {
    let dir = TempDir::new("nbd-gone").unwrap();
    let (nbdkit, nbd_socket) = nbdkit_memory(&dir);
    let (mut blk, socket) = backend(&dir, &unix_url(&nbd_socket));
    let mut dev = connect(&socket);
    let q = dev.queue(0).unwrap();
    assert_eq!(q.write(8, &[0xab; 4096]).unwrap(), BlkStatus::Ok);
    drop(nbdkit);
    // The connection breaks at the next request or as soon as the daemon sees the socket
    // close: every request from then on fails.
    for sector in 0..4 {
        let (status, _) = q.read(sector * 8, 4096).expect("a completion");
        assert_eq!(
            status,
            BlkStatus::IoErr,
            "read {sector} after the server left"
        );
    }
    assert_eq!(q.write(64, &[1; 512]).unwrap(), BlkStatus::IoErr);
    assert!(blk.is_running(), "backend-blk survives the lost server");
}
