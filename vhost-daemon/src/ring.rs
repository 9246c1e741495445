//! Helpers for a device's virtqueue loops (virtio 1.2 §2.7), shared by the daemons' workers.

use std::num::Wrapping;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::{GuestRam, Vring};

/// How many steps (a chain, or a batch of chains) one kick may take before the worker hands
/// the rest to a fresh kick, as Linux vhost's per-kick weight does: a driver whose used ring
/// overlaps its available ring makes every used entry look like a new chain, so without a
/// bound one kick never ends, and the worker never sees its exit event (found by the
/// vhost_user fuzz target: closing the session hung).
pub const KICK_BUDGET: usize = 4096;

/// The work of one kick of a virtqueue: a budget of [`KICK_BUDGET`] steps and the decision,
/// after each round, whether to go round again.
#[derive(Debug)]
pub struct Kick {
    left: usize,
}

impl Default for Kick {
    fn default() -> Self {
        Kick { left: KICK_BUDGET }
    }
}

impl Kick {
    /// Spends one step; `false` once the budget is spent: take no more chains in this kick.
    pub fn step(&mut self) -> bool {
        let Some(left) = self.left.checked_sub(1) else {
            return false;
        };
        self.left = left;
        true
    }

    /// Ends this kick's work early (its worker busy-polled the queue for as long as one event
    /// may take): [`Kick::go_round_again`] then kicks the queue again and returns `false`
    /// without re-enabling notifications, as when the budget is spent, so the event loop gets
    /// a turn and the queue is served again right after it.
    pub fn end_turn(&mut self) {
        self.left = 0;
    }

    /// After a round of taking chains with notifications off: whether to go round again, that
    /// is whether more chains arrived meanwhile (`enable_notification`). With the budget spent
    /// the worker kicks itself (the kick eventfd) and returns `false`, so its event loop gets a
    /// turn before the rest is taken. A round that took nothing while the ring says more are
    /// available goes round again only if the driver's available index is within a queue size
    /// of the device's and the next entry is in guest memory (chains that arrived after the
    /// round looked); otherwise no chain could ever be taken (virtio 1.2 §2.7.6): the driver
    /// broke its ring and the worker waits for its next kick instead of spinning, which also
    /// held the worker's lock against VHOST_USER_GET_VRING_BASE forever (found by the
    /// vhost_user fuzz target). `took`: the round took at least one chain; `what` names the
    /// queue in the log.
    pub fn go_round_again(&self, vring: &Vring, mem: &GuestRam, took: bool, what: &str) -> bool {
        if self.left == 0 {
            kick_again(vring, what);
            return false;
        }
        match vring.enable_notification() {
            Ok(true) if took || available_in_range(vring, mem) => true,
            Ok(true) => {
                log::warn!("{what}: the driver's available ring is broken");
                false
            }
            Ok(false) => false,
            Err(e) => {
                log::warn!("{what}: {e}");
                false
            }
        }
    }
}

/// Signals the queue's kick eventfd, so the worker's event loop runs the queue again after
/// its other events.
fn kick_again(vring: &Vring, what: &str) {
    let state = vring.get_ref();
    let Some(kick) = state.get_kick() else {
        return;
    };
    // SAFETY: the descriptor belongs to `kick`, which the read guard `state` keeps alive for
    // as long as the borrowed descriptor is used (this call).
    let fd = unsafe { BorrowedFd::borrow_raw(kick.as_raw_fd()) };
    if let Err(e) = nix::unistd::write(fd, &1u64.to_ne_bytes()) {
        log::warn!("{what}: cannot kick again: {e}");
    }
}

/// Whether the driver's available index is at most a queue size ahead of the device's and the
/// available ring's next entry can be read: otherwise the queue can take no chain however often
/// the worker goes round (an entry outside guest memory, found by the vhost_user fuzz target).
fn available_in_range(vring: &Vring, mem: &GuestRam) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    let next = queue.next_avail();
    let in_range = queue
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| (idx - Wrapping(next)).0 <= queue.size());
    in_range && next_entry_readable(queue.avail_ring(), next, queue.size(), mem)
}

