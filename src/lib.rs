//! # mappedram
//!
//! Save guest RAM to a file and restore it at the speed of the disk, in
//! QEMU's *mapped-ram* migration-file layout: every guest page at a fixed,
//! 1 MiB aligned offset, a bitmap of written pages, zero pages left as holes.
//! Many threads write and read pages in parallel with positional I/O and
//! `O_DIRECT`; a file QEMU 9.0+ writes opens here, and the reverse.
//!
//! Layers, bottom up (dependencies point down only):
//! - [`channel`]: thread-safe positional file I/O, `O_DIRECT` aware;
//! - [`format`](mod@format): pure encode/decode of the stream pieces (untrusted input);
//! - [`image`]: a mapped-ram image on a channel (create/open/pages/sync/finish);
//! - [`engine`]: parallel save/restore of whole ramblocks from/to guest memory,
//!   with progress and cancel through an [`engine::Control`];
//! - [`memory`]: typed views of guest memory and dirty bitmaps (shared with
//!   the guest and other threads, never a Rust reference);
//! - [`uffd`], [`lazy`], [`snapshot`]: userfaultfd services over an image:
//!   on-demand restore and live copy-on-write snapshots;
//! - `ffi`: the C ABI (`include/mappedram.h`), a thin skin.
//!
//! # Example
//!
//! Save a guest's RAM with 4 threads, restore it with 3 (the thread count is
//! not part of the format), and compare. A VMM hands its own mapping in with
//! the `unsafe` [`GuestSlice::new`] instead of [`GuestSlice::from_slice`]
//! (see `examples/vm_memory_roundtrip.rs` for rust-vmm's `GuestMemoryMmap`).
//!
//! ```
//! use mappedram::engine::{read_ramblock, save_ramblock};
//! use mappedram::{BlockSpec, GuestSlice, GuestSliceMut, Image, ImageFlags};
//!
//! # fn main() -> mappedram::Result<()> {
//! let mut ram = vec![0u8; 8 << 20]; // 8 MiB guest, every 5th page with data
//! ram.chunks_mut(4096).step_by(5).for_each(|p| p.fill(0x5a));
//! let path = std::env::temp_dir().join(format!("doc-crate-{}.img", std::process::id()));
//!
//! let blocks = [BlockSpec { idstr: "pc.ram".into(), used_length: ram.len() as u64, page_size: 4096 }];
//! let img = Image::create(&path, "pc-q35-10.0", &blocks, ImageFlags::DIRECT)?;
//! let st = save_ramblock(&img, 0, GuestSlice::from_slice(&ram), None, 4)?;
//! assert_eq!((st.pages_data, st.pages_zero), (410, 1638)); // zero pages stay holes
//! img.finish()?;
//! img.close()?;
//!
//! let img = Image::open(&path, ImageFlags::DIRECT)?;
//! let mut back = vec![0xffu8; ram.len()];
//! let block = img.find_block("pc.ram")?;
//! read_ramblock(&img, block, GuestSliceMut::from_mut_slice(&mut back), true, 3)?;
//! assert!(back == ram); // absent pages zeroed (zero_absent = true)
//! img.close()?;
//! # std::fs::remove_file(&path).ok();
//! # Ok(())
//! # }
//! ```

pub mod channel;
pub mod compress;
pub mod engine;
pub mod error;
pub mod format;
pub mod image;
pub mod lazy;
pub mod memory;
mod pagemap;
pub mod snapshot;
pub mod uffd;

mod ffi;
mod silent_panic;

pub use channel::{Channel, OpenFlags};
pub use compress::{BlockStats, ImageOptions};
pub use error::{Error, Result};
pub use format::ramblock::BlockSpec;
pub use image::{BlockInfo, Image, ImageFlags};
pub use memory::{DirtyBitmap, GuestSlice, GuestSliceMut};
