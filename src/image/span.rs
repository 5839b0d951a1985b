//! Span I/O: one request over several runs of present pages and the gaps
//! between them (the engine's coalesced saves and restores).
//!
//! A span write puts all of its slots on disk in one request and then sets
//! the bits of its present runs only: the gaps' slots receive the guest's
//! zero pages and their bits stay clear. Only gaps whose bits are all clear
//! (nothing to punch) may be written this way ([`Image::gap_writable`]);
//! a page that turns from data to zero still goes through `discard_pages`,
//! which clears its bit and punches its slot.

use super::pages::context;
use super::Image;
use crate::error::{Error, Result};
use crate::memory::GuestSlice;
use std::sync::atomic::Ordering;

impl Image {
    /// Whether pages `[first, first + n)` may be written as part of a span
    /// without being marked present: no bit is set and no earlier write of
    /// them failed.
    pub(crate) fn gap_writable(&self, block: usize, first: u64, n: u64) -> bool {
        self.block_in_file(block)
            .is_ok_and(|b| !b.bitmap.any_in_range(first, n) && !b.failed.any_in_range(first, n))
    }

    /// Write the pages of `mem` (a whole number) from page `start` on in
    /// one request, then set the bits of `runs` (each inside the span). No
    /// zero check.
    pub(crate) fn store_span(
        &self,
        block: usize,
        start: u64,
        mem: GuestSlice<'_>,
        runs: &[(u64, u64)],
    ) -> Result<()> {
        let ps = self.block_in_file(block)?.layout.page_size;
        let iov = [libc::iovec {
            // `pwritev` only reads through it: the const is not cast away
            // for a write.
            iov_base: mem.as_ptr().cast_mut().cast(),
            iov_len: mem.len(),
        }];
        // SAFETY: `mem` is readable for its length (its constructor's
        // contract).
        unsafe { self.store_span_iov(block, start, mem.len() as u64 / ps, &iov, runs) }
    }

    /// As [`store_span`](Self::store_span) with the span's bytes gathered
    /// from several buffers: `iov` covers exactly pages `[start, start +
    /// npages)`, in order.
    ///
    /// # Safety
    /// Every iovec must be valid for reads of its length for the call;
    /// `pwritev_raw` only reads them.
    pub(crate) unsafe fn store_span_iov(
        &self,
        block: usize,
        start: u64,
        npages: u64,
        iov: &[libc::iovec],
        runs: &[(u64, u64)],
    ) -> Result<()> {
        let b = self.block_in_file(block)?;
        let l = &b.layout;
        let _gate = self.write_gate()?;
        let len = npages * l.page_size;
        debug_assert_eq!(iov.iter().map(|v| v.iov_len as u64).sum::<u64>(), len);
        let off = l.pages_offset + start * l.page_size;
        // SAFETY: the caller guarantees the iovecs are readable.
        let res = unsafe { self.ch.pwritev_raw(iov, off) }
            .map_err(|e| {
                context(
                    e,
                    &format!(
                        "ramblock '{}': writing pages {start}..{} at file offset 0x{off:x}",
                        l.idstr,
                        start + npages
                    ),
                )
            })
            .and_then(|written| {
                if written == len {
                    Ok(())
                } else {
                    Err(Error::from_errno(
                        format!(
                            "ramblock '{}': short write at file offset 0x{off:x}: {written} of {len} bytes",
                            l.idstr
                        ),
                        libc::EIO,
                    ))
                }
            });
        if let Err(e) = res {
            b.failed_errno.store(e.errno(), Ordering::Relaxed);
            b.failed.set_range(start, npages);
            return Err(e);
        }
        b.failed.clear_range(start, npages);
        for &(s, n) in runs {
            debug_assert!(s >= start && s + n <= start + npages);
            b.bitmap.set_range(s, n);
        }
        Ok(())
    }

    /// Read the slots of pages `[start, start + npages)` in one request
    /// into `iov` (which covers exactly that many bytes).
    ///
    /// # Safety
    /// Every iovec must be valid for writes of its length.
    pub(crate) unsafe fn load_span(
        &self,
        block: usize,
        start: u64,
        npages: u64,
        iov: &[libc::iovec],
    ) -> Result<()> {
        let b = self.block_in_file(block)?;
        let l = &b.layout;
        let len = npages * l.page_size;
        debug_assert_eq!(iov.iter().map(|v| v.iov_len as u64).sum::<u64>(), len);
        let off = l.pages_offset + start * l.page_size;
        // SAFETY: the caller guarantees the iovecs are writable.
        let n = unsafe { self.ch.preadv_raw(iov, off) }.map_err(|e| {
            context(
                e,
                &format!(
                    "ramblock '{}': reading pages {start}..{} at file offset 0x{off:x}",
                    l.idstr,
                    start + npages
                ),
            )
        })?;
        if n != len {
            return Err(Error::Corrupt(format!(
                "ramblock '{}': page data at file offset 0x{off:x} is truncated: expected {len} bytes, the file has {n}",
                l.idstr
            )));
        }
        Ok(())
    }
}
