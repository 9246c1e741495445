//! pvio's minimal KVM VMM: it runs pvio's own guest (a freestanding x86-64 program entered
//! directly in long mode) with virtio-mmio devices whose device side is a vhost-user back-end
//! (pvio's backend-blk and backend-net), wired so that no data-path access reaches the VMM:
//! doorbells are KVM ioeventfds that are the back-ends' kick eventfds, and the back-ends' call
//! eventfds are KVM irqfds into the in-kernel IOAPIC.
//!
//! - [`acpi`]: ACPI tables describing vCPUs, IOAPIC and virtio-mmio devices to Linux.
//! - [`boot_info`]: the structure telling the guest its RAM, devices and arguments.
//! - [`x86`]: GDT, identity page tables, long-mode registers.
//! - [`mmio`]: the virtio-mmio register model (virtio 1.2 §4.2.2).
//! - [`virtio`]: a virtio-mmio device served by a vhost-user back-end.
//! - [`vm`]: KVM set-up, payload loading, the vCPU loop, exit reports.
//! - [`cli`]: the `vmm run` command line.
//! - [`pattern`]: the disk and frame data patterns the guest and the tests share.
//! - [`linux`]: booting a stock Linux kernel (needs hardware virtualization).
//! - [`xenstore`]: `--xenstore`: the guest's xenstore ring, XS_INTRODUCE, the domain's devices.
//! - [`slots`]: the virtio-mmio slots, each holding a device or empty.
//! - [`hotplug`]: `--xenstore`: devices plugged into and unplugged from the running guest.
//!
//! [`GUEST_PAYLOAD`] is the path of pvio's guest as built by this crate's build script.

pub mod acpi;
pub mod boot_info;
pub mod cli;
pub mod hotplug;
pub mod linux;
pub mod mmio;
pub mod pattern;
pub mod slots;
pub mod virtio;
pub mod vm;
pub mod x86;
pub mod xenstore;

/// Path of pvio's guest payload (an ELF built by `vmm/build.rs` from `vmm/guest`).
pub const GUEST_PAYLOAD: &str = env!("PVIO_GUEST");
