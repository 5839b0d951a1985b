//! Proven against real QEMU (>= 9.0; 10.0.2 here): files QEMU saves with
//! mapped-ram open and read in the library; the library writes the RAM
//! section byte-identically; files the library patched or rewrote restore
//! in QEMU to exactly the expected guest memory.
//!
//! Every test starts its own paused QEMU (TCG, `-S`) with a 64 MiB guest
//! whose RAM is a file filled with a seeded pattern. A missing or too old
//! QEMU fails the tests under the full suite (`MR_TEST_REQUIRE_ALL=1`,
//! scripts/test-all.sh) with the install hint; in a plain `cargo test` they
//! are reported NOT RUN (see `common::need`).

mod common;

use common::fill::{self, assert_same, is_zero, PAGE};
use common::qemu::{self, MigOpts, RamBlock, Saved};
use common::{met, Need, TmpDir};
use common::{qmp, raw};
use mappedram::format::ramblock::BlockSpec;
use mappedram::{engine, Error, GuestSlice, Image, ImageFlags};
use std::path::Path;

/// Guest RAM size: small, so the whole suite stays fast.
const MEM: usize = 64 << 20;

// ---------------------------------------------------------------------
// Harness self-tests: QEMU alone, checked with the independent reader.
// ---------------------------------------------------------------------

/// Check a QEMU-saved file with the independent reader: layout facts, the
/// `mem` block equals `mem`, and QEMU's zero-page rule (present exactly
/// when the page is non-zero) in every block.
fn raw_check(saved: &Saved, mem: &[u8]) -> raw::RawImage {
    let d = std::fs::read(&saved.file).unwrap();
    assert!(d.len() > MEM, "saved file is only {} bytes", d.len());
    let img = raw::parse(&d, saved.offset);
    assert!(
        img.machine_type.starts_with("pc-i440fx-"),
        "machine type {:?}",
        img.machine_type
    );
    assert_eq!(img.capabilities, ["mapped-ram"]);
    let listed: Vec<RamBlock> = img
        .blocks
        .iter()
        .map(|b| RamBlock {
            idstr: b.idstr.clone(),
            page_size: b.page_size,
            used_length: b.used_length,
        })
        .collect();
    assert_eq!(listed, saved.blocks, "file blocks vs `info ramblock`");
    for b in &img.blocks {
        assert_eq!(b.header_version, 1);
        assert_eq!(b.page_size, PAGE as u64);
        assert_eq!(b.pages_offset % (1 << 20), 0, "{}: pages_offset", b.idstr);
        let contents = b.contents(&d);
        let present = b.present(&d);
        for (i, page) in contents.chunks(PAGE).enumerate() {
            assert_eq!(
                present.contains(&(i as u64)),
                !is_zero(page),
                "{}: page {i}: QEMU's bit disagrees with the page content",
                b.idstr
            );
        }
        if b.idstr == "mem" {
            assert_same("raw reader: mem block", &contents, mem);
        }
    }
    let last = img.blocks.last().unwrap();
    assert_eq!(img.eos_offset, last.pages_offset + last.used_length);
    img
}

#[test]
fn harness_qemu_saves_and_restores_plain() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("h-plain");
    let mem = fill::pattern(1, MEM);
    let file = dir.join("img");
    let saved = qemu::save(&dir, &mem, &MigOpts::plain(), &file, 0);
    let d = std::fs::read(&file).unwrap();
    assert_eq!(&d[..8], b"QEVM\0\0\0\x03");
    raw_check(&saved, &mem);
    let back = qemu::restore(&dir, &file, 0, MEM, &MigOpts::plain());
    assert_same("QEMU -> QEMU restore", &back, &mem);
}

#[test]
fn harness_qemu_saves_and_restores_multifd() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("h-mfd");
    let mem = fill::pattern(2, MEM);
    let file = dir.join("img");
    let saved = qemu::save(&dir, &mem, &MigOpts::multifd(2), &file, 0);
    raw_check(&saved, &mem);
    let back = qemu::restore(&dir, &file, 0, MEM, &MigOpts::multifd(3));
    assert_same("QEMU multifd -> QEMU restore", &back, &mem);
}

