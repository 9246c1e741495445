//! Writer for the "newc" cpio format the Linux kernel unpacks as an initramfs.
//!
//! Format (Documentation/driver-api/early-userspace/buffer-format.rst, cpio(5)): each entry is a
//! 110-byte ASCII header — the magic `070701` and thirteen 8-digit hex fields (ino, mode, uid,
//! gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check) —
//! then the NUL-terminated name padded to a multiple of 4 bytes, then the data padded likewise.
//! The archive ends with an entry named `TRAILER!!!`. The kernel accepts several archives one
//! after the other in one initramfs file, which [`crate::initramfs`] uses to add a per-run
//! `/init` to a shared base archive.

/// Mode bits of a directory (`S_IFDIR`).
const S_IFDIR: u32 = 0o040_000;
/// Mode bits of a regular file (`S_IFREG`).
const S_IFREG: u32 = 0o100_000;
/// Mode bits of a symbolic link (`S_IFLNK`).
const S_IFLNK: u32 = 0o120_000;
/// Mode bits of a character device (`S_IFCHR`).
const S_IFCHR: u32 = 0o020_000;

/// Errors while adding an entry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The newc header holds sizes as 32-bit numbers.
    #[error("{path}: {len} bytes does not fit a newc cpio entry (at most 4 GiB - 1)")]
    TooLarge {
        /// The entry's name.
        path: String,
        /// Its size in bytes.
        len: usize,
    },
}

/// Builds one newc archive in memory.
#[derive(Debug)]
pub struct NewcWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl NewcWriter {
    /// Starts an archive whose entries get inode numbers from `first_ino` up. Archives that are
    /// concatenated into one initramfs should use disjoint ranges.
    pub fn new(first_ino: u32) -> Self {
        Self {
            out: Vec::new(),
            next_ino: first_ino,
        }
    }

    /// Adds directory `path` (relative, e.g. `lib/modules`) with permission bits `perm`.
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), Error> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    /// Adds regular file `path` with permission bits `perm` and contents `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), Error> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// Adds symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), Error> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds character device node `path` with device number `major:minor`.
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), Error> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Appends the trailer and returns the archive's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 1, (0, 0), 0);
        self.out
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), Error> {
        let too_large = || Error::TooLarge {
            path: path.to_string(),
            len: data.len(),
        };
        let size = u32::try_from(data.len()).map_err(|_| too_large())?;
        let ino = self.next_ino;
        self.next_ino = self.next_ino.wrapping_add(1);
        self.header(path, ino, mode, nlink, rdev, size);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), size: u32) {
        // namesize counts the terminating NUL; names here are short paths, far below u32::MAX.
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

/// Unpacks `archive` (its first archive, up to the trailer) with busybox's cpio, a reader
/// independent of this writer, into a new folder.
#[cfg(test)]
pub(crate) fn unpack_with_busybox(archive: &[u8]) -> crate::tmp::TempDir {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = crate::tmp::TempDir::new("cpio-test").unwrap();
    let mut child = Command::new("busybox")
        .args(["cpio", "-i", "-d"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .spawn()
        .expect("busybox (busybox-static) is needed: scripts/install-deps.sh");
    child.stdin.take().unwrap().write_all(archive).unwrap();
    assert!(child.wait().unwrap().success());
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_cpio_unpacks_what_we_write() {
        let mut w = NewcWriter::new(1);
        w.dir("bin", 0o755).unwrap();
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("odd", 0o644, b"12345").unwrap();
        w.file("empty", 0o600, b"").unwrap();
        w.symlink("bin/sh", "hello").unwrap();
        let archive = w.finish();
        assert_eq!(archive.len() % 4, 0);

        let dir = unpack_with_busybox(&archive);
        assert_eq!(
            std::fs::read(dir.join("bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(dir.join("odd")).unwrap(), b"12345");
        assert_eq!(std::fs::read(dir.join("empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read_link(dir.join("bin/sh")).unwrap().to_str(),
            Some("hello")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("bin/hello"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn header_fields_are_where_the_format_puts_them() {
        let mut w = NewcWriter::new(7);
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        let archive = w.finish();
        let header = std::str::from_utf8(&archive[..110]).unwrap();
        let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
        assert_eq!(&header[..6], "070701");
        assert_eq!(field(0), 7, "ino");
        assert_eq!(field(1), S_IFCHR | 0o600, "mode");
        assert_eq!((field(9), field(10)), (5, 1), "rdev");
        assert_eq!(field(11), "dev/console".len() as u32 + 1, "namesize");
        assert_eq!(&archive[110..121], b"dev/console");
        assert!(archive.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
