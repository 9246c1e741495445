//! backend-blk's descriptor-chain request parser (virtio 1.2 §5.2.6) on a descriptor table,
//! an indirect table and guest memory all taken from the input: it never panics, and what it
//! accepts lies inside guest memory.
#![no_main]

use backend_blk::request::{parse, Limits, Request};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{DescriptorTable, MockSplitQueue};
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::guest_memory::Permissions;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const SCRATCH: u64 = 0x1_0000;
const TABLE: u64 = 0x4_0000;

/// Takes `n` bytes from the front of `data` (fewer at its end).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = data.split_at(n.min(data.len()));
    *data = b;
    a
}

fn descriptor(d: &[u8]) -> RawDescriptor {
    let mut b = [0u8; 16];
    b[..d.len()].copy_from_slice(d);
    let addr = u64::from_le_bytes(b[0..8].try_into().unwrap());
    // Mostly addresses inside guest memory, so the parser gets past the bounds checks.
    let addr = if b[15] & 1 == 0 {
        addr % MEM_SIZE
    } else {
        addr
    };
    let len = u32::from_le_bytes(b[8..12].try_into().unwrap());
    let len = if b[15] & 2 == 0 { len % 0x2_0000 } else { len };
    let flags = u16::from_le_bytes(b[12..14].try_into().unwrap()) & 0x7;
    let next = u16::from(b[14]);
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let ctl = take(&mut data, 4);
    let [n, n_ind, head, opts] = [0, 1, 2, 3].map(|i| ctl.get(i).copied().unwrap_or(0));
    let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
    for i in 0..(n % 16 + 1) {
        let d = descriptor(take(&mut data, 15));
        vq.desc_table().store(u16::from(i), d).unwrap();
    }
    let itable = DescriptorTable::new(&m, GuestAddress(TABLE), 16);
    for i in 0..(n_ind % 17) {
        itable
            .store(u16::from(i), descriptor(take(&mut data, 15)))
            .unwrap();
    }
    m.write_slice(take(&mut data, 0x2000), GuestAddress(SCRATCH))
        .unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(u16::from(head));
    vq.avail().idx().store(1);
    let mut q: Queue = vq.create_queue().unwrap();
    let Some(chain) = q.iter(&m).unwrap().next() else {
        return;
    };
    let limits = Limits {
        capacity_sectors: 2048,
        read_only: opts & 1 != 0,
        discard: opts & 2 != 0,
        write_zeroes: opts & 4 != 0,
        max_zero_sectors: 1 << 21,
        max_buffers: 1024,
    };
    match parse(chain, &limits) {
        Ok(p) => {
            assert!(m.check_range(p.status, 1, Permissions::Write));
            if let Request::Read { buffers, .. } | Request::Write { buffers, .. } = &p.request {
                for b in buffers {
                    assert!(b.len > 0);
                    assert!(m.check_range(b.addr, b.len as usize, Permissions::Read));
                }
            }
        }
        Err(rej) => {
            if let Some(s) = rej.status {
                assert!(m.check_range(s, 1, Permissions::Write));
            }
        }
    }
});
