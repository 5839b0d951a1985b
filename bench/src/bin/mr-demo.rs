//! mr-demo: save a guest's RAM to a mapped-ram image and restore it.
//!
//! Generates guest memory of a realistic mix (random, zero, text and
//! mostly-zero pages) in an anonymous mapping, saves it with the library
//! (O_DIRECT, in parallel) into an image QEMU 10 can load (`pc-i440fx-10.0`,
//! block "mem" plus small ROM-like blocks), reopens it, restores into fresh
//! memory with a different thread count, verifies every byte and prints
//! throughput and file figures. Exits non-zero on any mismatch or error.

use mappedram::engine;
use mappedram::{GuestSlice, GuestSliceMut, Image, ImageFlags};
use mappedram_bench::*;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

struct Args {
    size: usize,
    dir: PathBuf,
    threads: u32,
    restore_threads: Option<u32>,
    keep: bool,
    save_only: bool,
    seed: u64,
}

const USAGE: &str =
    "usage: mr-demo [--size SIZE (default 1G)] [--dir DIR (default $TMPDIR or /tmp)] \
[--threads N (save, default 2)] [--restore-threads N (default: a different count)] \
[--seed N] [--keep] [--save-only]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1 << 30,
        dir: std::env::temp_dir(),
        threads: 2,
        restore_threads: None,
        keep: false,
        save_only: false,
        seed: 0x6d72_6465_6d6f,
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
            "--restore-threads" => {
                a.restore_threads = Some(
                    val()?
                        .parse()
                        .map_err(|e| format!("--restore-threads: {e}"))?,
                )
            }
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--keep" => a.keep = true,
            "--save-only" => a.save_only = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {k}\n{USAGE}")),
        }
    }
    if a.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mr-demo: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mr-demo: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    let path = a.dir.join(format!("mr-demo-{}.mrimg", std::process::id()));
    let res = demo(a, &path);
    if !a.keep || res.is_err() {
        let _ = std::fs::remove_file(&path);
    } else {
        println!("image kept at {}", path.display());
    }
    res
}

