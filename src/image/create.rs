//! Creating an image file without harming what is at the path.
//!
//! 1. Everything is validated first (flags, machine type, every block's
//!    idstr, length and page size, the layout's size: an image past the
//!    largest file offset is `EFBIG`) — the path is not touched yet.
//! 2. The path is resolved: a symbolic link is followed to its target (a
//!    link to a missing file is refused); a directory is `EISDIR`, a block
//!    device `ENOTSUP` (see [`super::refuse_block_device`]), anything else
//!    but a regular file `EINVAL`. An existing file must be writable by the
//!    caller (`EACCES`, as `open(O_TRUNC)` would say) and must not be locked
//!    by a writer (`EBUSY`); a shared lock is held on it until it is
//!    replaced, so no writer can start on it meanwhile.
//! 3. The image is written into a new file in the same directory: an
//!    unnamed `O_TMPFILE` where the file system has it, else a hidden
//!    `.NAME.PID-N.mr-new` that is removed again on failure. It is created
//!    0600 (less where the umask says so), owned by the caller, and locked
//!    exclusively (unless `NO_LOCK`).
//! 4. Only a complete set of headers gets the name: linked into place (new
//!    path; `EEXIST` if something appeared there meanwhile) or renamed over
//!    the old file (atomic); then the file and the directory are synced.
//!
//! So a failed create leaves an existing file unchanged and no file where
//! there was none. A crash before step 4 leaves the path as it was (and,
//! without `O_TMPFILE`, the hidden temporary). Replacing takes two steps
//! (`linkat` to a hidden temporary name, then `rename`): a crash between
//! them leaves that temporary too. A later create of the same path removes
//! temporaries whose process no longer exists. After step 4 the path
//! holds the new, unfinished image, which opens as incomplete
//! (a file system that may persist the rename before the headers it was
//! given after could, in the moment before the sync, leave a new name
//! without headers: corrupt, never valid).
//!
//! Replacing means a new inode: the old file's owner, group, mode, ACLs and
//! other extended attributes are not carried over (the new file is the
//! caller's, 0600; a directory's default ACL applies, masked by 0600 so it
//! grants no one else access), and other hard links of the old file keep
//! the old contents. To write into a given inode instead (a file the caller
//! may write but not replace), open a channel on it and use
//! [`Image::create_on`].

use super::{block_device_error, iomode, Image, ImageFlags, CREATE_FLAGS};
use crate::channel::{lock_fd, Channel, LockKind, OpenFlags};
use crate::error::{Error, Result};
use crate::format::ramblock::{self, BlockSpec, StreamLayout};
use crate::format::stream::Configuration;
use crate::format::{CAP_MAPPED_RAM, MAX_MACHINE_TYPE_LEN, PAGES_ALIGN};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Validate a new image's arguments and lay it out, the stream at `base`.
/// Touches nothing.
pub(crate) fn plan_new(
    base: u64,
    machine_type: &str,
    blocks: &[BlockSpec],
) -> Result<StreamLayout> {
    if machine_type.is_empty() || machine_type.contains('\0') {
        return Err(Error::Invalid(
            "machine type must be a non-empty string without NUL".into(),
        ));
    }
    let page_size = blocks.first().map(|b| b.page_size).unwrap_or(4096);
    if let Some(b) = blocks.iter().find(|b| b.page_size != page_size) {
        return Err(Error::Invalid(format!(
            "ramblock '{}': page size {} differs from the first block's {} (one target page size per image)",
            b.idstr, b.page_size, page_size
        )));
    }
    check_size(base, machine_type, blocks)?;
    let target_page_bits = if page_size == 4096 || !page_size.is_power_of_two() {
        None
    } else {
        Some(page_size.trailing_zeros())
    };
    let config = Configuration {
        machine_type: machine_type.to_string(),
        capabilities: vec![CAP_MAPPED_RAM.to_string()],
        target_page_bits,
    };
    ramblock::plan(base, &config, 1, blocks)
}

