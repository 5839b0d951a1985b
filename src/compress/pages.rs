//! Page reads and writes on chunked blocks: a read verifies the whole
//! chunk; a write of part of a chunk is a read-modify-write of that chunk
//! under its lock (so concurrent writers of one chunk never lose each
//! other's pages).

use super::chunked::{decompressor, with_scratch};
use super::slot::Chunked;
use super::table::Entry;
use crate::error::Result;
use crate::image::Image;
use crate::memory::GuestSlice;

impl Image {
    /// Guest bytes per chunk of `block`, or None for a plain block.
    pub(crate) fn chunk_bytes(&self, block: usize) -> Result<Option<u64>> {
        Ok(self.chunked(block)?.map(|c| c.t.hdr.chunk_bytes))
    }

    /// Chunk `i` of chunked `block`, read, decompressed and verified (as
    /// every read path does) into `out` (the chunk's length), for callers
    /// that place it elsewhere (on-demand restore). `Ok(false)`: the chunk
    /// holds no page and nothing was read (`out` is left as it was). On an
    /// error `out` may hold unverified bytes: the caller must not use them.
    pub(crate) fn read_chunk_verified(&self, block: usize, i: u64, out: &mut [u8]) -> Result<bool> {
        let c = self.chunked(block)?.ok_or_else(|| {
            crate::error::Error::Invalid(format!(
                "ramblock '{}' is not chunked",
                self.block(block)
                    .map(|b| b.layout.idstr.as_str())
                    .unwrap_or("?")
            ))
        })?;
        let l = &c.b.layout;
        let cb = c.t.hdr.chunk_bytes;
        if i >= c.t.hdr.nchunks || out.len() as u64 != c.t.chunk_len(l, i) {
            return Err(crate::error::Error::OutOfRange(format!(
                "{}: {} bytes asked, the chunk has {} (of {} chunks)",
                c.name(i),
                out.len(),
                if i < c.t.hdr.nchunks {
                    c.t.chunk_len(l, i)
                } else {
                    0
                },
                c.t.hdr.nchunks
            )));
        }
        let (first, np) = (i * cb / l.page_size, out.len() as u64 / l.page_size);
        let _g = c.t.lock(i).read();
        if c.t.entry(l, i)? == Entry::Empty && !c.b.bitmap.any_in_range(first, np) {
            return Ok(false);
        }
        with_scratch(c.t.scratch_len(l), |s| {
            self.load_chunk_into(&c, i, out, &mut s.comp, &mut s.dctx)
        })?;
        Ok(true)
    }

    /// Allocate and touch this thread's chunk buffer and decompression
    /// context for `block` (nothing for a plain block), so that its first
    /// chunk read pays no set-up: on-demand restore's fault thread calls it
    /// before its first fault.
    pub(crate) fn prepare_chunk_reads(&self, block: usize) -> Result<()> {
        let Some(c) = self.chunked(block)? else {
            return Ok(());
        };
        with_scratch(c.t.scratch_len(&c.b.layout), |s| {
            s.comp.as_mut_slice().fill(0);
            decompressor(&mut s.dctx).map(|_| ())
        })
    }

    /// Read page `idx` of a chunked block (true = present).
    pub(crate) fn read_page_chunked(&self, c: &Chunked, idx: u64, page: &mut [u8]) -> Result<bool> {
        if !c.b.bitmap.test(idx) {
            page.fill(0);
            return Ok(false);
        }
        let ps = c.b.layout.page_size;
        let cb = c.t.hdr.chunk_bytes;
        let i = idx * ps / cb;
        let _g = c.t.lock(i).read();
        with_scratch(c.t.scratch_len(&c.b.layout), |s| {
            self.load_chunk(c, i, s)?;
            let at = (idx * ps - i * cb) as usize;
            page.copy_from_slice(&s.data.as_slice()[at..at + ps as usize]);
            Ok(true)
        })
    }

    /// Write the pages of `mem` starting at page `first` of a chunked
    /// block (range already checked).
    pub(crate) fn write_pages_chunked(
        &self,
        c: &Chunked,
        first: u64,
        mem: GuestSlice<'_>,
    ) -> Result<()> {
        let ps = c.b.layout.page_size;
        let cb = c.t.hdr.chunk_bytes;
        let (start, end) = (first * ps, first * ps + mem.len() as u64);
        let mut i = start / cb;
        while i * cb < end {
            let clen = c.t.chunk_len(&c.b.layout, i);
            let (cs, ce) = (i * cb, i * cb + clen);
            let (a, b) = (start.max(cs), end.min(ce));
            let _g = c.t.lock(i).write();
            with_scratch(c.t.scratch_len(&c.b.layout), |s| {
                if a != cs || b != ce {
                    self.load_chunk(c, i, s)?;
                }
                let dst = &mut s.data.as_mut_slice()[(a - cs) as usize..(b - cs) as usize];
                mem.subslice((a - start) as usize, (b - a) as usize)?
                    .copy_to(dst);
                self.store_chunk(c, i, s).map(|_| ())
            })?;
            i += 1;
        }
        Ok(())
    }
}
