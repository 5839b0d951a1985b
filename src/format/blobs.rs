//! Named blobs: a VMM's own state (vCPU registers, device state) stored in
//! the same image as guest RAM and covered by the same completion record.
//!
//! The blobs travel in one `FULL` section with idstr [`BLOB_IDSTR`], placed
//! right after the RAM `END` section and before the stream's `EOF`:
//!
//! ```text
//! 0x04, be32 section id, u8 len + "libmappedram/blobs", be32 instance 0,
//! be32 version 1,
//! be32 count, then per blob:
//!     u8 name length (1..=255), name (no NUL), be64 data length,
//!     be64 xxh3-64 of the data, data
//! 0x7e, be32 section id
//! ```
//!
//! A file without blobs has no such section, so files in QEMU's own shape
//! stay byte-identical to QEMU's. QEMU's loader knows no device called
//! `libmappedram/blobs` and refuses a file that carries one ("Unknown
//! savevm section or instance"), instead of loading it with part of the
//! state missing.

use super::cursor::Cursor;
use super::{section, ReadAt};
use crate::error::{Error, Result};

/// idstr of the blob section.
pub const BLOB_IDSTR: &str = "libmappedram/blobs";
/// Version of the blob section's payload.
pub const BLOB_SECTION_VERSION: u32 = 1;
/// Longest blob name, in bytes (it is stored behind a u8 length).
pub const MAX_BLOB_NAME: usize = 255;
/// Most bytes of blob data one image may carry (all blobs together). Blobs
/// are for a VMM's own state -- registers, device models -- not for RAM.
pub const MAX_BLOB_BYTES: u64 = 256 << 20;
/// Bytes of one entry besides its name and data.
const ENTRY_FIXED: u64 = 1 + 8 + 8;

/// Where one blob's data lies in a file, as parsed from the section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// The blob's name.
    pub name: String,
    /// Absolute file offset of the data.
    pub offset: u64,
    /// Data length in bytes.
    pub len: u64,
    /// xxh3-64 of the data, as recorded.
    pub checksum: u64,
}

/// xxh3-64, the blob checksum.
pub fn checksum(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// Check a blob name: 1..=255 bytes, no NUL (C callers pass C strings).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_BLOB_NAME || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "blob name {name:?} must be 1 to {MAX_BLOB_NAME} bytes without NUL (it is {} bytes)",
            name.len()
        )));
    }
    Ok(())
}

/// Encode the blob section for `blobs` (name, data), or nothing when there
/// are none (files without blobs keep QEMU's shape).
pub fn encode_section(section_id: u32, blobs: &[(&str, &[u8])]) -> Vec<u8> {
    if blobs.is_empty() {
        return Vec::new();
    }
    let data: usize = blobs.iter().map(|(n, d)| n.len() + d.len()).sum();
    let mut v = super::stream::encode_section_start(
        section::FULL,
        section_id,
        BLOB_IDSTR,
        0,
        BLOB_SECTION_VERSION,
    );
    v.reserve(data + blobs.len() * ENTRY_FIXED as usize + 9);
    v.extend_from_slice(&(blobs.len() as u32).to_be_bytes());
    for (name, d) in blobs {
        v.push(name.len() as u8);
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(d.len() as u64).to_be_bytes());
        v.extend_from_slice(&checksum(d).to_be_bytes());
        v.extend_from_slice(d);
    }
    v.extend_from_slice(&super::stream::encode_footer(section_id));
    v
}

/// Whether a blob section starts at `pos` (a `FULL` header with
/// [`BLOB_IDSTR`]); `false` at end of file or for any other byte.
pub fn section_at(src: &dyn ReadAt, pos: u64) -> Result<bool> {
    let mut head = [0u8; 6 + BLOB_IDSTR.len()];
    let n = src.read_at(&mut head, pos)?;
    Ok(n == head.len()
        && head[0] == section::FULL
        && head[5] as usize == BLOB_IDSTR.len()
        && &head[6..] == BLOB_IDSTR.as_bytes())
}

