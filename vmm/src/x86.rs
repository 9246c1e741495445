//! Direct long-mode entry: GDT, identity page tables and the vCPU's initial registers.
//!
//! The guest starts in 64-bit mode at CPL0 with no real-mode or protected-mode stage: the VMM
//! writes a three-entry GDT at [`GDT_ADDR`] (null, 64-bit code, data) and page tables at
//! [`PML4_ADDR`] that identity-map the first 4 GiB with 2 MiB pages (so RAM, the virtio-mmio
//! windows, the IOAPIC and the LAPIC are all reachable at their physical addresses), then sets
//! CR0 (PE MP ET NE WP PG), CR4 (PAE OSFXSR OSXMMEXCPT), EFER (LME LMA) and CS.L.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Guest-physical address of the PML4; the PDPT follows at +0x1000 and the four page
/// directories at +0x2000 .. +0x5000.
pub const PML4_ADDR: u64 = 0x9000;
/// Bytes of all page tables.
pub const PAGE_TABLE_BYTES: usize = 6 * 0x1000;
/// Initial stack pointer (the guest sets its own stack first thing).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Selector of the code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;

/// CR0: PE, MP, ET, NE, WP, PG.
pub const CR0: u64 = 0x8001_0033;
/// CR4: PAE, OSFXSR, OSXMMEXCPT.
pub const CR4: u64 = 0x620;
/// EFER: LME, LMA.
pub const EFER: u64 = 0x500;

/// GDT entries: null, 64-bit code (present, DPL 0, execute/read, L), data (present, DPL 0,
/// read/write, 4 GiB, D/B).
pub const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// The GDT as bytes.
pub fn gdt_bytes() -> [u8; 24] {
    let mut b = [0u8; 24];
    for (chunk, e) in b.chunks_exact_mut(8).zip(GDT) {
        chunk.copy_from_slice(&e.to_le_bytes());
    }
    b
}

/// Page tables identity-mapping guest-virtual 0 .. 4 GiB to guest-physical, with 2 MiB pages,
/// to be written at [`PML4_ADDR`]: PML4, PDPT, four page directories.
pub fn page_tables() -> Vec<u8> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let mut t = vec![0u8; PAGE_TABLE_BYTES];
    let mut set = |table: usize, index: usize, value: u64| {
        let at = table * 0x1000 + index * 8;
        t[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    set(0, 0, (PML4_ADDR + 0x1000) | PRESENT_WRITABLE);
    for gib in 0..4 {
        let pd = PML4_ADDR + 0x2000 + gib as u64 * 0x1000;
        set(1, gib, pd | PRESENT_WRITABLE);
        for e in 0..512 {
            let addr = ((gib * 512 + e) as u64) << 21;
            set(2 + gib, e, addr | PRESENT_WRITABLE | HUGE);
        }
    }
    t
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// Sets `sregs` for long mode with the GDT and page tables above.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    sregs.cs = segment(CODE_SELECTOR, true);
    let data = segment(DATA_SELECTOR, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.cr0 = CR0;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4;
    sregs.efer = EFER;
}

/// The general registers at entry: `rip` = entry point, the boot data address `arg` in both
/// `rdi` (pvio's guest: the System V first argument) and `rsi` (Linux's 64-bit boot protocol:
/// the zero page), a boot stack, interrupts off.
pub fn entry_regs(entry: u64, arg: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rdi: arg,
        rsi: arg,
        rsp: BOOT_STACK_TOP,
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: &[u8], table: usize, index: usize) -> u64 {
        let at = table * 0x1000 + index * 8;
        u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
    }

    /// Walks the tables like the MMU does for a 2 MiB page.
    fn translate(t: &[u8], va: u64) -> Option<u64> {
        let pml4e = entry(t, 0, ((va >> 39) & 511) as usize);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpt = ((pml4e & !0xfff) - PML4_ADDR) as usize / 0x1000;
        let pdpte = entry(t, pdpt, ((va >> 30) & 511) as usize);
        if pdpte & 1 == 0 {
            return None;
        }
        let pd = ((pdpte & !0xfff) - PML4_ADDR) as usize / 0x1000;
        let pde = entry(t, pd, ((va >> 21) & 511) as usize);
        assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB");
        Some((pde & !0x1f_ffff & ((1 << 52) - 1)) | (va & 0x1f_ffff))
    }

    #[test]
    fn page_tables_identity_map_the_first_4_gib() {
        let t = page_tables();
        for va in [
            0,
            0x1234,
            0x10_0000,
            0x3fff_ffff,
            0xd000_0050,
            0xfec0_0000,
            0xfee0_00b0,
        ] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 0xffff_ffff), Some(0xffff_ffff));
        assert_eq!(translate(&t, 1 << 32), None);
        assert_eq!(translate(&t, 1 << 39), None);
    }

    #[test]
    fn gdt_has_a_long_mode_code_segment() {
        let b = gdt_bytes();
        assert_eq!(&b[..8], &[0; 8]);
        let code = u64::from_le_bytes(b[8..16].try_into().unwrap());
        assert_eq!((code >> 53) & 1, 1, "L");
        assert_eq!((code >> 54) & 1, 0, "D must be 0 with L");
        assert_eq!((code >> 47) & 1, 1, "present");
        assert_eq!((code >> 45) & 3, 0, "DPL 0");
        assert_eq!((code >> 43) & 1, 1, "code");
        let data = u64::from_le_bytes(b[16..24].try_into().unwrap());
        assert_eq!((data >> 43) & 1, 0, "data");
        assert_eq!((data >> 41) & 1, 1, "writable");
        let mut sregs = kvm_sregs::default();
        long_mode_sregs(&mut sregs);
        assert_eq!(sregs.cs.selector as usize / 8, 1);
        assert_eq!(sregs.ds.selector as usize / 8, 2);
        assert_eq!(sregs.gdt.limit, 23);
        assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001, "PG and PE");
        assert_eq!(sregs.cr4 & 0x20, 0x20, "PAE");
        assert_eq!(sregs.efer & 0x500, 0x500, "LME and LMA");
        assert!(PML4_ADDR + PAGE_TABLE_BYTES as u64 <= 0x10_0000);
    }
}
