//! The worker pool of one save/restore: threads claim units from an atomic
//! counter; the calling thread reports progress and watches for cancel.

use super::Stats;
use crate::error::{Error, Result};
use crate::image::Image;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Run `work(unit)` -> (stats, bytes of the block covered) for every unit in `0..units` on `threads` threads.
/// `what` names the operation in the cancel message.
pub(crate) fn run(
    img: &Image,
    what: &str,
    units: u64,
    threads: usize,
    total_bytes: u64,
    work: impl Fn(u64) -> Result<(Stats, u64)> + Sync,
) -> Result<Stats> {
    let epoch = img.cancel_epoch();
    let next = AtomicU64::new(0);
    let done_bytes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let totals = Mutex::new(Stats::default());
    let finished = Mutex::new(0usize);
    let cv = Condvar::new();
    let mut progress = img.take_progress();

    let fail = |e: Error| {
        first_err.lock().get_or_insert(e);
        stop.store(true, Ordering::Release);
    };
    let cancelled = |by: &str| {
        Error::Cancelled(format!(
            "{what} cancelled {by} after {} of {total_bytes} bytes",
            done_bytes.load(Ordering::Acquire)
        ))
    };

    // One thread and nobody to report to: run on the calling thread (no
    // thread start-up cost for small blocks).
    if threads == 1 && progress.is_none() {
        let mut totals = Stats::default();
        for u in 0..units {
            if img.cancel_epoch() != epoch {
                return Err(cancelled("by mr_image_cancel"));
            }
            let (st, covered) = work(u)?;
            done_bytes.fetch_add(covered, Ordering::AcqRel);
            totals.add(&st);
        }
        return Ok(totals);
    }
    // A first call before any work: a callback can refuse to start.
    if let Some(cb) = progress.as_mut() {
        if !cb(0, total_bytes) {
            img.restore_progress(progress);
            return Err(Error::Cancelled(format!(
                "{what} cancelled by the progress callback before it started"
            )));
        }
    }
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Stats::default();
                loop {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    if img.cancel_epoch() != epoch {
                        fail(cancelled("by mr_image_cancel"));
                        break;
                    }
                    let u = next.fetch_add(1, Ordering::AcqRel);
                    if u >= units {
                        break;
                    }
                    match work(u) {
                        Ok((st, covered)) => {
                            done_bytes.fetch_add(covered, Ordering::AcqRel);
                            mine.add(&st);
                        }
                        Err(e) => {
                            fail(e);
                            break;
                        }
                    }
                }
                totals.lock().add(&mine);
                *finished.lock() += 1;
                cv.notify_all();
            });
        }
        let mut f = finished.lock();
        while *f < threads {
            cv.wait_for(&mut f, Duration::from_millis(50));
            if let Some(cb) = progress.as_mut() {
                if *f < threads && !stop.load(Ordering::Acquire) {
                    let d = done_bytes.load(Ordering::Acquire);
                    if !cb(d, total_bytes) {
                        fail(cancelled("by the progress callback"));
                    }
                }
            }
        }
    });
    let err = first_err.lock().take();
    if err.is_none() {
        if let Some(cb) = progress.as_mut() {
            cb(total_bytes, total_bytes);
        }
    }
    img.restore_progress(progress);
    match err {
        Some(e) => Err(e),
        None => Ok(totals.into_inner()),
    }
}
