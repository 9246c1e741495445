//! Builds the initramfs of a tiny Linux test guest: the host's Debian kernel, busybox-static,
//! that kernel's virtio modules, and an `/init` that runs a caller-given shell script.
//!
//! The initramfs is an uncompressed newc cpio ([`crate::cpio`]): the kernel takes it as is, and
//! skipping gzip makes the guest boot a little faster under TCG (no inflate in the guest) and
//! needs no compressor. An [`Initramfs`] builds the heavy part (busybox and the modules, about
//! 2 MiB) once and writes one file per guest run, the base followed by a small archive holding
//! `/init` and the caller's script.
//!
//! The `/init` mounts proc, sysfs and devtmpfs, installs the busybox applets, loads the modules
//! in the given order (see shared/REAL-CLIENTS.md: the stock kernel's virtio drivers are
//! modules), runs the script under `set -e -o pipefail`, prints `@@pvio exit <status>` and powers off.
//! Scripts report results as console lines `@@pvio <key> <value...>` ([`MARKER`]), which
//! [`crate::console::Console`] reads back.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::{self, NewcWriter};
use crate::prereq::{self, Missing};

/// Modules for a virtio-blk disk on virtio-pci, in load order (each after its dependencies).
pub const BLK_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

/// [`BLK_MODULES`] plus what virtio-net needs, in load order.
pub fn net_modules() -> Vec<&'static str> {
    [BLK_MODULES, &["failover", "net_failover", "virtio_net"]].concat()
}

/// The prefix of the console lines a guest script uses to report results: `@@pvio key value`.
pub const MARKER: &str = "@@pvio";

/// The busybox binary put into the guest (Debian's busybox-static is statically linked).
const BUSYBOX: &str = "/bin/busybox";

/// Inode numbers of the per-run archive start here, past any the base archive uses.
const INIT_ARCHIVE_FIRST_INO: u32 = 1 << 20;

/// Errors while finding the guest's pieces or writing its initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program or file is not installed.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// No `/boot/vmlinuz-*` has a matching `/lib/modules/<release>`.
    #[error(
        "no kernel found: need /boot/vmlinuz-<release> with /lib/modules/<release>; {}",
        "install linux-image-amd64 (scripts/install-deps.sh)"
    )]
    NoKernel,
    /// Reading the kernel, a module or busybox, or writing the initramfs failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (modinfo, xz, zstd) could not run or failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and standard error, or why it did not start.
        detail: String,
    },
    /// An entry does not fit the cpio format.
    #[error(transparent)]
    Cpio(#[from] cpio::Error),
}

/// A kernel image from `/boot` and its release (the `uname -r` it reports, e.g. `6.1.0-56-amd64`).
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Path of the bzImage, `/boot/vmlinuz-<release>`.
    pub image: PathBuf,
    /// The kernel release, naming `/lib/modules/<release>`.
    pub release: String,
}

impl GuestKernel {
    /// Finds the newest `/boot/vmlinuz-<release>` whose `/lib/modules/<release>` exists.
    ///
    /// # Errors
    /// [`Error::NoKernel`] when there is none.
    pub fn find() -> Result<Self, Error> {
        let entries = std::fs::read_dir("/boot").map_err(|_| Error::NoKernel)?;
        let mut releases: Vec<String> = entries
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("vmlinuz-")
                    .map(str::to_string)
            })
            .filter(|release| Path::new("/lib/modules").join(release).is_dir())
            .collect();
        releases.sort_by_key(|r| version_key(r));
        let release = releases.pop().ok_or(Error::NoKernel)?;
        Ok(Self {
            image: PathBuf::from(format!("/boot/vmlinuz-{release}")),
            release,
        })
    }

    /// The decompressed object code of module `name` (`modinfo -k <release> -n <name>` gives its
    /// file; `.ko.xz`, `.ko.zst` and `.ko.gz` are decompressed with xz, zstd or gzip).
    ///
    /// # Errors
    /// modinfo is missing or does not know the module, the file cannot be read or decompressed.
    pub fn module(&self, name: &str) -> Result<Vec<u8>, Error> {
        let modinfo = prereq::program("modinfo", "kmod")
            .or_else(|_| prereq::program("/usr/sbin/modinfo", "kmod"))?;
        let path = run(Command::new(modinfo).args(["-k", &self.release, "-n", name]))?;
        let path = PathBuf::from(String::from_utf8_lossy(&path).trim());
        let decompressor = match path.extension().and_then(|e| e.to_str()) {
            Some("xz") => Some(("xz", "xz-utils")),
            Some("zst") => Some(("zstd", "zstd")),
            Some("gz") => Some(("gzip", "gzip")),
            _ => None,
        };
        match decompressor {
            Some((program, package)) => run(Command::new(prereq::program(program, package)?)
                .arg("-dc")
                .arg(&path)),
            None => std::fs::read(&path).map_err(|source| Error::Io { path, source }),
        }
    }
}

/// The guest's initramfs: busybox and a set of modules, to which each run adds its script.
#[derive(Debug, Clone)]
pub struct Initramfs {
    base: Vec<u8>,
    modules: Vec<String>,
}

