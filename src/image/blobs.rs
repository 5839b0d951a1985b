//! Named blobs of an image: a VMM's own state (vCPU registers, device
//! models) kept in the same file as guest RAM, under the same completion
//! record (the on-disk section is described in [`crate::format::blobs`]).
//!
//! Life cycle: blobs put into a new image are held in memory and written by
//! `finish` together with the end of stream, so they become visible exactly
//! when the image becomes complete. Blobs of an opened image are read from
//! the file on demand and their checksum is verified on every read. Putting
//! or removing a blob on a complete image opened `READ_WRITE` sets the
//! update mark first (as a page write does); the next `sync`, `finish` or
//! `close` rewrites the stream's tail with the new blob section and clears
//! the mark, so a crash in between leaves an image that opens as being
//! updated, never one with half a blob.

use super::state::DiskState;
use super::Image;
use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::format::blobs::{self, BlobEntry, MAX_BLOB_BYTES};
use crate::format::ramblock::StreamLayout;
use crate::format::stream::TAIL_BLOBS_AT;
use crate::format::ReadAt;
use parking_lot::Mutex;

enum Stored {
    /// Put by the caller and not yet read back from the file.
    Mem(Vec<u8>),
    /// In the file as parsed at open.
    File(BlobEntry),
}

impl Stored {
    fn len(&self) -> u64 {
        match self {
            Stored::Mem(v) => v.len() as u64,
            Stored::File(e) => e.len,
        }
    }
}

struct Inner {
    items: Vec<(String, Stored)>,
    /// The set differs from what the file holds.
    changed: bool,
    /// The stream end is (or will be) this library's own, so it may be
    /// rewritten with a blob section. False for a complete file another
    /// writer (QEMU) ended: its tail holds device state that must stay.
    tail_ours: bool,
}

/// The blobs of one image.
pub(crate) struct BlobStore {
    inner: Mutex<Inner>,
}

impl Default for BlobStore {
    /// No blobs, a stream end of ours (a new image).
    fn default() -> Self {
        BlobStore::with(Vec::new(), true)
    }
}

impl BlobStore {
    /// The blobs recorded in an opened image: parsed only from a stream end
    /// this library wrote (a complete or being-updated image of ours), where
    /// the section sits right after the RAM `END` section; it must end
    /// before the `EOF` byte at `vmdesc_offset`.
    /// `end` is the EOF byte's offset of a complete (or being-updated)
    /// stream and whether this library wrote its end; None for an
    /// incomplete stream (whose end `finish` writes anew).
    pub(crate) fn open(
        src: &dyn ReadAt,
        layout: &StreamLayout,
        end: Option<(u64, bool)>,
    ) -> Result<Self> {
        let vmdesc_offset = match end {
            None => return Ok(BlobStore::with(Vec::new(), true)),
            Some((_, false)) => return Ok(BlobStore::with(Vec::new(), false)),
            Some((off, true)) => off,
        };
        let at = layout.tail_offset() + TAIL_BLOBS_AT;
        if at >= vmdesc_offset || !blobs::section_at(src, at)? {
            return Ok(BlobStore::with(Vec::new(), true));
        }
        let (entries, section_end) = blobs::parse_section(src, at)?;
        if section_end != vmdesc_offset {
            return Err(Error::Corrupt(format!(
                "blob section at offset 0x{at:x} ends at 0x{section_end:x}, expected the end-of-file byte there (found at 0x{vmdesc_offset:x})"
            )));
        }
        let items = entries
            .into_iter()
            .map(|e| (e.name.clone(), Stored::File(e)))
            .collect();
        Ok(BlobStore::with(items, true))
    }

    fn with(items: Vec<(String, Stored)>, tail_ours: bool) -> Self {
        BlobStore {
            inner: Mutex::new(Inner {
                items,
                changed: false,
                tail_ours,
            }),
        }
    }

    /// Whether the set must be written out.
    pub(crate) fn changed(&self) -> bool {
        self.inner.lock().changed
    }

    /// The encoded section for the current set (empty when there is none),
    /// reading and verifying blobs still in the file first: the caller is
    /// about to overwrite the region they live in.
    pub(crate) fn encode(&self, ch: &Channel, section_id: u32) -> Result<Vec<u8>> {
        let mut inner = self.inner.lock();
        for (name, stored) in inner.items.iter_mut() {
            if let Stored::File(e) = stored {
                let data = read_verified(ch, name, e)?;
                *stored = Stored::Mem(data);
            }
        }
        let list: Vec<(&str, &[u8])> = inner
            .items
            .iter()
            .map(|(n, s)| match s {
                Stored::Mem(v) => (n.as_str(), v.as_slice()),
                Stored::File(_) => unreachable!("every blob was read above"),
            })
            .collect();
        Ok(blobs::encode_section(section_id, &list))
    }

