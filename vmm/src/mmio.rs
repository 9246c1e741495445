//! The virtio-mmio transport's register model (virtio 1.2 §4.2.2, version 2).
//!
//! [`MmioTransport`] holds the registers of one device and decides what each guest access
//! means; it performs no I/O itself. Registers (offsets below 0x100) take aligned 32-bit
//! accesses only: any other width or alignment, an unknown offset, a read of a write-only
//! register or a write of a read-only one is refused with an [`AccessError`] (reads then return
//! zeros), and the caller logs it. Configuration space (0x100 and up) takes 1, 2, 4 or 8-byte
//! accesses and is forwarded to a [`ConfigSpace`]. A status write that sets DRIVER_OK returns
//! [`Action::DriverOk`]; a write of 0 resets the registers and returns [`Action::Reset`].
//! QueueNotify writes normally never get here: they go to a KVM ioeventfd.

/// MagicValue: `"virt"` little-endian (R).
pub const MAGIC_VALUE: u64 = 0x000;
/// Version: 2 for the non-legacy interface (R).
pub const VERSION: u64 = 0x004;
/// DeviceID: virtio device type (R).
pub const DEVICE_ID: u64 = 0x008;
/// VendorID (R).
pub const VENDOR_ID: u64 = 0x00c;
/// DeviceFeatures: 32 feature bits selected by DeviceFeaturesSel (R).
pub const DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel (W).
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures: 32 feature bits selected by DriverFeaturesSel (W).
pub const DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel (W).
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel (W).
pub const QUEUE_SEL: u64 = 0x030;
/// QueueNumMax: largest queue size, 0 if the queue does not exist (R).
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// QueueNum: queue size the driver uses (W).
pub const QUEUE_NUM: u64 = 0x038;
/// QueueReady (RW).
pub const QUEUE_READY: u64 = 0x044;
/// QueueNotify: queue index (W).
pub const QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus: bit 0 used buffer, bit 1 configuration change (R).
pub const INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK (W).
pub const INTERRUPT_ACK: u64 = 0x064;
/// Status: device status bits (RW).
pub const STATUS: u64 = 0x070;
/// QueueDescLow / High: descriptor table address (W).
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// High half of the descriptor table address (W).
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// QueueDriverLow / High: available ring address (W).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// High half of the available ring address (W).
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// QueueDeviceLow / High: used ring address (W).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// High half of the used ring address (W).
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// ConfigGeneration (R).
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device configuration space.
pub const CONFIG: u64 = 0x100;
/// Bytes of the register window this model answers.
pub const WINDOW_BYTES: u64 = 0x1000;

/// `"virt"`.
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor id reported (`"PVIO"` is not a PCI vendor; virtio-mmio leaves it free).
pub const VENDOR: u32 = 0x4f49_5650;

/// Device status: the guest noticed the device (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status: the guest has a driver.
pub const STATUS_DRIVER: u32 = 2;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status: the device needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status: the driver gave up.
pub const STATUS_FAILED: u32 = 128;

