//! Parallel save and restore of chunked blocks: units are whole chunks,
//! so each worker compresses / decompresses its own chunks with its own
//! codec context and writes / reads them with positional (`O_DIRECT`) I/O.
//! Guest memory is only read and written through the `memory` views. A
//! save copies each chunk into the worker's scratch chunk first, so it is
//! checksummed and compressed from one consistent copy. A restore
//! (`restore.rs`) decompresses straight into guest memory where the whole
//! chunk is to be written, verifies it in the same pass, and zeroes the
//! chunk's range again when it does not verify.

use super::chunked::with_scratch;
use super::restore::restore_unit;
use super::slot::Chunked;
use crate::engine::{effective_threads, parallel, Control, Stats, UNIT_BYTES};
use crate::error::Result;
use crate::image::Image;
use crate::memory::{DirtyBitmap, GuestSlice, GuestSliceMut};

/// Chunks per unit of work: at least [`UNIT_BYTES`] of guest memory.
fn chunks_per_unit(chunk_bytes: u64) -> u64 {
    (UNIT_BYTES / chunk_bytes).max(1)
}

/// Save a chunked block from `mem` (the whole block; see
/// `engine::save_ramblock_with`).
pub(crate) fn save(
    ctl: &Control,
    img: &Image,
    c: &Chunked,
    mem: GuestSlice<'_>,
    dirty: Option<DirtyBitmap<'_>>,
    threads: u32,
) -> Result<Stats> {
    let l = &c.b.layout;
    let ps = l.page_size;
    let cb = c.t.hdr.chunk_bytes;
    let cpu = chunks_per_unit(cb);
    let units = c.t.hdr.nchunks.div_ceil(cpu);
    let what = format!("save of ramblock '{}'", l.idstr);
    let nthreads = effective_threads(threads, units);
    let is_dirty = |p: u64| dirty.is_none_or(|d| d.test(p));
    // Pages the page tables show to be zero are not read (`pagemap.rs`).
    let known_zero = crate::engine::known_zero_probe(mem, dirty);
    parallel::run(ctl, &what, units, nthreads, l.used_length, |u| {
        let mut st = Stats::default();
        let mut covered = 0;
        for i in u * cpu..((u + 1) * cpu).min(c.t.hdr.nchunks) {
            let clen = c.t.chunk_len(l, i);
            covered += clen;
            let (fp, np) = (i * cb / ps, clen / ps);
            let ndirty = (fp..fp + np).filter(|&p| is_dirty(p)).count() as u64;
            if ndirty == 0 {
                continue;
            }
            let _g = c.t.lock(i).write();
            let present = with_scratch(c.t.scratch_len(l), |s| {
                if ndirty < np {
                    img.load_chunk(c, i, s)?;
                }
                let data = s.data.as_mut_slice();
                let known = known_zero
                    .as_ref()
                    .map(|kz| kz.page_runs(mem, ps, fp, fp + np));
                let mut known = known.iter().flatten().peekable();
                for p in (fp..fp + np).filter(|&p| is_dirty(p)) {
                    let at = ((p - fp) * ps) as usize;
                    let page = &mut data[at..at + ps as usize];
                    while known.next_if(|r| r.0 + r.1 <= p).is_some() {}
                    if known.peek().is_some_and(|r| r.0 <= p) {
                        page.fill(0);
                    } else {
                        mem.subslice((p * ps) as usize, ps as usize)?.copy_to(page);
                    }
                }
                img.store_chunk(c, i, s)
            })?;
            st.pages_scanned += ndirty;
            st.pages_data += present;
            st.pages_zero += np - present;
            st.bytes += present * ps;
        }
        Ok((st, covered))
    })
}

/// Restore a chunked block into `mem` (the whole block; see
/// `engine::read_ramblock_with`).
pub(crate) fn restore(
    ctl: &Control,
    img: &Image,
    c: &Chunked,
    mem: GuestSliceMut<'_>,
    zero_absent: bool,
    threads: u32,
) -> Result<Stats> {
    let l = &c.b.layout;
    let cpu = chunks_per_unit(c.t.hdr.chunk_bytes);
    let units = c.t.hdr.nchunks.div_ceil(cpu);
    let what = format!("restore of ramblock '{}'", l.idstr);
    let nthreads = effective_threads(threads, units);
    parallel::run(ctl, &what, units, nthreads, l.used_length, |u| {
        let mut st = Stats::default();
        let chunks = u * cpu..((u + 1) * cpu).min(c.t.hdr.nchunks);
        let covered = chunks.clone().map(|i| c.t.chunk_len(l, i)).sum();
        restore_unit(img, c, &mem, zero_absent, chunks, &mut st)?;
        Ok((st, covered))
    })
}
