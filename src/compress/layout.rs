//! Layout of a chunked image: the stream header records the
//! [`CAP_CHUNKS`] capability (so QEMU refuses the file) and every block's
//! chunk table follows its bitmap, before the 1 MiB aligned page region.
//! Pure layout math; the stream pieces are the plain ones.

use super::table::{nchunks, table_len};
use crate::error::{Error, Result};
use crate::format::ramblock::{self, BlockLayout, BlockSpec, StreamLayout};
use crate::format::stream::{encode_header, Configuration};
use crate::format::{CAP_CHUNKS, MAPPED_RAM_HEADER_LEN, PAGES_ALIGN, RAM_IDSTR};

/// File offset of a block's chunk table: right after its bitmap.
pub fn table_offset(l: &BlockLayout) -> u64 {
    l.bitmap_offset + l.bitmap_len
}

/// Lay out a chunked image: `config` is the plain configuration (validated
/// by [`ramblock::plan`] like any new image); the result records
/// [`CAP_CHUNKS`] after the other capabilities and reserves
/// `table_len(nchunks)` bytes after each bitmap.
pub fn plan(
    base: u64,
    config: &Configuration,
    ram_section_id: u32,
    specs: &[BlockSpec],
    chunk_bytes: u64,
) -> Result<StreamLayout> {
    let plain = ramblock::plan(base, config, ram_section_id, specs)?;
    let mut ext = config.clone();
    ext.capabilities.push(CAP_CHUNKS.to_string());
    let ovf = |what: &str| Error::Invalid(format!("image layout overflows 64 bits at {what}"));
    let start_len = 1 + 4 + 1 + RAM_IDSTR.len() as u64 + 4 + 4;
    let mut pos = base
        .checked_add(encode_header(&ext).len() as u64 + start_len + 8)
        .ok_or_else(|| ovf("the stream header"))?;
    let mut blocks = Vec::with_capacity(plain.blocks.len());
    for p in &plain.blocks {
        let o = || ovf(&format!("ramblock '{}'", p.idstr));
        let header_offset = pos;
        let bitmap_offset = pos
            .checked_add(1 + p.idstr.len() as u64 + 8 + MAPPED_RAM_HEADER_LEN)
            .ok_or_else(o)?;
        let table_end = bitmap_offset
            .checked_add(p.bitmap_len)
            .and_then(|t| t.checked_add(table_len(nchunks(p.used_length, chunk_bytes))))
            .ok_or_else(o)?;
        let pages_offset = table_end
            .checked_next_multiple_of(PAGES_ALIGN)
            .ok_or_else(o)?;
        pos = pages_offset.checked_add(p.used_length).ok_or_else(o)?;
        blocks.push(BlockLayout {
            header_offset,
            bitmap_offset,
            pages_offset,
            ..p.clone()
        });
    }
    pos.checked_add(8 + 5)
        .ok_or_else(|| ovf("the end of the setup section"))?;
    Ok(StreamLayout {
        config: ext,
        blocks,
        eos_offset: pos,
        ..plain
    })
}

/// The plain layout a chunked one expands to: the same blocks without the
/// capability and the tables (what QEMU writes for these blocks).
pub fn plain_of(l: &StreamLayout) -> Result<StreamLayout> {
    let mut config = l.config.clone();
    config.capabilities.retain(|c| c != CAP_CHUNKS);
    let specs: Vec<BlockSpec> = l
        .blocks
        .iter()
        .map(|b| BlockSpec {
            idstr: b.idstr.clone(),
            used_length: b.used_length,
            page_size: b.page_size,
        })
        .collect();
    ramblock::plan(l.base, &config, l.ram_section_id, &specs)
}

/// Check that a table of `nchunks` entries fits between the bitmap and the
/// page region of `l` (the format layer checked the page region against
/// the file size). Returns the table's offset.
pub fn check_region(l: &BlockLayout, nchunks: u64) -> Result<u64> {
    let at = table_offset(l);
    match at.checked_add(table_len(nchunks)) {
        Some(end) if end <= l.pages_offset => Ok(at),
        _ => Err(Error::Corrupt(format!(
            "ramblock '{}': chunk table at offset 0x{at:x} ({nchunks} chunks, {} bytes) runs into the pages at 0x{:x}",
            l.idstr,
            table_len(nchunks),
            l.pages_offset
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{bitmap_len, CAP_MAPPED_RAM};

    #[test]
    fn chunked_layout_and_plain_of() {
        let config = Configuration {
            machine_type: "pc-i440fx-10.0".into(),
            capabilities: vec![CAP_MAPPED_RAM.into()],
            target_page_bits: None,
        };
        let specs = vec![
            BlockSpec {
                idstr: "mem".into(),
                used_length: 64 << 30,
                page_size: 4096,
            },
            BlockSpec {
                idstr: "pc.bios".into(),
                used_length: 0x40000,
                page_size: 4096,
            },
        ];
        let l = plan(0, &config, 1, &specs, 1 << 20).unwrap();
        assert_eq!(l.config.capabilities, [CAP_MAPPED_RAM, CAP_CHUNKS]);
        let mem = &l.blocks[0];
        assert_eq!(mem.bitmap_len, bitmap_len(16 << 20));
        // 64 GiB: a 2 MiB bitmap + 1 MiB of table push the pages to 4 MiB.
        assert_eq!(mem.pages_offset, 4 << 20);
        assert_eq!(check_region(mem, 65536).unwrap(), table_offset(mem));
        assert!(check_region(mem, 1 << 40).is_err());
        assert_eq!(l.blocks[1].header_offset, mem.end());
        assert_eq!(l.eos_offset, l.blocks[1].end());
        let p = plain_of(&l).unwrap();
        assert_eq!(p, ramblock::plan(0, &config, 1, &specs).unwrap());
    }
}
