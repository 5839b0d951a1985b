//! `mr_channel`: a thread-safe seekable file channel.
//!
//! Ownership: [`OwnershipArc`]: each `mr_channel *` the library hands out
//! owns one reference of an `Arc<Channel>`. An image created or opened on a channel takes its own
//! reference, so the caller may `mr_channel_close` its handle at any time.
//! The file's descriptors are closed when the last reference goes.

use super::handle::{
    arc_from_handle, arc_into_handle, try_ref_from_ptr, try_str_from_ptr, Castable, OwnershipArc,
};
use super::{arg, arg_mut, call, call_ssize, write_out};
use crate::channel::{Channel, OpenFlags, IOV_MAX};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int};
use std::path::Path;
use std::sync::Arc;

/// A thread-safe seekable file channel (opaque). Shared ownership: see
/// `mr_channel_close`.
pub struct mr_channel {
    _private: [u8; 0],
}

impl Castable for mr_channel {
    type Ownership = OwnershipArc;
    type RustType = Channel;
}

/// Build the iovec slice for a vectored call.
///
/// # Safety
/// When `iovcnt > 0`, `iov` must point to `iovcnt` iovecs valid for `'a`.
unsafe fn iov_slice<'a>(iov: *const libc::iovec, iovcnt: c_int) -> Result<&'a [libc::iovec]> {
    let n = usize::try_from(iovcnt)
        .ok()
        .filter(|&n| n <= IOV_MAX)
        .ok_or_else(|| Error::Invalid(format!("iovcnt {iovcnt} out of range (0..={IOV_MAX})")))?;
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-NULL checked; `iovcnt` entries per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(arg(iov, "iov")?, n) })
}

/// Open `path` with `MR_OPEN_*` flags. Files are created with mode 0600.
/// On success stores a new handle in `*out` and returns 0; otherwise a
/// negative errno (`*out` untouched).
///
/// # Safety
/// `path` must be a NUL-terminated string; `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_open(
    path: *const c_char,
    flags: u32,
    out: *mut *mut mr_channel,
) -> c_int {
    call("mr_channel_open", || {
        let path = try_str_from_ptr!(path)?;
        let out = arg_mut(out, "out")?;
        let flags = OpenFlags::from_bits(flags)?;
        let ch = Channel::open(Path::new(path), flags)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, arc_into_handle(Arc::new(ch))) };
        Ok(0)
    })
}

/// Make a channel on a duplicate of `fd` (the caller keeps `fd`).
/// `MR_OPEN_CREATE`/`MR_OPEN_TRUNC` are invalid here.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_from_fd(
    fd: c_int,
    flags: u32,
    out: *mut *mut mr_channel,
) -> c_int {
    call("mr_channel_from_fd", || {
        let out = arg_mut(out, "out")?;
        let flags = OpenFlags::from_bits(flags)?;
        let ch = Channel::from_fd(fd, flags)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, arc_into_handle(Arc::new(ch))) };
        Ok(0)
    })
}

/// Write every byte of `iov[0..iovcnt]` at `offset`. Returns the number of
/// bytes written (all of them) or a negative errno. `iovcnt` must be in
/// 0..=1024; 0 writes nothing and returns 0.
///
/// # Safety
/// `ch` must be a live handle; `iov` must point to `iovcnt` iovecs whose
/// buffers are readable.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_pwritev(
    ch: *mut mr_channel,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: u64,
) -> libc::ssize_t {
    call_ssize("mr_channel_pwritev", || {
        let ch = try_ref_from_ptr!(ch)?;
        // SAFETY: per this function's contract.
        let iov = unsafe { iov_slice(iov, iovcnt) }?;
        // SAFETY: the iovec buffers are readable per the contract.
        let n = unsafe { ch.pwritev_raw(iov, offset) }?;
        Ok(n as libc::ssize_t)
    })
}

