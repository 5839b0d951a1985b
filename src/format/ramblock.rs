//! The RAM section: setup payload, per-ramblock headers, the mapped-ram
//! header, the bitmap, and the layout math (1 MiB aligned page regions).

use super::stream::{encode_footer, encode_header, encode_section_start, Configuration};
use super::{
    bitmap_len, pages_offset_after, section, CAP_MAPPED_RAM, MAPPED_RAM_HEADER_LEN,
    MAPPED_RAM_HEADER_VERSION, MAX_MACHINE_TYPE_LEN, MAX_RAMBLOCKS, MAX_TARGET_PAGE_BITS,
    MIN_TARGET_PAGE_BITS, RAM_EOS_LEN, RAM_IDSTR, RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SECTION_VERSION, SECTION_FOOTER_LEN,
};
use crate::error::{Error, Result};

pub use super::ram_parse::parse;

/// A ramblock a caller wants in a new image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// QEMU's ramblock name (e.g. `pc.ram`): 1..=255 bytes, no NUL.
    pub idstr: String,
    /// Bytes of guest memory in the block: a non-zero multiple of `page_size`.
    pub used_length: u64,
    /// The target page size in bytes (the image's page size; every block
    /// has the same).
    pub page_size: u64,
}

/// Where one ramblock lives in a file. All offsets are absolute file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    /// QEMU's ramblock name, 1..=255 bytes.
    pub idstr: String,
    /// Bytes of guest memory in the block (a multiple of `page_size`).
    pub used_length: u64,
    /// Page size in bytes (from the mapped-ram header; the stream's target
    /// page size).
    pub page_size: u64,
    /// With `x-ignore-shared`: the block's be64 address field.
    pub addr: Option<u64>,
    /// Mapped-ram header version as found (1 for new images).
    pub header_version: u32,
    /// Offset of the idstr length byte.
    pub header_offset: u64,
    /// 0 for a block not in the file (see [`present_in_file`](Self::present_in_file)).
    pub bitmap_offset: u64,
    /// ceil(pages / 64) * 8; 0 for a block not in the file.
    pub bitmap_len: u64,
    /// 0 for a block not in the file.
    pub pages_offset: u64,
}

impl BlockLayout {
    /// Number of pages in the block (`used_length / page_size`).
    pub fn pages(&self) -> u64 {
        self.used_length / self.page_size
    }

    /// Does this file hold the block's bitmap and pages? False for a block
    /// QEMU skipped under `x-ignore-shared` (its memory is shared with the
    /// destination and was not saved): such a block's header records
    /// `bitmap_offset = pages_offset = 0`, and its pages cannot be read.
    pub fn present_in_file(&self) -> bool {
        !(self.addr.is_some() && self.bitmap_offset == 0 && self.pages_offset == 0)
    }

    /// End of the block's header (idstr, length, address, mapped-ram header).
    pub fn header_end(&self) -> u64 {
        let addr_len = if self.addr.is_some() { 8 } else { 0 };
        self.header_offset + 1 + self.idstr.len() as u64 + 8 + addr_len + MAPPED_RAM_HEADER_LEN
    }

    /// Where the next block header (or the EOS) starts: the end of the page
    /// region, or the end of the header for a block not in the file.
    pub fn end(&self) -> u64 {
        if self.present_in_file() {
            self.pages_offset + self.used_length
        } else {
            self.header_end()
        }
    }
}

/// The RAM part of a stream, through the setup payload's EOS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLayout {
    /// Absolute offset of "QEVM" (non-zero inside a container).
    pub base: u64,
    /// The configuration section (machine type, page size, capabilities).
    pub config: Configuration,
    /// The section id of the RAM section (its START record and footer).
    pub ram_section_id: u32,
    /// The ramblocks in stream order.
    pub blocks: Vec<BlockLayout>,
    /// Absolute offset of the be64 EOS that ends the setup payload.
    pub eos_offset: u64,
}

impl StreamLayout {
    /// Offset just past the setup section's footer (where the rest of the
    /// stream continues).
    pub fn setup_end(&self) -> u64 {
        self.tail_offset() + SECTION_FOOTER_LEN
    }

