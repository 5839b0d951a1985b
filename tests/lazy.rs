//! On-demand restore through userfaultfd, for real on this kernel (root):
//! random touches from many threads while prefetch runs equal an eager
//! restore; MADV_DONTNEED during service; an injected read error blocks the
//! touching thread, never fills zeros, and is reported with block/offset;
//! a child forked during service has no mapping there (SIGSEGV, never
//! zeros); hugetlbfs (2 MiB pages under a 4 KiB image) and shmem memory.
//! Without userfaultfd the tests say NOT RUN (tests/common/need.rs), and
//! the library's error names what is missing.

mod common;

use common::need::{hugepages, probe_userfaultfd};
use common::uffd::{
    first_diff, image_of, killed_by_sigsegv, lazy_opts as opts, mixed_image, random_touches,
    Mapping,
};
use common::{block_memory, met, Need, TmpDir, PS};
use mappedram::channel::{FaultFn, FaultOp};
use mappedram::lazy::{Lazy, LazyOptions, NO_PREFETCH};
use mappedram::{Image, ImageFlags};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn restore_with(m: &Mapping, direct: bool, o: LazyOptions, len: u64) {
    let dir = TmpDir::new("lazy");
    let (path, mem) = mixed_image(&dir, len, 3);
    let flags = if direct {
        ImageFlags::DIRECT
    } else {
        ImageFlags::default()
    };
    let img = Arc::new(Image::open(&path, flags).unwrap());
    // SAFETY: `m` is a fresh mapping of the block's length that outlives `lz`.
    let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &o) }.unwrap();
    random_touches(m, mem.as_slice(), 8, 400, 1000);
    if o.flags & NO_PREFETCH == 0 {
        lz.wait().unwrap();
        assert!(lz.is_complete());
    }
    let st = lz.stats();
    lz.stop().unwrap();
    assert!(st.faults > 0, "no fault was served: {st:?}");
    if let Some(d) = first_diff(&m.to_vec(), mem.as_slice()) {
        panic!("after stop: {d}");
    }
}

#[test]
fn eight_threads_random_touches_equal_eager_restore() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let m = Mapping::anon((64 * MIB) as usize);
    restore_with(&m, false, opts(0, 2), 64 * MIB);
}

#[test]
fn touches_race_prefetch_direct_image() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let m = Mapping::anon((64 * MIB) as usize);
    restore_with(&m, true, opts(0, 3), 64 * MIB);
}

/// Faults racing the double-buffered prefetch: one worker (one reader, one
/// placer), eight threads touching the pages of the units around the ones
/// in flight (the unit being placed and the one being read), in both
/// directions; every page equals the image, and nothing hangs.
#[test]
fn faults_race_a_double_buffered_prefetch_unit() {
    let len = 32 * MIB;
    let dir = TmpDir::new("lazy-race");
    let (path, mem) = mixed_image(&dir, len, 7);
    let img = Arc::new(Image::open(&path, ImageFlags::DIRECT).unwrap());
    let unit = 4 * MIB / PS;
    for round in 0..4u64 {
        let m = Mapping::anon(len as usize);
        // SAFETY: `m` is a fresh mapping of the block's length that outlives `lz`.
        let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &opts(0, 1)) }.unwrap();
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (m, mem) = (&m, mem.as_slice());
                s.spawn(move || {
                    // Units 0..3: the first units a worker reads and places.
                    let u = (t + round) % 3;
                    let pages: Vec<u64> = if t % 2 == 0 {
                        (u * unit..(u + 1) * unit).step_by(7).collect()
                    } else {
                        (u * unit..(u + 1) * unit).rev().step_by(5).collect()
                    };
                    for p in pages {
                        let w = &mem[(p * PS) as usize..((p + 1) * PS) as usize];
                        assert!(m.page(p) == w, "round {round}: page {p} differs");
                    }
                });
            }
        });
        lz.wait().unwrap();
        let st = lz.stats();
        lz.stop().unwrap();
        assert!(st.faults > 0, "no fault was served: {st:?}");
        if let Some(d) = first_diff(&m.to_vec(), mem.as_slice()) {
            panic!("round {round}, after stop: {d}");
        }
    }
}

