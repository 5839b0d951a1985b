//! Channel: a thread-safe, seekable file channel with positional I/O only.
//!
//! Two descriptors: a buffered one for small or unaligned metadata, and (with
//! [`OpenFlags::DIRECT`]) an `O_DIRECT` one for aligned bulk data. Aligned
//! requests go straight through `O_DIRECT` with zero copies; anything else is
//! bounced through aligned buffers (see `bounce`), with read-modify-write of
//! the unaligned edge blocks under a block lock. Every transfer is complete:
//! short transfers and `EINTR` are retried.
//!
//! INTERFACE CONTRACT (used by the image and engine layers; keep it):
//! - `Channel: Send + Sync`; every method takes `&self` except `close`
//!   and `release` (one shared reference's close).
//! - `pwritev_raw` writes all bytes or fails; `preadv_raw` reads until the
//!   iovecs are full or end of file and returns the count.
//! - `write_all_at` / `read_at` use the buffered descriptor (metadata).
//! - Errors name the path (or "fd N"), the offset and the length.
//!
//! Further guarantees of this implementation:
//! - Any iovec count works: arrays longer than `IOV_MAX` (1024) are split
//!   over several system calls (like any short transfer, not atomically).
//!   A NULL base with a non-zero length, or a range past `i64::MAX`, is
//!   `Error::Invalid`; an empty list (or only empty iovecs) returns 0.
//! - Writes leave the file size exactly as `pwrite` would, also when an
//!   unaligned tail was written as a whole `O_DIRECT` block; reads past end
//!   of file return short counts and leave the caller's bytes past the count
//!   untouched.
//! - Concurrent writers of disjoint bytes never lose each other's bytes,
//!   whether they share a direct-I/O block or a page, and whether they use
//!   `pwritev_raw` or `write_all_at` (see `direct.rs` for the lock design).
//!   Overlapping concurrent writes have no defined winner.
//! - Writing on a channel without `WRITE` is `Error::ReadOnly`; reading on
//!   one without `READ` is an `EBADF` error. A write-only `DIRECT` channel
//!   opens its `O_DIRECT` descriptor read-write when permitted, so unaligned
//!   writes can read-modify-write; where that is refused, unaligned writes
//!   fail with `EBADF` and a message saying why.
//! - `next_data`/`next_hole` use `lseek`, which moves an open file
//!   description's offset; this crate never uses that offset, but a
//!   `from_fd` caller without `DIRECT` shares it with the channel.

mod bounce;
mod direct;
mod fault;
mod holes;
mod lock;
mod open;
mod sys;

pub use direct::{DioAlign, DEFAULT_DIO_ALIGN};
pub use fault::{FaultFn, FaultOp, Trace, TraceOp};
pub use lock::{lock_fd, LockKind, IMAGE_LOCK_OFFSET};
pub use open::OpenFlags;
pub use sys::IOV_MAX;

use crate::error::{Error, Result};
use direct::{Direct, Req};
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use sys::{Dir, IovCursor};

/// A thread-safe file channel. See the module docs.
///
/// Large iovec arrays: any number of iovecs works; more than `IOV_MAX`
/// (1024) are split over several system calls (like any short transfer, the
/// request is then not one atomic system call).
///
/// # Example
///
/// Positional I/O only: threads share one channel without a cursor, and an
/// unaligned request works under `O_DIRECT` too (bounced through an aligned
/// buffer):
///
/// ```
/// use mappedram::{Channel, OpenFlags};
/// use std::sync::Arc;
///
/// # fn main() -> mappedram::Result<()> {
/// let path = std::env::temp_dir().join(format!("doc-channel-{}.bin", std::process::id()));
/// let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::DIRECT;
/// let ch = Arc::new(Channel::open(&path, flags)?);
/// let writers: Vec<_> = (0..4u8)
///     .map(|i| {
///         let ch = Arc::clone(&ch);
///         std::thread::spawn(move || ch.write_all_at(&[i; 100], 4096 * u64::from(i) + 7))
///     })
///     .collect();
/// for w in writers {
///     w.join().unwrap()?;
/// }
/// ch.sync()?; // fdatasync
/// let mut back = [0u8; 100];
/// assert_eq!(ch.read_at(&mut back, 4096 * 3 + 7)?, 100);
/// assert_eq!(back, [3u8; 100]);
/// # drop(ch);
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
pub struct Channel {
    name: String,
    flags: OpenFlags,
    /// Buffered descriptor (metadata, sync, size, holes).
    file: OwnedFd,
    /// The `O_DIRECT` side, with `OpenFlags::DIRECT`.
    direct: Option<Direct>,
    /// Test-only fault injector (see `fault`).
    faults: fault::Faults,
    /// Something was written since the last successful `sync` started (set
    /// when a mutating call returns, so a write racing a sync is synced by
    /// the next one). Lets `sync_if_needed` and `close` skip a redundant
    /// `fdatasync`.
    unsynced: std::sync::atomic::AtomicBool,
}

