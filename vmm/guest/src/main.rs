//! pvio's own guest: a freestanding x86-64 program run by pvio's VMM (`vmm run --guest`).
//!
//! It starts in 64-bit mode at CPL0 with the boot-info address in `rdi`, reads its arguments,
//! with XenStore (`vmm --xenstore`) walks each XenBus device to Connected over its xenstore
//! ring (`xs.rs`, `xenbus.rs`), probes the virtio-mmio devices the boot info lists, and runs
//! the workloads the arguments
//! name with frontend-guest's driver core (split virtqueues, virtio-blk and virtio-net
//! requests). It prints results on the serial console and ends through the debug-exit port:
//! status 0 when every job passed, 1 on a failed job, 3 on a panic or CPU exception.
//!
//! Arguments (words, in order; jobs run in the order given):
//! - `irq` (default) or `poll`: completions by interrupt (`hlt`) or by polling the used rings;
//! - `qd=N` requests in flight per queue (default 8), `bs=BYTES` per request (default 4096),
//!   `queues=N` queues to use (default: all the device has);
//! - `write=SEED@OFFSET+LEN`: write disk pattern SEED over the byte range;
//!   `verify=SEED@OFFSET+LEN`: read it back and check it; `read=OFFSET+LEN`: read only;
//!   `write-raw=OFFSET+LEN`: write without generating data (sizes take K/M suffixes);
//!   `random`: visit the blocks of every job in a scrambled order; `indirect`: put each block
//!   request in an indirect descriptor table; the disk pattern is
//!   generated and checked at CPL3 (native on kvm_pvm), or at CPL0 with `cpl0-data`;
//! - `net-send=N` / `net-recv=N`: send N frames to / receive N frames from a peer guest
//!   (stop-and-wait with acknowledgements), `frame=BYTES` payload per frame (default 256);
//! - `unplug-wait[=vbd|vif]`: wait for the back end of every XenBus device (of that kind) to
//!   ask for Closing and close the front end; `plug-wait=vbd|vif`: wait for a device of that
//!   kind to be hot-plugged into an empty slot and connect it (with XenStore, see
//!   `xenbus.rs`);
//! - `cpl-compare=LEN`: time the disk pattern loop over LEN bytes at CPL0 and at CPL3;
//! - `touch-unknown`: access an unknown port and MMIO address twice each (the VMM logs each
//!   once and goes on); `crash=sse` / `crash=triple`: fault on purpose (emulation failure,
//!   triple fault) to test the VMM's reports.
//!
//! Everything but the disk pattern loops (`cpl.rs`) runs at CPL0, which KVM's instruction
//! emulator executes on nested kvm_pvm hosts: the build disables SSE and
//! `vmm/tests/guest_isa.rs` checks the binary.
#![no_std]
#![no_main]

mod args;
mod blk;
mod cpl;
mod faults;
mod irq;
mod net;
mod ram;
mod rt;
mod virtio;
mod xenbus;
mod xs;

#[path = "../../src/pattern.rs"]
mod pattern;

use frontend_guest::{MemError, VirtqError};

use crate::args::{Args, Job};
use crate::ram::{Heap, Ram};
use crate::rt::boot_info::{BootInfo, BOOT_INFO_BYTES};
use crate::virtio::Device;

/// How completions are noticed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Sleep in `hlt` until the device's interrupt.
    Irq,
    /// Spin on the used ring.
    Poll,
}

/// A failure: what and a number.
#[derive(Clone, Copy)]
pub struct Fail {
    what: &'static str,
    value: u64,
}

impl Fail {
    /// A failure described by `what` and `value`.
    pub const fn new(what: &'static str, value: u64) -> Self {
        Fail { what, value }
    }

    /// A virtqueue error.
    pub fn virtq(e: VirtqError) -> Self {
        println!("pvio-guest: virtqueue: {e}");
        Fail::new("virtqueue error", 0)
    }

    /// A memory error.
    pub fn mem(e: MemError) -> Self {
        println!("pvio-guest: memory: {e}");
        Fail::new("guest memory error", 0)
    }
}

