//! Image: a mapped-ram image on a channel.
//!
//! Create (validate, write headers, reserve regions; a new file is written
//! unnamed and renamed into place: `create.rs`), open (file type, lock,
//! parse and validate, find ramblocks: `open.rs`), page writes and reads at
//! ramblock offsets (`pages.rs`), the
//! in-memory atomic bitmap (`bitmap.rs`), sync and finish with their
//! durability order and the in-place-update mark (`state.rs`).
//!
//! Completion: an image counts as complete when its stream visibly ended
//! (EOF + VMDESCRIPTION JSON at the file's end). While an in-place update of
//! a complete image is open, the VMDESCRIPTION type byte is replaced by a
//! mark (durably, before the first page write), so a crash mid-update leaves
//! an image that opens as incomplete rather than one with torn pages.

pub mod bitmap;
mod blobs;
mod create;
pub mod iomode;
mod open;
mod pages;
mod span;
mod state;
pub mod zero;

use crate::channel::{Channel, OpenFlags};
use crate::error::{Error, Result};
use crate::format::libvirt::LibvirtHeader;
use crate::format::ramblock::{self, BlockLayout, BlockSpec, StreamLayout};
use bitmap::AtomicBitmap;
pub(crate) use create::{check_create_flags, create_planned, plan_new};
pub(crate) use open::block_device_error;
pub use open::refuse_block_device;
pub(crate) use pages::context;
use parking_lot::{Mutex, RwLock};
pub(crate) use state::DiskState;
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
    /// Open/create: take no lock (for callers that coordinate access
    /// themselves, like QEMU's `locking=off`).
    pub const NO_LOCK: ImageFlags = ImageFlags(0x8);
    /// Create/open by path: choose `O_DIRECT` or the page cache by the rule
    /// in [`iomode`] (ignored with [`ImageFlags::DIRECT`]);
    /// [`Image::is_direct`] tells which.
    pub const AUTO_DIRECT: ImageFlags = ImageFlags(0x10);
    const ALL: u32 = 0x1f;

    /// Whether every flag of `o` is set.
    pub fn contains(self, o: ImageFlags) -> bool {
        self.0 & o.0 == o.0
    }

    fn check(self, allowed: u32, what: &str) -> Result<()> {
        if self.0 & !Self::ALL != 0 {
            return Err(Error::Invalid(format!(
                "unknown image flags 0x{:x}",
                self.0 & !Self::ALL
            )));
        }
        if self.0 & !allowed != 0 {
            return Err(Error::Invalid(format!(
                "image flags 0x{:x} are not valid for {what}",
                self.0 & !allowed
            )));
        }
        Ok(())
    }
}

impl std::ops::BitOr for ImageFlags {
    type Output = ImageFlags;
    fn bitor(self, rhs: ImageFlags) -> ImageFlags {
        ImageFlags(self.0 | rhs.0)
    }
}

/// Flags valid for creating an image.
const CREATE_FLAGS: u32 = ImageFlags::DIRECT.0 | ImageFlags::READ_WRITE.0 | ImageFlags::NO_LOCK.0;

/// What a caller may know about one ramblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// The block's name (QEMU's idstr).
    pub idstr: String,
    /// Bytes of guest memory in the block.
    pub used_length: u64,
    /// Target page size.
    pub page_size: u64,
    /// Absolute file offset of the block's bitmap.
    pub bitmap_offset: u64,
    /// Absolute file offset of the block's first page.
    pub pages_offset: u64,
    /// Pages whose bit is set.
    pub pages_present: u64,
}

pub(crate) struct Block {
    pub(crate) layout: BlockLayout,
    pub(crate) bitmap: AtomicBitmap,
    /// Pages whose last write (or discard) failed and was not yet redone
    /// successfully: while any is set the image cannot be declared
    /// complete (their slots may be torn).
    pub(crate) failed: AtomicBitmap,
    /// errno of the latest failed write (reported again by the latch).
    pub(crate) failed_errno: std::sync::atomic::AtomicI32,
    /// The chunk table of a compressed / checksummed image.
    pub(crate) chunks: Option<crate::compress::chunked::ChunkTable>,
}

impl Block {
    pub(crate) fn new(layout: BlockLayout, bitmap: AtomicBitmap) -> Block {
        let failed = AtomicBitmap::new(layout.pages());
        Block {
            layout,
            bitmap,
            failed,
            failed_errno: std::sync::atomic::AtomicI32::new(libc::EIO),
            chunks: None,
        }
    }
}

