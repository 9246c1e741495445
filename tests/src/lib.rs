//! Helpers for pvio's workspace-level end-to-end tests and the demo: locating (and building) the
//! workspace's binaries, starting vhost-user-blk back-ends, building guest initramfs images and
//! running Linux guests under QEMU.
//!
//! A guest test goes: [`image`] makes a disk image, [`backend`] serves it on a socket,
//! [`initramfs`] packs a busybox guest whose `/init` runs a shell script, [`qemu`] boots it
//! with a vhost-user-blk disk, and [`console`] reads the `@@pvio key value` lines the script
//! printed; [`guest::GuestKit`] ties the guest side together. [`demo`] is the README's main
//! job built from the same parts; [`migration`] moves a running guest between two QEMU processes.
//! [`netdisk`] and [`ceph`] serve disks from NBD servers and a Ceph test cluster.
//! [`xenstore`] runs the store for the XenBus handshake tests; [`vmm`] runs pvio's own VMM and
//! guest.

pub mod backend;
pub mod bins;
pub mod ceph;
pub mod console;
pub mod cpio;
pub mod demo;
pub mod guest;
pub mod hostile;
pub mod image;
pub mod initramfs;
pub mod migration;
pub mod netdisk;
pub mod prereq;
pub mod procstat;
pub mod qemu;
pub mod tmp;
pub mod vmm;
pub mod workload;
pub mod xenstore;

/// Turns an error into a test failure that prints it with `Display` (guest errors carry the
/// console log, which `unwrap`'s `Debug` output would squeeze into one escaped line).
pub trait OrPanic<T> {
    /// Returns the value, or panics with "`what`: `error`".
    fn or_panic(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrPanic<T> for Result<T, E> {
    #[track_caller]
    fn or_panic(self, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(e) => panic!("{what}: {e}"),
        }
    }
}
