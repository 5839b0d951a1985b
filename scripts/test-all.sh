#!/usr/bin/env bash
# THE test command: everything CI runs, in order, failing fast.
#
#   scripts/test-all.sh
#
# Steps: dependencies; rustfmt; README quotes; clippy; all Rust tests
# (release, incl. the QEMU interop, power-loss and loom tests and doc tests);
# cargo doc; the Rust examples (README's, vm-memory); MSRV; meson build + C
# tests (plus the multi-threaded ones under valgrind helgrind); the same under
# ASan/UBSan; the consumers (pkg-config, installed meson dependency, meson
# subproject); the ABI check; the Debian packages (build, install, consume);
# a bounded fuzz run; the main job (smaller). The last line of output
# is "N passed, N failed", counting steps.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BUILD="${MR_BUILD_DIR:-$ROOT/build}"
BUILD_SAN="${MR_BUILD_SAN_DIR:-$ROOT/build-asan}"
CLIPPY_ARGS=(-D warnings -D clippy::undocumented_unsafe_blocks)

# The full suite skips nothing: a Rust test that needs QEMU, root or the
# pinned cbindgen fails when it is missing (tests/common/need.rs), instead
# of printing NOT RUN and returning as in a plain `cargo test`.
export MR_TEST_REQUIRE_ALL=1

passed=0
failed=0
T0=$SECONDS

summary() {
    echo
    echo "test-all: total $((SECONDS - T0)) s"
    echo "$passed passed, $failed failed"
}

# step NAME TIMEOUT_SECONDS CMD...: run one step; stop at the first failure.
step() {
    local name="$1" limit="$2"
    shift 2
    local t=$SECONDS
    echo
    echo "=== test-all: $name"
    echo "+ $*"
    timeout --foreground "$limit" "$@"
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "=== test-all: $name: ok ($((SECONDS - t)) s)"
    else
        failed=$((failed + 1))
        if [ "$rc" -eq 124 ]; then
            echo "=== test-all: $name: FAILED (timed out after $limit s)" >&2
        else
            echo "=== test-all: $name: FAILED (exit $rc, $((SECONDS - t)) s)" >&2
        fi
        summary
        exit 1
    fi
}

# reconf DIR: "--reconfigure" when DIR is already a configured build dir.
reconf() {
    if [ -f "$1/build.ninja" ]; then echo --reconfigure; fi
}

step "dependencies (scripts/setup-deps.sh)" 900 bash scripts/setup-deps.sh
step "cargo fmt --check" 120 cargo fmt --all --check
step "README quotes equal their example files" 30 python3 scripts/check-readme-quotes.py
step "cargo clippy" 600 cargo clippy --workspace --all-targets -- "${CLIPPY_ARGS[@]}"
step "cargo test --release" 900 cargo test --release
step "cargo doc (-D warnings)" 300 env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked
step "Rust example (README: save_restore)" 300 cargo run --release --locked --example save_restore
step "Rust VMM example (vm-memory GuestMemoryMmap round trip)" 300 cargo run --release --locked --example vm_memory_roundtrip
step "MSRV (dependencies and std APIs vs rust-version)" 300 bash scripts/check-msrv.sh
# meson setup builds the Rust library (rustc's native-static-libs are read at
# configure time); the ASan/UBSan build reuses that cargo target dir (same
# cargo command: the Rust code is not instrumented).
step "meson setup" 600 meson setup $(reconf "$BUILD") "$BUILD" -Dvalgrind=enabled
step "meson compile" 600 meson compile -C "$BUILD"
step "meson test" 600 meson test -C "$BUILD" --print-errorlogs
export MAPPEDRAM_CARGO_TARGET_DIR="$BUILD/cargo-target"
step "meson setup (ASan/UBSan)" 600 meson setup $(reconf "$BUILD_SAN") "$BUILD_SAN" -Db_sanitize=address,undefined -Db_lundef=false
step "meson compile (ASan/UBSan)" 600 meson compile -C "$BUILD_SAN"
step "meson test (ASan/UBSan)" 600 meson test -C "$BUILD_SAN" --print-errorlogs
unset MAPPEDRAM_CARGO_TARGET_DIR
step "pkg-config consumer" 300 bash scripts/test-pkgconfig.sh "$BUILD"
step "ABI check (abidiff against abi/)" 120 bash scripts/check-abi.sh "$BUILD"
step "ABI check fails when it must (synthetic baselines)" 120 bash scripts/test-abi-check.sh "$BUILD"
step "meson subproject consumer" 300 bash scripts/test-subproject.sh "$BUILD"
step "Debian packages (build offline, install, consume)" 900 bash scripts/test-deb.sh "$BUILD"

# A bounded cargo-fuzz run of the image parser (fuzz/fuzz_targets/open_image.rs);
# the suite's tests/fuzz_open.rs runs a deterministic mutation fuzz as well.
step "fuzz open_image (bounded, ${MR_FUZZ_SECONDS:-60} s)" 900 bash scripts/fuzz.sh "${MR_FUZZ_SECONDS:-60}"
step "main job (scripts/demo.sh, 256 MiB)" 600 bash scripts/demo.sh --size 256M

summary
