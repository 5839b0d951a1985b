//! Fault injection: a testing facility.
//!
//! A [`Channel`](super::Channel) can carry an injector, a callback consulted
//! before each I/O operation: returning `Some(errno)` makes the operation fail
//! with that errno *before* it touches the file, exactly as if the system
//! call had failed. Tests use it to check that `EIO`, `ENOSPC` and failed
//! `fdatasync` reach the caller and leave the image recognisably incomplete.
//!
//! A channel can also carry a [`Trace`] recorder: every operation that
//! changes the file (write, `fdatasync`, truncate, punch hole) is appended
//! to it, with the bytes written, in the order the operations were issued.
//! The power-loss tests replay bounded subsets of such a trace onto a copy
//! of the starting file to build the states a crash could leave.
//!
//! Cost when neither is installed (the normal case): one relaxed atomic
//! load per operation. Not meant for production use: the callback runs on
//! the I/O path of every thread.

use super::sys::IovCursor;
use crate::error::{Error, Result};
use parking_lot::{Mutex, RwLock};
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

/// One recorded operation that changes the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceOp {
    /// Bytes written at an offset (page data or metadata).
    Write { offset: u64, data: Vec<u8> },
    /// `fdatasync` (including the one in `close`).
    Sync,
    /// `ftruncate` to this length.
    SetLen(u64),
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    PunchHole { offset: u64, len: u64 },
}

/// A recorder of the file-changing operations of a channel, in issue order
/// (see the module docs). An operation is recorded once the injector (if
/// any) let it through, just before the system call: record traces of runs
/// in which no I/O fails.
#[derive(Default)]
pub struct Trace {
    ops: Mutex<Vec<TraceOp>>,
}

impl Trace {
    pub fn new() -> Arc<Trace> {
        Arc::new(Trace::default())
    }
    /// The operations so far.
    pub fn ops(&self) -> Vec<TraceOp> {
        self.ops.lock().clone()
    }
    /// How many operations were recorded so far (a position in the trace).
    pub fn len(&self) -> usize {
        self.ops.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn push(&self, op: TraceOp) {
        self.ops.lock().push(op);
    }
}

impl super::Channel {
    /// Testing facility: install (or remove with `None`) a [`Trace`]
    /// recorder of this channel's file-changing operations.
    pub fn set_trace_recorder(&self, t: Option<Arc<Trace>>) {
        self.faults.set_trace(t);
    }
}

/// The injector and recorder slots of one channel.
#[derive(Default)]
pub(crate) struct Faults {
    on: AtomicBool,
    f: RwLock<Option<FaultFn>>,
    trace: RwLock<Option<Arc<Trace>>>,
}

impl Faults {
    pub(crate) fn set(&self, f: Option<FaultFn>) {
        let mut slot = self.f.write();
        let trace = self.trace.read();
        self.on
            .store(f.is_some() || trace.is_some(), Ordering::Release);
        *slot = f;
    }

    fn set_trace(&self, t: Option<Arc<Trace>>) {
        let f = self.f.read();
        let mut slot = self.trace.write();
        self.on.store(f.is_some() || t.is_some(), Ordering::Release);
        *slot = t;
    }

    /// `Err` with the injected errno when the injector says so; else the
    /// operation is recorded (a `Write` through [`check_write_buf`] or
    /// [`check_write_iov`] instead, which carry the bytes).
    ///
    /// [`check_write_buf`]: Self::check_write_buf
    /// [`check_write_iov`]: Self::check_write_iov
    #[inline]
    pub(crate) fn check(&self, name: &str, op: FaultOp, offset: u64, len: u64) -> Result<()> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.check_slow(name, op, offset, len)?;
        let rec = match op {
            FaultOp::Sync => Some(TraceOp::Sync),
            FaultOp::SetLen => Some(TraceOp::SetLen(offset)),
            FaultOp::PunchHole if len > 0 => Some(TraceOp::PunchHole { offset, len }),
            _ => None,
        };
        if let Some(r) = rec {
            self.record(|| r);
        }
        Ok(())
    }

    /// [`check`](Self::check) for a write of `buf` at `offset`.
    #[inline]
    pub(crate) fn check_write_buf(&self, name: &str, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.check_slow(name, FaultOp::Write, offset, buf.len() as u64)?;
        if !buf.is_empty() {
            self.record(|| TraceOp::Write {
                offset,
                data: buf.to_vec(),
            });
        }
        Ok(())
    }

    /// [`check`](Self::check) for a write of the `total` bytes of `iov` at
    /// `offset`.
    ///
    /// # Safety
    /// As for `Channel::pwritev_raw`: each iovec must be valid for reads of
    /// `iov_len` bytes for the duration of the call, and they must add up
    /// to `total`.
    #[inline]
    pub(crate) unsafe fn check_write_iov(
        &self,
        name: &str,
        offset: u64,
        total: u64,
        iov: &[libc::iovec],
    ) -> Result<()> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.check_slow(name, FaultOp::Write, offset, total)?;
        if total > 0 {
            self.record(|| {
                let mut data = vec![0u8; total as usize];
                // SAFETY: the iovecs are readable and hold `total` bytes
                // (caller contract); `data` is a fresh buffer of `total`
                // bytes, so the two cannot overlap.
                unsafe { IovCursor::new(iov).copy_out(data.as_mut_ptr(), data.len()) };
                TraceOp::Write { offset, data }
            });
        }
        Ok(())
    }

    fn record(&self, op: impl FnOnce() -> TraceOp) {
        let t = self.trace.read().clone();
        if let Some(t) = t {
            t.push(op());
        }
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
