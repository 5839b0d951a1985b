//! Guest layouts: library save/restore vs raw O_DIRECT of the present
//! bytes (a flat dump of the whole guest for the page-interleaved layout),
//! per thread count, as alternated pairs (the raw run goes first in even
//! pairs, the library run in odd ones); medians of the per-pair ratios.

use crate::{io_err, lib_err, Args, Report};
use mappedram_bench::layouts::{resident_pages, run_stats, Layout};
use mappedram_bench::*;
use std::path::Path;
use std::time::Duration;

/// Bar of this section: library ≥ 0.95x its yardstick.
const BAR: f64 = 0.95;

/// The layouts the arguments name (the Linux guest is captured first when
/// its cache is missing).
pub(crate) fn selected(a: &Args) -> Result<Vec<Layout>, String> {
    let mut v = Vec::new();
    for n in &a.layouts {
        let l = Layout::parse(n, &a.guest)?;
        if let Layout::Linux(p) = &l {
            ensure_guest(p)?;
        }
        v.push(l);
    }
    Ok(v)
}

/// Capture the Linux guest with `scripts/bench-guest.sh` unless cached.
fn ensure_guest(p: &Path) -> Result<(), String> {
    if p.exists() {
        return Ok(());
    }
    println!("  capturing a Linux guest's RAM into {} ...", p.display());
    let st = std::process::Command::new("scripts/bench-guest.sh")
        .arg(p)
        .status()
        .map_err(io_err(
            "scripts/bench-guest.sh (run mr-bench from the repository root)",
        ))?;
    if !st.success() || !p.exists() {
        return Err(format!("scripts/bench-guest.sh failed ({st})"));
    }
    Ok(())
}