#[test]
fn no_prefetch_serves_faults_then_stop_fills_the_rest() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let m = Mapping::anon((32 * MIB) as usize);
    restore_with(&m, false, opts(NO_PREFETCH, 2), 32 * MIB);
}

#[test]
fn shared_memfd_memory() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let m = Mapping::memfd((32 * MIB) as usize);
    restore_with(&m, false, opts(0, 2), 32 * MIB);
}

#[test]
fn rate_limited_prefetch_with_hot_pages_first() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 32 * MIB;
    let dir = TmpDir::new("lazy-hot");
    let (path, mem) = mixed_image(&dir, len, 3);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    let pages = len / PS;
    // The last 4 MiB are hot.
    let mut hot = vec![0u64; pages.div_ceil(64) as usize];
    for p in pages - 1024..pages {
        hot[(p / 64) as usize] |= 1 << (p % 64);
    }
    let o = LazyOptions {
        flags: 0,
        threads: 1,
        rate_limit: 16 * MIB,
        hot: Some(hot),
    };
    let t0 = std::time::Instant::now();
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &o) }.unwrap();
    // At 16 MiB/s the hot unit (read first) is in well before the rest.
    std::thread::sleep(Duration::from_millis(600));
    let st = lz.stats();
    assert!(
        !lz.is_complete(),
        "rate limit not applied: complete after 600 ms"
    );
    assert!(
        st.bytes_read <= 16 * MIB,
        "read {} bytes in 600 ms at 16 MiB/s",
        st.bytes_read
    );
    // The hot unit is resident without a fault: touching it adds none.
    let before = lz.stats().faults;
    for p in (pages - 1024..pages).step_by(97) {
        assert_eq!(
            m.page(p),
            mem.as_slice()[(p * PS) as usize..((p + 1) * PS) as usize]
        );
    }
    assert_eq!(
        lz.stats().faults,
        before,
        "hot pages were not prefetched first"
    );
    lz.stop().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(first_diff(&m.to_vec(), mem.as_slice()).is_none());
}

#[test]
fn madv_dontneed_during_service_reads_zero_afterwards() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 16 * MIB;
    let dir = TmpDir::new("lazy-remove");
    let (path, mem) = mixed_image(&dir, len, 0);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(NO_PREFETCH, 2)) }.unwrap();
    let want = mem.as_slice();
    // Pages 0..16 resident, then 8..24 discarded (half resident, half not).
    for p in 0..16 {
        assert_eq!(m.page(p), want[(p * PS) as usize..((p + 1) * PS) as usize]);
    }
    m.madvise(8 * PS, 16 * PS, libc::MADV_DONTNEED);
    for p in 0..32 {
        let got = m.page(p);
        if (8..24).contains(&p) {
            assert!(got.iter().all(|&b| b == 0), "discarded page {p} not zero");
        } else {
            assert_eq!(
                got,
                want[(p * PS) as usize..((p + 1) * PS) as usize],
                "page {p}"
            );
        }
    }
    assert!(lz.stats().discarded >= 16);
    // Stop fills everything else and never refills the discarded pages.
    lz.stop().unwrap();
    let all = m.to_vec();
    let mut expect = want.to_vec();
    expect[(8 * PS) as usize..(24 * PS) as usize].fill(0);
    assert!(first_diff(&all, &expect).is_none());
}

#[test]
fn madv_dontneed_racing_prefetch_never_resurrects_data() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 64 * MIB;
    let dir = TmpDir::new("lazy-remove-race");
    let (path, mem) = mixed_image(&dir, len, 0);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(0, 2)) }.unwrap();
    // Discard every 8th MiB while prefetch fills.
    for i in (0..64).step_by(8) {
        m.madvise(i * MIB, MIB, libc::MADV_DONTNEED);
    }
    lz.wait().unwrap();
    lz.stop().unwrap();
    let mut expect = mem.as_slice().to_vec();
    for i in (0..64).step_by(8) {
        expect[(i * MIB) as usize..((i + 1) * MIB) as usize].fill(0);
    }
    if let Some(d) = first_diff(&m.to_vec(), &expect) {
        panic!("{d}");
    }
}

