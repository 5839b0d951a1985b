//! The in-memory atomic page bitmap (u64 words, LSB first; little-endian on
//! disk, which is QEMU's host order on x86-64: page i is byte i/8, bit i%8).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One bit per page. Setting and clearing are lock-free; a `dirty` flag
/// tells whether the bitmap changed since it was last written out.
pub struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    bits: u64,
    dirty: AtomicBool,
}

fn word_count(bits: u64) -> usize {
    bits.div_ceil(64) as usize
}

impl AtomicBitmap {
    /// An all-clear bitmap of `bits` bits.
    pub fn new(bits: u64) -> Self {
        let words = (0..word_count(bits)).map(|_| AtomicU64::new(0)).collect();
        AtomicBitmap {
            words,
            bits,
            dirty: AtomicBool::new(false),
        }
    }

    /// Load from the on-disk encoding (`bytes.len()` must be the encoded
    /// length, `ceil(bits/64)*8`). Bits past `bits` in the last word are
    /// ignored (masked off): they describe no page.
    pub fn from_le_bytes(bits: u64, bytes: &[u8]) -> Self {
        let bm = AtomicBitmap::new(bits);
        for (i, w) in bm.words.iter().enumerate() {
            let mut b = [0u8; 8];
            let start = i * 8;
            let end = (start + 8).min(bytes.len());
            if start < end {
                b[..end - start].copy_from_slice(&bytes[start..end]);
            }
            let mut v = u64::from_le_bytes(b);
            if i == bm.words.len() - 1 && bits % 64 != 0 {
                v &= (1u64 << (bits % 64)) - 1;
            }
            w.store(v, Ordering::Relaxed);
        }
        bm
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        self.words.len() * 8
    }

    /// The on-disk encoding of the current bits.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        for w in self.words.iter() {
            out.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
        }
        out
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.bits
    }

    /// True when there are no bits.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Whether bit `i` is set.
    pub fn test(&self, i: u64) -> bool {
        debug_assert!(i < self.bits);
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1u64 << (i % 64)) != 0
    }

    /// Set bits `[first, first+n)`; the caller has written their data.
    pub fn set_range(&self, first: u64, n: u64) {
        self.update_range(first, n, true);
    }

    /// Clear bits `[first, first+n)`; returns whether any was set.
    pub fn clear_range(&self, first: u64, n: u64) -> bool {
        self.update_range(first, n, false)
    }

    /// The (word index, mask) pairs covering bits `[first, first+n)`.
    fn word_masks(first: u64, n: u64) -> impl Iterator<Item = (usize, u64)> {
        let end = first + n;
        let mut i = first;
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let lo = i % 64;
            let hi = (end - (i - lo)).min(64); // exclusive bit index in word
            let width = hi - lo;
            let mask = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << lo
            };
            let w = (i / 64) as usize;
            i += width;
            Some((w, mask))
        })
    }

    fn update_range(&self, first: u64, n: u64, set: bool) -> bool {
        debug_assert!(first + n <= self.bits);
        let mut any_changed = false;
        for (w, mask) in Self::word_masks(first, n) {
            let old = if set {
                self.words[w].fetch_or(mask, Ordering::AcqRel)
            } else {
                self.words[w].fetch_and(!mask, Ordering::AcqRel)
            };
            let changed = if set { !old & mask } else { old & mask };
            any_changed |= changed != 0;
        }
        if any_changed {
            self.set_dirty();
        }
        any_changed
    }

    /// Raise the dirty flag with a read-modify-write, not a plain store: a
    /// sync whose `take_dirty` reads the flag must synchronise with *every*
    /// writer that raised it since the last take, and only RMWs extend a
    /// release sequence. With a plain `store(true, Release)`, a second
    /// writer's store ends the first writer's release sequence, and C11
    /// allows the sync to take the flag yet snapshot the words without the
    /// first writer's bit: a bit neither written out nor flagged for the
    /// next sync (x86-64 and ARMv8 hardware forbid that outcome; the
    /// language model does not). tests/loom_bitmap.rs checks both.
    fn set_dirty(&self) {
        self.dirty.swap(true, Ordering::Release);
    }

    /// Whether any bit in `[first, first+n)` is set.
    pub fn any_in_range(&self, first: u64, n: u64) -> bool {
        debug_assert!(first + n <= self.bits);
        Self::word_masks(first, n)
            .any(|(w, mask)| self.words[w].load(Ordering::Acquire) & mask != 0)
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }

    /// Whether any bit changed since the last [`take_dirty`](Self::take_dirty).
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Clear the dirty flag, returning its old value. Call before taking a
    /// snapshot with [`to_le_bytes`](Self::to_le_bytes), so a change racing
    /// the snapshot leaves the flag set.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Mark dirty (e.g. a write-out failed and must be retried).
    pub fn mark_dirty(&self) {
        self.set_dirty();
    }

    /// The runs of equal bits in `[first, end)`: calls `f(start, len, set)`
    /// for each maximal run.
    pub fn for_each_run(&self, first: u64, end: u64, f: impl FnMut(u64, u64, bool)) {
        for_each_run_in(&self.words, first, end, f);
    }
}

