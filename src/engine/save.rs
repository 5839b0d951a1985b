//! Parallel save of a ramblock from guest memory.

use super::control::Control;
use super::spans::{coalesce, Run};
use super::writers::{self, Job, Queue};
use super::{effective_threads, parallel, tuning, unit_pages, Stats};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::memory::{DirtyBitmap, GuestSlice};
use crate::pagemap::KnownZero;

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
    let (gap, _, writers) = tuning::get();
    let rules = Rules {
        gap_pages: gap / ps,
        unit_pages: upp,
        known_zero: known_zero_probe(mem, dirty),
    };
    // One unit has nothing to overlap with: write on the worker.
    let depth = if units > 1 && writers > 0 {
        (writers as usize).max(nthreads)
    } else {
        0
    };
    writers::with_writers(img, block, depth, |q| {
        parallel::run(ctl, &what, units, nthreads, info.used_length, |u| {
            if q.failed() {
                return Err(writers::stopped());
            }
            let first = u * upp;
            let end = (first + upp).min(pages);
            let st = save_unit(img, block, mem, ps, first, end, dirty, &rules, q)?;
            Ok((st, (end - first) * ps))
        })
    })
}

/// The page-table probe of a save of `mem` (see [`crate::pagemap`]), or
/// `None`: when turned off, and when the caller gives a dirty bitmap (its
/// pages were written, so they are present; a walk of the whole block in
/// every pre-copy round would cost more than it saves).
pub(crate) fn known_zero_probe(
    mem: GuestSlice<'_>,
    dirty: Option<DirtyBitmap<'_>>,
) -> Option<KnownZero> {
    if dirty.is_some() || !tuning::page_tables() {
        return None;
    }
    KnownZero::probe(mem.as_ptr() as usize, mem.len())
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

/// How a unit's runs become requests.
struct Rules {
    /// Longest gap of zero pages written as zeros inside one request.
    gap_pages: u64,
    unit_pages: u64,
    /// Pages the page tables show to be zero are not read.
    known_zero: Option<KnownZero>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not in the dirty bitmap: neither read nor written.
    Skip,
    Zero,
    Data,
}

/// Save pages `[first, end)` (`mem` is the whole block): scan them into
/// runs of data, zero and skipped pages; zero runs clear their bits
/// (punching slots that held data); runs of data separated by short gaps
/// of zero pages whose bits are already clear are joined into one request,
/// queued to the writers.
#[allow(clippy::too_many_arguments)]
fn save_unit<'m>(
    img: &Image,
    block: usize,
    mem: GuestSlice<'m>,
    ps: u64,
    first: u64,
    end: u64,
    dirty: Option<DirtyBitmap<'_>>,
    rules: &Rules,
    q: &Queue<'_, 'm>,
) -> Result<Stats> {
    let mut st = Stats::default();
    let pages = |s: u64, n: u64| mem.subslice((s * ps) as usize, (n * ps) as usize);
    let known = known_zero_pages(rules, mem, ps, first, end);
    let mut known = known.iter().peekable();
    let mut segs: Vec<(u64, u64, Kind)> = Vec::new();
    for p in first..end {
        while known.next_if(|r| r.0 + r.1 <= p).is_some() {}
        let kind = if dirty.is_some_and(|d| !d.test(p)) {
            Kind::Skip
        } else {
            st.pages_scanned += 1;
            if known.peek().is_some_and(|r| r.0 <= p) || pages(p, 1)?.is_zero() {
                Kind::Zero
            } else {
                Kind::Data
            }
        };
        match segs.last_mut() {
            Some(l) if l.2 == kind => l.1 += 1,
            _ => segs.push((p, 1, kind)),
        }
    }
    let data: Vec<Run> = segs
        .iter()
        .filter(|s| s.2 == Kind::Data)
        .map(|s| (s.0, s.1))
        .collect();
    // A gap may be written only when it is one run of scanned zero pages
    // with nothing set or failed (skipped pages are never read or written).
    let zero_gap = |s: u64, n: u64| {
        segs.binary_search_by_key(&s, |g| g.0)
            .is_ok_and(|i| segs[i].2 == Kind::Zero && segs[i].1 == n)
            && img.gap_writable(block, s, n)
    };
    let mut spans = Vec::new();
    coalesce(&data, rules.gap_pages, rules.unit_pages, zero_gap, |sp| {
        spans.push(sp)
    });
    for &(s, n, kind) in &segs {
        if kind == Kind::Zero {
            img.discard_pages(block, s, n)?;
            st.pages_zero += n;
        }
    }
    for sp in spans {
        let runs = data[sp.first_run..sp.end_run].to_vec();
        st.pages_data += runs.iter().map(|r| r.1).sum::<u64>();
        st.bytes += sp.len * ps;
        q.write(Job {
            start: sp.start,
            mem: pages(sp.start, sp.len)?,
            runs,
        })?;
    }
    Ok(st)
}

/// Runs `(first page, count)` of `[first, end)` that the page tables show
/// to read as zero (see [`crate::pagemap`]); none when the kernel cannot
/// say.
fn known_zero_pages(rules: &Rules, mem: GuestSlice<'_>, ps: u64, first: u64, end: u64) -> Vec<Run> {
    rules
        .known_zero
        .as_ref()
        .map(|kz| kz.page_runs(mem, ps, first, end))
        .unwrap_or_default()
}
