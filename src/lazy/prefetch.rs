//! Prefetch: the unit queue (faulted units first, then hot units, then the
//! rest in order), the rate limiter, and the worker loop.

use super::Shared;
use crate::engine::UNIT_BYTES;
use crate::error::{Error, Result};
use crate::uffd::host::Staging;
use crate::uffd::pages::PageSet;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which unit a worker takes next. A unit is taken once (`claimed`).
pub(crate) struct Queue {
    unit_bytes: u64,
    order: Vec<u32>,
    next: AtomicU64,
    /// Units the guest faulted in, most recent last: taken first.
    urgent: Mutex<Vec<u32>>,
    claimed: PageSet,
}

impl Queue {
    /// Units of `max(UNIT_BYTES, granule)` over `len` bytes; units holding
    /// a page set in `hot` (one bit per image page of `ps` bytes) first.
    pub(crate) fn new(len: u64, granule: u64, hot: Option<&[u64]>, ps: u64) -> Result<Queue> {
        let unit_bytes = UNIT_BYTES.max(granule);
        let units = len.div_ceil(unit_bytes);
        let pages = len / ps;
        if let Some(h) = hot {
            if (h.len() as u64) < pages.div_ceil(64) {
                return Err(Error::Invalid(format!(
                    "lazy restore: hot-page bitmap has {} words, {} needed for {pages} pages",
                    h.len(),
                    pages.div_ceil(64)
                )));
            }
        }
        let upp = unit_bytes / ps;
        let is_hot = |u: u64| {
            let Some(h) = hot else { return false };
            let (a, b) = (u * upp, ((u + 1) * upp).min(pages));
            (a..b).any(|p| h[(p / 64) as usize] & (1 << (p % 64)) != 0)
        };
        let mut order: Vec<u32> = (0..units)
            .filter(|&u| is_hot(u))
            .map(|u| u as u32)
            .collect();
        order.extend((0..units).filter(|&u| !is_hot(u)).map(|u| u as u32));
        Ok(Queue {
            unit_bytes,
            order,
            next: AtomicU64::new(0),
            urgent: Mutex::new(Vec::new()),
            claimed: PageSet::new(units),
        })
    }

    pub(crate) fn units(&self) -> u64 {
        self.order.len() as u64
    }

    pub(crate) fn unit_bytes(&self) -> u64 {
        self.unit_bytes
    }

    /// The guest touched `offset`: its unit jumps the queue.
    pub(crate) fn touched(&self, offset: u64) {
        let u = offset / self.unit_bytes;
        if !self.claimed.test(u) {
            let mut q = self.urgent.lock();
            if q.len() < 64 {
                q.push(u as u32);
            }
        }
    }

    /// The next unit to fill, or None when all were taken.
    fn pop(&self) -> Option<u64> {
        loop {
            let u = match self.urgent.lock().pop() {
                Some(u) => u as u64,
                None => {
                    let i = self.next.fetch_add(1, Ordering::AcqRel);
                    *self.order.get(i as usize)? as u64
                }
            };
            if self.claimed.set_range(u, 1) == 1 {
                return Some(u);
            }
        }
    }
}

/// Paces prefetch reads to `rate` bytes per second (0 = unlimited).
pub(crate) struct Limiter {
    rate: u64,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Limiter {
    pub(crate) fn new(rate: u64) -> Limiter {
        Limiter {
            rate,
            state: Mutex::new((None, 0)),
        }
    }

    /// Account `bytes`, sleeping until the budget allows them; returns at
    /// once when `bypass` becomes true (stop fills at full speed).
    pub(crate) fn take(&self, bytes: u64, bypass: &AtomicBool) {
        if self.rate == 0 {
            return;
        }
        let due = {
            let mut s = self.state.lock();
            let start = *s.0.get_or_insert_with(Instant::now);
            s.1 += bytes;
            start + Duration::from_secs_f64(s.1 as f64 / self.rate as f64)
        };
        loop {
            let now = Instant::now();
            if now >= due || bypass.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(10)));
        }
    }
}

/// One prefetch thread: take units until none is left.
pub(crate) fn worker(sh: Arc<Shared>) {
    let unit = sh.queue.unit_bytes();
    let mut buf = match Staging::new(unit as usize) {
        Ok(b) => b,
        Err(e) => return sh.latch(e),
    };
    let per = unit / sh.granule;
    while let Some(u) = sh.queue.pop() {
        let g0 = u * per;
        let g1 = (g0 + per).min(sh.settled.len());
        let limit = !sh.fill_all.load(Ordering::Acquire);
        match sh.fill(g0, g1, &mut buf, limit) {
            Ok(()) => {}
            // Nothing was placed for the failed pages; `stop` retries them.
            Err(e) => sh.latch(e),
        }
        sh.prefetched.fetch_add(g1 - g0, Ordering::Relaxed);
    }
}
