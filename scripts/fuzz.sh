#!/usr/bin/env bash
# Run the cargo-fuzz target fuzz/fuzz_targets/open_image.rs for a bounded
# time: scripts/fuzz.sh [SECONDS] (default 60). Installs cargo-fuzz (pinned,
# from crates.io) into the project's .tools when missing. Uses a nightly
# toolchain when one is installed, else stable with RUSTC_BOOTSTRAP=1 (the
# sanitizer flags cargo-fuzz passes are unstable options).
# Crashing inputs land in fuzz/artifacts/open_image/; the corpus grows in
# fuzz/corpus/open_image/ (both ignored by git). Exit status: libFuzzer's
# (non-zero when it found a crash).
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_FUZZ_VERSION="0.13.2"
TOOLS="$ROOT/.tools"
export PATH="$TOOLS/bin:$PATH"

log() { printf 'fuzz: %s\n' "$*" >&2; }

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    cargo install --quiet --locked --root "$TOOLS" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

TOOLCHAIN=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    TOOLCHAIN=(+nightly)
else
    log "no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi

cd "$ROOT/fuzz"
CORPUS="$ROOT/fuzz/corpus/open_image"
if [ -z "$(ls -A "$CORPUS" 2>/dev/null)" ]; then
    log "writing the seed corpus into $CORPUS"
    cargo "${TOOLCHAIN[@]}" run --quiet --release --bin gen_seeds -- "$CORPUS"
fi

log "running open_image for ${SECONDS_TO_RUN}s"
# -rss_limit_mb: an allocation beyond what a file of MAX_FILE bytes could
# justify is a bug; -malloc_limit_mb catches a single huge allocation.
# -detect_leaks=0: LeakSanitizer reports glibc's per-thread destructor list
# (__cxa_thread_atexit_impl, 32 bytes) of the restore's worker threads as a
# leak; that is a known false positive, not this crate's memory.
# -dict: the stream's and the chunk table's magic numbers and field values
# (fuzz/open_image.dict), so mutations get past the headers.
exec cargo "${TOOLCHAIN[@]}" fuzz run open_image -- \
    -max_total_time="$SECONDS_TO_RUN" -max_len=262144 -dict="$ROOT/fuzz/open_image.dict" \
    -rss_limit_mb=2048 -malloc_limit_mb=64 -detect_leaks=0 -print_final_stats=1
