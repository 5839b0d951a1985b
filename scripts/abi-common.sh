# Shared by scripts/check-abi.sh and scripts/update-abi-baseline.sh.

# abi_dump SO SUPPRESSIONS OUT: the ABI corpus of SO as abidw writes it,
# without source locations or paths (they change with every edit and are
# not ABI).
abi_dump() {
    abidw --no-corpus-path --no-comp-dir-path --no-show-locs \
        --type-id-style hash --suppressions "$2" --out-file "$3" "$1"
}

# abi_soname SO: its DT_SONAME.
abi_soname() {
    readelf -d "$1" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p'
}