#[test]
fn harness_qemu_saves_and_restores_multifd_direct_io() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("h-dio");
    let mem = fill::pattern(3, MEM);
    let file = dir.join("img");
    let opts = MigOpts::multifd_direct(2);
    let saved = qemu::save(&dir, &mem, &opts, &file, 0);
    raw_check(&saved, &mem);
    let back = qemu::restore(&dir, &file, 0, MEM, &opts);
    assert_same("QEMU direct-io -> QEMU restore", &back, &mem);
}

// ---------------------------------------------------------------------
// QEMU saves, the library reads.
// ---------------------------------------------------------------------

/// Open `saved` with the library and check everything it reports against
/// QEMU's listing, the independent reader and the expected `mem`.
fn library_check(saved: &Saved, mem: &[u8], flags: ImageFlags) -> Image {
    let d = std::fs::read(&saved.file).unwrap();
    let rawimg = raw::parse(&d, saved.offset);
    let img = Image::open(&saved.file, flags)
        .unwrap_or_else(|e| panic!("Image::open({}): {e}", saved.file.display()));
    assert_eq!(img.stream_offset(), saved.offset);
    assert_eq!(img.machine_type(), rawimg.machine_type);
    assert_eq!(img.capabilities(), ["mapped-ram".to_string()]);
    assert_eq!(img.block_count(), saved.blocks.len());
    for (i, qb) in saved.blocks.iter().enumerate() {
        let rb = &rawimg.blocks[i];
        let info = img.block_info(i).unwrap();
        let present = rb.present(&d);
        assert_eq!(
            (info.idstr.as_str(), info.used_length, info.page_size),
            (qb.idstr.as_str(), qb.used_length, qb.page_size),
            "block {i}"
        );
        assert_eq!(
            (info.bitmap_offset, info.pages_offset),
            (rb.bitmap_offset, rb.pages_offset),
            "block {i} ({}) offsets",
            qb.idstr
        );
        assert_eq!(
            info.pages_present,
            present.len() as u64,
            "{}: pages_present",
            qb.idstr
        );
        assert_eq!(img.find_block(&qb.idstr).unwrap(), i);

        let want = rb.contents(&d);
        let got = engine::read_ramblock_to_vec(&img, i, 2)
            .unwrap_or_else(|e| panic!("read_ramblock_to_vec({}): {e}", qb.idstr));
        assert_same(&format!("library read of {}", qb.idstr), &got, &want);
        if qb.idstr == "mem" {
            assert_same("library read of mem vs guest RAM file", &got, mem);
            let got1 = engine::read_ramblock_to_vec(&img, i, 1).unwrap();
            assert_same("mem read with 1 thread", &got1, mem);
        }
        let mut page = vec![0xa5u8; PAGE];
        for (p, want_page) in want.chunks(PAGE).enumerate() {
            let off = (p * PAGE) as u64;
            let bit = img.page_present(i, p as u64).unwrap();
            assert_eq!(bit, !is_zero(want_page), "{}: page_present({p})", qb.idstr);
            page.fill(0xa5);
            let was = img.read_page(i, off, &mut page).unwrap();
            assert_eq!(was, bit, "{}: read_page({off:#x}) presence", qb.idstr);
            if page != want_page {
                panic!("{}: read_page({off:#x}) content differs", qb.idstr);
            }
        }
    }
    match img.find_block("no-such-block") {
        Err(Error::NotFound(_)) => {}
        other => panic!("find_block(no-such-block): {:?}", other.map(|_| ())),
    }
    img
}

fn qemu_save_library_reads(tag: &str, seed: u64, opts: MigOpts, flags: ImageFlags) {
    let dir = TmpDir::new(tag);
    let mem = fill::pattern(seed, MEM);
    let file = dir.join("img");
    let saved = qemu::save(&dir, &mem, &opts, &file, 0);
    let img = library_check(&saved, &mem, flags);
    assert!(img.is_complete(), "a finished QEMU save must be complete");
    assert!(img.libvirt_header().is_none());
    img.close().unwrap();
}

#[test]
fn qemu_plain_save_reads_in_library() {
    if !met(Need::Qemu) {
        return;
    }
    qemu_save_library_reads("r-plain", 11, MigOpts::plain(), ImageFlags::default());
}

#[test]
fn qemu_multifd_save_reads_in_library() {
    if !met(Need::Qemu) {
        return;
    }
    qemu_save_library_reads("r-mfd", 12, MigOpts::multifd(2), ImageFlags::default());
}

