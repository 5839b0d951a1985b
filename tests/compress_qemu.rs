//! Compressed images and real QEMU 10: QEMU refuses a compressed image
//! with an error (it never misreads compressed slots as pages), and
//! `expand(compress(f))` of a file QEMU saved equals `f` in every header
//! byte, bitmap, all device state and every present page — and QEMU
//! restores it. Needs `qemu-system-x86_64` (scripts/setup-deps.sh).

mod common;

use common::fill::{pattern, PAGE};
use common::qemu::{file_uri, restore, save, MigOpts, Vm};
use common::qmp::{quote, Json};
use common::{met, Need, TmpDir};
use mappedram::compress::convert::convert;
use mappedram::compress::ImageOptions;
use mappedram::engine::read_ramblock_to_vec;
use mappedram::{Image, ImageFlags};
use std::path::Path;
use std::time::{Duration, Instant};

const MEM: usize = 64 << 20;

fn no_progress(_: u64, _: u64) {}

/// Offer `file` to an incoming QEMU; returns the migration's error text
/// and QEMU's stderr once it fails (panics if it completes).
fn refused(dir: &TmpDir, file: &Path) -> (String, String) {
    let backing = dir.join("refuse.ram");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(MEM as u64)
        .unwrap();
    let mut vm = Vm::start(dir, "refuse", &backing, MEM as u64, true);
    vm.set_migration(&MigOpts::plain());
    let _ = vm.try_qmp(
        "migrate-incoming",
        Some(&format!("{{\"uri\": {}}}", quote(&file_uri(file, 0)))),
    );
    let t0 = Instant::now();
    loop {
        match vm.try_qmp("query-migrate", None) {
            Ok(r) => match r.get("status").and_then(Json::as_str) {
                Some("failed") => {
                    let desc = r
                        .get("error-desc")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .to_string();
                    return (desc, vm.stderr_text());
                }
                Some("completed") => panic!("QEMU loaded a compressed image"),
                _ => {}
            },
            // QEMU may exit on a failed incoming migration.
            Err(_) => return (String::new(), vm.stderr_text()),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "QEMU neither failed nor completed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `e` equals `f` outside the page regions byte for byte; present pages
/// are equal; absent slots of `e` are zero.
fn same_image(f: &[u8], e: &[u8], img: &Image) {
    assert_eq!(f.len(), e.len(), "file sizes");
    let mut pos = 0usize;
    for b in &img.layout().blocks {
        let (ps, pe) = (b.pages_offset as usize, b.end() as usize);
        assert!(
            f[pos..ps] == e[pos..ps],
            "bytes 0x{pos:x}..0x{ps:x} ('{}' header, bitmap)",
            b.idstr
        );
        for p in 0..b.pages() {
            let r = ps + p as usize * PAGE..ps + (p as usize + 1) * PAGE;
            if img
                .page_present(img.find_block(&b.idstr).unwrap(), p)
                .unwrap()
            {
                assert!(f[r.clone()] == e[r], "'{}' page {p}", b.idstr);
            } else {
                assert!(
                    e[r].iter().all(|&x| x == 0),
                    "'{}' absent page {p} not a hole",
                    b.idstr
                );
            }
        }
        pos = pe;
    }
    assert!(
        f[pos..] == e[pos..],
        "stream tail (device state, JSON) from 0x{pos:x}"
    );
}

#[test]
fn qemu_refuses_compressed_and_restores_expanded() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("cmp-qemu");
    let mem = pattern(42, MEM);
    let f = dir.join("qemu.img");
    save(&dir, &mem, &MigOpts::plain(), &f, 0);

    let src = Image::open(&f, ImageFlags::default()).unwrap();
    let c = dir.join("c.img");
    convert(&src, &c, &ImageOptions::zstd(1), 2, &no_progress).unwrap();
    let ci = Image::open(&c, ImageFlags::default()).unwrap();
    assert!(ci.is_complete());
    assert!(ci
        .capabilities()
        .contains(&"x-mappedram-chunks".to_string()));
    assert!(read_ramblock_to_vec(&ci, ci.find_block("mem").unwrap(), 3).unwrap() == mem);
    let st = ci.block_stats(0).unwrap();
    assert!(st.stored_bytes < MEM as u64 / 2, "{st:?}");

    let (desc, stderr) = refused(&dir, &c);
    let all = format!("{desc} {stderr}");
    eprintln!("QEMU on the compressed image: {all}");
    assert!(
        all.contains("unknown capability x-mappedram-chunks"),
        "QEMU failed, but not on the capability: {all}"
    );

    let e = dir.join("e.img");
    convert(&ci, &e, &ImageOptions::default(), 3, &no_progress).unwrap();
    let fb = std::fs::read(&f).unwrap();
    let eb = std::fs::read(&e).unwrap();
    same_image(&fb, &eb, &src);
    let back = restore(&dir, &e, 0, MEM, &MigOpts::plain());
    assert!(
        back == mem,
        "QEMU restored different memory from the expanded file"
    );
}

/// The same inside a libvirt save image (QEMU wrote the stream at an
/// offset, libvirt's header + XML before it): the header and XML survive
/// compress and expand verbatim, and QEMU restores the expanded file at
/// the same offset.
#[test]
fn libvirt_save_image_round_trips() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("cmp-libvirt");
    let mem = pattern(43, MEM);
    let f = dir.join("libvirt.img");
    let offset = 8192;
    save(&dir, &mem, &MigOpts::plain(), &f, offset);
    common::write_at_start(&f, &common::libvirt_header(true, offset));

    let src = Image::open(&f, ImageFlags::default()).unwrap();
    assert!(src.libvirt_header().is_some());
    let c = dir.join("c.img");
    convert(&src, &c, &ImageOptions::zstd(1), 2, &no_progress).unwrap();
    let ci = Image::open(&c, ImageFlags::default()).unwrap();
    assert_eq!(ci.stream_offset(), offset);
    assert!(ci.libvirt_header().is_some_and(|h| h.complete));
    assert!(read_ramblock_to_vec(&ci, ci.find_block("mem").unwrap(), 2).unwrap() == mem);
    let cb = std::fs::read(&c).unwrap();
    let fb = std::fs::read(&f).unwrap();
    assert!(
        cb[..offset as usize] == fb[..offset as usize],
        "libvirt header + XML changed"
    );

    let e = dir.join("e.img");
    convert(&ci, &e, &ImageOptions::default(), 2, &no_progress).unwrap();
    same_image(&fb, &std::fs::read(&e).unwrap(), &src);
    let back = restore(&dir, &e, offset, MEM, &MigOpts::plain());
    assert!(
        back == mem,
        "QEMU restored different memory from the expanded libvirt image"
    );
}
