//! I/O pattern generation: which operation at which block, per queue.
//!
//! The device's first `size` bytes are cut into blocks of `bs` bytes; queue `q` of `n` owns the
//! contiguous region of blocks `[q * blocks / n, (q + 1) * blocks / n)`, so queues never touch
//! the same block (needed by the verification mode) and sequential workloads stay sequential per
//! queue, like fio jobs with `offset_increment`.

use std::fmt;
use std::str::FromStr;

/// The workload, with fio's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwMode {
    /// Uniformly random reads.
    RandRead,
    /// Uniformly random writes.
    RandWrite,
    /// Sequential reads, wrapping at the region's end.
    Read,
    /// Sequential writes, wrapping at the region's end.
    Write,
    /// Uniformly random, half reads and half writes.
    RandRw,
}

impl RwMode {
    /// fio's name of the workload.
    pub fn name(self) -> &'static str {
        match self {
            RwMode::RandRead => "randread",
            RwMode::RandWrite => "randwrite",
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::RandRw => "randrw",
        }
    }

    fn random(self) -> bool {
        matches!(self, RwMode::RandRead | RwMode::RandWrite | RwMode::RandRw)
    }
}

impl fmt::Display for RwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RwMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            RwMode::RandRead,
            RwMode::RandWrite,
            RwMode::Read,
            RwMode::Write,
            RwMode::RandRw,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("unknown workload {s:?}: randread|randwrite|read|write|randrw"))
    }
}

/// One operation to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// True for a write (VIRTIO_BLK_T_OUT), false for a read (VIRTIO_BLK_T_IN).
    pub write: bool,
    /// Block index on the device (byte offset = block * bs).
    pub block: u64,
}

/// splitmix64: a small, fast, seedable generator (not for cryptography).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
}

/// splitmix64's output function: a bijective scramble of `z`.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The operation stream of one queue.
#[derive(Debug, Clone)]
pub struct Pattern {
    mode: RwMode,
    first: u64,
    len: u64,
    next_seq: u64,
    rng: Rng,
}

impl Pattern {
    /// The pattern of queue `queue` of `queues` over `blocks` blocks; `None` if that queue's
    /// region would be empty (fewer blocks than queues).
    pub fn new(mode: RwMode, blocks: u64, queue: u16, queues: u16, seed: u64) -> Option<Self> {
        let (q, n) = (u64::from(queue), u64::from(queues.max(1)));
        let first = q * blocks / n;
        let end = (q + 1) * blocks / n;
        (end > first).then(|| Pattern {
            mode,
            first,
            len: end - first,
            next_seq: 0,
            rng: Rng::new(seed ^ mix(q + 1)),
        })
    }

    /// First block of this queue's region and its length in blocks.
    pub fn region(&self) -> (u64, u64) {
        (self.first, self.len)
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let r = self.rng.next_u64();
        let block = if self.mode.random() {
            self.first + r % self.len
        } else {
            let b = self.first + self.next_seq;
            self.next_seq = (self.next_seq + 1) % self.len;
            b
        };
        let write = match self.mode {
            RwMode::RandRead | RwMode::Read => false,
            RwMode::RandWrite | RwMode::Write => true,
            // The top bit is independent of the low bits used for the block.
            RwMode::RandRw => r >> 63 == 1,
        };
        Op { write, block }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_partition_the_device() {
        let blocks = 1001;
        let mut next = 0;
        for q in 0..3 {
            let p = Pattern::new(RwMode::Read, blocks, q, 3, 1).unwrap();
            let (first, len) = p.region();
            assert_eq!(first, next);
            next = first + len;
        }
        assert_eq!(next, blocks);
        assert!(Pattern::new(RwMode::Read, 1, 0, 2, 1).is_none());
    }

    #[test]
    fn sequential_walks_and_wraps() {
        let mut p = Pattern::new(RwMode::Write, 10, 1, 2, 7).unwrap();
        let blocks: Vec<u64> = (0..7).map(|_| p.next_op().block).collect();
        assert_eq!(blocks, [5, 6, 7, 8, 9, 5, 6]);
        assert!((0..10).all(|_| p.next_op().write));
    }

    #[test]
    fn random_stays_in_region_and_covers_it() {
        let mut p = Pattern::new(RwMode::RandRead, 64, 1, 4, 42).unwrap();
        let mut seen = [false; 16];
        for _ in 0..2000 {
            let op = p.next_op();
            assert!(!op.write);
            assert!((16..32).contains(&op.block), "{}", op.block);
            seen[(op.block - 16) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn randrw_mixes_about_half() {
        let mut p = Pattern::new(RwMode::RandRw, 1 << 20, 0, 1, 3).unwrap();
        let writes = (0..10_000).filter(|_| p.next_op().write).count();
        assert!((4500..5500).contains(&writes), "{writes}");
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let ops = |seed| {
            let mut p = Pattern::new(RwMode::RandRw, 1 << 30, 0, 1, seed).unwrap();
            (0..32).map(|_| p.next_op()).collect::<Vec<_>>()
        };
        assert_eq!(ops(9), ops(9));
        assert_ne!(ops(9), ops(10));
    }

    #[test]
    fn parses_fio_names() {
        for m in ["randread", "randwrite", "read", "write", "randrw"] {
            assert_eq!(m.parse::<RwMode>().unwrap().name(), m);
        }
        assert!("randomread".parse::<RwMode>().is_err());
    }
}
