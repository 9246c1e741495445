//! The tests' side of a Ceph cluster (`scripts/ceph-test-cluster.sh`): its configuration,
//! `rbd` commands, and RBD images that remove themselves.
//!
//! The cluster shared by the tests is named by `PVIO_CEPH_CONF` (scripts/test.sh starts one
//! and exports it). Images are named after the test process, so tests run in parallel.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable naming the shared test cluster's `ceph.conf`.
pub const CONF_ENV: &str = "PVIO_CEPH_CONF";

/// The shared test cluster's ceph.conf.
///
/// # Panics
/// [`CONF_ENV`] is not set (the message says how to start a cluster).
pub fn shared_conf() -> PathBuf {
    let conf = std::env::var_os(CONF_ENV).unwrap_or_else(|| {
        panic!(
            "{CONF_ENV}: start a test cluster with `scripts/ceph-test-cluster.sh start DIR` and \
             export {CONF_ENV}=DIR/ceph.conf (scripts/test.sh does)"
        )
    });
    PathBuf::from(conf)
}

/// Runs `rbd -c CONF ARGS` and returns its output.
///
/// # Panics
/// `rbd` cannot run or fails (the message holds its standard error).
pub fn rbd(conf: &Path, args: &[&str]) -> Output {
    rbd_with_input(conf, args, &[])
}

/// [`rbd`] with `input` on its standard input.
fn rbd_with_input(conf: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("rbd")
        .arg("-c")
        .arg(conf)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rbd (ceph-common)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input).expect("write rbd's input");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for rbd");
    assert!(
        out.status.success(),
        "rbd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Options bounding `rbd rm`'s waits for a cluster that does not answer, seconds.
const REMOVE_TIMEOUTS: [&str; 3] = [
    "--rados-osd-op-timeout=10",
    "--rados-mon-op-timeout=10",
    "--client-mount-timeout=10",
];

/// An RBD image in pool `rbd` of the cluster of `conf`, removed on drop.
#[derive(Debug)]
pub struct RbdImage {
    conf: PathBuf,
    name: String,
}

impl RbdImage {
    /// Names a new image after `tag` and this process (`rbd/TAG-PID-N`) without creating it.
    pub fn named(conf: &Path, tag: &str) -> RbdImage {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rbd/{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        RbdImage {
            conf: conf.to_path_buf(),
            name,
        }
    }

    /// Creates a new image of `bytes` bytes with the default features (exclusive-lock among
    /// them).
    pub fn create(conf: &Path, tag: &str, bytes: u64) -> RbdImage {
        let image = RbdImage::named(conf, tag);
        rbd(
            conf,
            &["create", "--size", &format!("{bytes}B"), &image.name],
        );
        image
    }

    /// `POOL/IMAGE`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's configuration file.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// backend-blk's `--image` for it: `rbd:POOL/IMAGE:conf=PATH`.
    pub fn url(&self) -> String {
        format!("rbd:{}:conf={}", self.name, self.conf.display())
    }

    /// `rbd export`s the image to the raw file `to`.
    pub fn export(&self, to: &Path) {
        let to = to.to_str().expect("a UTF-8 path");
        rbd(&self.conf, &["export", "--no-progress", &self.name, to]);
    }

    /// Writes `data` at byte `offset` through librbd (`rbd import-diff` of a one-extent diff:
    /// "rbd diff v1", an updated-data record `w` with little-endian offset and length, end
    /// `e`), taking the exclusive lock from its holder the cooperative way.
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        let mut diff = b"rbd diff v1\nw".to_vec();
        diff.extend_from_slice(&offset.to_le_bytes());
        diff.extend_from_slice(&(data.len() as u64).to_le_bytes());
        diff.extend_from_slice(data);
        diff.push(b'e');
        rbd_with_input(
            &self.conf,
            &["import-diff", "--no-progress", "-", &self.name],
            &diff,
        );
    }

    /// The image's exclusive lock holders (`rbd lock ls`): empty when nobody holds it.
    pub fn lockers(&self) -> String {
        let out = rbd(&self.conf, &["lock", "ls", "--format", "json", &self.name]);
        let text = String::from_utf8_lossy(&out.stdout);
        let list: serde_json::Value = serde_json::from_str(&text).expect("rbd lock ls json");
        match list.as_array() {
            Some(l) if l.is_empty() => String::new(),
            _ => text.trim().to_string(),
        }
    }
}

impl Drop for RbdImage {
    /// Removes the image in the background: a back-end killed at the test's end leaves its
    /// watch for librados' watch timeout (about 30 s), which `rbd rm` waits out; a cluster
    /// that is down (the OSD test) makes it give up after [`REMOVE_TIMEOUTS`]. An image left
    /// over goes with the test cluster.
    fn drop(&mut self) {
        let _ = Command::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(REMOVE_TIMEOUTS)
            .args(["rm", "--no-progress", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}
