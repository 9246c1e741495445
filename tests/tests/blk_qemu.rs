//! Real Linux guests (the host's Debian kernel, busybox, stock virtio_blk driver) under QEMU
//! on a vhost-user-blk disk served by pvio's backend-blk (and, as a check of this harness
//! itself, by qemu-storage-daemon).
//!
//! Data is checked both ways across the boundary: the guest writes random data with O_DIRECT
//! and reads it back, and the host finds the same bytes in the image file (guest → host); the
//! host writes a known pattern into the image before boot and the guest reads it (host → guest).
//! The guest reports SHA-256 digests on its console (`@@pvio key value` lines); the host
//! compares them with digests of the image file.
//!
//! Each guest boots under TCG in about 3–7 s. A missing QEMU, kernel or busybox fails the test
//! with what to install (`scripts/install-deps.sh`).

use std::path::{Path, PathBuf};

use pvio_tests::backend::{BlkBackend, BlkBackendConfig, BlkBackendKind};
use pvio_tests::console::Console;
use pvio_tests::guest::GuestKit;
use pvio_tests::image::{self, MIB};
use pvio_tests::initramfs::BLK_MODULES;
use pvio_tests::qemu::{BlkDisk, Guest};
use pvio_tests::OrPanic;

/// Size of the test disk image.
const IMAGE_SIZE: u64 = 64 * MIB;
/// Where the host writes its pattern before boot (MiB offset) and how much (MiB).
const HOST_FILL: Region = Region {
    tag: "host",
    offset_mib: 40,
    len_mib: 1,
};

/// A stretch of the disk the guest writes or reads, in whole MiB.
#[derive(Clone, Copy)]
struct Region {
    tag: &'static str,
    offset_mib: u64,
    len_mib: u64,
}

impl Region {
    /// Guest shell: fill /tmp/p-<tag> with random data and print its digest as `written-<tag>`.
    fn prepare(self) -> String {
        let Region { tag, len_mib, .. } = self;
        format!(
            "dd if=/dev/urandom of=/tmp/p-{tag} bs=1M count={len_mib}\n\
             W=$(sha256sum < /tmp/p-{tag} | cut -d' ' -f1)\n\
             echo \"@@pvio written-{tag} $W\"\n"
        )
    }

    /// Guest command: write /tmp/p-<tag> to the region with O_DIRECT and flush.
    fn write(self, pin: Pin) -> String {
        let Region {
            tag, offset_mib, ..
        } = self;
        format!(
            "{pin}dd if=/tmp/p-{tag} of=/dev/vda bs=64k seek={} oflag=direct conv=fsync",
            offset_mib * 16
        )
    }

    /// Guest command: read the region with O_DIRECT into /tmp/r-<tag>.
    fn read(self, pin: Pin) -> String {
        let Region {
            tag,
            offset_mib,
            len_mib,
        } = self;
        format!(
            "{pin}dd if=/dev/vda of=/tmp/r-{tag} bs=64k skip={} count={} iflag=direct",
            offset_mib * 16,
            len_mib * 16
        )
    }

    /// Guest shell: print the digest of /tmp/r-<tag> as `read-<tag>`.
    fn report_read(self) -> String {
        let tag = self.tag;
        format!("R=$(sha256sum < /tmp/r-{tag} | cut -d' ' -f1)\necho \"@@pvio read-{tag} $R\"\n")
    }

    /// Guest shell: prepare, write, read back, report.
    fn round_trip(self) -> String {
        format!(
            "{}{}\n{}\n{}",
            self.prepare(),
            self.write(Pin::Any),
            self.read(Pin::Any),
            self.report_read()
        )
    }

    /// The digest of this region of the host's image file.
    fn image_sha(self, image: &Path) -> String {
        let len = usize::try_from(self.len_mib * MIB).expect("test regions are small");
        let bytes = image::read_at(image, self.offset_mib * MIB, len).or_panic("reading the image");
        image::sha256_hex(&bytes).or_panic("hashing the image region")
    }

