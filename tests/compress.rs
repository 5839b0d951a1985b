//! Compressed / checksummed (chunked) images: round trips with every
//! thread count, page calls (read-modify-write of a chunk), dirty rounds,
//! damage detection (chunk data, table entries, table header), plain
//! images unchanged.

mod common;

use common::fill::{pattern, PAGE};
use common::TmpDir;
use mappedram::compress::{Codec, ImageOptions};
use mappedram::engine::{read_ramblock, read_ramblock_to_vec, save_ramblock};
use mappedram::memory::{DirtyBitmap, GuestSlice, GuestSliceMut};
use mappedram::{BlockSpec, Error, Image, ImageFlags};
use std::os::unix::fs::FileExt;
use std::path::Path;

fn specs(mem: u64) -> Vec<BlockSpec> {
    vec![
        BlockSpec {
            idstr: "mem".into(),
            used_length: mem,
            page_size: 4096,
        },
        BlockSpec {
            idstr: "pc.bios".into(),
            used_length: 0x41000, // not a whole number of 1 MiB chunks
            page_size: 4096,
        },
    ]
}

fn save_all(img: &Image, mems: &[&[u8]], threads: u32) {
    for (i, m) in mems.iter().enumerate() {
        save_ramblock(img, i, GuestSlice::from_slice(m), None, threads).unwrap();
    }
}

fn create(path: &Path, mem: u64, opts: &ImageOptions) -> Image {
    Image::create_with(
        path,
        "pc-i440fx-10.0",
        &specs(mem),
        ImageFlags::DIRECT,
        opts,
    )
    .unwrap()
}

#[test]
fn round_trip_every_thread_count() {
    let d = TmpDir::new("cmp-rt");
    let len = 24 << 20;
    let mem = pattern(1, len);
    let bios = pattern(2, 0x41000);
    for opts in [
        ImageOptions::zstd(1),
        ImageOptions::zstd(3),
        ImageOptions {
            checksums: true,
            ..ImageOptions::default()
        },
    ] {
        for save_t in [1, 2, 3, 8] {
            let p = d.join(&format!("{:?}-{save_t}.img", opts.codec));
            let img = create(&p, len as u64, &opts);
            save_all(&img, &[&mem, &bios], save_t);
            img.finish().unwrap();
            img.close().unwrap();
            for load_t in [1, 2, 3, 8] {
                let img = Image::open(&p, ImageFlags::DIRECT).unwrap();
                assert!(img.is_chunked(0).unwrap());
                let got = read_ramblock_to_vec(&img, 0, load_t).unwrap();
                assert!(
                    got == mem,
                    "{opts:?} saved with {save_t}, read with {load_t}"
                );
                assert!(read_ramblock_to_vec(&img, 1, load_t).unwrap() == bios);
                // Pages present = non-zero pages.
                let nz = mem
                    .chunks(PAGE)
                    .filter(|p| p.iter().any(|&b| b != 0))
                    .count();
                assert_eq!(img.block_info(0).unwrap().pages_present, nz as u64);
                let mut page = vec![0u8; PAGE];
                for idx in [0usize, 1, 255, 256, 4097, len / PAGE - 1] {
                    let present = img.read_page(0, (idx * PAGE) as u64, &mut page).unwrap();
                    assert_eq!(&page[..], &mem[idx * PAGE..(idx + 1) * PAGE]);
                    assert_eq!(
                        present,
                        mem[idx * PAGE..(idx + 1) * PAGE].iter().any(|&b| b != 0)
                    );
                }
            }
        }
        let st = Image::open(
            &d.join(&format!("{:?}-1.img", opts.codec)),
            ImageFlags::default(),
        )
        .unwrap()
        .block_stats(0)
        .unwrap();
        assert_eq!(st.codec, opts.codec);
        assert_eq!(st.chunks, 24);
        if opts.codec == Codec::Zstd {
            assert!(st.stored_bytes < len as u64 / 2, "{st:?}");
            assert!(st.allocated_bytes <= st.stored_bytes + (1 << 20), "{st:?}");
        }
    }
}

