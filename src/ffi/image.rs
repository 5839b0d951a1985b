//! `mr_image`: a mapped-ram image.
//!
//! Ownership: [`OwnershipBox`]: an `mr_image *` is a boxed [`ImageHandle`]
//! (the image and its [`Control`]) owned by the caller until
//! `mr_image_close`. The strings the query functions return are
//! cached in the handle when it is made, so they live as long as the image.
//! All page calls take `const`/shared access and are safe from many threads
//! at once on one handle.

use super::channel::mr_channel;
use super::handle::{
    box_from_handle, box_into_handle, clone_arc, try_ref_from_ptr, try_str_from_ptr, Castable,
    OwnershipBox,
};
use super::{arg, arg_mut, arg_str, call, call_ptr, write_out, MR_OFFSET_DETECT};
use crate::engine::Control;
use crate::error::{Error, Result};
use crate::format::ramblock::BlockSpec;
use crate::image::{Image, ImageFlags};
use std::ffi::{c_char, c_int, CString};
use std::path::Path;

/// A mapped-ram image (opaque).
pub struct mr_image {
    _private: [u8; 0],
}

impl Castable for mr_image {
    type Ownership = OwnershipBox;
    type RustType = ImageHandle;
}

/// What an `mr_image *` points to.
pub(crate) struct ImageHandle {
    pub(super) inner: Image,
    /// Progress callback and cancel of the operations on this handle.
    pub(super) control: Control,
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

/// Box a new image with its cached strings and hand it to C.
pub(super) fn into_handle(img: Image) -> Result<*mut mr_image> {
    let c = |s: &str, what: &str| {
        CString::new(s).map_err(|_| Error::Corrupt(format!("{what} `{s}` contains a NUL byte")))
    };
    let machine_type = c(img.machine_type(), "machine type")?;
    let capabilities = img
        .capabilities()
        .iter()
        .map(|s| c(s, "capability"))
        .collect::<Result<Vec<_>>>()?;
    Ok(box_into_handle(ImageHandle {
        inner: img,
        control: Control::new(),
        machine_type,
        capabilities,
    }))
}

/// Read the C block descriptions.
///
/// # Safety
/// `blocks` must point to `nblocks` descriptors with valid strings.
pub(super) unsafe fn block_specs(
    blocks: *const mr_ramblock_desc,
    nblocks: u32,
) -> Result<Vec<BlockSpec>> {
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
        let img = &try_ref_from_ptr!(img)?.inner;
        let out = arg_mut(out, "out")?;
        let v = f(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, v) };
        Ok(0)
    })
}

/// A length from C as a memory length.
pub(super) fn mem_len(len: u64) -> Result<usize> {
    usize::try_from(len)
        .map_err(|_| Error::OutOfRange(format!("length {len} does not fit in memory")))
}

/// Create a new image file at `path` (mode 0600) for `machine_type` with
/// `blocks[0..nblocks]`. Flags: `MR_IMAGE_DIRECT`, `MR_IMAGE_NO_LOCK`;
/// `MR_IMAGE_READ_WRITE` is accepted and changes nothing (a new image is
/// always writable); other flags are `-EINVAL`.
///
/// All arguments are checked before `path` is touched (`-EINVAL`; `-EFBIG`
/// for an image past the largest file offset). The image is written under
/// no name in the same directory and only then renamed over `path` (a new
/// inode: mode 0600, owned by the caller, no ACLs or hard links of an old
/// file carried over). A failed create leaves an existing file unchanged
/// and no file where there was none. `-EBUSY`: another open holds the
/// existing file for writing. `-EACCES`: it is not writable. `-ENOTSUP`:
/// `path` is a block device (images must be regular files).
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
        let path = try_str_from_ptr!(path)?;
        let machine_type = try_str_from_ptr!(machine_type)?;
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
/// handle at any time. Flags as for `mr_image_create`; nothing is written
/// when an argument is invalid, and the channel is not locked (its owner
/// decides; `MR_IMAGE_NO_LOCK` changes nothing). A channel on a block
/// device is `-ENOTSUP`.
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
        let machine_type = try_str_from_ptr!(machine_type)?;
        // SAFETY: per this function's contract.
        let specs = unsafe { block_specs(blocks, nblocks) }?;
        let out = arg_mut(out, "out")?;
        // SAFETY: per this function's contract.
        let ch = unsafe { clone_arc(ch, "ch") }?;
        let img = Image::create_on(ch, offset, machine_type, &specs, ImageFlags(flags))?;
        let h = into_handle(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, h) };
        Ok(0)
    })
}

/// Open an existing image. A libvirt save-image header is recognised.
/// Flags: `MR_IMAGE_READ_WRITE`, `MR_IMAGE_DIRECT`, `MR_IMAGE_RECOVER`,
/// `MR_IMAGE_NO_LOCK`. An unfinished image gives `-MR_EINCOMPLETE` unless
/// `MR_IMAGE_RECOVER`. The file is locked (shared; exclusive with
/// `MR_IMAGE_READ_WRITE`) unless `MR_IMAGE_NO_LOCK`; a conflict is `-EBUSY`.
/// A block device is `-ENOTSUP`. With `MR_IMAGE_RECOVER`, an update mark left
/// by an interrupted in-place update stays until `mr_image_finish` (the
/// caller's decision that every page is whole); `mr_image_sync` and
/// `mr_image_close` keep it.
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
        let path = try_str_from_ptr!(path)?;
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
/// reference to the channel. Flags: `MR_IMAGE_READ_WRITE` (the channel must
/// be writable), `MR_IMAGE_RECOVER`; the channel is not locked (its owner
/// decides; `MR_IMAGE_NO_LOCK` changes nothing). A channel on a block
/// device is `-ENOTSUP`.
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
        let ch = unsafe { clone_arc(ch, "ch") }?;
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

/// Write the bitmaps out and `fdatasync`.
///
/// # Safety
/// `img` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_image_sync(img: *mut mr_image) -> c_int {
    call("mr_image_sync", || {
        try_ref_from_ptr!(img)?.inner.sync()?;
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
        try_ref_from_ptr!(img)?.inner.finish()?;
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
        // SAFETY: NULL or a live handle, given up per the contract.
        let Some(img) = (unsafe { box_from_handle(img) }) else {
            return Ok(0);
        };
        img.inner.close()?;
        Ok(0)
    })
}
