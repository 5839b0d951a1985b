//! Reading granules from the image and placing them with userfaultfd.

use super::Shared;
use crate::error::{Error, Result};
use crate::uffd::host::Staging;
use std::sync::atomic::Ordering;

/// Most bytes one placement holds `layout` (shared) for: bounds how long
/// the fault thread can wait to read events.
const PLACE_CHUNK: u64 = 256 << 10;
/// The same while the guest faults: the fault thread reads events (and so
/// serves a fault) after at most one of these per placer.
const PLACE_CHUNK_FAULTING: u64 = 64 << 10;

/// Largest prefetch read while the guest is quiet: the engine's unit, so
/// prefetch keeps as many bytes in flight as an eager restore.
const READ_CHUNK: u64 = crate::engine::UNIT_BYTES;
/// Largest prefetch read while the guest faults (and right after start):
/// a fault's read waits behind at most one of these per worker in the
/// device's queue.
const READ_CHUNK_FAULTING: u64 = 128 << 10;
/// How long after a fault prefetch keeps its reads small.
const FAULT_QUIET_NS: u64 = 20_000_000;

/// The outcome of a placement.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Done,
    /// An event is pending (the kernel said `EAGAIN`): read it, then retry.
    Again,
}

impl Shared {
    pub(super) fn addr(&self, g: u64) -> u64 {
        self.host.start + g * self.granule
    }

    /// Runs of granules in `[g0, g1)` by whether any of their image pages
    /// holds data.
    pub(super) fn granule_runs(&self, g0: u64, g1: u64) -> Result<Vec<(u64, u64, bool)>> {
        let ppg = self.granule / self.ps;
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut push = |g: u64, n: u64, present: bool| match out.last_mut() {
            Some(last) if last.2 == present && last.0 + last.1 == g => last.1 += n,
            _ => out.push((g, n, present)),
        };
        if ppg == 1 {
            self.img.present_runs(self.block, g0, g1, &mut push)?;
            return Ok(out);
        }
        for g in g0..g1 {
            let mut any = false;
            self.img
                .present_runs(self.block, g * ppg, (g + 1) * ppg, |_, _, set| any |= set)?;
            push(g, 1, any);
        }
        Ok(out)
    }

    /// Read granules `[g, g+n)` into `buf` from byte `off` (absent pages
    /// zeroed); returns whether any page held data.
    pub(super) fn read(&self, g: u64, n: u64, buf: &Staging, off: u64) -> Result<bool> {
        let ppg = self.granule / self.ps;
        let (first, end) = (g * ppg, (g + n) * ppg);
        let ps = self.ps;
        let mut res = Ok(false);
        self.img.present_runs(self.block, first, end, |s, k, set| {
            if res.is_err() {
                return;
            }
            let at = (off + (s - first) * ps) as usize;
            let mem = match buf.guest_mut(at, (k * ps) as usize) {
                Ok(m) => m,
                Err(e) => {
                    res = Err(e);
                    return;
                }
            };
            if set {
                res = match self.img.load_pages(self.block, s, mem) {
                    Ok(()) => Ok(true),
                    Err(e) => Err(self.read_error(s, k, e)),
                };
                self.bytes_read.fetch_add(k * ps, Ordering::Relaxed);
            } else {
                mem.zero();
            }
        })?;
        res.map(|data| data || n == 0)
    }

    pub(super) fn read_error(&self, page: u64, n: u64, e: Error) -> Error {
        let what = format!(
            "on-demand restore of ramblock '{}': offset 0x{:x}+0x{:x} not placed (threads touching it stay blocked)",
            self.idstr,
            page * self.ps,
            n * self.ps
        );
        match e {
            Error::Io { msg, source } => Error::Io {
                msg: format!("{what}: {msg}"),
                source,
            },
            Error::Corrupt(m) => Error::Corrupt(format!("{what}: {m}")),
            other => other,
        }
    }

