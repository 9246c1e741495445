//! backend-blk's RBD driver (cargo feature `rbd`; run with `--features pvio-tests/rbd`) on the
//! single-host Ceph cluster of `scripts/ceph-test-cluster.sh`: verified random I/O at queue
//! depths 1 to 64 with discard and write zeroes from pvio's mock front-end and from libblkio,
//! the bytes checked again through `rbd export`; snapshots served read-only; bad pool, image or configuration refused at
//! start with a clear message; the OSD stopped mid-run fails requests with
//! VIRTIO_BLK_S_IOERR after the timeout and the daemon survives.
//!
//! The shared cluster's configuration comes from `PVIO_CEPH_CONF` (scripts/test.sh starts
//! it; see pvio_tests::ceph); the OSD test starts a cluster of its own on other ports.
#![cfg(feature = "rbd")]

mod blkio_client;

use std::path::{Path, PathBuf};
use std::process::Command;

use frontend_guest::blk::{
    BlkStatus, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
};
use frontend_guest::host::{BlkDevice, BlkOptions};
use pvio_tests::ceph::{rbd, shared_conf, RbdImage};
use pvio_tests::netdisk::backend_blk;
use pvio_tests::tmp::TempDir;
use pvio_tests::workload::{random_io, DiskModel};

use blkio_client::BlkioClient;

const DISK_MIB: usize = 16;
const DISK_BYTES: usize = DISK_MIB << 20;

/// A new image of [`DISK_MIB`] MiB.
fn new_image(conf: &Path, tag: &str) -> RbdImage {
    RbdImage::create(conf, tag, DISK_BYTES as u64)
}

fn connect(socket: &Path) -> BlkDevice {
    BlkDevice::connect(socket, &BlkOptions::default()).expect("connect to backend-blk")
}

#[test]
fn random_io_at_queue_depths_1_to_64_checked_by_rbd_export() {
    let conf = shared_conf();
    let dir = TempDir::new("rbd-io").unwrap();
    let image = new_image(&conf, "io");
    let (_blk, socket) = backend_blk(dir.path(), &image.url(), &["--num-queues", "2"]);
    let mut model = DiskModel::new(vec![0; DISK_BYTES]);
    {
        let mut dev = BlkDevice::connect(
            &socket,
            &BlkOptions {
                num_queues: 2,
                ..BlkOptions::default()
            },
        )
        .expect("connect");
        assert_eq!(dev.config().capacity, DISK_BYTES as u64 / 512);
        let features = (
            dev.has_feature(VIRTIO_BLK_F_DISCARD),
            dev.has_feature(VIRTIO_BLK_F_WRITE_ZEROES),
        );
        assert_eq!(features, (true, true), "RBD discards and zeroes");
        for (depth, seed) in [(1, 31), (16, 32), (64, 33)] {
            random_io(
                dev.queue(0).unwrap(),
                &mut model,
                200,
                depth,
                seed,
                features,
            );
        }
        // The second queue sees the same image.
        pvio_tests::workload::check_disk(dev.queue(1).unwrap(), &model, 34);
        assert_eq!(dev.queue(0).unwrap().flush().unwrap(), BlkStatus::Ok);
    }
    check_export(&image, &dir, &model);
}

/// `rbd export` of `image` holds what `model` says.
fn check_export(image: &RbdImage, dir: &TempDir, model: &DiskModel) {
    let export = dir.join("export.raw");
    image.export(&export);
    let bytes = std::fs::read(&export).unwrap();
    assert_eq!(bytes.len(), DISK_BYTES);
    assert_eq!(
        model.mismatch(0, &bytes),
        None,
        "rbd export holds the bytes"
    );
}

#[test]
fn libblkio_random_io_at_queue_depths_1_to_64_checked_by_rbd_export() {
    let conf = shared_conf();
    let dir = TempDir::new("rbd-blkio").unwrap();
    let image = new_image(&conf, "blkio");
    let (_blk, socket) = backend_blk(dir.path(), &image.url(), &[]);
    let mut model = DiskModel::new(vec![0; DISK_BYTES]);
    {
        let mut client = BlkioClient::attach(&socket, 64);
        assert_eq!(client.capacity(), DISK_BYTES as u64);
        let features = client.zeroes();
        assert_eq!(
            features,
            (true, true),
            "libblkio sees discard and write zeroes"
        );
        for (depth, seed) in [(1, 41), (16, 42), (64, 43)] {
            random_io(&mut client, &mut model, 200, depth, seed, features);
        }
    }
    check_export(&image, &dir, &model);
}

