//! Helpers shared by the durability, fault, full-disk and hostile-input
//! tests: deterministic page patterns, aligned buffers, temp dirs, a tmpfs
//! mount guard.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use mappedram::engine::read_ramblock_to_vec;
use mappedram::{BlockSpec, Image};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const PS: u64 = 4096;

/// xorshift64: deterministic, seedable, good enough for test patterns.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A fresh directory under the system temp dir (ext4 here).
pub fn tmp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mr-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes a directory tree on drop.
pub struct TmpDir(pub PathBuf);

impl TmpDir {
    pub fn new(tag: &str) -> TmpDir {
        TmpDir(tmp_dir(tag))
    }
    /// A directory on a memory file system (/dev/shm) when there is one:
    /// `fdatasync` costs nothing there, and what a SIGKILL leaves behind is
    /// the same as on a disk file system (the page cache survives both).
    pub fn in_memory(tag: &str) -> TmpDir {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return TmpDir::new(tag);
        }
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = shm.join(format!(
            "mr-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir_all(&dir) {
            Ok(()) => TmpDir(dir),
            Err(_) => TmpDir::new(tag),
        }
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A page-aligned buffer, like guest RAM from mmap.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: Aligned owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for Aligned {}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).unwrap();
        // SAFETY: non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocating {len} bytes");
        Aligned { ptr, len, layout }
    }
    pub fn from_slice(data: &[u8]) -> Aligned {
        let mut a = Aligned::new(data.len());
        a.as_mut_slice().copy_from_slice(data);
        a
    }
    pub fn ptr(&self) -> *const u8 {
        self.ptr
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The ramblocks the crash and fault tests use: a main block plus two
/// small ROM-like ones (one of them a single page).
pub fn specs(mem: u64) -> Vec<BlockSpec> {
    vec![
        BlockSpec {
            idstr: "mem".into(),
            used_length: mem,
            page_size: PS,
        },
        BlockSpec {
            idstr: "pc.bios".into(),
            used_length: 0x40000,
            page_size: PS,
        },
        BlockSpec {
            idstr: "/rom@etc/acpi/rsdp".into(),
            used_length: PS,
            page_size: PS,
        },
    ]
}

/// The content of page `page` of block `block` in `version` of the guest
/// memory: every page distinct (its first 24 bytes say what it is), about
/// one in `zero_every` pages all zero.
pub fn page_content(version: u64, block: usize, page: u64, zero_every: u64, out: &mut [u8]) {
    let h = (version.wrapping_mul(0x1000_0000_01b3) ^ (block as u64) << 40 ^ page)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if zero_every > 0 && (h >> 32) % zero_every == 0 {
        out.fill(0);
        return;
    }
    let mut r = Rng::new(h);
    r.fill(out);
    out[..8].copy_from_slice(&version.to_le_bytes());
    out[8..16].copy_from_slice(&(block as u64).to_le_bytes());
    out[16..24].copy_from_slice(&page.to_le_bytes());
}

/// Whole-block memory for `version`.
pub fn block_memory(version: u64, block: usize, len: u64, zero_every: u64) -> Aligned {
    let mut a = Aligned::new(len as usize);
    for (p, page) in a.as_mut_slice().chunks_mut(PS as usize).enumerate() {
        page_content(version, block, p as u64, zero_every, page);
    }
    a
}

/// Read every block of `img` and compare with `expected[block]`; on a
/// mismatch returns which block and page differ.
pub fn compare_image(img: &Image, expected: &[&[u8]]) -> Result<(), String> {
    if img.block_count() != expected.len() {
        return Err(format!(
            "image has {} blocks, expected {}",
            img.block_count(),
            expected.len()
        ));
    }
    for (b, want) in expected.iter().enumerate() {
        let got = read_ramblock_to_vec(img, b, 2).map_err(|e| format!("reading block {b}: {e}"))?;
        if got.len() != want.len() {
            return Err(format!(
                "block {b}: {} bytes, expected {}",
                got.len(),
                want.len()
            ));
        }
        if let Some(p) = (0..got.len() / PS as usize).find(|&p| {
            let r = p * PS as usize..(p + 1) * PS as usize;
            got[r.clone()] != want[r]
        }) {
            return Err(format!("block {b}: page {p} differs"));
        }
        let nonzero = want
            .chunks(PS as usize)
            .filter(|p| p.iter().any(|&x| x != 0))
            .count() as u64;
        let present = img.block_info(b).unwrap().pages_present;
        if present != nonzero {
            return Err(format!(
                "block {b}: bitmap has {present} pages present, the memory has {nonzero} non-zero pages"
            ));
        }
    }
    Ok(())
}

/// A size-limited tmpfs mounted on a fresh directory; unmounted (lazily, so
/// a leaked descriptor cannot keep it) and removed on drop.
pub struct TmpfsMount {
    pub dir: PathBuf,
}

impl TmpfsMount {
    /// Mount a tmpfs of `size_bytes`. Panics with what is needed when the
    /// mount fails (the tests need root).
    pub fn new(tag: &str, size_bytes: u64) -> TmpfsMount {
        let dir = tmp_dir(tag);
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes},mode=0700"))
            .arg("tmpfs")
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => TmpfsMount { dir },
            Ok(o) => {
                let _ = std::fs::remove_dir(&dir);
                panic!(
                    "this test needs root to mount a size-limited tmpfs (mount -t tmpfs -o size={size_bytes} on {}): mount failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                panic!("this test needs root and the mount(8) tool to mount a size-limited tmpfs: running mount: {e}")
            }
        }
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
