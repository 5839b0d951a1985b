#!/usr/bin/env bash
# Deliberately replace the ABI baseline (abi/libmappedram.abi) with the ABI
# of the library built from this checkout. One command:
#
#   scripts/update-abi-baseline.sh [BUILD_DIR]     (default: build)
#
# Configures BUILD_DIR if needed, builds libmappedram, writes the baseline
# with abidw and prints what changed against the previous baseline.
# Commit abi/libmappedram.abi together with the change it records. When the
# change is incompatible (scripts/check-abi.sh failed), bump the major
# version in Cargo.toml first: the SONAME (libmappedram.so.MAJOR) follows it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
BASELINE="$ROOT/abi/libmappedram.abi"
SUPPR="$ROOT/abi/suppressions.ini"

[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" "$ROOT" >/dev/null
meson compile -C "$BUILD" libmappedram >/dev/null 2>&1 \
    || meson compile -C "$BUILD" libmappedram
SO="$BUILD/libmappedram.so"
NEW="$(mktemp "${TMPDIR:-/tmp}/mappedram-abi.XXXXXX")"
trap 'rm -f "$NEW"' EXIT
# shellcheck source=scripts/abi-common.sh
. "$ROOT/scripts/abi-common.sh"
abi_dump "$SO" "$SUPPR" "$NEW"
if [ -f "$BASELINE" ]; then
    echo "update-abi-baseline: changes against the previous baseline:"
    abidiff --suppressions "$SUPPR" "$BASELINE" "$NEW" || true
fi
cp "$NEW" "$BASELINE"
chmod 644 "$BASELINE"
echo "update-abi-baseline: wrote abi/libmappedram.abi ($(abi_soname "$SO"), $(nm -D --defined-only "$SO" | grep -c ' T mr_') functions)"
