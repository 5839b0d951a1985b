//! One chunk's slot: load (read, decompress, verify) and store (zero scan,
//! checksum, compress, write padded, free the rest of the slot).

use super::chunked::{compressor, decompressor, AlignedVec, ChunkTable, Scratch, PAD};
use super::codec::checksum;
use super::codec::Decompressor;
use super::restore::Verify;
use super::table::{Checksum, Codec, Entry};
use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::image::zero::is_zero;
use crate::image::{Block, Image};

/// Write all of `buf` at `off` (`O_DIRECT` when aligned).
fn pwrite(ch: &Channel, buf: &[u8], off: u64) -> Result<()> {
    let iov = [libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }];
    // SAFETY: `buf` is valid for reads of its length for the call.
    let n = unsafe { ch.pwritev_raw(&iov, off)? };
    if n != buf.len() as u64 {
        return Err(Error::from_errno(
            format!(
                "short write at offset 0x{off:x}: {n} of {} bytes",
                buf.len()
            ),
            libc::EIO,
        ));
    }
    Ok(())
}

/// Read up to `buf.len()` bytes at `off` (`O_DIRECT` when aligned).
fn pread(ch: &Channel, buf: &mut [u8], off: u64) -> Result<usize> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }];
    // SAFETY: `buf` is valid for writes of its length for the call.
    Ok(unsafe { ch.preadv_raw(&iov, off)? } as usize)
}

/// A block and its chunk table.
pub(crate) struct Chunked<'a> {
    pub(crate) b: &'a Block,
    pub(crate) t: &'a ChunkTable,
}

impl Chunked<'_> {
    /// File offset of chunk `i`'s slot.
    pub(super) fn slot(&self, i: u64) -> u64 {
        self.b.layout.pages_offset + i * self.t.hdr.chunk_bytes
    }

    /// "ramblock 'x': chunk i (block offset .., file offset ..)".
    pub(crate) fn name(&self, i: u64) -> String {
        format!(
            "ramblock '{}': chunk {i} (block offset 0x{:x}, file offset 0x{:x})",
            self.b.layout.idstr,
            i * self.t.hdr.chunk_bytes,
            self.slot(i)
        )
    }
}

/// Runs of pages (start, count, present) of chunk `i` per the bitmap.
fn runs(c: &Chunked, i: u64, clen: u64) -> Vec<(u64, u64, bool)> {
    let ps = c.b.layout.page_size;
    let first = i * c.t.hdr.chunk_bytes / ps;
    let mut v = Vec::new();
    c.b.bitmap
        .for_each_run(first, first + clen / ps, |s, n, set| {
            v.push((s - first, n, set))
        });
    v
}

