//! Verified random I/O through a vhost-user-blk front-end, for any back-end storage.
//!
//! [`random_io`] keeps up to `depth` requests in flight on a [`Client`] queue: frontend-guest's
//! mock front-end ([`BlkQueue`]) or another one, such as libblkio's, that the tests wrap
//! (writes of random data, reads, write zeroes, discards of 1 to 64 sectors at random,
//! never two in flight on overlapping sectors, so every result is defined), checks every read
//! against a model of the disk, then reads the whole disk back and checks it too. A discarded
//! sector's content is unspecified (virtio 1.2 §5.2.6.2) until it is written again. The
//! returned [`DiskModel`] lets the caller check the storage itself (the backing file, `rbd
//! export`).

use std::time::Duration;

use frontend_guest::blk::{BlkStatus, DiscardSegment};
use frontend_guest::host::BlkQueue;

/// Sector size, bytes.
const SECTOR: usize = 512;
/// Largest request, 512-byte sectors.
pub const MAX_SECTORS: u64 = 64;
/// How long a completion may take (a loaded 2-core machine, a network disk).
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the disk must hold after a workload.
#[derive(Debug, Clone)]
pub struct DiskModel {
    /// Expected bytes.
    pub bytes: Vec<u8>,
    /// Per sector: whether its content is defined (false after a discard).
    pub known: Vec<bool>,
}

impl DiskModel {
    /// A disk of `sectors` sectors holding `initial` (its length must be `sectors * 512`), all
    /// known.
    pub fn new(initial: Vec<u8>) -> DiskModel {
        let sectors = initial.len() / SECTOR;
        DiskModel {
            bytes: initial,
            known: vec![true; sectors],
        }
    }

    /// The first sector where `actual` differs from the model (unknown sectors skipped),
    /// counting from `first`.
    pub fn mismatch(&self, first: u64, actual: &[u8]) -> Option<u64> {
        actual
            .chunks(SECTOR)
            .zip(first..)
            .find(|&(data, s)| {
                let s = s as usize;
                self.known[s] && data != &self.bytes[s * SECTOR..s * SECTOR + data.len()]
            })
            .map(|(_, s)| s)
    }
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One request of the workload, on the sectors its submission names.
#[derive(Debug)]
pub enum Kind {
    /// Write these bytes (a whole number of sectors).
    Write(Vec<u8>),
    /// Read the sectors.
    Read,
    /// VIRTIO_BLK_T_WRITE_ZEROES (the device may deallocate).
    Zeroes,
    /// VIRTIO_BLK_T_DISCARD.
    Discard,
}

/// One queue of a vhost-user-blk front-end that [`random_io`] drives.
pub trait Client {
    /// Tells this queue's requests apart.
    type Token: PartialEq + std::fmt::Debug;
    /// Submits `kind` on the `len` sectors (at most [`MAX_SECTORS`]) from sector `start`;
    /// `None` when the queue has no room for it now.
    fn submit(&mut self, start: u64, len: u64, kind: &Kind) -> Option<Self::Token>;
    /// Waits up to `timeout` for the next completion: its token (`None` when none came) and,
    /// when it succeeded, the bytes read (empty for other requests), or else what went wrong
    /// (the request's status, no completion in time).
    fn complete(&mut self, timeout: Duration) -> (Option<Self::Token>, Result<Vec<u8>, String>);
}

impl Client for BlkQueue {
    type Token = frontend_guest::host::Token;

    fn submit(&mut self, start: u64, len: u64, kind: &Kind) -> Option<Self::Token> {
        let seg = [DiscardSegment {
            sector: start,
            num_sectors: len as u32,
            flags: 0,
        }];
        match kind {
            Kind::Write(data) => self.submit_write(start, data),
            Kind::Read => self.submit_read(start, len as u32 * SECTOR as u32),
            Kind::Zeroes => self.submit_write_zeroes(&seg),
            Kind::Discard => self.submit_discard(&seg),
        }
        .ok()
    }

