//! The `MR_*` constants of the C header (cbindgen emits each as a
//! `#define`). Values are fixed: never renumber.

// Some are used only from C.
#![allow(dead_code)]

use std::ffi::c_int;

/// `mr_channel_open` flag: open for reading.
pub const MR_OPEN_READ: u32 = 0x1;
/// `mr_channel_open` flag: open for writing.
pub const MR_OPEN_WRITE: u32 = 0x2;
/// `mr_channel_open` flag: create the file (mode 0600) if it does not exist.
pub const MR_OPEN_CREATE: u32 = 0x4;
/// `mr_channel_open` flag: truncate the file to length 0.
pub const MR_OPEN_TRUNC: u32 = 0x8;
/// `mr_channel_open` flag: `O_DIRECT` for aligned bulk I/O; unaligned I/O
/// still works (bounced through aligned buffers).
pub const MR_OPEN_DIRECT: u32 = 0x10;

/// Image flag (open): allow page writes and sync (in-place update).
pub const MR_IMAGE_READ_WRITE: u32 = 0x1;
/// Image flag: page data through `O_DIRECT`.
pub const MR_IMAGE_DIRECT: u32 = 0x2;
/// Image flag (open): accept an image that was not finished.
pub const MR_IMAGE_RECOVER: u32 = 0x4;
/// Image flag (`mr_image_open`, `mr_image_create`): take no lock. By default
/// the image file is locked with an open file description lock
/// (`F_OFD_SETLK`): shared for readers, exclusive for writers (`create`,
/// `MR_IMAGE_READ_WRITE`); a conflict fails at once with `-EBUSY`. For
/// callers that coordinate access themselves (like QEMU's `locking=off`).
pub const MR_IMAGE_NO_LOCK: u32 = 0x8;
/// Image flag (create, open): choose `O_DIRECT` or the page cache by the
/// image's size and file system (`O_DIRECT` for image files of 2 MiB and
/// more on a disk file system); `mr_image_is_direct` reports the choice.
/// Ignored together with `MR_IMAGE_DIRECT`.
pub const MR_IMAGE_AUTO_DIRECT: u32 = 0x10;

/// `mr_image_read_ramblock` flag: also zero pages whose bit is clear.
pub const MR_READ_ZERO_ABSENT: u32 = 0x1;

/// The errno (`EUCLEAN`) returned, negated, for an image that was never
/// finished (or whose in-place update was interrupted).
pub const MR_EINCOMPLETE: c_int = 117;
// The header needs a literal; the build fails where it is not the
// platform's EUCLEAN.
const _: () = assert!(MR_EINCOMPLETE == libc::EUCLEAN);

/// `mr_image_open_on` offset: detect (a libvirt save-image header, or 0).
pub const MR_OFFSET_DETECT: u64 = u64::MAX;

/// `mr_image_options.codec`: no compression (the plain layout).
pub const MR_CODEC_NONE: u32 = 0;
/// `mr_image_options.codec`: zstd chunks.
pub const MR_CODEC_ZSTD: u32 = 1;
/// `mr_image_options.flags`: keep checksums without compression.
pub const MR_IMAGE_OPT_CHECKSUMS: u32 = 0x1;
/// `mr_image_options.flags`: compress without checksums.
pub const MR_IMAGE_OPT_NO_CHECKSUMS: u32 = 0x2;
/// `mr_ramblock_stats.checksum`: none.
pub const MR_CHECKSUM_NONE: u32 = 0;
/// `mr_ramblock_stats.checksum`: xxh3-64 of each chunk.
pub const MR_CHECKSUM_XXH3: u32 = 1;
/// `mr_lazy_start` flag: serve faults only; no background prefetch.
pub const MR_LAZY_NO_PREFETCH: u32 = 0x1;
