//! Bad input for the format layer: every structural mutation of a valid
//! image gets its own error (variant + errno + a message naming the thing),
//! every truncation errors, and random mutations never panic nor yield a
//! layout that breaks the invariants the image layer relies on.

mod common;

use common::Rng;
use mappedram::format::ramblock::{
    encode_pieces, parse, plan, BlockLayout, BlockSpec, StreamLayout,
};
use mappedram::format::stream::{
    completion, completion_json, encode_header, encode_tail, Completion, Configuration,
};
use mappedram::format::{ReadAt, CAP_MAPPED_RAM, CAP_X_IGNORE_SHARED, MAX_RAMBLOCKS};
use mappedram::Error;

const PS: u64 = 4096;

fn config() -> Configuration {
    Configuration {
        machine_type: "pc-i440fx-10.0".into(),
        capabilities: vec![CAP_MAPPED_RAM.into()],
        target_page_bits: None,
    }
}

fn spec(idstr: &str, pages: u64) -> BlockSpec {
    BlockSpec {
        idstr: idstr.into(),
        used_length: pages * PS,
        page_size: PS,
    }
}

/// A valid finished image: "big" (16 pages), "one" (a one-page block),
/// "mid" (70 pages: a two-word bitmap), RAM section id 2.
fn valid() -> (StreamLayout, Vec<u8>) {
    let l = plan(
        0,
        &config(),
        2,
        &[spec("big", 16), spec("one", 1), spec("mid", 70)],
    )
    .unwrap();
    let mut img = vec![0u8; l.tail_offset() as usize];
    for (off, bytes) in encode_pieces(&l) {
        let off = off as usize;
        img.resize(img.len().max(off + bytes.len()), 0);
        img[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    // Some page data and bitmap bits, as a real image would have.
    for b in &l.blocks {
        img[b.bitmap_offset as usize] = 1;
        img[b.pages_offset as usize..b.pages_offset as usize + 16].fill(0xa5);
    }
    img.truncate(l.tail_offset() as usize);
    img.extend_from_slice(&encode_tail(2, &completion_json(PS, "pc-i440fx-10.0", 3)));
    (l, img)
}

/// A compact valid image: 1 KiB pages (target-page-bits 10), so the page
/// regions are small (page regions still start on 1 MiB boundaries, as
/// QEMU's writer places them; the file is ~3 MiB, mostly zeros). Blocks:
/// "big" (3 pages), "one" (1 page), "mid" (65 pages: a two-word bitmap).
fn compact() -> (StreamLayout, Vec<u8>) {
    let config = Configuration {
        target_page_bits: Some(10),
        ..config()
    };
    let mut pos = encode_header(&config).len() as u64 + 17 + 8;
    let mut blocks = Vec::new();
    for (idstr, pages) in [("big", 3u64), ("one", 1), ("mid", 65)] {
        let header_offset = pos;
        let bitmap_offset = pos + 1 + idstr.len() as u64 + 8 + 28;
        let bitmap_len = pages.div_ceil(64) * 8;
        let pages_offset = (bitmap_offset + bitmap_len).div_ceil(1 << 20) << 20;
        pos = pages_offset + pages * 1024;
        blocks.push(BlockLayout {
            idstr: idstr.into(),
            used_length: pages * 1024,
            page_size: 1024,
            addr: None,
            header_version: 1,
            header_offset,
            bitmap_offset,
            bitmap_len,
            pages_offset,
        });
    }
    let l = StreamLayout {
        base: 0,
        config,
        ram_section_id: 2,
        blocks,
        eos_offset: pos,
    };
    let mut img = vec![0u8; l.tail_offset() as usize];
    for (off, bytes) in encode_pieces(&l) {
        let off = off as usize;
        img.resize(img.len().max(off + bytes.len()), 0);
        img[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    for b in &l.blocks {
        img[b.bitmap_offset as usize] = 1;
        img[b.pages_offset as usize..b.pages_offset as usize + 16].fill(0xa5);
    }
    img.truncate(l.tail_offset() as usize);
    img.extend_from_slice(&encode_tail(2, &completion_json(1024, "pc-i440fx-10.0", 3)));
    assert_eq!(parse(&img, 0).unwrap(), l);
    (l, img)
}

/// A sparse input: metadata pieces (sorted, disjoint) over zeros.
struct Sparse {
    pieces: Vec<(u64, Vec<u8>)>,
    size: u64,
}

impl ReadAt for Sparse {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> mappedram::Result<usize> {
        let n = buf.len().min(self.size.saturating_sub(offset) as usize);
        buf[..n].fill(0);
        let end = offset + n as u64;
        let first = self
            .pieces
            .partition_point(|(o, b)| o + b.len() as u64 <= offset);
        for (o, b) in &self.pieces[first..] {
            if *o >= end {
                break;
            }
            let from = offset.max(*o);
            let to = end.min(o + b.len() as u64);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&b[(from - o) as usize..(to - o) as usize]);
        }
        Ok(n)
    }
    fn size(&self) -> mappedram::Result<u64> {
        Ok(self.size)
    }
}

fn put64(img: &mut [u8], off: u64, v: u64) {
    img[off as usize..off as usize + 8].copy_from_slice(&v.to_be_bytes());
}

fn put32(img: &mut [u8], off: u64, v: u32) {
    img[off as usize..off as usize + 4].copy_from_slice(&v.to_be_bytes());
}

/// Offsets inside block `i`'s header.
struct H {
    len: u64,
    used: u64,
    version: u64,
    page_size: u64,
    bitmap: u64,
    pages: u64,
    end: u64,
}

fn h(l: &StreamLayout, i: usize) -> H {
    let b = &l.blocks[i];
    let used = b.header_offset + 1 + b.idstr.len() as u64;
    H {
        len: b.header_offset,
        used,
        version: used + 8,
        page_size: used + 12,
        bitmap: used + 20,
        pages: used + 28,
        end: used + 36,
    }
}

fn header_len() -> u64 {
    encode_header(&config()).len() as u64
}

/// Offset of the RAM START section and of the be64 total.
fn start_off() -> u64 {
    header_len()
}
fn total_off() -> u64 {
    header_len() + 17
}

#[track_caller]
fn expect_corrupt(img: &[u8], needles: &[&str]) -> String {
    expect(img, libc::EBADMSG, needles)
}

#[track_caller]
fn expect_unsupported(img: &[u8], needles: &[&str]) -> String {
    expect(img, libc::ENOTSUP, needles)
}

#[track_caller]
fn expect(img: &[u8], errno: i32, needles: &[&str]) -> String {
    let e = match parse(&img, 0) {
        Ok(l) => panic!("expected an error containing {needles:?}, parsed {l:?}"),
        Err(e) => e,
    };
    assert_eq!(e.errno(), errno, "wrong errno for: {e}");
    match (&e, errno) {
        (Error::Corrupt(_), libc::EBADMSG) | (Error::Unsupported(_), libc::ENOTSUP) => {}
        _ => panic!("wrong variant: {e:?}"),
    }
    let m = e.to_string();
    for n in needles {
        assert!(m.contains(n), "message {m:?} lacks {n:?}");
    }
    m
}

#[test]
fn the_valid_image_parses_and_is_complete() {
    let (l, img) = valid();
    assert_eq!(parse(&img, 0).unwrap(), l);
    assert!(matches!(
        completion(&img, l.setup_end()).unwrap(),
        Completion::Complete { ours: true, .. }
    ));
}

#[test]
fn stream_header_errors() {
    let (_, img) = valid();
    let mut m = img.clone();
    m[0] = b'X';
    expect_corrupt(&m, &["magic", "offset 0", "0x5845564d", "0x5145564d"]);
    let mut m = img.clone();
    put32(&mut m, 4, 4);
    expect_unsupported(&m, &["version 4", "expected 3"]);
    let mut m = img.clone();
    m[8] = 0x01;
    expect_unsupported(&m, &["no configuration", "offset 8"]);
    // An unknown subsection, named.
    let mut m = img[..27].to_vec();
    m.extend_from_slice(b"\x05\x12configuration/zzz\0\0\0\x01");
    m.extend_from_slice(&img[27..]);
    expect_unsupported(&m, &["configuration/zzz", "offset 27"]);
}

#[test]
fn missing_mapped_ram_capability() {
    let (_, img) = valid();
    // Drop the capabilities subsection entirely, then with a count of 0.
    let sub = header_len() as usize - 27;
    let mut m = img[..27].to_vec();
    m.extend_from_slice(&img[27 + sub..]);
    expect_unsupported(&m, &["not a mapped-ram file", "mapped-ram"]);
    let mut m = img[..27].to_vec();
    m.extend_from_slice(b"\x05\x1aconfiguration/capabilities\0\0\0\x01\0\0\0\0");
    m.extend_from_slice(&img[27 + sub..]);
    expect_unsupported(&m, &["not a mapped-ram file"]);
}

#[test]
fn ram_section_errors() {
    let (_, img) = valid();
    let s = start_off();
    let mut m = img.clone();
    put32(&mut m, s + 13, 3);
    expect_unsupported(&m, &["RAM section", "version 3", "expected 4"]);
    let mut m = img.clone();
    put32(&mut m, s + 9, 1);
    expect_corrupt(&m, &["instance id 1"]);
    let mut m = img.clone();
    m[s as usize] = 0x03;
    expect_corrupt(
        &m,
        &["expected the RAM section start", &format!("offset {s}")],
    );
    // A device section before the RAM section.
    let mut m = img[..s as usize].to_vec();
    m.extend_from_slice(b"\x04\0\0\0\x07\x05timer\0\0\0\0\0\0\0\x02");
    m.extend_from_slice(&img[s as usize..]);
    expect_unsupported(&m, &["'timer'", "before the RAM section"]);
    // Other flags than MEM_SIZE on the total.
    let t = total_off();
    let total = 87 * PS;
    for flags in [0u64, 0x10, 0x6, 0x8] {
        let mut m = img.clone();
        put64(&mut m, t, total | flags);
        expect_corrupt(&m, &["MEM_SIZE", &format!("offset {t}")]);
    }
    // A total larger than the file.
    let mut m = img.clone();
    put64(&mut m, t, (1 << 50) | 4);
    expect_corrupt(&m, &["larger than the file"]);
}

#[test]
fn ramblock_length_errors() {
    let (l, img) = valid();
    let t = total_off();
    // Overshoot: the total covers only "big" + one page.
    let mut m = img.clone();
    put64(&mut m, t, (18 * PS) | 4);
    expect_corrupt(&m, &["'mid'", "past the announced 0x12000"]);
    // Undershoot: the parser looks for a fourth block where the EOS is.
    let mut m = img.clone();
    put64(&mut m, t, (88 * PS) | 4);
    expect_corrupt(&m, &["empty idstr", &format!("offset {}", l.eos_offset)]);
    for (v, what) in [(0, "0x0"), (PS + 1, "0x1001")] {
        let mut m = img.clone();
        put64(&mut m, h(&l, 1).used, v);
        expect_corrupt(&m, &["'one'", what, "multiple of the page size"]);
    }
    let mut m = img.clone();
    m[h(&l, 1).len as usize] = 0;
    expect_corrupt(&m, &["empty idstr", &format!("offset {}", h(&l, 1).len)]);
    // Duplicate idstr: "mid" renamed "big".
    let mut m = img.clone();
    let o = h(&l, 2).len as usize + 1;
    m[o..o + 3].copy_from_slice(b"big");
    expect_corrupt(&m, &["'big'", "twice"]);
}

#[test]
fn mapped_ram_header_errors() {
    let (l, img) = valid();
    let o = h(&l, 1);
    let mut m = img.clone();
    put32(&mut m, o.version, 0);
    expect_corrupt(&m, &["'one'", "version 0"]);
    let mut m = img.clone();
    put32(&mut m, o.version, 2);
    expect_unsupported(&m, &["'one'", "version 2"]);
    for ps in [0u64, 3000, 8192, 1024] {
        let mut m = img.clone();
        put64(&mut m, o.page_size, ps);
        expect_corrupt(&m, &["'one'", &format!("page size {ps}"), "4096"]);
    }
    // Every bitmap_offset but the one right after the mapped-ram header:
    // inside the header, into the padding, into the pages, overflowing,
    // pointing back into an earlier block.
    let b1 = &l.blocks[1];
    for bad in [
        o.end - 1,
        o.end + 8,
        b1.pages_offset - 4,
        u64::MAX - 3,
        l.blocks[0].pages_offset,
        0,
    ] {
        let mut m = img.clone();
        put64(&mut m, o.bitmap, bad);
        expect_corrupt(
            &m,
            &[
                "'one'",
                "bitmap_offset",
                &format!("expected 0x{:x}", o.end),
                &format!("found 0x{bad:x}"),
            ],
        );
    }
    // Every pages_offset but the bitmap end rounded up to 1 MiB: not page
    // aligned, page aligned only, the next 1 MiB boundary, overflowing.
    for bad in [
        b1.pages_offset + 512,
        b1.pages_offset + PS,
        b1.pages_offset + (1 << 20),
        b1.pages_offset - PS,
        u64::MAX - (PS - 1),
        0,
    ] {
        let mut m = img.clone();
        put64(&mut m, o.pages, bad);
        expect_corrupt(
            &m,
            &[
                "'one'",
                "pages_offset",
                &format!("expected 0x{:x}", b1.pages_offset),
                &format!("found 0x{bad:x}"),
            ],
        );
    }
    // Pages past the end of the file (last block).
    let (l3, img3) = valid();
    let last = l3.blocks.len() - 1;
    let cut = (l3.blocks[last].pages_offset + 4096) as usize;
    expect_corrupt(&img3[..cut], &["'mid'", "past the end of the file"]);
}

/// Issue: a one-byte flip of a block's `bitmap_offset` so it points into the
/// padding used to open as complete (and restore zeros). Every single-byte
/// change of any block's bitmap_offset or pages_offset is now `EBADMSG`.
#[test]
fn every_one_byte_flip_of_a_region_offset_is_corrupt() {
    let (l, img) = valid();
    for i in 0..l.blocks.len() {
        let o = h(&l, i);
        for field in [o.bitmap, o.pages] {
            for byte in field..field + 8 {
                for bit in 0..8 {
                    let mut m = img.clone();
                    m[byte as usize] ^= 1 << bit;
                    let name = if field == o.bitmap {
                        "bitmap_offset"
                    } else {
                        "pages_offset"
                    };
                    expect_corrupt(
                        &m,
                        &[
                            &format!("'{}'", l.blocks[i].idstr),
                            name,
                            "expected",
                            "found",
                        ],
                    );
                }
            }
        }
    }
}

#[test]
fn end_of_setup_errors() {
    let (l, img) = valid();
    let e = l.eos_offset;
    for v in [0u64, 0x14, 0x4, 0x10 << 8] {
        let mut m = img.clone();
        put64(&mut m, e, v);
        expect_corrupt(&m, &["expected EOS", &format!("offset {e}")]);
    }
    let mut m = img.clone();
    m[e as usize + 8] = 0x7f;
    expect_corrupt(&m, &["footer", &format!("offset {}", e + 8)]);
    let mut m = img.clone();
    put32(&mut m, e + 9, 1);
    expect_corrupt(&m, &["footer", "id 2", "found type 0x7e id 1"]);
}

#[test]
fn too_many_ramblocks() {
    // 1 KiB pages so each block is small: header, bitmap, one page.
    let cfg = Configuration {
        target_page_bits: Some(10),
        ..config()
    };
    let n = MAX_RAMBLOCKS + 1;
    // Each block takes 1 MiB + 1 KiB (its pages start on a 1 MiB boundary),
    // so the ~16 GiB file is built sparse: its metadata pieces over zeros.
    let mut head = encode_header(&cfg);
    head.extend_from_slice(b"\x01\0\0\0\x01\x03ram\0\0\0\0\0\0\0\x04");
    head.extend_from_slice(&((n as u64 * 1024) | 4).to_be_bytes());
    let mut img = Sparse {
        pieces: Vec::new(),
        size: 0,
    };
    let mut pos = 0u64;
    let mut piece = head;
    for i in 0..n {
        let id = format!("b{i:05}");
        piece.push(id.len() as u8);
        piece.extend_from_slice(id.as_bytes());
        piece.extend_from_slice(&1024u64.to_be_bytes());
        let bitmap = pos + piece.len() as u64 + 28;
        let pages = (bitmap + 8).div_ceil(1 << 20) << 20;
        piece.extend_from_slice(&1u32.to_be_bytes());
        piece.extend_from_slice(&1024u64.to_be_bytes());
        piece.extend_from_slice(&bitmap.to_be_bytes());
        piece.extend_from_slice(&pages.to_be_bytes());
        img.pieces.push((pos, std::mem::take(&mut piece)));
        pos = pages + 1024;
    }
    piece.extend_from_slice(&0x10u64.to_be_bytes());
    piece.extend_from_slice(b"\x7e\0\0\0\x01");
    img.size = pos + piece.len() as u64;
    img.pieces.push((pos, piece));
    match parse(&img, 0) {
        Err(Error::Corrupt(m)) => assert!(
            m.contains(&format!("more than {MAX_RAMBLOCKS} ramblocks")),
            "{m}"
        ),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // One block fewer parses.
    let m = {
        let mut c = cfg.clone();
        c.target_page_bits = Some(10);
        let specs: Vec<BlockSpec> = (0..3)
            .map(|i| BlockSpec {
                idstr: format!("b{i}"),
                used_length: 1024,
                page_size: 1024,
            })
            .collect();
        plan(0, &c, 1, &specs).unwrap()
    };
    assert_eq!(m.blocks.len(), 3);
}

fn expect_truncated(img: &[u8], n: usize, after: u64) {
    let prefix = &img[..n];
    match parse(&prefix, 0) {
        Err(Error::Corrupt(m)) => {
            assert!(
                m.contains("truncated at offset")
                    || m.contains("larger than the file")
                    || m.contains("past the end of the file"),
                "{n}: {m}"
            )
        }
        other => panic!("prefix {n}: expected Corrupt, got {other:?}"),
    }
    // A cut stream is never complete.
    assert!(matches!(
        completion(&prefix, after).unwrap(),
        Completion::Incomplete(_)
    ));
}

/// Every prefix of the compact image through the setup footer fails to
/// parse with a Corrupt error (never a panic); past the footer, every
/// prefix short of the whole file parses but is not complete. Inside the
/// zero padding before each page region only every 509th prefix is tried
/// (plus the 64 around each boundary): the padding is ~1 MiB per block.
#[test]
fn every_truncation_errors() {
    let (l, img) = compact();
    let end = l.setup_end() as usize;
    let in_padding = |n: usize| {
        l.blocks.iter().any(|b| {
            let pad = (b.bitmap_offset + b.bitmap_len) as usize + 64..b.pages_offset as usize - 64;
            pad.contains(&n) && n % 509 != 0
        })
    };
    for n in (0..end).filter(|&n| !in_padding(n)) {
        expect_truncated(&img, n, l.setup_end());
    }
    for n in end..img.len() {
        assert_eq!(parse(&&img[..n], 0).unwrap(), l);
        assert!(matches!(
            completion(&&img[..n], l.setup_end()).unwrap(),
            Completion::Incomplete(_)
        ));
    }
    assert!(matches!(
        completion(&img, l.setup_end()).unwrap(),
        Completion::Complete { ours: true, .. }
    ));
}

/// The same for the 1 MiB aligned image, at every prefix in and around the
/// metadata (headers, bitmaps, EOS, footer) and a sample of the page data.
#[test]
fn truncation_around_every_boundary_of_an_aligned_image() {
    let (l, img) = valid();
    let mut cuts: Vec<usize> = (0..l.blocks[0].bitmap_offset as usize + 64).collect();
    for b in &l.blocks {
        let h = b.header_offset as usize;
        let p = b.pages_offset as usize;
        cuts.extend(h.saturating_sub(64)..(b.bitmap_offset + b.bitmap_len) as usize + 64);
        cuts.extend(p - 64..p + 64);
        cuts.extend((p..b.end() as usize).step_by(4093));
    }
    cuts.extend(l.eos_offset as usize - 64..l.setup_end() as usize);
    cuts.sort_unstable();
    cuts.dedup();
    for n in cuts {
        expect_truncated(&img, n, l.setup_end());
    }
}

// ---------------------------------------------------------------------------
// Deterministic mutation fuzzing.

/// A mutated view of an image without copying it: the original's byte
/// ranges and new bytes, in order (the compact image is ~3 MiB, mostly the
/// padding before 1 MiB aligned page regions; copying it per mutation
/// would dominate the run time).
struct Edited<'a> {
    base: &'a [u8],
    segs: Vec<Seg>,
}

enum Seg {
    Orig(usize, usize),
    New(Vec<u8>),
}

impl Seg {
    fn len(&self) -> usize {
        match self {
            Seg::Orig(a, b) => b - a,
            Seg::New(v) => v.len(),
        }
    }
}

impl<'a> Edited<'a> {
    fn new(base: &'a [u8]) -> Self {
        Edited {
            base,
            segs: vec![Seg::Orig(0, base.len())],
        }
    }

    fn len(&self) -> usize {
        self.segs.iter().map(Seg::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn byte(&self, o: usize) -> u8 {
        let mut b = [0u8];
        assert_eq!(self.read_at(&mut b, o as u64).unwrap(), 1);
        b[0]
    }

    /// Index of the segment starting at `o`, splitting one if needed.
    fn cut(&mut self, o: usize) -> usize {
        let mut pos = 0;
        for i in 0..self.segs.len() {
            let l = self.segs[i].len();
            if o == pos {
                return i;
            }
            if o < pos + l {
                let k = o - pos;
                let (first, second) = match &self.segs[i] {
                    Seg::Orig(a, b) => (Seg::Orig(*a, a + k), Seg::Orig(a + k, *b)),
                    Seg::New(v) => (Seg::New(v[..k].to_vec()), Seg::New(v[k..].to_vec())),
                };
                self.segs[i] = first;
                self.segs.insert(i + 1, second);
                return i + 1;
            }
            pos += l;
        }
        self.segs.len()
    }

    /// Replace `del` bytes at `o` with `ins`.
    fn splice(&mut self, o: usize, del: usize, ins: &[u8]) {
        let i = self.cut(o);
        let j = self.cut(o + del);
        self.segs.splice(i..j, [Seg::New(ins.to_vec())]);
    }
}

impl ReadAt for Edited<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> mappedram::Result<usize> {
        let mut pos = 0u64;
        let mut done = 0usize;
        for s in &self.segs {
            let l = s.len() as u64;
            let want = offset + done as u64;
            if done < buf.len() && want < pos + l {
                let k = (want - pos) as usize;
                let bytes = match s {
                    Seg::Orig(a, b) => &self.base[a + k..*b],
                    Seg::New(v) => &v[k..],
                };
                let n = bytes.len().min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&bytes[..n]);
                done += n;
            }
            pos += l;
        }
        Ok(done)
    }
    fn size(&self) -> mappedram::Result<u64> {
        Ok(self.len() as u64)
    }
}

fn check_invariants(l: &StreamLayout, size: u64) {
    let mut prev_end = 0;
    let mut total = 0u64;
    for (i, b) in l.blocks.iter().enumerate() {
        let ps = b.page_size;
        assert!(ps.is_power_of_two());
        assert!(b.used_length > 0 && b.used_length % ps == 0, "{b:?}");
        assert!(
            b.header_offset >= prev_end,
            "{b:?} overlaps block {}",
            i.wrapping_sub(1)
        );
        let hdr_end =
            b.header_offset + 1 + b.idstr.len() as u64 + 8 + 28 + 8 * b.addr.is_some() as u64;
        assert!(b.bitmap_offset >= hdr_end, "{b:?}");
        assert_eq!(b.bitmap_len, b.pages().div_ceil(64) * 8);
        assert!(b.bitmap_offset + b.bitmap_len <= b.pages_offset, "{b:?}");
        assert_eq!(b.pages_offset % ps, 0, "{b:?}");
        assert!(b.end() <= size, "{b:?} past {size}");
        assert!(!l.blocks[..i].iter().any(|o| o.idstr == b.idstr));
        prev_end = b.end();
        total += b.used_length;
    }
    assert!(!l.blocks.is_empty() && total > 0);
    assert!(l.eos_offset >= prev_end && l.setup_end() <= size);
}

#[test]
fn mutation_fuzz_never_panics_nor_accepts_broken_layouts() {
    let (l, img) = compact();
    // Offsets worth hitting: the stream header + first block header, the
    // other block headers, the EOS and the tail; anywhere 1 time in 8.
    let mut hot: Vec<(usize, usize)> = vec![(
        0,
        (l.blocks[0].bitmap_offset + l.blocks[0].bitmap_len) as usize,
    )];
    for b in &l.blocks[1..] {
        hot.push((
            b.header_offset as usize,
            (b.bitmap_offset + b.bitmap_len) as usize,
        ));
    }
    hot.push((l.eos_offset as usize, img.len()));
    let mut rng = Rng::raw(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut complete) = (0, 0);
    for iter in 0..20_000u32 {
        let mut m = Edited::new(&img);
        for _ in 0..1 + rng.below(4) {
            if m.is_empty() {
                break;
            }
            let o = if rng.below(8) == 0 {
                rng.below(m.len() as u64) as usize
            } else {
                let (a, b) = hot[rng.below(hot.len() as u64) as usize];
                (a + rng.below((b - a) as u64) as usize).min(m.len() - 1)
            };
            match rng.below(10) {
                0..=3 => {
                    let b = m.byte(o) ^ (1 + rng.below(255)) as u8;
                    m.splice(o, 1, &[b]);
                }
                4 => {
                    let v = [0, 1, 4, 0x10, 1024, u64::MAX, 1 << 63, m.len() as u64]
                        [rng.below(8) as usize];
                    let k = 8.min(m.len() - o);
                    m.splice(o, k, &v.to_be_bytes()[..k]);
                }
                5 | 6 => {
                    let k = 1 + rng.below(8) as usize;
                    let bytes: Vec<u8> = (0..k).map(|_| rng.next() as u8).collect();
                    m.splice(o, 0, &bytes);
                }
                7 | 8 => {
                    let k = (1 + rng.below(8) as usize).min(m.len() - o);
                    m.splice(o, k, &[]);
                }
                _ => {
                    let n = rng.below(m.len() as u64 + 1) as usize;
                    m.splice(n, m.len() - n, &[]);
                }
            }
        }
        if let Ok(parsed) = parse(&m, 0) {
            accepted += 1;
            check_invariants(&parsed, m.len() as u64);
            if let Completion::Complete {
                vmdesc_offset,
                json_len,
                ..
            } = completion(&m, parsed.setup_end()).unwrap()
            {
                complete += 1;
                assert!(vmdesc_offset >= parsed.setup_end());
                assert_eq!(vmdesc_offset + 6 + json_len as u64, m.len() as u64);
            }
        }
        // Completion detection must not panic from any starting point.
        let after = rng.below(m.len() as u64 + 1);
        if let Err(e) = completion(&m, after) {
            panic!("{iter}: completion errored: {e}");
        }
    }
    // Mutations in page data, bitmaps or device data are harmless: some
    // images must still parse, and some of those still be complete.
    assert!(accepted > 0 && complete > 0, "{accepted} {complete}");
}

/// A stream QEMU 11 writes with `x-ignore-shared`: "shared" was skipped
/// (its header records `bitmap_offset = pages_offset = 0`, and the next
/// header follows its mapped-ram header directly); "ram" and "rom" are in
/// the file. Returns the layout and the bytes through the setup footer.
fn ignore_shared_image(skipped: &[&str]) -> (StreamLayout, Vec<u8>) {
    let config = Configuration {
        capabilities: vec![CAP_X_IGNORE_SHARED.into(), CAP_MAPPED_RAM.into()],
        ..config()
    };
    let l = common::ignore_shared::layout(config, skipped);
    let mut img = vec![0u8; l.setup_end() as usize];
    for (off, bytes) in encode_pieces(&l) {
        img[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
    }
    (l, img)
}

#[test]
fn x_ignore_shared_skipped_blocks_parse_as_not_in_the_file() {
    for skipped in [&["shared"][..], &["ram"], &["rom"], &["ram", "rom"], &[]] {
        let (l, img) = ignore_shared_image(skipped);
        let parsed = parse(&img, 0).unwrap();
        assert_eq!(parsed, l, "skipped {skipped:?}");
        for b in &parsed.blocks {
            let skip = skipped.contains(&b.idstr.as_str());
            assert_eq!(b.present_in_file(), !skip, "{}", b.idstr);
            if skip {
                assert_eq!((b.bitmap_offset, b.bitmap_len, b.pages_offset), (0, 0, 0));
                assert_eq!(b.end(), b.header_end());
            }
        }
        assert_eq!(parsed.total(), (16 + 32 + 2) * PS);
    }
    // Only one of the two offsets zero is not the skipped form: corrupt.
    let (l, img) = ignore_shared_image(&[]);
    let b = &l.blocks[1];
    let at = b.header_end() - 16;
    let mut m = img.clone();
    put64(&mut m, at, 0);
    expect_corrupt(&m, &["'shared'", "bitmap_offset", "found 0x0"]);
    let mut m = img.clone();
    put64(&mut m, at + 8, 0);
    expect_corrupt(&m, &["'shared'", "pages_offset", "found 0x0"]);
    // Without x-ignore-shared there is no skipped form: zero offsets are
    // corrupt (the block has no address field then).
    let (l, img) = valid();
    let o = h(&l, 1);
    let mut m = img.clone();
    put64(&mut m, o.bitmap, 0);
    put64(&mut m, o.pages, 0);
    expect_corrupt(&m, &["'one'", "bitmap_offset", "found 0x0"]);
}

/// The fuzzer's edited view reads exactly like the same edits on a copy.
#[test]
fn edited_view_matches_a_copy() {
    let base: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut rng = Rng::raw(42);
    for _ in 0..300 {
        let mut copy = base.clone();
        let mut view = Edited::new(&base);
        for _ in 0..1 + rng.below(6) {
            let o = rng.below(copy.len() as u64 + 1) as usize;
            let del = (rng.below(20) as usize).min(copy.len() - o);
            let ins: Vec<u8> = (0..rng.below(12)).map(|_| rng.next() as u8).collect();
            copy.splice(o..o + del, ins.iter().copied());
            view.splice(o, del, &ins);
        }
        assert_eq!(view.len(), copy.len());
        let mut all = vec![0u8; copy.len() + 10];
        assert_eq!(view.read_at(&mut all, 0).unwrap(), copy.len());
        assert_eq!(&all[..copy.len()], &copy[..]);
        let at = rng.below(copy.len() as u64 + 1) as usize;
        let mut part = vec![0u8; 37];
        let n = view.read_at(&mut part, at as u64).unwrap();
        assert_eq!(&part[..n], &copy[at..(at + 37).min(copy.len())]);
    }
}
