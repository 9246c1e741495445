//! Helpers for pvio's workspace-level end-to-end tests: locating (and building) the workspace's
//! binaries, building guest initramfs images and running QEMU guests.

pub mod bins;
