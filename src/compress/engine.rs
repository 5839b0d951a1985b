//! Parallel save and restore of chunked blocks: units are whole chunks,
//! so each worker compresses / decompresses its own chunks with its own
//! codec context and writes / reads them with positional (`O_DIRECT`) I/O.

use super::chunked::with_scratch;
use super::slot::Chunked;
use super::table::Entry;
use crate::engine::{effective_threads, parallel, HostPtr, Stats, UNIT_BYTES};
use crate::error::Result;
use crate::image::Image;

/// Chunks per unit of work: at least [`UNIT_BYTES`] of guest memory.
fn chunks_per_unit(chunk_bytes: u64) -> u64 {
    (UNIT_BYTES / chunk_bytes).max(1)
}

/// Save a chunked block from `host` (see `engine::save_ramblock`).
///
/// # Safety
/// `host` must be valid for reads of the block's `used_length` bytes.
pub(crate) unsafe fn save(
    img: &Image,
    c: &Chunked,
    host: HostPtr,
    dirty: Option<&[u64]>,
    threads: u32,
) -> Result<Stats> {
    let l = &c.b.layout;
    let ps = l.page_size;
    let cb = c.t.hdr.chunk_bytes;
    let cpu = chunks_per_unit(cb);
    let units = c.t.hdr.nchunks.div_ceil(cpu);
    let what = format!("save of ramblock '{}'", l.idstr);
    let nthreads = effective_threads(threads, units);
    let is_dirty = |p: u64| dirty.is_none_or(|d| d[(p / 64) as usize] & (1u64 << (p % 64)) != 0);
    parallel::run(img, &what, units, nthreads, l.used_length, |u| {
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
            let present = with_scratch(c.t.scratch_len(&c.b.layout), |s| {
                if ndirty < np {
                    img.load_chunk(c, i, s)?;
                }
                let data = s.data.as_mut_slice();
                for p in (fp..fp + np).filter(|&p| is_dirty(p)) {
                    let at = ((p - fp) * ps) as usize;
                    // SAFETY: page p lies inside the block's host memory
                    // (caller contract); `data` holds the whole chunk.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            host.ptr().add((p * ps) as usize),
                            data[at..].as_mut_ptr(),
                            ps as usize,
                        )
                    };
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

/// Restore a chunked block into `host` (see `engine::read_ramblock`).
///
/// # Safety
/// `host` must be valid for writes of the block's `used_length` bytes.
pub(crate) unsafe fn restore(
    img: &Image,
    c: &Chunked,
    host: HostPtr,
    zero_absent: bool,
    threads: u32,
) -> Result<Stats> {
    let l = &c.b.layout;
    let ps = l.page_size;
    let cb = c.t.hdr.chunk_bytes;
    let cpu = chunks_per_unit(cb);
    let units = c.t.hdr.nchunks.div_ceil(cpu);
    let what = format!("restore of ramblock '{}'", l.idstr);
    let nthreads = effective_threads(threads, units);
    parallel::run(img, &what, units, nthreads, l.used_length, |u| {
        let mut st = Stats::default();
        let mut covered = 0;
        for i in u * cpu..((u + 1) * cpu).min(c.t.hdr.nchunks) {
            let clen = c.t.chunk_len(l, i);
            covered += clen;
            let fp = i * cb / ps;
            let np = clen / ps;
            st.pages_scanned += np;
            let _g = c.t.lock(i).read();
            let empty = c.t.entry(l, i)? == Entry::Empty;
            let dst = |p: u64| {
                // SAFETY: page p of the chunk lies inside the block.
                unsafe { host.ptr().add(((fp + p) * ps) as usize) }
            };
            if empty && !c.b.bitmap.any_in_range(fp, np) {
                if zero_absent {
                    // SAFETY: the chunk lies inside the block's host memory.
                    unsafe { std::ptr::write_bytes(dst(0), 0, clen as usize) };
                }
                st.pages_zero += np;
                continue;
            }
            let mut present = 0;
            c.b.bitmap.for_each_run(fp, fp + np, |_, n, set| {
                if set {
                    present += n
                }
            });
            if zero_absent || present == np {
                // Straight into guest memory: no copy.
                // SAFETY: the chunk lies inside the block's host memory,
                // which the caller lends us for writes for this call; units
                // partition the chunks, so no other worker touches it.
                let out = unsafe { std::slice::from_raw_parts_mut(dst(0), clen as usize) };
                with_scratch(c.t.scratch_len(&c.b.layout), |s| {
                    img.load_chunk_into(c, i, out, &mut s.comp, &mut s.dctx)
                })?;
                st.pages_data += present;
                st.pages_zero += np - present;
                st.bytes += present * ps;
                continue;
            }
            with_scratch(c.t.scratch_len(&c.b.layout), |s| -> Result<()> {
                img.load_chunk(c, i, s)?;
                let data = s.data.as_slice();
                c.b.bitmap.for_each_run(fp, fp + np, |p, n, set| {
                    let p = p - fp;
                    let len = (n * ps) as usize;
                    if set {
                        // SAFETY: pages p..p+n of the chunk: inside both the
                        // scratch chunk and the block's host memory.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                data[(p * ps) as usize..].as_ptr(),
                                dst(p),
                                len,
                            )
                        };
                        st.pages_data += n;
                        st.bytes += n * ps;
                    } else {
                        st.pages_zero += n;
                    }
                });
                Ok(())
            })?;
        }
        Ok((st, covered))
    })
}
