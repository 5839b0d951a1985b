//! Concurrent restores: N processes (N = 1, 2, 4 by default), each
//! restoring its own image, against N processes each reading the same
//! files raw (4 MiB `pread`s), with `O_DIRECT` and through the page cache.
//! Each child maps and pre-faults its memory, says `ready`, waits for `go`
//! on stdin (so all start together; the parent drops the files' cached
//! pages just before), and prints its own elapsed time. Aggregate = all
//! bytes / the slowest child's time. Raw and library sets alternate.

use crate::{io_err, lib_err, Args, Report};
use mappedram::ImageFlags;
use mappedram_bench::layouts::Layout;
use mappedram_bench::*;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

/// Bar: N concurrent restores ≥ 0.9x the aggregate raw read.
const BAR: f64 = 0.9;

pub(crate) fn concurrent(a: &Args, rep: &mut Report) -> Result<(), String> {
    let nmax = a.conc_n.iter().copied().max().unwrap_or(1);
    let pid = std::process::id();
    let files: Vec<PathBuf> = (0..nmax)
        .map(|i| a.dir.join(format!("mr-bench-conc-{pid}-{i}.mrimg")))
        .collect();
    let res = (|| {
        println!(
            "\n--- {nmax} images of {} random guests; N processes restore one each (library default threads) vs N raw 4 MiB readers of the same files ---",
            human(a.conc_size as u64)
        );
        {
            let g = Layout::Random
                .build(a.conc_size, 0xc0c)
                .map_err(io_err("build guest"))?;
            for f in &files {
                let _ = std::fs::remove_file(f);
                lib_save(f, &g, None, 2).map_err(lib_err("lib save"))?;
            }
        }
        let exe = std::env::current_exe().map_err(io_err("current_exe"))?;
        for &n in &a.conc_n {
            for mode in ["direct", "buffered"] {
                one(a, rep, &exe, &files[..n], mode)?;
            }
        }
        Ok(())
    })();
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    res
}

fn one(
    a: &Args,
    rep: &mut Report,
    exe: &Path,
    files: &[PathBuf],
    mode: &str,
) -> Result<(), String> {
    let n = files.len();
    let mut ratios = Vec::new();
    let (mut lib_bw, mut raw_bw) = (Vec::new(), Vec::new());
    for r in 0..a.reps {
        let mut res = [0f64; 2];
        for k in 0..2 {
            // Alternate which set goes first.
            let lib = (k + r) % 2 == 1;
            let (secs, bytes) = run_set(exe, files, if lib { "restore" } else { "raw" }, mode)?;
            res[lib as usize] = secs;
            let bw = bytes as f64 / 1048576.0 / secs;
            if lib {
                lib_bw.push(bw);
            } else {
                raw_bw.push(bw);
            }
        }
        ratios.push(res[0] / res[1]);
        println!(
            "  N={n} {mode} rep {r}: raw {:.3} s, lib {:.3} s ({:.2}x)",
            res[0],
            res[1],
            res[0] / res[1]
        );
    }
    let q = median(&ratios);
    rep.add(
        format!("{n} concurrent restores, {mode} / raw {mode} read"),
        format!(
            "{q:.2}x (aggregate lib {:.0} MiB/s, raw {:.0} MiB/s)",
            median(&lib_bw),
            median(&raw_bw)
        ),
        ">= 0.9x",
        Some(q >= BAR),
    );
    Ok(())
}

