//! Direct-I/O alignment discovery (`statx` `STATX_DIOALIGN`, then fallbacks)
//! and the `O_DIRECT` descriptor with its I/O paths.
//!
//! # Concurrency design
//!
//! * Aligned requests go to the `O_DIRECT` descriptor as they are.
//! * Unaligned requests are bounced in chunks of at most [`BOUNCE_MAX`]
//!   bytes, each chunk covering whole direct-I/O blocks; a partly covered
//!   edge block is read first (read-modify-write). Every write that covers a
//!   lock block (`max(offset alignment, page size)`) only partly holds that
//!   block's lock (see [`BlockLocks`]), so writers of disjoint bytes in one
//!   block serialise their read-modify-write and never lose each other's bytes.
//! * File size: a bounced write whose last block reaches past the current end
//!   of file would leave the file a whole block longer than `pwrite` would.
//!   Such writes take the size lock exclusively, write, and `ftruncate` back to
//!   `max(old size, offset + len)`. Every other I/O on the channel holds the
//!   size lock shared, so nobody writes into (or reads from) the transient
//!   tail, and no size is observed between the write and the truncation.
//! * Reads need no block locks: a concurrent read-modify-write rewrites the
//!   bytes it does not own with the values they already had.

use super::bounce::{AlignedBuf, BlockLocks, BOUNCE_MAX};
use super::sys::{self, Dir, IovCursor};
use crate::error::{Error, Result};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Alignment `O_DIRECT` needs on this file: of memory addresses, and of file
/// offsets and lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// Alignment, in bytes, of the memory address of each I/O buffer.
    pub mem: u32,
    /// Alignment, in bytes, of file offsets and of I/O lengths.
    pub offset: u32,
}

/// Used when neither `statx` nor the block device tells: safe for every
/// common device (logical blocks are 512 or 4096 bytes).
pub const DEFAULT_DIO_ALIGN: u32 = 4096;

/// Largest alignment accepted from the kernel (one bounce chunk).
const MAX_ALIGN: u32 = BOUNCE_MAX as u32;

fn sane(v: u32) -> bool {
    v.is_power_of_two() && v <= MAX_ALIGN
}

/// Pick the alignment from what the kernel reported, in order of trust:
/// `statx` `STATX_DIOALIGN` (if both values are set and sane), the block
/// device's logical block size, then [`DEFAULT_DIO_ALIGN`].
pub(crate) fn choose_align(statx: Option<(u32, u32)>, blksz: Option<u32>) -> DioAlign {
    if let Some((mem, offset)) = statx {
        if sane(mem) && sane(offset) {
            return DioAlign { mem, offset };
        }
    }
    if let Some(s) = blksz {
        if sane(s) {
            return DioAlign { mem: s, offset: s };
        }
    }
    DioAlign {
        mem: DEFAULT_DIO_ALIGN,
        offset: DEFAULT_DIO_ALIGN,
    }
}

fn statx_dioalign(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: an empty path with AT_EMPTY_PATH queries `fd` itself; `stx` is
    // a writable, zero-initialised `struct statx`.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: zero-initialised and (partly) filled by a successful statx;
    // every field is a plain integer.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

fn logical_block_size(fd: BorrowedFd<'_>) -> Option<u32> {
    let mut sz: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer; `sz` is valid.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::BLKSSZGET, &mut sz as *mut libc::c_int) };
    (r == 0 && sz > 0).then_some(sz as u32)
}

/// The direct-I/O alignment of the file open on `fd`.
pub(crate) fn discover(fd: BorrowedFd<'_>, blk: bool) -> DioAlign {
    let blksz = if blk { logical_block_size(fd) } else { None };
    choose_align(statx_dioalign(fd), blksz)
}

/// `v` rounded down to a multiple of `a`.
fn round_down(v: u64, a: u64) -> u64 {
    v - v % a
}

/// The page size when `sysconf` cannot tell (it always can on Linux).
const FALLBACK_PAGE_SIZE: u64 = 4096;

/// One caller request, for error messages.
pub(crate) struct Req<'a> {
    pub name: &'a str,
    pub op: &'static str,
    pub offset: u64,
    pub len: u64,
}

impl Req<'_> {
    pub(crate) fn err(&self, stage: &str, at: u64, e: io::Error) -> Error {
        Error::io(
            format!(
                "{} of {} bytes at offset {} of {}: {} at offset {}",
                self.op, self.len, self.offset, self.name, stage, at
            ),
            e,
        )
    }
}

