//! Resize (VHOST_USER_PROTOCOL_F_BACKEND_REQ): after the image is resized on the host and
//! backend-blk gets SIGHUP, it serves the new `capacity` (virtio 1.2 §5.2.4) and tells the
//! front-end with VHOST_USER_BACKEND_CONFIG_CHANGE_MSG. Requests in flight across a shrink
//! fail with VIRTIO_BLK_S_IOERR or complete with the right data, never with wrong data, and
//! the daemon goes on.

use std::path::Path;
use std::time::Duration;

use frontend_guest::blk::BlkStatus;
use frontend_guest::host::{BlkDevice, BlkOptions, VhostUserProtocolFeatures};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pvio_tests::backend::{BlkBackend, BlkBackendConfig, BlkBackendKind};
use pvio_tests::image::{self, MIB};
use pvio_tests::tmp::TempDir;
use pvio_tests::OrPanic;

const TIMEOUT: Duration = Duration::from_secs(30);
const SECTOR: u64 = 512;

fn start(dir: &TempDir, size: u64) -> (BlkBackend, BlkBackendConfig) {
    let image = dir.join("disk.raw");
    image::create_sparse(&image, size).or_panic("creating the image");
    let config = BlkBackendConfig::new(&image, &dir.join("blk.sock"), 1);
    let backend = BlkBackend::start(&BlkBackendKind::pvio(), &config, &dir.join("backend.log"))
        .or_panic("starting backend-blk");
    (backend, config)
}

fn sighup(backend: &BlkBackend) {
    let pid = Pid::from_raw(i32::try_from(backend.pid()).expect("pid fits i32"));
    kill(pid, Signal::SIGHUP).or_panic("SIGHUP");
}

fn set_size(image: &Path, size: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .or_panic("open image");
    f.set_len(size).or_panic("resize image");
}

/// Resizes the image, sends SIGHUP and waits for the configuration change notification;
/// returns the capacity the front-end reads then, in sectors.
fn resize(backend: &BlkBackend, image: &Path, dev: &mut BlkDevice, size: u64) -> u64 {
    let channel = dev.backend_channel().expect("back-end channel");
    let seen = channel.config_changes();
    set_size(image, size);
    sighup(backend);
    let now = channel.wait_config_change(seen, TIMEOUT);
    assert_eq!(
        now,
        seen + 1,
        "no VHOST_USER_BACKEND_CONFIG_CHANGE_MSG after SIGHUP; log:\n{}",
        backend.log()
    );
    dev.reread_config().or_panic("GET_CONFIG").capacity
}

#[test]
fn sighup_resize_reaches_the_front_end() {
    let dir = TempDir::new("blk-resize").or_panic("scratch folder");
    let (mut backend, config) = start(&dir, 64 * MIB);
    let opts = BlkOptions {
        backend_channel: true,
        io_timeout: TIMEOUT,
        ..BlkOptions::default()
    };
    let mut dev = BlkDevice::connect(&config.socket, &opts).or_panic("connecting");
    assert!(dev
        .connection()
        .protocol_features()
        .contains(VhostUserProtocolFeatures::BACKEND_REQ));
    assert_eq!(dev.config().capacity, 64 * MIB / SECTOR);

    // Grow: the new sectors are served.
    let capacity = resize(&backend, &config.image, &mut dev, 96 * MIB);
    assert_eq!(capacity, 96 * MIB / SECTOR);
    let data = image::pattern(3, 4096);
    let q = dev.queue(0).or_panic("queue 0");
    let last = capacity - 8;
    assert_eq!(q.write(last, &data).or_panic("write"), BlkStatus::Ok);
    assert!(q.read(last, 4096).or_panic("read").1 == data);

    // Shrink with reads in flight across the part that goes away.
    let tail = image::pattern(9, usize::try_from(16 * MIB).expect("small"));
    image::write_at(&config.image, 80 * MIB, &tail).or_panic("filling the tail");
    let first = 80 * MIB / SECTOR;
    let q = dev.queue(0).or_panic("queue 0");
    // 32 reads of 512 KiB (three descriptors each: the queue holds 42).
    let tokens: Vec<_> = (0..32)
        .map(|i| {
            q.submit_read(first + i * 1024, 512 * 1024)
                .or_panic("submitting a read")
        })
        .collect();
    set_size(&config.image, 72 * MIB);
    sighup(&backend);
    let mut failed = 0;
    for (i, token) in tokens.into_iter().enumerate() {
        let c = q
            .complete(token, TIMEOUT)
            .or_panic("read across the shrink");
        match c.status {
            Some(BlkStatus::Ok) => {
                let start = i * 512 * 1024;
                assert!(
                    c.data == tail[start..start + 512 * 1024],
                    "read {i} completed OK with wrong data"
                );
            }
            Some(BlkStatus::IoErr) => failed += 1,
            other => panic!("read {i}: status {other:?}"),
        }
    }
    eprintln!("{failed} of 32 reads in flight failed with IOERR across the shrink");
    let channel = dev.backend_channel().expect("back-end channel");
    channel.wait_config_change(1, TIMEOUT);
    let capacity = dev.reread_config().or_panic("GET_CONFIG").capacity;
    assert_eq!(capacity, 72 * MIB / SECTOR);

    // After the shrink: past the end fails, inside works.
    let q = dev.queue(0).or_panic("queue 0");
    let (status, _) = q.read(capacity - 8, 8192).or_panic("read past the end");
    assert_eq!(status, BlkStatus::IoErr);
    assert_eq!(
        q.write(capacity, &data).or_panic("write past the end"),
        BlkStatus::IoErr
    );
    assert!(q.read(capacity - 8, 4096).or_panic("read").0 == BlkStatus::Ok);
    assert!(backend.is_running(), "log:\n{}", backend.log());
    let log = backend.log();
    assert!(log.contains("capacity changed from"), "log:\n{log}");
}

