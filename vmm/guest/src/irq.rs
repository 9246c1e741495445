//! Interrupts: the IDT, the LAPIC (and its timer), the IOAPIC, and waiting in `hlt`.
//!
//! Device interrupts arrive edge-triggered on IOAPIC inputs routed to vectors
//! [`DEVICE_VECTOR_BASE`] + i; the LAPIC timer uses [`TIMER_VECTOR`]. Their handler only
//! counts the interrupt and signals EOI: the driver finds its work in the used rings. CPU
//! exceptions print the vector and the faulting frame and end the VM. The 8259 is masked.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::println;
use crate::rt::{exit, outb, EXIT_CRASH};

/// Vector of device i's interrupt.
pub const DEVICE_VECTOR_BASE: u8 = 0x30;
/// Vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0x40;
const SPURIOUS_VECTOR: u8 = 0xff;
const LAPIC: u64 = 0xfee0_0000;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_TIMER_INIT: u64 = 0x380;
const LAPIC_TIMER_DIV: u64 = 0x3e0;
const LAPIC_TIMER_CURRENT: u64 = 0x390;
/// LAPIC timer ticks per millisecond (1 GHz APIC bus, divide by 1).
const TIMER_TICKS_PER_MS: u32 = 1_000_000;
const IOAPIC: u64 = 0xfec0_0000;

/// Interrupts taken (devices and timer), for the statistics.
#[no_mangle]
pub static IRQ_COUNT: AtomicU64 = AtomicU64::new(0);

global_asm!(
    ".global irq_stub",
    "irq_stub:",
    "    lock inc qword ptr [rip + IRQ_COUNT]",
    "    push rax",
    "    mov eax, 0xfee000b0",
    "    mov dword ptr [rax], 0",
    "    pop rax",
    "    iretq",
    ".global spurious_stub",
    "spurious_stub:",
    "    iretq",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "exc_\\n:",
    "    push \\n",
    "    jmp exc_common",
    ".endr",
    "exc_common:",
    // #UD from CPL3 (saved CS with RPL 3) is the user code's way back: see cpl.rs.
    "    cmp qword ptr [rsp], 6",
    "    jne 3f",
    "    test qword ptr [rsp + 16], 3",
    "    jz 3f",
    "    jmp user_done",
    "3:  mov rdi, [rsp]",
    "    mov rsi, [rsp + 8]",
    "    mov rdx, [rsp + 16]",
    "    mov rcx, [rsp + 24]",
    "    and rsp, -16",
    "    call guest_exception",
    ".section .rodata",
    ".balign 8",
    ".global exc_table",
    "exc_table:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad exc_\\n",
    ".endr",
    ".text",
);

extern "C" {
    fn irq_stub();
    fn spurious_stub();
    static exc_table: [u64; 32];
}

/// A CPU exception: prints what the stack holds and ends the VM. For vectors with an error
/// code, `a` is the error code and `b` the RIP; otherwise `a` is the RIP.
#[no_mangle]
extern "C" fn guest_exception(vector: u64, a: u64, b: u64, c: u64) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 at CPL0.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    println!("pvio-guest: CPU exception {vector}: stack {a:#x} {b:#x} {c:#x} cr2 {cr2:#x}");
    exit(EXIT_CRASH)
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

fn gate(handler: u64) -> (u64, u64) {
    // 64-bit interrupt gate, present, DPL 0, selector 0x08.
    let low = (handler & 0xffff) | 0x08 << 16 | 0x8e00 << 32 | (handler >> 16 & 0xffff) << 48;
    (low, handler >> 32)
}

fn lapic_write(reg: u64, v: u32) {
    crate::rt::mmio_write32(LAPIC + reg, v);
}

fn ioapic_write(reg: u32, v: u32) {
    crate::rt::mmio_write32(IOAPIC, reg);
    crate::rt::mmio_write32(IOAPIC + 0x10, v);
}

/// Loads the IDT, masks the 8259 and enables the LAPIC. Interrupts stay off (IF = 0) except
/// inside [`wait`].
pub fn init() {
    // SAFETY: single-threaded start-up; nothing else references IDT yet.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    let mut set = |vector: usize, handler: u64| {
        let (low, high) = gate(handler);
        idt.0[2 * vector] = low;
        idt.0[2 * vector + 1] = high;
    };
    // SAFETY: exc_table is an array of 32 handler addresses defined above.
    let table = unsafe { &*core::ptr::addr_of!(exc_table) };
    for (v, &h) in table.iter().enumerate() {
        set(v, h);
    }
    for v in DEVICE_VECTOR_BASE..=TIMER_VECTOR {
        set(v.into(), irq_stub as *const () as u64);
    }
    set(SPURIOUS_VECTOR.into(), spurious_stub as *const () as u64);
    let idtr = crate::rt::TableRegister {
        limit: (16 * 256 - 1) as u16,
        base: idt.0.as_ptr() as u64,
    };
    // SAFETY: the IDT is static and holds valid gates.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack)) };
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    lapic_write(LAPIC_TIMER_DIV, 0xb);
    calibrate();
}

/// Routes IOAPIC input `gsi` to vector `vector`, edge-triggered, to the boot CPU.
pub fn route(gsi: u32, vector: u8) {
    ioapic_write(0x11 + 2 * gsi, 0);
    ioapic_write(0x10 + 2 * gsi, u32::from(vector));
}

/// Sleeps in `hlt` until an interrupt arrives or about `timeout_ns` pass (LAPIC timer, 1 GHz
/// APIC bus with divide-by-1; only an upper bound matters).
pub fn wait(timeout_ns: u32) {
    lapic_write(LAPIC_LVT_TIMER, u32::from(TIMER_VECTOR));
    lapic_write(LAPIC_TIMER_INIT, timeout_ns.max(1));
    // SAFETY: sti; hlt is atomic with respect to interrupts (sti's shadow), so an interrupt
    // pending since the caller checked its rings wakes the hlt.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// TSC cycles per millisecond, measured against the LAPIC timer by [`init`].
static TSC_PER_MS: AtomicU64 = AtomicU64::new(1_000_000);

/// Measures the TSC against one millisecond of the LAPIC timer (masked, so no interrupt).
fn calibrate() {
    lapic_write(LAPIC_LVT_TIMER, 1 << 16 | u32::from(TIMER_VECTOR));
    let t0 = crate::rt::rdtsc();
    lapic_write(LAPIC_TIMER_INIT, TIMER_TICKS_PER_MS);
    while crate::rt::mmio_read32(LAPIC + LAPIC_TIMER_CURRENT) != 0 {
        core::hint::spin_loop();
    }
    let per_ms = (crate::rt::rdtsc() - t0).max(1);
    TSC_PER_MS.store(per_ms, Ordering::Relaxed);
}

/// Microseconds in `cycles` TSC cycles.
pub fn cycles_to_us(cycles: u64) -> u64 {
    cycles.saturating_mul(1000) / TSC_PER_MS.load(Ordering::Relaxed).max(1)
}

/// The TSC value `ms` milliseconds from now.
pub fn deadline_ms(ms: u64) -> u64 {
    crate::rt::rdtsc().saturating_add(ms.saturating_mul(TSC_PER_MS.load(Ordering::Relaxed)))
}

/// Whether the TSC passed `deadline`.
pub fn past(deadline: u64) -> bool {
    crate::rt::rdtsc() >= deadline
}

/// Interrupts taken so far.
pub fn count() -> u64 {
    IRQ_COUNT.load(Ordering::Relaxed)
}
