//! The C ABI: argument conversion, panic boundary, handle ownership, error
//! mapping. Rules (ranges, block indexes, lengths, what closing does) belong
//! to the layers below; a function here converts its arguments and calls one
//! of them. Conversion includes copying C arrays and strings into Rust
//! values (the ramblock descriptors, iovec arrays bounded to `IOV_MAX`),
//! caching the strings the query functions hand out, wrapping the C progress
//! callback in a closure, and looking up a block's page size or length to
//! know how much guest memory a pointer covers. One check is the image's
//! rule repeated: `mr_image_create` refuses an empty block array before
//! `Image::create` opens (and truncates) the path.
//!
//! Modules per C type ([`channel`] for `mr_channel`; [`image`], [`image_info`] and
//! [`image_io`] for `mr_image`), `handle` for the ownership model of every
//! handle type; this module holds the private helpers every exported
//! function goes through:
//! - [`call`] / [`call_ssize`] / [`call_ptr`] run the body inside
//!   `catch_unwind`, turn an `Err` into a negative errno and a panic into
//!   `-EIO` (printing nothing), and record the message in the thread-local
//!   last error;
//! - [`arg_ptr`] / [`arg_mut`] / [`arg_str`] reject NULL (and
//!   non-UTF-8 strings) with `-EINVAL` and a message naming the parameter;
//! - [`write_out`] writes an out-parameter (only ever on success).
//!
//! Integers, never Rust enums, come in from C: flags are `u32` validated here
//! or by the layer below.

// The C names are the contract; they are not Rust names.
#![allow(non_camel_case_types)]

pub mod blob;
pub mod channel;
mod constants;
mod handle;
pub mod image;
pub mod image_info;
pub mod image_io;
pub mod lazy;
pub mod options;
pub mod snapshot;

use crate::error::{Error, Result};
use crate::silent_panic;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use constants::*;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Record `msg` as this thread's last error.
fn set_last_error(msg: String) {
    // An interior NUL cannot come from our messages in practice; keep the
    // text before it rather than losing the whole message.
    let msg = match CString::new(msg) {
        Ok(s) => s,
        Err(e) => {
            let pos = e.nul_position();
            let mut bytes = e.into_vec();
            bytes.truncate(pos);
            CString::new(bytes).unwrap_or_default()
        }
    };
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(msg));
}

/// The message of a caught panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string payload)"
    }
}

/// Run an exported function's body: `Ok(n)` returns `n`, `Err(e)` returns
/// `-errno` and records "`func`: message"; a panic returns `-EIO` with
/// "`func`: internal error (a bug in libmappedram): ..." and prints
/// nothing. Nothing unwinds into C.
fn call_with<T>(func: &str, fail: impl Fn(i32) -> T, body: impl FnOnce() -> Result<T>) -> T {
    // A caught panic must not print to the host's stderr.
    silent_panic::install();
    let quiet = silent_panic::enter();
    let res = catch_unwind(AssertUnwindSafe(body));
    drop(quiet);
    match res {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(format!("{func}: {e}"));
            fail(-e.errno())
        }
        Err(payload) => {
            set_last_error(format!(
                "{func}: internal error (a bug in libmappedram): {}",
                panic_message(payload.as_ref())
            ));
            fail(-libc::EIO)
        }
    }
}

/// [`call_with`] for `int` results.
pub(crate) fn call(func: &str, body: impl FnOnce() -> Result<c_int>) -> c_int {
    call_with(func, |e| e, body)
}

/// [`call_with`] for `ssize_t` results.
pub(crate) fn call_ssize(
    func: &str,
    body: impl FnOnce() -> Result<libc::ssize_t>,
) -> libc::ssize_t {
    call_with(func, |e| e as libc::ssize_t, body)
}

/// [`call_with`] for functions returning a pointer (NULL on failure).
pub(crate) fn call_ptr<T>(func: &str, body: impl FnOnce() -> Result<*const T>) -> *const T {
    call_with(func, |_| std::ptr::null(), body)
}

/// The `Error` for a NULL argument.
fn null_arg(name: &str) -> Error {
    Error::Invalid(format!("argument `{name}` is NULL"))
}

/// Check a `*const T` argument for NULL and hand it back (not
/// dereferenced: guest memory is never turned into a reference, and an
/// array's pointer keeps its provenance over every element).
pub(crate) fn arg_ptr<T>(p: *const T, name: &str) -> Result<*const T> {
    if p.is_null() {
        Err(null_arg(name))
    } else {
        Ok(p)
    }
}

/// Check a `*mut T` argument for NULL and hand it back (not dereferenced).
pub(crate) fn arg_mut<T>(p: *mut T, name: &str) -> Result<*mut T> {
    if p.is_null() {
        Err(null_arg(name))
    } else {
        Ok(p)
    }
}

/// Borrow a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// When non-NULL, `p` must point to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|e| Error::Invalid(format!("argument `{name}` is not valid UTF-8: {e}")))
}

/// Write an out-parameter (call only on success).
///
/// # Safety
/// `p` must be non-NULL (checked with [`arg_mut`]) and valid for writes.
pub(crate) unsafe fn write_out<T>(p: *mut T, v: T) {
    // SAFETY: the caller checked `p` and guarantees it is writable.
    unsafe { p.write(v) }
}

