//! The in-memory chunk table of one block, per-thread scratch buffers, and
//! reading the tables of an image being opened.

use super::codec::{Compressor, Decompressor};
use super::layout;
use super::table::{decode_entry, nchunks, Entry, EntryAt, TableHeader, ENTRY_LEN, HEADER_LEN};
use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::format::ramblock::BlockLayout;
use parking_lot::{Mutex, RwLock};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Stored zstd frames are padded to this: the file-system block (so the
/// rest of the slot can be a hole) and a multiple of every direct-I/O
/// alignment seen.
pub const PAD: u64 = 4096;
/// Chunk locks are striped: chunk `i` uses lock `i % STRIPES`.
const STRIPES: usize = 64;

/// One block's chunk table in memory: the raw entries (validated where
/// used), a dirty flag for `sync`, and the chunk locks (a read of a chunk
/// holds its lock shared, a rewrite exclusively, so nobody sees a chunk
/// whose data and entry disagree).
pub(crate) struct ChunkTable {
    pub(crate) hdr: TableHeader,
    /// File offset of the table header.
    pub(crate) offset: u64,
    entries: Mutex<Vec<[u8; ENTRY_LEN as usize]>>,
    dirty: AtomicBool,
    /// Bumped by every entry change: a chunk read ahead under its lock is
    /// still current when this has not moved (see `restore.rs`).
    generation: AtomicU64,
    locks: Vec<RwLock<()>>,
}

impl ChunkTable {
    /// A table of empty chunks (a new image).
    pub(crate) fn new_empty(hdr: TableHeader, offset: u64) -> ChunkTable {
        let e = Entry::Empty.encode();
        ChunkTable {
            hdr,
            offset,
            entries: Mutex::new(vec![e; hdr.nchunks as usize]),
            dirty: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Read and validate the table header of `l` and load its entries.
    /// The allocation is bounded by the gap between bitmap and pages, which
    /// the format layer checked against the file's size.
    pub(crate) fn read(ch: &Channel, l: &BlockLayout) -> Result<ChunkTable> {
        let at = layout::check_region(l, 0)?;
        let mut h = [0u8; HEADER_LEN as usize];
        let n = ch.read_at(&mut h, at)?;
        let hdr = TableHeader::decode(&h[..n], &l.idstr, at, l.used_length, l.page_size)?;
        layout::check_region(l, hdr.nchunks)?;
        debug_assert_eq!(hdr.nchunks, nchunks(l.used_length, hdr.chunk_bytes));
        let len = (hdr.nchunks * ENTRY_LEN) as usize;
        let mut raw = vec![0u8; len];
        let n = ch.read_at(&mut raw, at + HEADER_LEN)?;
        if n != len {
            return Err(Error::Corrupt(format!(
                "ramblock '{}': chunk table at offset 0x{at:x} truncated: expected {len} entry bytes, found {n}",
                l.idstr
            )));
        }
        let entries = raw
            .chunks_exact(ENTRY_LEN as usize)
            .map(|c| c.try_into().expect("16 bytes"))
            .collect();
        Ok(ChunkTable {
            hdr,
            offset: at,
            entries: Mutex::new(entries),
            dirty: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        })
    }

    /// Header + entries as they go to disk.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let e = self.entries.lock();
        let mut v = Vec::with_capacity(HEADER_LEN as usize + e.len() * ENTRY_LEN as usize);
        v.extend_from_slice(&self.hdr.encode());
        for x in e.iter() {
            v.extend_from_slice(x);
        }
        v
    }

    /// Clear the dirty flag; true if it was set.
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    pub(crate) fn lock(&self, chunk: u64) -> &RwLock<()> {
        &self.locks[(chunk % STRIPES as u64) as usize]
    }

    pub(crate) fn set(&self, chunk: u64, e: Entry) {
        self.entries.lock()[chunk as usize] = e.encode();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.mark_dirty();
    }

    /// The entry-change count (see the field).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Guest bytes of chunk `i` of block `l`.
    pub(crate) fn chunk_len(&self, l: &BlockLayout, i: u64) -> u64 {
        self.hdr.chunk_len(l.used_length, i)
    }

    /// Scratch bytes for one chunk of block `l`: the chunk size, or the
    /// block's length when that is smaller (so a table claiming 16 MiB
    /// chunks for a small block allocates no more than the file holds).
    pub(crate) fn scratch_len(&self, l: &BlockLayout) -> u64 {
        self.hdr.chunk_bytes.min(l.used_length)
    }

    /// File offset of entry `i`.
    pub(crate) fn entry_offset(&self, i: u64) -> u64 {
        self.offset + HEADER_LEN + i * ENTRY_LEN
    }

    /// Chunk `i`'s entry, validated.
    pub(crate) fn entry(&self, l: &BlockLayout, i: u64) -> Result<Entry> {
        let raw = self.entries.lock()[i as usize];
        decode_entry(
            &raw,
            &EntryAt {
                idstr: &l.idstr,
                chunk: i,
                at: self.entry_offset(i),
                chunk_bytes: self.hdr.chunk_bytes,
                chunk_len: self.chunk_len(l, i),
                checksum: self.hdr.checksum,
            },
        )
    }
}

/// A 4 KiB aligned byte buffer (for `O_DIRECT` without bouncing).
pub(crate) struct AlignedVec {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedVec {
    pub(crate) fn new(len: usize) -> AlignedVec {
        let v = vec![0u8; len + PAD as usize];
        let off = v.as_ptr().align_offset(PAD as usize);
        AlignedVec { v, off, len }
    }
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

/// Per-thread buffers and codec contexts for one chunk at a time.
pub(crate) struct Scratch {
    pub(crate) chunk_bytes: u64,
    /// Uncompressed chunk.
    pub(crate) data: AlignedVec,
    /// Stored (compressed, padded) chunk.
    pub(crate) comp: AlignedVec,
    pub(crate) cctx: Option<(i32, Compressor)>,
    pub(crate) dctx: Option<Decompressor>,
}

impl Scratch {
    fn new(chunk_bytes: u64) -> Scratch {
        Scratch {
            chunk_bytes,
            data: AlignedVec::new(chunk_bytes as usize),
            comp: AlignedVec::new(chunk_bytes as usize),
            cctx: None,
            dctx: None,
        }
    }
}

/// A scratch's compressor for `level` (created on first use).
pub(crate) fn compressor(
    cctx: &mut Option<(i32, Compressor)>,
    level: i32,
) -> Result<&mut Compressor> {
    if cctx.as_ref().is_none_or(|(l, _)| *l != level) {
        *cctx = Some((level, Compressor::new(level)?));
    }
    Ok(&mut cctx.as_mut().expect("just set").1)
}

/// A scratch's decompressor (created on first use).
pub(crate) fn decompressor(dctx: &mut Option<Decompressor>) -> Result<&mut Decompressor> {
    if dctx.is_none() {
        *dctx = Some(Decompressor::new()?);
    }
    Ok(dctx.as_mut().expect("just set"))
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Run `f` with this thread's scratch of `chunk_bytes` (kept between
/// calls; replaced when the size differs).
pub(crate) fn with_scratch<T>(chunk_bytes: u64, f: impl FnOnce(&mut Scratch) -> T) -> T {
    let mut s = SCRATCH
        .with(|c| c.borrow_mut().take())
        .filter(|s| s.chunk_bytes == chunk_bytes)
        .unwrap_or_else(|| Scratch::new(chunk_bytes));
    let r = f(&mut s);
    SCRATCH.with(|c| *c.borrow_mut() = Some(s));
    r
}