#[test]
fn snapshot_is_served_read_only() {
    let conf = shared_conf();
    let dir = TempDir::new("rbd-snap").unwrap();
    let image = RbdImage::named(&conf, "snap");
    let source = image.name();
    let data: Vec<u8> = (0..DISK_BYTES).map(|i| (i / 4096) as u8).collect();
    let file = dir.join("data.raw");
    std::fs::write(&file, &data).unwrap();
    rbd(
        &conf,
        &["import", "--no-progress", file.to_str().unwrap(), source],
    );
    rbd(&conf, &["snap", "create", &format!("{source}@s1")]);
    // The image changes after the snapshot; the snapshot does not.
    rbd(
        &conf,
        &[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4096",
            "--io-total",
            "4M",
            "--io-pattern",
            "seq",
            source,
        ],
    );
    let (_blk, socket) = backend_blk(
        dir.path(),
        &format!("rbd:{source}@s1:conf={}", conf.display()),
        &[],
    );
    let mut dev = connect(&socket);
    assert!(dev.has_feature(VIRTIO_BLK_F_RO), "a snapshot is read-only");
    let q = dev.queue(0).unwrap();
    let (status, read) = q.read(2048, 8192).unwrap();
    assert_eq!(status, BlkStatus::Ok);
    assert_eq!(read, data[2048 * 512..2048 * 512 + 8192]);
    assert_eq!(q.write(0, &[1; 512]).unwrap(), BlkStatus::IoErr);
}

/// backend-blk refuses `image` at start: non-zero exit and a message containing `want`.
fn refused(image: &str, want: &str) {
    let dir = TempDir::new("rbd-bad").unwrap();
    let out = Command::new(pvio_tests::bins::workspace_bin(
        "backend-blk",
        "backend-blk",
    ))
    .arg("--socket")
    .arg(dir.join("blk.sock"))
    .args(["--image", image])
    .output()
    .expect("run backend-blk");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{image}: must fail; {stderr}");
    assert!(stderr.contains(want), "{image}: {want:?} in {stderr}");
}

#[test]
fn bad_pool_image_or_conf_is_a_clear_error() {
    let conf = shared_conf();
    let conf = conf.display();
    refused(&format!("rbd:nopool/img:conf={conf}"), "pool nopool");
    refused(
        &format!("rbd:rbd/no-such-image:conf={conf}"),
        "image rbd/no-such-image",
    );
    refused(
        "rbd:rbd/img:conf=/nonexistent/ceph.conf",
        "/nonexistent/ceph.conf",
    );
    refused("rbd:rbd", "POOL/IMAGE");
}

/// A cluster of this test's own (other ports), stopped on drop.
struct OwnCluster(PathBuf);

