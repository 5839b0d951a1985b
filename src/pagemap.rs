//! What the kernel's page tables say about guest memory: which pages read
//! as zero without being read.
//!
//! A save looks at every page to find the zero ones. Reading a page the
//! guest never touched costs a page fault (the kernel maps its shared zero
//! page there), and most of a booted guest's RAM was never touched: a
//! 1 GiB Linux guest with 268 MiB in use spent 120 ms of a 412 ms save
//! faulting and scanning the rest. The `PAGEMAP_SCAN` ioctl (Linux 6.7)
//! reports for a range of pages, in one page-table walk, which are
//! present, swapped, or the shared zero page. Two kinds of page are then
//! known to be zero:
//!
//! - a page mapped to the shared zero page (`PAGE_IS_PFNZERO`), in any
//!   mapping: its content is the zero page's;
//! - a page with no page-table entry at all (not present, not swapped, no
//!   marker) inside a **private anonymous** mapping that **no userfaultfd
//!   serves missing pages for**: such a page was never written or was
//!   discarded, and reads as zero. In any other mapping (a file, shmem or
//!   memfd, hugetlbfs, a range under on-demand restore) an empty entry can
//!   stand for data, so those pages are read as before.
//!
//! The mapping kind comes from `/proc/self/smaps` (the `VmFlags` line says
//! `um` for a userfaultfd missing-mode registration; `/proc/self/maps` does
//! not). Reading smaps walks the page tables of the whole process, so it is
//! read only when the range has enough empty entries to repay it
//! ([`SMAPS_WORTH`]). Kernels without `PAGEMAP_SCAN` get the old scan.

use crate::memory::GuestSlice;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `_IOWR('f', 16, struct pm_scan_arg)` from `<linux/fs.h>`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

/// Regions returned per ioctl.
const REGIONS: usize = 256;

/// Read smaps only when the range's empty entries outnumber
/// 1/`SMAPS_WORTH` of the process's resident pages: reading smaps costs
/// 0.04-0.09 us per resident page, faulting in and scanning an untouched
/// page about 1.4 us (measured: BENCHMARKS.md, "Pages known zero"), so
/// this errs towards not reading it.
const SMAPS_WORTH: u64 = 8;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// Pages of one address range known to read as zero.
pub(crate) struct KnownZero {
    pagemap: File,
    /// Empty entries read as zero in this range (private anonymous, no
    /// userfaultfd serving missing pages).
    empty_is_zero: bool,
}

impl KnownZero {
    /// A probe for `[addr, addr + len)`, or `None` when the kernel cannot
    /// say (no `PAGEMAP_SCAN`, no `/proc`): then every page is read.
    pub(crate) fn probe(addr: usize, len: usize) -> Option<KnownZero> {
        Self::probe_with(addr, len, |empty_pages| {
            empty_pages * SMAPS_WORTH >= resident_pages().unwrap_or(u64::MAX)
        })
    }

