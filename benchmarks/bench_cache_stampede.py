"""The stampede: 8 processes x 4 threads miss one cold key whose computation takes 1 s.

Three ways to fill the cache, in the same run:

* ``get_or_compute`` (single-flight): one computation; waiters block on
  Redis (``BLPOP``) or, within a process, on an ``Event``;
* a polling lock, as commonly written: ``SET NX`` a lock, the others poll
  ``GET`` every 10 ms until the value appears;
* no coordination: every caller misses and computes.

Commands are counted at the connection of each process (connection
handshakes excluded), so the figures are exact.

    python benchmarks/bench_cache_stampede.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from _cache_common import REDIS_URL, table

from dramatiq_turbo import MultiLevelCache
from tests.cache.counting import CountingConnection, counting_client

ROOT = Path(__file__).resolve().parent.parent
PROCESSES, THREADS, WORK = 8, 4, 1.0


def caller(mode: str, ns: str) -> None:
    """One process: THREADS threads ask for the key at once; reports go to Redis."""
    book = redis.Redis.from_url(REDIS_URL)
    client = counting_client(REDIS_URL)
    cache = MultiLevelCache(redis=client, namespace=ns)
    value_key = f"{ns}:value"

    def compute() -> str:
        book.incr(f"{ns}:computations")
        time.sleep(WORK)
        return "notes"

    def single_flight() -> str:
        return cache.get_or_compute("cold", compute)

    def polling_lock() -> str:
        while True:
            value = client.get(value_key)
            if value is not None:
                return value.decode()
            if client.set(f"{ns}:lock", "1", nx=True, px=30_000):
                result = compute()
                client.set(value_key, result, px=60_000)
                client.delete(f"{ns}:lock")
                return result
            time.sleep(0.01)

    def uncoordinated() -> str:
        value = client.get(value_key)
        if value is not None:
            return value.decode()
        result = compute()
        client.set(value_key, result, px=60_000)
        return result

    fn = {"single-flight": single_flight, "polling lock": polling_lock, "no coordination": uncoordinated}[
        mode
    ]

    def run() -> None:
        before = CountingConnection.snapshot()[0]
        value = fn()
        book.rpush(
            f"{ns}:reports", json.dumps({"commands": CountingConnection.snapshot()[0] - before, "v": value})
        )

    book.rpush(f"{ns}:ready", os.getpid())
    while not book.exists(f"{ns}:go"):
        time.sleep(0.005)
    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cache.close()


def stampede(mode: str) -> dict[str, float]:
    book = redis.Redis.from_url(REDIS_URL)
    ns = f"bench:stampede:{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, __file__, "--caller", mode, ns], env=env, cwd=ROOT)
        for _ in range(PROCESSES)
    ]
    try:
        deadline = time.monotonic() + 60
        while book.llen(f"{ns}:ready") < PROCESSES:
            assert time.monotonic() < deadline, "callers did not start"
            time.sleep(0.05)
        start = time.monotonic()
        book.set(f"{ns}:go", 1)
        for proc in procs:
            proc.wait(timeout=60)
        elapsed = time.monotonic() - start
        reports = [json.loads(raw) for raw in book.lrange(f"{ns}:reports", 0, -1)]
        assert len(reports) == PROCESSES * THREADS and {r["v"] for r in reports} == {"notes"}
        computations = int(book.get(f"{ns}:computations") or 0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        keys = list(book.scan_iter(f"{ns}*"))
        if keys:
            book.delete(*keys)
    commands = sorted(r["commands"] for r in reports)
    waiting = commands[: len(commands) - computations] if computations < len(commands) else []
    return {
        "computations": computations,
        "total": sum(commands),
        "per_waiter_mean": sum(waiting) / len(waiting) if waiting else float("nan"),
        "per_waiter_max": max(waiting) if waiting else float("nan"),
        "seconds": elapsed,
    }


def main() -> None:
    results = {mode: stampede(mode) for mode in ("single-flight", "polling lock", "no coordination")}
    base = results["polling lock"]["total"]
    rows = []
    for mode, r in results.items():
        rows.append(
            (
                mode,
                r["computations"],
                r["total"],
                f"{r['per_waiter_mean']:.2f}" if r["per_waiter_mean"] == r["per_waiter_mean"] else "-",
                f"{r['per_waiter_max']:.0f}" if r["per_waiter_max"] == r["per_waiter_max"] else "-",
                f"{base / r['total']:.0f}x fewer" if r["total"] else "-",
                f"{r['seconds']:.2f} s",
            )
        )
    table(
        f"Stampede: {PROCESSES} processes x {THREADS} threads miss one key (computation {WORK:.0f} s); "
        "target <= 10 commands per waiting caller",
        (
            "strategy",
            "computations",
            "Redis commands",
            "per waiting caller (mean)",
            "(max)",
            "vs polling lock",
            "wall",
        ),
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--caller":
        caller(sys.argv[2], sys.argv[3])
    else:
        main()