impl OwnCluster {
    fn start(dir: &Path, port: u16) -> OwnCluster {
        let script = pvio_tests::bins::workspace_root().join("scripts/ceph-test-cluster.sh");
        let out = Command::new(&script)
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            .output()
            .expect("run ceph-test-cluster.sh");
        assert!(
            out.status.success(),
            "ceph-test-cluster.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        OwnCluster(dir.to_path_buf())
    }

    fn conf(&self) -> PathBuf {
        self.0.join("ceph.conf")
    }

    /// Stops the OSD by its pid file and waits until it is gone.
    fn stop_osd(&self) {
        let pid = std::fs::read_to_string(self.0.join("run/osd.0.pid")).expect("OSD pid file");
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the OSD");
        while nix::sys::signal::kill(pid, None).is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let script = pvio_tests::bins::workspace_root().join("scripts/ceph-test-cluster.sh");
        let _ = Command::new(script)
            .args(["stop", self.0.to_str().unwrap()])
            .status();
    }
}

#[test]
fn osd_stopped_mid_run_fails_requests_after_the_timeout_and_the_daemon_survives() {
    let dir = TempDir::new("rbd-osd").unwrap();
    let cluster = OwnCluster::start(&dir.join("ceph"), 3410);
    let conf = cluster.conf();
    let image = new_image(&conf, "osd");
    let spec = format!("{}:rados_osd_op_timeout=5", image.url());
    let (mut blk, socket) = backend_blk(dir.path(), &spec, &[]);
    let mut dev = BlkDevice::connect(
        &socket,
        &BlkOptions {
            io_timeout: std::time::Duration::from_secs(120),
            ..BlkOptions::default()
        },
    )
    .expect("connect");
    let q = dev.queue(0).unwrap();
    assert_eq!(q.write(0, &[7; 4096]).unwrap(), BlkStatus::Ok);
    cluster.stop_osd();
    assert_eq!(
        q.write(4096, &[8; 4096]).unwrap(),
        BlkStatus::IoErr,
        "a write to a cluster without OSD fails after rados_osd_op_timeout"
    );
    assert_eq!(q.read(0, 4096).unwrap().0, BlkStatus::IoErr);
    assert!(blk.is_running(), "backend-blk survives the lost OSD");
}

#[test]
fn rbd_resize_reaches_the_front_end() {
    let conf = shared_conf();
    let dir = TempDir::new("rbd-resize").unwrap();
    let image = new_image(&conf, "resize");
    let (_blk, socket) = backend_blk(dir.path(), &image.url(), &[]);
    let opts = BlkOptions {
        backend_channel: true,
        ..BlkOptions::default()
    };
    let mut dev = BlkDevice::connect(&socket, &opts).expect("connect");
    assert_eq!(dev.config().capacity, DISK_BYTES as u64 / 512);
    let channel = dev.backend_channel().expect("back-end channel");
    let seen = channel.config_changes();
    rbd(
        &conf,
        &[
            "resize",
            "--size",
            &format!("{}M", 2 * DISK_MIB),
            image.name(),
        ],
    );
    let now = channel.wait_config_change(seen, std::time::Duration::from_secs(60));
    assert!(
        now > seen,
        "no VHOST_USER_BACKEND_CONFIG_CHANGE_MSG after rbd resize"
    );
    let capacity = dev.reread_config().expect("GET_CONFIG").capacity;
    assert_eq!(capacity, 2 * DISK_BYTES as u64 / 512);
    let q = dev.queue(0).unwrap();
    let data = vec![0x5c; 4096];
    assert_eq!(q.write(capacity - 8, &data).unwrap(), BlkStatus::Ok);
    assert_eq!(q.read(capacity - 8, 4096).unwrap(), (BlkStatus::Ok, data));
}

/// Waits (up to a minute) until `done` holds, panicking with `what` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < until, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_front_end_that_leaves_hands_the_exclusive_lock_over() {
    let conf = shared_conf();
    let dir = TempDir::new("rbd-lock").unwrap();
    let image = new_image(&conf, "lock");
    let info = rbd(&conf, &["info", "--format", "json", image.name()]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"exclusive-lock\""), "{info}");
    let serve = |name: &str| {
        let sub = dir.join(name);
        std::fs::create_dir(&sub).unwrap();
        backend_blk(&sub, &image.url(), &[])
    };
    let ((_a, socket_a), (_b, socket_b)) = (serve("a"), serve("b"));
    let ok = BlkStatus::Ok;
    {
        let mut dev = connect(&socket_a);
        let q = dev.queue(0).unwrap();
        assert_eq!(q.write(0, &[1; 4096]).unwrap(), ok);
        assert_eq!(q.read(8, 4096).unwrap(), (ok, vec![0; 4096]));
        assert!(
            !image.lockers().is_empty(),
            "A holds the lock while it writes"
        );
    }
    wait_until("A releases the lock when its front-end leaves", || {
        image.lockers().is_empty()
    });
    {
        let mut dev = connect(&socket_b);
        let q = dev.queue(0).unwrap();
        assert_eq!(q.read(0, 4096).unwrap(), (ok, vec![1; 4096]));
        assert_eq!(q.write(8, &[2; 4096]).unwrap(), ok);
    }
    wait_until("B releases the lock when its front-end leaves", || {
        image.lockers().is_empty()
    });
    let mut dev = connect(&socket_a);
    let q = dev.queue(0).unwrap();
    assert_eq!(
        q.read(8, 4096).unwrap(),
        (ok, vec![2; 4096]),
        "A reads what B wrote, not its old cache"
    );
    assert_eq!(
        q.write(16, &[3; 4096]).unwrap(),
        ok,
        "A takes the lock again"
    );
}
