//! The layout QEMU 11 writes with `x-ignore-shared`: blocks "ram" (16
//! pages), "shared" (32) and "rom" (2); a skipped block's header records
//! `bitmap_offset = pages_offset = 0` and the next header follows its
//! mapped-ram header directly.

use super::PS;
use mappedram::format::ramblock::{BlockLayout, StreamLayout};
use mappedram::format::stream::{encode_header, Configuration};

/// The stream layout for `config` with the blocks named in `skipped` left
/// out of the file.
pub fn layout(config: Configuration, skipped: &[&str]) -> StreamLayout {
    let mut pos = encode_header(&config).len() as u64 + 17 + 8;
    let mut blocks = Vec::new();
    for (i, (idstr, pages)) in [("ram", 16u64), ("shared", 32), ("rom", 2)]
        .into_iter()
        .enumerate()
    {
        let mut b = BlockLayout {
            idstr: idstr.into(),
            used_length: pages * PS,
            page_size: PS,
            addr: Some(0x1000_0000 * i as u64),
            header_version: 1,
            header_offset: pos,
            bitmap_offset: 0,
            bitmap_len: 0,
            pages_offset: 0,
        };
        if !skipped.contains(&idstr) {
            b.bitmap_offset = b.header_end();
            b.bitmap_len = pages.div_ceil(64) * 8;
            b.pages_offset = (b.bitmap_offset + b.bitmap_len).div_ceil(1 << 20) << 20;
        }
        pos = b.end();
        blocks.push(b);
    }
    StreamLayout {
        base: 0,
        config,
        ram_section_id: 2,
        blocks,
        eos_offset: pos,
    }
}