/// Sets `unsynced` when a mutating call returns (success or not).
struct MarkUnsynced<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for MarkUnsynced<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

// The contract: one handle is shared by many threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Channel>();
};

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("flags", &self.flags)
            .field("fd", &self.file.as_raw_fd())
            .field("dio_align", &self.dio_align())
            .finish()
    }
}

impl Channel {
    /// Testing facility: install (or remove with `None`) a fault injector,
    /// consulted before every write, read, sync (including `close`'s),
    /// truncate and hole punch; `Some(errno)` fails that operation without
    /// touching the file. See [`FaultOp`].
    pub fn set_fault_injector(&self, f: Option<FaultFn>) {
        self.faults.set(f);
    }

    /// The path (or "fd N") used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The flags the channel was opened with (validated, as given).
    pub fn flags(&self) -> OpenFlags {
        self.flags
    }

    /// The buffered descriptor, for mapping the file (`mmap`); reads and
    /// writes go through the positional calls.
    pub fn mapping_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The direct-I/O alignment, when the channel has an `O_DIRECT` descriptor.
    pub fn dio_align(&self) -> Option<DioAlign> {
        self.direct.as_ref().map(Direct::align)
    }

    /// Bytes that went through bounce buffers so far (unaligned I/O on an
    /// `O_DIRECT` channel); aligned requests add nothing. For tests and
    /// diagnostics.
    pub fn bounced_bytes(&self) -> u64 {
        self.direct.as_ref().map_or(0, Direct::bounced)
    }

    fn check_write(&self, op: &str, offset: u64, len: u64) -> Result<()> {
        if !self.flags.contains(OpenFlags::WRITE) {
            return Err(Error::ReadOnly(format!(
                "{op} of {len} bytes at offset {offset} of {}: the channel was opened without MR_OPEN_WRITE",
                self.name
            )));
        }
        Ok(())
    }

    fn check_read(&self, op: &str, offset: u64, len: u64) -> Result<()> {
        if !self.flags.contains(OpenFlags::READ) {
            return Err(Error::from_errno(
                format!(
                    "{op} of {len} bytes at offset {offset} of {}: the channel was opened without MR_OPEN_READ",
                    self.name
                ),
                libc::EBADF,
            ));
        }
        Ok(())
    }

    /// Total length of `iov`, checked: no NULL base with a length, no
    /// overflow, `offset + total` within `off_t`.
    fn iov_total(&self, op: &str, iov: &[libc::iovec], offset: u64) -> Result<u64> {
        let mut total: u64 = 0;
        for (i, v) in iov.iter().enumerate() {
            if v.iov_base.is_null() && v.iov_len != 0 {
                return Err(Error::Invalid(format!(
                    "{op} at offset {offset} of {}: iovec {i} has a NULL base and length {}",
                    self.name, v.iov_len
                )));
            }
            total = total.checked_add(v.iov_len as u64).ok_or_else(|| {
                Error::Invalid(format!(
                    "{op} at offset {offset} of {}: the iovec lengths overflow",
                    self.name
                ))
            })?;
        }
        self.check_range(op, offset, total)?;
        Ok(total)
    }

