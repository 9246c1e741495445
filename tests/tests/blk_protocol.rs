//! backend-blk protocol tests: the real `backend-blk` daemon served over a real unix socket to
//! frontend-guest's vhost-user front-end, with every effect checked in the image file on disk.
//!
//! Contract under test (backend-blk's CLI): `backend-blk --socket PATH --image PATH
//! [--readonly] [--num-queues N] [--queue-size N] [--direct on|off] [--serial STR]`; virtio-blk
//! per virtio 1.2 §5.2; malformed descriptor chains fail only their own request (used length 0
//! or VIRTIO_BLK_S_IOERR) and the queue goes on; the daemon listens again after a front-end
//! leaves.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use frontend_guest::blk::{
    BlkStatus, DiscardSegment, RequestHeader, STATUS_SENTINEL, VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use frontend_guest::host::{
    BlkDevice, BlkOptions, BlkQueue, ChainForm, Data, Error, HostRam, Request,
    VhostUserProtocolFeatures,
};
use frontend_guest::mem::GuestRam;
use frontend_guest::virtq::{
    write_table_entry, Descriptor, RawDescriptor, RawNext, VirtqError, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use vhost::{VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo};

const IMAGE_BYTES: u64 = 8 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
const SERIAL: &str = "pvio-blk-serial";

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A per-test folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pvio-blkproto-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The initial content of sector `s`: a pattern that differs per sector.
fn sector_pattern(s: u64) -> Vec<u8> {
    (0..512u64)
        .map(|i| ((s * 7 + i * 13) % 251) as u8)
        .collect()
}

/// The initial content of `count` sectors from `first`.
fn sectors(first: u64, count: u64) -> Vec<u8> {
    (first..first + count).flat_map(sector_pattern).collect()
}

/// Test data of `len` bytes, distinct per `seed` and from the image pattern.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ 0x5a)
        .collect()
}

/// backend-blk options for one test.
#[derive(Clone, Copy)]
struct DaemonArgs {
    readonly: bool,
    num_queues: u16,
    queue_size: Option<u16>,
    direct: bool,
}

impl Default for DaemonArgs {
    fn default() -> Self {
        DaemonArgs {
            readonly: false,
            num_queues: 2,
            queue_size: None,
            direct: false,
        }
    }
}

