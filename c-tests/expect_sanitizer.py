#!/usr/bin/env python3
"""expect_sanitizer.py PATTERN PROGRAM ARGS...: run PROGRAM, pass only when it
fails AND its stderr holds the sanitizer report PATTERN (so a crash for any
other reason does not count as "the sanitizer caught it")."""
import subprocess
import sys

pattern, cmd = sys.argv[1], sys.argv[2:]
r = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
sys.stderr.write(r.stderr[-4000:])
if r.returncode == 0:
    sys.exit(f"FAIL: {cmd} exited 0; the sanitizer did not stop it")
if pattern not in r.stderr:
    sys.exit(f"FAIL: {cmd} failed ({r.returncode}) without a report containing {pattern!r}")
print(f"ok: sanitizer reported {pattern!r}")