enum SizeGuard<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

/// The `O_DIRECT` side of a channel.
pub(crate) struct Direct {
    fd: OwnedFd,
    align: DioAlign,
    /// The descriptor may be read (needed for read-modify-write).
    can_read: bool,
    blk: bool,
    size_lock: RwLock<()>,
    locks: BlockLocks,
    bounced: AtomicU64,
}

impl Direct {
    pub(crate) fn new(fd: OwnedFd, can_read: bool, blk: bool) -> Direct {
        let align = discover(fd.as_fd(), blk);
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = if page > 0 {
            page as u64
        } else {
            FALLBACK_PAGE_SIZE
        };
        let gran = page.max(align.offset as u64);
        Direct {
            fd,
            align,
            can_read,
            blk,
            size_lock: RwLock::new(()),
            locks: BlockLocks::new(gran),
            bounced: AtomicU64::new(0),
        }
    }

    pub(crate) fn align(&self) -> DioAlign {
        self.align
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub(crate) fn bounced(&self) -> u64 {
        self.bounced.load(Ordering::Relaxed)
    }

    /// The file offset and length alignment `O_DIRECT` needs.
    fn offset_align(&self) -> u64 {
        self.align.offset as u64
    }

    fn buf_align(&self) -> usize {
        (self.align.mem.max(self.align.offset) as usize).max(self.locks.gran() as usize)
    }

    /// A bounce buffer for the bytes `[pos, end)`: as small as the request,
    /// never larger than one chunk.
    fn bounce_buf(&self, req: &Req<'_>, pos: u64, end: u64) -> Result<AlignedBuf> {
        let a = self.offset_align();
        let span = end.next_multiple_of(a) - round_down(pos, a);
        let len = span.min(BOUNCE_MAX as u64) as usize;
        AlignedBuf::new(len, self.buf_align()).ok_or_else(|| {
            req.err(
                &format!("allocating a {len}-byte bounce buffer"),
                pos,
                io::Error::from_raw_os_error(libc::ENOMEM),
            )
        })
    }

    /// Hold the size lock shared for metadata-path I/O (see module docs).
    pub(crate) fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.size_lock.read()
    }