#[test]
fn capability_recorded_and_plain_unchanged() {
    let d = TmpDir::new("cmp-cap");
    let mem = pattern(3, 4 << 20);
    let a = d.join("plain-create.img");
    let b = d.join("plain-with.img");
    let img = Image::create(&a, "pc-i440fx-10.0", &specs(4 << 20), ImageFlags::default()).unwrap();
    save_all(&img, &[&mem, &pattern(4, 0x41000)], 2);
    img.finish().unwrap();
    img.close().unwrap();
    let img = create(&b, 4 << 20, &ImageOptions::default());
    save_all(&img, &[&mem, &pattern(4, 0x41000)], 2);
    img.finish().unwrap();
    img.close().unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    let img = Image::open(&b, ImageFlags::default()).unwrap();
    assert_eq!(img.capabilities(), ["mapped-ram"]);
    assert!(!img.is_chunked(0).unwrap());
    let c = d.join("z.img");
    let img = create(&c, 4 << 20, &ImageOptions::zstd(1));
    assert_eq!(img.capabilities(), ["mapped-ram", "x-mappedram-chunks"]);
    img.finish().unwrap();
}

#[test]
fn page_writes_rewrite_chunks_in_place() {
    let d = TmpDir::new("cmp-pages");
    let len = 8 << 20;
    let mut mem = pattern(5, len);
    let p = d.join("p.img");
    let img = create(&p, len as u64, &ImageOptions::zstd(1));
    save_all(&img, &[&mem, &pattern(6, 0x41000)], 2);
    img.finish().unwrap();
    img.close().unwrap();
    let size = std::fs::metadata(&p).unwrap().len();

    let img = Image::open(&p, ImageFlags::READ_WRITE | ImageFlags::DIRECT).unwrap();
    // One page inside a chunk, a zero page, a run across a chunk boundary,
    // from several threads at once on the same chunks.
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let img = &img;
            s.spawn(move || {
                for k in 0..16u64 {
                    let off = (k * 64 + t as u64) * PAGE as u64;
                    img.write_page(0, off, &vec![t + 1; PAGE]).unwrap();
                }
            });
        }
    });
    for t in 0..4u8 {
        for k in 0..16usize {
            let off = (k * 64 + t as usize) * PAGE;
            mem[off..off + PAGE].fill(t + 1);
        }
    }
    img.write_page(0, 300 * PAGE as u64, &vec![0; PAGE])
        .unwrap();
    mem[300 * PAGE..301 * PAGE].fill(0);
    let run: Vec<u8> = pattern(7, 8 * PAGE);
    let at = (1 << 20) - 3 * PAGE;
    img.write_pages(0, at as u64, &run).unwrap();
    mem[at..at + run.len()].copy_from_slice(&run);
    // A dirty round: only pages with their bit set in `dirty` are taken.
    let mut host = mem.clone();
    let mut dirty = vec![0u64; len / PAGE / 64];
    for p in [5usize, 700, 1500] {
        host[p * PAGE..(p + 1) * PAGE].fill(0xee);
        dirty[p / 64] |= 1 << (p % 64);
    }
    host[900 * PAGE] ^= 1; // changed but not dirty: must not be saved
    save_ramblock(
        &img,
        0,
        GuestSlice::from_slice(&host),
        Some(DirtyBitmap::from_slice(&dirty)),
        3,
    )
    .unwrap();
    for p in [5usize, 700, 1500] {
        mem[p * PAGE..(p + 1) * PAGE].fill(0xee);
    }
    assert!(!img.page_present(0, 300).unwrap());
    img.sync().unwrap();
    img.close().unwrap();
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        size,
        "rewrites never grow the file"
    );
    let img = Image::open(&p, ImageFlags::default()).unwrap();
    assert!(img.is_complete());
    assert!(read_ramblock_to_vec(&img, 0, 2).unwrap() == mem);
}

/// Flip one bit at `off` of `path`.
fn flip(path: &Path, off: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0x08;
    f.write_all_at(&b, off).unwrap();
}