/// A running backend-blk on a fresh image; killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    image: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    fn start(tag: &str, args: DaemonArgs) -> Self {
        let bin = pvio_tests::bins::workspace_bin("backend-blk", "backend-blk");
        let dir = TempDir::new(tag);
        let image = dir.0.join("disk.raw");
        let socket = dir.0.join("blk.sock");
        let f = File::create(&image).expect("create image");
        f.write_all_at(&sectors(0, IMAGE_BYTES / 512), 0)
            .expect("fill image");
        f.sync_all().expect("sync image");
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--image")
            .arg(&image)
            .arg("--num-queues")
            .arg(args.num_queues.to_string())
            .arg("--serial")
            .arg(SERIAL)
            .arg("--direct")
            .arg(if args.direct { "on" } else { "off" })
            .stdin(Stdio::null());
        if args.readonly {
            cmd.arg("--readonly");
        }
        if let Some(n) = args.queue_size {
            cmd.arg("--queue-size").arg(n.to_string());
        }
        let child = cmd.spawn().expect("spawn backend-blk");
        Daemon {
            child,
            socket,
            image,
            _dir: dir,
        }
    }

    fn connect_with(&mut self, opts: &BlkOptions) -> frontend_guest::host::Result<BlkDevice> {
        let res = BlkDevice::connect(&self.socket, opts);
        if res.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("backend-blk exited ({status}) instead of serving");
            }
        }
        res
    }

    fn connect(&mut self, num_queues: u16) -> BlkDevice {
        let opts = BlkOptions {
            num_queues,
            ..BlkOptions::default()
        };
        self.connect_with(&opts).expect("connect to backend-blk")
    }

    fn file_at(&self, sector: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        File::open(&self.image)
            .expect("open image")
            .read_exact_at(&mut buf, sector * 512)
            .expect("read image");
        buf
    }

    fn write_file_at(&self, sector: u64, data: &[u8]) {
        let f = OpenOptions::new()
            .write(true)
            .open(&self.image)
            .expect("open image");
        f.write_all_at(data, sector * 512).expect("write image");
        f.sync_all().expect("sync image");
    }

    fn assert_alive(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "backend-blk must survive malformed input"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bit(b: u32) -> u64 {
    1 << b
}

/// A good write then read on `q`, checked in the image: the queue still works.
fn assert_queue_works(q: &mut BlkQueue, d: &Daemon, sector: u64, seed: u8) {
    let data = pattern(1024, seed);
    assert_eq!(q.write(sector, &data).expect("good write"), BlkStatus::Ok);
    assert_eq!(
        d.file_at(sector, 1024),
        data,
        "good write reached the image"
    );
    assert_eq!(
        q.read(sector, 1024).expect("good read"),
        (BlkStatus::Ok, data)
    );
}

// ---------------------------------------------------------------------------------------------
// Negotiation

#[test]
fn features_protocol_features_and_config() {
    let mut d = Daemon::start("cfg", DaemonArgs::default());
    let dev = d.connect(2);
    let offered = dev.offered_features();
    for (name, b) in [
        ("VIRTIO_F_VERSION_1", VIRTIO_F_VERSION_1),
        ("VIRTIO_BLK_F_SEG_MAX", VIRTIO_BLK_F_SEG_MAX),
        ("VIRTIO_BLK_F_BLK_SIZE", VIRTIO_BLK_F_BLK_SIZE),
        ("VIRTIO_BLK_F_FLUSH", VIRTIO_BLK_F_FLUSH),
        ("VIRTIO_BLK_F_MQ", VIRTIO_BLK_F_MQ),
        ("VIRTIO_BLK_F_DISCARD", VIRTIO_BLK_F_DISCARD),
        ("VIRTIO_BLK_F_WRITE_ZEROES", VIRTIO_BLK_F_WRITE_ZEROES),
        ("VIRTIO_RING_F_EVENT_IDX", VIRTIO_RING_F_EVENT_IDX),
        ("VIRTIO_RING_F_INDIRECT_DESC", VIRTIO_RING_F_INDIRECT_DESC),
    ] {
        assert!(offered & bit(b) != 0, "{name} offered");
        assert!(dev.has_feature(b), "{name} negotiated");
    }
    assert_eq!(offered & bit(VIRTIO_BLK_F_RO), 0, "RO only with --readonly");
    let proto = dev.connection().protocol_features();
    for p in [
        VhostUserProtocolFeatures::MQ,
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::REPLY_ACK,
    ] {
        assert!(proto.contains(p), "{p:?} negotiated");
    }
    assert_eq!(
        dev.connection().queue_num(),
        Some(2),
        "VHOST_USER_GET_QUEUE_NUM"
    );
    let c = dev.config();
    assert_eq!(c.capacity, IMAGE_BYTES / 512, "capacity in sectors");
    assert_eq!(c.num_queues, 2);
    assert!(c.seg_max >= 1, "seg_max {}", c.seg_max);
    assert!(
        c.blk_size >= 512 && c.blk_size.is_power_of_two(),
        "blk_size {}",
        c.blk_size
    );
    assert!(c.max_discard_sectors > 0 && c.max_discard_seg > 0);
    assert!(c.max_write_zeroes_sectors > 0 && c.max_write_zeroes_seg > 0);
    assert_eq!(dev.disconnect().expect("GET_VRING_BASE"), vec![0, 0]);
}

#[test]
fn vring_base_reports_requests_consumed() {
    let mut d = Daemon::start("base", DaemonArgs::default());
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    for s in 0..5 {
        assert_eq!(q.read(s, 512).unwrap(), (BlkStatus::Ok, sector_pattern(s)));
    }
    assert_eq!(dev.disconnect().unwrap(), vec![5]);
}

#[test]
fn queue_size_above_the_maximum_is_rejected_and_the_daemon_goes_on() {
    let mut d = Daemon::start(
        "qsize",
        DaemonArgs {
            queue_size: Some(64),
            ..DaemonArgs::default()
        },
    );
    let too_big = BlkOptions {
        queue_size: 128,
        ..BlkOptions::default()
    };
    match d.connect_with(&too_big) {
        Err(Error::Vhost { request, .. }) => assert_eq!(request, "VHOST_USER_SET_VRING_NUM"),
        other => panic!("queue size 128 > --queue-size 64 must be rejected, got {other:?}"),
    }
    let fits = BlkOptions {
        queue_size: 64,
        ..BlkOptions::default()
    };
    let mut dev = d
        .connect_with(&fits)
        .expect("a fitting front-end connects next");
    assert_queue_works(dev.queue(0).unwrap(), &d, 10, 1);
}

#[test]
fn too_many_queues_are_refused_by_the_front_end() {
    let mut d = Daemon::start("mq3", DaemonArgs::default());
    let opts = BlkOptions {
        num_queues: 3,
        ..BlkOptions::default()
    };
    assert!(matches!(
        d.connect_with(&opts),
        Err(Error::TooManyQueues {
            requested: 3,
            available: 2
        })
    ));
    let mut dev = d.connect(1);
    assert_queue_works(dev.queue(0).unwrap(), &d, 12, 2);
}

// ---------------------------------------------------------------------------------------------
// Request types, data checked against the image

#[test]
fn write_through_device_reaches_the_file() {
    let mut d = Daemon::start("write", DaemonArgs::default());
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    let data = pattern(64 << 10, 7);
    assert_eq!(q.write(2048, &data).unwrap(), BlkStatus::Ok);
    assert_eq!(q.flush().unwrap(), BlkStatus::Ok);
    assert_eq!(d.file_at(2048, data.len()), data);
    assert_eq!(
        d.file_at(2047, 512),
        sector_pattern(2047),
        "sector before untouched"
    );
    assert_eq!(
        d.file_at(2048 + 128, 512),
        sector_pattern(2048 + 128),
        "sector after untouched"
    );
}

#[test]
fn file_content_reads_through_device() {
    let mut d = Daemon::start("read", DaemonArgs::default());
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    assert_eq!(q.read(0, 4096).unwrap(), (BlkStatus::Ok, sectors(0, 8)));
    let last = IMAGE_BYTES / 512 - 1;
    assert_eq!(
        q.read(last, 512).unwrap(),
        (BlkStatus::Ok, sector_pattern(last))
    );
    let fresh = pattern(8192, 99);
    d.write_file_at(3000, &fresh);
    assert_eq!(q.read(3000, 8192).unwrap(), (BlkStatus::Ok, fresh));
}

#[test]
fn direct_io_mode_reads_and_writes() {
    let mut d = Daemon::start(
        "direct",
        DaemonArgs {
            direct: true,
            ..DaemonArgs::default()
        },
    );
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    let data = pattern(16 << 10, 5);
    assert_eq!(q.write(512, &data).unwrap(), BlkStatus::Ok);
    assert_eq!(d.file_at(512, data.len()), data);
    assert_eq!(q.read(100, 4096).unwrap(), (BlkStatus::Ok, sectors(100, 8)));
}

#[test]
fn flush_and_get_id() {
    let mut d = Daemon::start("id", DaemonArgs::default());
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    assert_eq!(q.flush().unwrap(), BlkStatus::Ok);
    let c = q
        .run(&Request {
            request_type: VIRTIO_BLK_T_FLUSH,
            sector: 0,
            data: Data::None,
            form: ChainForm::Indirect,
        })
        .unwrap();
    assert_eq!(
        (c.status, c.used_len),
        (Some(BlkStatus::Ok), 1),
        "indirect flush"
    );
    let (status, id) = q.get_id().unwrap();
    assert_eq!(status, BlkStatus::Ok);
    assert_eq!(id.len(), VIRTIO_BLK_ID_BYTES as usize);
    assert_eq!(&id[..SERIAL.len()], SERIAL.as_bytes());
    assert_eq!(
        id[SERIAL.len()],
        0,
        "a shorter id is NUL-terminated: {id:?}"
    );
}

#[test]
fn discard_and_write_zeroes_zero_the_file() {
    let mut d = Daemon::start("dz", DaemonArgs::default());
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    let zeros = |n: u64| vec![0u8; (n * 512) as usize];

    let wz = DiscardSegment {
        sector: 256,
        num_sectors: 24,
        flags: 0,
    };
    assert_eq!(q.write_zeroes(&[wz]).unwrap(), BlkStatus::Ok);
    assert_eq!(d.file_at(256, 24 * 512), zeros(24));
    assert_eq!(d.file_at(255, 512), sector_pattern(255));
    assert_eq!(d.file_at(280, 512), sector_pattern(280));

    let unmap = DiscardSegment {
        sector: 1024,
        num_sectors: 64,
        flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    };
    assert_eq!(q.write_zeroes(&[unmap]).unwrap(), BlkStatus::Ok);
    assert_eq!(d.file_at(1024, 64 * 512), zeros(64));
    assert_eq!(q.read(1024, 64 * 512).unwrap(), (BlkStatus::Ok, zeros(64)));

    // Two segments in one discard, page-aligned so a punch-hole frees whole blocks.
    let segs = [
        DiscardSegment {
            sector: 4096,
            num_sectors: 16,
            flags: 0,
        },
        DiscardSegment {
            sector: 8192,
            num_sectors: 32,
            flags: 0,
        },
    ];
    let segs = if dev.config().max_discard_seg >= 2 {
        &segs[..]
    } else {
        &segs[..1]
    };
    let q = dev.queue(0).unwrap();
    assert_eq!(q.discard(segs).unwrap(), BlkStatus::Ok);
    for s in segs {
        assert_eq!(
            d.file_at(s.sector, s.num_sectors as usize * 512),
            zeros(u64::from(s.num_sectors))
        );
        assert_eq!(
            d.file_at(s.sector + u64::from(s.num_sectors), 512),
            sector_pattern(s.sector + u64::from(s.num_sectors))
        );
    }
}

#[test]
fn multi_segment_and_indirect_chains() {
    let mut d = Daemon::start("seg", DaemonArgs::default());
    let mut dev = d.connect(1);
    let seg_max = dev.config().seg_max as usize;
    let q = dev.queue(0).unwrap();
    for (form, sector) in [(ChainForm::Direct, 600), (ChainForm::Indirect, 700)] {
        let parts: Vec<Vec<u8>> = (0..seg_max.min(8))
            .map(|i| pattern(512 * (i % 3 + 1), i as u8))
            .collect();
        let segs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let all = parts.concat();
        let w = q
            .run(&Request {
                request_type: VIRTIO_BLK_T_OUT,
                sector,
                data: Data::Out(&segs),
                form,
            })
            .unwrap();
        assert_eq!(
            (w.status, w.used_len),
            (Some(BlkStatus::Ok), 1),
            "{form:?} write"
        );
        assert_eq!(
            d.file_at(sector, all.len()),
            all,
            "{form:?} write landed in order"
        );

        let lens: Vec<u32> = parts.iter().rev().map(|p| p.len() as u32).collect();
        let r = q
            .run(&Request {
                request_type: VIRTIO_BLK_T_IN,
                sector,
                data: Data::In(&lens),
                form,
            })
            .unwrap();
        assert_eq!(r.status, Some(BlkStatus::Ok), "{form:?} read");
        assert_eq!(
            r.used_len as usize,
            all.len() + 1,
            "used len = data + status"
        );
        assert_eq!(r.data, all, "{form:?} read scattered in order");
    }
}

#[test]
fn deep_queue_of_mixed_requests() {
    let mut d = Daemon::start("depth", DaemonArgs::default());
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    let mut expect = std::collections::HashMap::new();
    let (mut next, mut done) = (0u64, 0u64);
    while done < 512 {
        // Writes go indirect (1 descriptor), reads direct (3): up to 64 in flight in a
        // 128-descriptor queue, waiting whenever the descriptors run out.
        while q.in_flight() < 64 && next < 512 {
            let submitted = if next % 2 == 0 {
                let data = pattern(4096, next as u8);
                q.submit(&Request {
                    request_type: VIRTIO_BLK_T_OUT,
                    sector: 4096 + next * 8,
                    data: Data::Out(&[&data]),
                    form: ChainForm::Indirect,
                })
            } else {
                q.submit_read(next * 8, 4096)
            };
            match submitted {
                Ok(t) => {
                    expect.insert(t, next);
                    next += 1;
                }
                Err(Error::Virtq(VirtqError::QueueFull { .. })) => break,
                Err(e) => panic!("submit {next}: {e}"),
            }
        }
        let c = q.wait_completion(TIMEOUT).unwrap();
        let n = expect
            .remove(&c.token)
            .expect("completion of a request in flight");
        assert_eq!(c.status, Some(BlkStatus::Ok));
        if n % 2 == 1 {
            assert_eq!(c.data, sectors(n * 8, 8), "read {n}");
        }
        done += 1;
    }
    for n in (0..512u64).step_by(2) {
        assert_eq!(d.file_at(4096 + n * 8, 4096), pattern(4096, n as u8));
    }
}

#[test]
fn without_event_idx_and_indirect() {
    let mut d = Daemon::start("noevt", DaemonArgs::default());
    let opts = BlkOptions {
        event_idx: false,
        indirect_desc: false,
        ..BlkOptions::default()
    };
    let mut dev = d.connect_with(&opts).unwrap();
    assert!(!dev.has_feature(VIRTIO_RING_F_EVENT_IDX));
    let q = dev.queue(0).unwrap();
    let tokens: Vec<_> = (0..32)
        .map(|s| q.submit_read(s * 8, 4096).unwrap())
        .collect();
    for (s, t) in tokens.into_iter().enumerate() {
        let c = q.complete(t, TIMEOUT).unwrap();
        assert_eq!(
            (c.status, c.data),
            (Some(BlkStatus::Ok), sectors(s as u64 * 8, 8))
        );
    }
    assert_queue_works(q, &d, 20, 3);
}

// ---------------------------------------------------------------------------------------------
// Malformed requests: each is answered, and good requests on the same queue still complete.

/// Raw chain pieces in scratch guest memory.
struct Scratch<'a>(&'a HostRam);

