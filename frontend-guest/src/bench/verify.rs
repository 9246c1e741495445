//! Verification mode: every write carries data derived from (block, version), and every read
//! of a block whose content is known is checked against it.
//!
//! A block has version 0 (content unknown: never written in this run, or a write failed) or the
//! version of its last successful write. A block with a request in flight is not picked again
//! until it completes, so the expected content is never ambiguous.

/// Fills `buf` with the content of `block` at write `version`: 8-byte little-endian words, each
/// a scramble of (block, version, word index).
pub fn fill(buf: &mut [u8], block: u64, version: u32) {
    for (i, word) in buf.chunks_mut(8).enumerate() {
        let v = word_value(block, version, i as u64).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

fn word_value(block: u64, version: u32, word: u64) -> u64 {
    super::pattern::mix(block.rotate_left(24) ^ (u64::from(version) << 40) ^ word ^ 0x5056_494f)
}

/// Byte offset of the first byte of `buf` that differs from the content of `block` at
/// `version`, if any.
pub fn first_mismatch(buf: &[u8], block: u64, version: u32) -> Option<usize> {
    buf.chunks(8).enumerate().find_map(|(i, word)| {
        let v = word_value(block, version, i as u64).to_le_bytes();
        word.iter()
            .zip(v)
            .position(|(&a, b)| a != b)
            .map(|p| i * 8 + p)
    })
}

/// The known state of one queue's region.
#[derive(Debug, Clone)]
pub struct BlockMap {
    first: u64,
    versions: Vec<u32>,
    busy: Vec<bool>,
}

impl BlockMap {
    /// A map of `len` blocks starting at block `first`, all unknown and idle.
    pub fn new(first: u64, len: u64) -> Self {
        let n = len as usize;
        BlockMap {
            first,
            versions: vec![0; n],
            busy: vec![false; n],
        }
    }

    fn slot(&self, block: u64) -> usize {
        (block - self.first) as usize
    }

    /// Whether `block` has a request in flight.
    pub fn is_busy(&self, block: u64) -> bool {
        self.busy[self.slot(block)]
    }

    /// Marks a read of `block` in flight; returns the version its content must match (0 if
    /// unknown).
    pub fn start_read(&mut self, block: u64) -> u32 {
        let s = self.slot(block);
        self.busy[s] = true;
        self.versions[s]
    }

    /// Marks a write of `block` in flight; returns the version to write. Until the write
    /// completes the block's content is unknown.
    pub fn start_write(&mut self, block: u64) -> u32 {
        let s = self.slot(block);
        self.busy[s] = true;
        let next = self.versions[s].wrapping_add(1).max(1);
        self.versions[s] = 0;
        next
    }

    /// Ends the request on `block`; a successful write makes `version` its known content.
    pub fn finish(&mut self, block: u64, write: Option<(u32, bool)>) {
        let s = self.slot(block);
        self.busy[s] = false;
        if let Some((version, ok)) = write {
            self.versions[s] = if ok { version } else { 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_check_round_trips_and_detects_change() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 77, 3);
        assert_eq!(first_mismatch(&buf, 77, 3), None);
        assert_eq!(first_mismatch(&buf, 77, 4), Some(0));
        assert_eq!(first_mismatch(&buf, 78, 3), Some(0));
        buf[1234] ^= 1;
        assert_eq!(first_mismatch(&buf, 77, 3), Some(1234));
    }

    #[test]
    fn blocks_differ_from_each_other() {
        let (mut a, mut b) = (vec![0u8; 512], vec![0u8; 512]);
        fill(&mut a, 1, 1);
        fill(&mut b, 2, 1);
        assert_ne!(a, b);
    }

    #[test]
    fn odd_lengths_are_filled_whole() {
        let mut buf = vec![0u8; 13];
        fill(&mut buf, 5, 9);
        assert_eq!(first_mismatch(&buf, 5, 9), None);
    }

    #[test]
    fn versions_follow_successful_writes() {
        let mut m = BlockMap::new(100, 4);
        assert_eq!(m.start_read(101), 0);
        assert!(m.is_busy(101));
        m.finish(101, None);
        let v = m.start_write(101);
        assert_eq!(v, 1);
        m.finish(101, Some((v, true)));
        assert!(!m.is_busy(101));
        assert_eq!(m.start_read(101), 1);
        m.finish(101, None);
        let v = m.start_write(101);
        assert_eq!(v, 2);
        m.finish(101, Some((v, false)));
        assert_eq!(
            m.start_read(101),
            0,
            "a failed write leaves the content unknown"
        );
    }
}
