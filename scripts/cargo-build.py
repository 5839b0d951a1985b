#!/usr/bin/env python3
"""Build libmappedram (and the Rust tools) with cargo for meson (librsvg style).

Runs `cargo build --release --lib` with its target dir inside the meson
build dir, then copies libmappedram.so and libmappedram.a into the output dir
only when their contents changed (so C targets do not relink on every
build), and makes the libmappedram.so.0 symlink (the SONAME, set by build.rs)
next to them so programs linked against it run from the build dir. A second
copy, libmappedram.so.VERSION, is the file meson installs.

What a static link of libmappedram.a needs besides the archive comes from
rustc itself: every cargo run here passes RUSTFLAGS=--print=native-static-libs
(the same flags each time, so units stay fresh between the library and tool
builds), and rustc's "native-static-libs" note (replayed by cargo when
nothing was rebuilt) is written to native-static-libs.txt in the output dir.
Meson reads it at configure time (--native-static-libs builds once and prints
it); the build step fails if the list changed since, asking to reconfigure.

With --bin NAME the binary NAME is built instead and copied to the output
dir when it changed.

  cargo-build.py --manifest-dir DIR --target-dir DIR --out-dir DIR
  cargo-build.py --native-static-libs --manifest-dir DIR --target-dir DIR --out-dir DIR
  cargo-build.py --bin NAME --manifest-dir DIR --target-dir DIR --out-dir DIR
  cargo-build.py --print-version --manifest-dir DIR

MAPPEDRAM_CARGO_TARGET_DIR, when set, replaces --target-dir.
"""
import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tomllib  # Python 3.11+


def crate_version(manifest_dir):
    with open(os.path.join(manifest_dir, "Cargo.toml"), "rb") as f:
        return tomllib.load(f)["package"]["version"]


def copy_if_changed(src, dst):
    if os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False):
        return False
    tmp = dst + ".tmp"
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return True


NOTE = re.compile(r"note: native-static-libs: (.*)")


def cargo_build(manifest_dir, target_dir, what):
    """Run cargo build for `what` (["--lib"] or ["--bin", NAME]).

    Returns (ok, native-static-libs or None)."""
    cargo = os.environ.get("CARGO", "cargo")
    cmd = [
        cargo, "build", "--release", "--locked", *what,
        "--manifest-path", os.path.join(manifest_dir, "Cargo.toml"),
        "--target-dir", target_dir,
    ]
    env = dict(os.environ)
    # Meson's sanitizer/coverage flags are for the C code, not for rustc.
    env.pop("CARGO_ENCODED_RUSTFLAGS", None)
    env["RUSTFLAGS"] = "--print=native-static-libs"
    # Full debug info in the library meson builds and installs: the types of
    # every exported function's parameters are what scripts/check-abi.sh
    # (abidw/abidiff) compares; distributions split it into -dbgsym.
    env.setdefault("CARGO_PROFILE_RELEASE_DEBUG", "full")
    libs = None
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) as p:
        for line in p.stderr:
            m = NOTE.match(line.strip())
            if m:
                libs = m.group(1).strip()
            sys.stderr.write(line)
    if p.returncode != 0:
        print(f"cargo-build.py: {' '.join(cmd)} failed ({p.returncode})", file=sys.stderr)
        return False, None
    return True, libs


def build_lib(args, version, target_dir):
    ok, libs = cargo_build(args.manifest_dir, target_dir, ["--lib"])
    if not ok:
        return 1
    if libs is None:
        print("cargo-build.py: rustc printed no native-static-libs note", file=sys.stderr)
        return 1
    os.makedirs(args.out_dir, exist_ok=True)
    libs_file = os.path.join(args.out_dir, "native-static-libs.txt")
    if args.native_static_libs:
        with open(libs_file, "w") as f:
            f.write(libs + "\n")
        print(libs)
        return 0
    configured = open(libs_file).read().strip() if os.path.exists(libs_file) else None
    if configured != libs:
        print(f"cargo-build.py: rustc's native-static-libs changed ({configured!r} -> "
              f"{libs!r}): run `meson setup --reconfigure` on this build dir", file=sys.stderr)
        return 1

    built = os.path.join(target_dir, "release")
    for name in ("libmappedram.so", "libmappedram.a"):
        copy_if_changed(os.path.join(built, name), os.path.join(args.out_dir, name))
    # The file meson installs (libmappedram.so.VERSION).
    copy_if_changed(os.path.join(built, "libmappedram.so"),
                    os.path.join(args.out_dir, f"libmappedram.so.{version}"))
    major = version.split(".")[0]
    link = os.path.join(args.out_dir, f"libmappedram.so.{major}")
    if not (os.path.islink(link) and os.readlink(link) == "libmappedram.so"):
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink("libmappedram.so", link)
    return 0


def build_bin(args, target_dir):
    ok, _ = cargo_build(args.manifest_dir, target_dir, ["--bin", args.bin])
    if not ok:
        return 1
    os.makedirs(args.out_dir, exist_ok=True)
    copy_if_changed(os.path.join(target_dir, "release", args.bin),
                    os.path.join(args.out_dir, args.bin))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest-dir", required=True)
    ap.add_argument("--target-dir")
    ap.add_argument("--out-dir")
    ap.add_argument("--print-version", action="store_true")
    ap.add_argument("--native-static-libs", action="store_true",
                    help="build, write native-static-libs.txt and print it")
    ap.add_argument("--bin", help="build this binary instead of the library")
    args = ap.parse_args()

    version = crate_version(args.manifest_dir)
    if args.print_version:
        print(version)
        return 0
    if not args.target_dir or not args.out_dir:
        ap.error("--target-dir and --out-dir are required to build")
    # A test harness may share one cargo target dir between meson builds of
    # the same checkout (cargo locks it); the result is the same library.
    target_dir = os.environ.get("MAPPEDRAM_CARGO_TARGET_DIR") or args.target_dir
    if args.bin:
        return build_bin(args, target_dir)
    return build_lib(args, version, target_dir)


if __name__ == "__main__":
    sys.exit(main())
