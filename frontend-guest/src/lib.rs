//! The guest side of pvio: a virtio driver core and a vhost-user front-end host that runs it
//! without a VM.
//!
//! The driver core is `no_std`, allocation-free and OS-free, so the same code can later run in
//! pvio's own guest:
//! - [`mem`]: the [`GuestRam`] trait through which the driver reads and writes guest memory,
//!   including the ordered 16-bit loads and stores used to publish and observe ring indices.
//! - [`virtq`]: a split virtqueue driver (virtio 1.2 §2.7): ring layout, descriptor free list,
//!   direct and indirect descriptor chains, deliberately malformed raw chains for tests, available
//!   ring publication with notification suppression (`VIRTIO_F_EVENT_IDX`,
//!   `VIRTQ_USED_F_NO_NOTIFY`) and used ring polling.
//! - [`blk`]: virtio-blk requests (virtio 1.2 §5.2): request header, discard / write-zeroes
//!   segments, status byte, device configuration layout and feature bits.
//!
//! With the default `std` feature, [`host`] adds a vhost-user front-end (vhost-user.rst): it
//! connects to a back-end's unix socket, shares memfd-backed guest RAM, sets up the vrings and
//! drives virtio-blk queues with the driver core ([`host::BlkDevice`]). Protocol tests and the
//! load generator use it to exercise any vhost-user-blk back-end (pvio's backend-blk,
//! qemu-storage-daemon).
//!
//! With the `bench` feature (default), [`bench`] is that load generator, run as
//! `frontend-guest bench blk --socket PATH ...`.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

pub mod blk;
pub mod mem;
pub mod net;
pub mod virtq;

#[cfg(feature = "std")]
pub mod host;

#[cfg(feature = "bench")]
pub mod bench;

pub use mem::{GuestRam, MemError};
pub use virtq::{
    Buffer, Descriptor, QueueLayout, RawDescriptor, RawNext, SplitQueue, Used, VirtqError,
};
