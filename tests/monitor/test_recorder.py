"""``QueueStatsRecorder``: what it counts for each delivery, when it writes, and what it survives."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import CurrentMessage, Middleware, default_middleware

from dramatiq_turbo import events
from dramatiq_turbo.defer import defer, deferral_count
from dramatiq_turbo.monitor import QueueMonitor, QueueStatsRecorder
from dramatiq_turbo.monitor.counters import MemoryCounterStore, RedisCounterStore, summarize
from dramatiq_turbo.redis import connect_redis
from tests.harness import free_port, unique, wait_for

Factory = Callable[..., dramatiq.Broker]


class DeferOnce(Middleware):
    """Defers a message the first time it is delivered, as the rate limiter would."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.options.get("defer_me") and deferral_count(message) == 0:
            defer(broker, message, delay=0, reason="rate_limit")


def recorded_stub(make_broker: Factory, *extra: Middleware, **options: Any) -> tuple[Any, QueueStatsRecorder]:
    """A StubBroker with the recorder first, as install() would place it, then Dramatiq's defaults."""
    options.setdefault("flush_interval", 600_000)  # flushed by hand (or at shutdown) unless said
    recorder = QueueStatsRecorder(**options)
    broker = make_broker("stub", middleware=[recorder, *(m() for m in default_middleware), *extra])
    return broker, recorder


def test_every_outcome_is_counted(make_broker: Factory, start_worker: Callable[..., Any]) -> None:
    broker, recorder = recorded_stub(make_broker, DeferOnce())
    queue = unique("q")

    @dramatiq.actor(queue_name=queue, max_retries=1, min_backoff=0, max_backoff=0)
    def job(kind: str) -> None:
        if kind == "fail":
            raise RuntimeError("always")
        if kind == "gated":
            events.record("ratelimit.wait", wait_ms=3)
            events.record("breaker.reject", breaker="llm")
        time.sleep(0.02)

    for _ in range(10):
        job.send("ok")
    job.send("fail")  # fails, is retried once, fails again: dead-lettered
    job.send("gated")
    job.send_with_options(args=("ok",), defer_me=True)  # skipped once, then runs
    start_worker(broker, worker_threads=4)
    broker.join(queue, fail_fast=False)
    wait_for(lambda: len(broker.dead_letters) == 1, timeout=5, what="the dead letter")
    recorder.flush(broker)

    stats = QueueMonitor(broker).get_detailed_stats(queue)
    assert (stats.enqueued, stats.completed, stats.failed, stats.skipped) == (15, 12, 2, 1)
    assert (stats.dead_lettered, stats.retried) == (1, 1)
    assert stats.rate_limit_deferred == 1 and stats.rate_limit_waits == 1 and stats.rate_limited == 2
    reading = recorder.store.read([queue], window=60_000)  # type: ignore[union-attr]
    assert summarize(reading.buckets[queue], at=reading.at, window=60_000).breakers == {"llm": 1}
    assert stats.processing_p50_ms is not None and 18 <= stats.processing_p50_ms <= 40
    assert stats.failure_rate == round(2 / 14, 4)


