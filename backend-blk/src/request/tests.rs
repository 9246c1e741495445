//! Parser tests: descriptor chains built with virtio-queue's driver-side mock.

use proptest::prelude::*;
use smallvec::smallvec;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{DescriptorTable, MockSplitQueue};
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: u64 = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const CAPACITY: u64 = 2048;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const TABLE: u64 = 0x4_0000;

fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn limits() -> Limits {
    Limits {
        capacity_sectors: CAPACITY,
        read_only: false,
        discard: true,
        write_zeroes: true,
        max_zero_sectors: 1 << 21,
        max_buffers: 1024,
    }
}

fn r(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

fn w(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

fn header(m: &Mem, addr: u64, request_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(addr)).unwrap();
}

fn segment(m: &Mem, addr: u64, sector: u64, sectors: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&s, GuestAddress(addr)).unwrap();
}

/// Parses `descs` linked in order (NEXT set on all but the last).
fn parse_linked(m: &Mem, descs: &[RawDescriptor], limits: &Limits) -> Result<Parsed, Rejected> {
    let vq = MockSplitQueue::new(m, QUEUE_SIZE);
    let chain = vq.build_desc_chain(descs).unwrap();
    parse(chain, limits)
}

/// Parses `descs` stored as they are (flags and next untouched) with descriptor 0 as head.
fn parse_raw(m: &Mem, descs: &[RawDescriptor], limits: &Limits) -> Result<Parsed, Rejected> {
    let vq = MockSplitQueue::new(m, QUEUE_SIZE);
    let chain = vq.build_multiple_desc_chains(descs).unwrap();
    parse(chain, limits)
}

fn range(addr: u64, len: u32) -> GuestRange {
    GuestRange {
        addr: GuestAddress(addr),
        len,
    }
}

fn rejected(status: Option<u64>, error: RequestError) -> Result<Parsed, Rejected> {
    Err(Rejected {
        status: status.map(GuestAddress),
        error,
    })
}

fn parsed(request: Request, status: u64) -> Result<Parsed, Rejected> {
    Ok(Parsed {
        request,
        status: GuestAddress(status),
    })
}

// ---- every request type ---------------------------------------------------------------------

#[test]
fn read() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 8);
    let got = parse_linked(&m, &[r(HDR, 16), w(DATA, 4096), w(STATUS, 1)], &limits());
    let want = Request::Read {
        sector: 8,
        buffers: smallvec![range(DATA, 4096)],
    };
    assert_eq!(got, parsed(want, STATUS));
}

#[test]
fn write_with_several_buffers() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, CAPACITY - 3);
    let descs = [
        r(HDR, 16),
        r(DATA, 512),
        r(DATA + 0x1000, 1024),
        w(STATUS, 1),
    ];
    let want = Request::Write {
        sector: CAPACITY - 3,
        buffers: smallvec![range(DATA, 512), range(DATA + 0x1000, 1024)],
    };
    assert_eq!(parse_linked(&m, &descs, &limits()), parsed(want, STATUS));
}

#[test]
fn flush_get_id_discard_write_zeroes() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let got = parse_linked(&m, &[r(HDR, 16), w(STATUS, 1)], &limits());
    assert_eq!(got, parsed(Request::Flush, STATUS));

    header(&m, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let got = parse_linked(&m, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)], &limits());
    let want = Request::GetId {
        buffers: smallvec![range(DATA, 20)],
    };
    assert_eq!(got, parsed(want, STATUS));

    header(&m, HDR, VIRTIO_BLK_T_DISCARD, 0);
    segment(&m, DATA, 100, 8, 0);
    let got = parse_linked(&m, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &limits());
    let want = Request::Discard {
        sector: 100,
        sectors: 8,
    };
    assert_eq!(got, parsed(want, STATUS));

    header(&m, HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&m, DATA, CAPACITY - 8, 8, SEGMENT_FLAG_UNMAP);
    let got = parse_linked(&m, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &limits());
    let want = Request::WriteZeroes {
        sector: CAPACITY - 8,
        sectors: 8,
        unmap: true,
    };
    assert_eq!(got, parsed(want, STATUS));
}

