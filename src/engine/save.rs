//! Parallel save of a ramblock from host memory.

use super::{effective_threads, parallel, unit_pages, Stats};
use crate::error::{Error, Result};
use crate::image::zero::is_zero;
use crate::image::Image;

/// A raw pointer that worker threads may share: the caller of
/// [`save_ramblock`] / `read_ramblock` guarantees the memory is valid for the
/// whole call, and each page is touched by exactly one unit.
#[derive(Clone, Copy)]
pub(crate) struct HostPtr(pub(crate) *mut u8);
// SAFETY: see the type's docs: validity for the call is the caller's
// contract; units partition the pages, so no two threads write one byte.
unsafe impl Send for HostPtr {}
// SAFETY: as above.
unsafe impl Sync for HostPtr {}

impl HostPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn ptr(self) -> *mut u8 {
        self.0
    }
}

/// Save `block` from host memory `host` (`used_length` bytes). `dirty`
/// (one bit per page, u64 words, LSB first) limits the save to those pages:
/// both an iterative round into the same image and a sparse (virtio-mem,
/// balloon) guest whose unpopulated pages are never touched. Zero pages are
/// not written; a page that was present and is now zero has its bit cleared
/// and its slot freed. `threads` 0 = a default.
///
/// # Safety
/// `host` must be valid for reads of the block's `used_length` bytes for the
/// duration of the call (other threads may change it; the saved bytes are
/// then some mix, as with any live save).
pub unsafe fn save_ramblock(
    img: &Image,
    block: usize,
    host: *const u8,
    dirty: Option<&[u64]>,
    threads: u32,
) -> Result<Stats> {
    // A block skipped by x-ignore-shared has no pages here: refuse it
    // (ENOENT) before touching the caller's memory.
    img.block_in_file(block)?;
    let info = img.block_info(block)?;
    let ps = info.page_size;
    let pages = info.used_length / ps;
    if host.is_null() {
        return Err(Error::Invalid(
            "save_ramblock: host memory pointer is NULL".into(),
        ));
    }
    if let Some(d) = dirty {
        let need = pages.div_ceil(64);
        if (d.len() as u64) < need {
            return Err(Error::Invalid(format!(
                "ramblock '{}': dirty bitmap has {} words, {need} needed for {pages} pages",
                info.idstr,
                d.len()
            )));
        }
    }
    // Fail early (before spawning) on a read-only image.
    if !img
        .channel()
        .flags()
        .contains(crate::channel::OpenFlags::WRITE)
    {
        return Err(Error::ReadOnly(format!(
            "{}: image is open read-only",
            img.channel().name()
        )));
    }
    let host = HostPtr(host as *mut u8);
    if let Some(c) = img.chunked(block)? {
        // SAFETY: forwarded caller contract.
        return unsafe { crate::compress::engine::save(img, &c, host, dirty, threads) };
    }
    let upp = unit_pages(ps);
    let units = pages.div_ceil(upp);
    let nthreads = effective_threads(threads, units);
    let what = format!("save of ramblock '{}'", info.idstr);
    parallel::run(img, &what, units, nthreads, info.used_length, |u| {
        let first = u * upp;
        let end = (first + upp).min(pages);
        // SAFETY: the caller's contract covers all pages of the block.
        let st = unsafe { save_unit(img, block, host, ps, first, end, dirty)? };
        Ok((st, (end - first) * ps))
    })
}

/// Save pages `[first, end)`.
///
/// # Safety
/// As [`save_ramblock`].
unsafe fn save_unit(
    img: &Image,
    block: usize,
    host: HostPtr,
    ps: u64,
    first: u64,
    end: u64,
    dirty: Option<&[u64]>,
) -> Result<Stats> {
    let mut st = Stats::default();
    // Current run: (start page, is zero).
    let mut run: Option<(u64, bool)> = None;
    let flush = |run: Option<(u64, bool)>, upto: u64, st: &mut Stats| -> Result<()> {
        if let Some((s, zero)) = run {
            let n = upto - s;
            if zero {
                img.discard_pages(block, s, n)?;
                st.pages_zero += n;
            } else {
                // SAFETY: pages s..upto lie inside the block's host memory.
                unsafe { img.store_pages(block, s, n, host.ptr().add((s * ps) as usize))? };
                st.pages_data += n;
                st.bytes += n * ps;
            }
        }
        Ok(())
    };
    for p in first..end {
        if let Some(d) = dirty {
            if d[(p / 64) as usize] & (1u64 << (p % 64)) == 0 {
                flush(run.take(), p, &mut st)?;
                continue;
            }
        }
        st.pages_scanned += 1;
        // SAFETY: page p lies inside the block's host memory.
        let z = unsafe { is_zero(host.ptr().add((p * ps) as usize), ps as usize) };
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
