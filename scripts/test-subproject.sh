#!/usr/bin/env bash
# The meson-subproject consumer test: a parent project (examples/consumer,
# the one README.md quotes) with this repository as subprojects/mappedram.
# Checks that the parent builds and runs its program against the subproject,
# and that none of our tests, examples or tools are built in the parent
# (they default to off when meson.is_subproject()).
#
#   scripts/test-subproject.sh [BUILD_DIR]
#
# BUILD_DIR (default: build), when it is a meson build of this checkout,
# lends its cargo target dir so the Rust library is not compiled again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
fail() { echo "test-subproject: FAIL: $*" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mappedram-sub.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp "$ROOT"/examples/consumer/meson.build "$ROOT"/examples/consumer/save_restore.c "$WORK/"
mkdir "$WORK/subprojects"
ln -s "$ROOT" "$WORK/subprojects/mappedram"
if [ -d "$BUILD/cargo-target" ]; then
    export MAPPEDRAM_CARGO_TARGET_DIR="$BUILD/cargo-target"
fi

# --wrap-mode=forcefallback: use the subproject even if a mappedram.pc is
# installed on this machine.
meson setup "$WORK/build" "$WORK" --wrap-mode=forcefallback >"$WORK/setup.log" 2>&1 \
    || { cat "$WORK/setup.log"; fail "meson setup of the parent project failed"; }
grep -q "Subproject mappedram finished" "$WORK/setup.log" \
    || { cat "$WORK/setup.log"; fail "the parent did not use subprojects/mappedram"; }
meson compile -C "$WORK/build" >"$WORK/compile.log" 2>&1 \
    || { cat "$WORK/compile.log"; fail "meson compile of the parent project failed"; }

# Nothing of ours but the library itself: no test, example or tool target,
# no registered test.
TARGETS="$(meson introspect --targets "$WORK/build" \
    | python3 -c 'import json, sys; print("\n".join(sorted(t["name"] for t in json.load(sys.stdin))))')"
echo "parent targets: $(tr '\n' ' ' <<<"$TARGETS")"
EXPECTED="$(printf '%s\n' libmappedram save_restore)"
[ "$TARGETS" = "$EXPECTED" ] || fail "the parent builds more than its program and libmappedram"
TESTS="$(meson introspect --tests "$WORK/build")"
[ "$TESTS" = "[]" ] || fail "the parent registers our tests: $TESTS"
[ ! -e "$WORK/build/subprojects/mappedram/c-tests" ] || fail "c-tests/ was configured in the parent"

"$WORK/build/save_restore" "$WORK/build/image.mr" || fail "save_restore (subproject build) failed"

# The parent can still ask for them (and so the checks above can fail).
meson configure "$WORK/build" -Dmappedram:tests=enabled >/dev/null
meson setup --reconfigure "$WORK/build" "$WORK" >"$WORK/reconf.log" 2>&1 \
    || { cat "$WORK/reconf.log"; fail "reconfigure with -Dmappedram:tests=enabled failed"; }
NTESTS="$(meson introspect --tests "$WORK/build" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')"
[ "$NTESTS" -gt 0 ] || fail "-Dmappedram:tests=enabled registers no test in the parent"
echo "parent with -Dmappedram:tests=enabled: $NTESTS tests registered"
echo "test-subproject: ok (parent builds only its program and libmappedram; no tests, examples, tools)"
