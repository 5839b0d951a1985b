//! `AUTO_DIRECT`: the image picks `O_DIRECT` or the page cache itself.
//!
//! The rule (figures in BENCHMARKS.md, "O_DIRECT or the page cache"):
//! page data goes through `O_DIRECT` when the image file is (for a create:
//! will be, by its layout) at least [`AUTO_DIRECT_MIN_BYTES`] and lives on
//! a disk file system: a durable save and a cold restore were as fast or
//! faster that way at every size measured, 1 MiB to 1 GiB of page data
//! (files of 2 MiB and more: page data starts 1 MiB aligned), and a
//! guest's pages in the page cache would only be a second copy. Smaller
//! images go through the page cache (a few pages either way). Files on
//! a memory file system (tmpfs, ramfs) always do, since the page cache is
//! their storage, and so does a file system that refuses `O_DIRECT`
//! (`EINVAL` at open). `Image::is_direct` reports the choice.

use crate::channel::Channel;
use crate::error::Result;
use std::path::Path;

/// Image files from this size up put their page data through `O_DIRECT`
/// (on disk file systems): 1 MiB of page data after the 1 MiB-aligned
/// headers.
pub const AUTO_DIRECT_MIN_BYTES: u64 = 2 << 20;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether an image file of `file_bytes` at `path` (or, when it does not
/// exist yet, in that directory) should use `O_DIRECT`.
pub(crate) fn want_direct(path: &Path, file_bytes: u64) -> bool {
    file_bytes >= AUTO_DIRECT_MIN_BYTES && !on_memory_fs(path)
}

fn on_memory_fs(path: &Path) -> bool {
    let probe = if path.exists() {
        path
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    };
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(probe.as_os_str()))
    else {
        return false;
    };
    // SAFETY: `statfs` is plain old data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` is writable.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t == TMPFS_MAGIC || t == RAMFS_MAGIC
}

/// Open a channel with `open(direct)`; when `direct` was the library's
/// own choice (`fallback`) and the file system refuses `O_DIRECT`
/// (`EINVAL`), open it through the page cache instead.
pub(crate) fn open_with(
    fallback: bool,
    direct: bool,
    open: impl Fn(bool) -> Result<Channel>,
) -> Result<Channel> {
    match open(direct) {
        Err(e) if direct && fallback && e.errno() == libc::EINVAL => open(false),
        r => r,
    }
}
