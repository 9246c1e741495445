//! The vhost-user-blk front-end against an independent real back-end: qemu-storage-daemon.
//! Every request's effect is checked in the image file on disk.

mod common;

use std::time::Duration;

use common::{make_image, pattern, read_file_at, sector_pattern, write_file_at, Qsd, TempDir};
use frontend_guest::blk::{
    BlkStatus, DiscardSegment, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use frontend_guest::host::{BlkDevice, BlkOptions, ChainForm, Data, Request};
use frontend_guest::virtq::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC};

const IMAGE_BYTES: u64 = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

struct Setup {
    _dir: TempDir,
    image: std::path::PathBuf,
    qsd: Qsd,
}

fn setup(tag: &str, writable: bool, num_queues: u16) -> Setup {
    let dir = TempDir::new(tag);
    let image = dir.path().join("disk.raw");
    make_image(&image, IMAGE_BYTES);
    let qsd = Qsd::start(dir.path(), &image, writable, num_queues);
    Setup {
        _dir: dir,
        image,
        qsd,
    }
}

fn connect(s: &Setup, num_queues: u16) -> BlkDevice {
    let opts = BlkOptions {
        num_queues,
        ..BlkOptions::default()
    };
    BlkDevice::connect(&s.qsd.socket, &opts).expect("connect to qemu-storage-daemon")
}

#[test]
fn negotiates_features_and_reads_config() {
    let s = setup("cfg", true, 2);
    let dev = connect(&s, 2);
    assert_eq!(dev.config().capacity, IMAGE_BYTES / 512);
    assert_eq!(dev.config().num_queues, 2);
    assert!(dev.has_feature(VIRTIO_F_VERSION_1));
    assert!(dev.has_feature(VIRTIO_BLK_F_FLUSH));
    assert_eq!(
        dev.features() & !dev.offered_features(),
        0,
        "acked only offered bits"
    );
    assert_eq!(dev.disconnect().expect("disconnect"), vec![0, 0]);
}

#[test]
fn write_lands_in_file_and_file_reads_through_device() {
    let s = setup("rw", true, 1);
    let mut dev = connect(&s, 1);
    let q = dev.queue(0).unwrap();

    let data = pattern(8192, 3);
    assert_eq!(q.write(16, &data).unwrap(), BlkStatus::Ok);
    assert_eq!(q.flush().unwrap(), BlkStatus::Ok);
    assert_eq!(read_file_at(&s.image, 16 * 512, data.len()), data);

    let (status, got) = q.read(100, 1024).unwrap();
    assert_eq!(status, BlkStatus::Ok);
    assert_eq!(got, [sector_pattern(100), sector_pattern(101)].concat());

    let fresh = pattern(512, 77);
    write_file_at(&s.image, 200 * 512, &fresh);
    assert_eq!(q.read(200, 512).unwrap(), (BlkStatus::Ok, fresh));
}

#[test]
fn multi_segment_and_indirect_chains() {
    let s = setup("seg", true, 1);
    let mut dev = connect(&s, 1);
    assert!(dev.has_feature(VIRTIO_RING_F_INDIRECT_DESC));
    let q = dev.queue(0).unwrap();
    for (form, sector) in [(ChainForm::Direct, 300), (ChainForm::Indirect, 400)] {
        let (a, b, c) = (pattern(512, 1), pattern(1536, 2), pattern(4096, 3));
        let segs: [&[u8]; 3] = [&a, &b, &c];
        let w = q
            .run(&Request {
                request_type: VIRTIO_BLK_T_OUT,
                sector,
                data: Data::Out(&segs),
                form,
            })
            .unwrap();
        assert_eq!(w.status, Some(BlkStatus::Ok), "{form:?} write");
        assert_eq!(
            w.used_len, 1,
            "a write's device-writable part is the status byte"
        );
        let all = [a, b, c].concat();
        assert_eq!(read_file_at(&s.image, sector * 512, all.len()), all);

        let r = q
            .run(&Request {
                request_type: VIRTIO_BLK_T_IN,
                sector,
                data: Data::In(&[1024, 512, 4608]),
                form,
            })
            .unwrap();
        assert_eq!(r.status, Some(BlkStatus::Ok), "{form:?} read");
        assert_eq!(r.used_len as usize, all.len() + 1);
        assert_eq!(r.data, all);
    }
}

