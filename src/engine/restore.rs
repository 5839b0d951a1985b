//! Parallel restore of a ramblock into host memory.

use super::save::HostPtr;
use super::{effective_threads, parallel, unit_pages, Stats};
use crate::error::{Error, Result};
use crate::image::Image;

/// Restore `block` into host memory. Runs of present pages are read
/// straight into `host` (`O_DIRECT` when aligned); absent pages are zeroed
/// only with `zero_absent` (otherwise left untouched, for fresh memory).
/// Works with any thread count, whatever the saver used.
///
/// # Safety
/// `host` must be valid for writes of the block's `used_length` bytes for
/// the duration of the call.
pub unsafe fn read_ramblock(
    img: &Image,
    block: usize,
    host: *mut u8,
    zero_absent: bool,
    threads: u32,
) -> Result<Stats> {
    // A block skipped by x-ignore-shared has no pages here: refuse it
    // (ENOENT) before touching the caller's memory.
    img.block_in_file(block)?;
    let info = img.block_info(block)?;
    if host.is_null() {
        return Err(Error::Invalid(
            "read_ramblock: host memory pointer is NULL".into(),
        ));
    }
    let ps = info.page_size;
    let pages = info.used_length / ps;
    let host = HostPtr(host);
    if let Some(c) = img.chunked(block)? {
        // SAFETY: forwarded caller contract.
        return unsafe { crate::compress::engine::restore(img, &c, host, zero_absent, threads) };
    }
    let upp = unit_pages(ps);
    let units = pages.div_ceil(upp);
    let nthreads = effective_threads(threads, units);
    let what = format!("restore of ramblock '{}'", info.idstr);
    parallel::run(img, &what, units, nthreads, info.used_length, |u| {
        let first = u * upp;
        let end = (first + upp).min(pages);
        let mut st = Stats::default();
        let mut res = Ok(());
        img.present_runs(block, first, end, |s, n, set| {
            if res.is_err() {
                return;
            }
            st.pages_scanned += n;
            // SAFETY: pages s..s+n lie inside the block's host memory.
            let dst = unsafe { host.ptr().add((s * ps) as usize) };
            if set {
                // SAFETY: as above; units partition the pages.
                res = unsafe { img.load_pages(block, s, n, dst) };
                st.pages_data += n;
                st.bytes += n * ps;
            } else {
                st.pages_zero += n;
                if zero_absent {
                    // SAFETY: as above.
                    unsafe { std::ptr::write_bytes(dst, 0, (n * ps) as usize) };
                }
            }
        })?;
        res?;
        Ok((st, (end - first) * ps))
    })
}

/// Safe convenience: restore a block into a new `Vec` (absent pages zero).
/// The allocation is the block's `used_length`, which the format layer
/// checked against the file's size.
pub fn read_ramblock_to_vec(img: &Image, block: usize, threads: u32) -> Result<Vec<u8>> {
    let info = img.block_info(block)?;
    let len = usize::try_from(info.used_length).map_err(|_| {
        Error::OutOfRange(format!("ramblock '{}' does not fit in memory", info.idstr))
    })?;
    let mut v = vec![0u8; len];
    // SAFETY: `v` is valid for writes of `used_length` bytes.
    unsafe { read_ramblock(img, block, v.as_mut_ptr(), false, threads)? };
    Ok(v)
}
