//! Images with ramblocks QEMU 11 skipped under `x-ignore-shared` (their
//! headers record `bitmap_offset = pages_offset = 0`; the file holds no
//! bitmap and no pages for them): they open, report the block as not in the
//! file, and refuse page I/O on it with `ENOENT` naming the block, while the
//! other blocks work as usual. The file is synthetic, laid out as QEMU 11's
//! writer lays it out.

mod common;

use common::{TmpDir, PS};
use mappedram::format::ramblock::encode_pieces;
use mappedram::format::stream::{completion_json, encode_tail, Configuration};
use mappedram::format::{CAP_MAPPED_RAM, CAP_X_IGNORE_SHARED};
use mappedram::{GuestSlice, GuestSliceMut, Image, ImageFlags};

/// "ram" (16 pages, page 3 present and filled with 0x5a), "shared"
/// (skipped), "rom" (2 pages, none present).
fn write_image(path: &std::path::Path) {
    let config = Configuration {
        machine_type: "pc-q35-11.0".into(),
        capabilities: vec![CAP_X_IGNORE_SHARED.into(), CAP_MAPPED_RAM.into()],
        target_page_bits: None,
    };
    let l = common::ignore_shared::layout(config, &["shared"]);
    let mut img = vec![0u8; l.tail_offset() as usize];
    for (off, bytes) in encode_pieces(&l) {
        let off = off as usize;
        img.resize(img.len().max(off + bytes.len()), 0);
        img[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    let ram = &l.blocks[0];
    img[ram.bitmap_offset as usize] = 1 << 3;
    let p3 = (ram.pages_offset + 3 * PS) as usize;
    img[p3..p3 + PS as usize].fill(0x5a);
    img.truncate(l.tail_offset() as usize);
    img.extend_from_slice(&encode_tail(2, &completion_json(PS, "pc-q35-11.0", 3)));
    std::fs::write(path, &img).unwrap();
}

#[test]
fn skipped_block_is_reported_and_refuses_page_io() {
    let scratch = TmpDir::new("ignore-shared");
    let path = scratch.join("ro.img");
    write_image(&path);
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    assert_eq!(img.block_count(), 3);
    let shared = img.find_block("shared").unwrap();
    assert_eq!(shared, 1);
    assert!(img.block_present_in_file(0).unwrap());
    assert!(!img.block_present_in_file(shared).unwrap());
    assert!(img.block_present_in_file(2).unwrap());
    assert!(img.block_present_in_file(3).is_err());
    let info = img.block_info(shared).unwrap();
    assert_eq!((info.bitmap_offset, info.pages_offset), (0, 0));
    assert_eq!(info.pages_present, 0);

    let mut page = vec![0u8; PS as usize];
    let e = img.read_page(shared, 0, &mut page).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.to_string().contains("'shared'"), "{e}");
    assert!(e.to_string().contains("not in this file"), "{e}");

    // The blocks around it read as usual.
    assert!(img.read_page(0, 3 * PS, &mut page).unwrap());
    assert!(page.iter().all(|&b| b == 0x5a));
    assert!(!img.read_page(2, PS, &mut page).unwrap());
    drop(img);
}

#[test]
fn skipped_block_refuses_writes_and_the_file_stays_intact() {
    let scratch = TmpDir::new("ignore-shared");
    let path = scratch.join("rw.img");
    write_image(&path);
    let before = std::fs::read(&path).unwrap();
    let img = Image::open(&path, ImageFlags::READ_WRITE).unwrap();
    let page = vec![7u8; PS as usize];
    let e = img.write_page(1, 0, &page).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.to_string().contains("'shared'"), "{e}");
    let e = img
        .write_pages(1, 0, &vec![0u8; 2 * PS as usize])
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    drop(img);
    // Nothing was written at the zero offsets the skipped block records.
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[..4096], &before[..4096]);
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    assert!(!img.block_present_in_file(1).unwrap());
    drop(img);
}

/// Restoring a skipped block must not zero the caller's memory (it is the
/// shared memory QEMU did not save); saving into it is refused too.
#[test]
fn engine_refuses_a_skipped_block_without_touching_memory() {
    use mappedram::engine::{read_ramblock, save_ramblock};
    let scratch = TmpDir::new("ignore-shared");
    let path = scratch.join("engine.img");
    write_image(&path);
    let img = Image::open(&path, ImageFlags::default()).unwrap();
    let mut mem = vec![0x77u8; 32 * PS as usize];
    let e = read_ramblock(&img, 1, GuestSliceMut::from_mut_slice(&mut mem), true, 2).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.to_string().contains("'shared'"), "{e}");
    assert!(mem.iter().all(|&b| b == 0x77));
    // The block before it restores as usual.
    let mut ram = vec![0x11u8; 16 * PS as usize];
    read_ramblock(&img, 0, GuestSliceMut::from_mut_slice(&mut ram), true, 2).unwrap();
    assert!(ram[3 * PS as usize..4 * PS as usize]
        .iter()
        .all(|&b| b == 0x5a));
    assert!(ram[..3 * PS as usize].iter().all(|&b| b == 0));
    drop(img);

    let img = Image::open(&path, ImageFlags::READ_WRITE).unwrap();
    let e = save_ramblock(&img, 1, GuestSlice::from_slice(&mem), None, 2).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
}
