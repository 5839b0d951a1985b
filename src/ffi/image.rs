//! `mr_image`: a mapped-ram image.
//!
//! Ownership: BOXED. An `mr_image *` is a `Box<mr_image>` owned by the
//! caller until `mr_image_close`. The strings the query functions return are
//! cached in the handle when it is made, so they live as long as the image.
//! All page calls take `const`/shared access and are safe from many threads
//! at once on one handle.

use super::channel::{channel_arc, mr_channel};
use super::{
    arg, arg_mut, arg_ptr, arg_str, call, call_ptr, check_flags, write_out, MR_OFFSET_DETECT,
    MR_READ_ZERO_ABSENT,
};
use crate::engine::{self, Control};
use crate::error::{Error, Result};
use crate::format::ramblock::BlockSpec;
use crate::image::{Image, ImageFlags};
use crate::memory::{DirtyBitmap, GuestSlice, GuestSliceMut};
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;

/// A mapped-ram image (opaque).
pub struct mr_image {
    inner: Image,
    /// Progress callback and cancel of the operations on this handle.
    control: Control,
    machine_type: CString,
    capabilities: Vec<CString>,
}

/// Describes one ramblock of a new image.
#[repr(C)]
pub struct mr_ramblock_desc {
    /// The block's name (QEMU's idstr), at most 255 bytes.
    pub idstr: *const c_char,
    /// Bytes of guest memory in the block.
    pub used_length: u64,
    /// Target page size (4096 on x86).
    pub page_size: u64,
}

/// What a caller may know about one ramblock of an image.
#[repr(C)]
pub struct mr_ramblock_info {
    /// The block's name, NUL-terminated.
    pub idstr: [c_char; 256],
    pub used_length: u64,
    pub page_size: u64,
    /// Absolute file offset of the block's bitmap.
    pub bitmap_offset: u64,
    /// Absolute file offset of the block's first page.
    pub pages_offset: u64,
    /// Pages whose bit is set.
    pub pages_present: u64,
}

/// Progress callback for `mr_image_save_ramblock` / `mr_image_read_ramblock`:
/// called on the thread that started the operation with bytes done and bytes
/// total: once with `done == 0` before any work, while the work runs, and
/// once with `done == total` after it succeeded. A nonzero return cancels
/// the operation (it returns `-ECANCELED`), except from that final call:
/// the work is then done and the operation returns 0. Calls on one image
/// are serialised; each call uses the callback installed at that moment.
pub type mr_progress_fn =
    Option<unsafe extern "C" fn(opaque: *mut c_void, done: u64, total: u64) -> c_int>;

/// Box a new image with its cached strings and hand it to C.
fn into_handle(img: Image) -> Result<*mut mr_image> {
    let c = |s: &str, what: &str| {
        CString::new(s).map_err(|_| Error::Corrupt(format!("{what} `{s}` contains a NUL byte")))
    };
    let machine_type = c(img.machine_type(), "machine type")?;
    let capabilities = img
        .capabilities()
        .iter()
        .map(|s| c(s, "capability"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Box::into_raw(Box::new(mr_image {
        inner: img,
        control: Control::new(),
        machine_type,
        capabilities,
    })))
}

/// Borrow the image behind a handle.
///
/// # Safety
/// `img` must be NULL or a live handle from this module.
unsafe fn image_ref<'a>(img: *const mr_image) -> Result<&'a mr_image> {
    // SAFETY: per this function's contract.
    unsafe { arg(img, "img") }
}

/// Read the C block descriptions.
///
/// # Safety
/// `blocks` must point to `nblocks` descriptors with valid strings.
unsafe fn block_specs(blocks: *const mr_ramblock_desc, nblocks: u32) -> Result<Vec<BlockSpec>> {
    if nblocks == 0 {
        return Err(Error::Invalid(
            "an image needs at least one ramblock".into(),
        ));
    }
    // SAFETY: non-NULL checked; `nblocks` entries per the contract.
    let descs = unsafe { std::slice::from_raw_parts(arg(blocks, "blocks")?, nblocks as usize) };
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            // SAFETY: per the contract each idstr is NULL or a valid string.
            let idstr = unsafe { arg_str(d.idstr, &format!("blocks[{i}].idstr")) }?;
            Ok(BlockSpec {
                idstr: idstr.to_owned(),
                used_length: d.used_length,
                page_size: d.page_size,
            })
        })
        .collect()
}

