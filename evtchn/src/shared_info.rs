//! The event-channel page of one receiving endpoint: Xen's 2-level event channel ABI
//! (public/xen.h `struct shared_info` and `struct vcpu_info`) with one virtual CPU.
//!
//! Layout (byte offsets, as in Xen's `shared_info` on 64-bit with `vcpu_info[0]` at the start):
//!
//! | bytes        | field                                                            |
//! |--------------|------------------------------------------------------------------|
//! | 0..4         | `evtchn_upcall_pending`: nonzero once a doorbell has been rung and not yet handled |
//! | 8..16        | `evtchn_pending_sel`: bit `w` set when word `w` of `evtchn_pending` may hold news |
//! | 2048..2560   | `evtchn_pending[64]`: one bit per port                          |
//! | 2560..3072   | `evtchn_mask[64]`: one bit per port                             |
//!
//! Why 2-level and not FIFO: every bit pattern of these bitmaps is a valid state, and each
//! operation is one atomic read-modify-write on one word. A peer that scribbles on the page can
//! raise spurious events or hide events of its own channels, but cannot create a state the
//! receiver has to walk (FIFO's LINK fields form queues: a scribbled LINK makes a cycle the
//! receiver must detect). 4096 ports per domain is plenty for a process-level model, and pvio has
//! no use for FIFO's priorities. The doorbell (ring.h's "upcall") is the receiver's eventfd.
//!
//! Every read-modify-write here is `SeqCst`: sender and receiver run a store-buffering handshake
//! on three locations (pending bit, selector bit, upcall flag), which needs a single total order.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::mapping::{MappingError, SharedRegion, PAGE_SIZE};
use crate::Port;

/// Number of ports of the 2-level ABI with 64-bit words (`EVTCHN_2L_NR_CHANNELS`).
pub const NR_EVENT_CHANNELS: u32 = 64 * 64;
/// Byte offset of `evtchn_upcall_pending`.
pub const UPCALL_PENDING_OFFSET: usize = 0;
/// Byte offset of `evtchn_pending_sel`.
pub const PENDING_SEL_OFFSET: usize = 8;
/// Byte offset of the `evtchn_pending` bitmap.
pub const EVTCHN_PENDING_OFFSET: usize = 2048;
/// Byte offset of the `evtchn_mask` bitmap.
pub const EVTCHN_MASK_OFFSET: usize = 2560;

/// What a send did to the receiver's page (Xen's `evtchn_2l_set_pending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The port was already pending: nothing new to tell.
    AlreadyPending,
    /// The port is masked: left pending, no wake-up (unmask raises it).
    Masked,
    /// Pending set, but the receiver already has a wake-up outstanding that covers it.
    Coalesced,
    /// Pending set and the receiver must be woken: ring its doorbell.
    Raise,
    /// (From [`crate::Domain::notify`] only.) The port's peer has not bound yet, so the send was
    /// dropped, as Xen drops sends on an unbound port.
    Unbound,
}

/// A 2-level event-channel page (see the module docs).
#[derive(Debug)]
pub struct SharedInfo {
    region: SharedRegion,
}

impl SharedInfo {
    /// Wraps a region of at least one page (a fresh one reads as: nothing pending, nothing
    /// masked).
    ///
    /// # Errors
    /// [`MappingError::BadSize`] if the region is smaller than a page.
    pub fn new(region: SharedRegion) -> Result<Self, MappingError> {
        if region.len() < PAGE_SIZE {
            return Err(MappingError::BadSize {
                len: region.len() as u64,
            });
        }
        Ok(Self { region })
    }

    /// The region behind the page, to hand to senders.
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    fn word(&self, base: usize, word: usize) -> &AtomicU64 {
        self.region
            .atomic_u64(base + 8 * word)
            .expect("bitmap words lie in the first page: word < 64")
    }

    fn upcall(&self) -> &AtomicU32 {
        self.region
            .atomic_u32(UPCALL_PENDING_OFFSET)
            .expect("upcall flag lies in the first page")
    }

    fn selector(&self) -> &AtomicU64 {
        self.region
            .atomic_u64(PENDING_SEL_OFFSET)
            .expect("selector lies in the first page")
    }

