//! Where the time of a save and a restore goes, measured in one run, per
//! layout, one thread: the library's phases (create, save_ramblock, finish,
//! close; open, read_ramblock, close), the fixed costs on their own (an
//! empty image's create/finish/close, one `fdatasync`, a thread start), the
//! zero scan alone (no I/O), and raw O_DIRECT with the library's exact
//! request pattern next to one sequential stream of the same bytes (their
//! difference over the request count is the cost per request).

use crate::guests::{make_guest, selected};
use crate::{io_err, lib_err, Args, Report};
use mappedram::engine;
use mappedram::image::zero::is_zero;
use mappedram::{Image, ImageFlags};
use mappedram_bench::*;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn profile(a: &Args, rep: &mut Report) -> Result<(), String> {
    let pid = std::process::id();
    let p = a.dir.join(format!("mr-bench-prof-{pid}.mrimg"));
    let raw = a.dir.join(format!("mr-bench-prof-{pid}.raw"));
    let res = (|| {
        let fixed = fixed_costs(a, &p)?;
        for l in selected(a)? {
            let g = make_guest(a, &l)?;
            one(a, rep, l.name(), &g, &p, &raw, &fixed)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(&raw);
    res
}

fn secs(v: &[Duration]) -> f64 {
    median(&v.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>())
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

/// Medians of the fixed costs: (create+finish+close of an empty 1 GiB
/// image, one fdatasync after a 4 KiB O_DIRECT write, one thread start+join).
struct Fixed {
    empty: f64,
    fdatasync: f64,
    thread: f64,
}

fn fixed_costs(a: &Args, p: &Path) -> Result<Fixed, String> {
    println!("\n--- fixed costs (medians of {} reps) ---", a.reps.max(3));
    let mut empty = Vec::new();
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    let mut sync = Vec::new();
    for _ in 0..a.reps.max(3) {
        let _ = std::fs::remove_file(p);
        let t = Instant::now();
        let (dc, img) =
            timed(|| Image::create(p, MACHINE, &specs(a.layout_size, &[]), ImageFlags::DIRECT));
        let img = img.map_err(lib_err("create"))?;
        let (df, r) = timed(|| img.finish());
        r.map_err(lib_err("finish"))?;
        let (dx, r) = timed(|| img.close());
        r.map_err(lib_err("close"))?;
        empty.push(t.elapsed());
        for (v, d) in phases.iter_mut().zip([dc, df, dx]) {
            v.push(d);
        }
        sync.push(one_fdatasync(&p.with_extension("sync"))?);
    }
    let mut th = Vec::new();
    for _ in 0..50 {
        let (d, _) = timed(|| std::thread::scope(|s| s.spawn(|| ()).join()));
        th.push(d);
    }
    let f = Fixed {
        empty: secs(&empty),
        fdatasync: secs(&sync),
        thread: secs(&th),
    };
    println!(
        "  empty {} image: create {:.1} ms + finish {:.1} ms + close {:.1} ms = {:.1} ms; one fdatasync {:.1} ms; thread start+join {:.0} us",
        human(a.layout_size as u64),
        secs(&phases[0]) * 1e3,
        secs(&phases[1]) * 1e3,
        secs(&phases[2]) * 1e3,
        f.empty * 1e3,
        f.fdatasync * 1e3,
        f.thread * 1e6
    );
    Ok(f)
}

/// Time of creating a file, one 4 KiB O_DIRECT write and its `fdatasync`
/// (the write is ~20 us of it).
fn one_fdatasync(p: &Path) -> Result<Duration, String> {
    let _ = std::fs::remove_file(p);
    let mut m = Mem::anon(PAGE).map_err(io_err("mmap"))?;
    m.as_mut_slice().fill(1);
    // SAFETY: `m` is valid for reads of PAGE bytes.
    let all = unsafe { raw_write(p, m.as_ptr(), PAGE) }.map_err(io_err("raw write"))?;
    let _ = std::fs::remove_file(p);
    Ok(all)
}

#[allow(clippy::too_many_arguments)]
fn one(
    a: &Args,
    rep: &mut Report,
    name: &str,
    g: &crate::guests::Guest,
    p: &Path,
    raw: &Path,
    fixed: &Fixed,
) -> Result<(), String> {
    let len = g.mem.len();
    let pbytes = g.present as usize * PAGE;
    let runs = present_runs(g.mem.as_slice(), engine::UNIT_BYTES as usize);
    // The library's own requests and depth: runs joined over short gaps,
    // written by its writer threads; read joined over gaps <= the read gap.
    let (sgap, rgap, writers) = engine::tuning::get();
    let unit = engine::UNIT_BYTES as usize;
    let wjoined = join_runs(&runs, unit, sgap as usize);
    let rjoined = join_runs(&runs, unit, rgap as usize);
    let (mut lib_w, mut lib_r) = (Vec::new(), Vec::new());
    let (mut no_probe, mut lib_w_alloc) = (Vec::new(), Vec::new());
    let mut dst = Mem::anon(len).map_err(io_err("mmap"))?;
    dst.prefault();
    let mut s = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut r = [Vec::new(), Vec::new(), Vec::new()];
    let (mut scan, mut seq_w, mut runs_w, mut seq_r, mut runs_r) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.reps {
        let _ = std::fs::remove_file(p);
        let (d0, img) = timed(|| Image::create(p, MACHINE, &specs(len, &[]), ImageFlags::DIRECT));
        let img = img.map_err(lib_err("create"))?;
        let (d1, st) = timed(|| engine::save_ramblock(&img, 0, g.mem.guest(), None, 1));
        st.map_err(lib_err("save"))?;
        let (d2, x) = timed(|| img.finish());
        x.map_err(lib_err("finish"))?;
        let (d3, x) = timed(|| img.close());
        x.map_err(lib_err("close"))?;
        for (v, d) in s.iter_mut().zip([d0, d1, d2, d3]) {
            v.push(d);
        }
        let (e0, img) = timed(|| Image::open(p, ImageFlags::DIRECT));
        let img = img.map_err(lib_err("open"))?;
        let (e1, x) = timed(|| engine::read_ramblock(&img, 0, dst.guest_mut(), false, 1));
        x.map_err(lib_err("read"))?;
        let (e2, x) = timed(|| img.close());
        x.map_err(lib_err("close"))?;
        for (v, d) in r.iter_mut().zip([e0, e1, e2]) {
            v.push(d);
        }
        // The same save reading every page (no page-table probe).
        no_probe.push(save_without(p, len, g, engine::tuning::set_page_tables)?);
        let (d, zeros) = timed(|| {
            let mut z = 0u64;
            for off in (0..len).step_by(PAGE) {
                // SAFETY: off + PAGE <= len.
                z += unsafe { is_zero(std::hint::black_box(g.mem.as_ptr().add(off)), PAGE) } as u64;
            }
            z
        });
        std::hint::black_box(zeros);
        scan.push(d);
        let _ = std::fs::remove_file(raw);
        // SAFETY: the guest is valid for reads of `pbytes <= len` bytes.
        seq_w.push(unsafe { raw_write(raw, g.mem.as_ptr(), pbytes) }.map_err(io_err("raw write"))?);
        // SAFETY: `dst` is valid for writes of `pbytes`.
        seq_r.push(unsafe { raw_read(raw, dst.as_mut_ptr(), pbytes) }.map_err(io_err("raw read"))?);
        let _ = std::fs::remove_file(raw);
        // SAFETY: every run lies inside the guest / `dst`.
        runs_w.push(
            unsafe { raw_runs(raw, g.mem.as_ptr() as *mut u8, len, &runs, true) }
                .map_err(io_err("raw runs"))?,
        );
        // SAFETY: as above.
        runs_r.push(
            unsafe { raw_runs(raw, dst.as_mut_ptr(), len, &runs, false) }
                .map_err(io_err("raw runs"))?,
        );
        let _ = std::fs::remove_file(raw);
        let gm = g.mem.as_ptr() as *mut u8;
        // SAFETY: every joined run lies inside the guest.
        let d = unsafe { raw_runs_par(raw, gm, len, &wjoined, true, writers as usize) };
        lib_w.push(d.map_err(io_err("raw runs"))?);
        let _ = std::fs::remove_file(raw);
        // SAFETY: as above.
        let d = unsafe { raw_runs_par_in(raw, gm, len, &wjoined, true, writers as usize, true) };
        // (The read below reads this file: the same bytes at the same
        // offsets.)
        lib_w_alloc.push(d.map_err(io_err("raw runs"))?);
        // SAFETY: every joined run lies inside `dst`.
        let d = unsafe { raw_runs_par(raw, dst.as_mut_ptr(), len, &rjoined, false, 1) };
        lib_r.push(d.map_err(io_err("raw runs"))?);
    }
    let n = runs.len() as f64;
    let save = s.iter().map(|v| secs(v)).sum::<f64>();
    let rest = r.iter().map(|v| secs(v)).sum::<f64>();
    let per_w = (secs(&runs_w) - secs(&seq_w)) / n;
    let per_r = (secs(&runs_r) - secs(&seq_r)) / n;
    println!(
        "  profile {name}, 1 thread, {} requests (avg {:.0} KiB):",
        runs.len(),
        pbytes as f64 / n / 1024.0
    );
    println!(
        "    save {:.1} ms = create {:.1} + save_ramblock {:.1} (reading every page: {:.1}) + finish {:.1} + close {:.1}; zero scan alone {:.1} ms",
        save * 1e3,
        secs(&s[0]) * 1e3,
        secs(&s[1]) * 1e3,
        secs(&no_probe) * 1e3,
        secs(&s[2]) * 1e3,
        secs(&s[3]) * 1e3,
        secs(&scan) * 1e3
    );
    println!(
        "    raw write: one stream {:.1} ms, the library's requests {:.1} ms ({:+.1} us per request); fixed: empty image {:.1} ms, one fdatasync {:.1} ms, thread {:.0} us",
        secs(&seq_w) * 1e3,
        secs(&runs_w) * 1e3,
        per_w * 1e6,
        fixed.empty * 1e3,
        fixed.fdatasync * 1e3,
        fixed.thread * 1e6
    );
    println!(
        "    raw O_DIRECT with the library's current requests: write {} requests (gaps <= {} KiB joined) with {writers} in flight {:.1} ms (into a preallocated file {:.1} ms); read {} requests (gaps <= {} KiB joined), one in flight, {:.1} ms",
        wjoined.len(),
        sgap >> 10,
        secs(&lib_w) * 1e3,
        secs(&lib_w_alloc) * 1e3,
        rjoined.len(),
        rgap >> 10,
        secs(&lib_r) * 1e3
    );
    println!(
        "    restore {:.1} ms = open {:.1} + read_ramblock {:.1} + close {:.1}; raw read: one stream {:.1} ms, the library's requests {:.1} ms ({:+.1} us per request)",
        rest * 1e3,
        secs(&r[0]) * 1e3,
        secs(&r[1]) * 1e3,
        secs(&r[2]) * 1e3,
        secs(&seq_r) * 1e3,
        secs(&runs_r) * 1e3,
        per_r * 1e6
    );
    rep.add(
        format!("profile {name} save 1T"),
        format!(
            "{:.0} ms: create {:.0} + engine {:.0} (reading every page {:.0}) + finish {:.0} + close {:.0}; scan alone {:.0}; raw stream {:.0}, raw runs 1 in flight {:.0} ({} req), raw lib's requests {:.0} ({} req, {writers} in flight; into preallocated space {:.0})",
            save * 1e3,
            secs(&s[0]) * 1e3,
            secs(&s[1]) * 1e3,
            secs(&no_probe) * 1e3,
            secs(&s[2]) * 1e3,
            secs(&s[3]) * 1e3,
            secs(&scan) * 1e3,
            secs(&seq_w) * 1e3,
            secs(&runs_w) * 1e3,
            runs.len(),
            secs(&lib_w) * 1e3,
            wjoined.len(),
            secs(&lib_w_alloc) * 1e3
        ),
        "-",
        None,
    );
    rep.add(
        format!("profile {name} restore 1T"),
        format!(
            "{:.0} ms: open {:.0} + engine {:.0} + close {:.0}; raw stream {:.0}, raw runs {:.0}, raw lib's requests {:.0} ({} req)",
            rest * 1e3,
            secs(&r[0]) * 1e3,
            secs(&r[1]) * 1e3,
            secs(&r[2]) * 1e3,
            secs(&seq_r) * 1e3,
            secs(&runs_r) * 1e3,
            secs(&lib_r) * 1e3,
            rjoined.len()
        ),
        "-",
        None,
    );
    Ok(())
}

/// Time of `save_ramblock` (1 thread, fresh image) with one of the
/// engine's switches turned off for it.
fn save_without(
    p: &Path,
    len: usize,
    g: &crate::guests::Guest,
    switch: fn(bool),
) -> Result<Duration, String> {
    let _ = std::fs::remove_file(p);
    let img = Image::create(p, MACHINE, &specs(len, &[]), ImageFlags::DIRECT)
        .map_err(lib_err("create"))?;
    switch(false);
    let (d, st) = timed(|| engine::save_ramblock(&img, 0, g.mem.guest(), None, 1));
    switch(true);
    st.map_err(lib_err("save"))?;
    img.close().map_err(lib_err("close"))?;
    Ok(d)
}
