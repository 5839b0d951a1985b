//! Zero-page detection over raw guest memory.
//!
//! Guest memory is reached through raw pointers (another thread or the guest
//! may change it at any time); a page that changes while it is scanned is
//! saved as whatever was read, exactly as any live save would. The scan uses
//! 16-byte SSE2 loads (baseline on x86-64), checks the first bytes first
//! (most data pages fail there) and ORs 64 bytes per step.

/// Whether `len` bytes at `ptr` are all zero.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
pub unsafe fn is_zero(ptr: *const u8, len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: forwarded caller contract; SSE2 is part of the x86-64 baseline.
        unsafe { is_zero_sse2(ptr, len) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: forwarded caller contract.
        unsafe { is_zero_portable(ptr, len) }
    }
}

/// Portable version: u64 words, unaligned reads.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
pub unsafe fn is_zero_portable(ptr: *const u8, len: usize) -> bool {
    let mut i = 0usize;
    while i + 32 <= len {
        // SAFETY: i + 32 <= len, so the four 8-byte reads are in bounds.
        let v = unsafe {
            (ptr.add(i) as *const u64).read_unaligned()
                | (ptr.add(i + 8) as *const u64).read_unaligned()
                | (ptr.add(i + 16) as *const u64).read_unaligned()
                | (ptr.add(i + 24) as *const u64).read_unaligned()
        };
        if v != 0 {
            return false;
        }
        i += 32;
    }
    while i < len {
        // SAFETY: i < len.
        if unsafe { *ptr.add(i) } != 0 {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(target_arch = "x86_64")]
unsafe fn is_zero_sse2(ptr: *const u8, len: usize) -> bool {
    use std::arch::x86_64::*;
    if len < 64 {
        // SAFETY: forwarded caller contract.
        return unsafe { is_zero_portable(ptr, len) };
    }
    // Early out on the first 16 bytes: data pages almost always fail here.
    // SAFETY: len >= 64, so 16 bytes are readable.
    let first = unsafe { _mm_loadu_si128(ptr as *const __m128i) };
    // SAFETY: SSE2 intrinsics on registers.
    if unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(first, _mm_setzero_si128())) } != 0xffff {
        return false;
    }
    let mut i = 0usize;
    while i + 256 <= len {
        // SAFETY: i + 256 <= len: sixteen 16-byte loads in bounds.
        let acc = unsafe {
            let p = ptr.add(i) as *const __m128i;
            let a = _mm_or_si128(
                _mm_or_si128(_mm_loadu_si128(p), _mm_loadu_si128(p.add(1))),
                _mm_or_si128(_mm_loadu_si128(p.add(2)), _mm_loadu_si128(p.add(3))),
            );
            let b = _mm_or_si128(
                _mm_or_si128(_mm_loadu_si128(p.add(4)), _mm_loadu_si128(p.add(5))),
                _mm_or_si128(_mm_loadu_si128(p.add(6)), _mm_loadu_si128(p.add(7))),
            );
            let c = _mm_or_si128(
                _mm_or_si128(_mm_loadu_si128(p.add(8)), _mm_loadu_si128(p.add(9))),
                _mm_or_si128(_mm_loadu_si128(p.add(10)), _mm_loadu_si128(p.add(11))),
            );
            let d = _mm_or_si128(
                _mm_or_si128(_mm_loadu_si128(p.add(12)), _mm_loadu_si128(p.add(13))),
                _mm_or_si128(_mm_loadu_si128(p.add(14)), _mm_loadu_si128(p.add(15))),
            );
            _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d))
        };
        // SAFETY: SSE2 intrinsics on registers.
        if unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(acc, _mm_setzero_si128())) } != 0xffff {
            return false;
        }
        i += 256;
    }
    // SAFETY: the remaining `len - i` bytes are in bounds.
    unsafe { is_zero_portable(ptr.add(i), len - i) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_any_nonzero_byte() {
        for len in [0usize, 1, 17, 63, 64, 255, 256, 300, 4096, 4096 * 3 + 5] {
            let mut v = vec![0u8; len + 1];
            let p = v[1..].as_ptr();
            // SAFETY: p is valid for len bytes.
            assert!(unsafe { is_zero(p, len) });
            for pos in 0..len {
                v[1 + pos] = 0x80;
                // SAFETY: as above.
                let z = unsafe { is_zero(v[1..].as_ptr(), len) };
                assert!(!z, "len {len} pos {pos}");
                // SAFETY: as above.
                assert!(!unsafe { is_zero_portable(v[1..].as_ptr(), len) });
                v[1 + pos] = 0;
            }
        }
    }
}
