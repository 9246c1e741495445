//! Crash-safe reconnect (vhost-user.rst "Inflight I/O tracking", VHOST_USER_PROTOCOL_F_
//! INFLIGHT_SHMFD): backend-blk is killed with SIGKILL while requests are in flight and
//! restarted on the same socket; the front-end hands the inflight area back and the new
//! back-end resubmits exactly the requests the old one had not completed.
//!
//! The mock front-end (frontend-guest's host side) builds the case a plain rewind gets wrong:
//! request A (a FLUSH that takes a while, the image holding many dirty pages) is taken first,
//! request B (GET_ID, completed at once) second and completes first, and the back-end dies
//! with A in flight. The front-end rewinds the available index to the used index (1), as
//! QEMU does: without the inflight area the new back-end takes B again and never A; with it,
//! A is resubmitted and the queue goes on in step.

use std::path::PathBuf;
use std::time::Duration;

use frontend_guest::blk::{BlkStatus, VIRTIO_BLK_ID_BYTES};
use frontend_guest::host::{
    BlkDevice, BlkOptions, ConnectOptions, Error, InflightArea, Token, VhostUserConnection,
    VhostUserProtocolFeatures,
};
use frontend_guest::virtq::VirtqError;
use pvio_tests::backend::{BlkBackend, BlkBackendConfig, BlkBackendKind};
use pvio_tests::image::{self, MIB};
use pvio_tests::tmp::TempDir;
use pvio_tests::OrPanic;

const IMAGE_SIZE: u64 = 1024 * MIB;
const TIMEOUT: Duration = Duration::from_secs(30);

/// backend-blk on an image in a scratch folder, restartable on the same socket.
struct Served {
    dir: TempDir,
    config: BlkBackendConfig,
    backend: Option<BlkBackend>,
    starts: u32,
}

impl Served {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label).or_panic("scratch folder");
        let image = dir.join("disk.raw");
        image::create_sparse(&image, IMAGE_SIZE).or_panic("creating the image");
        let mut config = BlkBackendConfig::new(&image, &dir.join("blk.sock"), 1);
        config.direct = Some(false);
        let mut served = Served {
            dir,
            config,
            backend: None,
            starts: 0,
        };
        served.start();
        served
    }

    fn start(&mut self) {
        let log = self.dir.join(&format!("backend-{}.log", self.starts));
        self.starts += 1;
        let backend = BlkBackend::start(&BlkBackendKind::pvio(), &self.config, &log)
            .or_panic("starting backend-blk");
        self.backend = Some(backend);
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(backend) = self.backend.take() {
            backend.kill().or_panic("killing backend-blk");
        }
    }

    fn log(&self) -> String {
        self.backend
            .as_ref()
            .map(BlkBackend::log)
            .unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.config.socket.clone()
    }

    fn image(&self) -> PathBuf {
        self.config.image.clone()
    }

    fn assert_running(&mut self) {
        let log = self.log();
        let backend = self.backend.as_mut().expect("started");
        assert!(backend.is_running(), "backend-blk died; log:\n{log}");
    }
}

fn options(inflight: bool) -> BlkOptions {
    BlkOptions {
        inflight,
        io_timeout: TIMEOUT,
        ..BlkOptions::default()
    }
}

/// Makes `mib` MiB of the image dirty in the page cache, so that a FLUSH takes a while.
fn dirty_image(image: &std::path::Path, mib: u64) {
    let chunk = image::pattern(mib, usize::try_from(MIB).expect("small"));
    for i in 0..mib {
        image::write_at(image, (64 + i) * MIB, &chunk).or_panic("writing the image");
    }
}

/// Requests A (FLUSH) and B (GET_ID) in flight, B completed, A not, and the back-end killed.
/// Returns A's token. Retries with more dirty data if A was done before the kill landed.
fn crash_with_a_in_flight(served: &mut Served, dev: &mut BlkDevice) -> Token {
    for attempt in 0..4 {
        dirty_image(&served.image(), 128 << attempt);
        let q = dev.queue(0).or_panic("queue 0");
        let a = q.submit_flush().or_panic("submitting the FLUSH");
        let b = q.submit_get_id().or_panic("submitting GET_ID");
        let first = q.wait_completion(TIMEOUT).or_panic("first completion");
        if first.token == b {
            served.kill();
            // The back-end is gone: whatever is in the used ring now is all it completed.
            match q.poll_completion().or_panic("used ring after the kill") {
                None => {
                    assert_eq!(first.status, Some(BlkStatus::Ok));
                    return a;
                }
                Some(c) => assert_eq!(c.token, a),
            }
            served.start();
            dev.reconnect().or_panic("reconnecting");
        } else {
            assert_eq!(first.token, a);
            q.complete(b, TIMEOUT).or_panic("GET_ID after the FLUSH");
        }
        eprintln!("attempt {attempt}: the FLUSH finished first; more dirty data");
    }
    panic!("could not catch the FLUSH in flight");
}

/// Writes and reads back a pattern: the queue is in step with the back-end.
fn check_queue_goes_on(served: &Served, dev: &mut BlkDevice) {
    let data = image::pattern(7, 64 * 1024);
    let q = dev.queue(0).or_panic("queue 0");
    assert_eq!(q.write(2048, &data).or_panic("write"), BlkStatus::Ok);
    let (status, read) = q.read(2048, 64 * 1024).or_panic("read");
    assert_eq!(status, BlkStatus::Ok);
    assert!(read == data, "read back other data than written");
    let on_disk = image::read_at(&served.image(), 2048 * 512, data.len()).or_panic("image");
    assert!(on_disk == data, "the image does not hold the data");
    let (status, id) = q.get_id().or_panic("GET_ID");
    assert_eq!(
        (status, id.len()),
        (BlkStatus::Ok, VIRTIO_BLK_ID_BYTES as usize)
    );
}

