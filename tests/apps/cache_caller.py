"""A process with N threads that all ask one MultiLevelCache for the same cold key.

Run as ``python -m tests.apps.cache_caller`` with the settings in the
environment: ``TURBO_TEST_REDIS_URL``, ``CACHE_NS`` (cache namespace and
prefix of the bookkeeping keys), ``CACHE_KEY``, ``CACHE_THREADS``,
``CACHE_WORK`` (seconds the computation takes), ``CACHE_LEASE_TTL`` (ms).
The process announces itself on ``<ns>:ready``, waits for ``<ns>:go``, then
starts its threads together.  Each caller pushes one JSON report to
``<ns>:reports``: the value it got, whether it computed it, and the Redis
commands and round trips its call issued (counted at the connection).
"""

import json
import os
import threading
import time

import redis

from dramatiq_turbo.cache import MultiLevelCache
from tests.cache.counting import CountingConnection, counting_client

URL = os.environ["TURBO_TEST_REDIS_URL"]
NS = os.environ["CACHE_NS"]
KEY = os.environ.get("CACHE_KEY", "cold")
THREADS = int(os.environ.get("CACHE_THREADS", "4"))
WORK = float(os.environ.get("CACHE_WORK", "1.0"))
LEASE_TTL = int(os.environ.get("CACHE_LEASE_TTL", "10000"))

book = redis.Redis.from_url(URL)  # bookkeeping: not counted
cache = MultiLevelCache(redis=counting_client(URL), namespace=NS, lease_ttl=LEASE_TTL)


def compute() -> dict[str, object]:
    book.incr(f"{NS}:computations")
    book.rpush(f"{NS}:computers", os.getpid())
    time.sleep(WORK)
    return {"value": 42, "computed_by": f"{os.getpid()}-{threading.get_ident()}"}


def caller() -> None:
    computed = []

    def fn() -> dict[str, object]:
        computed.append(True)
        return compute()

    before = CountingConnection.snapshot()
    start = time.monotonic()
    value = cache.get_or_compute(KEY, fn)
    after = CountingConnection.snapshot()
    report = {
        "pid": os.getpid(),
        "value": value,
        "computed": bool(computed),
        "commands": after[0] - before[0],
        "round_trips": after[1] - before[1],
        "seconds": time.monotonic() - start,
    }
    book.rpush(f"{NS}:reports", json.dumps(report))


def main() -> None:
    book.rpush(f"{NS}:ready", os.getpid())
    while not book.exists(f"{NS}:go"):
        time.sleep(0.005)
    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    book.rpush(
        f"{NS}:totals", json.dumps({"pid": os.getpid(), "commands": CountingConnection.total_commands})
    )


if __name__ == "__main__":
    main()
