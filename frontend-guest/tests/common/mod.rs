//! Test fixtures: per-test temporary directories, disk images and a qemu-storage-daemon
//! serving one as a vhost-user-blk back-end.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory removed on drop, unique per process and call.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pvio-fe-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates an image of `bytes` bytes where each 512-byte sector is filled with a pattern
/// derived from its number, so misplaced data shows.
pub fn make_image(path: &Path, bytes: u64) {
    let f = File::create(path).expect("create image");
    f.set_len(bytes).expect("size image");
    let sectors = bytes / 512;
    let mut buf = Vec::with_capacity(bytes as usize);
    for s in 0..sectors {
        buf.extend(sector_pattern(s));
    }
    f.write_all_at(&buf, 0).expect("fill image");
}

/// The initial content of sector `s` of [`make_image`].
pub fn sector_pattern(s: u64) -> Vec<u8> {
    (0..512u64)
        .map(|i| ((s * 7 + i * 13) % 251) as u8)
        .collect()
}

/// Reads `len` bytes at `offset` from a file.
pub fn read_file_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path)
        .expect("open image")
        .read_exact_at(&mut buf, offset)
        .expect("read image");
    buf
}

/// Writes `data` at `offset` into a file.
pub fn write_file_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    f.write_all_at(data, offset).expect("write image");
    f.sync_all().expect("sync image");
}

/// Distinct test data of `len` bytes seeded by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A qemu-storage-daemon exporting an image as vhost-user-blk; killed on drop.
pub struct Qsd {
    child: Child,
    pub socket: PathBuf,
}

impl Qsd {
    pub fn start(dir: &Path, image: &Path, writable: bool, num_queues: u16) -> Self {
        let socket = dir.join("vub.sock");
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={},discard=unmap",
                image.display()
            ))
            .arg("--blockdev")
            .arg("driver=raw,node-name=disk0,file=file0,discard=unmap")
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable={},num-queues={num_queues}",
                socket.display(),
                if writable { "on" } else { "off" }
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn qemu-storage-daemon (is qemu-system-common installed?)");
        Qsd { child, socket }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
