//! A counting atomic bitmap: one bit per granule (host page), a count of
//! set bits maintained on every set, and run iteration. Used for the
//! "settled" (resident or discarded) and "gone" (discarded) states.

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct PageSet {
    words: Box<[AtomicU64]>,
    bits: u64,
    count: AtomicU64,
}

impl PageSet {
    pub(crate) fn new(bits: u64) -> PageSet {
        let words = (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        PageSet {
            words,
            bits,
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.bits
    }

    pub(crate) fn test(&self, i: u64) -> bool {
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Set `[first, first+n)`; returns how many bits were newly set.
    pub(crate) fn set_range(&self, first: u64, n: u64) -> u64 {
        let end = (first + n).min(self.bits);
        let mut i = first;
        let mut newly = 0;
        while i < end {
            let lo = i % 64;
            let width = (end - i).min(64 - lo);
            let mask = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << lo
            };
            let old = self.words[(i / 64) as usize].fetch_or(mask, Ordering::AcqRel);
            newly += (!old & mask).count_ones() as u64;
            i += width;
        }
        if newly > 0 {
            self.count.fetch_add(newly, Ordering::AcqRel);
        }
        newly
    }

    /// Set every bit of word `w` (the bits `64*w ..`); returns the mask of
    /// the bits this call set (a claim: each bit is won by one caller).
    pub(crate) fn claim_word(&self, w: u64) -> u64 {
        let lo = w * 64;
        let width = (self.bits - lo).min(64);
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        let old = self.words[w as usize].fetch_or(mask, Ordering::AcqRel);
        let won = !old & mask;
        if won != 0 {
            self.count
                .fetch_add(won.count_ones() as u64, Ordering::AcqRel);
        }
        won
    }

    /// Set bit `i`; true when this call set it.
    pub(crate) fn claim(&self, i: u64) -> bool {
        self.set_range(i, 1) == 1
    }

    /// Set bits.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    pub(crate) fn full(&self) -> bool {
        self.count() >= self.bits
    }

    /// Whether every bit of `[first, end)` is set.
    pub(crate) fn all(&self, first: u64, end: u64) -> bool {
        let mut ok = true;
        self.runs(first, end, |_, _, set| ok &= set);
        ok
    }

    /// Maximal runs of equal bits in `[first, end)`: `f(start, len, set)`.
    pub(crate) fn runs(&self, first: u64, end: u64, f: impl FnMut(u64, u64, bool)) {
        crate::image::bitmap::for_each_run_in(&self.words, first, end.min(self.bits), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_new_bits() {
        let s = PageSet::new(300);
        assert_eq!(s.set_range(10, 100), 100);
        assert_eq!(s.set_range(60, 100), 50);
        assert_eq!(s.count(), 150);
        assert!(s.all(10, 160) && !s.all(9, 160));
        let mut runs = vec![];
        s.runs(0, 300, |a, n, set| runs.push((a, n, set)));
        assert_eq!(
            runs,
            vec![(0, 10, false), (10, 150, true), (160, 140, false)]
        );
        assert_eq!(s.set_range(0, 300), 150);
        assert!(s.full());
    }
}
