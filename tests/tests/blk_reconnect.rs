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
        Self::with_direct(label, false)
    }

    fn with_direct(label: &str, direct: bool) -> Self {
        let dir = TempDir::new(label).or_panic("scratch folder");
        let image = dir.join("disk.raw");
        image::create_sparse(&image, IMAGE_SIZE).or_panic("creating the image");
        let mut config = BlkBackendConfig::new(&image, &dir.join("blk.sock"), 1);
        config.direct = Some(direct);
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

// ---------------------------------------------------------------------------------------------
// A real guest: QEMU's vhost-user-blk with `reconnect=1` (QEMU 7.2 keeps the inflight area
// and hands it back on reconnect).

/// Image sector where the guest records how many verified passes it finished (`PVIO%08d`).
const PROGRESS_SECTOR: u64 = 8;
/// Image sector the host writes `STOP` into to end the guest's loop.
const STOP_SECTOR: u64 = 16;
/// How long a guest may take to boot and make progress under TCG on a loaded machine.
const GUEST_DEADLINE: Duration = Duration::from_secs(240);

/// Guest shell: write 1 MiB with O_DIRECT, read it back, compare; record the pass in
/// [`PROGRESS_SECTOR`]; until the host writes `STOP` into [`STOP_SECTOR`]. The data comes from
/// a 4 MiB random pool made once (slice `i % 16` goes to offset `i % 8` MiB, so a stale read
/// of an earlier pass differs). Two background readers of the same 8 MiB keep more requests
/// in flight (the back-end uses O_DIRECT here, so they take disk time), so a crash catches
/// some. Any I/O error or mismatch gives a `failed` marker.
fn verified_io_loop_script() -> String {
    format!(
        "dd if=/dev/urandom of=/tmp/pool bs=64k count=64 2>/dev/null\n\
         for b in 0 1; do\n\
           (while :; do dd if=/dev/vda of=/dev/null bs=256k skip=$((64 + b * 16)) count=16 \
              iflag=direct 2>/dev/null || echo \"@@pvio failed background-read\"; done) &\n\
         done\n\
         i=0\n\
         while :; do\n\
           i=$((i+1))\n\
           off=$((256 + (i % 8) * 16))\n\
           dd if=/tmp/pool of=/tmp/w bs=64k skip=$(( (i % 16) * 2 )) count=16 2>/dev/null\n\
           dd if=/tmp/w of=/dev/vda bs=64k seek=$off oflag=direct conv=fsync 2>/dev/null \
             || {{ echo \"@@pvio failed write-$i\"; exit 1; }}\n\
           dd if=/dev/vda of=/tmp/r bs=64k skip=$off count=16 iflag=direct 2>/dev/null \
             || {{ echo \"@@pvio failed read-$i\"; exit 1; }}\n\
           cmp -s /tmp/w /tmp/r || {{ echo \"@@pvio failed compare-$i\"; exit 1; }}\n\
           printf 'PVIO%08d' $i > /tmp/p\n\
           dd if=/tmp/p of=/dev/vda bs=512 count=1 seek={PROGRESS_SECTOR} conv=sync \
             oflag=direct 2>/dev/null || {{ echo \"@@pvio failed progress-$i\"; exit 1; }}\n\
           S=$(dd if=/dev/vda bs=512 skip={STOP_SECTOR} count=1 iflag=direct 2>/dev/null \
             | head -c 4)\n\
           [ \"$S\" = STOP ] && break\n\
         done\n\
         kill $(jobs -p)\n\
         echo \"@@pvio iterations $i\"\n\
         if dmesg | grep -q 'I/O error'; then echo \"@@pvio failed dmesg\"; fi\n"
    )
}

/// The guest's last recorded pass, from the image file.
fn guest_progress(image: &std::path::Path) -> u64 {
    let bytes = image::read_at(image, PROGRESS_SECTOR * 512, 12).or_panic("reading the image");
    match bytes.strip_prefix(b"PVIO") {
        Some(digits) => std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
        None => 0,
    }
}

/// The guest's run: its console, or what went wrong.
type GuestOutcome = std::thread::JoinHandle<Result<pvio_tests::console::Console, String>>;

/// Waits until the guest recorded pass `target`; panics with its output if it ended first.
fn wait_progress(image: &std::path::Path, target: u64, guest: &mut Option<GuestOutcome>) {
    let deadline = std::time::Instant::now() + GUEST_DEADLINE;
    while guest_progress(image) < target {
        if guest.as_ref().is_some_and(|g| g.is_finished()) {
            let outcome = guest.take().map(|g| g.join());
            panic!(
                "the guest ended before pass {target} (at {}): {outcome:?}",
                guest_progress(image)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not reach pass {target} in time (at {})",
            guest_progress(image)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// backend-blk is killed with SIGKILL twice while a QEMU guest does verified I/O and restarted
/// on the same socket each time; QEMU reconnects, hands the inflight area back, and the guest's
/// I/O goes on without an error and verifies.
#[test]
fn qemu_guest_io_goes_on_across_backend_sigkill() {
    use pvio_tests::guest::GuestKit;
    use pvio_tests::initramfs::BLK_MODULES;
    use pvio_tests::qemu::BlkDisk;

    let mut served = Served::with_direct("blk-qemu-crash", true);
    let kit = GuestKit::new("blk-qemu-crash-guest", BLK_MODULES).or_panic("preparing the guest");
    let disk = BlkDisk {
        socket: served.socket(),
        num_queues: 1,
        reconnect: true,
    };
    let script = verified_io_loop_script();
    let mut guest: Option<GuestOutcome> = Some(std::thread::spawn(move || {
        kit.boot(&script, |g| g.disks = vec![disk])
            .map(|run| run.console)
            .map_err(|e| e.to_string())
    }));

    let image = served.image();
    let mut pass = 3;
    for crash in 0..2 {
        wait_progress(&image, pass, &mut guest);
        served.kill();
        eprintln!("crash {crash}: backend-blk killed after guest pass {pass}");
        served.start();
        pass = guest_progress(&image) + 3;
    }
    wait_progress(&image, pass, &mut guest);
    image::write_at(&image, STOP_SECTOR * 512, b"STOP").or_panic("writing STOP");
    let guest = guest.take().expect("guest running");
    let console = match guest.join().expect("guest thread") {
        Ok(console) => console,
        Err(e) => panic!("guest run failed: {e}\nback-end log:\n{}", served.log()),
    };
    assert!(
        console.markers("failed").is_empty(),
        "guest I/O failed: {:?}\nconsole:\n{}",
        console.markers("failed"),
        console.text()
    );
    let iterations: u64 = console
        .marker("iterations")
        .or_panic("guest output")
        .parse()
        .expect("a number");
    assert!(iterations >= pass, "{iterations} passes");
    let log = served.log();
    let resubmitted: Vec<String> = (0..served.starts)
        .map(|n| std::fs::read_to_string(served.dir.join(&format!("backend-{n}.log"))))
        .filter_map(Result::ok)
        .flat_map(|l| {
            l.lines()
                .filter(|line| line.contains("resubmitting"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    eprintln!("resubmissions after the crashes: {resubmitted:#?}");
    assert!(
        log.contains("inflight area handed back"),
        "QEMU did not hand the inflight area back; log:\n{log}"
    );
    served.assert_running();
}
