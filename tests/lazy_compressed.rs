//! On-demand restore of chunked (compressed or checksummed) images through
//! userfaultfd, for real on this kernel (root): random touches from 8
//! threads equal an eager `read_ramblock`, with and without prefetch, for
//! zstd and checksum-only images and several chunk sizes; a chunk whose
//! stored bytes were damaged keeps its toucher blocked, never fills zeros or
//! garbage, and is reported (`EBADMSG`, naming the chunk) by `wait` and
//! `stop`; hugetlbfs memory (2 MiB host pages over 1 MiB and 4 MiB
//! chunks). Without userfaultfd (or huge pages) the tests say NOT RUN
//! (tests/common/need.rs).

mod common;

use common::fill::pattern;
use common::need::hugepages;
use common::uffd::{first_diff, lazy_opts as opts, random_touches, Mapping};
use common::{met, Need, Rng, TmpDir, PS};
use mappedram::compress::{Codec, ImageOptions};
use mappedram::engine::{read_ramblock_to_vec, save_ramblock};
use mappedram::lazy::{Lazy, LazyOptions, NO_PREFETCH};
use mappedram::{BlockSpec, GuestSlice, Image, ImageFlags};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn checksum_only(chunk_bytes: u64) -> ImageOptions {
    ImageOptions {
        checksums: true,
        chunk_bytes,
        ..ImageOptions::default()
    }
}

fn zstd(chunk_bytes: u64) -> ImageOptions {
    ImageOptions {
        chunk_bytes,
        ..ImageOptions::zstd(1)
    }
}

/// A finished chunked image of one `mem` block holding `mem`.
fn image_of(dir: &TmpDir, mem: &[u8], o: &ImageOptions) -> PathBuf {
    let path = dir.join("lazy-z.img");
    let spec = [BlockSpec {
        idstr: "mem".into(),
        used_length: mem.len() as u64,
        page_size: PS,
    }];
    let img = Image::create_with(&path, "pc-i440fx-10.0", &spec, ImageFlags::DIRECT, o).unwrap();
    save_ramblock(&img, 0, GuestSlice::from_slice(mem), None, 2).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    path
}

/// Guest memory whose every page holds data that zstd shrinks ~8x (so
/// every chunk is stored as a zstd frame).
fn compressible(len: u64) -> Vec<u8> {
    let mut mem = vec![0u8; len as usize];
    let mut r = Rng::new(77);
    for page in mem.chunks_mut(PS as usize) {
        let mut rec = [0u8; 512];
        r.fill(&mut rec);
        for part in page.chunks_mut(512) {
            part.copy_from_slice(&rec);
        }
    }
    mem
}

/// The chunk table entry `i` of block 0: (codec byte, stored bytes).
fn entry(path: &Path, len: u64, i: u64) -> (u8, u32) {
    let img = Image::open(path, ImageFlags::default()).unwrap();
    let info = img.block_info(0).unwrap();
    let table = info.bitmap_offset + (len / PS).div_ceil(64) * 8;
    let mut e = [0u8; 16];
    let f = std::fs::File::open(path).unwrap();
    f.read_exact_at(&mut e, table + 32 + 16 * i).unwrap();
    (e[0], u32::from_be_bytes(e[4..8].try_into().unwrap()))
}

fn xor_byte(path: &Path, off: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], off).unwrap();
    f.sync_all().unwrap();
}

/// Restore `mem` saved with `o` on demand under 8 touching threads; the
/// result equals an eager `read_ramblock` of the same image.
fn restore(mem: &[u8], o: &ImageOptions, lo: LazyOptions, flags: ImageFlags) {
    let dir = TmpDir::new("lazyz");
    let path = image_of(&dir, mem, o);
    let img = Arc::new(Image::open(&path, flags).unwrap());
    assert!(img.is_chunked(0).unwrap());
    let eager = read_ramblock_to_vec(&img, 0, 2).unwrap();
    assert!(eager == mem, "eager restore differs from the saved memory");
    let m = Mapping::anon(mem.len());
    // SAFETY: `m` is a fresh mapping of the block's length that outlives `lz`.
    let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &lo) }.unwrap();
    random_touches(&m, &eager, 8, 300, 500);
    if lo.flags & NO_PREFETCH == 0 {
        lz.wait().unwrap();
        assert!(lz.is_complete());
    }
    let st = lz.stats();
    lz.stop().unwrap();
    // With prefetch a small image may be resident before the first touch.
    assert!(
        st.faults > 0 || lo.flags & NO_PREFETCH == 0,
        "no fault was served: {st:?}"
    );
    if let Some(d) = first_diff(&m.to_vec(), &eager) {
        panic!("{o:?} {lo:?}: {d}");
    }
}

