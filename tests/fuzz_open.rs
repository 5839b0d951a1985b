//! Hostile input, in the normal test suite: a deterministic, bounded
//! mutation fuzz of a small valid image. Each iteration applies a few
//! mutations (bit flips, byte sets, big-endian overwrites of header fields
//! with extreme values, truncation, extension, insertion and deletion in the
//! header region) and opens the result with and without RECOVER. It must
//! never panic, never make an allocation larger than the file (+ 1 MiB),
//! and when it opens, every block read and page read must succeed or fail
//! with an error.
//!
//! The long-running, coverage-guided counterpart is the cargo-fuzz target
//! in fuzz/ (scripts/fuzz.sh).

mod common;

use common::*;
use mappedram::compress::ImageOptions;
use mappedram::engine::read_ramblock_to_vec;
use mappedram::{BlockSpec, Channel, Error, Image, ImageFlags, OpenFlags};
use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records the largest single allocation while `TRACK` is set.
struct Counting;

static TRACK: AtomicBool = AtomicBool::new(false);
static MAX_SINGLE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only
// records sizes in atomics (which do not allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            MAX_SINGLE.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            MAX_SINGLE.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            MAX_SINGLE.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this binary measure allocations globally: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const ITERATIONS: usize = 30_000;
const TIME_BUDGET: Duration = Duration::from_secs(8);

/// A sparse file: data pieces at offsets, and a size (holes read as zero).
#[derive(Clone, Debug)]
struct Sparse {
    pieces: Vec<(u64, Vec<u8>)>,
    size: u64,
}

impl Sparse {
    fn from_bytes(b: &[u8]) -> Sparse {
        let mut pieces: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, page) in b.chunks(PS as usize).enumerate() {
            if page.iter().all(|&x| x == 0) {
                continue;
            }
            let off = i as u64 * PS;
            match pieces.last_mut() {
                Some((o, d)) if *o + d.len() as u64 == off => d.extend_from_slice(page),
                _ => pieces.push((off, page.to_vec())),
            }
        }
        Sparse {
            pieces,
            size: b.len() as u64,
        }
    }

    fn memfd(&self) -> OwnedFd {
        // SAFETY: memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"mr-fuzz-open".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own descriptor.
        let r = unsafe { libc::ftruncate(fd.as_raw_fd(), self.size as libc::off_t) };
        assert_eq!(r, 0);
        for (off, d) in &self.pieces {
            let d = &d[..d.len().min(self.size.saturating_sub(*off) as usize)];
            if d.is_empty() {
                continue;
            }
            // SAFETY: `d` is a live slice of d.len() bytes.
            let n = unsafe {
                libc::pwrite(
                    fd.as_raw_fd(),
                    d.as_ptr().cast(),
                    d.len(),
                    *off as libc::off_t,
                )
            };
            assert_eq!(n, d.len() as isize);
        }
        fd
    }

    /// Bytes at `off` (`n` of them), as far as a piece holds them.
    fn write_at(&mut self, off: u64, bytes: &[u8]) {
        for (k, &b) in bytes.iter().enumerate() {
            let at = off + k as u64;
            if let Some((o, d)) = self
                .pieces
                .iter_mut()
                .find(|(o, d)| at >= *o && at < *o + d.len() as u64)
            {
                d[(at - *o) as usize] = b;
            } else if at < self.size {
                self.pieces.push((at, vec![b]));
            }
        }
    }
}

