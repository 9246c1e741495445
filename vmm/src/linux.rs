//! Booting a stock Linux kernel (`vmm run --kernel`): needs hardware virtualization.
//!
//! On a host whose /dev/kvm is the nested software "pagetable VM" (kvm_pvm), guest code at
//! CPL0 runs in KVM's instruction emulator, which stops a stock kernel in early boot; see
//! `vmm/README.md`. [`hardware_virtualization`] tells whether this host can do it; [`load`]
//! is the loader (bzImage, initramfs, command line, zero page). The kernel finds the vCPUs,
//! the IOAPIC and the virtio-mmio devices in the ACPI tables of [`crate::acpi`].

/// `None` if the host has hardware virtualization (VT-x or AMD-V flags in /proc/cpuinfo and no
/// kvm_pvm module), else the reason it cannot boot Linux.
pub fn hardware_virtualization() -> Option<String> {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is kvm_pvm (nested software virtualization): a stock Linux kernel \
             stops in KVM's instruction emulator during early boot"
                .into(),
        );
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_flag {
        None
    } else {
        Some("the CPU shows neither vmx nor svm: no hardware virtualization".into())
    }
}

/// Guest-physical address of the zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Guest-physical address of the kernel command line.
pub const KERNEL_CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest kernel command line in bytes.
pub const KERNEL_CMDLINE_MAX: usize = 4096;
/// Where the kernel's protected-mode part goes (linux-loader's high memory start).
const KERNEL_START: u64 = 0x10_0000;
/// End of low RAM in the e820 map (the EBDA and BIOS area above it are reserved).
const LOW_RAM_END: u64 = 0x9_fc00;
/// Offset of the 64-bit entry point from the loaded protected-mode kernel (boot protocol 2.12).
const ENTRY_64_OFFSET: u64 = 0x200;

/// What to boot.
#[derive(Debug, Clone)]
pub struct LinuxBoot {
    /// bzImage.
    pub kernel: std::path::PathBuf,
    /// initramfs, placed at the top of RAM.
    pub initrd: Option<std::path::PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// Loads `boot`'s bzImage, initramfs and command line into `ram` and writes the zero page
/// (boot protocol: `Documentation/arch/x86/boot.rst`, e820 map of low RAM, the reserved ACPI
/// area [`crate::acpi::RSDP_ADDR`] .. 1 MiB and RAM above 1 MiB; `acpi_rsdp_addr` set). The
/// caller writes the ACPI tables ([`crate::acpi::build`]). Returns the 64-bit entry point; the
/// vCPU enters it with `rsi` = [`ZERO_PAGE_ADDR`].
///
/// # Errors
/// A message saying which file or step failed.
pub fn load(ram: &frontend_guest::host::HostRam, boot: &LinuxBoot) -> Result<u64, String> {
    use linux_loader::configurator::linux::LinuxBootConfigurator;
    use linux_loader::configurator::{BootConfigurator, BootParams};
    use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
    use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
    use vm_memory::{Bytes, GuestAddress};

    let open =
        |p: &std::path::Path| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut kernel = open(&boot.kernel)?;
    let loaded = BzImage::load(
        ram.memory(),
        None,
        &mut kernel,
        Some(GuestAddress(KERNEL_START)),
    )
    .map_err(|e| format!("{}: bzImage load: {e}", boot.kernel.display()))?;
    let hdr = loaded
        .setup_header
        .ok_or_else(|| format!("{}: no setup header", boot.kernel.display()))?;
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = 0xff;
    let mut cmdline = Cmdline::new(KERNEL_CMDLINE_MAX).map_err(|e| e.to_string())?;
    cmdline
        .insert_str(&boot.cmdline)
        .map_err(|e| e.to_string())?;
    load_cmdline(ram.memory(), GuestAddress(KERNEL_CMDLINE_ADDR), &cmdline)
        .map_err(|e| format!("command line: {e}"))?;
    params.hdr.cmd_line_ptr = KERNEL_CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = boot.cmdline.len() as u32 + 1;
    if let Some(path) = &boot.initrd {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let top = ram.size().min(u64::from(params.hdr.initrd_addr_max) + 1);
        let at = top
            .checked_sub(data.len() as u64)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= loaded.kernel_end)
            .ok_or_else(|| format!("{}: does not fit in RAM above the kernel", path.display()))?;
        ram.memory()
            .write_slice(&data, GuestAddress(at))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = data.len() as u32;
    }
    const E820_RAM: u32 = 1;
    const E820_RESERVED: u32 = 2;
    let entry = |addr: u64, end: u64, r#type| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    params.e820_table[0] = entry(0, LOW_RAM_END, E820_RAM);
    params.e820_table[1] = entry(
        crate::acpi::RSDP_ADDR,
        crate::acpi::REGION_END,
        E820_RESERVED,
    );
    params.e820_table[2] = entry(KERNEL_START, ram.size(), E820_RAM);
    params.e820_entries = 3;
    params.acpi_rsdp_addr = crate::acpi::RSDP_ADDR;
    let zero_page = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&zero_page, ram.memory())
        .map_err(|e| format!("zero page: {e}"))?;
    Ok(loaded.kernel_load.0 + ENTRY_64_OFFSET)
}
