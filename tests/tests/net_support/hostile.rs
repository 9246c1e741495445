//! Hostile transmits for property tests against the running daemon: frames with arbitrary
//! virtio-net headers and chosen or random addresses, and arbitrary descriptor chains (loops,
//! broken links, addresses outside guest memory, wrong directions, bogus indirect tables).
//! After each one, every chain must come back exactly once and the port's transmit counters
//! must account for it.

use frontend_guest::host::net::NetResult;
use frontend_guest::host::NetDevice;
use frontend_guest::net::NetHdr;
use frontend_guest::virtq::{RawDescriptor, RawNext};
use frontend_guest::GuestRam;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;

use super::{counter, frames};

/// EtherType of the hostile frames (IEEE 802 local experimental).
const ETHERTYPE: u16 = 0x88b5;

/// One hostile transmit: a frame with an arbitrary header and chosen addresses, or an
/// arbitrary descriptor chain.
#[derive(Clone, Debug)]
pub enum Hostile {
    Frame {
        /// Its virtio-net header.
        hdr: NetHdr,
        /// Index into the known addresses for the destination (a random one past the end).
        dst: u8,
        /// The same for the source.
        src: u8,
        /// Bytes after the Ethernet header.
        body: Vec<u8>,
    },
    /// A chain of raw descriptors.
    Chain(Vec<RawDescriptor>),
}

/// Mostly headers a driver would send (none, a partial checksum, TCP segmentation), some
/// arbitrary.
fn hostile_hdr() -> impl Strategy<Value = NetHdr> {
    let csum = NetHdr {
        flags: 1,
        csum_start: 34,
        csum_offset: 16,
        ..NetHdr::default()
    };
    let tso = NetHdr {
        gso_type: 1,
        hdr_len: 54,
        gso_size: 1448,
        ..csum
    };
    prop_oneof![
        2 => Just(NetHdr::default()),
        1 => Just(csum),
        1 => (1u16..2000).prop_map(move |gso_size| NetHdr { gso_size, ..tso }),
        2 => arbitrary_hdr(),
    ]
}

fn arbitrary_hdr() -> impl Strategy<Value = NetHdr> {
    (
        prop_oneof![Just(0u8), Just(1), any::<u8>()],
        prop_oneof![Just(0u8), Just(1), Just(4), Just(0x80), any::<u8>()],
        any::<u16>(),
        prop_oneof![Just(0u16), 1u16..2000, any::<u16>()],
        prop_oneof![Just(34u16), any::<u16>()],
        prop_oneof![Just(16u16), any::<u16>()],
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| NetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
                num_buffers: 0,
            },
        )
}

/// Descriptors over `buf` (64 KiB of guest RAM), just outside guest RAM, or anywhere.
fn hostile_chain(buf: u64, ram_size: u64) -> impl Strategy<Value = Vec<RawDescriptor>> {
    let desc = (
        prop_oneof![
            (0u64..65_536).prop_map(move |o| buf + o),
            (0u64..4096).prop_map(move |o| ram_size + o),
            any::<u64>(),
        ],
        prop_oneof![0u32..2048, any::<u32>()],
        0u16..8,
        prop_oneof![
            (0usize..4).prop_map(RawNext::Chain),
            any::<u16>().prop_map(RawNext::Slot),
        ],
    )
        .prop_map(|(addr, len, flags, next)| RawDescriptor {
            addr,
            len,
            flags,
            next,
        });
    proptest::collection::vec(desc, 1..5).prop_map(|mut descs| {
        let n = descs.len();
        for d in &mut descs {
            if let RawNext::Chain(i) = d.next {
                d.next = RawNext::Chain(i % n);
            }
        }
        descs
    })
}

/// An index into the known addresses (the ports' and broadcast), or past them (random).
fn address() -> impl Strategy<Value = u8> {
    prop_oneof![0u8..4, any::<u8>()]
}

/// Hostile transmits: three frames for one raw chain; `buf` is [`noise_buffer`]'s.
pub fn hostile(buf: u64, ram_size: u64) -> impl Strategy<Value = Hostile> {
    prop_oneof![
        3 => (hostile_hdr(), address(), address(), proptest::collection::vec(any::<u8>(), 0..1600))
            .prop_map(|(hdr, dst, src, body)| Hostile::Frame { hdr, dst, src, body }),
        1 => (hostile_chain(buf, ram_size)).prop_map(Hostile::Chain),
    ]
}

/// Transmit outcomes of a port: frames passed on plus every transmit drop reason.
pub fn tx_accounted(p: &Value) -> u64 {
    let dropped: u64 = p["drops"]
        .as_object()
        .map(|d| {
            d.iter()
                .filter(|(k, _)| k.starts_with("tx_"))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0);
    counter(p, "tx_frames") + dropped
}

/// 64 KiB of pseudo-random bytes in `dev`'s guest RAM for raw chains to point into; its
/// address.
pub fn noise_buffer(dev: &NetDevice) -> u64 {
    let ram = dev.ram();
    let buf = ram.alloc(65_536, 4096).expect("scratch RAM for raw chains");
    let noise: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    ram.write(buf, &noise).expect("write the noise");
    buf
}

/// Sends `step` on `dev`'s pair 0 (`addresses` are the known ones its indices pick) and waits
/// until the device returned every transmit chain: an error if it did not, or used a head
/// twice or one it was not given.
pub fn transmit(dev: &mut NetDevice, step: Hostile, addresses: &[[u8; 6]]) -> NetResult<()> {
    let pair = dev.pair(0)?;
    match step {
        Hostile::Frame {
            hdr,
            dst,
            src,
            body,
        } => {
            let pick = |i: u8| {
                addresses
                    .get(usize::from(i))
                    .copied()
                    .unwrap_or([i & 0xfe, 0, 0, 0, 7, i])
            };
            pair.send(
                &hdr,
                &frames::ethernet(pick(dst), pick(src), ETHERTYPE, &body),
            )?;
        }
        Hostile::Chain(descs) => {
            pair.send_raw(&descs)?;
        }
    }
    pair.wait_tx_done()
}

/// A runner of `cases` cases that does not persist failures (the daemon's state is not part of
/// the input) and shrinks briefly.
pub fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 8,
        ..ProptestConfig::default()
    })
}
