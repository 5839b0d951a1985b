//! `AUTO_DIRECT`: O_DIRECT for large images on disk file systems, the page
//! cache for small ones and on memory file systems; the choice is reported
//! and data round-trips either way. Needs /tmp on a disk file system (ext4
//! here) and /dev/shm on tmpfs: the test fails saying so otherwise.

use mappedram::engine::{read_ramblock_to_vec, save_ramblock};
use mappedram::image::iomode::AUTO_DIRECT_MIN_BYTES;
use mappedram::{BlockSpec, GuestSlice, Image, ImageFlags};
use std::path::{Path, PathBuf};

fn spec(len: u64) -> Vec<BlockSpec> {
    vec![BlockSpec {
        idstr: "mem".into(),
        used_length: len,
        page_size: 4096,
    }]
}

fn fs_type(p: &Path) -> i64 {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: plain old data; zeroed is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path, writable struct.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t
}

fn dir(base: &str) -> PathBuf {
    let d = Path::new(base).join(format!("mr-auto-direct-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn large_on_disk_is_direct_small_or_tmpfs_is_buffered() {
    let disk = dir("/tmp");
    assert_ne!(
        fs_type(&disk),
        0x0102_1994,
        "/tmp must be a disk file system for this test"
    );
    let small = disk.join("small.img");
    let img = Image::create(
        &small,
        "pc-i440fx-10.0",
        &spec(512 << 10),
        ImageFlags::AUTO_DIRECT,
    )
    .unwrap();
    assert!(!img.is_direct(), "512 KiB: page cache");
    img.finish().unwrap();
    img.close().unwrap();
    let big = disk.join("big.img");
    let len = AUTO_DIRECT_MIN_BYTES.max(16 << 20);
    let img = Image::create(&big, "pc-i440fx-10.0", &spec(len), ImageFlags::AUTO_DIRECT).unwrap();
    assert!(img.is_direct(), "{len} bytes on disk: O_DIRECT");
    // Data round-trips through the chosen path.
    let mut whole = vec![0u8; len as usize];
    for (i, b) in whole[..8 << 20].iter_mut().enumerate() {
        *b = (i / 4096 % 251) as u8 ^ 0x5a;
    }
    save_ramblock(&img, 0, GuestSlice::from_slice(&whole), None, 2).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&big, ImageFlags::AUTO_DIRECT).unwrap();
    assert!(img.is_direct(), "open of a large image on disk: O_DIRECT");
    assert_eq!(read_ramblock_to_vec(&img, 0, 2).unwrap(), whole);
    img.close().unwrap();
    let img = Image::open(&small, ImageFlags::AUTO_DIRECT).unwrap();
    assert!(!img.is_direct(), "open of a small image: page cache");
    img.close().unwrap();
    // DIRECT is DIRECT whatever the size; no flag is the page cache.
    let img = Image::open(&small, ImageFlags::DIRECT | ImageFlags::AUTO_DIRECT).unwrap();
    assert!(img.is_direct());
    img.close().unwrap();
    let img = Image::open(&big, ImageFlags::default()).unwrap();
    assert!(!img.is_direct());
    img.close().unwrap();
    std::fs::remove_dir_all(&disk).unwrap();

    let shm = dir("/dev/shm");
    assert_eq!(
        fs_type(&shm),
        0x0102_1994,
        "/dev/shm must be tmpfs for this test"
    );
    let p = shm.join("big.img");
    let img = Image::create(&p, "pc-i440fx-10.0", &spec(len), ImageFlags::AUTO_DIRECT).unwrap();
    assert!(!img.is_direct(), "tmpfs: page cache");
    img.close().unwrap();
    std::fs::remove_dir_all(&shm).unwrap();
}
