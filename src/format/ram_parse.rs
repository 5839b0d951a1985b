//! Parsing the RAM setup payload of an existing stream: the records before
//! the RAM section, the RAM total, each ramblock's header (with the layout
//! QEMU's writer guarantees), and the end of the setup payload.
//!
//! The layout rules enforced per block are exactly what QEMU's writer
//! (`mapped_ram_setup_ramblock` in `migration/ram.c`) produces, and what
//! [`plan`](super::ramblock::plan) produces:
//! - the bitmap starts right after the block's mapped-ram header;
//! - the page region starts at the bitmap's end rounded up to
//!   [`PAGES_ALIGN`](super::PAGES_ALIGN) (1 MiB), as an absolute file offset (inside a libvirt
//!   container the rounding is of the absolute offset too);
//! - the next block header (or the EOS) starts right after the page region.
//!
//! QEMU's loader is laxer (it only needs page-aligned page regions), but no
//! writer produces anything else, so any other value is corruption: a flipped
//! byte in `bitmap_offset` would otherwise point the bitmap into padding and
//! present an image as complete with its pages missing.
//!
//! A block skipped by `x-ignore-shared` (QEMU 11: "migration: Fix writing
//! mapped_ram + ignore_shared snapshots") has `bitmap_offset = pages_offset
//! = 0`, no bitmap and no pages; the next block header follows its
//! mapped-ram header directly. It parses as a block that is not in this
//! file ([`BlockLayout::present_in_file`] is false).

use super::cursor::Cursor;
use super::ramblock::{BlockLayout, StreamLayout};
use super::stream::{parse_header, Configuration};
use super::{
    bitmap_len, pages_offset_after, section, ReadAt, CAP_MAPPED_RAM, CAP_X_IGNORE_SHARED,
    MAPPED_RAM_HEADER_VERSION, MAX_RAMBLOCKS, RAM_IDSTR, RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SECTION_VERSION,
};
use crate::error::{Error, Result};

/// Stream commands tolerated between the configuration and the RAM section:
/// OPEN_RETURN_PATH (1, no payload), PING (2, be32), SWITCHOVER_START (11).
const HARMLESS_COMMANDS: [(u16, u16); 3] = [(1, 0), (2, 4), (11, 0)];
/// Most records (commands) skipped before the RAM section.
const MAX_RECORDS_BEFORE_RAM: usize = 64;

/// Parse an existing stream at `base` through the RAM setup payload's EOS and
/// the footer after it, validating every field against `src.size()`.
///
/// Error choices: a stream without the `mapped-ram` capability, a RAM
/// section version other than 4, a mapped-ram header version above 1, or
/// device sections / commands before the RAM section are `Unsupported`. A
/// mapped-ram header version 0 is `Corrupt`: QEMU loads it, but no QEMU ever
/// wrote it. Everything malformed, inconsistent, overlapping, truncated or
/// laid out other than QEMU's writer lays it out (see the module docs) is
/// `Corrupt`; messages name the block, the field, expected vs. found.
/// Blocks skipped by `x-ignore-shared` parse as not present in the file.
pub fn parse(src: &dyn ReadAt, base: u64) -> Result<StreamLayout> {
    let (config, after_config) = parse_header(src, base)?;
    if !config.has_capability(CAP_MAPPED_RAM) {
        return Err(Error::Unsupported(format!(
            "not a mapped-ram file: the stream's configuration (machine '{}') does not record the '{CAP_MAPPED_RAM}' capability (recorded: [{}])",
            config.machine_type,
            config.capabilities.join(", ")
        )));
    }
    let mut c = Cursor::new(src, after_config)?;
    let ram_section_id = records_before_ram(&mut c)?;
    let total = ram_total(&mut c, config.page_size())?;
    let blocks = ramblocks(&mut c, &config, total)?;
    let eos_offset = end_of_setup(&mut c, ram_section_id)?;
    Ok(StreamLayout {
        base,
        config,
        ram_section_id,
        blocks,
        eos_offset,
    })
}

/// Skip the harmless commands before the RAM section's START record; returns
/// the RAM section id.
fn records_before_ram(c: &mut Cursor<'_>) -> Result<u32> {
    let mut records = 0usize;
    loop {
        let at = c.pos();
        let kind = c.u8("the RAM section header")?;
        match kind {
            section::START | section::FULL => return ram_section_start(c, kind, at),
            section::COMMAND => {
                let cmd = c.be16("a command number")?;
                let len = c.be16("a command length")?;
                if !HARMLESS_COMMANDS.contains(&(cmd, len)) {
                    return Err(Error::Unsupported(format!(
                        "command {cmd} (length {len}) at offset {at} before the RAM section is not supported"
                    )));
                }
                c.skip(len as u64, "a command payload")?;
                records += 1;
                if records > MAX_RECORDS_BEFORE_RAM {
                    return Err(Error::Corrupt(format!(
                        "more than {MAX_RECORDS_BEFORE_RAM} commands before the RAM section (at offset {at})"
                    )));
                }
            }
            other => {
                return Err(Error::Corrupt(format!(
                    "expected the RAM section start (0x01 'ram') at offset {at}, found section type 0x{other:02x}"
                )));
            }
        }
    }
}