    /// Sender side of EVTCHNOP_send for `port` of this page's owner (Xen's
    /// `evtchn_2l_set_pending`): sets the pending bit and, if the port is unmasked and newly
    /// pending, marks its word in the selector and the upcall flag.
    ///
    /// `port` must be below [`NR_EVENT_CHANNELS`]; callers check.
    pub fn send(&self, port: Port) -> SendOutcome {
        let (w, bit) = split(port);
        if self
            .word(EVTCHN_PENDING_OFFSET, w)
            .fetch_or(bit, Ordering::SeqCst)
            & bit
            != 0
        {
            return SendOutcome::AlreadyPending;
        }
        // SeqCst load after the SeqCst RMW above: pairs with `unmask`, which clears the mask bit
        // and then reads the pending bit; at least one of the two sees the other's write.
        if self.word(EVTCHN_MASK_OFFSET, w).load(Ordering::SeqCst) & bit != 0 {
            return SendOutcome::Masked;
        }
        self.mark_word_pending(w)
    }

    /// Sets word `w`'s selector bit and then the upcall flag; `Raise` if the flag was clear
    /// (Xen's `vcpu_mark_events_pending`).
    fn mark_word_pending(&self, w: usize) -> SendOutcome {
        // SeqCst RMW: ordered after the pending-bit set, so a receiver that clears the selector
        // after this sees the pending bit when it scans the word.
        if self.selector().fetch_or(1 << w, Ordering::SeqCst) & (1 << w) != 0 {
            return SendOutcome::Coalesced;
        }
        // SeqCst RMW: ordered after the selector set. The receiver clears the flag before it
        // clears the selector, so if we see the flag still set, its coming scan sees our word.
        if self.upcall().swap(1, Ordering::SeqCst) != 0 {
            return SendOutcome::Coalesced;
        }
        SendOutcome::Raise
    }

    /// Sets the mask bit of `port` (EVTCHNOP_mask): sends leave it pending without a wake-up.
    pub fn mask(&self, port: Port) {
        let (w, bit) = split(port);
        // SeqCst RMW: one total order with senders' pending-bit sets and mask loads.
        self.word(EVTCHN_MASK_OFFSET, w)
            .fetch_or(bit, Ordering::SeqCst);
    }

    /// Clears the mask bit of `port` (EVTCHNOP_unmask). Returns true if the port was pending and
    /// the owner must now be woken (its doorbell rung), like Xen's `evtchn_2l_unmask`.
    pub fn unmask(&self, port: Port) -> bool {
        let (w, bit) = split(port);
        // SeqCst RMW then SeqCst load: pairs with `send` (pending set, then mask load) so a send
        // racing with the unmask is raised by at least one side.
        let was_masked = self
            .word(EVTCHN_MASK_OFFSET, w)
            .fetch_and(!bit, Ordering::SeqCst)
            & bit
            != 0;
        was_masked
            && self.word(EVTCHN_PENDING_OFFSET, w).load(Ordering::SeqCst) & bit != 0
            && self.mark_word_pending(w) == SendOutcome::Raise
    }

    /// Receiver side of the upcall (Linux's 2-level `__xen_evtchn_do_upcall`): clears the upcall
    /// flag, takes the selector, and for each selected word takes the pending bits of unmasked
    /// ports, clearing them. Appends the ports to `out` in ascending order. Masked pending ports
    /// stay pending.
    pub fn take_pending(&self, out: &mut Vec<Port>) {
        // SeqCst: the flag is cleared before the selector is taken, so a sender that still sees
        // it set has already set its selector bit, which the swap below collects.
        self.upcall().store(0, Ordering::SeqCst);
        // SeqCst swap: collects every word marked so far; senders marking after this find the
        // bit clear and raise a new upcall.
        let mut sel = self.selector().swap(0, Ordering::SeqCst);
        while sel != 0 {
            let w = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            // SeqCst load: the mask as of now; a port masked later is still delivered once.
            let unmasked = !self.word(EVTCHN_MASK_OFFSET, w).load(Ordering::SeqCst);
            // SeqCst RMW: clears only bits we deliver; the old value says which were set.
            let mut bits = self
                .word(EVTCHN_PENDING_OFFSET, w)
                .fetch_and(!unmasked, Ordering::SeqCst)
                & unmasked;
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                out.push(w as u32 * 64 + b);
            }
        }
    }

    /// Whether a wake-up has been raised and not yet collected by [`SharedInfo::take_pending`]
    /// (the upcall flag), checked without a syscall.
    pub fn upcall_pending(&self) -> bool {
        // Acquire: pairs with the senders' SeqCst swap; a scan that follows sees their bits.
        self.upcall().load(Ordering::Acquire) != 0
    }

    /// Whether `port`'s pending bit is set.
    pub fn is_pending(&self, port: Port) -> bool {
        let (w, bit) = split(port);
        // SeqCst: a snapshot for callers and tests; orders with the RMWs above.
        self.word(EVTCHN_PENDING_OFFSET, w).load(Ordering::SeqCst) & bit != 0
    }

    /// Whether `port`'s mask bit is set.
    pub fn is_masked(&self, port: Port) -> bool {
        let (w, bit) = split(port);
        // SeqCst: a snapshot for callers and tests; orders with the RMWs above.
        self.word(EVTCHN_MASK_OFFSET, w).load(Ordering::SeqCst) & bit != 0
    }
}

