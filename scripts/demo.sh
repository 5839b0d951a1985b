#!/usr/bin/env bash
# The demo: install what is needed, build, and run the main job. For now the
# main job is the O_DIRECT channel demo (examples/channel_demo.c: parallel
# page writes and verified reads, with throughput); the engine's save/restore
# demo replaces it when it exists.
#
#   scripts/demo.sh [MIB] [THREADS]     (defaults: 512 4)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${MR_BUILD_DIR:-$ROOT/build}"
MIB="${1:-512}"
THREADS="${2:-4}"

bash scripts/setup-deps.sh
if [ -f "$BUILD/build.ninja" ]; then
    meson setup --reconfigure "$BUILD" >/dev/null
else
    meson setup "$BUILD" >/dev/null
fi
meson compile -C "$BUILD" >/dev/null

# The file lives in the build dir: a real (ext4) file system, not tmpfs.
exec "$BUILD/examples/channel_demo" "$BUILD/demo-channel.img" "$MIB" "$THREADS"