/// `EFBIG` when the finished image could end past the largest file offset
/// (`i64::MAX`): a generous bound on every header, bitmap and padding.
fn check_size(base: u64, machine_type: &str, blocks: &[BlockSpec]) -> Result<()> {
    let mut end = base as u128 + machine_type.len().min(MAX_MACHINE_TYPE_LEN as usize) as u128;
    end += 64 << 10; // stream header, sections, end of stream, JSON record
    for b in blocks {
        let pages = (b.used_length / b.page_size.max(1)) as u128;
        end += b.used_length as u128 + pages / 8 + 8 + PAGES_ALIGN as u128 + 512;
    }
    if end > i64::MAX as u128 {
        let total: u128 = blocks.iter().map(|b| b.used_length as u128).sum();
        return Err(Error::from_errno(
            format!(
                "ramblocks of {total} bytes in all make an image larger than the largest file offset ({})",
                i64::MAX
            ),
            libc::EFBIG,
        ));
    }
    Ok(())
}

/// `Image::create`: see the module docs.
pub(super) fn create_file(
    path: &Path,
    machine_type: &str,
    blocks: &[BlockSpec],
    flags: ImageFlags,
) -> Result<Image> {
    check_create_flags(flags)?;
    let layout = plan_new(0, machine_type, blocks)?;
    create_planned(path, flags, layout, Image::write_new)
}

/// The flags a file create takes.
pub(crate) fn check_create_flags(flags: ImageFlags) -> Result<()> {
    flags.check(CREATE_FLAGS | ImageFlags::AUTO_DIRECT.0, "create")
}

/// Steps 2 to 4 of the module docs for a validated, planned `layout`:
/// `write` puts the headers on the new, unnamed file's channel (plain
/// headers, or those of a chunked image) and returns the image; only then
/// does the file get its name.
pub(crate) fn create_planned(
    path: &Path,
    flags: ImageFlags,
    layout: StreamLayout,
    write: impl FnOnce(Arc<Channel>, StreamLayout) -> Result<Image>,
) -> Result<Image> {
    let lock = !flags.contains(ImageFlags::NO_LOCK);
    let dest = resolve(path)?;
    let name = dest.path.display().to_string();
    let _old = match dest.existing {
        true => hold_old(&dest.path, &name, lock)?,
        false => None,
    };
    let dir = match dest.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale_temps(&dir, &dest.path);
    let temp = TempFile::new(&dir, &dest.path)?;
    let of = OpenFlags::READ | OpenFlags::WRITE;
    let direct = flags.contains(ImageFlags::DIRECT)
        || (flags.contains(ImageFlags::AUTO_DIRECT) && {
            let end = layout
                .blocks
                .iter()
                .map(|b| b.pages_offset.saturating_add(b.used_length))
                .max()
                .unwrap_or(0);
            iomode::want_direct(&dir, end)
        });
    let mut ch = iomode::open_with(direct && !flags.contains(ImageFlags::DIRECT), direct, |d| {
        Channel::from_fd(
            temp.fd.as_raw_fd(),
            if d { of | OpenFlags::DIRECT } else { of },
        )
    })
    .map_err(|e| super::pages::context(e, &format!("creating {name}")))?;
    ch.set_name(name.clone());
    if lock {
        ch.lock(LockKind::Exclusive)?;
    }
    let mut img = write(Arc::new(ch), layout)?;
    img.locked = lock;
    temp.commit(&dest, &dir, &name, img.channel())?;
    Ok(img)
}

struct Dest {
    path: PathBuf,
    existing: bool,
}

/// Follow a symbolic link; check what is at the path.
fn resolve(path: &Path) -> Result<Dest> {
    let shown = path.display().to_string();
    let lm = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Dest {
                path: path.to_path_buf(),
                existing: false,
            })
        }
        Err(e) => return Err(Error::io(format!("examining {shown}"), e)),
        Ok(m) => m,
    };
    let path = if lm.file_type().is_symlink() {
        std::fs::canonicalize(path).map_err(|e| {
            Error::io(
                format!("resolving the symbolic link {shown} (a link to a missing file is not followed)"),
                e,
            )
        })?
    } else {
        path.to_path_buf()
    };
    let name = path.display().to_string();
    let m = std::fs::metadata(&path).map_err(|e| Error::io(format!("examining {name}"), e))?;
    use std::os::unix::fs::FileTypeExt;
    let ft = m.file_type();
    if ft.is_dir() {
        return Err(Error::from_errno(
            format!("{name} is a directory, not a file"),
            libc::EISDIR,
        ));
    }
    if ft.is_block_device() {
        return Err(block_device_error(&name));
    }
    if !ft.is_file() {
        return Err(Error::Invalid(format!(
            "{name} exists and is not a regular file; an image replaces only a regular file"
        )));
    }
    Ok(Dest {
        path,
        existing: true,
    })
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} contains a NUL byte", p.display())))
}