    /// Where [`encode_tail`](super::stream::encode_tail) goes: right after
    /// the EOS (the tail starts with the setup footer).
    pub fn tail_offset(&self) -> u64 {
        self.eos_offset + RAM_EOS_LEN
    }

    /// Sum of the blocks' `used_length`.
    pub fn total(&self) -> u64 {
        self.blocks.iter().map(|b| b.used_length).sum()
    }
}

/// Lay out a new image at `base`. Validates the specs (idstr 1..=255 bytes,
/// page size a power of two, lengths non-zero multiples of the page size,
/// no duplicate idstr, no overflow). Blocks keep the caller's order.
///
/// Also validates `config`: a machine type of 1..=1024 bytes, the
/// `mapped-ram` capability present, `x-ignore-shared` absent (this library
/// does not write block addresses), target-page-bits in range, and every
/// spec's `page_size` equal to the configuration's page size (4096 without
/// target-page-bits). All violations are `Error::Invalid`.
pub fn plan(
    base: u64,
    config: &Configuration,
    ram_section_id: u32,
    specs: &[BlockSpec],
) -> Result<StreamLayout> {
    validate_config(config)?;
    validate_specs(specs, config.page_size())?;
    let header_len = encode_header(config).len() as u64;
    // RAM START record: type, be32 id, idstr, be32 instance, be32 version.
    let start_len = 1 + 4 + 1 + RAM_IDSTR.len() as u64 + 4 + 4;
    // The be64 RAM total follows it.
    let mut pos = base
        .checked_add(header_len + start_len + 8)
        .ok_or_else(|| overflow("the stream header"))?;
    let mut blocks = Vec::with_capacity(specs.len());
    for s in specs {
        let b = place_block(s, config.page_size(), pos)?;
        pos = b.end();
        blocks.push(b);
    }
    // EOS + footer must fit too.
    pos.checked_add(RAM_EOS_LEN + SECTION_FOOTER_LEN)
        .ok_or_else(|| overflow("the end of the setup section"))?;
    Ok(StreamLayout {
        base,
        config: config.clone(),
        ram_section_id,
        blocks,
        eos_offset: pos,
    })
}

fn overflow(what: &str) -> Error {
    Error::Invalid(format!("image layout overflows 64 bits at {what}"))
}

/// Lay out one block whose header starts at `pos` the way QEMU's writer
/// does: bitmap right after the header, pages at the bitmap's end rounded up
/// to [`PAGES_ALIGN`](super::PAGES_ALIGN).
fn place_block(s: &BlockSpec, page_size: u64, pos: u64) -> Result<BlockLayout> {
    let ovf = || overflow(&format!("ramblock '{}'", s.idstr));
    let mut b = BlockLayout {
        idstr: s.idstr.clone(),
        used_length: s.used_length,
        page_size,
        addr: None,
        header_version: MAPPED_RAM_HEADER_VERSION,
        header_offset: pos,
        bitmap_offset: 0,
        bitmap_len: bitmap_len(s.used_length / page_size),
        pages_offset: 0,
    };
    b.bitmap_offset = pos
        .checked_add(1 + s.idstr.len() as u64 + 8 + MAPPED_RAM_HEADER_LEN)
        .ok_or_else(ovf)?;
    let bitmap_end = b.bitmap_offset.checked_add(b.bitmap_len).ok_or_else(ovf)?;
    b.pages_offset = pages_offset_after(bitmap_end).ok_or_else(ovf)?;
    b.pages_offset.checked_add(s.used_length).ok_or_else(ovf)?;
    Ok(b)
}

