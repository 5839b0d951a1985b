//! Image: a mapped-ram image on a channel.
//!
//! Create (write headers, reserve regions), open (parse and validate, find
//! ramblocks), page writes and reads at ramblock offsets, the in-memory
//! atomic bitmap, sync (bitmap out + fdatasync), finish (end of stream +
//! completion record).

pub mod bitmap;

use crate::channel::Channel;
use crate::error::Result;
use crate::format::ramblock::BlockSpec;
use std::path::Path;
use std::sync::Arc;

/// Flags for [`Image::open`] / [`Image::create`]; values are the C `MR_IMAGE_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ImageFlags(pub u32);

impl ImageFlags {
    /// Open: allow page writes and sync (in-place update).
    pub const READ_WRITE: ImageFlags = ImageFlags(0x1);
    /// Page data through `O_DIRECT`.
    pub const DIRECT: ImageFlags = ImageFlags(0x2);
    /// Open: accept an image that is not complete (recover what is there).
    pub const RECOVER: ImageFlags = ImageFlags(0x4);

    pub fn contains(self, o: ImageFlags) -> bool {
        self.0 & o.0 == o.0
    }
}

impl std::ops::BitOr for ImageFlags {
    type Output = ImageFlags;
    fn bitor(self, rhs: ImageFlags) -> ImageFlags {
        ImageFlags(self.0 | rhs.0)
    }
}

/// What a caller may know about one ramblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub idstr: String,
    pub used_length: u64,
    pub page_size: u64,
    pub bitmap_offset: u64,
    pub pages_offset: u64,
    pub pages_present: u64,
}

/// Progress callback: (bytes done, bytes total) -> keep going.
pub type ProgressFn = Box<dyn FnMut(u64, u64) -> bool + Send>;

/// A mapped-ram image. All page calls are safe from many threads at once.
pub struct Image {
    _todo: (),
}

impl Image {
    /// Create a new image file (mode 0600, truncated) for `machine_type` with
    /// these ramblocks.
    pub fn create(
        path: &Path,
        machine_type: &str,
        blocks: &[BlockSpec],
        flags: ImageFlags,
    ) -> Result<Image> {
        let _ = (path, machine_type, blocks, flags);
        todo!()
    }

    /// Open an existing image. A libvirt save-image header is recognised.
    pub fn open(path: &Path, flags: ImageFlags) -> Result<Image> {
        let _ = (path, flags);
        todo!()
    }

    /// Create on an open channel with the stream starting at `base`.
    pub fn create_on(
        ch: Channel,
        base: u64,
        machine_type: &str,
        blocks: &[BlockSpec],
        flags: ImageFlags,
    ) -> Result<Image> {
        let _ = (ch, base, machine_type, blocks, flags);
        todo!()
    }

    /// Open on a channel; `base` None = detect (libvirt header or 0).
    pub fn open_on(ch: Arc<Channel>, base: Option<u64>, flags: ImageFlags) -> Result<Image> {
        let _ = (ch, base, flags);
        todo!()
    }

    pub fn block_count(&self) -> usize {
        todo!()
    }

    pub fn block_info(&self, block: usize) -> Result<BlockInfo> {
        let _ = block;
        todo!()
    }

    pub fn find_block(&self, idstr: &str) -> Result<usize> {
        let _ = idstr;
        todo!()
    }

    pub fn machine_type(&self) -> &str {
        todo!()
    }

    pub fn capabilities(&self) -> &[String] {
        todo!()
    }

    /// True when the stream visibly ended (and no in-place update is open).
    pub fn is_complete(&self) -> bool {
        todo!()
    }

    /// Absolute file offset where the QEMU stream starts (0 unless inside a
    /// container such as libvirt's save image).
    pub fn stream_offset(&self) -> u64 {
        todo!()
    }

    /// The libvirt header, when the image is inside one.
    pub fn libvirt_header(&self) -> Option<&crate::format::libvirt::LibvirtHeader> {
        todo!()
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Arc<Channel> {
        todo!()
    }

    /// Logical file size and bytes allocated on disk.
    pub fn file_size(&self) -> Result<u64> {
        todo!()
    }
    pub fn allocated_bytes(&self) -> Result<u64> {
        todo!()
    }

    /// Whether page `index` of `block` is present (bit set).
    pub fn page_present(&self, block: usize, index: u64) -> Result<bool> {
        let _ = (block, index);
        todo!()
    }

    /// Write whole pages from raw memory.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes for the call's duration.
    pub unsafe fn write_pages_raw(
        &self,
        block: usize,
        offset: u64,
        ptr: *const u8,
        len: u64,
    ) -> Result<()> {
        let _ = (block, offset, ptr, len);
        todo!()
    }

    /// Cancel the save/restore operations running on this image (they
    /// return `Error::Cancelled`); later operations are not affected.
    pub fn cancel(&self) {
        todo!()
    }

    /// Install (or remove) a progress callback for save/restore: called
    /// with (bytes done, bytes total) on the thread that started the
    /// operation; returning false cancels it.
    pub fn set_progress(&self, cb: Option<ProgressFn>) {
        let _ = cb;
        todo!()
    }

    /// Write one page at byte `offset` inside `block`.
    pub fn write_page(&self, block: usize, offset: u64, page: &[u8]) -> Result<()> {
        let _ = (block, offset, page);
        todo!()
    }

    /// Write whole pages from `buf` (length a multiple of the page size).
    pub fn write_pages(&self, block: usize, offset: u64, buf: &[u8]) -> Result<()> {
        let _ = (block, offset, buf);
        todo!()
    }

    /// Read one page; returns true when present, false for a zero page
    /// (then `page` is zero-filled).
    pub fn read_page(&self, block: usize, offset: u64, page: &mut [u8]) -> Result<bool> {
        let _ = (block, offset, page);
        todo!()
    }

    /// Bitmaps out + fdatasync.
    pub fn sync(&self) -> Result<()> {
        todo!()
    }

    /// End of stream + completion record, durable.
    pub fn finish(&self) -> Result<()> {
        todo!()
    }

    /// Close; reports a failed final sync.
    pub fn close(self) -> Result<()> {
        todo!()
    }
}
