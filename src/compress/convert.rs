//! Converting whole images between plain and chunked forms (`mrtool
//! compress` / `expand`): the RAM goes through the codec, everything else
//! is kept verbatim — the bytes before the stream (a libvirt header and
//! its XML), the stream header (machine type, page size), the RAM section
//! id, every block's name and length, and the whole stream after the RAM
//! setup section (device state, the JSON description).

use super::chunked::with_scratch;
use super::layout;
use super::ImageOptions;
use crate::channel::{Channel, OpenFlags};
use crate::error::{Error, Result};
use crate::format::ramblock::{self, BlockSpec};
use crate::format::stream::{encode_header, Configuration};
use crate::format::{CAP_CHUNKS, CAP_MAPPED_RAM};
use crate::image::Image;
use crate::memory::GuestSliceMut;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Work unit of a conversion: 1 MiB of guest memory.
const UNIT: u64 = 1 << 20;

impl Image {
    /// Read `buf.len()` bytes of `block` at `offset` (page aligned), absent
    /// pages as zeros, verifying checksums of chunked blocks.
    pub fn read_range(&self, block: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let b = self.check_range(block, offset, buf.len() as u64)?;
        let ps = b.layout.page_size;
        if let Some(c) = self.chunked(block)? {
            let cb = c.t.hdr.chunk_bytes;
            let end = offset + buf.len() as u64;
            let mut i = offset / cb;
            while i * cb < end {
                let cs = i * cb;
                let ce = cs + c.t.chunk_len(&b.layout, i);
                let (a, z) = (offset.max(cs), end.min(ce));
                let _g = c.t.lock(i).read();
                with_scratch(c.t.scratch_len(&c.b.layout), |s| -> Result<()> {
                    self.load_chunk(&c, i, s)?;
                    buf[(a - offset) as usize..(z - offset) as usize]
                        .copy_from_slice(&s.data.as_slice()[(a - cs) as usize..(z - cs) as usize]);
                    Ok(())
                })?;
                i += 1;
            }
            return Ok(());
        }
        let first = offset / ps;
        let mut res = Ok(());
        b.bitmap
            .for_each_run(first, first + buf.len() as u64 / ps, |s, n, set| {
                let r = ((s - first) * ps) as usize..((s - first + n) * ps) as usize;
                if res.is_err() {
                    return;
                }
                if set {
                    res = self.load_pages(block, s, GuestSliceMut::from_mut_slice(&mut buf[r]));
                } else {
                    buf[r].fill(0);
                }
            });
        res
    }
}

/// Convert the complete image `src` into a new file `dst` (mode 0600) with
/// `opts` ([`ImageOptions::default`] = the plain QEMU layout), using
/// `threads` workers; `progress(done, total)` is called from the workers.
pub fn convert(
    src: &Image,
    dst: &Path,
    opts: &ImageOptions,
    threads: u32,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    if !src.is_complete() {
        return Err(Error::Incomplete(format!(
            "{}: the source image is not complete; only complete images are converted",
            src.channel().name()
        )));
    }
    let sl = src.layout();
    let (config, specs) = convertible(src)?;
    let ch = Arc::new(Channel::open(
        dst,
        OpenFlags::READ
            | OpenFlags::WRITE
            | OpenFlags::CREATE
            | OpenFlags::TRUNC
            | OpenFlags::DIRECT,
    )?);
    copy_bytes(src.channel(), &ch, 0, 0, sl.base)?;
    let out = Image::create_on_with(
        ch.clone(),
        sl.base,
        &config,
        sl.ram_section_id,
        &specs,
        opts,
    )?;
    copy_ram(src, &out, threads, progress)?;
    out.sync()?;
    // The rest of the stream, verbatim; the file is complete only once it
    // is written and synced.
    let from = sl.tail_offset();
    let to = out.layout().tail_offset();
    let len = src.channel().size()?.saturating_sub(from);
    copy_bytes(src.channel(), &ch, from, to, len)?;
    ch.set_len(to + len)?;
    ch.sync()?;
    out.close()
}

