//! Page-aligned memory, like guest RAM from mmap.

/// A zeroed, 4096-aligned heap buffer, freed on drop.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: Aligned owns its allocation exclusively, like a Vec<u8>; the raw
// pointer is never shared by the type itself.
unsafe impl Send for Aligned {}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocating {len} bytes");
        Aligned { ptr, len, layout }
    }
    pub fn from_slice(data: &[u8]) -> Aligned {
        let mut a = Aligned::new(data.len());
        a.as_mut_slice().copy_from_slice(data);
        a
    }
    pub fn ptr(&self) -> *const u8 {
        self.ptr
    }
    pub fn mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes and owned by self; the shared
        // borrow of self keeps writers through `&mut self` away.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the unique borrow of self makes this the
        // only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    /// `len` bytes starting `start` bytes after the aligned start (for
    /// deliberately misaligned windows).
    pub fn window_mut(&mut self, start: usize, len: usize) -> &mut [u8] {
        &mut self.as_mut_slice()[start..start + len]
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with exactly this layout in `new`, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}