fn fail_reads_at(off: u64, on: Arc<AtomicBool>) -> FaultFn {
    Arc::new(move |op, o, len| {
        (op == FaultOp::Read && on.load(Ordering::SeqCst) && o <= off && off < o + len.max(1))
            .then_some(libc::EIO)
    })
}

#[test]
fn injected_read_error_blocks_never_fills_zero_and_is_reported() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 8 * MIB;
    let dir = TmpDir::new("lazy-eio");
    let (path, mem) = mixed_image(&dir, len, 0);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let page = 100u64;
    let file_off = img.block_info(0).unwrap().pages_offset + page * PS;
    let on = Arc::new(AtomicBool::new(true));
    img.channel()
        .set_fault_injector(Some(fail_reads_at(file_off, on.clone())));
    let m = Arc::new(Mapping::anon(len as usize));
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &opts(NO_PREFETCH, 1)) }.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (m2, d2) = (m.clone(), done.clone());
    let toucher = std::thread::spawn(move || {
        let got = m2.page(page);
        d2.store(true, Ordering::SeqCst);
        got
    });
    let err = lz.wait().unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let msg = err.to_string();
    assert!(
        msg.contains("ramblock 'mem'") && msg.contains(&format!("0x{:x}", page * PS)),
        "{msg}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !done.load(Ordering::SeqCst),
        "the touching thread was released without data"
    );
    // Other pages are still served.
    assert_eq!(
        m.page(5),
        mem.as_slice()[(5 * PS) as usize..(6 * PS) as usize]
    );
    // The disk recovers: stop fills the page and releases the thread.
    on.store(false, Ordering::SeqCst);
    lz.stop().unwrap();
    let got = toucher.join().unwrap();
    assert_eq!(
        got,
        mem.as_slice()[(page * PS) as usize..((page + 1) * PS) as usize]
    );
    assert!(first_diff(&m.to_vec(), mem.as_slice()).is_none());
}

#[test]
fn persistent_read_error_poisons_instead_of_zero() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 4 * MIB;
    let dir = TmpDir::new("lazy-poison");
    let (path, _mem) = mixed_image(&dir, len, 0);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let file_off = img.block_info(0).unwrap().pages_offset + 7 * PS;
    img.channel().set_fault_injector(Some(fail_reads_at(
        file_off,
        Arc::new(AtomicBool::new(true)),
    )));
    let m = Mapping::anon(len as usize);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(0, 2)) }.unwrap();
    let err = lz.wait().unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let err = lz.stop().unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("poisoned"), "{err}");
    // Page 7 is not resident (mincore), every other page is.
    let mut vec = vec![0u8; (len / PS) as usize];
    // SAFETY: `vec` has one byte per page of the mapping.
    let r = unsafe { libc::mincore(m.ptr.cast(), len as usize, vec.as_mut_ptr()) };
    assert_eq!(r, 0);
    assert_eq!(vec[7] & 1, 0, "the unreadable page became resident");
}

