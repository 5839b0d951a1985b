//! A save does not read the pages the page tables show to be zero (pages
//! never touched in private anonymous memory, pages mapped to the shared
//! zero page), and still reads every page whose empty page-table entry may
//! stand for data: shared memfd memory, a private file mapping, memory
//! under on-demand restore.

mod common;

use common::need::{met, Need};
use common::uffd::{first_diff, mixed_image, Mapping};
use common::{specs, TmpDir, PS};
use mappedram::compress::ImageOptions;
use mappedram::engine::{read_ramblock, save_ramblock};
use mappedram::lazy::{Lazy, LazyOptions, NO_PREFETCH};
use mappedram::{GuestSlice, GuestSliceMut, Image, ImageFlags};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

/// Pages of `m` with a page-table entry (`mincore`).
fn resident(m: &Mapping) -> usize {
    let mut v = vec![0u8; m.len / PS as usize];
    // SAFETY: `m` is one mapping of `len` bytes; one byte per page.
    let r = unsafe { libc::mincore(m.ptr.cast(), m.len, v.as_mut_ptr()) };
    assert_eq!(r, 0);
    v.iter().filter(|b| **b & 1 != 0).count()
}

/// Save block 0 of a fresh image from `m`, then read it back into fresh
/// memory.
fn save_and_read_back(m: &Mapping, dir: &TmpDir) -> Vec<u8> {
    save_and_read_back_with(m, dir, &ImageOptions::default())
}

/// [`save_and_read_back`] into an image created with `opts`.
fn save_and_read_back_with(m: &Mapping, dir: &TmpDir, opts: &ImageOptions) -> Vec<u8> {
    let path = dir.join("kz.img");
    let blocks = specs(m.len as u64);
    let img = Image::create_with(&path, "pc", &blocks, ImageFlags::default(), opts).unwrap();
    // SAFETY: `m` stays mapped for the call; this test writes nothing to
    // it meanwhile.
    let g = unsafe { GuestSlice::new(m.ptr, m.len) }.unwrap();
    save_ramblock(&img, 0, g, None, 2).unwrap();
    img.finish().unwrap();
    let mut back = vec![0xAAu8; m.len];
    read_ramblock(&img, 0, GuestSliceMut::from_mut_slice(&mut back), true, 2).unwrap();
    back
}

#[test]
fn untouched_private_memory_is_not_read_and_saves_as_holes() {
    untouched_memory_is_not_read(&ImageOptions::default());
}

#[test]
fn untouched_private_memory_is_not_read_into_a_compressed_image() {
    untouched_memory_is_not_read(&ImageOptions::zstd(1));
}

/// Whether this kernel has `PAGEMAP_SCAN` (Linux 6.7+): an empty scan of
/// our own page tables succeeds. Without it, a save reads every page (the
/// other tests here still hold); under the full suite its absence fails.
fn pagemap_scan_supported() -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut arg = [0u64; 12];
    arg[0] = std::mem::size_of_val(&arg) as u64;
    arg[11] = 1 << 3; // return_mask: PAGE_IS_PRESENT
                      // SAFETY: a pm_scan_arg of 12 u64s with start = end = 0 and no output
                      // vector: the kernel walks nothing and writes only into `arg`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), 0xC060_6610, arg.as_mut_ptr()) };
    if r >= 0 {
        return true;
    }
    assert!(
        std::env::var_os("MR_TEST_REQUIRE_ALL").is_none(),
        "this kernel has no PAGEMAP_SCAN (Linux 6.7+): {}",
        std::io::Error::last_os_error()
    );
    eprintln!("NOT RUN: this kernel has no PAGEMAP_SCAN (Linux 6.7+)");
    false
}

fn untouched_memory_is_not_read(opts: &ImageOptions) {
    if !pagemap_scan_supported() {
        return;
    }
    let dir = TmpDir::new("known-zero");
    let len = 64 * MIB;
    let m = Mapping::anon(len as usize);
    // One data page per MiB: the gaps between them (1 MiB - 4 KiB) are too
    // long to be written as zeros, so the save has no reason to touch them.
    for mib in 0..len / MIB {
        m.write_u64(mib * MIB + 8, 0x5eed_0000 + mib);
    }
    // A page read once (the shared zero page) and a written zero page.
    let _ = m.page(5);
    m.write_u64(7 * PS, 0);
    let before = resident(&m);
    let back = save_and_read_back_with(&m, &dir, opts);
    assert_eq!(
        resident(&m),
        before,
        "the save faulted in pages the page tables show to be zero"
    );
    if let Some(d) = first_diff(&back, &m.to_vec()) {
        panic!("read back: {d}");
    }
}

#[test]
fn shared_memfd_pages_not_mapped_here_are_read() {
    let dir = TmpDir::new("known-zero-memfd");
    let len = 8 * MIB;
    let m = Mapping::memfd(len as usize);
    // Fill through the mapping, then drop this process's page-table
    // entries: the data stays in the memfd's page cache.
    for p in 0..len / PS {
        m.write_u64(p * PS, p + 1);
    }
    m.madvise(0, len, libc::MADV_DONTNEED);
    assert_eq!(
        resident(&m),
        len as usize / PS as usize,
        "shmem pages stay in mincore"
    );
    let back = save_and_read_back(&m, &dir);
    if let Some(d) = first_diff(&back, &m.to_vec()) {
        panic!("shared memory saved wrong: {d}");
    }
}

#[test]
fn private_file_mapping_pages_are_read() {
    let dir = TmpDir::new("known-zero-file");
    let len = 4 * MIB as usize;
    let data: Vec<u8> = (0..len).map(|i| (i / 4096 % 251) as u8 + 1).collect();
    let f = dir.join("backing");
    std::fs::write(&f, &data).unwrap();
    let file = std::fs::File::open(&f).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh private mapping of our file, unmapped below; nothing
    // else maps it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let m = Mapping { ptr: p.cast(), len };
    let back = save_and_read_back(&m, &dir);
    if let Some(d) = first_diff(&back, &data) {
        panic!("private file mapping saved wrong: {d}");
    }
}

#[test]
fn memory_under_on_demand_restore_saves_the_image_not_zeros() {
    if !met(Need::Userfaultfd) {
        return;
    }
    let dir = TmpDir::new("known-zero-lazy");
    let len = 16 * MIB;
    let (path, want) = mixed_image(&dir, len, 3);
    let img = Arc::new(Image::open(&path, ImageFlags::default()).unwrap());
    let m = Mapping::anon(len as usize);
    let o = LazyOptions {
        flags: NO_PREFETCH,
        threads: 1,
        ..Default::default()
    };
    // SAFETY: `m` is a fresh mapping of the block's length; `lz` is stopped
    // before `m` is dropped.
    let lz = unsafe { Lazy::start(img, 0, m.ptr, &o) }.unwrap();
    // Nothing is filled yet: every page-table entry is empty, and each
    // stands for the image's data, not for zeros.
    let out = TmpDir::new("known-zero-lazy-out");
    let back = save_and_read_back(&m, &out);
    lz.stop().unwrap();
    if let Some(d) = first_diff(&back, want.as_slice()) {
        panic!("a save of memory under on-demand restore: {d}");
    }
}
