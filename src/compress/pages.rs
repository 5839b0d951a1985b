//! Page reads and writes on chunked blocks: a read verifies the whole
//! chunk; a write of part of a chunk is a read-modify-write of that chunk
//! under its lock (so concurrent writers of one chunk never lose each
//! other's pages).

use super::chunked::with_scratch;
use super::slot::Chunked;
use crate::error::Result;
use crate::image::Image;
use crate::memory::GuestSlice;

impl Image {
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
