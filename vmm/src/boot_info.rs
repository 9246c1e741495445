//! The boot-info structure: how the VMM tells pvio's guest what it runs on.
//!
//! The VMM writes it at [`BOOT_INFO_ADDR`] (guest-physical) and enters the guest with that
//! address in `rdi` (the first argument of the System V calling convention). Every field is
//! little-endian at a fixed byte offset, encoded and decoded by [`BootInfo::to_bytes`] and
//! [`BootInfo::parse`], so the VMM and the guest (which includes this file) share one
//! definition with no `unsafe` and no layout assumptions. This file uses `core` only.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic [`BOOT_INFO_MAGIC`] (`"PVIOBOOT"`) |
//! | 8 | 4 | version [`BOOT_INFO_VERSION`] |
//! | 12 | 4 | number of devices (at most [`MAX_DEVICES`]) |
//! | 16 | 8 | guest RAM size in bytes (RAM is guest-physical `0 .. size`) |
//! | 24 | 8 | guest-physical address of the argument string |
//! | 32 | 4 | argument string length in bytes (at most [`CMDLINE_MAX`]) |
//! | 36 | 4 | number of vCPUs |
//! | 40 + 24 i | 24 | device i: MMIO base (8), MMIO size (8), IOAPIC input / GSI (4), virtio device id (4) |

/// Guest-physical address of the boot-info structure.
pub const BOOT_INFO_ADDR: u64 = 0x1000;
/// Guest-physical address of the argument string (UTF-8, words separated by spaces).
pub const CMDLINE_ADDR: u64 = 0x2000;
/// Largest argument string in bytes.
pub const CMDLINE_MAX: usize = 4096;
/// `"PVIOBOOT"` read as a little-endian u64.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"PVIOBOOT");
/// Layout version of this file.
pub const BOOT_INFO_VERSION: u32 = 1;
/// Most virtio-mmio devices the structure describes.
pub const MAX_DEVICES: usize = 8;
/// Bytes of one device entry.
pub const DEVICE_ENTRY_BYTES: usize = 24;
/// Offset of the first device entry.
pub const DEVICES_OFFSET: usize = 40;
/// Bytes of the whole structure.
pub const BOOT_INFO_BYTES: usize = DEVICES_OFFSET + MAX_DEVICES * DEVICE_ENTRY_BYTES;
/// I/O port of the debug-exit device: a 4-byte `out` of `status` ends the VM and the VMM exits
/// with `status` (0 success).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// I/O port base of the 16550 UART console (COM1).
pub const SERIAL_PORT: u16 = 0x3f8;

/// One virtio-mmio transport (virtio 1.2 §4.2.2) and the interrupt it raises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Guest-physical base address of the register window.
    pub mmio_base: u64,
    /// Bytes of the register window (registers at 0..0x100, configuration space above).
    pub mmio_size: u64,
    /// IOAPIC input (GSI) the device's used buffer notifications arrive on (edge-triggered).
    pub gsi: u32,
    /// Virtio device id (2 block, 1 network), as the DeviceID register reads.
    pub device_id: u32,
}

/// What the guest learns at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Guest RAM size in bytes.
    pub mem_size: u64,
    /// Guest-physical address of the argument string.
    pub cmdline_addr: u64,
    /// Argument string length in bytes.
    pub cmdline_len: u32,
    /// Number of vCPUs.
    pub num_vcpus: u32,
    /// Devices in use: `devices[..num_devices]`.
    pub num_devices: u32,
    /// Device entries; those past `num_devices` are zero.
    pub devices: [DeviceInfo; MAX_DEVICES],
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from(get_u32(b, at)) | u64::from(get_u32(b, at + 4)) << 32
}

impl BootInfo {
    /// The wire form (see the module table).
    pub fn to_bytes(&self) -> [u8; BOOT_INFO_BYTES] {
        let mut b = [0u8; BOOT_INFO_BYTES];
        put(&mut b, 0, &BOOT_INFO_MAGIC.to_le_bytes());
        put(&mut b, 8, &BOOT_INFO_VERSION.to_le_bytes());
        put(&mut b, 12, &self.num_devices.to_le_bytes());
        put(&mut b, 16, &self.mem_size.to_le_bytes());
        put(&mut b, 24, &self.cmdline_addr.to_le_bytes());
        put(&mut b, 32, &self.cmdline_len.to_le_bytes());
        put(&mut b, 36, &self.num_vcpus.to_le_bytes());
        for (i, d) in self.devices.iter().enumerate() {
            let at = DEVICES_OFFSET + i * DEVICE_ENTRY_BYTES;
            put(&mut b, at, &d.mmio_base.to_le_bytes());
            put(&mut b, at + 8, &d.mmio_size.to_le_bytes());
            put(&mut b, at + 16, &d.gsi.to_le_bytes());
            put(&mut b, at + 20, &d.device_id.to_le_bytes());
        }
        b
    }

