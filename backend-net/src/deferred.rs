//! Frame copies into receive buffers, held back until the delivery batch publishes its used
//! elements (as DPDK's vhost library batches small copies).
//!
//! Receive buffers sit in cache lines the driver's core owns, so each store into one waits for
//! the line to come over; made one frame at a time, between the batch's bookkeeping, every
//! such store held up the local stores behind it (the profile's stalls on stack stores in
//! `rx::deliver` and `RxQueue::offer`). Recorded during the batch and made back to back at its
//! end, the stores to the driver's lines go out together. Only the common case is deferred:
//! header and frame into a chain of one buffer that holds both, the frame contiguous at its
//! source; other frames are written at once, through cursors.

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::guest::{copy_into, prefetch_write, store_unless_equal, Slice};
use crate::hdr::HDR_LEN;

/// Frames longer than this (bytes) have their receive buffer's first line prefetched for writing
/// when their copy is recorded: the copy's many stores then find the line owned. Shorter frames
/// do not: their copy is a few stores, and the request takes a line fill buffer the transmit
/// headers' prefetches wait for (measured in ../benches/README.md).
const PREFETCH_ABOVE: usize = 128;

/// Where a deferred frame's bytes come from: `len` bytes at `ptr`, readable for `'s`. Another
/// guest's transmit buffer (in its memory, kept mapped by the sender's batch;
/// [`crate::guest::Cursor::contiguous_source`]) or bytes of our own (a backlogged or segmented
/// frame; [`Source::local`]). Two words, so it travels in registers: a [`Slice`] is five and
/// goes through the stack, where the loads of its fields waited on the stores that had just
/// put it there (measured in ../benches/README.md). Guest bytes may change under us, so a
/// source is only ever copied from, never read as a Rust slice.
#[derive(Clone, Copy, Debug)]
pub struct Source<'s> {
    ptr: NonNull<u8>,
    len: usize,
    _borrow: PhantomData<&'s [u8]>,
}

impl<'s> Source<'s> {
    /// Bytes of our own.
    pub fn local(bytes: &'s [u8]) -> Source<'s> {
        Source {
            ptr: NonNull::from(bytes).cast(),
            len: bytes.len(),
            _borrow: PhantomData,
        }
    }

    /// The `len` bytes at `ptr`.
    ///
    /// # Safety
    /// They are readable (guest memory included: the guest may write them) for `'s`.
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> Source<'s> {
        Source {
            ptr,
            len,
            _borrow: PhantomData,
        }
    }
}

/// One frame to write: its header (the first `hdr_len` bytes of `hdr`), then the frame.
#[derive(Debug)]
struct Copy<'d, 's> {
    /// The receive buffer, holding at least `hdr_len` + the frame's bytes.
    to: Slice<'d>,
    hdr: [u8; HDR_LEN],
    hdr_len: usize,
    from: Source<'s>,
}

/// The copies of one delivery batch into receive buffers of guest memory `'d`, from sources
/// that live for `'s`.
#[derive(Debug, Default)]
pub struct Copies<'d, 's> {
    list: Vec<Copy<'d, 's>>,
}

impl<'d, 's> Copies<'d, 's> {
    /// Room for `n` copies (a batch's frames), so recording them does not grow the list.
    pub fn with_capacity(n: usize) -> Self {
        Copies {
            list: Vec::with_capacity(n),
        }
    }

    /// Records the header `hdr[..hdr_len]` and the frame `from` for `to` (and prefetches the
    /// start of `to` for a frame above [`PREFETCH_ABOVE`] bytes); false (nothing recorded, the
    /// caller writes it itself) when `to` cannot hold both.
    #[inline(always)]
    pub fn push(
        &mut self,
        to: Slice<'d>,
        hdr: [u8; HDR_LEN],
        hdr_len: usize,
        from: Source<'s>,
    ) -> bool {
        let len = from.len;
        let fits = hdr_len <= HDR_LEN && hdr_len.checked_add(len).is_some_and(|n| n <= to.len());
        if fits {
            if len > PREFETCH_ABOVE {
                prefetch_write(to.ptr_guard().as_ptr());
            }
            self.list.push(Copy {
                to,
                hdr,
                hdr_len,
                from,
            });
        }
        fits
    }

    /// Makes the recorded copies ([`copy_into`]: marked dirty in the front-end's log while it
    /// is armed), before the batch publishes the used elements that hand the buffers over.
    pub fn run(&mut self) {
        for c in self.list.drain(..) {
            let (from, len) = (c.from.ptr.as_ptr().cast_const(), c.from.len);
            // SAFETY: `push` checked that `to` holds `hdr_len + len` bytes; the source is
            // readable for 's (`Source`: a guest one lies in a mapping its memory snapshot keeps,
            // and the batch that recorded it runs this before it ends); the header is ours.
            unsafe {
                // The usual header length as a constant: a compare and a few moves instead of a
                // `memmove`.
                if c.hdr_len == HDR_LEN {
                    store_unless_equal(&c.to, 0, &c.hdr);
                } else {
                    copy_into(&c.to, 0, c.hdr.as_ptr(), c.hdr_len);
                }
                copy_into(&c.to, c.hdr_len, from, len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::tests::{map_for_test, two_region_ram};
    use crate::guest::Cursor;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn copies_wait_for_run_and_refuse_what_does_not_fit() {
        let mem = two_region_ram();
        let mut arena = Vec::new();
        map_for_test(&mem, 0x1000, 100, &mut arena);
        map_for_test(&mem, 0x2000, 20, &mut arena);
        map_for_test(&mem, 0x3000, 9, &mut arena);
        mem.write_slice(&[7u8; 9], GuestAddress(0x3000)).unwrap();
        let hdr = [1u8; HDR_LEN];
        let frame = [9u8; 50];
        let mut copies = Copies::default();
        assert!(copies.push(arena[0], hdr, HDR_LEN, Source::local(&frame)));
        assert!(!copies.push(arena[1], hdr, HDR_LEN, Source::local(&frame)));
        let guest = Cursor::new(&arena[2..]).contiguous_source(9).unwrap();
        assert!(copies.push(arena[1], hdr, 10, guest));
        let mut got = [0u8; 62];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, [0u8; 62], "nothing written before run");
        copies.run();
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got[..HDR_LEN], &hdr);
        assert_eq!(&got[HDR_LEN..], &frame);
        let mut small = [0u8; 19];
        mem.read_slice(&mut small, GuestAddress(0x2000)).unwrap();
        assert_eq!(&small[..10], &[1u8; 10]);
        assert_eq!(&small[10..], &[7u8; 9]);
    }
}