fn demo(a: &Args, path: &std::path::Path) -> Result<(), String> {
    let restore_threads =
        a.restore_threads
            .unwrap_or(if a.threads == 1 { 2 } else { a.threads - 1 });
    println!(
        "mr-demo: guest {} (mixed: random, zero, text, mostly-zero pages), image {}",
        human(a.size as u64),
        path.display()
    );

    // Guest memory and its ROMs.
    let t = Instant::now();
    let mut mem = Mem::anon(a.size).map_err(|e| format!("mmap {} bytes: {e}", a.size))?;
    Pattern::Realistic.fill(a.seed, mem.as_mut_slice());
    let roms = rom_blocks();
    let mut rom_mem = Vec::new();
    for (i, (_, len)) in roms.iter().enumerate() {
        let mut m = Mem::anon(*len).map_err(|e| format!("mmap ROM: {e}"))?;
        let pat = if i % 2 == 0 {
            Pattern::Realistic
        } else {
            Pattern::Random
        };
        pat.fill(a.seed + 1 + i as u64, m.as_mut_slice());
        rom_mem.push(m);
    }
    println!(
        "  filled guest memory in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // Save.
    let specs = specs(a.size, &roms);
    let t = Instant::now();
    let img = Image::create(path, MACHINE, &specs, ImageFlags::DIRECT)
        .map_err(|e| format!("create: {e}"))?;
    // SAFETY: `mem` is valid for reads of its whole length during the call.
    let st = engine::save_ramblock(
        &img,
        0,
        unsafe {
            GuestSlice::new(
                mem.as_ptr(),
                img.block_info(0).unwrap().used_length as usize,
            )
        }
        .unwrap(),
        None,
        a.threads,
    )
    .map_err(|e| format!("save 'mem': {e}"))?;
    let t_mem = t.elapsed();
    for (i, m) in rom_mem.iter().enumerate() {
        engine::save_ramblock(
            &img,
            i + 1,
            // SAFETY: `m` is valid for reads of the block's used_length.
            unsafe {
                GuestSlice::new(
                    m.as_ptr(),
                    img.block_info(i + 1).unwrap().used_length as usize,
                )
            }
            .unwrap(),
            None,
            a.threads,
        )
        .map_err(|e| format!("save '{}': {e}", roms[i].0))?;
    }
    img.finish().map_err(|e| format!("finish: {e}"))?;
    img.close().map_err(|e| format!("close: {e}"))?;
    let t_save = t.elapsed();
    let (logical, alloc) = file_sizes(path).map_err(|e| format!("stat image: {e}"))?;
    println!(
        "  save    ({} threads): {:.3} s, {:.0} MiB/s of guest ('mem' alone {:.3} s), {} pages written, {} zero pages skipped, {} written",
        a.threads,
        t_save.as_secs_f64(),
        mibs(a.size as u64, t_save),
        t_mem.as_secs_f64(),
        st.pages_data,
        st.pages_zero,
        human(st.bytes)
    );
    println!(
        "  image: logical size {} ({} bytes), allocated {} ({} bytes, st_blocks*512) = {:.1} % of guest",
        human(logical),
        logical,
        human(alloc),
        alloc,
        alloc as f64 * 100.0 / a.size as f64
    );
    if a.save_only {
        println!("  --save-only: guest memory {} bytes", a.size);
        return Ok(());
    }

    // Restore into fresh memory with another thread count.
    let mut dst = Mem::anon(a.size).map_err(|e| format!("mmap {} bytes: {e}", a.size))?;
    let mut rom_dst = Vec::new();
    for (_, len) in &roms {
        rom_dst.push(Mem::anon(*len).map_err(|e| format!("mmap ROM: {e}"))?);
    }
    let t = Instant::now();
    let img = Image::open(path, ImageFlags::DIRECT).map_err(|e| format!("open: {e}"))?;
    if !img.is_complete() {
        return Err("reopened image is not complete".into());
    }
    if img.machine_type() != MACHINE {
        return Err(format!("machine type {:?}", img.machine_type()));
    }
    let b = img.find_block("mem").map_err(|e| e.to_string())?;
    let info = img.block_info(b).map_err(|e| e.to_string())?;
    // SAFETY: `dst` is valid for writes of its whole length.
    let rst = engine::read_ramblock(
        &img,
        b,
        unsafe {
            GuestSliceMut::new(
                dst.as_mut_ptr(),
                img.block_info(b).unwrap().used_length as usize,
            )
        }
        .unwrap(),
        false,
        restore_threads,
    )
    .map_err(|e| format!("restore 'mem': {e}"))?;
    for (i, m) in rom_dst.iter_mut().enumerate() {
        let bi = img.find_block(&roms[i].0).map_err(|e| e.to_string())?;
        engine::read_ramblock(
            &img,
            bi,
            // SAFETY: `m` is valid for writes of the block's used_length.
            unsafe {
                GuestSliceMut::new(
                    m.as_mut_ptr(),
                    img.block_info(bi).unwrap().used_length as usize,
                )
            }
            .unwrap(),
            false,
            restore_threads,
        )
        .map_err(|e| format!("restore '{}': {e}", roms[i].0))?;
    }
    img.close()
        .map_err(|e| format!("close after restore: {e}"))?;
    let t_restore = t.elapsed();
    println!(
        "  restore ({} threads): {:.3} s, {:.0} MiB/s of guest, {} pages read, {} absent (zero) pages",
        restore_threads,
        t_restore.as_secs_f64(),
        mibs(a.size as u64, t_restore),
        rst.pages_data,
        rst.pages_zero
    );
    println!(
        "  bitmap: {} present pages of {} (pages_present from the image)",
        info.pages_present,
        a.size / PAGE
    );

    // Verify.
    let t = Instant::now();
    let mut bad = Vec::new();
    if let Some(i) = first_mismatch(mem.as_slice(), dst.as_slice()) {
        bad.push(format!(
            "'mem' differs at offset 0x{i:x} (page {}): saved {:#04x}, restored {:#04x}",
            i / PAGE,
            mem.as_slice()[i],
            dst.as_slice()[i]
        ));
    }
    for (i, (s, d)) in rom_mem.iter().zip(&rom_dst).enumerate() {
        if let Some(o) = first_mismatch(s.as_slice(), d.as_slice()) {
            bad.push(format!("'{}' differs at offset 0x{o:x}", roms[i].0));
        }
    }
    if st.pages_data != info.pages_present || st.pages_data != rst.pages_data {
        bad.push(format!(
            "page counts disagree: saved {}, bitmap {}, restored {}",
            st.pages_data, info.pages_present, rst.pages_data
        ));
    }
    if !bad.is_empty() {
        return Err(format!("VERIFY FAILED:\n  {}", bad.join("\n  ")));
    }
    println!(
        "  verify: all {} bytes of 'mem' and {} ROM blocks identical ({:.2} s)",
        a.size,
        roms.len(),
        t.elapsed().as_secs_f64()
    );
    println!("OK");
    Ok(())
}
