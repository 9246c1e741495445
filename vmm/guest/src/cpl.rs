//! `cpl-compare=LEN`: runs the same data-touching loop (disk pattern generation over LEN bytes)
//! at CPL0 and at CPL3 and prints both times. On kvm_pvm hosts CPL0 code runs in KVM's
//! instruction emulator and CPL3 code natively; this measures the difference for the kind of
//! work the block jobs do.
//!
//! CPL3 set-up: a GDT with user code and data segments and a TSS (RSP0 = a kernel stack for
//! exceptions from CPL3), the U bit on the VMM's identity page tables, then `iretq` to the
//! user function, which ends with `ud2`; the #UD handler sees CS.RPL = 3 and resumes the
//! kernel where [`run_at_cpl3`] was called.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::ram::{Heap, Ram};
use crate::{irq, pattern, println, Fail};

/// Where the VMM put the page tables (PML4, PDPT, four page directories).
const PML4: u64 = 0x9000;
const USER_CODE: u64 = 0x20 | 3;
const USER_DATA: u64 = 0x18 | 3;
const TSS_SELECTOR: u16 = 0x28;

/// The user function's request: operation, buffer, length, seed, disk offset; and its result.
static USER_OP: AtomicU64 = AtomicU64::new(0);
static USER_BUF: AtomicU64 = AtomicU64::new(0);
static USER_LEN: AtomicU64 = AtomicU64::new(0);
static USER_SEED: AtomicU64 = AtomicU64::new(0);
static USER_OFFSET: AtomicU64 = AtomicU64::new(0);
static USER_RESULT: AtomicU64 = AtomicU64::new(0);
static READY: AtomicBool = AtomicBool::new(false);
const OP_FILL: u64 = 0;
const OP_CHECK: u64 = 1;
/// USER_RESULT of a check that found no difference.
const NO_MISMATCH: u64 = u64::MAX;

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static mut KERNEL_STACK: Stack = Stack([0; 16384]);
static mut USER_STACK: Stack = Stack([0; 16384]);
static mut GDT: [u64; 7] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00cf_f300_0000_ffff,
    0x00af_fb00_0000_ffff,
    0,
    0,
];
static mut TSS: [u8; 104] = [0; 104];

/// Kernel stack pointer saved by `enter_user`, restored by `user_done`.
#[no_mangle]
static mut SAVED_RSP: u64 = 0;

global_asm!(
    ".global enter_user",
    "enter_user:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rip + SAVED_RSP], rsp",
    "    push rdx",
    "    push rsi",
    "    push 0x2",
    "    push rcx",
    "    push rdi",
    "    iretq",
    ".global user_done",
    "user_done:",
    "    mov rsp, [rip + SAVED_RSP]",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
);

extern "C" {
    /// Enters `rip` at CPL3 on stack `rsp` with data selector `ss` and code selector `cs`;
    /// returns when the user code executes `ud2`.
    fn enter_user(rip: u64, rsp: u64, ss: u64, cs: u64);
}

/// The user function: fills or checks the buffer with the pattern, then `ud2` back to CPL0.
extern "C" fn user_entry() -> ! {
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (buf, len) = (ld(&USER_BUF), ld(&USER_LEN));
    // SAFETY: the kernel passed a buffer it owns and waits in run_at_cpl3 while this runs.
    let b = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, len as usize) };
    let (seed, offset) = (ld(&USER_SEED), ld(&USER_OFFSET));
    if ld(&USER_OP) == OP_FILL {
        pattern::fill_disk(b, seed, offset);
    } else {
        let r = pattern::check_disk(b, seed, offset).unwrap_or(NO_MISMATCH);
        USER_RESULT.store(r, Ordering::Relaxed);
    }
    // SAFETY: ud2 raises #UD, which returns to the kernel (user_done).
    unsafe { asm!("ud2", options(noreturn)) }
}