/// Reject unknown flag bits with a message naming the parameter.
pub(crate) fn check_flags(flags: u32, known: u32, what: &str) -> Result<()> {
    if flags & !known != 0 {
        return Err(Error::Invalid(format!(
            "unknown {what} flags 0x{:x} (known: 0x{known:x})",
            flags & !known
        )));
    }
    Ok(())
}

/// This thread's message for its last failed call; never NULL (`""` when
/// no call has failed on this thread). Valid until the thread's next failing
/// call into the library.
#[no_mangle]
pub extern "C" fn mr_last_error() -> *const c_char {
    let p = catch_unwind(|| {
        LAST_ERROR.with(|slot| match &*slot.borrow() {
            Some(s) => s.as_ptr(),
            None => c"".as_ptr(),
        })
    });
    p.unwrap_or(c"internal error (a bug in libmappedram) in mr_last_error".as_ptr())
}

/// The library version ("MAJOR.MINOR.PATCH"), a static string.
#[no_mangle]
pub extern "C" fn mr_version() -> *const c_char {
    const V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("version has an interior NUL"),
        };
    V.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_layers_below() {
        assert_eq!(MR_EINCOMPLETE, crate::error::EINCOMPLETE);
        assert_eq!(MR_EINCOMPLETE, libc::EUCLEAN);
        use crate::channel::OpenFlags;
        assert_eq!(MR_OPEN_READ, OpenFlags::READ.bits());
        assert_eq!(MR_OPEN_WRITE, OpenFlags::WRITE.bits());
        assert_eq!(MR_OPEN_CREATE, OpenFlags::CREATE.bits());
        assert_eq!(MR_OPEN_TRUNC, OpenFlags::TRUNC.bits());
        assert_eq!(MR_OPEN_DIRECT, OpenFlags::DIRECT.bits());
        use crate::image::ImageFlags;
        assert_eq!(MR_IMAGE_READ_WRITE, ImageFlags::READ_WRITE.0);
        assert_eq!(MR_IMAGE_DIRECT, ImageFlags::DIRECT.0);
        assert_eq!(MR_IMAGE_RECOVER, ImageFlags::RECOVER.0);
        assert_eq!(MR_IMAGE_AUTO_DIRECT, ImageFlags::AUTO_DIRECT.0);
    }

    fn last_error() -> String {
        // SAFETY: mr_last_error never returns NULL and the string lives
        // until this thread's next failing call.
        unsafe { CStr::from_ptr(mr_last_error()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn errors_and_panics_become_errno_and_message() {
        std::thread::spawn(|| {
            assert_eq!(last_error(), "");
            let r = call("mr_test", || Err(Error::NotFound("no ramblock `x`".into())));
            assert_eq!(r, -libc::ENOENT);
            assert_eq!(last_error(), "mr_test: no ramblock `x`");
            assert_eq!(call("mr_test", || Ok(7)), 7);
            // Success leaves the last failure's message in place.
            assert_eq!(last_error(), "mr_test: no ramblock `x`");
            let r = call("mr_boom", || -> Result<c_int> { panic!("kaboom {}", 42) });
            assert_eq!(r, -libc::EIO);
            assert_eq!(
                last_error(),
                "mr_boom: internal error (a bug in libmappedram): kaboom 42"
            );
            let r = call_ssize("mr_boom", || -> Result<libc::ssize_t> { panic!("static") });
            assert_eq!(r, -(libc::EIO as libc::ssize_t));
            assert_eq!(
                last_error(),
                "mr_boom: internal error (a bug in libmappedram): static"
            );
            let p: *const u8 = call_ptr("mr_null", || Err(Error::Invalid("bad".into())));
            assert!(p.is_null());
        })
        .join()
        .unwrap();
    }

    /// Run in a child process (see below): a panic inside the boundary,
    /// also in an engine worker thread, must print nothing.
    #[test]
    fn quiet_panic_child() {
        if std::env::var_os("MR_QUIET_PANIC_CHILD").is_none() {
            return;
        }
        let r = call("mr_boom", || -> Result<c_int> { panic!("kaboom-main") });
        assert_eq!(r, -libc::EIO);
        let r = call("mr_boom", || -> Result<c_int> {
            let ctl = crate::engine::Control::new();
            crate::engine::run_for_test(&ctl, |u| assert!(u != 1, "kaboom-worker"))
        });
        assert_eq!(r, -libc::EIO);
        assert!(last_error().contains("kaboom-worker") || last_error().contains("panicked"));
    }

    #[test]
    fn a_caught_panic_prints_nothing() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "ffi::tests::quiet_panic_child", "--nocapture"])
            .env("MR_QUIET_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed: {stderr}");
        assert!(
            !stderr.contains("kaboom"),
            "a caught panic printed: {stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    fn null_and_flag_checks() {
        let e = arg_ptr::<u8>(std::ptr::null(), "ch").unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert_eq!(e.to_string(), "argument `ch` is NULL");
        assert!(arg_mut::<u8>(std::ptr::null_mut(), "out").is_err());
        // SAFETY: a NUL-terminated literal.
        let e = unsafe { arg_str(c"\xff".as_ptr(), "path") }.unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        let e = check_flags(0x21, 0x7, "image").unwrap_err();
        assert_eq!(e.to_string(), "unknown image flags 0x20 (known: 0x7)");
        check_flags(0x5, 0x7, "image").unwrap();
    }

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(mr_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