#[test]
fn zstd_image_eight_threads_with_prefetch_equal_eager() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let mem = pattern(11, (48 * MIB) as usize);
    restore(&mem, &zstd(MIB), opts(0, 2), ImageFlags::default());
}

#[test]
fn zstd_image_direct_with_prefetch_equal_eager() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let mem = pattern(12, (32 * MIB) as usize);
    restore(&mem, &zstd(MIB), opts(0, 3), ImageFlags::DIRECT);
}

#[test]
fn zstd_image_no_prefetch_then_stop_fills_the_rest() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let mem = pattern(13, (32 * MIB) as usize);
    let lo = opts(NO_PREFETCH, 2);
    restore(&mem, &zstd(MIB), lo, ImageFlags::default());
}

#[test]
fn checksum_only_image_with_and_without_prefetch() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let mem = pattern(14, (32 * MIB) as usize);
    restore(&mem, &checksum_only(MIB), opts(0, 2), ImageFlags::DIRECT);
    let lo = opts(NO_PREFETCH, 1);
    restore(&mem, &checksum_only(MIB), lo, ImageFlags::default());
}

#[test]
fn chunks_smaller_and_larger_than_a_prefetch_unit() {
    if !met(Need::Userfaultfd) {
        return;
    }
    // 64 KiB: many chunks per unit; 8 MiB: a unit per chunk, larger than
    // the engine's unit.
    let mem = pattern(15, (40 * MIB) as usize);
    for cb in [64 << 10, 8 * MIB] {
        restore(&mem, &zstd(cb), opts(0, 2), ImageFlags::default());
        restore(&mem, &zstd(cb), opts(NO_PREFETCH, 1), ImageFlags::default());
    }
}

#[test]
fn short_last_chunk() {
    if !met(Need::Userfaultfd) {
        return;
    }
    // 5 MiB + 12 KiB: the last 1 MiB chunk holds 3 pages; 8 MiB chunks:
    // one short chunk for the whole block.
    let mem = pattern(18, (5 * MIB + 3 * PS) as usize);
    for cb in [MIB, 8 * MIB] {
        restore(&mem, &zstd(cb), opts(0, 2), ImageFlags::DIRECT);
        restore(&mem, &zstd(cb), opts(NO_PREFETCH, 1), ImageFlags::default());
    }
}

#[test]
fn shared_memfd_memory() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let mem = pattern(16, (16 * MIB) as usize);
    let dir = TmpDir::new("lazyz-memfd");
    let path = image_of(&dir, &mem, &zstd(MIB));
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::memfd(mem.len());
    // SAFETY: as in `restore`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(0, 2)) }.unwrap();
    random_touches(&m, &mem, 8, 100, 500);
    lz.wait().unwrap();
    lz.stop().unwrap();
    assert!(first_diff(&m.to_vec(), &mem).is_none());
}

/// Expect `e` to be the damaged-chunk error of chunk `i`.
fn assert_chunk_error(e: &mappedram::Error, i: u64) {
    assert_eq!(e.errno(), libc::EBADMSG, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("ramblock 'mem'")
            && msg.contains(&format!("chunk {i} "))
            && msg.contains(&format!("block offset 0x{:x}", i * MIB)),
        "{msg}"
    );
}

#[test]
fn damaged_zstd_chunk_blocks_the_toucher_and_is_reported() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 8 * MIB;
    let mem = compressible(len);
    let dir = TmpDir::new("lazyz-bad");
    let path = image_of(&dir, &mem, &zstd(MIB));
    let (codec, stored) = entry(&path, len, 3);
    assert_eq!(codec, 2, "chunk 3 is not a zstd frame");
    assert!(stored > 4096, "chunk 3 stores only {stored} bytes");
    let slot = {
        let img = Image::open(&path, ImageFlags::default()).unwrap();
        img.block_info(0).unwrap().pages_offset + 3 * MIB
    };
    xor_byte(&path, slot + stored as u64 / 2);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Arc::new(Mapping::anon(len as usize));
    // SAFETY: as in `restore`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(NO_PREFETCH, 1)) }.unwrap();
    let page = 3 * MIB / PS + 17;
    let done = Arc::new(AtomicBool::new(false));
    let (m2, d2) = (m.clone(), done.clone());
    let toucher = std::thread::spawn(move || {
        let got = m2.page(page);
        d2.store(true, Ordering::SeqCst);
        got
    });
    let e = lz.wait().unwrap_err();
    assert_chunk_error(&e, 3);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !done.load(Ordering::SeqCst),
        "the touching thread was released without verified data"
    );
    // The other chunks are still served.
    for p in [0, 2 * MIB / PS + 5, 4 * MIB / PS, len / PS - 1] {
        assert!(m.page(p) == mem[(p * PS) as usize..((p + 1) * PS) as usize]);
    }
    // The file is repaired: stop reads the chunk again, places it, and the
    // blocked thread gets the real data.
    xor_byte(&path, slot + stored as u64 / 2);
    lz.stop().unwrap();
    let got = toucher.join().unwrap();
    assert!(got == mem[(page * PS) as usize..((page + 1) * PS) as usize]);
    assert!(first_diff(&m.to_vec(), &mem).is_none());
}

