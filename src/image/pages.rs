//! Page writes and reads at ramblock offsets.
//!
//! A write puts the data in the page's slot first and sets the page's bit
//! only after the write returned, so a bitmap written out by `sync` never
//! claims a page whose data was not written. An all-zero page clears its
//! bit and frees its slot (punch hole); a clear bit reads as a zero page
//! whatever the slot holds.

use super::{Block, Image};
use crate::error::{Error, Result};
use crate::memory::{GuestSlice, GuestSliceMut};

impl Image {
    /// Check `[offset, offset+len)` against block `block`: page aligned,
    /// non-empty, inside the block.
    pub(crate) fn check_range(&self, block: usize, offset: u64, len: u64) -> Result<&Block> {
        let b = self.block_in_file(block)?;
        let l = &b.layout;
        if offset % l.page_size != 0 {
            return Err(Error::Invalid(format!(
                "ramblock '{}': offset 0x{offset:x} is not a multiple of the page size {}",
                l.idstr, l.page_size
            )));
        }
        if len == 0 || len % l.page_size != 0 {
            return Err(Error::Invalid(format!(
                "ramblock '{}': length {len} is not a non-zero multiple of the page size {}",
                l.idstr, l.page_size
            )));
        }
        match offset.checked_add(len) {
            Some(end) if end <= l.used_length => Ok(b),
            _ => Err(Error::OutOfRange(format!(
                "ramblock '{}': range 0x{offset:x}+0x{len:x} is outside the ramblock (used_length 0x{:x})",
                l.idstr, l.used_length
            ))),
        }
    }

    /// Block `block` for the slot-level paths, which only plain blocks
    /// have (a chunked block's slots hold chunks, not pages).
    fn plain_block(&self, block: usize) -> Result<&Block> {
        let b = self.block_in_file(block)?;
        if b.chunks.is_some() {
            return Err(Error::Unsupported(format!(
                "ramblock '{}' is chunked (compressed or checksummed): its slots hold chunks, not pages; use the page or ramblock calls",
                b.layout.idstr
            )));
        }
        Ok(b)
    }

    /// Write one page at byte `offset` inside `block`.
    pub fn write_page(&self, block: usize, offset: u64, page: &[u8]) -> Result<()> {
        let b = self.block(block)?;
        if page.len() as u64 != b.layout.page_size {
            return Err(Error::Invalid(format!(
                "ramblock '{}': a page is {} bytes, got a buffer of {}",
                b.layout.idstr,
                b.layout.page_size,
                page.len()
            )));
        }
        self.write_pages(block, offset, page)
    }

    /// Write whole pages from `buf` (length a multiple of the page size).
    pub fn write_pages(&self, block: usize, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_guest_pages(block, offset, GuestSlice::from_slice(buf))
    }

    /// Write whole pages from guest memory (its length a non-zero multiple
    /// of the page size). Zero pages clear their bits (and free their
    /// slots); runs of data pages go out in one write each.
    pub fn write_guest_pages(&self, block: usize, offset: u64, mem: GuestSlice<'_>) -> Result<()> {
        let b = self.check_range(block, offset, mem.len() as u64)?;
        let ps = b.layout.page_size;
        let first = offset / ps;
        let n = mem.len() as u64 / ps;
        if let Some(c) = self.chunked(block)? {
            return self.write_pages_chunked(&c, first, mem);
        }
        let pages = |i: u64, k: u64| mem.subslice((i * ps) as usize, (k * ps) as usize);
        let mut i = 0;
        while i < n {
            let z = pages(i, 1)?.is_zero();
            let mut j = i + 1;
            while j < n && pages(j, 1)?.is_zero() == z {
                j += 1;
            }
            if z {
                self.discard_pages(block, first + i, j - i)?;
            } else {
                self.store_pages(block, first + i, pages(i, j - i)?)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Write whole data pages from `mem` into their slots starting at page
    /// `first_page`, then set their bits. No zero check (the engine scans
    /// first).
    pub(crate) fn store_pages(
        &self,
        block: usize,
        first_page: u64,
        mem: GuestSlice<'_>,
    ) -> Result<()> {
        let ps = self.plain_block(block)?.layout.page_size;
        let n = mem.len() as u64 / ps;
        self.store_span(block, first_page, mem, &[(first_page, n)])
    }

    /// Mark pages zero: clear their bits and, when any was set, free their
    /// slots.
    pub(crate) fn discard_pages(&self, block: usize, first_page: u64, npages: u64) -> Result<()> {
        let b = self.plain_block(block)?;
        let l = &b.layout;
        // Nothing to change (the common case when saving into a new image):
        // no gate, no update mark. A read-only image still refuses.
        if self.writable
            && !b.bitmap.any_in_range(first_page, npages)
            && !b.failed.any_in_range(first_page, npages)
        {
            return Ok(());
        }
        let _gate = self.write_gate()?;
        if b.bitmap.clear_range(first_page, npages) {
            let off = l.pages_offset + first_page * l.page_size;
            match self.ch.punch_hole(off, npages * l.page_size) {
                // A clear bit means "zero page" whatever the slot holds, so a
                // file system without hole punching only costs space.
                Ok(()) | Err(Error::Unsupported(_)) => {}
                // The bits are already clear, so the pages read as zero:
                // the logical content is right, only the space is not freed.
                Err(e) => {
                    b.failed.clear_range(first_page, npages);
                    return Err(e);
                }
            }
        }
        b.failed.clear_range(first_page, npages);
        Ok(())
    }

    /// Read one page; returns true when present, false for a zero page
    /// (then `page` is zero-filled).
    pub fn read_page(&self, block: usize, offset: u64, page: &mut [u8]) -> Result<bool> {
        let b = self.block_in_file(block)?;
        let ps = b.layout.page_size;
        if page.len() as u64 != ps {
            return Err(Error::Invalid(format!(
                "ramblock '{}': a page is {ps} bytes, got a buffer of {}",
                b.layout.idstr,
                page.len()
            )));
        }
        self.check_range(block, offset, ps)?;
        let idx = offset / ps;
        if let Some(c) = self.chunked(block)? {
            return self.read_page_chunked(&c, idx, page);
        }
        if !b.bitmap.test(idx) {
            page.fill(0);
            return Ok(false);
        }
        self.load_pages(block, idx, GuestSliceMut::from_mut_slice(page))?;
        Ok(true)
    }

    /// Read the slots of pages from `first_page` into `mem` (a whole
    /// number of pages) regardless of their bits.
    pub(crate) fn load_pages(
        &self,
        block: usize,
        first_page: u64,
        mem: GuestSliceMut<'_>,
    ) -> Result<()> {
        let b = self.plain_block(block)?;
        let l = &b.layout;
        let len = mem.len() as u64;
        let npages = len / l.page_size;
        let off = l.pages_offset + first_page * l.page_size;
        let iov = [libc::iovec {
            iov_base: mem.as_mut_ptr().cast(),
            iov_len: mem.len(),
        }];
        // SAFETY: `mem` is writable for its length (its constructor's
        // contract).
        let n = unsafe { self.ch.preadv_raw(&iov, off) }.map_err(|e| {
            context(
                e,
                &format!(
                    "ramblock '{}': reading pages {first_page}..{} at file offset 0x{off:x}",
                    l.idstr,
                    first_page + npages
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

/// Prefix an I/O error's message with what the image was doing.
pub(crate) fn context(e: Error, what: &str) -> Error {
    match e {
        Error::Io { msg, source } => Error::Io {
            msg: format!("{what}: {msg}"),
            source,
        },
        other => other,
    }
}