/// Offsets of the header fields worth hitting with extreme values: the
/// RAM total, each block's used_length and mapped-ram header fields, the
/// EOS, the completion record's length.
fn field_offsets(img: &Image, size: u64) -> Vec<(u64, usize)> {
    let l = img.layout();
    let mut v = Vec::new();
    for b in &l.blocks {
        let h = b.bitmap_offset - 28;
        v.push((h - 8, 8)); // used_length
        v.push((h, 4)); // version
        v.push((h + 4, 8)); // page_size
        v.push((h + 12, 8)); // bitmap_offset
        v.push((h + 20, 8)); // pages_offset
        v.push((b.header_offset, 1)); // idstr length
    }
    v.push((l.eos_offset, 8));
    // Chunk tables (compressed / checksummed images): chunk size, count,
    // and the first entries' stored length and checksum.
    for (i, b) in l.blocks.iter().enumerate() {
        if img.is_chunked(i).unwrap_or(false) {
            let t = b.bitmap_offset + b.bitmap_len;
            v.push((t + 8, 4));
            v.push((t + 16, 8));
            for e in 0..2 {
                v.push((t + 32 + e * 16 + 4, 4));
                v.push((t + 32 + e * 16 + 8, 8));
            }
        }
    }
    if let Some(first) = l.blocks.first() {
        v.push((first.header_offset - 8, 8)); // RAM total
    }
    // Last bytes: VMDESCRIPTION length and the JSON.
    v.push((size.saturating_sub(64), 4));
    v
}

/// Page `p` of block `b`: every fourth random, the rest text-like, so a
/// compressed image holds both zstd frames and raw chunks.
fn mixed_page(b: usize, p: u64, out: &mut [u8]) {
    if p % 4 == 3 {
        page_content(1, b, p, 0, out);
        return;
    }
    let text = format!("ramblock {b} page {p}: guest text, compressible. ");
    for (k, x) in out.iter_mut().enumerate() {
        *x = text.as_bytes()[k % text.len()];
    }
}

fn base_image(opts: &ImageOptions) -> (Vec<u8>, Vec<(u64, usize)>) {
    let dir = TmpDir::in_memory("fuzz-open");
    let path = dir.join("base.img");
    let specs = [
        ("mem", 64 << 10),
        ("pc.bios", 16 << 10),
        ("/rom@etc/acpi/rsdp", PS),
    ]
    .map(|(n, l)| BlockSpec {
        idstr: n.into(),
        used_length: l,
        page_size: PS,
    });
    let img =
        Image::create_with(&path, "pc-i440fx-10.0", &specs, ImageFlags::default(), opts).unwrap();
    let mut page = vec![0u8; PS as usize];
    for (b, s) in specs.iter().enumerate() {
        for p in (0..s.used_length / PS).filter(|p| p % 3 != 1) {
            mixed_page(b, p, &mut page);
            img.write_page(b, p * PS, &page).unwrap();
        }
    }
    // Named blobs: the fuzzer reaches the blob section's parser too.
    img.put_blob("vcpu0", &[0x5a; 300]).unwrap();
    img.put_blob("dev/empty", &[]).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    let fields = field_offsets(&img, bytes.len() as u64);
    (bytes, fields)
}

#[derive(Default, Debug)]
struct Stats {
    iterations: usize,
    opened_complete: usize,
    opened_recover_only: usize,
    refused: std::collections::BTreeMap<&'static str, usize>,
    read_errors: usize,
    max_alloc_over_size: i64,
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "io",
        Error::Corrupt(_) => "corrupt",
        Error::Unsupported(_) => "unsupported",
        Error::NotFound(_) => "not-found",
        Error::OutOfRange(_) => "out-of-range",
        Error::Invalid(_) => "invalid",
        Error::Incomplete(_) => "incomplete",
        Error::Cancelled(_) => "cancelled",
        Error::ReadOnly(_) => "read-only",
    }
}

