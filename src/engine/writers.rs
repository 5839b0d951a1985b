//! The writer threads of one save. Workers scan units and queue the spans
//! of data they find; a few writer threads write them. So the zero scan of
//! the next unit overlaps the writes of the previous ones, and several
//! requests are in flight even with one scanning worker (short requests
//! each pay the device's latency; raw sequential I/O hides it with 4 MiB
//! requests, a fragmented guest cannot).
//!
//! A queued span's bits are set by its writer after the write returned
//! (`store_span`), as for any page write. The first failed write stops the
//! save: queued spans are dropped and that error is the save's result.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::memory::GuestSlice;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// One write: the pages of `mem` from page `start` on, present `runs`.
pub(crate) struct Job<'m> {
    pub(crate) start: u64,
    pub(crate) mem: GuestSlice<'m>,
    pub(crate) runs: Vec<(u64, u64)>,
}

/// Where a worker hands its writes: a queue to the writer threads, or the
/// calling thread itself when no writer thread could be started.
pub(crate) struct Queue<'a, 'm> {
    img: &'a Image,
    block: usize,
    tx: Option<SyncSender<Job<'m>>>,
    failed: &'a Mutex<Option<Error>>,
    stop: &'a AtomicBool,
}

impl<'m> Queue<'_, 'm> {
    /// Write `job` now (no writer threads) or queue it.
    pub(crate) fn write(&self, job: Job<'m>) -> Result<()> {
        let Some(tx) = &self.tx else {
            return exec(self.img, self.block, &job);
        };
        if self.stop.load(Ordering::Acquire) {
            return Err(stopped());
        }
        tx.send(job).map_err(|_| stopped())
    }
}

/// The error of a worker that stops because a writer failed (the
/// writer's own error is the save's result).
pub(crate) fn stopped() -> Error {
    Error::Cancelled("save stopped: a page write failed".into())
}

fn exec(img: &Image, block: usize, j: &Job<'_>) -> Result<()> {
    img.store_span(block, j.start, j.mem, &j.runs)
}

/// Run `f` with a queue served by `depth` writer threads (none: `f`'s
/// writes happen inline). Returns `f`'s result, or the first failed
/// write's error in its place.
pub(crate) fn with_writers<'m, R>(
    img: &Image,
    block: usize,
    depth: usize,
    f: impl FnOnce(&Queue<'_, 'm>) -> Result<R>,
) -> Result<R> {
    let failed = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let (tx, rx) = sync_channel::<Job<'m>>(depth.max(1));
    let rx = Mutex::new(rx);
    let res = std::thread::scope(|s| {
        let mut started = 0;
        for _ in 0..depth {
            let spawned = std::thread::Builder::new()
                .spawn_scoped(s, || writer(img, block, &rx, &failed, &stop));
            match spawned {
                Ok(_) => started += 1,
                Err(_) => break,
            }
        }
        let q = Queue {
            img,
            block,
            tx: (started > 0).then_some(tx),
            failed: &failed,
            stop: &stop,
        };
        f(&q)
        // `q` (the only sender) drops here: the writers drain and exit.
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => res,
    }
}

fn writer(
    img: &Image,
    block: usize,
    rx: &Mutex<Receiver<Job<'_>>>,
    failed: &Mutex<Option<Error>>,
    stop: &AtomicBool,
) {
    loop {
        let job = match rx.lock().recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        if stop.load(Ordering::Acquire) {
            continue;
        }
        if let Err(e) = exec(img, block, &job) {
            failed.lock().get_or_insert(e);
            stop.store(true, Ordering::Release);
        }
    }
}

impl Queue<'_, '_> {
    /// Whether a writer failed (workers stop claiming units).
    pub(crate) fn failed(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.failed.lock().is_some()
    }
}