/// Maximal runs of equal bits in `[first, end)` of `words` (bit `i` is bit
/// `i % 64` of word `i / 64`): `f(start, len, set)`. Whole words of equal
/// bits are passed over in one step. Shared by the page bitmap and the
/// userfaultfd rooms' page sets.
pub(crate) fn for_each_run_in(
    words: &[AtomicU64],
    first: u64,
    end: u64,
    mut f: impl FnMut(u64, u64, bool),
) {
    let test = |i: u64| words[(i / 64) as usize].load(Ordering::Acquire) & (1u64 << (i % 64)) != 0;
    let mut i = first;
    while i < end {
        let set = test(i);
        let mut j = i + 1;
        while j < end {
            if j % 64 == 0 && j + 64 <= end {
                let w = words[(j / 64) as usize].load(Ordering::Acquire);
                if (set && w == u64::MAX) || (!set && w == 0) {
                    j += 64;
                    continue;
                }
            }
            if test(j) != set {
                break;
            }
            j += 1;
        }
        f(i, j - i, set);
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_runs() {
        let bm = AtomicBitmap::new(200);
        assert_eq!(bm.encoded_len(), 32);
        bm.set_range(3, 130);
        assert!(bm.take_dirty());
        assert_eq!(bm.count(), 130);
        assert!(!bm.test(2) && bm.test(3) && bm.test(132) && !bm.test(133));
        assert!(bm.clear_range(60, 10));
        assert!(!bm.clear_range(60, 10));
        assert!(!bm.any_in_range(60, 10));
        assert!(bm.any_in_range(59, 2) && bm.any_in_range(64, 69));
        let mut runs = vec![];
        bm.for_each_run(0, 200, |s, n, set| runs.push((s, n, set)));
        assert_eq!(
            runs,
            vec![
                (0, 3, false),
                (3, 57, true),
                (60, 10, false),
                (70, 63, true),
                (133, 67, false)
            ]
        );
    }

    #[test]
    fn le_encoding_matches_qemu() {
        let bm = AtomicBitmap::new(70);
        bm.set_range(0, 1);
        bm.set_range(9, 1);
        bm.set_range(69, 1);
        let b = bm.to_le_bytes();
        assert_eq!(b.len(), 16);
        assert_eq!(b[0], 0x01);
        assert_eq!(b[1], 0x02);
        assert_eq!(b[8], 0x20);
        // Bits beyond the page count are masked when loading.
        let mut raw = b.clone();
        raw[15] = 0xff;
        let back = AtomicBitmap::from_le_bytes(70, &raw);
        assert_eq!(back.count(), 3);
    }
}
