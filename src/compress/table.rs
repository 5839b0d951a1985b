//! The per-block chunk table: encode/decode and validation. Pure, no I/O.
//!
//! It sits right after the block's page bitmap (`bitmap_offset +
//! bitmap_len`), before the 1 MiB aligned page region, and is bounded and
//! validated like the bitmap. Layout (big-endian like the stream):
//!
//! ```text
//! header, 32 bytes:
//!   0  "MRCT"            magic
//!   4  be32 version      1
//!   8  be32 chunk_bytes  guest bytes per chunk: a power of two,
//!                        >= page size, 4 KiB ..= 16 MiB
//!   12 u8  checksum      0 none, 1 xxh3-64 of the chunk's uncompressed bytes
//!   13 u8  codec         codec new chunks are written with (1 raw, 2 zstd)
//!   14 i8  level         zstd level new chunks are written with
//!   15 u8  0
//!   16 be64 nchunks      ceil(used_length / chunk_bytes)
//!   24 be64 0
//! then nchunks entries of 16 bytes:
//!   0  u8  codec         0 empty (no page present), 1 raw, 2 zstd
//!   1  u8  0, be16 0
//!   4  be32 stored       bytes at the slot's start: 0 / the chunk's length / 1..=length
//!   8  be64 checksum     of the uncompressed chunk (absent pages as zeros); 0 without checksums
//! ```
//!
//! Entries are decoded lazily and validated where they are used, so one
//! damaged entry makes one chunk unreadable (with a message naming block,
//! chunk and offset), not the whole image.

use crate::error::{Error, Result};

/// Magic of the table header.
pub const TABLE_MAGIC: [u8; 4] = *b"MRCT";
/// The table version this library writes and reads.
pub const TABLE_VERSION: u32 = 1;
/// Bytes of the table header.
pub const HEADER_LEN: u64 = 32;
/// Bytes of one entry.
pub const ENTRY_LEN: u64 = 16;
/// Smallest chunk size.
pub const MIN_CHUNK_BYTES: u64 = 4096;
/// Largest chunk size (bounds the per-thread scratch buffers).
pub const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// How chunks are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Pages at their own offsets in the slot (the plain layout).
    Raw,
    /// One zstd frame at the slot's start; the rest of the slot a hole.
    Zstd,
}

impl Codec {
    /// The header's codec byte for new chunks.
    pub fn byte(self) -> u8 {
        match self {
            Codec::Raw => 1,
            Codec::Zstd => 2,
        }
    }
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "none",
            Codec::Zstd => "zstd",
        }
    }
}

/// The checksum kind recorded in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// No checksums (entries hold 0).
    None,
    /// xxh3-64 of each chunk's uncompressed bytes.
    Xxh3,
}

impl Checksum {
    /// The header's checksum byte.
    pub fn byte(self) -> u8 {
        match self {
            Checksum::None => 0,
            Checksum::Xxh3 => 1,
        }
    }
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Checksum::None => "none",
            Checksum::Xxh3 => "xxh3-64",
        }
    }
}

/// The decoded table header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableHeader {
    /// Guest bytes per chunk.
    pub chunk_bytes: u64,
    /// Checksum kind of the entries.
    pub checksum: Checksum,
    /// Codec new chunks are written with.
    pub codec: Codec,
    /// zstd level new chunks are written with.
    pub level: i8,
    /// Number of chunks (and entries).
    pub nchunks: u64,
}

/// Chunks of a block of `used_length` bytes.
pub fn nchunks(used_length: u64, chunk_bytes: u64) -> u64 {
    used_length.div_ceil(chunk_bytes)
}

/// Bytes of the table (header + entries) for `nchunks` chunks.
pub fn table_len(nchunks: u64) -> u64 {
    HEADER_LEN + nchunks * ENTRY_LEN
}

/// Check a chunk size against a page size (used by create and by decode).
pub fn check_chunk_bytes(chunk_bytes: u64, page_size: u64) -> std::result::Result<(), String> {
    if !chunk_bytes.is_power_of_two()
        || !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_bytes)
        || chunk_bytes < page_size
    {
        return Err(format!(
            "chunk size {chunk_bytes} must be a power of two in {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES} and at least the page size {page_size}"
        ));
    }
    Ok(())
}