/// The rest of a START/FULL record (type byte at `at` already read); only
/// the RAM section's START is accepted. Returns its section id.
fn ram_section_start(c: &mut Cursor<'_>, kind: u8, at: u64) -> Result<u32> {
    let id = c.be32("a section id")?;
    let idstr = c.short_str("a section idstr")?;
    let instance = c.be32(&format!("the instance id of section '{idstr}'"))?;
    let version = c.be32(&format!("the version of section '{idstr}'"))?;
    if kind != section::START || idstr != RAM_IDSTR {
        return Err(Error::Unsupported(format!(
            "section '{idstr}' ({} id {id}, version {version}) at offset {at} comes before the RAM section; only the RAM section may come first",
            if kind == section::START { "START" } else { "FULL" }
        )));
    }
    if instance != 0 {
        return Err(Error::Corrupt(format!(
            "RAM section at offset {at} has instance id {instance}, expected 0"
        )));
    }
    if version != RAM_SECTION_VERSION {
        return Err(Error::Unsupported(format!(
            "RAM section at offset {at} has version {version}, expected {RAM_SECTION_VERSION}"
        )));
    }
    Ok(id)
}

/// The be64 RAM total with the MEM_SIZE flag in its low bits.
fn ram_total(c: &mut Cursor<'_>, page_size: u64) -> Result<u64> {
    let at = c.pos();
    let raw_total = c.be64("the RAM total")?;
    let flags = raw_total & (page_size - 1);
    let total = raw_total & !(page_size - 1);
    if flags != RAM_SAVE_FLAG_MEM_SIZE {
        return Err(Error::Corrupt(format!(
            "RAM setup at offset {at}: expected flags 0x{RAM_SAVE_FLAG_MEM_SIZE:x} (MEM_SIZE), found 0x{flags:x} (raw value 0x{raw_total:x})"
        )));
    }
    if total == 0 {
        return Err(Error::Corrupt(format!(
            "RAM setup at offset {at}: total RAM is 0"
        )));
    }
    let size = c.size();
    if total > size {
        return Err(Error::Corrupt(format!(
            "RAM setup at offset {at}: total RAM 0x{total:x} is larger than the file ({size} bytes)"
        )));
    }
    Ok(total)
}

/// Every ramblock header until the lengths add up to `total`.
fn ramblocks(c: &mut Cursor<'_>, config: &Configuration, total: u64) -> Result<Vec<BlockLayout>> {
    let mut blocks: Vec<BlockLayout> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut sum: u64 = 0;
    while sum < total {
        if blocks.len() >= MAX_RAMBLOCKS {
            return Err(Error::Corrupt(format!(
                "more than {MAX_RAMBLOCKS} ramblocks (next at offset {})",
                c.pos()
            )));
        }
        let b = ramblock(c, config, total, sum)?;
        if !seen.insert(b.idstr.clone()) {
            return Err(Error::Corrupt(format!(
                "ramblock '{}' (header at offset {}): the idstr appears twice",
                b.idstr, b.header_offset
            )));
        }
        sum += b.used_length;
        // The next header follows the page region (or, for a block not in
        // the file, the mapped-ram header).
        c.seek(b.end());
        blocks.push(b);
    }
    Ok(blocks)
}

