//! `mr_image`: a mapped-ram image.
//!
//! Ownership: [`OwnershipBox`]: an `mr_image *` is a boxed [`ImageHandle`]
//! (the image and its [`Control`]) owned by the caller until
//! `mr_image_close`. The strings the query functions (`image_info.rs`) return are
//! cached in the handle when it is made, so they live as long as the image.
//!
//! The queries take `const struct mr_image *`; the calls that change the
//! image, its file or its progress/cancel state take `struct mr_image *`.
//! The `const` is a promise to C readers only: in Rust every call but
//! `mr_image_close` borrows the handle shared (the image and its `Control`
//! lock inside), which is why one handle may serve many threads at once.

use super::channel::mr_channel;
use super::handle::{
    box_from_handle, box_into_handle, try_clone_arc, try_ref_from_ptr, try_str_from_ptr, Castable,
    OwnershipBox,
};
use super::{arg_mut, arg_ptr, arg_str, call, write_out, MR_OFFSET_DETECT};
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
    pub(super) machine_type: CString,
    pub(super) capabilities: Vec<CString>,
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

/// The last step of every create/open call: check `out` (before anything
/// is made), make the image, box it with its cached strings and store the
/// handle in `*out` (only on success).
///
/// # Safety
/// `out` NULL or writable for the call.
pub(super) unsafe fn handle_into(
    out: *mut *mut mr_image,
    make: impl FnOnce() -> Result<Image>,
) -> Result<c_int> {
    let out = arg_mut(out, "out")?;
    let h = into_handle(make()?)?;
    // SAFETY: checked non-NULL; writable per the caller's contract.
    unsafe { write_out(out, h) };
    Ok(0)
}

/// Read the C block descriptions (copied; nothing borrowed outlives the
/// call).
///
/// # Safety
/// When `nblocks > 0`, `blocks` must be NULL or point to `nblocks`
/// initialised descriptors, each `idstr` NULL or NUL-terminated, readable
/// for the call.
pub(super) unsafe fn block_specs(
    blocks: *const mr_ramblock_desc,
    nblocks: u32,
) -> Result<Vec<BlockSpec>> {
    // The image's rule (`ramblock::plan` says the same), repeated so that
    // `mr_image_create` does not create or truncate the path first.
    if nblocks == 0 {
        return Err(Error::Invalid(
            "an image needs at least one ramblock".into(),
        ));
    }
    let blocks = arg_ptr(blocks, "blocks")?;
    // SAFETY: `blocks` is non-NULL (checked) and, per the caller's
    // contract, points to `nblocks` initialised, aligned descriptors
    // (a C array, so within one allocation and at most isize::MAX bytes);
    // they are only read, during this call. The pointer is the caller's
    // own, not one derived from a reference to the first element.
    let descs = unsafe { std::slice::from_raw_parts(blocks, nblocks as usize) };
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            // SAFETY: per the caller's contract each idstr is NULL or a
            // NUL-terminated string readable for the call; the &str is
            // copied into the spec before returning.
            let idstr = unsafe { arg_str(d.idstr, &format!("blocks[{i}].idstr")) }?;
            Ok(BlockSpec {
                idstr: idstr.to_owned(),
                used_length: d.used_length,
                page_size: d.page_size,
            })
        })
        .collect()
}

/// A length from C as a memory length.
pub(super) fn mem_len(len: u64) -> Result<usize> {
    usize::try_from(len)
        .map_err(|_| Error::OutOfRange(format!("length {len} does not fit in memory")))
}

/// Create a new image file at `path` (mode 0600) for `machine_type` with
/// `blocks[0..nblocks]`. Flags: `MR_IMAGE_DIRECT`, `MR_IMAGE_NO_LOCK`,
/// `MR_IMAGE_AUTO_DIRECT`;
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
        // SAFETY: `blocks` and `nblocks` are this function's arguments,
        // unchanged; its `# Safety` requires `blocks` to point to `nblocks`
        // descriptors with NUL-terminated idstrs, all `block_specs` needs
        // (it reads them only during this call and copies the strings).
        let specs = unsafe { block_specs(blocks, nblocks) }?;
        // SAFETY: `out` is this function's argument, unchanged; its
        // `# Safety` makes it writable for the call.
        unsafe {
            handle_into(out, || {
                Image::create(Path::new(path), machine_type, &specs, ImageFlags(flags))
            })
        }
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
        // SAFETY: `blocks` and `nblocks` are this function's arguments,
        // unchanged; its `# Safety` requires `blocks` to point to `nblocks`
        // descriptors with NUL-terminated idstrs, all `block_specs` needs
        // (it reads them only during this call and copies the strings).
        let specs = unsafe { block_specs(blocks, nblocks) }?;
        let make = || {
            let ch = try_clone_arc!(ch)?;
            Image::create_on(ch, offset, machine_type, &specs, ImageFlags(flags))
        };
        // SAFETY: `out` is this function's argument, unchanged; its
        // `# Safety` makes it writable for the call.
        unsafe { handle_into(out, make) }
    })
}

/// Open an existing image. A libvirt save-image header is recognised.
/// Flags: `MR_IMAGE_READ_WRITE`, `MR_IMAGE_DIRECT`, `MR_IMAGE_RECOVER`,
/// `MR_IMAGE_NO_LOCK`, `MR_IMAGE_AUTO_DIRECT`. An unfinished image gives `-MR_EINCOMPLETE` unless
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
        // SAFETY: `out` is this function's argument, unchanged; its
        // `# Safety` makes it writable for the call.
        unsafe { handle_into(out, || Image::open(Path::new(path), ImageFlags(flags))) }
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
        let make = || {
            let ch = try_clone_arc!(ch)?;
            let base = (offset != MR_OFFSET_DETECT).then_some(offset);
            Image::open_on(ch, base, ImageFlags(flags))
        };
        // SAFETY: `out` is this function's argument, unchanged; its
        // `# Safety` makes it writable for the call.
        unsafe { handle_into(out, make) }
    })
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
