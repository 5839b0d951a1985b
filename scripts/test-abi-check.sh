#!/usr/bin/env bash
# Tests scripts/check-abi.sh itself against baselines derived from the built
# library, so the ABI check is known to fail when it must:
#   - a baseline without mr_version (the library adds a function): passes;
#   - a baseline with an extra function mr_gone (the library removed it): fails;
#   - a baseline whose mr_ramblock_desc has one more field (the struct
#     shrank): fails.
#
#   scripts/test-abi-check.sh [BUILD_DIR]     (default: build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
fail() { echo "test-abi-check: FAIL: $*" >&2; exit 1; }
# shellcheck source=scripts/abi-common.sh
. "$ROOT/scripts/abi-common.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mappedram-abitest.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

abi_dump "$BUILD/libmappedram.so" "$ROOT/abi/suppressions.ini" "$WORK/current.abi"
python3 - "$WORK" <<'PY'
import re, sys
work = sys.argv[1]
s = open(f"{work}/current.abi").read()

def func_decl(name):
    m = re.search(r"\n\s*<function-decl name='%s'.*?</function-decl>" % name, s, re.S)
    assert m, name
    return m.group(0)

def elf_sym(name):
    m = re.search(r"\n\s*<elf-symbol name='%s'[^>]*/>" % name, s)
    assert m, name
    return m.group(0)

# 1. The baseline lacks mr_version: the library added it.
open(f"{work}/added.abi", "w").write(s.replace(func_decl("mr_version"), "").replace(elf_sym("mr_version"), ""))
# 2. The baseline has mr_gone too: the library removed it.
gone = s.replace(elf_sym("mr_version"), elf_sym("mr_version") + elf_sym("mr_version").replace("mr_version", "mr_gone"))
gone = gone.replace(func_decl("mr_version"), func_decl("mr_version") + func_decl("mr_version").replace("mr_version", "mr_gone"))
open(f"{work}/removed.abi", "w").write(gone)
# 3. The baseline's mr_ramblock_desc has a fourth u64 field: the struct shrank.
m = re.search(r"<class-decl name='mr_ramblock_desc' size-in-bits='(\d+)'.*?</class-decl>", s, re.S)
assert m, "mr_ramblock_desc"
block, bits = m.group(0), int(m.group(1))
members = re.findall(r"\s*<data-member.*?</data-member>", block, re.S)
extra = re.sub(r"layout-offset-in-bits='\d+'", f"layout-offset-in-bits='{bits}'", members[-1])
extra = re.sub(r"name='[^']*'", "name='reserved'", extra, count=1)
grown = block.replace(f"size-in-bits='{bits}'", f"size-in-bits='{bits + 64}'", 1).replace(members[-1], members[-1] + extra)
open(f"{work}/layout.abi", "w").write(s.replace(block, grown))
PY

expect() {  # expect pass|fail BASELINE WHAT
    local rc=0
    MR_ABI_BASELINE="$2" bash "$ROOT/scripts/check-abi.sh" "$BUILD" >"$WORK/out" 2>&1 || rc=$?
    if { [ "$1" = pass ] && [ "$rc" -ne 0 ]; } || { [ "$1" = fail ] && [ "$rc" -eq 0 ]; }; then
        cat "$WORK/out"
        fail "check-abi.sh should $1 when $3 (exit $rc)"
    fi
    echo "test-abi-check: $3: check-abi ${1}ed as it must ($(grep -E 'check-abi: (ok|FAIL)' "$WORK/out" | tail -1 | cut -c1-90))"
}
expect pass "$WORK/current.abi" "nothing changed"
expect pass "$WORK/added.abi" "a function was added"
expect fail "$WORK/removed.abi" "a function was removed"
expect fail "$WORK/layout.abi" "a public struct shrank"
echo "test-abi-check: ok"
