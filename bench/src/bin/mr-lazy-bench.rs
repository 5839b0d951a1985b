//! mr-lazy-bench: on-demand restore and live snapshot figures, side by side
//! with the eager restore and the paused save of the same guest, in one run.
//!
//! A mixed guest (~45 % random, ~30 % zero, text, mostly-zero pages) is
//! saved once (O_DIRECT). The page cache of the image is dropped
//! (`posix_fadvise(DONTNEED)`) before every cold measurement. Figures:
//! - start -> first touched page's data (prefetch running);
//! - fault service latency p50/p99, from disk (O_DIRECT image, cold, no
//!   prefetch) and from the page cache (buffered image, warm);
//! - time to full residency with prefetch vs an eager `read_ramblock`;
//! - snapshot pause (the start call) and total time (a writer thread keeps
//!   writing) vs a paused `save_ramblock`, and the writer's stall per write
//!   fault;
//! - `--only compressed`: the same guest saved plain and compressed (zstd
//!   level 1, 1 MiB chunks), side by side: start -> first touched page,
//!   residency vs eager, and fault latency p50/p99 from disk (cold) and
//!   from the page cache, each sample the first touch of its own chunk (a
//!   fault on a compressed image reads and decompresses one chunk).

use mappedram::compress::ImageOptions;
use mappedram::lazy::{Lazy, LazyOptions, NO_PREFETCH};
use mappedram::snapshot::Snapshot;
use mappedram::{engine, GuestSlice, GuestSliceMut, Image, ImageFlags};
use mappedram_bench::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: mr-lazy-bench [--size SIZE (default 1G)] [--dir DIR] [--threads N (default 2)] [--samples N (default 2000)] [--rounds N (default 3)] [--only restore|faults|pause|snapshot|compressed] [--chunks BYTES,... (default 1048576; with --only compressed)]";

struct Args {
    size: usize,
    dir: PathBuf,
    threads: u32,
    samples: usize,
    rounds: usize,
    /// Which parts: "all", "restore", "snapshot" or "compressed".
    only: String,
    /// Chunk sizes of the compressed images (`--only compressed`).
    chunks: Vec<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1 << 30,
        dir: std::env::temp_dir(),
        threads: 2,
        samples: 2000,
        rounds: 3,
        only: "all".into(),
        chunks: vec![1 << 20],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{k} needs a value\n{USAGE}"))
        };
        match k.as_str() {
            "--size" => a.size = parse_size(&val()?)?,
            "--dir" => a.dir = PathBuf::from(val()?),
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--samples" => a.samples = val()?.parse().map_err(|e| format!("--samples: {e}"))?,
            "--rounds" => a.rounds = val()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--only" => a.only = val()?,
            "--chunks" => {
                a.chunks = val()?
                    .split(',')
                    .map(|c| c.parse().map_err(|e| format!("--chunks: {e}")))
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(USAGE.into()),
        }
    }
    Ok(a)
}

/// Drop the image's pages from the page cache.
fn drop_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open image");
    // SAFETY: fadvise on an open descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// The fraction of the file's pages in the page cache (`mincore`).
fn cached_fraction(path: &Path) -> f64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open image");
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of our open file, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(p != libc::MAP_FAILED);
    let mut v = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `v` has one byte per page of the mapping.
    unsafe { libc::mincore(p, len, v.as_mut_ptr()) };
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, len) };
    v.iter().filter(|&&b| b & 1 != 0).count() as f64 / v.len() as f64
}

/// Read the whole file once (into the page cache).
fn warm_cache(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open image");
    std::io::copy(&mut f, &mut std::io::sink()).expect("read image");
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Read one byte of page `p` (a guest touch); returns its latency in µs.
fn touch(mem: &Mem, p: usize) -> f64 {
    let t = Instant::now();
    // SAFETY: inside the mapping.
    let _ = unsafe { std::ptr::read_volatile(mem.as_ptr().add(p * PAGE)) };
    t.elapsed().as_secs_f64() * 1e6
}

/// Present pages of the guest (touches of these are served from the file).
fn present_pages(src: &Mem) -> Vec<usize> {
    src.as_slice()
        .chunks(PAGE)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, _)| i)
        .collect()
}

