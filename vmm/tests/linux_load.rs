//! Part 2's loader against Debian's kernel (installed by scripts/install-deps.sh): the bzImage,
//! initramfs and command line land in guest RAM and the zero page says where (boot protocol,
//! `Documentation/arch/x86/boot.rst`). Booting it needs hardware virtualization
//! (tests/tests/vmm_linux.rs); loading does not.

use frontend_guest::host::HostRam;
use frontend_guest::GuestRam;
use vmm::acpi;
use vmm::linux::{load, LinuxBoot, KERNEL_CMDLINE_ADDR, ZERO_PAGE_ADDR};

fn newest_kernel() -> Option<std::path::PathBuf> {
    let mut kernels: Vec<_> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

fn u32_at(ram: &HostRam, gpa: u64) -> u32 {
    let mut b = [0u8; 4];
    ram.read(gpa, &mut b).unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn bzimage_initrd_and_command_line_are_described_in_the_zero_page() {
    let Some(kernel) = newest_kernel() else {
        eprintln!("skipping: no /boot/vmlinuz-* (scripts/install-deps.sh installs one)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("pvio-linux-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = dir.join("initrd");
    let initrd_data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    std::fs::write(&initrd, &initrd_data).unwrap();
    let ram = HostRam::new(256 << 20).unwrap();
    let boot = LinuxBoot {
        kernel,
        initrd: Some(initrd),
        cmdline: "console=ttyS0 pvio=1".into(),
    };
    let entry = load(&ram, &boot).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(entry, 0x10_0200, "64-bit entry of a kernel loaded at 1 MiB");
    let zp = ZERO_PAGE_ADDR;
    let mut magic = [0u8; 4];
    ram.read(zp + 0x202, &mut magic).unwrap();
    assert_eq!(&magic, b"HdrS");
    assert_eq!(u32_at(&ram, zp + 0x1fe) & 0xffff, 0xaa55);
    let mut loader = [0u8; 1];
    ram.read(zp + 0x210, &mut loader).unwrap();
    assert_eq!(loader[0], 0xff, "type_of_loader: undefined loader");
    assert_eq!(u64::from(u32_at(&ram, zp + 0x228)), KERNEL_CMDLINE_ADDR);
    let cmdline = ram.read_vec(KERNEL_CMDLINE_ADDR, 21).unwrap();
    assert_eq!(&cmdline, b"console=ttyS0 pvio=1\0");
    let (at, size) = (u32_at(&ram, zp + 0x218), u32_at(&ram, zp + 0x21c));
    assert_eq!(size as usize, initrd_data.len());
    assert_eq!(
        ram.read_vec(at.into(), initrd_data.len()).unwrap(),
        initrd_data
    );
    let mut entries = [0u8; 1];
    ram.read(zp + 0x1e8, &mut entries).unwrap();
    assert_eq!(entries[0], 3, "e820: low RAM, ACPI area, RAM above 1 MiB");
    let e820 = |i: u64| {
        let at = zp + 0x2d0 + i * 20;
        let addr = u64::from(u32_at(&ram, at)) | u64::from(u32_at(&ram, at + 4)) << 32;
        let size = u64::from(u32_at(&ram, at + 8)) | u64::from(u32_at(&ram, at + 12)) << 32;
        (addr, size, u32_at(&ram, at + 16))
    };
    assert_eq!(
        e820(1),
        (acpi::RSDP_ADDR, acpi::REGION_END - acpi::RSDP_ADDR, 2),
        "the ACPI tables' area is reserved"
    );
    assert_eq!(e820(0).2, 1);
    assert_eq!(e820(2).2, 1);
    assert!(e820(0).0 + e820(0).1 <= acpi::RSDP_ADDR);
    assert!(e820(2).0 >= acpi::REGION_END);
    assert_eq!(
        u64::from(u32_at(&ram, zp + 0x70)),
        acpi::RSDP_ADDR,
        "acpi_rsdp_addr"
    );
}
