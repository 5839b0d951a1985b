#!/usr/bin/env bash
# Install what building and testing libmappedram needs on a fresh Debian
# bookworm machine: meson, ninja, pkg-config, a C compiler with sanitizers,
# libabigail's abidiff (ABI check), dpkg-dev + debhelper (package build),
# QEMU >= 9.0 (from bookworm-backports), the pinned cbindgen, and for the
# benchmark's real Linux guest busybox-static, cpio and linux-image-cloud-amd64.
#
# The backports suite is added with the same URI and keyring as the machine's
# existing Debian entry: no mirror host is written into this repository.
# Idempotent: does nothing that is already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CBINDGEN_VERSION="0.29.2"
QEMU_MIN_MAJOR=9

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

qemu_ok() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local major
    major="$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)"
    [ -n "$major" ] && [ "$major" -ge "$QEMU_MIN_MAJOR" ]
}

# Print "URI<TAB>KEYRING" of the machine's main Debian bookworm entry.
debian_source() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822 stanzas are separated by blank lines.
        awk 'BEGIN{RS=""; FS="\n"}
        {
            uri=""; key=""; suites=""; types=""
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/)      { sub(/^URIs:[ \t]*/, "", $i); split($i, u, " "); uri=u[1] }
                if ($i ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", $i); key=$i }
                if ($i ~ /^Suites:/)    { suites=" " $i " " }
                if ($i ~ /^Types:/)     { types=$i }
            }
            if (types ~ /deb/ && suites ~ / bookworm / && uri != "") { print uri "\t" key; exit }
        }' "$f"
    done | head -1
}

debian_source_legacy() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [opts] URI bookworm components...
        awk '$1 == "deb" {
            key=""; n=2
            if ($2 ~ /^\[/) {
                while (n <= NF && $n !~ /\]$/) { if ($n ~ /signed-by=/) { key=$n } n++ }
                if ($n ~ /signed-by=/) key=$n
                n++
            }
            if ($(n+1) == "bookworm") { sub(/.*signed-by=/, "", key); sub(/\]$/, "", key); print $n "\t" key; exit }
        }' "$f"
    done | head -1
}

add_backports() {
    local src uri key dest=/etc/apt/sources.list.d/mappedram-bookworm-backports.sources
    [ -f "$dest" ] && return 0
    src="$(debian_source)"
    [ -n "$src" ] || src="$(debian_source_legacy)"
    if [ -z "$src" ]; then
        log "no Debian bookworm entry found in /etc/apt/sources.list*; add bookworm-backports by hand"
        exit 1
    fi
    uri="${src%%$'\t'*}"
    key="${src#*$'\t'}"
    log "adding bookworm-backports from the existing Debian entry ($uri)"
    {
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: bookworm-backports"
        echo "Components: main"
        [ -n "$key" ] && echo "Signed-By: $key"
    } | as_root tee "$dest" >/dev/null
}

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
}

need=()
command -v meson >/dev/null 2>&1 || need+=(meson)
command -v ninja >/dev/null 2>&1 || need+=(ninja-build)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
[ -x /usr/bin/time ] || need+=(time)
command -v zstd >/dev/null 2>&1 || need+=(zstd)  # the compressed-image benchmark compares with the zstd CLI
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v abidiff >/dev/null 2>&1 || need+=(abigail-tools)     # scripts/check-abi.sh
command -v dpkg-buildpackage >/dev/null 2>&1 || need+=(dpkg-dev) # scripts/test-deb.sh
command -v dh >/dev/null 2>&1 || need+=(debhelper)
command -v groff >/dev/null 2>&1 || need+=(groff-base)         # man page lint (test-deb.sh)
# The benchmark's real Linux guest (scripts/bench-guest.sh): a static
# busybox and cpio for its initramfs, Debian's cloud kernel in /boot.
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || need+=(linux-image-cloud-amd64)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! qemu_ok; then
    . /etc/os-release
    if [ "${VERSION_CODENAME:-}" = "bookworm" ]; then
        add_backports
        apt_updated=0
        apt_update_once
        log "installing qemu-system-x86 from bookworm-backports"
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -t bookworm-backports \
            --no-install-recommends qemu-system-x86 >/dev/null
    else
        apt_update_once
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
    fi
    qemu_ok || { log "qemu-system-x86_64 >= $QEMU_MIN_MAJOR.0 is required and could not be installed"; exit 1; }
fi

# cbindgen, pinned, into the project's own tool directory (ignored by git).
TOOLS="$ROOT/.tools"
if ! [ -x "$TOOLS/bin/cbindgen" ] || ! "$TOOLS/bin/cbindgen" --version | grep -q " $CBINDGEN_VERSION\$"; then
    log "installing cbindgen $CBINDGEN_VERSION into $TOOLS"
    cargo install --quiet --locked --root "$TOOLS" --version "$CBINDGEN_VERSION" cbindgen
fi
log "ok: $(qemu-system-x86_64 --version | head -1); meson $(meson --version); cbindgen $("$TOOLS/bin/cbindgen" --version)"