/// Open both ways and read everything; counts into `st`.
fn exercise(f: &Sparse, st: &mut Stats) {
    let fd = f.memfd();
    for flags in [ImageFlags::default(), ImageFlags::RECOVER] {
        let ch = Channel::from_fd(fd.as_raw_fd(), OpenFlags::READ).unwrap();
        let img = match Image::open_on(Arc::new(ch), None, flags) {
            Ok(img) => img,
            Err(e) => {
                if flags == ImageFlags::default() {
                    *st.refused.entry(kind(&e)).or_default() += 1;
                }
                continue;
            }
        };
        if flags == ImageFlags::default() {
            st.opened_complete += 1;
        } else if !img.is_complete() {
            st.opened_recover_only += 1;
        }
        for b in 0..img.block_count() {
            let info = img.block_info(b).unwrap();
            assert!(
                info.pages_offset.saturating_add(info.used_length) <= f.size,
                "block {b} reaches past the file: {info:?}, size {}",
                f.size
            );
            // The whole-block read (worker threads) once per input: the
            // RECOVER pass opens whenever the plain one does.
            if flags == ImageFlags::RECOVER && read_ramblock_to_vec(&img, b, 1).is_err() {
                st.read_errors += 1;
            }
            let mut page = vec![0u8; info.page_size as usize];
            for off in [0, info.used_length.saturating_sub(info.page_size)] {
                if img.read_page(b, off, &mut page).is_err() {
                    st.read_errors += 1;
                }
            }
        }
        // Every blob, checksum verified (a mismatch is an error, never data).
        if let Ok(names) = img.blob_names() {
            for n in names {
                if img.get_blob(&n).is_err() {
                    st.read_errors += 1;
                }
            }
        }
        let _ = img.close();
    }
}

const EXTREMES: [u64; 12] = [
    0,
    1,
    u64::MAX,
    u64::MAX - 1,
    i64::MAX as u64,
    1 << 63,
    1 << 20,
    4096,
    0xffff_ffff,
    0x1_0000_0000,
    28,
    0x8b,
];

fn mutate(f: &mut Sparse, fields: &[(u64, usize)], r: &mut Rng) -> String {
    let size = f.size;
    let header_len = f.pieces[0].1.len() as u64;
    // Most mutations hit the header piece (offset 0), the rest anywhere.
    let pick_off = |r: &mut Rng, f: &Sparse| -> u64 {
        match r.below(4) {
            0..=1 => r.below(header_len),
            2 => {
                let (o, d) = &f.pieces[r.below(f.pieces.len() as u64) as usize];
                o + r.below(d.len().max(1) as u64)
            }
            _ => r.below(size.max(1)),
        }
    };
    match r.below(9) {
        0 | 1 => {
            let off = pick_off(r, f);
            let bit = r.below(8);
            let mut b = [0u8];
            if let Some((o, d)) = f
                .pieces
                .iter()
                .find(|(o, d)| off >= *o && off < o + d.len() as u64)
            {
                b[0] = d[(off - o) as usize];
            }
            b[0] ^= 1 << bit;
            f.write_at(off, &b);
            format!("flip bit {bit} at {off}")
        }
        2 => {
            let off = pick_off(r, f);
            let v = [0u8, 0xff, 0x7f, 0x80, r.next() as u8][r.below(5) as usize];
            f.write_at(off, &[v]);
            format!("set byte {off} = 0x{v:02x}")
        }
        3 | 4 => {
            let (off, width) = if r.below(3) > 0 {
                fields[r.below(fields.len() as u64) as usize]
            } else {
                (pick_off(r, f), [1usize, 4, 8][r.below(3) as usize])
            };
            let v = match r.below(6) {
                0 => size,
                1 => size.wrapping_sub(1 + r.below(4096)),
                2 => size + 1 + r.below(1 << 20),
                3 => r.next(),
                _ => EXTREMES[r.below(EXTREMES.len() as u64) as usize],
            };
            let be = v.to_be_bytes();
            f.write_at(off, &be[8 - width..]);
            format!("be{} at {off} = 0x{v:x}", width * 8)
        }
        5 => {
            let new = match r.below(3) {
                0 => r.below(header_len + 64),
                1 => size.saturating_sub(1 + r.below(256)),
                _ => r.below(size.max(1)),
            };
            f.size = new;
            format!("truncate to {new}")
        }
        6 => {
            let add = 1 + r.below(3 << 20);
            f.size += add;
            format!("extend by {add}")
        }
        7 => {
            let at = r.below(header_len) as usize;
            let n = 1 + r.below(16) as usize;
            let ins: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
            f.pieces[0].1.splice(at..at, ins);
            for p in f.pieces.iter_mut().skip(1) {
                p.0 += n as u64;
            }
            f.size += n as u64;
            format!("insert {n} bytes at {at}")
        }
        _ => {
            let at = r.below(header_len) as usize;
            let n = (1 + r.below(16) as usize).min(f.pieces[0].1.len() - at);
            f.pieces[0].1.drain(at..at + n);
            for p in f.pieces.iter_mut().skip(1) {
                p.0 -= n as u64;
            }
            f.size = f.size.saturating_sub(n as u64);
            format!("delete {n} bytes at {at}")
        }
    }
}