#[test]
fn any_layout_splits_at_byte_offsets() {
    let m = mem();
    // Header and data in one device-readable buffer; status in its own.
    header(&m, DATA, VIRTIO_BLK_T_OUT, 4);
    let got = parse_linked(&m, &[r(DATA, 16 + 1024), w(STATUS, 1)], &limits());
    let want = Request::Write {
        sector: 4,
        buffers: smallvec![range(DATA + 16, 1024)],
    };
    assert_eq!(got, parsed(want, STATUS));

    // Header split over two descriptors; data and status share the last one.
    header(&m, HDR, VIRTIO_BLK_T_IN, 2);
    let descs = [r(HDR, 10), r(HDR + 10, 6), w(DATA, 512 + 1)];
    let want = Request::Read {
        sector: 2,
        buffers: smallvec![range(DATA, 512)],
    };
    assert_eq!(
        parse_linked(&m, &descs, &limits()),
        parsed(want, DATA + 512)
    );
}

#[test]
fn zero_length_descriptors_are_ignored() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let descs = [
        r(HDR, 16),
        r(DATA, 0),
        w(DATA, 512),
        w(DATA + 0x1000, 0),
        w(STATUS, 1),
    ];
    let want = Request::Read {
        sector: 0,
        buffers: smallvec![range(DATA, 512)],
    };
    assert_eq!(parse_linked(&m, &descs, &limits()), parsed(want, STATUS));
}

#[test]
fn indirect_table() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 1);
    let table = DescriptorTable::new(&m, GuestAddress(TABLE), 3);
    let flags_next = VRING_DESC_F_NEXT;
    table.store(0, raw(HDR, 16, flags_next, 1)).unwrap();
    table
        .store(1, raw(DATA, 512, flags_next | VRING_DESC_F_WRITE, 2))
        .unwrap();
    table
        .store(2, raw(STATUS, 1, VRING_DESC_F_WRITE, 0))
        .unwrap();
    let got = parse_raw(&m, &[raw(TABLE, 48, VRING_DESC_F_INDIRECT, 0)], &limits());
    let want = Request::Read {
        sector: 1,
        buffers: smallvec![range(DATA, 512)],
    };
    assert_eq!(got, parsed(want, STATUS));
}

// ---- malformed chains -----------------------------------------------------------------------

#[test]
fn no_status_byte() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let none = |descs: &[RawDescriptor]| parse_linked(&m, descs, &limits());
    assert_eq!(none(&[r(HDR, 16)]), rejected(None, RequestError::NoStatus));
    assert_eq!(
        none(&[r(HDR, 16), r(DATA, 512), r(STATUS, 1)]),
        rejected(None, RequestError::NoStatus),
        "status byte device-readable"
    );
    assert_eq!(
        none(&[r(HDR, 16), r(DATA, 512), w(STATUS, 0)]),
        rejected(None, RequestError::NoStatus),
        "zero-length status"
    );
}

#[test]
fn header_problems() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let got = parse_linked(&m, &[w(HDR, 16), w(DATA, 512), w(STATUS, 1)], &limits());
    assert_eq!(got, rejected(Some(STATUS), RequestError::HeaderWritable));
    let got = parse_linked(&m, &[r(HDR, 8), w(STATUS, 1)], &limits());
    assert_eq!(got, rejected(Some(STATUS), RequestError::ShortHeader(8)));
}

#[test]
fn wrong_directions_and_order() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let got = parse_linked(&m, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], &limits());
    let err = RequestError::WrongDirection {
        request: "OUT",
        bytes: 512,
    };
    assert_eq!(got, rejected(Some(STATUS), err));

    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let got = parse_linked(&m, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], &limits());
    let err = RequestError::WrongDirection {
        request: "IN",
        bytes: 512,
    };
    assert_eq!(got, rejected(Some(STATUS), err));

    let got = parse_linked(
        &m,
        &[
            r(HDR, 16),
            w(DATA, 512),
            r(DATA + 0x1000, 512),
            w(STATUS, 1),
        ],
        &limits(),
    );
    assert_eq!(
        got,
        rejected(Some(STATUS), RequestError::ReadableAfterWritable(2))
    );
}