/// Word index and bit mask of `port` (reduced modulo [`NR_EVENT_CHANNELS`], so it never indexes
/// past the bitmaps).
fn split(port: Port) -> (usize, u64) {
    let p = port % NR_EVENT_CHANNELS;
    ((p / 64) as usize, 1u64 << (p % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> SharedInfo {
        SharedInfo::new(SharedRegion::create("shinfo", 1).unwrap()).unwrap()
    }

    #[test]
    fn send_raises_once_then_coalesces() {
        let s = page();
        assert_eq!(s.send(5), SendOutcome::Raise);
        assert_eq!(s.send(5), SendOutcome::AlreadyPending);
        // Another port in the same word: selector bit already set.
        assert_eq!(s.send(6), SendOutcome::Coalesced);
        // A port in another word: upcall flag already set.
        assert_eq!(s.send(200), SendOutcome::Coalesced);
        let mut out = Vec::new();
        s.take_pending(&mut out);
        assert_eq!(out, vec![5, 6, 200]);
        assert!(!s.is_pending(5));
        assert_eq!(s.send(5), SendOutcome::Raise);
    }

    #[test]
    fn masked_port_stays_pending_until_unmask() {
        let s = page();
        s.mask(9);
        assert_eq!(s.send(9), SendOutcome::Masked);
        assert!(s.is_pending(9));
        let mut out = Vec::new();
        s.take_pending(&mut out);
        assert!(out.is_empty());
        assert!(s.unmask(9));
        assert!(!s.is_masked(9));
        s.take_pending(&mut out);
        assert_eq!(out, vec![9]);
        // Unmask of a port that is not pending wakes nobody.
        s.mask(9);
        assert!(!s.unmask(9));
    }

    #[test]
    fn masked_pending_ports_survive_a_scan_of_their_word() {
        let s = page();
        s.mask(1);
        assert_eq!(s.send(1), SendOutcome::Masked);
        assert_eq!(s.send(2), SendOutcome::Raise);
        let mut out = Vec::new();
        s.take_pending(&mut out);
        assert_eq!(out, vec![2]);
        assert!(s.is_pending(1));
    }

    #[test]
    fn a_scribbled_page_yields_only_valid_ports() {
        let s = page();
        let mut x = 0x1234_5678_9abc_def1u64;
        for w in 0..(PAGE_SIZE / 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.region()
                .atomic_u64(w * 8)
                .unwrap()
                .store(x, Ordering::Relaxed);
        }
        let mut out = Vec::new();
        s.take_pending(&mut out);
        assert!(!out.is_empty());
        assert!(out.iter().all(|&p| p < NR_EVENT_CHANNELS));
        assert!(
            out.windows(2).all(|w| w[0] < w[1]),
            "ascending, no duplicates"
        );
        // Every delivered port is cleared; masked ones stay.
        assert!(out.iter().all(|&p| !s.is_pending(p)));
    }

    #[test]
    fn ports_wrap_inside_the_bitmaps() {
        let s = page();
        assert_eq!(s.send(NR_EVENT_CHANNELS + 3), SendOutcome::Raise);
        assert!(s.is_pending(3));
    }
}
