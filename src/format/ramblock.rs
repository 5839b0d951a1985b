//! The RAM section: setup payload, per-ramblock headers, the mapped-ram
//! header, the bitmap, and the layout math (1 MiB aligned page regions).

use super::stream::Configuration;
use super::ReadAt;
use crate::error::Result;

/// A ramblock a caller wants in a new image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    pub idstr: String,
    pub used_length: u64,
    pub page_size: u64,
}

/// Where one ramblock lives in a file. All offsets are absolute file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    pub idstr: String,
    pub used_length: u64,
    pub page_size: u64,
    /// With `x-ignore-shared`: the block's be64 address field.
    pub addr: Option<u64>,
    /// Mapped-ram header version as found (1 for new images).
    pub header_version: u32,
    /// Offset of the idstr length byte.
    pub header_offset: u64,
    pub bitmap_offset: u64,
    /// ceil(pages / 64) * 8.
    pub bitmap_len: u64,
    pub pages_offset: u64,
}

impl BlockLayout {
    pub fn pages(&self) -> u64 {
        self.used_length / self.page_size
    }
    /// End of the page region: the next block header (or the EOS) starts here.
    pub fn end(&self) -> u64 {
        self.pages_offset + self.used_length
    }
}

/// The RAM part of a stream, through the setup payload's EOS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLayout {
    /// Absolute offset of "QEVM" (non-zero inside a container).
    pub base: u64,
    pub config: Configuration,
    pub ram_section_id: u32,
    pub blocks: Vec<BlockLayout>,
    /// Absolute offset of the be64 EOS that ends the setup payload.
    pub eos_offset: u64,
}

impl StreamLayout {
    /// Offset just past the setup section's footer (where the rest of the
    /// stream continues).
    pub fn setup_end(&self) -> u64 {
        self.eos_offset + 8 + 5
    }
}

/// Lay out a new image at `base`. Validates the specs (idstr 1..=255 bytes,
/// page size a power of two, lengths non-zero multiples of the page size,
/// no duplicate idstr, no overflow). Blocks keep the caller's order.
pub fn plan(
    base: u64,
    config: &Configuration,
    ram_section_id: u32,
    specs: &[BlockSpec],
) -> Result<StreamLayout> {
    let _ = (base, config, ram_section_id, specs);
    todo!()
}

/// The bytes of a new image through the EOS, as (absolute offset, bytes)
/// pieces: header + configuration + RAM START + total + first block header;
/// each further block header at its `header_offset`; the EOS at
/// `eos_offset`. Bitmaps and padding are not included (zeros / holes).
pub fn encode_pieces(layout: &StreamLayout) -> Vec<(u64, Vec<u8>)> {
    let _ = layout;
    todo!()
}

/// Parse an existing stream at `base` through the RAM setup payload's EOS and
/// the footer after it, validating every field against `src.size()`.
pub fn parse(src: &dyn ReadAt, base: u64) -> Result<StreamLayout> {
    let _ = (src, base);
    todo!()
}
