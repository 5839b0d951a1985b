#!/usr/bin/env python3
"""README.md quotes example files that the test command compiles and runs.

Each `<!-- quote: PATH -->` line must be followed by a fenced code block
whose text equals PATH's content. Fails (listing the first differing line)
when a quote and its file have drifted apart.

  scripts/check-readme-quotes.py [README]
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    readme = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "README.md")
    lines = open(readme).read().split("\n")
    checked, bad = 0, 0
    for i, line in enumerate(lines):
        m = re.fullmatch(r"<!-- quote: (\S+) -->", line.strip())
        if not m:
            continue
        path = m.group(1)
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            print(f"{readme}:{i + 1}: quote of {path} is not followed by a code block")
            bad += 1
            continue
        try:
            end = lines.index("```", i + 2)
        except ValueError:
            print(f"{readme}:{i + 2}: unterminated code block quoting {path}")
            bad += 1
            continue
        quoted = lines[i + 2:end]
        actual = open(os.path.join(ROOT, path)).read().rstrip("\n").split("\n")
        checked += 1
        if quoted != actual:
            n = next((k for k, (a, b) in enumerate(zip(quoted, actual)) if a != b),
                     min(len(quoted), len(actual)))
            print(f"{readme}:{i + 3 + n}: quote differs from {path} line {n + 1}: "
                  f"copy the file into the README again")
            bad += 1
    if checked == 0:
        print(f"{readme}: no quotes found")
        return 1
    print(f"check-readme-quotes: {checked} quotes, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
