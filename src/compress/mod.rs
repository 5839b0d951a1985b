//! Compressed, checksummed mapped-ram: the chunk-table format extension,
//! its codec and checksums, and the image and engine paths of chunked
//! images.
//!
//! A block is cut into chunks of a fixed number of guest bytes; chunk `i`
//! owns the same slot it owns in a plain image. A raw chunk keeps its pages
//! at their own offsets (the plain layout); a zstd chunk keeps one frame,
//! padded to 4 KiB, at the slot's start and the rest of the slot is a hole.
//! Any thread finds any chunk without an index walk, and rewriting a chunk
//! never moves another. The per-block table (`table.rs`) records each
//! chunk's codec, stored length and the xxh3-64 of its uncompressed bytes;
//! every read path verifies it. Zero pages keep their bitmap bit clear.
//! The stream records [`CAP_CHUNKS`](crate::format::CAP_CHUNKS) in its
//! capabilities, so QEMU refuses such a file instead of misloading it;
//! images without options stay byte-identical to QEMU's.

pub(crate) mod chunked;
pub mod codec;
pub mod convert;
pub mod engine;
pub mod layout;
pub mod table;

pub use table::{Checksum, Codec};

use crate::error::{Error, Result};

/// Default chunk size: 1 MiB of guest memory (see ARCHITECTURE.md for the
/// measurement behind it).
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;

/// Options of a new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// [`Codec::Raw`]: no compression.
    pub codec: Codec,
    /// zstd level (ignored for raw).
    pub level: i32,
    /// Keep an xxh3-64 of every chunk (always useful; opt-in for raw).
    pub checksums: bool,
    /// Guest bytes per chunk.
    pub chunk_bytes: u64,
}

impl Default for ImageOptions {
    /// A plain image: byte-identical to QEMU's.
    fn default() -> Self {
        ImageOptions {
            codec: Codec::Raw,
            level: codec::DEFAULT_LEVEL,
            checksums: false,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }
}

impl ImageOptions {
    /// zstd at `level` with checksums, 1 MiB chunks.
    pub fn zstd(level: i32) -> ImageOptions {
        ImageOptions {
            codec: Codec::Zstd,
            level,
            checksums: true,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }

    /// Whether the image needs the chunk table (and the capability).
    pub fn is_chunked(&self) -> bool {
        self.codec != Codec::Raw || self.checksums
    }

    /// Options from the C encoding (`mr_image_options`): `codec` 0 none /
    /// 1 zstd; `level` 0 = [`codec::DEFAULT_LEVEL`]; `flags` bit 0 forces
    /// checksums on, bit 1 off (zstd has them unless bit 1 is set; raw only
    /// with bit 0); `chunk_bytes` 0 = [`DEFAULT_CHUNK_BYTES`]. Unknown
    /// values are `EINVAL`.
    pub fn from_c(codec: u32, level: i32, flags: u32, chunk_bytes: u64) -> Result<ImageOptions> {
        const ON: u32 = 0x1;
        const OFF: u32 = 0x2;
        if flags & !(ON | OFF) != 0 || flags == ON | OFF {
            return Err(Error::Invalid(format!(
                "image option flags 0x{flags:x}: unknown bits, or checksums both on and off"
            )));
        }
        let codec = match codec {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            c => {
                return Err(Error::Invalid(format!(
                    "unknown codec {c} (0 none, 1 zstd)"
                )))
            }
        };
        Ok(ImageOptions {
            codec,
            level: if level == 0 {
                codec::DEFAULT_LEVEL
            } else {
                level
            },
            checksums: flags & ON != 0 || (codec == Codec::Zstd && flags & OFF == 0),
            chunk_bytes: if chunk_bytes == 0 {
                DEFAULT_CHUNK_BYTES
            } else {
                chunk_bytes
            },
        })
    }

    /// Validate against a page size.
    pub fn check(&self, page_size: u64) -> Result<()> {
        if self.codec == Codec::Zstd {
            codec::Compressor::new(self.level)?;
        }
        table::check_chunk_bytes(self.chunk_bytes, page_size).map_err(Error::Invalid)
    }
}

mod create;
mod pages;
mod restore;
mod slot;

pub(crate) use create::attach_tables;
pub use create::BlockStats;
