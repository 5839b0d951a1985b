//! Raw userfaultfd: open (with the `-ENOSYS`/`-EPERM` diagnosis), the
//! feature handshake, register/unregister, and the resolving ioctls
//! (`UFFDIO_COPY`, `ZEROPAGE`, `WRITEPROTECT`, `WAKE`, `POISON`), plus the
//! event reader. No policy: the on-demand restore ([`crate::lazy`]) and the
//! live snapshot ([`crate::snapshot`]) build on this.
//!
//! Every address and length handed to the kernel here is checked by the
//! kernel against the registered ranges; a wrong one is an error, never
//! memory corruption, so the ioctl wrappers are safe functions.

pub mod host;
pub(crate) mod pages;
// The kernel header's names and layout, documented there.
#[allow(missing_docs)]
pub mod sys;

use crate::error::{Error, Result};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use sys::*;

/// An event read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread touched a missing page (or wrote a write-protected one).
    Fault {
        /// The faulting address.
        addr: u64,
        /// A write access.
        write: bool,
        /// A write to a write-protected page.
        wp: bool,
    },
    /// The process forked; the child's copy of the range has its own fd.
    Fork {
        /// The child's userfaultfd.
        child: OwnedFd,
    },
    /// `mremap` moved `[from, from+len)` to `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Bytes moved.
        len: u64,
    },
    /// `madvise(MADV_DONTNEED/REMOVE)` (or a balloon) drops `[start, end)`.
    Remove {
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// `munmap` of `[start, end)`.
    Unmap {
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// An event this code does not know (reported, never ignored silently).
    Unknown(u8),
}

/// The outcome of a failed `UFFDIO_COPY`/`ZEROPAGE`: the errno and how many
/// bytes were placed before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    /// The error.
    pub errno: i32,
    /// Bytes placed before it.
    pub done: u64,
}

/// A userfaultfd with its negotiated features.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
}

fn raw_open() -> Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: the userfaultfd system call takes one integer argument and
    // returns a new descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        // SAFETY: `fd` is a new descriptor this process owns exclusively.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) => Err(Error::from_errno(
            "userfaultfd: the kernel has no userfaultfd system call (built without CONFIG_USERFAULTFD)",
            libc::ENOSYS,
        )),
        Some(libc::EPERM) => dev_open(flags),
        _ => Err(Error::io("userfaultfd(2)", err)),
    }
}

/// The fallback for unprivileged callers: `/dev/userfaultfd`.
fn dev_open(flags: i32) -> Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd");
    let dev = match dev {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|_| "unreadable".into());
            return Err(Error::from_errno(
                format!(
                    "userfaultfd: not permitted: the system call needs CAP_SYS_PTRACE unless \
                     vm.unprivileged_userfaultfd is 1 (it is {sysctl}), and /dev/userfaultfd \
                     cannot be opened ({e})"
                ),
                libc::EPERM,
            ));
        }
    };
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags as the integer argument
    // and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(Error::last_os(
            "userfaultfd: /dev/userfaultfd USERFAULTFD_IOC_NEW",
        ));
    }
    // SAFETY: `fd` is a new descriptor this process owns exclusively.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `UFFDIO_*` ioctl with a structure argument.
