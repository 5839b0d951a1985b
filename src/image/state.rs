//! Durability: sync, finish, close, and the in-place-update mark.
//!
//! Order on `sync`: snapshot the bitmaps (every bit in the snapshot belongs
//! to a page whose write had returned) → `fdatasync` (that page data is
//! durable) → write the bitmaps → `fdatasync`.
//!
//! Order on `finish` of a new image: snapshot the bitmaps → `fdatasync`
//! (page data durable) → write the bitmaps and the stream end (setup
//! footer, RAM END section, EOF byte; the file is cut right after it) →
//! `fdatasync` → the completion record (VMDESCRIPTION JSON) → `fdatasync`.
//! A crash anywhere before the last step leaves a file without a visible end
//! of stream: it opens as incomplete.
//!
//! In-place update of a complete image: before the first page write the
//! VMDESCRIPTION type byte is replaced by [`UPDATING_MARK`] and synced; the
//! next `sync`/`finish`/`close` writes everything out and restores the byte
//! (holding the write gate exclusively, so no page write is in flight).
//!
//! A mark found on open (an earlier update was interrupted: pages may be
//! torn) is different: the handle did not write those pages, so only an
//! explicit decision clears it — `finish` (the caller vouches for every
//! page, e.g. after rewriting them all). `sync` and `close` keep it, so a
//! recover-open followed by close leaves the image incomplete.

use super::pages::context;
use super::Image;
use crate::error::{Error, Result};
use crate::format::stream::{self, UPDATING_MARK};
use crate::format::{blobs, section};
use parking_lot::RwLockReadGuard;
use std::sync::Arc;

/// What the file on disk says about completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiskState {
    /// Created by this library and not finished: no end of stream.
    Unfinished,
    /// Complete; the VMDESCRIPTION record's EOF byte is at `vmdesc_offset`.
    Complete { vmdesc_offset: u64 },
    /// Complete but for the update mark at `vmdesc_offset + 1`, set by
    /// this handle (its page writes are all accounted for).
    Updating { vmdesc_offset: u64 },
    /// Opened with `RECOVER` while an earlier handle's update mark was set
    /// (at `vmdesc_offset + 1`): only `finish` clears it.
    Torn { vmdesc_offset: u64 },
    /// Opened incomplete with `RECOVER`.
    Incomplete,
}

