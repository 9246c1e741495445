//! Raw disk images on the host side of a guest test: sparse creation, known patterns written
//! and read at byte offsets, and SHA-256 digests to compare with what the guest computed.
//!
//! Digests come from coreutils' `sha256sum`, the same algorithm as the guest's busybox
//! `sha256sum`, so host and guest compare the same lowercase hex strings.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::prereq::{self, Missing};

/// One mebibyte in bytes.
pub const MIB: u64 = 1 << 20;

/// Errors of image handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sha256sum is not installed.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// Reading or writing the image, or running sha256sum, failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// sha256sum printed something other than a digest.
    #[error("sha256sum printed {0:?}")]
    BadDigest(String),
}

/// Creates (or truncates) `path` as a sparse file of `size` bytes.
///
/// # Errors
/// The file cannot be created or sized.
pub fn create_sparse(path: &Path, size: u64) -> Result<(), Error> {
    let file = File::create(path).map_err(io_err(path))?;
    file.set_len(size).map_err(io_err(path))
}

/// Writes `data` into `path` at byte `offset` and syncs it.
///
/// # Errors
/// The file cannot be opened, written or synced.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<(), Error> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all_at(data, offset).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Reads `len` bytes of `path` from byte `offset`.
///
/// # Errors
/// The file cannot be opened or is shorter than `offset + len`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).map_err(io_err(path))?;
    Ok(buf)
}

/// `len` pseudo-random bytes determined by `seed` (xorshift64*), for patterns that no stale or
/// misplaced block can match by accident.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators").
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `data` as lowercase hex, computed by `sha256sum`.
///
/// # Errors
/// sha256sum is missing or fails.
pub fn sha256_hex(data: &[u8]) -> Result<String, Error> {
    let program = prereq::program("sha256sum", "coreutils")?;
    let err = io_err(&program);
    let mut child = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(&err)?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    // Feed stdin from a thread while this one collects stdout: neither pipe can block the other.
    // The feeder drops stdin when done, which ends sha256sum's input.
    let (output, fed) = std::thread::scope(|s| {
        let feeder = s.spawn(move || stdin.write_all(data));
        let output = child.wait_with_output();
        (output, feeder.join())
    });
    fed.expect("the stdin feeder does not panic")
        .map_err(&err)?;
    let output = output.map_err(&err)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let digest = text.split_whitespace().next().unwrap_or_default();
    if output.status.success()
        && digest.len() == 64
        && digest.bytes().all(|b| b.is_ascii_hexdigit())
    {
        Ok(digest.to_string())
    } else {
        Err(Error::BadDigest(text.into_owned()))
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tmp::TempDir;

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(
            sha256_hex(b"").unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn patterns_are_deterministic_and_differ_by_seed() {
        assert_eq!(pattern(7, 1000), pattern(7, 1000));
        assert_ne!(pattern(7, 64), pattern(8, 64));
        assert_eq!(pattern(7, 13).len(), 13);
        assert_eq!(&pattern(7, 100)[..13], &pattern(7, 13)[..]);
    }

    #[test]
    fn sparse_image_round_trip() {
        let dir = TempDir::new("image-test").unwrap();
        let path = dir.join("disk.raw");
        create_sparse(&path, 4 * MIB).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);
        let data = pattern(1, 4096);
        write_at(&path, MIB, &data).unwrap();
        assert_eq!(read_at(&path, MIB, 4096).unwrap(), data);
        assert_eq!(read_at(&path, 0, 16).unwrap(), [0; 16]);
        assert!(read_at(&path, 4 * MIB - 8, 16).is_err());
    }
}
