//! The virtio-mmio slots: fixed register windows and GSIs, each holding a device or empty.
//!
//! Slot i is the 4 KiB window at [`MMIO_BASE`] + 0x1000 i with its interrupt on GSI
//! [`FIRST_GSI`] + i. With `--xenstore` the VMM makes [`MAX_DEVICES`] slots, the ones not
//! used at boot empty: they read DeviceID 0 ("no device", virtio 1.2 §4.2.2) until a device
//! is hot-plugged into them ([`Slots::plug`]), and again after it is unplugged
//! ([`Slots::unplug`]). The vCPU threads reach a slot's device through its lock; the
//! hot-plug thread swaps devices under the same lock.

use std::sync::{Mutex, MutexGuard};

use kvm_ioctls::VmFd;

use crate::boot_info::MAX_DEVICES;
use crate::mmio::{read_empty, AccessError, WINDOW_BYTES};
use crate::virtio::{DevicePlace, VhostUserMmio};

/// Guest-physical base of the first virtio-mmio window.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// GSI of the first slot's interrupt (IOAPIC inputs 5 .. 5 + [`MAX_DEVICES`]).
pub const FIRST_GSI: u32 = 5;

/// Where slot `index` sits.
pub fn place(index: usize) -> DevicePlace {
    DevicePlace {
        mmio_base: MMIO_BASE + index as u64 * WINDOW_BYTES,
        gsi: FIRST_GSI + index as u32,
    }
}

/// One slot: its place and the device in it, if any.
#[derive(Debug)]
struct Slot {
    place: DevicePlace,
    dev: Mutex<Option<VhostUserMmio>>,
}

/// A refused guest access: the device's (or slot's) name and why.
pub type Refused = (String, AccessError);

/// Every slot of the VM.
#[derive(Debug)]
pub struct Slots(Vec<Slot>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slots {
    /// `count` slots (at most [`MAX_DEVICES`]), the first ones holding `devices` in order.
    pub fn new(devices: Vec<VhostUserMmio>, count: usize) -> Self {
        let mut devices = devices.into_iter();
        Slots(
            (0..count.min(MAX_DEVICES))
                .map(|i| Slot {
                    place: place(i),
                    dev: Mutex::new(devices.next()),
                })
                .collect(),
        )
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Slot `index`'s place and the virtio device id of what it holds (0: empty).
    pub fn describe(&self, index: usize) -> Option<(DevicePlace, u32)> {
        let slot = self.0.get(index)?;
        let id = lock(&slot.dev).as_ref().map_or(0, VhostUserMmio::device_id);
        Some((slot.place, id))
    }

    /// The slot whose window holds `addr`, with the offset in the window.
    fn find(&self, addr: u64) -> Option<(u64, &Slot)> {
        self.0
            .iter()
            .find(|s| (s.place.mmio_base..s.place.mmio_base + WINDOW_BYTES).contains(&addr))
            .map(|s| (addr - s.place.mmio_base, s))
    }

    /// A guest read at `addr`: `None` when no slot is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<Result<(), Refused>> {
        let (offset, slot) = self.find(addr)?;
        let mut dev = lock(&slot.dev);
        Some(match dev.as_mut() {
            Some(d) => d.read(offset, data).map_err(|e| (d.name().to_owned(), e)),
            None => read_empty(offset, data).map_err(|e| ("empty slot".to_owned(), e)),
        })
    }

    /// A guest write at `addr`: `None` when no slot is there. Writes to an empty slot are
    /// ignored.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<Result<(), Refused>> {
        let (offset, slot) = self.find(addr)?;
        let mut dev = lock(&slot.dev);
        Some(match dev.as_mut() {
            Some(d) => d.write(offset, data).map_err(|e| (d.name().to_owned(), e)),
            None => Ok(()),
        })
    }

    /// The first empty slot.
    pub fn free(&self) -> Option<usize> {
        self.0.iter().position(|s| lock(&s.dev).is_none())
    }

    /// Puts `dev` (connected for [`place`]`(index)`) into empty slot `index`; gives it back
    /// if the slot is taken or does not exist.
    ///
    /// # Errors
    /// `dev` itself when it could not be placed.
    pub fn plug(&self, index: usize, dev: VhostUserMmio) -> Result<(), Box<VhostUserMmio>> {
        let Some(slot) = self.0.get(index) else {
            return Err(Box::new(dev));
        };
        let mut held = lock(&slot.dev);
        if held.is_some() {
            return Err(Box::new(dev));
        }
        *held = Some(dev);
        Ok(())
    }

    /// Empties slot `index`: its device is disconnected from the VM and its back-end
    /// ([`VhostUserMmio::disconnect`]). An empty slot stays empty.
    pub fn unplug(&self, index: usize, vm: &VmFd) {
        let dev = self.0.get(index).and_then(|s| lock(&s.dev).take());
        if let Some(dev) = dev {
            dev.disconnect(vm);
        }
    }
}
