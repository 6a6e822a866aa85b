"""The issue's proof: 234 messages on a real Redis queue, then real worker processes drain it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq.middleware import AgeLimit

from dramatiq_turbo.monitor import QueueMonitor, QueueStats, QueueStatsRecorder
from tests.harness import WorkerProcesses, send_by_name, unique, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

MESSAGES = 234
SLEEP_MS = 60
PROCESSES, THREADS = 2, 4


def _pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-p * len(ordered) // 100)) - 1]


def _near(found: int | None, exact: float, *, above: float = 5, below: float = 5) -> bool:
    """Within the buckets' resolution (12%) of ``exact``, and ``above``/``below`` ms more each way."""
    return found is not None and exact * 0.88 - below <= found <= exact * 1.12 + above


def test_a_backlog_of_234_then_workers_drain_it(
    make_broker: Callable[..., dramatiq.Broker],
    worker_processes: Callable[..., WorkerProcesses],
    redis_url: str,
    monitor_namespace: str,
) -> None:
    namespace, queue = unique("dq"), unique("q")
    producer = make_broker("redis", namespace=namespace)
    producer.add_middleware(
        QueueStatsRecorder(namespace=monitor_namespace, flush_interval=200), before=AgeLimit
    )
    for number in range(MESSAGES):
        send_by_name(producer, "work", number, queue=queue)
    monitor = QueueMonitor(producer, namespace=monitor_namespace)

    before = monitor.get_detailed_stats(queue)
    assert before.waiting == MESSAGES and before.in_progress == 0
    [backlog] = [a for a in before.recommendations if a.rule == "backlog"]
    assert backlog.startswith(f"High number of waiting messages ({MESSAGES}).")
    assert before.completed == 0 and before.utilization is None

    started = time.monotonic()
    workers = worker_processes(
        "tests.apps.monitor_app",
        processes=PROCESSES,
        threads=THREADS,
        env={
            "TURBO_TEST_NAMESPACE": namespace,
            "TURBO_TEST_MONITOR_NAMESPACE": monitor_namespace,
            "TURBO_TEST_QUEUE": queue,
            "TURBO_TEST_SLEEP_MS": str(SLEEP_MS),
        },
    )
    workers.start(1)

    def busy() -> QueueStats | None:
        stats = monitor.get_detailed_stats(queue)
        # Both processes have sent a heartbeat (every 200 ms from their boot) and are at work.
        live = stats.workers == PROCESSES and stats.busy_threads >= 2 and stats.waiting > 0
        return stats if live else None

    during = wait_for(busy, timeout=30, interval=0.05, what="workers busy while messages wait")
    assert during.workers == PROCESSES and during.worker_threads == PROCESSES * THREADS
    assert during.in_progress is not None and during.in_progress >= during.busy_threads

    def drained() -> QueueStats | None:
        stats = monitor.get_detailed_stats(queue)
        return stats if stats.waiting == 0 and stats.completed == MESSAGES else None

    after = wait_for(drained, timeout=60, interval=0.1, what="the queue to drain and be counted")
    elapsed_ms = (time.monotonic() - started) * 1000
    runs = [json.loads(r) for r in redis.Redis.from_url(redis_url).lrange(f"{namespace}:runs", 0, -1)]
    assert len(runs) == MESSAGES
    waits, durations = [r["wait"] for r in runs], [r["run"] for r in runs]

    assert (after.completed, after.failed, after.enqueued) == (MESSAGES, 0, MESSAGES)
    assert after.recommendations == ()  # the backlog advice cleared, and nothing else fired
    # Latencies within the histogram's resolution of what the jobs measured themselves.
    # The hooks wrap the job's own clock: their processing time also holds the job's final
    # write to Redis and the other middleware (more, under load: the tail), their wait ends
    # before the job's begins.
    processing = [
        (after.processing_p50_ms, _pct(durations, 50)),
        (after.processing_p95_ms, _pct(durations, 95)),
    ]
    for found, exact in processing:
        assert _near(found, exact, above=30), (found, exact)
    for found, exact in ((after.wait_p50_ms, _pct(waits, 50)), (after.wait_p95_ms, _pct(waits, 95))):
        assert _near(found, exact, below=30), (found, exact)
    # The rate is over the time the queue was active, which includes the drain and no more
    # than this test's run.
    drain_ms = max(waits) + SLEEP_MS
    assert (
        MESSAGES * 60_000 / elapsed_ms * 0.8 <= after.completed_per_min <= MESSAGES * 60_000 / drain_ms * 1.2
    )
    assert after.utilization is not None and 0 < after.utilization <= 1
    assert during.utilization is not None and during.utilization > 0.3
    assert after.busy_threads == 0 and after.in_progress == 0