/// The caller's block list: 1..=[`MAX_RAMBLOCKS`] blocks, each with a
/// distinct 1..=255-byte idstr without NUL, the target page size, and a
/// non-zero length that is a multiple of it; the total fits 64 bits.
fn validate_specs(specs: &[BlockSpec], page_size: u64) -> Result<()> {
    if specs.is_empty() {
        return Err(Error::Invalid(
            "an image needs at least one ramblock".into(),
        ));
    }
    if specs.len() > MAX_RAMBLOCKS {
        return Err(Error::Invalid(format!(
            "{} ramblocks requested, at most {MAX_RAMBLOCKS} are supported",
            specs.len()
        )));
    }
    let mut total: u64 = 0;
    for (i, s) in specs.iter().enumerate() {
        if s.idstr.is_empty() || s.idstr.len() > 255 {
            return Err(Error::Invalid(format!(
                "ramblock {i}: idstr must be 1..=255 bytes, got {} bytes",
                s.idstr.len()
            )));
        }
        if s.idstr.bytes().any(|b| b == 0) {
            return Err(Error::Invalid(format!(
                "ramblock {i}: idstr {:?} contains a NUL byte",
                s.idstr
            )));
        }
        if specs[..i].iter().any(|o| o.idstr == s.idstr) {
            return Err(Error::Invalid(format!(
                "ramblock '{}' is listed twice",
                s.idstr
            )));
        }
        if !s.page_size.is_power_of_two() || s.page_size != page_size {
            return Err(Error::Invalid(format!(
                "ramblock '{}': page size {} must be the target page size {page_size}",
                s.idstr, s.page_size
            )));
        }
        if s.used_length == 0 || s.used_length % page_size != 0 {
            return Err(Error::Invalid(format!(
                "ramblock '{}': length {} must be a non-zero multiple of the page size {page_size}",
                s.idstr, s.used_length
            )));
        }
        total = total
            .checked_add(s.used_length)
            .ok_or_else(|| overflow(&format!("the total length with block '{}'", s.idstr)))?;
    }
    Ok(())
}

fn validate_config(config: &Configuration) -> Result<()> {
    let len = config.machine_type.len() as u64;
    if len == 0 || len > MAX_MACHINE_TYPE_LEN {
        return Err(Error::Invalid(format!(
            "machine type must be 1..={MAX_MACHINE_TYPE_LEN} bytes, got {len}"
        )));
    }
    if let Some(bits) = config.target_page_bits {
        if !(MIN_TARGET_PAGE_BITS..=MAX_TARGET_PAGE_BITS).contains(&bits) {
            return Err(Error::Invalid(format!(
                "target-page-bits {bits} outside {MIN_TARGET_PAGE_BITS}..={MAX_TARGET_PAGE_BITS}"
            )));
        }
    }
    for (i, cap) in config.capabilities.iter().enumerate() {
        if cap != CAP_MAPPED_RAM {
            return Err(Error::Invalid(format!(
                "capability '{cap}' cannot be recorded in a new image (only {CAP_MAPPED_RAM})"
            )));
        }
        if config.capabilities[..i].contains(cap) {
            return Err(Error::Invalid(format!("capability '{cap}' listed twice")));
        }
    }
    if !config.has_capability(CAP_MAPPED_RAM) {
        return Err(Error::Invalid(format!(
            "a new image must record the '{CAP_MAPPED_RAM}' capability"
        )));
    }
    Ok(())
}

/// The per-block header: u8 idstr length, idstr, be64 used_length,
/// (be64 addr), and the 28-byte mapped-ram header.
fn encode_block_header(b: &BlockLayout) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + b.idstr.len() + 16 + MAPPED_RAM_HEADER_LEN as usize);
    v.push(b.idstr.len() as u8);
    v.extend_from_slice(b.idstr.as_bytes());
    v.extend_from_slice(&b.used_length.to_be_bytes());
    if let Some(addr) = b.addr {
        v.extend_from_slice(&addr.to_be_bytes());
    }
    v.extend_from_slice(&b.header_version.to_be_bytes());
    v.extend_from_slice(&b.page_size.to_be_bytes());
    v.extend_from_slice(&b.bitmap_offset.to_be_bytes());
    v.extend_from_slice(&b.pages_offset.to_be_bytes());
    v
}

