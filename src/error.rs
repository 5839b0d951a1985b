//! The crate's one error type and its mapping to negative errno values.
//!
//! Every variant carries a complete, specific message (which block, which
//! offset, expected vs. found). The C layer returns `-err.errno()` and keeps
//! the message for `mr_last_error()`.

use std::io;

/// `errno` used for "the image was never finished (or is being updated in
/// place)". `EUCLEAN` ("structure needs cleaning") is otherwise unused by the
/// library, so a caller can tell this case from corruption (`EBADMSG`).
pub const EINCOMPLETE: i32 = libc::EUCLEAN;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed; the errno passes through.
    #[error("{msg}: {}", os_text(.source))]
    Io {
        /// What was being done (file, offset).
        msg: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Malformed, corrupt or truncated input (`EBADMSG`).
    #[error("{0}")]
    Corrupt(String),
    /// Valid but unsupported input, e.g. a newer header version (`ENOTSUP`).
    #[error("{0}")]
    Unsupported(String),
    /// No such ramblock (`ENOENT`).
    #[error("{0}")]
    NotFound(String),
    /// Offset or length outside a ramblock (`ERANGE`).
    #[error("{0}")]
    OutOfRange(String),
    /// A caller passed an invalid argument (`EINVAL`).
    #[error("{0}")]
    Invalid(String),
    /// The image was not finished, or an in-place update was interrupted
    /// ([`EINCOMPLETE`]).
    #[error("{0}")]
    Incomplete(String),
    /// The operation was cancelled (`ECANCELED`).
    #[error("{0}")]
    Cancelled(String),
    /// A write to an image that was opened read-only (`EPERM`). Other calls
    /// the handle's state does not allow are `Invalid`.
    #[error("{0}")]
    ReadOnly(String),
}

impl Error {
    /// An OS error with context; `msg` should name the file and offset.
    pub fn io(msg: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            msg: msg.into(),
            source,
        }
    }

    /// An OS error from the current `errno`.
    pub fn last_os(msg: impl Into<String>) -> Self {
        Error::io(msg, io::Error::last_os_error())
    }

    /// An OS error from a raw errno value.
    pub fn from_errno(msg: impl Into<String>, errno: i32) -> Self {
        Error::io(msg, io::Error::from_raw_os_error(errno))
    }

    /// The positive errno value this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => match source.raw_os_error() {
                Some(e) if e > 0 => e,
                _ => match source.kind() {
                    io::ErrorKind::UnexpectedEof => libc::EIO,
                    io::ErrorKind::WriteZero => libc::ENOSPC,
                    io::ErrorKind::InvalidInput => libc::EINVAL,
                    io::ErrorKind::OutOfMemory => libc::ENOMEM,
                    _ => libc::EIO,
                },
            },
            Error::Corrupt(_) => libc::EBADMSG,
            Error::Unsupported(_) => libc::ENOTSUP,
            Error::NotFound(_) => libc::ENOENT,
            Error::OutOfRange(_) => libc::ERANGE,
            Error::Invalid(_) => libc::EINVAL,
            Error::Incomplete(_) => EINCOMPLETE,
            Error::Cancelled(_) => libc::ECANCELED,
            Error::ReadOnly(_) => libc::EPERM,
        }
    }
}

/// The words of an OS error (`strerror`), without Rust's "(os error N)".
fn os_text(e: &io::Error) -> String {
    let s = e.to_string();
    match e.raw_os_error() {
        Some(code) => s
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&s)
            .to_string(),
        None => s,
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_errno() {
        let s = || "x".to_string();
        let cases = [
            (Error::from_errno("x", libc::ENOSPC), libc::ENOSPC),
            (
                Error::io("x", io::ErrorKind::UnexpectedEof.into()),
                libc::EIO,
            ),
            (
                Error::io("x", io::ErrorKind::WriteZero.into()),
                libc::ENOSPC,
            ),
            (
                Error::io("x", io::ErrorKind::InvalidInput.into()),
                libc::EINVAL,
            ),
            (
                Error::io("x", io::ErrorKind::OutOfMemory.into()),
                libc::ENOMEM,
            ),
            (Error::io("x", io::ErrorKind::Other.into()), libc::EIO),
            (Error::Corrupt(s()), libc::EBADMSG),
            (Error::Unsupported(s()), libc::ENOTSUP),
            (Error::NotFound(s()), libc::ENOENT),
            (Error::OutOfRange(s()), libc::ERANGE),
            (Error::Invalid(s()), libc::EINVAL),
            (Error::Incomplete(s()), libc::EUCLEAN),
            (Error::Cancelled(s()), libc::ECANCELED),
            (Error::ReadOnly(s()), libc::EPERM),
        ];
        for (e, errno) in cases {
            assert_eq!(e.errno(), errno, "{e:?}");
        }
        assert_eq!(EINCOMPLETE, libc::EUCLEAN);
    }

    #[test]
    fn os_errors_read_as_words_not_rust() {
        let e = Error::from_errno("writing /tmp/f at offset 4096", libc::EIO);
        assert_eq!(
            e.to_string(),
            "writing /tmp/f at offset 4096: Input/output error"
        );
        let e = Error::from_errno("opening /x", libc::ENOENT);
        assert_eq!(e.to_string(), "opening /x: No such file or directory");
        assert!(!e.to_string().contains("os error"));
    }
}
