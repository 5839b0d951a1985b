//! Live copy-on-write snapshots for real on this kernel (root): while four
//! threads keep writing known patterns, the image receives memory exactly
//! as it was at the start instant; zero pages stay holes; anonymous and
//! memfd (shmem) memory both work.

mod common;

use common::need::hugepages;
use common::uffd::{first_diff, killed_by_sigsegv, Mapping};
use common::{block_memory, met, specs, Need, TmpDir, PS};
use mappedram::engine::read_ramblock_to_vec;
use mappedram::snapshot::Snapshot;
use mappedram::{Image, ImageFlags};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

const MIB: u64 = 1 << 20;
/// Marks every value a writer stores after the start instant.
const POST: u64 = 0xfeed_0000_0000_0000;

struct Writers {
    pause: AtomicBool,
    paused: AtomicU64,
    quit: AtomicBool,
    writes: AtomicU64,
}

/// Four threads writing 8-byte values over the mapping (skipping the
/// never-touched second half of every 16th MiB); `post` is set in the
/// values they write once `post_phase` is true.
fn run_writers<'a>(
    s: &'a std::thread::Scope<'a, '_>,
    m: &'a Mapping,
    w: &'a Writers,
    post_phase: &'a AtomicBool,
) {
    for t in 0..4u64 {
        s.spawn(move || {
            let mut seq = 0u64;
            let mut x = 0x1234_5678 ^ t;
            loop {
                if w.quit.load(Ordering::Acquire) {
                    return;
                }
                if w.pause.load(Ordering::Acquire) {
                    w.paused.fetch_add(1, Ordering::AcqRel);
                    while w.pause.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    w.paused.fetch_sub(1, Ordering::AcqRel);
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (m.len as u64 / 8)) * 8;
                if (off / MIB) % 16 == 15 && off % MIB >= MIB / 2 {
                    continue;
                }
                seq += 1;
                let tag = if post_phase.load(Ordering::Acquire) {
                    POST
                } else {
                    0
                };
                m.write_u64(off, tag | (t << 40) | (seq & 0xff_ffff_ffff));
                w.writes.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

fn live_snapshot(m: &Mapping, len: u64) {
    live_snapshot_with(m, len, ImageFlags::default(), 3);
}

/// `live_snapshot` into an image opened with `flags`, saved by `threads`
/// threads; returns the snapshot's counters.
fn live_snapshot_with(
    m: &Mapping,
    len: u64,
    flags: ImageFlags,
    threads: u32,
) -> mappedram::snapshot::SnapshotStats {
    let dir = TmpDir::new("snap");
    let path = dir.join("snap.img");
    let img = Arc::new(Image::create(&path, "pc-i440fx-10.0", &specs(len), flags).unwrap());
    // Initial contents: mixed pages, one in three zero; the second half of
    // every 16th MiB never touched.
    let init = block_memory(2, 0, len, 3);
    for mib in 0..len / MIB {
        let n = if mib % 16 == 15 { MIB / 2 } else { MIB };
        // SAFETY: inside the mapping and `init`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                init.ptr().add((mib * MIB) as usize),
                m.ptr.add((mib * MIB) as usize),
                n as usize,
            )
        };
    }
    let w = Writers {
        pause: AtomicBool::new(false),
        paused: AtomicU64::new(0),
        quit: AtomicBool::new(false),
        writes: AtomicU64::new(0),
    };
    let post = AtomicBool::new(false);
    let expected = std::thread::scope(|s| {
        run_writers(s, m, &w, &post);
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Pause the "vCPUs", take the start instant, start, resume.
        w.pause.store(true, Ordering::Release);
        while w.paused.load(Ordering::Acquire) < 4 {
            std::hint::spin_loop();
        }
        // Reading only: untouched pages stay unpopulated.
        let mut v = vec![0u8; len as usize];
        for p in 0..len / PS {
            let off = p * PS;
            if (off / MIB) % 16 == 15 && off % MIB >= MIB / 2 {
                continue;
            }
            v[off as usize..(off + PS) as usize].copy_from_slice(&m.page(p));
        }
        // SAFETY: `m` stays mapped until after `stop`.
        let snap = unsafe { Snapshot::start(img.clone(), 0, m.ptr, threads) }.unwrap();
        post.store(true, Ordering::Release);
        let writes_before = w.writes.load(Ordering::Relaxed);
        w.pause.store(false, Ordering::Release);
        snap.wait().unwrap();
        let st = snap.stats();
        // Let the writers change enough of memory after the start that the
        // comparison below means something (a fast snapshot may finish
        // before they wrote much).
        let t = std::time::Instant::now();
        while w.writes.load(Ordering::Relaxed) - writes_before < 20_000
            && t.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        w.quit.store(true, Ordering::Release);
        snap.stop().unwrap();
        assert!(
            st.wp_faults > 0,
            "the writers never hit a protected page: {st:?}"
        );
        eprintln!(
            "{st:?}, writes during the snapshot: {}",
            w.writes.load(Ordering::Relaxed) - writes_before
        );
        (v, st)
    });
    let (expected, st) = expected;
    let got = read_ramblock_to_vec(&img, 0, 2).unwrap();
    if let Some(d) = first_diff(&got, &expected) {
        panic!("image differs from the start instant: {d}");
    }
    // Every slot the writers changed after the start holds its old value
    // in the image, never the new one (and there are many such slots).
    let now = m.to_vec();
    let mut changed = 0u64;
    for (i, (g, n)) in got.chunks(8).zip(now.chunks(8)).enumerate() {
        if g != n {
            changed += 1;
            let v = u64::from_le_bytes(n.try_into().unwrap());
            assert_eq!(v & POST, POST, "slot 0x{:x} changed by nobody", i * 8);
        }
    }
    assert!(
        changed > 1000,
        "only {changed} slots written after the start"
    );
    // Zero pages (and the untouched ranges) are holes.
    let zero_pages = expected
        .chunks(PS as usize)
        .filter(|p| p.iter().all(|&b| b == 0))
        .count() as u64;
    let info = img.block_info(0).unwrap();
    assert_eq!(info.pages_present, len / PS - zero_pages);
    for p in (15 * MIB + MIB / 2) / PS..16 * MIB / PS {
        assert!(!img.page_present(0, p).unwrap());
    }
    st
}

#[test]
fn four_writers_anonymous_memory_image_is_the_start_instant() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 64 * MIB;
    let m = Mapping::anon(len as usize);
    live_snapshot(&m, len);
}

/// The batched write-out: copied-out pages leave in the same `pwritev` as
/// the saved pages of their words (O_DIRECT, so every request is the
/// library's own), one saver, writers far ahead of it; the image is still
/// the start instant byte for byte.
#[test]
fn copied_out_pages_written_with_their_words_direct_image() {
    let len = 128 * MIB;
    let m = Mapping::anon(len as usize);
    let st = live_snapshot_with(&m, len, ImageFlags::DIRECT, 1);
    assert!(st.copied_out > 0, "no page was copied out: {st:?}");
    assert_eq!(st.saved, len / PS);
}

#[test]
fn four_writers_memfd_memory_image_is_the_start_instant() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 32 * MIB;
    let m = Mapping::memfd(len as usize);
    live_snapshot(&m, len);
}

#[test]
fn stop_before_the_end_is_cancelled_and_releases_writers() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 256 * MIB;
    let dir = TmpDir::new("snap-stop");
    let path = dir.join("s.img");
    let img = Arc::new(
        Image::create(&path, "pc-i440fx-10.0", &specs(len), ImageFlags::default()).unwrap(),
    );
    let m = Mapping::anon(len as usize);
    let init = block_memory(3, 0, len, 0);
    // SAFETY: both hold `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(init.ptr(), m.ptr, len as usize) };
    // SAFETY: `m` outlives the snapshot.
    let snap = unsafe { Snapshot::start(img, 0, m.ptr, 1) }.unwrap();
    let b = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            b.wait();
            // Every write lands (none stays held after stop).
            for p in (0..len / PS).rev().step_by(64) {
                m.write_u64(p * PS, POST | p);
            }
        });
        b.wait();
        let e = snap.stop().unwrap_err();
        assert_eq!(e.errno(), libc::ECANCELED, "{e}");
    });
    for p in (0..len / PS).rev().step_by(64) {
        assert_eq!(
            u64::from_le_bytes(m.page(p)[..8].try_into().unwrap()),
            POST | p
        );
    }
}

