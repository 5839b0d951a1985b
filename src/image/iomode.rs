//! `AUTO_DIRECT`: the image picks `O_DIRECT` or the page cache itself.
//!
//! The rule (figures in BENCHMARKS.md, "O_DIRECT or the page cache"):
//! page data goes through `O_DIRECT` when the image's page data is at
//! least [`AUTO_DIRECT_MIN_BYTES`] and the file lives on a disk file
//! system. Smaller images go through the page cache, where they cost
//! little memory and skip the alignment work; files on a memory file
//! system (tmpfs, ramfs) always do, since the page cache is their storage.
//! A file system that refuses `O_DIRECT` (`EINVAL` at open) gets the page
//! cache too. `Image::is_direct` reports the choice.

use crate::channel::Channel;
use crate::error::Result;
use std::path::Path;

/// Page data from this size up goes through `O_DIRECT` (on disk file
/// systems).
pub const AUTO_DIRECT_MIN_BYTES: u64 = 64 << 20;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether `data_bytes` of page data in a file at `path` (or, when it does
/// not exist yet, in its directory) should use `O_DIRECT`.
pub(crate) fn want_direct(path: &Path, data_bytes: u64) -> bool {
    data_bytes >= AUTO_DIRECT_MIN_BYTES && !on_memory_fs(path)
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