fn lazy_opts(flags: u32, threads: u32) -> LazyOptions {
    LazyOptions {
        flags,
        threads,
        ..Default::default()
    }
}

/// Eager restore vs lazy full residency (both cold, image open excluded),
/// plus start -> first touched page. Returns (eager s, lazy s, first µs).
fn residency(
    path: &Path,
    src: &Mem,
    pages: &[usize],
    threads: u32,
    round: usize,
) -> (f64, f64, f64) {
    let img = Arc::new(Image::open(path, ImageFlags::DIRECT).unwrap());
    let mut dst = Mem::anon(src.len()).unwrap();
    drop_cache(path);
    let t = Instant::now();
    // SAFETY: `dst` holds the block and outlives the view.
    let guest = unsafe { GuestSliceMut::new(dst.as_mut_ptr(), dst.len()) }.unwrap();
    engine::read_ramblock(&img, 0, guest, false, threads).unwrap();
    let eager = t.elapsed().as_secs_f64();
    assert!(first_mismatch(dst.as_slice(), src.as_slice()).is_none());
    drop(dst);
    let dst = Mem::anon(src.len()).unwrap();
    drop_cache(path);
    let probe = pages[(mix64(round as u64) as usize) % pages.len()];
    let t = Instant::now();
    // SAFETY: `dst` is fresh memory of the block's size, alive past stop.
    let lz = unsafe {
        Lazy::start(
            img.clone(),
            0,
            dst.as_ptr() as *mut u8,
            &lazy_opts(0, threads),
        )
    }
    .unwrap();
    let started = t.elapsed().as_secs_f64() * 1e6;
    let _ = touch(&dst, probe);
    let first = t.elapsed().as_secs_f64() * 1e6;
    println!("  start call {started:.0} us, first touched page's data at {first:.0} us");
    lz.wait().unwrap();
    let lazy = t.elapsed().as_secs_f64();
    lz.stop().unwrap();
    assert!(first_mismatch(dst.as_slice(), src.as_slice()).is_none());
    (eager, lazy, first)
}

/// Round trips (µs) of a wake-up ping-pong between two threads blocked in
/// `read` on eventfds: two wake-ups, as in a fault (the fault thread woken
/// by the event, the faulting thread by the placement). The scheduling
/// part of a fault's latency, measured beside it.
fn wake_round_trips(n: usize) -> Vec<f64> {
    // SAFETY: eventfd takes two integers and returns a new fd or -1.
    let (a, b) = unsafe { (libc::eventfd(0, 0), libc::eventfd(0, 0)) };
    assert!(a >= 0 && b >= 0);
    let ping = |fd: i32| {
        let one = 1u64;
        // SAFETY: 8 bytes from a live u64 to an eventfd.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    };
    let pong = |fd: i32| {
        let mut v = 0u64;
        // SAFETY: 8 bytes into a live u64 from an eventfd (blocks).
        unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    };
    let mut out = Vec::with_capacity(n);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..n {
                pong(a);
                ping(b);
            }
        });
        for _ in 0..n {
            let t = Instant::now();
            ping(a);
            pong(b);
            out.push(t.elapsed().as_secs_f64() * 1e6);
            // Like the fault loop: the other thread goes back to sleep.
            std::thread::sleep(Duration::from_micros(20));
        }
    });
    // SAFETY: closing our own descriptors.
    unsafe { (libc::close(a), libc::close(b)) };
    out
}

