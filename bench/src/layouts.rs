//! Guest-memory layouts of the layout benchmark: random data, 50 % zero by
//! MiB, fragmented (present/absent runs of 4 KiB-1 MiB), page-interleaved
//! (each 4 KiB page zero or random at 50/50) and the RAM of a real Linux
//! guest captured by `scripts/bench-guest.sh`.

use crate::{fill_random, mix64, par_chunks, Mem, PAGE};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// One guest layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every page random.
    Random,
    /// Half of the 1 MiB groups zero, the rest random.
    ZeroByMib,
    /// Alternating present/absent runs, each 1-256 pages (4 KiB-1 MiB,
    /// log-uniform); absent pages are written zeros (the scan must look).
    Fragmented,
    /// Each page zero or random at 50/50: no layout keeps the holes without
    /// one request per page.
    Interleaved,
    /// A real Linux guest's RAM: the sparse file `scripts/bench-guest.sh`
    /// keeps (its holes = pages the guest never populated).
    Linux(PathBuf),
}

impl Layout {
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Random => "random",
            Layout::ZeroByMib => "50%zero-by-MiB",
            Layout::Fragmented => "fragmented",
            Layout::Interleaved => "interleaved",
            Layout::Linux(_) => "linux-guest",
        }
    }

    /// Whether the fair yardstick is a flat dump of the whole guest (no
    /// layout keeps isolated zero pages as holes without one request per
    /// page) rather than a raw transfer of the present bytes.
    pub fn flat_yardstick(&self) -> bool {
        matches!(self, Layout::Interleaved)
    }

    /// Parse a name as printed by [`Layout::name`] (`linux-guest` takes
    /// the capture's path).
    pub fn parse(s: &str, guest: &Path) -> Result<Layout, String> {
        Ok(match s {
            "random" => Layout::Random,
            "50%zero-by-MiB" | "zero" => Layout::ZeroByMib,
            "fragmented" => Layout::Fragmented,
            "interleaved" => Layout::Interleaved,
            "linux-guest" | "linux" => Layout::Linux(guest.to_path_buf()),
            _ => return Err(format!("unknown layout {s:?}")),
        })
    }

    /// Guest memory of this layout (`size` is ignored for a Linux guest,
    /// whose size is its capture's).
    pub fn build(&self, size: usize, seed: u64) -> io::Result<Mem> {
        if let Layout::Linux(path) = self {
            return load_sparse(path);
        }
        let mut mem = Mem::anon(size)?;
        let present = match self {
            Layout::Fragmented => Some(fragmented_map(size / PAGE, seed)),
            _ => None,
        };
        par_chunks(mem.as_mut_slice(), |base, chunk| {
            for (i, page) in chunk.chunks_mut(PAGE).enumerate() {
                let p = (base / PAGE + i) as u64;
                let ps = seed ^ p.wrapping_mul(0x1000_0000_01b3);
                let data = match self {
                    Layout::Random => true,
                    Layout::ZeroByMib => mix64(seed ^ (p / 256).wrapping_mul(31)) % 2 == 0,
                    Layout::Fragmented => present.as_ref().is_some_and(|m| m[p as usize]),
                    Layout::Interleaved => mix64(seed.wrapping_add(p)) & 1 == 0,
                    Layout::Linux(_) => unreachable!("handled above"),
                };
                if data {
                    fill_random(page, ps);
                } else {
                    page.fill(0);
                }
            }
        });
        Ok(mem)
    }
}

/// Per page: present or not, as alternating runs of 1-256 pages whose
/// lengths are log-uniform (as many 4 KiB runs as 1 MiB ones per octave).
fn fragmented_map(pages: usize, seed: u64) -> Vec<bool> {
    let mut map = vec![false; pages];
    let mut p = 0usize;
    let mut present = mix64(seed) & 1 == 0;
    let mut k = 0u64;
    while p < pages {
        let h = mix64(seed ^ k.wrapping_mul(0x9e37));
        // 2^(0..8) scaled by a fraction: 1..=256 pages.
        let octave = (h % 9) as u32;
        let lo = 1u64 << octave.saturating_sub(1);
        let span = (1u64 << octave) - lo + 1;
        let len = ((lo + (h >> 8) % span) as usize).clamp(1, 256);
        let end = (p + len).min(pages);
        if present {
            map[p..end].fill(true);
        }
        p = end;
        present = !present;
        k += 1;
    }
    map
}

/// Load a sparse file into fresh anonymous memory: only its data extents
/// (`SEEK_DATA`/`SEEK_HOLE`) are read, so the pages of its holes stay
/// never-touched, as in the guest that produced it.
pub fn load_sparse(path: &Path) -> io::Result<Mem> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 || len % PAGE != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: size {len} is not a multiple of {PAGE}", path.display()),
        ));
    }
    let mut mem = Mem::anon(len)?;
    let fd = f.as_raw_fd();
    let mut off = 0i64;
    while (off as usize) < len {
        // SAFETY: plain lseek on our descriptor.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after `off`.
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            len as i64
        } else {
            hole.min(len as i64)
        };
        let (s, e) = (data as usize, end as usize);
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut mem.as_mut_slice()[s..e], s as u64)?;
        off = end;
    }
    Ok(mem)
}

/// Pages of `mem` that are populated (mapped), by `mincore`.
pub fn resident_pages(mem: &Mem) -> io::Result<u64> {
    let mut vec = vec![0u8; mem.len().div_ceil(PAGE)];
    // SAFETY: `mem` is one mapping of `len` bytes; `vec` has a byte per page.
    let r = unsafe {
        libc::mincore(
            mem.as_ptr() as *mut libc::c_void,
            mem.len(),
            vec.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64)
}

/// The runs of consecutive present pages of `mem` (in pages): count and
/// the distribution's mean (bytes).
pub fn run_stats(mem: &[u8]) -> (u64, f64) {
    let mut runs = 0u64;
    let mut present = 0u64;
    let mut prev = false;
    for p in mem.chunks(PAGE) {
        // SAFETY: `p` is a valid slice of its length.
        let z = unsafe { mappedram::image::zero::is_zero(p.as_ptr(), p.len()) };
        if !z {
            present += 1;
            if !prev {
                runs += 1;
            }
        }
        prev = !z;
    }
    (runs, present as f64 * PAGE as f64 / runs.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragmented_runs_are_4k_to_1m() {
        let m = fragmented_map(1 << 16, 7);
        let mut len = 1;
        let mut seen_min = usize::MAX;
        let mut seen_max = 0;
        for w in m.windows(2) {
            if w[0] == w[1] {
                len += 1;
            } else {
                seen_min = seen_min.min(len);
                seen_max = seen_max.max(len);
                len = 1;
            }
        }
        assert_eq!(seen_min, 1);
        assert!(seen_max <= 256 && seen_max > 128, "{seen_max}");
        let present = m.iter().filter(|&&b| b).count();
        assert!((0.4..0.6).contains(&(present as f64 / m.len() as f64)));
    }
}
