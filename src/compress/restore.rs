//! Restoring chunks into guest memory, the fast way.
//!
//! - A zstd chunk whose whole guest range is to be written (the caller zeroes
//!   absent pages, or every page of the chunk is present) is decompressed
//!   straight into guest memory through its pointer (no scratch chunk, no
//!   copy); one pass then reads it back page by page (from the cache it was
//!   just written to) into a page buffer, checks each page against its
//!   bitmap bit and feeds the checksum. If that fails, the chunk's guest
//!   range is zeroed before the error is returned, so unverified bytes never
//!   stay in guest memory.
//! - Any other chunk (raw, or zstd with absent pages the caller wants left
//!   alone) is loaded into the worker's scratch chunk, and one pass checks
//!   each page, feeds the checksum and copies the page out; nothing reaches
//!   the guest before the chunk verified.
//! - With `O_DIRECT`, a reader thread per unit reads the next chunks'
//!   frames while the worker decompresses, so I/O and decompression overlap.
//!   A frame read ahead is used only if the table did not change since it
//!   was read (its generation, checked under the chunk's lock); otherwise it
//!   is read again.

use super::chunked::{decompressor, with_scratch, AlignedVec, Scratch, PAD};
use super::codec::Decompressor;
use super::slot::Chunked;
use super::table::{Checksum, Entry};
use crate::engine::Stats;
use crate::error::{Error, Result};
use crate::image::zero::is_zero;
use crate::image::Image;
use crate::memory::GuestSliceMut;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use xxhash_rust::xxh3::Xxh3Default;

/// Frames a unit's reader may hold ahead of its worker.
const AHEAD: usize = 2;

/// A zstd frame read ahead under its chunk's lock.
struct Frame {
    chunk: u64,
    /// The table generation when it was read.
    generation: u64,
    /// The entry's stored length; `None` when nothing usable was read (not
    /// a zstd entry, or the read failed: the worker reads it again and
    /// reports what is wrong).
    stored: Option<u32>,
    buf: AlignedVec,
}

thread_local! {
    /// Frame buffers of this worker thread, kept between units.
    static POOL: RefCell<Vec<AlignedVec>> = const { RefCell::new(Vec::new()) };
}

fn pool_take(len: usize) -> AlignedVec {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        match p.iter().position(|b| b.as_slice().len() == len) {
            Some(k) => p.swap_remove(k),
            None => AlignedVec::new(len),
        }
    })
}

fn pool_put(b: AlignedVec) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < AHEAD {
            p.push(b);
        }
    });
}

