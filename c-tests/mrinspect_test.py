#!/usr/bin/env python3
"""mrinspect_test.py MAKE_IMAGE MRINSPECT DIR: the inspector's report and
--extract on an image made by make_image, finished and unfinished, and its
errors (missing file, unknown ramblock, usage)."""
import os
import subprocess
import sys

make_image, mrinspect, tmp = sys.argv[1:4]
img = os.path.join(tmp, f"mrinspect.{os.getpid()}.img")
raw = img + ".expected"
out = img + ".mem"


def run(*args, rc=0):
    r = subprocess.run([mrinspect, *args], capture_output=True, text=True)
    if r.returncode != rc:
        sys.exit(f"FAIL: mrinspect {args}: exit {r.returncode}, want {rc}\n{r.stdout}{r.stderr}")
    return r


def expect(text, *needles):
    for n in needles:
        if n not in text:
            sys.exit(f"FAIL: {n!r} not in output:\n{text}")


try:
    subprocess.run([make_image, img, raw], check=True)
    r = run(img)
    print(r.stdout)
    expect(r.stdout, "machine type: pc-i440fx-10.0", "mapped-ram", "stream at:    0",
           "complete:     yes", "ramblocks:    2", "allocated")
    lines = {l.split()[0]: l.split() for l in r.stdout.splitlines() if l.startswith("  ") and len(l.split()) == 7}
    mem = lines.get("mem") or sys.exit(f"FAIL: no mem line:\n{r.stdout}")
    # idstr used_length page bitmap_off pages_off pages present
    if int(mem[1], 16) != 2 << 20 or mem[2] != "4096" or int(mem[4], 16) % (1 << 20) != 0 \
            or mem[5] != "512" or mem[6] != str(512 // 4 + 1):
        sys.exit(f"FAIL: mem line {mem}")
    bios = lines.get("pc.bios") or sys.exit("FAIL: no pc.bios line")
    if bios[6] != "64":
        sys.exit(f"FAIL: pc.bios line {bios}")

    r = run(img, "--extract", "mem", out)
    with open(out, "rb") as a, open(raw, "rb") as b:
        if a.read() != b.read():
            sys.exit("FAIL: extracted mem differs from the saved memory")
    if os.stat(out).st_mode & 0o777 != 0o600:
        sys.exit("FAIL: extracted file is not 0600")

    r = run(img, "--extract", "nope", out, rc=1)
    expect(r.stderr, "nope")
    r = run(img + ".missing", rc=1)
    expect(r.stderr, img + ".missing")
    run(rc=2)

    subprocess.run([make_image, img, raw, "unfinished"], check=True)
    r = run(img)
    expect(r.stdout, "complete:     NO")
    expect(r.stderr, "warning")
    print("mrinspect_test: ok")
finally:
    for p in (img, raw, out):
        if os.path.exists(p):
            os.unlink(p)
