//! The engine's coalescing and I/O-depth rules, as numbers a benchmark may
//! vary (`mr-bench --only profile` sweeps them). The defaults were chosen
//! by measurement; BENCHMARKS.md has the figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Save: a gap of zero pages up to this many bytes between two runs of
/// data inside a unit is written as zeros within one request (its bits
/// stay clear) instead of splitting the write.
pub const DEFAULT_SAVE_GAP: u64 = 64 << 10;
/// Restore: a gap of absent pages up to this many bytes between two runs
/// inside a unit is read (into a scratch buffer) within one request.
pub const DEFAULT_READ_GAP: u64 = 1 << 20;
/// Save: writer threads of one save (at least one per scanning worker; 0 =
/// the workers write themselves).
pub const DEFAULT_WRITERS: u64 = 4;

static SAVE_GAP: AtomicU64 = AtomicU64::new(DEFAULT_SAVE_GAP);
static READ_GAP: AtomicU64 = AtomicU64::new(DEFAULT_READ_GAP);
static WRITERS: AtomicU64 = AtomicU64::new(DEFAULT_WRITERS);
static PAGE_TABLES: AtomicBool = AtomicBool::new(true);

/// Current rules: (save gap bytes, read gap bytes, writer threads).
pub fn get() -> (u64, u64, u64) {
    (
        SAVE_GAP.load(Ordering::Relaxed),
        READ_GAP.load(Ordering::Relaxed),
        WRITERS.load(Ordering::Relaxed),
    )
}

/// Change the rules process-wide (benchmarks). `read_gap` is capped at
/// [`DEFAULT_READ_GAP`]'s scratch size; 0 writers = write on the worker.
pub fn set(save_gap: u64, read_gap: u64, writers: u64) {
    SAVE_GAP.store(save_gap, Ordering::Relaxed);
    READ_GAP.store(read_gap.min(DEFAULT_READ_GAP), Ordering::Relaxed);
    WRITERS.store(writers.min(64), Ordering::Relaxed);
}

/// Whether a save asks the page tables which pages are known zero before
/// reading them (on by default; `false` reads every page, as before).
pub fn page_tables() -> bool {
    PAGE_TABLES.load(Ordering::Relaxed)
}

/// Turn [`page_tables`] on or off process-wide (benchmarks).
pub fn set_page_tables(on: bool) {
    PAGE_TABLES.store(on, Ordering::Relaxed);
}