#[test]
fn inflight_tracking_resubmits_what_a_crash_left_in_flight() {
    let mut served = Served::new("blk-inflight");
    let mut dev = BlkDevice::connect(served.socket(), &options(true)).or_panic("connecting");
    assert!(dev
        .connection()
        .protocol_features()
        .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
    check_queue_goes_on(&served, &mut dev);
    let a = crash_with_a_in_flight(&mut served, &mut dev);

    served.start();
    dev.reconnect()
        .or_panic("reconnecting with the inflight area");
    let q = dev.queue(0).or_panic("queue 0");
    let done = q.complete(a, TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "the FLUSH left in flight was not resubmitted: {e}; log:\n{}",
            served.log()
        )
    });
    assert_eq!(done.status, Some(BlkStatus::Ok));
    assert_eq!(q.in_flight(), 0);
    check_queue_goes_on(&served, &mut dev);
    assert!(
        served.log().contains("resubmitting 1 request(s)"),
        "log:\n{}",
        served.log()
    );
    served.assert_running();
}

/// The same crash without the inflight area: the rewind to the used index makes the new
/// back-end take B again (a used element the driver does not have in flight) and lose A.
/// This is what the tracking is for, and shows the test above can fail.
#[test]
fn without_inflight_tracking_the_rewind_loses_a_request() {
    let mut served = Served::new("blk-no-inflight");
    let mut dev = BlkDevice::connect(served.socket(), &options(false)).or_panic("connecting");
    let a = crash_with_a_in_flight(&mut served, &mut dev);
    served.start();
    dev.reconnect().or_panic("reconnecting");
    let q = dev.queue(0).or_panic("queue 0");
    match q.complete(a, TIMEOUT) {
        Err(Error::Virtq(VirtqError::BadUsedId { .. })) => {}
        other => panic!("expected GET_ID to come back a second time, got {other:?}"),
    }
}

/// Bad areas handed back with VHOST_USER_SET_INFLIGHT_FD get an error reply; the daemon goes
/// on serving the next front-end.
#[test]
fn bad_inflight_areas_are_refused() {
    let mut served = Served::new("blk-bad-inflight");
    let dev = BlkDevice::connect(served.socket(), &options(true)).or_panic("connecting");
    let area = dev.inflight_area().expect("inflight area");
    let good = area.info;
    let dup = |area: &InflightArea| area.file.try_clone().or_panic("dup");
    let mut cases: Vec<(&str, InflightArea)> = Vec::new();
    let mut small = good;
    small.mmap_size -= 64;
    cases.push((
        "too small",
        InflightArea {
            info: small,
            file: dup(area),
        },
    ));
    let mut past_end = good;
    past_end.mmap_offset = 1 << 20;
    cases.push((
        "past the end",
        InflightArea {
            info: past_end,
            file: dup(area),
        },
    ));
    let mut too_many = good;
    too_many.num_queues = 9;
    cases.push((
        "too many queues",
        InflightArea {
            info: too_many,
            file: dup(area),
        },
    ));
    let plain = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(served.dir.join("plain"))
        .or_panic("plain file");
    plain.set_len(good.mmap_size).or_panic("size");
    cases.push((
        "an unsealable file",
        InflightArea {
            info: good,
            file: plain,
        },
    ));
    // A corrupted copy: a memfd with version 7 in queue 0's header.
    let bad_version = memfd_with(good.mmap_size, 8, &[7, 0]);
    cases.push((
        "version 7",
        InflightArea {
            info: good,
            file: bad_version,
        },
    ));
    // A well-formed header, then descriptor 3's inflight byte set to 3.
    let mut header = [0u8; 16];
    header[8..10].copy_from_slice(&1u16.to_le_bytes());
    header[10..12].copy_from_slice(&good.queue_size.to_le_bytes());
    let bad_byte = memfd_with(good.mmap_size, 0, &header);
    write_file(&bad_byte, 16 + 16 * 3, &[3]);
    cases.push((
        "inflight byte 3",
        InflightArea {
            info: good,
            file: bad_byte,
        },
    ));
    drop(dev);

    for (what, area) in cases {
        let mut conn = VhostUserConnection::connect_with(
            &served.socket(),
            &ConnectOptions::default(),
            1,
            VhostUserProtocolFeatures::INFLIGHT_SHMFD,
        )
        .or_panic("connecting");
        match conn.set_inflight_fd(&area) {
            Err(Error::Vhost { .. }) => {}
            other => panic!("{what}: expected an error reply, got {other:?}"),
        }
        drop(conn);
        served.assert_running();
    }
    // The daemon still serves, inflight tracking included.
    let mut dev = BlkDevice::connect(served.socket(), &options(true)).or_panic("connecting");
    check_queue_goes_on(&served, &mut dev);
    assert!(served.log().contains("VHOST_USER_SET_INFLIGHT_FD refused"));
}

fn memfd_with(size: u64, offset: u64, bytes: &[u8]) -> std::fs::File {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        "bad-inflight",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .or_panic("memfd");
    let file = std::fs::File::from(fd);
    file.set_len(size).or_panic("size");
    write_file(&file, offset, bytes);
    file
}

fn write_file(file: &std::fs::File, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, offset).or_panic("write");
}