    /// Place the unsettled granules of `[g, g+n)`: copied from `src` (laid
    /// out from granule `g`), or zero when `src` is None. Holds `layout`
    /// shared per chunk, re-checking `settled` under it (see the module
    /// docs). For prefetch and `stop`, never the fault thread.
    pub(super) fn place(&self, g: u64, n: u64, src: Option<*const u8>) -> Result<Place> {
        let bytes = if self.faulting() {
            PLACE_CHUNK_FAULTING
        } else {
            PLACE_CHUNK
        };
        let chunk = (bytes / self.granule).max(1);
        let mut c = g;
        while c < g + n {
            let ce = (c + chunk).min(g + n);
            let _shared = self.layout.read();
            let mut out = Ok(Place::Done);
            self.settled.runs(c, ce, |s, k, set| {
                if set || !matches!(out, Ok(Place::Done)) {
                    return;
                }
                // SAFETY: granules s..s+k lie inside `src`'s n granules.
                let p = src.map(|p| unsafe { p.add(((s - g) * self.granule) as usize) });
                out = self.place_run(s, k, p);
            });
            if !matches!(out, Ok(Place::Done)) {
                return out;
            }
            c = ce;
        }
        Ok(Place::Done)
    }

    /// One `UFFDIO_COPY`/`ZEROPAGE` of granules `[s, s+k)` with its
    /// outcomes: `EEXIST` = someone placed it (success; wake its waiters),
    /// `EAGAIN` = an event is pending.
    pub(super) fn place_run(&self, s: u64, k: u64, src: Option<*const u8>) -> Result<Place> {
        let mut i = 0;
        while i < k {
            let dst = self.addr(s + i);
            let len = (k - i) * self.granule;
            let r = match src {
                // SAFETY: `src` holds k granules; i < k.
                Some(p) => self.uffd.copy(
                    dst,
                    unsafe { p.add((i * self.granule) as usize) },
                    len,
                    false,
                ),
                None if self.zeropage_ok => self.uffd.zeropage(dst, len),
                // hugetlbfs has no ZEROPAGE: copy a zero granule.
                None => self.uffd.copy(dst, self.zeros().ptr(), self.granule, false),
            };
            let placed = match r {
                Ok(()) if src.is_none() && !self.zeropage_ok => 1,
                Ok(()) => k - i,
                Err(p) => {
                    let d = p.done / self.granule;
                    self.settle(s + i, d);
                    i += d;
                    match p.errno {
                        libc::EEXIST => {
                            let _ = self.uffd.wake(self.addr(s + i), self.granule);
                            1
                        }
                        libc::EAGAIN => return Ok(Place::Again),
                        e => {
                            return Err(Error::from_errno(
                                format!(
                                    "on-demand restore of ramblock '{}': placing offset 0x{:x} at host address 0x{:x}",
                                    self.idstr,
                                    (s + i) * self.granule,
                                    self.addr(s + i)
                                ),
                                e,
                            ))
                        }
                    }
                }
            };
            self.settle(s + i, placed);
            i += placed;
        }
        Ok(Place::Done)
    }

    /// A zero granule for memory without `UFFDIO_ZEROPAGE` (hugetlbfs).
    fn zeros(&self) -> &Staging {
        self.zeros.get_or_init(|| {
            Staging::new(self.granule as usize).expect("allocating a zero huge page buffer")
        })
    }

    /// Read and place the unsettled granules of `[g0, g1)` through `buf`
    /// (at least `(g1-g0) * granule` bytes); retries `EAGAIN`.
    pub(super) fn fill(&self, g0: u64, g1: u64, buf: &mut Staging, limit: bool) -> Result<()> {
        if self.chunk != 0 {
            if self.settled.all(g0, g1) {
                return Ok(());
            }
            return self.fill_chunked(g0, g1, buf, limit);
        }
        self.read_unit(g0, g1, buf, limit, |a, m, src| self.place_all(a, m, src))
    }

