//! Advisory image locks, taken the way QEMU locks disk images: open file
//! description (OFD) locks (`F_OFD_SETLK`), non-blocking.
//!
//! One byte at [`IMAGE_LOCK_OFFSET`] is locked: shared ([`LockKind::Shared`],
//! `F_RDLCK`) by readers, exclusive ([`LockKind::Exclusive`], `F_WRLCK`) by
//! writers. So a writer excludes other writers and readers, readers share.
//! OFD locks belong to the open file description, not to the process: two
//! opens of one file in one process conflict like two processes do, a lock
//! is released when the last descriptor of its description closes (also
//! when the process dies), and a `fork`ed child shares its parent's locks
//! through the inherited descriptors. The lock is advisory: it binds only
//! programs that take it (this library; QEMU itself does not lock migration
//! files).
//!
//! A conflict fails at once with `EBUSY` and a message saying whether the
//! holder writes or reads and, when `/proc` tells (each holder's
//! `/proc/PID/fdinfo/FD` lists its OFD locks; `F_OFD_GETLK` itself reports
//! no process for OFD locks), which processes hold it.

use super::{sys, Channel};
use crate::error::{Error, Result};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// The locked byte. Locks do not need the byte to exist.
pub const IMAGE_LOCK_OFFSET: u64 = 0;

/// Which lock to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Readers: shared with other readers; excluded by a writer.
    Shared,
    /// Writers: excludes every other lock. Needs a writable descriptor.
    Exclusive,
}

fn flock(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = IMAGE_LOCK_OFFSET as libc::off_t;
    fl.l_len = 1;
    fl
}

/// Take the image lock on `fd`'s open file description. `name` is the path
/// used in messages.
pub fn lock_fd(fd: BorrowedFd<'_>, kind: LockKind, name: &str) -> Result<()> {
    let t = match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    } as libc::c_short;
    let fl = flock(t);
    loop {
        // SAFETY: `fl` is a valid `flock` that outlives the call; the
        // descriptor is open (borrowed).
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) => return Err(conflict(fd, t, name)),
            _ => return Err(Error::io(format!("locking {name} (F_OFD_SETLK)"), e)),
        }
    }
}

/// The `EBUSY` error for a refused lock of type `t`.
fn conflict(fd: BorrowedFd<'_>, t: libc::c_short, name: &str) -> Error {
    let mut fl = flock(t);
    // SAFETY: as in `lock_fd`; F_OFD_GETLK fills `fl` in place.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    let how = match (r, fl.l_type as libc::c_int) {
        (0, libc::F_WRLCK) => "for writing",
        (0, libc::F_RDLCK) => "for reading",
        _ => "",
    };
    let who = match sys::fstat(fd) {
        Ok(st) => holders(&st),
        Err(_) => String::new(),
    };
    let who = if who.is_empty() {
        String::from("holder not visible in /proc")
    } else {
        who
    };
    Error::from_errno(
        format!(
            "{name} is locked {how} by another open file description ({who}); a writer excludes every other user of an image, readers share it (MR_IMAGE_NO_LOCK skips locking for callers that coordinate access themselves)"
        ),
        libc::EBUSY,
    )
}

/// "process 12 (this process), process 34": the processes whose open file
/// descriptions hold an OFD lock on the locked byte of the file `st`.
fn holders(st: &libc::stat) -> String {
    let dev = format!(
        " {:02x}:{:02x}:{} ",
        libc::major(st.st_dev),
        libc::minor(st.st_dev),
        st.st_ino
    );
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        let holds = fds.flatten().any(|f| {
            std::fs::read_to_string(f.path())
                .map(|s| s.lines().any(|l| lock_line_matches(l, &dev)))
                .unwrap_or(false)
        });
        if holds && pids.len() < 8 {
            pids.push(pid);
        }
    }
    pids.iter()
        .map(|&p| {
            if p == me {
                format!("process {p} (this process)")
            } else {
                format!("process {p}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether an fdinfo line is an OFD lock on file `dev` (" maj:min:ino ")
/// covering [`IMAGE_LOCK_OFFSET`]. Shape: `lock:\t1: OFDLCK ADVISORY WRITE
/// -1 fe:00:123 0 0` (start, end; end `EOF` = to the end).
fn lock_line_matches(line: &str, dev: &str) -> bool {
    if !line.starts_with("lock:") || !line.contains("OFDLCK") {
        return false;
    }
    let Some(pos) = line.find(dev) else {
        return false;
    };
    let mut range = line[pos + dev.len()..].split_whitespace();
    let start = range.next().and_then(|s| s.parse::<u64>().ok());
    let end = match range.next() {
        Some("EOF") => Some(u64::MAX),
        e => e.and_then(|e| e.parse::<u64>().ok()),
    };
    match (start, end) {
        (Some(s), Some(e)) => (s..=e).contains(&IMAGE_LOCK_OFFSET),
        _ => false,
    }
}

impl Channel {
    /// Take the image lock on this channel's (buffered) open file
    /// description; it is held until the channel is closed. See the module
    /// docs of `channel::lock`.
    pub fn lock(&self, kind: LockKind) -> Result<()> {
        lock_fd(self.file.as_fd(), kind, &self.name)
    }

    /// Release the image lock (before closing: a descriptor that a
    /// concurrent `fork` copied into a child until its `exec` would
    /// otherwise keep the open file description, and the lock, a moment
    /// longer). Only for a channel whose lock this library took: the
    /// description of a `from_fd` channel is the caller's.
    pub fn unlock(&self) -> Result<()> {
        let fl = flock(libc::F_UNLCK as libc::c_short);
        loop {
            // SAFETY: as in `lock_fd`.
            let r = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
            if r == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::io(format!("unlocking {}", self.name), e));
            }
        }
    }

    /// Whether the channel's file is a block device.
    pub fn is_block_device(&self) -> Result<bool> {
        sys::fstat(self.file.as_fd())
            .map(|st| sys::is_blk(&st))
            .map_err(|e| Error::io(format!("fstat of {}", self.name), e))
    }

    /// Name the channel (messages) after the path its file will have; for a
    /// file this library creates unnamed and links into place.
    pub(crate) fn set_name(&mut self, name: String) {
        self.name = name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lock_lines() {
        let dev = " fe:00:123 ";
        assert!(lock_line_matches(
            "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:123 0 0",
            dev
        ));
        assert!(lock_line_matches(
            "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:123 0 EOF",
            dev
        ));
        assert!(!lock_line_matches(
            "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:123 100 100",
            dev
        ));
        assert!(!lock_line_matches(
            "lock:\t1: POSIX  ADVISORY  WRITE 12 fe:00:123 0 0",
            dev
        ));
        assert!(!lock_line_matches(
            "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:1234 0 0",
            dev
        ));
    }
}
