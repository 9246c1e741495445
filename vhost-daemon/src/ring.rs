//! Helpers for a device's virtqueue loops (virtio 1.2 §2.7), shared by the daemons' workers.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use virtio_queue::QueueT;

use crate::memory::{GuestRam, Vring};

/// After a round of taking chains with notifications off: whether to go round again, that
/// is whether more chains arrived meanwhile (`enable_notification`). A round that took nothing
/// while the ring says more are available goes round again only if the driver's available
/// index is within a queue size of the device's (chains that arrived after the round looked);
/// one further ahead is refused by the queue (virtio 1.2 §2.7.6), so no chain would ever be
/// taken: the driver broke its ring and the worker waits for its next kick instead of
/// spinning, which also held the worker's lock against VHOST_USER_GET_VRING_BASE forever
/// (found by the vhost_user fuzz target). `took`: the round took at least one chain; `what`
/// names the queue in the log.
pub fn go_round_again(vring: &Vring, mem: &GuestRam, took: bool, what: &str) -> bool {
    match vring.enable_notification() {
        Ok(true) if took || available_in_range(vring, mem) => true,
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

/// Whether the driver's available index is at most a queue size ahead of the device's.
fn available_in_range(vring: &Vring, mem: &GuestRam) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| (idx - Wrapping(queue.next_avail())).0 <= queue.size())
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

    use super::*;
    use crate::memory::GuestRamAtomic;

    /// A started ring of 8 descriptors (all zero) whose driver set the available index to
    /// `avail_idx`.
    fn ring(avail_idx: u16) -> (Vring, GuestRamAtomic) {
        let ram = GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        ram.write_obj(avail_idx, GuestAddress(0x1000 + 2)).unwrap();
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
        let (vring, mem) = ring(100);
        let guard = mem.memory();
        let taken = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(&*guard)
            .is_some();
        assert!(!taken, "no chain can be taken");
        assert_eq!(
            vring.enable_notification().ok(),
            Some(true),
            "the ring claims more chains"
        );
        assert!(
            !go_round_again(&vring, &guard, false, "test queue"),
            "a round that took nothing ends the kick"
        );
    }

    /// Chains that arrive after a round looked (it took nothing) are still taken: the worker
    /// goes round again, or they would wait for a kick the driver need not send.
    #[test]
    fn chains_that_arrived_meanwhile_are_taken() {
        let (vring, mem) = ring(3);
        let guard = mem.memory();
        assert!(go_round_again(&vring, &guard, false, "test queue"));
        assert!(go_round_again(&vring, &guard, true, "test queue"));
        let (empty, mem) = ring(0);
        assert!(!go_round_again(&empty, &mem.memory(), false, "test queue"));
    }
}
