//! Full disk: a real `ENOSPC` from a size-limited tmpfs must reach the
//! caller (errno `ENOSPC`, a message naming the file and offset) from
//! whichever call hit it — `save_ramblock`, `write_page`, `sync`, `finish`,
//! `close` — nothing panics, and the image left behind is recognisably
//! incomplete (its headers fit, so it is `Error::Incomplete`, not
//! `Corrupt`), with no page claimed whose data did not fit.
//!
//! Needs root: each test mounts its own tmpfs (and fails saying so when the
//! mount is refused).

mod common;

use common::*;
use mappedram::engine::{read_ramblock_to_vec, save_ramblock};
use mappedram::{BlockSpec, Error, GuestSlice, Image, ImageFlags};
use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Write;
use std::path::Path;

const FS_SIZE: u64 = 16 << 20;

fn assert_enospc<T: std::fmt::Debug>(r: &Result<T, Error>, path: &Path, what: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.errno(), libc::ENOSPC, "{what}: {e}");
            let m = e.to_string();
            assert!(
                m.contains(&path.display().to_string()),
                "{what}: message lacks the path: {m}"
            );
            assert!(
                m.contains("offset"),
                "{what}: message lacks the offset: {m}"
            );
        }
        Ok(v) => panic!("{what}: succeeded ({v:?}) on a full file system"),
    }
}

/// Recovered, every present page holds the data that was saved.
fn check_recovered(path: &Path, want: &[&[u8]]) -> u64 {
    match Image::open(path, ImageFlags::default()) {
        Err(Error::Incomplete(_)) => {}
        Err(e) => panic!("expected Incomplete after ENOSPC, got {e}"),
        Ok(_) => panic!("an image whose save hit ENOSPC opens as complete"),
    }
    let img = Image::open(path, ImageFlags::RECOVER).unwrap();
    let mut present = 0;
    for (b, w) in want.iter().enumerate() {
        let got = read_ramblock_to_vec(&img, b, 2).unwrap();
        for (p, (g, w)) in got
            .chunks(PS as usize)
            .zip(w.chunks(PS as usize))
            .enumerate()
        {
            if img.page_present(b, p as u64).unwrap() {
                present += 1;
                assert_eq!(g, w, "block {b} page {p} is claimed but holds other data");
            }
        }
    }
    present
}

/// Fill the file system holding `dir` until it is full.
fn fill_up(dir: &Path) -> u64 {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let mut total = 0u64;
    for chunk in [1 << 20, 4096, 512] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
    total
}

#[test]
fn enospc_in_save_ramblock_reaches_the_caller() {
    if !met(Need::Root) {
        return;
    }
    let fs = TmpfsMount::new("enospc-save", FS_SIZE);
    let path = fs.join("big.img");
    // Twice the file system, mostly random (incompressible, no zero pages).
    let len = 2 * FS_SIZE;
    let mut mem = Aligned::new(len as usize);
    Rng::new(7).fill(mem.as_mut_slice());
    let img = Image::create(
        &path,
        "pc-i440fx-10.0",
        &[BlockSpec {
            idstr: "mem".into(),
            used_length: len,
            page_size: PS,
        }],
        ImageFlags::default(),
    )
    .expect("the headers fit");
    // SAFETY: mem is valid for len bytes.
    let r = save_ramblock(
        &img,
        0,
        unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        None,
        2,
    );
    assert_enospc(&r, &path, "save_ramblock");
    // Finishing an image whose save failed still fails, or completes what
    // is there; the caller was told. Here the caller gives up and closes.
    let close = img.close();
    println!("close after ENOSPC: {close:?}");
    let present = check_recovered(&path, &[mem.as_slice()]);
    println!(
        "ENOSPC in save_ramblock: {present} of {} pages present in the recovered image",
        len / PS
    );
    assert!(present > 0 && present < len / PS);
}

