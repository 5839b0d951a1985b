#!/usr/bin/env bash
# Check Cargo.toml's rust-version (the MSRV) as far as one toolchain can:
#
#   scripts/check-msrv.sh
#
# 1. No normal or build dependency (transitively, as locked) declares a
#    rust-version above ours.
# 2. clippy's incompatible_msrv lint, denied: no std API newer than our
#    rust-version is used by the library or its binaries (clippy reads
#    rust-version from Cargo.toml).
# What this does NOT prove: that a compiler of that version accepts every
# language feature used. Only building with that toolchain does, and this
# machine has one toolchain and cannot fetch another.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

cargo metadata --format-version 1 --locked >"${TMPDIR:-/tmp}/mappedram-meta.$$.json"
trap 'rm -f "${TMPDIR:-/tmp}/mappedram-meta.$$.json"' EXIT
python3 - "${TMPDIR:-/tmp}/mappedram-meta.$$.json" <<'PY'
import json, sys

def ver(v):
    return tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])

m = json.load(open(sys.argv[1]))
pkgs = {p["id"]: p for p in m["packages"]}
nodes = {n["id"]: n for n in m["resolve"]["nodes"]}
root = next(p for p in m["packages"] if p["name"] == "mappedram")
msrv = root["rust_version"]
seen, stack = set(), [root["id"]]
while stack:
    for d in nodes[stack.pop()]["deps"]:
        if any(k["kind"] in (None, "build") for k in d["dep_kinds"]) and d["pkg"] not in seen:
            seen.add(d["pkg"])
            stack.append(d["pkg"])
deps = sorted((pkgs[i]["rust_version"] or "0", pkgs[i]["name"], pkgs[i]["version"]) for i in seen)
worst = max(deps, key=lambda d: ver(d[0]))
too_new = [d for d in deps if ver(d[0]) > ver(msrv)]
if too_new:
    sys.exit("check-msrv: FAIL: dependencies need a newer Rust than rust-version %s: %s"
             % (msrv, ", ".join("%s %s (%s)" % (n, v, r) for r, n, v in too_new)))
print("check-msrv: rust-version %s; %d dependencies, the most demanding %s %s (%s)"
      % (msrv, len(deps), worst[1], worst[2], worst[0]))
PY
cargo clippy --quiet --locked --lib --bins -- -D clippy::incompatible_msrv
echo "check-msrv: ok (no dependency and no std API newer than rust-version; not compiled with that toolchain)"
