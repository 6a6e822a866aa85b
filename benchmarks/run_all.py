"""Run every benchmark script in this folder, one after another.

Each script prints its own table: the figure it measures and its ratio to a
baseline measured in the same run, because the machines these run on are
shared and noisy, and ratios are what hold.

    python benchmarks/run_all.py            # all of them
    python benchmarks/run_all.py cache      # those whose name contains "cache"
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not argv or any(a in p.name for a in argv))
    if not scripts:
        print("no benchmark matches", argv)
        return 1
    failed = 0
    for script in scripts:
        print(f"\n=== {script.name}", flush=True)
        failed += subprocess.call([sys.executable, str(script)], cwd=HERE.parent) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