    /// Read the unsettled granules of `[g0, g1)` into `buf` (laid out from
    /// granule `g0`, at least `(g1-g0) * granule` bytes) one piece at a
    /// time, handing each piece to `place(first, count, data)` right after
    /// its read (`None`: absent pages, place zeros). The first error stops
    /// the unit.
    pub(super) fn read_unit(
        &self,
        g0: u64,
        g1: u64,
        buf: &Staging,
        limit: bool,
        mut place: impl FnMut(u64, u64, Option<*const u8>) -> Result<()>,
    ) -> Result<()> {
        if self.settled.all(g0, g1) {
            return Ok(());
        }
        let runs = self.granule_runs(g0, g1)?;
        let mut i = 0;
        while i < runs.len() {
            if let Some(j) = self.span_end(&runs, i) {
                self.read_span(g0, &runs[i..j], buf, limit, &mut place)?;
                i = j;
                continue;
            }
            let (s, n, present) = runs[i];
            i += 1;
            let mut todo = Vec::new();
            self.settled.runs(s, s + n, |a, m, set| {
                if !set {
                    todo.push((a, m));
                }
            });
            for (a, m) in todo {
                let mut c = a;
                while c < a + m {
                    let step = if present {
                        (self.read_chunk() / self.granule).max(1)
                    } else {
                        m
                    };
                    let n = step.min(a + m - c);
                    let src = self.read_piece(g0, c, n, present, buf, limit)?;
                    place(c, n, src)?;
                    c += n;
                }
            }
        }
        Ok(())
    }

    /// Where the span of one read that starts at present run `runs[i]`
    /// ends: the runs after it while each absent gap is at most the
    /// engine's read gap and the span at most a read chunk (as an eager
    /// restore reads: fewer, larger requests; the gaps' slots are read and
    /// not used). None when `runs[i]` is absent or longer than a read
    /// chunk, or granules are not image pages (hugetlbfs).
    fn span_end(&self, runs: &[(u64, u64, bool)], i: usize) -> Option<usize> {
        let (s, n, present) = runs[i];
        let max = (self.read_chunk() / self.granule).max(1);
        if !present || n > max || self.granule != self.ps {
            return None;
        }
        let gap = crate::engine::tuning::get().1 / self.granule;
        let mut j = i + 1;
        while j + 1 < runs.len() {
            let (_, gn, _) = runs[j];
            let (rs, rn, _) = runs[j + 1];
            if gn > gap || rs + rn - s > max {
                break;
            }
            j += 2;
        }
        Some(j)
    }

    /// Read the slots of `runs` (a span from `span_end`) in one request
    /// into `buf` at their place from `g0`, then hand each run to `place`:
    /// present runs with their data, absent ones as zeros (their slots may
    /// hold stale bytes: a clear bit means zero).
    fn read_span(
        &self,
        g0: u64,
        runs: &[(u64, u64, bool)],
        buf: &Staging,
        limit: bool,
        place: &mut impl FnMut(u64, u64, Option<*const u8>) -> Result<()>,
    ) -> Result<()> {
        let (a, last) = (runs[0].0, runs[runs.len() - 1]);
        let m = last.0 + last.1 - a;
        if self.settled.all(a, a + m) {
            return Ok(());
        }
        if limit {
            self.limiter.take(m * self.granule, &self.fill_all);
        }
        let off = (a - g0) * self.granule;
        let mem = buf.guest_mut(off as usize, (m * self.granule) as usize)?;
        self.img
            .load_pages(self.block, a, mem)
            .map_err(|e| self.read_error(a, m, e))?;
        self.bytes_read.fetch_add(m * self.ps, Ordering::Relaxed);
        for &(s, n, present) in runs {
            // SAFETY: granules s..s+n lie inside the span read at `off`.
            let src =
                present.then(
                    || unsafe { buf.ptr().add((off + (s - a) * self.granule) as usize) }
                        as *const u8,
                );
            place(s, n, src)?;
        }
        Ok(())
    }

