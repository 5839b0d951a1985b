//! mr-bench: the project's speed bars (README.md, BENCHMARKS.md), measured side by side in one
//! run and printed as ratios.
//!
//! 1. Library save/restore (O_DIRECT, 1, 2 and 4 threads) vs plain
//!    sequential O_DIRECT `pwrite`/`pread` of the same bytes on the same
//!    file system: each library run paired with a raw run next to it,
//!    medians over `--reps` of the per-pair ratios; random data and a 50 %
//!    zero mix.
//! 2. Library vs QEMU 10 (mapped-ram + multifd + direct-io) saving and
//!    restoring the same memory (a shared `memory-backend-file` on tmpfs).
//! 3. Zero-page scan throughput on in-cache data, one core.
//! 4. Peak memory of a save (`mr-demo --save-only` under `/usr/bin/time -v`).
//! 5. Sparse guests: time vs present pages with a dirty bitmap.
//! 6. Guest layouts (`guests.rs`): a real Linux guest, fragmented,
//!    page-interleaved, random, 50 % zero by MiB; save/restore vs raw
//!    O_DIRECT of the present bytes (or a flat dump), alternated pairs.
//! 7. Where the time goes (`profile.rs`): fixed costs and per-request
//!    costs of a save and a restore, measured in the same run.
//! 8. The engine's rules by measurement (`sweep.rs`; not run by default).
//! 9. Concurrent restores (`concurrent.rs`): N processes each restoring
//!    its own image vs N processes reading the same files raw.
//! 10. O_DIRECT vs the page cache by size (`iomode.rs`).

mod args;
mod concurrent;
mod guests;
mod iomode;
mod profile;
mod sweep;

use args::{parse_args, Args};
use mappedram::image::zero::is_zero;
use mappedram_bench::qmp::{json_num_field, Qemu};
use mappedram_bench::*;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// One benchmark section.
type Section = fn(&Args, &mut Report) -> Result<(), String>;

/// One line of the final table.
pub(crate) struct Row {
    what: String,
    figure: String,
    bar: String,
    pass: Option<bool>,
}