impl Scratch<'_> {
    fn header(&self, request_type: u32, sector: u64) -> u64 {
        let gpa = self.0.alloc(16, 16).unwrap();
        let h = RequestHeader {
            request_type,
            sector,
        };
        self.0.write(gpa, &h.to_bytes()).unwrap();
        gpa
    }

    fn buf(&self, data: &[u8]) -> u64 {
        let gpa = self.0.alloc(data.len() as u64, 512).unwrap();
        self.0.write(gpa, data).unwrap();
        gpa
    }

    fn status(&self) -> u64 {
        self.buf(&[STATUS_SENTINEL])
    }

    fn byte(&self, gpa: u64) -> u8 {
        self.0.read_vec(gpa, 1).unwrap()[0]
    }
}

/// (addr, len, writable) buffers linked in order with NEXT.
fn linked(bufs: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
    bufs.iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let last = i + 1 == bufs.len();
            RawDescriptor {
                addr,
                len,
                flags: if w { VIRTQ_DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { VIRTQ_DESC_F_NEXT },
                next: RawNext::Chain(if last { 0 } else { i + 1 }),
            }
        })
        .collect()
}

/// Submits a malformed chain between two good reads on the same queue and checks: the
/// malformed one completes with used length 0 or status IOERR (`status` is the status byte's
/// address, if the chain has one), and both good reads complete correctly.
fn assert_rejected(
    dev: &mut BlkDevice,
    d: &mut Daemon,
    what: &str,
    chain: &[RawDescriptor],
    status: Option<u64>,
) {
    let ram = std::sync::Arc::clone(dev.ram());
    let q = dev.queue(0).unwrap();
    let before = q.submit_read(40, 1024).unwrap();
    let bad = q.submit_raw(chain).unwrap();
    let after = q.submit_read(44, 512).unwrap();
    let c = q
        .complete(bad, TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: the malformed chain must still be completed: {e}"));
    let status_byte = status.map(|g| Scratch(&ram).byte(g));
    assert!(
        status_byte == Some(VIRTIO_BLK_S_IOERR)
            || (c.used_len == 0 && status_byte != Some(VIRTIO_BLK_S_OK)),
        "{what}: expected used len 0 or IOERR, got used len {} and status {status_byte:?}",
        c.used_len
    );
    let b = q.complete(before, TIMEOUT).unwrap();
    assert_eq!(
        (b.status, b.data),
        (Some(BlkStatus::Ok), sectors(40, 2)),
        "{what}: good read before"
    );
    let a = q.complete(after, TIMEOUT).unwrap();
    assert_eq!(
        (a.status, a.data),
        (Some(BlkStatus::Ok), sector_pattern(44)),
        "{what}: good read after"
    );
    d.assert_alive();
    assert_queue_works(q, d, 48, what.len() as u8);
}

#[test]
fn requests_past_the_end_fail_with_ioerr() {
    let mut d = Daemon::start("eod", DaemonArgs::default());
    let mut dev = d.connect(1);
    let cap = dev.config().capacity;
    let q = dev.queue(0).unwrap();
    assert_eq!(
        q.read(cap, 512).unwrap().0,
        BlkStatus::IoErr,
        "read at capacity"
    );
    assert_eq!(
        q.read(cap - 1, 1024).unwrap().0,
        BlkStatus::IoErr,
        "read straddling the end"
    );
    assert_eq!(
        q.read(u64::MAX / 512, 512).unwrap().0,
        BlkStatus::IoErr,
        "sector overflow"
    );
    assert_eq!(
        q.write(cap - 1, &pattern(1024, 1)).unwrap(),
        BlkStatus::IoErr,
        "write straddling the end"
    );
    assert_eq!(
        d.file_at(cap - 1, 512),
        sector_pattern(cap - 1),
        "nothing written"
    );
    assert_eq!(
        fs::metadata(&d.image).unwrap().len(),
        IMAGE_BYTES,
        "image not grown"
    );
    let past = DiscardSegment {
        sector: cap - 8,
        num_sectors: 16,
        flags: 0,
    };
    assert_eq!(
        q.write_zeroes(&[past]).unwrap(),
        BlkStatus::IoErr,
        "write-zeroes past the end"
    );
    assert_eq!(d.file_at(cap - 8, 512), sector_pattern(cap - 8));
    assert_queue_works(q, &d, 30, 4);
}

#[test]
fn unknown_request_type_is_unsupported() {
    let mut d = Daemon::start("unsupp", DaemonArgs::default());
    let mut dev = d.connect(1);
    let q = dev.queue(0).unwrap();
    for t in [2u32, 3, 0x7777, u32::MAX] {
        let c = q
            .run(&Request {
                request_type: t,
                sector: 0,
                data: Data::None,
                form: ChainForm::Direct,
            })
            .unwrap();
        assert_eq!(c.status, Some(BlkStatus::Unsupp), "type {t:#x}");
        assert_eq!(c.used_len, 1);
    }
    assert_queue_works(q, &d, 31, 5);
}

#[test]
fn chain_without_a_writable_status_byte() {
    let mut d = Daemon::start("nostatus", DaemonArgs::default());
    let mut dev = d.connect(1);
    let s = Scratch(dev.ram());
    let data = pattern(512, 11);
    let (hdr, buf) = (s.header(VIRTIO_BLK_T_OUT, 50), s.buf(&data));
    let ro_status = s.status();
    let cases = [
        ("header only", linked(&[(hdr, 16, false)]), None),
        (
            "no status after data",
            linked(&[(hdr, 16, false), (buf, 512, false)]),
            None,
        ),
        (
            "status byte device-readable",
            linked(&[(hdr, 16, false), (buf, 512, false), (ro_status, 1, false)]),
            Some(ro_status),
        ),
    ];
    let wide_status = s.buf(&[STATUS_SENTINEL; 4]);
    let zero_status = s.status();
    let more = [
        (
            "zero-length status descriptor",
            linked(&[(hdr, 16, false), (buf, 512, false), (zero_status, 0, true)]),
            Some(zero_status),
        ),
        (
            "header shorter than 16 bytes",
            linked(&[(hdr, 8, false), (wide_status, 1, true)]),
            Some(wide_status),
        ),
    ];
    for (what, chain, status) in cases.into_iter().chain(more) {
        assert_rejected(&mut dev, &mut d, what, &chain, status);
        if status == Some(ro_status) {
            assert_eq!(
                Scratch(dev.ram()).byte(ro_status),
                STATUS_SENTINEL,
                "{what}: device wrote a readable byte"
            );
        }
        assert_eq!(
            d.file_at(50, 512),
            sector_pattern(50),
            "{what}: no data written"
        );
    }
}

#[test]
fn header_in_a_writable_descriptor() {
    let mut d = Daemon::start("hdrw", DaemonArgs::default());
    let mut dev = d.connect(1);
    let s = Scratch(dev.ram());
    let (hdr, buf, status) = (
        s.header(VIRTIO_BLK_T_IN, 60),
        s.buf(&[0u8; 512]),
        s.status(),
    );
    let chain = linked(&[(hdr, 16, true), (buf, 512, true), (status, 1, true)]);
    assert_rejected(&mut dev, &mut d, "writable IN header", &chain, Some(status));

    let s = Scratch(dev.ram());
    let (hdr, buf, status) = (
        s.header(VIRTIO_BLK_T_OUT, 60),
        s.buf(&pattern(512, 3)),
        s.status(),
    );
    let chain = linked(&[(hdr, 16, true), (buf, 512, true), (status, 1, true)]);
    assert_rejected(
        &mut dev,
        &mut d,
        "writable OUT header",
        &chain,
        Some(status),
    );
    assert_eq!(d.file_at(60, 512), sector_pattern(60));

    // OUT data in a device-writable descriptor (wrong direction).
    let s = Scratch(dev.ram());
    let (hdr, buf, status) = (
        s.header(VIRTIO_BLK_T_OUT, 61),
        s.buf(&pattern(512, 4)),
        s.status(),
    );
    let chain = linked(&[(hdr, 16, false), (buf, 512, true), (status, 1, true)]);
    assert_rejected(
        &mut dev,
        &mut d,
        "OUT data device-writable",
        &chain,
        Some(status),
    );
    assert_eq!(d.file_at(61, 512), sector_pattern(61));

    // IN data in a device-readable descriptor (wrong direction): nothing may be written there.
    let s = Scratch(dev.ram());
    let (hdr, buf, status) = (
        s.header(VIRTIO_BLK_T_IN, 62),
        s.buf(&[0xee; 512]),
        s.status(),
    );
    let chain = linked(&[(hdr, 16, false), (buf, 512, false), (status, 1, true)]);
    assert_rejected(
        &mut dev,
        &mut d,
        "IN data device-readable",
        &chain,
        Some(status),
    );
    assert_eq!(
        Scratch(dev.ram()).0.read_vec(buf, 512).unwrap(),
        vec![0xee; 512]
    );
}

#[test]
fn descriptors_outside_guest_memory() {
    let mut d = Daemon::start("oob", DaemonArgs::default());
    let mut dev = d.connect(1);
    let ram_end = dev.ram().size();
    let s = Scratch(dev.ram());
    let (hdr, status) = (s.header(VIRTIO_BLK_T_IN, 70), s.status());
    let cases = [
        (
            "data past the end of RAM",
            linked(&[
                (hdr, 16, false),
                (ram_end + 4096, 512, true),
                (status, 1, true),
            ]),
            Some(status),
        ),
        (
            "data straddling the end of RAM",
            linked(&[
                (hdr, 16, false),
                (ram_end - 256, 512, true),
                (status, 1, true),
            ]),
            Some(status),
        ),
        (
            "data address wraps u64",
            linked(&[
                (hdr, 16, false),
                (u64::MAX - 255, 512, true),
                (status, 1, true),
            ]),
            Some(status),
        ),
        (
            "header outside RAM",
            linked(&[(ram_end + 8192, 16, false), (status, 1, true)]),
            Some(status),
        ),
        (
            "status outside RAM",
            linked(&[(hdr, 16, false), (ram_end + 100, 1, true)]),
            None,
        ),
    ];
    for (what, chain, status) in cases {
        assert_rejected(&mut dev, &mut d, what, &chain, status);
    }
    // An OUT whose data is outside RAM must not write anything.
    let s = Scratch(dev.ram());
    let (hdr, status) = (s.header(VIRTIO_BLK_T_OUT, 71), s.status());
    let chain = linked(&[
        (hdr, 16, false),
        (ram_end + 4096, 512, false),
        (status, 1, true),
    ]);
    assert_rejected(
        &mut dev,
        &mut d,
        "OUT data outside RAM",
        &chain,
        Some(status),
    );
    assert_eq!(d.file_at(71, 512), sector_pattern(71));
}

#[test]
fn looping_and_overlong_chains() {
    let mut d = Daemon::start("loop", DaemonArgs::default());
    let mut dev = d.connect(1);
    let s = Scratch(dev.ram());
    let (hdr, buf, status) = (
        s.header(VIRTIO_BLK_T_IN, 80),
        s.buf(&[0u8; 512]),
        s.status(),
    );

    // header -> data -> data -> back to the first data descriptor, forever.
    let mut lp = linked(&[(hdr, 16, false), (buf, 512, true), (buf, 512, true)]);
    lp[2].flags |= VIRTQ_DESC_F_NEXT;
    lp[2].next = RawNext::Chain(1);
    assert_rejected(&mut dev, &mut d, "looping chain", &lp, None);

    // A chain that links to itself.
    let self_loop = [RawDescriptor {
        addr: hdr,
        len: 16,
        flags: VIRTQ_DESC_F_NEXT,
        next: RawNext::Chain(0),
    }];
    assert_rejected(&mut dev, &mut d, "self-linked descriptor", &self_loop, None);

    // next beyond the descriptor table.
    let mut off = linked(&[(hdr, 16, false), (status, 1, true)]);
    off[0].next = RawNext::Slot(0xffff);
    assert_rejected(
        &mut dev,
        &mut d,
        "next outside the table",
        &off,
        Some(status),
    );

    // A loop inside an indirect table.
    let s = Scratch(dev.ram());
    let table = s.0.alloc(16 * 3, 16).unwrap();
    let entries = [
        Descriptor {
            addr: hdr,
            len: 16,
            flags: VIRTQ_DESC_F_NEXT,
            next: 1,
        },
        Descriptor {
            addr: buf,
            len: 512,
            flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            next: 2,
        },
        Descriptor {
            addr: buf,
            len: 512,
            flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
            next: 1,
        },
    ];
    for (i, e) in entries.iter().enumerate() {
        write_table_entry(s.0, table, i, e).unwrap();
    }
    let head = |len: u32, addr: u64| {
        [RawDescriptor {
            addr,
            len,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: RawNext::Chain(0),
        }]
    };
    assert_rejected(
        &mut dev,
        &mut d,
        "loop in an indirect table",
        &head(48, table),
        None,
    );

    // Malformed indirect tables.
    let s = Scratch(dev.ram());
    let status = s.status();
    let good = s.0.alloc(16 * 2, 16).unwrap();
    write_table_entry(
        s.0,
        good,
        0,
        &Descriptor {
            addr: hdr,
            len: 16,
            flags: VIRTQ_DESC_F_NEXT,
            next: 1,
        },
    )
    .unwrap();
    write_table_entry(
        s.0,
        good,
        1,
        &Descriptor {
            addr: status,
            len: 1,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        },
    )
    .unwrap();
    assert_rejected(
        &mut dev,
        &mut d,
        "indirect table length not a multiple of 16",
        &head(20, good),
        Some(status),
    );
    assert_rejected(
        &mut dev,
        &mut d,
        "indirect table length 0",
        &head(0, good),
        Some(status),
    );
    assert_rejected(
        &mut dev,
        &mut d,
        "indirect table outside RAM",
        &head(32, u64::MAX - 15),
        Some(status),
    );

    let s = Scratch(dev.ram());
    let status = s.status();
    let nested = s.0.alloc(16, 16).unwrap();
    write_table_entry(
        s.0,
        nested,
        0,
        &Descriptor {
            addr: good,
            len: 32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        },
    )
    .unwrap();
    write_table_entry(
        s.0,
        good,
        1,
        &Descriptor {
            addr: status,
            len: 1,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        },
    )
    .unwrap();
    assert_rejected(
        &mut dev,
        &mut d,
        "indirect table inside an indirect table",
        &head(16, nested),
        Some(status),
    );

    let s = Scratch(dev.ram());
    let status = s.status();
    let next_out = s.0.alloc(32, 16).unwrap();
    write_table_entry(
        s.0,
        next_out,
        0,
        &Descriptor {
            addr: hdr,
            len: 16,
            flags: VIRTQ_DESC_F_NEXT,
            next: 7,
        },
    )
    .unwrap();
    write_table_entry(
        s.0,
        next_out,
        1,
        &Descriptor {
            addr: status,
            len: 1,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        },
    )
    .unwrap();
    assert_rejected(
        &mut dev,
        &mut d,
        "indirect next outside its table",
        &head(32, next_out),
        Some(status),
    );
}

// ---------------------------------------------------------------------------------------------
// Modes and sessions

#[test]
fn read_only_device() {
    let mut d = Daemon::start(
        "ro",
        DaemonArgs {
            readonly: true,
            ..DaemonArgs::default()
        },
    );
    let mut dev = d.connect(1);
    assert!(
        dev.has_feature(VIRTIO_BLK_F_RO),
        "VIRTIO_BLK_F_RO with --readonly"
    );
    let q = dev.queue(0).unwrap();
    assert_eq!(q.write(5, &pattern(512, 1)).unwrap(), BlkStatus::IoErr);
    let seg = DiscardSegment {
        sector: 5,
        num_sectors: 1,
        flags: 0,
    };
    assert_eq!(q.write_zeroes(&[seg]).unwrap(), BlkStatus::IoErr);
    let discard = q.discard(&[seg]).unwrap();
    assert!(
        matches!(discard, BlkStatus::IoErr | BlkStatus::Unsupp),
        "discard on RO: {discard:?}"
    );
    assert_eq!(d.file_at(5, 512), sector_pattern(5), "image untouched");
    assert_eq!(q.read(5, 512).unwrap(), (BlkStatus::Ok, sector_pattern(5)));
    assert_eq!(q.flush().unwrap(), BlkStatus::Ok);
}

#[test]
fn two_queues_in_parallel() {
    let mut d = Daemon::start("mq", DaemonArgs::default());
    let mut dev = d.connect(2);
    std::thread::scope(|scope| {
        for (i, q) in dev.queues_mut().iter_mut().enumerate() {
            scope.spawn(move || {
                let base = 8192 + i as u64 * 4096;
                let mut tokens = Vec::new();
                for n in 0..128u64 {
                    tokens.push(
                        q.submit_write(base + n * 8, &pattern(4096, (n as u8) ^ (i as u8) << 7))
                            .unwrap(),
                    );
                    if tokens.len() == 16 {
                        for t in tokens.drain(..) {
                            assert_eq!(q.complete(t, TIMEOUT).unwrap().status, Some(BlkStatus::Ok));
                        }
                    }
                }
                for n in 0..128u64 {
                    let (st, data) = q.read(base + n * 8, 4096).unwrap();
                    assert_eq!(
                        (st, data),
                        (BlkStatus::Ok, pattern(4096, (n as u8) ^ (i as u8) << 7))
                    );
                }
            });
        }
    });
    for i in 0..2u64 {
        for n in 0..128u64 {
            assert_eq!(
                d.file_at(8192 + i * 4096 + n * 8, 4096),
                pattern(4096, (n as u8) ^ (i as u8) << 7)
            );
        }
    }
}

#[test]
fn reconnect_after_clean_and_abrupt_disconnects() {
    let mut d = Daemon::start("recon", DaemonArgs::default());
    let first = pattern(4096, 21);
    {
        let mut dev = d.connect(2);
        assert_eq!(
            dev.queue(1).unwrap().write(900, &first).unwrap(),
            BlkStatus::Ok
        );
        dev.disconnect().unwrap();
    }
    let second = pattern(4096, 22);
    {
        let mut dev = d.connect(1);
        let q = dev.queue(0).unwrap();
        assert_eq!(q.read(900, 4096).unwrap(), (BlkStatus::Ok, first.clone()));
        assert_eq!(q.write(908, &second).unwrap(), BlkStatus::Ok);
        // Leave with a request in flight and no GET_VRING_BASE.
        q.submit_read(0, 4096).unwrap();
    }
    let mut dev = d.connect(2);
    let q = dev.queue(1).unwrap();
    assert_eq!(q.read(900, 4096).unwrap(), (BlkStatus::Ok, first));
    assert_eq!(q.read(908, 4096).unwrap(), (BlkStatus::Ok, second));
    d.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// Memory hot-plug (VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) and the dirty-page log
// (VHOST_USER_PROTOCOL_F_LOG_SHMFD), vhost-user.rst.

/// Guest-physical address of the region the tests add, far above the connection's RAM.
const EXTRA_GPA: u64 = 1 << 30;
/// Size of the added region.
const EXTRA_BYTES: u64 = 4 << 20;
/// Bytes per request into the added region.
const CHUNK: u32 = 64 << 10;

/// A memfd-backed region for VHOST_USER_ADD_MEM_REG at guest-physical `gpa`; the test reads
/// and writes it through its own mapping (`ram`, at offset `gpa - region.guest_phys_addr`).
struct ExtraRegion {
    ram: HostRam,
    info: VhostUserMemoryRegionInfo,
}

impl ExtraRegion {
    fn new(gpa: u64, size: u64) -> Self {
        let ram = HostRam::new(size).expect("memfd for an extra region");
        let mut info = ram.region_info().expect("region info");
        info.guest_phys_addr = gpa;
        ExtraRegion { ram, info }
    }
}

/// Submits a read (or write, with `data`) of `len` bytes at `sector` whose data buffer is at
/// guest-physical `data_gpa`; header and status byte live in the connection's RAM. Returns the
/// token and the status byte's address.
fn submit_at(
    dev: &mut BlkDevice,
    sector: u64,
    data_gpa: u64,
    len: u32,
    write: bool,
) -> (frontend_guest::host::Token, u64) {
    let ram = std::sync::Arc::clone(dev.ram());
    let s = Scratch(&ram);
    let kind = if write {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    let header = s.header(kind, sector);
    let status = s.status();
    let chain = linked(&[
        (header, 16, false),
        (data_gpa, len, !write),
        (status, 1, true),
    ]);
    let token = dev.queue(0).unwrap().submit_raw(&chain).expect("submit");
    (token, status)
}

/// Waits for `token` and returns its status byte.
fn status_of(dev: &mut BlkDevice, token: frontend_guest::host::Token, status: u64) -> u8 {
    dev.queue(0)
        .unwrap()
        .complete(token, TIMEOUT)
        .expect("the request completes");
    Scratch(dev.ram()).byte(status)
}

#[test]
fn memory_added_and_removed_with_requests_in_flight() {
    let mut d = Daemon::start("memslot", DaemonArgs::default());
    let mut dev = d.connect(1);
    assert!(dev
        .connection()
        .protocol_features()
        .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
    let slots = dev
        .connection_mut()
        .max_mem_slots()
        .expect("GET_MAX_MEM_SLOTS");
    assert!(slots >= 8, "VHOST_USER_GET_MAX_MEM_SLOTS = {slots}");

    // Requests in flight while the region is added keep working.
    let before: Vec<_> = (0..8)
        .map(|i| dev.queue(0).unwrap().submit_read(i * 128, 4096).unwrap())
        .collect();
    let extra = ExtraRegion::new(EXTRA_GPA, EXTRA_BYTES);
    dev.connection_mut()
        .add_mem_region(&extra.info)
        .expect("VHOST_USER_ADD_MEM_REG");
    for (i, t) in (0u64..).zip(before) {
        let c = dev.queue(0).unwrap().complete(t, TIMEOUT).unwrap();
        assert_eq!(
            (c.status, c.data),
            (Some(BlkStatus::Ok), sectors(i * 128, 8))
        );
    }

    // Chains whose data lies in the added region are served both ways.
    let data = pattern(CHUNK as usize, 77);
    extra.ram.write(0, &data).unwrap();
    let (t, st) = submit_at(&mut dev, 2048, EXTRA_GPA, CHUNK, true);
    assert_eq!(
        status_of(&mut dev, t, st),
        VIRTIO_BLK_S_OK,
        "write from added memory"
    );
    assert_eq!(d.file_at(2048, CHUNK as usize), data);
    let (t, st) = submit_at(&mut dev, 0, EXTRA_GPA + u64::from(CHUNK), CHUNK, false);
    assert_eq!(
        status_of(&mut dev, t, st),
        VIRTIO_BLK_S_OK,
        "read into added memory"
    );
    assert_eq!(
        extra
            .ram
            .read_vec(u64::from(CHUNK), CHUNK as usize)
            .unwrap(),
        sectors(0, u64::from(CHUNK) / 512)
    );

    // Reads into the region in flight while it is removed: each either finished before the
    // removal, with its data in place, or found its buffer gone and failed cleanly.
    // 32 chains of 3 descriptors fit the queue.
    let n = 32;
    let in_flight: Vec<_> = (0..n)
        .map(|i| {
            submit_at(
                &mut dev,
                4096 + i * 128,
                EXTRA_GPA + i * u64::from(CHUNK),
                CHUNK,
                false,
            )
        })
        .collect();
    dev.connection_mut()
        .remove_mem_region(&extra.info)
        .expect("VHOST_USER_REM_MEM_REG");
    for (i, (t, st)) in (0u64..).zip(in_flight) {
        match status_of(&mut dev, t, st) {
            VIRTIO_BLK_S_OK => assert_eq!(
                extra
                    .ram
                    .read_vec(i * u64::from(CHUNK), CHUNK as usize)
                    .unwrap(),
                sectors(4096 + i * 128, u64::from(CHUNK) / 512),
                "read {i} completed OK with other data"
            ),
            other => assert_eq!(other, VIRTIO_BLK_S_IOERR, "read {i}"),
        }
    }
    // After the removal, a chain pointing there fails alone; the queue goes on.
    let (t, st) = submit_at(&mut dev, 0, EXTRA_GPA, 512, false);
    assert_eq!(
        status_of(&mut dev, t, st),
        VIRTIO_BLK_S_IOERR,
        "removed memory"
    );
    d.assert_alive();
    assert_queue_works(dev.queue(0).unwrap(), &d, 64, 5);
}

/// Sends `what` (a request the back-end must refuse); checks the refusal reaches the front-end
/// as an error reply, the daemon lives, and a new front-end is served. vhost-user-backend 0.24
/// ends the session after any refused request.
fn assert_refused_then_served(
    d: &mut Daemon,
    what: &str,
    send: impl FnOnce(&mut BlkDevice) -> frontend_guest::host::Result<()>,
) {
    let mut dev = d.connect(1);
    let res = send(&mut dev);
    assert!(res.is_err(), "{what} must be refused");
    drop(dev);
    d.assert_alive();
    let mut dev = d.connect(1);
    assert_queue_works(dev.queue(0).unwrap(), d, 72, what.len() as u8);
}

#[test]
fn bad_memory_regions_are_refused() {
    let mut d = Daemon::start("badreg", DaemonArgs::default());
    let extra = ExtraRegion::new(EXTRA_GPA, EXTRA_BYTES);
    assert_refused_then_served(&mut d, "a region overlapping guest RAM", |dev| {
        let mut info = extra.info;
        info.guest_phys_addr = 0;
        dev.connection_mut().add_mem_region(&info)
    });
    assert_refused_then_served(&mut d, "a region past the end of its file", |dev| {
        let mut info = extra.info;
        info.memory_size = 4 * EXTRA_BYTES;
        dev.connection_mut().add_mem_region(&info)
    });
    assert_refused_then_served(&mut d, "a region whose fd cannot be mapped", |dev| {
        let (read_end, _write_end) = nix::unistd::pipe().expect("pipe");
        let mut info = extra.info;
        info.mmap_handle = std::os::fd::AsRawFd::as_raw_fd(&read_end);
        dev.connection_mut().add_mem_region(&info)
    });
    assert_refused_then_served(&mut d, "a zero-sized region", |dev| {
        let mut info = extra.info;
        info.memory_size = 0;
        dev.connection_mut().add_mem_region(&info)
    });
}

/// Size of the dirty log the tests hand over: one bit per 4 KiB page of guest memory up to
/// [`EXTRA_GPA`] + [`EXTRA_BYTES`].
const LOG_BYTES: u64 = (EXTRA_GPA + EXTRA_BYTES) / 4096 / 8;

/// Whether the log in `log` marks the 4 KiB page holding guest-physical `gpa`.
fn logged(log: &HostRam, gpa: u64) -> bool {
    let page = gpa / 4096;
    log.read_vec(page / 8, 1).unwrap()[0] & (1 << (page % 8)) != 0
}

fn log_region(log: &HostRam, size: u64) -> VhostUserDirtyLogRegion {
    VhostUserDirtyLogRegion {
        mmap_size: size,
        mmap_offset: 0,
        mmap_handle: log.region_info().unwrap().mmap_handle,
    }
}

#[test]
fn dirty_log_marks_every_page_the_device_writes() {
    let mut d = Daemon::start("dirty", DaemonArgs::default());
    let mut dev = d.connect(1);
    assert!(dev.offered_features() & (1 << 26) != 0, "VHOST_F_LOG_ALL");
    let log = HostRam::new(LOG_BYTES).unwrap();
    dev.connection_mut()
        .set_log_base(log_region(&log, LOG_BYTES))
        .expect("VHOST_USER_SET_LOG_BASE");
    let ram = std::sync::Arc::clone(dev.ram());
    // Data buffers on pages of their own, so each mark can only come from that buffer.
    let read_buf = ram.alloc(3 * 4096, 4096).unwrap();
    let write_buf = ram.alloc(4096, 4096).unwrap();
    ram.write(write_buf, &pattern(4096, 9)).unwrap();

    let (t, st) = submit_at(&mut dev, 8, read_buf, 3 * 4096, false);
    assert_eq!(status_of(&mut dev, t, st), VIRTIO_BLK_S_OK);
    for page in 0..3 {
        assert!(
            logged(&log, read_buf + page * 4096),
            "page {page} of a read's data (written by io_uring) is not logged"
        );
    }
    assert!(logged(&log, st), "the status byte's page is not logged");
    let used = dev.queue(0).unwrap().layout().used_ring;
    assert!(logged(&log, used), "the used ring's page is not logged");

    let (t, st) = submit_at(&mut dev, 80, write_buf, 4096, true);
    assert_eq!(status_of(&mut dev, t, st), VIRTIO_BLK_S_OK);
    assert!(
        !logged(&log, write_buf),
        "a write's data (only read by the device) is logged"
    );
    assert_eq!(d.file_at(80, 4096), pattern(4096, 9));
}

#[test]
fn bad_dirty_logs_are_refused() {
    let mut d = Daemon::start("badlog", DaemonArgs::default());
    let small = HostRam::new(4096).unwrap();
    assert_refused_then_served(&mut d, "a log too small for guest memory", |dev| {
        // One byte of log covers 32 KiB of guest memory: the connection's RAM is larger.
        dev.connection_mut().set_log_base(log_region(&small, 1))
    });
    assert_refused_then_served(&mut d, "a log whose fd cannot be mapped", |dev| {
        let (read_end, _write_end) = nix::unistd::pipe().expect("pipe");
        let mut region = log_region(&small, 4096);
        region.mmap_handle = std::os::fd::AsRawFd::as_raw_fd(&read_end);
        dev.connection_mut().set_log_base(region)
    });
    assert_refused_then_served(&mut d, "a log of size zero", |dev| {
        dev.connection_mut().set_log_base(log_region(&small, 0))
    });
    // A front-end grows its log before it adds memory (QEMU does): a region the log does not
    // cover could not be logged, so it is refused.
    let covers_ram = HostRam::new(LOG_BYTES).unwrap();
    let extra = ExtraRegion::new(EXTRA_GPA, EXTRA_BYTES);
    assert_refused_then_served(&mut d, "a region outside the dirty log", |dev| {
        let ram_pages = dev.ram().size() / 4096;
        dev.connection_mut()
            .set_log_base(log_region(&covers_ram, ram_pages.div_ceil(8)))
            .expect("a log covering guest RAM is taken");
        dev.connection_mut().add_mem_region(&extra.info)
    });
}

#[test]
fn reset_device_is_acknowledged_and_the_next_session_works() {
    let mut d = Daemon::start("reset", DaemonArgs::default());
    let mut dev = d.connect(1);
    assert_queue_works(dev.queue(0).unwrap(), &d, 96, 1);
    dev.connection_mut()
        .reset_device()
        .expect("VHOST_USER_RESET_DEVICE");
    drop(dev);
    d.assert_alive();
    let mut dev = d.connect(2);
    assert_queue_works(dev.queue(1).unwrap(), &d, 104, 2);
}

/// Regions that arrive after VHOST_USER_SET_LOG_BASE (ADD_MEM_REG, or a whole new
/// SET_MEM_TABLE) are logged too: vhost-user-backend 0.24 arms only the regions of the moment,
/// vhost-daemon arms the later ones.
#[test]
fn regions_added_after_the_log_are_logged() {
    let mut d = Daemon::start("dirty-add", DaemonArgs::default());
    let mut dev = d.connect(1);
    let log = HostRam::new(LOG_BYTES).unwrap();
    dev.connection_mut()
        .set_log_base(log_region(&log, LOG_BYTES))
        .expect("VHOST_USER_SET_LOG_BASE");
    let extra = ExtraRegion::new(EXTRA_GPA, EXTRA_BYTES);
    dev.connection_mut()
        .add_mem_region(&extra.info)
        .expect("VHOST_USER_ADD_MEM_REG");
    let (t, st) = submit_at(&mut dev, 16, EXTRA_GPA + 8192, 4096, false);
    assert_eq!(status_of(&mut dev, t, st), VIRTIO_BLK_S_OK);
    assert!(
        logged(&log, EXTRA_GPA + 8192),
        "a read into a region added after SET_LOG_BASE is not logged"
    );

    // The same RAM handed over again as a new table: its new regions are logged as well.
    let ram = std::sync::Arc::clone(dev.ram());
    dev.connection_mut()
        .set_mem_table(&ram)
        .expect("VHOST_USER_SET_MEM_TABLE");
    let buf = ram.alloc(4096, 4096).unwrap();
    let (t, st) = submit_at(&mut dev, 24, buf, 4096, false);
    assert_eq!(status_of(&mut dev, t, st), VIRTIO_BLK_S_OK);
    assert!(
        logged(&log, buf),
        "a read after a new SET_MEM_TABLE is not logged"
    );
}