#[test]
fn outside_guest_memory() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let cases = [
        (MEM_SIZE + 0x1000, 1),
        (MEM_SIZE - 256, 1),
        (u64::MAX - 255, 1),
    ];
    for (addr, index) in cases {
        let got = parse_linked(&m, &[r(HDR, 16), w(addr, 512), w(STATUS, 1)], &limits());
        let err = RequestError::OutsideMemory {
            index,
            addr,
            len: 512,
        };
        assert_eq!(got, rejected(Some(STATUS), err), "data at {addr:#x}");
    }
    let got = parse_linked(&m, &[r(MEM_SIZE, 16), w(STATUS, 1)], &limits());
    let err = RequestError::OutsideMemory {
        index: 0,
        addr: MEM_SIZE,
        len: 16,
    };
    assert_eq!(got, rejected(Some(STATUS), err), "header outside");
    let got = parse_linked(&m, &[r(HDR, 16), w(MEM_SIZE + 100, 1)], &limits());
    let err = RequestError::OutsideMemory {
        index: 1,
        addr: MEM_SIZE + 100,
        len: 1,
    };
    assert_eq!(got, rejected(None, err), "status outside");
}

#[test]
fn sector_ranges() {
    let m = mem();
    let cases = [
        (CAPACITY, 512),
        (CAPACITY - 1, 1024),
        (u64::MAX / 512, 512),
        (u64::MAX, 512),
    ];
    for (sector, len) in cases {
        header(&m, HDR, VIRTIO_BLK_T_IN, sector);
        let got = parse_linked(&m, &[r(HDR, 16), w(DATA, len), w(STATUS, 1)], &limits());
        let err = RequestError::OutOfRange {
            sector,
            sectors: u64::from(len) / 512,
            capacity: CAPACITY,
        };
        assert_eq!(got, rejected(Some(STATUS), err), "sector {sector}");
    }
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let got = parse_linked(&m, &[r(HDR, 16), w(DATA, 100), w(STATUS, 1)], &limits());
    assert_eq!(
        got,
        rejected(Some(STATUS), RequestError::NotSectorMultiple(100))
    );
}

#[test]
fn read_only_refuses_every_write() {
    let m = mem();
    let ro = Limits {
        read_only: true,
        discard: false,
        write_zeroes: false,
        ..limits()
    };
    header(&m, HDR, VIRTIO_BLK_T_OUT, 0);
    let got = parse_linked(&m, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], &ro);
    assert_eq!(got, rejected(Some(STATUS), RequestError::ReadOnly("OUT")));
    segment(&m, DATA, 0, 1, 0);
    for (t, name) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, "WRITE_ZEROES"),
        (VIRTIO_BLK_T_DISCARD, "DISCARD"),
    ] {
        header(&m, HDR, t, 0);
        let got = parse_linked(&m, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &ro);
        assert_eq!(got, rejected(Some(STATUS), RequestError::ReadOnly(name)));
    }
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    assert!(parse_linked(&m, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)], &ro).is_ok());
}

#[test]
fn discard_and_write_zeroes_checks() {
    let m = mem();
    let run = |t: u32, sector: u64, sectors: u32, flags: u32, payload: u32, limits: &Limits| {
        header(&m, HDR, t, 0);
        segment(&m, DATA, sector, sectors, flags);
        parse_linked(&m, &[r(HDR, 16), r(DATA, payload), w(STATUS, 1)], limits)
    };
    let l = limits();
    let st = Some(STATUS);
    assert_eq!(
        run(VIRTIO_BLK_T_DISCARD, 0, 1, SEGMENT_FLAG_UNMAP, 16, &l),
        rejected(st, RequestError::DiscardUnmap)
    );
    assert_eq!(
        run(VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 6, 16, &l),
        rejected(st, RequestError::UnknownSegmentFlags(6))
    );
    assert_eq!(
        run(VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 0, 32, &l),
        rejected(st, RequestError::BadSegments(32))
    );
    let err = RequestError::SegmentTooLong {
        sectors: (1 << 21) + 1,
        max: 1 << 21,
    };
    assert_eq!(
        run(VIRTIO_BLK_T_DISCARD, 0, (1 << 21) + 1, 0, 16, &l),
        rejected(st, err)
    );
    let err = RequestError::OutOfRange {
        sector: CAPACITY - 8,
        sectors: 16,
        capacity: CAPACITY,
    };
    assert_eq!(
        run(VIRTIO_BLK_T_WRITE_ZEROES, CAPACITY - 8, 16, 0, 16, &l),
        rejected(st, err)
    );
    let no_discard = Limits {
        discard: false,
        ..limits()
    };
    assert_eq!(
        run(VIRTIO_BLK_T_DISCARD, 0, 1, 0, 16, &no_discard),
        rejected(st, RequestError::Unsupported(VIRTIO_BLK_T_DISCARD))
    );
}

