//! Helpers of the userfaultfd tests (on-demand restore, live snapshot):
//! guest-like mappings (private anonymous, shared memfd) and images with a
//! mixed layout (data pages, zero pages, runs of both).

use super::{block_memory, specs, Aligned, Rng, TmpDir, PS};
use mappedram::engine::save_ramblock;
use mappedram::lazy::LazyOptions;
use mappedram::{GuestSlice, Image, ImageFlags};
use std::path::PathBuf;

/// A mapping like guest RAM, unmapped on drop.
pub struct Mapping {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: the mapping is plain memory; tests share it between threads the
// way a hypervisor shares guest RAM with vCPU threads.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Private anonymous memory, never touched.
    pub fn anon(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping; no existing memory affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {len}");
        Mapping { ptr: p.cast(), len }
    }

    /// Shared memfd (shmem) memory, never touched.
    pub fn memfd(len: usize) -> Mapping {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"mr-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: our fd; ftruncate then mmap it shared, then close the fd
        // (the mapping keeps the file).
        unsafe {
            assert_eq!(libc::ftruncate(fd, len as i64), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            libc::close(fd);
            assert_ne!(p, libc::MAP_FAILED);
            Mapping { ptr: p.cast(), len }
        }
    }

    /// Shared hugetlbfs memory (`memfd_create(MFD_HUGETLB)`, 2 MiB pages),
    /// never touched; `len` a multiple of 2 MiB. The caller holds the
    /// reservation ([`crate::common::need::hugepages`]).
    pub fn hugetlb_memfd(len: usize) -> Mapping {
        assert_eq!(len % (2 << 20), 0);
        let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"mr-test-huge".as_ptr(), flags) };
        assert!(
            fd >= 0,
            "memfd_create(MFD_HUGETLB): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: as in `memfd`.
        unsafe {
            assert_eq!(libc::ftruncate(fd, len as i64), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            libc::close(fd);
            assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
            Mapping { ptr: p.cast(), len }
        }
    }

    /// Private hugetlbfs memory (`MAP_PRIVATE | MAP_HUGETLB`, 2 MiB
    /// pages), never touched; `len` a multiple of 2 MiB.
    pub fn hugetlb_private(len: usize) -> Mapping {
        assert_eq!(len % (2 << 20), 0);
        // SAFETY: a fresh anonymous mapping; no existing memory affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        Mapping { ptr: p.cast(), len }
    }

    /// Read one byte at `off` in a forked child: the child's exit status
    /// (`waitpid`'s). The child does nothing but the read and `_exit(0)`,
    /// with core dumps off.
    pub fn touch_in_child(&self, off: u64, write: bool) -> i32 {
        assert!(off < self.len as u64);
        let at = self.ptr as usize + off as usize;
        // SAFETY: the child only calls async-signal-safe functions
        // (setrlimit, signal, _exit) and touches memory; the parent waits for it.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: in the child: a system call and a plain access to an
            // address that is ours in the parent (SIGSEGV when the child
            // has no mapping there, which is what is tested).
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                // Die by the signal, not through a handler (Rust's own
                // SIGSEGV handler re-raises, a sanitizer's would not).
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                let p = at as *mut u8;
                if write {
                    std::ptr::write_volatile(p, 0x5a);
                } else {
                    std::ptr::read_volatile(p);
                }
                libc::_exit(0);
            }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let mut st = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        st
    }

    /// Copy page `p` out (touching it).
    pub fn page(&self, p: u64) -> Vec<u8> {
        let mut v = vec![0u8; PS as usize];
        assert!((p + 1) * PS <= self.len as u64);
        // SAFETY: inside the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add((p * PS) as usize),
                v.as_mut_ptr(),
                PS as usize,
            )
        };
        v
    }

    /// The whole mapping (touching every page).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // SAFETY: inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, v.as_mut_ptr(), self.len) };
        v
    }

    /// Write a u64 at byte offset `off` (volatile, like a guest store).
    pub fn write_u64(&self, off: u64, v: u64) {
        assert!(off + 8 <= self.len as u64);
        // SAFETY: inside the mapping, 8-byte aligned by callers.
        unsafe { std::ptr::write_volatile(self.ptr.add(off as usize) as *mut u64, v) };
    }

    pub fn madvise(&self, off: u64, len: u64, advice: i32) {
        // SAFETY: the range lies inside the mapping.
        let r = unsafe { libc::madvise(self.ptr.add(off as usize).cast(), len as usize, advice) };
        assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A finished image of one `mem` block of `len` bytes (plus the two small
/// ROM blocks) whose pages are distinct, about one in `zero_every` zero;
/// returns its path and the block's memory.
pub fn mixed_image(dir: &TmpDir, len: u64, zero_every: u64) -> (PathBuf, Aligned) {
    let mem = block_memory(1, 0, len, zero_every);
    (image_of(dir, &mem, zero_every), mem)
}

/// A finished image whose `mem` block holds `mem` (plus the two small ROM
/// blocks, one in `zero_every` of their pages zero).
pub fn image_of(dir: &TmpDir, mem: &Aligned, zero_every: u64) -> PathBuf {
    let path = dir.join("lazy.img");
    let len = mem.as_slice().len() as u64;
    let img = Image::create(&path, "pc-i440fx-10.0", &specs(len), ImageFlags::default()).unwrap();
    save_ramblock(&img, 0, GuestSlice::from_slice(mem.as_slice()), None, 2).unwrap();
    for b in 1..3 {
        let m = block_memory(1, b, img.block_info(b).unwrap().used_length, zero_every);
        save_ramblock(&img, b, GuestSlice::from_slice(m.as_slice()), None, 1).unwrap();
    }
    img.finish().unwrap();
    img.close().unwrap();
    path
}

/// Whether a `waitpid` status says killed by SIGSEGV.
pub fn killed_by_sigsegv(st: i32) -> bool {
    libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSEGV
}

/// The first page that differs, as a message.
pub fn first_diff(got: &[u8], want: &[u8]) -> Option<String> {
    assert_eq!(got.len(), want.len());
    let ps = PS as usize;
    (0..got.len() / ps)
        .find(|&p| got[p * ps..(p + 1) * ps] != want[p * ps..(p + 1) * ps])
        .map(|p| {
            format!(
                "page {p} differs: got {:02x?}.. want {:02x?}..",
                &got[p * ps..p * ps + 16],
                &want[p * ps..p * ps + 16]
            )
        })
}

/// On-demand restore options with `flags` and `threads` prefetch threads.
pub fn lazy_opts(flags: u32, threads: u32) -> LazyOptions {
    LazyOptions {
        flags,
        threads,
        ..Default::default()
    }
}

/// `threads` threads (random generators seeded `seed + t`) touch `touches`
/// random pages each and check every page they see against `want`.
pub fn random_touches(m: &Mapping, want: &[u8], threads: u64, touches: u64, seed: u64) {
    let pages = m.len as u64 / PS;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut r = Rng::new(seed + t);
                for _ in 0..touches {
                    let p = r.below(pages);
                    let got = m.page(p);
                    let w = &want[(p * PS) as usize..((p + 1) * PS) as usize];
                    assert!(got == w, "thread {t}: page {p} differs from the image");
                }
            });
        }
    });
}
