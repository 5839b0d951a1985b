//! Serving chunked (compressed or checksummed) blocks: the chunk is the
//! unit of reading. A fault reads, decompresses and verifies the one chunk
//! holding the faulting page (the image's own decode + verify,
//! [`Image::read_chunk_verified`](crate::image::Image)), places the
//! faulting granule first (its thread waits for it alone), then the rest of
//! the chunk, so later touches of the chunk cost no second decompression.
//! Prefetch goes chunk by chunk through its units. `settled` and `gone`
//! stay per granule (host page): a balloon discards host pages, not chunks.
//!
//! A chunk that cannot be read or verified places nothing: the faulting
//! thread stays blocked and the error (block, chunk, offsets) is latched
//! for `wait`, as on the plain path.

use super::fill::Place;
use super::Shared;
use crate::error::Result;
use crate::uffd::host::Staging;
use std::sync::atomic::Ordering;

impl Shared {
    /// Granules per read unit (a chunk, or a host page when that is larger).
    fn unit_granules(&self) -> u64 {
        self.read_unit / self.granule
    }

    /// The read unit holding granule `g`: `[g0, g1)`.
    fn unit_of(&self, g: u64) -> (u64, u64) {
        let upg = self.unit_granules();
        let g0 = g / upg * upg;
        (g0, (g0 + upg).min(self.settled.len()))
    }

    /// Read, decompress and verify the chunks of granules `[g0, g1)` (one
    /// read unit) into `buf` from its start; returns whether any chunk held
    /// data. Bytes of a chunk without data are zero in `buf` only where a
    /// granule holding data spans them (a host page larger than a chunk);
    /// elsewhere they are never placed (their granules are absent).
    fn read_chunks(&self, g0: u64, g1: u64, buf: &mut Staging) -> Result<bool> {
        let (start, end) = (g0 * self.granule, g1 * self.granule);
        assert!(end - start <= buf.len() as u64);
        let cb = self.chunk;
        let mut any = false;
        let mut i = start / cb;
        while i * cb < end {
            let (cs, ce) = (i * cb, ((i + 1) * cb).min(self.host.len));
            // SAFETY: `[cs - start, ce - start)` lies inside `buf` (asserted
            // above: the unit fits), which `&mut` gives us alone; the slice
            // lives only for this call.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    buf.ptr().add((cs - start) as usize),
                    (ce - cs) as usize,
                )
            };
            match self.img.read_chunk_verified(self.block, i, out) {
                Ok(true) => {
                    any = true;
                    self.bytes_read.fetch_add(ce - cs, Ordering::Relaxed);
                }
                Ok(false) if cb < self.granule => out.fill(0),
                Ok(false) => {}
                Err(e) => return Err(self.read_error(cs / self.ps, (ce - cs) / self.ps, e)),
            }
            i += 1;
        }
        Ok(any)
    }

    /// Serve a fault on granule `g` of a chunked block (not settled, not
    /// discarded): read its unit, place `g`, then the unit's other
    /// unsettled granules. The fault thread only (it alone marks `gone`,
    /// and does not read events meanwhile, so no lock is needed).
    pub(super) fn serve_chunked(&self, g: u64, staging: &mut Staging) -> Result<Place> {
        let (g0, g1) = self.unit_of(g);
        let any = self.read_chunks(g0, g1, staging)?;
        let runs = if any {
            self.granule_runs(g0, g1)?
        } else {
            vec![(g0, g1 - g0, false)]
        };
        let base = staging.ptr() as *const u8;
        // SAFETY: granule `s` of the unit lies inside `staging` (the unit
        // was read into it from its start).
        let src = |s: u64| unsafe { base.add(((s - g0) * self.granule) as usize) };
        let present = runs.iter().any(|&(s, n, p)| p && s <= g && g < s + n);
        if self.place_run(g, 1, present.then(|| src(g)))? == Place::Again {
            return Ok(Place::Again);
        }
        for (s, n, p) in runs {
            let mut todo = Vec::new();
            self.settled.runs(s, s + n, |a, m, set| {
                if !set {
                    todo.push((a, m));
                }
            });
            for (a, m) in todo {
                // `Again`: an event is pending; prefetch or a later fault
                // places the rest.
                if self.place_run(a, m, p.then(|| src(a)))? == Place::Again {
                    return Ok(Place::Done);
                }
            }
        }
        Ok(Place::Done)
    }

    /// Prefetch of a chunked block: the read units meeting `[g0, g1)`, each
    /// read (when it holds data and is not all settled) and placed through
    /// `buf` (at least one read unit). A unit that fails places nothing and
    /// the others go on; the first error is returned.
    pub(super) fn fill_chunked(
        &self,
        g0: u64,
        g1: u64,
        buf: &mut Staging,
        limit: bool,
    ) -> Result<()> {
        let mut first_err = None;
        let mut a = self.unit_of(g0).0;
        while a < g1 {
            let (_, e) = self.unit_of(a);
            if let Err(err) = self.fill_unit(a, e, buf, limit) {
                first_err.get_or_insert(err);
            }
            a = e;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Read and place the unsettled granules of read unit `[a, e)`.
    fn fill_unit(&self, a: u64, e: u64, buf: &mut Staging, limit: bool) -> Result<()> {
        if self.settled.all(a, e) {
            return Ok(());
        }
        let runs = self.granule_runs(a, e)?;
        if runs.iter().any(|r| r.2) {
            if limit {
                self.limiter.take((e - a) * self.granule, &self.fill_all);
            }
            self.read_chunks(a, e, buf)?;
        }
        let base = buf.ptr() as *const u8;
        for (s, n, p) in runs {
            // SAFETY: granules s..s+n lie inside the unit read into `buf`
            // from granule `a`.
            let src = p.then(|| unsafe { base.add(((s - a) * self.granule) as usize) });
            while self.place(s, n, src)? == Place::Again {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        Ok(())
    }
}
