//! # mappedram
//!
//! Save guest RAM to a file and restore it at the speed of the disk, in
//! QEMU's *mapped-ram* migration-file layout: every guest page at a fixed,
//! 1 MiB aligned offset, a bitmap of written pages, zero pages left as holes.
//! Many threads write and read pages in parallel with positional I/O and
//! `O_DIRECT`; a file QEMU 9.0+ writes opens here, and the reverse.
//!
//! Layers, bottom up (dependencies point down only):
//! - [`channel`]: thread-safe positional file I/O, `O_DIRECT` aware;
//! - [`format`]: pure encode/decode of the stream pieces (untrusted input);
//! - [`image`]: a mapped-ram image on a channel (create/open/pages/sync/finish);
//! - [`engine`]: parallel save/restore of whole ramblocks from/to guest memory,
//!   with progress and cancel through an [`engine::Control`];
//! - [`memory`]: typed views of guest memory and dirty bitmaps (shared with
//!   the guest and other threads, never a Rust reference);
//! - `ffi`: the C ABI (`include/mappedram.h`), a thin skin.

// Their public items get documented in the channel/format split (the lint
// policy in Cargo.toml applies to every other module now).
#[allow(missing_docs)]
pub mod channel;
pub mod compress;
pub mod engine;
pub mod error;
#[allow(missing_docs)]
pub mod format;
pub mod image;
pub mod memory;

mod ffi;
mod silent_panic;

pub use channel::{Channel, OpenFlags};
pub use compress::{BlockStats, ImageOptions};
pub use error::{Error, Result};
pub use format::ramblock::BlockSpec;
pub use image::{BlockInfo, Image, ImageFlags};
pub use memory::{DirtyBitmap, GuestSlice, GuestSliceMut};
