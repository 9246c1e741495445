//! Which worker thread serves which vrings (`--worker-threads`), and what a thread's device
//! event means.
//!
//! Receiveq N is vring 2N, transmitq N is vring 2N+1 and vring 2P (P pairs offered) is the
//! controlq with VIRTIO_NET_F_MQ (virtio 1.2 §5.1.2). With T threads, pair N is served by thread
//! N mod T, and thread 0 also serves vring 2P. vhost-user-backend gives each thread the vrings
//! of its bit mask in ascending vring order (`VhostUserHandler::new`), and a kick on one of them
//! arrives as that vring's position in the thread's list (`update_vring_registration`: the
//! number of the mask's bits below it), so a thread's device event `e < 2P+1` is the `e`-th set
//! bit of its mask. Events above `2P+1` are the TAP queues' readiness: pair N's is `2P+2+N`.

/// Default worker threads for a port of `pairs` queue pairs: one per pair, but no more than
/// the CPUs this process may run on (`std::thread::available_parallelism`, i.e. its affinity
/// mask and cgroup quota), since each busy-polls its queues for `--poll-us` and more pollers
/// than CPUs only take the CPU from each other. At least 1.
pub fn default_threads(pairs: u16) -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads_for(pairs, cpus)
}

/// One thread per pair, at most `cpus`, at least 1.
fn threads_for(pairs: u16, cpus: usize) -> u16 {
    let cpus = u16::try_from(cpus).unwrap_or(u16::MAX);
    pairs.min(cpus).max(1)
}

/// The vrings of one port's connection spread over its worker threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pairs: u16,
    /// One vring bit mask per thread.
    masks: Vec<u64>,
}

impl Layout {
    /// `pairs` queue pairs on `threads` threads; `threads` is clamped to `1..=pairs` (a thread
    /// with no pair would serve nothing).
    ///
    /// `pairs` must leave room for the control queue in a 64-bit mask (at most 31; the command
    /// line allows [`crate::cli::MAX_QUEUE_PAIRS`]).
    pub fn new(pairs: u16, threads: u16) -> Layout {
        let threads = usize::from(threads.clamp(1, pairs.max(1)));
        let mut masks = vec![0u64; threads];
        for q in 0..usize::from(pairs) {
            masks[q % threads] |= 0b11 << (2 * q);
        }
        masks[0] |= 1 << (2 * pairs);
        Layout { pairs, masks }
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.masks.len()
    }

    /// The thread that serves pair `pair`.
    pub fn thread_of(&self, pair: usize) -> usize {
        pair % self.threads()
    }

    /// One vring bit mask per thread (vhost-user-backend's `queues_per_thread`).
    pub fn masks(&self) -> &[u64] {
        &self.masks
    }

    /// The vring index of `thread`'s device event `event` when it is a kick (the `event`-th
    /// vring of the thread), `None` for any other event.
    pub fn vring_of(&self, thread: usize, event: u16) -> Option<usize> {
        let mut mask = *self.masks.get(thread)?;
        for _ in 0..event {
            mask &= mask.checked_sub(1)?;
        }
        (mask != 0).then(|| mask.trailing_zeros() as usize)
    }

    /// Where vring `vring` is in `thread`'s vrings, `None` when the thread does not serve it.
    pub fn slot_of(&self, thread: usize, vring: usize) -> Option<usize> {
        let mask = *self.masks.get(thread)?;
        let bit = 1u64.checked_shl(u32::try_from(vring).ok()?)?;
        (mask & bit != 0).then(|| (mask & (bit - 1)).count_ones() as usize)
    }

    /// The device event of pair `pair`'s TAP queue readiness (above the vring events and the
    /// `2P+1` vhost-user-backend keeps for itself).
    pub fn tap_event(&self, pair: usize) -> u16 {
        2 * self.pairs + 2 + pair as u16
    }

    /// The pair whose TAP queue event is `event`, if it is one.
    pub fn tap_pair(&self, event: u16) -> Option<usize> {
        let pair = usize::from(event.checked_sub(2 * self.pairs + 2)?);
        (pair < usize::from(self.pairs)).then_some(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_one_thread_per_pair_up_to_the_cpus() {
        assert_eq!(threads_for(4, 8), 4);
        assert_eq!(threads_for(4, 2), 2);
        assert_eq!(threads_for(2, 1), 1);
        assert_eq!(threads_for(1, 0), 1);
        assert_eq!(threads_for(3, 1 << 20), 3);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(usize::from(default_threads(16)), cpus.min(16));
    }

    #[test]
    fn one_thread_per_pair_is_the_old_layout() {
        let l = Layout::new(3, 3);
        assert_eq!(l.masks(), [0b100_0011, 0b1100, 0b11_0000]);
        assert_eq!(l.vring_of(0, 0), Some(0));
        assert_eq!(l.vring_of(0, 1), Some(1));
        assert_eq!(l.vring_of(0, 2), Some(6));
        assert_eq!(l.vring_of(0, 3), None);
        assert_eq!(l.vring_of(2, 1), Some(5));
        assert_eq!(l.vring_of(3, 0), None);
    }

    #[test]
    fn one_thread_serves_every_vring() {
        let l = Layout::new(2, 1);
        assert_eq!(l.masks(), [0b1_1111]);
        for e in 0..5 {
            assert_eq!(l.vring_of(0, e), Some(usize::from(e)));
            assert_eq!(l.slot_of(0, usize::from(e)), Some(usize::from(e)));
        }
        assert_eq!(l.vring_of(0, 5), None);
        assert_eq!(l.vring_of(0, u16::MAX), None);
        assert_eq!(l.slot_of(0, 5), None);
        assert_eq!(l.slot_of(0, 64), None);
        assert_eq!(l.slot_of(0, usize::MAX), None);
    }

    #[test]
    fn pairs_go_round_robin_and_slots_invert_events() {
        let l = Layout::new(5, 2);
        assert_eq!(l.masks(), [0b111_0011_0011, 0b00_1100_1100]);
        for t in 0..2 {
            for e in 0..8u16 {
                if let Some(v) = l.vring_of(t, e) {
                    assert_eq!(l.slot_of(t, v), Some(usize::from(e)));
                    assert!(v == 10 || l.thread_of(v / 2) == t);
                }
            }
        }
        // Thread 1: pair 1 (vrings 2, 3), pair 3 (vrings 6, 7).
        assert_eq!(l.vring_of(1, 2), Some(6));
        assert_eq!(l.slot_of(1, 7), Some(3));
        assert_eq!(l.slot_of(0, 7), None);
    }

    #[test]
    fn threads_are_clamped_and_tap_events_are_per_pair() {
        assert_eq!(Layout::new(2, 0).threads(), 1);
        assert_eq!(Layout::new(2, 9).threads(), 2);
        let l = Layout::new(2, 1);
        assert_eq!(l.tap_event(0), 6);
        assert_eq!(l.tap_event(1), 7);
        assert_eq!(l.tap_pair(5), None);
        assert_eq!(l.tap_pair(6), Some(0));
        assert_eq!(l.tap_pair(7), Some(1));
        assert_eq!(l.tap_pair(8), None);
    }
}
