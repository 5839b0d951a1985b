//! Parallel save of a ramblock from guest memory.

use super::control::Control;
use super::{effective_threads, parallel, unit_pages, Stats};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::memory::{DirtyBitmap, GuestSlice};

/// Save `block` from guest memory `mem` (at least the block's
/// `used_length` bytes). `dirty` (one bit per page) limits the save to
/// those pages: both an iterative round into the same image and a sparse
/// (virtio-mem, balloon) guest whose unpopulated pages are never touched.
/// Zero pages are not written; a page that was present and is now zero has
/// its bit cleared and its slot freed. `threads` 0 = a default. Progress
/// and cancel through `ctl`.
pub fn save_ramblock_with(
    ctl: &Control,
    img: &Image,
    block: usize,
    mem: GuestSlice<'_>,
    dirty: Option<DirtyBitmap<'_>>,
    threads: u32,
) -> Result<Stats> {
    // A block skipped by x-ignore-shared has no pages here: refuse it
    // (ENOENT) before touching the caller's memory.
    img.block_in_file(block)?;
    let info = img.block_info(block)?;
    let ps = info.page_size;
    let pages = info.used_length / ps;
    let mem = mem.subslice(0, host_len(info.used_length, &info.idstr)?)?;
    if let Some(d) = dirty {
        let need = DirtyBitmap::words_for(pages);
        if (d.len() as u64) < need {
            return Err(Error::Invalid(format!(
                "ramblock '{}': dirty bitmap has {} words, {need} needed for {pages} pages",
                info.idstr,
                d.len()
            )));
        }
    }
    // Fail early (before spawning) on a read-only image.
    if !img.is_writable() {
        return Err(Error::ReadOnly(format!(
            "{}: image is open read-only",
            img.channel().name()
        )));
    }
    if let Some(c) = img.chunked(block)? {
        return crate::compress::engine::save(ctl, img, &c, mem, dirty, threads);
    }
    let upp = unit_pages(ps);
    let units = pages.div_ceil(upp);
    let nthreads = effective_threads(threads, units);
    let what = format!("save of ramblock '{}'", info.idstr);
    parallel::run(ctl, &what, units, nthreads, info.used_length, |u| {
        let first = u * upp;
        let end = (first + upp).min(pages);
        let st = save_unit(img, block, mem, ps, first, end, dirty)?;
        Ok((st, (end - first) * ps))
    })
}

/// [`save_ramblock_with`] without progress or cancel.
pub fn save_ramblock(
    img: &Image,
    block: usize,
    mem: GuestSlice<'_>,
    dirty: Option<DirtyBitmap<'_>>,
    threads: u32,
) -> Result<Stats> {
    save_ramblock_with(&Control::new(), img, block, mem, dirty, threads)
}

/// A block's `used_length` as a memory length.
pub(super) fn host_len(used_length: u64, idstr: &str) -> Result<usize> {
    usize::try_from(used_length)
        .map_err(|_| Error::OutOfRange(format!("ramblock '{idstr}' does not fit in memory")))
}

/// Save pages `[first, end)`; `mem` is the whole block.
fn save_unit(
    img: &Image,
    block: usize,
    mem: GuestSlice<'_>,
    ps: u64,
    first: u64,
    end: u64,
    dirty: Option<DirtyBitmap<'_>>,
) -> Result<Stats> {
    let mut st = Stats::default();
    let pages = |s: u64, n: u64| mem.subslice((s * ps) as usize, (n * ps) as usize);
    // Current run: (start page, is zero).
    let mut run: Option<(u64, bool)> = None;
    let flush = |run: Option<(u64, bool)>, upto: u64, st: &mut Stats| -> Result<()> {
        if let Some((s, zero)) = run {
            let n = upto - s;
            if zero {
                img.discard_pages(block, s, n)?;
                st.pages_zero += n;
            } else {
                img.store_pages(block, s, pages(s, n)?)?;
                st.pages_data += n;
                st.bytes += n * ps;
            }
        }
        Ok(())
    };
    for p in first..end {
        if dirty.is_some_and(|d| !d.test(p)) {
            flush(run.take(), p, &mut st)?;
            continue;
        }
        st.pages_scanned += 1;
        let z = pages(p, 1)?.is_zero();
        match run {
            Some((_, rz)) if rz == z => {}
            _ => {
                flush(run.take(), p, &mut st)?;
                run = Some((p, z));
            }
        }
    }
    flush(run, end, &mut st)?;
    Ok(st)
}
