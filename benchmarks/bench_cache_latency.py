"""L1 and L2 hit latency of MultiLevelCache, against the guide's 5 ms / 50 ms and a raw GET.

python benchmarks/bench_cache_latency.py
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cache_common import REDIS_URL, median, percentile, table

from dramatiq_turbo import MultiLevelCache, connect_redis

VALUE = {"notes": "A page of lecture notes. " * 40, "pages": 12, "tags": ["pdf", "notes"]}
GUIDE_L1_US, GUIDE_L2_US = 5_000, 50_000


def sample(fn, count: int) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        start = clock()
        fn()
        samples.append((clock() - start) / 1000)
    return samples


def main() -> None:
    client = connect_redis(REDIS_URL)
    namespace = f"bench:{uuid.uuid4().hex[:8]}"
    writer = MultiLevelCache(redis=client, namespace=namespace)
    writer.set("doc", VALUE)
    l2_only = MultiLevelCache(redis=client, namespace=namespace, l1_maxsize=0)
    try:
        for _ in range(2_000):  # warm up: connections, scripts, caches
            writer.get("doc")
            l2_only.get("doc")
        l1 = sample(lambda: writer.get("doc"), 200_000)
        l2 = sample(lambda: l2_only.get("doc"), 5_000)
        raw_key = f"{namespace}:{{doc}}"
        raw = sample(lambda: client.get(raw_key), 5_000)
        assert writer.get("doc") == VALUE and l2_only.get("doc") == VALUE
    finally:
        writer.close()
        l2_only.close()
        client.delete(f"{namespace}:{{doc}}")
    rows = []
    for name, samples, guide, target in (
        ("L1 hit", l1, GUIDE_L1_US, "<= 2 µs"),
        ("L2 hit (decode, fills nothing)", l2, GUIDE_L2_US, "<= 150 µs"),
        ("raw redis-py GET (baseline)", raw, None, "-"),
    ):
        med = median(samples)
        rows.append(
            (
                name,
                f"{med:.2f} µs",
                f"{percentile(samples, 0.99):.2f} µs",
                f"{guide / 1000:.0f} ms" if guide else "-",
                f"{guide / med:,.0f}x faster" if guide else "-",
                f"{med / median(raw):.2f}x" if guide else "1.00x",
                target,
            )
        )
    table(
        f"MultiLevelCache hits ({len(l1):,} L1 / {len(l2):,} L2 samples, value of {len(str(VALUE))} chars)",
        ("lookup", "median", "p99", "guide", "vs guide", "vs raw GET", "target"),
        rows,
    )


if __name__ == "__main__":
    main()