    /// Checks guest → host: what the guest wrote, it read back, and the image file holds.
    fn check_written(self, console: &Console, image: &Path) {
        let tag = self.tag;
        let written = console
            .marker(&format!("written-{tag}"))
            .or_panic("guest output");
        let read = console
            .marker(&format!("read-{tag}"))
            .or_panic("guest output");
        assert_eq!(written.len(), 64, "a SHA-256 digest: {written:?}");
        assert_eq!(
            read, written,
            "region {tag}: the guest read back other data than it wrote"
        );
        assert_eq!(
            self.image_sha(image),
            written,
            "region {tag}: the image file does not hold what the guest wrote"
        );
    }
}

/// Which vCPU a guest command runs on.
#[derive(Clone, Copy)]
enum Pin {
    Any,
    Cpu(u32),
}

impl std::fmt::Display for Pin {
    /// Prints the busybox `taskset` prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pin::Any => Ok(()),
            Pin::Cpu(cpu) => write!(f, "taskset {:x} ", 1u32 << cpu),
        }
    }
}

/// Guest shell: runs commands `a` and `b` at the same time and fails if either fails.
fn in_parallel(a: &str, b: &str) -> String {
    format!("{a} &\nA=$!\n{b} &\nB=$!\nwait $A\nwait $B\n")
}

/// A test's disk: a sparse image with the host's pattern at [`HOST_FILL`], served by a back-end.
struct ServedDisk {
    kit: GuestKit,
    image: PathBuf,
    socket: PathBuf,
    backend: BlkBackend,
    host_fill_sha: String,
    num_queues: u16,
}

impl ServedDisk {
    fn new(
        label: &str,
        kind: &BlkBackendKind,
        configure: impl FnOnce(&mut BlkBackendConfig),
    ) -> Self {
        let kit = GuestKit::new(label, BLK_MODULES).or_panic("preparing the guest");
        let image = kit.dir().join("disk.raw");
        let socket = kit.dir().join("blk.sock");
        image::create_sparse(&image, IMAGE_SIZE).or_panic("creating the image");
        let fill = image::pattern(
            0x5eed,
            usize::try_from(HOST_FILL.len_mib * MIB).expect("small"),
        );
        image::write_at(&image, HOST_FILL.offset_mib * MIB, &fill)
            .or_panic("pre-filling the image");
        let host_fill_sha = image::sha256_hex(&fill).or_panic("hashing the pattern");
        let mut config = BlkBackendConfig::new(&image, &socket, 1);
        configure(&mut config);
        let backend = BlkBackend::start(kind, &config, &kit.dir().join("backend.log"))
            .or_panic("starting the back-end");
        Self {
            kit,
            image,
            socket,
            backend,
            host_fill_sha,
            num_queues: config.num_queues,
        }
    }

    /// Boots a guest with `vcpus` vCPUs on this disk running `script`; returns its console.
    fn boot(&self, vcpus: u32, script: &str) -> Console {
        let disk = BlkDisk {
            socket: self.socket.clone(),
            num_queues: self.num_queues,
            reconnect: false,
        };
        let configure = |guest: &mut Guest| {
            guest.vcpus = vcpus;
            guest.disks = vec![disk];
        };
        match self.kit.boot(script, configure) {
            Ok(run) => {
                eprintln!("guest run took {:.1} s (wall)", run.wall.as_secs_f64());
                run.console
            }
            Err(e) => panic!(
                "guest run failed: {e}\n{} log:\n{}",
                "back-end",
                self.backend.log()
            ),
        }
    }
}