/// InterruptStatus bit: used buffer notification.
pub const INT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit: configuration change notification.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The device configuration space behind the transport.
pub trait ConfigSpace {
    /// Fills `data` from configuration offset `offset` (bytes from 0x100).
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at configuration offset `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
}

/// A guest access the transport refused (the caller logs it once per address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// A register access that is not an aligned 4-byte access.
    #[error("{len}-byte access at register offset {offset:#x} (registers take aligned 4 bytes)")]
    BadWidth {
        /// Offset in the window.
        offset: u64,
        /// Bytes accessed.
        len: usize,
    },
    /// No register at this offset for this direction.
    #[error("no {dir} register at offset {offset:#x}")]
    NoRegister {
        /// Offset in the window.
        offset: u64,
        /// "readable" or "writable".
        dir: &'static str,
    },
    /// A configuration space access of a width other than 1, 2, 4 or 8 bytes, or past the
    /// window.
    #[error("{len}-byte configuration access at offset {offset:#x}")]
    BadConfigAccess {
        /// Offset in the window.
        offset: u64,
        /// Bytes accessed.
        len: usize,
    },
    /// A queue register written while the queue is ready, or with QueueSel naming no queue
    /// (virtio 1.2 §4.2.3.2 forbids the first; both are ignored).
    #[error("queue register {offset:#x} written for queue {queue} that is ready or absent")]
    QueueLocked {
        /// Offset in the window.
        offset: u64,
        /// QueueSel.
        queue: u32,
    },
    /// Driver features written after FEATURES_OK, or a QueueNum that is not a power of two up
    /// to QueueNumMax.
    #[error("value {value:#x} refused at offset {offset:#x}")]
    Refused {
        /// Offset in the window.
        offset: u64,
        /// The value written.
        value: u32,
    },
}

/// What a register write asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the register update.
    None,
    /// Status gained DRIVER_OK: start the device with [`MmioTransport::queues`].
    DriverOk,
    /// Status was written 0: stop the device (its registers are already reset).
    Reset,
    /// QueueNotify reached the model (not through the ioeventfd): notify this queue.
    Notify(u32),
}

/// One virtqueue's registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// QueueNumMax.
    pub max_size: u16,
    /// QueueNum (0 until written).
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table guest-physical address.
    pub desc: u64,
    /// Available ring ("driver area") guest-physical address.
    pub driver: u64,
    /// Used ring ("device area") guest-physical address.
    pub device: u64,
}

/// The registers of one virtio-mmio device.
#[derive(Debug, Clone)]
pub struct MmioTransport {
    device_id: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    config_generation: u32,
    config_change: bool,
}

fn set_half(v: &mut u64, high: bool, half: u32) {
    let (mask, shift) = if high {
        (0xffff_ffff, 32)
    } else {
        (!0xffff_ffff, 0)
    };
    *v = (*v & mask) | u64::from(half) << shift;
}

fn half(v: u64, sel: u32) -> u32 {
    match sel {
        0 => v as u32,
        1 => (v >> 32) as u32,
        _ => 0,
    }
}

impl MmioTransport {
    /// A device of type `device_id` offering `device_features`, with `num_queues` queues of
    /// at most `max_size` descriptors each.
    pub fn new(device_id: u32, device_features: u64, num_queues: usize, max_size: u16) -> Self {
        MmioTransport {
            device_id,
            device_features,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues: vec![
                QueueConfig {
                    max_size,
                    ..Default::default()
                };
                num_queues
            ],
            status: 0,
            config_generation: 0,
            config_change: false,
        }
    }

    /// The queues' registers.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Marks a configuration change: InterruptStatus reports it and ConfigGeneration moves.
    pub fn config_changed(&mut self) {
        self.config_change = true;
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// Sets DEVICE_NEEDS_RESET (the device failed to start).
    pub fn needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
    }

    fn reset(&mut self) {
        let max = self.queues.first().map_or(0, |q| q.max_size);
        *self = MmioTransport::new(self.device_id, self.device_features, self.queues.len(), max);
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    ///
    /// # Errors
    /// [`AccessError`]; `data` is then zero-filled.
    pub fn read(
        &mut self,
        offset: u64,
        data: &mut [u8],
        config: &mut dyn ConfigSpace,
    ) -> Result<(), AccessError> {
        data.fill(0);
        if offset >= CONFIG {
            check_config_access(offset, data.len())?;
            config.read_config(offset - CONFIG, data);
            return Ok(());
        }
        check_register_access(offset, data.len())?;
        let q = self.queues.get(self.queue_sel as usize);
        let value = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device_id,
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => half(self.device_features, self.device_features_sel),
            QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size)),
            QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            // The back-end signals used buffers straight into the irqchip, so the transport
            // cannot tell; say "used buffer" unless a configuration change is pending.
            INTERRUPT_STATUS if self.config_change => INT_CONFIG_CHANGE,
            INTERRUPT_STATUS => INT_USED_BUFFER,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                return Err(AccessError::NoRegister {
                    offset,
                    dir: "readable",
                })
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    /// A guest write of `data` at `offset` in the window.
    ///
    /// # Errors
    /// [`AccessError`]; the write is then ignored.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        config: &mut dyn ConfigSpace,
    ) -> Result<Action, AccessError> {
        if offset >= CONFIG {
            check_config_access(offset, data.len())?;
            config.write_config(offset - CONFIG, data);
            return Ok(Action::None);
        }
        check_register_access(offset, data.len())?;
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value)?,
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW..=QUEUE_DEVICE_HIGH => {
                self.write_queue(offset, value)?
            }
            QUEUE_NOTIFY => return Ok(Action::Notify(value)),
            INTERRUPT_ACK => {
                if value & INT_CONFIG_CHANGE != 0 {
                    self.config_change = false;
                }
            }
            STATUS => return Ok(self.write_status(value)),
            _ => {
                return Err(AccessError::NoRegister {
                    offset,
                    dir: "writable",
                })
            }
        }
        Ok(Action::None)
    }

    fn write_driver_features(&mut self, value: u32) -> Result<(), AccessError> {
        if self.status & STATUS_FEATURES_OK != 0 || self.driver_features_sel > 1 {
            return Err(AccessError::Refused {
                offset: DRIVER_FEATURES,
                value,
            });
        }
        set_half(
            &mut self.driver_features,
            self.driver_features_sel == 1,
            value,
        );
        Ok(())
    }

    fn write_queue(&mut self, offset: u64, value: u32) -> Result<(), AccessError> {
        let locked = AccessError::QueueLocked {
            offset,
            queue: self.queue_sel,
        };
        let q = self.queues.get_mut(self.queue_sel as usize).ok_or(locked)?;
        if offset == QUEUE_READY {
            q.ready = value == 1;
            return Ok(());
        }
        if q.ready {
            return Err(locked);
        }
        match offset {
            QUEUE_NUM => {
                let ok = value.is_power_of_two() && value <= u32::from(q.max_size);
                if !ok {
                    return Err(AccessError::Refused { offset, value });
                }
                // value <= max_size, a u16.
                q.size = value as u16;
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH => {
                set_half(&mut q.desc, offset == QUEUE_DESC_HIGH, value)
            }
            QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => {
                set_half(&mut q.driver, offset == QUEUE_DRIVER_HIGH, value)
            }
            QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                set_half(&mut q.device, offset == QUEUE_DEVICE_HIGH, value)
            }
            _ => {
                return Err(AccessError::NoRegister {
                    offset,
                    dir: "writable",
                })
            }
        }
        Ok(())
    }

    fn write_status(&mut self, value: u32) -> Action {
        if value == 0 {
            self.reset();
            return Action::Reset;
        }
        let old = self.status;
        let mut new = value;
        // FEATURES_OK sticks only if the driver accepted a subset of what the device offers
        // (virtio 1.2 §3.1.1: the driver re-reads Status to check).
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && self.driver_features & !self.device_features != 0
        {
            new &= !STATUS_FEATURES_OK;
        }
        // DRIVER_OK needs FEATURES_OK first.
        if new & STATUS_FEATURES_OK == 0 {
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new | (old & STATUS_DEVICE_NEEDS_RESET);
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            Action::DriverOk
        } else {
            Action::None
        }
    }
}

/// A guest read of an empty slot (no device plugged, virtio 1.2 §4.2.2: DeviceID 0x0 means
/// "no device"; the driver ignores it): MagicValue, Version 2, DeviceID 0 and VendorID, every
/// other register and the configuration space read as zeros.
///
/// # Errors
/// [`AccessError::BadWidth`] for a register access that is not an aligned 4-byte read (the
/// data reads as zeros then, as for a device).
pub fn read_empty(offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
    data.fill(0);
    if offset >= CONFIG {
        return check_config_access(offset, data.len());
    }
    check_register_access(offset, data.len())?;
    let value = match offset {
        MAGIC_VALUE => MAGIC,
        VERSION => 2,
        VENDOR_ID => VENDOR,
        _ => 0,
    };
    data.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn check_register_access(offset: u64, len: usize) -> Result<(), AccessError> {
    if len == 4 && offset % 4 == 0 {
        Ok(())
    } else {
        Err(AccessError::BadWidth { offset, len })
    }
}

fn check_config_access(offset: u64, len: usize) -> Result<(), AccessError> {
    let ok = matches!(len, 1 | 2 | 4 | 8) && offset + len as u64 <= WINDOW_BYTES;
    if ok {
        Ok(())
    } else {
        Err(AccessError::BadConfigAccess { offset, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_slot_reads_device_id_zero() {
        let mut b = [0xaa; 4];
        for (offset, want) in [
            (MAGIC_VALUE, MAGIC),
            (VERSION, 2),
            (DEVICE_ID, 0),
            (VENDOR_ID, VENDOR),
            (STATUS, 0),
            (QUEUE_NUM_MAX, 0),
        ] {
            read_empty(offset, &mut b).unwrap();
            assert_eq!(u32::from_le_bytes(b), want, "offset {offset:#x}");
        }
        let mut c = [0xaa; 2];
        assert!(read_empty(DEVICE_ID, &mut c).is_err());
        assert_eq!(c, [0, 0]);
        read_empty(CONFIG + 4, &mut c).unwrap();
        assert_eq!(c, [0, 0]);
    }

    /// A configuration space of 16 bytes 0x10, 0x11, ... that records writes.
    #[derive(Default)]
    struct Cfg {
        written: Vec<(u64, Vec<u8>)>,
    }

    impl ConfigSpace for Cfg {
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0x10 + (offset as u8) + i as u8;
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.written.push((offset, data.to_vec()));
        }
    }

    const FEATURES: u64 = 1 << 32 | 1 << 29 | 1 << 12;

    fn dev() -> MmioTransport {
        MmioTransport::new(2, FEATURES, 2, 256)
    }

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b, &mut Cfg::default()).unwrap();
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u64, v: u32) -> Result<Action, AccessError> {
        t.write(offset, &v.to_le_bytes(), &mut Cfg::default())
    }

    const READABLE: [u64; 11] = [
        MAGIC_VALUE,
        VERSION,
        DEVICE_ID,
        VENDOR_ID,
        DEVICE_FEATURES,
        QUEUE_NUM_MAX,
        QUEUE_READY,
        INTERRUPT_STATUS,
        STATUS,
        CONFIG_GENERATION,
        // Not a register: reads are refused.
        0x0f0,
    ];

    #[test]
    fn identity_registers_read_as_the_spec_says() {
        let mut t = dev();
        assert_eq!(rd(&mut t, MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, VERSION), 2);
        assert_eq!(rd(&mut t, DEVICE_ID), 2);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1 << 29 | 1 << 12);
        wr(&mut t, DEVICE_FEATURES_SEL, 1).unwrap();
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1);
        wr(&mut t, DEVICE_FEATURES_SEL, 7).unwrap();
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 0);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 256);
        wr(&mut t, QUEUE_SEL, 2).unwrap();
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 0, "queue 2 does not exist");
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_USED_BUFFER);
        t.config_changed();
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_CONFIG_CHANGE);
        assert_eq!(rd(&mut t, CONFIG_GENERATION), 1);
        wr(&mut t, INTERRUPT_ACK, INT_CONFIG_CHANGE).unwrap();
        assert_eq!(rd(&mut t, INTERRUPT_STATUS), INT_USED_BUFFER);
    }

    #[test]
    fn every_offset_and_width_is_answered_or_refused() {
        for offset in 0..0x100u64 {
            for len in [1usize, 2, 4, 8] {
                let mut t = dev();
                let mut b = vec![0xaa; len];
                let r = t.read(offset, &mut b, &mut Cfg::default());
                let readable = len == 4 && READABLE[..10].contains(&offset);
                assert_eq!(r.is_ok(), readable, "read {len} at {offset:#x}");
                if r.is_err() {
                    assert!(b.iter().all(|&x| x == 0), "refused reads give zeros");
                }
                let w = t.write(offset, &vec![0; len], &mut Cfg::default());
                if len != 4 || offset % 4 != 0 {
                    assert_eq!(w, Err(AccessError::BadWidth { offset, len }));
                }
                if w.is_err() {
                    assert_eq!(t.status(), 0, "a refused write changes nothing");
                    assert_eq!(t.queues(), dev().queues());
                }
            }
        }
        // Read-only registers refuse writes.
        let mut t = dev();
        for offset in [
            MAGIC_VALUE,
            VERSION,
            DEVICE_ID,
            VENDOR_ID,
            QUEUE_NUM_MAX,
            CONFIG_GENERATION,
        ] {
            assert!(wr(&mut t, offset, 1).is_err(), "{offset:#x}");
        }
        // Write-only registers refuse reads.
        for offset in [
            DEVICE_FEATURES_SEL,
            DRIVER_FEATURES,
            QUEUE_SEL,
            QUEUE_NUM,
            QUEUE_NOTIFY,
        ] {
            let mut b = [0u8; 4];
            assert!(t.read(offset, &mut b, &mut Cfg::default()).is_err());
        }
    }

    #[test]
    fn configuration_space_takes_any_natural_width() {
        let mut t = dev();
        let mut cfg = Cfg::default();
        for len in [1usize, 2, 4, 8] {
            let mut b = vec![0; len];
            t.read(CONFIG + 4, &mut b, &mut cfg).unwrap();
            assert_eq!(b[0], 0x14);
            assert_eq!(b[len - 1], 0x14 + len as u8 - 1);
        }
        let mut b = [0u8; 3];
        assert!(t.read(CONFIG, &mut b, &mut cfg).is_err());
        let mut b = [0u8; 8];
        assert!(t.read(WINDOW_BYTES - 4, &mut b, &mut cfg).is_err());
        t.write(CONFIG + 2, &[1, 2], &mut cfg).unwrap();
        assert_eq!(cfg.written, vec![(2, vec![1, 2])]);
    }

    /// Drives the set-up sequence of virtio 1.2 §3.1.1 for queue 0.
    fn setup(t: &mut MmioTransport) -> Action {
        wr(t, STATUS, STATUS_ACKNOWLEDGE).unwrap();
        wr(t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER).unwrap();
        wr(t, DRIVER_FEATURES_SEL, 1).unwrap();
        wr(t, DRIVER_FEATURES, 1).unwrap();
        wr(t, DRIVER_FEATURES_SEL, 0).unwrap();
        wr(t, DRIVER_FEATURES, 1 << 29).unwrap();
        wr(t, STATUS, 0xb).unwrap();
        assert_eq!(rd(t, STATUS) & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        wr(t, QUEUE_SEL, 0).unwrap();
        wr(t, QUEUE_NUM, 128).unwrap();
        for (reg, v) in [
            (QUEUE_DESC_LOW, 0x1000),
            (QUEUE_DESC_HIGH, 1),
            (QUEUE_DRIVER_LOW, 0x2000),
            (QUEUE_DEVICE_LOW, 0x3000),
        ] {
            wr(t, reg, v).unwrap();
        }
        wr(t, QUEUE_READY, 1).unwrap();
        wr(t, STATUS, 0xf).unwrap()
    }

    #[test]
    fn setup_sequence_reaches_driver_ok_with_the_queue_registers() {
        let mut t = dev();
        assert_eq!(setup(&mut t), Action::DriverOk);
        assert_eq!(t.driver_features(), 1 << 32 | 1 << 29);
        let q = t.queues()[0];
        assert_eq!(
            q,
            QueueConfig {
                max_size: 256,
                size: 128,
                ready: true,
                desc: 0x1_0000_1000,
                driver: 0x2000,
                device: 0x3000,
            }
        );
        // Setting DRIVER_OK again is no new start.
        assert_eq!(wr(&mut t, STATUS, 0xf).unwrap(), Action::None);
        // A ready queue's registers are locked.
        assert!(matches!(
            wr(&mut t, QUEUE_NUM, 64),
            Err(AccessError::QueueLocked { .. })
        ));
        assert_eq!(t.queues()[0].size, 128);
        assert_eq!(wr(&mut t, QUEUE_NOTIFY, 1).unwrap(), Action::Notify(1));
    }

    #[test]
    fn bad_driver_input_is_refused() {
        let mut t = dev();
        assert!(wr(&mut t, QUEUE_NUM, 100).is_err(), "not a power of two");
        assert!(wr(&mut t, QUEUE_NUM, 512).is_err(), "above QueueNumMax");
        wr(&mut t, QUEUE_SEL, 9).unwrap();
        assert!(wr(&mut t, QUEUE_NUM, 8).is_err(), "no queue 9");
        // Features the device did not offer: FEATURES_OK does not stick.
        wr(&mut t, DRIVER_FEATURES, 1 << 3).unwrap();
        wr(&mut t, STATUS, 0xb).unwrap();
        assert_eq!(rd(&mut t, STATUS) & STATUS_FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK is not a start.
        assert_eq!(wr(&mut t, STATUS, 0x7).unwrap(), Action::None);
        // Features after FEATURES_OK are refused.
        let mut t = dev();
        setup(&mut t);
        assert!(wr(&mut t, DRIVER_FEATURES, 0).is_err());
        assert_eq!(t.driver_features(), 1 << 32 | 1 << 29);
    }

    #[test]
    fn reset_mid_setup_or_after_start_clears_everything() {
        for stop_after in 0..4 {
            let mut t = dev();
            wr(&mut t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER).unwrap();
            if stop_after > 0 {
                wr(&mut t, DRIVER_FEATURES, 1 << 29).unwrap();
            }
            if stop_after > 1 {
                wr(&mut t, QUEUE_NUM, 64).unwrap();
                wr(&mut t, QUEUE_DESC_LOW, 0x4000).unwrap();
            }
            if stop_after > 2 {
                wr(&mut t, QUEUE_READY, 1).unwrap();
            }
            assert_eq!(wr(&mut t, STATUS, 0).unwrap(), Action::Reset);
            assert_eq!(rd(&mut t, STATUS), 0);
            assert_eq!(t.driver_features(), 0);
            assert_eq!(t.queues(), dev().queues());
            assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 256);
        }
        let mut t = dev();
        setup(&mut t);
        t.needs_reset();
        assert_ne!(rd(&mut t, STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(wr(&mut t, STATUS, 0).unwrap(), Action::Reset);
        assert_eq!(rd(&mut t, STATUS), 0);
        // And the device can be set up again.
        assert_eq!(setup(&mut t), Action::DriverOk);
    }
}