    fn complete(&mut self, timeout: Duration) -> (Option<Self::Token>, Result<Vec<u8>, String>) {
        match self.wait_completion(timeout) {
            Ok(c) if c.status == Some(BlkStatus::Ok) => (Some(c.token), Ok(c.data)),
            Ok(c) => (Some(c.token), Err(format!("status {:?}", c.status))),
            Err(e) => (None, Err(format!("completion: {e}"))),
        }
    }
}

/// Runs `ops` random requests at up to `depth` in flight on `q` over a disk whose content is
/// `model`, checking each read and then the whole disk; discards and write zeroes only when
/// the device offers them. Panics (naming the seed and request) on any mismatch or failure.
pub fn random_io<C: Client>(
    q: &mut C,
    model: &mut DiskModel,
    ops: u32,
    depth: usize,
    seed: u64,
    zeroes: (bool, bool),
) {
    let (can_discard, can_zero) = zeroes;
    let sectors = model.known.len() as u64;
    let mut rng = Rng(seed | 1);
    let mut flight: Vec<(C::Token, u64, u64, Kind)> = Vec::new();
    let mut issued = 0;
    while issued < ops || !flight.is_empty() {
        while issued < ops && flight.len() < depth {
            let len = 1 + rng.below(MAX_SECTORS.min(sectors));
            let start = rng.below(sectors - len + 1);
            if flight
                .iter()
                .any(|f| start < f.1 + f.2 && f.1 < start + len)
            {
                break;
            }
            let kind = match rng.below(10) {
                0..=3 => Kind::Write(
                    (0..len as usize * SECTOR)
                        .map(|_| rng.next() as u8)
                        .collect(),
                ),
                4 if can_zero => Kind::Zeroes,
                5 if can_discard => Kind::Discard,
                _ => Kind::Read,
            };
            let Some(token) = q.submit(start, len, &kind) else {
                break;
            };
            flight.push((token, start, len, kind));
            issued += 1;
        }
        let (token, result) = q.complete(TIMEOUT);
        let at = flight
            .iter()
            .position(|f| Some(&f.0) == token.as_ref())
            .unwrap_or_else(|| panic!("seed {seed}: {token:?} is not in flight: {result:?}"));
        let (_, start, len, kind) = flight.swap_remove(at);
        let data = result
            .unwrap_or_else(|e| panic!("seed {seed}: {kind:?} at sector {start} (+{len}): {e}"));
        let range = start as usize * SECTOR..(start + len) as usize * SECTOR;
        let known = start as usize..(start + len) as usize;
        match kind {
            Kind::Write(data) => {
                model.bytes[range].copy_from_slice(&data);
                model.known[known].fill(true);
            }
            Kind::Zeroes => {
                model.bytes[range].fill(0);
                model.known[known].fill(true);
            }
            Kind::Discard => model.known[known].fill(false),
            Kind::Read => assert_eq!(
                model.mismatch(start, &data),
                None,
                "seed {seed}: read at sector {start} (+{len})"
            ),
        }
    }
    check_disk(q, model, seed);
}

/// Reads the whole disk through `q`, one request of [`MAX_SECTORS`] at a time, and compares
/// it with `model`.
pub fn check_disk<C: Client>(q: &mut C, model: &DiskModel, seed: u64) {
    let sectors = model.known.len() as u64;
    for first in (0..sectors).step_by(MAX_SECTORS as usize) {
        let n = MAX_SECTORS.min(sectors - first);
        let sent = q.submit(first, n, &Kind::Read);
        assert!(
            sent.is_some(),
            "seed {seed}: cannot submit a read at {first}"
        );
        let data = q
            .complete(TIMEOUT)
            .1
            .unwrap_or_else(|e| panic!("seed {seed}: read back at {first}: {e}"));
        assert_eq!(
            model.mismatch(first, &data),
            None,
            "seed {seed}: disk content after the workload"
        );
    }
}
