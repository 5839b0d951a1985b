//! `mr_image` page and ramblock I/O, progress and cancel: the calls that
//! move guest memory. Guest memory from C becomes a [`GuestSlice`] /
//! [`GuestSliceMut`] / [`DirtyBitmap`] here (their constructors hold the
//! contract); every rule about ranges lives in the image and the engine.

use super::handle::try_ref_from_ptr;
use super::image::{mem_len, mr_image};
use super::{arg_mut, arg_ptr, call, check_flags, MR_READ_ZERO_ABSENT};
use crate::engine;
use crate::memory::{DirtyBitmap, GuestSlice, GuestSliceMut};
use std::ffi::{c_int, c_void};

/// Progress callback for `mr_image_save_ramblock` / `mr_image_read_ramblock`:
/// called on the thread that started the operation with bytes done and bytes
/// total: once with `done == 0` before any work, while the work runs, and
/// once with `done == total` after it succeeded. A nonzero return cancels
/// the operation (it returns `-ECANCELED`), except from that final call:
/// the work is then done and the operation returns 0. Calls on one image
/// are serialised; each call uses the callback installed at that moment.
pub type mr_progress_fn =
    Option<unsafe extern "C" fn(opaque: *mut c_void, done: u64, total: u64) -> c_int>;

/// Write one page at byte `offset` (page aligned) inside `block`. An
/// all-zero page clears the page's bit and frees its slot.
///
/// # Safety
/// `img` a live handle; `page` readable for the block's page size.
#[no_mangle]
pub unsafe extern "C" fn mr_image_write_page(
    img: *mut mr_image,
    block: u32,
    offset: u64,
    page: *const c_void,
) -> c_int {
    call("mr_image_write_page", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let b = block as usize;
        let page_size = img.block_info(b)?.page_size;
        let page = arg_ptr(page.cast::<u8>(), "page")?;
        // SAFETY: readable for the page size per the contract.
        let mem = unsafe { GuestSlice::new(page, mem_len(page_size)?) }?;
        img.write_guest_pages(b, offset, mem)?;
        Ok(0)
    })
}

/// Write `len` bytes (a non-zero multiple of the page size) of whole pages
/// from `buf` at `offset` inside `block`. `len == 0` is refused with
/// `-EINVAL` like any other bad range (the offset is checked first).
///
/// # Safety
/// `img` a live handle; `buf` readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn mr_image_write_pages(
    img: *mut mr_image,
    block: u32,
    offset: u64,
    buf: *const c_void,
    len: u64,
) -> c_int {
    call("mr_image_write_pages", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        // An empty buffer may be NULL (argument conversion only: the image
        // judges offset and length, so an empty write is refused there).
        let mem = if len == 0 {
            GuestSlice::from_slice(&[])
        } else {
            let buf = arg_ptr(buf.cast::<u8>(), "buf")?;
            // SAFETY: readable for `len` bytes per the contract.
            unsafe { GuestSlice::new(buf, mem_len(len)?) }?
        };
        img.write_guest_pages(block as usize, offset, mem)?;
        Ok(0)
    })
}

/// Read one page at `offset` inside `block` into `page`. Returns 1 when the
/// page is present, 0 when it is a zero page (`page` is then zero-filled).
///
/// # Safety
/// `img` a live handle; `page` writable for the block's page size.
#[no_mangle]
pub unsafe extern "C" fn mr_image_read_page(
    img: *mut mr_image,
    block: u32,
    offset: u64,
    page: *mut c_void,
) -> c_int {
    call("mr_image_read_page", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let b = block as usize;
        let page_size = img.block_info(b)?.page_size;
        let page = arg_mut(page.cast::<u8>(), "page")?;
        // SAFETY: writable for the page size per the contract; the caller
        // does not touch it during the call, so a slice is sound here.
        let buf = unsafe { std::slice::from_raw_parts_mut(page, mem_len(page_size)?) };
        Ok(c_int::from(img.read_page(b, offset, buf)?))
    })
}