/// Read into `iov[0..iovcnt]` from `offset` until the buffers are full or
/// end of file. Returns the number of bytes read or a negative errno.
///
/// # Safety
/// `ch` must be a live handle; `iov` must point to `iovcnt` iovecs whose
/// buffers are writable.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_preadv(
    ch: *mut mr_channel,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: u64,
) -> libc::ssize_t {
    call_ssize("mr_channel_preadv", || {
        let ch = try_ref_from_ptr!(ch)?;
        // SAFETY: per this function's contract.
        let iov = unsafe { iov_slice(iov, iovcnt) }?;
        // SAFETY: the iovec buffers are writable per the contract.
        let n = unsafe { ch.preadv_raw(iov, offset) }?;
        Ok(n as libc::ssize_t)
    })
}

/// `fdatasync` the file.
///
/// # Safety
/// `ch` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_sync(ch: *mut mr_channel) -> c_int {
    call("mr_channel_sync", || {
        try_ref_from_ptr!(ch)?.sync()?;
        Ok(0)
    })
}

/// Store the file's current size in `*out`.
///
/// # Safety
/// `ch` must be a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_size(ch: *mut mr_channel, out: *mut u64) -> c_int {
    call("mr_channel_size", || {
        let ch = try_ref_from_ptr!(ch)?;
        let out = arg_mut(out, "out")?;
        let size = ch.size()?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, size) };
        Ok(0)
    })
}

/// Set the file's length (`ftruncate`).
///
/// # Safety
/// `ch` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_truncate(ch: *mut mr_channel, len: u64) -> c_int {
    call("mr_channel_truncate", || {
        try_ref_from_ptr!(ch)?.set_len(len)?;
        Ok(0)
    })
}

/// Deallocate `[offset, offset + len)`, keeping the size; the range then
/// reads as zeros. `-ENOTSUP` where the file system cannot punch holes.
///
/// # Safety
/// `ch` must be a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_punch_hole(
    ch: *mut mr_channel,
    offset: u64,
    len: u64,
) -> c_int {
    call("mr_channel_punch_hole", || {
        try_ref_from_ptr!(ch)?.punch_hole(offset, len)?;
        Ok(0)
    })
}

/// Store the `O_DIRECT` alignment of memory addresses and of file
/// offsets/lengths. `-ENOTSUP` when the channel was not opened with
/// `MR_OPEN_DIRECT`.
///
/// # Safety
/// `ch` must be a live handle; `mem_align` and `offset_align` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_dio_align(
    ch: *mut mr_channel,
    mem_align: *mut u32,
    offset_align: *mut u32,
) -> c_int {
    call("mr_channel_dio_align", || {
        let ch = try_ref_from_ptr!(ch)?;
        let mem_align = arg_mut(mem_align, "mem_align")?;
        let offset_align = arg_mut(offset_align, "offset_align")?;
        let a = ch.dio_align().ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: channel has no O_DIRECT descriptor (open with MR_OPEN_DIRECT)",
                ch.name()
            ))
        })?;
        // SAFETY: both checked non-NULL; writable per the contract.
        unsafe {
            write_out(mem_align, a.mem);
            write_out(offset_align, a.offset);
        }
        Ok(0)
    })
}

/// Release this handle. When it is the last reference (no image holds the
/// channel), a writable channel is `fdatasync`ed and its descriptors closed;
/// a failed sync or close is returned as a negative errno. When an image
/// still holds the channel, a writable channel is synced now (and errors
/// reported), and the final sync/close happen when the image is closed —
/// `mr_image_close` reports them. The handle is gone even on failure.
/// NULL is accepted (returns 0).
///
/// # Safety
/// `ch` must be NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn mr_channel_close(ch: *mut mr_channel) -> c_int {
    call("mr_channel_close", || {
        // SAFETY: NULL or a live handle, given up per the contract.
        let Some(arc) = (unsafe { arc_from_handle(ch) }) else {
            return Ok(0);
        };
        // Sync first when writable, so the error reaches this caller even
        // when an image still holds the channel.
        let synced = if arc.flags().contains(OpenFlags::WRITE) {
            arc.sync()
        } else {
            Ok(())
        };
        // `Arc::into_inner` hands the channel to exactly one of the racing
        // last holders (this handle or an image being closed), so close
        // errors are never lost to a plain drop.
        let closed = match Arc::into_inner(arc) {
            Some(ch) => ch.close(),
            None => Ok(()),
        };
        synced?;
        closed?;
        Ok(0)
    })
}