#[test]
fn enospc_in_write_page_sync_finish_and_close() {
    if !met(Need::Root) {
        return;
    }
    let fs = TmpfsMount::new("enospc-sync", FS_SIZE);
    let path = fs.join("sparse.img");
    // A 4 GiB guest: a 128 KiB bitmap that stays a hole until sync writes it.
    let len: u64 = 4 << 30;
    let img = Image::create(
        &path,
        "pc-i440fx-10.0",
        &[BlockSpec {
            idstr: "mem".into(),
            used_length: len,
            page_size: PS,
        }],
        ImageFlags::default(),
    )
    .unwrap();
    let mut pages = vec![vec![0u8; PS as usize]; 3];
    for (i, p) in pages.iter_mut().enumerate() {
        page_content(1, 0, i as u64, 0, p);
    }
    img.write_page(0, 0, &pages[0]).unwrap();
    img.write_page(0, PS, &pages[1]).unwrap();
    let filled = fill_up(fs.path());
    println!("filler: {filled} bytes");
    let r = img.write_page(0, 2 * PS, &pages[2]);
    assert_enospc(&r, &path, "write_page");
    assert!(
        !img.page_present(0, 2).unwrap(),
        "no bit for a page that did not fit"
    );
    let r = img.sync();
    assert_enospc(&r, &path, "sync (bitmap write)");
    let r = img.finish();
    assert_enospc(&r, &path, "finish");
    let r = img.close();
    assert_enospc(&r, &path, "close");
    let mut want = vec![0u8; 3 * PS as usize];
    want[..PS as usize].copy_from_slice(&pages[0]);
    want[PS as usize..2 * PS as usize].copy_from_slice(&pages[1]);
    // Only the first 3 pages matter; the rest of the block reads as zero.
    match Image::open(&path, ImageFlags::default()) {
        Err(Error::Incomplete(_)) => {}
        other => panic!("expected Incomplete, got {other:?}"),
    }
    // Space comes back: the same image is recovered and finished.
    std::fs::remove_file(fs.join("filler")).unwrap();
    let img = Image::open(&path, ImageFlags::RECOVER | ImageFlags::READ_WRITE).unwrap();
    let mut got = vec![0u8; PS as usize];
    let mut claimed = std::collections::BTreeSet::new();
    for (p, page) in pages.iter().enumerate() {
        // The bitmap write was cut short: a prefix (in the header's page)
        // may be on disk. Whatever is claimed holds the data written; the
        // page that did not fit is not claimed.
        if img.read_page(0, p as u64 * PS, &mut got).unwrap() {
            assert!(p < 2, "page {p} did not fit but is claimed");
            assert_eq!(&got, page, "page {p}");
            claimed.insert(p);
        }
    }
    img.write_page(0, 0, &pages[0]).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    assert!(img.read_page(0, 0, &mut got).unwrap());
    assert_eq!(got, pages[0]);
    claimed.insert(0);
    assert_eq!(
        img.block_info(0).unwrap().pages_present,
        claimed.len() as u64
    );
    println!("recovered after space came back: pages {claimed:?} present");
}

#[repr(C)]
struct MrRamblockDesc {
    idstr: *const c_char,
    used_length: u64,
    page_size: u64,
}

#[repr(C)]
struct MrImage {
    _opaque: [u8; 0],
}

extern "C" {
    fn mr_image_create(
        path: *const c_char,
        machine_type: *const c_char,
        blocks: *const MrRamblockDesc,
        nblocks: u32,
        flags: u32,
        out: *mut *mut MrImage,
    ) -> i32;
    fn mr_image_open(path: *const c_char, flags: u32, out: *mut *mut MrImage) -> i32;
    fn mr_image_save_ramblock(
        img: *mut MrImage,
        block: u32,
        host: *const c_void,
        dirty: *const u64,
        threads: u32,
    ) -> i32;
    fn mr_image_close(img: *mut MrImage) -> i32;
    fn mr_last_error() -> *const c_char;
}