#[test]
fn damaged_chunk_with_prefetch_is_poisoned_never_zero() {
    if !met(Need::Userfaultfd) {
        return;
    }
    for o in [zstd(MIB), checksum_only(MIB)] {
        let len = 8 * MIB;
        let mem = compressible(len);
        let dir = TmpDir::new("lazyz-poison");
        let path = image_of(&dir, &mem, &o);
        let slot = {
            let img = Image::open(&path, ImageFlags::default()).unwrap();
            img.block_info(0).unwrap().pages_offset + 5 * MIB
        };
        // zstd: inside the frame; raw: inside a present page.
        xor_byte(&path, slot + 1000);
        let img = Arc::new(Image::open(&path, ImageFlags::DIRECT).unwrap());
        let m = Mapping::anon(len as usize);
        // SAFETY: as in `restore`.
        let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(0, 2)) }.unwrap();
        assert_chunk_error(&lz.wait().unwrap_err(), 5);
        let e = lz.stop().unwrap_err();
        assert_chunk_error(&e, 5);
        assert!(e.to_string().contains("poisoned"), "{e}");
        // Chunk 5's pages are not resident (mincore); every other page is
        // and holds its data.
        let mut vec = vec![0u8; (len / PS) as usize];
        // SAFETY: `vec` has one byte per page of the mapping.
        let r = unsafe { libc::mincore(m.ptr.cast(), len as usize, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        let per = MIB / PS;
        for (p, v) in vec.iter().enumerate() {
            let p = p as u64;
            let in5 = (5 * per..6 * per).contains(&p);
            assert_eq!(v & 1 == 0, in5, "{:?}: page {p} residency", o.codec);
            if !in5 {
                assert!(m.page(p) == mem[(p * PS) as usize..((p + 1) * PS) as usize]);
            }
        }
        assert_eq!(o.codec == Codec::Zstd, entry(&path, len, 5).0 == 2);
    }
}