/// Guest shell: report the disk's size (512-byte sectors) and its number of blk-mq hardware
/// queues, and read the host's pattern.
fn describe_disk_script() -> String {
    format!(
        "S=$(cat /sys/block/vda/size)\necho \"@@pvio sectors $S\"\n\
         Q=$(ls /sys/block/vda/mq | wc -l)\necho \"@@pvio queues $Q\"\n{}\n{}",
        HOST_FILL.read(Pin::Any),
        HOST_FILL.report_read()
    )
}

/// Checks what [`describe_disk_script`] reported: size, queue count, host → guest data.
fn check_disk_description(console: &Console, disk: &ServedDisk) {
    assert_eq!(
        console.marker("sectors").or_panic("guest output"),
        (IMAGE_SIZE / 512).to_string()
    );
    assert_eq!(
        console.marker("queues").or_panic("guest output"),
        disk.num_queues.to_string()
    );
    let read = console.marker("read-host").or_panic("guest output");
    assert_eq!(
        read, disk.host_fill_sha,
        "the guest read other data than the host wrote into the image"
    );
}

/// One vCPU, one queue: describe the disk, write 8 MiB and read it back.
fn one_queue_round_trip(label: &str, kind: &BlkBackendKind) {
    let disk = ServedDisk::new(label, kind, |c| c.direct = Some(true));
    let region = Region {
        tag: "a",
        offset_mib: 4,
        len_mib: 8,
    };
    let script = format!("{}{}", describe_disk_script(), region.round_trip());
    let console = disk.boot(1, &script);
    check_disk_description(&console, &disk);
    region.check_written(&console, &disk.image);
}

#[test]
fn guest_one_queue_round_trip_backend_blk() {
    one_queue_round_trip("blk-qemu-1q", &BlkBackendKind::pvio());
}

/// The same guest against qemu-storage-daemon: shows the harness and the checks hold with the
/// reference back-end, so a failure of the backend-blk run points at backend-blk.
#[test]
fn guest_one_queue_round_trip_qemu_storage_daemon() {
    one_queue_round_trip("blk-qemu-1q-qsd", &BlkBackendKind::QemuStorageDaemon);
}

/// Two vCPUs, two queues: each vCPU writes and reads its own region at the same time, and the
/// per-virtqueue interrupt counts show that both virtqueues carried requests.
#[test]
fn guest_two_queues_parallel_io_backend_blk() {
    let disk = ServedDisk::new("blk-qemu-2q", &BlkBackendKind::pvio(), |c| c.num_queues = 2);
    let regions = [
        Region {
            tag: "cpu0",
            offset_mib: 8,
            len_mib: 4,
        },
        Region {
            tag: "cpu1",
            offset_mib: 16,
            len_mib: 4,
        },
    ];
    let [r0, r1] = regions;
    let (cpu0, cpu1) = (Pin::Cpu(0), Pin::Cpu(1));
    let script = format!(
        "{}{}{}{}{}{}{}\
         grep virtio0-req /proc/interrupts | while read -r L; do echo \"@@pvio irq $L\"; done\n",
        describe_disk_script(),
        r0.prepare(),
        r1.prepare(),
        in_parallel(&r0.write(cpu0), &r1.write(cpu1)),
        in_parallel(&r0.read(cpu0), &r1.read(cpu1)),
        r0.report_read(),
        r1.report_read(),
    );
    let console = disk.boot(2, &script);
    check_disk_description(&console, &disk);
    for region in regions {
        region.check_written(&console, &disk.image);
    }
    // Each virtqueue has its own MSI-X vector, "virtio0-req.<n>" in /proc/interrupts: the
    // device notified the driver of used buffers on both queues.
    let irqs = console.markers("irq");
    for queue in ["virtio0-req.0", "virtio0-req.1"] {
        let line = irqs.iter().find(|l| l.ends_with(queue));
        let line = line.unwrap_or_else(|| {
            panic!(
                "no interrupt line for {queue}; console:\n{}",
                console.text()
            )
        });
        let count: u64 = line
            .split_whitespace()
            .skip(1)
            .map_while(|n| n.parse::<u64>().ok())
            .sum();
        assert!(count > 0, "no used-buffer notification on {queue}: {line}");
    }
}

