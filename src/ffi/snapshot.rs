//! `mr_snapshot`: live copy-on-write snapshot of a ramblock.
//!
//! Ownership: [`OwnershipBox`]: an `mr_snapshot *` is a boxed [`Snapshot`]
//! owned by the caller until `mr_snapshot_stop`. It borrows the `mr_image`
//! it writes to: the image must stay open until `mr_snapshot_stop` returns.

use super::handle::{box_from_handle, box_into_handle, try_ref_from_ptr, Castable, OwnershipBox};
use super::image::mr_image;
use super::{arg_mut, call, write_out};
use crate::snapshot::Snapshot;
use crate::uffd::host::ImageRef;
use std::ffi::{c_int, c_void};

/// A running live snapshot (opaque).
pub struct mr_snapshot {
    _private: [u8; 0],
}

impl Castable for mr_snapshot {
    type Ownership = OwnershipBox;
    type RustType = Snapshot;
}

/// Write-protect `host` (the block's `used_length` bytes, private anonymous,
/// shared memfd/shmem or hugetlbfs memory) and start saving it into
/// ramblock `block` of `img` with `threads` threads (0 = a default). The
/// caller pauses its vCPUs around the start calls of all blocks; after they
/// return the guest runs again while the image receives every page as it
/// was at the start: a write to a page not yet saved is held until the page
/// is copied out (on hugetlbfs the whole huge page). Zero pages stay holes.
///
/// The range is marked `MADV_DONTFORK`: a child forked during the snapshot
/// has no mapping there (a touch raises `SIGSEGV`), never write-protected
/// memory without its handler. The mark stays after `mr_snapshot_stop`;
/// `madvise(MADV_DOFORK)` undoes it.
///
/// # Safety
/// `img` a live, writable image handle that stays open until
/// `mr_snapshot_stop`; `host` a mapping of `used_length` bytes that stays
/// mapped until then; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mr_snapshot_start(
    img: *mut mr_image,
    block: u32,
    host: *mut c_void,
    threads: u32,
    out: *mut *mut mr_snapshot,
) -> c_int {
    call("mr_snapshot_start", || {
        let img = &try_ref_from_ptr!(img)?.inner;
        let host = arg_mut(host, "host")?;
        let out = arg_mut(out, "out")?;
        // SAFETY: the caller keeps `img` open and `host` mapped until
        // `mr_snapshot_stop` (this function's contract).
        let s = unsafe {
            Snapshot::start_ref(
                ImageRef::borrowed(img),
                block as usize,
                host.cast(),
                threads,
            )
        }?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { write_out(out, box_into_handle::<mr_snapshot>(s)) };
        Ok(0)
    })
}

/// Block until every page is saved as of the start instant, or return the
/// first error.
///
/// # Safety
/// `s` a live handle.
#[no_mangle]
pub unsafe extern "C" fn mr_snapshot_wait(s: *mut mr_snapshot) -> c_int {
    call("mr_snapshot_wait", || {
        try_ref_from_ptr!(s)?.wait()?;
        Ok(0)
    })
}

/// Stop the savers, remove the write protection (releasing any held
/// writer), unregister and free the handle (even on failure). Stopping
/// before every page was saved returns `-ECANCELED`: the image then does
/// not hold a consistent snapshot. NULL is accepted.
///
/// # Safety
/// `s` NULL or a live handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn mr_snapshot_stop(s: *mut mr_snapshot) -> c_int {
    call("mr_snapshot_stop", || {
        // SAFETY: per this function's contract (not used again).
        if let Some(s) = unsafe { box_from_handle(s) } {
            s.stop()?;
        }
        Ok(0)
    })
}
