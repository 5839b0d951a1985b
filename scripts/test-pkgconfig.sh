#!/usr/bin/env bash
# The pkg-config consumer test: install a meson build into a scratch DESTDIR,
# build examples/hello.c with nothing but `pkg-config ... mappedram`, run it
# against the installed shared library, then link it statically against
# libmappedram.a with `pkg-config --static` and run that too. Then the
# README's two consumers against the installed library: the C example
# (examples/consumer/save_restore.c) with pkg-config, and the meson project
# (examples/consumer/meson.build) finding the installed dependency.
#
#   scripts/test-pkgconfig.sh [BUILD_DIR]     (default: build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
CC="${CC:-cc}"
CFLAGS=(-std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wpedantic -Werror)

fail() { echo "test-pkgconfig: FAIL: $*" >&2; exit 1; }
command -v pkg-config >/dev/null || fail "pkg-config not found: run scripts/setup-deps.sh"
[ -f "$BUILD/build.ninja" ] || fail "$BUILD is not a configured meson build dir (meson setup $BUILD)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mappedram-pc.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
DEST="$WORK/dest"

meson install -C "$BUILD" --destdir "$DEST" --quiet >/dev/null
PC="$(find "$DEST" -name mappedram.pc -print -quit)"
[ -n "$PC" ] || fail "meson install put no mappedram.pc under $DEST"
export PKG_CONFIG_PATH="$(dirname "$PC")"
export PKG_CONFIG_SYSROOT_DIR="$DEST"
export PKG_CONFIG_LIBDIR="$PKG_CONFIG_PATH"   # nothing from the system

LIBDIR="$(dirname "$(dirname "$PC")")"
[ -f "$LIBDIR/libmappedram.a" ] || fail "no libmappedram.a in $LIBDIR"
# The distribution layout: the file is .so.VERSION, .so.MAJOR (the SONAME,
# runtime) and .so (link time) are symlinks.
LIBVERSION="$(python3 "$ROOT/scripts/cargo-build.py" --print-version --manifest-dir "$ROOT")"
[ -f "$LIBDIR/libmappedram.so.$LIBVERSION" ] && [ ! -L "$LIBDIR/libmappedram.so.$LIBVERSION" ] \
    || fail "no libmappedram.so.$LIBVERSION file in $LIBDIR"
[ "$(readlink "$LIBDIR/libmappedram.so.0")" = "libmappedram.so.$LIBVERSION" ] \
    || fail "libmappedram.so.0 is not a symlink to libmappedram.so.$LIBVERSION"
[ "$(readlink "$LIBDIR/libmappedram.so")" = "libmappedram.so.0" ] \
    || fail "libmappedram.so is not a symlink to libmappedram.so.0"
readelf -d "$LIBDIR/libmappedram.so" | grep >/dev/null 'SONAME.*\[libmappedram.so.0\]' \
    || fail "installed libmappedram.so has no SONAME libmappedram.so.0"
INCDIR="$(pkg-config --variable=includedir mappedram)"
[ -f "$INCDIR/mappedram.h" ] || fail "mappedram.h not installed in $INCDIR"

# Shared.
# shellcheck disable=SC2046 # word splitting of pkg-config output is intended
"$CC" "${CFLAGS[@]}" -o "$WORK/hello" "$ROOT/examples/hello.c" \
    $(pkg-config --cflags --libs mappedram)
readelf -d "$WORK/hello" | grep >/dev/null 'NEEDED.*\[libmappedram.so.0\]' \
    || fail "hello does not record NEEDED libmappedram.so.0"
OUT="$(LD_LIBRARY_PATH="$LIBDIR" "$WORK/hello" "$WORK")" || fail "hello (shared) failed"
echo "$OUT"
VERSION="$(pkg-config --modversion mappedram)"
grep -qx "libmappedram $VERSION" <<<"$OUT" \
    || fail "library version differs from pkg-config --modversion ($VERSION)"

# Static: the same flags with --static, libmappedram.a instead of the .so.
LIBS="$(pkg-config --static --libs mappedram)"
LIBS="${LIBS/-lmappedram/-l:libmappedram.a}"
# shellcheck disable=SC2046,SC2086
"$CC" "${CFLAGS[@]}" -o "$WORK/hello-static" "$ROOT/examples/hello.c" \
    $(pkg-config --cflags mappedram) $LIBS
if readelf -d "$WORK/hello-static" | grep >/dev/null 'libmappedram'; then
    fail "hello-static still needs the shared libmappedram"
fi
env -u LD_LIBRARY_PATH "$WORK/hello-static" "$WORK" || fail "hello (static) failed"

# The README's C consumer: save, restore, compare; header and library agree.
# shellcheck disable=SC2046
"$CC" "${CFLAGS[@]}" -o "$WORK/save_restore" "$ROOT/examples/consumer/save_restore.c" \
    $(pkg-config --cflags --libs mappedram)
OUT="$(LD_LIBRARY_PATH="$LIBDIR" "$WORK/save_restore" "$WORK/consumer.img")" \
    || fail "save_restore (pkg-config build) failed"
echo "$OUT"
grep -qx "libmappedram $VERSION (header $VERSION): restored RAM equals saved RAM" <<<"$OUT" \
    || fail "save_restore: library, header and pkg-config versions differ"

# The README's meson consumer, finding the installed library (no fallback).
cp "$ROOT/examples/consumer/meson.build" "$ROOT/examples/consumer/save_restore.c" "$WORK/"
meson setup "$WORK/mbuild" "$WORK" --wrap-mode=nofallback >"$WORK/msetup.log" 2>&1 \
    || { cat "$WORK/msetup.log"; fail "meson setup of the consumer (installed dependency) failed"; }
grep -q "Run-time dependency mappedram found: YES $VERSION" "$WORK/msetup.log" \
    || { cat "$WORK/msetup.log"; fail "the meson consumer did not find the installed mappedram"; }
meson compile -C "$WORK/mbuild" >/dev/null || fail "meson compile of the consumer failed"
LD_LIBRARY_PATH="$LIBDIR" "$WORK/mbuild/save_restore" "$WORK/mconsumer.img" \
    || fail "save_restore (installed meson dependency) failed"
echo "test-pkgconfig: ok (shared and static, README consumers via pkg-config and meson, version $VERSION)"
