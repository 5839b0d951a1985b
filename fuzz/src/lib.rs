//! Shared pieces of the fuzz targets: the sparse-file input encoding and the
//! seed images.
//!
//! A valid mapped-ram image is at least 1 MiB (page regions start on 1 MiB
//! boundaries) and mostly holes, which a byte-level fuzzer handles badly.
//! So an input describes a sparse file: a sequence of
//! `[u32 le hole length][u16 le data length][data]` records, appended in
//! order (hole, then data). The file is capped at [`MAX_FILE`] bytes. An
//! input whose first byte is odd is instead taken verbatim (after that
//! byte) as the file, to fuzz small headers byte by byte.

use mappedram::compress::ImageOptions;
use mappedram::engine::read_ramblock_to_vec;
use mappedram::{BlockSpec, Channel, Image, ImageFlags, OpenFlags};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Largest file an input may describe.
pub const MAX_FILE: u64 = 24 << 20;

/// The file an input describes, as (offset, bytes) pieces and a size.
pub fn decode(data: &[u8]) -> (Vec<(u64, &[u8])>, u64) {
    let Some((&mode, rest)) = data.split_first() else {
        return (Vec::new(), 0);
    };
    if mode & 1 == 1 {
        return (vec![(0, rest)], rest.len() as u64);
    }
    let mut pieces = Vec::new();
    let mut pos = 0u64;
    let mut d = rest;
    while d.len() >= 6 {
        let hole = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as u64;
        let len = u16::from_le_bytes([d[4], d[5]]) as usize;
        d = &d[6..];
        let len = len.min(d.len());
        let at = pos.saturating_add(hole);
        if at.saturating_add(len as u64) > MAX_FILE {
            break;
        }
        pieces.push((at, &d[..len]));
        pos = at + len as u64;
        d = &d[len..];
    }
    (pieces, pos)
}

/// Encode a file's bytes as a sparse-mode input (runs of zero 4 KiB pages
/// become holes).
pub fn encode(file: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut pos = 0usize;
    let mut hole = 0u32;
    let page = 4096;
    while pos < file.len() {
        let end = (pos + page).min(file.len());
        let chunk = &file[pos..end];
        if chunk.iter().all(|&b| b == 0) && end - pos == page {
            hole += page as u32;
        } else {
            // Trim zero tails inside the chunk into the next hole? Keep it simple.
            for c in chunk.chunks(u16::MAX as usize) {
                out.extend_from_slice(&hole.to_le_bytes());
                out.extend_from_slice(&(c.len() as u16).to_le_bytes());
                out.extend_from_slice(c);
                hole = 0;
            }
        }
        pos = end;
    }
    if hole > 0 {
        out.extend_from_slice(&(hole - 1).to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.push(0);
    }
    out
}

/// An anonymous in-memory file with these contents.
pub fn memfd(pieces: &[(u64, &[u8])], size: u64) -> OwnedFd {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"mr-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our own descriptor.
    let r = unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) };
    assert_eq!(r, 0, "ftruncate: {}", std::io::Error::last_os_error());
    for (off, bytes) in pieces {
        // SAFETY: `bytes` is a live slice.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                *off as libc::off_t,
            )
        };
        assert_eq!(n, bytes.len() as isize, "pwrite to memfd");
    }
    fd
}

/// Open the file both ways and read everything an opened image offers.
/// Errors are fine; panics, hangs and huge allocations are the bugs.
pub fn exercise(fd: &OwnedFd) {
    for flags in [ImageFlags::default(), ImageFlags::RECOVER] {
        let Ok(ch) = Channel::from_fd(fd.as_raw_fd(), OpenFlags::READ) else {
            return;
        };
        let Ok(img) = Image::open_on(Arc::new(ch), None, flags) else {
            continue;
        };
        let _ = img.is_complete();
        let _ = img.capabilities();
        for b in 0..img.block_count() {
            let Ok(info) = img.block_info(b) else {
                continue;
            };
            // Chunked blocks: the table's figures (every entry decoded),
            // then both thread counts of the restore (one chunk per unit
            // with several workers), and pages in the first, a middle and
            // the last chunk.
            let _ = img.is_chunked(b);
            let _ = img.block_stats(b);
            let _ = read_ramblock_to_vec(&img, b, 1);
            let _ = read_ramblock_to_vec(&img, b, 2);
            let mut page = vec![0u8; info.page_size as usize];
            let last = info.used_length.saturating_sub(info.page_size);
            let mid = (info.used_length / 2) & !(info.page_size.max(1) - 1);
            for off in [0, info.page_size, mid, last] {
                let _ = img.read_page(b, off, &mut page);
            }
        }
        if let Ok(names) = img.blob_names() {
            for n in names {
                let _ = img.get_blob(&n);
            }
        }
        let _ = img.close();
    }
    rewrite(fd);
}

