"""rate_limit() holds per call across real ``dramatiq`` worker processes sharing real Redis.

The app (``tests/apps/ratelimit_inline_app.py``) logs every admission with the
store's decision time, Redis ``TIME``, so the windows and overlaps below are
measured on the one clock every process shares.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from dramatiq_turbo.redis import hash_key
from tests.harness import send_by_name, unique, wait_for
from tests.ratelimit.test_inline import overlap
from tests.ratelimit.test_multiprocess import FAST_POLL, max_in_window

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

APP = "tests.apps.ratelimit_inline_app"


def logged(client: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def start_workers(worker_processes: Any, redis_url: str, namespace: str, **env: str) -> None:
    workers = worker_processes(
        APP,
        processes=2,
        threads=4,
        env={"TURBO_TEST_REDIS_URL": redis_url, "TURBO_TEST_NAMESPACE": namespace, **FAST_POLL, **env},
    )
    workers.start(ready_timeout=60)


def wait_until_done(redis_client: Any, namespace: str, jobs: int, timeout: float) -> None:
    def finished() -> bool:
        timeouts = redis_client.lrange(f"{namespace}:timeouts", 0, -1)
        assert not timeouts, f"a block gave up waiting: {timeouts[0]!r}"
        return int(redis_client.get(f"{namespace}:done") or 0) >= jobs

    wait_for(finished, timeout=timeout, interval=0.05, what=f"{jobs} jobs to finish")


def test_calls_from_two_processes_share_one_budget_of_20_per_second(
    make_broker, worker_processes, redis_client, redis_url
):
    namespace = unique("rli")
    broker = make_broker("redis", namespace=namespace)
    start_workers(worker_processes, redis_url, namespace)
    jobs, count = 16, 5
    began = time.monotonic()
    for job in range(jobs):
        send_by_name(broker, "calls", f"j{job}", count, queue=namespace)
    wait_until_done(redis_client, namespace, jobs, timeout=25)
    elapsed = time.monotonic() - began
    time.sleep(0.3)  # a stray extra admission would show up here

    log = logged(redis_client, f"{namespace}:admissions")
    asked = sorted((f"j{job}", call) for job in range(jobs) for call in range(count))
    assert sorted((e["job"], e["call"]) for e in log) == asked, "every call admitted exactly once"
    assert all(e["shared"] for e in log), "counted in Redis, not per process"

    admitted = sorted(e["admitted"] for e in log)
    assert max_in_window(admitted, 1_000) == 20, "no 1 s window holds more than 20, and the budget was used"
    span = admitted[-1] - admitted[0]
    # 80 calls at 20 per second: the last starts at least 3 s after the first;
    # using at least 80% of the budget, within 3.75 s.
    assert 2_999 <= span <= 3_000 / 0.8, f"admissions spanned {span:.0f} ms"
    assert len({e["pid"] for e in log}) == 2, "both processes drew from the budget"
    print(f"\n80 calls in 2 processes: span {span:.0f} ms, wall {elapsed:.1f} s, max in 1 s window 20")


def test_at_most_n_blocks_run_at_once_across_processes(
    make_broker, worker_processes, redis_client, redis_url
):
    namespace = unique("rlic")
    concurrency, lease, seconds, jobs = 3, 400, 0.6, 18
    broker = make_broker("redis", namespace=namespace)
    start_workers(
        worker_processes,
        redis_url,
        namespace,
        TURBO_TEST_CONCURRENCY=str(concurrency),
        TURBO_TEST_LEASE=str(lease),
    )
    for job in range(jobs):
        send_by_name(broker, "overlapping", f"o{job}", seconds, queue=namespace)
    wait_until_done(redis_client, namespace, jobs, timeout=25)

    spans = logged(redis_client, f"{namespace}:spans")
    assert sorted(s["job"] for s in spans) == sorted(f"o{job}" for job in range(jobs)), "each ran once"
    assert len({s["pid"] for s in spans}) == 2, "both processes took slots"
    most = overlap([(s["enter"], s["exit"]) for s in spans])
    # Each block outlives its lease (600 > 400 ms): only renewals keep the slot.
    assert most <= concurrency, f"{most} blocks ran at once"
    assert most == concurrency, "the limit was reached, so it was what held the blocks back"
    leases = hash_key(f"{namespace}:rl", "key:shared-db", "leases")
    # Released on exit, not left to expire: gone well within a lease of the last exit.
    wait_for(lambda: redis_client.zcard(leases) == 0, timeout=lease / 1000 * 0.6, what="no slot leaked")
