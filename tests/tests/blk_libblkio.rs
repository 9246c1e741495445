//! libblkio as an independent vhost-user-blk client of backend-blk.
//!
//! libblkio (the `blkio` crate, the library behind QEMU's `blkio` block driver and fio's
//! libblkio engine) has its own vhost-user front-end (virtio-driver). Its
//! `virtio-blk-vhost-user` driver requires VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS,
//! REPLY_ACK and CONFIG (it adds its buffers with VHOST_USER_ADD_MEM_REG), so attaching at all
//! checks the memory-slot support. Each queue writes its own stretch of the disk with several
//! requests in flight, reads it back into other buffers, and the host finds the same bytes in
//! the image file; the client also reads a pattern the host wrote before it connected.
//!
//! The same checks against qemu-storage-daemon show that the harness holds with the reference
//! back-end.

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use pvio_tests::backend::{BlkBackend, BlkBackendConfig, BlkBackendKind};
use pvio_tests::image::{self, MIB};
use pvio_tests::tmp::TempDir;
use pvio_tests::OrPanic;

/// libblkio's driver for a vhost-user-blk back-end.
const DRIVER: &str = "virtio-blk-vhost-user";
/// Size of the image.
const IMAGE_SIZE: u64 = 16 * MIB;
/// Bytes of one request.
const REQUEST_BYTES: usize = 64 << 10;
/// Requests each queue keeps in flight at once.
const DEPTH: usize = 8;
/// Where the host's pattern sits in the image (bytes), and how long it is.
const HOST_FILL_OFFSET: u64 = 12 * MIB;
/// How long one batch of requests may take (generous: a loaded 2-core CI machine).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A served image and a libblkio instance attached to it.
struct Attached {
    dir: TempDir,
    image: PathBuf,
    backend: BlkBackend,
    blkio: Blkio,
    queues: Vec<Blkioq>,
    mem: MemoryRegion,
}

impl Attached {
    /// Serves a fresh image (host pattern at [`HOST_FILL_OFFSET`]) with `kind` and attaches
    /// libblkio with `num_queues` queues.
    fn new(label: &str, kind: &BlkBackendKind, num_queues: u16) -> Self {
        let dir = TempDir::new(label).or_panic("scratch folder");
        let image = dir.join("disk.raw");
        image::create_sparse(&image, IMAGE_SIZE).or_panic("creating the image");
        image::write_at(&image, HOST_FILL_OFFSET, &host_fill()).or_panic("pre-filling");
        let socket = dir.join("blk.sock");
        let mut config = BlkBackendConfig::new(&image, &socket, num_queues);
        config.direct = Some(false);
        let backend = BlkBackend::start(kind, &config, &dir.join("backend.log"))
            .or_panic("starting the back-end");
        let attach = || -> blkio::Result<(Blkio, Vec<Blkioq>, MemoryRegion)> {
            let mut blkio = Blkio::new(DRIVER)?;
            blkio.set_str("path", socket.to_str().expect("utf-8 path"))?;
            blkio.connect()?;
            blkio.set_i32("num-queues", i32::from(num_queues))?;
            let started = blkio.start()?;
            let align = usize::try_from(blkio.get_u64("mem-region-alignment")?).unwrap_or(4096);
            let len = (2 * DEPTH * REQUEST_BYTES * usize::from(num_queues)).next_multiple_of(align);
            let mem = blkio.alloc_mem_region(len)?;
            blkio.map_mem_region(&mem)?;
            Ok((blkio, started.queues, mem))
        };
        let (blkio, queues, mem) = match attach() {
            Ok(parts) => parts,
            Err(e) => panic!(
                "libblkio could not attach to {}: {} (errno {:?}); back-end log:\n{}",
                kind.name(),
                e.message(),
                e.errno(),
                backend.log()
            ),
        };
        assert_eq!(queues.len(), usize::from(num_queues), "libblkio queues");
        Self {
            dir,
            image,
            backend,
            blkio,
            queues,
            mem,
        }
    }

    /// The mapped buffer memory.
    fn buffers(&mut self) -> &mut [u8] {
        // SAFETY: libblkio allocated and mapped `mem` (addr, len) read-write; it stays mapped
        // until `self.blkio` is dropped, and `&mut self` makes this the only slice over it.
        unsafe { std::slice::from_raw_parts_mut(self.mem.addr as *mut u8, self.mem.len) }
    }

    /// The buffer of request `slot` (of `2 * DEPTH` per queue) on queue `queue`: its offset in
    /// the mapped memory.
    fn slot(queue: usize, slot: usize) -> usize {
        (queue * 2 * DEPTH + slot) * REQUEST_BYTES
    }