impl Image {
    /// The chunk table of `block`, if the image is chunked.
    pub(crate) fn chunked(&self, block: usize) -> Result<Option<Chunked<'_>>> {
        let b = self.block(block)?;
        Ok(b.chunks.as_ref().map(|t| Chunked { b, t }))
    }

    /// Read exactly `buf.len()` bytes of chunk `i` at `off`.
    pub(super) fn read_exact_at(
        &self,
        c: &Chunked,
        i: u64,
        buf: &mut [u8],
        off: u64,
    ) -> Result<()> {
        let n = pread(self.channel(), buf, off).map_err(|e| {
            crate::image::context(e, &format!("{}: reading {} bytes", c.name(i), buf.len()))
        })?;
        if n != buf.len() {
            return Err(Error::Corrupt(format!(
                "{}: truncated: expected {} bytes at file offset 0x{off:x}, the file has {n}",
                c.name(i),
                buf.len()
            )));
        }
        Ok(())
    }

    /// Load chunk `i`'s uncompressed bytes (absent pages as zeros) into
    /// `s.data` and verify its checksum. The caller holds the chunk's lock.
    pub(crate) fn load_chunk(&self, c: &Chunked, i: u64, s: &mut Scratch) -> Result<()> {
        let clen = c.t.chunk_len(&c.b.layout, i) as usize;
        let Scratch {
            data, comp, dctx, ..
        } = s;
        self.load_chunk_into(c, i, &mut data.as_mut_slice()[..clen], comp, dctx)
    }

    /// As [`load_chunk`](Self::load_chunk), into `out` (the chunk's length).
    pub(crate) fn load_chunk_into(
        &self,
        c: &Chunked,
        i: u64,
        out: &mut [u8],
        comp: &mut AlignedVec,
        dctx: &mut Option<Decompressor>,
    ) -> Result<()> {
        let e = c.t.entry(&c.b.layout, i)?;
        self.fill_chunk(c, i, e, out, comp, dctx)?;
        let mut v = Verify::new(c, i, e);
        for (k, page) in out.chunks_exact(c.b.layout.page_size as usize).enumerate() {
            v.page(k as u64, page)?;
        }
        v.finish()
    }

    /// Chunk `i`'s uncompressed bytes (entry `e`; absent pages as zeros)
    /// into `out`, unverified: the caller runs a [`Verify`] pass.
    pub(super) fn fill_chunk(
        &self,
        c: &Chunked,
        i: u64,
        e: Entry,
        out: &mut [u8],
        comp: &mut AlignedVec,
        dctx: &mut Option<Decompressor>,
    ) -> Result<()> {
        let l = &c.b.layout;
        let clen = c.t.chunk_len(l, i);
        debug_assert_eq!(out.len() as u64, clen);
        let ps = l.page_size;
        match e {
            Entry::Empty => {
                if c.b
                    .bitmap
                    .any_in_range(i * c.t.hdr.chunk_bytes / ps, clen / ps)
                {
                    return Err(Error::Corrupt(format!(
                        "{}: the bitmap marks pages present but the chunk table (entry at 0x{:x}) says the chunk is empty",
                        c.name(i),
                        c.t.entry_offset(i)
                    )));
                }
                out.fill(0);
            }
            Entry::Raw { .. } => {
                for (p, n, set) in runs(c, i, clen) {
                    let r = (p * ps) as usize..((p + n) * ps) as usize;
                    if set {
                        self.read_exact_at(c, i, &mut out[r], c.slot(i) + p * ps)?;
                    } else {
                        out[r].fill(0);
                    }
                }
            }
            Entry::Zstd { stored, .. } => {
                let padded = (stored as u64).next_multiple_of(PAD).min(clen) as usize;
                self.read_exact_at(c, i, &mut comp.as_mut_slice()[..padded], c.slot(i))?;
                decompressor(dctx)?
                    .decompress(&comp.as_slice()[..stored as usize], out)
                    .map_err(|why| {
                        Error::Corrupt(format!(
                            "{}: {stored} stored bytes do not decompress to the chunk: {why}",
                            c.name(i)
                        ))
                    })?;
            }
        }
        Ok(())
    }

    /// Store chunk `i` from `s.data` (its full uncompressed bytes): zero
    /// pages get clear bits, the rest is compressed (or kept raw when that
    /// is not smaller), written at the slot's start padded to 4 KiB, and
    /// what the previous version occupied beyond it is freed. The entry and
    /// the bits change only after the write returned. The caller holds the
    /// chunk's lock exclusively. Returns the pages present.
    pub(crate) fn store_chunk(&self, c: &Chunked, i: u64, s: &mut Scratch) -> Result<u64> {
        let _gate = self.write_gate()?;
        let l = &c.b.layout;
        let ps = l.page_size;
        let clen = c.t.chunk_len(l, i);
        let npages = clen / ps;
        let first = i * c.t.hdr.chunk_bytes / ps;
        let data = &s.data.as_slice()[..clen as usize];
        let zero: Vec<bool> = data
            .chunks_exact(ps as usize)
            // SAFETY: each page is a valid slice of `ps` bytes.
            .map(|p| unsafe { is_zero(p.as_ptr(), p.len()) })
            .collect();
        let present = zero.iter().filter(|z| !**z).count() as u64;
        // What the previous version occupies (a damaged entry: the whole slot).
        let prev = c.t.entry(l, i).map(|e| e.extent(clen)).unwrap_or(clen);
        let prev = prev.next_multiple_of(PAD).min(clen);
        let sum = match c.t.hdr.checksum {
            Checksum::Xxh3 if present > 0 => checksum(data),
            _ => 0,
        };
        let res = self.write_chunk(c, i, s, &zero, present, prev, sum);
        let entry = match res {
            Ok(e) => e,
            Err(e) => {
                c.b.failed_errno
                    .store(e.errno(), std::sync::atomic::Ordering::Relaxed);
                c.b.failed.set_range(first, npages);
                return Err(e);
            }
        };
        c.b.failed.clear_range(first, npages);
        let mut p = 0;
        while p < npages {
            let z = zero[p as usize];
            let mut q = p + 1;
            while q < npages && zero[q as usize] == z {
                q += 1;
            }
            if z {
                c.b.bitmap.clear_range(first + p, q - p);
            } else {
                c.b.bitmap.set_range(first + p, q - p);
            }
            p = q;
        }
        c.t.set(i, entry);
        Ok(present)
    }

    /// The I/O of [`store_chunk`](Self::store_chunk); returns the new entry.
    #[allow(clippy::too_many_arguments)]
    fn write_chunk(
        &self,
        c: &Chunked,
        i: u64,
        s: &mut Scratch,
        zero: &[bool],
        present: u64,
        prev: u64,
        sum: u64,
    ) -> Result<Entry> {
        let l = &c.b.layout;
        let ps = l.page_size;
        let clen = c.t.chunk_len(l, i);
        let slot = c.slot(i);
        let punch = |from: u64, to: u64| -> Result<()> {
            if to <= from {
                return Ok(());
            }
            match self.channel().punch_hole(slot + from, to - from) {
                Ok(()) | Err(Error::Unsupported(_)) => Ok(()),
                Err(e) => Err(crate::image::context(e, &format!("{}: freeing", c.name(i)))),
            }
        };
        if present == 0 {
            punch(0, prev)?;
            return Ok(Entry::Empty);
        }
        if c.t.hdr.codec == Codec::Zstd {
            let level = c.t.hdr.level as i32;
            let n = compressor(&mut s.cctx, level)?
                .compress(&s.data.as_slice()[..clen as usize], s.comp.as_mut_slice());
            let comp = &mut s.comp;
            let fits = n.map(|n| (n as u64, (n as u64).next_multiple_of(PAD).min(clen)));
            if let Some((n, padded)) = fits.filter(|(_, p)| *p < present * ps) {
                comp.as_mut_slice()[n as usize..padded as usize].fill(0);
                pwrite(self.channel(), &comp.as_slice()[..padded as usize], slot)
                    .map_err(|e| crate::image::context(e, &format!("{}: writing", c.name(i))))?;
                punch(padded, prev)?;
                return Ok(Entry::Zstd {
                    stored: n as u32,
                    sum,
                });
            }
        }
        // Raw: present runs at their own offsets, absent runs freed.
        let data = s.data.as_slice();
        let mut p = 0usize;
        while p < zero.len() {
            let mut q = p + 1;
            while q < zero.len() && zero[q] == zero[p] {
                q += 1;
            }
            let (a, b) = (p as u64 * ps, q as u64 * ps);
            if zero[p] {
                punch(a, b.min(prev))?;
            } else {
                pwrite(self.channel(), &data[a as usize..b as usize], slot + a)
                    .map_err(|e| crate::image::context(e, &format!("{}: writing", c.name(i))))?;
            }
            p = q;
        }
        Ok(Entry::Raw { sum })
    }
}
