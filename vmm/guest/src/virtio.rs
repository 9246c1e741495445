//! The driver side of a virtio-mmio transport (virtio 1.2 §4.2.3): reset, feature negotiation,
//! queue set-up with frontend-guest's split queue, doorbells.

use frontend_guest::virtq::{
    QueueLayout, SplitQueue, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

use crate::ram::{Heap, Ram};
use crate::rt::{mmio_read32, mmio_write32};
use crate::Fail;

/// Largest queue size the guest uses (its split queues are sized for it).
pub const QUEUE_SIZE: usize = 256;
/// Most queues per device.
pub const MAX_QUEUES: usize = 4;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
const CONFIG: u64 = 0x100;

const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const DEVICE_NEEDS_RESET: u32 = 64;

/// One set-up device.
pub struct Device {
    base: u64,
    /// Negotiated features.
    pub features: u64,
    /// Its queues.
    pub queues: [Option<SplitQueue<QUEUE_SIZE>>; MAX_QUEUES],
    /// Number of queues set up.
    pub num_queues: usize,
}

impl Device {
    fn read(&self, reg: u64) -> u32 {
        mmio_read32(self.base + reg)
    }

    fn write(&self, reg: u64, v: u32) {
        mmio_write32(self.base + reg, v)
    }

    /// Resets the device at `base` (expecting `device_id`), acks `wanted & offered` features
    /// (VERSION_1 required) and reads the configuration is left to the caller.
    pub fn probe(base: u64, device_id: u32, wanted: u64) -> Result<Self, Fail> {
        let dev = Device {
            base,
            features: 0,
            queues: [const { None }; MAX_QUEUES],
            num_queues: 0,
        };
        if dev.read(MAGIC) != 0x7472_6976 || dev.read(VERSION) != 2 {
            return Err(Fail::new("not a virtio-mmio version 2 device at", base));
        }
        if dev.read(DEVICE_ID) != device_id {
            return Err(Fail::new(
                "unexpected device id",
                dev.read(DEVICE_ID).into(),
            ));
        }
        dev.write(STATUS, 0);
        dev.write(STATUS, ACKNOWLEDGE);
        dev.write(STATUS, ACKNOWLEDGE | DRIVER);
        let mut offered = 0u64;
        for sel in 0..2 {
            dev.write(DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(dev.read(DEVICE_FEATURES)) << (32 * sel);
        }
        let required = 1u64 << VIRTIO_F_VERSION_1;
        if offered & required == 0 {
            return Err(Fail::new(
                "device lacks VIRTIO_F_VERSION_1, features",
                offered,
            ));
        }
        let features = offered & (wanted | required);
        for sel in 0..2u32 {
            dev.write(DRIVER_FEATURES_SEL, sel);
            dev.write(DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        dev.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if dev.read(STATUS) & FEATURES_OK == 0 {
            return Err(Fail::new("device refused features", features));
        }
        Ok(Device { features, ..dev })
    }

    /// The features any device gets asked for: VERSION_1, EVENT_IDX, INDIRECT_DESC.
    pub const COMMON_FEATURES: u64 =
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC;

    /// Whether `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// Reads `buf.len()` bytes of configuration space from `offset`, 1 byte at a time.
    pub fn config(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: the configuration window is device MMIO, identity-mapped.
            *b = unsafe { ((self.base + CONFIG + offset + i as u64) as *const u8).read_volatile() };
        }
    }

    /// Sets up queues `0 .. n` with up to `QUEUE_SIZE` descriptors in RAM from `heap`.
    pub fn setup_queues(&mut self, ram: &Ram, heap: &mut Heap, n: usize) -> Result<(), Fail> {
        let event_idx = self.has(VIRTIO_RING_F_EVENT_IDX);
        for q in 0..n.min(MAX_QUEUES) {
            self.write(QUEUE_SEL, q as u32);
            let max = self.read(QUEUE_NUM_MAX);
            if max == 0 {
                return Err(Fail::new("queue does not exist:", q as u64));
            }
            let size = (max as usize).min(QUEUE_SIZE) as u16;
            let base = heap
                .alloc(QueueLayout::contiguous_bytes(size), 4096)
                .ok_or(Fail::new("RAM exhausted for queue", q as u64))?;
            let layout = QueueLayout::contiguous(base, size).map_err(Fail::virtq)?;
            let vq = SplitQueue::new(ram, layout, event_idx).map_err(Fail::virtq)?;
            self.write(QUEUE_NUM, size.into());
            for (reg, addr) in [
                (QUEUE_DESC, layout.desc_table),
                (QUEUE_DRIVER, layout.avail_ring),
                (QUEUE_DEVICE, layout.used_ring),
            ] {
                self.write(reg, addr as u32);
                self.write(reg + 4, (addr >> 32) as u32);
            }
            self.write(QUEUE_READY, 1);
            self.queues[q] = Some(vq);
            self.num_queues = q + 1;
        }
        Ok(())
    }

    /// Sets DRIVER_OK: the device starts.
    pub fn driver_ok(&self) -> Result<(), Fail> {
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        let status = self.read(STATUS);
        if status & DRIVER_OK == 0 || status & DEVICE_NEEDS_RESET != 0 {
            return Err(Fail::new("device failed to start, status", status.into()));
        }
        Ok(())
    }

    /// Rings queue `q`'s doorbell (a KVM ioeventfd: no exit to the VMM).
    pub fn notify(&self, q: usize) {
        self.write(QUEUE_NOTIFY, q as u32);
    }

    /// Resets the device (status 0).
    pub fn reset(&self) {
        self.write(STATUS, 0);
    }
}