/// A mapped-ram image. All page calls are safe from many threads at once.
///
/// # Example
///
/// Write two pages into a new image, finish it, and read them back; a page
/// never written reads as a zero page:
///
/// ```
/// use mappedram::{BlockSpec, Image, ImageFlags};
///
/// # fn main() -> mappedram::Result<()> {
/// let path = std::env::temp_dir().join(format!("doc-image-{}.img", std::process::id()));
/// let blocks = [BlockSpec { idstr: "mem".into(), used_length: 1 << 20, page_size: 4096 }];
/// let img = Image::create(&path, "pc-i440fx-10.0", &blocks, ImageFlags::default())?;
/// let mem = img.find_block("mem")?;
/// img.write_page(mem, 0, &[0xaa; 4096])?;
/// img.write_page(mem, 8192, &[0x55; 4096])?;
/// img.finish()?; // end of stream + completion record, durable
/// img.close()?;
///
/// let img = Image::open(&path, ImageFlags::default())?;
/// assert!(img.is_complete());
/// assert_eq!(img.block_info(mem)?.pages_present, 2);
/// let mut page = [0u8; 4096];
/// assert!(img.read_page(mem, 8192, &mut page)?); // present
/// assert_eq!(page, [0x55; 4096]);
/// assert!(!img.read_page(mem, 4096, &mut page)?); // absent: a zero page
/// img.close()?;
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
///
/// Whole ramblocks are saved from and restored into guest memory in
/// parallel by [`crate::engine`].
pub struct Image {
    ch: Arc<Channel>,
    libvirt: Option<LibvirtHeader>,
    layout: StreamLayout,
    blocks: Vec<Block>,
    writable: bool,
    /// Page writers hold it shared; setting/clearing the update mark and
    /// finishing hold it exclusively.
    gate: RwLock<()>,
    state: Mutex<DiskState>,
    /// Serialises sync/finish/close.
    sync_lock: Mutex<()>,
    /// Named blobs (a VMM's own state) carried in the stream's tail.
    blobs: blobs::BlobStore,
    /// The channel's image lock was taken by `open`/`create` (released by
    /// `close` before the channel is closed).
    locked: bool,
}

impl Image {
    /// Create a new image file (mode 0600) for `machine_type` with these
    /// ramblocks. Flags: [`ImageFlags::DIRECT`], [`ImageFlags::NO_LOCK`];
    /// [`ImageFlags::READ_WRITE`] is accepted and changes nothing (a new
    /// image is always writable).
    ///
    /// Everything is validated before the path is touched; the image is
    /// written under no name (or a temporary one) in the path's directory
    /// and renamed over the path only once its headers are written, so a
    /// failed create leaves an existing file as it was and no file where
    /// there was none. See `create.rs` for the details (symbolic links,
    /// ownership, what a crash leaves).
    pub fn create(
        path: &Path,
        machine_type: &str,
        blocks: &[BlockSpec],
        flags: ImageFlags,
    ) -> Result<Image> {
        create::create_file(path, machine_type, blocks, flags)
    }

    /// Create on an open, writable channel with the stream starting at
    /// `base` (bytes before `base`, e.g. a container header, are kept;
    /// everything after it is discarded). Nothing is written when the
    /// arguments are invalid. The channel is not locked (its owner decides;
    /// `NO_LOCK` is accepted and changes nothing).
    pub fn create_on(
        ch: Arc<Channel>,
        base: u64,
        machine_type: &str,
        blocks: &[BlockSpec],
        flags: ImageFlags,
    ) -> Result<Image> {
        flags.check(CREATE_FLAGS, "create")?;
        if !ch.flags().contains(OpenFlags::WRITE) {
            return Err(Error::Invalid(format!(
                "creating an image on {} needs a channel opened with MR_OPEN_WRITE",
                ch.name()
            )));
        }
        if flags.contains(ImageFlags::DIRECT) && ch.dio_align().is_none() {
            return Err(Error::Invalid(format!(
                "MR_IMAGE_DIRECT needs a channel opened with MR_OPEN_DIRECT ({})",
                ch.name()
            )));
        }
        refuse_block_device(&ch)?;
        let layout = create::plan_new(base, machine_type, blocks)?;
        Image::write_new(ch, layout)
    }

    /// Write the headers of a planned new image onto `ch`.
    pub(crate) fn write_new(ch: Arc<Channel>, layout: StreamLayout) -> Result<Image> {
        ch.set_len(layout.base)?;
        for (off, bytes) in ramblock::encode_pieces(&layout) {
            ch.write_all_at(&bytes, off)?;
        }
        let blocks = layout
            .blocks
            .iter()
            .map(|l| Block::new(l.clone(), AtomicBitmap::new(l.pages())))
            .collect();
        Ok(Image::assemble(
            ch,
            None,
            layout,
            blocks,
            true,
            DiskState::Unfinished,
        ))
    }

    pub(crate) fn assemble(
        ch: Arc<Channel>,
        libvirt: Option<LibvirtHeader>,
        layout: StreamLayout,
        blocks: Vec<Block>,
        writable: bool,
        state: DiskState,
    ) -> Image {
        Image {
            ch,
            libvirt,
            layout,
            blocks,
            writable,
            gate: RwLock::new(()),
            state: Mutex::new(state),
            sync_lock: Mutex::new(()),
            blobs: blobs::BlobStore::default(),
            locked: false,
        }
    }