#[test]
fn qemu_multifd_direct_io_save_reads_in_library_direct() {
    if !met(Need::Qemu) {
        return;
    }
    qemu_save_library_reads("r-dio", 13, MigOpts::multifd_direct(2), ImageFlags::DIRECT);
}

/// QEMU saves behind a libvirt-style container header
/// (`file:PATH,offset=N`); the library detects the header. QEMU opens the
/// path with O_TRUNC and seeks to N, so (unlike libvirt, which hands QEMU a
/// pre-opened fd) the header is written after the save — which is what
/// libvirt's completion step does anyway.
fn libvirt_case(tag: &str, seed: u64, offset: u64, opts: MigOpts) {
    let dir = TmpDir::new(tag);
    let mem = fill::pattern(seed, MEM);
    let file = dir.join("img");
    let saved = qemu::save(&dir, &mem, &opts, &file, offset);
    let d = std::fs::read(&file).unwrap();
    assert!(
        d[..offset as usize].iter().all(|&b| b == 0),
        "QEMU left bytes before the offset"
    );
    raw_check(&saved, &mem);

    // Complete ("LibvirtQemudSave").
    common::write_at_start(&file, &common::libvirt_header(true, offset));
    let img = library_check(&saved, &mem, ImageFlags::default());
    assert!(img.is_complete());
    let h = img
        .libvirt_header()
        .expect("libvirt header detected")
        .clone();
    assert!(h.complete);
    assert_eq!((h.version, h.format), (2, 6));
    assert_eq!(h.data_len as u64, offset - 92);
    assert_eq!(h.stream_offset(), offset);
    img.close().unwrap();
    let back = qemu::restore(&dir, &file, offset, MEM, &opts);
    assert_same("QEMU restore at offset", &back, &mem);

    // Unfinished ("LibvirtQemudPart"): refused unless RECOVER.
    common::write_at_start(&file, &common::libvirt_header(false, offset));
    match Image::open(&file, ImageFlags::default()) {
        Err(e @ Error::Incomplete(_)) => assert_eq!(e.errno(), libc::EUCLEAN),
        Err(e) => panic!("LibvirtQemudPart: expected Error::Incomplete, got {e:?}"),
        Ok(_) => panic!("LibvirtQemudPart image opened without RECOVER"),
    }
    let img = library_check(&saved, &mem, ImageFlags::RECOVER);
    assert!(!img.libvirt_header().expect("libvirt header").complete);
    assert!(
        !img.is_complete(),
        "a LibvirtQemudPart image is not complete"
    );
    img.close().unwrap();
}

#[test]
fn qemu_save_behind_libvirt_header_reads_in_library() {
    if !met(Need::Qemu) {
        return;
    }
    libvirt_case("r-lv", 14, 4096, MigOpts::plain());
}

#[test]
fn qemu_save_behind_unaligned_libvirt_header_reads_in_library() {
    if !met(Need::Qemu) {
        return;
    }
    // libvirt's header + XML need not end on a page boundary; QEMU takes
    // any offset and aligns pages_offset absolutely.
    libvirt_case("r-lv-odd", 15, 92 + 1234, MigOpts::multifd(2));
}

// ---------------------------------------------------------------------
// The library writes what QEMU writes.
// ---------------------------------------------------------------------

/// First differing offset of two byte ranges.
#[track_caller]
fn assert_prefix_identical(ours: &Path, qemus: &Path, from: u64, to: u64) {
    let a = std::fs::read(ours).unwrap();
    let b = std::fs::read(qemus).unwrap();
    let (from, to) = (from as usize, to as usize);
    assert!(
        a.len() >= to,
        "library file is {} bytes, need {to}",
        a.len()
    );
    assert!(b.len() >= to);
    if let Some(p) = (from..to).find(|&i| a[i] != b[i]) {
        panic!(
            "library file differs from QEMU's at offset {p:#x}: ours {:02x?} QEMU {:02x?}",
            &a[p..(p + 16).min(to)],
            &b[p..(p + 16).min(to)]
        );
    }
}

