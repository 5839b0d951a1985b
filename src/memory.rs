//! Guest memory: typed views of memory the library does not own.
//!
//! Guest RAM (and a hypervisor's dirty bitmap) is shared with other threads
//! and with the guest itself, which may write it at any time while the
//! library reads it. A Rust reference (`&[u8]`, `&[u64]`) promises that
//! nobody writes the memory while the reference lives, so such memory must
//! never become one. These types, in the style of vm-memory's
//! `VolatileSlice`, carry a pointer and a length instead:
//!
//! - [`GuestSlice`]: memory the library only reads (a save); made from a
//!   `*const u8`, never turned into a mutable pointer;
//! - [`GuestSliceMut`]: memory the library writes (a restore);
//! - [`DirtyBitmap`]: one bit per page in `u64` words, read with atomic
//!   loads (a hypervisor may set bits concurrently).
//!
//! Each has one `unsafe` constructor stating the contract once; sub-ranges
//! are bounds-checked ([`GuestSlice::subslice`]), so code that uses a view
//! needs no further argument about lengths. Content read while another
//! party writes is some mix of old and new bytes, as with any live copy.

use crate::error::{Error, Result};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bounds check of every sub-range.
fn check_sub(len: usize, offset: usize, count: usize) -> Result<()> {
    match offset.checked_add(count) {
        Some(end) if end <= len => Ok(()),
        _ => Err(Error::OutOfRange(format!(
            "guest memory range {offset}+{count} is outside the {len} bytes given"
        ))),
    }
}

/// Read-only guest memory: `len` bytes at `ptr`, valid for `'a`, which
/// other threads or the guest may write concurrently.
#[derive(Clone, Copy, Debug)]
pub struct GuestSlice<'a> {
    ptr: *const u8,
    len: usize,
    _life: PhantomData<&'a u8>,
}

// SAFETY: the constructor's contract makes the memory valid for reads for
// 'a from any thread, and the type only ever reads it through raw pointers
// (concurrent writers are part of the contract), so sharing the view between
// threads adds no data race a Rust reference could observe.
unsafe impl Send for GuestSlice<'_> {}
// SAFETY: as for `Send`: every access is a raw-pointer read.
unsafe impl Sync for GuestSlice<'_> {}

impl<'a> GuestSlice<'a> {
    /// View `len` bytes at `ptr`. `Err` (`EINVAL`) for NULL.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes for `'a` (mapped, not
    /// freed or unmapped before `'a` ends). Other threads, and a guest, may
    /// write the memory at any time; the library reads it only through
    /// raw pointers and never forms a reference to it.
    pub unsafe fn new(ptr: *const u8, len: usize) -> Result<Self> {
        if ptr.is_null() {
            return Err(Error::Invalid("guest memory pointer is NULL".into()));
        }
        Ok(GuestSlice {
            ptr,
            len,
            _life: PhantomData,
        })
    }

    /// View an ordinary slice (nobody writes it while it is borrowed).
    pub fn from_slice(s: &'a [u8]) -> Self {
        GuestSlice {
            ptr: s.as_ptr(),
            len: s.len(),
            _life: PhantomData,
        }
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `count` bytes from `offset`; `Err` (`ERANGE`) when outside.
    pub fn subslice(&self, offset: usize, count: usize) -> Result<GuestSlice<'a>> {
        check_sub(self.len, offset, count)?;
        Ok(GuestSlice {
            // SAFETY: offset + count <= len (checked), so the result stays
            // inside the memory the constructor's contract covers.
            ptr: unsafe { self.ptr.add(offset) },
            len: count,
            _life: PhantomData,
        })
    }

    /// Copy the start (at most `dst.len()` bytes) into `dst`, a library
    /// buffer (what a racing guest write leaves there is some mix).
    pub fn copy_to(&self, dst: &mut [u8]) {
        let n = dst.len().min(self.len);
        // SAFETY: readable for `len` >= n bytes per the constructor's
        // contract; `dst` is a library buffer, not guest memory, so the two
        // do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), n) }
    }

    /// Whether every byte is zero (a racing write gives either answer).
    pub fn is_zero(&self) -> bool {
        // SAFETY: readable for `len` bytes per the constructor's contract.
        unsafe { crate::image::zero::is_zero(self.ptr, self.len) }
    }
}

/// Writable guest memory: `len` bytes at `ptr`, valid for `'a`; other
/// threads or the guest may access it concurrently.
#[derive(Debug)]
pub struct GuestSliceMut<'a> {
    ptr: *mut u8,
    len: usize,
    _life: PhantomData<&'a mut u8>,
}

// SAFETY: the constructor's contract makes the memory valid for reads and
// writes for 'a from any thread; all access is through raw pointers.
unsafe impl Send for GuestSliceMut<'_> {}
// SAFETY: as for `Send`. Callers that write from several threads at once
// partition the memory into disjoint sub-ranges (the engine's units).
unsafe impl Sync for GuestSliceMut<'_> {}

