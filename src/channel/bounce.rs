//! Aligned bounce buffers and the block locks for read-modify-write.

use parking_lot::{Mutex, MutexGuard};
use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Most bytes one bounce buffer holds; unaligned requests are processed in
/// chunks of at most this size (never an allocation proportional to the
/// request). A multiple of every supported direct-I/O alignment.
pub(crate) const BOUNCE_MAX: usize = 1 << 20;

/// A zero-initialised heap buffer aligned for `O_DIRECT`, freed with the
/// layout it was allocated with.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` bytes (non-zero, at most [`BOUNCE_MAX`]) aligned to `align` (a
    /// power of two). `None` if the layout is invalid or allocation fails.
    pub(crate) fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        if len == 0 || len > BOUNCE_MAX {
            return None;
        }
        let layout = Layout::from_size_align(len, align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        Some(AlignedBuf {
            ptr: NonNull::new(p)?,
            layout,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.layout.size()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    #[cfg(test)]
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `len` initialised (zeroed) bytes owned by
        // `self`, borrowed mutably for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly `layout`.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

const STRIPES: usize = 256;

/// A striped table of locks keyed by lock-block index (`offset / gran`).
///
/// Any write that covers only part of a lock block (a bounced write with its
/// read-modify-write of edge blocks, an aligned direct write that does not
/// cover a whole lock block, a buffered write, a hole punch) holds the locks of
/// its partly covered edge blocks while it runs. Fully covered blocks need no
/// lock: a writer to disjoint bytes cannot touch them. `gran` is at least the
/// page size, so a buffered write (which dirties whole page-cache pages) never
/// races a direct write into the same page.
pub(crate) struct BlockLocks {
    gran: u64,
    stripes: Box<[Mutex<()>]>,
}

/// Up to two held stripe locks.
pub(crate) struct EdgeGuard<'a> {
    _a: Option<MutexGuard<'a, ()>>,
    _b: Option<MutexGuard<'a, ()>>,
}

impl BlockLocks {
    pub(crate) fn new(gran: u64) -> Self {
        BlockLocks {
            gran,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub(crate) fn gran(&self) -> u64 {
        self.gran
    }

    /// Lock the lock blocks that `[start, end)` covers only partly.
    /// Acquires at most two stripes, in ascending stripe order, so two
    /// callers can never deadlock; a caller holds one guard at a time.
    pub(crate) fn lock_edges(&self, start: u64, end: u64) -> EdgeGuard<'_> {
        let g = self.gran;
        let first = (start % g != 0).then_some(start / g);
        let last = (end % g != 0 && end > start).then_some(end / g);
        let stripe = |b: u64| (b % STRIPES as u64) as usize;
        let mut ids: [Option<usize>; 2] = [first.map(stripe), last.map(stripe)];
        if ids[0].is_some() && ids[0] == ids[1] {
            ids[1] = None;
        }
        if let (Some(a), Some(b)) = (ids[0], ids[1]) {
            if a > b {
                ids = [Some(b), Some(a)];
            }
        }
        let a = ids[0].map(|i| self.stripes[i].lock());
        let b = ids[1].map(|i| self.stripes[i].lock());
        EdgeGuard { _a: a, _b: b }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let mut b = AlignedBuf::new(8192, 4096).unwrap();
        assert_eq!(b.as_mut_ptr() as usize % 4096, 0);
        assert_eq!(b.len(), 8192);
        assert!(b.as_mut_slice().iter().all(|&x| x == 0));
        assert!(AlignedBuf::new(0, 4096).is_none());
        assert!(AlignedBuf::new(BOUNCE_MAX + 1, 4096).is_none());
        assert!(AlignedBuf::new(4096, 3).is_none());
    }

    #[test]
    fn edge_locks_do_not_self_deadlock() {
        let l = BlockLocks::new(4096);
        // Same block at both edges, same stripe at both edges, no edges.
        drop(l.lock_edges(10, 20));
        drop(l.lock_edges(10, 4096 * STRIPES as u64 + 20));
        drop(l.lock_edges(0, 8192));
        let g = l.lock_edges(4097, 4096 * 9 + 1);
        // Stripes 1 and 9 are held; 2 is free.
        assert!(l.stripes[1].try_lock().is_none());
        assert!(l.stripes[9].try_lock().is_none());
        assert!(l.stripes[2].try_lock().is_some());
        drop(g);
        assert!(l.stripes[1].try_lock().is_some());
    }
}
