//! Helpers for a device's virtqueue loops (virtio 1.2 §2.7), shared by the daemons' workers.

use vhost_user_backend::VringT;

use crate::memory::Vring;

/// After a round of taking chains with notifications off: whether to go round again, that
/// is whether more chains arrived meanwhile (`enable_notification`). A round that took nothing
/// while the ring says more are available has an available index the queue refuses (more than
/// the queue size ahead, virtio 1.2 §2.7.6): the driver broke its ring, so the worker waits
/// for its next kick instead of spinning, which also held the worker's lock against
/// VHOST_USER_GET_VRING_BASE forever (found by the vhost_user fuzz target). `took`: the round
/// took at least one chain; `what` names the queue in the log.
pub fn go_round_again(vring: &Vring, took: bool, what: &str) -> bool {
    match vring.enable_notification() {
        Ok(true) if took => true,
        Ok(true) => {
            log::warn!("{what}: the driver's available index is out of range");
            false
        }
        Ok(false) => false,
        Err(e) => {
            log::warn!("{what}: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use vhost_user_backend::VringT;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

    use super::*;
    use crate::memory::{GuestRam, GuestRamAtomic};

    /// A started ring of 8 descriptors whose available index the driver set 100 ahead.
    fn broken_ring() -> (Vring, GuestRamAtomic) {
        let ram = GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        ram.write_obj(100u16, GuestAddress(0x1000 + 2)).unwrap();
        let mem = GuestMemoryAtomic::new(ram);
        let vring = Vring::new(mem.clone(), 8).unwrap();
        vring.set_queue_size(8);
        vring.set_queue_info(0, 0x1000, 0x2000).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        (vring, mem)
    }

    /// Found by the vhost_user fuzz target: backend-net's transmit and control loops (and
    /// backend-blk's request loop) went round for as long as `enable_notification` said more
    /// chains were available, though none could be taken, so a guest spun a worker forever
    /// (holding its lock, so GET_VRING_BASE hung too).
    #[test]
    fn an_available_index_out_of_range_does_not_spin() {
        let (vring, mem) = broken_ring();
        let guard = mem.memory();
        let taken = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(&*guard)
            .is_some();
        assert!(!taken, "no chain can be taken");
        assert!(
            !go_round_again(&vring, false, "test queue"),
            "a round that took nothing ends the kick"
        );
        assert_eq!(
            vring.enable_notification().ok(),
            Some(true),
            "the ring still claims more chains"
        );
        assert!(go_round_again(&vring, true, "test queue"));
    }
}