/// The body of the `uint64_t` queries: run `f` on the image and store the
/// result in `out` (only on success).
///
/// # Safety
/// `img` NULL or a live handle; `out` NULL or writable.
unsafe fn query_u64(
    func: &str,
    img: *const mr_image,
    out: *mut u64,
    f: impl FnOnce(&Image) -> Result<u64>,
) -> c_int {
    call(func, || {
        // SAFETY: per this function's contract.
        let img = &unsafe { image_ref(img) }?.inner;
        let out = arg_mut(out, "out")?;
        let v = f(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, v) };
        Ok(0)
    })
}

/// A length from C as a memory length.
fn mem_len(len: u64) -> Result<usize> {
    usize::try_from(len)
        .map_err(|_| Error::OutOfRange(format!("length {len} does not fit in memory")))
}

/// Create a new image file at `path` (mode 0600, truncated) for
/// `machine_type` with `blocks[0..nblocks]`. Flags: `MR_IMAGE_DIRECT`.
///
/// # Safety
/// Strings NUL-terminated; `blocks` points to `nblocks` descriptors; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_create(
    path: *const c_char,
    machine_type: *const c_char,
    blocks: *const mr_ramblock_desc,
    nblocks: u32,
    flags: u32,
    out: *mut *mut mr_image,
) -> c_int {
    call("mr_image_create", || {
        // SAFETY: per this function's contract.
        let path = unsafe { arg_str(path, "path") }?;
        // SAFETY: per this function's contract.
        let machine_type = unsafe { arg_str(machine_type, "machine_type") }?;
        // SAFETY: per this function's contract.
        let specs = unsafe { block_specs(blocks, nblocks) }?;
        let out = arg_mut(out, "out")?;
        let img = Image::create(Path::new(path), machine_type, &specs, ImageFlags(flags))?;
        let h = into_handle(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, h) };
        Ok(0)
    })
}

/// Create an image on an open channel, the stream starting at `offset`
/// (e.g. after a container header the caller writes). The image takes its
/// own reference to the channel: the caller may `mr_channel_close` its
/// handle at any time.
///
/// # Safety
/// `ch` a live channel handle; strings NUL-terminated; `blocks` points to
/// `nblocks` descriptors; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_create_on(
    ch: *mut mr_channel,
    offset: u64,
    machine_type: *const c_char,
    blocks: *const mr_ramblock_desc,
    nblocks: u32,
    flags: u32,
    out: *mut *mut mr_image,
) -> c_int {
    call("mr_image_create_on", || {
        // SAFETY: per this function's contract.
        let machine_type = unsafe { arg_str(machine_type, "machine_type") }?;
        // SAFETY: per this function's contract.
        let specs = unsafe { block_specs(blocks, nblocks) }?;
        let out = arg_mut(out, "out")?;
        // SAFETY: per this function's contract.
        let ch = unsafe { channel_arc(ch) }?;
        let img = Image::create_on(ch, offset, machine_type, &specs, ImageFlags(flags))?;
        let h = into_handle(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, h) };
        Ok(0)
    })
}

/// Open an existing image. A libvirt save-image header is recognised.
/// Flags: `MR_IMAGE_READ_WRITE`, `MR_IMAGE_DIRECT`, `MR_IMAGE_RECOVER`.
/// An unfinished image gives `-MR_EINCOMPLETE` unless `MR_IMAGE_RECOVER`.
///
/// # Safety
/// `path` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_open(
    path: *const c_char,
    flags: u32,
    out: *mut *mut mr_image,
) -> c_int {
    call("mr_image_open", || {
        // SAFETY: per this function's contract.
        let path = unsafe { arg_str(path, "path") }?;
        let out = arg_mut(out, "out")?;
        let img = Image::open(Path::new(path), ImageFlags(flags))?;
        let h = into_handle(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, h) };
        Ok(0)
    })
}

