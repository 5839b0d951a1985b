#!/usr/bin/env bash
# Regenerate include/mappedram.h with the pinned cbindgen
# (installed into .tools/ by scripts/setup-deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CBINDGEN="$ROOT/.tools/bin/cbindgen"
if ! [ -x "$CBINDGEN" ]; then
    echo "gen-header: $CBINDGEN not found: run scripts/setup-deps.sh" >&2
    exit 1
fi
cd "$ROOT"
"$CBINDGEN" --config cbindgen.toml --output include/mappedram.h --quiet src/ffi/mod.rs
echo "gen-header: wrote include/mappedram.h" >&2