    /// Number of ramblocks.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn block(&self, block: usize) -> Result<&Block> {
        self.blocks.get(block).ok_or_else(|| {
            Error::NotFound(format!(
                "no ramblock with index {block} (the image has {})",
                self.blocks.len()
            ))
        })
    }

    /// Does the file hold this block's bitmap and pages? False for a block
    /// QEMU skipped under `x-ignore-shared` (its memory was shared with the
    /// destination, not saved); page I/O on such a block is `NotFound`.
    pub fn block_present_in_file(&self, block: usize) -> Result<bool> {
        Ok(self.block(block)?.layout.present_in_file())
    }

    /// The block, for page I/O: `NotFound` (`ENOENT`) naming it when its
    /// pages are not in this file.
    pub(crate) fn block_in_file(&self, block: usize) -> Result<&Block> {
        let b = self.block(block)?;
        if !b.layout.present_in_file() {
            return Err(Error::NotFound(format!(
                "ramblock '{}' (index {block}) is not in this file: QEMU skipped it under x-ignore-shared (its memory is shared, not saved), so it has no pages to read or write",
                b.layout.idstr
            )));
        }
        Ok(b)
    }

    /// What is known about ramblock `block` (`NotFound` past the last).
    pub fn block_info(&self, block: usize) -> Result<BlockInfo> {
        let b = self.block(block)?;
        Ok(BlockInfo {
            idstr: b.layout.idstr.clone(),
            used_length: b.layout.used_length,
            page_size: b.layout.page_size,
            bitmap_offset: b.layout.bitmap_offset,
            pages_offset: b.layout.pages_offset,
            pages_present: b.bitmap.count(),
        })
    }

    /// Index of the ramblock named `idstr`.
    pub fn find_block(&self, idstr: &str) -> Result<usize> {
        self.blocks
            .iter()
            .position(|b| b.layout.idstr == idstr)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no ramblock named '{idstr}' (the image has {})",
                    self.blocks
                        .iter()
                        .map(|b| format!("'{}'", b.layout.idstr))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// The machine type the image was saved for.
    pub fn machine_type(&self) -> &str {
        &self.layout.config.machine_type
    }

    /// The migration capabilities recorded in the image.
    pub fn capabilities(&self) -> &[String] {
        &self.layout.config.capabilities
    }

    /// The parsed stream layout (offsets of every block, the EOS).
    pub fn layout(&self) -> &StreamLayout {
        &self.layout
    }

    /// True when the stream visibly ended (and no in-place update is open).
    pub fn is_complete(&self) -> bool {
        let libvirt_ok = self.libvirt.as_ref().is_none_or(|h| h.complete);
        libvirt_ok && matches!(*self.state.lock(), DiskState::Complete { .. })
    }

    /// Absolute file offset where the QEMU stream starts (0 unless inside a
    /// container such as libvirt's save image).
    pub fn stream_offset(&self) -> u64 {
        self.layout.base
    }

    /// The libvirt header, when the image is inside one.
    pub fn libvirt_header(&self) -> Option<&LibvirtHeader> {
        self.libvirt.as_ref()
    }

    /// Whether page data goes through `O_DIRECT` (asked for, or chosen by
    /// [`ImageFlags::AUTO_DIRECT`]).
    pub fn is_direct(&self) -> bool {
        self.ch.dio_align().is_some()
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Arc<Channel> {
        &self.ch
    }

    /// Logical file size.
    pub fn file_size(&self) -> Result<u64> {
        self.ch.size()
    }

    /// Bytes allocated on disk.
    pub fn allocated_bytes(&self) -> Result<u64> {
        self.ch.allocated_bytes()
    }

    /// Whether page `index` of `block` is present (bit set).
    pub fn page_present(&self, block: usize, index: u64) -> Result<bool> {
        let b = self.block(block)?;
        if index >= b.layout.pages() {
            return Err(Error::OutOfRange(format!(
                "ramblock '{}': page index {index} is past its {} pages",
                b.layout.idstr,
                b.layout.pages()
            )));
        }
        Ok(b.bitmap.test(index))
    }

    /// Whether the image was created, or opened with
    /// [`ImageFlags::READ_WRITE`], so that page writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

impl std::ops::BitAnd<u32> for ImageFlags {
    type Output = ImageFlags;
    fn bitand(self, rhs: u32) -> ImageFlags {
        ImageFlags(self.0 & rhs)
    }
}

impl Image {
    /// The runs of present (`set` = true) and absent pages in
    /// `[first, end)` of `block`.
    pub(crate) fn present_runs(
        &self,
        block: usize,
        first: u64,
        end: u64,
        f: impl FnMut(u64, u64, bool),
    ) -> Result<()> {
        let b = self.block(block)?;
        b.bitmap.for_each_run(first, end.min(b.layout.pages()), f);
        Ok(())
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("channel", &self.ch.name())
            .field("machine_type", &self.machine_type())
            .field("stream_offset", &self.layout.base)
            .field("blocks", &self.blocks.len())
            .field("writable", &self.writable)
            .field("state", &*self.state.lock())
            .finish()
    }
}
