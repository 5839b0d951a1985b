//! Tests that need something a plain `cargo test` machine may lack: QEMU,
//! root, the pinned cbindgen, userfaultfd, huge pages.
//!
//! A test calls [`met`] first (or [`hugepages`], which also reserves them). When the need is met the test runs. When it
//! is not:
//! - under the full suite (`MR_TEST_REQUIRE_ALL=1`, which
//!   `scripts/test-all.sh` exports) the test FAILS saying how to install
//!   what is missing: the full suite skips nothing;
//! - otherwise the test prints `NOT RUN: <test> needs <what>; run
//!   scripts/test-all.sh` (visible with `--nocapture`) and returns, and when
//!   the test binary exits it prints a summary of every test it did not run
//!   to stderr (visible in a plain `cargo test`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Something a test needs beyond a Rust toolchain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `qemu-system-x86_64` >= 9.0 on `PATH` (or `$QEMU_SYSTEM_X86_64`).
    Qemu,
    /// Running as root (mounting a size-limited tmpfs).
    Root,
    /// The cbindgen version scripts/setup-deps.sh pins, in `.tools/bin`.
    Cbindgen,
    /// userfaultfd usable by this process (probed with the real system
    /// call, then `/dev/userfaultfd`, and the API handshake).
    Userfaultfd,
    /// Free 2 MiB huge pages (hugetlbfs), reserved by [`hugepages`].
    HugePages,
}

impl Need {
    fn what(self) -> &'static str {
        match self {
            Need::Qemu => "QEMU (qemu-system-x86_64 >= 9.0)",
            Need::Root => "root (it mounts a size-limited tmpfs)",
            Need::Cbindgen => "the pinned cbindgen in .tools/bin",
            Need::Userfaultfd => "userfaultfd",
            Need::HugePages => "2 MiB huge pages",
        }
    }

    fn how_to_get(self) -> &'static str {
        match self {
            Need::Qemu => super::qemu::INSTALL_HINT,
            Need::Root => {
                "run the tests as root (scripts/test-all.sh needs root anyway, for apt-get)"
            }
            Need::Cbindgen => {
                "run scripts/setup-deps.sh, which installs the pinned cbindgen into .tools"
            }
            Need::Userfaultfd => {
                "run the tests as root, or allow userfaultfd to this user: \
                 `sysctl vm.unprivileged_userfaultfd=1`, or read/write access to \
                 /dev/userfaultfd (the kernel needs CONFIG_USERFAULTFD)"
            }
            Need::HugePages => {
                "run the tests as root (they reserve 2 MiB pages through \
                 /proc/sys/vm/nr_hugepages and restore it), with enough free memory"
            }
        }
    }

    /// `Ok` when available, else why not.
    fn check(self) -> Result<(), String> {
        match self {
            Need::Qemu => super::qemu::find().map(|_| ()),
            Need::Root => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let euid = unsafe { libc::geteuid() };
                if euid == 0 {
                    Ok(())
                } else {
                    Err(format!("running as uid {euid}, not root"))
                }
            }
            Need::Cbindgen => check_cbindgen(),
            Need::Userfaultfd => probe_userfaultfd(),
            Need::HugePages => panic!("call need::hugepages(n), which reserves them"),
        }
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned cbindgen binary (present or not).
pub fn cbindgen() -> PathBuf {
    repo_root().join(".tools/bin/cbindgen")
}

/// The cbindgen version scripts/setup-deps.sh pins (one source of truth).
pub fn pinned_cbindgen_version(root: &Path) -> String {
    let script = std::fs::read_to_string(root.join("scripts/setup-deps.sh"))
        .expect("reading scripts/setup-deps.sh");
    script
        .lines()
        .find_map(|l| l.strip_prefix("CBINDGEN_VERSION="))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("CBINDGEN_VERSION= line in scripts/setup-deps.sh")
}

fn check_cbindgen() -> Result<(), String> {
    let bin = cbindgen();
    if !bin.is_file() {
        return Err(format!("{} is missing", bin.display()));
    }
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let pinned = format!("cbindgen {}", pinned_cbindgen_version(&repo_root()));
    if version == pinned {
        Ok(())
    } else {
        Err(format!(
            "{} is {version:?}, the pin is {pinned:?}",
            bin.display()
        ))
    }
}