/// One ramblock header at the cursor; `sum` is the length of the blocks
/// before it. Leaves the cursor just past the mapped-ram header.
fn ramblock(
    c: &mut Cursor<'_>,
    config: &Configuration,
    total: u64,
    sum: u64,
) -> Result<BlockLayout> {
    let page_size = config.page_size();
    let header_offset = c.pos();
    if c.u8("a ramblock idstr length")? == 0 {
        return Err(Error::Corrupt(format!(
            "ramblock header at offset {header_offset} has an empty idstr"
        )));
    }
    c.seek(header_offset);
    let idstr = c.short_str("a ramblock idstr")?;
    let corrupt = |msg: String| {
        Error::Corrupt(format!(
            "ramblock '{idstr}' (header at offset {header_offset}): {msg}"
        ))
    };
    let used_length = c.be64(&format!("the length of ramblock '{idstr}'"))?;
    if used_length == 0 || used_length % page_size != 0 {
        return Err(corrupt(format!(
            "length 0x{used_length:x} is not a non-zero multiple of the page size {page_size}"
        )));
    }
    if sum.checked_add(used_length).is_none_or(|s| s > total) {
        return Err(corrupt(format!(
            "length 0x{used_length:x} brings the ramblock total past the announced 0x{total:x} (0x{sum:x} before it)"
        )));
    }
    let addr = if config.has_capability(CAP_X_IGNORE_SHARED) {
        Some(c.be64(&format!("the address of ramblock '{idstr}'"))?)
    } else {
        None
    };
    let what = format!("the mapped-ram header of '{idstr}'");
    let hdr_at = c.pos();
    let header_version = c.be32(&what)?;
    let block_page_size = c.be64(&what)?;
    let bitmap_offset = c.be64(&what)?;
    let pages_offset = c.be64(&what)?;
    if header_version == 0 {
        return Err(corrupt(format!(
            "mapped-ram header at offset {hdr_at} has version 0, expected {MAPPED_RAM_HEADER_VERSION}"
        )));
    }
    if header_version > MAPPED_RAM_HEADER_VERSION {
        return Err(Error::Unsupported(format!(
            "ramblock '{idstr}' (header at offset {header_offset}): mapped-ram header version {header_version} is not supported (expected <= {MAPPED_RAM_HEADER_VERSION})"
        )));
    }
    if block_page_size != page_size {
        return Err(corrupt(format!(
            "page size {block_page_size} in the mapped-ram header at offset {hdr_at}, expected the target page size {page_size}"
        )));
    }
    let mut b = BlockLayout {
        idstr: idstr.clone(),
        used_length,
        page_size,
        addr,
        header_version,
        header_offset,
        bitmap_offset,
        bitmap_len: bitmap_len(used_length / page_size),
        pages_offset,
    };
    if addr.is_some() && bitmap_offset == 0 && pages_offset == 0 {
        // Skipped by x-ignore-shared: nothing of it in this file.
        b.bitmap_len = 0;
        return Ok(b);
    }
    check_region_offsets(&b, c.pos(), c.size()).map_err(corrupt)?;
    Ok(b)
}

/// The bitmap and page offsets of a block that is in the file, against the
/// layout QEMU's writer produces; `header_end` is the end of its mapped-ram
/// header. The error is the message after the block's name.
fn check_region_offsets(
    b: &BlockLayout,
    header_end: u64,
    size: u64,
) -> std::result::Result<(), String> {
    let (bitmap_offset, pages_offset, blen) = (b.bitmap_offset, b.pages_offset, b.bitmap_len);
    if bitmap_offset != header_end {
        return Err(format!(
            "field bitmap_offset: expected 0x{header_end:x} (right after the mapped-ram header), found 0x{bitmap_offset:x}"
        ));
    }
    // Cannot overflow: header_end is inside the file and blen < 2^61.
    let bitmap_end = bitmap_offset + blen;
    let Some(expected) = pages_offset_after(bitmap_end) else {
        return Err(format!(
            "the bitmap end 0x{bitmap_end:x} cannot be rounded up to a 1 MiB boundary"
        ));
    };
    if pages_offset != expected {
        return Err(format!(
            "field pages_offset: expected 0x{expected:x} (the bitmap end 0x{bitmap_end:x} rounded up to 1 MiB), found 0x{pages_offset:x}"
        ));
    }
    match pages_offset.checked_add(b.used_length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(format!(
            "pages at 0x{pages_offset:x} of length 0x{:x} extend past the end of the file (size 0x{size:x})",
            b.used_length
        )),
    }
}

/// The be64 EOS after the last ramblock and the RAM setup section's footer;
/// returns the EOS offset.
fn end_of_setup(c: &mut Cursor<'_>, ram_section_id: u32) -> Result<u64> {
    let eos_offset = c.pos();
    let eos = c.be64("the EOS after the last ramblock")?;
    if eos != RAM_SAVE_FLAG_EOS {
        return Err(Error::Corrupt(format!(
            "expected EOS (0x{RAM_SAVE_FLAG_EOS:x}) at offset {eos_offset} after the last ramblock, found 0x{eos:x}"
        )));
    }
    let at = c.pos();
    let footer = c.u8("the RAM setup section footer")?;
    let id = c.be32("the RAM setup section footer")?;
    if footer != section::FOOTER || id != ram_section_id {
        return Err(Error::Corrupt(format!(
            "expected the RAM section footer (0x{:02x}, id {ram_section_id}) at offset {at}, found type 0x{footer:02x} id {id}",
            section::FOOTER
        )));
    }
    Ok(eos_offset)
}