#[test]
fn bad_arguments() {
    let dir = TmpDir::new("lazy-args");
    let (path, _mem) = mixed_image(&dir, 4 * MIB, 3);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon((4 * MIB) as usize);
    // SAFETY: the calls fail before touching memory.
    unsafe {
        let e = Lazy::start(img.clone(), 0, m.ptr.add(8), &opts(0, 1)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        let e = Lazy::start(img.clone(), 9, m.ptr, &opts(0, 1)).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        let e = Lazy::start(img.clone(), 0, m.ptr, &opts(0x80, 1)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        let mut o = opts(0, 1);
        o.hot = Some(vec![0; 3]);
        let e = Lazy::start(img.clone(), 0, m.ptr, &o).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }
}

#[test]
fn map_ramblock_reads_the_image_and_zero_for_clear_bits() {
    use mappedram::lazy::cow_map::map_ramblock;
    use std::os::unix::fs::FileExt;
    let len = 8 * MIB;
    let dir = TmpDir::new("lazy-map");
    let (path, mem) = mixed_image(&dir, len, 3);
    let want = mem.as_slice();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    let info = img.block_info(0).unwrap();
    // Stale bytes in the slots of two absent pages (as QEMU leaves them).
    let absent: Vec<u64> = (0..len / PS)
        .filter(|&p| !img.page_present(0, p).unwrap())
        .take(2)
        .collect();
    assert_eq!(absent.len(), 2);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for &p in &absent {
        f.write_all_at(&[0xabu8; PS as usize], info.pages_offset + p * PS)
            .unwrap();
    }
    drop(f);
    // SAFETY: no `at`: the kernel picks the address.
    let map = unsafe { map_ramblock(&img, 0, None) }.unwrap();
    img.close().unwrap();
    // SAFETY: the mapping holds `len` bytes until `map` drops.
    let got = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) }.to_vec();
    if let Some(d) = first_diff(&got, want) {
        panic!("{d}");
    }
    // Writes are private: the file keeps its contents.
    // SAFETY: inside the mapping.
    unsafe { std::ptr::write_bytes(map.as_ptr(), 0x11, PS as usize) };
    drop(map);
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    let mut page = vec![0u8; PS as usize];
    img.read_page(0, 0, &mut page).unwrap();
    assert_eq!(page, want[..PS as usize]);
    // Over an existing range (MAP_FIXED), like reserved guest RAM.
    let m = Mapping::anon(len as usize);
    // SAFETY: `m` is ours to replace.
    let map = unsafe { map_ramblock(&img, 0, Some(m.ptr)) }.unwrap();
    assert_eq!(map.as_ptr(), m.ptr);
    assert!(first_diff(&m.to_vec(), want).is_none());
    let _ = map.into_raw(); // `m` unmaps it
                            // SAFETY: misaligned address is refused before any mapping.
    let e = unsafe { map_ramblock(&img, 0, Some(m.ptr.wrapping_add(8))) }.unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
}

#[test]
fn munmap_of_part_of_the_range_is_followed() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 8 * MIB;
    let dir = TmpDir::new("lazy-unmap");
    let (path, mem) = mixed_image(&dir, len, 3);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    // SAFETY: as in `restore_with`; the unmapped part is never touched again.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(NO_PREFETCH, 1)) }.unwrap();
    // SAFETY: the last 2 MiB of our own mapping.
    let r = unsafe { libc::munmap(m.ptr.add((6 * MIB) as usize).cast(), (2 * MIB) as usize) };
    assert_eq!(r, 0);
    for p in (0..6 * MIB / PS).step_by(33) {
        assert_eq!(
            m.page(p),
            mem.as_slice()[(p * PS) as usize..((p + 1) * PS) as usize]
        );
    }
    // Nothing is placed into the unmapped part: stop completes.
    lz.stop().unwrap();
    let head = (6 * MIB) as usize;
    // SAFETY: the first 6 MiB are still mapped.
    let got = unsafe { std::slice::from_raw_parts(m.ptr, head) };
    assert!(first_diff(got, &mem.as_slice()[..head]).is_none());
}

