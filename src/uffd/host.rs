//! What a userfaultfd service holds on to while its threads run: the
//! caller's host range, the image (shared or borrowed from a C handle) and
//! page-aligned staging buffers.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::memory::{GuestSlice, GuestSliceMut};
use std::sync::Arc;

/// The image a service reads from or writes to.
pub enum ImageRef {
    /// Kept alive by the service.
    Shared(Arc<Image>),
    /// Borrowed from a caller that keeps it alive until the service is
    /// stopped (the C handle's contract).
    Borrowed(*const Image),
}

// SAFETY: `Image` is `Send + Sync` (all its calls are safe from many
// threads); a borrowed pointer is valid for the service's life by the
// contract of `ImageRef::borrowed`.
unsafe impl Send for ImageRef {}
// SAFETY: as above.
unsafe impl Sync for ImageRef {}

impl ImageRef {
    /// Borrow an image the caller keeps open.
    ///
    /// # Safety
    /// `img` must stay valid (not closed or moved) until the service built
    /// on it has been stopped and dropped.
    pub unsafe fn borrowed(img: &Image) -> ImageRef {
        ImageRef::Borrowed(img)
    }
}

impl std::ops::Deref for ImageRef {
    type Target = Image;
    fn deref(&self) -> &Image {
        match self {
            ImageRef::Shared(a) => a,
            // SAFETY: valid for the service's life by `borrowed`'s contract.
            ImageRef::Borrowed(p) => unsafe { &**p },
        }
    }
}

/// The caller's memory a service covers: `len` bytes at `start`, as guest
/// memory (the guest and other threads use it while the service runs).
#[derive(Debug)]
pub struct HostRange {
    /// First address.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    mem: GuestSliceMut<'static>,
}

impl HostRange {
    /// Check a caller's pointer: non-NULL, aligned to the system page size,
    /// `len` a non-zero multiple of it.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes until the
    /// service built on it has stopped (the `'static` of the view is that
    /// contract; the service never outlives it).
    pub unsafe fn new(ptr: *mut u8, len: u64, what: &str) -> Result<HostRange> {
        let sys = system_page_size();
        let start = ptr as u64;
        if ptr.is_null() {
            return Err(Error::Invalid(format!(
                "{what}: host memory pointer is NULL"
            )));
        }
        if start % sys != 0 || len == 0 || len % sys != 0 {
            return Err(Error::Invalid(format!(
                "{what}: host memory 0x{start:x}+0x{len:x} must be aligned to the page size {sys} and a non-zero multiple of it"
            )));
        }
        start.checked_add(len).ok_or_else(|| {
            Error::Invalid(format!("{what}: host range 0x{start:x}+0x{len:x} wraps"))
        })?;
        let n = usize::try_from(len)
            .map_err(|_| Error::Invalid(format!("{what}: host range too large")))?;
        // SAFETY: forwarded contract.
        let mem = unsafe { GuestSliceMut::new(ptr, n) }?;
        Ok(HostRange { start, len, mem })
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// `n` bytes from `off`, for reading (bounds-checked).
    pub fn read(&self, off: u64, n: u64) -> Result<GuestSlice<'static>> {
        Ok(self.mem.subslice(off as usize, n as usize)?.as_read())
    }
}

/// The system page size (`sysconf(_SC_PAGESIZE)`).
pub fn system_page_size() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// The kernel page size backing `addr` (a huge page size on hugetlbfs) and
/// whether the mapping is shared. Asks the kernel with `PROCMAP_QUERY`
/// (Linux 6.11; unprivileged, one VMA), else reads `/proc/self/maps`
/// (cheap; `smaps` would walk the page tables of every mapping) and
/// `statfs`es a file-backed mapping through `/proc/self/map_files` to spot
/// hugetlbfs (that needs `CAP_CHECKPOINT_RESTORE` or `CAP_SYS_ADMIN`).
pub fn mapping_of(addr: u64) -> (u64, bool) {
    procmap_query(addr).unwrap_or_else(|| maps_lookup(addr))
}

/// `struct procmap_query` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `PROCMAP_QUERY_VMA_SHARED`.
const PROCMAP_VMA_SHARED: u64 = 8;

