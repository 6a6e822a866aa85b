"""ResultCache across real ``dramatiq`` worker processes on ``RedisBroker``."""

from __future__ import annotations

import json

import dramatiq
import pytest
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from tests import harness

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]


def test_identical_messages_on_8_processes_x_4_threads_run_the_body_once(
    redis_url, redis_client, make_broker, worker_processes
):
    ns = harness.unique("dq")
    broker = make_broker("redis", namespace=ns)
    broker.add_middleware(Results(backend=RedisBackend(url=redis_url, namespace=f"{ns}-results")))
    workers = worker_processes(
        "tests.apps.cache_worker",
        processes=8,
        threads=4,
        env={"TURBO_TEST_NAMESPACE": ns, "CACHE_WORK": "1.0"},
    )
    workers.start(1, ready_timeout=90)

    @dramatiq.actor(actor_name="expensive", store_results=True)
    def expensive(document: str) -> None:  # declared here only to send and read results
        raise AssertionError("runs in the worker processes")

    messages = [expensive.send("report.pdf") for _ in range(32)]
    results = [m.get_result(block=True, timeout=30_000) for m in messages]

    assert int(redis_client.get(f"{ns}:computations")) == 1
    assert len({json.dumps(r, sort_keys=True) for r in results}) == 1
    assert results[0]["notes"] == "notes of report.pdf"
    counts = [json.loads(raw) for raw in redis_client.lrange(f"{ns}:counts", 0, -1)]
    assert len(counts) == 32
    assert sum(not c["hit"] for c in counts) == 1
    waiting = [c["commands"] for c in counts if c["hit"]]
    print(
        f"\nResultCache 8x4: 32 messages, body ran once, processes that served them: "
        f"{len({c['pid'] for c in counts})}; commands per hit: max={max(waiting)}, "
        f"mean={sum(waiting) / len(waiting):.2f}"
    )
    assert max(waiting) <= 10
    assert len({c["pid"] for c in counts}) > 1  # the messages really were spread over processes
    # Single flight across processes, not later L2 hits: another process began a message that
    # became a hit while the one computation was still running.
    computing_pid, _, computed_at = json.loads(redis_client.get(f"{ns}:computed"))
    waited_elsewhere = [
        c for c in counts if c["hit"] and c["pid"] != computing_pid and c["began"] < computed_at
    ]
    assert waited_elsewhere, "a hit in another process began during the computation"
    # Cleanup of the cache's and results' keys of this run.
    keys = list(redis_client.scan_iter(f"{ns}-*"))
    if keys:
        redis_client.delete(*keys)
