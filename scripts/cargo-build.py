#!/usr/bin/env python3
"""Build libmappedram with cargo for meson (librsvg style).

Runs `cargo build --release --lib` with its target dir inside the meson build
dir, then copies libmappedram.so and libmappedram.a into the output dir only
when their contents changed (so C targets do not relink on every build), and
makes the libmappedram.so.0 symlink (the SONAME, set by build.rs) next to
them so programs linked against it run from the build dir.

  cargo-build.py --manifest-dir DIR --target-dir DIR --out-dir DIR
  cargo-build.py --print-version --manifest-dir DIR
"""
import argparse
import filecmp
import os
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest-dir", required=True)
    ap.add_argument("--target-dir")
    ap.add_argument("--out-dir")
    ap.add_argument("--print-version", action="store_true")
    args = ap.parse_args()

    version = crate_version(args.manifest_dir)
    if args.print_version:
        print(version)
        return 0
    if not args.target_dir or not args.out_dir:
        ap.error("--target-dir and --out-dir are required to build")

    cargo = os.environ.get("CARGO", "cargo")
    cmd = [
        cargo, "build", "--release", "--lib", "--locked",
        "--manifest-path", os.path.join(args.manifest_dir, "Cargo.toml"),
        "--target-dir", args.target_dir,
    ]
    env = dict(os.environ)
    # Meson's sanitizer/coverage flags are for the C code, not for rustc.
    for var in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"):
        env.pop(var, None)
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        print(f"cargo-build.py: {' '.join(cmd)} failed ({r.returncode})", file=sys.stderr)
        return r.returncode

    built = os.path.join(args.target_dir, "release")
    os.makedirs(args.out_dir, exist_ok=True)
    for name in ("libmappedram.so", "libmappedram.a"):
        copy_if_changed(os.path.join(built, name), os.path.join(args.out_dir, name))
    major = version.split(".")[0]
    link = os.path.join(args.out_dir, f"libmappedram.so.{major}")
    if not (os.path.islink(link) and os.readlink(link) == "libmappedram.so"):
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink("libmappedram.so", link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