/// Run one set of `files.len()` children of `kind`; (slowest child's
/// seconds, total bytes).
fn run_set(exe: &Path, files: &[PathBuf], kind: &str, mode: &str) -> Result<(f64, u64), String> {
    let mut kids: Vec<(Child, BufReader<std::process::ChildStdout>)> = Vec::new();
    let res = (|| {
        for f in files {
            let mut c = Command::new(exe)
                .args(["--child", kind])
                .arg(f)
                .args(["0", mode])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(io_err("spawn child"))?;
            let out = BufReader::new(c.stdout.take().ok_or("no child stdout")?);
            kids.push((c, out));
        }
        for (_, out) in kids.iter_mut() {
            let mut l = String::new();
            out.read_line(&mut l).map_err(io_err("child ready"))?;
            if l.trim() != "ready" {
                return Err(format!("child said {l:?} instead of ready"));
            }
        }
        for f in files {
            drop_cache(f)?;
        }
        for (c, _) in kids.iter_mut() {
            let si = c.stdin.as_mut().ok_or("no child stdin")?;
            si.write_all(b"go\n").map_err(io_err("child go"))?;
            si.flush().map_err(io_err("child go"))?;
        }
        let (mut worst, mut bytes) = (0f64, 0u64);
        for (_, out) in kids.iter_mut() {
            let mut l = String::new();
            out.read_line(&mut l).map_err(io_err("child result"))?;
            let mut it = l.split_whitespace();
            let s: f64 = it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("child said {l:?}"))?;
            let b: u64 = it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("child said {l:?}"))?;
            worst = worst.max(s);
            bytes += b;
        }
        Ok((worst, bytes))
    })();
    for (mut c, _) in kids {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    res
}

/// Drop `f`'s pages from the page cache (they are clean).
fn drop_cache(f: &Path) -> Result<(), String> {
    let file = std::fs::File::open(f).map_err(io_err("open for fadvise"))?;
    // SAFETY: plain advice call on our descriptor.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(format!("posix_fadvise: errno {r}"));
    }
    Ok(())
}

/// A child: `restore|raw FILE THREADS direct|buffered`.
pub(crate) fn child(args: Vec<String>) -> ExitCode {
    match child_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mr-bench child: {e}");
            ExitCode::FAILURE
        }
    }
}

fn child_inner(args: &[String]) -> Result<(), String> {
    let [kind, file, threads, mode] = args else {
        return Err(format!("bad child arguments {args:?}"));
    };
    let path = PathBuf::from(file);
    let threads: u32 = threads.parse().map_err(|e| format!("threads: {e}"))?;
    let direct = mode == "direct";
    let len = match kind.as_str() {
        "restore" => {
            let img =
                mappedram::Image::open(&path, ImageFlags::default()).map_err(lib_err("open"))?;
            let b = img.find_block("mem").map_err(lib_err("find"))?;
            let l = img.block_info(b).map_err(lib_err("info"))?.used_length as usize;
            img.close().map_err(lib_err("close"))?;
            l
        }
        _ => {
            let l = std::fs::metadata(&path).map_err(io_err("stat"))?.len() as usize;
            l.div_ceil(RAW_CHUNK) * RAW_CHUNK
        }
    };
    let mut dst = Mem::anon(len).map_err(io_err("mmap"))?;
    dst.prefault();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready").map_err(io_err("stdout"))?;
    stdout.flush().map_err(io_err("stdout"))?;
    let mut l = String::new();
    std::io::stdin()
        .read_line(&mut l)
        .map_err(io_err("stdin"))?;
    let t = Instant::now();
    let bytes = if kind == "restore" {
        let flags = if direct {
            ImageFlags::DIRECT
        } else {
            ImageFlags::default()
        };
        let (_, st) =
            lib_restore_with(&path, &mut dst, threads, flags).map_err(lib_err("restore"))?;
        st.bytes
    } else {
        read_all(&path, &mut dst, direct)?
    };
    writeln!(stdout, "{} {bytes}", t.elapsed().as_secs_f64()).map_err(io_err("stdout"))?;
    Ok(())
}

/// Read all of `path` into `dst` in [`RAW_CHUNK`] `pread`s.
fn read_all(path: &Path, dst: &mut Mem, direct: bool) -> Result<u64, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)
        .map_err(io_err("open"))?;
    let mut off = 0usize;
    loop {
        let n = RAW_CHUNK.min(dst.len() - off);
        if n == 0 {
            return Ok(off as u64);
        }
        // SAFETY: dst+off..+n lies inside `dst`.
        let r = unsafe {
            libc::pread(
                f.as_raw_fd(),
                dst.as_mut_ptr().add(off) as *mut libc::c_void,
                n,
                off as libc::off_t,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("pread: {e}"));
        }
        if r == 0 {
            return Ok(off as u64);
        }
        off += r as usize;
    }
}