#[test]
fn fork_during_service_child_gets_sigsegv_not_zeros() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 8 * MIB;
    let dir = TmpDir::new("lazy-fork");
    let (path, mem) = mixed_image(&dir, len, 3);
    let want = mem.as_slice();
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &opts(NO_PREFETCH, 1)) }.unwrap();
    // A data page resident in the parent, and one nobody touched yet.
    let (resident, unfilled) = (3u64, (len / PS) - 5);
    assert_ne!(
        want[(unfilled * PS) as usize..][..PS as usize],
        [0u8; PS as usize]
    );
    assert_eq!(
        m.page(resident),
        want[(resident * PS) as usize..][..PS as usize]
    );
    for (page, write) in [(unfilled, false), (unfilled, true), (resident, false)] {
        let st = m.touch_in_child(page * PS, write);
        assert!(
            killed_by_sigsegv(st),
            "child touching page {page} (write {write}) was not killed by SIGSEGV: status 0x{st:x}"
        );
    }
    // The parent's service goes on: the child's touches placed nothing.
    assert_eq!(lz.stats().faults, 1);
    random_touches(&m, want, 4, 200, 1000);
    lz.stop().unwrap();
    let eager = mappedram::engine::read_ramblock_to_vec(&img, 0, 2).unwrap();
    assert!(first_diff(&eager, want).is_none());
    if let Some(d) = first_diff(&m.to_vec(), &eager) {
        panic!("after stop: {d}");
    }
    // The mark stays after the stop (documented), so children still get
    // no mapping there.
    assert!(killed_by_sigsegv(m.touch_in_child(0, false)));
}

#[test]
fn fork_during_prefetch_neither_hangs_nor_disturbs_the_parent() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 32 * MIB;
    let dir = TmpDir::new("lazy-fork-prefetch");
    let (path, mem) = mixed_image(&dir, len, 3);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    let o = LazyOptions {
        rate_limit: 32 * MIB,
        ..opts(0, 2)
    };
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &o) }.unwrap();
    for i in 0..4 {
        let st = m.touch_in_child(i * 7 * MIB, i % 2 == 1);
        assert!(killed_by_sigsegv(st), "status 0x{st:x}");
    }
    lz.wait().unwrap();
    lz.stop().unwrap();
    assert!(first_diff(&m.to_vec(), mem.as_slice()).is_none());
}

/// 32 MiB with whole zero huge pages (absent in the image: filled by
/// copying zeros, hugetlbfs has no UFFDIO_ZEROPAGE) and mixed ones.
fn huge_page_image(dir: &TmpDir) -> (std::path::PathBuf, common::Aligned) {
    let len = 32 * MIB;
    let mut mem = block_memory(5, 0, len, 3);
    for huge in [1u64, 6, 7, 15] {
        mem.as_mut_slice()[(huge * 2 * MIB) as usize..((huge + 1) * 2 * MIB) as usize].fill(0);
    }
    (image_of(dir, &mem, 3), mem)
}

#[test]
fn hugetlbfs_memfd_under_a_4k_image_equals_eager_restore() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let Some(_huge) = hugepages(16) else { return };
    let dir = TmpDir::new("lazy-huge");
    let (path, mem) = huge_page_image(&dir);
    let len = mem.as_slice().len();
    let img = Arc::new(Image::open(&path, ImageFlags::DIRECT).unwrap());
    // With prefetch, 8 threads touching.
    let m = Mapping::hugetlb_memfd(len);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &opts(0, 2)) }.unwrap();
    random_touches(&m, mem.as_slice(), 8, 300, 1000);
    lz.wait().unwrap();
    lz.stop().unwrap();
    let eager = mappedram::engine::read_ramblock_to_vec(&img, 0, 2).unwrap();
    if let Some(d) = first_diff(&m.to_vec(), &eager) {
        panic!("hugetlbfs with prefetch: {d}");
    }
    drop(m);
    // Faults only: one fault fills a whole 2 MiB page; zero huge pages too.
    let m = Mapping::hugetlb_memfd(len);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &opts(NO_PREFETCH, 1)) }.unwrap();
    let per_huge = 2 * MIB / PS;
    for huge in [0u64, 1, 9] {
        for p in huge * per_huge..(huge + 1) * per_huge {
            assert_eq!(
                m.page(p),
                eager[(p * PS) as usize..((p + 1) * PS) as usize],
                "page {p}"
            );
        }
    }
    assert_eq!(lz.stats().faults, 3, "one fault per huge page");
    lz.stop().unwrap();
    if let Some(d) = first_diff(&m.to_vec(), &eager) {
        panic!("hugetlbfs without prefetch: {d}");
    }
    drop(m);
    // Private hugetlbfs memory (MAP_HUGETLB) too.
    let m = Mapping::hugetlb_private(len);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &opts(0, 2)) }.unwrap();
    random_touches(&m, mem.as_slice(), 4, 200, 1000);
    lz.wait().unwrap();
    lz.stop().unwrap();
    if let Some(d) = first_diff(&m.to_vec(), &eager) {
        panic!("private hugetlbfs: {d}");
    }
}