    /// Decodes the wire form; `None` if the magic or version differ or the device count or
    /// argument length is out of range.
    pub fn parse(b: &[u8; BOOT_INFO_BYTES]) -> Option<Self> {
        if get_u64(b, 0) != BOOT_INFO_MAGIC || get_u32(b, 8) != BOOT_INFO_VERSION {
            return None;
        }
        let num_devices = get_u32(b, 12);
        let cmdline_len = get_u32(b, 32);
        if num_devices as usize > MAX_DEVICES || cmdline_len as usize > CMDLINE_MAX {
            return None;
        }
        let mut devices = [DeviceInfo::default(); MAX_DEVICES];
        for (i, d) in devices.iter_mut().enumerate() {
            let at = DEVICES_OFFSET + i * DEVICE_ENTRY_BYTES;
            *d = DeviceInfo {
                mmio_base: get_u64(b, at),
                mmio_size: get_u64(b, at + 8),
                gsi: get_u32(b, at + 16),
                device_id: get_u32(b, at + 20),
            };
        }
        Some(BootInfo {
            mem_size: get_u64(b, 16),
            cmdline_addr: get_u64(b, 24),
            cmdline_len,
            num_vcpus: get_u32(b, 36),
            num_devices,
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootInfo {
        let mut devices = [DeviceInfo::default(); MAX_DEVICES];
        devices[0] = DeviceInfo {
            mmio_base: 0xd000_0000,
            mmio_size: 0x1000,
            gsi: 5,
            device_id: 2,
        };
        devices[1] = DeviceInfo {
            mmio_base: 0xd000_1000,
            mmio_size: 0x1000,
            gsi: 6,
            device_id: 1,
        };
        BootInfo {
            mem_size: 64 << 20,
            cmdline_addr: CMDLINE_ADDR,
            cmdline_len: 11,
            num_vcpus: 2,
            num_devices: 2,
            devices,
        }
    }

    #[test]
    fn fields_sit_at_the_documented_offsets() {
        let b = sample().to_bytes();
        assert_eq!(&b[0..8], b"PVIOBOOT");
        assert_eq!(b[8], 1);
        assert_eq!(b[12], 2);
        assert_eq!(&b[16..24], &(64u64 << 20).to_le_bytes());
        assert_eq!(&b[24..32], &CMDLINE_ADDR.to_le_bytes());
        assert_eq!(b[32], 11);
        assert_eq!(b[36], 2);
        assert_eq!(&b[40..48], &0xd000_0000u64.to_le_bytes());
        assert_eq!(b[48 + 1], 0x10);
        assert_eq!((b[56], b[60]), (5, 2));
        assert_eq!(&b[64..72], &0xd000_1000u64.to_le_bytes());
        assert_eq!((b[80], b[84]), (6, 1));
        assert!(b[88..].iter().all(|&x| x == 0));
        assert_eq!(BOOT_INFO_BYTES, 232);
        assert!(BOOT_INFO_ADDR + BOOT_INFO_BYTES as u64 <= CMDLINE_ADDR);
    }

    #[test]
    fn parse_round_trips_and_rejects_bad_input() {
        let info = sample();
        let b = info.to_bytes();
        assert_eq!(BootInfo::parse(&b), Some(info));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(BootInfo::parse(&bad), None);
        let mut bad = b;
        bad[8] = 2;
        assert_eq!(BootInfo::parse(&bad), None);
        let mut bad = b;
        bad[12] = MAX_DEVICES as u8 + 1;
        assert_eq!(BootInfo::parse(&bad), None);
        let mut bad = b;
        bad[32..36].copy_from_slice(&(CMDLINE_MAX as u32 + 1).to_le_bytes());
        assert_eq!(BootInfo::parse(&bad), None);
    }
}
