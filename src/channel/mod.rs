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

mod bounce;
mod direct;

pub use direct::DioAlign;

use crate::error::{Error, Result};
use std::path::Path;

/// Flags for [`Channel::open`]; the values are the C `MR_OPEN_*` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFlags(u32);

impl OpenFlags {
    pub const READ: OpenFlags = OpenFlags(0x1);
    pub const WRITE: OpenFlags = OpenFlags(0x2);
    /// Create the file with mode 0600 if it does not exist.
    pub const CREATE: OpenFlags = OpenFlags(0x4);
    pub const TRUNC: OpenFlags = OpenFlags(0x8);
    /// Use `O_DIRECT` for aligned bulk I/O; unaligned I/O still works.
    pub const DIRECT: OpenFlags = OpenFlags(0x10);
    const ALL: u32 = 0x1f;

    /// Validate raw bits from C: unknown bits, neither READ nor WRITE, or
    /// CREATE/TRUNC without WRITE are `Error::Invalid`.
    pub fn from_bits(bits: u32) -> Result<Self> {
        if bits & !Self::ALL != 0 {
            return Err(Error::Invalid(format!(
                "unknown channel flags 0x{:x} (known: 0x{:x})",
                bits & !Self::ALL,
                Self::ALL
            )));
        }
        let f = OpenFlags(bits);
        if !f.contains(Self::READ) && !f.contains(Self::WRITE) {
            return Err(Error::Invalid(
                "channel flags need MR_OPEN_READ and/or MR_OPEN_WRITE".into(),
            ));
        }
        if (f.contains(Self::CREATE) || f.contains(Self::TRUNC)) && !f.contains(Self::WRITE) {
            return Err(Error::Invalid(
                "MR_OPEN_CREATE and MR_OPEN_TRUNC need MR_OPEN_WRITE".into(),
            ));
        }
        Ok(f)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn contains(self, other: OpenFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, rhs: OpenFlags) -> OpenFlags {
        OpenFlags(self.0 | rhs.0)
    }
}

/// A thread-safe file channel. See the module docs.
pub struct Channel {
    _todo: (),
}

impl Channel {
    /// Open `path`. Files are created with mode 0600. With `DIRECT`, a file
    /// system that refuses `O_DIRECT` is an error naming the path and reason.
    pub fn open(path: &Path, flags: OpenFlags) -> Result<Channel> {
        let _ = (path, flags);
        todo!()
    }

    /// Use a caller's descriptor; it is duplicated (the caller keeps its own).
    /// `CREATE`/`TRUNC` are invalid here; `TRUNC` could be honoured, but a
    /// descriptor's creator owns that decision.
    pub fn from_fd(fd: std::os::fd::RawFd, flags: OpenFlags) -> Result<Channel> {
        let _ = (fd, flags);
        todo!()
    }

    /// The path (or "fd N") used in error messages.
    pub fn name(&self) -> &str {
        todo!()
    }

    pub fn flags(&self) -> OpenFlags {
        todo!()
    }

    /// The direct-I/O alignment, when the channel has an `O_DIRECT` descriptor.
    pub fn dio_align(&self) -> Option<DioAlign> {
        todo!()
    }

    /// Write every byte of `iov` at `offset` (`O_DIRECT` when aligned).
    ///
    /// # Safety
    /// Each iovec must describe memory valid for reads of `iov_len` bytes for
    /// the duration of the call.
    pub unsafe fn pwritev_raw(&self, iov: &[libc::iovec], offset: u64) -> Result<u64> {
        let _ = (iov, offset);
        todo!()
    }

    /// Read into `iov` from `offset` until full or end of file; returns the
    /// number of bytes read (`O_DIRECT` when aligned).
    ///
    /// # Safety
    /// Each iovec must describe memory valid for writes of `iov_len` bytes for
    /// the duration of the call.
    pub unsafe fn preadv_raw(&self, iov: &[libc::iovec], offset: u64) -> Result<u64> {
        let _ = (iov, offset);
        todo!()
    }

    /// Write all of `buf` at `offset` through the buffered descriptor.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        todo!()
    }

    /// Read through the buffered descriptor until `buf` is full or end of
    /// file; returns the count.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let _ = (buf, offset);
        todo!()
    }

    /// `fdatasync`.
    pub fn sync(&self) -> Result<()> {
        todo!()
    }

    /// Current file size.
    pub fn size(&self) -> Result<u64> {
        todo!()
    }

    /// `ftruncate`.
    pub fn set_len(&self, len: u64) -> Result<()> {
        let _ = len;
        todo!()
    }

    /// Deallocate a range, keeping the size (reads return zeros).
    /// File systems without hole punching give `Error::Unsupported`.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        todo!()
    }

    /// Bytes allocated on disk (`st_blocks * 512`).
    pub fn allocated_bytes(&self) -> Result<u64> {
        todo!()
    }

    /// `SEEK_DATA`: the next offset `>= offset` holding data, or `None`.
    pub fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        let _ = offset;
        todo!()
    }

    /// `SEEK_HOLE`: the next hole at or after `offset` (end of file counts).
    pub fn next_hole(&self, offset: u64) -> Result<u64> {
        let _ = offset;
        todo!()
    }

    /// Close both descriptors. A writable channel is `fdatasync`ed first; a
    /// failed sync or close is reported.
    pub fn close(self) -> Result<()> {
        todo!()
    }
}