def test_percentiles_match_what_the_jobs_measured(
    make_broker: Factory, start_worker: Callable[..., Any]
) -> None:
    broker, recorder = recorded_stub(make_broker, CurrentMessage())
    queue = unique("q")
    runs: list[tuple[float, float]] = []
    lock = threading.Lock()
    delays = random.Random(7).choices(range(10, 60), k=60)

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def job(ms: int) -> None:
        start = time.time() * 1000
        message = CurrentMessage.get_current_message()
        assert message is not None
        time.sleep(ms / 1000)
        with lock:
            runs.append((start - message.message_timestamp, time.time() * 1000 - start))

    for ms in delays:
        job.send(ms)
    start_worker(broker, worker_threads=4)
    broker.join(queue)
    recorder.flush(broker)
    stats = QueueMonitor(broker).get_detailed_stats(queue)

    def pct(values: list[float], p: int) -> float:
        ordered = sorted(values)
        return ordered[max(1, -(-p * len(ordered) // 100)) - 1]

    waits, durations = [w for w, _ in runs], [d for _, d in runs]
    # Within the buckets' 10%, and some ms on one side: the hooks run just outside the job's
    # own clock, so their processing time can only be longer and their wait only shorter.
    for found, exact in (
        (stats.processing_p50_ms, pct(durations, 50)),
        (stats.processing_p95_ms, pct(durations, 95)),
    ):
        assert found is not None and 0.9 * exact - 2 <= found <= 1.1 * exact + 15, (found, exact)
    for found, exact in ((stats.wait_p50_ms, pct(waits, 50)), (stats.wait_p95_ms, pct(waits, 95))):
        assert found is not None and 0.9 * exact - 15 <= found <= 1.1 * exact + 2, (found, exact)
    assert stats.completed == 60


def test_nothing_is_written_on_the_message_path(
    make_broker: Factory, start_worker: Callable[..., Any]
) -> None:
    broker, recorder = recorded_stub(make_broker, flush_interval=200)
    queue = unique("q")
    writers: list[str] = []
    store = recorder._store_for(broker)
    original = store.write

    def spy(*args: Any, **kwargs: Any) -> int:
        writers.append(threading.current_thread().name)
        return original(*args, **kwargs)

    store.write = spy  # type: ignore[method-assign]

    @dramatiq.actor(queue_name=queue)
    def job() -> None:
        time.sleep(0.002)

    started = time.monotonic()
    for _ in range(300):
        job.send()
    worker = start_worker(broker, worker_threads=4)
    broker.join(queue)
    worker.stop()
    elapsed = time.monotonic() - started
    # One write per flush interval at most (plus the two at shutdown), never one per job,
    # and only from the flush thread or the thread stopping the worker.
    assert len(writers) <= elapsed / 0.2 + 3 < 300
    assert set(writers) <= {"turbo-monitor-flush", threading.current_thread().name}
    reading = store.read([queue], window=60_000)
    assert sum(b.get("completed", 0) for b in reading.buckets[queue].values()) == 300


def test_counts_are_flushed_when_the_worker_shuts_down(
    make_broker: Factory, start_worker: Callable[..., Any]
) -> None:
    broker, recorder = recorded_stub(make_broker)  # never flushes on its own during the test
    queue = unique("q")

    @dramatiq.actor(queue_name=queue)
    def job() -> None:
        pass

    for _ in range(7):
        job.send()
    worker = start_worker(broker, worker_threads=2)
    broker.join(queue)
    store = recorder.store
    assert isinstance(store, MemoryCounterStore)
    assert store.read([queue], window=60_000).buckets[queue] == {}  # nothing written yet
    worker.stop()
    reading = store.read([queue], window=60_000)
    assert sum(b.get("completed", 0) for b in reading.buckets[queue].values()) == 7
    assert reading.workers == ()  # a clean shutdown removes the heartbeat


def test_a_redis_outage_never_fails_a_job(
    make_broker: Factory, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/1", connect_timeout=200, socket_timeout=200)
    broker, recorder = recorded_stub(make_broker, redis=dead, flush_interval=50)
    queue = unique("q")
    done: list[int] = []

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def job(n: int) -> None:
        done.append(n)

    with caplog.at_level(logging.WARNING, logger="dramatiq_turbo.monitor.recorder"):
        for n in range(20):
            job.send(n)
        start_worker(broker, worker_threads=2)
        broker.join(queue)
        wait_for(lambda: recorder.outage.errors >= 3, timeout=5, what="several failed flushes")
    assert sorted(done) == list(range(20))
    assert recorder.dropped > 0 and recorder.outage.outages == 1
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1  # logged once


def test_the_heartbeat_shows_busy_threads_and_utilization(
    make_broker: Factory, start_worker: Callable[..., Any]
) -> None:
    broker, _ = recorded_stub(make_broker)
    queue = unique("q")
    release = threading.Event()

    @dramatiq.actor(queue_name=queue)
    def job() -> None:
        release.wait(5)

    for _ in range(6):
        job.send()
    start_worker(broker, worker_threads=4)
    monitor = QueueMonitor(broker)
    try:
        wait_for(lambda: monitor.get_detailed_stats(queue).busy_threads == 4, timeout=5, what="4 busy")
        time.sleep(0.3)
        stats = monitor.get_detailed_stats(queue)
        assert (stats.workers, stats.worker_threads, stats.busy_threads) == (1, 4, 4)
        assert stats.waiting == 0 and stats.in_progress == 6  # 4 running, 2 prefetched
        assert stats.utilization is not None and stats.utilization > 0.5
    finally:
        release.set()
    broker.join(queue)


@pytest.mark.integration
def test_a_forked_child_counts_only_its_own_messages(
    make_broker: Factory, client: redis.Redis, monitor_namespace: str
) -> None:
    broker, recorder = recorded_stub(make_broker, redis=client, namespace=monitor_namespace)
    queue = unique("q")
    broker.declare_queue(queue)
    message = dramatiq.Message(queue_name=queue, actor_name="a", args=(), kwargs={}, options={})
    for _ in range(5):
        broker.enqueue(message)  # counted in this process, not flushed yet
    pid = os.fork()
    if pid == 0:  # the child: its own tally, its own flush thread
        code = 1
        try:
            for _ in range(3):
                broker.enqueue(message)
            recorder.flush(broker)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.flush(broker)
    store = RedisCounterStore(client, namespace=monitor_namespace)
    reading = store.read([queue], window=60_000)
    assert sum(b.get("enqueued", 0) for b in reading.buckets[queue].values()) == 8  # not 5 + 5 + 3


def test_a_delayed_message_waits_from_when_it_became_due(
    make_broker: Factory, start_worker: Callable[..., Any]
) -> None:
    broker, _ = recorded_stub(make_broker)
    queue = unique("q")

    @dramatiq.actor(queue_name=queue)
    def job() -> None:
        pass

    for _ in range(3):
        job.send_with_options(delay=400)
    start_worker(broker, worker_threads=2)
    broker.join(queue)
    wait_for(lambda: QueueMonitor(broker).get_detailed_stats(queue).completed == 3, timeout=5, what="3 runs")
    stats = QueueMonitor(broker).get_detailed_stats(queue)
    # Its 400 ms in the delay queue are not queue wait: only the time since its eta is.
    assert stats.wait_p95_ms is not None and stats.wait_p95_ms < 200