    /// [`KnownZero::probe`] with the rule that decides whether `empty_pages`
    /// empty entries repay reading smaps.
    fn probe_with(addr: usize, len: usize, worth: impl Fn(u64) -> bool) -> Option<KnownZero> {
        let pagemap = File::open("/proc/self/pagemap").ok()?;
        let mut kz = KnownZero {
            pagemap,
            empty_is_zero: false,
        };
        let mut empty = 0u64;
        kz.scan(addr, len, |s, e, cat| {
            if cat & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) == 0 {
                empty += (e - s) as u64;
            }
        })
        .ok()?;
        let empty_pages = empty / page_size();
        if empty_pages > 0 && worth(empty_pages) {
            kz.empty_is_zero = private_anonymous(addr, len).unwrap_or(false);
        }
        Some(kz)
    }

    /// Calls `f(offset, count)` for byte ranges of `[addr, addr + len)`
    /// known to read as zero, in order (offsets from `addr`).
    pub(crate) fn runs(
        &self,
        addr: usize,
        len: usize,
        mut f: impl FnMut(usize, usize),
    ) -> io::Result<()> {
        let empty_is_zero = self.empty_is_zero;
        self.scan(addr, len, |s, e, cat| {
            let zero = cat & PAGE_IS_PFNZERO != 0
                || (empty_is_zero && cat & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) == 0);
            // The kernel reports inside [addr, addr + len); clamp anyway,
            // so a surprise can only make fewer pages known zero.
            let (s, e) = (s.max(addr), e.min(addr + len));
            if zero && s < e {
                f(s - addr, e - s);
            }
        })
    }

    /// Runs `(first page, count)` of pages `[first, end)` of `mem` (pages
    /// of `ps` bytes) all of whose bytes are known zero; none when the
    /// walk fails (then every page is read).
    pub(crate) fn page_runs(
        &self,
        mem: GuestSlice<'_>,
        ps: u64,
        first: u64,
        end: u64,
    ) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let base = mem.as_ptr() as usize + (first * ps) as usize;
        let mut bytes: Vec<(u64, u64)> = Vec::new();
        let walked = self.runs(base, ((end - first) * ps) as usize, |o, n| {
            match bytes.last_mut() {
                Some(l) if l.0 + l.1 == o as u64 => l.1 += n as u64,
                _ => bytes.push((o as u64, n as u64)),
            }
        });
        if walked.is_err() {
            return out;
        }
        for (o, n) in bytes {
            let (s, e) = (o.div_ceil(ps), (o + n) / ps);
            if e > s {
                out.push((first + s, e - s));
            }
        }
        out
    }

    /// Walk `[addr, addr + len)` with `PAGEMAP_SCAN`: `f(start, end,
    /// categories)` for each region the kernel reports (adjacent pages of
    /// equal categories come merged; ranges it skips, such as `VM_PFNMAP`
    /// mappings, are not reported and so never count as zero).
    fn scan(
        &self,
        addr: usize,
        len: usize,
        mut f: impl FnMut(usize, usize, u64),
    ) -> io::Result<()> {
        let end = addr.checked_add(len).ok_or(io::ErrorKind::InvalidInput)? as u64;
        let mut vec = [PageRegion::default(); REGIONS];
        let mut at = addr as u64;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: at,
                end,
                vec: vec.as_mut_ptr() as u64,
                vec_len: REGIONS as u64,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO,
                ..Default::default()
            };
            // SAFETY: `arg` is a `pm_scan_arg` laid out as <linux/fs.h>
            // declares it (12 u64s, `size` set), and `vec` points to
            // REGIONS writable `page_region`s that outlive the call. The
            // kernel only reads our page tables for `[start, end)`; it
            // never touches the memory itself.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for r in &vec[..(n as usize).min(REGIONS)] {
                f(r.start as usize, r.end as usize, r.categories);
            }
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps > 0 {
        ps as u64
    } else {
        4096
    }
}

/// Resident pages of this process (`/proc/self/statm`, second field).
fn resident_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

/// Whether every byte of `[addr, addr + len)` lies in private anonymous
/// mappings that no userfaultfd serves missing pages for.
fn private_anonymous(addr: usize, len: usize) -> io::Result<bool> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(covered_by_private_anonymous(
        &smaps,
        addr as u64,
        (addr + len) as u64,
    ))
}

/// [`private_anonymous`] over the text of an smaps file.
fn covered_by_private_anonymous(smaps: &str, lo: u64, hi: u64) -> bool {
    let mut next = lo; // first byte not yet shown to be covered
    let mut current: Option<(u64, u64, bool)> = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some((s, e, ok)) = current.take() {
                let ok = ok && !flags.split_whitespace().any(|f| f == "um");
                if e > next && s < hi {
                    if !ok || s > next {
                        return false;
                    }
                    next = e;
                }
            }
        } else if let Some(vma) = parse_header(line) {
            current = Some(vma);
        }
    }
    next >= hi
}