#[test]
fn unsupported_types() {
    let m = mem();
    for t in [2u32, 3, 10, 14, 0x7777, u32::MAX] {
        header(&m, HDR, t, 0);
        let got = parse_linked(&m, &[r(HDR, 16), w(STATUS, 1)], &limits());
        assert_eq!(got, rejected(Some(STATUS), RequestError::Unsupported(t)));
    }
}

#[test]
fn too_many_buffers_and_descriptors() {
    let m = mem();
    let small = Limits {
        max_buffers: 2,
        ..limits()
    };
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let three = [
        r(HDR, 16),
        w(DATA, 512),
        w(DATA + 0x1000, 512),
        w(DATA + 0x2000, 512),
        w(STATUS, 1),
    ];
    assert_eq!(
        parse_linked(&m, &three, &small),
        rejected(None, RequestError::TooLong(4))
    );
    // Data and status sharing descriptors: 3 buffers in 4 descriptors.
    let shared = [
        r(HDR, 16),
        w(DATA, 512),
        w(DATA + 0x1000, 512),
        w(DATA + 0x2000, 513),
    ];
    assert_eq!(
        parse_linked(&m, &shared, &small),
        rejected(
            Some(DATA + 0x2000 + 512),
            RequestError::TooManyBuffers(3, 2)
        )
    );
}

#[test]
fn broken_chains() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let next = VRING_DESC_F_NEXT;
    let wnext = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    // header -> data -> data -> back to the first data descriptor.
    let looping = [
        raw(HDR, 16, next, 1),
        raw(DATA, 512, wnext, 2),
        raw(DATA, 512, wnext, 1),
    ];
    assert_eq!(
        parse_raw(&m, &looping, &limits()),
        rejected(None, RequestError::BrokenChain(QUEUE_SIZE as usize))
    );
    let self_loop = [raw(HDR, 16, next, 0)];
    assert_eq!(
        parse_raw(&m, &self_loop, &limits()),
        rejected(None, RequestError::BrokenChain(QUEUE_SIZE as usize))
    );
    let off_table = [
        raw(HDR, 16, next, 0xffff),
        raw(STATUS, 1, VRING_DESC_F_WRITE, 0),
    ];
    assert_eq!(
        parse_raw(&m, &off_table, &limits()),
        rejected(None, RequestError::BrokenChain(1))
    );
}

#[test]
fn bad_indirect_tables() {
    let m = mem();
    header(&m, HDR, VIRTIO_BLK_T_IN, 0);
    let table = DescriptorTable::new(&m, GuestAddress(TABLE), 2);
    table.store(0, raw(HDR, 16, VRING_DESC_F_NEXT, 1)).unwrap();
    table
        .store(1, raw(STATUS, 1, VRING_DESC_F_WRITE, 0))
        .unwrap();
    let head = |addr: u64, len: u32| [raw(addr, len, VRING_DESC_F_INDIRECT, 0)];
    assert!(
        parse_raw(&m, &head(TABLE, 32), &limits()).is_ok(),
        "the good table"
    );
    for (addr, len, what) in [
        (TABLE, 20, "length not a multiple of 16"),
        (TABLE, 0, "length 0"),
        (u64::MAX - 15, 32, "outside memory"),
        (MEM_SIZE, 32, "past the end of memory"),
    ] {
        assert_eq!(
            parse_raw(&m, &head(addr, len), &limits()),
            rejected(None, RequestError::EmptyChain),
            "{what}"
        );
    }
    // A table whose first entry points to another table.
    let nested = DescriptorTable::new(&m, GuestAddress(TABLE + 0x100), 1);
    nested
        .store(0, raw(TABLE, 32, VRING_DESC_F_INDIRECT, 0))
        .unwrap();
    assert_eq!(
        parse_raw(&m, &head(TABLE + 0x100, 16), &limits()),
        rejected(None, RequestError::EmptyChain)
    );
    // A next index outside the indirect table.
    table.store(0, raw(HDR, 16, VRING_DESC_F_NEXT, 7)).unwrap();
    assert_eq!(
        parse_raw(&m, &head(TABLE, 32), &limits()),
        rejected(None, RequestError::BrokenChain(1))
    );
}

