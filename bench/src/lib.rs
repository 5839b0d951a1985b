//! Shared helpers of the mappedram demo (`mr-demo`) and benchmark
//! (`mr-bench`) binaries: page-aligned guest memory (anonymous or
//! file-backed `mmap`), deterministic guest-memory patterns, plain
//! `O_DIRECT` sequential I/O as the bandwidth yardstick, the library's
//! save/restore of one guest, a tiny QMP client, and statistics.

pub mod layouts;
pub mod qmp;
mod runs;

pub use runs::{join_runs, present_runs, raw_runs, raw_runs_par, raw_runs_par_in};

use mappedram::engine::{self, Stats};
use mappedram::{BlockSpec, DirtyBitmap, GuestSlice, GuestSliceMut, Image, ImageFlags};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Target page size (x86).
pub const PAGE: usize = 4096;
/// Machine type recorded in the images (what QEMU 10.0's `-M pc` resolves to).
pub const MACHINE: &str = "pc-i440fx-10.0";
/// Chunk of one plain `O_DIRECT` transfer in the raw yardstick.
pub const RAW_CHUNK: usize = 4 << 20;

/// Page-aligned memory from `mmap`: anonymous private (a guest's RAM) or a
/// shared mapping of a file (QEMU's `memory-backend-file`).
pub struct Mem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `Mem` owns its mapping exclusively; access goes through `&self` /
// `&mut self`, so the usual borrow rules make sharing across threads sound.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    /// Anonymous, private, never-touched memory (reads as zero; pages are
    /// populated on first write).
    pub fn anon(len: usize) -> io::Result<Mem> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mem {
            ptr: p as *mut u8,
            len,
        })
    }

    /// A shared read-write mapping of `path`, sized to `len` (the file is
    /// created with mode 0600 and extended when needed).
    pub fn map_file(path: &Path, len: usize) -> io::Result<Mem> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode_0600()
            .open(path)?;
        if f.metadata()?.len() < len as u64 {
            f.set_len(len as u64)?;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we hold open; the mapping
        // stays valid after the descriptor is closed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mem {
            ptr: p as *mut u8,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    /// The memory as the library's read-only guest view.
    pub fn guest(&self) -> GuestSlice<'_> {
        // SAFETY: the mapping is `len` readable bytes for as long as `self`
        // is borrowed.
        unsafe { GuestSlice::new(self.ptr, self.len) }.expect("mapping is not NULL")
    }
    /// The memory as the library's writable guest view.
    pub fn guest_mut(&mut self) -> GuestSliceMut<'_> {
        // SAFETY: the mapping is `len` writable bytes, exclusively borrowed.
        unsafe { GuestSliceMut::new(self.ptr, self.len) }.expect("mapping is not NULL")
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` writable bytes owned by `self`, and
        // `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Touch every page (write a zero byte), so later runs do not measure
    /// page faults of fresh memory.
    pub fn prefault(&mut self) {
        par_chunks(self.as_mut_slice(), |_, c| {
            for p in c.chunks_mut(PAGE) {
                p[0] = 0;
            }
        });
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len.max(1)) };
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// Run `f(offset, chunk)` over `buf` split in page-aligned chunks, on all cores.
pub fn par_chunks(buf: &mut [u8], f: impl Fn(usize, &mut [u8]) + Sync) {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let per = buf.len().div_ceil(n).div_ceil(PAGE) * PAGE;
    if per == 0 {
        return;
    }
    std::thread::scope(|s| {
        for (i, c) in buf.chunks_mut(per).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, c));
        }
    });
}

/// splitmix64: a stateless, deterministic hash of a counter.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fill a page with pseudo-random bytes (xorshift seeded by `seed`).
pub fn fill_random(page: &mut [u8], seed: u64) {
    let mut x = mix64(seed) | 1;
    for c in page.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
}

const TEXT: &[u8] =
    b"Lorem ipsum dolor sit amet, guest kernel log: [    0.000000] Linux version 6.1.0 \
(gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC; mapped-ram save/restore demo text page\n";

/// Fill a page with text (a shifted, repeating line).
pub fn fill_text(page: &mut [u8], seed: u64) {
    let start = (mix64(seed) % TEXT.len() as u64) as usize;
    for (i, b) in page.iter_mut().enumerate() {
        *b = TEXT[(start + i) % TEXT.len()];
    }
}

/// Guest-memory patterns. Every pattern is a pure function of (seed, page
/// index), so parallel fills are deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Every page random (incompressible, nothing to skip).
    Random,
    /// `pct` % of the memory zero, in runs of 128 KiB groups (whole
    /// groups zero or random), the rest random.
    ZeroMix(u32),
    /// A realistic mix per 32 KiB group: ~45 % random, ~30 % zero, ~15 %
    /// text, ~10 % mostly-zero pages with a few bytes set (a zero scan
    /// must look at every byte of those).
    Realistic,
}

