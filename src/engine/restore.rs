//! Parallel restore of a ramblock into guest memory.

use super::control::Control;
use super::save::host_len;
use super::scratch::ScratchPool;
use super::spans::{coalesce, Run, Span};
use super::{effective_threads, parallel, tuning, unit_pages, Stats};
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
    let gap_pages = tuning::get().1 / ps;
    let scratch = ScratchPool::new((gap_pages * ps) as usize);
    parallel::run(ctl, &what, units, nthreads, info.used_length, |u| {
        let first = u * upp;
        let end = (first + upp).min(pages);
        let mut st = Stats::default();
        let mut runs: Vec<Run> = Vec::new();
        let mut res = Ok(());
        img.present_runs(block, first, end, |s, n, set| {
            st.pages_scanned += n;
            if set {
                runs.push((s, n));
                st.pages_data += n;
                st.bytes += n * ps;
            } else {
                st.pages_zero += n;
                if zero_absent && res.is_ok() {
                    // Units partition the pages, so no two threads write
                    // one byte.
                    match mem.subslice((s * ps) as usize, (n * ps) as usize) {
                        Ok(d) => d.zero(),
                        Err(e) => res = Err(e),
                    }
                }
            }
        })?;
        res?;
        let mut spans = Vec::new();
        coalesce(&runs, gap_pages, upp, |_, _| true, |sp| spans.push(sp));
        for sp in spans {
            load(
                img,
                block,
                &mem,
                ps,
                &runs[sp.first_run..sp.end_run],
                sp,
                &scratch,
            )?;
        }
        Ok((st, (end - first) * ps))
    })
}

/// Read one span: its runs straight into guest memory, its gaps (absent
/// pages, whose slots are holes or stale bytes) into a scratch buffer, all
/// in one request. Guest pages of the gaps are not touched.
fn load(
    img: &Image,
    block: usize,
    mem: &GuestSliceMut<'_>,
    ps: u64,
    runs: &[Run],
    sp: Span,
    scratch: &ScratchPool,
) -> Result<()> {
    let at = |s: u64, n: u64| mem.subslice((s * ps) as usize, (n * ps) as usize);
    let buf = if runs.len() > 1 { scratch.take() } else { None };
    let Some(buf) = buf else {
        // One run, or no memory for a scratch buffer: a read per run.
        for &(s, n) in runs {
            img.load_pages(block, s, at(s, n)?)?;
        }
        return Ok(());
    };
    let mut iov = Vec::with_capacity(runs.len() * 2);
    let mut next = sp.start;
    for &(s, n) in runs {
        if s > next {
            iov.push(libc::iovec {
                iov_base: buf.ptr().cast(),
                iov_len: ((s - next) * ps) as usize,
            });
        }
        iov.push(libc::iovec {
            iov_base: at(s, n)?.as_mut_ptr().cast(),
            iov_len: (n * ps) as usize,
        });
        next = s + n;
    }
    // SAFETY: every iovec is guest memory of this span (writable per
    // `mem`'s contract; this unit's pages are written by this thread only)
    // or the scratch buffer, which a gap never overruns (gaps are at most
    // its size) and which no other thread uses meanwhile.
    let res = unsafe { img.load_span(block, sp.start, sp.len, &iov) };
    scratch.give(buf);
    res
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