#[test]
fn discard_and_write_zeroes_zero_the_file() {
    let s = setup("dz", true, 1);
    let mut dev = connect(&s, 1);
    let q = dev.queue(0).unwrap();
    let wz = DiscardSegment {
        sector: 64,
        num_sectors: 16,
        flags: 0,
    };
    assert_eq!(q.write_zeroes(&[wz]).unwrap(), BlkStatus::Ok);
    assert_eq!(
        read_file_at(&s.image, 64 * 512, 16 * 512),
        vec![0u8; 16 * 512]
    );
    assert_eq!(read_file_at(&s.image, 80 * 512, 512), sector_pattern(80));

    // qemu discards only whole clusters it can unmap; check the status, the content is advisory.
    let d = DiscardSegment {
        sector: 1024,
        num_sectors: 2048,
        flags: 0,
    };
    assert_eq!(q.discard(&[d]).unwrap(), BlkStatus::Ok);
}

#[test]
fn bad_requests_fail_and_the_queue_goes_on() {
    let s = setup("bad", true, 1);
    let mut dev = connect(&s, 1);
    let capacity = dev.config().capacity;
    let q = dev.queue(0).unwrap();
    let (status, _) = q.read(capacity, 512).unwrap();
    assert_eq!(status, BlkStatus::IoErr, "read past the end");
    let unknown = q
        .run(&Request {
            request_type: 0x7777,
            sector: 0,
            data: Data::None,
            form: ChainForm::Direct,
        })
        .unwrap();
    assert_eq!(unknown.status, Some(BlkStatus::Unsupp));
    assert_eq!(q.read(1, 512).unwrap(), (BlkStatus::Ok, sector_pattern(1)));
}

#[test]
fn read_only_export_rejects_writes() {
    let s = setup("ro", false, 1);
    let mut dev = connect(&s, 1);
    assert!(dev.has_feature(frontend_guest::blk::VIRTIO_BLK_F_RO));
    let q = dev.queue(0).unwrap();
    assert_eq!(q.write(0, &pattern(512, 9)).unwrap(), BlkStatus::IoErr);
    assert_eq!(read_file_at(&s.image, 0, 512), sector_pattern(0));
    assert_eq!(q.read(0, 512).unwrap(), (BlkStatus::Ok, sector_pattern(0)));
}

#[test]
fn keeps_a_queue_full_at_depth() {
    let s = setup("depth", true, 1);
    let mut dev = connect(&s, 1);
    let q = dev.queue(0).unwrap();
    let depth = 32;
    let mut sector_of = std::collections::HashMap::new();
    let mut done = 0u64;
    let mut next = 0u64;
    while done < 256 {
        while q.in_flight() < depth && next < 256 {
            let t = q.submit_read(next * 8, 4096).unwrap();
            sector_of.insert(t, next * 8);
            next += 1;
        }
        let c = q.wait_completion(TIMEOUT).unwrap();
        let sector = sector_of
            .remove(&c.token)
            .expect("completion for a request in flight");
        assert_eq!(c.status, Some(BlkStatus::Ok));
        assert_eq!(c.data[..512], sector_pattern(sector)[..]);
        done += 1;
    }
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn two_queues_in_parallel() {
    let s = setup("mq", true, 2);
    let mut dev = connect(&s, 2);
    std::thread::scope(|scope| {
        for (i, q) in dev.queues_mut().iter_mut().enumerate() {
            scope.spawn(move || {
                for n in 0..64u64 {
                    let sector = 2048 + (i as u64) * 1024 + n * 8;
                    let data = pattern(4096, (n as u8) ^ (i as u8 * 100));
                    assert_eq!(q.write(sector, &data).unwrap(), BlkStatus::Ok);
                    assert_eq!(q.read(sector, 4096).unwrap(), (BlkStatus::Ok, data));
                }
            });
        }
    });
}

#[test]
fn second_front_end_sees_what_the_first_wrote() {
    let s = setup("recon", true, 1);
    let data = pattern(4096, 42);
    {
        let mut dev = connect(&s, 1);
        assert_eq!(
            dev.queue(0).unwrap().write(8, &data).unwrap(),
            BlkStatus::Ok
        );
        dev.disconnect().unwrap();
    }
    let mut dev = connect(&s, 1);
    assert_eq!(
        dev.queue(0).unwrap().read(8, 4096).unwrap(),
        (BlkStatus::Ok, data)
    );
}
