//! Parallel restore of a ramblock into guest memory.

use super::control::Control;
use super::save::host_len;
use super::{effective_threads, parallel, unit_pages, Stats};
use crate::error::Result;
use crate::image::Image;
use crate::memory::GuestSliceMut;

/// Restore `block` into guest memory `mem` (at least the block's
/// `used_length` bytes). Runs of present pages are read straight into
/// `mem` (`O_DIRECT` when aligned); absent pages are zeroed only with
/// `zero_absent` (otherwise left untouched, for fresh memory). Works with
/// any thread count, whatever the saver used. Progress and cancel through
/// `ctl`.
pub fn read_ramblock_with(
    ctl: &Control,
    img: &Image,
    block: usize,
    mem: GuestSliceMut<'_>,
    zero_absent: bool,
    threads: u32,
) -> Result<Stats> {
    // A block skipped by x-ignore-shared has no pages here: refuse it
    // (ENOENT) before touching the caller's memory.
    img.block_in_file(block)?;
    let info = img.block_info(block)?;
    let mem = mem.subslice(0, host_len(info.used_length, &info.idstr)?)?;
    let ps = info.page_size;
    let pages = info.used_length / ps;
    if let Some(c) = img.chunked(block)? {
        return crate::compress::engine::restore(ctl, img, &c, mem, zero_absent, threads);
    }
    let upp = unit_pages(ps);
    let units = pages.div_ceil(upp);
    let nthreads = effective_threads(threads, units);
    let what = format!("restore of ramblock '{}'", info.idstr);
    parallel::run(ctl, &what, units, nthreads, info.used_length, |u| {
        let first = u * upp;
        let end = (first + upp).min(pages);
        let mut st = Stats::default();
        let mut res = Ok(());
        img.present_runs(block, first, end, |s, n, set| {
            if res.is_err() {
                return;
            }
            st.pages_scanned += n;
            // Units partition the pages, so no two threads write one byte.
            let dst = match mem.subslice((s * ps) as usize, (n * ps) as usize) {
                Ok(d) => d,
                Err(e) => {
                    res = Err(e);
                    return;
                }
            };
            if set {
                res = img.load_pages(block, s, dst);
                st.pages_data += n;
                st.bytes += n * ps;
            } else {
                st.pages_zero += n;
                if zero_absent {
                    dst.zero();
                }
            }
        })?;
        res?;
        Ok((st, (end - first) * ps))
    })
}

/// [`read_ramblock_with`] without progress or cancel.
pub fn read_ramblock(
    img: &Image,
    block: usize,
    mem: GuestSliceMut<'_>,
    zero_absent: bool,
    threads: u32,
) -> Result<Stats> {
    read_ramblock_with(&Control::new(), img, block, mem, zero_absent, threads)
}

/// Safe convenience: restore a block into a new `Vec` (absent pages zero).
/// The allocation is the block's `used_length`, which the format layer
/// checked against the file's size.
pub fn read_ramblock_to_vec(img: &Image, block: usize, threads: u32) -> Result<Vec<u8>> {
    let info = img.block_info(block)?;
    let mut v = vec![0u8; host_len(info.used_length, &info.idstr)?];
    read_ramblock(
        img,
        block,
        GuestSliceMut::from_mut_slice(&mut v),
        false,
        threads,
    )?;
    Ok(v)
}
