//! ACPI tables describing the VM to a stock Linux kernel (ACPI 6.5): RSDP, XSDT, FADT
//! (hardware-reduced, §5.2.9, with a sleep control/status register for S5), MADT (§5.2.12:
//! one processor local APIC per vCPU and the in-kernel IOAPIC) and a DSDT listing each
//! virtio-mmio device as `_HID "LNRO0005"` with its window and interrupt in `_CRS`, and the
//! 16550 as COM1 (`PNP0501`; a hardware-reduced platform has no legacy IRQs unless described).
//!
//! Linux has no other way to find virtio-mmio devices unless it is built with
//! `VIRTIO_MMIO_CMDLINE_DEVICES` (Debian's kernel is not). The tables live in the BIOS area at
//! [`RSDP_ADDR`] .. [`REGION_END`], where Linux scans for the RSDP; the zero page also carries
//! the RSDP address (boot protocol 2.14 `acpi_rsdp_addr`) and the e820 map reserves the area.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// Guest-physical address of the RSDP: the start of the BIOS area Linux scans (0xE0000).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End (exclusive) of the area holding the tables (1 MiB).
pub const REGION_END: u64 = 0x10_0000;
/// Guest-physical address of KVM's in-kernel IOAPIC; its inputs are GSIs 0 .. 23.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Guest-physical address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// I/O port of the FADT's sleep control and sleep status registers (8 bits each).
pub const SLEEP_PORT: u16 = 0x3c0;
/// The byte Linux writes to [`SLEEP_PORT`] to enter S5 (power off): SLP_EN (bit 5) with
/// SLP_TYP 5 (bits 2..4), the type our `_S5_` object gives (ACPI 6.5 §4.8.3.7).
pub const S5_SLEEP_VALUE: u8 = (1 << 5) | (S5_SLEEP_TYPE << 2);
const S5_SLEEP_TYPE: u8 = 5;
const OEM_ID: [u8; 6] = *b"PVIO  ";
const OEM_REVISION: u32 = 1;
/// Tables start at 16-byte boundaries (the RSDP must; the others need 8).
const ALIGN: u64 = 16;

/// A virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Bytes of the window.
    pub size: u64,
    /// IOAPIC input (GSI) of its edge-triggered, active-high interrupt.
    pub gsi: u32,
}

/// The 16550 UART (COM1) as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Com1 {
    /// First of its 8 I/O ports.
    pub port: u16,
    /// IOAPIC input (GSI) of its edge-triggered, active-high interrupt.
    pub gsi: u32,
}

/// One table and where it goes in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Signature ("RSD PTR " is shortened to "RSDP").
    pub name: &'static str,
    /// Guest-physical address.
    pub gpa: u64,
    /// The table's bytes, checksums filled in.
    pub bytes: Vec<u8>,
}

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// A device's window does not fit the 32-bit `Memory32Fixed` descriptor.
    #[error("virtio-mmio window {base:#x}+{size:#x} is not below 4 GiB")]
    WindowAbove4G {
        /// Window base.
        base: u64,
        /// Window size in bytes.
        size: u64,
    },
    /// The tables do not fit between [`RSDP_ADDR`] and [`REGION_END`].
    #[error("ACPI tables need {0} bytes, more than the BIOS area holds")]
    TooBig(u64),
}

/// Builds RSDP, XSDT, FADT, MADT and DSDT for `vcpus` vCPUs (APIC IDs 0 .. vcpus), `com1`
/// and `devices`, laid out from [`RSDP_ADDR`] in that order.
///
/// # Errors
/// [`AcpiError`] if a window is above 4 GiB or the tables do not fit the area.
pub fn build(devices: &[MmioDevice], com1: Com1, vcpus: u8) -> Result<Vec<Table>, AcpiError> {
    let dsdt = dsdt(devices, com1)?;
    let madt = madt(vcpus);
    let xsdt_addr = align(RSDP_ADDR + Rsdp::len() as u64);
    // The XSDT lists FADT and MADT: header plus two 8-byte entries.
    let fadt_addr = align(xsdt_addr + 36 + 16);
    let madt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = align(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > REGION_END {
        return Err(AcpiError::TooBig(end - RSDP_ADDR));
    }
    let mut xsdt = XSDT::new(OEM_ID, *b"PVIOXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    Ok(vec![
        Table {
            name: "RSDP",
            gpa: RSDP_ADDR,
            bytes: bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        },
        Table {
            name: "XSDT",
            gpa: xsdt_addr,
            bytes: bytes(&xsdt),
        },
        Table {
            name: "FACP",
            gpa: fadt_addr,
            bytes: fadt(dsdt_addr),
        },
        Table {
            name: "APIC",
            gpa: madt_addr,
            bytes: madt,
        },
        Table {
            name: "DSDT",
            gpa: dsdt_addr,
            bytes: dsdt,
        },
    ])
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(ALIGN)
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// Hardware-reduced FADT pointing at the DSDT, with the S5 sleep registers at [`SLEEP_PORT`].
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let sleep_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        SLEEP_PORT.into(),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, *b"PVIOFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi);
    fadt.sleep_control_reg = sleep_reg;
    fadt.sleep_status_reg = sleep_reg;
    bytes(&fadt.finalize())
}

