//! Creating images with options, attaching the chunk tables of an image
//! being opened, and the per-block storage figures.

use super::chunked::ChunkTable;
use super::layout;
use super::table::{nchunks, Checksum, Codec, TableHeader};
use super::ImageOptions;
use crate::channel::{Channel, OpenFlags};
use crate::error::{Error, Result};
use crate::format::ramblock::{self, BlockSpec, StreamLayout};
use crate::format::stream::Configuration;
use crate::format::{CAP_CHUNKS, CAP_X_IGNORE_SHARED};
use crate::image::bitmap::AtomicBitmap;
use crate::image::{check_create_flags, create_planned, plan_new};
use crate::image::{Block, DiskState, Image, ImageFlags};
use std::path::Path;
use std::sync::Arc;

/// Storage figures of one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockStats {
    /// Codec new chunks are written with (`Raw` for plain images).
    pub codec: Codec,
    /// Checksum kind of the chunk table (`None` for plain images).
    pub checksum: Checksum,
    /// Guest bytes per chunk; 0 for plain images.
    pub chunk_bytes: u64,
    /// Chunks of the block; 0 for plain images.
    pub chunks: u64,
    /// Bytes of page data the table (or bitmap) accounts for: stored
    /// (compressed, padded) chunks, present raw pages.
    pub stored_bytes: u64,
    /// Bytes of the block's page region allocated on disk (data extents).
    pub allocated_bytes: u64,
}

impl Image {
    /// Create a new image file with options. Plain options
    /// ([`ImageOptions::default`]) give the same file as [`Image::create`];
    /// a chunked image is created the same safe way (see `image/create.rs`):
    /// everything validated before the path is touched, written under no
    /// name in the path's directory, locked, and named only once its headers
    /// and tables are written.
    pub fn create_with(
        path: &Path,
        machine_type: &str,
        blocks: &[BlockSpec],
        flags: ImageFlags,
        opts: &ImageOptions,
    ) -> Result<Image> {
        if !opts.is_chunked() {
            return Image::create(path, machine_type, blocks, flags);
        }
        check_create_flags(flags)?;
        let plain = plan_new(0, machine_type, blocks)?;
        opts.check(plain.config.page_size())?;
        let layout = layout::plan(0, &plain.config, 1, blocks, opts.chunk_bytes)?;
        create_planned(path, flags, layout, |ch, layout| {
            write_chunked(ch, layout, opts)
        })
    }

    /// Create on a writable channel at `base` with a given configuration
    /// (machine type, target page bits, capabilities: `mapped-ram` only)
    /// and RAM section id — what `mrtool compress` uses to keep a QEMU
    /// file's stream header. Nothing is written when the arguments are
    /// invalid.
    pub fn create_on_with(
        ch: Arc<Channel>,
        base: u64,
        config: &Configuration,
        ram_section_id: u32,
        blocks: &[BlockSpec],
        opts: &ImageOptions,
    ) -> Result<Image> {
        if !ch.flags().contains(OpenFlags::WRITE) {
            return Err(Error::Invalid(format!(
                "creating an image on {} needs a channel opened with MR_OPEN_WRITE",
                ch.name()
            )));
        }
        let layout = if opts.is_chunked() {
            opts.check(config.page_size())?;
            layout::plan(base, config, ram_section_id, blocks, opts.chunk_bytes)?
        } else {
            ramblock::plan(base, config, ram_section_id, blocks)?
        };
        if !opts.is_chunked() {
            return Image::write_new(ch, layout);
        }
        write_chunked(ch, layout, opts)
    }