/// Restore `chunks` of `c` into `mem` (the whole block), adding to `st`.
pub(crate) fn restore_unit(
    img: &Image,
    c: &Chunked,
    mem: &GuestSliceMut<'_>,
    zero_absent: bool,
    chunks: Range<u64>,
    st: &mut Stats,
) -> Result<()> {
    let ahead = chunks.end - chunks.start > 1 && img.channel().dio_align().is_some();
    if !ahead {
        return chunks
            .into_iter()
            .try_for_each(|i| restore_chunk(img, c, mem, zero_absent, i, None, st));
    }
    let len = c.t.scratch_len(&c.b.layout) as usize;
    let (free_tx, free_rx) = mpsc::channel::<AlignedVec>();
    let (full_tx, full_rx) = mpsc::channel::<Frame>();
    for _ in 0..AHEAD {
        free_tx.send(pool_take(len)).expect("receiver alive");
    }
    let stop = AtomicBool::new(false);
    let first = chunks.start;
    let later = first + 1..chunks.end;
    std::thread::scope(|s| {
        let reader = std::thread::Builder::new().spawn_scoped(s, || {
            for i in later {
                let Ok(buf) = free_rx.recv() else { break };
                let f = read_ahead(img, c, i, buf);
                if stop.load(Ordering::Acquire) || full_tx.send(f).is_err() {
                    break;
                }
            }
            drop(full_tx);
            free_rx
        });
        let res = (|| {
            for i in chunks {
                // The first chunk (and every chunk when no reader thread
                // could be started) is read by the worker itself.
                let f = match reader.is_ok() && i != first {
                    true => full_rx.recv().ok(),
                    false => None,
                };
                let r = restore_chunk(img, c, mem, zero_absent, i, f.as_ref(), st);
                if let Some(f) = f {
                    let _ = free_tx.send(f.buf);
                }
                r?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Release);
        drop(free_tx);
        if let Ok(h) = reader {
            if let Ok(rx) = h.join() {
                rx.try_iter().for_each(pool_put);
            }
        }
        full_rx.try_iter().for_each(|f| pool_put(f.buf));
        res
    })
}

/// Read chunk `i`'s frame into `buf` under the chunk's lock.
fn read_ahead(img: &Image, c: &Chunked, i: u64, mut buf: AlignedVec) -> Frame {
    let l = &c.b.layout;
    let _g = c.t.lock(i).read();
    let generation = c.t.generation();
    let stored = match c.t.entry(l, i) {
        Ok(Entry::Zstd { stored, .. }) => {
            let clen = c.t.chunk_len(l, i);
            let padded = (stored as u64).next_multiple_of(PAD).min(clen) as usize;
            img.read_exact_at(c, i, &mut buf.as_mut_slice()[..padded], c.slot(i))
                .ok()
                .map(|_| stored)
        }
        _ => None,
    };
    Frame {
        chunk: i,
        generation,
        stored,
        buf,
    }
}

/// Restore chunk `i` into its range of `mem` (see the module docs).
fn restore_chunk(
    img: &Image,
    c: &Chunked,
    mem: &GuestSliceMut<'_>,
    zero_absent: bool,
    i: u64,
    ahead: Option<&Frame>,
    st: &mut Stats,
) -> Result<()> {
    let l = &c.b.layout;
    let ps = l.page_size;
    let cb = c.t.hdr.chunk_bytes;
    let clen = c.t.chunk_len(l, i);
    let (fp, np) = (i * cb / ps, clen / ps);
    st.pages_scanned += np;
    // Units partition the chunks, so no two workers write one byte.
    let dst = mem.subslice((i * cb) as usize, clen as usize)?;
    let _g = c.t.lock(i).read();
    let e = c.t.entry(l, i)?;
    let mut present = 0;
    c.b.bitmap.for_each_run(fp, fp + np, |_, n, set| {
        if set {
            present += n
        }
    });
    if e == Entry::Empty && present == 0 {
        if zero_absent {
            dst.zero();
        }
        st.pages_zero += np;
        return Ok(());
    }
    st.pages_data += present;
    st.pages_zero += np - present;
    st.bytes += present * ps;
    with_scratch(c.t.scratch_len(l), |s| match e {
        Entry::Zstd { stored, .. } if zero_absent || present == np => {
            restore_in_place(img, c, i, e, stored, &dst, ahead, s)
        }
        _ => restore_via_scratch(img, c, i, e, &dst, zero_absent, s),
    })
}

/// Chunk `i` whose whole range is written: its frame (read ahead, or read
/// now) decompressed straight into `dst`; `dst` is zeroed again when it
/// does not verify.
#[allow(clippy::too_many_arguments)]
fn restore_in_place(
    img: &Image,
    c: &Chunked,
    i: u64,
    e: Entry,
    stored: u32,
    dst: &GuestSliceMut<'_>,
    ahead: Option<&Frame>,
    s: &mut Scratch,
) -> Result<()> {
    let clen = c.t.chunk_len(&c.b.layout, i);
    let Scratch {
        data, comp, dctx, ..
    } = s;
    let gen = c.t.generation();
    let frame = match ahead {
        Some(f) if f.chunk == i && f.generation == gen && f.stored == Some(stored) => {
            &f.buf.as_slice()[..stored as usize]
        }
        _ => {
            let padded = (stored as u64).next_multiple_of(PAD).min(clen) as usize;
            img.read_exact_at(c, i, &mut comp.as_mut_slice()[..padded], c.slot(i))?;
            &comp.as_slice()[..stored as usize]
        }
    };
    let res = decompress_in_place(c, i, e, frame, dst, data, dctx);
    if res.is_err() {
        dst.zero();
    }
    res
}

/// Chunk `i` through the scratch chunk: decoded there, then each page
/// checked and copied out (present pages, or all with `zero_absent`); the
/// pages written are zeroed again when the chunk does not verify.
fn restore_via_scratch(
    img: &Image,
    c: &Chunked,
    i: u64,
    e: Entry,
    dst: &GuestSliceMut<'_>,
    zero_absent: bool,
    s: &mut Scratch,
) -> Result<()> {
    let l = &c.b.layout;
    let ps = l.page_size;
    let clen = c.t.chunk_len(l, i);
    let (fp, np) = (i * c.t.hdr.chunk_bytes / ps, clen / ps);
    img.fill_chunk(
        c,
        i,
        e,
        &mut s.data.as_mut_slice()[..clen as usize],
        &mut s.comp,
        &mut s.dctx,
    )?;
    let data = &s.data.as_slice()[..clen as usize];
    let mut v = Verify::new(c, i, e);
    let res = data
        .chunks_exact(ps as usize)
        .enumerate()
        .try_for_each(|(k, page)| {
            if v.page(k as u64, page)? || zero_absent {
                dst.subslice(k * ps as usize, ps as usize)?.copy_from(page);
            }
            Ok(())
        })
        .and_then(|_| v.finish());
    if res.is_err() {
        // Pages went out before the checksum was complete: take back every
        // page this chunk's restore writes.
        for k in (0..np).filter(|&k| zero_absent || c.b.bitmap.test(fp + k)) {
            dst.subslice((k * ps) as usize, ps as usize)?.zero();
        }
    }
    res
}

/// Decompress `frame` straight into `dst` (chunk `i`'s guest range), then
/// verify it in one pass through a page buffer.
fn decompress_in_place(
    c: &Chunked,
    i: u64,
    e: Entry,
    frame: &[u8],
    dst: &GuestSliceMut<'_>,
    data: &mut AlignedVec,
    dctx: &mut Option<Decompressor>,
) -> Result<()> {
    // SAFETY: `dst` is valid for reads and writes of its length (the
    // `GuestSliceMut` contract) and is the range of chunk `i`, which no
    // other worker of this restore touches (units partition the chunks);
    // `frame` is a library buffer, so they do not overlap. zstd accesses
    // `dst` only through the pointer; no Rust reference to it is formed.
    let r = unsafe { decompressor(dctx)?.decompress_raw(frame, dst.as_mut_ptr(), dst.len()) };
    r.map_err(|why| {
        Error::Corrupt(format!(
            "{}: {} stored bytes do not decompress to the chunk: {why}",
            c.name(i),
            frame.len()
        ))
    })?;
    let ps = c.b.layout.page_size as usize;
    let buf = &mut data.as_mut_slice()[..ps];
    let mut v = Verify::new(c, i, e);
    let src = dst.as_read();
    for k in 0..dst.len() / ps {
        src.subslice(k * ps, ps)?.copy_to(buf);
        v.page(k as u64, buf)?;
    }
    v.finish()
}

/// One pass of verification over a chunk's uncompressed pages, in order:
/// for a zstd chunk each page must agree with its bitmap bit (a bitmap and
/// a table from different moments are caught, not read as zero pages);
/// with checksums, the pages feed the xxh3-64 the entry records (an empty
/// chunk records none: its pages are zero by the bitmap).
pub(crate) struct Verify<'a, 'c> {
    c: &'a Chunked<'c>,
    chunk: u64,
    entry: Entry,
    first: u64,
    hasher: Option<Xxh3Default>,
}

impl<'a, 'c> Verify<'a, 'c> {
    pub(crate) fn new(c: &'a Chunked<'c>, chunk: u64, entry: Entry) -> Self {
        let ps = c.b.layout.page_size;
        Verify {
            c,
            chunk,
            entry,
            first: chunk * c.t.hdr.chunk_bytes / ps,
            hasher: (c.t.hdr.checksum == Checksum::Xxh3 && entry != Entry::Empty)
                .then(Xxh3Default::new),
        }
    }

    /// Page `k` of the chunk; returns its bitmap bit.
    pub(crate) fn page(&mut self, k: u64, page: &[u8]) -> Result<bool> {
        let p = self.first + k;
        let set = self.c.b.bitmap.test(p);
        if let Entry::Zstd { .. } = self.entry {
            // SAFETY: `page` is a valid slice of its length.
            let nonzero = !unsafe { is_zero(page.as_ptr(), page.len()) };
            if nonzero != set {
                return Err(Error::Corrupt(format!(
                    "{}: page {p} (block offset 0x{:x}) is {} in the chunk but its bitmap bit is {}: bitmap and chunk table are from different moments (torn update)",
                    self.c.name(self.chunk),
                    p * self.c.b.layout.page_size,
                    if nonzero { "data" } else { "zero" },
                    if nonzero { "clear" } else { "set" }
                )));
            }
        }
        if let Some(h) = &mut self.hasher {
            h.update(page);
        }
        Ok(set)
    }

    /// The checksum, once every page went through [`page`](Self::page).
    pub(crate) fn finish(self) -> Result<()> {
        let Some(h) = self.hasher else { return Ok(()) };
        let got = h.digest();
        if got != self.entry.sum() {
            return Err(Error::Corrupt(format!(
                "{}: checksum mismatch: the table (entry at 0x{:x}) says 0x{:016x}, the data hashes to 0x{got:016x}",
                self.c.name(self.chunk),
                self.c.t.entry_offset(self.chunk),
                self.entry.sum()
            )));
        }
        Ok(())
    }
}
