//! Codec and checksum of one chunk. Pure (no I/O).
//!
//! zstd through the `zstd` crate (bulk API, one reusable context per worker
//! thread); checksums are xxh3-64 through `xxhash-rust` (~10+ GB/s with
//! SSE2/AVX2, far faster than the disk and the compressor).

use crate::error::{Error, Result};

/// Default zstd level: level 1 keeps the compressor ahead of the disk on two
/// cores and compresses guest memory within a few percent of level 3.
pub const DEFAULT_LEVEL: i32 = 1;
/// zstd's level range ("fast" negative levels through the maximum).
/// Lowest accepted level (zstd's fast levels are negative).
pub const MIN_LEVEL: i32 = -7;
/// Highest accepted level.
pub const MAX_LEVEL: i32 = 22;

/// xxh3-64 of `data`.
pub fn checksum(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// Per-thread compression state: a reusable zstd context.
pub struct Compressor {
    ctx: zstd::bulk::Compressor<'static>,
}

impl Compressor {
    /// A context for `level` (`EINVAL` outside [`MIN_LEVEL`]..=[`MAX_LEVEL`]).
    pub fn new(level: i32) -> Result<Compressor> {
        if !(MIN_LEVEL..=MAX_LEVEL).contains(&level) {
            return Err(Error::Invalid(format!(
                "zstd level {level} is outside {MIN_LEVEL}..={MAX_LEVEL}"
            )));
        }
        let ctx = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::io(format!("creating a zstd context (level {level})"), e))?;
        Ok(Compressor { ctx })
    }

    /// Compress `src` into `dst`; `None` when the result would not fit in
    /// `dst` (the caller then stores the chunk raw).
    pub fn compress(&mut self, src: &[u8], dst: &mut [u8]) -> Option<usize> {
        self.ctx.compress_to_buffer(src, dst).ok()
    }
}

/// Per-thread decompression state: a zstd `DCtx` used through `zstd-sys`
/// directly, so that a frame can be decompressed into memory known only by
/// pointer and length (guest memory, which never becomes a Rust reference).
pub struct Decompressor {
    ctx: std::ptr::NonNull<zstd::zstd_safe::zstd_sys::ZSTD_DCtx>,
}

// SAFETY: a zstd DCtx has no thread affinity; it is only used through
// `&mut self` (one thread at a time) and freed once, in `drop`.
unsafe impl Send for Decompressor {}

impl Decompressor {
    /// A new context.
    pub fn new() -> Result<Decompressor> {
        // SAFETY: ZSTD_createDCtx has no preconditions; NULL is checked.
        let ctx = unsafe { zstd::zstd_safe::zstd_sys::ZSTD_createDCtx() };
        let ctx = std::ptr::NonNull::new(ctx).ok_or_else(|| {
            Error::io(
                "creating a zstd decompression context",
                std::io::Error::from_raw_os_error(libc::ENOMEM),
            )
        })?;
        Ok(Decompressor { ctx })
    }

    /// Decompress one frame `src` into exactly `dst.len()` bytes; `Err`
    /// carries zstd's reason or the size mismatch (the caller names the
    /// chunk and offset).
    pub fn decompress(&mut self, src: &[u8], dst: &mut [u8]) -> std::result::Result<(), String> {
        // SAFETY: `dst` is a live, exclusive slice of `dst.len()` bytes.
        unsafe { self.decompress_raw(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// As [`decompress`](Self::decompress), into `len` bytes at `dst`.
    /// zstd writes the output and reads back what it wrote (matches copy
    /// from earlier output), through the pointer only.
    ///
    /// # Safety
    /// `dst` must be valid for reads and writes of `len` bytes for the
    /// call and must not overlap `src`. Others may access it meanwhile (it
    /// may be guest memory): the output is then some mix of bytes, which
    /// the caller's verification catches; no reference to it is formed.
    pub unsafe fn decompress_raw(
        &mut self,
        src: &[u8],
        dst: *mut u8,
        len: usize,
    ) -> std::result::Result<(), String> {
        use zstd::zstd_safe::zstd_sys as sys;
        // SAFETY: the context is live; `src` is a live slice; `dst` is
        // valid for `len` bytes per this function's contract; zstd writes
        // at most `len` bytes.
        let n = unsafe {
            sys::ZSTD_decompressDCtx(
                self.ctx.as_ptr(),
                dst.cast(),
                len,
                src.as_ptr().cast(),
                src.len(),
            )
        };
        // SAFETY: ZSTD_isError only inspects the code.
        if unsafe { sys::ZSTD_isError(n) } != 0 {
            // SAFETY: zstd returns a static NUL-terminated string for any code.
            let why = unsafe { std::ffi::CStr::from_ptr(sys::ZSTD_getErrorName(n)) };
            return Err(format!("zstd: {}", why.to_string_lossy()));
        }
        if n != len {
            return Err(format!("decompressed to {n} bytes, expected {len}"));
        }
        Ok(())
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createDCtx, freed exactly once here.
        unsafe { zstd::zstd_safe::zstd_sys::ZSTD_freeDCtx(self.ctx.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let src: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut c = Compressor::new(DEFAULT_LEVEL).unwrap();
        let mut dst = vec![0u8; src.len()];
        let n = c.compress(&src, &mut dst).unwrap();
        assert!(n < src.len() / 10);
        let mut d = Decompressor::new().unwrap();
        let mut out = vec![0u8; src.len()];
        d.decompress(&dst[..n], &mut out).unwrap();
        assert_eq!(out, src);
        assert_eq!(checksum(&out), checksum(&src));
        // Truncated, flipped, wrong size: errors, never a panic.
        assert!(d.decompress(&dst[..n - 1], &mut out).is_err());
        let mut f = dst[..n].to_vec();
        f[n / 2] ^= 0x10;
        let _ = d.decompress(&f, &mut out); // may "succeed" with other bytes: the checksum catches it
        assert!(d.decompress(&dst[..n], &mut out[..4096]).is_err());
        assert!(d
            .decompress(&dst[..n], &mut vec![0u8; (2 << 20) + 1])
            .is_err());
        // Incompressible into a buffer of the same size: does not fit.
        let mut x = 0x9e3779b97f4a7c15u64;
        let rnd: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut small = vec![0u8; rnd.len()];
        assert!(c.compress(&rnd, &mut small).is_none());
        assert!(Compressor::new(23).is_err());
        assert!(Compressor::new(-8).is_err());
    }
}
