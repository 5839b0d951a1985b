//! C functions of named blobs: a VMM's own state (vCPU registers, device
//! models) stored in the image next to guest RAM, under the same
//! completion record. The rules live in `Image::put_blob` and friends.

use super::handle::{try_ref_from_ptr, try_str_from_ptr};
use super::image::{mem_len, mr_image};
use super::{arg_mut, arg_ptr, call, write_out};
use crate::error::Error;
use std::ffi::{c_char, c_int, c_void};

/// Store `len` bytes at `data` as blob `name` (1 to 255 bytes, no NUL),
/// replacing a blob of that name. The image must be writable and its
/// stream end this library's (`-ENOTSUP` for a file QEMU ended: its device
/// state must stay). A new image writes its blobs in `mr_image_finish`; a
/// complete image opened `MR_IMAGE_READ_WRITE` is marked as being updated
/// and rewrites its blobs in the next `mr_image_sync`, `mr_image_finish`
/// or `mr_image_close`. All blobs together hold at most 256 MiB. `data`
/// may be NULL when `len` is 0.
///
/// # Safety
/// `img` a live handle; `name` NUL-terminated; `data` readable for `len`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn mr_image_put_blob(
    img: *mut mr_image,
    name: *const c_char,
    data: *const c_void,
    len: u64,
) -> c_int {
    call("mr_image_put_blob", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let name = try_str_from_ptr!(name)?;
        let len = mem_len(len)?;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            let p = arg_ptr(data.cast::<u8>(), "data")?;
            // SAFETY: non-NULL and readable for `len` bytes per the
            // contract; blob data is the caller's own buffer (not guest
            // memory), unchanged during the call, and copied before return.
            unsafe { std::slice::from_raw_parts(p, len) }
        };
        img.put_blob(name, bytes)?;
        Ok(0)
    })
}

/// Copy blob `name` into `buf` and write its length to `*blob_len`.
/// With `buf` NULL and `buf_len` 0, only the length is written (a query).
/// `-ENOENT` when there is no such blob, `-ENOBUFS` when `buf_len` is
/// smaller than the blob (the message gives its length), `-EBADMSG` when
/// its checksum does not match (the message names blob, offset, expected
/// and found).
///
/// # Safety
/// `img` a live handle; `name` NUL-terminated; `buf` writable for
/// `buf_len` bytes; `blob_len` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_get_blob(
    img: *mut mr_image,
    name: *const c_char,
    buf: *mut c_void,
    buf_len: u64,
    blob_len: *mut u64,
) -> c_int {
    call("mr_image_get_blob", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let name = try_str_from_ptr!(name)?;
        let out = arg_mut(blob_len, "blob_len")?;
        let len = img.blob_len(name)?;
        if buf.is_null() && buf_len == 0 {
            // SAFETY: checked non-NULL; writable per the contract.
            unsafe { write_out(out, len) };
            return Ok(0);
        }
        if buf_len < len {
            return Err(Error::from_errno(
                format!("blob {name:?} holds {len} bytes; the buffer has {buf_len}"),
                libc::ENOBUFS,
            ));
        }
        let dst = arg_mut(buf.cast::<u8>(), "buf")?;
        let data = img.get_blob(name)?;
        // SAFETY: `dst` is non-NULL and writable for `buf_len` >= len bytes
        // per the contract; `data` is our own Vec, so the ranges are
        // disjoint.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, data.len() as u64) };
        Ok(0)
    })
}

/// Remove blob `name` (`-ENOENT` when there is none); written out like
/// [`mr_image_put_blob`].
///
/// # Safety
/// `img` a live handle; `name` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn mr_image_remove_blob(img: *mut mr_image, name: *const c_char) -> c_int {
    call("mr_image_remove_blob", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        img.remove_blob(try_str_from_ptr!(name)?)?;
        Ok(0)
    })
}

/// Number of blobs in the image.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_blob_count(img: *const mr_image) -> c_int {
    call("mr_image_blob_count", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let n = img.blob_names().len();
        c_int::try_from(n).map_err(|_| Error::Unsupported(format!("{n} blobs")))
    })
}

/// Copy the name of blob `index` (0 .. `mr_image_blob_count`) into `name`
/// (256 bytes: at most 255 and a NUL); returns the name's length.
/// `-ENOENT` for an index past the last blob.
///
/// # Safety
/// `img` a live handle; `name` writable for 256 bytes.
#[no_mangle]
pub unsafe extern "C" fn mr_image_blob_name(
    img: *const mr_image,
    index: u32,
    name: *mut c_char,
) -> c_int {
    call("mr_image_blob_name", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let names = img.blob_names();
        let dst = arg_mut(name, "name")?;
        let n = names.get(index as usize).ok_or_else(|| {
            Error::NotFound(format!(
                "no blob with index {index} (the image has {})",
                names.len()
            ))
        })?;
        // Names are 1..=255 bytes without NUL (checked when put or parsed).
        let bytes = n.as_bytes();
        // SAFETY: `dst` is non-NULL and writable for 256 bytes per the
        // contract; a name is at most 255 bytes, so the NUL fits.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), dst, bytes.len());
            dst.add(bytes.len()).write(0);
        }
        Ok(bytes.len() as c_int)
    })
}