    /// Storage figures of `block`.
    pub fn block_stats(&self, block: usize) -> Result<BlockStats> {
        let b = self.block(block)?;
        let l = &b.layout;
        let allocated = self.allocated_in(l.pages_offset, l.end())?;
        let Some(t) = &b.chunks else {
            return Ok(BlockStats {
                codec: Codec::Raw,
                checksum: Checksum::None,
                chunk_bytes: 0,
                chunks: 0,
                stored_bytes: b.bitmap.count() * l.page_size,
                allocated_bytes: allocated,
            });
        };
        let mut stored = 0;
        for i in 0..t.hdr.nchunks {
            let clen = t.chunk_len(l, i);
            stored += match t.entry(l, i) {
                Ok(super::table::Entry::Raw { .. }) => {
                    let fp = i * t.hdr.chunk_bytes / l.page_size;
                    let mut n = 0;
                    b.bitmap
                        .for_each_run(fp, fp + clen / l.page_size, |_, k, set| {
                            if set {
                                n += k
                            }
                        });
                    n * l.page_size
                }
                Ok(e) => e
                    .extent(clen)
                    .next_multiple_of(super::chunked::PAD)
                    .min(clen),
                Err(_) => 0,
            };
        }
        Ok(BlockStats {
            codec: t.hdr.codec,
            checksum: t.hdr.checksum,
            chunk_bytes: t.hdr.chunk_bytes,
            chunks: t.hdr.nchunks,
            stored_bytes: stored,
            allocated_bytes: allocated,
        })
    }

    /// Bytes of data extents in `[start, end)` (SEEK_DATA / SEEK_HOLE).
    fn allocated_in(&self, start: u64, end: u64) -> Result<u64> {
        let ch = self.channel();
        let mut pos = start;
        let mut total = 0;
        while pos < end {
            let Some(d) = ch.next_data(pos)? else { break };
            if d >= end {
                break;
            }
            let h = ch.next_hole(d)?.min(end);
            total += h - d;
            pos = h;
        }
        Ok(total)
    }

    /// Whether block `block` is chunked (compressed and/or checksummed).
    pub fn is_chunked(&self, block: usize) -> Result<bool> {
        Ok(self.block(block)?.chunks.is_some())
    }
}

/// Write the headers and empty chunk tables of a planned chunked image onto
/// `ch` (everything from the layout's base on is replaced).
fn write_chunked(ch: Arc<Channel>, layout: StreamLayout, opts: &ImageOptions) -> Result<Image> {
    ch.set_len(layout.base)?;
    for (off, bytes) in ramblock::encode_pieces(&layout) {
        ch.write_all_at(&bytes, off)?;
    }
    let mut blocks: Vec<Block> = layout
        .blocks
        .iter()
        .map(|l| Block::new(l.clone(), AtomicBitmap::new(l.pages())))
        .collect();
    for b in &mut blocks {
        let hdr = TableHeader {
            chunk_bytes: opts.chunk_bytes,
            checksum: if opts.checksums {
                Checksum::Xxh3
            } else {
                Checksum::None
            },
            codec: opts.codec,
            level: opts.level as i8,
            nchunks: nchunks(b.layout.used_length, opts.chunk_bytes),
        };
        let t = ChunkTable::new_empty(hdr, layout::table_offset(&b.layout));
        ch.write_all_at(&t.encode(), t.offset)?;
        b.chunks = Some(t);
    }
    Ok(Image::assemble(
        ch,
        None,
        layout,
        blocks,
        true,
        DiskState::Unfinished,
    ))
}

/// Read the chunk tables of an image being opened (when its stream records
/// [`CAP_CHUNKS`]).
pub(crate) fn attach_tables(
    ch: &Channel,
    layout: &StreamLayout,
    blocks: &mut [Block],
) -> Result<()> {
    if !layout.config.has_capability(CAP_CHUNKS) {
        return Ok(());
    }
    if layout.config.has_capability(CAP_X_IGNORE_SHARED) {
        return Err(Error::Unsupported(format!(
            "{}: the stream records both {CAP_CHUNKS} and {CAP_X_IGNORE_SHARED}; chunked images never skip blocks",
            ch.name()
        )));
    }
    for b in blocks {
        b.chunks = Some(ChunkTable::read(ch, &b.layout)?);
    }
    Ok(())
}