/// A restore (zeroing absent pages, so zstd chunks are decompressed
/// straight into the memory) fails naming `want`, and the damaged chunk
/// `ck` holds no unverified bytes: it is untouched (0xAA) or zeroed.
fn expect_corrupt(img: &Image, ck: usize, want: &[&str]) {
    let mut host = vec![0xAAu8; 8 << 20];
    let e = read_ramblock(img, 0, GuestSliceMut::from_mut_slice(&mut host), true, 2).unwrap_err();
    assert_eq!(e.errno(), libc::EBADMSG, "{e}");
    for w in want {
        assert!(e.to_string().contains(w), "{e} lacks {w:?}");
    }
    let chunk = &host[ck << 20..(ck + 1) << 20];
    assert!(
        chunk.iter().all(|&b| b == 0) || chunk.iter().all(|&b| b == 0xAA),
        "{e}: the damaged chunk's memory holds other bytes"
    );
}

#[test]
fn damage_is_detected_on_every_read_path() {
    let d = TmpDir::new("cmp-damage");
    let len = 8u64 << 20;
    let mem = pattern(8, len as usize);
    for opts in [
        ImageOptions::zstd(1),
        ImageOptions {
            checksums: true,
            ..Default::default()
        },
    ] {
        let p = d.join("a.img");
        let img = create(&p, len, &opts);
        save_all(&img, &[&mem, &pattern(9, 0x41000)], 2);
        img.finish().unwrap();
        let l = img.layout().blocks[0].clone();
        img.close().unwrap();
        let table = l.bitmap_offset + l.bitmap_len;
        let good = std::fs::read(&p).unwrap();
        // The first chunk after chunk 0 with a present page.
        let present = |i: u64| {
            mem[i as usize * PAGE..(i as usize + 1) * PAGE]
                .iter()
                .any(|&b| b != 0)
        };
        let first = (256..len / PAGE as u64).find(|&i| present(i)).unwrap();
        let ck = first / 256;
        let entry3 = table + 32 + ck * 16;
        let codec = good[entry3 as usize];
        let data_off = if codec == 2 {
            l.pages_offset + (ck << 20) + 100
        } else {
            assert_eq!(codec, 1);
            l.pages_offset + first * PAGE as u64 + 100
        };
        let chunk3 = format!("chunk {ck}");
        let chunk_start = (ck << 20) as usize;
        for (what, off) in [
            ("data", data_off),
            ("checksum", entry3 + 15),
            ("length", entry3 + 6),
            ("codec", entry3),
        ] {
            std::fs::write(&p, &good).unwrap();
            flip(&p, off);
            let img = Image::open(&p, ImageFlags::default()).unwrap();
            expect_corrupt(&img, ck as usize, &["'mem'", &chunk3]);
            // read_page of a present page in the chunk too; other chunks read.
            let mut page = vec![0u8; PAGE];
            let e = img
                .read_page(0, first * PAGE as u64, &mut page)
                .unwrap_err();
            assert_eq!(e.errno(), libc::EBADMSG, "{what}: {e}");
            img.read_page(0, 0, &mut page).unwrap();
            // A partial write to the damaged chunk refuses (no silent loss).
            drop(img);
            let img = Image::open(&p, ImageFlags::READ_WRITE).unwrap();
            let e = img
                .write_page(0, first * PAGE as u64, &vec![1; PAGE])
                .unwrap_err();
            assert_eq!(e.errno(), libc::EBADMSG, "{what}: {e}");
            // Rewriting the whole chunk repairs it.
            img.write_pages(
                0,
                chunk_start as u64,
                &mem[chunk_start..chunk_start + (1 << 20)],
            )
            .unwrap();
            img.sync().unwrap();
            assert!(read_ramblock_to_vec(&img, 0, 2).unwrap() == mem, "{what}");
            img.close().unwrap();
        }
        // The table header: open fails naming it.
        std::fs::write(&p, &good).unwrap();
        flip(&p, table + 1);
        let e = Image::open(&p, ImageFlags::default()).unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
        assert!(e.to_string().contains("chunk table header"), "{e}");
    }
}

#[test]
fn bad_options_are_rejected() {
    let d = TmpDir::new("cmp-opts");
    for (opts, want) in [
        (
            ImageOptions {
                chunk_bytes: 3 << 20,
                ..ImageOptions::zstd(1)
            },
            "chunk size",
        ),
        (
            ImageOptions {
                chunk_bytes: 32 << 20,
                ..ImageOptions::zstd(1)
            },
            "chunk size",
        ),
        (
            ImageOptions {
                chunk_bytes: 2048,
                ..ImageOptions::zstd(1)
            },
            "chunk size",
        ),
        (ImageOptions::zstd(23), "level"),
    ] {
        let e = Image::create_with(
            &d.join("x.img"),
            "m",
            &specs(1 << 20),
            ImageFlags::default(),
            &opts,
        )
        .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(e.to_string().contains(want), "{e}");
    }
}

