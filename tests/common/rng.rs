//! The one deterministic pseudo-random generator of the test suite.

/// xorshift64 (Marsaglia's 13/7/17 triple): deterministic, seedable, fast,
/// good enough for test patterns and mutation choices.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose state is spread from `seed` (any seed, even 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// A generator starting from exactly `state` (which must not be 0):
    /// for tests whose sequences were fixed with a raw state.
    pub fn raw(state: u64) -> Rng {
        assert_ne!(state, 0, "xorshift64 needs a non-zero state");
        Rng(state)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform-ish in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// Fill `buf` with the next outputs, 8 little-endian bytes each.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}