#[test]
fn mutated_images_never_panic_or_allocate_absurdly() {
    fuzz(&ImageOptions::default());
}

/// The same over compressed images (zstd chunks with checksums, 64 KiB
/// chunks so the small blocks have several) and plain images with the
/// checksum table: the table header and entries are untrusted input too.
#[test]
fn mutated_chunked_images_never_panic_or_allocate_absurdly() {
    fuzz(&ImageOptions {
        chunk_bytes: 64 << 10,
        ..ImageOptions::zstd(1)
    });
    fuzz(&ImageOptions {
        checksums: true,
        chunk_bytes: 16 << 10,
        ..ImageOptions::default()
    });
}

fn fuzz(opts: &ImageOptions) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (bytes, fields) = base_image(opts);
    let base = Sparse::from_bytes(&bytes);
    assert_eq!(base.pieces[0].0, 0);
    // Sanity: the base opens complete.
    {
        let mut st = Stats::default();
        exercise(&base, &mut st);
        assert_eq!(st.opened_complete, 1, "{st:?}");
        assert_eq!(st.read_errors, 0);
    }
    let seed = std::env::var("MR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0f0f_1234u64);
    println!("MR_FUZZ_SEED={seed}");
    let mut r = Rng::new(seed);
    let mut st = Stats::default();
    let t0 = Instant::now();
    while st.iterations < ITERATIONS && t0.elapsed() < TIME_BUDGET {
        let mut f = base.clone();
        let mut what = Vec::new();
        for _ in 0..1 + r.below(3) {
            what.push(mutate(&mut f, &fields, &mut r));
        }
        MAX_SINGLE.store(0, Ordering::SeqCst);
        TRACK.store(true, Ordering::SeqCst);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exercise(&f, &mut st)));
        TRACK.store(false, Ordering::SeqCst);
        let max = MAX_SINGLE.load(Ordering::SeqCst) as u64;
        let fail = |why: String| -> ! {
            let keep =
                std::env::temp_dir().join(format!("mr-fuzz-open-failure-{}.img", st.iterations));
            let mut full = vec![0u8; f.size as usize];
            for (o, d) in &f.pieces {
                for (k, &b) in d.iter().enumerate() {
                    if let Some(x) = full.get_mut(*o as usize + k) {
                        *x = b;
                    }
                }
            }
            let _ = std::fs::write(&keep, &full);
            panic!(
                "iteration {} (MR_FUZZ_SEED={seed}), mutations {what:?}: {why}; input saved to {}",
                st.iterations,
                keep.display()
            )
        };
        if let Err(p) = res {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            fail(format!("panicked: {msg}"));
        }
        if max > f.size + (1 << 20) {
            fail(format!(
                "a single allocation of {max} bytes for a file of {} bytes",
                f.size
            ));
        }
        st.max_alloc_over_size = st.max_alloc_over_size.max(max as i64 - f.size as i64);
        st.iterations += 1;
    }
    println!("mutation fuzz: {st:?} in {:?}", t0.elapsed());
    assert!(
        st.iterations >= 2000,
        "too few iterations in the budget: {st:?}"
    );
    // The mutations must reach both outcomes, or they test nothing.
    assert!(
        st.opened_complete > 0 && st.refused.values().sum::<usize>() > 0,
        "{st:?}"
    );
}

