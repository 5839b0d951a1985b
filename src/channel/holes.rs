//! Space on disk: punching holes, the allocated size, and finding data and
//! holes (`SEEK_DATA` / `SEEK_HOLE`). Zero pages of an image are holes.

use super::direct::Direct;
use super::fault::FaultOp;
use super::{sys, Channel, MarkUnsynced};
use crate::error::{Error, Result};
use std::os::fd::{AsFd, AsRawFd};

impl Channel {
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
}
