//! Named blobs: a VMM's own state in the image, under the same completion
//! record. Round trips, in-place replacement, corruption, torn tails, and
//! QEMU 10 refusing a file that carries blobs.

mod common;

use common::fill::{self, assert_same};
use common::qemu::{self, MigOpts};
use common::{met, Need, TmpDir};
use mappedram::format::ramblock::BlockSpec;
use mappedram::{engine, Error, Image, ImageFlags};
use std::fs;
use std::path::Path;

const MIB: u64 = 1 << 20;

fn spec(idstr: &str, len: u64) -> BlockSpec {
    BlockSpec {
        idstr: idstr.into(),
        used_length: len,
        page_size: 4096,
    }
}

/// A finished two-block image with `blobs`; returns the memory of block 0.
fn make(path: &Path, blobs: &[(&str, &[u8])]) -> Vec<u8> {
    let img = Image::create(
        path,
        "blob-test",
        &[spec("a", 4 * MIB), spec("b", MIB)],
        ImageFlags::default(),
    )
    .unwrap();
    let mem = fill::pattern(5, 4 * MIB as usize);
    img.write_pages(0, 0, &mem).unwrap();
    for (n, d) in blobs {
        img.put_blob(n, d).unwrap();
    }
    img.finish().unwrap();
    img.close().unwrap();
    mem
}

#[test]
fn blobs_round_trip_with_the_image() {
    let dir = TmpDir::new("blob-rt");
    let p = dir.join("img");
    let big = fill::pattern(9, 300 * 4096);
    let mem = make(
        &p,
        &[("vcpu0", b"registers"), ("empty", b""), ("dev/big", &big)],
    );
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    assert!(img.is_complete());
    assert_eq!(img.blob_names(), ["vcpu0", "empty", "dev/big"]);
    assert_eq!(img.get_blob("vcpu0").unwrap(), b"registers");
    assert_eq!(img.get_blob("empty").unwrap(), b"");
    assert_eq!(img.blob_len("dev/big").unwrap(), big.len() as u64);
    assert_same("blob", &img.get_blob("dev/big").unwrap(), &big);
    assert!(matches!(img.get_blob("nope"), Err(Error::NotFound(_))));
    assert_same(
        "block a",
        &engine::read_ramblock_to_vec(&img, 0, 2).unwrap(),
        &mem,
    );
    // Read-only images take no blobs.
    assert!(matches!(img.put_blob("x", b"1"), Err(Error::ReadOnly(_))));
    img.close().unwrap();
}

#[test]
fn an_image_without_blobs_has_no_blob_section() {
    let dir = TmpDir::new("blob-none");
    let (p, q) = (dir.join("plain"), dir.join("blobs"));
    make(&p, &[]);
    make(&q, &[("s", b"state")]);
    let (a, b) = (fs::read(&p).unwrap(), fs::read(&q).unwrap());
    assert!(!a.windows(18).any(|w| w == b"libmappedram/blobs"));
    assert!(b.windows(18).any(|w| w == b"libmappedram/blobs"));
    // Everything before the tail is the same.
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    let tail = img.block_info(1).unwrap().pages_offset + MIB;
    img.close().unwrap();
    assert_eq!(a[..tail as usize], b[..tail as usize]);
}

#[test]
fn blobs_are_replaced_in_place_under_the_update_mark() {
    let dir = TmpDir::new("blob-upd");
    let p = dir.join("img");
    let mem = make(&p, &[("keep", b"k"), ("old", b"old state")]);
    let img = Image::open(&p, ImageFlags::READ_WRITE).unwrap();
    img.put_blob("old", b"new, longer state").unwrap();
    img.put_blob("added", &[7u8; 5000]).unwrap();
    img.remove_blob("keep").unwrap();
    assert!(matches!(img.remove_blob("keep"), Err(Error::NotFound(_))));
    // Until sync/finish/close the file is marked as being updated (looked
    // at without the lock the writer holds, as a crash would find it).
    assert!(matches!(
        Image::open(&p, ImageFlags::NO_LOCK),
        Err(Error::Incomplete(_))
    ));
    img.close().unwrap();
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    assert_eq!(img.blob_names(), ["old", "added"]);
    assert_eq!(img.get_blob("old").unwrap(), b"new, longer state");
    assert_eq!(img.get_blob("added").unwrap(), vec![7u8; 5000]);
    assert_same(
        "block a after the tail rewrite",
        &engine::read_ramblock_to_vec(&img, 0, 1).unwrap(),
        &mem,
    );
    img.close().unwrap();
    // Shrinking again truncates the file to the new end.
    let img = Image::open(&p, ImageFlags::READ_WRITE).unwrap();
    img.remove_blob("added").unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    assert_eq!(img.blob_names(), ["old"]);
    img.close().unwrap();
}