/// Whether the available ring's entry for chain `next` (virtio 1.2 §2.7.6: 4 bytes of flags and
/// index, then one u16 per descriptor chain head) lies in guest memory.
fn next_entry_readable(avail_ring: u64, next: u16, size: u16, mem: &GuestRam) -> bool {
    let Some(slot) = next.checked_rem(size) else {
        return false;
    };
    GuestAddress(avail_ring)
        .checked_add(4 + 2 * u64::from(slot))
        .is_some_and(|addr| mem.read_obj::<u16>(addr).is_ok())
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

    use super::*;
    use crate::memory::GuestRamAtomic;

    /// A started ring of 8 descriptors (all zero) whose driver set the available index to
    /// `avail_idx`.
    fn ring(avail_idx: u16) -> (Vring, GuestRamAtomic) {
        ring_at(0x1000, avail_idx)
    }

    /// The same with the available ring at guest address `avail`.
    fn ring_at(avail: u64, avail_idx: u16) -> (Vring, GuestRamAtomic) {
        let ram = GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        ram.write_obj(avail_idx, GuestAddress(avail + 2)).unwrap();
        let mem = GuestMemoryAtomic::new(ram);
        let vring = Vring::new(mem.clone(), 8).unwrap();
        vring.set_queue_size(8);
        vring.set_queue_info(0, avail, 0x2000).unwrap();
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
            !Kick::default().go_round_again(&vring, &guard, false, "test queue"),
            "a round that took nothing ends the kick"
        );
    }

    /// Chains that arrive after a round looked (it took nothing) are still taken: the worker
    /// goes round again, or they would wait for a kick the driver need not send.
    #[test]
    fn chains_that_arrived_meanwhile_are_taken() {
        let (vring, mem) = ring(3);
        let guard = mem.memory();
        assert!(Kick::default().go_round_again(&vring, &guard, false, "test queue"));
        assert!(Kick::default().go_round_again(&vring, &guard, true, "test queue"));
        let (empty, mem) = ring(0);
        assert!(!Kick::default().go_round_again(&empty, &mem.memory(), false, "test queue"));
    }

    /// Found by the vhost_user fuzz target: an available ring whose index is in guest memory
    /// but whose entries are not (the ring's last 4 bytes end guest memory) claims chains the
    /// queue can never take; the worker spun on it and closing the session hung.
    #[test]
    fn an_available_ring_past_guest_memory_does_not_spin() {
        let (vring, mem) = ring_at(0x10000 - 4, 1);
        let guard = mem.memory();
        assert_eq!(vring.enable_notification().ok(), Some(true));
        assert!(!Kick::default().go_round_again(&vring, &guard, false, "test queue"));
    }

    /// Gives `vring` a kick eventfd; returns the eventfd's other end.
    fn with_kick_fd(vring: &Vring) -> vmm_sys_util::eventfd::EventFd {
        let kick_fd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let copy = kick_fd.try_clone().unwrap();
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: `into_raw_fd` hands over the descriptor, which the File now owns alone.
        let file = unsafe { std::fs::File::from_raw_fd(copy.into_raw_fd()) };
        vring.set_kick(Some(file));
        kick_fd
    }

    /// A kick whose budget is spent takes no more and hands the rest to a fresh kick.
    #[test]
    fn a_spent_budget_ends_the_kick() {
        let (vring, mem) = ring(3);
        let kick_fd = with_kick_fd(&vring);
        let mut kick = Kick::default();
        let steps = std::iter::from_fn(|| kick.step().then_some(())).count();
        assert_eq!(steps, KICK_BUDGET);
        assert!(!kick.go_round_again(&vring, &mem.memory(), true, "test queue"));
        assert_eq!(kick_fd.read().unwrap(), 1, "the queue was kicked again");
    }

    /// A turn ended early (the worker polled for as long as one event may take) hands the
    /// queue to a fresh kick of its own and leaves the driver's notifications off
    /// (VRING_USED_F_NO_NOTIFY still set), so the driver is not asked to kick.
    #[test]
    fn an_ended_turn_kicks_again_with_notifications_off() {
        let (vring, mem) = ring(3);
        let kick_fd = with_kick_fd(&vring);
        vring.disable_notification().unwrap();
        let mut kick = Kick::default();
        assert!(kick.step());
        kick.end_turn();
        assert!(!kick.step(), "no chain is taken after the turn ended");
        let guard = mem.memory();
        assert!(!kick.go_round_again(&vring, &guard, true, "test queue"));
        assert_eq!(kick_fd.read().unwrap(), 1, "the queue was kicked again");
        let used_flags: u16 = guard.read_obj(GuestAddress(0x2000)).unwrap();
        assert_eq!(used_flags & 1, 1, "notifications were turned back on");
    }
}