pub(crate) fn layouts(a: &Args, rep: &mut Report) -> Result<(), String> {
    let pid = std::process::id();
    let raw_path = a.dir.join(format!("mr-bench-layout-{pid}.raw"));
    let lib_path = a.dir.join(format!("mr-bench-layout-{pid}.mrimg"));
    let res = (|| {
        for l in selected(a)? {
            one_layout(a, rep, &l, &raw_path, &lib_path)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&raw_path);
    let _ = std::fs::remove_file(&lib_path);
    res
}

/// A guest of layout `l` and its figures.
pub(crate) struct Guest {
    pub(crate) mem: Mem,
    pub(crate) present: u64,
    /// Bytes the yardstick moves (present bytes, or the whole guest).
    pub(crate) yard: usize,
}

pub(crate) fn make_guest(a: &Args, l: &Layout) -> Result<Guest, String> {
    let mem = l
        .build(a.layout_size, 0x1a4 + a.layout_size as u64)
        .map_err(io_err("build guest"))?;
    // Before anything reads the memory (a read maps never-populated pages
    // to the shared zero page).
    let resident = resident_pages(&mem).map_err(io_err("mincore"))?;
    let (present, zero) = count_pages(mem.as_slice());
    let (runs, avg) = run_stats(mem.as_slice());
    let yard = if l.flat_yardstick() {
        mem.len()
    } else {
        present as usize * PAGE
    };
    println!(
        "\n--- layout {} ({}): present {} ({} pages), zero {zero} pages, {runs} runs of data (avg {:.0} KiB), populated {} ---",
        l.name(),
        human(mem.len() as u64),
        human(present * PAGE as u64),
        present,
        avg / 1024.0,
        human(resident * PAGE as u64)
    );
    Ok(Guest { mem, present, yard })
}

fn one_layout(
    a: &Args,
    rep: &mut Report,
    l: &Layout,
    raw_path: &Path,
    lib_path: &Path,
) -> Result<(), String> {
    let g = make_guest(a, l)?;
    let yard_name = if l.flat_yardstick() {
        "flat dump of the guest"
    } else {
        "raw O_DIRECT of the present bytes"
    };
    let pbytes = g.present * PAGE as u64;
    let mut dst = Mem::anon(g.mem.len()).map_err(io_err("mmap"))?;
    dst.prefault();
    let nt = a.layout_threads.len();
    let mut ratio_w: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut ratio_r: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut lib_w: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut lib_r: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut raw_w = Vec::new();
    let mut raw_r = Vec::new();
    for r in 0..a.reps {
        let mut line = format!("  save rep {r}:");
        for (i, &t) in a.layout_threads.iter().enumerate() {
            let raw = || {
                let _ = std::fs::remove_file(raw_path);
                // SAFETY: the guest is valid for reads of `yard <= len` bytes.
                unsafe { raw_write(raw_path, g.mem.as_ptr(), g.yard) }.map_err(io_err("raw write"))
            };
            let lib = || {
                let _ = std::fs::remove_file(lib_path);
                lib_save(lib_path, &g.mem, None, t).map_err(lib_err("lib save"))
            };
            let (dr, (dl, st)) = pair(r + i, raw, lib)?;
            if st.pages_data != g.present {
                return Err(format!(
                    "lib save wrote {} pages, {} present",
                    st.pages_data, g.present
                ));
            }
            raw_w.push(mibs(g.yard as u64, dr));
            lib_w[i].push(mibs(pbytes, dl));
            ratio_w[i].push(dr.as_secs_f64() / dl.as_secs_f64());
            line += &format!(
                " raw {:.3} s / lib {t}T {:.3} s ({:.2}x);",
                dr.as_secs_f64(),
                dl.as_secs_f64(),
                dr.as_secs_f64() / dl.as_secs_f64()
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
    {
        let mut check = Mem::anon(g.mem.len()).map_err(io_err("mmap"))?;
        let (_, st) = lib_restore(lib_path, &mut check, 1).map_err(lib_err("lib restore"))?;
        if let Some(o) = first_mismatch(g.mem.as_slice(), check.as_slice()) {
            return Err(format!("{}: restored memory differs at 0x{o:x}", l.name()));
        }
        if st.pages_data != g.present {
            return Err(format!(
                "restore read {} pages, {} present",
                st.pages_data, g.present
            ));
        }
        println!("  verified: a restore into fresh memory equals the guest");
    }
    for r in 0..a.reps {
        let mut line = format!("  restore rep {r}:");
        for (i, &t) in a.layout_threads.iter().enumerate() {
            let dp = dst.as_mut_ptr();
            let raw = || {
                // SAFETY: `dst` is valid for writes of `yard <= len` bytes;
                // nothing else uses it during the call.
                unsafe { raw_read(raw_path, dp, g.yard) }.map_err(io_err("raw read"))
            };
            let dref = &mut dst;
            let lib = || lib_restore(lib_path, dref, t).map_err(lib_err("lib restore"));
            let (dr, (dl, _)) = pair(r + i, raw, lib)?;
            raw_r.push(mibs(g.yard as u64, dr));
            lib_r[i].push(mibs(pbytes, dl));
            ratio_r[i].push(dr.as_secs_f64() / dl.as_secs_f64());
            line += &format!(
                " raw {:.3} s / lib {t}T {:.3} s ({:.2}x);",
                dr.as_secs_f64(),
                dl.as_secs_f64(),
                dr.as_secs_f64() / dl.as_secs_f64()
            );
        }
        println!("{line}");
    }
    for (i, t) in a.layout_threads.iter().enumerate() {
        let (rw, rr) = (median(&ratio_w[i]), median(&ratio_r[i]));
        rep.add(
            format!("save {} {t}T / {yard_name}", l.name()),
            format!(
                "{rw:.2}x (lib {:.0} MiB/s of present bytes; raw {:.0} MiB/s)",
                median(&lib_w[i]),
                median(&raw_w)
            ),
            ">= 0.95x",
            Some(rw >= BAR),
        );
        rep.add(
            format!("restore {} {t}T / {yard_name}", l.name()),
            format!(
                "{rr:.2}x (lib {:.0} MiB/s of present bytes; raw {:.0} MiB/s)",
                median(&lib_r[i]),
                median(&raw_r)
            ),
            ">= 0.95x",
            Some(rr >= BAR),
        );
    }
    Ok(())
}

/// Run a raw and a library measurement side by side, the raw one first
/// when `k` is even: (raw time, library result).
pub(crate) fn pair<L>(
    k: usize,
    raw: impl FnOnce() -> Result<Duration, String>,
    lib: impl FnOnce() -> Result<(Duration, L), String>,
) -> Result<(Duration, (Duration, L)), String> {
    if k % 2 == 0 {
        let r = raw()?;
        Ok((r, lib()?))
    } else {
        let l = lib()?;
        Ok((raw()?, l))
    }
}