/// Copy every block of `src` into `dst` (same block order): `mem` through
/// the engine from memory, the others page runs through write_pages.
fn copy_blocks(src: &Image, dst: &Image) {
    for i in 0..src.block_count() {
        let info = src.block_info(i).unwrap();
        let data = engine::read_ramblock_to_vec(src, i, 2).unwrap();
        if info.idstr == "mem" {
            // SAFETY: `data` is valid for the block's used_length bytes.
            let st = engine::save_ramblock(
                dst,
                i,
                unsafe {
                    GuestSlice::new(
                        data.as_ptr(),
                        dst.block_info(i).unwrap().used_length as usize,
                    )
                }
                .unwrap(),
                None,
                2,
            )
            .unwrap();
            assert_eq!(st.pages_data, info.pages_present);
        } else {
            let ps = info.page_size as usize;
            let pages = data.len() / ps;
            let mut p = 0;
            while p < pages {
                if !src.page_present(i, p as u64).unwrap() {
                    p += 1;
                    continue;
                }
                let mut q = p;
                while q < pages && src.page_present(i, q as u64).unwrap() {
                    q += 1;
                }
                dst.write_pages(i, (p * ps) as u64, &data[p * ps..q * ps])
                    .unwrap();
                p = q;
            }
        }
    }
}

fn specs_of(img: &Image) -> Vec<BlockSpec> {
    (0..img.block_count())
        .map(|i| {
            let b = img.block_info(i).unwrap();
            BlockSpec {
                idstr: b.idstr,
                used_length: b.used_length,
                page_size: b.page_size,
            }
        })
        .collect()
}

/// Rebuild a QEMU-saved file with the library (create, copy every block,
/// finish) and compare it with QEMU's through the RAM setup EOS.
fn byte_identical_case(tag: &str, seed: u64, opts: MigOpts, flags: ImageFlags) {
    let dir = TmpDir::new(tag);
    let mem = fill::pattern(seed, MEM);
    let file = dir.join("qemu.img");
    qemu::save(&dir, &mem, &opts, &file, 0);
    let eos = raw::parse(&std::fs::read(&file).unwrap(), 0).eos_offset;

    let src = Image::open(&file, ImageFlags::default()).unwrap();
    let ours = dir.join("ours.img");
    let dst = Image::create(&ours, src.machine_type(), &specs_of(&src), flags).unwrap();
    copy_blocks(&src, &dst);
    dst.finish().unwrap();
    dst.close().unwrap();
    assert_prefix_identical(&ours, &file, 0, eos + 8);

    // And it reads back complete, with the same contents.
    let back = Image::open(&ours, ImageFlags::default()).unwrap();
    assert!(back.is_complete());
    let i = back.find_block("mem").unwrap();
    assert_same(
        "library-written mem",
        &engine::read_ramblock_to_vec(&back, i, 2).unwrap(),
        &mem,
    );
    src.close().unwrap();
    back.close().unwrap();
}

#[test]
fn library_writes_ram_section_byte_identical_to_qemu() {
    if !met(Need::Qemu) {
        return;
    }
    byte_identical_case("w-ident", 21, MigOpts::multifd(2), ImageFlags::default());
}

#[test]
fn library_writes_ram_section_byte_identical_to_qemu_direct() {
    if !met(Need::Qemu) {
        return;
    }
    byte_identical_case("w-ident-dio", 23, MigOpts::plain(), ImageFlags::DIRECT);
}

#[test]
fn library_writes_ram_section_byte_identical_at_offset() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("w-off");
    let offset = 4096;
    let mem = fill::pattern(22, MEM);
    let file = dir.join("qemu.img");
    qemu::save(&dir, &mem, &MigOpts::plain(), &file, offset);
    common::write_at_start(&file, &common::libvirt_header(true, offset));
    let eos = raw::parse(&std::fs::read(&file).unwrap(), offset).eos_offset;

    let src = Image::open(&file, ImageFlags::default()).unwrap();
    assert_eq!(src.stream_offset(), offset);
    let ours = dir.join("ours.img");
    let ch = mappedram::Channel::open(
        &ours,
        mappedram::OpenFlags::READ
            | mappedram::OpenFlags::WRITE
            | mappedram::OpenFlags::CREATE
            | mappedram::OpenFlags::TRUNC,
    )
    .unwrap();
    ch.write_all_at(&common::libvirt_header(true, offset), 0)
        .unwrap();
    let dst = Image::create_on(
        std::sync::Arc::new(ch),
        offset,
        src.machine_type(),
        &specs_of(&src),
        ImageFlags::default(),
    )
    .unwrap();
    copy_blocks(&src, &dst);
    dst.finish().unwrap();
    dst.close().unwrap();
    assert_prefix_identical(&ours, &file, offset, eos + 8);
    src.close().unwrap();
}