/// Open an image on a channel with the stream at `offset`, or
/// `MR_OFFSET_DETECT` (a libvirt header, else 0). The image takes its own
/// reference to the channel.
///
/// # Safety
/// `ch` a live channel handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_open_on(
    ch: *mut mr_channel,
    offset: u64,
    flags: u32,
    out: *mut *mut mr_image,
) -> c_int {
    call("mr_image_open_on", || {
        let out = arg_mut(out, "out")?;
        // SAFETY: per this function's contract.
        let ch = unsafe { channel_arc(ch) }?;
        let base = (offset != MR_OFFSET_DETECT).then_some(offset);
        let img = Image::open_on(ch, base, ImageFlags(flags))?;
        let h = into_handle(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, h) };
        Ok(0)
    })
}

/// Number of ramblocks, or a negative errno.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_ramblock_count(img: *const mr_image) -> c_int {
    call("mr_image_ramblock_count", || {
        // SAFETY: per this function's contract.
        let n = unsafe { image_ref(img) }?.inner.block_count();
        c_int::try_from(n).map_err(|_| Error::Unsupported(format!("{n} ramblocks")))
    })
}

/// Fill `*out` with what is known about ramblock `block`.
///
/// # Safety
/// `img` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_ramblock_info(
    img: *const mr_image,
    block: u32,
    out: *mut mr_ramblock_info,
) -> c_int {
    call("mr_image_ramblock_info", || {
        // SAFETY: per this function's contract.
        let img = &unsafe { image_ref(img) }?.inner;
        let out = arg_mut(out, "out")?;
        let info = img.block_info(block as usize)?;
        let mut idstr = [0 as c_char; 256];
        let bytes = info.idstr.as_bytes();
        if bytes.len() > 255 {
            return Err(Error::Corrupt(format!(
                "ramblock idstr is {} bytes (at most 255)",
                bytes.len()
            )));
        }
        for (d, s) in idstr.iter_mut().zip(bytes) {
            *d = *s as c_char;
        }
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe {
            write_out(
                out,
                mr_ramblock_info {
                    idstr,
                    used_length: info.used_length,
                    page_size: info.page_size,
                    bitmap_offset: info.bitmap_offset,
                    pages_offset: info.pages_offset,
                    pages_present: info.pages_present,
                },
            )
        };
        Ok(0)
    })
}

/// Index of the ramblock named `idstr`; `-ENOENT` when there is none.
///
/// # Safety
/// `img` a live handle; `idstr` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn mr_image_find_ramblock(
    img: *const mr_image,
    idstr: *const c_char,
) -> c_int {
    call("mr_image_find_ramblock", || {
        // SAFETY: per this function's contract.
        let img = &unsafe { image_ref(img) }?.inner;
        // SAFETY: per this function's contract.
        let idstr = unsafe { arg_str(idstr, "idstr") }?;
        let i = img.find_block(idstr)?;
        c_int::try_from(i).map_err(|_| Error::Unsupported(format!("ramblock index {i}")))
    })
}

/// The machine type the image was saved for; valid until `mr_image_close`.
/// NULL (with the last error set) only when `img` is NULL.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_machine_type(img: *const mr_image) -> *const c_char {
    call_ptr("mr_image_machine_type", || {
        // SAFETY: per this function's contract.
        Ok(unsafe { image_ref(img) }?.machine_type.as_ptr())
    })
}

/// Number of migration capabilities recorded in the image.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_capability_count(img: *const mr_image) -> c_int {
    call("mr_image_capability_count", || {
        // SAFETY: per this function's contract.
        let n = unsafe { image_ref(img) }?.capabilities.len();
        c_int::try_from(n).map_err(|_| Error::Unsupported(format!("{n} capabilities")))
    })
}

