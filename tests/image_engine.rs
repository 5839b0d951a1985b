//! Image and engine: round trips, thread-count independence, dirty rounds,
//! in-place updates, completion and cancellation.

mod common;

use common::fill::mix as fill_mix;
use common::{specs, Aligned, TmpDir, PS};
use mappedram::engine::{
    read_ramblock, read_ramblock_to_vec, save_ramblock, save_ramblock_with, Control,
};
use mappedram::{BlockSpec, DirtyBitmap, Error, GuestSlice, GuestSliceMut, Image, ImageFlags};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[test]
fn pages_round_trip_and_zero_page_clears_bit() {
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("pages.img");
    let img = Image::create(
        &path,
        "pc-i440fx-10.0",
        &specs(8 << 20),
        ImageFlags::default(),
    )
    .unwrap();
    assert_eq!(img.block_count(), 3);
    let mem = img.find_block("mem").unwrap();
    let page: Vec<u8> = (0..PS).map(|i| (i % 251) as u8 + 1).collect();
    img.write_page(mem, 0, &page).unwrap();
    img.write_page(mem, 5 * PS, &page).unwrap();
    assert!(img.page_present(mem, 5).unwrap());
    // Writing a zero page clears the bit.
    img.write_page(mem, 5 * PS, &vec![0u8; PS as usize])
        .unwrap();
    assert!(!img.page_present(mem, 5).unwrap());
    let one = img.find_block("/rom@etc/acpi/rsdp").unwrap();
    img.write_page(one, 0, &page).unwrap();
    assert!(matches!(img.find_block("nope"), Err(Error::NotFound(_))));
    assert!(matches!(
        img.write_page(mem, 1, &page),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        img.write_page(mem, 8 << 20, &page),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        img.write_page(one, PS, &page),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        img.write_page(7, 0, &page),
        Err(Error::NotFound(_))
    ));
    assert!(!img.is_complete());
    img.finish().unwrap();
    assert!(img.is_complete());
    img.close().unwrap();

    let img = Image::open(&path, ImageFlags::default()).unwrap();
    assert!(img.is_complete());
    assert_eq!(img.machine_type(), "pc-i440fx-10.0");
    assert_eq!(img.capabilities(), &["mapped-ram".to_string()]);
    let info = img.block_info(mem).unwrap();
    assert_eq!(info.pages_present, 1);
    assert_eq!(info.pages_offset % (1 << 20), 0);
    let mut got = vec![0xaau8; PS as usize];
    assert!(img.read_page(mem, 0, &mut got).unwrap());
    assert_eq!(got, page);
    assert!(!img.read_page(mem, 5 * PS, &mut got).unwrap());
    assert!(got.iter().all(|&b| b == 0));
    for t in [1, 2, 3, 8] {
        let v = read_ramblock_to_vec(&img, one, t).unwrap();
        assert_eq!(v, page);
    }
    // Read-only: no writes, no sync.
    assert!(matches!(
        img.write_page(mem, 0, &page),
        Err(Error::ReadOnly(_))
    ));
    // Zero pages too, whether or not anything would change.
    let zero = vec![0u8; PS as usize];
    assert!(matches!(
        img.write_page(mem, 0, &zero),
        Err(Error::ReadOnly(_))
    ));
    assert!(matches!(
        img.write_page(mem, 7 * PS, &zero),
        Err(Error::ReadOnly(_))
    ));
    assert!(img.sync().is_err());
    img.close().unwrap();
    let mode = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[test]
fn save_with_m_threads_restore_with_n() {
    // Not a multiple of the 4 MiB unit; unaligned host memory on one side.
    let len = (9 << 20) + 7 * PS;
    for direct in [false, true] {
        let mut src = Aligned::new(len as usize);
        fill_mix(src.as_mut_slice(), 42 + direct as u64);
        for m in [1u32, 2, 3, 8] {
            let scratch = TmpDir::new("image-engine");
            let path = scratch.join("mn.img");
            let flags = if direct {
                ImageFlags::DIRECT
            } else {
                ImageFlags::default()
            };
            let img = Image::create(&path, "pc-q35-10.0", &specs(len), flags).unwrap();
            let mem = img.find_block("mem").unwrap();
            // SAFETY: src is valid for len bytes.
            let st = save_ramblock(
                &img,
                mem,
                unsafe {
                    GuestSlice::new(src.ptr(), img.block_info(mem).unwrap().used_length as usize)
                }
                .unwrap(),
                None,
                m,
            )
            .unwrap();
            assert_eq!(st.pages_scanned, len / PS);
            assert_eq!(st.pages_data + st.pages_zero, len / PS);
            img.finish().unwrap();
            img.close().unwrap();
            let img = Image::open(&path, flags).unwrap();
            for n in [1u32, 2, 3, 8] {
                let mut dst = Aligned::new(len as usize);
                dst.as_mut_slice().fill(0x5a);
                // SAFETY: dst valid for len bytes.
                read_ramblock(
                    &img,
                    mem,
                    unsafe {
                        GuestSliceMut::new(
                            dst.mut_ptr(),
                            img.block_info(mem).unwrap().used_length as usize,
                        )
                    }
                    .unwrap(),
                    true,
                    n,
                )
                .unwrap();
                assert!(
                    dst.as_slice() == src.as_slice(),
                    "m={m} n={n} direct={direct}"
                );
                // Unaligned destination.
                let mut v = vec![0x11u8; len as usize + 1];
                // SAFETY: v[1..] valid for len bytes.
                read_ramblock(
                    &img,
                    mem,
                    unsafe {
                        GuestSliceMut::new(
                            v.as_mut_ptr().add(1),
                            img.block_info(mem).unwrap().used_length as usize,
                        )
                    }
                    .unwrap(),
                    true,
                    n,
                )
                .unwrap();
                assert!(&v[1..] == src.as_slice());
            }
            img.close().unwrap();
            std::fs::remove_file(&path).unwrap();
        }
        // Unaligned source memory.
        let mut v = vec![0u8; len as usize + 3];
        v[3..].copy_from_slice(src.as_slice());
        let scratch = TmpDir::new("image-engine");
        let path = scratch.join("unaligned-src.img");
        let flags = if direct {
            ImageFlags::DIRECT
        } else {
            ImageFlags::default()
        };
        let img = Image::create(&path, "pc-q35-10.0", &specs(len), flags).unwrap();
        // SAFETY: v[3..] valid for len bytes.
        save_ramblock(
            &img,
            0,
            unsafe {
                GuestSlice::new(
                    v.as_ptr().add(3),
                    img.block_info(0).unwrap().used_length as usize,
                )
            }
            .unwrap(),
            None,
            3,
        )
        .unwrap();
        img.finish().unwrap();
        let back = read_ramblock_to_vec(&img, 0, 2).unwrap();
        assert!(back == src.as_slice());
        img.close().unwrap();
    }
}

#[test]
fn absent_pages_left_untouched_without_zero_absent() {
    let len = 64 * PS;
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("absent.img");
    let img = Image::create(&path, "m", &specs(len)[..1], ImageFlags::default()).unwrap();
    let page = vec![7u8; PS as usize];
    img.write_page(0, 3 * PS, &page).unwrap();
    img.finish().unwrap();
    let mut dst = vec![0xeeu8; len as usize];
    // SAFETY: dst valid for len bytes.
    let st = read_ramblock(
        &img,
        0,
        unsafe {
            GuestSliceMut::new(
                dst.as_mut_ptr(),
                img.block_info(0).unwrap().used_length as usize,
            )
        }
        .unwrap(),
        false,
        2,
    )
    .unwrap();
    assert_eq!(st.pages_data, 1);
    assert!(dst[..3 * PS as usize].iter().all(|&b| b == 0xee));
    assert!(dst[3 * PS as usize..4 * PS as usize]
        .iter()
        .all(|&b| b == 7));
    assert!(dst[4 * PS as usize..].iter().all(|&b| b == 0xee));
    img.close().unwrap();
}

#[test]
fn dirty_rounds_track_data_and_allocation() {
    let len: u64 = 16 << 20;
    let pages = len / PS;
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("dirty.img");
    let img = Image::create(
        &path,
        "pc-i440fx-10.0",
        &specs(len)[..1],
        ImageFlags::DIRECT,
    )
    .unwrap();
    let mut mem = Aligned::new(len as usize);
    fill_mix(mem.as_mut_slice(), 7);
    // Round 1: everything.
    // SAFETY: mem valid for len bytes.
    save_ramblock(
        &img,
        0,
        unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        None,
        2,
    )
    .unwrap();
    img.sync().unwrap();
    let alloc_full = img.allocated_bytes().unwrap();
    let size_full = img.file_size().unwrap();
    // Round 2: zero the first half and mark it dirty: data -> zero.
    mem.as_mut_slice()[..(len / 2) as usize].fill(0);
    let mut dirty = vec![0u64; pages.div_ceil(64) as usize];
    for p in 0..pages / 2 {
        dirty[(p / 64) as usize] |= 1 << (p % 64);
    }
    // SAFETY: as above.
    let st = save_ramblock(
        &img,
        0,
        unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        Some(DirtyBitmap::from_slice(&dirty)),
        3,
    )
    .unwrap();
    assert_eq!(st.pages_scanned, pages / 2);
    assert_eq!(st.pages_zero, pages / 2);
    img.sync().unwrap();
    let alloc_half = img.allocated_bytes().unwrap();
    assert!(
        alloc_half + len / 4 < alloc_full,
        "allocation must shrink when data becomes zero: {alloc_full} -> {alloc_half}"
    );
    assert_eq!(img.file_size().unwrap(), size_full, "the file never grows");
    assert_eq!(read_ramblock_to_vec(&img, 0, 1).unwrap(), mem.as_slice());
    // Round 3: zero -> data again in a quarter; a non-dirty changed page is not saved.
    let q = (len / 4) as usize;
    fill_mix(&mut mem.as_mut_slice()[..q], 99);
    let mut dirty = vec![0u64; pages.div_ceil(64) as usize];
    for p in 0..pages / 4 {
        dirty[(p / 64) as usize] |= 1 << (p % 64);
    }
    let last = (len - PS) as usize;
    let before_last = mem.as_slice()[last..].to_vec();
    mem.as_mut_slice()[last..].fill(0x33);
    // SAFETY: as above.
    save_ramblock(
        &img,
        0,
        unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        Some(DirtyBitmap::from_slice(&dirty)),
        8,
    )
    .unwrap();
    img.finish().unwrap();
    assert!(img.file_size().unwrap() <= size_full + 4096);
    img.close().unwrap();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    let back = read_ramblock_to_vec(&img, 0, 3).unwrap();
    assert_eq!(&back[..last], &mem.as_slice()[..last]);
    assert_eq!(&back[last..], &before_last[..]);
    img.close().unwrap();
    // A too-short dirty bitmap is an error.
    let img_rw = Image::open(&path, ImageFlags::READ_WRITE).unwrap();
    // SAFETY: as above.
    let e = save_ramblock(
        &img_rw,
        0,
        unsafe {
            GuestSlice::new(
                mem.ptr(),
                img_rw.block_info(0).unwrap().used_length as usize,
            )
        }
        .unwrap(),
        Some(DirtyBitmap::from_slice(&[0u64; 1])),
        1,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    img_rw.close().unwrap();
}

#[test]
fn one_page_block_and_sparse_save() {
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("onepage.img");
    let spec = vec![BlockSpec {
        idstr: "tiny".into(),
        used_length: PS,
        page_size: PS,
    }];
    let img = Image::create(&path, "m", &spec, ImageFlags::DIRECT).unwrap();
    let page = Aligned::new(PS as usize);
    // SAFETY: page valid for PS bytes.
    let st = save_ramblock(
        &img,
        0,
        unsafe { GuestSlice::new(page.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        None,
        8,
    )
    .unwrap();
    assert_eq!((st.pages_zero, st.pages_data), (1, 0));
    let mut data = Aligned::new(PS as usize);
    data.as_mut_slice().fill(9);
    // Dirty bitmap with no bit set: nothing is touched.
    // SAFETY: as above.
    let st = save_ramblock(
        &img,
        0,
        unsafe { GuestSlice::new(data.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        Some(DirtyBitmap::from_slice(&[0])),
        1,
    )
    .unwrap();
    assert_eq!(st.pages_scanned, 0);
    // SAFETY: as above.
    let st = save_ramblock(
        &img,
        0,
        unsafe { GuestSlice::new(data.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        Some(DirtyBitmap::from_slice(&[1])),
        1,
    )
    .unwrap();
    assert_eq!(st.pages_data, 1);
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    assert_eq!(read_ramblock_to_vec(&img, 0, 4).unwrap(), data.as_slice());
}

#[test]
fn unfinished_image_is_incomplete_unless_recovering() {
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("unfinished.img");
    let img = Image::create(&path, "m", &specs(1 << 20), ImageFlags::default()).unwrap();
    img.write_page(0, 0, &vec![1u8; PS as usize]).unwrap();
    img.close().unwrap();
    let e = Image::open(&path, ImageFlags::default()).unwrap_err();
    assert!(matches!(e, Error::Incomplete(_)), "{e}");
    assert_eq!(e.errno(), libc::EUCLEAN);
    let img = Image::open(&path, ImageFlags::RECOVER | ImageFlags::READ_WRITE).unwrap();
    assert!(!img.is_complete());
    let mut p = vec![0u8; PS as usize];
    assert!(img.read_page(0, 0, &mut p).unwrap(), "synced on close");
    // Our own unfinished image can be finished after recovery.
    img.finish().unwrap();
    img.close().unwrap();
    assert!(Image::open(&path, ImageFlags::default())
        .unwrap()
        .is_complete());
}

#[test]
fn in_place_update_marks_incomplete_until_sync() {
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("update.img");
    let img = Image::create(&path, "m", &specs(1 << 20), ImageFlags::default()).unwrap();
    img.write_page(0, 0, &vec![1u8; PS as usize]).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&path, ImageFlags::READ_WRITE).unwrap();
    assert!(img.is_complete());
    img.write_page(0, PS, &vec![2u8; PS as usize]).unwrap();
    assert!(!img.is_complete());
    // A reader is locked out while the writer holds the image; one that
    // does not lock (or a crash now) sees an interrupted update.
    let e = Image::open(&path, ImageFlags::default()).unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY, "{e}");
    let e = Image::open(&path, ImageFlags::NO_LOCK).unwrap_err();
    assert!(matches!(e, Error::Incomplete(_)), "{e}");
    img.sync().unwrap();
    assert!(img.is_complete());
    let other = Image::open(&path, ImageFlags::NO_LOCK).unwrap();
    let mut p = vec![0u8; PS as usize];
    assert!(other.read_page(0, PS, &mut p).unwrap());
    assert_eq!(p, vec![2u8; PS as usize]);
    // Write again, then close: close clears the mark too.
    img.write_page(0, 0, &vec![0u8; PS as usize]).unwrap();
    img.close().unwrap();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    assert!(!img.read_page(0, 0, &mut p).unwrap());
}

#[test]
fn create_on_inside_a_container() {
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("container.img");
    std::fs::write(&path, vec![0xc5u8; 5000]).unwrap();
    let ch = mappedram::Channel::open(
        &path,
        mappedram::OpenFlags::READ | mappedram::OpenFlags::WRITE,
    )
    .unwrap();
    let ch = Arc::new(ch);
    let img = Image::create_on(
        ch.clone(),
        4096,
        "pc-i440fx-10.0",
        &specs(2 << 20),
        ImageFlags::default(),
    )
    .unwrap();
    assert_eq!(img.stream_offset(), 4096);
    let info = img.block_info(0).unwrap();
    assert_eq!(info.pages_offset % (1 << 20), 0);
    assert!(info.bitmap_offset > 4096);
    img.write_page(0, 0, &vec![3u8; PS as usize]).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes[..4096].iter().all(|&b| b == 0xc5),
        "container header kept"
    );
    assert_eq!(&bytes[4096..4100], b"QEVM");
    let img = Image::open_on(ch, Some(4096), ImageFlags::default()).unwrap();
    assert!(img.is_complete());
    assert_eq!(img.block_info(0).unwrap().pages_present, 1);
}

#[test]
fn cancel_by_progress_and_by_other_thread() {
    let len: u64 = 64 << 20;
    let ctl = Arc::new(Control::new());
    let mut mem = Aligned::new(len as usize);
    fill_mix(mem.as_mut_slice(), 5);
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("cancel.img");
    let img = Image::create(&path, "m", &specs(len)[..1], ImageFlags::default()).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    ctl.set_progress(Some(Box::new(move |done, total| {
        assert!(done <= total);
        c2.fetch_add(1, Ordering::Relaxed);
        false
    })));
    // The callback is called before any work, then every 50 ms.
    // SAFETY: mem valid for len bytes.
    let r = save_ramblock_with(
        &ctl,
        &img,
        0,
        unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        None,
        1,
    );
    match r {
        Err(Error::Cancelled(m)) => assert!(m.contains("progress callback"), "{m}"),
        other => panic!(
            "expected Cancelled, got {other:?} after {} calls",
            calls.load(Ordering::Relaxed)
        ),
    }
    ctl.set_progress(None);
    img.close().unwrap();
    let e = Image::open(&path, ImageFlags::default()).unwrap_err();
    assert!(matches!(e, Error::Incomplete(_)), "{e}");

    // mr_image_cancel from another thread, while a save runs.
    let img = Arc::new(Image::create(&path, "m", &specs(len)[..1], ImageFlags::default()).unwrap());
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st2 = started.clone();
    ctl.set_progress(Some(Box::new(move |_, _| {
        st2.store(true, Ordering::Release);
        true
    })));
    let mut cancelled = 0;
    for _ in 0..20 {
        started.store(false, Ordering::Release);
        let (i2, s2) = (ctl.clone(), started.clone());
        let canceller = std::thread::spawn(move || {
            while !s2.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            i2.cancel();
        });
        // SAFETY: mem valid for len bytes.
        let r = save_ramblock_with(
            &ctl,
            &img,
            0,
            unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
                .unwrap(),
            None,
            1,
        );
        canceller.join().unwrap();
        match r {
            Err(Error::Cancelled(m)) => {
                assert!(m.contains("mr_image_cancel"), "{m}");
                cancelled += 1;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(cancelled, 1, "cancel from another thread stopped a save");
    ctl.set_progress(None);
    // Later operations are not affected.
    // SAFETY: as above.
    save_ramblock_with(
        &ctl,
        &img,
        0,
        unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        None,
        2,
    )
    .unwrap();
}

#[test]
fn concurrent_writers_and_syncs() {
    let len: u64 = 8 << 20;
    let pages = len / PS;
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("stress.img");
    let img = Arc::new(Image::create(&path, "m", &specs(len)[..1], ImageFlags::DIRECT).unwrap());
    let threads = 8u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let img = img.clone();
            s.spawn(move || {
                for p in (t..pages).step_by(threads as usize) {
                    let v = if p % 5 == 0 { 0u8 } else { (p % 255) as u8 + 1 };
                    img.write_page(0, p * PS, &vec![v; PS as usize]).unwrap();
                    let mut got = vec![0u8; PS as usize];
                    let present = img.read_page(0, p * PS, &mut got).unwrap();
                    assert_eq!(present, v != 0);
                    assert!(got.iter().all(|&b| b == v));
                }
            });
        }
        let img2 = img.clone();
        s.spawn(move || {
            for _ in 0..20 {
                img2.sync().unwrap();
            }
        });
    });
    let img = Arc::try_unwrap(img).ok().unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    let v = read_ramblock_to_vec(&img, 0, 2).unwrap();
    for p in 0..pages {
        let want = if p % 5 == 0 { 0u8 } else { (p % 255) as u8 + 1 };
        let page = &v[(p * PS) as usize..((p + 1) * PS) as usize];
        assert!(page.iter().all(|&b| b == want), "page {p}");
    }
    assert_eq!(
        img.block_info(0).unwrap().pages_present,
        pages - pages.div_ceil(5)
    );
}

#[test]
fn cancel_single_thread_save_without_progress_callback() {
    let len: u64 = 64 << 20;
    let ctl = Arc::new(Control::new());
    let mut mem = Aligned::new(len as usize);
    fill_mix(mem.as_mut_slice(), 11);
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("cancel1.img");
    let img = Arc::new(Image::create(&path, "m", &specs(len)[..1], ImageFlags::default()).unwrap());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (i2, d2) = (ctl.clone(), done.clone());
    // Cancel continuously while the save runs on the calling thread.
    let canceller = std::thread::spawn(move || {
        while !d2.load(Ordering::Acquire) {
            i2.cancel();
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    });
    // SAFETY: mem valid for len bytes.
    let r = save_ramblock_with(
        &ctl,
        &img,
        0,
        unsafe { GuestSlice::new(mem.ptr(), img.block_info(0).unwrap().used_length as usize) }
            .unwrap(),
        None,
        1,
    );
    done.store(true, Ordering::Release);
    canceller.join().unwrap();
    match r {
        Err(Error::Cancelled(m)) => assert!(m.contains("mr_image_cancel"), "{m}"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

#[test]
fn save_refuses_an_image_opened_read_only_on_a_writable_channel() {
    let len: u64 = 1 << 20;
    let scratch = TmpDir::new("image-engine");
    let path = scratch.join("ro-on-rw.img");
    let img = Image::create(&path, "m", &specs(len)[..1], ImageFlags::default()).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let flags = mappedram::OpenFlags::READ | mappedram::OpenFlags::WRITE;
    let ch = Arc::new(mappedram::Channel::open(&path, flags).unwrap());
    let img = Image::open_on(ch, None, ImageFlags::default()).unwrap();
    assert!(!img.is_writable());
    let ctl = Control::new();
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    ctl.set_progress(Some(Box::new(move |_, _| {
        c2.fetch_add(1, Ordering::Relaxed);
        true
    })));
    let mut mem = Aligned::new(len as usize);
    fill_mix(mem.as_mut_slice(), 3);
    let guest = GuestSlice::from_slice(mem.as_slice());
    let e = save_ramblock_with(&ctl, &img, 0, guest, None, 2).unwrap_err();
    assert!(matches!(e, Error::ReadOnly(_)), "{e}");
    assert!(e.to_string().contains("read-only"), "{e}");
    // Refused before the operation started (no progress report).
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(img.block_info(0).unwrap().pages_present, 0);
}