#[test]
fn a_corrupt_blob_is_an_error_naming_it() {
    let dir = TmpDir::new("blob-bad");
    let p = dir.join("img");
    make(&p, &[("vcpu0", b"registers of vcpu 0")]);
    let mut bytes = fs::read(&p).unwrap();
    let at = bytes
        .windows(19)
        .rposition(|w| w == b"registers of vcpu 0")
        .unwrap();
    bytes[at + 3] ^= 0x20;
    fs::write(&p, &bytes).unwrap();
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    let err = img.get_blob("vcpu0").unwrap_err();
    assert_eq!(err.errno(), libc::EBADMSG);
    let msg = err.to_string();
    assert!(msg.contains("vcpu0") && msg.contains("checksum"), "{msg}");
    img.close().unwrap();
    // A blob length past the end of the file fails the open, naming it.
    bytes[at + 3] ^= 0x20;
    let len_at = at - 16;
    bytes[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    fs::write(&p, &bytes).unwrap();
    let Err(err) = Image::open(&p, ImageFlags::default()) else {
        panic!("a blob length past the end of the file must fail the open");
    };
    assert_eq!(err.errno(), libc::EBADMSG, "{err}");
    assert!(err.to_string().contains("vcpu0"), "{err}");
}

#[test]
fn every_cut_through_the_tail_opens_incomplete() {
    let dir = TmpDir::new("blob-cut");
    let p = dir.join("img");
    make(&p, &[("a", &[1u8; 1000]), ("b", b"bbb")]);
    let full = fs::read(&p).unwrap();
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    let tail = img.block_info(1).unwrap().pages_offset + MIB;
    img.close().unwrap();
    let q = dir.join("cut");
    fs::write(&q, &full).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&q).unwrap();
    // From the last byte down to the end of the RAM setup section (EOS +
    // footer): each cut shortens the same copy.
    for cut in (tail as usize + 13..full.len()).rev() {
        f.set_len(cut as u64).unwrap();
        match Image::open(&q, ImageFlags::default()) {
            Err(Error::Incomplete(_)) => {}
            other => panic!("cut at {cut}: {:?}", other.map(|_| "opened")),
        }
    }
}

#[test]
fn blobs_survive_recovery_only_when_put_again() {
    let dir = TmpDir::new("blob-rec");
    let p = dir.join("img");
    let img = Image::create(&p, "blob-test", &[spec("a", MIB)], ImageFlags::default()).unwrap();
    img.put_blob("s", b"state").unwrap();
    // Closed without finish: incomplete, the blob was never written.
    img.close().unwrap();
    let img = Image::open(&p, ImageFlags::RECOVER | ImageFlags::READ_WRITE).unwrap();
    assert!(img.blob_names().is_empty());
    img.put_blob("s", b"state again").unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    assert_eq!(img.get_blob("s").unwrap(), b"state again");
    img.close().unwrap();
}

#[test]
fn qemu_files_take_no_blobs_and_qemu_refuses_files_with_blobs() {
    if !met(Need::Qemu) {
        return;
    }
    const MEM: usize = 64 << 20;
    let dir = TmpDir::new("blob-qemu");
    let mem = fill::pattern(77, MEM);
    let file = dir.join("qemu.img");
    qemu::save(&dir, &mem, &MigOpts::plain(), &file, 0);

    // A QEMU-ended file keeps its device state: no blob may replace it.
    let img = Image::open(&file, ImageFlags::READ_WRITE).unwrap();
    let err = img.put_blob("s", b"x").unwrap_err();
    assert_eq!(err.errno(), libc::ENOTSUP, "{err}");
    let specs: Vec<BlockSpec> = (0..img.block_count())
        .map(|i| {
            let b = img.block_info(i).unwrap();
            spec(&b.idstr, b.used_length)
        })
        .collect();
    let machine = img.machine_type().to_string();
    let mem_block = img.find_block("mem").unwrap();
    img.close().unwrap();

    // The same machine and blocks written by the library, with a blob.
    let ours = dir.join("ours.img");
    let img = Image::create(&ours, &machine, &specs, ImageFlags::default()).unwrap();
    img.write_pages(mem_block, 0, &mem).unwrap();
    img.put_blob("vmm/state", b"not a QEMU device").unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let Err(err) = qemu::try_restore(&dir, &ours, 0, MEM, &MigOpts::plain()) else {
        panic!("QEMU must refuse a file with blobs");
    };
    assert!(err.contains("libmappedram/blobs"), "{err}");
}