/// MADT: one enabled local APIC per vCPU (processor UID = APIC ID = index), the IOAPIC with
/// GSI base 0.
fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"PVIOAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    bytes(&madt)
}

/// DSDT: `\_SB.COM1`, `\_SB.VRxx` per device (`_HID "LNRO0005"`, `_UID` = index, `_CRS`
/// with `Memory32Fixed` and an edge/active-high `Interrupt`) and `\_S5_` for power-off.
fn dsdt(devices: &[MmioDevice], com1: Com1) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();
    let mut devs = vec![com1_device(com1)];
    for (i, d) in devices.iter().enumerate() {
        devs.push(mmio_device(i, d)?);
    }
    let children: Vec<&dyn Aml> = devs.iter().map(|d| d as &dyn Aml).collect();
    aml::Scope::new("_SB_".into(), children).to_aml_bytes(&mut body);
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut body);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"PVIODSDT", OEM_REVISION);
    dsdt.append_slice(&body);
    Ok(dsdt.as_slice().to_vec())
}

/// A device's AML, serialized (the `aml` builders borrow their parts).
struct DeviceAml(Vec<u8>);

impl Aml for DeviceAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn com1_device(com1: Com1) -> DeviceAml {
    let ports = aml::IO::new(com1.port, com1.port, 0, 8);
    let irq = aml::Interrupt::new(true, true, false, false, com1.gsi);
    let crs = aml::ResourceTemplate::new(vec![&ports, &irq]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    DeviceAml(bytes(&aml::Device::new(
        "COM1".into(),
        vec![&hid, &uid, &crs],
    )))
}

fn mmio_device(index: usize, d: &MmioDevice) -> Result<DeviceAml, AcpiError> {
    let too_high = || AcpiError::WindowAbove4G {
        base: d.base,
        size: d.size,
    };
    let end = d.base.checked_add(d.size).ok_or_else(too_high)?;
    if end > 1 << 32 {
        return Err(too_high());
    }
    let window = aml::Memory32Fixed::new(true, d.base as u32, d.size as u32);
    let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
    let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
    let uid = index as u32;
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let path = format!("VR{index:02X}");
    Ok(DeviceAml(bytes(&aml::Device::new(
        path.as_str().into(),
        vec![&hid, &uid, &crs],
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    const COM1: Com1 = Com1 {
        port: 0x3f8,
        gsi: 4,
    };

    fn devices() -> Vec<MmioDevice> {
        (0..3)
            .map(|i| MmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect()
    }

    #[test]
    fn tables_are_linked_checksummed_and_inside_the_area() {
        let t = build(&devices(), COM1, 2).unwrap();
        let names: Vec<_> = t.iter().map(|t| t.name).collect();
        assert_eq!(names, ["RSDP", "XSDT", "FACP", "APIC", "DSDT"]);
        let at = |n: &str| t.iter().find(|t| t.name == n).unwrap();
        let rsdp = &at("RSDP").bytes;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(u64_at(rsdp, 24), at("XSDT").gpa);
        for table in &t[1..] {
            assert_eq!(&table.bytes[..4], table.name.as_bytes());
            assert_eq!(u32_at(&table.bytes, 4) as usize, table.bytes.len());
            assert_eq!(sum(&table.bytes), 0, "{} checksum", table.name);
        }
        let xsdt = &at("XSDT").bytes;
        assert_eq!(u64_at(xsdt, 36), at("FACP").gpa);
        assert_eq!(u64_at(xsdt, 44), at("APIC").gpa);
        let fadt = &at("FACP").bytes;
        assert_eq!(u64_at(fadt, 140), at("DSDT").gpa, "X_DSDT");
        assert_eq!(u32_at(fadt, 112) & (1 << 20), 1 << 20, "HW_REDUCED_ACPI");
        for pair in t.windows(2) {
            assert_eq!(pair[0].gpa % 16, 0);
            assert!(pair[0].gpa + pair[0].bytes.len() as u64 <= pair[1].gpa);
        }
        let last = t.last().unwrap();
        assert!(last.gpa + last.bytes.len() as u64 <= REGION_END);
    }

    #[test]
    fn madt_has_a_local_apic_per_vcpu_and_the_ioapic() {
        let t = build(&[], COM1, 3).unwrap();
        let madt = &t[3].bytes;
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        let mut at = 44;
        let (mut lapics, mut ioapics) = (Vec::new(), Vec::new());
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => lapics.push((madt[at + 3], u32_at(madt, at + 4))),
                1 => ioapics.push((u32_at(madt, at + 4), u32_at(madt, at + 8))),
                _ => panic!("unexpected MADT structure {kind}"),
            }
            at += len;
        }
        assert_eq!(lapics, [(0, 1), (1, 1), (2, 1)], "APIC IDs, enabled");
        assert_eq!(ioapics, [(IOAPIC_ADDR, 0)], "address, GSI base");
    }

    #[test]
    fn windows_above_4_gib_are_refused() {
        let d = MmioDevice {
            base: 0xffff_f000,
            size: 0x2000,
            gsi: 5,
        };
        assert!(matches!(
            build(&[d], COM1, 1),
            Err(AcpiError::WindowAbove4G { .. })
        ));
    }
}