// ---------------------------------------------------------------------
// The library changes a QEMU file; QEMU restores it.
// ---------------------------------------------------------------------

#[test]
fn library_patches_qemu_file_and_qemu_restores_it() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("p-patch");
    let mem = fill::pattern(31, MEM);
    let file = dir.join("img");
    qemu::save(&dir, &mem, &MigOpts::plain(), &file, 0);

    let mut expected = mem.clone();
    let img = Image::open(&file, ImageFlags::READ_WRITE).unwrap();
    let blk = img.find_block("mem").unwrap();
    let pages = MEM / PAGE;
    let mut rng = common::Rng::new(99);
    let zero = vec![0u8; PAGE];
    let (mut filled, mut zeroed) = (0, 0);
    for _ in 0..400 {
        let p = rng.below(pages as u64) as usize;
        let r = p * PAGE..(p + 1) * PAGE;
        if is_zero(&expected[r.clone()]) {
            // Data into a zero page.
            let mut page = vec![0u8; PAGE];
            rng.fill(&mut page);
            img.write_page(blk, r.start as u64, &page).unwrap();
            expected[r].copy_from_slice(&page);
            filled += 1;
        } else {
            // Zero into a data page: its bit must clear.
            img.write_page(blk, r.start as u64, &zero).unwrap();
            expected[r].fill(0);
            zeroed += 1;
        }
    }
    assert!(
        filled > 20 && zeroed > 20,
        "filled {filled} zeroed {zeroed}"
    );
    // A whole range crossing 1 MiB boundaries, new mixed content.
    let new = fill::pattern(32, 3 << 20);
    let start = (5 << 20) + 3 * PAGE;
    img.write_pages(blk, start as u64, &new).unwrap();
    expected[start..start + new.len()].copy_from_slice(&new);
    img.sync().unwrap();
    img.close().unwrap();

    // The library sees the patch.
    let img = Image::open(&file, ImageFlags::default()).unwrap();
    assert!(
        img.is_complete(),
        "patched and closed image must be complete"
    );
    assert_same(
        "library read after patch",
        &engine::read_ramblock_to_vec(&img, blk, 2).unwrap(),
        &expected,
    );
    img.close().unwrap();

    let back = qemu::restore(&dir, &file, 0, MEM, &MigOpts::plain());
    assert_same("QEMU restore of the patched file", &back, &expected);
}

/// The torn-update guard protects readers that use this library only: the
/// update mark lies after the EOF byte where QEMU stops, so QEMU loads an
/// image whose in-place update was interrupted (the README says so).
#[test]
fn qemu_ignores_the_update_mark() {
    if !met(Need::Qemu) {
        return;
    }
    let dir = TmpDir::new("p-mark");
    let mem = fill::pattern(41, MEM);
    let file = dir.join("img");
    qemu::save(&dir, &mem, &MigOpts::plain(), &file, 0);
    let mut expected = mem.clone();
    // A writer that "dies" mid-update: the mark is on disk, never cleared
    // (the handle is leaked, not closed; no lock, so this process can
    // still open the file below).
    let img = Image::open(&file, ImageFlags::READ_WRITE | ImageFlags::NO_LOCK).unwrap();
    let blk = img.find_block("mem").unwrap();
    let page = fill::pattern(42, PAGE);
    img.write_page(blk, 7 * PAGE as u64, &page).unwrap();
    expected[7 * PAGE..8 * PAGE].copy_from_slice(&page);
    std::mem::forget(img);
    match Image::open(&file, ImageFlags::default()) {
        Err(Error::Incomplete(m)) => assert!(m.contains("update"), "{m}"),
        other => panic!("the library must refuse the interrupted update: {other:?}"),
    }
    let back = qemu::restore(&dir, &file, 0, MEM, &MigOpts::plain());
    assert_same("QEMU restore despite the update mark", &back, &expected);
}

