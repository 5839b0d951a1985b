//! Raw O_DIRECT with a given request pattern: the runs of present pages
//! (the library's runs), runs joined over short gaps (its current
//! requests), replayed one at a time or with several in flight. The
//! yardsticks that split a library miss into device cost and library cost.

use crate::{open_direct, PAGE};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// The runs of non-zero pages of `mem`, split at `unit` boundaries (the
/// I/O pattern of the library's save): (byte offset, byte length).
pub fn present_runs(mem: &[u8], unit: usize) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut cur: Option<(usize, usize)> = None;
    for (i, p) in mem.chunks(PAGE).enumerate() {
        let off = i * PAGE;
        // SAFETY: `p` is a valid slice of its length.
        let z = unsafe { mappedram::image::zero::is_zero(p.as_ptr(), p.len()) };
        let boundary = off % unit == 0;
        match (&mut cur, z) {
            (Some((_, l)), false) if !boundary => *l += p.len(),
            (c, false) => {
                if let Some(r) = c.take() {
                    runs.push(r);
                }
                *c = Some((off, p.len()));
            }
            (c, true) => {
                if let Some(r) = c.take() {
                    runs.push(r);
                }
            }
        }
    }
    runs.extend(cur);
    runs
}

/// Plain `O_DIRECT` I/O of `runs` (offset, length) of `mem` at the same
/// offsets of a file, one thread, in order: `pwrite` into a new sparse file
/// of `mem.len()` bytes then `fdatasync` (write), or `pread` (read). The
/// yardstick with the library's exact request pattern.
///
/// # Safety
/// `mem` must be valid for reads (write) or writes (read) of every run.
pub unsafe fn raw_runs(
    path: &Path,
    mem: *mut u8,
    len: usize,
    runs: &[(usize, usize)],
    write: bool,
) -> io::Result<Duration> {
    let t = Instant::now();
    let fd = if write {
        open_direct(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)?
    } else {
        open_direct(path, libc::O_RDONLY)?
    };
    let res = (|| {
        // SAFETY: fd is our open descriptor.
        if write && unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for &(off, n) in runs {
            let mut done = 0;
            while done < n {
                // SAFETY: the run lies inside the caller's memory.
                let p = unsafe { mem.add(off + done) } as *mut libc::c_void;
                let o = (off + done) as libc::off_t;
                // SAFETY: as above; fd is ours.
                let r = unsafe {
                    if write {
                        libc::pwrite(fd, p, n - done, o)
                    } else {
                        libc::pread(fd, p, n - done, o)
                    }
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if r == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short I/O"));
                }
                done += r as usize;
            }
        }
        // SAFETY: fd is ours.
        if write && unsafe { libc::fdatasync(fd) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: closing our own descriptor once.
    unsafe { libc::close(fd) };
    res.map(|_| t.elapsed())
}

/// Join runs (sorted, from [`present_runs`]) that lie in the same `unit`
/// and are at most `gap` bytes apart: the request pattern of the library's
/// save (zero gaps written inside one request) or restore (gaps read into
/// scratch memory).
pub fn join_runs(runs: &[(usize, usize)], unit: usize, gap: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &(off, len) in runs {
        match out.last_mut() {
            Some((o, l)) if *o / unit == off / unit && off - (*o + *l) <= gap => {
                *l = off + len - *o;
            }
            _ => out.push((off, len)),
        }
    }
    out
}

/// [`raw_runs`] with `depth` threads taking the runs in order from a shared
/// counter (`depth` requests in flight), as the library's writer threads
/// do.
///
/// # Safety
/// As [`raw_runs`].
pub unsafe fn raw_runs_par(
    path: &Path,
    mem: *mut u8,
    len: usize,
    runs: &[(usize, usize)],
    write: bool,
    depth: usize,
) -> io::Result<Duration> {
    // SAFETY: the caller's contract, passed on.
    unsafe { raw_runs_par_in(path, mem, len, runs, write, depth, false) }
}

/// [`raw_runs_par`]; with `preallocated` (writes) the whole file is
/// allocated first (`fallocate`, untimed), so every write overwrites
/// allocated space instead of filling a hole.
///
/// # Safety
/// As [`raw_runs_par`].
pub unsafe fn raw_runs_par_in(
    path: &Path,
    mem: *mut u8,
    len: usize,
    runs: &[(usize, usize)],
    write: bool,
    depth: usize,
    preallocated: bool,
) -> io::Result<Duration> {
    if write && preallocated {
        let f = std::fs::File::create(path)?;
        use std::os::fd::AsRawFd;
        // SAFETY: f is our open descriptor.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f.sync_all()?;
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    let t = Instant::now();
    let fd = if write && preallocated {
        open_direct(path, libc::O_WRONLY)?
    } else if write {
        open_direct(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)?
    } else {
        open_direct(path, libc::O_RDONLY)?
    };
    let base = mem as usize;
    let next = AtomicUsize::new(0);
    let res = (|| {
        // SAFETY: fd is our open descriptor.
        if write && unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..depth.max(1))
                .map(|_| {
                    s.spawn(|| -> io::Result<()> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(off, n)) = runs.get(i) else {
                                return Ok(());
                            };
                            let p = (base + off) as *mut libc::c_void;
                            // SAFETY: the run lies inside the caller's memory;
                            // fd is ours.
                            let r = unsafe {
                                if write {
                                    libc::pwrite(fd, p, n, off as libc::off_t)
                                } else {
                                    libc::pread(fd, p, n, off as libc::off_t)
                                }
                            };
                            if r != n as isize {
                                return Err(io::Error::last_os_error());
                            }
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(Err(io::Error::other("panic"))))
                .collect::<io::Result<Vec<()>>>()
        })?;
        // SAFETY: fd is ours.
        if write && unsafe { libc::fdatasync(fd) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: closing our own descriptor once.
    unsafe { libc::close(fd) };
    res.map(|_| t.elapsed())
}
