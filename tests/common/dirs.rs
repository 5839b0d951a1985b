//! Scratch directories: temp dirs removed on drop, a memory-backed variant,
//! a check that O_DIRECT alignment is enforced, and a size-limited tmpfs
//! mount (root).

use super::mem::Aligned;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static N: AtomicU64 = AtomicU64::new(0);

/// A fresh, unique directory `mr-<tag>-<pid>-<n>` under `parent`.
fn fresh(parent: &Path, tag: &str) -> std::io::Result<PathBuf> {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = parent.join(format!("mr-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A unique directory removed on drop (kept when `MR_KEEP_TMP` is set, for
/// post-mortems).
pub struct TmpDir {
    path: PathBuf,
}

impl TmpDir {
    /// Under the system temp dir (`TMPDIR`; ext4 here).
    pub fn new(tag: &str) -> TmpDir {
        let parent = std::env::temp_dir();
        let path = fresh(&parent, tag)
            .unwrap_or_else(|e| panic!("creating a directory in {}: {e}", parent.display()));
        TmpDir { path }
    }

    /// Under /dev/shm when there is one: `fdatasync` costs nothing there,
    /// and what a SIGKILL leaves behind is the same as on a disk file
    /// system (the page cache survives both). Falls back to [`TmpDir::new`].
    pub fn in_memory(tag: &str) -> TmpDir {
        let shm = Path::new("/dev/shm");
        match shm.is_dir().then(|| fresh(shm, tag)) {
            Some(Ok(path)) => TmpDir { path },
            _ => TmpDir::new(tag),
        }
    }

    /// Under the system temp dir, which must enforce O_DIRECT alignment
    /// (ext4, xfs): on one that does not (tmpfs) alignment tests would
    /// prove nothing, so this fails (never skips) with what to change.
    pub fn dio_enforcing(tag: &str) -> TmpDir {
        let d = TmpDir::new(tag);
        d.require_dio_enforcement();
        d
    }

    fn require_dio_enforcement(&self) {
        let p = self.join("dio-probe");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) => panic!(
                "{} refuses O_DIRECT ({e}); run the tests with TMPDIR on ext4 or xfs",
                self.path.display()
            ),
        };
        let mut buf = Aligned::new(8192);
        // Aligned buffer, unaligned offset: an enforcing file system says EINVAL.
        let r = f.read_at(buf.window_mut(0, 4096), 1);
        assert!(
            matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL)),
            "{} does not enforce O_DIRECT alignment (an unaligned O_DIRECT pread gave {r:?}); \
             these tests need ext4 or xfs: set TMPDIR to a directory on one",
            self.path.display()
        );
        std::fs::remove_file(&p).unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if std::env::var_os("MR_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A size-limited tmpfs mounted on a fresh directory; unmounted (lazily, so
/// a leaked descriptor cannot keep it) and removed on drop. Needs root:
/// gate the test with `need::met(Need::Root)` first.
pub struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    /// Mount a tmpfs of `size_bytes`; panics with what failed.
    pub fn new(tag: &str, size_bytes: u64) -> TmpfsMount {
        let dir = fresh(&std::env::temp_dir(), tag).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes},mode=0700"))
            .arg("tmpfs")
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => TmpfsMount { dir },
            Ok(o) => {
                let _ = std::fs::remove_dir(&dir);
                panic!(
                    "this test needs root to mount a size-limited tmpfs (mount -t tmpfs -o size={size_bytes} on {}): mount failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                panic!("this test needs root and the mount(8) tool to mount a size-limited tmpfs: running mount: {e}")
            }
        }
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