/// The existing file at `path`: it must be writable by the caller; with
/// `lock`, a shared lock on it (refused while a writer holds it) is held
/// until the returned descriptor is dropped.
fn hold_old(path: &Path, name: &str, lock: bool) -> Result<Option<OwnedFd>> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid C string; faccessat only reads it.
    if unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) } != 0 {
        return Err(Error::last_os(format!(
            "{name} exists and is not writable by this process (it is not replaced)"
        )));
    }
    if !lock {
        return Ok(None);
    }
    let fl = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: `c` is a valid C string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), fl) };
    if fd < 0 {
        // Writable but not readable: no shared lock can be taken; the
        // replacement still cannot disturb a reader (new inode).
        return Ok(None);
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    lock_fd(fd.as_fd(), LockKind::Shared, name)
        .map_err(|e| super::pages::context(e, &format!("{name} was not replaced")))?;
    Ok(Some(fd))
}

/// The new file until it has its name.
struct TempFile {
    fd: OwnedFd,
    /// `Some` for a named temporary (no `O_TMPFILE`); removed on drop
    /// unless committed.
    named: Option<PathBuf>,
}

impl TempFile {
    fn new(dir: &Path, dest: &Path) -> Result<TempFile> {
        let cdir = cpath(dir)?;
        let fl = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC;
        // SAFETY: `cdir` is a valid C string; the result is checked.
        let fd = unsafe { libc::open(cdir.as_ptr(), fl, 0o600 as libc::c_uint) };
        if fd >= 0 {
            return Ok(TempFile {
                // SAFETY: a fresh descriptor nobody else owns.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                named: None,
            });
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL) => {
                TempFile::named(dir, dest)
            }
            _ => Err(Error::io(
                format!("creating a new file in {}", dir.display()),
                e,
            )),
        }
    }

    fn named(dir: &Path, dest: &Path) -> Result<TempFile> {
        let mut err = None;
        for n in 0..16 {
            let p = temp_name(dir, dest, n);
            let r = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p);
            match r {
                Ok(f) => {
                    return Ok(TempFile {
                        fd: OwnedFd::from(f),
                        named: Some(p),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => err = Some(e),
                Err(e) => {
                    return Err(Error::io(format!("creating {}", p.display()), e));
                }
            }
        }
        Err(Error::io(
            format!("creating a temporary file in {}", dir.display()),
            err.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EEXIST)),
        ))
    }

    /// Give the file its name (link or rename), then make the headers and
    /// the name durable: `fdatasync` of the file, `fsync` of the directory.
    /// (In this order ext4 commits both in one journal transaction, data
    /// first; the name is given only after the headers were written.)
    fn commit(mut self, dest: &Dest, dir: &Path, name: &str, ch: &Channel) -> Result<()> {
        let cdest = cpath(&dest.path)?;
        match self.named.take() {
            Some(tmp) => {
                let r = std::fs::rename(&tmp, &dest.path);
                if let Err(e) = r {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(Error::io(
                        format!("renaming {} to {name}", tmp.display()),
                        e,
                    ));
                }
            }
            None if !dest.existing => self.link(&cdest, name)?,
            None => {
                let tmp = self.link_temp(dir, &dest.path)?;
                if let Err(e) = std::fs::rename(&tmp, &dest.path) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(Error::io(
                        format!("renaming {} to {name}", tmp.display()),
                        e,
                    ));
                }
            }
        }
        ch.sync()
            .map_err(|e| super::pages::context(e, "syncing the new image's headers"))?;
        sync_dir(dir)
    }

    /// Link the unnamed file to a free temporary name next to `dest`.
    fn link_temp(&self, dir: &Path, dest: &Path) -> Result<PathBuf> {
        let mut n = 0;
        loop {
            let tmp = temp_name(dir, dest, n);
            match self.link(&cpath(&tmp)?, &tmp.display().to_string()) {
                Err(e) if e.errno() == libc::EEXIST && n < 16 => n += 1,
                r => return r.map(|_| tmp),
            }
        }
    }

    /// `linkat` the unnamed file to `to` (through `/proc/self/fd`, which
    /// needs no privilege).
    fn link(&self, to: &CString, shown: &str) -> Result<()> {
        let from = CString::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
            .expect("no NUL in a formatted number");
        // SAFETY: both are valid C strings; the result is checked.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            let why = if e.raw_os_error() == Some(libc::EEXIST) {
                " (it appeared while the image was being created; nothing was replaced)"
            } else {
                ""
            };
            return Err(Error::io(format!("naming the new image {shown}{why}"), e));
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.named {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `.NAME.` of the temporary names for `dest`, NAME cut to keep within
/// NAME_MAX.
fn temp_prefix(dest: &Path) -> String {
    let base = dest.file_name().map(|s| s.as_bytes()).unwrap_or(b"image");
    format!(
        ".{}.",
        String::from_utf8_lossy(&base[..base.len().min(160)])
    )
}

/// `.NAME.PID-N.mr-new` next to `dest`.
fn temp_name(dir: &Path, dest: &Path, n: u32) -> PathBuf {
    dir.join(format!(
        "{}{}-{n}.mr-new",
        temp_prefix(dest),
        std::process::id()
    ))
}

/// Remove temporaries for `dest` that a process which no longer exists
/// left behind (killed between naming the new image and renaming it, or
/// at any point where there is no `O_TMPFILE`). A temporary whose process
/// id is in use again is left alone.
fn remove_stale_temps(dir: &Path, dest: &Path) {
    let prefix = temp_prefix(dest);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".mr-new"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing the directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mr-create-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The fallback for file systems without `O_TMPFILE`: a named
    /// temporary, removed when dropped, renamed over the path on commit.
    #[test]
    fn named_temporary_is_removed_or_renamed() {
        let d = scratch("named");
        let dest = d.join("x.img");
        std::fs::write(&dest, b"old").unwrap();
        let t = TempFile::named(&d, &dest).unwrap();
        assert_eq!(names(&d).len(), 2, "{:?}", names(&d));
        drop(t);
        assert_eq!(names(&d), ["x.img"]);
        let t = TempFile::named(&d, &dest).unwrap();
        let ch = Channel::from_fd(t.fd.as_raw_fd(), OpenFlags::READ | OpenFlags::WRITE).unwrap();
        ch.write_all_at(b"new", 0).unwrap();
        let target = Dest {
            path: dest.clone(),
            existing: true,
        };
        t.commit(&target, &d, "x.img", &ch).unwrap();
        assert_eq!(names(&d), ["x.img"]);
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporary_names_fit_name_max() {
        let long = "n".repeat(255);
        let p = temp_name(Path::new("/d"), &Path::new("/d").join(&long), 15);
        assert!(p.file_name().unwrap().len() <= 255, "{}", p.display());
        assert!(p.file_name().unwrap().to_string_lossy().starts_with('.'));
    }

    #[test]
    fn sizes_past_the_largest_offset_are_efbig() {
        let b = |len: u64| BlockSpec {
            idstr: "mem".into(),
            used_length: len,
            page_size: 4096,
        };
        let e = plan_new(0, "pc", &[b(1 << 63)]).unwrap_err();
        assert_eq!(e.errno(), libc::EFBIG, "{e}");
        let e = plan_new(0, "pc", &[b(1 << 62), b(1 << 62)]).unwrap_err();
        assert_eq!(e.errno(), libc::EFBIG, "{e}");
        let e = plan_new(u64::MAX - 4096, "pc", &[b(4096)]).unwrap_err();
        assert_eq!(e.errno(), libc::EFBIG, "{e}");
        plan_new(0, "pc", &[b(1 << 62)]).unwrap();
    }
}
