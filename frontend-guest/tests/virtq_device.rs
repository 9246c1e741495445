//! The split virtqueue driver against an independent device-side implementation, rust-vmm's
//! virtio-queue, on the same guest memory.

use std::collections::HashMap;

use frontend_guest::host::HostRam;
use frontend_guest::mem::GuestRam;
use frontend_guest::virtq::{
    write_table_entry, Buffer, Descriptor, QueueLayout, RawDescriptor, RawNext, SplitQueue, Used,
    VirtqError, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use proptest::prelude::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const SIZE: u16 = 16;

struct Pair {
    ram: HostRam,
    driver: SplitQueue<64>,
    device: Queue,
    scratch: u64,
}

fn pair(event_idx: bool) -> Pair {
    let ram = HostRam::new(1 << 20).unwrap();
    let base = ram
        .alloc(QueueLayout::contiguous_bytes(SIZE), 4096)
        .unwrap();
    let layout = QueueLayout::contiguous(base, SIZE).unwrap();
    let driver = SplitQueue::new(&ram, layout, event_idx).unwrap();
    let mut device = Queue::new(SIZE).unwrap();
    device.set_size(SIZE);
    let lo_hi = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (l, h) = lo_hi(layout.desc_table);
    device.set_desc_table_address(l, h);
    let (l, h) = lo_hi(layout.avail_ring);
    device.set_avail_ring_address(l, h);
    let (l, h) = lo_hi(layout.used_ring);
    device.set_used_ring_address(l, h);
    device.set_event_idx(event_idx);
    device.set_ready(true);
    assert!(device.is_valid(ram.memory()));
    let scratch = ram.alloc(64 << 10, 4096).unwrap();
    Pair {
        ram,
        driver,
        device,
        scratch,
    }
}

/// One buffer as the device saw it: (addr, len, writable).
type Seen = (u64, u32, bool);

/// Pops one chain on the device side: its head and buffers.
fn device_pop(p: &mut Pair) -> Option<(u16, Vec<Seen>)> {
    let chain = p.device.pop_descriptor_chain(p.ram.memory())?;
    let head = chain.head_index();
    let bufs = chain
        .map(|d| (d.addr().0, d.len(), d.is_write_only()))
        .collect();
    Some((head, bufs))
}

#[test]
fn direct_chain_round_trip() {
    let mut p = pair(false);
    let bufs = [
        Buffer::readable(p.scratch, 16),
        Buffer::readable(p.scratch + 512, 100),
        Buffer::writable(p.scratch + 4096, 4096),
        Buffer::writable(p.scratch + 8192, 1),
    ];
    let head = p.driver.add(&p.ram, &[&bufs[..2], &bufs[2..]]).unwrap();
    assert_eq!(p.driver.num_free(), SIZE - 4);
    assert!(
        device_pop(&mut p).is_none(),
        "nothing visible before publish"
    );
    assert!(
        p.driver.publish(&p.ram).unwrap(),
        "notify without NO_NOTIFY"
    );
    let (dev_head, seen) = device_pop(&mut p).unwrap();
    assert_eq!(dev_head, head);
    let expect: Vec<_> = bufs.iter().map(|b| (b.addr, b.len, b.writable)).collect();
    assert_eq!(seen, expect);
    assert_eq!(p.driver.pop_used(&p.ram).unwrap(), None);
    p.device.add_used(p.ram.memory(), head, 4097).unwrap();
    assert_eq!(
        p.driver.pop_used(&p.ram).unwrap(),
        Some(Used { head, len: 4097 })
    );
    assert_eq!(p.driver.num_free(), SIZE);
    assert_eq!(p.driver.chains_in_flight(), 0);
}

#[test]
fn indirect_chain_is_followed_by_the_device() {
    let mut p = pair(true);
    let table = p.scratch + (32 << 10);
    let bufs = [
        Buffer::readable(p.scratch, 16),
        Buffer::writable(p.scratch + 4096, 512),
        Buffer::writable(p.scratch + 8192, 1),
    ];
    let head = p.driver.add_indirect(&p.ram, table, &[&bufs]).unwrap();
    assert_eq!(
        p.driver.num_free(),
        SIZE - 1,
        "one descriptor for the whole chain"
    );
    p.driver.publish(&p.ram).unwrap();
    let (dev_head, seen) = device_pop(&mut p).unwrap();
    assert_eq!(dev_head, head);
    let expect: Vec<_> = bufs.iter().map(|b| (b.addr, b.len, b.writable)).collect();
    assert_eq!(seen, expect);
    p.device.add_used(p.ram.memory(), head, 513).unwrap();
    assert_eq!(
        p.driver.pop_used(&p.ram).unwrap(),
        Some(Used { head, len: 513 })
    );
    assert_eq!(p.driver.num_free(), SIZE);
}

#[test]
fn available_notification_follows_the_device() {
    for event_idx in [false, true] {
        let mut p = pair(event_idx);
        let buf = [Buffer::writable(p.scratch, 1)];
        p.driver.add(&p.ram, &[&buf]).unwrap();
        assert!(
            p.driver.publish(&p.ram).unwrap(),
            "first publish notifies ({event_idx})"
        );
        // The device consumes it and asks for no notification while it is busy.
        device_pop(&mut p).unwrap();
        p.device.disable_notification(p.ram.memory()).unwrap();
        p.driver.add(&p.ram, &[&buf]).unwrap();
        assert!(
            !p.driver.publish(&p.ram).unwrap(),
            "device is polling ({event_idx})"
        );
        assert!(!p.driver.publish(&p.ram).unwrap(), "nothing new to publish");
        // The device drains and re-enables; the entry it has not seen yet means it keeps going.
        assert!(p.device.enable_notification(p.ram.memory()).unwrap());
        device_pop(&mut p).unwrap();
        assert!(!p.device.enable_notification(p.ram.memory()).unwrap());
        p.driver.add(&p.ram, &[&buf]).unwrap();
        assert!(
            p.driver.publish(&p.ram).unwrap(),
            "device sleeps again ({event_idx})"
        );
    }
}

#[test]
fn used_notification_follows_the_driver() {
    let mut p = pair(true);
    let buf = [Buffer::writable(p.scratch, 1)];
    let a = p.driver.add(&p.ram, &[&buf]).unwrap();
    let b = p.driver.add(&p.ram, &[&buf]).unwrap();
    p.driver.publish(&p.ram).unwrap();
    device_pop(&mut p).unwrap();
    device_pop(&mut p).unwrap();
    assert!(
        !p.driver.enable_interrupts(&p.ram).unwrap(),
        "nothing used yet"
    );
    p.device.add_used(p.ram.memory(), a, 1).unwrap();
    assert!(
        p.device.needs_notification(p.ram.memory()).unwrap(),
        "driver armed used_event"
    );
    // The driver has not consumed `a`, so used_event still points at it: no second interrupt.
    p.device.add_used(p.ram.memory(), b, 1).unwrap();
    assert!(!p.device.needs_notification(p.ram.memory()).unwrap());
    assert!(
        p.driver.enable_interrupts(&p.ram).unwrap(),
        "completions pending: poll, don't sleep"
    );
    assert_eq!(p.driver.pop_used(&p.ram).unwrap().map(|u| u.head), Some(a));
    assert_eq!(p.driver.pop_used(&p.ram).unwrap().map(|u| u.head), Some(b));
    assert_eq!(p.driver.pop_used(&p.ram).unwrap(), None);
}

#[test]
fn indices_wrap_past_u16() {
    let mut p = pair(true);
    for i in 0..70_000u32 {
        let n = (i % 3 + 1) as usize;
        let bufs: Vec<_> = (0..n)
            .map(|k| Buffer::writable(p.scratch + 64 * k as u64, 64))
            .collect();
        let head = p.driver.add(&p.ram, &[&bufs]).unwrap();
        p.driver.publish(&p.ram).unwrap();
        let (dev_head, seen) = device_pop(&mut p).unwrap();
        assert_eq!((dev_head, seen.len()), (head, n));
        p.device.add_used(p.ram.memory(), head, i).unwrap();
        assert_eq!(
            p.driver.pop_used(&p.ram).unwrap(),
            Some(Used { head, len: i })
        );
    }
    assert_eq!(p.driver.num_free(), SIZE);
}

#[test]
fn queue_full_and_bad_chains_add_nothing() {
    let mut p = pair(false);
    let bufs: Vec<_> = (0..SIZE)
        .map(|k| Buffer::readable(p.scratch + 16 * u64::from(k), 16))
        .collect();
    let one = [Buffer::readable(p.scratch, 1)];
    assert_eq!(
        p.driver
            .add(&p.ram, &[&[Buffer::writable(p.scratch, 1)], &one]),
        Err(VirtqError::ReadableAfterWritable)
    );
    assert_eq!(p.driver.add(&p.ram, &[]), Err(VirtqError::EmptyChain));
    let too_long: Vec<_> = bufs.iter().chain(&one).copied().collect();
    assert!(matches!(
        p.driver.add(&p.ram, &[&too_long]),
        Err(VirtqError::ChainTooLong { .. })
    ));
    p.driver.add(&p.ram, &[&bufs[..SIZE as usize - 1]]).unwrap();
    assert_eq!(
        p.driver.add(&p.ram, &[&bufs[..2]]),
        Err(VirtqError::QueueFull { needed: 2, free: 1 })
    );
    assert_eq!(p.driver.chains_in_flight(), 1);
    assert_eq!(p.driver.num_free(), 1);
}

#[test]
fn raw_chain_links_resolve_to_table_slots() {
    let mut p = pair(false);
    // Use up and return some descriptors so the free list is not in index order.
    let one = [Buffer::readable(p.scratch, 1)];
    let first = p.driver.add(&p.ram, &[&one, &one, &one]).unwrap();
    p.driver.publish(&p.ram).unwrap();
    device_pop(&mut p).unwrap();
    p.device.add_used(p.ram.memory(), first, 0).unwrap();
    p.driver.pop_used(&p.ram).unwrap().unwrap();

    let raw = [
        RawDescriptor {
            addr: 0x1000,
            len: 16,
            flags: VIRTQ_DESC_F_NEXT,
            next: RawNext::Chain(1),
        },
        RawDescriptor {
            addr: u64::MAX - 7,
            len: 1,
            flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            next: RawNext::Chain(0),
        },
    ];
    let head = p.driver.add_raw(&p.ram, &raw).unwrap();
    let layout = *p.driver.layout();
    let read_desc = |slot: u16| {
        let mut b = [0u8; 16];
        p.ram
            .read(layout.desc_table + 16 * u64::from(slot), &mut b)
            .unwrap();
        Descriptor::from_bytes(&b)
    };
    let d0 = read_desc(head);
    let d1 = read_desc(d0.next);
    assert_eq!((d0.addr, d0.len, d0.flags), (0x1000, 16, VIRTQ_DESC_F_NEXT));
    assert_eq!(
        (d1.addr, d1.flags, d1.next),
        (u64::MAX - 7, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, head)
    );
    assert_ne!(d0.next, head);
    assert_eq!(
        p.driver.add_raw(
            &p.ram,
            &[RawDescriptor {
                addr: 0,
                len: 0,
                flags: VIRTQ_DESC_F_NEXT,
                next: RawNext::Chain(5)
            }]
        ),
        Err(VirtqError::BadRawNext {
            index: 0,
            next: 5,
            len: 1
        })
    );
    // Completing the loop frees both descriptors.
    p.driver.publish(&p.ram).unwrap();
    p.device.add_used(p.ram.memory(), head, 0).unwrap();
    assert_eq!(
        p.driver.pop_used(&p.ram).unwrap(),
        Some(Used { head, len: 0 })
    );
    assert_eq!(p.driver.num_free(), SIZE);

    // A hand-built indirect table has table-relative links.
    let table = p.scratch;
    write_table_entry(
        &p.ram,
        table,
        3,
        &Descriptor {
            addr: 7,
            len: 8,
            flags: 0,
            next: 9,
        },
    )
    .unwrap();
    let mut b = [0u8; 16];
    p.ram.read(table + 48, &mut b).unwrap();
    assert_eq!(Descriptor::from_bytes(&b).next, 9);
}

#[test]
fn misbehaving_device_is_reported() {
    let mut p = pair(false);
    let one = [Buffer::writable(p.scratch, 1)];
    p.driver.add(&p.ram, &[&one]).unwrap();
    p.driver.publish(&p.ram).unwrap();
    let used = p.driver.layout().used_ring;
    // A used element naming a descriptor that is not a chain head in flight.
    p.ram
        .memory()
        .write_obj(999u32, GuestAddress(used + 4))
        .unwrap();
    p.ram
        .memory()
        .write_obj(1u16, GuestAddress(used + 2))
        .unwrap();
    assert_eq!(
        p.driver.pop_used(&p.ram),
        Err(VirtqError::BadUsedId { id: 999, len: 0 })
    );
    assert_eq!(
        p.driver.chains_in_flight(),
        1,
        "the real chain is still in flight"
    );
    // A used index further ahead than the chains in flight.
    p.ram
        .memory()
        .write_obj(5u16, GuestAddress(used + 2))
        .unwrap();
    assert!(matches!(
        p.driver.pop_used(&p.ram),
        Err(VirtqError::UsedIndexTooFar { ahead: 4, .. })
    ));
}

/// With VIRTIO_F_IN_ORDER a device that uses a chain before one made available earlier is
/// reported (and the chain it named is freed); one that keeps the order is not.
#[test]
fn a_device_out_of_order_is_reported_under_in_order() {
    let mut p = pair(false);
    p.driver.set_in_order(true);
    let bufs: Vec<[Buffer; 1]> = (0..3)
        .map(|i| [Buffer::writable(p.scratch + 512 * i, 64)])
        .collect();
    let heads: Vec<u16> = bufs
        .iter()
        .map(|b| p.driver.add(&p.ram, &[&b[..]]).unwrap())
        .collect();
    p.driver.publish(&p.ram).unwrap();
    let popped: Vec<u16> = (0..3).map(|_| device_pop(&mut p).unwrap().0).collect();
    assert_eq!(popped, heads);
    let mem = p.ram.memory();
    p.device.add_used(mem, heads[0], 10).unwrap();
    assert_eq!(
        p.driver.pop_used(&p.ram),
        Ok(Some(Used {
            head: heads[0],
            len: 10
        }))
    );
    p.device.add_used(mem, heads[2], 30).unwrap();
    assert_eq!(
        p.driver.pop_used(&p.ram),
        Err(VirtqError::OutOfOrder {
            head: heads[2],
            expected: heads[1]
        })
    );
    assert_eq!(
        p.driver.chains_in_flight(),
        1,
        "chain {} is freed",
        heads[2]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random chain shapes completed in random order: every head comes back once with its
    /// length, and all descriptors return to the free list.
    #[test]
    fn random_chains_complete_in_any_order(ops in prop::collection::vec((1usize..5, any::<bool>(), any::<u8>()), 1..200)) {
        let mut p = pair(true);
        let mut in_flight: HashMap<u16, u32> = HashMap::new();
        let mut device_held: Vec<u16> = Vec::new();
        for (i, (n, indirect, pick)) in ops.into_iter().enumerate() {
            let bufs: Vec<_> = (0..n).map(|k| Buffer::writable(p.scratch + 64 * k as u64, 64)).collect();
            // The device reads the table when it pops the chain, right below, so one will do.
            let table = p.scratch + (16 << 10);
            let added = if indirect {
                p.driver.add_indirect(&p.ram, table, &[&bufs])
            } else {
                p.driver.add(&p.ram, &[&bufs])
            };
            match added {
                Ok(head) => {
                    prop_assert!(in_flight.insert(head, i as u32).is_none());
                    p.driver.publish(&p.ram).unwrap();
                    let (dev_head, seen) = device_pop(&mut p).unwrap();
                    prop_assert_eq!(dev_head, head);
                    prop_assert_eq!(seen.len(), n);
                    device_held.push(head);
                }
                Err(VirtqError::QueueFull { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            if !device_held.is_empty() && pick % 2 == 0 {
                let h = device_held.swap_remove(usize::from(pick) % device_held.len());
                p.device.add_used(p.ram.memory(), h, in_flight[&h]).unwrap();
                let u = p.driver.pop_used(&p.ram).unwrap().unwrap();
                prop_assert_eq!(u.head, h);
                prop_assert_eq!(Some(u.len), in_flight.remove(&h));
            }
        }
        for h in device_held {
            p.device.add_used(p.ram.memory(), h, in_flight[&h]).unwrap();
            let u = p.driver.pop_used(&p.ram).unwrap().unwrap();
            prop_assert_eq!(Some(u.len), in_flight.remove(&h));
        }
        prop_assert_eq!(p.driver.num_free(), SIZE);
        prop_assert!(in_flight.is_empty());
    }
}