// ---- property tests -------------------------------------------------------------------------

/// Addresses a fuzzed descriptor may point to: the fuzzed scratch area, a table area, the end of
/// memory, far outside it, and the top of the address space.
fn any_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..0x2000).prop_map(|o| HDR + o),
        (0u64..0x100).prop_map(|o| TABLE + o * 16),
        (0u64..0x2000).prop_map(|o| MEM_SIZE - o),
        any::<u64>(),
        (0u64..0x1000).prop_map(|o| u64::MAX - o),
    ]
}

fn any_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(16),
        Just(17),
        Just(512),
        0u32..5000,
        any::<u32>()
    ]
}

fn any_descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (
        any_addr(),
        any_len(),
        0u16..8,
        prop_oneof![0u16..20, any::<u16>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random descriptor tables (loops, bad indices, indirect tables, random headers and
    /// segments in guest memory): parsing never panics, and whatever it accepts is valid.
    #[test]
    fn random_chains_parse_safely(
        table in prop::collection::vec(any_descriptor(), 1..(QUEUE_SIZE as usize)),
        head in prop_oneof![0u16..QUEUE_SIZE, any::<u16>()],
        scratch in prop::collection::vec(any::<u8>(), 0x2000),
        indirect in prop::collection::vec(any_descriptor(), 0..16),
        read_only in any::<bool>(),
    ) {
        let m = mem();
        m.write_slice(&scratch, GuestAddress(HDR)).unwrap();
        let itable = DescriptorTable::new(&m, GuestAddress(TABLE), 16);
        for (i, (addr, len, flags, next)) in indirect.iter().enumerate() {
            itable.store(i as u16, raw(*addr, *len, u32::from(*flags), *next)).unwrap();
        }
        let vq = MockSplitQueue::new(&m, QUEUE_SIZE);
        for (i, (addr, len, flags, next)) in table.iter().enumerate() {
            vq.desc_table().store(i as u16, raw(*addr, *len, u32::from(*flags), *next)).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(head);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let Some(chain) = q.iter(&m).unwrap().next() else { return Ok(()) };
        let lim = Limits { read_only, ..limits() };
        match parse(chain, &lim) {
            Ok(p) => check_valid(&m, &p, &lim)?,
            Err(rej) => {
                if let Some(s) = rej.status {
                    prop_assert!(m.check_range(s, 1, Permissions::Write));
                }
            }
        }
    }
}

fn check_valid(m: &Mem, p: &Parsed, lim: &Limits) -> Result<(), TestCaseError> {
    prop_assert!(m.check_range(p.status, 1, Permissions::Write));
    let in_memory = |b: &[GuestRange]| {
        b.iter()
            .all(|r| r.len > 0 && m.check_range(r.addr, r.len as usize, Permissions::Read))
    };
    match &p.request {
        Request::Read { sector, buffers } | Request::Write { sector, buffers } => {
            prop_assert!(in_memory(buffers));
            prop_assert!(buffers.len() <= lim.max_buffers);
            let bytes = total(buffers);
            prop_assert_eq!(bytes % SECTOR_SIZE, 0);
            prop_assert!(sector + bytes / SECTOR_SIZE <= lim.capacity_sectors);
            if matches!(p.request, Request::Write { .. }) {
                prop_assert!(!lim.read_only);
            }
        }
        Request::GetId { buffers } => prop_assert!(in_memory(buffers)),
        Request::Flush => {}
        Request::Discard { sector, sectors }
        | Request::WriteZeroes {
            sector, sectors, ..
        } => {
            prop_assert!(!lim.read_only);
            prop_assert!(*sectors <= lim.max_zero_sectors);
            prop_assert!(sector + u64::from(*sectors) <= lim.capacity_sectors);
        }
    }
    Ok(())
}