/// Per fault (µs): latency, the fault thread's service time, its read;
/// and, from the page cache only, a plain `pread` of another page's slot
/// right after each fault (the machine's own tail for such a read, under
/// the same interference, without userfaultfd).
type FaultTimes = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Fault latencies (µs) of `n` random present pages, one thread, no
/// prefetch, with the breakdown of [`FaultTimes`].
fn fault_latency(path: &Path, src: &Mem, pages: &[usize], n: usize, cold: bool) -> FaultTimes {
    let sample: Vec<usize> = (0..n)
        .map(|i| pages[(mix64(0xfa17 + i as u64) as usize) % pages.len()])
        .collect();
    fault_latency_at(path, src.len(), &sample, cold)
}

/// Fault latencies (µs) of touching `sample` in order, one thread, no
/// prefetch (cold: O_DIRECT image, file evicted; warm: buffered, cached),
/// with the fault thread's service time and its read part per fault.
fn fault_latency_at(path: &Path, len: usize, sample: &[usize], cold: bool) -> FaultTimes {
    let flags = if cold {
        ImageFlags::DIRECT
    } else {
        ImageFlags::default()
    };
    let img = Arc::new(Image::open(path, flags).unwrap());
    if cold {
        drop_cache(path);
    } else {
        warm_cache(path);
        println!(
            "  image pages in the page cache before the faults: {:.2} %",
            cached_fraction(path) * 100.0
        );
    }
    let dst = Mem::anon(len).unwrap();
    // SAFETY: as in `residency`.
    let lz = unsafe { Lazy::start(img, 0, dst.as_ptr() as *mut u8, &lazy_opts(NO_PREFETCH, 1)) }
        .unwrap();
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let base = Image::open(path, ImageFlags::default())
        .unwrap()
        .block_info(0)
        .unwrap()
        .pages_offset;
    let mut slot = vec![0u8; PAGE];
    let (mut lat, mut pread) = (Vec::new(), Vec::new());
    for (i, &p) in sample.iter().enumerate() {
        lat.push(touch(&dst, p));
        if !cold {
            // Another page than the faults read (a second read of the same
            // page would be warmer than the fault thread's first).
            let q = sample[(mix64(0xbeef + i as u64) as usize) % sample.len()] ^ 1;
            let t = Instant::now();
            file.read_exact_at(&mut slot, base + (q * PAGE) as u64)
                .unwrap();
            pread.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    if !cold {
        println!(
            "  image pages in the page cache after the faults: {:.2} %",
            cached_fraction(path) * 100.0
        );
    }
    let svc = lz.fault_service_ns();
    let service = svc.iter().map(|s| s.0 as f64 / 1e3).collect();
    let read = svc.iter().map(|s| s.1 as f64 / 1e3).collect();
    lz.stop().unwrap();
    (lat, service, read, pread)
}

/// Paused save vs live snapshot with a writer (random pages, about 15-20k
/// writes/s: 4 writes, then a 200 us sleep). Returns (paused s, pause ms,
/// total s, stalls µs of the writer's slow writes, wp faults).
fn snapshot(dir: &Path, src: &Mem, threads: u32, busy: bool) -> (f64, f64, f64, Vec<f64>, u64) {
    let p1 = dir.join("paused.img");
    let (paused, _) = lib_save(&p1, src, None, threads).unwrap();
    let _ = std::fs::remove_file(&p1);
    let p2 = dir.join("live.img");
    let stop = AtomicBool::new(false);
    let len = src.len();
    let mut stalls = Vec::new();
    let (pause, total, faults) = std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut v = Vec::new();
            let mut i = 0u64;
            while busy && !stop.load(Ordering::Acquire) {
                i += 1;
                let p = (mix64(i) as usize) % (len / PAGE);
                let t = Instant::now();
                // SAFETY: inside the mapping; the writer plays a vCPU.
                unsafe {
                    std::ptr::write_volatile((src.as_ptr() as *mut u8).add(p * PAGE + 8), i as u8)
                };
                let us = t.elapsed().as_secs_f64() * 1e6;
                if us > 2.0 {
                    v.push(us);
                }
                if i % 4 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            v.push(-(i as f64));
            v
        });
        let t = Instant::now();
        let img =
            Arc::new(Image::create(&p2, MACHINE, &specs(len, &[]), ImageFlags::DIRECT).unwrap());
        let t_start = Instant::now();
        // SAFETY: `src` stays mapped past stop.
        let snap =
            unsafe { Snapshot::start(img.clone(), 0, src.as_ptr() as *mut u8, threads) }.unwrap();
        let pause = t_start.elapsed().as_secs_f64() * 1e3;
        snap.wait().unwrap();
        let faults = snap.stats().wp_faults;
        snap.stop().unwrap();
        img.finish().unwrap();
        Arc::into_inner(img).unwrap().close().unwrap();
        let total = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Release);
        stalls = w.join().unwrap();
        let writes = -stalls.pop().unwrap_or(0.0);
        println!("  pause {pause:.2} ms, total {total:.3} s, {faults} wp faults, {writes} writes ({:.0}/s)", writes / total);
        (pause, total, faults)
    });
    let _ = std::fs::remove_file(&p2);
    (paused.as_secs_f64(), pause, total, stalls, faults)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = a.dir.join(format!("mr-lazy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("guest.img");
    let mut src = Mem::anon(a.size).unwrap();
    Pattern::Realistic.fill(0x6c617a79, src.as_mut_slice());
    lib_save(&path, &src, None, a.threads).unwrap();
    let pages = present_pages(&src);
    println!(
        "guest {} mixed ({} present pages), threads {}, image {}",
        human(a.size as u64),
        pages.len(),
        a.threads,
        path.display()
    );
    if a.only == "pause" {
        pause_probe(&a, &src);
    } else if a.only == "faults" {
        fault_figures(&a, &path, &src, &pages);
    } else if a.only == "compressed" {
        compressed_figures(&a, &dir, &path, &src, &pages);
    } else if a.only != "snapshot" {
        restore_figures(&a, &path, &src, &pages);
    }
    if a.only == "all" || a.only == "snapshot" {
        snapshot_figures(&a, &dir, &src);
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn restore_figures(a: &Args, path: &Path, src: &Mem, pages: &[usize]) {
    let (mut eager, mut lazy, mut first) = (vec![], vec![], vec![]);
    for r in 0..a.rounds {
        let (e, l, f) = residency(path, src, pages, a.threads, r);
        println!(
            "round {r}: eager {:.3} s, lazy+prefetch {:.3} s ({:.3}x), first page {:.0} us",
            e,
            l,
            l / e,
            f
        );
        eager.push(e);
        lazy.push(l);
        first.push(f);
    }
    let (me, ml) = (median(&eager), median(&lazy));
    println!("residency (cold, median of {}): eager read_ramblock {:.3} s, lazy with prefetch {:.3} s: ratio {:.3} (target <= 1.05)", a.rounds, me, ml, ml / me);
    println!(
        "start -> first touched page: median {:.0} us, max {:.0} us (target <= 2000 us)",
        median(&first),
        first.iter().cloned().fold(0.0, f64::max)
    );
    fault_figures(a, path, src, pages);
}

/// Fault latency from disk and from the page cache, with the fault
/// thread's own share and the scheduling baseline of the same run.
fn fault_figures(a: &Args, path: &Path, src: &Mem, pages: &[usize]) {
    let (mut disk, mut disk_svc, mut disk_rd, _) = fault_latency(path, src, pages, a.samples, true);
    let (mut cache, mut cache_svc, mut cache_rd, mut pread) =
        fault_latency(path, src, pages, a.samples, false);
    let mut wake = wake_round_trips(a.samples);
    println!(
        "fault latency from disk (O_DIRECT, cold): p50 {:.1} us, p99 {:.1} us; fault thread's service p50 {:.1} us, p99 {:.1} us; its read p50 {:.1} us, p99 {:.1} us",
        pct(&mut disk, 0.5),
        pct(&mut disk, 0.99),
        pct(&mut disk_svc, 0.5),
        pct(&mut disk_svc, 0.99),
        pct(&mut disk_rd, 0.5),
        pct(&mut disk_rd, 0.99)
    );
    println!(
        "fault latency from page cache: p50 {:.1} us, p99 {:.1} us (target p99 <= 100 us); fault thread's service p50 {:.1} us, p99 {:.1} us; its read p50 {:.1} us, p99 {:.1} us",
        pct(&mut cache, 0.5),
        pct(&mut cache, 0.99),
        pct(&mut cache_svc, 0.5),
        pct(&mut cache_svc, 0.99),
        pct(&mut cache_rd, 0.5),
        pct(&mut cache_rd, 0.99)
    );
    println!(
        "two-thread wake-up round trip (eventfd ping-pong, same run): p50 {:.1} us, p99 {:.1} us",
        pct(&mut wake, 0.5),
        pct(&mut wake, 0.99)
    );
    println!(
        "plain pread of another page's slot right after each fault (page cache, interleaved): p50 {:.1} us, p99 {:.1} us",
        pct(&mut pread, 0.5),
        pct(&mut pread, 0.99)
    );
}

fn snapshot_figures(a: &Args, dir: &Path, src: &Mem) {
    // The same guest in THP-backed memory (QEMU madvises guest RAM
    // MADV_HUGEPAGE): write-protecting it changes 512x fewer entries.
    let mut thp = Mem::anon(a.size).unwrap();
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(thp.as_mut_ptr().cast(), a.size, libc::MADV_HUGEPAGE) };
    thp.as_mut_slice().copy_from_slice(src.as_slice());
    let gib = a.size as f64 / (1u64 << 30) as f64;
    for (mem, name) in [(src, "4 KiB pages"), (&thp, "THP (MADV_HUGEPAGE)")] {
        for busy in [false, true] {
            let (mut paused, mut total, mut pause) = (vec![], vec![], vec![]);
            let mut all_stalls = vec![];
            let mut faults = 0;
            for _ in 0..a.rounds {
                let (p, pz, t, st, f) = snapshot(dir, mem, a.threads, busy);
                paused.push(p);
                total.push(t);
                pause.push(pz);
                all_stalls.extend(st);
                faults += f;
            }
            let (mp, mt) = (median(&paused), median(&total));
            let ratios: Vec<f64> = total.iter().zip(&paused).map(|(t, p)| t / p).collect();
            let who = if busy { "writer running" } else { "idle guest" };
            println!("snapshot, {name}, {who} (median of {}): pause {:.2} ms = {:.2} ms/GiB (target <= 1), total {:.3} s vs paused save {:.3} s: ratio {:.3} (target <= 1.1), {faults} wp faults", a.rounds, median(&pause), median(&pause) / gib, mt, mp, mt / mp);
            let r: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            println!(
                "  per-round ratios (live total / paused save of the same round): {}; median {:.3}",
                r.join(", "),
                median(&ratios)
            );
            if !all_stalls.is_empty() {
                let n = all_stalls.len();
                println!(
                    "  writer stalls > 2 us: {n}: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
                    pct(&mut all_stalls, 0.5),
                    pct(&mut all_stalls, 0.99),
                    pct(&mut all_stalls, 1.0)
                );
            }
        }
    }
}

/// Where the snapshot pause goes: `UFFDIO_WRITEPROTECT` of the whole range
/// from one thread, the same split over 2 and 4 threads (disjoint ranges,
/// one userfaultfd), and a plain `mprotect` of the same memory, on the
/// populated guest (4 KiB pages) and on a THP copy; medians of `rounds`,
/// alternated in one run.
fn pause_probe(a: &Args, src: &Mem) {
    use mappedram::uffd::{sys::*, Uffd};
    let mut thp = Mem::anon(a.size).unwrap();
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(thp.as_mut_ptr().cast(), a.size, libc::MADV_HUGEPAGE) };
    thp.as_mut_slice().copy_from_slice(src.as_slice());
    let gib = a.size as f64 / (1u64 << 30) as f64;
    for (mem, name) in [(src, "4 KiB pages"), (&thp, "THP")] {
        let start = mem.as_ptr() as u64;
        let len = mem.len() as u64;
        let mut res: Vec<(String, Vec<f64>)> =
            ["wp 1 thread", "wp 2 threads", "wp 4 threads", "mprotect"]
                .iter()
                .map(|s| (s.to_string(), vec![]))
                .collect();
        for _ in 0..a.rounds {
            for (k, (_, v)) in res.iter_mut().enumerate() {
                let ms = if k == 3 {
                    let t = Instant::now();
                    // SAFETY: our own mapping; read-only, then back.
                    unsafe {
                        libc::mprotect(start as *mut libc::c_void, len as usize, libc::PROT_READ)
                    };
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    // SAFETY: as above.
                    unsafe {
                        libc::mprotect(
                            start as *mut libc::c_void,
                            len as usize,
                            libc::PROT_READ | libc::PROT_WRITE,
                        )
                    };
                    ms
                } else {
                    let n = [1u64, 2, 4][k];
                    let u = Uffd::open(
                        UFFD_FEATURE_WP_UNPOPULATED,
                        UFFD_FEATURE_PAGEFAULT_FLAG_WP,
                        "wp",
                    )
                    .unwrap();
                    u.register(start, len, UFFDIO_REGISTER_MODE_WP).unwrap();
                    let per = (len / n).div_ceil(2 << 20) * (2 << 20);
                    let t = Instant::now();
                    std::thread::scope(|s| {
                        for i in 0..n {
                            let u = &u;
                            s.spawn(move || {
                                let a0 = start + i * per;
                                let a1 = (a0 + per).min(start + len);
                                if a0 < a1 {
                                    u.writeprotect(a0, a1 - a0, true).unwrap();
                                }
                            });
                        }
                    });
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    u.writeprotect(start, len, false).unwrap();
                    u.unregister(start, len).unwrap();
                    ms
                };
                v.push(ms);
            }
        }
        for (what, v) in &res {
            println!(
                "pause probe, {name}: {what}: median {:.2} ms = {:.2} ms/GiB ({} rounds)",
                median(v),
                median(v) / gib,
                v.len()
            );
        }
    }
}

/// Start (O_DIRECT image, evicted, no prefetch) -> page `p`'s data, µs.
fn first_touch_alone(path: &Path, len: usize, p: usize) -> f64 {
    let img = Arc::new(Image::open(path, ImageFlags::DIRECT).unwrap());
    drop_cache(path);
    let dst = Mem::anon(len).unwrap();
    let t = Instant::now();
    // SAFETY: as in `residency`.
    let lz = unsafe { Lazy::start(img, 0, dst.as_ptr() as *mut u8, &lazy_opts(NO_PREFETCH, 1)) }
        .unwrap();
    let _ = touch(&dst, p);
    let us = t.elapsed().as_secs_f64() * 1e6;
    lz.stop().unwrap();
    us
}

/// The guest saved compressed (zstd level 1, chunks of `chunk` bytes)
/// with `threads`.
fn save_compressed(path: &Path, src: &Mem, threads: u32, chunk: u64) -> (f64, u64) {
    let t = Instant::now();
    let img = Image::create_with(
        path,
        MACHINE,
        &specs(src.len(), &[]),
        ImageFlags::DIRECT,
        &ImageOptions {
            chunk_bytes: chunk,
            ..ImageOptions::zstd(1)
        },
    )
    .unwrap();
    // SAFETY: `src` is valid for reads of its whole length during the call.
    let guest = unsafe { GuestSlice::new(src.as_ptr(), src.len()) }.unwrap();
    engine::save_ramblock(&img, 0, guest, None, threads).unwrap();
    img.finish().unwrap();
    img.close().unwrap();
    let secs = t.elapsed().as_secs_f64();
    use std::os::unix::fs::MetadataExt;
    (secs, std::fs::metadata(path).unwrap().blocks() * 512)
}

/// One present page per MiB that holds any (the first touch of each chunk
/// of a compressed image), in a shuffled order.
fn one_page_per_chunk(pages: &[usize]) -> Vec<usize> {
    let per = (1 << 20) / PAGE;
    let mut v: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < pages.len() {
        let c = pages[i] / per;
        let end = pages[i..].partition_point(|&p| p / per == c) + i;
        v.push(pages[i + (mix64(c as u64) as usize) % (end - i)]);
        i = end;
    }
    let mut keyed: Vec<(u64, usize)> = v
        .into_iter()
        .map(|p| (mix64(p as u64 ^ 0x5eed), p))
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, p)| p).collect()
}

