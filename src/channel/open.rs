//! Opening a channel: the open flags, `Channel::open` (a path) and
//! `Channel::from_fd` (a caller's descriptor), with the file-type and
//! access-mode checks both share.
//!
//! Nothing here blocks on the file's type: every open of a path carries
//! `O_NONBLOCK` until the type is known, so a FIFO (which would otherwise
//! block `open(2)` until a peer appears) is refused at once with the same
//! error any other non-file gets. The flag is cleared again before the
//! descriptor is used for I/O.

use super::direct::Direct;
use super::{sys, Channel};
use crate::error::{Error, Result};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Flags for [`Channel::open`]; the values are the C `MR_OPEN_*` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFlags(u32);

impl OpenFlags {
    /// Open for reading (`MR_OPEN_READ`).
    pub const READ: OpenFlags = OpenFlags(0x1);
    /// Open for writing (`MR_OPEN_WRITE`).
    pub const WRITE: OpenFlags = OpenFlags(0x2);
    /// Create the file with mode 0600 if it does not exist. Needs `WRITE`;
    /// not valid with a descriptor.
    pub const CREATE: OpenFlags = OpenFlags(0x4);
    /// Truncate a regular file to 0 bytes once it is open (a block device
    /// is left as it is). Needs `WRITE`; not valid with a descriptor.
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

    /// The raw bits (the C `MR_OPEN_*` value).
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag in `other` is set in `self`.
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

/// Only regular files and block devices are channels (`mode` is `st_mode`).
fn check_type(mode: libc::mode_t, name: &str) -> Result<()> {
    match mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFBLK => Ok(()),
        libc::S_IFDIR => Err(Error::from_errno(
            format!("{name} is a directory, not a file"),
            libc::EISDIR,
        )),
        _ => Err(Error::Invalid(format!(
            "{name} is not a regular file or block device (mode 0o{mode:o})"
        ))),
    }
}

/// `fstat` and [`check_type`].
fn fstat_checked(fd: BorrowedFd<'_>, name: &str) -> Result<libc::stat> {
    let st = sys::fstat(fd).map_err(|e| Error::io(format!("fstat of {name}"), e))?;
    check_type(st.st_mode, name)?;
    Ok(st)
}

/// An `open(2)` of a path that cannot block: with `O_NONBLOCK` (cleared
/// again once the file is known to be a regular file or block device). A
/// write-only open of a FIFO without a reader fails with `ENXIO`; that is
/// reported as the type error it is. Returns the descriptor and its `stat`.
fn open_nonblocking(
    o: &mut std::fs::OpenOptions,
    custom: libc::c_int,
    path: &Path,
    name: &str,
    what: &str,
) -> Result<(OwnedFd, libc::stat)> {
    let fd = match o.custom_flags(custom | libc::O_NONBLOCK).open(path) {
        Ok(f) => OwnedFd::from(f),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            // A metadata lookup, only to name the cause.
            if let Ok(md) = std::fs::metadata(path) {
                use std::os::unix::fs::MetadataExt;
                check_type(md.mode(), name)?;
            }
            return Err(Error::io(what.to_string(), e));
        }
        Err(e) => return Err(Error::io(what.to_string(), e)),
    };
    let st = fstat_checked(fd.as_fd(), name)?;
    sys::clear_nonblock(fd.as_fd()).map_err(|e| Error::io(format!("fcntl of {name}"), e))?;
    Ok((fd, st))
}