impl TableHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..4].copy_from_slice(&TABLE_MAGIC);
        h[4..8].copy_from_slice(&TABLE_VERSION.to_be_bytes());
        h[8..12].copy_from_slice(&(self.chunk_bytes as u32).to_be_bytes());
        h[12] = self.checksum.byte();
        h[13] = self.codec.byte();
        h[14] = self.level as u8;
        h[16..24].copy_from_slice(&self.nchunks.to_be_bytes());
        h
    }

    /// Decode and validate the header of block `idstr` (`used_length`,
    /// `page_size`) found at file offset `at`.
    pub fn decode(
        b: &[u8],
        idstr: &str,
        at: u64,
        used_length: u64,
        page_size: u64,
    ) -> Result<TableHeader> {
        let bad = |what: String| {
            Error::Corrupt(format!(
                "ramblock '{idstr}': chunk table header at offset 0x{at:x}: {what}"
            ))
        };
        if b.len() < HEADER_LEN as usize {
            return Err(bad(format!("truncated: {} of {HEADER_LEN} bytes", b.len())));
        }
        if b[0..4] != TABLE_MAGIC {
            return Err(bad(format!(
                "expected magic \"MRCT\", found {:02x?}",
                &b[0..4]
            )));
        }
        let version = be32(&b[4..8]);
        if version != TABLE_VERSION {
            return Err(Error::Unsupported(format!(
                "ramblock '{idstr}': chunk table version {version} at offset 0x{at:x} is not supported (expected {TABLE_VERSION})"
            )));
        }
        let chunk_bytes = be32(&b[8..12]) as u64;
        check_chunk_bytes(chunk_bytes, page_size).map_err(bad)?;
        let checksum = match b[12] {
            0 => Checksum::None,
            1 => Checksum::Xxh3,
            k => return Err(bad(format!("unknown checksum kind {k} (expected 0 or 1)"))),
        };
        let codec = match b[13] {
            1 => Codec::Raw,
            2 => Codec::Zstd,
            k => return Err(bad(format!("unknown codec {k} (expected 1 or 2)"))),
        };
        let level = b[14] as i8;
        if b[15] != 0 || b[24..32].iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes are not zero".into()));
        }
        let n = be64(&b[16..24]);
        let want = nchunks(used_length, chunk_bytes);
        if n != want {
            return Err(bad(format!(
                "{n} chunks recorded, expected {want} for length 0x{used_length:x} in chunks of {chunk_bytes}"
            )));
        }
        Ok(TableHeader {
            chunk_bytes,
            checksum,
            codec,
            level,
            nchunks: n,
        })
    }

    /// Guest bytes of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, used_length: u64, i: u64) -> u64 {
        (used_length - i * self.chunk_bytes).min(self.chunk_bytes)
    }
}

/// One chunk's entry, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// No page of the chunk is present; nothing stored.
    Empty,
    /// Pages at their own offsets; `sum` over the chunk with absent pages as zeros.
    Raw {
        /// xxh3-64 (0 without checksums).
        sum: u64,
    },
    /// `stored` bytes of one zstd frame at the slot's start.
    Zstd {
        /// Bytes of the frame (before padding).
        stored: u32,
        /// xxh3-64 of the uncompressed chunk (0 without checksums).
        sum: u64,
    },
}

impl Entry {
    /// Bytes at the slot's start that belong to this chunk's data.
    pub fn extent(&self, chunk_len: u64) -> u64 {
        match *self {
            Entry::Empty => 0,
            Entry::Raw { .. } => chunk_len,
            Entry::Zstd { stored, .. } => stored as u64,
        }
    }

    /// The recorded checksum (0 for an empty chunk).
    pub fn sum(&self) -> u64 {
        match *self {
            Entry::Empty => 0,
            Entry::Raw { sum } | Entry::Zstd { sum, .. } => sum,
        }
    }

    /// The 16 entry bytes.
    pub fn encode(&self) -> [u8; ENTRY_LEN as usize] {
        let mut e = [0u8; ENTRY_LEN as usize];
        let (codec, stored, sum) = match *self {
            Entry::Empty => (0u8, 0u32, 0u64),
            Entry::Raw { sum } => (1, 0, sum),
            Entry::Zstd { stored, sum } => (2, stored, sum),
        };
        e[0] = codec;
        e[4..8].copy_from_slice(&stored.to_be_bytes());
        e[8..16].copy_from_slice(&sum.to_be_bytes());
        e
    }
}

/// Where an entry came from: what its validation needs, and what its
/// messages name.
pub struct EntryAt<'a> {
    /// The block's idstr.
    pub idstr: &'a str,
    /// Chunk index.
    pub chunk: u64,
    /// File offset of the entry.
    pub at: u64,
    /// The table's chunk size.
    pub chunk_bytes: u64,
    /// Guest bytes of this chunk (the last may be short).
    pub chunk_len: u64,
    /// The table's checksum kind.
    pub checksum: Checksum,
}