/// Reconnect: a second guest boots against the same running back-end after the first powered
/// off and reads what the first wrote; then SIGTERM ends the back-end with status 0 and its
/// socket removed (backend-blk's CLI contract).
#[test]
fn second_guest_reads_first_guests_data_backend_blk() {
    let disk = ServedDisk::new("blk-qemu-reconnect", &BlkBackendKind::pvio(), |_| {});
    let region = Region {
        tag: "first",
        offset_mib: 20,
        len_mib: 4,
    };
    let first = disk.boot(
        1,
        &format!("{}{}\n", region.prepare(), region.write(Pin::Any)),
    );
    let second = disk.boot(
        1,
        &format!("{}\n{}", region.read(Pin::Any), region.report_read()),
    );

    let written = first
        .marker("written-first")
        .or_panic("first guest's output");
    let read = second
        .marker("read-first")
        .or_panic("second guest's output");
    assert_eq!(
        read, written,
        "the second guest read other data than the first wrote"
    );
    assert_eq!(
        region.image_sha(&disk.image),
        written,
        "the image does not hold what the first guest wrote"
    );

    let ServedDisk {
        backend, socket, ..
    } = disk;
    let log = backend.log();
    let status = backend.stop().or_panic("stopping backend-blk");
    assert!(
        status.success(),
        "backend-blk exited with {status} after SIGTERM; log:\n{log}"
    );
    assert!(
        !socket.exists(),
        "backend-blk left its socket {} behind",
        socket.display()
    );
}

/// `--readonly`: the guest sees a read-only disk (VIRTIO_BLK_F_RO), can read the host's data,
/// cannot write, and the image is unchanged.
#[test]
fn read_only_disk_refuses_guest_writes_backend_blk() {
    let disk = ServedDisk::new("blk-qemu-ro", &BlkBackendKind::pvio(), |c| {
        c.readonly = true
    });
    let script = format!(
        "{}RO=$(cat /sys/block/vda/ro)\necho \"@@pvio ro $RO\"\n\
         if dd if=/dev/urandom of=/dev/vda bs=4k seek={} count=1 oflag=direct; then\n\
             echo \"@@pvio write accepted\"\n\
         else\n\
             echo \"@@pvio write refused\"\n\
         fi\n",
        describe_disk_script(),
        HOST_FILL.offset_mib * 256,
    );
    let console = disk.boot(1, &script);
    check_disk_description(&console, &disk);
    assert_eq!(
        console.marker("ro").or_panic("guest output"),
        "1",
        "the guest does not see a read-only disk"
    );
    assert_eq!(console.marker("write").or_panic("guest output"), "refused");
    assert_eq!(
        HOST_FILL.image_sha(&disk.image),
        disk.host_fill_sha,
        "a read-only image changed"
    );
}

/// The README's main job (`scripts/demo.sh` runs `pvio-demo`), on a small disk and workload:
/// it boots, runs its workload, checks the data on both sides and reports figures.
#[test]
fn demo_runs_its_workload_backend_blk() {
    use clap::Parser;
    use pvio_tests::demo::{self, Options};
    let options = Options::parse_from([
        "pvio-demo",
        "--image-mib",
        "64",
        "--workload-mib",
        "16",
        "--vcpus",
        "1",
        "--num-queues",
        "1",
    ]);
    let report = demo::run(&options).or_panic("the demo");
    eprintln!("{report}");
    assert_eq!(report.workload_mib, 16);
    for seconds in [
        report.write_seconds,
        report.read_seconds,
        report.small_read_seconds,
    ] {
        assert!(
            (0.0..120.0).contains(&seconds),
            "implausible guest timing: {report}"
        );
    }
    assert!(report.boot_seconds > 0.0, "{report}");
}