/// Capability `i` (e.g. "mapped-ram"); valid until `mr_image_close`. NULL
/// with the last error set when `i` is out of range.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_capability(img: *const mr_image, i: u32) -> *const c_char {
    call_ptr("mr_image_capability", || {
        // SAFETY: per this function's contract.
        let caps = &unsafe { image_ref(img) }?.capabilities;
        caps.get(i as usize).map(|c| c.as_ptr()).ok_or_else(|| {
            Error::NotFound(format!(
                "no capability with index {i} (the image has {})",
                caps.len()
            ))
        })
    })
}

/// 1 when the stream visibly ended (and no in-place update is open), 0 when
/// not, or a negative errno.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_is_complete(img: *const mr_image) -> c_int {
    call("mr_image_is_complete", || {
        // SAFETY: per this function's contract.
        Ok(c_int::from(unsafe { image_ref(img) }?.inner.is_complete()))
    })
}

/// Store the absolute file offset where the QEMU stream starts.
///
/// # Safety
/// `img` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_stream_offset(img: *const mr_image, out: *mut u64) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        query_u64(
            "mr_image_stream_offset",
            img,
            out,
            |i| Ok(i.stream_offset()),
        )
    }
}

/// Store the logical file size.
///
/// # Safety
/// `img` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_file_size(img: *const mr_image, out: *mut u64) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { query_u64("mr_image_file_size", img, out, Image::file_size) }
}

/// Store the bytes the file occupies on disk.
///
/// # Safety
/// `img` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_allocated_bytes(img: *const mr_image, out: *mut u64) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { query_u64("mr_image_allocated_bytes", img, out, Image::allocated_bytes) }
}

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
        // SAFETY: per this function's contract.
        let img = &unsafe { image_ref(img) }?.inner;
        let b = block as usize;
        let page_size = img.block_info(b)?.page_size;
        // SAFETY: readable for the page size per the contract.
        let mem = unsafe { GuestSlice::new(page.cast(), mem_len(page_size)?) }?;
        img.write_guest_pages(b, offset, mem)?;
        Ok(0)
    })
}

/// Write `len` bytes (a multiple of the page size) of whole pages from `buf`
/// at `offset` inside `block`.
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
        // SAFETY: per this function's contract.
        let img = &unsafe { image_ref(img) }?.inner;
        // SAFETY: readable for `len` bytes per the contract.
        let mem = unsafe { GuestSlice::new(buf.cast(), mem_len(len)?) }?;
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
        // SAFETY: per this function's contract.
        let img = &unsafe { image_ref(img) }?.inner;
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
        // SAFETY: per this function's contract.
        let h = unsafe { image_ref(img) }?;
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
        // SAFETY: per this function's contract.
        let h = unsafe { image_ref(img) }?;
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
        // SAFETY: per this function's contract.
        let ctl = &unsafe { image_ref(img) }?.control;
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
        // SAFETY: per this function's contract.
        unsafe { image_ref(img) }?.control.cancel();
        Ok(0)
    })
}

/// Write the bitmaps out and `fdatasync`.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_sync(img: *mut mr_image) -> c_int {
    call("mr_image_sync", || {
        // SAFETY: per this function's contract.
        unsafe { image_ref(img) }?.inner.sync()?;
        Ok(0)
    })
}

/// End the stream and write the completion record, durably.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_finish(img: *mut mr_image) -> c_int {
    call("mr_image_finish", || {
        // SAFETY: per this function's contract.
        unsafe { image_ref(img) }?.inner.finish()?;
        Ok(0)
    })
}

/// Close the image; returns a failed final sync or close as a negative
/// errno (including the channel's, when this was the channel's last
/// reference). The handle is gone even on failure. NULL is accepted.
///
/// # Safety
/// `img` NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn mr_image_close(img: *mut mr_image) -> c_int {
    call("mr_image_close", || {
        if img.is_null() {
            return Ok(0);
        }
        // SAFETY: a live handle came from `Box::into_raw`; taken back once.
        let img = unsafe { Box::from_raw(img) };
        img.inner.close()?;
        Ok(0)
    })
}