/// A mapping's header line: `start-end perms offset dev inode [path]` ->
/// (start, end, private and anonymous).
fn parse_header(line: &str) -> Option<(u64, u64, bool)> {
    let mut f = line.split_whitespace();
    let (s, e) = f.next()?.split_once('-')?;
    let (s, e) = (
        u64::from_str_radix(s, 16).ok()?,
        u64::from_str_radix(e, 16).ok()?,
    );
    let perms = f.next()?;
    let _offset = f.next()?;
    let dev = f.next()?;
    let inode = f.next()?;
    if perms.len() != 4 || dev.split_once(':').is_none() {
        return None;
    }
    let private = perms.as_bytes()[3] == b'p';
    Some((s, e, private && inode == "0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
1000-3000 rw-p 00000000 00:00 0 
Size:                  8 kB
VmFlags: rd wr mr mw me ac 
3000-5000 rw-p 00000000 00:00 0                          [heap]
Size:                  8 kB
VmFlags: rd wr mr mw me ac um 
5000-6000 rw-s 00000000 00:01 1234                       /memfd:guest (deleted)
VmFlags: rd wr sh mr mw me ms 
6000-8000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac uw 
9000-a000 rw-p 00000000 fd:01 42                         /tmp/f
VmFlags: rd wr mr mw me ac 
";

    #[test]
    fn private_anonymous_mappings_only() {
        assert!(covered_by_private_anonymous(SMAPS, 0x1000, 0x3000));
        assert!(covered_by_private_anonymous(SMAPS, 0x1800, 0x2000));
        // Registered for missing pages with a userfaultfd.
        assert!(!covered_by_private_anonymous(SMAPS, 0x2000, 0x4000));
        // Shared memfd.
        assert!(!covered_by_private_anonymous(SMAPS, 0x5000, 0x6000));
        // Write-protect registration only: empty entries still read zero.
        assert!(covered_by_private_anonymous(SMAPS, 0x6000, 0x8000));
        // A hole between mappings.
        assert!(!covered_by_private_anonymous(SMAPS, 0x7000, 0x9000));
        // A private file mapping.
        assert!(!covered_by_private_anonymous(SMAPS, 0x9000, 0xa000));
    }

    #[test]
    fn untouched_and_zero_page_mapped_pages_are_known_zero() {
        let ps = page_size() as usize;
        let len = 64 * ps;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as *mut u8;
        // SAFETY: all offsets are inside the mapping; nothing else uses it.
        unsafe {
            base.add(3 * ps).write_volatile(7); // data
            base.add(10 * ps).write_volatile(0); // written zero: present, read
            let _ = base.add(20 * ps).read_volatile(); // the shared zero page
        }
        let Some(kz) = KnownZero::probe_with(base as usize, len, |_| true) else {
            // The full suite skips nothing: there, a kernel without the
            // ioctl is a failure (the machine cannot show this feature).
            assert!(
                std::env::var_os("MR_TEST_REQUIRE_ALL").is_none(),
                "this kernel has no PAGEMAP_SCAN (Linux 6.7+): run the full suite on a newer kernel"
            );
            eprintln!("NOT RUN: this kernel has no PAGEMAP_SCAN (Linux 6.7+)");
            // SAFETY: our mapping.
            unsafe { libc::munmap(p, len) };
            return;
        };
        let mut zero = [false; 64];
        kz.runs(base as usize, len, |o, n| {
            for z in &mut zero[o / ps..(o + n) / ps] {
                *z = true;
            }
        })
        .unwrap();
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(p, len) };
        assert!(!zero[3], "a page holding data");
        assert!(!zero[10], "a written page must be read");
        assert!(zero[20], "the shared zero page");
        assert!(kz.empty_is_zero, "a private anonymous mapping");
        assert_eq!(zero.iter().filter(|z| **z).count(), 62);
    }
}