    fn check_range(&self, op: &str, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= i64::MAX as u64 => Ok(()),
            _ => Err(Error::Invalid(format!(
                "{op} of {len} bytes at offset {offset} of {}: the range ends past the largest file offset",
                self.name
            ))),
        }
    }

    /// What every vectored call does first: count the bytes (checked) and
    /// check the access mode. The request may be empty; the caller asks the
    /// fault injector next (a write shows it the data).
    fn begin_vectored(&self, dir: Dir, iov: &[libc::iovec], offset: u64) -> Result<Req<'_>> {
        let op = match dir {
            Dir::Write => "pwritev",
            Dir::Read => "preadv",
        };
        let total = self.iov_total(op, iov, offset)?;
        match dir {
            Dir::Write => self.check_write(op, offset, total)?,
            Dir::Read => self.check_read(op, offset, total)?,
        }
        Ok(Req {
            name: &self.name,
            op,
            offset,
            len: total,
        })
    }

    /// Move `req` through the buffered descriptor; returns the bytes moved
    /// (fewer than `req.len` only for a read that reached end of file).
    ///
    /// # Safety
    /// Each iovec must describe memory valid for reads (`Dir::Write`) or
    /// writes (`Dir::Read`) of `iov_len` bytes for the duration of the call.
    unsafe fn buffered_vectored(
        &self,
        dir: Dir,
        req: &Req<'_>,
        iov: &[libc::iovec],
    ) -> Result<u64> {
        let mut pos = req.offset;
        let mut cur = IovCursor::new(iov);
        // SAFETY: forwarded caller contract (readable for a write, writable
        // for a read).
        unsafe { sys::transfer(dir, self.file.as_fd(), &mut cur, &mut pos, |_, _| true) }
            .map_err(|e| req.err(req.op, pos, e))?;
        Ok(pos - req.offset)
    }

    /// Write every byte of `iov` at `offset` (`O_DIRECT` when aligned).
    ///
    /// # Safety
    /// Each iovec must describe memory valid for reads of `iov_len` bytes for
    /// the duration of the call.
    pub unsafe fn pwritev_raw(&self, iov: &[libc::iovec], offset: u64) -> Result<u64> {
        let _mark = MarkUnsynced(&self.unsynced);
        let req = self.begin_vectored(Dir::Write, iov, offset)?;
        // SAFETY: forwarded caller contract; `req.len` is the iovecs' sum.
        unsafe {
            self.faults
                .check_write_iov(&self.name, offset, req.len, iov)?
        };
        if req.len == 0 {
            return Ok(0);
        }
        match &self.direct {
            // SAFETY: forwarded caller contract.
            Some(d) => unsafe { d.write(&req, iov, offset, req.len)? },
            // SAFETY: forwarded caller contract (the iovecs are readable).
            None => _ = unsafe { self.buffered_vectored(Dir::Write, &req, iov)? },
        }
        Ok(req.len)
    }

    /// Read into `iov` from `offset` until full or end of file; returns the
    /// number of bytes read (`O_DIRECT` when aligned).
    ///
    /// # Safety
    /// Each iovec must describe memory valid for writes of `iov_len` bytes for
    /// the duration of the call.
    pub unsafe fn preadv_raw(&self, iov: &[libc::iovec], offset: u64) -> Result<u64> {
        let req = self.begin_vectored(Dir::Read, iov, offset)?;
        self.faults
            .check(&self.name, FaultOp::Read, offset, req.len)?;
        if req.len == 0 {
            return Ok(0);
        }
        match &self.direct {
            // SAFETY: forwarded caller contract.
            Some(d) => unsafe { d.read(&req, self.file.as_fd(), iov, offset, req.len) },
            // SAFETY: forwarded caller contract (the iovecs are writable).
            None => unsafe { self.buffered_vectored(Dir::Read, &req, iov) },
        }
    }

    /// Write all of `buf` at `offset` through the buffered descriptor.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _mark = MarkUnsynced(&self.unsynced);
        let len = buf.len() as u64;
        self.check_range("write", offset, len)?;
        self.check_write("write", offset, len)?;
        self.faults.check_write_buf(&self.name, offset, buf)?;
        let req = Req {
            name: &self.name,
            op: "write",
            offset,
            len,
        };
        let _g = self
            .direct
            .as_ref()
            .map(|d| (d.shared(), d.lock_edges(offset, offset + len)));
        // SAFETY: `buf` is a live slice of `len` bytes.
        unsafe { sys::pwrite_all(self.file.as_fd(), buf.as_ptr(), buf.len(), offset) }
            .map_err(|e| req.err("pwrite", offset, e))
    }

    /// Read through the buffered descriptor until `buf` is full or end of
    /// file; returns the count.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = buf.len() as u64;
        self.check_range("read", offset, len)?;
        self.check_read("read", offset, len)?;
        self.faults.check(&self.name, FaultOp::Read, offset, len)?;
        let req = Req {
            name: &self.name,
            op: "read",
            offset,
            len,
        };
        let _g = self.direct.as_ref().map(Direct::shared);
        // SAFETY: `buf` is a live, exclusively borrowed slice of `len` bytes.
        unsafe { sys::pread_full(self.file.as_fd(), buf.as_mut_ptr(), buf.len(), offset, None) }
            .map_err(|e| req.err("pread", offset, e))
    }

    /// `fdatasync`.
    pub fn sync(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        self.unsynced.store(false, Ordering::Release);
        let r = self
            .faults
            .check(&self.name, FaultOp::Sync, 0, 0)
            .and_then(|_| {
                nix::unistd::fdatasync(self.file.as_raw_fd())
                    .map_err(|e| Error::from_errno(format!("fdatasync of {}", self.name), e as i32))
            });
        if r.is_err() {
            self.unsynced.store(true, Ordering::Release);
        }
        r
    }

    /// `sync` unless nothing was written through this channel since the
    /// last successful one.
    pub fn sync_if_needed(&self) -> Result<()> {
        if self.unsynced.load(std::sync::atomic::Ordering::Acquire) {
            self.sync()
        } else {
            Ok(())
        }
    }

    /// Current file size.
    pub fn size(&self) -> Result<u64> {
        let blk = sys::fstat(self.file.as_fd())
            .map(|st| sys::is_blk(&st))
            .map_err(|e| Error::io(format!("fstat of {}", self.name), e))?;
        // Block devices: SEEK_END on our own description when we have one.
        let fd = match (&self.direct, blk) {
            (Some(d), true) => d.fd(),
            _ => self.file.as_fd(),
        };
        sys::file_size(fd, blk)
            .map_err(|e| Error::io(format!("querying the size of {}", self.name), e))
    }

    /// `ftruncate`.
    pub fn set_len(&self, len: u64) -> Result<()> {
        let _mark = MarkUnsynced(&self.unsynced);
        self.check_range("truncate", len, 0)?;
        self.check_write("truncate", len, 0)?;
        self.faults.check(&self.name, FaultOp::SetLen, len, 0)?;
        let _g = self.direct.as_ref().map(Direct::exclusive);
        sys::ftruncate(self.file.as_fd(), len)
            .map_err(|e| Error::io(format!("truncating {} to {len} bytes", self.name), e))
    }

    /// Give up one shared reference (what closing a C handle does). A
    /// writable channel is synced now, so this holder hears of a failed
    /// write-back even while others (an image) still hold the channel; the
    /// last holder closes it ([`Arc::into_inner`] picks exactly one of racing
    /// last holders, so a close error is never lost to a plain drop). Both
    /// steps run; the sync's failure is returned first.
    pub fn release(self: Arc<Self>) -> Result<()> {
        let synced = if self.flags.contains(OpenFlags::WRITE) {
            self.sync()
        } else {
            Ok(())
        };
        let closed = Arc::into_inner(self).map_or(Ok(()), Channel::close);
        synced.and(closed)
    }

    /// Close both descriptors. A writable channel is `fdatasync`ed first; a
    /// failed sync or close is reported.
    ///
    /// Every step runs even when an earlier one failed; the first failure is
    /// returned. Dropping a channel without `close` closes the descriptors
    /// too, but ignores errors and does not sync.
    pub fn close(self) -> Result<()> {
        let Channel {
            name,
            flags,
            file,
            direct,
            faults,
            unsynced,
        } = self;
        let mut first: Option<Error> = None;
        // Nothing written since the last successful sync: the final sync
        // would have nothing to report about this channel's writes.
        if flags.contains(OpenFlags::WRITE) && unsynced.into_inner() {
            if let Err(e) = faults.check(&name, FaultOp::Sync, 0, 0) {
                first.get_or_insert(e);
            } else if let Err(e) = nix::unistd::fdatasync(file.as_raw_fd()) {
                first.get_or_insert(Error::from_errno(
                    format!("fdatasync of {name} before close"),
                    e as i32,
                ));
            }
        }
        if let Some(d) = direct {
            if let Err(e) = nix::unistd::close(d.into_fd().into_raw_fd()) {
                first.get_or_insert(Error::from_errno(
                    format!("closing the O_DIRECT descriptor of {name}"),
                    e as i32,
                ));
            }
        }
        if let Err(e) = nix::unistd::close(file.into_raw_fd()) {
            first.get_or_insert(Error::from_errno(format!("closing {name}"), e as i32));
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
