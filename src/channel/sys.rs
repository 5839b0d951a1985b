//! Thin, complete wrappers over the positional system calls, and a cursor
//! over a caller's iovec array.
//!
//! Everything here retries `EINTR`. Nothing here touches a file offset.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most iovecs one `preadv`/`pwritev` accepts (`UIO_MAXIOV` on Linux).
/// Longer arrays are split over several calls.
pub const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// The part of an iovec array that has not been transferred yet.
pub(crate) struct IovCursor<'a> {
    iov: &'a [libc::iovec],
    idx: usize,
    /// Bytes of `iov[idx]` already transferred.
    skip: usize,
}

impl<'a> IovCursor<'a> {
    pub(crate) fn new(iov: &'a [libc::iovec]) -> Self {
        let mut c = IovCursor {
            iov,
            idx: 0,
            skip: 0,
        };
        c.skip_empty();
        c
    }

    fn skip_empty(&mut self) {
        while self.idx < self.iov.len() && self.iov[self.idx].iov_len == self.skip {
            self.idx += 1;
            self.skip = 0;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.idx >= self.iov.len()
    }

    /// Mark `n` more bytes as transferred. `n` must not exceed what is left.
    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 && self.idx < self.iov.len() {
            let rem = self.iov[self.idx].iov_len - self.skip;
            if n < rem {
                self.skip += n;
                return;
            }
            n -= rem;
            self.idx += 1;
            self.skip = 0;
        }
        self.skip_empty();
    }

    /// The current (non-empty) iovec with its transferred part cut off.
    fn head(&self) -> libc::iovec {
        let v = self.iov[self.idx];
        libc::iovec {
            iov_base: (v.iov_base as usize + self.skip) as *mut libc::c_void,
            iov_len: v.iov_len - self.skip,
        }
    }

    /// Is the current iovec's remainder aligned (base to `mem`, length to
    /// `len`)? The iovecs after it are not looked at. True when empty.
    pub(crate) fn head_aligned(&self, mem: usize, len: usize) -> bool {
        if self.is_empty() {
            return true;
        }
        let h = self.head();
        (h.iov_base as usize) % mem == 0 && h.iov_len % len == 0
    }

    /// Is everything that is left aligned (bases to `mem`, lengths to `len`)?
    pub(crate) fn all_aligned(&self, mem: usize, len: usize) -> bool {
        if self.is_empty() {
            return true;
        }
        self.head_aligned(mem, len)
            && self.iov[self.idx + 1..].iter().all(|v| {
                v.iov_len == 0 || ((v.iov_base as usize) % mem == 0 && v.iov_len % len == 0)
            })
    }

    /// The iovecs for one system call: the adjusted current iovec alone when
    /// it was partly transferred, else up to [`IOV_MAX`] of the caller's.
    fn batch<'s>(&'s self, scratch: &'s mut [libc::iovec; 1]) -> &'s [libc::iovec] {
        if self.skip > 0 {
            scratch[0] = self.head();
            &scratch[..]
        } else {
            let end = self.iov.len().min(self.idx + IOV_MAX);
            &self.iov[self.idx..end]
        }
    }

    /// Copy the next `len` bytes out of the iovecs into `dst` and advance.
    ///
    /// # Safety
    /// The iovecs must be valid for reads, `dst` valid for writes of `len`
    /// bytes, the two must not overlap, and at least `len` bytes must be left.
    pub(crate) unsafe fn copy_out(&mut self, mut dst: *mut u8, mut len: usize) {
        while len > 0 && !self.is_empty() {
            let h = self.head();
            let n = h.iov_len.min(len);
            // SAFETY: `h` lies inside a caller iovec valid for reads (caller
            // contract); `dst` has room for `len >= n` bytes; no overlap.
            unsafe { std::ptr::copy_nonoverlapping(h.iov_base as *const u8, dst, n) };
            // SAFETY: `n <= len`, so this stays inside (or one past) `dst`.
            dst = unsafe { dst.add(n) };
            len -= n;
            self.advance(n);
        }
    }