    /// Submits `DEPTH` requests on `queue` (writes from slots `0..DEPTH` or reads into slots
    /// `DEPTH..2*DEPTH`) for the disk bytes at `offset..`, and waits for all of them.
    fn run_batch(&mut self, queue: usize, offset: u64, write: bool) {
        let base = self.mem.addr;
        let q = &mut self.queues[queue];
        for i in 0..DEPTH {
            let start = offset + (i * REQUEST_BYTES) as u64;
            let slot = if write { i } else { DEPTH + i };
            let buf = base + Self::slot(queue, slot);
            if write {
                q.write(start, buf as *const u8, REQUEST_BYTES, i, ReqFlags::empty());
            } else {
                q.read(start, buf as *mut u8, REQUEST_BYTES, i, ReqFlags::empty());
            }
        }
        let mut completions = [const { MaybeUninit::<Completion>::uninit() }; DEPTH];
        let mut done = 0;
        let mut timeout = IO_TIMEOUT;
        while done < DEPTH {
            let n = q
                .do_io(
                    &mut completions[done..],
                    DEPTH - done,
                    Some(&mut timeout),
                    None,
                )
                .unwrap_or_else(|e| panic!("libblkio do_io: {}", e.message()));
            assert!(n > 0, "no completion within {IO_TIMEOUT:?}");
            for c in &completions[done..done + n] {
                // SAFETY: do_io initialized the first `n` entries it was given.
                let c = unsafe { c.assume_init_ref() };
                assert_eq!(c.ret, 0, "request {} on queue {queue} failed", c.user_data);
            }
            done += n;
        }
    }

    /// Queue `queue` writes its own pattern at `offset`, reads it back, and both the read and
    /// the image file hold it.
    fn round_trip(&mut self, queue: usize, offset: u64) {
        let len = DEPTH * REQUEST_BYTES;
        let data = image::pattern(0x1000 + queue as u64, len);
        let w = Self::slot(queue, 0);
        self.buffers()[w..w + len].copy_from_slice(&data);
        self.run_batch(queue, offset, true);
        self.run_batch(queue, offset, false);
        let r = Self::slot(queue, DEPTH);
        assert!(
            self.buffers()[r..r + len] == data[..],
            "queue {queue}: read back other data than written"
        );
        let on_disk = image::read_at(&self.image, offset, len).or_panic("reading the image");
        assert!(
            on_disk == data,
            "queue {queue}: the image does not hold what libblkio wrote"
        );
    }

    /// Queue 0 reads the host's pattern.
    fn read_host_fill(&mut self) {
        self.run_batch(0, HOST_FILL_OFFSET, false);
        let r = Self::slot(0, DEPTH);
        let fill = host_fill();
        assert!(
            self.buffers()[r..r + fill.len()] == fill[..],
            "libblkio read other data than the host wrote"
        );
    }
}

/// The host's pattern: what one read batch covers.
fn host_fill() -> Vec<u8> {
    image::pattern(0x5eed, DEPTH * REQUEST_BYTES)
}

/// Attaches with `num_queues` queues, checks the capacity, reads the host's data and has every
/// queue write and read back its own stretch.
fn verified_io(label: &str, kind: &BlkBackendKind, num_queues: u16) {
    let mut a = Attached::new(label, kind, num_queues);
    let capacity = a.blkio.get_u64("capacity").or_panic("capacity");
    assert_eq!(capacity, IMAGE_SIZE, "capacity in bytes");
    a.read_host_fill();
    for queue in 0..usize::from(num_queues) {
        a.round_trip(queue, (queue as u64 + 1) * 2 * MIB);
    }
    let Attached {
        dir,
        backend,
        blkio,
        queues,
        ..
    } = a;
    drop(queues);
    drop(blkio);
    let log = backend.log();
    let status = backend.stop().or_panic("stopping the back-end");
    assert!(status.success(), "back-end exit {status}; log:\n{log}");
    drop(dir);
}

#[test]
fn libblkio_one_queue_backend_blk() {
    verified_io("libblkio-1q", &BlkBackendKind::pvio(), 1);
}

#[test]
fn libblkio_two_queues_backend_blk() {
    verified_io("libblkio-2q", &BlkBackendKind::pvio(), 2);
}

/// The reference back-end: shows the client and checks are right.
#[test]
fn libblkio_one_queue_qemu_storage_daemon() {
    verified_io("libblkio-1q-qsd", &BlkBackendKind::QemuStorageDaemon, 1);
}