/// A resize without a connected front-end is taken up by the next one.
#[test]
fn sighup_while_idle_serves_the_new_size_to_the_next_front_end() {
    let dir = TempDir::new("blk-resize-idle").or_panic("scratch folder");
    let (mut backend, config) = start(&dir, 64 * MIB);
    set_size(&config.image, 32 * MIB);
    sighup(&backend);
    // The daemon handles the signal before the next connection's GET_CONFIG: wait for its log.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !backend.log().contains("capacity changed") {
        assert!(
            std::time::Instant::now() < deadline,
            "log:\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dev = BlkDevice::connect(&config.socket, &BlkOptions::default()).or_panic("connecting");
    assert_eq!(dev.config().capacity, 32 * MIB / SECTOR);
    assert!(backend.is_running());
}

/// Image sector the guest writes `READY` into once it has read the disk's first size.
const READY_SECTOR: u64 = 8;

/// A QEMU guest (QEMU 7.2's vhost-user-blk forwards VHOST_USER_BACKEND_CONFIG_CHANGE_MSG to
/// the driver as a configuration change interrupt) sees the disk grow after SIGHUP and reads
/// the data the host put into the new sectors.
#[test]
fn qemu_guest_sees_the_disk_grow() {
    use pvio_tests::guest::GuestKit;
    use pvio_tests::initramfs::BLK_MODULES;
    use pvio_tests::qemu::BlkDisk;

    let dir = TempDir::new("blk-resize-qemu").or_panic("scratch folder");
    let (mut backend, config) = start(&dir, 64 * MIB);
    let kit = GuestKit::new("blk-resize-qemu-guest", BLK_MODULES).or_panic("preparing the guest");
    let disk = BlkDisk {
        socket: config.socket.clone(),
        num_queues: 1,
        reconnect: false,
    };
    let script = format!(
        "S=$(cat /sys/block/vda/size)\n\
         echo \"@@pvio sectors-before $S\"\n\
         printf READY | dd of=/dev/vda bs=512 count=1 seek={READY_SECTOR} conv=sync \
           oflag=direct 2>/dev/null\n\
         n=0\n\
         while [ \"$(cat /sys/block/vda/size)\" = \"$S\" ] && [ $n -lt 1200 ]; do \
           sleep 0.1; n=$((n+1)); done\n\
         N=$(cat /sys/block/vda/size)\n\
         echo \"@@pvio sectors-after $N\"\n\
         T=$(dd if=/dev/vda bs=512 skip=$((N - 8)) count=8 iflag=direct 2>/dev/null \
           | sha256sum | cut -d' ' -f1)\n\
         echo \"@@pvio tail $T\"\n"
    );
    let guest = std::thread::spawn(move || {
        kit.boot(&script, |g| g.disks = vec![disk])
            .map(|run| run.console)
            .map_err(|e| e.to_string())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while image::read_at(&config.image, READY_SECTOR * SECTOR, 5).or_panic("image") != b"READY" {
        assert!(
            !guest.is_finished(),
            "the guest ended early: {:?}",
            guest.join()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let tail = image::pattern(11, 4096);
    set_size(&config.image, 96 * MIB);
    image::write_at(&config.image, 96 * MIB - 4096, &tail).or_panic("writing the new tail");
    sighup(&backend);
    let console = match guest.join().expect("guest thread") {
        Ok(console) => console,
        Err(e) => panic!("guest run failed: {e}\nback-end log:\n{}", backend.log()),
    };
    assert_eq!(
        console.marker("sectors-before").or_panic("guest output"),
        (64 * MIB / SECTOR).to_string()
    );
    assert_eq!(
        console.marker("sectors-after").or_panic("guest output"),
        (96 * MIB / SECTOR).to_string(),
        "the guest did not see the new capacity; back-end log:\n{}",
        backend.log()
    );
    assert_eq!(
        console.marker("tail").or_panic("guest output"),
        image::sha256_hex(&tail).or_panic("hash")
    );
    assert!(backend.is_running());
}