fn last_error() -> String {
    // SAFETY: mr_last_error never returns NULL; the string lives until the
    // next failing call on this thread.
    unsafe { CStr::from_ptr(mr_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn enospc_through_the_c_api() {
    if !met(Need::Root) {
        return;
    }
    let fs = TmpfsMount::new("enospc-c", FS_SIZE);
    let path = fs.join("c.img");
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let len = FS_SIZE + (FS_SIZE / 2);
    let mut mem = Aligned::new(len as usize);
    Rng::new(11).fill(mem.as_mut_slice());
    let name = CString::new("mem").unwrap();
    let machine = CString::new("pc-i440fx-10.0").unwrap();
    let desc = MrRamblockDesc {
        idstr: name.as_ptr(),
        used_length: len,
        page_size: PS,
    };
    let mut img: *mut MrImage = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings, one descriptor, writable out.
    let rc = unsafe { mr_image_create(cpath.as_ptr(), machine.as_ptr(), &desc, 1, 0, &mut img) };
    assert_eq!(rc, 0, "{}", last_error());
    // SAFETY: img is live; mem is readable for len bytes; NULL dirty = all.
    let rc = unsafe { mr_image_save_ramblock(img, 0, mem.ptr().cast(), std::ptr::null(), 2) };
    assert_eq!(rc, -libc::ENOSPC, "save: {}", last_error());
    let msg = last_error();
    assert!(
        msg.contains(path.to_str().unwrap()) && msg.contains("offset"),
        "{msg}"
    );
    // The caller gives up: close, and the file stays recognisably unfinished.
    // SAFETY: img is live.
    let rc = unsafe { mr_image_close(img) };
    println!(
        "mr_image_close after ENOSPC: {rc} {}",
        if rc < 0 { last_error() } else { String::new() }
    );
    let mut img2: *mut MrImage = std::ptr::null_mut();
    // SAFETY: valid path, writable out.
    let rc = unsafe { mr_image_open(cpath.as_ptr(), 0, &mut img2) };
    assert_eq!(
        rc,
        -libc::EUCLEAN,
        "open of the unfinished image: {}",
        last_error()
    );
    assert!(img2.is_null(), "out-parameter written only on success");
}

/// A create that runs out of space leaves no file on a new path and an
/// existing image unchanged (the image is written unnamed and renamed over
/// the path only once its headers are on disk).
#[test]
fn enospc_in_create_leaves_no_file_and_the_old_image() {
    if !met(Need::Root) {
        return;
    }
    let fs = TmpfsMount::new("enospc-create", FS_SIZE);
    let old = fs.join("old.img");
    let img = Image::create(
        &old,
        "pc-i440fx-10.0",
        &common::specs(1 << 20),
        ImageFlags::default(),
    )
    .unwrap();
    img.write_page(0, 0, &vec![0x5au8; PS as usize]).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let before = std::fs::read(&old).unwrap();
    fill_up(fs.path());
    let entries = || {
        let mut v: Vec<String> = std::fs::read_dir(fs.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let listed = entries();
    // Many blocks: the headers alone need more than the last free bytes.
    let specs: Vec<BlockSpec> = (0..64)
        .map(|i| BlockSpec {
            idstr: format!("block-{i}-{}", "x".repeat(200)),
            used_length: 64 << 20,
            page_size: PS,
        })
        .collect();
    for target in [fs.join("new.img"), old.clone()] {
        let r = Image::create(&target, "pc-i440fx-10.0", &specs, ImageFlags::default());
        match r {
            Err(e) => assert_eq!(e.errno(), libc::ENOSPC, "{}: {e}", target.display()),
            Ok(_) => panic!("create on a full file system succeeded"),
        }
        assert_eq!(
            entries(),
            listed,
            "create on {} left files",
            target.display()
        );
        assert_eq!(
            std::fs::read(&old).unwrap(),
            before,
            "the old image changed"
        );
    }
    assert!(Image::open(&old, ImageFlags::default())
        .unwrap()
        .is_complete());
}
