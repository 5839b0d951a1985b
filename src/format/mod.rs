//! Format: encode/decode of the QEMU migration-stream pieces a mapped-ram
//! file holds. Pure functions over bytes — no file I/O here; parsing reads
//! through the [`ReadAt`] trait, which the image layer implements for a
//! channel and tests implement for byte slices. All input is untrusted.
//!
//! INTERFACE CONTRACT (used by the image layer; keep it):
//! - [`ramblock::plan`] lays out a new image; [`ramblock::encode_pieces`] and
//!   [`stream::encode_tail`] give the bytes to write; [`ramblock::parse`] reads
//!   an existing stream through the RAM setup section's EOS;
//!   [`stream::completion`] tells whether the stream visibly ended;
//!   [`libvirt::parse`] recognises libvirt's save-image header.

pub mod blobs;
mod cursor;
pub mod libvirt;
mod ram_parse;
pub mod ramblock;
pub mod stream;

use crate::error::Result;

/// Positional reads from untrusted bytes.
pub trait ReadAt {
    /// Read up to `buf.len()` bytes at `offset`; fewer only at end of input.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
    /// Total size of the input in bytes.
    fn size(&self) -> Result<u64>;
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let len = self.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Byte buffers (tests, in-memory images): `&vec` coerces to `&dyn ReadAt`.
impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
    fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Borrowed byte slices: `&slice` (a `&&[u8]`) coerces to `&dyn ReadAt`.
impl ReadAt for &[u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }
}

/// "QEVM".
pub const QEVM_MAGIC: u32 = 0x5145_564d;
/// The only stream version QEMU writes.
pub const QEVM_VERSION: u32 = 3;

/// Section / record type bytes of the stream.
pub mod section {
    /// `QEMU_VM_EOF`: the end of the device state.
    pub const EOF: u8 = 0x00;
    /// `QEMU_VM_SECTION_START`: the first part of an iterative section
    /// (RAM's setup, which carries the ramblock list).
    pub const START: u8 = 0x01;
    /// `QEMU_VM_SECTION_PART`: a later part of an iterative section.
    pub const PART: u8 = 0x02;
    /// `QEMU_VM_SECTION_END`: the last part of an iterative section.
    pub const END: u8 = 0x03;
    /// `QEMU_VM_SECTION_FULL`: a whole device section in one piece.
    pub const FULL: u8 = 0x04;
    /// `QEMU_VM_SUBSECTION`: a subsection inside a section.
    pub const SUBSECTION: u8 = 0x05;
    /// `QEMU_VM_VMDESCRIPTION`: the JSON description after the EOF.
    pub const VMDESCRIPTION: u8 = 0x06;
    /// `QEMU_VM_CONFIGURATION`: the machine type and its subsections.
    pub const CONFIGURATION: u8 = 0x07;
    /// `QEMU_VM_COMMAND`: a migration command record.
    pub const COMMAND: u8 = 0x08;
    /// `QEMU_VM_SECTION_FOOTER`: ends a section (type byte, be32 id).
    pub const FOOTER: u8 = 0x7e;
}

/// RAM section flag (low bits of a be64 record): the total RAM size and
/// the ramblock list follow. One of the two flags mapped-ram uses.
pub const RAM_SAVE_FLAG_MEM_SIZE: u64 = 0x4;
/// RAM section flag: end of a RAM section part.
pub const RAM_SAVE_FLAG_EOS: u64 = 0x10;
/// The EOS that ends the RAM setup payload is one be64.
pub const RAM_EOS_LEN: u64 = 8;
/// A section footer: the type byte and the be32 section id.
pub const SECTION_FOOTER_LEN: u64 = 5;
/// The RAM section's idstr.
pub const RAM_IDSTR: &str = "ram";
/// The RAM section's version (the only one written and accepted).
pub const RAM_SECTION_VERSION: u32 = 4;
/// The mapped-ram header version this library writes and the newest it reads.
pub const MAPPED_RAM_HEADER_VERSION: u32 = 1;
/// Page regions start on this boundary.
pub const PAGES_ALIGN: u64 = 1 << 20;
/// Capability name QEMU records for x-ignore-shared (recorded before
/// [`CAP_MAPPED_RAM`] when both are on).
pub const CAP_X_IGNORE_SHARED: &str = "x-ignore-shared";
/// Capability name QEMU records for mapped-ram.
pub const CAP_MAPPED_RAM: &str = "mapped-ram";
/// Recorded after `mapped-ram` by images with chunk tables (compressed
/// and/or checksummed, see `compress`). QEMU knows no such capability and
/// refuses to load the file ("Received unknown capability"), so it never
/// misreads compressed slots as pages.
pub const CAP_CHUNKS: &str = "x-mappedram-chunks";
/// The target page size when the stream has no `configuration/target-page-bits`
/// subsection (x86: 4 KiB).
pub const DEFAULT_PAGE_SIZE: u64 = 4096;
/// Smallest page size accepted, as target-page-bits (1 KiB).
pub const MIN_TARGET_PAGE_BITS: u32 = 10;
/// Largest page size accepted, as target-page-bits (1 MiB): larger pages
/// could not be aligned by the 1 MiB page-region rule.
pub const MAX_TARGET_PAGE_BITS: u32 = 20;
/// Longest machine type name accepted (QEMU's are a few dozen bytes).
pub const MAX_MACHINE_TYPE_LEN: u64 = 1024;
/// Most ramblocks accepted in one stream (QEMU VMs have tens; memory
/// hotplug slots and ROMs stay far below this).
pub const MAX_RAMBLOCKS: usize = 16384;
/// Size of the packed mapped-ram header: be32 version, be64 page_size,
/// be64 bitmap_offset, be64 pages_offset.
pub const MAPPED_RAM_HEADER_LEN: u64 = 28;

/// Where a block's page region starts when its bitmap ends at `bitmap_end`
/// (an absolute file offset): the next multiple of [`PAGES_ALIGN`], as
/// QEMU's writer places it. `None` on overflow.
pub fn pages_offset_after(bitmap_end: u64) -> Option<u64> {
    bitmap_end.checked_next_multiple_of(PAGES_ALIGN)
}

/// Bitmap bytes for `pages` pages: ceil(pages / 64) 64-bit words.
pub fn bitmap_len(pages: u64) -> u64 {
    pages.div_ceil(64) * 8
}
