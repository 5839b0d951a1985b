//! Scratch buffers of one restore: where the absent pages inside a
//! coalesced read land (and are dropped). Page aligned, so a read through
//! `O_DIRECT` needs no bounce; one per unit in flight, reused.

use parking_lot::Mutex;
use std::alloc::{alloc, dealloc, Layout};

/// Alignment of scratch buffers (any `O_DIRECT` memory alignment up to a
/// page).
const ALIGN: usize = 4096;

/// One page-aligned buffer (uninitialised: the kernel writes it, nothing
/// reads it).
pub(crate) struct Scratch {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: `Scratch` owns its allocation; it is handed between threads
// whole, never shared.
unsafe impl Send for Scratch {}

impl Scratch {
    fn new(len: usize) -> Option<Scratch> {
        let layout = Layout::from_size_align(len.max(ALIGN), ALIGN).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        (!ptr.is_null()).then_some(Scratch { ptr, layout })
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// Scratch buffers of `len` bytes, created on demand and reused.
pub(crate) struct ScratchPool {
    len: usize,
    free: Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    pub(crate) fn new(len: usize) -> ScratchPool {
        ScratchPool {
            len,
            free: Mutex::new(Vec::new()),
        }
    }

    /// A buffer (a reused one, or a new one; `None` when allocation fails).
    pub(crate) fn take(&self) -> Option<Scratch> {
        self.free.lock().pop().or_else(|| Scratch::new(self.len))
    }

    pub(crate) fn give(&self, s: Scratch) {
        self.free.lock().push(s);
    }
}
