//! Deliberate misbehaviour, for the VMM's tests: accesses to nothing, and faults.

use core::arch::asm;

use crate::args::Crash;
use crate::println;

/// An I/O port no device answers.
const UNKNOWN_PORT: u16 = 0x510;
/// A guest-physical address in no RAM and no device window.
const UNKNOWN_MMIO: u64 = 0xe000_0000;

/// `pxor %xmm0, %xmm0; ret` as data: kept out of the code sections so the instruction-set
/// test of the payload does not see it; run only by `crash=sse`.
static SSE_CODE: [u8; 5] = [0x66, 0x0f, 0xef, 0xc0, 0xc3];

/// Reads and writes [`UNKNOWN_PORT`] and [`UNKNOWN_MMIO`] twice each.
pub fn touch_unknown() {
    let mut sum = 0u32;
    for _ in 0..2 {
        let v: u8;
        // SAFETY: port I/O has no memory effects.
        unsafe { asm!("in al, dx", in("dx") UNKNOWN_PORT, out("al") v, options(nomem, nostack)) };
        sum += u32::from(v);
        crate::rt::outb(UNKNOWN_PORT, 1);
        sum += crate::rt::mmio_read32(UNKNOWN_MMIO);
        crate::rt::mmio_write32(UNKNOWN_MMIO, 1);
    }
    println!("pvio-guest: unknown port and MMIO read {sum:#x}");
}

/// Faults as `kind` says; does not return.
pub fn crash(kind: Crash) -> ! {
    match kind {
        Crash::Sse => {
            println!("pvio-guest: running an SSE instruction at CPL0");
            // SAFETY: SSE_CODE is a complete function (pxor; ret) in identity-mapped memory
            // without NX; the point is that the emulator refuses it.
            let f: extern "C" fn() = unsafe { core::mem::transmute(SSE_CODE.as_ptr()) };
            f();
        }
        Crash::Triple => {
            println!("pvio-guest: #UD with an empty IDT");
            let idtr = [0u64; 2];
            // SAFETY: deliberately breaks interrupt delivery, then faults.
            unsafe { asm!("lidt [{}]", "ud2", in(reg) idtr.as_ptr(), options(nostack)) };
        }
    }
    crate::rt::exit(crate::rt::EXIT_FAILURE)
}
