"""Rate-limit accuracy across 8 worker processes, and the cost of one acquire.

Scenario (the guide's limiter): 8 ``dramatiq`` worker processes (2 threads
each) on ``RedisBroker`` run 150 jobs of one actor limited to 30 starts per
1,000 ms.  Measured in the same run for ``dramatiq_turbo``'s ``RateLimiter``
and for Dramatiq's own ``WindowRateLimiter`` and ``BucketRateLimiter`` (Redis
backend, used as documented: acquire in the body, ``RateLimitExceeded`` retried
with 100-2,000 ms backoff).  Start times come from Redis ``TIME``.

Then the cost of one acquire on loopback: Redis round trips and µs, against a
``PING`` (one round trip) and Dramatiq's limiters.

    python benchmarks/bench_ratelimit_accuracy.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits import BucketRateLimiter, WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

from dramatiq_turbo.ratelimit import RedisLimitStore, parse_rule
from dramatiq_turbo.redis import connect_redis
from tests.harness import WorkerProcesses, send_by_name, unique, wait_for
from tests.ratelimit.test_multiprocess import max_in_window

URL = os.environ.get("TURBO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
JOBS, MAX, DURATION = 150, 30, 1_000
LIMITERS = {
    "turbo": "dramatiq_turbo RateLimiter",
    "window": "dramatiq WindowRateLimiter",
    "bucket": "dramatiq BucketRateLimiter",
}


def run_scenario(kind: str, client: redis.Redis) -> dict[str, Any]:
    namespace = unique(f"bench-rl-{kind}")
    workers = WorkerProcesses(
        "benchmarks.ratelimit_worker",
        processes=8,
        threads=2,
        env={"TURBO_BENCH_REDIS_URL": URL, "BENCH_NAMESPACE": namespace, "BENCH_LIMITER": kind},
    )
    broker = RedisBroker(url=URL, namespace=namespace)
    try:
        workers.start(1, ready_timeout=90)
        began = client.time()
        began_ms = began[0] * 1000 + began[1] / 1000
        for i in range(JOBS):
            send_by_name(broker, "limited", f"j{i}", queue=namespace)
        wait_for(lambda: client.llen(f"{namespace}:starts") >= JOBS, timeout=90, interval=0.05, what=kind)
        entries = [json.loads(raw) for raw in client.lrange(f"{namespace}:starts", 0, -1)]
    finally:
        workers.cleanup()
        broker.close()
        keys = list(client.scan_iter(f"{namespace}*"))
        if keys:
            client.delete(*keys)
    starts = [e["start"] for e in entries]
    last = max(starts)
    return {
        "max_window": max_in_window(starts, DURATION),
        "max_window_body": max_in_window([e["body"] for e in entries], DURATION),
        "throughput": JOBS / ((last - began_ms) / 1000),
        "retries": sum(e["retries"] for e in entries),
        "reenqueues": sum(e["deferrals"] for e in entries),
        "reenqueues_max": max(e["deferrals"] for e in entries),
        "runs": len({e["job"] for e in entries}),
        "wall": (last - began_ms) / 1000,
    }


def accuracy_table(client: redis.Redis) -> None:
    results = {kind: run_scenario(kind, client) for kind in LIMITERS}
    ours = results["turbo"]
    print(f"\nAccuracy: 8 processes x 2 threads, {JOBS} jobs, limit {MAX} per {DURATION} ms (RedisBroker)")
    header = (
        f"{'limiter':<28} {'max/1s admit':>12} {'x limit':>7} {'max/1s body':>11} {'jobs/s':>7} "
        f"{'x ours':>7} {'retries used':>12} {'re-enqueues':>11} {'max/msg':>7} {'run s':>6} {'ran':>4}"
    )
    print(header)
    print("-" * len(header))
    for kind, r in results.items():
        ratio = r["throughput"] / ours["throughput"]
        print(
            f"{LIMITERS[kind]:<28} {r['max_window']:>12} {r['max_window'] / MAX:>7.2f} "
            f"{r['max_window_body']:>11} {r['throughput']:>7.1f} {ratio:>7.2f} {r['retries']:>12} "
            f"{r['reenqueues']:>11} {r['reenqueues_max']:>7} {r['wall']:>6.2f} {r['runs']:>4}"
        )
    print(
        "max/1s admit: busiest 1 s window of starts as each limiter admits them "
        "(Dramatiq's limiters admit in the body);\n"
        "max/1s body: the same, timed by a Redis TIME call at the top of the actor body "
        "(adds this host's scheduling delay).\n"
        "jobs/s: jobs over the time from the first send to the last start."
    )


class RoundTrips:
    """Counts commands sent to Redis (each send is one round trip for these calls)."""

    def __init__(self) -> None:
        self.count = 0
        self._original = redis.connection.AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTrips:
        original = self._original

        def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            original(conn, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        redis.connection.AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


def timed(fn: Any, n: int) -> tuple[float, float]:
    for _ in range(50):
        fn()
    with RoundTrips() as trips:
        began = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - began
    return elapsed / n * 1e6, trips.count / n


def acquire_cost(client: redis.Redis) -> None:
    namespace = unique("bench-rl-cost")
    store = RedisLimitStore(client, namespace=namespace)
    backend = RedisBackend(client=client)
    wide = parse_rule((10**9, DURATION))
    full = parse_rule((1, 60_000))
    store.acquire("full", full, "first")
    window = WindowRateLimiter(backend, f"{namespace}-w", limit=10**9, window=1)
    bucket = BucketRateLimiter(backend, f"{namespace}-b", limit=10**9, bucket=DURATION)
    counter = iter(range(10**9))

    def dramatiq_acquire(limiter: Any) -> None:
        with limiter.acquire(raise_on_failure=False):
            pass

    cases = [
        ("PING (one round trip)", client.ping),
        ("ours: admitted", lambda: store.acquire("wide", wide, f"t{next(counter)}")),
        ("ours: refused (over limit)", lambda: store.acquire("full", full, f"t{next(counter)}")),
        ("ours: admitted + concurrency slot", lambda: store.acquire("cc", ccrule, f"t{next(counter)}")),
        ("dramatiq WindowRateLimiter", lambda: dramatiq_acquire(window)),
        ("dramatiq BucketRateLimiter", lambda: dramatiq_acquire(bucket)),
    ]
    ccrule = parse_rule({"max": 10**9, "duration": DURATION, "concurrency": 10**9, "lease": 60_000})
    n = 3_000
    try:
        rows = [(name, *timed(fn, n)) for name, fn in cases]
    finally:
        keys = list(client.scan_iter(f"{namespace}*"))
        if keys:
            client.delete(*keys)
    ping = rows[0][1]
    print(f"\nCost of one acquire (loopback Redis, {n} calls each, one thread)")
    header = f"{'call':<36} {'µs':>8} {'x PING':>7} {'round trips':>11}"
    print(header)
    print("-" * len(header))
    for name, micros, trips in rows:
        print(f"{name:<36} {micros:>8.0f} {micros / ping:>7.2f} {trips:>11.2f}")


def main() -> int:
    client = connect_redis(URL)
    acquire_cost(client)
    accuracy_table(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
