//! mr-zbench: compressed images against the zstd CLI, same data, same run.
//!
//! Every speed figure is the median over `--reps` of (zstd, library) pairs
//! run back to back, so both sides see the same machine load.
//!
//! A guest of the realistic mix (random, zero, text, mostly-zero pages) is
//! generated in memory and written raw to `DIR/raw.bin` (the zstd input;
//! it stays in the page cache). Then, per chunk size:
//! - size: allocated bytes of a compressed image (zstd level 1) against
//!   `zstd -1 -T2 raw.bin` (bar: <= 1.03x);
//! - save: library save with 2 threads (`O_DIRECT`, `finish` included)
//!   against `zstd -1 -T2` of the cached raw file including an fsync of its
//!   output (bar: >= 0.9x throughput);
//! - restore: library restore with 2 threads into fresh memory against
//!   `zstd -d -c raw.zst > /dev/null` (zstd's best case: no output
//!   written; bar: >= 1.5x throughput), both with the file evicted from
//!   the page cache (cold: `O_DIRECT` for the library) and both cached.
//!
//! `--qemu-file F` adds `mrtool compress`-equivalent conversion of a QEMU
//! file against `zstd -1 -T2 F`.
//!
//! `--qemu` has QEMU 10 save the same guest first and uses that file.
//!
//! usage: mr-zbench [--size 1G] [--dir DIR] [--chunks 262144,1048576,4194304] [--reps N] [--level N] [--qemu-file F] [--qemu]

use mappedram::compress::convert::convert;
use mappedram::compress::ImageOptions;
use mappedram::engine;
use mappedram::{GuestSlice, GuestSliceMut, Image, ImageFlags};
use mappedram_bench::*;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

