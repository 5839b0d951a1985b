//! Tests that need something a plain `cargo test` machine may lack: QEMU,
//! root, the pinned cbindgen.
//!
//! A test calls [`met`] first. When the need is met the test runs. When it
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
}

impl Need {
    fn what(self) -> &'static str {
        match self {
            Need::Qemu => "QEMU (qemu-system-x86_64 >= 9.0)",
            Need::Root => "root (it mounts a size-limited tmpfs)",
            Need::Cbindgen => "the pinned cbindgen in .tools/bin",
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
    let why = match need.check() {
        Ok(()) => return true,
        Err(why) => why,
    };
    let test = test_name(std::panic::Location::caller());
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
            "{test}: needs {}; {}",
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
