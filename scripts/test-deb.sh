#!/usr/bin/env bash
# The Debian package test: build the source package in debian/ offline from
# this checkout, install the binary packages, build and run a consumer
# against the installed library with pkg-config, run the installed tool,
# then remove the packages again.
#
#   scripts/test-deb.sh [BUILD_DIR]     (default: build)
#
# Steps: copy the checkout (tracked and new files) to BUILD_DIR/deb/SRC;
# `cargo vendor` the crates into it with a .cargo/config.toml pointing at
# them (the only step that reads the crate registry); dpkg-buildpackage
# -us -uc -b with the pkg.mappedram.rustup profile (the toolchain is
# rustup's, not Debian's cargo/rustc packages) in a network namespace with
# no network; dpkg -i; consumer; dpkg -r.
# The cargo target dir is kept in BUILD_DIR/deb/cargo-target, so a second
# run recompiles only what changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
for tool in dpkg-buildpackage dh cargo meson pkg-config; do
    command -v "$tool" >/dev/null || fail "$tool not found: run scripts/setup-deps.sh"
done

# The man page renders without a groff warning.
for page in "$ROOT"/doc/*.1; do
    warn="$(groff -man -ww -z "$page" 2>&1)"
    [ -z "$warn" ] || fail "$page: $warn"
done

VERSION="$(python3 "$ROOT/scripts/cargo-build.py" --print-version --manifest-dir "$ROOT")"
DEBVERSION="$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)"
[ "$DEBVERSION" = "$VERSION" ] \
    || fail "debian/changelog says $DEBVERSION, Cargo.toml $VERSION: add a changelog entry (dch -v $VERSION)"

DEB="$BUILD/deb"
SRC="$DEB/mappedram-$VERSION"
mkdir -p "$DEB"
rm -rf "$SRC" "$DEB"/*.deb "$DEB"/*.ddeb "$DEB"/*.buildinfo "$DEB"/*.changes
mkdir -p "$SRC"
# The checkout as git sees it (tracked + untracked, not ignored files).
(cd "$ROOT" && git ls-files -z -co --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$SRC"

# Vendor the crates; from here on no network is needed.
(cd "$SRC" && mkdir -p .cargo && cargo vendor --locked --versioned-dirs vendor >.cargo/config.toml 2>"$DEB/vendor.log")
cat >>"$SRC/.cargo/config.toml" <<'TOML'

[net]
offline = true
TOML

# dh (compat 13) points HOME at a scratch dir: keep rustup's toolchain.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
export MAPPEDRAM_CARGO_TARGET_DIR="$DEB/cargo-target"
# Offline for real: in a network namespace of its own (no interface but a
# down loopback), any attempt to reach a registry fails the build.
NONET=(unshare --net)
"${NONET[@]}" true 2>/dev/null || fail "unshare --net does not work here (needs root and user namespaces)"
T=$SECONDS
(cd "$SRC" && "${NONET[@]}" dpkg-buildpackage -us -uc -b -Ppkg.mappedram.rustup) >"$DEB/build.log" 2>&1 \
    || { tail -40 "$DEB/build.log"; fail "dpkg-buildpackage failed (log: $DEB/build.log)"; }
echo "test-deb: dpkg-buildpackage ok, without network ($((SECONDS - T)) s)"
unset MAPPEDRAM_CARGO_TARGET_DIR

ARCH="$(dpkg --print-architecture)"
LIB="$DEB/libmappedram0_${VERSION}_$ARCH.deb"
DEV="$DEB/libmappedram-dev_${VERSION}_$ARCH.deb"
TOOLS="$DEB/mappedram-tools_${VERSION}_$ARCH.deb"
for f in "$LIB" "$DEV" "$TOOLS"; do [ -f "$f" ] || fail "$(basename "$f") was not built"; done

# Contents: runtime = the SONAME file only; -dev = header, .pc, .a, .so.
MA="$(dpkg-architecture -qDEB_HOST_MULTIARCH)"
contents() { dpkg-deb -c "$1" | awk '{print $6}' | grep -v '/$' | sed 's|^\./||' | grep -v '^usr/share/doc/' | sort; }
[ "$(contents "$LIB")" = "$(printf '%s\n' "usr/lib/$MA/libmappedram.so.0" "usr/lib/$MA/libmappedram.so.$VERSION")" ] \
    || fail "libmappedram0 holds: $(contents "$LIB" | tr '\n' ' ')"
[ "$(contents "$DEV")" = "$(printf '%s\n' usr/include/mappedram.h "usr/lib/$MA/libmappedram.a" "usr/lib/$MA/libmappedram.so" "usr/lib/$MA/pkgconfig/mappedram.pc" | sort)" ] \
    || fail "libmappedram-dev holds: $(contents "$DEV" | tr '\n' ' ')"
contents "$TOOLS" | grep -x >/dev/null 'usr/bin/mrinspect' || fail "mappedram-tools has no usr/bin/mrinspect"
# Every tool has its manual page.
for tool in $(contents "$TOOLS" | sed -n 's|^usr/bin/||p'); do
    contents "$TOOLS" | grep -x >/dev/null "usr/share/man/man1/$tool.1.gz" || fail "mappedram-tools: $tool has no manual page"
done
echo "test-deb: mappedram-tools: $(contents "$TOOLS" | grep -v '^usr/share/doc' | tr '\n' ' ')"
dpkg-deb -f "$DEV" Depends | grep >/dev/null "libmappedram0 (= $VERSION)" || fail "libmappedram-dev does not depend on libmappedram0 (= $VERSION)"
dpkg-deb -f "$TOOLS" Depends | grep >/dev/null "libmappedram0" || fail "mappedram-tools does not depend on libmappedram0"

# Install; remove again whatever happens next.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mappedram-deb.XXXXXX")"
cleanup() {
    dpkg -r mappedram-tools libmappedram-dev libmappedram0 >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
dpkg -i "$LIB" "$DEV" "$TOOLS" >/dev/null || fail "dpkg -i failed"

# A consumer against the installed package: system pkg-config, no paths.
[ "$(env -u PKG_CONFIG_PATH -u PKG_CONFIG_LIBDIR pkg-config --modversion mappedram)" = "$VERSION" ] \
    || fail "pkg-config does not find the installed mappedram $VERSION"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Wpedantic -Werror -o "$WORK/save_restore" \
    "$ROOT/examples/consumer/save_restore.c" $(env -u PKG_CONFIG_PATH pkg-config --cflags --libs mappedram)
readelf -d "$WORK/save_restore" | grep >/dev/null 'NEEDED.*\[libmappedram.so.0\]' || fail "consumer does not need libmappedram.so.0"
env -u LD_LIBRARY_PATH "$WORK/save_restore" "$WORK/image.mr" || fail "consumer against the installed package failed"
env -u LD_LIBRARY_PATH ldd "$WORK/save_restore" | grep -E >/dev/null "libmappedram.so.0 => (/usr)?/lib/$MA/libmappedram.so.0" \
    || fail "consumer did not load the installed /usr/lib/$MA/libmappedram.so.0"
# Static, from the -dev package's archive.
LIBS="$(env -u PKG_CONFIG_PATH pkg-config --static --libs mappedram)"
# shellcheck disable=SC2086
cc -std=c11 -Wall -Wextra -Wpedantic -Werror -o "$WORK/save_restore_static" \
    "$ROOT/examples/consumer/save_restore.c" ${LIBS/-lmappedram/-l:libmappedram.a}
"$WORK/save_restore_static" "$WORK/image-static.mr" || fail "static consumer failed"
# The installed tool reads the image.
mrinspect "$WORK/image.mr" >"$WORK/inspect.txt" || fail "installed mrinspect failed on the consumer's image"
grep -q 'mem' "$WORK/inspect.txt" || fail "mrinspect does not list ramblock mem"
echo "test-deb: ok (libmappedram0, libmappedram-dev, mappedram-tools $VERSION built offline, installed, consumed, removed)"