fn procmap_query(addr: u64) -> Option<(u64, bool)> {
    let maps = std::fs::File::open("/proc/self/maps").ok()?;
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_addr: addr,
        ..Default::default()
    };
    let req = libc::_IOWR::<ProcmapQuery>(b'f' as u32, 17);
    // SAFETY: PROCMAP_QUERY reads and writes exactly one `procmap_query`
    // (its size is in the request number and in `size`); the name and
    // build-id buffers are not asked for (sizes 0).
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&maps),
            req,
            &mut q as *mut ProcmapQuery,
        )
    };
    (r == 0 && q.vma_page_size != 0)
        .then_some((q.vma_page_size, q.vma_flags & PROCMAP_VMA_SHARED != 0))
}

fn maps_lookup(addr: u64) -> (u64, bool) {
    const HUGETLBFS_MAGIC: libc::__fsword_t = 0x9584_58f6;
    let sys = system_page_size();
    let Ok(text) = std::fs::read_to_string("/proc/self/maps") else {
        return (sys, false);
    };
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if !(a <= addr && addr < b) {
            continue;
        }
        let shared = perms.as_bytes().get(3) == Some(&b's');
        let inode = f.nth(2).unwrap_or("0");
        if inode == "0" {
            return (sys, shared);
        }
        let path = format!("/proc/self/map_files/{range}\0");
        let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: a NUL-terminated path and a statfs buffer of the right type.
        let r = unsafe { libc::statfs(path.as_ptr().cast(), st.as_mut_ptr()) };
        if r == 0 {
            // SAFETY: statfs succeeded and filled the structure.
            let st = unsafe { st.assume_init() };
            if st.f_type == HUGETLBFS_MAGIC && st.f_bsize as u64 > sys {
                return (st.f_bsize as u64, shared);
            }
        }
        return (sys, shared);
    }
    (sys, false)
}

/// Keep `range` out of child processes: `madvise(MADV_DONTFORK)`, as QEMU
/// does for guest RAM. A process forked while a service runs then has no
/// mapping there, and a touch in the child faults with `SIGSEGV` instead
/// of reading zeros from pages not yet filled (on-demand restore) or
/// memory nobody serves (snapshot). The mark is left in place afterwards:
/// whether the range was forkable before could only be learnt from
/// `/proc/self/smaps`, whose page-table walk costs ~10-20 ms per GiB of
/// populated memory in the process (measured): more than a snapshot's
/// whole pause budget. `madvise(MADV_DOFORK)` after the stop undoes it.
pub fn dont_fork(range: &HostRange, what: &str) -> Result<()> {
    // SAFETY: advice on the caller's mapping (checked by the kernel: an
    // unmapped range is ENOMEM); it changes what fork copies, not the
    // contents.
    let r = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.len as usize,
            libc::MADV_DONTFORK,
        )
    };
    if r != 0 {
        return Err(Error::last_os(format!(
            "{what}: madvise(MADV_DONTFORK) of 0x{:x}+0x{:x} (the range must be mapped, not VM_IO/PFNMAP)",
            range.start, range.len
        )));
    }
    Ok(())
}

/// A page-aligned anonymous buffer (good for `O_DIRECT`), unmapped on drop.
pub struct Staging {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned exclusively by this value.
unsafe impl Send for Staging {}
// SAFETY: shared references only hand out the address (`ptr`); writing
// through it is the caller's unsafe business, `zero` needs `&mut`.
unsafe impl Sync for Staging {}

impl Staging {
    /// `len` bytes of fresh anonymous memory.
    pub fn new(len: usize) -> Result<Staging> {
        // SAFETY: an anonymous private mapping of `len` bytes at an address
        // of the kernel's choice; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::last_os(format!(
                "allocating a {len}-byte staging buffer"
            )));
        }
        Ok(Staging {
            ptr: p.cast(),
            len: len.max(1),
        })
    }

    /// The first byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (at least one byte is mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[off, off+n)` as writable memory for the image's reads.
    pub fn guest_mut(&self, off: usize, n: usize) -> Result<GuestSliceMut<'_>> {
        assert!(off + n <= self.len);
        // SAFETY: inside our mapping, alive as long as the borrow of self;
        // only the thread owning this buffer writes it.
        unsafe { GuestSliceMut::new(self.ptr.add(off), n) }
    }

    /// Zero `[off, off+n)`.
    pub fn zero(&mut self, off: usize, n: usize) {
        assert!(off + n <= self.len);
        // SAFETY: inside our mapping (checked above).
        unsafe { std::ptr::write_bytes(self.ptr.add(off), 0, n) };
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
