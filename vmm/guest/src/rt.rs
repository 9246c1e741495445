//! The runtime under everything: entry, memory functions, port I/O, the serial console, exit
//! through the debug port, the panic handler.
//!
//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp` are ours (the precompiled ones carry SSE
//! code, which KVM's emulator cannot run at CPL0): string instructions and plain byte loops.

use core::arch::{asm, global_asm};
use core::fmt;

/// Shared with the VMM, which uses the encoding half.
#[allow(dead_code)]
#[path = "../../src/boot_info.rs"]
pub mod boot_info;

global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    mov rsp, offset __stack_top",
    "    xor ebp, ebp",
    "    call guest_main",
    "2:  cli",
    "    hlt",
    "    jmp 2b",
    ".text",
);

/// Copies `n` bytes: `rep movsq` for the 8-byte words, `rep movsb` for the rest (KVM's
/// emulator runs a `rep` string instruction one iteration at a time, so fewer, wider
/// iterations matter at CPL0).
///
/// # Safety
/// As C's memcpy.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller passes valid, non-overlapping ranges of n bytes; movsq then movsb
    // cover exactly n bytes, rdi and rsi advancing across both.
    unsafe {
        asm!("rep movsq", "mov rcx, {tail}", "rep movsb",
             tail = in(reg) n % 8,
             inout("rcx") n / 8 => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// Copies `n` bytes between possibly overlapping ranges.
///
/// # Safety
/// As C's memmove.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dst is below src or past its end.
        return unsafe { memcpy(dst, src, n) };
    }
    let mut i = n;
    while i > 0 {
        i -= 1;
        // SAFETY: i < n, within both ranges; volatile keeps this a plain loop.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
    dst
}

/// Fills `n` bytes with `c` (`rep stosb`).
///
/// # Safety
/// As C's memset.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller passes a valid range of n bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// Compares `n` bytes.
///
/// # Safety
/// As C's memcmp.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n, within both ranges.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Compares `n` bytes for equality.
///
/// # Safety
/// As C's bcmp.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The operand of `lgdt` / `lidt`: table limit (bytes - 1) and base address.
#[repr(C, packed)]
pub struct TableRegister {
    /// Bytes of the table minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

/// `out port, al`.
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O at CPL0 has no memory effects.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

/// `out port, eax`.
pub fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads a counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(hi) << 32 | u64::from(lo)
}

/// A 32-bit MMIO read.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the address is a device register window the VMM described, identity-mapped.
    unsafe { (addr as *const u32).read_volatile() }
}

/// A 32-bit MMIO write.
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as mmio_read32.
    unsafe { (addr as *mut u32).write_volatile(v) }
}

/// The 16550 console; every byte is one port write.
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            outb(boot_info::SERIAL_PORT, b);
        }
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::rt::Console, $($arg)*);
    }};
}

/// Ends the VM: the VMM exits with `status`.
pub fn exit(status: u32) -> ! {
    outl(boot_info::DEBUG_EXIT_PORT, status);
    loop {
        // SAFETY: halting with interrupts off ends execution here.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// Exit status for a guest-detected failure.
pub const EXIT_FAILURE: u32 = 1;
/// Exit status for a panic or CPU exception.
pub const EXIT_CRASH: u32 = 3;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => println!("pvio-guest: panic at {}:{}", l.file(), l.line()),
        None => println!("pvio-guest: panic"),
    }
    exit(EXIT_CRASH)
}
