//! The shared helper tree of the integration tests (each test binary
//! includes it with `mod common;`).
//!
//! - [`rng`]: the one deterministic generator;
//! - [`mem`]: page-aligned buffers (guest RAM stand-ins);
//! - [`dirs`]: temp dirs (disk, memory, O_DIRECT-enforcing), tmpfs mounts;
//! - [`crash_states`]: power-loss states from a recorded channel trace;
//! - [`guest`]: the standard ramblocks, per-page contents, image comparison;
//! - [`ignore_shared`]: the layout of a QEMU 11 `x-ignore-shared` stream;
//! - [`fill`]: deterministic memory patterns and comparisons;
//! - [`need`]: gating tests that need QEMU, root or the pinned cbindgen;
//! - [`qemu`]: find/version-check QEMU, start paused guests, save/restore;
//! - [`qmp`]: a minimal QMP client;
//! - [`raw`]: an independent minimal reader of mapped-ram files;
//! - [`uffd`]: guest-like mappings and mixed images for the userfaultfd
//!   tests (on-demand restore, live snapshot);
//! - [`libvirt_header`]: libvirt's 92-byte save-image header, built by hand.

// Each test binary uses a different subset of the helpers (and of the
// re-exports below).
#![allow(dead_code, unused_imports)]

pub mod crash_states;
pub mod dirs;
pub mod fill;
pub mod guest;
pub mod ignore_shared;
pub mod mem;
pub mod need;
pub mod qemu;
pub mod qmp;
pub mod raw;
pub mod rng;
pub mod uffd;

pub use dirs::{TmpDir, TmpfsMount};
pub use guest::{block_memory, compare_image, page_content, specs, PS};
pub use mem::Aligned;
pub use need::{met, Need};
pub use rng::Rng;

/// libvirt's save-image header: 16-byte magic, then host-endian u32
/// version, data_len, was_running, format, cookieOffset, 14 unused u32 —
/// followed by `data_len` bytes of XML-ish payload (NUL padded), so the
/// QEMU stream starts at `92 + data_len` = `stream_offset`.
pub fn libvirt_header(complete: bool, stream_offset: u64) -> Vec<u8> {
    assert!(stream_offset >= 92);
    let mut h = Vec::with_capacity(stream_offset as usize);
    h.extend_from_slice(if complete {
        b"LibvirtQemudSave"
    } else {
        b"LibvirtQemudPart"
    });
    let data_len = (stream_offset - 92) as u32;
    for v in [2u32, data_len, 0, 6, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&[0u8; 14 * 4]);
    assert_eq!(h.len(), 92);
    let xml = b"<domain type='qemu'>\n  <name>mappedram-test</name>\n  <memory unit='KiB'>65536</memory>\n</domain>\n";
    let n = xml.len().min(data_len as usize);
    h.extend_from_slice(&xml[..n]);
    h.resize(stream_offset as usize, 0);
    h
}

/// Write `bytes` at the start of `path` without truncating it.
pub fn write_at_start(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, 0).unwrap();
}
