//! Opening an image: the file-type check (block devices are refused), the
//! image lock, parsing and validating the stream, deciding what its
//! completion state is, and loading the bitmaps.

use super::bitmap::AtomicBitmap;
use super::blobs::BlobStore;
use super::state::DiskState;
use super::{iomode, Block, Image, ImageFlags};
use crate::channel::{Channel, LockKind, OpenFlags};
use crate::error::{Error, Result};
use crate::format::libvirt::{self, LibvirtHeader};
use crate::format::ramblock::{self, StreamLayout};
use crate::format::stream::{self, Completion};
use crate::format::ReadAt;
use std::path::Path;
use std::sync::Arc;

/// Images on block devices are refused, on create and open: the end of a
/// stream (and with it the completion record) is found at the end of the
/// file, which a device does not have — a device's size is not the image's,
/// and QEMU's own mapped-ram writer truncates its file, which a device
/// cannot be. Use a file on a file system on the device.
pub fn refuse_block_device(ch: &Channel) -> Result<()> {
    if ch.is_block_device()? {
        return Err(block_device_error(ch.name()));
    }
    Ok(())
}

pub(crate) fn block_device_error(name: &str) -> Error {
    Error::Unsupported(format!(
        "{name} is a block device: images must be regular files (an image's end and completion record are found at the end of its file, which a device does not have); put the image in a file on a file system"
    ))
}

/// Reads of the image's channel for the format layer.
struct Src<'a>(&'a Channel);

impl ReadAt for Src<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn size(&self) -> Result<u64> {
        self.0.size()
    }
}

impl Image {
    /// Open an existing image. A libvirt save-image header is recognised.
    /// Flags: [`ImageFlags::READ_WRITE`], [`ImageFlags::DIRECT`],
    /// [`ImageFlags::RECOVER`], [`ImageFlags::NO_LOCK`],
    /// [`ImageFlags::AUTO_DIRECT`].
    ///
    /// Unless `NO_LOCK`, the file is locked (see `channel::lock`): shared
    /// for reading, exclusive with `READ_WRITE`; a conflict is `EBUSY`.
    /// Block devices are refused (`ENOTSUP`): see [`refuse_block_device`].
    pub fn open(path: &Path, flags: ImageFlags) -> Result<Image> {
        flags.check(ImageFlags::ALL, "open")?;
        let mut of = OpenFlags::READ;
        if flags.contains(ImageFlags::READ_WRITE) {
            of = of | OpenFlags::WRITE;
        }
        let direct = flags.contains(ImageFlags::DIRECT)
            || (flags.contains(ImageFlags::AUTO_DIRECT) && {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                iomode::want_direct(path, size)
            });
        let ch = iomode::open_with(direct && !flags.contains(ImageFlags::DIRECT), direct, |d| {
            Channel::open(path, if d { of | OpenFlags::DIRECT } else { of })
        })?;
        refuse_block_device(&ch)?;
        let lock = !flags.contains(ImageFlags::NO_LOCK);
        if lock {
            ch.lock(if flags.contains(ImageFlags::READ_WRITE) {
                LockKind::Exclusive
            } else {
                LockKind::Shared
            })?;
        }
        let mut img = Image::open_on(
            Arc::new(ch),
            None,
            flags & !(ImageFlags::DIRECT.0 | ImageFlags::NO_LOCK.0 | ImageFlags::AUTO_DIRECT.0),
        )?;
        img.locked = lock;
        Ok(img)
    }

