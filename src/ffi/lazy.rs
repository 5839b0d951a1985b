//! `mr_lazy`: on-demand restore of a ramblock through userfaultfd.
//!
//! Ownership: [`OwnershipBox`]: an `mr_lazy *` is a boxed [`Lazy`] owned
//! by the caller until `mr_lazy_stop`. It borrows the `mr_image` it was
//! started on: the image must stay open until `mr_lazy_stop` returns.
//! `mr_image_map_ramblock` lives here too (the other on-demand restore).

use super::handle::{box_from_handle, box_into_handle, try_ref_from_ptr, Castable, OwnershipBox};
use super::image::mr_image;
use super::{arg_mut, arg_ptr, call, check_flags, write_out, MR_LAZY_NO_PREFETCH};
use crate::error::{Error, Result};
use crate::lazy::{Lazy, LazyOptions};
use crate::uffd::host::ImageRef;
use std::ffi::{c_int, c_void};

/// A running on-demand restore (opaque).
pub struct mr_lazy {
    _private: [u8; 0],
}

impl Castable for mr_lazy {
    type Ownership = OwnershipBox;
    type RustType = Lazy;
}

/// Options of `mr_lazy_start_opts`. Versioned by `size`: set it to
/// `sizeof(mr_lazy_options)`; fields added later go at the end, and a
/// library that does not know them refuses a non-zero value there.
#[repr(C)]
pub struct mr_lazy_options {
    /// `sizeof(mr_lazy_options)` as the caller compiled it.
    pub size: u32,
    /// `MR_LAZY_NO_PREFETCH` or 0.
    pub flags: u32,
    /// Prefetch threads (0 = a default).
    pub threads: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Prefetch rate limit in bytes per second (0 = unlimited). Faults are
    /// never limited.
    pub rate_limit: u64,
    /// Hot pages to prefetch first: one bit per page of the block (u64
    /// words, LSB first), or NULL. Copied by the call.
    pub hot: *const u64,
    /// Words in `hot`.
    pub hot_words: u64,
}

/// Read a caller's options: `size` at least the first version's, extra
/// bytes (a newer caller's fields) zero.
///
/// # Safety
/// `opts` NULL or valid for reads of `opts->size` bytes; `hot` valid for
/// `hot_words` words.
unsafe fn read_options(opts: *const mr_lazy_options) -> Result<LazyOptions> {
    let known = std::mem::size_of::<mr_lazy_options>();
    let opts = arg_ptr(opts, "opts")?;
    // SAFETY: non-NULL and readable (at least the `size` field) per this
    // function's contract.
    let size = unsafe { opts.cast::<u32>().read() } as usize;
    if !(known..=4096).contains(&size) {
        return Err(Error::Invalid(format!(
            "opts->size is {size}: must be at least sizeof(mr_lazy_options) = {known} (and at most 4096)"
        )));
    }
    // SAFETY: `size` >= known bytes are readable per the contract.
    let extra = unsafe { std::slice::from_raw_parts(opts.cast::<u8>().add(known), size - known) };
    if extra.iter().any(|&b| b != 0) {
        return Err(Error::Invalid(
            "opts holds non-zero fields this library does not know (newer header?)".into(),
        ));
    }
    // SAFETY: at least `known` bytes readable.
    let o = unsafe { &*opts };
    check_flags(o.flags, MR_LAZY_NO_PREFETCH, "lazy")?;
    if o.reserved != 0 {
        return Err(Error::Invalid("opts->reserved must be 0".into()));
    }
    let hot = if o.hot.is_null() {
        None
    } else {
        let n = usize::try_from(o.hot_words)
            .ok()
            .filter(|&n| n <= (1 << 40) / 64)
            .ok_or_else(|| {
                Error::Invalid(format!("opts->hot_words {} is too large", o.hot_words))
            })?;
        // SAFETY: `hot` valid for `hot_words` words per the contract.
        Some(unsafe { std::slice::from_raw_parts(o.hot, n) }.to_vec())
    };
    Ok(LazyOptions {
        flags: o.flags,
        threads: o.threads,
        rate_limit: o.rate_limit,
        hot,
    })
}

/// # Safety
/// As `mr_lazy_start_opts`.
unsafe fn start(
    img: *mut mr_image,
    block: u32,
    host: *mut c_void,
    opts: &LazyOptions,
    out: *mut *mut mr_lazy,
) -> Result<c_int> {
    let img = &try_ref_from_ptr!(img)?.inner;
    let host = arg_mut(host, "host")?;
    let out = arg_mut(out, "out")?;
    // SAFETY: the caller keeps `img` open and `host` mapped until
    // `mr_lazy_stop` (the exported functions' contract).
    let lz =
        unsafe { Lazy::start_ref(ImageRef::borrowed(img), block as usize, host.cast(), opts) }?;
    // SAFETY: checked non-NULL; writable per the contract.
    unsafe { write_out(out, box_into_handle::<mr_lazy>(lz)) };
    Ok(0)
}

