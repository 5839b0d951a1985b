#!/usr/bin/env bash
# THE test command: everything CI runs, in order, failing fast.
#
#   scripts/test-all.sh
#
# Steps: dependencies; rustfmt; clippy; all Rust tests (release, incl. the
# QEMU interop, power-loss and loom tests); meson build + C tests (plus the
# multi-threaded ones under valgrind helgrind); the same under ASan/UBSan;
# the pkg-config consumer test; a bounded fuzz run; the main job (smaller). The last line of output
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
step "cargo clippy" 600 cargo clippy --workspace --all-targets -- "${CLIPPY_ARGS[@]}"
step "cargo test --release" 900 cargo test --release
step "meson setup" 120 meson setup $(reconf "$BUILD") "$BUILD" -Dvalgrind=enabled
step "meson compile" 600 meson compile -C "$BUILD"
step "meson test" 600 meson test -C "$BUILD" --print-errorlogs
step "meson setup (ASan/UBSan)" 120 meson setup $(reconf "$BUILD_SAN") "$BUILD_SAN" -Db_sanitize=address,undefined -Db_lundef=false
step "meson compile (ASan/UBSan)" 600 meson compile -C "$BUILD_SAN"
step "meson test (ASan/UBSan)" 600 meson test -C "$BUILD_SAN" --print-errorlogs
step "pkg-config consumer" 300 bash scripts/test-pkgconfig.sh "$BUILD"

# A bounded cargo-fuzz run of the image parser (fuzz/fuzz_targets/open_image.rs);
# the suite's tests/fuzz_open.rs runs a deterministic mutation fuzz as well.
step "fuzz open_image (bounded, ${MR_FUZZ_SECONDS:-60} s)" 900 bash scripts/fuzz.sh "${MR_FUZZ_SECONDS:-60}"
step "main job (scripts/demo.sh, 256 MiB)" 600 bash scripts/demo.sh --size 256M

summary