/// Where the pieces of the targeted chunk-table cases sit.
struct Geo {
    /// File offset of block 0's chunk table header.
    table: u64,
    /// File offset of block 0's page region.
    pages: u64,
    chunk: u64,
}

impl Geo {
    fn entry(&self, i: u64) -> u64 {
        self.table + 32 + i * 16
    }
}

/// A finished zstd image (16 KiB chunks; the base image's blocks) and its
/// geometry; chunk 1 of `mem` must be a zstd frame for the cases below.
fn chunked_base() -> (Vec<u8>, Geo) {
    let opts = ImageOptions {
        chunk_bytes: 16 << 10,
        ..ImageOptions::zstd(1)
    };
    let (bytes, _) = base_image(&opts);
    let dir = TmpDir::in_memory("fuzz-open-geo");
    let path = dir.join("g.img");
    std::fs::write(&path, &bytes).unwrap();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    let b = &img.layout().blocks[0];
    let g = Geo {
        table: b.bitmap_offset + b.bitmap_len,
        pages: b.pages_offset,
        chunk: 16 << 10,
    };
    assert_eq!(bytes[g.entry(1) as usize], 2, "chunk 1 is not a zstd frame");
    (bytes, g)
}

/// Open `f` and read block 0 and a page of chunk 1; the first error must be
/// `errno` and name everything in `needles`. No single allocation may
/// exceed the file (+ 1 MiB), and nothing may panic.
fn expect_bad(what: &str, f: &[u8], errno: i32, needles: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fd = Sparse::from_bytes(f).memfd();
    MAX_SINGLE.store(0, Ordering::SeqCst);
    TRACK.store(true, Ordering::SeqCst);
    let res = (|| -> Result<(), Error> {
        let ch = Channel::from_fd(fd.as_raw_fd(), OpenFlags::READ)?;
        let img = Image::open_on(Arc::new(ch), None, ImageFlags::default())?;
        // Page 5 (in chunk 1) is present.
        let page_err = img.read_page(0, 5 * PS, &mut vec![0u8; PS as usize]);
        let block_err = read_ramblock_to_vec(&img, 0, 2).map(|_| ());
        // Both read paths must fail the same way.
        match (page_err, block_err) {
            (Err(a), Err(b)) => {
                assert_eq!(a.errno(), b.errno(), "{what}: {a} / {b}");
                Err(b)
            }
            (a, b) => panic!("{what}: read_page {a:?}, read_ramblock {b:?}"),
        }
    })();
    TRACK.store(false, Ordering::SeqCst);
    let max = MAX_SINGLE.load(Ordering::SeqCst);
    assert!(max <= f.len() + (1 << 20), "{what}: allocation of {max}");
    let e = res.unwrap_err();
    assert_eq!(e.errno(), errno, "{what}: {e}");
    for n in needles {
        assert!(e.to_string().contains(n), "{what}: {e:?} lacks {n:?}");
    }
}

fn put_be32(f: &mut [u8], at: u64, v: u32) {
    f[at as usize..at as usize + 4].copy_from_slice(&v.to_be_bytes());
}

