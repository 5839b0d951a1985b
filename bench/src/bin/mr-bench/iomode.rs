//! O_DIRECT or the page cache, by size: the library's save (create through
//! close, durable) and cold restore (the image's cached pages dropped
//! first) of random guests of several sizes, with `MR_IMAGE_DIRECT` and
//! without, alternated; the figures behind `MR_IMAGE_AUTO_DIRECT`'s rule.

use crate::{io_err, lib_err, Args, Report};
use mappedram::ImageFlags;
use mappedram_bench::layouts::Layout;
use mappedram_bench::*;
use std::os::fd::AsRawFd;
use std::path::Path;

pub(crate) fn iomode(a: &Args, rep: &mut Report) -> Result<(), String> {
    let p = a
        .dir
        .join(format!("mr-bench-iomode-{}.mrimg", std::process::id()));
    let res = (|| {
        println!("\n--- O_DIRECT vs page cache: save (durable) and cold restore, 2 threads ---");
        for size in [
            1usize << 20,
            4 << 20,
            16 << 20,
            64 << 20,
            256 << 20,
            1 << 30,
        ] {
            one(a, rep, size, &p)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&p);
    res
}

fn drop_cache(p: &Path) -> Result<(), String> {
    let f = std::fs::File::open(p).map_err(io_err("open"))?;
    // SAFETY: plain advice call on our descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

fn one(a: &Args, rep: &mut Report, size: usize, p: &Path) -> Result<(), String> {
    let g = Layout::Random
        .build(size, 0x10de)
        .map_err(io_err("build guest"))?;
    let mut dst = Mem::anon(size).map_err(io_err("mmap"))?;
    dst.prefault();
    let mut t = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for r in 0..a.reps {
        for k in 0..2 {
            let direct = (k + r) % 2 == 0;
            let flags = if direct {
                ImageFlags::DIRECT
            } else {
                ImageFlags::default()
            };
            let _ = std::fs::remove_file(p);
            let (d, _) = lib_save_with(p, &g, None, 2, flags).map_err(lib_err("save"))?;
            t[0][direct as usize].push(d.as_secs_f64());
            drop_cache(p)?;
            let (d, _) = lib_restore_with(p, &mut dst, 2, flags).map_err(lib_err("restore"))?;
            t[1][direct as usize].push(d.as_secs_f64());
        }
    }
    let mb = size as f64 / 1048576.0;
    for (i, what) in ["save", "cold restore"].iter().enumerate() {
        let (b, d) = (median(&t[i][0]), median(&t[i][1]));
        rep.add(
            format!("{what} {}: buffered / O_DIRECT", human(size as u64)),
            format!(
                "{:.2}x (buffered {:.0} MiB/s, direct {:.0} MiB/s)",
                d / b,
                mb / b,
                mb / d
            ),
            "-",
            None,
        );
    }
    Ok(())
}
