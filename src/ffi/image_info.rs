//! `mr_image` queries: the block table, the recorded configuration, the
//! completion state and the file's sizes. Each borrows the handle shared and
//! stores its answer only on success.

use super::handle::{try_ref_from_ptr, try_str_from_ptr};
use super::image::{mr_image, mr_ramblock_info};
use super::{arg_mut, call, call_ptr, write_out};
use crate::error::{Error, Result};
use crate::image::Image;
use std::ffi::{c_char, c_int};

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
        let img = &try_ref_from_ptr!(img)?.inner;
        let out = arg_mut(out, "out")?;
        let v = f(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, v) };
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
        let n = try_ref_from_ptr!(img)?.inner.block_count();
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
        let img = &try_ref_from_ptr!(img)?.inner;
        let out = arg_mut(out, "out")?;
        let info = img.block_info(block as usize)?;
        let mut idstr = [0 as c_char; 256];
        // An idstr is at most 255 bytes (a u8 length on disk, checked by the
        // format layer), so the last byte stays NUL.
        let bytes = info.idstr.as_bytes().iter().take(255);
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
        let img = &try_ref_from_ptr!(img)?.inner;
        let idstr = try_str_from_ptr!(idstr)?;
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
        Ok(try_ref_from_ptr!(img)?.machine_type.as_ptr())
    })
}

/// Number of migration capabilities recorded in the image.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_capability_count(img: *const mr_image) -> c_int {
    call("mr_image_capability_count", || {
        let n = try_ref_from_ptr!(img)?.capabilities.len();
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
        let caps = &try_ref_from_ptr!(img)?.capabilities;
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
        Ok(c_int::from(try_ref_from_ptr!(img)?.inner.is_complete()))
    })
}

/// Store the absolute file offset where the QEMU stream starts.
///
/// # Safety
/// `img` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_stream_offset(img: *const mr_image, out: *mut u64) -> c_int {
    // SAFETY: `img` and `out` are this function's arguments, unchanged; its
    // `# Safety` (a live handle, a writable `out`) is what `query_u64`
    // needs of them for the call.
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
    // SAFETY: as in `mr_image_stream_offset`: `img` and `out` are passed on
    // unchanged under the same contract `query_u64` states.
    unsafe { query_u64("mr_image_file_size", img, out, Image::file_size) }
}

/// Store the bytes the file occupies on disk.
///
/// # Safety
/// `img` a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_allocated_bytes(img: *const mr_image, out: *mut u64) -> c_int {
    // SAFETY: as in `mr_image_stream_offset`: `img` and `out` are passed on
    // unchanged under the same contract `query_u64` states.
    unsafe { query_u64("mr_image_allocated_bytes", img, out, Image::allocated_bytes) }
}

/// 1 when the image's page data goes through `O_DIRECT` (asked for with
/// `MR_IMAGE_DIRECT`, or chosen by `MR_IMAGE_AUTO_DIRECT`), 0 when it goes
/// through the page cache, or a negative errno.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_is_direct(img: *const mr_image) -> c_int {
    call("mr_image_is_direct", || {
        Ok(c_int::from(try_ref_from_ptr!(img)?.inner.is_direct()))
    })
}