/// Whether the full suite is running (`MR_TEST_REQUIRE_ALL=1`).
pub fn require_all() -> bool {
    std::env::var("MR_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Tests of this binary that did not run, with why, for the exit summary.
static NOT_RUN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether the calling test may run (see the module docs). Call it first
/// in the test and `return` when it says false.
#[track_caller]
pub fn met(need: Need) -> bool {
    match need.check() {
        Ok(()) => true,
        Err(why) => not_met(need, &why, std::panic::Location::caller()),
    }
}

/// The need is not met because of `why`: fail under the full suite, else
/// print and record NOT RUN. Returns false.
fn not_met(need: Need, why: &str, at: &std::panic::Location) -> bool {
    let test = test_name(at);
    if require_all() {
        panic!(
            "{test} needs {} and MR_TEST_REQUIRE_ALL=1 (the full suite skips nothing): {why}; {}",
            need.what(),
            need.how_to_get()
        );
    }
    eprintln!(
        "NOT RUN: {test} needs {} ({why}); run scripts/test-all.sh",
        need.what()
    );
    NOT_RUN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!(
            "{test}: needs {} ({why}); {}",
            need.what(),
            need.how_to_get()
        ));
    static SUMMARY: Once = Once::new();
    SUMMARY.call_once(|| {
        // SAFETY: atexit only stores the pointer; `print_summary` is a
        // static `extern "C" fn()` that touches only statics that live to
        // the end of the process, recovers a poisoned lock instead of
        // panicking, and ignores write errors, so it cannot unwind.
        let rc = unsafe { libc::atexit(print_summary) };
        assert_eq!(rc, 0, "atexit failed: the NOT RUN summary would be lost");
    });
    false
}

/// libtest names each test's thread after the test; fall back to the call
/// site when tests run on the main thread.
fn test_name(at: &std::panic::Location) -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_owned(),
        _ => format!("the test at {}:{}", at.file(), at.line()),
    }
}

extern "C" fn print_summary() {
    let list = match NOT_RUN.try_lock() {
        Ok(l) => l.clone(),
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().clone(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut text = format!(
        "\nNOT RUN: {} test(s) of {exe} reported ok without running their body:\n",
        list.len()
    );
    for l in &list {
        text.push_str(&format!("  NOT RUN {l}\n"));
    }
    text.push_str("Run the full suite, scripts/test-all.sh, to run them (it installs what they need and fails instead of skipping).\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// `Ok` when this process can create a userfaultfd and complete the API
/// handshake, the way the library does: the system call, then (when it
/// says `EPERM`) `/dev/userfaultfd`'s `USERFAULTFD_IOC_NEW`.
pub fn probe_userfaultfd() -> Result<(), String> {
    use mappedram::uffd::sys::{uffdio_api, UFFDIO_API, UFFD_API, USERFAULTFD_IOC_NEW};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd(2) takes one integer and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    let fd = if fd >= 0 {
        // SAFETY: a new descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    } else {
        let sys = std::io::Error::last_os_error();
        if sys.raw_os_error() != Some(libc::EPERM) {
            return Err(format!("the userfaultfd system call failed: {sys}"));
        }
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")
            .map_err(|e| {
                format!(
                    "the userfaultfd system call says EPERM (vm.unprivileged_userfaultfd is {}) \
                     and /dev/userfaultfd cannot be opened: {e}",
                    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_else(|_| "unknown".into())
                )
            })?;
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags as the integer argument.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
        if fd < 0 {
            return Err(format!(
                "/dev/userfaultfd USERFAULTFD_IOC_NEW: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let mut api = uffdio_api {
        api: UFFD_API,
        ..Default::default()
    };
    // SAFETY: UFFDIO_API reads and writes exactly one uffdio_api.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut uffdio_api) };
    if r < 0 {
        return Err(format!(
            "the UFFDIO_API handshake failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Huge pages reserved for a test; the old `vm.nr_hugepages` comes back on
/// drop. Holding one serialises the huge page tests of a binary.
pub struct HugePages {
    restore: Option<u64>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// `n` free 2 MiB huge pages for the calling test, reserving them (root)
/// when fewer are free; `None` (NOT RUN, or a failure under the full
/// suite) when they cannot be had.
#[track_caller]
pub fn hugepages(n: u64) -> Option<HugePages> {
    static ONE: Mutex<()> = Mutex::new(());
    let at = std::panic::Location::caller();
    let guard = ONE.lock().unwrap_or_else(|e| e.into_inner());
    match reserve(n) {
        Ok(restore) => Some(HugePages {
            restore,
            _one_at_a_time: guard,
        }),
        Err(why) => {
            drop(guard);
            not_met(Need::HugePages, &why, at);
            None
        }
    }
}

/// Make `n` huge pages free; returns the old `nr_hugepages` when changed.
fn reserve(n: u64) -> Result<Option<u64>, String> {
    let size_kb = meminfo("Hugepagesize:");
    if size_kb != 2048 {
        return Err(format!(
            "the default huge page size is {size_kb} kB, not 2048"
        ));
    }
    let free = meminfo("HugePages_Free:");
    if free >= n {
        return Ok(None);
    }
    let old: u64 = std::fs::read_to_string(NR_HUGEPAGES)
        .map_err(|e| format!("reading {NR_HUGEPAGES}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("parsing {NR_HUGEPAGES}: {e}"))?;
    let want = old + (n - free);
    std::fs::write(NR_HUGEPAGES, want.to_string()).map_err(|e| {
        format!("{free} huge pages free, {n} needed, and writing {NR_HUGEPAGES} failed: {e}")
    })?;
    let got = meminfo("HugePages_Free:");
    if got < n {
        let _ = std::fs::write(NR_HUGEPAGES, old.to_string());
        return Err(format!(
            "the kernel reserved only {got} free huge pages of the {n} asked (memory fragmented?)"
        ));
    }
    Ok(Some(old))
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(old) = self.restore {
            if let Err(e) = std::fs::write(NR_HUGEPAGES, old.to_string()) {
                eprintln!("restoring {NR_HUGEPAGES} to {old}: {e}");
            }
        }
    }
}