/// Parse the blob section at `pos` (see [`section_at`]); returns the
/// entries (data not read) and the offset just past the section's footer.
/// Every length is bounded by the file: a corrupt count or length is
/// `Corrupt` naming the entry, never a large allocation.
pub fn parse_section(src: &dyn ReadAt, pos: u64) -> Result<(Vec<BlobEntry>, u64)> {
    let mut c = Cursor::new(src, pos)?;
    c.u8("the blob section type")?;
    let id = c.be32("the blob section id")?;
    c.short_str("the blob section idstr")?;
    let instance = c.be32("the blob section instance")?;
    let version = c.be32("the blob section version")?;
    if instance != 0 || version != BLOB_SECTION_VERSION {
        return Err(Error::Unsupported(format!(
            "blob section at offset {pos}: instance {instance} version {version} (this library reads instance 0 version {BLOB_SECTION_VERSION})"
        )));
    }
    let count = u64::from(c.be32("the blob count")?);
    if count * (ENTRY_FIXED + 1) > c.remaining() {
        return Err(Error::Corrupt(format!(
            "blob section at offset {pos}: {count} blobs cannot fit in the {} bytes left in the file",
            c.remaining()
        )));
    }
    let mut out: Vec<BlobEntry> = Vec::with_capacity(count as usize);
    for i in 0..count {
        out.push(parse_entry(&mut c, i, &out)?);
    }
    let footer = c.u8("the blob section footer")?;
    let fid = c.be32("the blob section footer id")?;
    if footer != section::FOOTER || fid != id {
        return Err(Error::Corrupt(format!(
            "blob section at offset {pos}: footer {footer:#04x} id {fid} at offset {}, expected {:#04x} id {id}",
            c.pos() - 5,
            section::FOOTER
        )));
    }
    Ok((out, c.pos()))
}

fn parse_entry(c: &mut Cursor<'_>, i: u64, seen: &[BlobEntry]) -> Result<BlobEntry> {
    let at = c.pos();
    let name = c.short_str("a blob name")?;
    check_name(&name).map_err(|_| {
        Error::Corrupt(format!(
            "blob {i} at offset {at}: name of {} bytes (1 to {MAX_BLOB_NAME} without NUL expected)",
            name.len()
        ))
    })?;
    if seen.iter().any(|b| b.name == name) {
        return Err(Error::Corrupt(format!(
            "blob {i} at offset {at}: name {name:?} appears twice"
        )));
    }
    let len = c.be64("a blob length")?;
    let checksum = c.be64("a blob checksum")?;
    let total: u64 = seen.iter().map(|b| b.len).sum();
    if len > c.remaining() || total.saturating_add(len) > MAX_BLOB_BYTES {
        return Err(Error::Corrupt(format!(
            "blob {name:?} at offset {at}: length {len} exceeds the {} bytes left in the file (or the {MAX_BLOB_BYTES}-byte limit)",
            c.remaining()
        )));
    }
    let offset = c.pos();
    c.skip(len, "blob data")?;
    Ok(BlobEntry {
        name,
        offset,
        len,
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[u8]) -> Result<(Vec<BlobEntry>, u64)> {
        parse_section(&v.to_vec(), 0)
    }

    #[test]
    fn round_trip() {
        let v = encode_section(7, &[("vcpu0", b"regs"), ("dev", b"")]);
        assert!(section_at(&v.as_slice(), 0).unwrap());
        let (e, end) = parse(&v).unwrap();
        assert_eq!(end, v.len() as u64);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "vcpu0");
        assert_eq!(&v[e[0].offset as usize..][..4], b"regs");
        assert_eq!(e[0].checksum, checksum(b"regs"));
        assert_eq!(e[1].len, 0);
    }

    #[test]
    fn empty_is_nothing() {
        assert!(encode_section(1, &[]).is_empty());
        assert!(!section_at(&[0u8; 3].as_slice(), 0).unwrap());
    }

    #[test]
    fn bad_input_is_corrupt_not_allocation() {
        let v = encode_section(7, &[("a", b"xyz")]);
        let count_at = 6 + BLOB_IDSTR.len() + 8;
        let mut huge = v.clone();
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse(&huge), Err(Error::Corrupt(_))));
        let len_at = count_at + 4 + 2;
        let mut long = v.clone();
        long[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        let err = parse(&long).unwrap_err().to_string();
        assert!(err.contains("blob \"a\""), "{err}");
        let dup = encode_section(7, &[("a", b"1"), ("a", b"2")]);
        assert!(matches!(parse(&dup), Err(Error::Corrupt(_))));
        let mut footer = v.clone();
        let n = footer.len();
        footer[n - 1] ^= 1;
        assert!(matches!(parse(&footer), Err(Error::Corrupt(_))));
        for cut in 0..v.len() {
            assert!(parse(&v[..cut]).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name("a\0b").is_err());
        assert!(check_name(&"x".repeat(255)).is_ok());
    }
}
