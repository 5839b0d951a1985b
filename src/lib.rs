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
//! - [`engine`]: parallel save/restore of whole ramblocks from/to host memory;
//! - `ffi`: the C ABI (`include/mappedram.h`), a thin skin.

pub mod channel;
pub mod compress;
pub mod engine;
pub mod error;
pub mod format;
pub mod image;

mod ffi;

pub use channel::{Channel, OpenFlags};
pub use compress::{BlockStats, ImageOptions};
pub use error::{Error, Result};
pub use format::ramblock::BlockSpec;
pub use image::{BlockInfo, Image, ImageFlags};
