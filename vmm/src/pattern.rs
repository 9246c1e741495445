//! The data patterns pvio's guest and the tests agree on (this file uses `core` only; the
//! guest includes it).
//!
//! A disk pattern is a function of a seed and the byte offset on the disk, 8 bytes at a time,
//! so any block can be written or checked on its own and a block written at the wrong offset
//! or with the wrong seed does not verify. A frame payload is a function of a sequence number
//! and the byte index.

/// The little-endian 8 bytes at disk byte offset `offset` (a multiple of 8) of pattern `seed`.
pub fn disk_word(seed: u64, offset: u64) -> u64 {
    (offset ^ seed.rotate_left(40)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
}

/// Fills `buf` with pattern `seed` as it sits from disk byte offset `offset` (both multiples
/// of 8; a shorter tail is left alone).
pub fn fill_disk(buf: &mut [u8], seed: u64, offset: u64) {
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&disk_word(seed, offset + 8 * i as u64).to_le_bytes());
    }
}

/// The byte offset of the first 8-byte word of `buf` (which sits at disk offset `offset`) that
/// differs from pattern `seed`, if any.
pub fn check_disk(buf: &[u8], seed: u64, offset: u64) -> Option<u64> {
    buf.chunks_exact(8).enumerate().find_map(|(i, chunk)| {
        let at = offset + 8 * i as u64;
        let want = disk_word(seed, at).to_le_bytes();
        (chunk != want).then_some(at)
    })
}

/// Byte `index` of the payload of frame number `seq`.
pub fn frame_byte(seq: u32, index: usize) -> u8 {
    (seq.wrapping_mul(31) as usize).wrapping_add(index.wrapping_mul(7)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_depend_on_seed_and_offset() {
        let mut a = [0u8; 64];
        fill_disk(&mut a, 1, 4096);
        assert_eq!(check_disk(&a, 1, 4096), None);
        assert_eq!(check_disk(&a, 2, 4096), Some(4096));
        assert_eq!(check_disk(&a, 1, 0), Some(0));
        a[17] ^= 1;
        assert_eq!(check_disk(&a, 1, 4096), Some(4096 + 16));
        assert_ne!(disk_word(0, 0), disk_word(0, 8));
        assert_ne!(frame_byte(1, 0), frame_byte(2, 0));
    }
}