fn entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A finished compressed image at `path` holding a pattern.
fn finished_zstd(path: &Path) {
    let img = create(path, 2 << 20, &ImageOptions::zstd(1));
    save_all(&img, &[&pattern(7, 2 << 20), &pattern(8, 0x41000)], 2);
    img.finish().unwrap();
    img.close().unwrap();
}

/// A compressed create goes through the same safe create as a plain one:
/// every argument error (options, block list, flags, a size no file can
/// hold) leaves an existing image byte for byte as it was, creates nothing
/// at a new path and leaves no temporary behind.
#[test]
fn failed_chunked_creates_leave_the_path_alone() {
    let d = TmpDir::new("cmp-create-safe");
    let old = d.join("old.img");
    finished_zstd(&old);
    let before = std::fs::read(&old).unwrap();
    let spec = |id: &str, len: u64, ps: u64| BlockSpec {
        idstr: id.into(),
        used_length: len,
        page_size: ps,
    };
    let z = ImageOptions::zstd(1);
    // (what, machine type, blocks, flags, options, errno, message part)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<BlockSpec>,
        ImageFlags,
        ImageOptions,
        i32,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "level 23",
            "pc",
            specs(1 << 20),
            ImageFlags::default(),
            ImageOptions::zstd(23),
            libc::EINVAL,
            "level",
        ),
        (
            "chunk of 2 KiB",
            "pc",
            specs(1 << 20),
            ImageFlags::default(),
            ImageOptions {
                chunk_bytes: 2048,
                ..z
            },
            libc::EINVAL,
            "chunk size",
        ),
        (
            "used_length 4097",
            "pc",
            vec![spec("mem", 4097, 4096)],
            ImageFlags::default(),
            z,
            libc::EINVAL,
            "multiple of the page size",
        ),
        (
            "used_length 0",
            "pc",
            vec![spec("mem", 0, 4096)],
            ImageFlags::default(),
            z,
            libc::EINVAL,
            "non-zero",
        ),
        (
            "two page sizes",
            "pc",
            vec![spec("mem", 1 << 20, 4096), spec("rom", 1 << 16, 8192)],
            ImageFlags::default(),
            z,
            libc::EINVAL,
            "page size",
        ),
        (
            "duplicate idstr",
            "pc",
            vec![spec("mem", 1 << 20, 4096), spec("mem", 1 << 20, 4096)],
            ImageFlags::default(),
            z,
            libc::EINVAL,
            "listed twice",
        ),
        (
            "empty idstr",
            "pc",
            vec![spec("", 1 << 20, 4096)],
            ImageFlags::default(),
            z,
            libc::EINVAL,
            "idstr",
        ),
        (
            "empty machine type",
            "",
            specs(1 << 20),
            ImageFlags::default(),
            z,
            libc::EINVAL,
            "machine type",
        ),
        (
            "unknown flag",
            "pc",
            specs(1 << 20),
            ImageFlags(0x100),
            z,
            libc::EINVAL,
            "unknown image flags",
        ),
        (
            "used_length 1<<63",
            "pc",
            vec![spec("mem", 1 << 63, 4096)],
            ImageFlags::default(),
            z,
            libc::EFBIG,
            "largest file offset",
        ),
        // Fits a file offset, not an ext4 file: the file system refuses it
        // while the new image is still unnamed.
        (
            "used_length 1<<62",
            "pc",
            vec![spec("mem", 1 << 62, 4096)],
            ImageFlags::default(),
            z,
            libc::EFBIG,
            "",
        ),
    ];
    for (what, machine, blocks, flags, opts, errno, needle) in &cases {
        for target in [old.clone(), d.join("new.img")] {
            let e = Image::create_with(&target, machine, blocks, *flags, opts).unwrap_err();
            assert_eq!(e.errno(), *errno, "{what} on {}: {e}", target.display());
            assert!(e.to_string().contains(needle), "{what}: {e}");
            assert!(
                std::fs::read(&old).unwrap() == before,
                "{what}: the image changed"
            );
            assert_eq!(entries(d.path()), ["old.img"], "{what}");
        }
    }
    let img = Image::open(&old, ImageFlags::default()).unwrap();
    assert!(img.is_complete());
    assert!(read_ramblock_to_vec(&img, 0, 2).unwrap() == pattern(7, 2 << 20));
}