/// Ticks to sleep in one `hlt` at most (the LAPIC timer bounds it).
const HLT_TIMEOUT_NS: u32 = 10_000_000;

/// Waits until a used ring of `dev` may have news: re-arms used buffer notifications and
/// sleeps (interrupts) or pauses (polling).
pub fn wait_for_used(dev: &mut Device, ram: &Ram, mode: Completion) -> Result<(), Fail> {
    match mode {
        Completion::Poll => core::hint::spin_loop(),
        Completion::Irq => {
            let mut pending = false;
            for vq in dev.queues.iter_mut().flatten() {
                pending |= vq.enable_interrupts(ram).map_err(Fail::virtq)?;
            }
            if !pending {
                irq::wait(HLT_TIMEOUT_NS);
            }
        }
    }
    Ok(())
}

/// Written at the bottom of the stack at start, checked at the end: a stack that grew past
/// its 512 KiB (into the IDT and other statics below it) is reported, not silent.
const STACK_CANARY: u64 = 0x5afe_57ac_c0de_cafe;

fn stack_canary() -> *mut u64 {
    core::ptr::addr_of!(__stack_bottom) as *mut u64
}

#[no_mangle]
extern "C" fn guest_main(boot_info: u64) -> ! {
    // SAFETY: __stack_bottom is the lowest word of the stack, far below anything in use now.
    unsafe { stack_canary().write_volatile(STACK_CANARY) };
    let mut status = match run(boot_info) {
        Ok(()) => {
            println!("pvio-guest: all jobs passed");
            0
        }
        Err(f) => {
            println!("pvio-guest: FAILED: {} {:#x}", f.what, f.value);
            rt::EXIT_FAILURE
        }
    };
    // SAFETY: as above.
    if unsafe { stack_canary().read_volatile() } != STACK_CANARY {
        println!("pvio-guest: stack overflow (canary at the stack bottom overwritten)");
        status = rt::EXIT_CRASH;
    }
    rt::exit(status)
}

extern "C" {
    static __image_end: u8;
    static __stack_bottom: u8;
}

fn run(boot_info: u64) -> Result<(), Fail> {
    // SAFETY: the VMM wrote BOOT_INFO_BYTES bytes of boot info at this address.
    let raw = unsafe { &*(boot_info as *const [u8; BOOT_INFO_BYTES]) };
    // Mutable: hot-plug and unplug change which slots hold which device.
    let mut info = BootInfo::parse(raw).ok_or(Fail::new("bad boot info at", boot_info))?;
    // SAFETY: the VMM wrote cmdline_len bytes of arguments at cmdline_addr.
    let cmdline = unsafe {
        core::slice::from_raw_parts(info.cmdline_addr as *const u8, info.cmdline_len as usize)
    };
    let cmdline =
        core::str::from_utf8(cmdline).map_err(|_| Fail::new("arguments are not UTF-8", 0))?;
    let present = info.devices[..info.num_devices as usize]
        .iter()
        .filter(|d| d.device_id != 0)
        .count();
    println!(
        "pvio-guest: {} MiB RAM, {present} device(s) in {} slot(s), args: {cmdline}",
        info.mem_size >> 20,
        info.num_devices
    );
    let args = Args::parse(cmdline)?;
    irq::init();
    let ram = Ram::new(info.mem_size);
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let mut heap = Heap::new(image_end.next_multiple_of(4096), info.mem_size);
    let mut xs = xenbus::connect_all(&info)?;
    for job in args.jobs() {
        match job {
            Job::Blk(j) => args::run_blk(&info, &ram, &mut heap, &args, j)?,
            Job::Net(j) => net::run(&info, &ram, &mut heap, &args, j)?,
            Job::TouchUnknown => faults::touch_unknown(),
            Job::Crash(kind) => faults::crash(kind),
            Job::CplCompare(len) => cpl::compare(&ram, &mut heap, len)?,
            Job::UnplugWait(kind) => xenbus::wait_unplug(xs.as_mut(), &mut info, kind)?,
            Job::PlugWait(kind) => xenbus::wait_plug(xs.as_mut(), &mut info, kind)?,
        }
    }
    Ok(())
}
