//! Images with options: `mr_image_create_opts` (versioned
//! `mr_image_options`) and `mr_image_ramblock_stats` (versioned
//! `mr_ramblock_stats`).
//!
//! Versioned structs: the caller sets `size` to `sizeof` the struct as it
//! was compiled. A newer library reads an older caller's struct (the
//! fields it lacks take their defaults); an older library accepts a newer
//! caller's struct only when the fields it does not know are zero. Out
//! structs are filled up to the caller's `size`.

use super::handle::{try_ref_from_ptr, try_str_from_ptr};
use super::image::{block_specs, into_handle, mr_image, mr_ramblock_desc};
use super::{arg_mut, call, write_out};
use crate::compress::{Checksum, Codec, ImageOptions};
use crate::error::{Error, Result};
use crate::image::{Image, ImageFlags};
use std::ffi::{c_char, c_int};
use std::mem::size_of;
use std::path::Path;

/// Options of a new image (`mr_image_create_opts`). Zero-initialise it,
/// set `size = sizeof(mr_image_options)` and the fields wanted.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct mr_image_options {
    /// `sizeof(mr_image_options)` as the caller was compiled.
    pub size: u32,
    /// `MR_CODEC_NONE` (the plain QEMU layout) or `MR_CODEC_ZSTD`.
    pub codec: u32,
    /// zstd level, -7..22; 0 = the default (1).
    pub level: i32,
    /// `MR_IMAGE_OPT_CHECKSUMS` (checksums without compression),
    /// `MR_IMAGE_OPT_NO_CHECKSUMS` (zstd without checksums).
    pub flags: u32,
    /// Guest bytes per chunk, a power of two 4096..16 MiB; 0 = 1 MiB.
    pub chunk_size: u64,
}

/// Storage figures of one ramblock (`mr_image_ramblock_stats`). Set
/// `size = sizeof(mr_ramblock_stats)` before the call.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct mr_ramblock_stats {
    /// In: `sizeof(mr_ramblock_stats)` as the caller was compiled; out: the
    /// bytes filled.
    pub size: u32,
    /// `MR_CODEC_NONE` or `MR_CODEC_ZSTD` (the codec new chunks get).
    pub codec: u32,
    /// `MR_CHECKSUM_NONE` or `MR_CHECKSUM_XXH3`.
    pub checksum: u32,
    /// Zero.
    pub reserved: u32,
    /// Guest bytes per chunk; 0 for a plain image.
    pub chunk_size: u64,
    /// Chunks of the block; 0 for a plain image.
    pub chunks: u64,
    /// Bytes of page data stored (compressed chunks padded to 4 KiB,
    /// present pages of raw chunks or plain blocks).
    pub stored_bytes: u64,
    /// Bytes of the block's page region allocated on disk.
    pub allocated_bytes: u64,
}

/// Largest `size` accepted in a versioned struct (bounds the zero check).
const MAX_STRUCT_SIZE: u32 = 4096;

/// Read a versioned in-struct: at least `min` bytes, zero beyond ours.
///
/// # Safety
/// `p` must be readable for the `size` bytes its first field announces.
unsafe fn read_versioned<T: Copy + Default>(p: *const T, name: &str, min: usize) -> Result<T> {
    let bytes = p.cast::<u8>();
    // SAFETY: every versioned struct starts with its u32 size, readable per
    // the contract (it is at least 4 bytes long).
    let size = unsafe { bytes.cast::<u32>().read_unaligned() };
    if (size as usize) < min || size > MAX_STRUCT_SIZE {
        return Err(Error::Invalid(format!(
            "{name}.size is {size}: expected sizeof({name}) (at least {min}, at most {MAX_STRUCT_SIZE})"
        )));
    }
    let ours = size_of::<T>();
    for i in ours..size as usize {
        // SAFETY: i < size, readable per the contract.
        if unsafe { bytes.add(i).read() } != 0 {
            return Err(Error::Invalid(format!(
                "{name}: byte {i} is set, but this library knows only the first {ours} bytes"
            )));
        }
    }
    let mut v = T::default();
    // SAFETY: copies min(size, ours) bytes from the caller's struct (readable
    // per the contract) into a local `T` (writable, `ours` bytes); `T` is a
    // `repr(C)` struct of integers, valid for any bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes,
            (&mut v as *mut T).cast::<u8>(),
            (size as usize).min(ours),
        )
    };
    Ok(v)
}

/// As `mr_image_create`, with options (`opts` NULL = a plain image). A
/// compressed or checksummed image is read and written by every other call
/// unchanged; QEMU refuses it (`mrtool expand` converts it back).
///
/// # Safety
/// Strings NUL-terminated; `blocks` points to `nblocks` descriptors; `opts`
/// NULL or readable for its `size` bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_image_create_opts(
    path: *const c_char,
    machine_type: *const c_char,
    blocks: *const mr_ramblock_desc,
    nblocks: u32,
    flags: u32,
    opts: *const mr_image_options,
    out: *mut *mut mr_image,
) -> c_int {
    call("mr_image_create_opts", || {
        let path = try_str_from_ptr!(path)?;
        let machine_type = try_str_from_ptr!(machine_type)?;
        // SAFETY: per this function's contract.
        let specs = unsafe { block_specs(blocks, nblocks) }?;
        let opts = if opts.is_null() {
            ImageOptions::default()
        } else {
            // SAFETY: non-NULL, readable for its size per the contract.
            let o = unsafe { read_versioned(opts, "mr_image_options", 24) }?;
            ImageOptions::from_c(o.codec, o.level, o.flags, o.chunk_size)?
        };
        let out = arg_mut(out, "out")?;
        let img = Image::create_with(
            Path::new(path),
            machine_type,
            &specs,
            ImageFlags(flags),
            &opts,
        )?;
        let h = into_handle(img)?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, h) };
        Ok(0)
    })
}

/// Fill `*out` (its `size` set by the caller) with the storage figures of
/// ramblock `block`: codec, checksum kind, chunk size and count, stored and
/// allocated bytes. Works on plain images too.
///
/// # Safety
/// `img` a live handle; `out` readable and writable for its `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn mr_image_ramblock_stats(
    img: *const mr_image,
    block: u32,
    out: *mut mr_ramblock_stats,
) -> c_int {
    call("mr_image_ramblock_stats", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let out = arg_mut(out, "out")?;
        // SAFETY: checked non-NULL; readable per the contract.
        unsafe { read_versioned(out.cast_const(), "mr_ramblock_stats", 48) }?;
        let st = img.block_stats(block as usize)?;
        let v = mr_ramblock_stats {
            size: size_of::<mr_ramblock_stats>() as u32,
            codec: match st.codec {
                Codec::Raw => 0,
                Codec::Zstd => 1,
            },
            checksum: match st.checksum {
                Checksum::None => 0,
                Checksum::Xxh3 => 1,
            },
            reserved: 0,
            chunk_size: st.chunk_bytes,
            chunks: st.chunks,
            stored_bytes: st.stored_bytes,
            allocated_bytes: st.allocated_bytes,
        };
        // SAFETY: checked non-NULL; writable for at least our size (the
        // caller's size was checked to be at least it).
        unsafe { write_out(out, v) };
        Ok(0)
    })
}
