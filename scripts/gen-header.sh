#!/usr/bin/env bash
# Regenerate include/mappedram.h with the pinned cbindgen
# (installed into .tools/ by scripts/setup-deps.sh).
#
#   scripts/gen-header.sh [--output PATH]    (default: include/mappedram.h)
#
# The MR_VERSION_* macros come from Cargo.toml's package version: they are
# added to cbindgen's configuration (after_includes) here, so the header and
# the library can never disagree. tests/header.rs runs this script with
# --output and fails when the checked-in header differs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CBINDGEN="$ROOT/.tools/bin/cbindgen"
OUT="include/mappedram.h"
if [ "${1:-}" = "--output" ] && [ -n "${2:-}" ]; then
    OUT="$2"
elif [ $# -gt 0 ]; then
    echo "usage: scripts/gen-header.sh [--output PATH]" >&2
    exit 2
fi
if ! [ -x "$CBINDGEN" ]; then
    echo "gen-header: $CBINDGEN not found: run scripts/setup-deps.sh" >&2
    exit 1
fi
cd "$ROOT"
VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')"
IFS=. read -r MAJOR MINOR PATCH <<<"${VERSION%%[-+]*}"
CONFIG="$(mktemp "${TMPDIR:-/tmp}/mappedram-cbindgen.XXXXXX.toml")"
trap 'rm -f "$CONFIG"' EXIT
# Top-level keys must come before cbindgen.toml's first [table].
cat >"$CONFIG" <<TOML
after_includes = """

/* The version of this header (Cargo.toml's package version). The library's
 * own version at run time is mr_version(). */
#define MR_VERSION_MAJOR $MAJOR
#define MR_VERSION_MINOR $MINOR
#define MR_VERSION_PATCH $PATCH
#define MR_VERSION_STRING "$VERSION"
/* Nonzero when this header is at least version major.minor.patch. */
#define MR_VERSION_AT_LEAST(major, minor, patch) \\\\
    (MR_VERSION_MAJOR > (major) || \\\\
     (MR_VERSION_MAJOR == (major) && (MR_VERSION_MINOR > (minor) || \\\\
      (MR_VERSION_MINOR == (minor) && MR_VERSION_PATCH >= (patch)))))"""
TOML
cat cbindgen.toml >>"$CONFIG"
"$CBINDGEN" --config "$CONFIG" --output "$OUT" --quiet src/ffi/mod.rs
echo "gen-header: wrote $OUT (version $VERSION)" >&2
