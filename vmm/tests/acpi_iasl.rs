//! The ACPI tables `vmm run --kernel` gives Linux, checked by an independent implementation:
//! ACPICA's disassembler (`iasl -d`, Debian package acpica-tools, installed by
//! scripts/install-deps.sh) must parse each table but the RSDP without checksum or parse complaints, and
//! the disassembled DSDT must list every virtio-mmio device as LNRO0005 with its window and
//! interrupt, and COM1 as PNP0501 with its ports and IRQ; the MADT must show the LAPICs and the
//! IOAPIC; the FADT must be hardware-reduced.

use std::path::{Path, PathBuf};
use std::process::Command;
use vmm::acpi::{build, Com1, MmioDevice, IOAPIC_ADDR, LAPIC_ADDR};

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("pvio-acpi-iasl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Disassembles `bytes` with `iasl -d`; returns the .dsl text and iasl's own output.
fn disassemble(dir: &Path, name: &str, bytes: &[u8]) -> (String, String) {
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, bytes).expect("write table");
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&dat)
        .current_dir(dir)
        .output()
        .expect("iasl (acpica-tools) must be installed: scripts/install-deps.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl -d {name} failed:\n{log}");
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl")))
        .unwrap_or_else(|e| panic!("{name}.dsl: {e}\n{log}"));
    (dsl, log)
}

/// Text without `//` comments and whitespace, so the checks do not depend on iasl's layout.
fn squeeze(s: &str) -> String {
    s.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// How iasl prints a small integer.
fn aml_integer(n: usize) -> String {
    match n {
        0 => "Zero".into(),
        1 => "One".into(),
        n => format!("0x{n:02X}"),
    }
}

#[test]
fn iasl_disassembles_the_tables_and_finds_every_virtio_mmio_device() {
    let devices: Vec<MmioDevice> = (0..3)
        .map(|i| MmioDevice {
            base: 0xd000_0000 + i * 0x1000,
            size: 0x1000,
            gsi: 5 + i as u32,
        })
        .collect();
    let scratch = Scratch::new();
    let com1 = Com1 {
        port: 0x3f8,
        gsi: 4,
    };
    let tables = build(&devices, com1, 2).expect("build");
    let mut text = std::collections::HashMap::new();
    // iasl 20200925 does not take a lone RSDP from a binary file; the unit tests in
    // vmm/src/acpi.rs check its checksums and XSDT address.
    for t in tables.iter().filter(|t| t.name != "RSDP") {
        let (dsl, log) = disassemble(&scratch.0, t.name, &t.bytes);
        let lower = format!("{dsl}\n{log}").to_lowercase();
        for bad in ["incorrect checksum", "invalid", "error", "warning"] {
            let complaint = lower
                .lines()
                .filter(|l| !l.contains("0 errors") && !l.contains("no errors"))
                .find(|l| l.contains(bad));
            assert!(
                complaint.is_none(),
                "{}: iasl says {complaint:?}\n{dsl}\n{log}",
                t.name
            );
        }
        text.insert(t.name, squeeze(&dsl));
    }
    let dsdt = &text["DSDT"];
    for (i, d) in devices.iter().enumerate() {
        let device = format!(
            "Device(VR{i:02X}){{Name(_HID,\"LNRO0005\")Name(_UID,{})\
             Name(_CRS,ResourceTemplate(){{Memory32Fixed(ReadWrite,0x{:08X},0x{:08X},)\
             Interrupt(ResourceConsumer,Edge,ActiveHigh,Exclusive,,,){{0x{:08X},}}}})}}",
            aml_integer(i),
            d.base,
            d.size,
            d.gsi
        );
        assert!(dsdt.contains(&device), "no {device} in\n{dsdt}");
    }
    let com1 = "Device(COM1){Name(_HID,EisaId(\"PNP0501\")/*16550A-compatibleCOMSerialPort*/)Name(_UID,Zero)\
                Name(_CRS,ResourceTemplate(){IO(Decode16,0x03F8,0x03F8,0x00,0x08,)\
                Interrupt(ResourceConsumer,Edge,ActiveHigh,Exclusive,,,){0x00000004,}})}";
    assert!(dsdt.contains(com1), "no {com1} in\n{dsdt}");
    assert!(
        dsdt.contains("Name(_S5,Package(0x01){0x05})"),
        "no _S5_ in\n{dsdt}"
    );
    let madt = &text["APIC"];
    assert!(
        madt.contains(&format!("LocalApicAddress:{LAPIC_ADDR:08X}")),
        "{madt}"
    );
    assert_eq!(madt.matches("[ProcessorLocalAPIC]").count(), 2, "{madt}");
    assert!(
        madt.contains(&format!("Address:{IOAPIC_ADDR:08X}")),
        "{madt}"
    );
    assert!(
        text["FACP"].contains("HardwareReduced(V5):1"),
        "{}",
        text["FACP"]
    );
}