#[test]
fn discarding_unsaved_pages_is_an_error() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 256 * MIB;
    let dir = TmpDir::new("snap-discard");
    let path = dir.join("d.img");
    let img = Arc::new(
        Image::create(&path, "pc-i440fx-10.0", &specs(len), ImageFlags::default()).unwrap(),
    );
    let m = Mapping::anon(len as usize);
    let init = block_memory(4, 0, len, 0);
    // SAFETY: both hold `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(init.ptr(), m.ptr, len as usize) };
    // SAFETY: `m` outlives the snapshot.
    let snap = unsafe { Snapshot::start(img, 0, m.ptr, 1) }.unwrap();
    // The last MiB is saved last (one saver, in order).
    m.madvise(len - MIB, MIB, libc::MADV_DONTNEED);
    let e = snap.wait().unwrap_err();
    assert_eq!(e.errno(), libc::EFAULT, "{e}");
    assert!(e.to_string().contains("discarded"), "{e}");
    assert!(snap.stop().is_err());
}

#[test]
fn four_writers_hugetlbfs_shared_and_private_image_is_the_start_instant() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let Some(_huge) = hugepages(16) else { return };
    let len = 32 * MIB;
    let m = Mapping::hugetlb_memfd(len as usize);
    live_snapshot(&m, len);
    drop(m);
    let m = Mapping::hugetlb_private(len as usize);
    live_snapshot(&m, len);
}

