//! The worker pool of one save/restore: threads claim units from an atomic
//! counter; the calling thread reports progress and watches for cancel.
//!
//! One thread (or no worker could be started, e.g. `RLIMIT_NPROC`): the
//! units run on the calling thread ([`run_inline`]). Otherwise
//! [`run_pooled`] starts as many workers as it can (at least one) and the
//! calling thread reports progress every 50 ms.
//!
//! Progress: a first report `(0, total)` before any work (a callback can
//! refuse to start), reports while the work runs, and a final
//! `(total, total)` after a successful run. The final report's return value
//! is ignored: the work is done and the operation succeeds.

use super::control::Control;
use super::Stats;
use crate::error::{Error, Result};
use crate::silent_panic;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the calling thread reports progress while workers run.
const REPORT_EVERY: Duration = Duration::from_millis(50);

/// What a run shares between its workers and the calling thread.
struct Shared<'a, W> {
    ctl: &'a Control,
    what: &'a str,
    units: u64,
    total_bytes: u64,
    work: W,
    epoch: u64,
    next: AtomicU64,
    done_bytes: AtomicU64,
    stop: AtomicBool,
    first_err: Mutex<Option<Error>>,
    totals: Mutex<Stats>,
}

impl<W: Fn(u64) -> Result<(Stats, u64)> + Sync> Shared<'_, W> {
    fn fail(&self, e: Error) {
        self.first_err.lock().get_or_insert(e);
        self.stop.store(true, Ordering::Release);
    }

    fn cancelled(&self, by: &str) -> Error {
        Error::Cancelled(format!(
            "{} cancelled {by} after {} of {} bytes",
            self.what,
            self.done_bytes.load(Ordering::Acquire),
            self.total_bytes
        ))
    }

    fn is_cancelled(&self) -> bool {
        self.ctl.epoch() != self.epoch
    }

    /// The next unit to run: `None` when all are claimed, the run stopped
    /// or it was cancelled (recorded as the run's error).
    fn claim(&self) -> Option<u64> {
        if self.stop.load(Ordering::Acquire) {
            return None;
        }
        let u = self.next.fetch_add(1, Ordering::AcqRel);
        if u >= self.units {
            return None;
        }
        if self.is_cancelled() {
            self.fail(self.cancelled("by mr_image_cancel"));
            return None;
        }
        Some(u)
    }

    /// Run unit `u`; false when the run must stop.
    fn one_unit(&self, u: u64, mine: &mut Stats) -> bool {
        match (self.work)(u) {
            Ok((st, covered)) => {
                self.done_bytes.fetch_add(covered, Ordering::AcqRel);
                mine.add(&st);
                true
            }
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// A worker: claim units until none is left or the run stops.
    fn worker(&self) {
        let mut mine = Stats::default();
        while let Some(u) = self.claim() {
            if !self.one_unit(u, &mut mine) {
                break;
            }
        }
        self.totals.lock().add(&mine);
    }

    /// A progress report; a refusal stops the run.
    fn report(&self) {
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        let d = self.done_bytes.load(Ordering::Acquire);
        if !self.ctl.report(d, self.total_bytes) {
            self.fail(self.cancelled("by the progress callback"));
        }
    }

    fn finish(self) -> Result<Stats> {
        match self.first_err.into_inner() {
            Some(e) => Err(e),
            None => {
                // Ignored by design (see the module docs).
                let _ = self.ctl.report(self.total_bytes, self.total_bytes);
                Ok(self.totals.into_inner())
            }
        }
    }
}

/// Run `work(unit)` -> (stats, bytes of the block covered) for every unit
/// in `0..units` on up to `threads` threads. `what` names the operation in
/// the cancel message.
pub(crate) fn run(
    ctl: &Control,
    what: &str,
    units: u64,
    threads: usize,
    total_bytes: u64,
    work: impl Fn(u64) -> Result<(Stats, u64)> + Sync,
) -> Result<Stats> {
    let sh = Shared {
        ctl,
        what,
        units,
        total_bytes,
        work,
        epoch: ctl.epoch(),
        next: AtomicU64::new(0),
        done_bytes: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        first_err: Mutex::new(None),
        totals: Mutex::new(Stats::default()),
    };
    // A first call before any work: a callback can refuse to start.
    if !ctl.report(0, total_bytes) {
        return Err(Error::Cancelled(format!(
            "{what} cancelled by the progress callback before it started"
        )));
    }
    if threads > 1 {
        run_pooled(&sh, threads);
    }
    run_inline(&sh);
    sh.finish()
}

/// Run the units no worker claimed on the calling thread (all of them when
/// there were no workers), reporting after each.
fn run_inline<W: Fn(u64) -> Result<(Stats, u64)> + Sync>(sh: &Shared<'_, W>) {
    let mut mine = Stats::default();
    while let Some(u) = sh.claim() {
        if !sh.one_unit(u, &mut mine) {
            break;
        }
        if sh.ctl.has_progress() && u + 1 < sh.units {
            sh.report();
        }
    }
    sh.totals.lock().add(&mine);
}

/// Start up to `threads` workers and report progress until they are done.
/// Workers that cannot be started are simply missing (the calling thread
/// runs what is left afterwards).
fn run_pooled<W: Fn(u64) -> Result<(Stats, u64)> + Sync>(sh: &Shared<'_, W>, threads: usize) {
    let finished = Mutex::new(0usize);
    let cv = Condvar::new();
    let quiet = silent_panic::active();
    std::thread::scope(|s| {
        let mut started = 0;
        for _ in 0..threads {
            let spawned = std::thread::Builder::new().spawn_scoped(s, || {
                let _quiet = quiet.then(silent_panic::enter);
                // Counted even when `work` panics (the scope re-raises it).
                let _done = Finished(&finished, &cv);
                sh.worker();
            });
            match spawned {
                Ok(_) => started += 1,
                Err(_) => break,
            }
        }
        let mut f = finished.lock();
        while *f < started {
            cv.wait_for(&mut f, REPORT_EVERY);
            if *f < started {
                drop(f);
                sh.report();
                f = finished.lock();
            }
        }
    });
}

/// Counts a worker as finished when dropped (also during a panic).
struct Finished<'a>(&'a Mutex<usize>, &'a Condvar);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        *self.0.lock() += 1;
        self.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn counting(ctl: &Control) -> Arc<AtomicUsize> {
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = Arc::clone(&calls);
        ctl.set_progress(Some(Box::new(move |_, _| {
            c2.fetch_add(1, Ordering::SeqCst);
            true
        })));
        calls
    }

    #[test]
    fn a_worker_panic_keeps_the_progress_callback() {
        silent_panic::install();
        let ctl = Control::new();
        let calls = counting(&ctl);
        for threads in [1, 4] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _quiet = silent_panic::enter();
                run(&ctl, "test", 8, threads, 8, |u| {
                    assert!(u != 3, "worker bug");
                    Ok((Stats::default(), 1))
                })
            }));
            assert!(r.is_err(), "the panic reaches the caller");
            let before = calls.load(Ordering::SeqCst);
            run(&ctl, "test", 2, threads, 2, |_| Ok((Stats::default(), 1))).unwrap();
            assert!(
                calls.load(Ordering::SeqCst) >= before + 2,
                "callback still installed"
            );
        }
    }

    #[test]
    fn every_unit_runs_once_and_progress_ends_at_total() {
        let ctl = Control::new();
        let seen = Mutex::new(Vec::new());
        let last = Arc::new(Mutex::new((0, 0)));
        let l2 = Arc::clone(&last);
        ctl.set_progress(Some(Box::new(move |d, t| {
            *l2.lock() = (d, t);
            true
        })));
        for threads in [1, 3] {
            seen.lock().clear();
            let st = run(&ctl, "test", 50, threads, 50, |u| {
                seen.lock().push(u);
                let st = Stats {
                    pages_scanned: 1,
                    ..Stats::default()
                };
                Ok((st, 1))
            })
            .unwrap();
            assert_eq!(st.pages_scanned, 50);
            let mut v = seen.lock().clone();
            v.sort_unstable();
            assert_eq!(v, (0..50).collect::<Vec<_>>());
            assert_eq!(*last.lock(), (50, 50));
        }
    }
}
