//! Engine: parallel save/restore of whole ramblocks from/to host memory.
//!
//! Work is split in fixed-size units independent of the thread count; zero
//! pages are detected and skipped; runs of present pages are coalesced into
//! one positional write/read straight from/to guest memory.

use crate::error::Result;
use crate::image::Image;

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

/// Save `block` from host memory `host` (`used_length` bytes). `dirty`
/// (one bit per page, u64 words, LSB first) limits the save to those pages.
/// `threads` 0 = a default.
///
/// # Safety
/// `host` must be valid for reads of the block's `used_length` bytes for the
/// duration of the call (other threads may change it; the saved bytes are
/// then some mix, as with any live save).
pub unsafe fn save_ramblock(
    img: &Image,
    block: usize,
    host: *const u8,
    dirty: Option<&[u64]>,
    threads: u32,
) -> Result<Stats> {
    let _ = (img, block, host, dirty, threads);
    todo!()
}

/// Restore `block` into host memory. Present pages are read; absent pages
/// are zeroed only with `zero_absent`.
///
/// # Safety
/// `host` must be valid for writes of the block's `used_length` bytes for
/// the duration of the call.
pub unsafe fn read_ramblock(
    img: &Image,
    block: usize,
    host: *mut u8,
    zero_absent: bool,
    threads: u32,
) -> Result<Stats> {
    let _ = (img, block, host, zero_absent, threads);
    todo!()
}

/// Safe convenience: restore a block into a new Vec (absent pages zero).
pub fn read_ramblock_to_vec(img: &Image, block: usize, threads: u32) -> Result<Vec<u8>> {
    let _ = (img, block, threads);
    todo!()
}