/// The configuration and blocks of `src` when converting it reproduces
/// every header byte: its stream header and RAM layout must be exactly what
/// this library (and QEMU) encode for them.
fn convertible(src: &Image) -> Result<(Configuration, Vec<BlockSpec>)> {
    let sl = src.layout();
    // The stream header must be what this library encodes for it, or the
    // conversion would not keep it (e.g. a configuration/uuid subsection).
    let mut hdr = vec![0u8; encode_header(&sl.config).len()];
    let n = src.channel().read_at(&mut hdr, sl.base)?;
    if n != hdr.len() || hdr != encode_header(&sl.config) {
        return Err(Error::Unsupported(format!(
            "{}: the stream header has parts this library does not reproduce (only machine type, target page size and capabilities)",
            src.channel().name()
        )));
    }
    let mut config = sl.config.clone();
    config.capabilities.retain(|c| c != CAP_CHUNKS);
    if config.capabilities != [CAP_MAPPED_RAM] {
        return Err(Error::Unsupported(format!(
            "{}: capabilities [{}] cannot be converted (only mapped-ram)",
            src.channel().name(),
            sl.config.capabilities.join(", ")
        )));
    }
    let specs: Vec<BlockSpec> = sl
        .blocks
        .iter()
        .map(|b| BlockSpec {
            idstr: b.idstr.clone(),
            used_length: b.used_length,
            page_size: b.page_size,
        })
        .collect();
    let canonical = match src.chunked(0)? {
        Some(c) => layout::plan(
            sl.base,
            &config,
            sl.ram_section_id,
            &specs,
            c.t.hdr.chunk_bytes,
        )?,
        None => ramblock::plan(sl.base, &config, sl.ram_section_id, &specs)?,
    };
    if canonical.blocks != sl.blocks || canonical.eos_offset != sl.eos_offset {
        return Err(Error::Unsupported(format!(
            "{}: the RAM layout differs from the one QEMU and this library write (a converted file could not reproduce it)",
            src.channel().name()
        )));
    }
    Ok((config, specs))
}

/// All blocks' pages from `src` to `dst`, in 1 MiB units on `threads`.
fn copy_ram(
    src: &Image,
    dst: &Image,
    threads: u32,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let units: Vec<(usize, u64, u64)> = src
        .layout()
        .blocks
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            (0..b.used_length.div_ceil(UNIT))
                .map(move |u| (i, u * UNIT, UNIT.min(b.used_length - u * UNIT)))
        })
        .collect();
    let total: u64 = units.iter().map(|u| u.2).sum();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let nthreads = crate::engine::effective_threads(threads, units.len() as u64);
    let err = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..nthreads {
            s.spawn(|| {
                let mut buf = vec![0u8; UNIT as usize];
                loop {
                    let k = next.fetch_add(1, Ordering::AcqRel) as usize;
                    if k >= units.len() || err.lock().is_some() {
                        break;
                    }
                    let (b, off, len) = units[k];
                    let buf = &mut buf[..len as usize];
                    let r = src
                        .read_range(b, off, buf)
                        .and_then(|_| dst.write_pages(b, off, buf));
                    if let Err(e) = r {
                        err.lock().get_or_insert(e);
                        break;
                    }
                    progress(done.fetch_add(len, Ordering::AcqRel) + len, total);
                }
            });
        }
    });
    match err.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copy `len` bytes at `from` of `a` to `to` of `b`.
fn copy_bytes(a: &Channel, b: &Channel, from: u64, to: u64, len: u64) -> Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        let got = a.read_at(&mut buf[..n], from + done)?;
        if got != n {
            return Err(Error::Corrupt(format!(
                "{}: truncated at offset 0x{:x}: expected {n} bytes, found {got}",
                a.name(),
                from + done
            )));
        }
        b.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}