#[derive(Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub(crate) fn add(&mut self, what: String, figure: String, bar: &str, pass: Option<bool>) {
        println!(
            "  => {what}: {figure}{}",
            match pass {
                Some(true) => format!("  [bar {bar}: PASS]"),
                Some(false) => format!("  [bar {bar}: MISS]"),
                None => String::new(),
            }
        );
        self.rows.push(Row {
            what,
            figure,
            bar: bar.to_string(),
            pass,
        });
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--child") {
        return concurrent::child(std::env::args().skip(2).collect());
    }
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mr-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rep = Report::default();
    let t0 = Instant::now();
    println!(
        "mr-bench: dir {} (O_DIRECT files), reps {}, cores {}",
        a.dir.display(),
        a.reps,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut failed = false;
    let sections: [(&str, Section); 10] = [
        ("zero", zero_scan),
        ("raw", raw_vs_lib),
        ("layouts", guests::layouts),
        ("profile", profile::profile),
        ("sweep", sweep::sweep),
        ("concurrent", concurrent::concurrent),
        ("iomode", iomode::iomode),
        ("qemu", qemu_vs_lib),
        ("rss", peak_rss),
        ("sparse", sparse),
    ];
    for (name, f) in sections {
        if a.skip.iter().any(|s| s == name) {
            continue;
        }
        if let Err(e) = f(&a, &mut rep) {
            eprintln!("mr-bench: section {name} FAILED: {e}");
            rep.add(format!("{name}: error"), e, "-", Some(false));
            failed = true;
        }
    }
    println!();
    println!("=== summary ({:.0} s) ===", t0.elapsed().as_secs_f64());
    let w = rep.rows.iter().map(|r| r.what.len()).max().unwrap_or(10);
    let fw = rep.rows.iter().map(|r| r.figure.len()).max().unwrap_or(10);
    for r in &rep.rows {
        println!(
            "{:<w$}  {:<fw$}  {}",
            r.what,
            r.figure,
            match r.pass {
                Some(true) => format!("PASS ({})", r.bar),
                Some(false) => format!("MISS ({})", r.bar),
                None => String::new(),
            }
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}
pub(crate) fn lib_err(what: &str) -> impl Fn(mappedram::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Zero-page scan: `is_zero` over an in-cache zero buffer, one core.
fn zero_scan(_a: &Args, rep: &mut Report) -> Result<(), String> {
    println!("\n--- zero-page scan (in-cache, one core) ---");
    const BUF: usize = 256 << 10; // fits L2
    let mut buf = Mem::anon(BUF).map_err(io_err("mmap"))?;
    buf.as_mut_slice().fill(0);
    let p = buf.as_ptr();
    let mut best_page = 0f64;
    let mut best_whole = 0f64;
    for _ in 0..5 {
        // Page by page, as the engine calls it.
        let t = Instant::now();
        let mut bytes = 0u64;
        let mut zeros = 0u64;
        while t.elapsed() < Duration::from_millis(200) {
            for _ in 0..64 {
                for off in (0..BUF).step_by(PAGE) {
                    // SAFETY: off + PAGE <= BUF, inside the buffer.
                    zeros += unsafe { is_zero(std::hint::black_box(p.add(off)), PAGE) } as u64;
                }
                bytes += BUF as u64;
            }
        }
        let gbs = bytes as f64 / t.elapsed().as_secs_f64() / 1e9;
        assert_eq!(zeros * PAGE as u64, bytes);
        best_page = best_page.max(gbs);
        // Whole buffer in one call.
        let t = Instant::now();
        let mut bytes = 0u64;
        while t.elapsed() < Duration::from_millis(200) {
            for _ in 0..64 {
                // SAFETY: the buffer is BUF readable bytes.
                assert!(unsafe { is_zero(std::hint::black_box(p), BUF) });
                bytes += BUF as u64;
            }
        }
        best_whole = best_whole.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    println!(
        "  4 KiB calls over a {} KiB zero buffer: {best_page:.2} GB/s (best of 5)",
        BUF >> 10
    );
    println!(
        "  one call over the {} KiB buffer:       {best_whole:.2} GB/s",
        BUF >> 10
    );
    rep.add(
        "zero scan, 4 KiB pages, 1 core".into(),
        format!("{best_page:.1} GB/s"),
        ">= 8 GB/s",
        Some(best_page >= 8.0),
    );
    rep.add(
        "zero scan, 256 KiB per call, 1 core".into(),
        format!("{best_whole:.1} GB/s"),
        "-",
        None,
    );
    Ok(())
}

/// Library save/restore vs plain O_DIRECT sequential I/O.
fn raw_vs_lib(a: &Args, rep: &mut Report) -> Result<(), String> {
    let raw_path = a
        .dir
        .join(format!("mr-bench-raw-{}.bin", std::process::id()));
    let lib_path = a
        .dir
        .join(format!("mr-bench-lib-{}.mrimg", std::process::id()));
    let res = (|| {
        for &size in &a.sizes {
            for pat in [Pattern::Random, Pattern::ZeroMix(50)] {
                raw_vs_lib_one(a, rep, size, pat, &raw_path, &lib_path)?;
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&raw_path);
    let _ = std::fs::remove_file(&lib_path);
    res
}

fn raw_vs_lib_one(
    a: &Args,
    rep: &mut Report,
    size: usize,
    pat: Pattern,
    raw_path: &Path,
    lib_path: &Path,
) -> Result<(), String> {
    println!(
        "\n--- {} guest, {}: library vs plain O_DIRECT {} MiB pwrite/pread ---",
        human(size as u64),
        pat.name(),
        RAW_CHUNK >> 20
    );
    let mut src = Mem::anon(size).map_err(io_err("mmap"))?;
    pat.fill(0xb0b + size as u64, src.as_mut_slice());
    let (present, zero) = count_pages(src.as_slice());
    let pbytes = present as usize * PAGE;
    println!(
        "  present pages {present} ({}), zero pages {zero}; raw runs move the present bytes ({})",
        human(pbytes as u64),
        human(pbytes as u64)
    );
    let mut dst = Mem::anon(size).map_err(io_err("mmap"))?;
    dst.prefault();

    let threads = &a.threads;
    let nt = threads.len();
    // Save: per rep and thread count, a raw run then a library run of the
    // same bytes (pairs side by side; the ratio is taken per pair).
    let mut raw_w = Vec::new();
    let mut lib_w: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut ratio_w: Vec<Vec<f64>> = vec![Vec::new(); nt];
    for r in 0..a.reps {
        let mut line = format!("  save rep {r}:");
        for (i, &t) in threads.iter().enumerate() {
            let _ = std::fs::remove_file(raw_path);
            // SAFETY: `src` is valid for reads of `pbytes <= size` bytes.
            let dr = unsafe { raw_write(raw_path, src.as_ptr(), pbytes) }
                .map_err(io_err("raw write"))?;
            let _ = std::fs::remove_file(lib_path);
            let (d, st) = lib_save(lib_path, &src, None, t).map_err(lib_err("lib save"))?;
            if st.pages_data != present {
                return Err(format!(
                    "lib save wrote {} pages, {present} present",
                    st.pages_data
                ));
            }
            raw_w.push(mibs(pbytes as u64, dr));
            lib_w[i].push(mibs(pbytes as u64, d));
            ratio_w[i].push(dr.as_secs_f64() / d.as_secs_f64());
            line += &format!(
                " raw {:.0} / lib {t}T {:.0} MiB/s ({:.2}x);",
                mibs(pbytes as u64, dr),
                mibs(pbytes as u64, d),
                dr.as_secs_f64() / d.as_secs_f64()
            );
        }
        println!("{line}");
    }
    let (logical, alloc) = file_sizes(lib_path).map_err(io_err("stat"))?;
    println!(
        "  image: logical {}, allocated {}",
        human(logical),
        human(alloc)
    );

    // Restore: the same pairing. Verify the first library restore (dst is
    // all zero then, so absent pages left untouched are zero).
    let mut raw_r = Vec::new();
    let mut lib_r: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut ratio_r: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut verified = false;
    for r in 0..a.reps {
        let mut line = format!("  restore rep {r}:");
        for (i, &t) in threads.iter().enumerate() {
            let (d, st) = lib_restore(lib_path, &mut dst, t).map_err(lib_err("lib restore"))?;
            if !verified {
                if let Some(i) = first_mismatch(src.as_slice(), dst.as_slice()) {
                    return Err(format!("restored memory differs at offset 0x{i:x}"));
                }
                if st.pages_data != present {
                    return Err(format!(
                        "restore read {} pages, {present} present",
                        st.pages_data
                    ));
                }
                verified = true;
            }
            // SAFETY: `dst` is valid for writes of `pbytes <= size` bytes.
            let dr = unsafe { raw_read(raw_path, dst.as_mut_ptr(), pbytes) }
                .map_err(io_err("raw read"))?;
            raw_r.push(mibs(pbytes as u64, dr));
            lib_r[i].push(mibs(pbytes as u64, d));
            ratio_r[i].push(dr.as_secs_f64() / d.as_secs_f64());
            line += &format!(
                " lib {t}T {:.0} / raw {:.0} MiB/s ({:.2}x);",
                mibs(pbytes as u64, d),
                mibs(pbytes as u64, dr),
                dr.as_secs_f64() / d.as_secs_f64()
            );
        }
        println!("{line}");
    }
    if let Some(i) = first_mismatch(src.as_slice(), dst.as_slice()) {
        return Err(format!(
            "restored memory differs at offset 0x{i:x} after the reps"
        ));
    }
    println!("  verified: restored memory identical to the guest");

    let frac = pbytes as f64 / size as f64;
    let label = format!("{} {}", human(size as u64), pat.name());
    if frac < 0.999 {
        // Yardstick with the library's own request pattern: the present
        // runs (split at 4 MiB units) at their offsets, one thread.
        let runs = present_runs(src.as_slice(), mappedram::engine::UNIT_BYTES as usize);
        let avg = pbytes as f64 / runs.len().max(1) as f64;
        let runs_path = raw_path.with_extension("runs");
        let mut w = Vec::new();
        let mut rd = Vec::new();
        for _ in 0..a.reps {
            let _ = std::fs::remove_file(&runs_path);
            // SAFETY: `src` is valid for reads of every run.
            let d = unsafe { raw_runs(&runs_path, src.as_ptr() as *mut u8, size, &runs, true) }
                .map_err(io_err("raw runs write"))?;
            w.push(mibs(pbytes as u64, d));
            // SAFETY: `dst` is valid for writes of every run.
            let d = unsafe { raw_runs(&runs_path, dst.as_mut_ptr(), size, &runs, false) }
                .map_err(io_err("raw runs read"))?;
            rd.push(mibs(pbytes as u64, d));
        }
        let _ = std::fs::remove_file(&runs_path);
        println!(
            "  raw O_DIRECT with the library's request pattern ({} runs, avg {:.0} KiB, 1 thread): write {:.0} MiB/s, read {:.0} MiB/s (medians)",
            runs.len(),
            avg / 1024.0,
            median(&w),
            median(&rd)
        );
        rep.add(
            format!("raw, same runs as lib, {label}, 1 thread"),
            format!(
                "write {:.0} MiB/s, read {:.0} MiB/s ({} runs, avg {:.0} KiB)",
                median(&w),
                median(&rd),
                runs.len(),
                avg / 1024.0
            ),
            "-",
            None,
        );
    }
    println!(
        "  medians: raw write {:.0} MiB/s, raw read {:.0} MiB/s",
        median(&raw_w),
        median(&raw_r)
    );
    for (i, t) in threads.iter().enumerate() {
        let (mw, mr) = (median(&lib_w[i]), median(&lib_r[i]));
        let (rw, rr) = (median(&ratio_w[i]), median(&ratio_r[i]));
        let eff = if frac < 0.999 {
            format!(
                "; effective over the whole guest: save {:.0} MiB/s, restore {:.0} MiB/s",
                mw / frac,
                mr / frac
            )
        } else {
            String::new()
        };
        println!(
            "  lib {t}T: save {mw:.0} MiB/s = {rw:.2}x raw write, restore {mr:.0} MiB/s = {rr:.2}x raw read{eff}"
        );
        rep.add(
            format!("save {label} {t}T / raw write"),
            format!(
                "{rw:.2}x ({mw:.0} vs {:.0} MiB/s{})",
                median(&raw_w),
                if frac < 0.999 {
                    format!(", guest {:.0} MiB/s", mw / frac)
                } else {
                    String::new()
                }
            ),
            ">= 0.9x",
            Some(rw >= 0.9),
        );
        rep.add(
            format!("restore {label} {t}T / raw read"),
            format!(
                "{rr:.2}x ({mr:.0} vs {:.0} MiB/s{})",
                median(&raw_r),
                if frac < 0.999 {
                    format!(", guest {:.0} MiB/s", mr / frac)
                } else {
                    String::new()
                }
            ),
            ">= 0.9x",
            Some(rr >= 0.9),
        );
    }
    Ok(())
}

/// Library vs QEMU 10 on the same memory.
fn qemu_vs_lib(a: &Args, rep: &mut Report) -> Result<(), String> {
    let pid = std::process::id();
    let src_ram = a.shm.join(format!("mr-bench-{pid}-src.ram"));
    let dst_ram = a.shm.join(format!("mr-bench-{pid}-dst.ram"));
    let qemu_img = a.dir.join(format!("mr-bench-{pid}-qemu.mrimg"));
    let lib_img = a.dir.join(format!("mr-bench-{pid}-lib.mrimg"));
    let sock = std::env::temp_dir().join(format!("mr-bench-{pid}.qmp"));
    let res = qemu_vs_lib_inner(a, rep, &src_ram, &dst_ram, &qemu_img, &lib_img, &sock);
    let raw = qemu_img.with_extension("raw");
    for p in [&src_ram, &dst_ram, &qemu_img, &lib_img, &sock, &raw] {
        let _ = std::fs::remove_file(p);
    }
    res
}

#[allow(clippy::too_many_arguments)]
fn qemu_vs_lib_inner(
    a: &Args,
    rep: &mut Report,
    src_ram: &Path,
    dst_ram: &Path,
    qemu_img: &Path,
    lib_img: &Path,
    sock: &Path,
) -> Result<(), String> {
    let size = a.qemu_size;
    let mib = size >> 20;
    println!(
        "\n--- QEMU 10 vs library: {} guest (mixed pattern), memory-backend-file on {}, images in {} ---",
        human(size as u64),
        a.shm.display(),
        a.dir.display()
    );
    let v = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map_err(io_err("qemu-system-x86_64 --version"))?;
    println!(
        "  {}",
        String::from_utf8_lossy(&v.stdout)
            .lines()
            .next()
            .unwrap_or("?")
    );
    let mut src = Mem::map_file(src_ram, size).map_err(io_err("map guest RAM file"))?;
    Pattern::Realistic.fill(0x9e3, src.as_mut_slice());
    let (present, zero) = count_pages(src.as_slice());
    println!("  present pages {present}, zero pages {zero}");

    let poll = Duration::from_millis(5);
    let limit = Duration::from_secs(600);
    let mut q_save = Vec::new();
    let mut l_save = Vec::new();
    let mut q_rest = Vec::new();
    let mut l_rest = Vec::new();
    let mut raw_w = Vec::new();
    let mut raw_r = Vec::new();
    let pbytes = present as usize * PAGE;
    let raw_path = qemu_img.with_extension("raw");
    for r in 0..a.qemu_reps {
        // QEMU save.
        let _ = std::fs::remove_file(qemu_img);
        let mut q = Qemu::start(src_ram, mib, sock, false).map_err(io_err("start QEMU"))?;
        q.qmp
            .setup_mapped_ram(2, true)
            .map_err(io_err("QMP setup"))?;
        let uri = format!("{{\"uri\":\"file:{}\"}}", qemu_img.display());
        let t = Instant::now();
        q.qmp.cmd("migrate", &uri).map_err(io_err("QMP migrate"))?;
        let line = q
            .qmp
            .wait_migration(poll, limit)
            .map_err(io_err("QEMU save"))?;
        let dq = t.elapsed();
        q.quit();
        let total_ms = json_num_field(&line, "total-time");

        // Library save of the same memory, 2 threads.
        let _ = std::fs::remove_file(lib_img);
        let (dl, _) = lib_save(lib_img, &src, None, 2).map_err(lib_err("lib save"))?;
        println!(
            "  save rep {r}: QEMU {:.3} s (its total-time {} ms) = {:.0} MiB/s of guest; lib 2T {:.3} s = {:.0} MiB/s; lib is {:.1}x faster",
            dq.as_secs_f64(),
            total_ms.map(|v| v.to_string()).unwrap_or("?".into()),
            mibs(size as u64, dq),
            dl.as_secs_f64(),
            mibs(size as u64, dl),
            dq.as_secs_f64() / dl.as_secs_f64()
        );
        q_save.push(dq.as_secs_f64());
        l_save.push(dl.as_secs_f64());

        // QEMU restore of its own image into a fresh RAM file.
        let _ = std::fs::remove_file(dst_ram);
        let mut q =
            Qemu::start(dst_ram, mib, sock, true).map_err(io_err("start QEMU -incoming"))?;
        q.qmp
            .setup_mapped_ram(2, true)
            .map_err(io_err("QMP setup"))?;
        let uri = format!("{{\"uri\":\"file:{}\"}}", qemu_img.display());
        let t = Instant::now();
        q.qmp
            .cmd("migrate-incoming", &uri)
            .map_err(io_err("QMP migrate-incoming"))?;
        q.qmp
            .wait_migration(poll, limit)
            .map_err(io_err("QEMU restore"))?;
        let dq = t.elapsed();
        q.quit();
        {
            let got = Mem::map_file(dst_ram, size).map_err(io_err("map restored RAM"))?;
            if let Some(i) = first_mismatch(src.as_slice(), got.as_slice()) {
                return Err(format!("QEMU's restored RAM differs at 0x{i:x}"));
            }
        }
        let _ = std::fs::remove_file(dst_ram);

        // Library restore of its image into a fresh RAM file, 2 threads.
        let mut dst = Mem::map_file(dst_ram, size).map_err(io_err("map RAM file"))?;
        let (dl, _) = lib_restore(lib_img, &mut dst, 2).map_err(lib_err("lib restore"))?;
        if let Some(i) = first_mismatch(src.as_slice(), dst.as_slice()) {
            return Err(format!("library-restored RAM differs at 0x{i:x}"));
        }
        drop(dst);
        let _ = std::fs::remove_file(dst_ram);
        println!(
            "  restore rep {r}: QEMU {:.3} s = {:.0} MiB/s; lib 2T {:.3} s = {:.0} MiB/s; lib is {:.1}x faster (both verified)",
            dq.as_secs_f64(),
            mibs(size as u64, dq),
            dl.as_secs_f64(),
            mibs(size as u64, dl),
            dq.as_secs_f64() / dl.as_secs_f64()
        );
        q_rest.push(dq.as_secs_f64());
        l_rest.push(dl.as_secs_f64());

        // The disk's ceiling in the same run: plain O_DIRECT sequential
        // write/read of the present bytes (what any saver must move).
        let _ = std::fs::remove_file(&raw_path);
        // SAFETY: `src` is valid for reads of `pbytes <= size` bytes.
        let dw =
            unsafe { raw_write(&raw_path, src.as_ptr(), pbytes) }.map_err(io_err("raw write"))?;
        let mut tmp = Mem::anon(pbytes).map_err(io_err("mmap"))?;
        tmp.prefault();
        // SAFETY: `tmp` is valid for writes of `pbytes` bytes.
        let dr =
            unsafe { raw_read(&raw_path, tmp.as_mut_ptr(), pbytes) }.map_err(io_err("raw read"))?;
        let _ = std::fs::remove_file(&raw_path);
        println!(
            "  disk rep {r}: raw O_DIRECT write of the present bytes {:.3} s, read {:.3} s",
            dw.as_secs_f64(),
            dr.as_secs_f64()
        );
        raw_w.push(dw.as_secs_f64());
        raw_r.push(dr.as_secs_f64());
    }
    // Interop: the library reads QEMU's image.
    {
        let mut dst = Mem::map_file(dst_ram, size).map_err(io_err("map RAM file"))?;
        let (dl, _) =
            lib_restore(qemu_img, &mut dst, 2).map_err(lib_err("lib restore of QEMU's image"))?;
        if let Some(i) = first_mismatch(src.as_slice(), dst.as_slice()) {
            return Err(format!(
                "QEMU image restored by the library differs at 0x{i:x}"
            ));
        }
        println!(
            "  interop: library restored QEMU's image in {:.3} s ({:.0} MiB/s), identical",
            dl.as_secs_f64(),
            mibs(size as u64, dl)
        );
    }
    let rs = median(&q_save) / median(&l_save);
    let rr = median(&q_rest) / median(&l_rest);
    let cs = median(&q_save) / median(&raw_w);
    let cr = median(&q_rest) / median(&raw_r);
    println!(
        "  ceiling: a saver that only moves the present bytes at raw disk speed is {cs:.1}x QEMU's save, a restorer {cr:.1}x QEMU's restore"
    );
    rep.add(
        format!("save {} mixed: lib 2T vs QEMU", human(size as u64)),
        format!(
            "{rs:.1}x ({:.0} vs {:.0} MiB/s)",
            size as f64 / 1048576.0 / median(&l_save),
            size as f64 / 1048576.0 / median(&q_save)
        ),
        ">= 10x",
        Some(rs >= 10.0),
    );
    rep.add(
        format!("restore {} mixed: lib 2T vs QEMU", human(size as u64)),
        format!(
            "{rr:.1}x ({:.0} vs {:.0} MiB/s)",
            size as f64 / 1048576.0 / median(&l_rest),
            size as f64 / 1048576.0 / median(&q_rest)
        ),
        ">= 4x",
        Some(rr >= 4.0),
    );
    rep.add(
        format!("  disk ceiling {}: raw vs QEMU", human(size as u64)),
        format!("save {cs:.1}x, restore {cr:.1}x (raw O_DIRECT of present bytes)"),
        "-",
        None,
    );
    Ok(())
}

/// Peak RSS of a save, via `/usr/bin/time -v mr-demo --save-only`.
fn peak_rss(a: &Args, rep: &mut Report) -> Result<(), String> {
    println!(
        "\n--- peak memory of a {} save (mr-demo --save-only under /usr/bin/time -v) ---",
        human(a.rss_size as u64)
    );
    let exe = std::env::current_exe().map_err(io_err("current_exe"))?;
    let demo = exe.with_file_name("mr-demo");
    if !demo.exists() {
        return Err(format!(
            "{} not found (build it: cargo build --release -p mappedram-bench)",
            demo.display()
        ));
    }
    let pages = (a.rss_size / PAGE) as u64;
    let bitmap = pages.div_ceil(64) * 8;
    let mut base = None;
    for threads in [1u32, 2, 4] {
        let out = Command::new("/usr/bin/time")
            .arg("-v")
            .arg(&demo)
            .args(["--save-only", "--size"])
            .arg(format!("{}", a.rss_size))
            .arg("--dir")
            .arg(&a.dir)
            .arg("--threads")
            .arg(threads.to_string())
            .output()
            .map_err(io_err("/usr/bin/time -v mr-demo"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("mr-demo --save-only failed: {err}"));
        }
        let kb: u64 = err
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Maximum resident set size (kbytes):")
                    .and_then(|v| v.trim().parse().ok())
            })
            .ok_or("no 'Maximum resident set size' in /usr/bin/time output")?;
        let rss = kb * 1024;
        let extra = rss as i64 - a.rss_size as i64;
        println!(
            "  {threads} threads: max RSS {} = guest {} + {} (bitmap alone {})",
            human(rss),
            human(a.rss_size as u64),
            human(extra.max(0) as u64),
            human(bitmap)
        );
        if threads == 1 {
            base = Some(extra);
        }
        let bar_ok = extra <= (bitmap as i64) + 16 * (1 << 20) + threads as i64 * 8 * (1 << 20);
        rep.add(
            format!("peak RSS, {} save, {threads}T", human(a.rss_size as u64)),
            format!(
                "guest {} + {:.1} MiB{}",
                human(a.rss_size as u64),
                extra as f64 / 1048576.0,
                match base {
                    Some(b) if threads > 1 =>
                        format!(" ({:+.1} MiB vs 1T)", (extra - b) as f64 / 1048576.0),
                    _ => String::new(),
                }
            ),
            "bitmap + few MiB/thread",
            Some(bar_ok),
        );
    }
    Ok(())
}

/// Sparse guests: 1 %, 10 %, 100 % populated; dirty bitmap vs full scan.
fn sparse(a: &Args, rep: &mut Report) -> Result<(), String> {
    let size = a.sparse_size;
    println!(
        "\n--- sparse {} guest (2 MiB chunks populated, rest never touched), 2 threads ---",
        human(size as u64)
    );
    let path = a
        .dir
        .join(format!("mr-bench-sparse-{}.mrimg", std::process::id()));
    let res = (|| {
        let mut times = Vec::new();
        let mut gibs = Vec::new();
        for pct in [1u32, 10, 100] {
            let mut mem = Mem::anon(size).map_err(io_err("mmap"))?;
            let dirty = populate_sparse(&mut mem, 0x5a5a + pct as u64, pct);
            let npresent: u64 = dirty.iter().map(|w| w.count_ones() as u64).sum();
            let _ = std::fs::remove_file(&path);
            let (d, st) =
                lib_save(&path, &mem, Some(&dirty), 2).map_err(lib_err("save (dirty)"))?;
            if st.pages_data != npresent {
                return Err(format!(
                    "sparse save wrote {} pages, {npresent} populated",
                    st.pages_data
                ));
            }
            let (_, alloc) = file_sizes(&path).map_err(io_err("stat"))?;
            let per = d.as_secs_f64() / (npresent as f64 * PAGE as f64 / (1u64 << 30) as f64);
            times.push(d.as_secs_f64());
            gibs.push(npresent as f64 * PAGE as f64 / (1u64 << 30) as f64);
            let full = if pct < 100 {
                // Without a dirty bitmap: first reading every page (the
                // never-touched ones fault), then, in fresh memory of the
                // same content, asking the page tables first.
                let _ = std::fs::remove_file(&path);
                mappedram::engine::tuning::set_page_tables(false);
                let r = lib_save(&path, &mem, None, 2);
                mappedram::engine::tuning::set_page_tables(true);
                let (dn, stn) = r.map_err(lib_err("save (full scan)"))?;
                let mut fresh = Mem::anon(size).map_err(io_err("mmap"))?;
                populate_sparse(&mut fresh, 0x5a5a + pct as u64, pct);
                let _ = std::fs::remove_file(&path);
                let (df, stf) =
                    lib_save(&path, &fresh, None, 2).map_err(lib_err("save (full scan)"))?;
                for st in [stn, stf] {
                    if st.pages_data != npresent {
                        return Err(format!("full-scan save wrote {} pages", st.pages_data));
                    }
                }
                Some((dn, df))
            } else {
                None
            };
            println!(
                "  {pct:>3}% present ({} pages, {}): dirty bitmap {:.3} s ({:.2} s per present GiB), image allocated {}{}",
                npresent,
                human(npresent * PAGE as u64),
                d.as_secs_f64(),
                per,
                human(alloc),
                full.map(|(n, f)| format!(
                    "; full scan reading every page {:.3} s, full scan asking the page tables first {:.3} s",
                    n.as_secs_f64(),
                    f.as_secs_f64()
                ))
                .unwrap_or_default()
            );
            rep.add(
                format!("sparse {} {pct}% present, dirty bitmap", human(size as u64)),
                format!(
                    "{:.3} s ({:.2} s/present GiB){}",
                    d.as_secs_f64(),
                    per,
                    full.map(|(n, f)| format!(
                        "; full scan {:.3} s reading every page, {:.3} s with page tables",
                        n.as_secs_f64(),
                        f.as_secs_f64()
                    ))
                    .unwrap_or_default()
                ),
                "-",
                None,
            );
        }
        // Linear in present pages: the cost per extra present GiB between
        // 1 % and 10 % matches the one between 10 % and 100 %, and the 1 %
        // guest costs a small fraction of the full one (the rest is the
        // fixed cost of create + finish + fsync).
        let (t, g) = (&times, &gibs);
        let slope_lo = (t[1] - t[0]) / (g[1] - g[0]);
        let slope_hi = (t[2] - t[1]) / (g[2] - g[1]);
        let intercept = t[0] - slope_hi * g[0];
        let ok = slope_lo <= 1.5 * slope_hi && t[0] <= 0.05 * t[2];
        println!(
            "  marginal cost: {slope_lo:.3} s/GiB (1%->10%), {slope_hi:.3} s/GiB (10%->100%); fixed part ~{:.3} s; t(1%)/t(100%) = {:.3}, t(10%)/t(100%) = {:.3}",
            intercept,
            t[0] / t[2],
            t[1] / t[2]
        );
        rep.add(
            "sparse: t(1%) / t(10%) / t(100%)".into(),
            format!(
                "{:.3} / {:.3} / {:.3} s; marginal {slope_lo:.2} vs {slope_hi:.2} s/GiB",
                t[0], t[1], t[2]
            ),
            "time ~ present pages",
            Some(ok),
        );
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    res
}