/// The bytes of a new image through the EOS, as (absolute offset, bytes)
/// pieces: header + configuration + RAM START + total + first block header;
/// each further block header at its `header_offset`; the EOS at
/// `eos_offset`, followed by the setup section's footer (so a freshly
/// created image parses; [`encode_tail`](super::stream::encode_tail)
/// rewrites the same footer). Bitmaps and padding are not included (zeros /
/// holes).
pub fn encode_pieces(layout: &StreamLayout) -> Vec<(u64, Vec<u8>)> {
    let mut first = encode_header(&layout.config);
    first.extend_from_slice(&encode_section_start(
        section::START,
        layout.ram_section_id,
        RAM_IDSTR,
        0,
        RAM_SECTION_VERSION,
    ));
    first.extend_from_slice(&(layout.total() | RAM_SAVE_FLAG_MEM_SIZE).to_be_bytes());
    let mut pieces = Vec::with_capacity(layout.blocks.len() + 1);
    let mut cur = (layout.base, first);
    for b in &layout.blocks {
        let h = encode_block_header(b);
        if cur.0 + cur.1.len() as u64 == b.header_offset {
            cur.1.extend_from_slice(&h);
        } else {
            pieces.push(std::mem::replace(&mut cur, (b.header_offset, h)));
        }
    }
    pieces.push(cur);
    let mut eos = RAM_SAVE_FLAG_EOS.to_be_bytes().to_vec();
    eos.extend_from_slice(&encode_footer(layout.ram_section_id));
    pieces.push((layout.eos_offset, eos));
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::stream::{completion, completion_json, encode_tail, Completion};
    use crate::format::{CAP_X_IGNORE_SHARED, PAGES_ALIGN};

    fn cfg(machine: &str) -> Configuration {
        Configuration {
            machine_type: machine.into(),
            capabilities: vec![CAP_MAPPED_RAM.into()],
            target_page_bits: None,
        }
    }

    fn spec(idstr: &str, len: u64) -> BlockSpec {
        BlockSpec {
            idstr: idstr.into(),
            used_length: len,
            page_size: 4096,
        }
    }

    /// The blocks of QEMU 10.0.2 `-M pc -m 512M` (as `tests/qemu_interop.rs`
    /// finds them in a real save).
    fn pc_512m() -> Vec<BlockSpec> {
        vec![
            spec("mem", 0x2000_0000),
            spec("/rom@etc/acpi/tables", 0x20000),
            spec("pc.bios", 0x40000),
            spec("pc.rom", 0x20000),
            spec("/rom@etc/table-loader", 0x1000),
            spec("/rom@etc/acpi/rsdp", 0x1000),
        ]
    }

    /// Lay the pieces into a buffer of `len` bytes.
    fn image(layout: &StreamLayout, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        for (off, bytes) in encode_pieces(layout) {
            buf[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
        }
        buf
    }

    #[test]
    fn worked_example_offsets() {
        let l = plan(0, &cfg("pc-i440fx-10.0"), 1, &pc_512m()).unwrap();
        assert_eq!(l.blocks[0].header_offset, 0x63);
        assert_eq!(l.blocks[0].bitmap_offset, 0x8b);
        assert_eq!(l.blocks[0].bitmap_len, 0x20000 / 8);
        let pages: Vec<u64> = l.blocks.iter().map(|b| b.pages_offset).collect();
        assert_eq!(
            pages,
            [0x100000, 0x20200000, 0x20300000, 0x20400000, 0x20500000, 0x20600000]
        );
        assert_eq!(l.eos_offset, 0x20601000);
        assert_eq!(l.total(), 0x20082000);
        // The first piece ends with the first block header, right before
        // the bitmap.
        let pieces = encode_pieces(&l);
        assert_eq!(pieces[0].0, 0);
        assert_eq!(pieces[0].1.len() as u64, 0x8b);
        assert_eq!(&pieces[0].1[0x5b..0x63], &(0x20082000u64 | 4).to_be_bytes());
        let last = pieces.last().unwrap();
        assert_eq!(last.0, 0x20601000);
        assert_eq!(last.1, [0, 0, 0, 0, 0, 0, 0, 0x10, 0x7e, 0, 0, 0, 1]);
    }

    #[test]
    fn plan_rejects_bad_specs() {
        let c = cfg("pc");
        let cases: Vec<(Vec<BlockSpec>, &str)> = vec![
            (vec![], "at least one"),
            (vec![spec("", 4096)], "1..=255"),
            (vec![spec(&"x".repeat(256), 4096)], "1..=255"),
            (vec![spec("a", 4096), spec("a", 8192)], "twice"),
            (vec![spec("a", 0)], "non-zero multiple"),
            (vec![spec("a", 4097)], "non-zero multiple"),
            (
                vec![BlockSpec {
                    page_size: 8192,
                    ..spec("a", 8192)
                }],
                "page size 8192",
            ),
            (vec![spec("a", u64::MAX - 4095)], "overflows"),
            (vec![spec("a", 1 << 63), spec("b", 1 << 63)], "overflows"),
        ];
        for (specs, want) in cases {
            match plan(0, &c, 1, &specs) {
                Err(Error::Invalid(m)) => assert!(m.contains(want), "{m:?} lacks {want:?}"),
                other => panic!("{specs:?}: expected Invalid({want}), got {other:?}"),
            }
        }
        let mut no_cap = cfg("pc");
        no_cap.capabilities.clear();
        assert!(matches!(
            plan(0, &no_cap, 1, &[spec("a", 4096)]),
            Err(Error::Invalid(_))
        ));
        let mut shared = cfg("pc");
        shared.capabilities.insert(0, CAP_X_IGNORE_SHARED.into());
        assert!(matches!(
            plan(0, &shared, 1, &[spec("a", 4096)]),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn round_trip_at_base_with_target_page_bits() {
        let mut c = cfg("virt-10.0");
        c.target_page_bits = Some(16);
        let specs = vec![
            BlockSpec {
                idstr: "ram0".into(),
                used_length: 64 << 16,
                page_size: 1 << 16,
            },
            BlockSpec {
                idstr: "one".into(),
                used_length: 1 << 16,
                page_size: 1 << 16,
            },
        ];
        let base = 4096 + 92;
        let l = plan(base, &c, 7, &specs).unwrap();
        let mut buf = image(&l, l.setup_end());
        assert_eq!(parse(&buf, base).unwrap(), l);
        for b in &l.blocks {
            assert_eq!(b.pages_offset % PAGES_ALIGN, 0);
        }
        // Not finished: no visible end.
        assert!(matches!(
            completion(&buf, l.setup_end()).unwrap(),
            Completion::Incomplete(_)
        ));
        // Finish it: the tail rewrites the footer and ends the stream.
        let json = completion_json(1 << 16, "virt-10.0", 2);
        let tail = encode_tail(7, &json);
        buf.truncate(l.tail_offset() as usize);
        buf.extend_from_slice(&tail);
        assert_eq!(parse(&buf, base).unwrap(), l);
        match completion(&buf, l.setup_end()).unwrap() {
            Completion::Complete {
                vmdesc_offset,
                json_len,
                ours,
            } => {
                assert_eq!(vmdesc_offset, l.setup_end() + 18);
                assert_eq!(json_len as usize, json.len());
                assert!(ours);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Parse a file QEMU wrote, and check that plan + encode_pieces give the
    /// same bytes through the EOS + footer (outside the bitmaps). Set
    /// MAPPEDRAM_QEMU_IMAGE=path[:base] to run it; the QEMU interop tests
    /// produce such files.
    /// Not run by default (reported as ignored, not passed): the QEMU
    /// interop suite (tests/qemu_interop.rs) checks the same against files
    /// QEMU writes during the test.
    #[test]
    #[ignore = "needs MAPPEDRAM_QEMU_IMAGE=path[:base]; covered by tests/qemu_interop.rs"]
    fn qemu_written_file() {
        let var =
            std::env::var("MAPPEDRAM_QEMU_IMAGE").expect("set MAPPEDRAM_QEMU_IMAGE=path[:base]");
        let (path, base) = match var.split_once(':') {
            Some((p, b)) => (p.to_string(), b.parse().unwrap()),
            None => (var.clone(), 0),
        };
        let data = std::fs::read(&path).unwrap();
        let l = parse(&data, base).unwrap();
        eprintln!("{l:#?}");
        let specs: Vec<BlockSpec> = l
            .blocks
            .iter()
            .map(|b| spec(&b.idstr, b.used_length))
            .collect();
        let ours = plan(base, &l.config, l.ram_section_id, &specs).unwrap();
        assert_eq!(ours, l);
        for (off, bytes) in encode_pieces(&ours) {
            let off = off as usize;
            assert_eq!(
                &data[off..off + bytes.len()],
                bytes.as_slice(),
                "piece at {off}"
            );
        }
        match completion(&data, l.setup_end()).unwrap() {
            Completion::Complete { ours, .. } => assert!(!ours),
            other => panic!("{other:?}"),
        }
    }
}