impl Pattern {
    pub fn name(self) -> String {
        match self {
            Pattern::Random => "random".into(),
            Pattern::ZeroMix(p) => format!("{p}%zero"),
            Pattern::Realistic => "mixed".into(),
        }
    }

    /// Fill `buf`, whose first byte is guest offset `base`, with this pattern.
    pub fn fill_at(self, seed: u64, base: usize, buf: &mut [u8]) {
        for (i, page) in buf.chunks_mut(PAGE).enumerate() {
            let pidx = ((base / PAGE) + i) as u64;
            let ps = seed ^ pidx.wrapping_mul(0x1000_0000_01b3);
            match self {
                Pattern::Random => fill_random(page, ps),
                Pattern::ZeroMix(pct) => {
                    let group = pidx / 32;
                    if mix64(seed ^ group.wrapping_mul(31)) % 100 < pct as u64 {
                        page.fill(0);
                    } else {
                        fill_random(page, ps);
                    }
                }
                Pattern::Realistic => {
                    let group = pidx / 8;
                    match mix64(seed.wrapping_add(group)) % 100 {
                        0..=44 => fill_random(page, ps),
                        45..=74 => page.fill(0),
                        75..=89 => fill_text(page, ps),
                        _ => {
                            page.fill(0);
                            let h = mix64(ps);
                            let at = (h % page.len() as u64) as usize;
                            page[at] = (h >> 32) as u8 | 1;
                            if h & 1 == 0 {
                                let l = page.len();
                                page[l - 1] = 0x5a;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Fill all of `mem` in parallel.
    pub fn fill(self, seed: u64, mem: &mut [u8]) {
        par_chunks(mem, |off, c| self.fill_at(seed, off, c));
    }
}

/// Count present (non-zero) and zero pages of `mem`.
pub fn count_pages(mem: &[u8]) -> (u64, u64) {
    let mut present = 0;
    let mut zero = 0;
    for p in mem.chunks(PAGE) {
        // SAFETY: `p` is a valid slice of its length.
        if unsafe { mappedram::image::zero::is_zero(p.as_ptr(), p.len()) } {
            zero += 1;
        } else {
            present += 1;
        }
    }
    (present, zero)
}

/// A sparse guest (virtio-mem style): `pct` % of the 2 MiB chunks of
/// never-touched anonymous memory are populated with random data. Returns
/// the dirty bitmap that marks exactly the populated pages.
pub fn populate_sparse(mem: &mut Mem, seed: u64, pct: u32) -> Vec<u64> {
    const CHUNK: usize = 2 << 20;
    let pages = mem.len() / PAGE;
    let mut dirty = vec![0u64; pages.div_ceil(64)];
    let chunks = mem.len().div_ceil(CHUNK);
    let s = mem.as_mut_slice();
    for c in 0..chunks {
        let pop = pct >= 100 || mix64(seed ^ (c as u64) << 8) % 1000 < pct as u64 * 10;
        if !pop {
            continue;
        }
        let start = c * CHUNK;
        let end = (start + CHUNK).min(s.len());
        Pattern::Random.fill_at(seed, start, &mut s[start..end]);
        for p in start / PAGE..end / PAGE {
            dirty[p / 64] |= 1 << (p % 64);
        }
    }
    dirty
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

pub(crate) fn open_direct(path: &Path, flags: libc::c_int) -> io::Result<libc::c_int> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated path for the call.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_DIRECT | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Plain sequential `O_DIRECT` write of `len` bytes from `src` (page
/// aligned) into a new file, [`RAW_CHUNK`] per `pwrite`, then `fdatasync`.
/// The yardstick for the library's save.
///
/// # Safety
/// `src` must be valid for reads of `len` bytes.
pub unsafe fn raw_write(path: &Path, src: *const u8, len: usize) -> io::Result<Duration> {
    let t = Instant::now();
    let fd = open_direct(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)?;
    let mut off = 0usize;
    let res = (|| {
        while off < len {
            let n = RAW_CHUNK.min(len - off);
            // SAFETY: src+off..src+off+n lies inside the caller's buffer.
            let r = unsafe {
                libc::pwrite(
                    fd,
                    src.add(off) as *const libc::c_void,
                    n,
                    off as libc::off_t,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote 0"));
            }
            off += r as usize;
        }
        // SAFETY: fd is our open descriptor.
        if unsafe { libc::fdatasync(fd) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: closing our own descriptor once.
    unsafe { libc::close(fd) };
    res.map(|_| t.elapsed())
}

/// Plain sequential `O_DIRECT` read of `len` bytes of `path` into `dst`.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes.
pub unsafe fn raw_read(path: &Path, dst: *mut u8, len: usize) -> io::Result<Duration> {
    let t = Instant::now();
    let fd = open_direct(path, libc::O_RDONLY)?;
    let mut off = 0usize;
    let res = (|| {
        while off < len {
            let n = RAW_CHUNK.min(len - off);
            // SAFETY: dst+off..dst+off+n lies inside the caller's buffer.
            let r = unsafe {
                libc::pread(fd, dst.add(off) as *mut libc::c_void, n, off as libc::off_t)
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "raw file shorter than expected",
                ));
            }
            off += r as usize;
        }
        Ok(())
    })();
    // SAFETY: closing our own descriptor once.
    unsafe { libc::close(fd) };
    res.map(|_| t.elapsed())
}

/// Small ROM-like blocks QEMU's `pc` machine carries along.
pub fn rom_blocks() -> Vec<(String, usize)> {
    vec![
        ("/rom@etc/acpi/tables".into(), 0x20000),
        ("pc.bios".into(), 0x40000),
        ("pc.rom".into(), 0x20000),
        ("/rom@etc/table-loader".into(), 0x1000),
        ("/rom@etc/acpi/rsdp".into(), 0x1000),
    ]
}

/// Block specs: "mem" of `mem_len`, then `roms`.
pub fn specs(mem_len: usize, roms: &[(String, usize)]) -> Vec<BlockSpec> {
    let mut v = vec![BlockSpec {
        idstr: "mem".into(),
        used_length: mem_len as u64,
        page_size: PAGE as u64,
    }];
    for (n, l) in roms {
        v.push(BlockSpec {
            idstr: n.clone(),
            used_length: *l as u64,
            page_size: PAGE as u64,
        });
    }
    v
}

/// The library's whole save of one guest: create (DIRECT), save "mem" with
/// `threads` (optionally only the `dirty` pages), finish (durable), close.
/// Timed end to end.
pub fn lib_save(
    path: &Path,
    mem: &Mem,
    dirty: Option<&[u64]>,
    threads: u32,
) -> mappedram::Result<(Duration, Stats)> {
    lib_save_with(path, mem, dirty, threads, ImageFlags::DIRECT)
}

/// [`lib_save`] with the image created with `flags`.
pub fn lib_save_with(
    path: &Path,
    mem: &Mem,
    dirty: Option<&[u64]>,
    threads: u32,
    flags: ImageFlags,
) -> mappedram::Result<(Duration, Stats)> {
    let t = Instant::now();
    let img = Image::create(path, MACHINE, &specs(mem.len(), &[]), flags)?;
    // SAFETY: `mem` is valid for reads of its whole length during the call.
    let guest = unsafe { GuestSlice::new(mem.as_ptr(), mem.len())? };
    let dirty = dirty.map(DirtyBitmap::from_slice);
    let st = engine::save_ramblock(&img, 0, guest, dirty, threads)?;
    img.finish()?;
    img.close()?;
    Ok((t.elapsed(), st))
}

/// The library's whole restore of block "mem": open (DIRECT), read into
/// `dst` with `threads` (absent pages left untouched: fresh memory), close.
pub fn lib_restore(
    path: &Path,
    dst: &mut Mem,
    threads: u32,
) -> mappedram::Result<(Duration, Stats)> {
    lib_restore_with(path, dst, threads, ImageFlags::DIRECT)
}

/// [`lib_restore`] with the image opened with `flags`.
pub fn lib_restore_with(
    path: &Path,
    dst: &mut Mem,
    threads: u32,
    flags: ImageFlags,
) -> mappedram::Result<(Duration, Stats)> {
    let t = Instant::now();
    let img = Image::open(path, flags)?;
    let b = img.find_block("mem")?;
    let info = img.block_info(b)?;
    if info.used_length != dst.len() as u64 {
        return Err(mappedram::Error::Invalid(format!(
            "image block 'mem' is {} bytes, destination {}",
            info.used_length,
            dst.len()
        )));
    }
    // SAFETY: `dst` is valid for writes of `used_length` bytes.
    let guest = unsafe { GuestSliceMut::new(dst.as_mut_ptr(), dst.len())? };
    let st = engine::read_ramblock(&img, b, guest, false, threads)?;
    img.close()?;
    Ok((t.elapsed(), st))
}

/// Index of the first differing byte, if any.
pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    const C: usize = 1 << 20;
    for (i, (x, y)) in a.chunks(C).zip(b.chunks(C)).enumerate() {
        if x != y {
            let j = x.iter().zip(y).position(|(p, q)| p != q).unwrap_or(0);
            return Some(i * C + j);
        }
    }
    None
}

/// (logical size, allocated bytes = st_blocks * 512).
pub fn file_sizes(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.blocks() * 512))
}

/// MiB/s for `bytes` in `d`.
pub fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

/// Median of a non-empty list.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Parse a size: plain bytes or with a K/M/G/T suffix (binary).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: usize = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("bad size suffix in {s:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: usize = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let v = n
        .checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if v == 0 || v % PAGE != 0 {
        return Err(format!("size {s:?} must be a non-zero multiple of {PAGE}"));
    }
    Ok(v)
}

/// Human-readable binary size.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}