/// Decode and validate one entry.
pub fn decode_entry(e: &[u8; ENTRY_LEN as usize], w: &EntryAt) -> Result<Entry> {
    let bad = |what: String| {
        Error::Corrupt(format!(
            "ramblock '{}': chunk {} (block offset 0x{:x}): table entry at file offset 0x{:x}: {what}",
            w.idstr,
            w.chunk,
            w.chunk * w.chunk_bytes,
            w.at
        ))
    };
    if e[1] != 0 || e[2] != 0 || e[3] != 0 {
        return Err(bad("reserved bytes are not zero".into()));
    }
    let stored = be32(&e[4..8]);
    let sum = be64(&e[8..16]);
    if w.checksum == Checksum::None && sum != 0 {
        return Err(bad(format!(
            "checksum 0x{sum:016x} recorded in a table without checksums"
        )));
    }
    match e[0] {
        0 => {
            if stored != 0 || sum != 0 {
                return Err(bad(format!(
                    "empty chunk with stored length {stored} and checksum 0x{sum:016x} (expected 0, 0)"
                )));
            }
            Ok(Entry::Empty)
        }
        1 => {
            if stored != 0 {
                return Err(bad(format!(
                    "raw chunk with stored length {stored} (expected 0)"
                )));
            }
            Ok(Entry::Raw { sum })
        }
        2 => {
            if stored == 0 || stored as u64 > w.chunk_len {
                return Err(bad(format!(
                    "zstd chunk with stored length {stored} (expected 1..={})",
                    w.chunk_len
                )));
            }
            Ok(Entry::Zstd { stored, sum })
        }
        k => Err(bad(format!("unknown codec {k} (expected 0, 1 or 2)"))),
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> TableHeader {
        TableHeader {
            chunk_bytes: 1 << 20,
            checksum: Checksum::Xxh3,
            codec: Codec::Zstd,
            level: -3,
            nchunks: 3,
        }
    }

    fn at(chunk_len: u64, checksum: Checksum) -> EntryAt<'static> {
        EntryAt {
            idstr: "mem",
            chunk: 2,
            at: 0x1234,
            chunk_bytes: 1 << 20,
            chunk_len,
            checksum,
        }
    }

    #[test]
    fn header_round_trip_and_rejects() {
        let len = (2 << 20) + 4096;
        let b = hdr().encode();
        assert_eq!(TableHeader::decode(&b, "mem", 0, len, 4096).unwrap(), hdr());
        let cases: Vec<(usize, u8, &str)> = vec![
            (0, b'X', "magic"),
            (9, 0x30, "chunk size"),
            (11, 1, "chunk size"),
            (12, 9, "checksum kind"),
            (13, 0, "codec"),
            (15, 1, "reserved"),
            (31, 1, "reserved"),
            (23, 4, "chunks recorded"),
        ];
        for (i, v, want) in cases {
            let mut c = b;
            c[i] = v;
            match TableHeader::decode(&c, "mem", 0x40, len, 4096) {
                Err(Error::Corrupt(m)) => {
                    assert!(m.contains(want), "{m}");
                    assert!(m.contains("'mem'") && m.contains("0x40"), "{m}");
                }
                other => panic!("byte {i}={v}: {other:?}"),
            }
        }
        let mut c = b;
        c[7] = 2;
        assert!(matches!(
            TableHeader::decode(&c, "mem", 0, len, 4096),
            Err(Error::Unsupported(_))
        ));
        assert!(TableHeader::decode(&b[..31], "mem", 0, len, 4096).is_err());
        // Chunk smaller than the page size.
        assert!(TableHeader::decode(&b, "mem", 0, 3 << 20, 2 << 20).is_err());
    }

    #[test]
    fn entries_round_trip_and_reject() {
        let w = at(1 << 20, Checksum::Xxh3);
        for e in [
            Entry::Empty,
            Entry::Raw { sum: 7 },
            Entry::Zstd {
                stored: 1000,
                sum: u64::MAX,
            },
        ] {
            assert_eq!(decode_entry(&e.encode(), &w).unwrap(), e);
        }
        let z = Entry::Zstd {
            stored: 1000,
            sum: 5,
        }
        .encode();
        let mut bad = Vec::new();
        for (i, v) in [(0usize, 3u8), (1, 1), (3, 1), (4, 0x7f)] {
            let mut c = z;
            c[i] = v;
            bad.push(c);
        }
        let mut c = z;
        c[4..8].copy_from_slice(&0u32.to_be_bytes());
        bad.push(c);
        let mut c = Entry::Empty.encode();
        c[15] = 1;
        bad.push(c);
        let mut c = Entry::Raw { sum: 1 }.encode();
        c[7] = 1;
        bad.push(c);
        for c in bad {
            match decode_entry(&c, &w) {
                Err(Error::Corrupt(m)) => {
                    assert!(m.contains("chunk 2") && m.contains("0x1234"), "{m}")
                }
                other => panic!("{c:?}: {other:?}"),
            }
        }
        // A checksum where none is kept.
        assert!(decode_entry(&Entry::Raw { sum: 1 }.encode(), &at(4096, Checksum::None)).is_err());
        // Stored longer than the (short, last) chunk.
        let z = Entry::Zstd {
            stored: 8192,
            sum: 0,
        }
        .encode();
        assert!(decode_entry(&z, &at(4096, Checksum::Xxh3)).is_err());
    }
}