/// Over an image another handle holds, a compressed create behaves like a
/// plain one. (The image lock is an OFD lock: it belongs to the open file
/// description, so a second handle in this process conflicts exactly like
/// one in another process.) A writer's lock refuses it with `EBUSY` and the
/// image is untouched; a reader's shared lock lets it replace the path (a
/// new inode: the reader keeps reading the old image).
#[test]
fn chunked_create_over_a_held_image_behaves_like_plain() {
    let d = TmpDir::new("cmp-create-lock");
    let old = d.join("held.img");
    let z = ImageOptions::zstd(1);
    let new_blocks = [BlockSpec {
        idstr: "other".into(),
        used_length: 4 << 20,
        page_size: 4096,
    }];
    for opts in [ImageOptions::default(), z] {
        finished_zstd(&old);
        let before = std::fs::read(&old).unwrap();
        let writer = Image::open(&old, ImageFlags::READ_WRITE).unwrap();
        let e =
            Image::create_with(&old, "pc", &new_blocks, ImageFlags::default(), &opts).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY, "{opts:?}: {e}");
        assert!(e.to_string().contains("was not replaced"), "{e}");
        assert!(std::fs::read(&old).unwrap() == before, "{opts:?}");
        assert_eq!(entries(d.path()), ["held.img"]);
        writer.close().unwrap();

        let reader = Image::open(&old, ImageFlags::default()).unwrap();
        let img =
            Image::create_with(&old, "pc", &new_blocks, ImageFlags::default(), &opts).unwrap();
        assert_eq!(img.is_chunked(0).unwrap(), opts.is_chunked());
        // The new image is locked for writing like a plain new one.
        let e = Image::open(&old, ImageFlags::default()).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY, "{opts:?}: {e}");
        assert!(read_ramblock_to_vec(&reader, 0, 2).unwrap() == pattern(7, 2 << 20));
        img.finish().unwrap();
        img.close().unwrap();
        reader.close().unwrap();
        let img = Image::open(&old, ImageFlags::default()).unwrap();
        assert_eq!(img.find_block("other").unwrap(), 0);
        assert_eq!(entries(d.path()), ["held.img"]);
    }
}

/// Restores (2 threads, `O_DIRECT`, frames read ahead) racing whole-chunk
/// rewrites: every chunk read is one of the versions written, never a mix
/// or an error (a frame read ahead before a rewrite is read again).
#[test]
fn restore_races_chunk_rewrites() {
    let d = TmpDir::new("cmp-race");
    let len = 16usize << 20;
    let p = d.join("r.img");
    let a = pattern(21, len);
    let b = pattern(22, len);
    let img = std::sync::Arc::new(create(&p, len as u64, &ImageOptions::zstd(1)));
    save_all(&img, &[&a, &pattern(8, 0x41000)], 2);
    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Stops the writer also when an assertion below fails.
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            let mut k = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ck = (k * 7) % (len >> 20);
                let src = if k % 2 == 0 { &b } else { &a };
                let r = ck << 20..(ck + 1) << 20;
                img.write_pages(0, r.start as u64, &src[r]).unwrap();
                k += 1;
            }
        });
        for round in 0..20 {
            // Both paths: in place (zeroing absent pages) and via scratch.
            let mut got = vec![0u8; len];
            let dst = GuestSliceMut::from_mut_slice(&mut got);
            read_ramblock(&img, 0, dst, round % 2 == 0, 2).unwrap();
            for ck in 0..len >> 20 {
                let r = ck << 20..(ck + 1) << 20;
                assert!(
                    got[r.clone()] == a[r.clone()] || got[r.clone()] == b[r.clone()],
                    "chunk {ck} is neither version"
                );
            }
        }
    });
}
