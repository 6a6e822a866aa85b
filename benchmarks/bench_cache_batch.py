"""batch_set / batch_get of 1,000 keys against one command per key (and a pipeline, for reference).

python benchmarks/bench_cache_batch.py
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cache_common import REDIS_URL, median, table

from dramatiq_turbo import batch_get, batch_set, connect_redis

KEYS = 1_000
ROUNDS = 15


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    client = connect_redis(REDIS_URL)
    prefix = f"bench:batch:{uuid.uuid4().hex[:8]}"
    items = [(f"{prefix}:{i}", f"value-{i}-" + "x" * 100, 60_000) for i in range(KEYS)]
    keys = [key for key, _, _ in items]

    def one_by_one_set() -> None:
        for key, value, ttl in items:
            client.set(key, value, px=ttl)

    def pipeline_set() -> None:
        pipe = client.pipeline(transaction=False)
        for key, value, ttl in items:
            pipe.set(key, value, px=ttl)
        pipe.execute()

    plain = [(key, value, None) for key, value, _ in items]

    def one_by_one_set_no_ttl() -> None:
        for key, value, _ in plain:
            client.set(key, value)

    def one_by_one_get() -> None:
        for key in keys:
            client.get(key)

    def pipeline_get() -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        pipe.execute()

    cases = {
        "set": {
            "one command per key": one_by_one_set,
            "pipeline": pipeline_set,
            "batch_set (MULTI, SET PX x n, EXEC)": lambda: batch_set(client, items),
        },
        "set (no TTL)": {
            "one command per key": one_by_one_set_no_ttl,
            "batch_set (one MSET)": lambda: batch_set(client, plain),
        },
        "get": {
            "one command per key": one_by_one_get,
            "pipeline": pipeline_get,
            "batch_get (one MGET)": lambda: batch_get(client, keys),
        },
    }
    try:
        batch_set(client, items[:1])  # opens the pooled connection
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(ROUNDS):  # interleaved, so load on the machine hits every variant alike
            for op, variants in cases.items():
                for name, fn in variants.items():
                    results.setdefault((op, name), []).append(timed(fn))
        assert batch_get(client, keys) == [value.encode() for _, value, _ in items]
    finally:
        for start in range(0, KEYS, 500):
            client.delete(*keys[start : start + 500])
    rows = []
    for op in cases:
        base = median(results[(op, "one command per key")])
        for name in cases[op]:
            ms = median(results[(op, name)])
            rows.append((f"{op}, {KEYS:,} keys", name, f"{ms:.2f} ms", f"{base / ms:.1f}x"))
    table(
        f"{KEYS:,} keys (60 s TTL each unless 'no TTL'), median of {ROUNDS} rounds (guide's pipelining: 10x)",
        ("operation", "how", "time", "speed-up vs one per key"),
        rows,
    )


if __name__ == "__main__":
    main()
