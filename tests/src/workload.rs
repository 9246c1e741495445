//! Verified random I/O through a mock front-end queue, for any back-end storage.
//!
//! [`random_io`] keeps up to `depth` requests in flight on a frontend-guest [`BlkQueue`]
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
const MAX_SECTORS: u64 = 64;

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

/// What an in-flight request was.
enum Kind {
    Write(Vec<u8>),
    Read,
    Zeroes,
    Discard,
}

/// Runs `ops` random requests at up to `depth` in flight on `q` over a disk whose content is
/// `model`, checking each read and then the whole disk; discards and write zeroes only when
/// the device offers them. Panics (naming the seed and request) on any mismatch or failure.
pub fn random_io(
    q: &mut BlkQueue,
    model: &mut DiskModel,
    ops: u32,
    depth: usize,
    seed: u64,
    zeroes: (bool, bool),
) {
    const TIMEOUT: Duration = Duration::from_secs(60);
    let (can_discard, can_zero) = zeroes;
    let sectors = model.known.len() as u64;
    let mut rng = Rng(seed | 1);
    let mut flight: Vec<(frontend_guest::host::Token, u64, u64, Kind)> = Vec::new();
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
            let seg = [DiscardSegment {
                sector: start,
                num_sectors: len as u32,
                flags: 0,
            }];
            let token = match &kind {
                Kind::Write(data) => q.submit_write(start, data),
                Kind::Read => q.submit_read(start, len as u32 * SECTOR as u32),
                Kind::Zeroes => q.submit_write_zeroes(&seg),
                Kind::Discard => q.submit_discard(&seg),
            };
            let Ok(token) = token else { break };
            flight.push((token, start, len, kind));
            issued += 1;
        }
        let c = q
            .wait_completion(TIMEOUT)
            .unwrap_or_else(|e| panic!("seed {seed}: completion: {e}"));
        let at = flight
            .iter()
            .position(|f| f.0 == c.token)
            .expect("completion of a request in flight");
        let (_, start, len, kind) = flight.swap_remove(at);
        assert_eq!(
            c.status,
            Some(BlkStatus::Ok),
            "seed {seed}: request at sector {start} (+{len})"
        );
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
                model.mismatch(start, &c.data),
                None,
                "seed {seed}: read at sector {start} (+{len})"
            ),
        }
    }
    check_disk(q, model, seed);
}

/// Reads the whole disk through `q` and compares it with `model`.
pub fn check_disk(q: &mut BlkQueue, model: &DiskModel, seed: u64) {
    let chunk = 128u64;
    let sectors = model.known.len() as u64;
    for first in (0..sectors).step_by(chunk as usize) {
        let n = chunk.min(sectors - first);
        let (status, data) = q
            .read(first, (n as usize * SECTOR) as u32)
            .unwrap_or_else(|e| panic!("seed {seed}: read back at {first}: {e}"));
        assert_eq!(status, BlkStatus::Ok, "seed {seed}: read back at {first}");
        assert_eq!(
            model.mismatch(first, &data),
            None,
            "seed {seed}: disk content after the workload"
        );
    }
}