    /// Whether the guest faulted lately (prefetch then reads and places in
    /// smaller pieces); never while `stop` fills.
    fn faulting(&self) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64;
        now.saturating_sub(self.last_fault_ns.load(Ordering::Relaxed)) < FAULT_QUIET_NS
            && !self.fill_all.load(Ordering::Relaxed)
    }

    /// The prefetch read size now: small while the guest faults.
    fn read_chunk(&self) -> u64 {
        if self.faulting() {
            READ_CHUNK_FAULTING
        } else {
            READ_CHUNK
        }
    }

    /// Called by the fault thread for every fault it serves.
    pub(super) fn note_fault(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.last_fault_ns.store(now, Ordering::Relaxed);
    }

    /// Read granules `[a, a+m)` into `buf` at their place from `g0`;
    /// returns where their data is (`None` for absent pages: nothing read).
    fn read_piece(
        &self,
        g0: u64,
        a: u64,
        m: u64,
        present: bool,
        buf: &Staging,
        limit: bool,
    ) -> Result<Option<*const u8>> {
        if !present {
            return Ok(None);
        }
        if limit {
            self.limiter.take(m * self.granule, &self.fill_all);
        }
        let off = (a - g0) * self.granule;
        self.read(a, m, buf, off)?;
        // SAFETY: granules a..a+m lie inside `buf` from g0 (`read` checked
        // the range).
        Ok(Some(unsafe { buf.ptr().add(off as usize) } as *const u8))
    }

    /// Place granules `[a, a+m)` from `src` (zeros when None), retrying
    /// while an event is pending.
    pub(super) fn place_all(&self, a: u64, m: u64, src: Option<*const u8>) -> Result<()> {
        while self.place(a, m, src)? == Place::Again {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        Ok(())
    }
}

/// For `stop`: fill whatever is still unsettled (failed faults or units),
/// once more; poison what still fails so it can never read as zero.
pub(super) fn finish_missing(sh: &Shared) -> Result<()> {
    let todo = unsettled(sh);
    if todo.is_empty() {
        return Ok(());
    }
    // A prefetch unit: whole granules and whole chunks.
    let unit = sh.queue.unit_bytes() / sh.granule;
    let mut buf = Staging::new((unit * sh.granule) as usize)?;
    let mut first_err = None;
    for (a, m) in todo {
        let mut g = a;
        while g < a + m {
            let e = (g + unit).min(a + m);
            if let Err(err) = sh.fill(g, e, &mut buf, false) {
                first_err.get_or_insert(err);
            }
            g = e;
        }
    }
    let left = unsettled(sh);
    if left.is_empty() {
        return Ok(());
    }
    let pages: u64 = left.iter().map(|r| r.1).sum();
    let what = seal_off(sh, &left);
    let (a, _) = left[0];
    // The cause's errno (EIO for I/O, EBADMSG for a chunk that fails its
    // checksum or does not decompress).
    let errno = first_err.as_ref().map_or(libc::EIO, |e| e.errno());
    let cause = first_err
        .map(|e| e.to_string())
        .unwrap_or_else(|| "unknown".into());
    Err(Error::from_errno(
        format!(
            "on-demand restore of ramblock '{}': {pages} host pages from offset 0x{:x} could not be read and were {what}; first cause: {cause}",
            sh.idstr,
            a * sh.granule
        ),
        errno,
    ))
}

/// Runs of granules not yet settled (neither placed nor discarded).
fn unsettled(sh: &Shared) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    sh.settled.runs(0, sh.settled.len(), |a, m, set| {
        if !set {
            out.push((a, m));
        }
    });
    out
}

/// Make the granule runs `left` fault instead of ever reading zero once the
/// range is unregistered: poisoned, or `PROT_NONE` on kernels without
/// `UFFDIO_POISON`. Returns what was done, for the error message.
fn seal_off(sh: &Shared, left: &[(u64, u64)]) -> &'static str {
    if sh.poison_ok {
        for &(a, m) in left {
            // EAGAIN: an event is pending; the fault thread (still running)
            // reads it, then the retry goes through.
            let (mut at, end) = (sh.addr(a), sh.addr(a + m));
            while at < end {
                match sh.uffd.poison(at, end - at) {
                    Ok(()) => break,
                    Err(p) if p.errno == libc::EAGAIN => {
                        at += p.done;
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                    // EEXIST: that page got filled after all; go on.
                    Err(p) => at += p.done + sh.granule,
                }
            }
        }
        return "poisoned (touching them raises SIGBUS)";
    }
    for &(a, m) in left {
        // SAFETY: the range lies inside the caller's mapping; PROT_NONE
        // makes a touch fault instead of reading zero once unregistered.
        unsafe {
            libc::mprotect(
                sh.addr(a) as *mut libc::c_void,
                (m * sh.granule) as usize,
                libc::PROT_NONE,
            )
        };
    }
    "made inaccessible with PROT_NONE (this kernel has no UFFDIO_POISON)"
}
