//! Saver threads: claim pages word by word, write them from guest memory
//! while still protected, then un-protect; write the fault thread's copies.

use super::Shared;
use crate::engine::UNIT_BYTES;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Words (of 64 pages) claimed and written together: 1 MiB of 4 KiB pages.
/// Larger writes go faster; a writer hitting a claimed page waits for the
/// whole write.
const CLAIM_WORDS: u64 = 4;
/// Largest page (the snapshot's unit) claimed a word at a time.
const MAX_WORD_CLAIM_PAGE: u64 = 16 << 10;

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
        service(&sh);
        let u = sh.next_unit.fetch_add(1, Ordering::AcqRel);
        if u < units {
            let w0 = u * words_per_unit;
            let w1 = (w0 + words_per_unit).min(words);
            let mut w = w0;
            while w < w1 {
                service(&sh);
                let n = CLAIM_WORDS.min(w1 - w);
                save_words(&sh, w, n);
                w += n;
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

/// What comes before the units: the urgent pages (a writer waits on each),
/// then the fault thread's copies (a chunk at a time, so several savers
/// share a long queue; urgent pages are looked at again between chunks).
fn service(sh: &Shared) {
    loop {
        let urgent = std::mem::take(&mut *sh.urgent.lock());
        for p in urgent {
            save_claimed(sh, p, 1);
        }
        let batch: Vec<(u64, Vec<u8>)> = {
            let mut q = sh.copies.lock();
            let n = q.len().min(64);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            break;
        }
        for (p, buf) in batch {
            match sh.img.write_pages(sh.block, p * sh.ps, &buf) {
                Ok(()) => sh.mark_saved(p, 1),
                Err(e) => sh.latch(e),
            }
        }
    }
}

/// Claim the unclaimed pages of words `[w, w+n)`, save them in runs,
/// un-protect them.
fn save_words(sh: &Shared, w: u64, n: u64) {
    if sh.ps > MAX_WORD_CLAIM_PAGE {
        // Huge pages: a word would hold a writer for 64 of them; claim and
        // save one at a time, looking at urgent pages in between.
        for p in w * 64..((w + n) * 64).min(sh.claimed.len()) {
            if sh.claimed.claim(p) {
                save_claimed(sh, p, 1);
            }
            service(sh);
        }
        return;
    }
    let mut run: Option<(u64, u64)> = None;
    for i in w..w + n {
        let won = sh.claimed.claim_word(i);
        for b in 0..64 {
            let p = i * 64 + b;
            if won & (1 << b) != 0 {
                run = match run {
                    Some((s, l)) if s + l == p => Some((s, l + 1)),
                    Some((s, l)) => {
                        save_claimed(sh, s, l);
                        Some((p, 1))
                    }
                    None => Some((p, 1)),
                };
            }
        }
    }
    if let Some((s, l)) = run {
        save_claimed(sh, s, l);
    }
}

/// Write pages `[first, first+len)`, which this thread claimed, from guest
/// memory, then lift their protection.
fn save_claimed(sh: &Shared, first: u64, len: u64) {
    // The pages stay write-protected until the unprotect below (only the
    // claimer lifts it), so they hold the start-instant bytes.
    let r = sh
        .host
        .read(first * sh.ps, len * sh.ps)
        .and_then(|mem| sh.img.write_guest_pages(sh.block, first * sh.ps, mem));
    // Lifted even after an error: the snapshot failed, never hold the guest.
    sh.unprotect(first, len);
    match r {
        Ok(()) => sh.mark_saved(first, len),
        Err(e) => sh.latch(e),
    }
}