/// Targeted bad inputs of the chunk table, each with its specific error:
/// `EBADMSG` naming block, chunk, offsets, expected and found.
#[test]
fn bad_chunk_tables_give_specific_errors() {
    let (base, g) = chunked_base();
    let e1 = format!("0x{:x}", g.entry(1));
    let slot1 = format!("file offset 0x{:x}", g.pages + g.chunk);
    let chunk1 = "ramblock 'mem': chunk 1 (block offset 0x4000";

    // Stored length larger than the slot (and the largest u32).
    for stored in [g.chunk as u32 + 1, u32::MAX] {
        let mut f = base.clone();
        put_be32(&mut f, g.entry(1) + 4, stored);
        let found = format!("stored length {stored}");
        let want = format!("(expected 1..={})", g.chunk);
        let needles = [chunk1, e1.as_str(), found.as_str(), want.as_str()];
        expect_bad("stored > slot", &f, libc::EBADMSG, &needles);
    }
    // Unknown codec in an entry.
    let mut f = base.clone();
    f[g.entry(1) as usize] = 9;
    let needles = [chunk1, e1.as_str(), "unknown codec 9 (expected 0, 1 or 2)"];
    expect_bad("entry codec", &f, libc::EBADMSG, &needles);
    // A stored length too short for the frame: zstd says why.
    let mut f = base.clone();
    put_be32(&mut f, g.entry(1) + 4, 10);
    let needles = [chunk1, slot1.as_str(), "10 stored bytes do not decompress"];
    expect_bad("short frame", &f, libc::EBADMSG, &needles);
    // Checksum mismatch: one flipped bit in the recorded checksum.
    let mut f = base.clone();
    f[g.entry(1) as usize + 15] ^= 1;
    let needles = [
        chunk1,
        slot1.as_str(),
        "checksum mismatch",
        e1.as_str(),
        "hashes to 0x",
    ];
    expect_bad("checksum", &f, libc::EBADMSG, &needles);
    // A flipped bit in the frame itself (not its padding): caught by zstd
    // or the checksum.
    let stored = u32::from_be_bytes(base[g.entry(1) as usize + 4..][..4].try_into().unwrap());
    for at in [0, 5, stored as u64 / 2, stored as u64 - 1] {
        let mut f = base.clone();
        f[(g.pages + g.chunk + at) as usize] ^= 0x10;
        expect_bad("frame bit", &f, libc::EBADMSG, &[chunk1, slot1.as_str()]);
    }
}

/// Bad table headers and a table outside the file refuse the open.
#[test]
fn bad_chunk_table_headers_refuse_the_open() {
    let (base, g) = chunked_base();
    let open = |f: &[u8]| {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let fd = Sparse::from_bytes(f).memfd();
        let ch = Channel::from_fd(fd.as_raw_fd(), OpenFlags::READ).unwrap();
        Image::open_on(Arc::new(ch), None, ImageFlags::RECOVER).map(|_| ())
    };
    let at = format!("chunk table header at offset 0x{:x}", g.table);
    type Mutation<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
    let cases: Vec<(&str, Mutation, i32, Vec<String>)> = vec![
        (
            "header codec",
            Box::new(|f: &mut Vec<u8>| f[g.table as usize + 13] = 9),
            libc::EBADMSG,
            vec![at.clone(), "unknown codec 9 (expected 1 or 2)".into()],
        ),
        (
            "chunk count",
            Box::new(|f: &mut Vec<u8>| f[g.table as usize + 23] = 5),
            libc::EBADMSG,
            vec![at.clone(), "5 chunks recorded, expected 4".into()],
        ),
        (
            "chunk count past the pages",
            Box::new(|f: &mut Vec<u8>| f[g.table as usize + 17] = 0x10),
            libc::EBADMSG,
            vec![at.clone(), "chunks recorded, expected 4".into()],
        ),
        (
            "chunk size",
            Box::new(|f: &mut Vec<u8>| put_be32(f, g.table + 8, 3 << 12)),
            libc::EBADMSG,
            vec![at.clone(), "chunk size 12288 must be a power of two".into()],
        ),
        (
            "table version",
            Box::new(|f: &mut Vec<u8>| put_be32(f, g.table + 4, 2)),
            libc::ENOTSUP,
            vec!["chunk table version 2".into()],
        ),
        (
            "table cut off by the end of the file",
            Box::new(|f: &mut Vec<u8>| f.truncate(g.table as usize + 40)),
            libc::EBADMSG,
            vec!["is larger than the file".into()],
        ),
    ];
    for (what, mutate, errno, needles) in cases {
        let mut f = base.clone();
        mutate(&mut f);
        let e = open(&f).unwrap_err();
        assert_eq!(e.errno(), errno, "{what}: {e}");
        for n in &needles {
            assert!(
                e.to_string().contains(n.as_str()),
                "{what}: {e} lacks {n:?}"
            );
        }
        println!("{what}: {e}");
    }
}
