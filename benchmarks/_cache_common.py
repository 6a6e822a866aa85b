"""Helpers shared by the cache benchmarks: the Redis URL, percentiles and the table."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence

REDIS_URL = os.environ.get("TURBO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (so it can be pasted into docs/benchmarks.md as it is)."""
    print(f"\n{title}\n")
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