    /// The file now holds the current set.
    pub(crate) fn mark_written(&self) {
        self.inner.lock().changed = false;
    }
}

fn read_verified(ch: &Channel, name: &str, e: &BlobEntry) -> Result<Vec<u8>> {
    // The parser bounded `len` by the file size and MAX_BLOB_BYTES.
    let mut data = vec![0u8; e.len as usize];
    let n = ch.read_at(&mut data, e.offset)?;
    if n != data.len() {
        return Err(Error::Corrupt(format!(
            "blob {name:?} at offset 0x{:x}: expected {} bytes, found {n} before the end of the file",
            e.offset, e.len
        )));
    }
    let found = blobs::checksum(&data);
    if found != e.checksum {
        return Err(Error::Corrupt(format!(
            "blob {name:?} at offset 0x{:x} ({} bytes): checksum mismatch: expected xxh3 0x{:016x}, found 0x{found:016x}",
            e.offset, e.len, e.checksum
        )));
    }
    Ok(data)
}

impl Image {
    /// Store `data` as blob `name` (replacing a blob of that name). Written
    /// by the next `finish` (a new image) or `sync`/`finish`/`close` (a
    /// complete image opened `READ_WRITE`, which is marked as being updated
    /// first). All blobs together may hold at most 256 MiB.
    pub fn put_blob(&self, name: &str, data: &[u8]) -> Result<()> {
        blobs::check_name(name)?;
        self.require_writable("put a blob")?;
        let others: u64 = {
            let inner = self.blobs.inner.lock();
            if !inner.tail_ours {
                return Err(Error::Unsupported(format!(
                    "{}: blobs can be added only to images whose stream end this library wrote; this one was ended by another writer (QEMU) and its device state must stay",
                    self.ch.name()
                )));
            }
            inner
                .items
                .iter()
                .filter(|(n, _)| n != name)
                .map(|(_, s)| s.len())
                .sum()
        };
        if others + data.len() as u64 > MAX_BLOB_BYTES {
            return Err(Error::Invalid(format!(
                "blob {name:?}: {} bytes would bring the image's blobs to {} bytes, over the {MAX_BLOB_BYTES}-byte limit",
                data.len(),
                others + data.len() as u64
            )));
        }
        self.mark_updating()?;
        let mut inner = self.blobs.inner.lock();
        let item = Stored::Mem(data.to_vec());
        match inner.items.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = item,
            None => inner.items.push((name.to_string(), item)),
        }
        inner.changed = true;
        Ok(())
    }

    /// Remove blob `name`; `NotFound` when there is none.
    pub fn remove_blob(&self, name: &str) -> Result<()> {
        self.require_writable("remove a blob")?;
        self.blob_index(name)?;
        self.mark_updating()?;
        let mut inner = self.blobs.inner.lock();
        inner.items.retain(|(n, _)| n != name);
        inner.changed = true;
        Ok(())
    }

    /// Names of the image's blobs, in the order they are stored.
    pub fn blob_names(&self) -> Vec<String> {
        let inner = self.blobs.inner.lock();
        inner.items.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Length of blob `name` in bytes; `NotFound` when there is none.
    pub fn blob_len(&self, name: &str) -> Result<u64> {
        let i = self.blob_index(name)?;
        Ok(self.blobs.inner.lock().items[i].1.len())
    }

    /// Blob `name`'s data, its checksum verified when it comes from the
    /// file (`Corrupt` naming the blob, offset, expected and found).
    pub fn get_blob(&self, name: &str) -> Result<Vec<u8>> {
        let i = self.blob_index(name)?;
        let entry = {
            let inner = self.blobs.inner.lock();
            match &inner.items[i].1 {
                Stored::Mem(v) => return Ok(v.clone()),
                Stored::File(e) => e.clone(),
            }
        };
        read_verified(&self.ch, name, &entry)
    }

    fn blob_index(&self, name: &str) -> Result<usize> {
        let inner = self.blobs.inner.lock();
        inner
            .items
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::NotFound(format!("{}: no blob named {name:?}", self.ch.name())))
    }

    /// A complete image is marked as being updated before its blob set
    /// changes (the tail is rewritten when the mark is cleared).
    fn mark_updating(&self) -> Result<()> {
        if matches!(*self.state.lock(), DiskState::Complete { .. }) {
            drop(self.write_gate()?);
        }
        Ok(())
    }

    /// Section id of the blob section: any id other than the RAM section's.
    pub(crate) fn blob_section_id(&self) -> u32 {
        self.layout.ram_section_id.wrapping_add(1).max(1)
    }
}
