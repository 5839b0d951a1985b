//! Fault injection: a testing facility.
//!
//! A [`Channel`](super::Channel) can carry an injector, a callback consulted
//! before each I/O operation: returning `Some(errno)` makes the operation fail
//! with that errno *before* it touches the file, exactly as if the system
//! call had failed. Tests use it to check that `EIO`, `ENOSPC` and failed
//! `fdatasync` reach the caller and leave the image recognisably incomplete.
//!
//! Cost when no injector is installed (the normal case): one relaxed atomic
//! load per operation. Not meant for production use: the callback runs on
//! the I/O path of every thread.

use crate::error::{Error, Result};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The kind of channel operation an injector is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `pwritev_raw` (page data) or `write_all_at` (metadata).
    Write,
    /// `preadv_raw` (page data) or `read_at` (metadata).
    Read,
    /// `fdatasync`, including the one in `close`.
    Sync,
    /// `ftruncate` (`set_len`).
    SetLen,
    /// `fallocate(PUNCH_HOLE)`.
    PunchHole,
}

impl std::fmt::Display for FaultOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultOp::Write => "write",
            FaultOp::Read => "read",
            FaultOp::Sync => "fdatasync",
            FaultOp::SetLen => "truncate",
            FaultOp::PunchHole => "punch_hole",
        })
    }
}

/// An injector: `(operation, offset, length) -> Some(errno)` to fail the
/// operation, `None` to let it run. For `Sync` offset and length are 0; for
/// `SetLen` the offset is the new length and the length 0.
pub type FaultFn = Arc<dyn Fn(FaultOp, u64, u64) -> Option<i32> + Send + Sync>;

/// The injector slot of one channel.
#[derive(Default)]
pub(crate) struct Faults {
    on: AtomicBool,
    f: RwLock<Option<FaultFn>>,
}

impl Faults {
    pub(crate) fn set(&self, f: Option<FaultFn>) {
        let mut slot = self.f.write();
        self.on.store(f.is_some(), Ordering::Release);
        *slot = f;
    }

    /// `Err` with the injected errno when the injector says so.
    #[inline]
    pub(crate) fn check(&self, name: &str, op: FaultOp, offset: u64, len: u64) -> Result<()> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.check_slow(name, op, offset, len)
    }

    #[cold]
    fn check_slow(&self, name: &str, op: FaultOp, offset: u64, len: u64) -> Result<()> {
        // Clone out of the lock: the callback may take its own locks.
        let f = self.f.read().clone();
        match f.and_then(|f| f(op, offset, len)) {
            Some(errno) => {
                let what = match op {
                    FaultOp::Sync => format!("fdatasync of {name}"),
                    FaultOp::SetLen => format!("truncating {name} to {offset} bytes"),
                    _ => format!("{op} of {len} bytes at offset {offset} of {name}"),
                };
                Err(Error::from_errno(format!("{what} (injected fault)"), errno))
            }
            None => Ok(()),
        }
    }
}