impl<'a> GuestSliceMut<'a> {
    /// View `len` writable bytes at `ptr`. `Err` (`EINVAL`) for NULL.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for `'a`.
    /// Other threads, and a guest, may access the memory at any time; the
    /// library accesses it only through raw pointers and never forms a
    /// reference to it.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Result<Self> {
        if ptr.is_null() {
            return Err(Error::Invalid("guest memory pointer is NULL".into()));
        }
        Ok(GuestSliceMut {
            ptr,
            len,
            _life: PhantomData,
        })
    }

    /// View an ordinary mutable slice.
    pub fn from_mut_slice(s: &'a mut [u8]) -> Self {
        GuestSliceMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _life: PhantomData,
        }
    }

    /// The first byte.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `count` bytes from `offset`; `Err` (`ERANGE`) when outside. Takes
    /// `&self` so that threads can carve out disjoint ranges of one view.
    pub fn subslice(&self, offset: usize, count: usize) -> Result<GuestSliceMut<'a>> {
        check_sub(self.len, offset, count)?;
        Ok(GuestSliceMut {
            // SAFETY: offset + count <= len (checked).
            ptr: unsafe { self.ptr.add(offset) },
            len: count,
            _life: PhantomData,
        })
    }

    /// The same memory as a read-only view (writable memory is readable).
    pub fn as_read(&self) -> GuestSlice<'a> {
        GuestSlice {
            ptr: self.ptr.cast_const(),
            len: self.len,
            _life: PhantomData,
        }
    }

    /// Fill with zeros.
    pub fn zero(&self) {
        // SAFETY: writable for `len` bytes per the constructor's contract.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.len) }
    }

    /// Copy `src` to the start (at most `len` bytes).
    pub fn copy_from(&self, src: &[u8]) {
        let n = src.len().min(self.len);
        // SAFETY: writable for `len` >= n bytes per the constructor's
        // contract; `src` is a library buffer, not guest memory, so the two
        // do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, n) }
    }
}

/// A dirty bitmap in caller memory: bit `p % 64` of word `p / 64` (LSB
/// first) set = page `p` is to be saved. Words are read with atomic loads,
/// so a hypervisor may set bits while a save runs (a page dirtied during
/// the save may or may not be included, as in QEMU's own save).
#[derive(Clone, Copy, Debug)]
pub struct DirtyBitmap<'a> {
    words: *const AtomicU64,
    len: usize,
    _life: PhantomData<&'a AtomicU64>,
}

// SAFETY: all access is atomic loads of memory valid for 'a.
unsafe impl Send for DirtyBitmap<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for DirtyBitmap<'_> {}

impl<'a> DirtyBitmap<'a> {
    /// The words needed for `pages` pages (the one place this is counted).
    pub fn words_for(pages: u64) -> u64 {
        pages.div_ceil(64)
    }

    /// View `len` words at `ptr`. `Err` (`EINVAL`) for NULL or a pointer
    /// not aligned to 8 bytes.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` words for `'a`; other threads
    /// may write it concurrently only with atomic operations or with plain
    /// word-sized stores (as hypervisors and KVM's dirty log do).
    pub unsafe fn new(ptr: *const u64, len: usize) -> Result<Self> {
        if ptr.is_null() {
            return Err(Error::Invalid("dirty bitmap pointer is NULL".into()));
        }
        if !ptr.cast::<AtomicU64>().is_aligned() {
            return Err(Error::Invalid(format!(
                "dirty bitmap at {ptr:p} is not aligned to 8 bytes"
            )));
        }
        Ok(DirtyBitmap {
            words: ptr.cast(),
            len,
            _life: PhantomData,
        })
    }

    /// View an ordinary slice of words.
    pub fn from_slice(s: &'a [u64]) -> Self {
        DirtyBitmap {
            words: s.as_ptr().cast(),
            len: s.len(),
            _life: PhantomData,
        }
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no words.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Word `i` (one relaxed atomic load); `None` past the end.
    pub fn word(&self, i: usize) -> Option<u64> {
        if i >= self.len {
            return None;
        }
        // SAFETY: i < len, the memory is valid for 'a and 8-byte aligned
        // (checked by the constructor or given by a `&[u64]`); `AtomicU64`
        // has the layout of `u64`, and concurrent writers use word stores.
        Some(unsafe { (*self.words.add(i)).load(Ordering::Relaxed) })
    }

    /// Whether page `p`'s bit is set (false past the end).
    pub fn test(&self, p: u64) -> bool {
        usize::try_from(p / 64)
            .ok()
            .and_then(|i| self.word(i))
            .is_some_and(|w| w & (1u64 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subslices_are_bounds_checked() {
        let v = [1u8, 0, 0, 0];
        let g = GuestSlice::from_slice(&v);
        assert!(!g.is_zero());
        assert!(g.subslice(1, 3).unwrap().is_zero());
        assert_eq!(g.subslice(4, 0).unwrap().len(), 0);
        let e = g.subslice(2, 3).unwrap_err();
        assert_eq!(e.errno(), libc::ERANGE);
        assert!(g.subslice(usize::MAX, 2).is_err());
        let mut w = [7u8; 8];
        let m = GuestSliceMut::from_mut_slice(&mut w);
        m.subslice(4, 4).unwrap().zero();
        assert!(m.as_read().subslice(4, 4).unwrap().is_zero());
        assert!(m.subslice(5, 4).is_err());
        assert_eq!(w, [7, 7, 7, 7, 0, 0, 0, 0]);
    }

    #[test]
    fn constructors_refuse_null_and_misalignment() {
        // SAFETY: NULL is refused before any use.
        assert!(unsafe { GuestSlice::new(std::ptr::null(), 1) }.is_err());
        // SAFETY: as above.
        assert!(unsafe { GuestSliceMut::new(std::ptr::null_mut(), 1) }.is_err());
        let words = [0u64; 2];
        let odd = words.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
        // SAFETY: refused for alignment before any read.
        let e = unsafe { DirtyBitmap::new(odd, 1) }.unwrap_err();
        assert!(e.to_string().contains("aligned"), "{e}");
    }

    #[test]
    fn bitmap_bits_lsb_first() {
        let words = [0b101u64, 1 << 63];
        let d = DirtyBitmap::from_slice(&words);
        assert!(d.test(0) && !d.test(1) && d.test(2) && d.test(127));
        assert!(!d.test(128) && !d.test(u64::MAX));
        assert_eq!(DirtyBitmap::words_for(65), 2);
    }
}