impl Initramfs {
    /// Packs `/bin/busybox`, a `/dev/console` node and `kernel`'s `modules` (load order) into the
    /// base archive.
    ///
    /// # Errors
    /// busybox or a module is missing or unreadable.
    pub fn new(kernel: &GuestKernel, modules: &[&str]) -> Result<Self, Error> {
        let busybox_path = prereq::file(Path::new(BUSYBOX), "busybox-static")?;
        let busybox = std::fs::read(&busybox_path).map_err(|source| Error::Io {
            path: busybox_path,
            source,
        })?;
        let mut w = NewcWriter::new(1);
        for dir in ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"] {
            w.dir(dir, 0o755)?;
        }
        w.char_device("dev/console", 0o600, 5, 1)?;
        w.file("bin/busybox", 0o755, &busybox)?;
        w.symlink("bin/sh", "busybox")?;
        for name in modules {
            w.file(
                &format!("lib/modules/{name}.ko"),
                0o644,
                &kernel.module(name)?,
            )?;
        }
        Ok(Self {
            base: w.finish(),
            modules: modules.iter().map(|m| m.to_string()).collect(),
        })
    }

    /// Writes the initramfs file `path`: the base plus an `/init` that runs `script` (busybox
    /// `sh` syntax, run with `set -e -o pipefail`) after the guest is set up, then powers the guest off.
    ///
    /// # Errors
    /// `path` cannot be written.
    pub fn write(&self, path: &Path, script: &str) -> Result<(), Error> {
        let mut w = NewcWriter::new(INIT_ARCHIVE_FIRST_INO);
        w.file("init", 0o755, self.init_script().as_bytes())?;
        w.file("script.sh", 0o644, script.as_bytes())?;
        let mut bytes = self.base.clone();
        bytes.extend_from_slice(&w.finish());
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    fn init_script(&self) -> String {
        let modules = self.modules.join(" ");
        format!(
            r#"#!/bin/sh
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do
    insmod /lib/modules/$m.ko || {{ echo "{MARKER} insmod-failed $m"; poweroff -f; }}
done
echo "{MARKER} booted $(cut -d' ' -f1 /proc/uptime)"
(set -e -o pipefail; . /script.sh)
echo "{MARKER} exit $?"
poweroff -f
"#
        )
    }
}

/// A sort key that orders kernel releases by their numbers: `6.1.0-9` before `6.1.0-56`.
fn version_key(release: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut rest = release;
    while !rest.is_empty() {
        let text_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (text, tail) = rest.split_at(text_len);
        let digits_len = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (digits, tail) = tail.split_at(digits_len);
        key.push((text.to_string(), digits.parse().unwrap_or(0)));
        rest = tail;
    }
    key
}

/// Runs `cmd` and returns its standard output, or an error with its status and standard error.
fn run(cmd: &mut Command) -> Result<Vec<u8>, Error> {
    let command = format!("{cmd:?}");
    let output = cmd.output().map_err(|e| Error::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let detail = format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Err(Error::Command { command, detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_sort_by_number() {
        let mut r = vec![
            "6.1.0-56-amd64",
            "6.1.0-9-amd64",
            "5.10.0-30-amd64",
            "6.10.0-1-amd64",
        ];
        r.sort_by_key(|r| version_key(r));
        assert_eq!(
            r,
            [
                "5.10.0-30-amd64",
                "6.1.0-9-amd64",
                "6.1.0-56-amd64",
                "6.10.0-1-amd64"
            ]
        );
    }

    #[test]
    fn initramfs_holds_busybox_modules_and_the_script() {
        let kernel = GuestKernel::find().unwrap();
        let initramfs = Initramfs::new(&kernel, &["virtio_ring", "virtio"]).unwrap();
        let dir = crate::tmp::TempDir::new("initramfs-test").unwrap();
        initramfs
            .write(&dir.join("initrd"), "echo hello\n")
            .unwrap();
        let bytes = std::fs::read(dir.join("initrd")).unwrap();
        // The base archive, then the per-run one; each unpacks on its own.
        assert!(bytes.starts_with(&initramfs.base));
        let base = crate::cpio::unpack_with_busybox(&initramfs.base);
        let busybox = std::fs::read(base.join("bin/busybox")).unwrap();
        assert_eq!(busybox, std::fs::read(BUSYBOX).unwrap());
        let module = std::fs::read(base.join("lib/modules/virtio_ring.ko")).unwrap();
        assert!(module.starts_with(b"\x7fELF"), "decompressed module object");
        assert!(base.join("lib/modules/virtio.ko").is_file());
        let per_run = crate::cpio::unpack_with_busybox(&bytes[initramfs.base.len()..]);
        assert_eq!(
            std::fs::read(per_run.join("script.sh")).unwrap(),
            b"echo hello\n"
        );
        let init = std::fs::read_to_string(per_run.join("init")).unwrap();
        assert!(
            init.starts_with("#!/bin/sh\n") && init.contains("for m in virtio_ring virtio; do")
        );
    }

    #[test]
    fn every_listed_module_exists_for_the_kernel() {
        let kernel = GuestKernel::find().unwrap();
        for name in net_modules() {
            assert!(
                kernel.module(name).unwrap().starts_with(b"\x7fELF"),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_module_is_an_error() {
        let kernel = GuestKernel::find().unwrap();
        let err = kernel.module("pvio_no_such_module").unwrap_err();
        assert!(matches!(err, Error::Command { .. }), "{err}");
    }
}