/// Rewrite all of `mem` in a QEMU-saved file through the engine (new
/// pattern: stale data pages must lose their bits), restore in QEMU.
fn rewrite_case(tag: &str, seed: u64, opts: MigOpts, flags: ImageFlags) {
    let dir = TmpDir::new(tag);
    let mem = fill::pattern(seed, MEM);
    let file = dir.join("img");
    qemu::save(&dir, &mem, &opts, &file, 0);

    let new = fill::pattern(seed + 1, MEM);
    let (zero_pages, data_pages) = fill::census(&new);
    let img = Image::open(&file, ImageFlags::READ_WRITE | flags).unwrap();
    let blk = img.find_block("mem").unwrap();
    // SAFETY: `new` is valid for the block's used_length bytes.
    let st = engine::save_ramblock(
        &img,
        blk,
        unsafe {
            GuestSlice::new(
                new.as_ptr(),
                img.block_info(blk).unwrap().used_length as usize,
            )
        }
        .unwrap(),
        None,
        3,
    )
    .unwrap();
    assert_eq!(st.pages_scanned, (MEM / PAGE) as u64);
    assert_eq!(st.pages_data, data_pages as u64);
    assert_eq!(st.pages_zero, zero_pages as u64);
    img.sync().unwrap();
    img.close().unwrap();

    let back = qemu::restore(&dir, &file, 0, MEM, &opts);
    assert_same("QEMU restore of the rewritten file", &back, &new);
}

#[test]
fn library_rewrites_all_of_mem_and_qemu_restores_it() {
    if !met(Need::Qemu) {
        return;
    }
    rewrite_case("p-rewrite", 41, MigOpts::multifd(2), ImageFlags::default());
}

#[test]
fn library_rewrites_all_of_mem_direct_and_qemu_restores_it_direct() {
    if !met(Need::Qemu) {
        return;
    }
    rewrite_case(
        "p-rewrite-dio",
        43,
        MigOpts::multifd_direct(2),
        ImageFlags::DIRECT,
    );
}

#[test]
fn pattern_is_deterministic_and_mixed() {
    let a = fill::pattern(7, 8 << 20);
    let b = fill::pattern(7, 8 << 20);
    let c = fill::pattern(8, 8 << 20);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let (z, d) = fill::census(&a);
    assert!(z > 100 && d > 100, "zero {z} data {d}");
    // Sub-page data: pages whose first byte is zero yet are not zero.
    let sub = a
        .chunks(PAGE)
        .filter(|p| !is_zero(p) && p[..PAGE / 2].iter().all(|&x| x == 0))
        .count();
    assert!(sub > 0);
}

// The harness's own parsers (no QEMU needed).

#[test]
fn parses_versions_and_ramblock_listing() {
    assert_eq!(
        qemu::parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\n"),
        Some((10, 0))
    );
    assert_eq!(
        qemu::parse_version("QEMU emulator version 9.1.0\n"),
        Some((9, 1))
    );
    assert_eq!(qemu::parse_version("nothing"), None);
    let t = "              Block Name    PSize              Offset               Used              Total                HVA  RO\r\n                     mem    4 KiB  0x0000000000000000 0x0000000004000000 0x0000000004000000 0x00007f096bfff000  rw\r\n   /rom@etc/acpi/rsdp    4 KiB  0x00000000042c0000 0x0000000000001000 0x0000000000001000 0x00007f096b600000  ro\r\n";
    let b = qemu::parse_info_ramblock(t);
    assert_eq!(
        b,
        vec![
            RamBlock {
                idstr: "mem".into(),
                page_size: 4096,
                used_length: 64 << 20
            },
            RamBlock {
                idstr: "/rom@etc/acpi/rsdp".into(),
                page_size: 4096,
                used_length: 4096
            },
        ]
    );
}

#[test]
fn json_parser_reads_qmp_lines() {
    let v = qmp::Json::parse(
        r#"{"return": {"status": "completed", "ram": {"total": 67641344, "mbps": 2.5e3}, "a": [true, false, null, "x\"\u0041"]}}"#,
    )
    .unwrap();
    let r = v.get("return").unwrap();
    assert_eq!(r.get("status").unwrap().as_str(), Some("completed"));
    assert_eq!(
        r.get("ram").unwrap().get("total").unwrap().as_u64(),
        Some(67641344)
    );
    let a = r.get("a").unwrap().as_array().unwrap();
    assert_eq!(a[3].as_str(), Some("x\"A"));
    assert!(qmp::Json::parse("{\"a\": 1").is_err());
    assert_eq!(qmp::quote("a\"b\\"), r#""a\"b\\""#);
}