    /// Hold the size lock exclusively (truncation).
    pub(crate) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.size_lock.write()
    }

    /// Lock the partly covered lock blocks of `[start, end)`.
    pub(crate) fn lock_edges(&self, start: u64, end: u64) -> super::bounce::EdgeGuard<'_> {
        self.locks.lock_edges(start, end)
    }

    fn size(&self, req: &Req<'_>) -> Result<u64> {
        sys::file_size(self.fd.as_fd(), self.blk)
            .map_err(|e| req.err("querying the file size", req.offset, e))
    }

    /// Write every byte of `iov` (`total` bytes, non-zero) at `offset`.
    ///
    /// # Safety
    /// The iovecs must be valid for reads.
    pub(crate) unsafe fn write(
        &self,
        req: &Req<'_>,
        iov: &[libc::iovec],
        offset: u64,
        total: u64,
    ) -> Result<()> {
        let a = self.offset_align();
        let end = offset + total;
        let cur = IovCursor::new(iov);
        let aligned = offset % a == 0 && cur.all_aligned(self.align.mem as usize, a as usize);
        let end_r = end.next_multiple_of(a);
        let mut guard = SizeGuard::Shared(self.size_lock.read());
        let mut trunc_to = None;
        if !aligned && !self.blk && end_r > end && end_r > self.size(req)? {
            drop(guard);
            guard = SizeGuard::Exclusive(self.size_lock.write());
            let s = self.size(req)?;
            if end_r > s {
                trunc_to = Some(s.max(end));
            }
        }
        // SAFETY: forwarded caller contract.
        let res = unsafe { self.write_inner(req, cur, offset, end, aligned) };
        if let Some(t) = trunc_to {
            let fix = self.size(req).and_then(|s| {
                if s > t {
                    sys::ftruncate(self.fd.as_fd(), t)
                        .map_err(|e| req.err("truncating the block-rounded tail back", t, e))
                } else {
                    Ok(())
                }
            });
            res?;
            fix?;
        } else {
            res?;
        }
        drop(guard);
        Ok(())
    }

    /// Write what the cursor holds at `pos`: through `O_DIRECT` as it is
    /// while everything left is aligned (`all_aligned`, and again before
    /// every further call after a short one), the rest bounced.
    ///
    /// # Safety
    /// The iovecs must be valid for reads.
    unsafe fn write_inner(
        &self,
        req: &Req<'_>,
        mut cur: IovCursor<'_>,
        mut pos: u64,
        end: u64,
        all_aligned: bool,
    ) -> Result<()> {
        if all_aligned {
            let _g = self.locks.lock_edges(pos, end);
            // SAFETY: forwarded caller contract (iovecs readable).
            unsafe {
                sys::transfer(Dir::Write, self.fd.as_fd(), &mut cur, &mut pos, |c, p| {
                    self.aligned_at(c, p)
                })
            }
            .map_err(|e| req.err("O_DIRECT pwritev", pos, e))?;
        }
        if cur.is_empty() {
            return Ok(());
        }
        // SAFETY: forwarded caller contract.
        unsafe { self.bounce_write(req, cur, pos, end) }
    }

    /// Can the next direct call start at `pos` with what `cur` has left?
    fn aligned_at(&self, cur: &IovCursor<'_>, pos: u64) -> bool {
        let a = self.offset_align();
        pos % a == 0 && cur.head_aligned(self.align.mem as usize, a as usize)
    }

    /// Read-modify-write helper: fill `p[..a]` with the block at `off`,
    /// zeros past end of file.
    ///
    /// # Safety
    /// `p` must be valid for writes of `a` bytes.
    unsafe fn read_block(&self, req: &Req<'_>, p: *mut u8, off: u64) -> Result<()> {
        let a = self.offset_align() as usize;
        if !self.can_read {
            return Err(req.err(
                "read-modify-write of the unaligned edge block (the file is open write-only; \
                 open it for reading too, or write whole aligned blocks)",
                off,
                io::Error::from_raw_os_error(libc::EBADF),
            ));
        }
        // SAFETY: `p` is writable for `a` bytes (caller contract).
        let k = unsafe { sys::pread_full(self.fd.as_fd(), p, a, off, Some(a)) }
            .map_err(|e| req.err("O_DIRECT read of the edge block", off, e))?;
        // SAFETY: `k <= a`, so `p + k .. p + a` is inside the buffer.
        unsafe { std::ptr::write_bytes(p.add(k), 0, a - k) };
        Ok(())
    }

    /// # Safety
    /// The iovecs must be valid for reads, `end - pos` bytes must be left.
    unsafe fn bounce_write(
        &self,
        req: &Req<'_>,
        mut cur: IovCursor<'_>,
        mut pos: u64,
        end: u64,
    ) -> Result<()> {
        let a = self.offset_align();
        let mut buf = self.bounce_buf(req, pos, end)?;
        self.bounced.fetch_add(end - pos, Ordering::Relaxed);
        let chunk = BOUNCE_MAX as u64;
        while pos < end {
            let cend = end.min((pos / chunk + 1) * chunk);
            let bstart = round_down(pos, a);
            let bend = cend.next_multiple_of(a);
            let n = (bend - bstart) as usize;
            debug_assert!(n <= buf.len());
            let p = buf.as_mut_ptr();
            let _g = self.locks.lock_edges(pos, cend);
            if pos != bstart {
                // SAFETY: `n >= a`, so the first block fits in the buffer.
                unsafe { self.read_block(req, p, bstart)? };
            }
            if cend != bend && !(pos != bstart && bend - a == bstart) {
                // SAFETY: `n >= a`; the last block is `p + n - a .. p + n`.
                unsafe { self.read_block(req, p.add(n - a as usize), bend - a)? };
            }
            // SAFETY: `pos - bstart + (cend - pos) <= n` bytes of the buffer;
            // the iovecs are readable and have at least that many bytes left;
            // our own buffer cannot overlap caller memory.
            unsafe { cur.copy_out(p.add((pos - bstart) as usize), (cend - pos) as usize) };
            // SAFETY: the first `n` bytes of the buffer are initialised.
            unsafe { sys::pwrite_all(self.fd.as_fd(), p, n, bstart) }
                .map_err(|e| req.err("O_DIRECT write of the bounce buffer", bstart, e))?;
            pos = cend;
        }
        Ok(())
    }

    /// Read into `iov` from `offset` until full or end of file.
    ///
    /// # Safety
    /// The iovecs must be valid for writes.
    pub(crate) unsafe fn read(
        &self,
        req: &Req<'_>,
        buffered: BorrowedFd<'_>,
        iov: &[libc::iovec],
        offset: u64,
        total: u64,
    ) -> Result<u64> {
        let a = self.offset_align();
        let mem = self.align.mem as usize;
        let _g = self.size_lock.read();
        let mut cur = IovCursor::new(iov);
        let mut pos = offset;
        let end = offset + total;
        let mut all_aligned = offset % a == 0 && cur.all_aligned(mem, a as usize);
        // O_DIRECT reads the whole last block into the caller's memory and
        // only then clamps the count to the file size; a request that
        // crosses end of file is bounced so that the caller's bytes past
        // the returned count stay untouched. (The size cannot shrink while
        // the size lock is held shared.)
        if all_aligned && end > self.size(req)? {
            all_aligned = false;
        }
        if all_aligned {
            // SAFETY: the iovecs are writable (caller contract).
            let eof = unsafe {
                sys::transfer(Dir::Read, self.fd.as_fd(), &mut cur, &mut pos, |c, p| {
                    self.aligned_at(c, p)
                })
            }
            .map_err(|e| req.err("O_DIRECT preadv", pos, e))?;
            if eof {
                return Ok(pos - offset);
            }
        }
        if !cur.is_empty() {
            // SAFETY: forwarded caller contract.
            pos = unsafe { self.bounce_read(req, buffered, cur, pos, end)? };
        }
        Ok(pos - offset)
    }

    /// Returns the position reached (`end`, or end of file).
    ///
    /// # Safety
    /// The iovecs must be valid for writes, `end - pos` bytes must be left.
    unsafe fn bounce_read(
        &self,
        req: &Req<'_>,
        buffered: BorrowedFd<'_>,
        mut cur: IovCursor<'_>,
        mut pos: u64,
        end: u64,
    ) -> Result<u64> {
        let a = self.offset_align();
        let mut buf = self.bounce_buf(req, pos, end)?;
        self.bounced.fetch_add(end - pos, Ordering::Relaxed);
        let chunk = BOUNCE_MAX as u64;
        while pos < end {
            let cend = end.min((pos / chunk + 1) * chunk);
            let bstart = round_down(pos, a);
            let n = (cend.next_multiple_of(a) - bstart) as usize;
            let p = buf.as_mut_ptr();
            // SAFETY: the buffer holds at least `n` bytes.
            let mut k = unsafe { sys::pread_full(self.fd.as_fd(), p, n, bstart, Some(a as usize)) }
                .map_err(|e| req.err("O_DIRECT read into the bounce buffer", bstart, e))?;
            if k < n && k > 0 && bstart + (k as u64) < self.size(req)? {
                // An unaligned short count before end of file: not something
                // O_DIRECT does, but finish the chunk through the page cache
                // rather than return a short read.
                // SAFETY: `p + k .. p + n` is inside the buffer.
                k += unsafe { sys::pread_full(buffered, p.add(k), n - k, bstart + k as u64, None) }
                    .map_err(|e| req.err("buffered read", bstart + k as u64, e))?;
            }
            let skip = (pos - bstart) as usize;
            let want = (cend - pos) as usize;
            let avail = k.saturating_sub(skip).min(want);
            // SAFETY: `skip + avail <= k <= n` bytes of the buffer were read;
            // the iovecs are writable with at least `avail` bytes left.
            unsafe { cur.copy_in(p.add(skip), avail) };
            pos += avail as u64;
            if avail < want {
                break;
            }
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_fallbacks() {
        assert_eq!(
            choose_align(Some((4, 512)), None),
            DioAlign {
                mem: 4,
                offset: 512
            }
        );
        // The kernel knows the field but the file system reports 0.
        assert_eq!(
            choose_align(Some((0, 0)), Some(512)),
            DioAlign {
                mem: 512,
                offset: 512
            }
        );
        assert_eq!(
            choose_align(Some((0, 0)), None),
            DioAlign {
                mem: 4096,
                offset: 4096
            }
        );
        // Nonsense values are not trusted.
        assert_eq!(
            choose_align(Some((3, 1000)), None),
            DioAlign {
                mem: 4096,
                offset: 4096
            }
        );
        assert_eq!(
            choose_align(None, Some(1 << 30)),
            DioAlign {
                mem: 4096,
                offset: 4096
            }
        );
        assert_eq!(
            choose_align(None, Some(4096)),
            DioAlign {
                mem: 4096,
                offset: 4096
            }
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(round_down(1023, 512), 512);
        assert_eq!(round_down(1024, 512), 1024);
        assert_eq!(round_down(0, 512), 0);
    }
}