/// Plain and compressed images of the same guest, side by side.
fn compressed_figures(a: &Args, dir: &Path, plain: &Path, src: &Mem, pages: &[usize]) {
    use std::os::unix::fs::MetadataExt;
    let plain_alloc = std::fs::metadata(plain).unwrap().blocks() * 512;
    let mut images = vec![("plain".to_string(), plain.to_path_buf())];
    for &cb in &a.chunks {
        let zpath = dir.join(format!("guest-zstd1-{cb}.img"));
        let (save_s, alloc) = save_compressed(&zpath, src, a.threads, cb);
        println!(
            "compressed image (zstd -1, {} chunks): {} allocated vs plain {} ({:.3}), saved in {save_s:.2} s",
            human(cb),
            human(alloc),
            human(plain_alloc),
            alloc as f64 / plain_alloc as f64
        );
        images.push((format!("zstd-1/{}", human(cb)), zpath));
    }
    let sample = one_page_per_chunk(pages);
    let sample = &sample[..sample.len().min(a.samples)];
    println!(
        "fault samples: {} (first touch of a distinct MiB each)",
        sample.len()
    );
    for (name, path) in &images {
        let (mut eager, mut lazy, mut first) = (vec![], vec![], vec![]);
        for r in 0..a.rounds {
            let (e, l, f) = residency(path, src, pages, a.threads, r);
            eager.push(e);
            lazy.push(l);
            first.push(f);
        }
        let (me, ml) = (median(&eager), median(&lazy));
        println!(
            "{name}: start -> first touched page (cold, prefetch on): median {:.0} us, max {:.0} us; residency eager {me:.3} s, lazy+prefetch {ml:.3} s ({:.3}x)",
            median(&first),
            first.iter().cloned().fold(0.0, f64::max),
            ml / me
        );
        let alone: Vec<f64> = (0..a.rounds)
            .map(|r| first_touch_alone(path, src.len(), sample[r % sample.len()]))
            .collect();
        println!(
            "{name}: start -> first touched page (cold, no prefetch): median {:.0} us, max {:.0} us",
            median(&alone),
            alone.iter().cloned().fold(0.0, f64::max)
        );
        let mut disk = fault_latency_at(path, src.len(), sample, true).0;
        let mut cache = fault_latency_at(path, src.len(), sample, false).0;
        println!(
            "{name}: fault latency from disk (O_DIRECT, cold): p50 {:.1} us, p99 {:.1} us; from page cache: p50 {:.1} us, p99 {:.1} us",
            pct(&mut disk, 0.5),
            pct(&mut disk, 0.99),
            pct(&mut cache, 0.5),
            pct(&mut cache, 0.99)
        );
    }
    for (_, p) in &images[1..] {
        let _ = std::fs::remove_file(p);
    }
}