#[test]
fn shmem_memfd_faults_only_equals_eager_restore() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let dir = TmpDir::new("lazy-shmem");
    let (path, mem) = huge_page_image(&dir);
    let len = mem.as_slice().len();
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::memfd(len);
    // SAFETY: as in `restore_with`.
    let lz = unsafe { Lazy::start(img.clone(), 0, m.ptr, &opts(NO_PREFETCH, 1)) }.unwrap();
    random_touches(&m, mem.as_slice(), 4, 300, 1000);
    lz.stop().unwrap();
    let eager = mappedram::engine::read_ramblock_to_vec(&img, 0, 2).unwrap();
    if let Some(d) = first_diff(&m.to_vec(), &eager) {
        panic!("{d}");
    }
}

/// Set in the child that `unavailable_userfaultfd_says_why` runs as nobody.
const CHILD: &str = "MR_TEST_UFFD_PERMISSION_CHILD";
/// A test gated on userfaultfd, run in that child too.
const GATED: &str = "shmem_memfd_faults_only_equals_eager_restore";

/// The library's verdict on userfaultfd agrees with the test probe, and
/// when it is unavailable the error is -EPERM (or -ENOSYS) naming the
/// sysctl and /dev/userfaultfd. As root the check runs in a copy of this
/// test binary as uid 65534 (nobody), which has no permission with
/// vm.unprivileged_userfaultfd = 0 and a root-only /dev/userfaultfd; a
/// gated test run there must then say NOT RUN (and pass: not the full
/// suite in the child).
#[test]
fn unavailable_userfaultfd_says_why() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if std::env::var_os(CHILD).is_some() || !root {
        return check_library_agrees_with_probe();
    }
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "unavailable_userfaultfd_says_why",
            GATED,
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(CHILD, "1")
        .env("TMPDIR", "/tmp")
        .env_remove("MR_TEST_REQUIRE_ALL")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child as nobody failed:\n{text}");
    assert!(text.contains("2 passed"), "{text}");
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap();
    if sysctl.trim() == "0" {
        assert!(
            text.contains(&format!("NOT RUN: {GATED} needs userfaultfd")),
            "nobody may not use userfaultfd here, the child should say NOT RUN:\n{text}"
        );
    }
    eprintln!("child as nobody:\n{text}");
}

fn check_library_agrees_with_probe() {
    let dir = TmpDir::new("lazy-perm");
    let (path, _mem) = mixed_image(&dir, 2 * MIB, 3);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon((2 * MIB) as usize);
    // SAFETY: `m` outlives the restore (stopped below when it starts).
    let r = unsafe { Lazy::start(img, 0, m.ptr, &opts(0, 1)) };
    match (probe_userfaultfd(), r) {
        (Ok(()), Ok(lz)) => {
            assert!(met(Need::Userfaultfd));
            lz.stop().unwrap();
        }
        (Err(why), Err(e)) => {
            eprintln!("probe: {why}; library: {e}");
            let msg = e.to_string();
            match e.errno() {
                libc::EPERM => assert!(
                    msg.contains("vm.unprivileged_userfaultfd") && msg.contains("/dev/userfaultfd"),
                    "{msg}"
                ),
                libc::ENOSYS => assert!(msg.contains("CONFIG_USERFAULTFD"), "{msg}"),
                n => panic!("errno {n}, want EPERM or ENOSYS: {msg}"),
            }
        }
        (Ok(()), Err(e)) => panic!("the probe can use userfaultfd, the library cannot: {e}"),
        (Err(why), Ok(_)) => panic!("the library started, the probe could not: {why}"),
    }
}