    /// Copy `len` bytes from `src` into the next bytes of the iovecs and
    /// advance.
    ///
    /// # Safety
    /// The iovecs must be valid for writes, `src` valid for reads of `len`
    /// bytes, the two must not overlap, and at least `len` bytes must be left.
    pub(crate) unsafe fn copy_in(&mut self, mut src: *const u8, mut len: usize) {
        while len > 0 && !self.is_empty() {
            let h = self.head();
            let n = h.iov_len.min(len);
            // SAFETY: `h` lies inside a caller iovec valid for writes (caller
            // contract); `src` holds `len >= n` readable bytes; no overlap.
            unsafe { std::ptr::copy_nonoverlapping(src, h.iov_base as *mut u8, n) };
            // SAFETY: `n <= len`, so this stays inside (or one past) `src`.
            src = unsafe { src.add(n) };
            len -= n;
            self.advance(n);
        }
    }
}

fn retry<F: FnMut() -> isize>(mut f: F) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `pwritev` / `preadv` as one function type.
type VectoredFn = unsafe extern "C" fn(
    libc::c_int,
    *const libc::iovec,
    libc::c_int,
    libc::off_t,
) -> libc::ssize_t;

/// One vectored call over (a prefix of) what the cursor has left, retried
/// on `EINTR`. Does not advance.
///
/// # Safety
/// The cursor's iovecs must be valid for what `f` does with them.
unsafe fn vectored_once(
    f: VectoredFn,
    fd: BorrowedFd<'_>,
    cur: &IovCursor<'_>,
    off: u64,
) -> io::Result<usize> {
    let mut scratch = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }];
    let b = cur.batch(&mut scratch);
    retry(|| {
        // SAFETY: `b` is a valid iovec array of at most IOV_MAX entries whose
        // memory is valid for `f` (caller contract).
        unsafe {
            f(
                fd.as_raw_fd(),
                b.as_ptr(),
                b.len() as libc::c_int,
                off as libc::off_t,
            )
        }
    })
}

/// Which way a [`transfer`] moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Memory to file (`pwritev`).
    Write,
    /// File to memory (`preadv`).
    Read,
}

/// The one loop over positional vectored calls: move bytes between what the
/// cursor has left and the file at `*pos`, advancing both, while
/// `go(cursor, *pos)` allows (asked before every call) and until the cursor
/// is empty. Every call is retried on `EINTR`; arrays longer than
/// [`IOV_MAX`] take several calls. Returns `true` when a read stopped at
/// end of file (a call transferred 0 bytes); a write that transfers 0 bytes
/// is a `WriteZero` error. On error, `*pos` is where the failing call
/// started.
///
/// # Safety
/// The cursor's iovecs must be valid for reads (`Dir::Write`) or writes
/// (`Dir::Read`) for the duration of the call.
pub(crate) unsafe fn transfer(
    dir: Dir,
    fd: BorrowedFd<'_>,
    cur: &mut IovCursor<'_>,
    pos: &mut u64,
    mut go: impl FnMut(&IovCursor<'_>, u64) -> bool,
) -> io::Result<bool> {
    let call: VectoredFn = match dir {
        Dir::Write => libc::pwritev,
        Dir::Read => libc::preadv,
    };
    while !cur.is_empty() && go(cur, *pos) {
        // SAFETY: forwarded caller contract; pwritev only reads the
        // buffers, preadv writes them.
        let n = unsafe { vectored_once(call, fd, cur, *pos) }?;
        if n == 0 {
            return match dir {
                Dir::Read => Ok(true),
                Dir::Write => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the write transferred 0 bytes",
                )),
            };
        }
        cur.advance(n);
        *pos += n as u64;
    }
    Ok(false)
}

/// One iovec over `len` bytes at `buf`.
fn single(buf: *const u8, len: usize) -> [libc::iovec; 1] {
    [libc::iovec {
        iov_base: buf as *mut libc::c_void,
        iov_len: len,
    }]
}

/// Write all `len` bytes at `buf` to `off`. A write of 0 bytes is
/// `WriteZero` (maps to `ENOSPC`).
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub(crate) unsafe fn pwrite_all(
    fd: BorrowedFd<'_>,
    buf: *const u8,
    len: usize,
    off: u64,
) -> io::Result<()> {
    let iov = single(buf, len);
    let mut pos = off;
    // SAFETY: the one iovec is readable (caller contract).
    unsafe {
        transfer(
            Dir::Write,
            fd,
            &mut IovCursor::new(&iov),
            &mut pos,
            |_, _| true,
        )
    }?;
    Ok(())
}

