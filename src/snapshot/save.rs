//! Saver threads: claim pages word by word, write them from guest memory
//! while still protected, then un-protect; write the fault thread's copies.

use super::Shared;
use crate::engine::UNIT_BYTES;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn units(sh: &Shared) -> u64 {
    (sh.saved.len() * sh.ps).div_ceil(UNIT_BYTES)
}

pub(super) fn saver(sh: Arc<Shared>) {
    let words_per_unit = (UNIT_BYTES / sh.ps / 64).max(1);
    let words = sh.claimed.len().div_ceil(64);
    let units = units(&sh);
    loop {
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        write_copies(&sh);
        let u = sh.next_unit.fetch_add(1, Ordering::AcqRel);
        if u < units {
            let w0 = u * words_per_unit;
            for w in w0..(w0 + words_per_unit).min(words) {
                write_copies(&sh);
                save_word(&sh, w);
            }
            continue;
        }
        // Every unit is taken: stay until the copies are written.
        if sh.saved.full() || sh.error.lock().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Claim the unclaimed pages of word `w`, save them, un-protect them.
fn save_word(sh: &Shared, w: u64) {
    let won = sh.claimed.claim_word(w);
    let mut bits = won;
    while bits != 0 {
        let lo = bits.trailing_zeros() as u64;
        let len = (!(bits >> lo)).trailing_zeros() as u64;
        let first = w * 64 + lo;
        // SAFETY: pages first..first+len lie inside the host range, which
        // stays mapped (caller's contract) and write-protected until the
        // unprotect below, so it holds the start-instant bytes.
        let r = unsafe {
            sh.img.write_pages_raw(
                sh.block,
                first * sh.ps,
                sh.host.ptr(first * sh.ps),
                len * sh.ps,
            )
        };
        match r {
            Ok(()) => {
                sh.unprotect(first, len);
                sh.mark_saved(first, len);
            }
            Err(e) => {
                // The snapshot failed; never hold the guest for it.
                sh.unprotect(first, len);
                sh.latch(e);
            }
        }
        bits &= !(((1u128 << (lo + len)) - 1) as u64);
    }
}

/// Write the pages the fault thread copied out.
fn write_copies(sh: &Shared) {
    let batch = std::mem::take(&mut *sh.copies.lock());
    for (p, buf) in batch {
        match sh.img.write_pages(sh.block, p * sh.ps, &buf) {
            Ok(()) => sh.mark_saved(p, 1),
            Err(e) => sh.latch(e),
        }
    }
}