/// Sets the U bit on every present entry of the identity map and loads the GDT and TSS (once).
fn setup() {
    if READY.swap(true, Ordering::Relaxed) {
        return;
    }
    for table in 0..6u64 {
        let entries = if table == 0 {
            1
        } else if table == 1 {
            4
        } else {
            512
        };
        for i in 0..entries {
            let e = (PML4 + table * 0x1000 + i * 8) as *mut u64;
            // SAFETY: the VMM's page tables, identity-mapped; setting U keeps the mapping.
            unsafe { e.write_volatile(e.read_volatile() | 0x4) };
        }
    }
    // SAFETY: single-threaded; these statics are only touched here and by the CPU.
    unsafe {
        let stack_top = core::ptr::addr_of!(KERNEL_STACK) as u64 + 16384;
        let tss = &mut *core::ptr::addr_of_mut!(TSS);
        tss[4..12].copy_from_slice(&stack_top.to_le_bytes());
        tss[102..104].copy_from_slice(&104u16.to_le_bytes());
        let base = tss.as_ptr() as u64;
        let gdt = &mut *core::ptr::addr_of_mut!(GDT);
        gdt[5] = 103 | (base & 0xff_ffff) << 16 | 0x89 << 40 | (base >> 24 & 0xff) << 56;
        gdt[6] = base >> 32;
        let gdtr = crate::rt::TableRegister {
            limit: (7 * 8 - 1) as u16,
            base: gdt.as_ptr() as u64,
        };
        asm!(
            "lgdt [{g}]",
            "mov {t:x}, {sel:x}",
            "ltr {t:x}",
            "mov rax, cr3",
            "mov cr3, rax",
            g = in(reg) &gdtr,
            t = out(reg) _,
            sel = in(reg) TSS_SELECTOR,
            out("rax") _,
            options(nostack)
        );
    }
}

/// Runs [`user_entry`] at CPL3 and returns when it is done.
fn run_at_cpl3() {
    setup();
    let rsp = core::ptr::addr_of!(USER_STACK) as u64 + 16384 - 8;
    // SAFETY: the GDT, TSS and U bits are set up; the user function ends with ud2, which the
    // #UD handler turns into a return from enter_user.
    unsafe { enter_user(user_entry as *const () as u64, rsp, USER_DATA, USER_CODE) };
}

fn user_call(op: u64, buf: &[u8], seed: u64, offset: u64) {
    USER_OP.store(op, Ordering::Relaxed);
    USER_BUF.store(buf.as_ptr() as u64, Ordering::Relaxed);
    USER_LEN.store(buf.len() as u64, Ordering::Relaxed);
    USER_SEED.store(seed, Ordering::Relaxed);
    USER_OFFSET.store(offset, Ordering::Relaxed);
    run_at_cpl3();
}

/// [`pattern::fill_disk`] run at CPL3 (natively on kvm_pvm hosts).
pub fn fill_disk(buf: &mut [u8], seed: u64, offset: u64) {
    user_call(OP_FILL, buf, seed, offset);
}

/// [`pattern::check_disk`] run at CPL3.
pub fn check_disk(buf: &[u8], seed: u64, offset: u64) -> Option<u64> {
    user_call(OP_CHECK, buf, seed, offset);
    Some(USER_RESULT.load(Ordering::Relaxed)).filter(|&r| r != NO_MISMATCH)
}

/// Runs the comparison over `len` bytes (a multiple of 8).
pub fn compare(ram: &Ram, heap: &mut Heap, len: u64) -> Result<(), Fail> {
    let buf = heap
        .alloc(len, 4096)
        .ok_or(Fail::new("RAM exhausted, bytes", len))?;
    // SAFETY: freshly allocated, used only here.
    let b = unsafe { ram.slice_mut(buf, len as usize) }.map_err(Fail::mem)?;
    let t0 = crate::rt::rdtsc();
    pattern::fill_disk(b, 9, 0);
    let cpl0 = crate::rt::rdtsc() - t0;
    b.fill(0);
    setup();
    let t1 = crate::rt::rdtsc();
    fill_disk(b, 9, 0);
    let cpl3 = crate::rt::rdtsc() - t1;
    if pattern::check_disk(b, 9, 0).is_some() {
        return Err(Fail::new("the CPL3 fill did not write the pattern", 0));
    }
    let (us0, us3) = (irq::cycles_to_us(cpl0), irq::cycles_to_us(cpl3));
    println!(
        "pvio-guest: cpl-compare ok bytes={len} cpl0_us={us0} cpl3_us={us3} ratio={}",
        us0 / us3.max(1)
    );
    Ok(())
}
