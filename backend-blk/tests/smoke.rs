//! A minimal end-to-end check of the data path: vhost's `Frontend` sets up memfd guest memory
//! and one queue over the real socket, the driver side of the split virtqueue is laid out by
//! hand below (virtio-queue's `MockSplitQueue` overlaps its used ring with the available
//! ring's tail, which breaks VIRTIO_RING_F_EVENT_IDX), and a write and a read are checked
//! against the image file. (The comprehensive protocol
//! tests live in the workspace's `tests` package.)

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::{make_image, sector_pattern, wait_until, wait_until_or, Daemon, TempDir};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::Signal;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: usize = 1 << 20;
const QUEUE: u16 = 16;
const SECTORS: u64 = 256;
/// Split virtqueue layout in guest memory (virtio 1.2 §2.7): descriptor table, available ring
/// (with used_event), used ring (with avail_event).
const DESC_TABLE: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

type Ram = GuestMemoryMmap<()>;

/// Writes a chain linked in order from table slot `first` and publishes it in the available
/// ring: (guest address, length, device-writable) per buffer.
fn add_chain(ram: &Ram, first: u16, bufs: &[(u64, u32, bool)]) {
    for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
        let last = i + 1 == bufs.len();
        let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
        if !last {
            flags |= VRING_DESC_F_NEXT;
        }
        let slot = first + i as u16;
        let next = if last { 0 } else { slot + 1 };
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        ram.write_slice(&d, GuestAddress(DESC_TABLE + 16 * u64::from(slot)))
            .unwrap();
    }
    let idx: u16 = ram.read_obj(GuestAddress(AVAIL + 2)).unwrap();
    let entry = AVAIL + 4 + 2 * u64::from(idx % QUEUE);
    ram.write_obj(first, GuestAddress(entry)).unwrap();
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    ram.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
        .unwrap();
}

fn used_idx(ram: &Ram) -> u16 {
    ram.read_obj(GuestAddress(USED + 2)).unwrap()
}

fn header(ram: &Ram, addr: u64, request_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    ram.write_slice(&h, GuestAddress(addr)).unwrap();
}

#[test]
fn write_then_read_through_one_queue() {
    let dir = TempDir::new("smoke");
    let image = dir.join("disk.raw");
    make_image(&image, SECTORS);
    let mut d = Daemon::start(&dir, &["--image", image.to_str().unwrap()]);

    // Guest RAM: a memfd shared with the back-end.
    let memfd = File::from(memfd_create(c"pvio-smoke", MFdFlags::MFD_CLOEXEC).unwrap());
    memfd.set_len(RAM as u64).unwrap();
    let file = FileOffset::new(memfd.try_clone().unwrap(), 0);
    let ram = Ram::from_ranges_with_files(&[(GuestAddress(0), RAM, Some(file))]).unwrap();
    let host = ram.get_host_address(GuestAddress(0)).unwrap() as u64;

    let mut fe = Frontend::connect(&d.socket, 1).expect("connect");
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.set_features(features).unwrap();
    let protocol = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK;
    assert!(fe.get_protocol_features().unwrap().contains(protocol));
    fe.set_protocol_features(protocol).unwrap();

    let (_, config) = fe
        .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0; 8])
        .expect("GET_CONFIG");
    assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), SECTORS);

    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: RAM as u64,
        userspace_addr: host,
        mmap_offset: 0,
        mmap_handle: memfd.as_raw_fd(),
    }])
    .unwrap();
    fe.set_vring_num(0, QUEUE).unwrap();
    fe.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: QUEUE,
            queue_size: QUEUE,
            flags: 0,
            desc_table_addr: host + DESC_TABLE,
            used_ring_addr: host + USED,
            avail_ring_addr: host + AVAIL,
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(0, 0).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();

    // A write of sectors 8..16, a read of sectors 0..2, and a read of sector 3 into a buffer
    // not aligned for O_DIRECT (served through the buffered descriptor), sharing one kick.
    let (hdr_w, data_w, status_w) = (0x1_0000, 0x2_0000, 0x3_0000);
    let (hdr_r, data_r, status_r) = (0x1_0100, 0x4_0000, 0x3_0100);
    let (hdr_u, data_u, status_u) = (0x1_0200, 0x5_0001, 0x3_0200);
    let written: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 256) as u8).collect();
    header(&ram, hdr_w, VIRTIO_BLK_T_OUT, 8);
    ram.write_slice(&written, GuestAddress(data_w)).unwrap();
    header(&ram, hdr_r, VIRTIO_BLK_T_IN, 0);
    header(&ram, hdr_u, VIRTIO_BLK_T_IN, 3);
    ram.write_slice(&[0xff], GuestAddress(status_w)).unwrap();
    ram.write_slice(&[0xff], GuestAddress(status_r)).unwrap();
    ram.write_slice(&[0xff], GuestAddress(status_u)).unwrap();
    add_chain(
        &ram,
        0,
        &[
            (hdr_w, 16, false),
            (data_w, 4096, false),
            (status_w, 1, true),
        ],
    );
    add_chain(
        &ram,
        3,
        &[
            (hdr_r, 16, false),
            (data_r, 1024, true),
            (status_r, 1, true),
        ],
    );
    add_chain(
        &ram,
        6,
        &[(hdr_u, 16, false), (data_u, 512, true), (status_u, 1, true)],
    );
    kick.write(1).unwrap();

    wait_until_or(
        "three used entries",
        || used_idx(&ram) == 3,
        || d.log_text(),
    );
    assert_eq!(
        ram.read_obj::<u8>(GuestAddress(status_w)).unwrap(),
        0,
        "write status"
    );
    assert_eq!(
        ram.read_obj::<u8>(GuestAddress(status_r)).unwrap(),
        0,
        "read status"
    );
    let mut got = vec![0u8; 1024];
    ram.read_slice(&mut got, GuestAddress(data_r)).unwrap();
    assert_eq!(got, [sector_pattern(0), sector_pattern(1)].concat());
    assert_eq!(
        ram.read_obj::<u8>(GuestAddress(status_u)).unwrap(),
        0,
        "unaligned status"
    );
    let mut got = vec![0u8; 512];
    ram.read_slice(&mut got, GuestAddress(data_u)).unwrap();
    assert_eq!(got, sector_pattern(3), "unaligned read");
    let mut on_disk = vec![0u8; 4096];
    File::open(&image)
        .unwrap()
        .read_exact_at(&mut on_disk, 8 * 512)
        .unwrap();
    assert_eq!(on_disk, written, "the write reached the image");
    // The call eventfd is signalled after the used entries are published.
    wait_until("the driver to be notified", || call.read().is_ok());

    assert_eq!(fe.get_vring_base(0).unwrap(), 3, "three chains consumed");
    drop(fe);
    d.assert_clean_stop(Signal::SIGTERM);
}