/// Serve ramblock `block` of `img` into `host` (page aligned, the block's
/// `used_length` bytes, mapped by the caller as private anonymous or shared
/// memfd/hugetlbfs memory and not touched yet). Returns at once; the first
/// touch of a page by any thread (a KVM vCPU too) is filled from the image.
/// Without `MR_LAZY_NO_PREFETCH`, `threads` threads (0 = a default) fill
/// the rest in the background. `-ENOSYS`/`-EPERM` when the kernel has no
/// userfaultfd or the caller may not use it (the message says which).
///
/// On hugetlbfs a fault fills the whole huge page. The range is marked
/// `MADV_DONTFORK` (as QEMU marks guest RAM): a child forked while it is
/// served has no mapping there, so its touch raises `SIGSEGV` instead of
/// reading zeros from pages not yet filled. The mark stays after
/// `mr_lazy_stop`; `madvise(MADV_DOFORK)` undoes it.
///
/// # Safety
/// `img` a live image handle that stays open until `mr_lazy_stop`; `host`
/// a mapping of `used_length` bytes that stays mapped until then; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn mr_lazy_start(
    img: *mut mr_image,
    block: u32,
    host: *mut c_void,
    flags: u32,
    threads: u32,
    out: *mut *mut mr_lazy,
) -> c_int {
    call("mr_lazy_start", || {
        check_flags(flags, MR_LAZY_NO_PREFETCH, "lazy")?;
        let o = LazyOptions {
            flags,
            threads,
            ..Default::default()
        };
        // SAFETY: per this function's contract.
        unsafe { start(img, block, host, &o, out) }
    })
}

/// `mr_lazy_start` with options: prefetch rate limit, hot pages first.
///
/// # Safety
/// As `mr_lazy_start`; `opts` valid for reads of `opts->size` bytes, its
/// `hot` NULL or valid for `hot_words` words.
#[no_mangle]
pub unsafe extern "C" fn mr_lazy_start_opts(
    img: *mut mr_image,
    block: u32,
    host: *mut c_void,
    opts: *const mr_lazy_options,
    out: *mut *mut mr_lazy,
) -> c_int {
    call("mr_lazy_start_opts", || {
        // SAFETY: per this function's contract.
        let o = unsafe { read_options(opts) }?;
        // SAFETY: per this function's contract.
        unsafe { start(img, block, host, &o, out) }
    })
}

/// Block until every page is resident (or was discarded by the caller with
/// `MADV_DONTNEED`/`munmap`), or return the first error: an I/O error names
/// the block and offset, and the threads touching those pages stay blocked
/// (never given wrong data). With `MR_LAZY_NO_PREFETCH` this waits for the
/// guest to touch every page.
///
/// # Safety
/// `lz` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_lazy_wait(lz: *mut mr_lazy) -> c_int {
    call("mr_lazy_wait", || {
        try_ref_from_ptr!(lz)?.wait()?;
        Ok(0)
    })
}

/// Make every page resident (prefetching what is left at full speed), stop
/// the threads, unregister the range and free the handle (even on failure).
/// Pages that still cannot be read are poisoned (touching them raises
/// `SIGBUS`, never reads zero) and the error is returned. NULL is accepted.
///
/// # Safety
/// `lz` NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn mr_lazy_stop(lz: *mut mr_lazy) -> c_int {
    call("mr_lazy_stop", || {
        // SAFETY: per this function's contract (not used again).
        if let Some(lz) = unsafe { box_from_handle(lz) } {
            lz.stop()?;
        }
        Ok(0)
    })
}

/// Map ramblock `block`'s pages `MAP_PRIVATE` straight from the image file
/// (copy-on-write restore: pages come from the page cache on first touch,
/// a write makes a private copy). Slots whose bit is clear read as zero
/// even when the file holds stale bytes there. With `addr` non-NULL (page
/// aligned) the mapping replaces the caller's memory at `addr` for
/// `used_length` bytes (`MAP_FIXED`); else the kernel picks the address.
/// `*out` receives the address; unmap it with `munmap(*out, used_length)`.
/// The mapping stays valid after `mr_image_close`. `flags` must be 0.
///
/// Safe only while nobody writes the image file: pages not yet written
/// through the mapping show the file's current contents (an in-place update
/// or a new save into the file would show through), and `O_DIRECT` writes
/// bypass the page cache the mapping reads.
///
/// # Safety
/// `img` a live handle; `addr` NULL or a range of `used_length` bytes the
/// caller gives up; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_map_ramblock(
    img: *mut mr_image,
    block: u32,
    addr: *mut c_void,
    flags: u32,
    out: *mut *mut c_void,
) -> c_int {
    call("mr_image_map_ramblock", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        check_flags(flags, 0, "map")?;
        let out = arg_mut(out, "out")?;
        let at = (!addr.is_null()).then_some(addr.cast::<u8>());
        // SAFETY: per this function's contract, `addr` is the caller's to
        // replace.
        let map = unsafe { crate::lazy::cow_map::map_ramblock(img, block as usize, at) }?;
        let (p, _) = map.into_raw();
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, p.cast::<c_void>()) };
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn flag_matches_the_core() {
        assert_eq!(super::MR_LAZY_NO_PREFETCH, crate::lazy::NO_PREFETCH);
    }
}