impl Image {
    /// Take the write gate for one page write, setting the update mark first
    /// when the image is complete on disk.
    pub(crate) fn write_gate(&self) -> Result<RwLockReadGuard<'_, ()>> {
        if !self.writable {
            return Err(Error::ReadOnly(format!(
                "{}: image is open read-only (open with MR_IMAGE_READ_WRITE to write pages)",
                self.ch.name()
            )));
        }
        loop {
            let g = self.gate.read();
            if !matches!(*self.state.lock(), DiskState::Complete { .. }) {
                return Ok(g);
            }
            drop(g);
            self.set_update_mark()?;
        }
    }

    fn set_update_mark(&self) -> Result<()> {
        let _g = self.gate.write();
        let mut st = self.state.lock();
        if let DiskState::Complete { vmdesc_offset } = *st {
            let res = self
                .ch
                .write_all_at(&[UPDATING_MARK], vmdesc_offset + 1)
                .and_then(|_| self.ch.sync());
            if let Err(e) = res {
                // The mark may or may not be on disk; nothing was written
                // after it, so put the completion byte back (best effort:
                // if that fails too the image only reads as incomplete).
                let _ = self
                    .ch
                    .write_all_at(&[section::VMDESCRIPTION], vmdesc_offset + 1);
                return Err(context(e, "marking the image as being updated"));
            }
            *st = DiskState::Updating { vmdesc_offset };
        }
        Ok(())
    }

    pub(super) fn require_writable(&self, what: &str) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly(format!(
                "{}: cannot {what}: image is open read-only",
                self.ch.name()
            )))
        }
    }

    /// Snapshot dirty bitmaps, make page data durable, write the bitmaps,
    /// make them durable.
    fn flush_bitmaps(&self) -> Result<()> {
        self.flush_bitmaps_then(true)
    }

    /// As [`flush_bitmaps`](Self::flush_bitmaps); without `final_sync` the
    /// bitmaps are written but not yet synced (the caller syncs them with
    /// what it writes next). `fdatasync`s with nothing new to make durable
    /// are skipped.
    fn flush_bitmaps_then(&self, final_sync: bool) -> Result<()> {
        let snaps: Vec<(usize, Vec<u8>)> = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.bitmap.take_dirty())
            .map(|(i, b)| (i, b.bitmap.to_le_bytes()))
            .collect();
        // Chunk tables: snapshot with the bitmaps (every entry describes a
        // chunk whose write had returned), written after the data sync.
        let tables: Vec<(usize, Vec<u8>)> = self
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.chunks.as_ref().map(|t| (i, t)))
            .filter(|(_, t)| t.take_dirty())
            .map(|(i, t)| (i, t.encode()))
            .collect();
        let res = (|| {
            self.ch
                .sync_if_needed()
                .map_err(|e| context(e, "syncing page data"))?;
            if snaps.is_empty() && tables.is_empty() {
                return Ok(());
            }
            for (i, bytes) in &tables {
                let b = &self.blocks[*i];
                let at = b.chunks.as_ref().map_or(0, |t| t.offset);
                self.ch.write_all_at(bytes, at).map_err(|e| {
                    context(
                        e,
                        &format!(
                            "ramblock '{}': writing the chunk table at offset 0x{at:x}",
                            b.layout.idstr
                        ),
                    )
                })?;
            }
            for (i, bytes) in &snaps {
                let l = &self.blocks[*i].layout;
                self.ch.write_all_at(bytes, l.bitmap_offset).map_err(|e| {
                    context(
                        e,
                        &format!(
                            "ramblock '{}': writing the bitmap at offset 0x{:x}",
                            l.idstr, l.bitmap_offset
                        ),
                    )
                })?;
            }
            if final_sync {
                self.ch.sync().map_err(|e| context(e, "syncing bitmaps"))?;
            }
            Ok(())
        })();
        if res.is_err() {
            for (i, _) in &snaps {
                self.blocks[*i].bitmap.mark_dirty();
            }
            for (i, _) in &tables {
                if let Some(t) = &self.blocks[*i].chunks {
                    t.mark_dirty();
                }
            }
        }
        res
    }

    /// Refuse to declare the image complete while a page write failed and
    /// was not redone: that page's slot may be torn or missing.
    fn check_no_failed_pages(&self) -> Result<()> {
        for b in &self.blocks {
            let n = b.failed.count();
            if n > 0 {
                let mut first = 0;
                b.failed.for_each_run(0, b.layout.pages(), |s, _, set| {
                    if set && first == 0 {
                        first = s + 1;
                    }
                });
                return Err(Error::from_errno(
                    format!(
                        "{}: ramblock '{}': {n} page(s) whose write failed were not rewritten (first: page {} at block offset 0x{:x}); the image stays incomplete until they are written successfully",
                        self.ch.name(),
                        b.layout.idstr,
                        first - 1,
                        (first - 1) * b.layout.page_size
                    ),
                    b.failed_errno.load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
        }
        Ok(())
    }

    /// If this handle set an update mark (or, with `decided`, one was
    /// found on open): write out what changed and restore the VMDESCRIPTION
    /// byte, with no page write in flight.
    fn clear_update_mark(&self, decided: bool) -> Result<()> {
        let mark = |st: &DiskState| match *st {
            DiskState::Updating { vmdesc_offset } => Some(vmdesc_offset),
            DiskState::Torn { vmdesc_offset } if decided => Some(vmdesc_offset),
            _ => None,
        };
        if mark(&self.state.lock()).is_none() {
            return Ok(());
        }
        let _g = self.gate.write();
        let mut st = self.state.lock();
        if let Some(mut vmdesc_offset) = mark(&st) {
            self.flush_bitmaps()?;
            self.check_no_failed_pages()?;
            if self.blobs.changed() {
                vmdesc_offset = self.rewrite_tail_marked()?;
                *st = DiskState::Updating { vmdesc_offset };
                self.blobs.mark_written();
            }
            self.ch
                .write_all_at(&[section::VMDESCRIPTION], vmdesc_offset + 1)
                .and_then(|_| self.ch.sync())
                .map_err(|e| context(e, "clearing the update mark"))?;
            *st = DiskState::Complete { vmdesc_offset };
        }
        Ok(())
    }

    /// Bitmaps out + fdatasync. Page writes may run concurrently; a bit is
    /// never published for a page whose write had not returned. An image
    /// that was complete is complete again when `sync` returns.
    pub fn sync(&self) -> Result<()> {
        self.require_writable("sync")?;
        let _s = self.sync_lock.lock();
        self.flush_bitmaps()?;
        self.clear_update_mark(false)
    }

    /// End of stream + completion record, durable. On an image that is
    /// already complete (or being updated) this is `sync`. On an image
    /// opened with `RECOVER` whose earlier in-place update was interrupted,
    /// this is the caller's decision that every page is whole: the update
    /// mark is cleared and the image is complete again.
    pub fn finish(&self) -> Result<()> {
        self.require_writable("finish")?;
        let _s = self.sync_lock.lock();
        let st = *self.state.lock();
        match st {
            DiskState::Complete { .. } | DiskState::Updating { .. } | DiskState::Torn { .. } => {
                self.flush_bitmaps()?;
                self.clear_update_mark(true)
            }
            DiskState::Unfinished => self.write_stream_end(),
            DiskState::Incomplete => {
                if self.tail_is_ours_or_empty()? {
                    self.write_stream_end()
                } else {
                    Err(Error::Invalid(format!(
                        "{}: cannot finish an incomplete image whose stream continues past the RAM setup section (it was not written by this library)",
                        self.ch.name()
                    )))
                }
            }
        }
    }

    /// The stream end this library writes (with the blob section) and the
    /// index of its VMDESCRIPTION type byte.
    fn tail_bytes(&self) -> Result<(Vec<u8>, usize)> {
        let l0 = self.layout.blocks.first();
        let json = stream::completion_json(
            l0.map(|b| b.page_size).unwrap_or(4096),
            &self.layout.config.machine_type,
            self.layout.blocks.len(),
        );
        let blobs = self.blobs.encode(&self.ch, self.blob_section_id())?;
        let tail = stream::encode_tail_with_blobs(self.layout.ram_section_id, &blobs, &json);
        // The VMDESCRIPTION record (type, be32 length, JSON) ends the tail.
        let split = tail.len() - (1 + 4 + json.len());
        Ok((tail, split))
    }

    /// Rewrite the stream end of an image being updated (its blob set
    /// changed) with the update mark in place of the VMDESCRIPTION byte,
    /// durably; returns the new EOF byte's offset. A crash during the write
    /// leaves a file without a valid end (incomplete) or still marked.
    fn rewrite_tail_marked(&self) -> Result<u64> {
        let start = self.layout.tail_offset();
        let (mut tail, split) = self.tail_bytes()?;
        tail[split] = UPDATING_MARK;
        let res = self
            .ch
            .write_all_at(&tail, start)
            .and_then(|_| self.ch.set_len(start + tail.len() as u64))
            .and_then(|_| self.ch.sync());
        res.map_err(|e| context(e, "rewriting the stream end with the new blobs"))?;
        Ok(start + split as u64 - 1)
    }

    /// Whether everything after the setup payload's EOS is a prefix of the
    /// stream end this library writes (a save of ours that stopped early).
    fn tail_is_ours_or_empty(&self) -> Result<bool> {
        let start = self.layout.eos_offset + 8;
        let size = self.ch.size()?;
        let fixed = stream::encode_tail(self.layout.ram_section_id, "");
        let fixed = &fixed[..stream::TAIL_BLOBS_AT as usize];
        // Past the RAM END section a save of ours wrote a blob section and
        // the EOF byte, which `finish` rewrites; bound what is read.
        if size < start || size - start > blobs::MAX_BLOB_BYTES + (1 << 20) {
            return Ok(false);
        }
        let mut buf = vec![0u8; (size - start).min(fixed.len() as u64 + 1) as usize];
        let n = self.ch.read_at(&mut buf, start)?;
        if n != buf.len() {
            return Ok(false);
        }
        let (head, rest) = buf.split_at(buf.len().min(fixed.len()));
        Ok(fixed.starts_with(head)
            && (rest.is_empty() || rest[0] == section::FULL || rest[0] == section::EOF))
    }

    fn write_stream_end(&self) -> Result<()> {
        let _g = self.gate.write();
        self.check_no_failed_pages()?;
        // Page data durable, then bitmaps + stream end (one fdatasync for
        // both: the image is not complete before the record either way),
        // then the record.
        self.flush_bitmaps_then(false)?;
        let start = self.layout.eos_offset + 8;
        let (tail, split) = self.tail_bytes()?;
        let vmdesc_offset = start + split as u64 - 1;
        let res = (|| {
            self.ch.write_all_at(&tail[..split], start)?;
            self.ch.set_len(start + split as u64)?;
            self.ch.sync()?;
            self.ch.write_all_at(&tail[split..], start + split as u64)?;
            self.ch.sync()
        })();
        res.map_err(|e| context(e, "writing the end of stream and completion record"))?;
        *self.state.lock() = DiskState::Complete { vmdesc_offset };
        self.blobs.mark_written();
        Ok(())
    }

    /// Close. A writable image has its bitmaps written and synced (and an
    /// update mark this handle set cleared) first; a mark found on open
    /// stays; a new image that was not finished
    /// stays incomplete. The channel is closed when this was its last
    /// reference; failures of any step are reported.
    pub fn close(self) -> Result<()> {
        let mut first_err = None;
        if self.writable {
            let _s = self.sync_lock.lock();
            if let Err(e) = self
                .flush_bitmaps()
                .and_then(|_| self.clear_update_mark(false))
            {
                first_err = Some(e);
            }
            if self.blobs.changed() && matches!(*self.state.lock(), DiskState::Torn { .. }) {
                first_err.get_or_insert(Error::Incomplete(format!(
                    "{}: blob changes were not written: the image's interrupted update is resolved (and blobs written) only by finish",
                    self.ch.name()
                )));
            }
        }
        // `into_inner` gives the channel to exactly one of its last holders.
        if let Some(ch) = Arc::into_inner(self.ch) {
            if self.locked {
                if let Err(e) = ch.unlock() {
                    first_err.get_or_insert(e);
                }
            }
            if let Err(e) = ch.close() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
