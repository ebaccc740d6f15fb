"""Rewrite tests/slow_tests.txt from a pytest `--durations=0` report: every test whose setup + call +
teardown took more than `--over` seconds. Run by `make test-durations`."""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("report", type=Path)
    ap.add_argument("--over", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("slow_tests.txt"))
    args = ap.parse_args()
    total: dict[str, float] = defaultdict(float)
    for line in args.report.read_text().splitlines():
        m = LINE.match(line)
        if m:
            total[m.group(3)] += float(m.group(1))
    slow = sorted(t for t, s in total.items() if s > args.over)
    quick = sum(s for t, s in total.items() if s <= args.over)
    args.out.write_text(f"# tests over {args.over:g} s in the last full run (tests/slow_list.py); the quick tier "
                        f"skips them\n# the rest took {quick:.0f} s together\n" + "\n".join(slow) + "\n")
    print(f"{len(slow)} slow tests ({sum(total[t] for t in slow):.0f} s), {len(total) - len(slow)} quick ({quick:.0f} s)")


if __name__ == "__main__":
    main()
