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
//! - `Channel: Send + Sync`; every method takes `&self` except `close`.
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
use sys::{Dir, IovCursor};

/// A thread-safe file channel. See the module docs.
///
/// Large iovec arrays: any number of iovecs works; more than `IOV_MAX`
/// (1024) are split over several system calls (like any short transfer, the
/// request is then not one atomic system call).
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

    pub fn flags(&self) -> OpenFlags {
        self.flags
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

    /// Write every byte of `iov` at `offset` (`O_DIRECT` when aligned).
    ///
    /// # Safety
    /// Each iovec must describe memory valid for reads of `iov_len` bytes for
    /// the duration of the call.
    pub unsafe fn pwritev_raw(&self, iov: &[libc::iovec], offset: u64) -> Result<u64> {
        let _mark = MarkUnsynced(&self.unsynced);
        let total = self.iov_total("pwritev", iov, offset)?;
        self.check_write("pwritev", offset, total)?;
        // SAFETY: forwarded caller contract; `total` is the iovecs' sum.
        unsafe {
            self.faults
                .check_write_iov(&self.name, offset, total, iov)?
        };
        if total == 0 {
            return Ok(0);
        }
        let req = Req {
            name: &self.name,
            op: "pwritev",
            offset,
            len: total,
        };
        match &self.direct {
            // SAFETY: forwarded caller contract.
            Some(d) => unsafe { d.write(&req, iov, offset, total)? },
            None => {
                let mut pos = offset;
                // SAFETY: the iovecs are readable (caller contract).
                unsafe {
                    sys::transfer(
                        Dir::Write,
                        self.file.as_fd(),
                        &mut IovCursor::new(iov),
                        &mut pos,
                        |_, _| true,
                    )
                }
                .map_err(|e| req.err("pwritev", pos, e))?;
            }
        }
        Ok(total)
    }

    /// Read into `iov` from `offset` until full or end of file; returns the
    /// number of bytes read (`O_DIRECT` when aligned).
    ///
    /// # Safety
    /// Each iovec must describe memory valid for writes of `iov_len` bytes for
    /// the duration of the call.
    pub unsafe fn preadv_raw(&self, iov: &[libc::iovec], offset: u64) -> Result<u64> {
        let total = self.iov_total("preadv", iov, offset)?;
        self.check_read("preadv", offset, total)?;
        self.faults
            .check(&self.name, FaultOp::Read, offset, total)?;
        if total == 0 {
            return Ok(0);
        }
        let req = Req {
            name: &self.name,
            op: "preadv",
            offset,
            len: total,
        };
        match &self.direct {
            // SAFETY: forwarded caller contract.
            Some(d) => unsafe { d.read(&req, self.file.as_fd(), iov, offset, total) },
            None => {
                let mut pos = offset;
                // SAFETY: the iovecs are writable (caller contract).
                unsafe {
                    sys::transfer(
                        Dir::Read,
                        self.file.as_fd(),
                        &mut IovCursor::new(iov),
                        &mut pos,
                        |_, _| true,
                    )
                }
                .map_err(|e| req.err("preadv", pos, e))?;
                Ok(pos - offset)
            }
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

    /// Deallocate a range, keeping the size (reads return zeros).
    /// File systems without hole punching give `Error::Unsupported`.
    /// A zero length is a no-op.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        let _mark = MarkUnsynced(&self.unsynced);
        self.check_range("punch_hole", offset, len)?;
        self.check_write("punch_hole", offset, len)?;
        self.faults
            .check(&self.name, FaultOp::PunchHole, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let _g = self
            .direct
            .as_ref()
            .map(|d| (d.shared(), d.lock_edges(offset, offset + len)));
        let r = nix::fcntl::fallocate(
            self.file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
        match r {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) => Err(Error::Unsupported(format!(
                "punching a hole of {len} bytes at offset {offset} of {}: the file system does not support it",
                self.name
            ))),
            Err(e) => Err(Error::from_errno(
                format!("punching a hole of {len} bytes at offset {offset} of {}", self.name),
                e as i32,
            )),
        }
    }

    /// Bytes allocated on disk (`st_blocks * 512`).
    pub fn allocated_bytes(&self) -> Result<u64> {
        let st = sys::fstat(self.file.as_fd())
            .map_err(|e| Error::io(format!("fstat of {}", self.name), e))?;
        Ok((st.st_blocks as u64).saturating_mul(512))
    }

    /// `lseek` for SEEK_DATA/SEEK_HOLE; `None` on `ENXIO`. Uses the
    /// channel's own `O_DIRECT` description when there is one: `lseek` moves
    /// the description's offset, which a `from_fd` caller shares with the
    /// buffered descriptor (this crate itself never uses the offset).
    fn seek(&self, offset: u64, whence: libc::c_int, what: &str) -> Result<Option<u64>> {
        if offset > i64::MAX as u64 {
            return Ok(None);
        }
        let fd = self.direct.as_ref().map_or(self.file.as_fd(), Direct::fd);
        // SAFETY: lseek on an open descriptor has no memory-safety concerns.
        let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        Err(Error::io(
            format!("{what} from offset {offset} of {}", self.name),
            e,
        ))
    }

    /// `SEEK_DATA`: the next offset `>= offset` holding data, or `None`.
    pub fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        self.seek(offset, libc::SEEK_DATA, "SEEK_DATA")
    }

    /// `SEEK_HOLE`: the next hole at or after `offset` (end of file counts).
    /// At or past end of file, that is `offset` itself.
    pub fn next_hole(&self, offset: u64) -> Result<u64> {
        Ok(self
            .seek(offset, libc::SEEK_HOLE, "SEEK_HOLE")?
            .unwrap_or(offset))
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
