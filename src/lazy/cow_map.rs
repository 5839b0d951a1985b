//! A block's pages mapped `MAP_PRIVATE` straight from the image file: the
//! copy-on-write restore of Firecracker and Cloud Hypervisor. Pages are read
//! by the kernel on first touch (page cache, shared between clones of one
//! image); a write copies the page privately.
//!
//! Slots whose bit is clear read as zero even when the file holds stale
//! bytes there (QEMU leaves them after a page turned zero between rounds):
//! those ranges are overwritten with zeros in the private mapping (their
//! pages become private copies), and a file shorter than the block is
//! padded with anonymous zero memory (no `SIGBUS`).
//!
//! Safe only while nobody writes the image file: a page not yet written
//! through the mapping shows the file's current contents, so an in-place
//! update (`MR_IMAGE_READ_WRITE`) or a new save into the same file would
//! show through, and `O_DIRECT` writers bypass the page cache the mapping
//! reads, so they may not show at all.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::uffd::host::system_page_size;
use std::os::fd::AsRawFd;

/// A private mapping of one block's pages; unmapped on drop (or handed to
/// C with [`BlockMap::into_raw`]).
#[derive(Debug)]
pub struct BlockMap {
    ptr: *mut u8,
    len: usize,
}

impl BlockMap {
    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes mapped (the block's `used_length`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Give up ownership: the caller unmaps (`munmap(ptr, len)`).
    pub fn into_raw(self) -> (*mut u8, usize) {
        let r = (self.ptr, self.len);
        std::mem::forget(self);
        r
    }
}

impl Drop for BlockMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map_ramblock` made.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn mmap(at: *mut u8, len: usize, flags: i32, fd: i32, off: u64, what: &str) -> Result<*mut u8> {
    // SAFETY: maps `len` bytes; with MAP_FIXED only over `at`, which the
    // caller of `map_ramblock` handed over (or our own fresh mapping).
    let p = unsafe {
        libc::mmap(
            at.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::last_os(what.to_string()));
    }
    Ok(p.cast())
}

/// Map block `block` of `img` privately. With `at` (page aligned), the
/// mapping replaces whatever the caller has mapped at `at` for the block's
/// `used_length` bytes (`MAP_FIXED`), e.g. a reserved guest RAM range.
///
/// # Safety
/// With `at`, the range `at..at+used_length` must be the caller's to
/// replace (no Rust references or other users of that memory).
pub unsafe fn map_ramblock(img: &Image, block: usize, at: Option<*mut u8>) -> Result<BlockMap> {
    let info = img.block_info(block)?;
    if !img.block_present_in_file(block)? {
        return Err(Error::NotFound(format!(
            "ramblock '{}' has no pages in this file (skipped by x-ignore-shared)",
            info.idstr
        )));
    }
    let sys = system_page_size();
    let what = format!("mapping ramblock '{}'", info.idstr);
    if img.chunk_bytes(block)?.is_some() {
        // Its slots hold zstd frames or unverified pages, not guest memory.
        return Err(Error::Unsupported(format!(
            "{what}: the block is chunked (compressed or checksummed): its slots cannot be mapped as memory; restore it on demand (mr_lazy_start), which decompresses and verifies one chunk per fault"
        )));
    }
    if info.pages_offset % sys != 0 || info.page_size % sys != 0 {
        return Err(Error::Unsupported(format!(
            "{what}: pages offset 0x{:x} or page size {} is not a multiple of the system page size {sys}",
            info.pages_offset, info.page_size
        )));
    }
    let len = usize::try_from(info.used_length)
        .map_err(|_| Error::OutOfRange(format!("{what}: too large")))?;
    let mut flags = libc::MAP_PRIVATE;
    let at = match at {
        Some(p) if p as u64 % sys != 0 => {
            return Err(Error::Invalid(format!(
                "{what}: address {p:p} is not page aligned"
            )))
        }
        Some(p) => {
            flags |= libc::MAP_FIXED;
            p
        }
        None => std::ptr::null_mut(),
    };
    let fd = img.channel().mapping_fd().as_raw_fd();
    let p = mmap(at, len, flags, fd, info.pages_offset, &what)?;
    let map = BlockMap { ptr: p, len };
    // The part past the end of the file: anonymous zero pages, not SIGBUS.
    let fsize = img.file_size()?;
    let in_file = fsize
        .saturating_sub(info.pages_offset)
        .min(info.used_length);
    let tail = in_file.div_ceil(sys) * sys;
    if tail < info.used_length {
        // SAFETY: inside our own mapping.
        let at = unsafe { p.add(tail as usize) };
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
        mmap(at, len - tail as usize, anon, -1, 0, &what)?;
    }
    zero_stale(img, block, &map, in_file)?;
    Ok(map)
}

/// Zero the absent pages whose slots hold data in the file.
fn zero_stale(img: &Image, block: usize, map: &BlockMap, in_file: u64) -> Result<()> {
    let info = img.block_info(block)?;
    let ps = info.page_size;
    let mut runs = Vec::new();
    img.present_runs(block, 0, info.used_length / ps, |s, n, set| {
        if !set {
            runs.push((s * ps, (s + n) * ps));
        }
    })?;
    let ch = img.channel();
    for (a, b) in runs {
        let b = b.min(in_file);
        let mut off = a;
        while off < b {
            let Some(d) = ch.next_data(info.pages_offset + off)? else {
                break;
            };
            let d = d - info.pages_offset;
            if d >= b {
                break;
            }
            let h = (ch.next_hole(info.pages_offset + d)? - info.pages_offset).min(b);
            // Whole pages: data extents are file-system blocks, pages of the
            // same size or a multiple.
            let (s, e) = (d / ps * ps, h.div_ceil(ps) * ps);
            // SAFETY: [s, e) lies inside our private mapping.
            unsafe { std::ptr::write_bytes(map.ptr.add(s as usize), 0, (e - s) as usize) };
            off = e;
        }
    }
    Ok(())
}