/// Open the `O_DIRECT` descriptor. Writable channels ask for read access too
/// (read-modify-write of unaligned edges), falling back to write-only when
/// that is refused. Returns the descriptor and whether it can be read.
fn open_direct(path: &Path, flags: OpenFlags, name: &str) -> Result<(OwnedFd, bool)> {
    let try_open = |mode: libc::c_int| -> Result<OwnedFd> {
        let mut o = std::fs::OpenOptions::new();
        o.read(mode != libc::O_WRONLY).write(mode != libc::O_RDONLY);
        let what = format!("opening {name} with O_DIRECT");
        open_nonblocking(&mut o, libc::O_DIRECT | libc::O_NOCTTY, path, name, &what)
            .map(|(fd, _)| fd)
    };
    let first = if flags.contains(OpenFlags::WRITE) {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    let res = match try_open(first) {
        Err(e) if e.errno() == libc::EACCES && !flags.contains(OpenFlags::READ) => {
            try_open(libc::O_WRONLY).map(|fd| (fd, false))
        }
        r => r.map(|fd| (fd, true)),
    };
    res.map_err(|e| match e {
        Error::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => Error::io(
            format!(
                "opening {name} with O_DIRECT: O_DIRECT not supported by the file system of {name}"
            ),
            source,
        ),
        e => e,
    })
}

/// The `O_DIRECT` side for a channel whose buffered descriptor has `st`.
fn direct_side(path: &Path, flags: OpenFlags, name: &str, st: &libc::stat) -> Result<Direct> {
    let (dfd, can_read) = open_direct(path, flags, name)?;
    let dst = sys::fstat(dfd.as_fd()).map_err(|e| Error::io(format!("fstat of {name}"), e))?;
    if dst.st_dev != st.st_dev || dst.st_ino != st.st_ino {
        return Err(Error::Invalid(format!(
            "{name} was replaced while it was being opened"
        )));
    }
    Ok(Direct::new(dfd, can_read, sys::is_blk(st)))
}

impl Channel {
    fn assemble(name: String, flags: OpenFlags, file: OwnedFd, direct: Option<Direct>) -> Channel {
        Channel {
            name,
            flags,
            file,
            direct,
            faults: Default::default(),
            // Conservative: whatever happened to the file before this
            // channel existed is synced once by the first sync.
            unsynced: std::sync::atomic::AtomicBool::new(flags.contains(OpenFlags::WRITE)),
        }
    }

    /// Open `path`. Files are created with mode 0600. With `DIRECT`, a file
    /// system that refuses `O_DIRECT` is an error naming the path and reason.
    /// Anything but a regular file or block device (a FIFO, a socket, a
    /// character device) is refused without blocking.
    ///
    /// All descriptors are `O_CLOEXEC`. `TRUNC` is applied only once every
    /// descriptor is open, and a file this call created is removed again
    /// when opening the `O_DIRECT` descriptor fails.
    pub fn open(path: &Path, flags: OpenFlags) -> Result<Channel> {
        let flags = OpenFlags::from_bits(flags.bits())?;
        let name = path.display().to_string();
        let (file, st, created) = open_buffered(path, flags, &name)?;
        let cleanup = |err: Error| {
            if created {
                let _ = std::fs::remove_file(path);
            }
            err
        };
        let direct = if flags.contains(OpenFlags::DIRECT) {
            Some(direct_side(path, flags, &name, &st).map_err(cleanup)?)
        } else {
            None
        };
        if flags.contains(OpenFlags::TRUNC) && !sys::is_blk(&st) {
            sys::ftruncate(file.as_fd(), 0)
                .map_err(|e| Error::io(format!("truncating {name} to 0 bytes"), e))?;
        }
        Ok(Channel::assemble(name, flags, file, direct))
    }

    /// Use a caller's descriptor; it is duplicated (the caller keeps its own).
    /// `CREATE`/`TRUNC` are invalid here; `TRUNC` could be honoured, but a
    /// descriptor's creator owns that decision.
    ///
    /// The duplicate shares the caller's open file description. With
    /// `DIRECT`, the `O_DIRECT` descriptor is a new open of
    /// `/proc/self/fd/N` (works for unlinked files too). A descriptor that
    /// already has `O_DIRECT` gets a separate buffered open the same way.
    /// The descriptor's access mode must allow what `flags` ask for, and a
    /// writable one must not be `O_APPEND` (Linux `pwrite` would append).
    pub fn from_fd(fd: RawFd, flags: OpenFlags) -> Result<Channel> {
        let flags = OpenFlags::from_bits(flags.bits())?;
        let name = format!("fd {fd}");
        if flags.contains(OpenFlags::CREATE) || flags.contains(OpenFlags::TRUNC) {
            return Err(Error::Invalid(format!(
                "MR_OPEN_CREATE and MR_OPEN_TRUNC are not valid with a descriptor ({name})"
            )));
        }
        let fl = fd_status_flags(fd, flags, &name)?;
        let dup = dup_cloexec(fd, &name)?;
        let st = fstat_checked(dup.as_fd(), &name)?;
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", dup.as_raw_fd()));
        let file = if fl & libc::O_DIRECT != 0 {
            let mut o = std::fs::OpenOptions::new();
            o.read(flags.contains(OpenFlags::READ))
                .write(flags.contains(OpenFlags::WRITE));
            let what = format!(
                "{name} has O_DIRECT; reopening it without O_DIRECT through {}",
                proc_path.display()
            );
            open_nonblocking(&mut o, libc::O_NOCTTY, &proc_path, &name, &what)?.0
        } else {
            dup
        };
        let direct = if flags.contains(OpenFlags::DIRECT) {
            Some(direct_side(&proc_path, flags, &name, &st)?)
        } else {
            None
        };
        Ok(Channel::assemble(name, flags, file, direct))
    }
}

/// Open the buffered descriptor of `path` (creating it with 0600 under
/// `CREATE`); returns it, its `stat`, and whether this call created the
/// file (which is then removed again when a later step fails).
fn open_buffered(path: &Path, flags: OpenFlags, name: &str) -> Result<(OwnedFd, libc::stat, bool)> {
    let mut o = std::fs::OpenOptions::new();
    o.read(flags.contains(OpenFlags::READ))
        .write(flags.contains(OpenFlags::WRITE))
        .mode(0o600);
    let what = format!("opening {name} (flags 0x{:x})", flags.bits());
    let custom = libc::O_NOCTTY;
    let mut created = false;
    let res = if flags.contains(OpenFlags::CREATE) {
        match open_nonblocking(o.clone().create_new(true), custom, path, name, &what) {
            Ok(r) => {
                created = true;
                Ok(r)
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                open_nonblocking(o.create(true), custom, path, name, &what)
            }
            Err(e) => Err(e),
        }
    } else {
        open_nonblocking(&mut o, custom, path, name, &what)
    };
    match res {
        Ok((fd, st)) => Ok((fd, st, created)),
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

/// The descriptor's status flags, checked against what `flags` ask for.
fn fd_status_flags(fd: RawFd, flags: OpenFlags, name: &str) -> Result<libc::c_int> {
    if fd < 0 {
        return Err(Error::from_errno(
            format!("{name} is not a descriptor"),
            libc::EBADF,
        ));
    }
    // SAFETY: F_GETFL only inspects the descriptor table; a closed fd
    // gives EBADF.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(Error::last_os(format!("{name} is not an open descriptor")));
    }
    if fl & libc::O_PATH != 0 {
        return Err(Error::from_errno(
            format!("{name} is an O_PATH descriptor"),
            libc::EBADF,
        ));
    }
    let acc = fl & libc::O_ACCMODE;
    if flags.contains(OpenFlags::READ) && acc == libc::O_WRONLY {
        return Err(Error::from_errno(
            format!("{name} is open write-only but MR_OPEN_READ was asked for"),
            libc::EBADF,
        ));
    }
    if flags.contains(OpenFlags::WRITE) && acc == libc::O_RDONLY {
        return Err(Error::from_errno(
            format!("{name} is open read-only but MR_OPEN_WRITE was asked for"),
            libc::EBADF,
        ));
    }
    if flags.contains(OpenFlags::WRITE) && fl & libc::O_APPEND != 0 {
        return Err(Error::Invalid(format!(
            "{name} has O_APPEND, which makes positional writes append"
        )));
    }
    Ok(fl)
}

/// A close-on-exec duplicate of `fd`.
fn dup_cloexec(fd: RawFd, name: &str) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we own.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(Error::last_os(format!("duplicating {name}")));
    }
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}