/// Open for writing and rewrite a page in place: on a chunked image that
/// loads, verifies and re-stores the page's chunk (read-modify-write of a
/// hostile frame), then writes the table and bitmap back.
fn rewrite(fd: &OwnedFd) {
    let Ok(ch) = Channel::from_fd(fd.as_raw_fd(), OpenFlags::READ | OpenFlags::WRITE) else {
        return;
    };
    let Ok(img) = Image::open_on(Arc::new(ch), None, ImageFlags::READ_WRITE) else {
        return;
    };
    for b in 0..img.block_count() {
        let Ok(info) = img.block_info(b) else {
            continue;
        };
        let page = vec![0x5au8; info.page_size as usize];
        let _ = img.write_page(b, info.page_size, &page);
        let mut back = vec![0u8; info.page_size as usize];
        let _ = img.read_page(b, info.page_size, &mut back);
    }
    let _ = img.sync();
    let _ = img.close();
}

/// Page `p` of block `b` of seed case `case`: what a real guest's memory
/// looks like to zstd (text-like pages, a few incompressible ones), so the
/// compressed seeds hold real frames with literals, sequences and Huffman
/// tables, and chunks that stay raw inside a zstd image.
fn seed_page(case: usize, b: usize, p: u64) -> Vec<u8> {
    if case < 3 {
        return vec![(p as u8) | 1; 4096];
    }
    let mut x = (b as u64) << 32 ^ p ^ 0x9e37_79b9_7f4a_7c15;
    if p % 5 == 4 {
        return (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
    }
    let text = format!("block {b} page {p}: Linux version 6.1 (debian) #1 SMP; ");
    text.bytes().cycle().take(4096).collect()
}

/// Valid images to start from (sparse-mode inputs).
pub fn seeds() -> Vec<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("mr-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    let shapes: [&[(&str, u64)]; 3] = [
        &[
            ("mem", 64 << 10),
            ("pc.bios", 16 << 10),
            ("/rom@etc/acpi/rsdp", 4096),
        ],
        &[("mem", 4096)],
        &[("a", 8192), ("b", 4096)],
    ];
    // Plain shapes, then the first shape compressed (zstd, 16 KiB chunks)
    // and with checksums only, so the chunk tables are fuzzed too.
    let plain = ImageOptions::default();
    let zstd = ImageOptions {
        chunk_bytes: 16 << 10,
        ..ImageOptions::zstd(1)
    };
    let sums = ImageOptions {
        checksums: true,
        chunk_bytes: 16 << 10,
        ..ImageOptions::default()
    };
    let cases = [
        (shapes[0], plain),
        (shapes[1], plain),
        (shapes[2], plain),
        (shapes[0], zstd),
        (shapes[0], sums),
        (shapes[2], zstd),
    ];
    for (i, (shape, opts)) in cases.iter().enumerate() {
        for finished in [true, false] {
            let path = dir.join(format!("seed-{i}-{finished}.img"));
            let specs: Vec<BlockSpec> = shape
                .iter()
                .map(|(n, l)| BlockSpec {
                    idstr: n.to_string(),
                    used_length: *l,
                    page_size: 4096,
                })
                .collect();
            let img =
                Image::create_with(&path, "pc-i440fx-10.0", &specs, ImageFlags::default(), opts)
                    .unwrap();
            for (b, s) in specs.iter().enumerate() {
                for p in (0..s.used_length / 4096).step_by(3) {
                    img.write_page(b, p * 4096, &seed_page(i, b, p)).unwrap();
                }
            }
            if finished {
                if i == 0 {
                    img.put_blob("vcpu0", &[0x5a; 300]).unwrap();
                    img.put_blob("dev/empty", &[]).unwrap();
                }
                img.finish().unwrap();
            }
            img.close().unwrap();
            out.push(encode(&std::fs::read(&path).unwrap()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_decode_to_images_that_open() {
        for (i, s) in seeds().iter().enumerate() {
            let (pieces, size) = decode(s);
            let fd = memfd(&pieces, size);
            let ch = Channel::from_fd(fd.as_raw_fd(), OpenFlags::READ).unwrap();
            let img = Image::open_on(Arc::new(ch), None, ImageFlags::RECOVER)
                .unwrap_or_else(|e| panic!("seed {i}: {e}"));
            assert_eq!(img.is_complete(), i % 2 == 0, "seed {i}");
            assert!(img.block_info(0).unwrap().pages_present > 0);
        }
    }
}
