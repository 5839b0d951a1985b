#!/bin/sh
# Run the mappedram benchmarks (the speed bars of BENCHMARKS.md) in one go and print the
# ratios: library vs plain O_DIRECT I/O, library vs QEMU 10, zero-page scan,
# peak memory of a save, sparse guests, guest layouts (a real Linux guest,
# fragmented, page-interleaved, random, 50 % zero by MiB), where the time of
# a save goes, concurrent restores. About 20 minutes on 2 cores.
#
# The real Linux guest's RAM is captured once by scripts/bench-guest.sh
# into bench/cache/ (gitignored) and reused by later runs.
#
#   scripts/bench.sh                      # defaults: 1G and 4G guests, 3 reps
#   scripts/bench.sh --sizes 1G --reps 5  # any mr-bench option passes through
#   scripts/bench.sh --only layouts,profile,concurrent   # issue 10's sections
#   BENCH_DIR=/mnt/ssd scripts/bench.sh   # where the image files go (O_DIRECT)
#
# Environment: BENCH_DIR (default /tmp; must support O_DIRECT, e.g. ext4),
# BENCH_LOG (default target/bench/bench-<date>.log), CARGO_TARGET_DIR
# (default target/bench). QEMU runs are skipped when qemu-system-x86_64 is
# missing. Files are removed afterwards; guest RAM files for QEMU go to
# /dev/shm.
set -eu
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=$PWD/target/bench}"
export CARGO_TARGET_DIR
dir=${BENCH_DIR:-/tmp}
mkdir -p "$CARGO_TARGET_DIR"
log=${BENCH_LOG:-$CARGO_TARGET_DIR/bench-$(date +%Y%m%d-%H%M%S).log}

cargo build --release -p mappedram-bench --bins

skip=""
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "bench.sh: qemu-system-x86_64 not found: skipping the QEMU comparison" >&2
    skip="--skip qemu"
fi
if [ ! -x /usr/bin/time ]; then
    echo "bench.sh: /usr/bin/time not found: skipping the peak-memory run" >&2
    skip=${skip:+$skip,rss}
    skip=${skip:-"--skip rss"}
fi

{
    echo "== machine =="
    echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "cpu:     $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel:  $(uname -r)"
    echo "fs:      $(df -T "$dir" | awk 'NR==2 {print $2 " on " $1 " (" $7 ")"}')"
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg)"
    qemu-system-x86_64 --version 2>/dev/null | head -1 || true
    echo
    rc=0
    # shellcheck disable=SC2086
    "$CARGO_TARGET_DIR/release/mr-bench" --dir "$dir" $skip "$@" || rc=$?
    echo "$rc" >"$log.rc"
} 2>&1 | tee "$log"
status=$(cat "$log.rc" 2>/dev/null || echo 1)
rm -f "$log.rc"
echo "log: $log"
exit "$status"
