//! The engine's rules by measurement: save and restore of each layout at
//! one thread with the save gap, the writer threads and the read gap
//! varied one at a time (`engine::tuning`), each next to a raw run of the
//! same bytes; medians of the per-pair ratios, plus the image's allocated
//! size (what a larger save gap costs in sparseness).

use crate::guests::{make_guest, selected};
use crate::{io_err, lib_err, Args, Report};
use mappedram::engine::tuning;
use mappedram_bench::*;

pub(crate) fn sweep(a: &Args, rep: &mut Report) -> Result<(), String> {
    let pid = std::process::id();
    let p = a.dir.join(format!("mr-bench-sweep-{pid}.mrimg"));
    let raw = a.dir.join(format!("mr-bench-sweep-{pid}.raw"));
    let keep = tuning::get();
    let res = (|| {
        for l in selected(a)? {
            let g = make_guest(a, &l)?;
            let mut dst = Mem::anon(g.mem.len()).map_err(io_err("mmap"))?;
            dst.prefault();
            let (d_gap, d_read, d_writers) = (
                tuning::DEFAULT_SAVE_GAP,
                tuning::DEFAULT_READ_GAP,
                tuning::DEFAULT_WRITERS,
            );
            let mut cases: Vec<(u64, u64, u64)> = Vec::new();
            for gap in [0u64, 16 << 10, 64 << 10, 256 << 10, 1 << 20] {
                cases.push((gap, d_read, d_writers));
            }
            for gap in [64u64 << 10, 256 << 10] {
                cases.push((gap, d_read, 8));
            }
            for w in [0u64, 1, 4, 8] {
                cases.push((d_gap, d_read, w));
            }
            for rg in [0u64, 64 << 10, 256 << 10] {
                cases.push((d_gap, rg, d_writers));
            }
            for (gap, rg, w) in cases {
                tuning::set(gap, rg, w);
                let (mut rs, mut rr) = (Vec::new(), Vec::new());
                let mut alloc = 0;
                for r in 0..a.reps {
                    let _ = std::fs::remove_file(&raw);
                    let _ = std::fs::remove_file(&p);
                    let run_raw = || {
                        // SAFETY: the guest is valid for `yard` bytes.
                        unsafe { raw_write(&raw, g.mem.as_ptr(), g.yard) }
                            .map_err(io_err("raw write"))
                    };
                    let run_lib = || lib_save(&p, &g.mem, None, 1).map_err(lib_err("save"));
                    let (dr, (dl, _)) = crate::guests::pair(r, run_raw, run_lib)?;
                    rs.push(dr.as_secs_f64() / dl.as_secs_f64());
                    alloc = file_sizes(&p).map_err(io_err("stat"))?.1;
                    let dp = dst.as_mut_ptr();
                    let run_raw = || {
                        // SAFETY: `dst` is valid for `yard` bytes.
                        unsafe { raw_read(&raw, dp, g.yard) }.map_err(io_err("raw read"))
                    };
                    let dref = &mut dst;
                    let run_lib = || lib_restore(&p, dref, 1).map_err(lib_err("restore"));
                    let (dr, (dl, _)) = crate::guests::pair(r + 1, run_raw, run_lib)?;
                    rr.push(dr.as_secs_f64() / dl.as_secs_f64());
                }
                rep.add(
                    format!(
                        "sweep {} 1T save gap {} KiB, writers {w}, read gap {} KiB",
                        l.name(),
                        gap >> 10,
                        rg >> 10
                    ),
                    format!(
                        "save {:.2}x, restore {:.2}x of the yardstick; image allocated {}",
                        median(&rs),
                        median(&rr),
                        human(alloc)
                    ),
                    "-",
                    None,
                );
            }
        }
        Ok(())
    })();
    tuning::set(keep.0, keep.1, keep.2);
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(&raw);
    res
}