#[test]
fn one_fault_reads_one_chunk_and_places_all_of_it() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 8 * MIB;
    let mem = compressible(len);
    let dir = TmpDir::new("lazyz-one");
    let path = image_of(&dir, &mem, &zstd(MIB));
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    // SAFETY: as in `restore`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(NO_PREFETCH, 1)) }.unwrap();
    let page = 2 * MIB / PS + 100;
    assert!(m.page(page) == mem[(page * PS) as usize..((page + 1) * PS) as usize]);
    let st = lz.stats();
    assert_eq!((st.faults, st.bytes_read), (1, MIB), "{st:?}");
    // Chunk 2 becomes resident (the faulting page is placed first, the
    // rest right after), nothing else does.
    let per = MIB / PS;
    let mut vec = vec![0u8; (len / PS) as usize];
    let t0 = std::time::Instant::now();
    loop {
        // SAFETY: `vec` has one byte per page of the mapping.
        let r = unsafe { libc::mincore(m.ptr.cast(), len as usize, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        let n = &vec[(2 * per) as usize..(3 * per) as usize];
        if n.iter().all(|v| v & 1 == 1) || t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for (p, v) in vec.iter().enumerate() {
        let in2 = (2 * per..3 * per).contains(&(p as u64));
        assert_eq!(v & 1 == 1, in2, "page {p} residency");
    }
    // Touching the rest of the chunk costs no further fault.
    for p in (2 * per..3 * per).step_by(7) {
        assert!(m.page(p) == mem[(p * PS) as usize..((p + 1) * PS) as usize]);
    }
    assert_eq!(lz.stats().faults, 1);
    lz.stop().unwrap();
    assert!(first_diff(&m.to_vec(), &mem).is_none());
}

#[test]
fn map_ramblock_refuses_a_chunked_block() {
    if !met(Need::Userfaultfd) {
        return;
    }
    use mappedram::lazy::cow_map::map_ramblock;
    let mem = pattern(17, (2 * MIB) as usize);
    let dir = TmpDir::new("lazyz-map");
    for o in [zstd(MIB), checksum_only(MIB)] {
        let path = image_of(&dir, &mem, &o);
        let img = Image::open(&path, ImageFlags::default()).unwrap();
        // SAFETY: no `at`: the kernel would pick the address; refused first.
        let e = unsafe { map_ramblock(&img, 0, None) }.unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP, "{e}");
        assert!(e.to_string().contains("chunked"), "{e}");
    }
}

/// Run by `touching_a_poisoned_chunk_kills_never_reads` in a child
/// process: restore an image whose chunk 5 is damaged, stop, then touch
/// the chunk (which must raise a signal; reaching the print is a failure).
#[test]
#[ignore = "helper: run in a child process by touching_a_poisoned_chunk_kills_never_reads"]
fn poisoned_chunk_child() {
    let Ok(path) = std::env::var("MR_LAZYZ_CHILD_IMAGE") else {
        return;
    };
    let img = Arc::new(Image::open(Path::new(&path), ImageFlags::default()).unwrap());
    let len = img.block_info(0).unwrap().used_length;
    let m = Mapping::anon(len as usize);
    // SAFETY: as in `restore`; the process ends in this function.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(0, 2)) }.unwrap();
    assert_chunk_error(&lz.wait().unwrap_err(), 5);
    assert_chunk_error(&lz.stop().unwrap_err(), 5);
    println!("touching chunk 5");
    let page = m.page(5 * MIB / PS + 9);
    println!("READ {:02x?}", &page[..16]);
}

#[test]
fn touching_a_poisoned_chunk_kills_never_reads() {
    if !met(Need::Userfaultfd) {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let len = 8 * MIB;
    let mem = compressible(len);
    let dir = TmpDir::new("lazyz-sigbus");
    let path = image_of(&dir, &mem, &zstd(MIB));
    let slot = {
        let img = Image::open(&path, ImageFlags::default()).unwrap();
        img.block_info(0).unwrap().pages_offset + 5 * MIB
    };
    xor_byte(&path, slot + 1000);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "poisoned_chunk_child",
            "--ignored",
            "--nocapture",
        ])
        .env("MR_LAZYZ_CHILD_IMAGE", &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("touching chunk 5") && !stdout.contains("READ"),
        "child: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    // SIGBUS from UFFDIO_POISON (SIGSEGV where the kernel lacks it and the
    // range was made PROT_NONE).
    let sig = out.status.signal();
    assert!(
        sig == Some(libc::SIGBUS) || sig == Some(libc::SIGSEGV),
        "child ended with {:?}, not a signal\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn hugetlbfs_memory_over_smaller_and_larger_chunks() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let Some(_huge) = hugepages(16) else { return };
    let len = 16 * MIB;
    let mut mem = pattern(19, len as usize);
    // The 2 MiB page [2, 4) MiB: chunk 2 holds data, chunk 3 none (so its
    // half of the host page must be placed as zeros, not as stale bytes).
    mem[(3 * MIB) as usize..(4 * MIB) as usize].fill(0);
    mem[(2 * MIB) as usize] = 0x42;
    let dir = TmpDir::new("lazyz-huge");
    for cb in [MIB, 4 * MIB] {
        let path = image_of(&dir, &mem, &zstd(cb));
        let img = Arc::new(Image::open(&path, ImageFlags::DIRECT).unwrap());
        for lo in [opts(0, 2), opts(NO_PREFETCH, 1)] {
            let m = Mapping::hugetlb_memfd(len as usize);
            // SAFETY: as in `restore`.
            let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &lo) }.unwrap();
            // In order: the fault thread's staging holds the previous huge
            // page when the next one is read.
            for p in (0..len / PS).step_by(61) {
                let w = &mem[(p * PS) as usize..((p + 1) * PS) as usize];
                assert!(m.page(p) == w, "chunks of {cb}, {lo:?}: page {p}");
            }
            lz.stop().unwrap();
            if let Some(d) = first_diff(&m.to_vec(), &mem) {
                panic!("chunks of {cb}, {lo:?}: {d}");
            }
        }
    }
}