    /// Open on a channel; `base` None = detect (libvirt header or 0).
    /// Flags: [`ImageFlags::READ_WRITE`] (the channel must be writable),
    /// [`ImageFlags::RECOVER`]; [`ImageFlags::NO_LOCK`] is accepted and
    /// changes nothing (the channel is not locked: its owner decides).
    pub fn open_on(ch: Arc<Channel>, base: Option<u64>, flags: ImageFlags) -> Result<Image> {
        flags.check(
            ImageFlags::READ_WRITE.0 | ImageFlags::RECOVER.0 | ImageFlags::NO_LOCK.0,
            "open on a channel",
        )?;
        refuse_block_device(&ch)?;
        let writable = flags.contains(ImageFlags::READ_WRITE);
        if writable && !ch.flags().contains(OpenFlags::WRITE) {
            return Err(Error::Invalid(format!(
                "MR_IMAGE_READ_WRITE needs a channel opened with MR_OPEN_WRITE ({})",
                ch.name()
            )));
        }
        let src = Src(&ch);
        let (base, libvirt) = match base {
            Some(b) => (b, None),
            None => match libvirt::parse(&src)? {
                Some(h) => (h.stream_offset(), Some(h)),
                None => (0, None),
            },
        };
        let layout = ramblock::parse(&src, base)?;
        let completion = stream::completion(&src, layout.setup_end())?;
        // Blobs live only in a stream end this library wrote.
        let blob_end = match completion {
            Completion::Complete {
                vmdesc_offset,
                ours,
                ..
            }
            | Completion::Updating {
                vmdesc_offset,
                ours,
                ..
            } => Some((vmdesc_offset, ours)),
            Completion::Incomplete(_) => None,
        };
        let state = disk_state(
            completion,
            libvirt.as_ref(),
            flags.contains(ImageFlags::RECOVER),
            ch.name(),
        )?;
        // After the completion verdict: an interrupted in-place update may
        // have torn the blob section it was rewriting (power loss); that
        // image is incomplete, not corrupt (tests/power_loss.rs).
        let blob_store = match BlobStore::open(&src, &layout, blob_end) {
            // Recovering from an interrupted update that was rewriting the
            // blobs: the pages stay reachable, the blobs report why not.
            Err(e @ (Error::Corrupt(_) | Error::Unsupported(_)))
                if matches!(state, DiskState::Torn { .. }) =>
            {
                BlobStore::unreadable(e.to_string())
            }
            r => r?,
        };
        let mut blocks = load_blocks(&ch, &layout)?;
        crate::compress::attach_tables(&ch, &layout, &mut blocks)?;
        let mut img = Image::assemble(ch, libvirt, layout, blocks, writable, state);
        img.blobs = blob_store;
        Ok(img)
    }
}

/// What the file says about completion, as a [`DiskState`]; without
/// `recover` anything but complete is `Error::Incomplete`. An update mark
/// found here becomes [`DiskState::Torn`]: only `finish` clears it.
fn disk_state(
    completion: Completion,
    libvirt: Option<&LibvirtHeader>,
    recover: bool,
    name: &str,
) -> Result<DiskState> {
    let refuse = |why: String| {
        Err(Error::Incomplete(format!(
            "{name}: {why} (open with MR_IMAGE_RECOVER to read what is there)"
        )))
    };
    match completion {
        Completion::Complete { vmdesc_offset, .. } => match libvirt {
            Some(h) if !h.complete && !recover => {
                refuse("libvirt header magic is LibvirtQemudPart: the save never finished".into())
            }
            _ => Ok(DiskState::Complete { vmdesc_offset }),
        },
        Completion::Updating { vmdesc_offset, .. } if !recover => refuse(format!(
            "an in-place update was interrupted (update mark at offset 0x{:x}); pages may be torn",
            vmdesc_offset + 1
        )),
        Completion::Updating { vmdesc_offset, .. } => Ok(DiskState::Torn { vmdesc_offset }),
        Completion::Incomplete(why) if !recover => refuse(format!("image is incomplete: {why}")),
        Completion::Incomplete(_) => Ok(DiskState::Incomplete),
    }
}

/// Every block with its bitmap read from the file.
fn load_blocks(ch: &Channel, layout: &StreamLayout) -> Result<Vec<Block>> {
    let mut blocks = Vec::with_capacity(layout.blocks.len());
    for l in &layout.blocks {
        // The format layer checked that the bitmap lies inside the file,
        // so this allocation is bounded by the file's size.
        let len = usize::try_from(l.bitmap_len)
            .map_err(|_| Error::Corrupt(format!("ramblock '{}': bitmap too large", l.idstr)))?;
        let mut bytes = vec![0u8; len];
        let n = ch.read_at(&mut bytes, l.bitmap_offset)?;
        if n != len {
            return Err(Error::Corrupt(format!(
                "ramblock '{}': bitmap at offset 0x{:x} truncated: expected {} bytes, found {}",
                l.idstr, l.bitmap_offset, len, n
            )));
        }
        blocks.push(Block::new(
            l.clone(),
            AtomicBitmap::from_le_bytes(l.pages(), &bytes),
        ));
    }
    Ok(blocks)
}