/// Read into `buf[..len]` from `off` until full or end of file; returns the
/// count. With `stop_unaligned = Some(a)` (an `O_DIRECT` descriptor) it also
/// stops after a count that is not a multiple of `a`: `O_DIRECT` returns such
/// counts only at end of file, and a retry at an unaligned offset would fail.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub(crate) unsafe fn pread_full(
    fd: BorrowedFd<'_>,
    buf: *mut u8,
    len: usize,
    off: u64,
    stop_unaligned: Option<usize>,
) -> io::Result<usize> {
    let iov = single(buf, len);
    let mut pos = off;
    let aligned =
        |_: &IovCursor<'_>, pos: u64| stop_unaligned.is_none_or(|a| (pos - off) % a as u64 == 0);
    // SAFETY: the one iovec is writable (caller contract).
    unsafe { transfer(Dir::Read, fd, &mut IovCursor::new(&iov), &mut pos, aligned) }?;
    Ok((pos - off) as usize)
}

/// `fstat`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a writable `struct stat`; `fd` is open.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// Clear `O_NONBLOCK` from the open file description of `fd`.
pub(crate) fn clear_nonblock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and set the status flags of an
    // open descriptor; no memory is involved.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn is_blk(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFBLK
}

/// Size of the file (regular file: `st_size`; block device: `SEEK_END`).
pub(crate) fn file_size(fd: BorrowedFd<'_>, blk: bool) -> io::Result<u64> {
    if blk {
        // SAFETY: lseek on an open descriptor; it only moves that open file
        // description's offset, which this crate never uses for I/O.
        let r = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as u64)
    } else {
        Ok(fstat(fd)?.st_size as u64)
    }
}

pub(crate) fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain system call on an open descriptor.
        let r = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(b: &[u8]) -> libc::iovec {
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }
    }

    #[test]
    fn cursor_advances_through_partial_and_empty_iovecs() {
        let data: Vec<u8> = (0..100u8).collect();
        let iov = [
            v(&data[0..0]),
            v(&data[0..10]),
            v(&data[10..10]),
            v(&data[10..100]),
        ];
        let mut c = IovCursor::new(&iov);
        assert!(!c.is_empty());
        c.advance(4);
        let mut scratch = [v(&[])];
        let b = c.batch(&mut scratch);
        // A partly transferred iovec is passed alone, cut at the skip.
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].iov_base as usize, data.as_ptr() as usize + 4);
        assert_eq!(b[0].iov_len, 6);
        c.advance(6);
        // The empty iovec is skipped; the batch is the caller's slice again.
        let b = c.batch(&mut scratch);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].iov_len, 90);
        let mut out = [0u8; 50];
        // SAFETY: `data` is readable, `out` writable for 50 bytes, 90 left.
        unsafe { c.copy_out(out.as_mut_ptr(), 50) };
        assert_eq!(&out[..], &data[10..60]);
        c.advance(40);
        assert!(c.is_empty());
        assert!(c.all_aligned(4096, 512));
    }

    #[test]
    fn batches_never_exceed_iov_max() {
        let data = vec![0u8; 3000];
        let iov: Vec<libc::iovec> = data.chunks(1).map(v).collect();
        let mut c = IovCursor::new(&iov);
        let mut scratch = [v(&[])];
        assert_eq!(c.batch(&mut scratch).len(), IOV_MAX);
        c.advance(IOV_MAX * 2 + 5);
        assert_eq!(c.batch(&mut scratch).len(), 3000 - IOV_MAX * 2 - 5);
    }

    #[test]
    fn alignment_checks() {
        let mut buf = vec![0u8; 3 * 4096];
        let off = (4096 - buf.as_ptr() as usize % 4096) % 4096;
        let a = &mut buf[off..off + 8192];
        let iov = [v(&a[..4096]), v(&a[4096..4096]), v(&a[4096..])];
        let mut c = IovCursor::new(&iov);
        assert!(c.all_aligned(4096, 512));
        c.advance(512);
        assert!(!c.head_aligned(4096, 512));
        assert!(c.head_aligned(512, 512));
        c.advance(1);
        assert!(!c.head_aligned(1, 512));
        let iov = [v(&a[1..513])];
        assert!(!IovCursor::new(&iov).all_aligned(4096, 512));
        assert!(IovCursor::new(&iov).all_aligned(1, 512));
    }
}
