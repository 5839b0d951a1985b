#!/usr/bin/env bash
# The ABI check of the built libmappedram.so (part of scripts/test-all.sh):
#
#   scripts/check-abi.sh [BUILD_DIR]     (default: build)
#
# 1. SONAME is libmappedram.so.MAJOR, MAJOR from Cargo.toml.
# 2. The library exports exactly the functions include/mappedram.h declares,
#    all mr_* (rustc exports only the #[no_mangle] extern "C" functions; this
#    proves nothing else leaks, e.g. a Rust symbol or a dependency's).
# 3. abidiff against the baseline abi/libmappedram.abi: fails on a removed
#    function or variable (abidiff's "incompatible change" bit) and on a
#    changed one (a parameter, return or struct layout change breaks C
#    callers); added functions pass. A deliberate change is recorded with
#    scripts/update-abi-baseline.sh (and, when incompatible, a major version
#    bump, which changes the SONAME).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
SO="$BUILD/libmappedram.so"
BASELINE="${MR_ABI_BASELINE:-$ROOT/abi/libmappedram.abi}"   # override: testing the check
SUPPR="$ROOT/abi/suppressions.ini"
fail() { echo "check-abi: FAIL: $*" >&2; exit 1; }
# shellcheck source=scripts/abi-common.sh
. "$ROOT/scripts/abi-common.sh"

command -v abidiff >/dev/null || fail "abidiff not found: run scripts/setup-deps.sh (abigail-tools)"
[ -f "$SO" ] || fail "$SO not found: build first (meson compile -C $BUILD)"
[ -f "$BASELINE" ] || fail "no baseline $BASELINE: run scripts/update-abi-baseline.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mappedram-abi.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# 1. SONAME.
MAJOR="$(python3 -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/Cargo.toml", "rb"))["package"]["version"].split(".")[0])')"
SONAME="$(abi_soname "$SO")"
[ "$SONAME" = "libmappedram.so.$MAJOR" ] || fail "SONAME is '$SONAME', expected libmappedram.so.$MAJOR"

# 2. Exports = the header's functions, all mr_*.
nm -D --defined-only "$SO" | awk '{print $NF}' | sort -u >"$WORK/exported"
${CC:-cc} -E -P -x c "$ROOT/include/mappedram.h" \
    | grep -oE '\bmr_[a-z0-9_]+[[:space:]]*\(' | tr -d '( \t' | sort -u >"$WORK/declared"
[ -s "$WORK/declared" ] || fail "no function found in include/mappedram.h"
if grep -v '^mr_' "$WORK/exported" >"$WORK/foreign"; then
    fail "exported symbols outside mr_*: $(tr '\n' ' ' <"$WORK/foreign")"
fi
if ! diff -u "$WORK/declared" "$WORK/exported" >"$WORK/exports.diff"; then
    cat "$WORK/exports.diff" >&2
    fail "exported functions differ from include/mappedram.h (- header only, + library only)"
fi
echo "check-abi: $SONAME exports $(wc -l <"$WORK/exported") functions, all mr_*, exactly the header's"

# 3. abidiff against the baseline.
abi_dump "$SO" "$SUPPR" "$WORK/current.abi"
set +e
abidiff --suppressions "$SUPPR" "$BASELINE" "$WORK/current.abi" >"$WORK/report"
rc=$?
set -e
cat "$WORK/report"
(( rc & 1 )) && fail "abidiff failed (exit $rc)"
(( rc & 2 )) && fail "abidiff usage error (exit $rc)"
BASE_SONAME="$(sed -n "s/.*soname='\([^']*\)'.*/\1/p" "$BASELINE" | head -1)"
[ "$BASE_SONAME" = "$SONAME" ] \
    || fail "SONAME changed ($BASE_SONAME -> $SONAME): record the new ABI with scripts/update-abi-baseline.sh"
(( rc & 8 )) && fail "incompatible ABI change (see the report): keep the old functions, or bump the major version and run scripts/update-abi-baseline.sh"
# "Functions changes summary: 0 Removed, 1 Changed (...), 2 Added functions"
changed="$(grep -E '^ *(Functions|Variables) changes summary' "$WORK/report" \
    | sed -E 's/.*Removed, ([0-9]+) Changed.*/\1/' | awk '{s += $1} END {print s + 0}' || true)"
[ "$changed" -eq 0 ] || fail "$changed changed function(s)/variable(s) (see the report): a C caller built against the baseline may break; if the change is deliberate and compatible, run scripts/update-abi-baseline.sh"
added="$(grep -E '^ *Functions changes summary' "$WORK/report" | sed -E 's/.*, ([0-9]+) Added.*/\1/' || true)"
echo "check-abi: ok (compatible with ${BASELINE#"$ROOT"/}; ${added:-0} function(s) added since)"
