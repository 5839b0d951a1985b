//! Prefetch: the unit queue (faulted units first, then hot units, then the
//! rest in order), the rate limiter, and the worker loop.

use super::Shared;
use crate::engine::UNIT_BYTES;
use crate::error::{Error, Result};
use crate::uffd::host::Staging;
use crate::uffd::pages::PageSet;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
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

/// A piece read by a worker for its placer: granules `[first, first+n)`,
/// their data at byte `off` of staging buffer `buf` (`None`: zeros).
enum Msg {
    Piece {
        first: u64,
        n: u64,
        buf: usize,
        off: Option<usize>,
    },
    /// Every piece of buffer `buf` was sent: hand it back when placed.
    Release(usize),
}

/// Pieces a worker may read ahead of its placer (besides the two buffers,
/// which bound the bytes).
const PIECES_AHEAD: usize = 256;

/// One prefetch worker: take units until none is left. Reading and placing
/// overlap: the worker reads unit k+1 into one staging buffer while its
/// placer thread copies unit k out of the other (`UFFDIO_COPY`), so a
/// worker keeps a read in flight as an eager restore does. The placer
/// places each piece as it arrives (the hand-off to the fault thread is
/// the placement's, unchanged: see the module docs).
pub(crate) fn worker(sh: Arc<Shared>, index: usize) {
    let unit = sh.queue.unit_bytes() as usize;
    if sh.chunk != 0 {
        // A chunked block: each unit is read and decoded, then placed, in
        // turn (`chunks.rs`).
        return match Staging::new(unit) {
            Ok(mut b) => serial(&sh, &mut b),
            Err(e) => sh.latch(e),
        };
    }
    let bufs = match Staging::new(unit).and_then(|a| Ok([a, Staging::new(unit)?])) {
        Ok(b) => Arc::new(b),
        Err(e) => return sh.latch(e),
    };
    let (tx, rx) = mpsc::sync_channel::<Msg>(PIECES_AHEAD);
    let (free_tx, free_rx) = mpsc::sync_channel::<usize>(bufs.len());
    for b in 0..bufs.len() {
        let _ = free_tx.send(b);
    }
    let (psh, pbufs) = (sh.clone(), bufs.clone());
    let placer = std::thread::Builder::new()
        .name(format!("mr-lazy-place{index}"))
        .spawn(move || placer(&psh, &pbufs, rx, free_tx));
    let placer = match placer {
        Ok(h) => h,
        // No second thread: read and place in turn.
        Err(_) => {
            drop(bufs);
            return match Staging::new(unit) {
                Ok(mut b) => serial(&sh, &mut b),
                Err(e) => sh.latch(e),
            };
        }
    };
    let per = sh.queue.unit_bytes() / sh.granule;
    loop {
        // A buffer is free once its placer finished placing from it; the
        // unit is taken only then, so a unit the guest faults in meanwhile
        // can still jump the queue.
        let Ok(b) = free_rx.recv() else {
            sh.latch(Error::Invalid(
                "lazy restore: a prefetch placer thread ended early".into(),
            ));
            break;
        };
        let Some(u) = sh.queue.pop() else { break };
        let g0 = u * per;
        let g1 = (g0 + per).min(sh.settled.len());
        let limit = !sh.fill_all.load(Ordering::Acquire);
        let base = bufs[b].ptr() as usize;
        let r = sh.read_unit(g0, g1, &bufs[b], limit, |first, n, src| {
            let off = src.map(|p| p as usize - base);
            tx.send(Msg::Piece {
                first,
                n,
                buf: b,
                off,
            })
            .map_err(|_| Error::Invalid("lazy restore: the placer thread is gone".into()))
        });
        if let Err(e) = r {
            // Nothing was placed for the failed pages; `stop` retries them.
            sh.latch(e);
        }
        if tx.send(Msg::Release(b)).is_err() {
            break;
        }
        sh.prefetched.fetch_add(g1 - g0, Ordering::Relaxed);
    }
    drop(tx);
    let _ = placer.join();
}

/// A worker's placer: place each piece as it arrives; give buffers back.
fn placer(
    sh: &Shared,
    bufs: &[Staging; 2],
    rx: mpsc::Receiver<Msg>,
    free: mpsc::SyncSender<usize>,
) {
    for msg in rx {
        match msg {
            Msg::Piece { first, n, buf, off } => {
                // SAFETY: `off` came from a pointer into `bufs[buf]` whose
                // piece of n granules the worker read before sending; the
                // worker writes that buffer again only after `Release` is
                // handled below, so the bytes stay as read.
                let src = off.map(|o| unsafe { bufs[buf].ptr().add(o) } as *const u8);
                if let Err(e) = sh.place_all(first, n, src) {
                    sh.latch(e);
                }
            }
            Msg::Release(b) => {
                let _ = free.send(b);
            }
        }
    }
}

/// A worker without a placer thread: read and place each unit in turn.
fn serial(sh: &Shared, buf: &mut Staging) {
    let per = sh.queue.unit_bytes() / sh.granule;
    while let Some(u) = sh.queue.pop() {
        let g0 = u * per;
        let g1 = (g0 + per).min(sh.settled.len());
        let limit = !sh.fill_all.load(Ordering::Acquire);
        let r = sh.fill(g0, g1, buf, limit);
        if let Err(e) = r {
            sh.latch(e);
        }
        sh.prefetched.fetch_add(g1 - g0, Ordering::Relaxed);
    }
}