fn sh(cmd: &str) -> f64 {
    let t = Instant::now();
    let st = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .status()
        .expect("sh");
    assert!(st.success(), "{cmd} failed");
    t.elapsed().as_secs_f64()
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Drop `p` from the page cache (this file only): a cold read follows.
fn evict(p: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p).expect("open for evict");
    f.sync_all().expect("fsync");
    // SAFETY: fadvise on a valid descriptor only affects caching.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Read `p` once so it is in the page cache.
fn warm(p: &Path) {
    sh(&format!("cat {} > /dev/null", p.display()));
}

/// CPU seconds (user + system) used so far by this process (`self_`) or
/// by its finished children.
fn cpu(self_: bool) -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage only writes it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    let who = if self_ {
        libc::RUSAGE_SELF
    } else {
        libc::RUSAGE_CHILDREN
    };
    // SAFETY: `r` is a valid, writable rusage.
    unsafe { libc::getrusage(who, &mut r) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(r.ru_utime) + s(r.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// QEMU 10 saves `mem` (a paused guest, `-M pc`, multifd 2 channels) to `out`.
fn qemu_save_guest(mem: &[u8], dir: &Path, out: &Path) {
    use mappedram_bench::qmp::Qemu;
    let ram = PathBuf::from("/dev/shm/zb-src.ram");
    std::fs::write(&ram, mem).expect("guest RAM file");
    let sock = dir.join("zb-qmp.sock");
    let mut q = Qemu::start(&ram, mem.len() >> 20, &sock, false).expect("start QEMU");
    q.qmp.setup_mapped_ram(2, false).expect("QMP setup");
    q.qmp
        .cmd(
            "migrate",
            &format!("{{\"uri\":\"file:{}\"}}", out.display()),
        )
        .expect("migrate");
    q.qmp
        .wait_migration(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_secs(600),
        )
        .expect("QEMU save");
    q.quit();
    let _ = std::fs::remove_file(&ram);
}

fn main() -> ExitCode {
    let mut size = 1usize << 30;
    let mut dir = std::env::temp_dir();
    let mut chunks = vec![256 << 10, 1 << 20, 4 << 20];
    let mut reps = 3;
    let mut qemu_file: Option<PathBuf> = None;
    let mut qemu_save = false;
    let mut level = 1;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--qemu" {
            qemu_save = true;
            continue;
        }
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--size" => size = parse_size(&v).expect("--size"),
            "--dir" => dir = PathBuf::from(v),
            "--reps" => reps = v.parse().expect("--reps"),
            "--level" => level = v.parse().expect("--level"),
            "--chunks" => chunks = v.split(',').map(|c| c.parse().expect("--chunks")).collect(),
            "--qemu-file" => qemu_file = Some(PathBuf::from(v)),
            _ => {
                eprintln!("mr-zbench: unknown argument {k}");
                return ExitCode::from(2);
            }
        }
    }
    let gib = size as f64 / (1u64 << 30) as f64;
    let mut mem = Mem::anon(size).expect("mmap");
    Pattern::Realistic.fill(7, mem.as_mut_slice());
    let (present, zero) = count_pages(mem.as_slice());
    println!("guest: {gib:.2} GiB mixed, {present} present / {zero} zero pages");
    let raw = dir.join("zb-raw.bin");
    let zst = dir.join("zb-raw.zst");
    std::fs::write(&raw, mem.as_slice()).expect("raw.bin");
    let cat = sh(&format!("cat {} > /dev/null", raw.display()));
    println!("raw.bin cached (cat: {cat:.3} s)");

    let unzstd = format!("zstd -q -d -c {} > /dev/null", zst.display());
    let shm = "/dev/shm/zb-out.raw";
    let unzstd_mem = format!("zstd -q -f -d {} -o {shm}", zst.display());
    let zstd_c = format!(
        "zstd -q -f -1 -T2 {} -o {} && sync {}",
        raw.display(),
        zst.display(),
        zst.display()
    );
    sh(&zstd_c);
    let zsize = std::fs::metadata(&zst).unwrap().len();
    let mibs = |t: f64| size as f64 / t / (1 << 20) as f64;
    println!(
        "zstd -1 -T2 of the raw memory: {zsize} bytes ({:.1}% of raw)",
        100.0 * zsize as f64 / size as f64
    );
    println!("each figure: median over {reps} reps of (zstd, library) pairs run back to back");

    let spec = specs(size, &[]);
    for &chunk in &chunks {
        let img_path = dir.join("zb-img.mr");
        let opts = ImageOptions {
            chunk_bytes: chunk,
            ..ImageOptions::zstd(level)
        };
        // Per pair: (zstd seconds, library seconds) for save, restore
        // (a) cold, (b) cached into fresh memory, (c) cached into
        // populated memory.
        let mut pairs: [Vec<(f64, f64)>; 4] = Default::default();
        // Per restore pair: (zstd CPU seconds, library CPU seconds).
        let mut cpus: [Vec<(f64, f64)>; 4] = Default::default();
        for _ in 0..reps {
            let tz = sh(&zstd_c);
            let _ = std::fs::remove_file(&img_path);
            let t = Instant::now();
            let img = Image::create_with(&img_path, MACHINE, &spec, ImageFlags::DIRECT, &opts)
                .expect("create");
            engine::save_ramblock(&img, 0, GuestSlice::from_slice(mem.as_slice()), None, 2)
                .expect("save");
            img.finish().expect("finish");
            img.close().expect("close");
            pairs[0].push((tz, t.elapsed().as_secs_f64()));
            for (k, slot) in pairs.iter_mut().enumerate().skip(1) {
                let (tz, cz) = if k == 1 {
                    evict(&zst);
                    let c0 = cpu(false);
                    (sh(&unzstd), cpu(false) - c0)
                } else {
                    warm(&zst);
                    let c0 = cpu(false);
                    let t = sh(if k == 2 { &unzstd_mem } else { &unzstd });
                    let c = cpu(false) - c0;
                    let _ = std::fs::remove_file(shm);
                    (t, c)
                };
                let mut out = Mem::anon(size).expect("mmap");
                let flags = if k == 1 {
                    evict(&img_path);
                    ImageFlags::DIRECT
                } else {
                    warm(&img_path);
                    ImageFlags::default()
                };
                if k == 3 {
                    out.prefault();
                }
                let t = Instant::now();
                let c0 = cpu(true);
                let img = Image::open(&img_path, flags).expect("open");
                let dst = GuestSliceMut::from_mut_slice(out.as_mut_slice());
                engine::read_ramblock(&img, 0, dst, k == 3, 2).expect("restore");
                slot.push((tz, t.elapsed().as_secs_f64()));
                cpus[k].push((cz, cpu(true) - c0));
                assert!(out.as_slice() == mem.as_slice(), "restore differs");
            }
        }
        let alloc = allocated(&img_path);
        // CPU seconds of the restore against zstd -d's: with two free
        // cores the library can reach at most 2 x zstd_cpu / library_cpu.
        let cpu_line = |v: &[(f64, f64)]| {
            let z = median(v.iter().map(|p| p.0).collect());
            let l = median(v.iter().map(|p| p.1).collect());
            format!(
                "CPU {l:.2} s vs zstd {z:.2} s (2-core ceiling {:.2}x)",
                2.0 * z / l
            )
        };
        let line = |v: &[(f64, f64)]| {
            let ratio = median(v.iter().map(|(z, l)| z / l).collect());
            let z = median(v.iter().map(|p| p.0).collect());
            let l = median(v.iter().map(|p| p.1).collect());
            format!("{:.0} vs {:.0} MiB/s = {ratio:.2}x", mibs(l), mibs(z))
        };
        println!(
            "level {level}, chunk {:>5} KiB: allocated {alloc} bytes = {:.3}x zstd\n  save 2T (O_DIRECT, finish) vs zstd -1 -T2 (+fsync): {}\n  restore 2T cold (O_DIRECT) vs zstd -d cold to /dev/null: {}\n  restore 2T cached into fresh memory vs zstd -d cached into /dev/shm: {}\n  restore 2T cached into populated memory vs zstd -d cached to /dev/null: {}",
            chunk >> 10,
            alloc as f64 / zsize as f64,
            line(&pairs[0]),
            line(&pairs[1]),
            line(&pairs[2]),
            line(&pairs[3]),
        );
        println!(
            "  restore CPU (median): cold {}; cached fresh {}; cached populated {}",
            cpu_line(&cpus[1]),
            cpu_line(&cpus[2]),
            cpu_line(&cpus[3]),
        );
        let _ = std::fs::remove_file(&img_path);
    }
    if qemu_save {
        let q = dir.join("zb-qemu.img");
        qemu_save_guest(mem.as_slice(), &dir, &q);
        qemu_file = Some(q);
    }
    if let Some(q) = qemu_file {
        let out = dir.join("zb-qemu.mr");
        let qz = dir.join("zb-qemu.zst");
        let t = Instant::now();
        let src = Image::open(&q, ImageFlags::DIRECT).expect("open QEMU file");
        convert(&src, &out, &ImageOptions::zstd(1), 2, &|_, _| {}).expect("convert");
        let ct = t.elapsed().as_secs_f64();
        let zt = sh(&format!(
            "zstd -q -f -1 -T2 {} -o {} && sync {}",
            q.display(),
            qz.display(),
            qz.display()
        ));
        let (a, z) = (allocated(&out), std::fs::metadata(&qz).unwrap().len());
        println!(
            "QEMU file {} ({} bytes, {} allocated): compressed image allocated {a} bytes = {:.3}x zstd -1 -T2 ({z}); convert {ct:.2} s vs zstd {zt:.2} s",
            q.display(),
            std::fs::metadata(&q).unwrap().len(),
            allocated(&q),
            a as f64 / z as f64
        );
        // expand(compress(f)) and its time.
        let back = dir.join("zb-qemu-expanded.img");
        let t = Instant::now();
        let ci = Image::open(&out, ImageFlags::DIRECT).expect("open compressed");
        convert(&ci, &back, &ImageOptions::default(), 2, &|_, _| {}).expect("expand");
        println!("expand: {:.2} s", t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&back);
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&qz);
        if qemu_save {
            let _ = std::fs::remove_file(&q);
        }
    }
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&zst);
    ExitCode::SUCCESS
}
