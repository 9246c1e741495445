//! Booting a stock Linux kernel (`vmm run --kernel`): needs hardware virtualization.
//!
//! On a host whose /dev/kvm is the nested software "pagetable VM" (kvm_pvm), guest code at
//! CPL0 runs in KVM's instruction emulator, which stops a stock kernel in early boot; see
//! `vmm/README.md`. [`hardware_virtualization`] tells whether this host can do it.

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

/// Why `--kernel` cannot run here (or that it is not implemented yet).
pub fn unavailable_reason() -> String {
    match hardware_virtualization() {
        Some(reason) => format!("cannot boot a Linux kernel on this host: {reason}"),
        None => "booting a Linux kernel (--kernel) is not implemented yet".into(),
    }
}