/// Save `block` from host memory `host` (the block's `used_length` bytes)
/// with `threads` threads (0 = a default). `dirty`: NULL saves every page,
/// else one bit per page (ceil(pages / 64) `uint64_t` words, LSB first)
/// limits the save to the set pages. `-ECANCELED` when cancelled.
///
/// # Safety
/// `img` a live handle; `host` readable for `used_length` bytes; `dirty`
/// NULL or readable for ceil(pages / 64) words.
#[no_mangle]
pub unsafe extern "C" fn mr_image_save_ramblock(
    img: *mut mr_image,
    block: u32,
    host: *const c_void,
    dirty: *const u64,
    threads: u32,
) -> c_int {
    call("mr_image_save_ramblock", || {
        let h = try_ref_from_ptr!(img)?;
        let b = block as usize;
        let info = h.inner.block_info(b)?;
        let host = arg_ptr(host.cast::<u8>(), "host")?;
        // SAFETY: readable for used_length bytes per the contract.
        let mem = unsafe { GuestSlice::new(host, mem_len(info.used_length)?) }?;
        let dirty = if dirty.is_null() {
            None
        } else {
            let words = mem_len(DirtyBitmap::words_for(info.used_length / info.page_size))?;
            // SAFETY: readable for that many words per the contract.
            Some(unsafe { DirtyBitmap::new(dirty, words) }?)
        };
        engine::save_ramblock_with(&h.control, &h.inner, b, mem, dirty, threads)?;
        Ok(0)
    })
}

/// Restore `block` into host memory `host` (the block's `used_length`
/// bytes) with `threads` threads (0 = a default). Present pages are read;
/// with `MR_READ_ZERO_ABSENT` absent pages are zeroed, else left alone.
/// `-ECANCELED` when cancelled.
///
/// # Safety
/// `img` a live handle; `host` writable for `used_length` bytes.
#[no_mangle]
pub unsafe extern "C" fn mr_image_read_ramblock(
    img: *mut mr_image,
    block: u32,
    host: *mut c_void,
    flags: u32,
    threads: u32,
) -> c_int {
    call("mr_image_read_ramblock", || {
        let h = try_ref_from_ptr!(img)?;
        check_flags(flags, MR_READ_ZERO_ABSENT, "mr_image_read_ramblock")?;
        let b = block as usize;
        let used_length = h.inner.block_info(b)?.used_length;
        let host = arg_mut(host.cast::<u8>(), "host")?;
        // SAFETY: writable for used_length bytes per the contract.
        let mem = unsafe { GuestSliceMut::new(host, mem_len(used_length)?) }?;
        let zero_absent = flags & MR_READ_ZERO_ABSENT != 0;
        engine::read_ramblock_with(&h.control, &h.inner, b, mem, zero_absent, threads)?;
        Ok(0)
    })
}

/// The C callback and its opaque pointer, moved into the image.
struct CProgress {
    func: unsafe extern "C" fn(*mut c_void, u64, u64) -> c_int,
    opaque: *mut c_void,
}

// SAFETY: the image calls the progress callback only on the thread that
// started the operation (documented in the C contract); the C caller is
// responsible for `opaque` being usable from that thread.
unsafe impl Send for CProgress {}

/// Install a progress callback (NULL `fn` removes it), also while an
/// operation runs: its next report uses the new one. See `mr_progress_fn`.
///
/// After this returns, the previous callback is never called again. Called
/// from another thread while the previous callback runs, it waits for that
/// call to return (so do not call it while holding a lock your callback
/// takes). Called from inside the callback, it does not wait: the current
/// call's return value still counts, and the removed or replaced callback
/// is not called again, not even for the operation's final report.
///
/// # Safety
/// `img` a live handle; `fn` callable with `opaque` until this function
/// replaces or removes it, or the image is closed.
#[no_mangle]
pub unsafe extern "C" fn mr_image_set_progress(
    img: *mut mr_image,
    func: mr_progress_fn,
    opaque: *mut c_void,
) -> c_int {
    call("mr_image_set_progress", || {
        let ctl = &try_ref_from_ptr!(img)?.control;
        let cb = func.map(|func| {
            let p = CProgress { func, opaque };
            Box::new(move |done: u64, total: u64| {
                // Capture the whole struct (not its fields) so the closure
                // is Send through CProgress.
                let p = &p;
                // SAFETY: callable with `opaque` per mr_image_set_progress's
                // contract.
                unsafe { (p.func)(p.opaque, done, total) == 0 }
            }) as engine::ProgressFn
        });
        ctl.set_progress(cb);
        Ok(0)
    })
}

/// Cancel the save/restore operations running on `img` (they return
/// `-ECANCELED`); later operations are not affected. Any thread may call it.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_cancel(img: *mut mr_image) -> c_int {
    call("mr_image_cancel", || {
        try_ref_from_ptr!(img)?.control.cancel();
        Ok(0)
    })
}