fn ioctl<T>(fd: BorrowedFd<'_>, req: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, exclusively borrowed structure of the type
    // the request number encodes (its size is part of the number); the
    // kernel reads and writes only that structure.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// The features this kernel offers (a handshake on a throwaway fd; the
    /// API handshake can be done only once per fd).
    pub fn supported_features() -> Result<u64> {
        let fd = raw_open()?;
        let mut api = uffdio_api {
            api: UFFD_API,
            ..Default::default()
        };
        ioctl(fd.as_fd(), UFFDIO_API, &mut api)
            .map_err(|e| Error::io("userfaultfd: UFFDIO_API handshake", e))?;
        Ok(api.features)
    }

    /// A new userfaultfd (non-blocking, close-on-exec) with every feature of
    /// `want` the kernel offers; fails when one of `need` is missing, naming it.
    pub fn open(want: u64, need: u64, need_what: &str) -> Result<Uffd> {
        let offered = Uffd::supported_features()?;
        if offered & need != need {
            return Err(Error::from_errno(
                format!(
                    "userfaultfd: this kernel lacks {need_what} (features 0x{:x} missing)",
                    need & !offered
                ),
                libc::ENOSYS,
            ));
        }
        let fd = raw_open()?;
        let mut api = uffdio_api {
            api: UFFD_API,
            features: (want | need) & offered,
            ioctls: 0,
        };
        ioctl(fd.as_fd(), UFFDIO_API, &mut api)
            .map_err(|e| Error::io("userfaultfd: UFFDIO_API with features", e))?;
        Ok(Uffd {
            fd,
            features: api.features,
        })
    }

    /// Wrap the fd a fork event delivered (its features are the parent's).
    pub fn from_child(fd: OwnedFd, features: u64) -> Uffd {
        Uffd { fd, features }
    }

    /// The negotiated `UFFD_FEATURE_*` bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether every bit of `feature` was negotiated.
    pub fn has(&self, feature: u64) -> bool {
        self.features & feature == feature
    }

    /// The descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Register `[start, start+len)` with `mode`; returns the ioctls the
    /// range supports (`IOCTL_*_BIT`).
    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<u64> {
        let mut r = uffdio_register {
            range: uffdio_range { start, len },
            mode,
            ioctls: 0,
        };
        ioctl(self.fd.as_fd(), UFFDIO_REGISTER, &mut r).map_err(|e| {
            Error::io(
                format!(
                    "userfaultfd: registering 0x{start:x}+0x{len:x} (mode {mode}; the memory must be \
                     private anonymous, shmem/memfd or hugetlbfs, mapped whole)"
                ),
                e,
            )
        })?;
        Ok(r.ioctls)
    }

    /// Unregister `[start, start+len)` (wakes its waiters).
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut r = uffdio_range { start, len };
        ioctl(self.fd.as_fd(), UFFDIO_UNREGISTER, &mut r).map_err(|e| {
            Error::io(
                format!("userfaultfd: unregistering 0x{start:x}+0x{len:x}"),
                e,
            )
        })
    }

    /// `UFFDIO_COPY` of `len` bytes from `src` (our buffer) to `dst`
    /// (registered memory); wakes the waiters unless `dontwake`.
    pub fn copy(&self, dst: u64, src: *const u8, len: u64, dontwake: bool) -> Result<(), Partial> {
        let mut c = uffdio_copy {
            dst,
            src: src as u64,
            len,
            mode: if dontwake {
                UFFDIO_COPY_MODE_DONTWAKE
            } else {
                0
            },
            copy: 0,
        };
        partial(ioctl(self.fd.as_fd(), UFFDIO_COPY, &mut c), c.copy, len)
    }

    /// `UFFDIO_ZEROPAGE` of `[dst, dst+len)`.
    pub fn zeropage(&self, dst: u64, len: u64) -> Result<(), Partial> {
        let mut z = uffdio_zeropage {
            range: uffdio_range { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        partial(
            ioctl(self.fd.as_fd(), UFFDIO_ZEROPAGE, &mut z),
            z.zeropage,
            len,
        )
    }

    /// `UFFDIO_POISON`: touching the range raises SIGBUS (a page that could
    /// not be filled must never read as zero).
    pub fn poison(&self, dst: u64, len: u64) -> Result<(), Partial> {
        let mut p = uffdio_poison {
            range: uffdio_range { start: dst, len },
            mode: 0,
            updated: 0,
        };
        partial(
            ioctl(self.fd.as_fd(), UFFDIO_POISON, &mut p),
            p.updated,
            len,
        )
    }

    /// Set (`protect`) or clear write protection; clearing wakes waiters.
    pub fn writeprotect(&self, start: u64, len: u64, protect: bool) -> io::Result<()> {
        let mut w = uffdio_writeprotect {
            range: uffdio_range { start, len },
            mode: if protect {
                UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        ioctl(self.fd.as_fd(), UFFDIO_WRITEPROTECT, &mut w)
    }

    /// Wake the threads waiting on `[start, start+len)` (they refault).
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = uffdio_range { start, len };
        ioctl(self.fd.as_fd(), UFFDIO_WAKE, &mut r)
    }

    /// Read up to `buf.len()` pending events without blocking.
    pub fn read_events(&self, buf: &mut [uffd_msg], out: &mut Vec<Event>) -> Result<usize> {
        let bytes = std::mem::size_of_val(buf);
        // SAFETY: `buf` is an exclusively borrowed array of plain-data
        // messages, `bytes` long; the kernel writes whole messages into it.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(Error::io("userfaultfd: reading events", e)),
            };
        }
        let count = n as usize / std::mem::size_of::<uffd_msg>();
        for m in &buf[..count] {
            out.push(decode(m));
        }
        Ok(count)
    }

    /// Wait until events are pending or `wake_fd` is readable (or `ms`
    /// passed); returns whether `wake_fd` is readable.
    pub fn poll(&self, wake_fd: RawFd, ms: i32) -> Result<bool> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfd structures.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(Error::io("userfaultfd: poll", e));
        }
        Ok(fds[1].revents != 0)
    }
}

fn partial(r: io::Result<()>, field: i64, len: u64) -> Result<(), Partial> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            // The field holds bytes done, or a negative errno when none.
            let done = if field > 0 {
                (field as u64).min(len)
            } else {
                0
            };
            Err(Partial { errno, done })
        }
    }
}

fn decode(m: &uffd_msg) -> Event {
    let [a0, a1, a2] = m.arg;
    match m.event {
        UFFD_EVENT_PAGEFAULT => Event::Fault {
            addr: a1,
            write: a0 & UFFD_PAGEFAULT_FLAG_WRITE != 0,
            wp: a0 & UFFD_PAGEFAULT_FLAG_WP != 0,
        },
        UFFD_EVENT_FORK => {
            // SAFETY: the kernel installed this descriptor in our table for
            // the reader of the event; nothing else owns it.
            let child = unsafe { OwnedFd::from_raw_fd(a0 as u32 as RawFd) };
            Event::Fork { child }
        }
        UFFD_EVENT_REMAP => Event::Remap {
            from: a0,
            to: a1,
            len: a2,
        },
        UFFD_EVENT_REMOVE => Event::Remove { start: a0, end: a1 },
        UFFD_EVENT_UNMAP => Event::Unmap { start: a0, end: a1 },
        e => Event::Unknown(e),
    }
}

/// An eventfd used to wake a service thread that sleeps in [`Uffd::poll`].
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    /// A new, unsignalled eventfd.
    pub fn new() -> Result<Waker> {
        // SAFETY: eventfd takes two integers and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::last_os("eventfd"));
        }
        // SAFETY: `fd` is a new descriptor this process owns exclusively.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The descriptor to poll.
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Make the fd readable (it stays readable: the wake is sticky).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full
        // counter (EAGAIN) still leaves the fd readable, so errors are moot.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}
