//! Engine: parallel save/restore of whole ramblocks from/to host memory.
//!
//! Work is split in fixed-size units ([`UNIT_BYTES`] of pages) independent of
//! the thread count, so a block saved with 7 threads restores with 3; threads
//! claim units from an atomic counter. Zero pages are detected and skipped;
//! runs of present pages are coalesced into one positional write/read
//! straight from/to guest memory (`O_DIRECT`, zero-copy, when aligned).
//! Guest memory comes in as [`crate::memory`] views; progress and cancel
//! through a [`Control`] owned by the caller (the C handle holds one).

mod control;
pub(crate) mod parallel;
mod restore;
mod save;
mod scratch;
mod spans;
#[doc(hidden)]
pub mod tuning;
mod writers;

pub use control::{Control, ProgressFn};
pub use restore::{read_ramblock, read_ramblock_to_vec, read_ramblock_with};
pub(crate) use save::known_zero_probe;
pub use save::{save_ramblock, save_ramblock_with};

/// Size of one unit of work. Also the largest single write or read.
pub const UNIT_BYTES: u64 = 4 << 20;

/// Statistics of one save or restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pages examined (all pages, or the dirty ones).
    pub pages_scanned: u64,
    /// Pages written to / read from the file.
    pub pages_data: u64,
    /// Pages found zero (save) or absent (restore).
    pub pages_zero: u64,
    /// Bytes moved to/from the file.
    pub bytes: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.pages_scanned += o.pages_scanned;
        self.pages_data += o.pages_data;
        self.pages_zero += o.pages_zero;
        self.bytes += o.bytes;
    }
}

/// The number of threads to use for `requested` (0 = default).
pub fn effective_threads(requested: u32, units: u64) -> usize {
    let t = if requested == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8)
    } else {
        requested as usize
    };
    t.min(units.max(1) as usize).clamp(1, 256)
}

/// Run 4 units on 2 workers with `f` (tests of the panic boundary).
#[cfg(test)]
pub(crate) fn run_for_test(
    ctl: &Control,
    f: impl Fn(u64) + Sync,
) -> crate::error::Result<std::ffi::c_int> {
    parallel::run(ctl, "test", 4, 2, 4, |u| {
        f(u);
        Ok((Stats::default(), 1))
    })?;
    Ok(0)
}

/// Pages per unit for a page size.
pub(crate) fn unit_pages(page_size: u64) -> u64 {
    (UNIT_BYTES / page_size).max(1)
}
