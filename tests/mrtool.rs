//! mrtool end to end: info (text and JSON), verify (ok, damaged data,
//! damaged structure, unfinished), extract, compress / expand (expand
//! gives back the original file byte for byte), checksum, copy (holes
//! kept), usage and the manual.

mod common;

use common::fill::pattern;
use common::TmpDir;
use mappedram::engine::save_ramblock;
use mappedram::memory::GuestSlice;
use mappedram::{BlockSpec, Image, ImageFlags};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const MEM: usize = 12 << 20;

fn mrtool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mrtool"))
        .args(args)
        .output()
        .unwrap()
}

fn run(args: &[&str], code: i32) -> String {
    let o = mrtool(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(code), "mrtool {args:?}:\n{text}");
    text
}

fn make(path: &Path, mem: &[u8], finish: bool) {
    let specs = [
        BlockSpec {
            idstr: "mem".into(),
            used_length: mem.len() as u64,
            page_size: 4096,
        },
        BlockSpec {
            idstr: "pc.bios".into(),
            used_length: 0x40000,
            page_size: 4096,
        },
    ];
    let img = Image::create(path, "pc-i440fx-10.0", &specs, ImageFlags::default()).unwrap();
    let bios = pattern(77, 0x40000);
    save_ramblock(&img, 0, GuestSlice::from_slice(mem), None, 2).unwrap();
    save_ramblock(&img, 1, GuestSlice::from_slice(&bios), None, 1).unwrap();
    if finish {
        img.finish().unwrap();
    }
    img.close().unwrap();
}

#[test]
fn mrtool_end_to_end() {
    let d = TmpDir::new("mrtool");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mem = pattern(11, MEM);
    let plain = d.join("plain.img");
    make(&plain, &mem, true);
    let (p, c, e, x, k, cp) = (
        s(&plain),
        s(&d.join("c.img")),
        s(&d.join("e.img")),
        s(&d.join("mem.raw")),
        s(&d.join("k.img")),
        s(&d.join("copy.img")),
    );

    let t = run(&["info", &p], 0);
    assert!(
        t.contains("machine type: pc-i440fx-10.0") && t.contains("complete:     yes"),
        "{t}"
    );
    assert!(t.contains("plain (codec none"), "{t}");
    run(&["compress", &p, &c, "--level", "3", "--threads", "3"], 0);
    let t = run(&["info", &c], 0);
    assert!(
        t.contains("x-mappedram-chunks") && t.contains("zstd") && t.contains("xxh3-64"),
        "{t}"
    );
    assert!(t.contains("compression:"), "{t}");
    let j = run(&["info", &c, "--json"], 0);
    assert!(
        j.starts_with('{') && j.contains("\"codec\":\"zstd\"") && j.contains("\"complete\":true"),
        "{j}"
    );
    assert!(j.contains("\"idstr\":\"pc.bios\""), "{j}");
    let t = run(&["verify", &c], 0);
    assert!(t.contains("every checksum verified"), "{t}");
    run(&["verify", &p], 0);

    // expand(compress(f)) == f, byte for byte (this library's plain images
    // keep absent slots as holes, so the whole file compares).
    run(&["expand", &c, &e, "--threads", "2"], 0);
    assert!(std::fs::read(&plain).unwrap() == std::fs::read(&e).unwrap());

    run(&["extract", &c, "mem", &x], 0);
    assert!(std::fs::read(&x).unwrap() == mem);
    assert_eq!(
        std::fs::metadata(&x).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let t = run(&["extract", &c, "nope", &x], 1);
    assert!(t.contains("nope"), "{t}");

    run(&["checksum", &p, &k], 0);
    let t = run(&["info", &k], 0);
    assert!(t.contains("none") && t.contains("xxh3-64"), "{t}");
    run(&["verify", &k], 0);

    // Damage: one byte of chunk 5's data -> exit 5 naming the chunk.
    let img = Image::open(Path::new(&c), ImageFlags::default()).unwrap();
    let l = img.layout().blocks[0].clone();
    drop(img);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&c)
        .unwrap();
    let good = std::fs::read(&c).unwrap();
    let entry = l.bitmap_offset + l.bitmap_len + 32 + 5 * 16;
    assert_ne!(good[entry as usize], 0, "chunk 5 of the pattern holds data");
    // Inside the chunk's data: the middle of its zstd frame, or its first
    // present page when it is stored raw.
    let e = entry as usize;
    let at = if good[e] == 2 {
        let stored = u32::from_be_bytes(good[e + 4..e + 8].try_into().unwrap()) as u64;
        l.pages_offset + (5 << 20) + stored / 2
    } else {
        let p = (5 << 20) / 4096
            + (0..256u64)
                .find(|i| {
                    mem[((5 << 20) + i * 4096) as usize..][..4096]
                        .iter()
                        .any(|&b| b != 0)
                })
                .unwrap();
        l.pages_offset + p * 4096 + 100
    };
    f.write_all_at(&[good[at as usize] ^ 0x40], at).unwrap();
    let t = run(&["verify", &c], 5);
    assert!(t.contains("DAMAGED") && t.contains("chunk 5"), "{t}");
    // The table header -> exit 3.
    f.write_all_at(&good, 0).unwrap();
    let th = (l.bitmap_offset + l.bitmap_len) as usize;
    f.write_all_at(&[good[th] ^ 1], th as u64).unwrap();
    let t = run(&["verify", &c], 3);
    assert!(t.contains("chunk table header"), "{t}");
    // Unfinished -> exit 4 (readable), info warns.
    let u = d.join("u.img");
    make(&u, &mem, false);
    run(&["verify", &s(&u)], 4);
    let t = run(&["info", &s(&u)], 0);
    assert!(
        t.contains("complete:     NO") && t.contains("warning"),
        "{t}"
    );

    // copy: same bytes, holes kept.
    run(&["copy", &p, &cp, "--threads", "3"], 0);
    assert!(std::fs::read(&plain).unwrap() == std::fs::read(&cp).unwrap());
    let (a, b) = (
        std::fs::metadata(&plain).unwrap(),
        std::fs::metadata(&cp).unwrap(),
    );
    assert!(
        b.blocks() <= a.blocks() + 8,
        "copy allocated {} blocks, source {}",
        b.blocks(),
        a.blocks()
    );
    assert!(b.blocks() * 512 < b.len(), "copy is not sparse");

    run(&[], 2);
    run(&["frob", &p], 2);
    run(&["info"], 2);
    run(&["info", &p, "--bogus"], 2);
    let t = run(&["--help"], 0);
    assert!(
        t.contains("NAME") && t.contains("EXIT STATUS") && t.contains("mrtool compress"),
        "{t}"
    );
    let t = run(&["info", &s(&d.join("missing.img"))], 1);
    assert!(t.contains("missing.img"), "{t}");
}
