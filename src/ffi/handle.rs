//! Handle ownership, one model per C type (after rustls-ffi's `Castable`).
//!
//! Each opaque C type names the Rust type behind it and how the caller owns
//! it:
//! - [`OwnershipBox`]: the handle is a `Box` the caller owns until the type's
//!   close function (`mr_image`);
//! - [`OwnershipArc`]: the handle is one reference of an `Arc`; the library
//!   may take further references (`mr_channel`: an image holds its channel).
//!
//! Every conversion between a handle and its Rust value goes through the
//! few functions here, which is where the soundness arguments live; the
//! exported functions only state that the caller passes a live handle.

use crate::error::{Error, Result};
use std::sync::Arc;

/// The handle is a `Box<RustType>` owned by the C caller.
pub(crate) struct OwnershipBox;
/// The handle is one strong reference of an `Arc<RustType>`.
pub(crate) struct OwnershipArc;

/// An opaque C type and the Rust value behind its pointers.
pub(crate) trait Castable {
    /// [`OwnershipBox`] or [`OwnershipArc`].
    type Ownership;
    /// What a handle points to.
    type RustType;
}

/// Borrow the value behind a handle; `Err` (`EINVAL`, naming `name`) for
/// NULL.
///
/// # Safety
/// `p` must be NULL or a live handle of type `C` made by this module, not
/// closed during `'a`.
pub(crate) unsafe fn try_ref<'a, C: Castable>(p: *const C, name: &str) -> Result<&'a C::RustType> {
    let p = p.cast::<C::RustType>();
    // SAFETY: a live handle points at the `RustType` inside its Box or Arc
    // (made by `box_into_handle` / `arc_into_handle`), which lives until the
    // close function runs; the caller guarantees that is after 'a. All
    // handle types are used through shared references only.
    unsafe { p.as_ref() }.ok_or_else(|| Error::Invalid(format!("argument `{name}` is NULL")))
}

/// Give a new value to C as a boxed handle.
pub(crate) fn box_into_handle<C: Castable<Ownership = OwnershipBox>>(v: C::RustType) -> *mut C {
    Box::into_raw(Box::new(v)).cast()
}

/// Take a boxed handle back (its close function); `None` for NULL.
///
/// # Safety
/// `p` must be NULL or a live handle from [`box_into_handle`], not used
/// again afterwards.
pub(crate) unsafe fn box_from_handle<C: Castable<Ownership = OwnershipBox>>(
    p: *mut C,
) -> Option<Box<C::RustType>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from `Box::into_raw` of a `RustType`, and the caller
    // gives up the handle, so the Box is rebuilt exactly once.
    Some(unsafe { Box::from_raw(p.cast::<C::RustType>()) })
}

/// Give one `Arc` reference to C as a handle.
pub(crate) fn arc_into_handle<C: Castable<Ownership = OwnershipArc>>(
    v: Arc<C::RustType>,
) -> *mut C {
    Arc::into_raw(v).cast_mut().cast()
}

/// A new reference to the value behind a shared handle (the handle keeps
/// its own); `Err` for NULL.
///
/// # Safety
/// `p` must be NULL or a live handle from [`arc_into_handle`].
pub(crate) unsafe fn clone_arc<C: Castable<Ownership = OwnershipArc>>(
    p: *const C,
    name: &str,
) -> Result<Arc<C::RustType>> {
    if p.is_null() {
        return Err(Error::Invalid(format!("argument `{name}` is NULL")));
    }
    let p = p.cast::<C::RustType>();
    // SAFETY: `p` came from `Arc::into_raw` and the live handle still owns
    // its reference (count >= 1); we add one and adopt it.
    unsafe {
        Arc::increment_strong_count(p);
        Ok(Arc::from_raw(p))
    }
}

/// Take back the reference a shared handle owns (its close function);
/// `None` for NULL.
///
/// # Safety
/// `p` must be NULL or a live handle from [`arc_into_handle`], not used
/// again afterwards.
pub(crate) unsafe fn arc_from_handle<C: Castable<Ownership = OwnershipArc>>(
    p: *mut C,
) -> Option<Arc<C::RustType>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the handle owns one reference from `Arc::into_raw`; the caller
    // gives up the handle, so it is taken back exactly once.
    Some(unsafe { Arc::from_raw(p.cast_const().cast::<C::RustType>()) })
}

/// Borrow the value behind a handle argument of an exported function, whose
/// `# Safety` section requires NULL or a live handle (every one does); the
/// error for NULL names the parameter.
macro_rules! try_ref_from_ptr {
    ($p:ident) => {
        // SAFETY: the exported function's contract: `$p` is NULL or a live
        // handle of its type that stays open for the call.
        unsafe { $crate::ffi::handle::try_ref($p, stringify!($p)) }
    };
}
pub(crate) use try_ref_from_ptr;

/// Borrow a NUL-terminated UTF-8 string argument of an exported function,
/// whose `# Safety` section requires NULL or a valid string (every one
/// does); the error names the parameter.
macro_rules! try_str_from_ptr {
    ($p:ident) => {
        // SAFETY: the exported function's contract: `$p` is NULL or a
        // NUL-terminated string valid for the call.
        unsafe { $crate::ffi::arg_str($p, stringify!($p)) }
    };
}
pub(crate) use try_str_from_ptr;