#[test]
fn fork_during_snapshot_child_gets_sigsegv() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let len = 64 * MIB;
    let dir = TmpDir::new("snap-fork");
    let path = dir.join("f.img");
    let img = Arc::new(
        Image::create(&path, "pc-i440fx-10.0", &specs(len), ImageFlags::default()).unwrap(),
    );
    let m = Mapping::anon(len as usize);
    let init = block_memory(6, 0, len, 3);
    // SAFETY: both hold `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(init.ptr(), m.ptr, len as usize) };
    // SAFETY: `m` outlives the snapshot.
    let snap = unsafe { Snapshot::start(img.clone(), 0, m.ptr, 1) }.unwrap();
    // Children reading and writing protected memory (saved or not): no
    // mapping there.
    for (off, write) in [(len - PS, true), (len / 2, false), (0, true)] {
        let st = m.touch_in_child(off, write);
        assert!(
            killed_by_sigsegv(st),
            "child touching 0x{off:x} (write {write}) was not killed by SIGSEGV: status 0x{st:x}"
        );
    }
    // The parent's writes after the start are held and never reach the image.
    for p in (0..len / PS).step_by(97) {
        m.write_u64(p * PS, POST | p);
    }
    snap.wait().unwrap();
    snap.stop().unwrap();
    let got = read_ramblock_to_vec(&img, 0, 2).unwrap();
    if let Some(d) = first_diff(&got, init.as_slice()) {
        panic!("image differs from the start instant: {d}");
    }
    for p in (0..len / PS).step_by(97) {
        assert_eq!(
            u64::from_le_bytes(m.page(p)[..8].try_into().unwrap()),
            POST | p
        );
    }
}

#[test]
fn hugetlbfs_block_not_a_multiple_of_the_huge_page_is_refused() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let Some(_huge) = hugepages(2) else { return };
    // Block 1 (pc.bios) is 256 KiB: it cannot be served or protected in
    // 2 MiB pages.
    let dir = TmpDir::new("snap-huge-odd");
    let path = dir.join("o.img");
    let img = Arc::new(
        Image::create(
            &path,
            "pc-i440fx-10.0",
            &specs(4 * MIB),
            ImageFlags::default(),
        )
        .unwrap(),
    );
    let m = Mapping::hugetlb_memfd((2 * MIB) as usize);
    // SAFETY: the calls fail before touching memory.
    let e = unsafe { Snapshot::start(img.clone(), 1, m.ptr, 1) }.unwrap_err();
    assert_eq!(e.errno(), libc::ENOTSUP, "{e}");
    assert!(e.to_string().contains("2097152"), "{e}");
    img.finish().unwrap();
    let o = mappedram::lazy::LazyOptions::default();
    // SAFETY: as above.
    let e = unsafe { mappedram::lazy::Lazy::start(img, 1, m.ptr, &o) }.unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(e.to_string().contains("2097152"), "{e}");
    // Refused before the range was touched: children still inherit it.
    assert_eq!(m.touch_in_child(0, true), 0);
}
