//! Saver threads: claim pages word by word and write them, in the same
//! requests as the fault thread's copies of pages in those words, while
//! they are still protected; then un-protect them.

use super::Shared;
use crate::engine::{tuning, UNIT_BYTES};
use crate::error::Result;
use crate::memory::GuestSlice;
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

/// Pages per unit (a whole number of words).
pub(super) fn unit_pages(ps: u64) -> u64 {
    (UNIT_BYTES / ps / 64).max(1) * 64
}

pub(super) fn saver(sh: Arc<Shared>) {
    let words_per_unit = unit_pages(sh.ps) / 64;
    let words = sh.claimed.len().div_ceil(64);
    loop {
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        service(&sh);
        if let Some(u) = next_unit(&sh) {
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
        // Every unit is taken: stay until the urgent pages are written.
        if sh.saved.full() || sh.error.lock().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The next unit to save: while copies fill most slots, the unit holding
/// most of them (saving it frees them); else the next in order.
fn next_unit(sh: &Shared) -> Option<u64> {
    let dense = {
        let c = sh.copies.lock();
        if c.short() {
            c.densest(|u| !sh.units_taken.test(u))
        } else {
            None
        }
    };
    if let Some(u) = dense {
        if sh.units_taken.claim(u) {
            return Some(u);
        }
    }
    loop {
        let u = sh.next_unit.fetch_add(1, Ordering::AcqRel);
        if u >= sh.units_taken.len() {
            return None;
        }
        if sh.units_taken.claim(u) {
            return Some(u);
        }
    }
}

/// The urgent pages first: the fault thread claimed them when no copy slot
/// was free, and a writer waits on each.
fn service(sh: &Shared) {
    let urgent = std::mem::take(&mut *sh.urgent.lock());
    for p in urgent {
        save_claimed(sh, p, 1);
    }
}

/// Claim the unclaimed pages of words `[w, w+n)`, take the fault thread's
/// copies of pages in them, write both in runs, un-protect the claimed
/// pages, mark all of them saved.
fn save_words(sh: &Shared, w: u64, n: u64) {
    if sh.ps > MAX_WORD_CLAIM_PAGE {
        // Huge pages: a word would hold a writer for 64 of them; claim and
        // save one at a time (or write the fault thread's copy of one it
        // claimed), looking at urgent pages in between.
        for p in w * 64..((w + n) * 64).min(sh.claimed.len()) {
            if sh.claimed.claim(p) {
                save_claimed(sh, p, 1);
            } else {
                save_copy(sh, p);
            }
            service(sh);
        }
        return;
    }
    let first = w * 64;
    let end = ((w + n) * 64).min(sh.claimed.len());
    let mut won = Vec::with_capacity(n as usize);
    for i in w..w + n {
        let won_word = sh.claimed.claim_word(i);
        won.push(won_word);
    }
    let is_won = |p: u64| won[((p - first) / 64) as usize] & (1 << (p % 64)) != 0;
    // The fault thread claims a page and stores its copy under this lock,
    // so every page it claimed before the claims above has its copy here.
    let mut slots = Vec::new();
    let mut src: Vec<Option<*const u8>> = Vec::with_capacity((end - first) as usize);
    {
        let mut c = sh.copies.lock();
        for p in first..end {
            if is_won(p) {
                src.push(Some((sh.host.start + p * sh.ps) as *const u8));
            } else if let Some(s) = c.take(p) {
                slots.push(s);
                src.push(Some(c.ptr(s)));
            } else {
                src.push(None);
            }
        }
    }
    // Guest pages are still protected (only the claimer lifts it) and the
    // taken slots are this thread's until released: start-instant bytes.
    let r = if sh.spans {
        write_runs(sh, first, &src)
    } else {
        write_each(sh, first, &src)
    };
    // Lifted even after an error: the snapshot failed, never hold the guest.
    runs(first, end, is_won, |s, k| sh.unprotect(s, k));
    match r {
        Ok(()) => runs(
            first,
            end,
            |p| src[(p - first) as usize].is_some(),
            |s, k| sh.mark_saved(s, k),
        ),
        Err(e) => sh.latch(e),
    }
    if !slots.is_empty() {
        sh.copies.lock().release(slots);
    }
}

/// Call `f(start, len)` for each run of pages in `[first, end)` for which
/// `member` holds.
fn runs(first: u64, end: u64, member: impl Fn(u64) -> bool, mut f: impl FnMut(u64, u64)) {
    let mut p = first;
    while p < end {
        if !member(p) {
            p += 1;
            continue;
        }
        let s = p;
        while p < end && member(p) {
            p += 1;
        }
        f(s, p - s);
    }
}

/// What a page of `write_runs`' input is.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Not this saver's.
    Skip,
    Zero,
    Data,
}

/// Write page `first + i` from `src[i]` (None: skip): each run of data
/// pages in one request, joined across a gap of zero pages no longer than
/// the engine's save gap when the image allows it (their slots get zeros,
/// their bits stay clear); other zero pages are discarded (holes).
fn write_runs(sh: &Shared, first: u64, src: &[Option<*const u8>]) -> Result<()> {
    let ps = sh.ps as usize;
    let kind: Vec<Kind> = src
        .iter()
        .map(|s| match s {
            None => Kind::Skip,
            // SAFETY: each source is readable for a page (see the caller).
            Some(p) if unsafe { GuestSlice::new(*p, ps) }.is_ok_and(|g| g.is_zero()) => Kind::Zero,
            Some(_) => Kind::Data,
        })
        .collect();
    let max_gap = (tuning::get().0 / sh.ps) as usize;
    let n = src.len();
    let mut i = 0;
    while i < n {
        match kind[i] {
            Kind::Skip => i += 1,
            Kind::Zero => {
                let s = i;
                while i < n && kind[i] == Kind::Zero {
                    i += 1;
                }
                sh.img
                    .discard_pages(sh.block, first + s as u64, (i - s) as u64)?;
            }
            Kind::Data => {
                let (s, mut e) = (i, i);
                let mut data: Vec<(u64, u64)> = Vec::new();
                loop {
                    let d = e;
                    while e < n && kind[e] == Kind::Data {
                        e += 1;
                    }
                    data.push((first + d as u64, (e - d) as u64));
                    let mut g = e;
                    while g < n && g - e <= max_gap && kind[g] == Kind::Zero {
                        g += 1;
                    }
                    let joins = g > e
                        && g < n
                        && g - e <= max_gap
                        && kind[g] == Kind::Data
                        && sh
                            .img
                            .gap_writable(sh.block, first + e as u64, (g - e) as u64);
                    if !joins {
                        break;
                    }
                    e = g;
                }
                write_span(sh, first + s as u64, &src[s..e], &data)?;
                i = e;
            }
        }
    }
    Ok(())
}

/// One request for the pages `src` (all present) from page `start`, then
/// the bits of the data runs `data`.
fn write_span(
    sh: &Shared,
    start: u64,
    src: &[Option<*const u8>],
    data: &[(u64, u64)],
) -> Result<()> {
    let ps = sh.ps as usize;
    let mut iov: Vec<libc::iovec> = Vec::new();
    for p in src.iter().flatten() {
        match iov.last_mut() {
            Some(v) if (v.iov_base as usize + v.iov_len) == *p as usize => v.iov_len += ps,
            _ => iov.push(libc::iovec {
                iov_base: p.cast_mut().cast(),
                iov_len: ps,
            }),
        }
    }
    // SAFETY: every source is readable for a page for this call (see
    // `save_words`).
    unsafe {
        sh.img
            .store_span_iov(sh.block, start, src.len() as u64, &iov, data)
    }
}

/// For chunked (compressed) blocks, whose slots hold chunks: each run of
/// pages through the image's page writes.
fn write_each(sh: &Shared, first: u64, src: &[Option<*const u8>]) -> Result<()> {
    for (i, s) in src.iter().enumerate() {
        if let Some(p) = s {
            // SAFETY: readable for a page (see `save_words`).
            let mem = unsafe { GuestSlice::new(*p, sh.ps as usize) }?;
            sh.img
                .write_guest_pages(sh.block, (first + i as u64) * sh.ps, mem)?;
        }
    }
    Ok(())
}

/// Write the fault thread's copy of page `p`, if it holds one (a page whose
/// claim this saver lost: the fault thread claimed it and stored its copy
/// under the lock taken here, or queued it as urgent).
fn save_copy(sh: &Shared, p: u64) {
    let (slot, ptr) = {
        let mut c = sh.copies.lock();
        let Some(slot) = c.take(p) else { return };
        (slot, c.ptr(slot))
    };
    // SAFETY: the taken slot is one page (of the snapshot's size) of the
    // slab, this thread's until released below.
    let r = unsafe { GuestSlice::new(ptr, sh.ps as usize) }
        .and_then(|m| sh.img.write_guest_pages(sh.block, p * sh.ps, m));
    match r {
        Ok(()) => sh.mark_saved(p, 1),
        Err(e) => sh.latch(e),
    }
    sh.copies.lock().release([slot]);
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
