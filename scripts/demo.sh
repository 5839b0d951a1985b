#!/usr/bin/env bash
# The main job: install what is needed, build, then save a generated guest
# memory (default 1 GiB: random, zero and text regions, plus ROM-like blocks)
# into a mapped-ram image with the engine (O_DIRECT, parallel), restore it
# with a different thread count, verify every byte, and print throughput,
# the file's logical size and its allocated bytes.
#
#   scripts/demo.sh [--size 1G] [--threads N] [--restore-threads N] [--dir DIR] [--keep]
#
# The image goes to DIR (default: target/demo inside the checkout, a real
# disk file system; O_DIRECT needs one).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup-deps.sh
mkdir -p "$ROOT/target/demo"
have_dir=0
for a in "$@"; do [ "$a" = "--dir" ] && have_dir=1; done
extra=()
[ "$have_dir" -eq 1 ] || extra=(--dir "$ROOT/target/demo")
cargo build --quiet --release -p mappedram-bench --bin mr-demo
exec "$ROOT/target/release/mr-demo" "${extra[@]}" "$@"
