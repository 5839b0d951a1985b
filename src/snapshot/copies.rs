//! The fault thread's copies of pages the guest wrote before a saver got
//! to them: page-aligned slots in one buffer, found by page and counted
//! per unit. A saver takes the copies of the words it claims and writes
//! them in the same requests as its own pages, so a copied-out page costs
//! no request of its own; when the slots run short, savers go first to the
//! unit holding most copies (its save frees them).

use crate::error::Result;
use crate::uffd::host::Staging;
use std::collections::HashMap;

pub(super) struct Copies {
    slab: Staging,
    ps: u64,
    free: Vec<u32>,
    by_page: HashMap<u64, u32>,
    per_unit: Vec<u32>,
    unit_pages: u64,
}

impl Copies {
    /// `slots` pages of `ps` bytes; `units` units of `unit_pages` pages.
    pub(super) fn new(ps: u64, slots: u32, units: u64, unit_pages: u64) -> Result<Copies> {
        Ok(Copies {
            slab: Staging::new((slots as u64 * ps) as usize)?,
            ps,
            free: (0..slots).rev().collect(),
            by_page: HashMap::new(),
            per_unit: vec![0; units as usize],
            unit_pages,
        })
    }

    /// Whether fewer than a quarter of the slots are free.
    pub(super) fn short(&self) -> bool {
        self.free.len() * 4 < self.by_page.len() + self.free.len()
    }

    /// Copy page `p` from `src` into a free slot; false when none is free.
    ///
    /// # Safety
    /// `src` must be readable for one page.
    pub(super) unsafe fn insert(&mut self, p: u64, src: *const u8) -> bool {
        let Some(slot) = self.free.pop() else {
            return false;
        };
        // SAFETY: `src` is readable for a page (the caller's contract); the
        // slot is one page inside our slab, free so nobody else reads it;
        // a raw copy forms no reference to the source (guest memory).
        unsafe { std::ptr::copy_nonoverlapping(src, self.ptr(slot).cast_mut(), self.ps as usize) };
        self.by_page.insert(p, slot);
        self.per_unit[(p / self.unit_pages) as usize] += 1;
        true
    }

    /// Take page `p`'s copy out: its slot, which stays the taker's (its
    /// bytes unchanged) until [`release`](Self::release).
    pub(super) fn take(&mut self, p: u64) -> Option<u32> {
        let slot = self.by_page.remove(&p)?;
        self.per_unit[(p / self.unit_pages) as usize] -= 1;
        Some(slot)
    }

    /// The first byte of `slot`; stable for the life of `self`.
    pub(super) fn ptr(&self, slot: u32) -> *const u8 {
        // SAFETY: slots lie inside the slab (indices < slots).
        unsafe { self.slab.ptr().add((slot as u64 * self.ps) as usize) }
    }

    /// Give taken slots back.
    pub(super) fn release(&mut self, slots: impl IntoIterator<Item = u32>) {
        self.free.extend(slots);
    }

    /// The unit holding most copies among those `open` allows.
    pub(super) fn densest(&self, open: impl Fn(u64) -> bool) -> Option<u64> {
        let mut best: Option<(u64, u32)> = None;
        for (u, &n) in self.per_unit.iter().enumerate() {
            if n > best.map_or(0, |b| b.1) && open(u as u64) {
                best = Some((u as u64, n));
            }
        }
        best.map(|b| b.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found_by_page_and_counted_per_unit() {
        let mut c = Copies::new(4096, 4, 3, 10).unwrap();
        let page = [7u8; 4096];
        for p in [1, 2, 25, 26] {
            // SAFETY: `page` is one readable page.
            assert!(unsafe { c.insert(p, page.as_ptr()) });
        }
        // SAFETY: as above.
        assert!(!unsafe { c.insert(27, page.as_ptr()) }, "no slot left");
        assert!(c.short());
        assert_eq!(c.densest(|_| true), Some(0));
        assert_eq!(c.densest(|u| u != 0), Some(2));
        let s = c.take(25).unwrap();
        // SAFETY: a taken slot is one readable page.
        assert_eq!(unsafe { *c.ptr(s).add(4095) }, 7);
        assert!(c.take(25).is_none());
        assert_eq!(c.densest(|u| u != 0), Some(2), "26 is still held");
        c.release([s]);
        // SAFETY: as above.
        assert!(unsafe { c.insert(27, page.as_ptr()) });
    }
}
