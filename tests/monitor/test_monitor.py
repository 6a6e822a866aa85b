"""``QueueMonitor``: queues, reports, health checks (fork-safe), gauges, circuits and limits."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import default_middleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from dramatiq_turbo.monitor import PerformanceReport, QueueMonitor, QueueStatsRecorder
from dramatiq_turbo.monitor.gauges import find_meter_provider
from tests.harness import unique, wait_for

Factory = Callable[..., dramatiq.Broker]


def send(broker: dramatiq.Broker, queue: str, count: int = 1, **options: Any) -> None:
    broker.declare_queue(queue)
    for _ in range(count):
        broker.enqueue(
            dramatiq.Message(queue_name=queue, actor_name="a", args=(), kwargs={}, options=options)
        )


def test_every_declared_queue_unless_some_are_registered(make_broker: Factory) -> None:
    broker = make_broker("stub")
    send(broker, "alpha", 2)
    send(broker, "beta", 150)
    monitor = QueueMonitor(broker)
    assert monitor.queues() == ["alpha", "beta"]
    report = monitor.get_performance_report()
    assert [(s.queue, s.waiting) for s in report.queues] == [("alpha", 2), ("beta", 150)]
    assert not report.healthy and report.totals()["waiting"] == 152
    assert [a.rule for a in report.queues[1].recommendations] == ["backlog"]
    monitor.register_queue("alpha")
    assert [s.queue for s in monitor.get_performance_report().queues] == ["alpha"]
    with pytest.raises(ValueError, match="queue name"):
        monitor.register_queue("")


def test_health_checks_report_and_log_each_recommendation_once(
    make_broker: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_broker("stub")
    send(broker, "big", 120)
    monitor = QueueMonitor(broker)
    reports: list[PerformanceReport] = []
    with caplog.at_level(logging.INFO, logger="dramatiq_turbo.monitor.monitor"):
        monitor.start_health_checks(interval=20, on_report=reports.append)
        monitor.start_health_checks(interval=20)  # already running: nothing more
        wait_for(lambda: len(reports) >= 3, timeout=5, what="three checks")
        broker.flush("big")
        wait_for(lambda: reports[-1].queues[0].waiting == 0, timeout=5, what="a check of the empty queue")
        monitor.stop_health_checks()
    assert [t.name for t in threading.enumerate()].count("turbo-queue-health") == 0
    assert monitor.last_report is reports[-1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        # No recorder on this broker, so no rates: the advice gives no drain time.
        "Queue big: High number of waiting messages (120). Consider increasing worker concurrency."
    ]
    assert "Queue big: healthy again." in [r.getMessage() for r in caplog.records]


def test_health_checks_do_not_survive_a_fork_and_can_restart_in_the_child(make_broker: Factory) -> None:
    broker = make_broker("stub")
    send(broker, "q", 1)
    monitor = QueueMonitor(broker)
    monitor.start_health_checks(interval=50)
    try:
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                fresh = monitor._health.thread is None
                reports: list[PerformanceReport] = []
                monitor.start_health_checks(interval=10, on_report=reports.append)
                deadline = time.monotonic() + 5
                while not reports and time.monotonic() < deadline:
                    time.sleep(0.01)
                monitor.stop_health_checks()
                code = 0 if fresh and reports and reports[0].queues[0].waiting == 1 else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (
            monitor._health.thread is not None and monitor._health.thread.is_alive()
        )  # the parent's runs on
    finally:
        monitor.stop_health_checks()


def test_health_checks_publish_depth_and_oldest_age_gauges(make_broker: Factory) -> None:
    reader = InMemoryMetricReader()
    broker = make_broker("stub")
    send(broker, "q", 4)
    send(broker, "q", 2, eta=int(time.time() * 1000) + 60_000)  # not due: still waiting on Stub
    monitor = QueueMonitor(broker, meter_provider=MeterProvider(metric_readers=[reader]))
    monitor.start_health_checks(interval=1_000)
    try:
        wait_for(lambda: monitor.last_report is not None, timeout=5, what="a check")
        metrics = {
            m.name: m.data.data_points
            for rm in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
            for sm in rm.scope_metrics
            for m in sm.metrics
        }
    finally:
        monitor.stop_health_checks()
    depth = {p.attributes["state"]: p.value for p in metrics["turbo.queue.depth"]}
    assert depth == {"waiting": 6, "delayed": 0, "dead": 0, "in_progress": 0}
    [oldest] = metrics["turbo.queue.oldest_age"]
    assert oldest.attributes == {"messaging.destination.name": "q"} and 0 <= oldest.value < 5


def test_gauges_follow_telemetry(make_broker: Factory) -> None:
    from dramatiq_turbo.telemetry import Telemetry

    assert find_meter_provider(make_broker("stub")) is None  # no Telemetry: no gauges
    provider = MeterProvider()
    broker = make_broker("stub")
    broker.add_middleware(Telemetry(meter_provider=provider))
    assert find_meter_provider(broker) is provider


@pytest.mark.integration
def test_an_open_circuit_that_guards_the_queue(
    make_broker: Factory,
    start_worker: Callable[..., Any],
    client: redis.Redis,
    monitor_namespace: str,
    private_namespace: Callable[[str], str],
) -> None:
    from dramatiq_turbo.breaker import CircuitBreaker

    breakers = private_namespace("turbo:breaker-test")
    recorder = QueueStatsRecorder(redis=client, namespace=monitor_namespace, flush_interval=100)
    broker = make_broker(
        "stub",
        middleware=[
            recorder,
            *(m() for m in default_middleware),
            CircuitBreaker(redis=client, namespace=breakers, fail_max=2, reset_timeout=60_000),
        ],
    )
    queue, dependency = unique("q"), unique("dep")

    @dramatiq.actor(queue_name=queue, breaker=dependency, max_retries=0)
    def call() -> None:
        raise ConnectionError("the dependency is down")

    start_worker(broker)
    for _ in range(2):
        call.send()
    monitor = QueueMonitor(broker, redis=client, namespace=monitor_namespace, breaker_namespace=breakers)
    wait_for(lambda: monitor.get_detailed_stats(queue).open_circuits, timeout=10, what="it to open")
    for _ in range(2):
        call.send()  # refused by the open circuit: deferred
    stats = wait_for(
        lambda: (s := monitor.get_detailed_stats(queue)).circuit_deferred >= 1 and s,
        timeout=10,
        what="the open circuit to defer a message",
    )
    [circuit] = stats.open_circuits
    assert circuit.name == dependency and circuit.state == "open"
    assert 50_000 < circuit.retry_in_ms <= 60_000
    assert [a.rule for a in stats.recommendations if a.rule == "circuit_open"] == ["circuit_open"]
    assert f"Circuit '{dependency}' is open" in next(
        a for a in stats.recommendations if a.rule == "circuit_open"
    )


@pytest.mark.integration
def test_a_saturated_rate_limit(
    make_broker: Factory,
    start_worker: Callable[..., Any],
    client: redis.Redis,
    monitor_namespace: str,
    private_namespace: Callable[[str], str],
) -> None:
    from dramatiq_turbo.ratelimit import RateLimiter

    limits = private_namespace("turbo:rl-test")
    recorder = QueueStatsRecorder(redis=client, namespace=monitor_namespace, flush_interval=100)
    broker = make_broker(
        "stub",
        middleware=[
            recorder,
            *(m() for m in default_middleware),
            RateLimiter(redis=client, namespace=limits, max_wait=10),
        ],
    )
    queue = unique("q")

    @dramatiq.actor(queue_name=queue, rate_limit=(2, 60_000))
    def limited() -> None:
        pass

    for _ in range(25):
        limited.send()
    start_worker(broker, worker_threads=2)
    monitor = QueueMonitor(broker, redis=client, namespace=monitor_namespace)
    stats = wait_for(
        lambda: (s := monitor.get_detailed_stats(queue)).rate_limited >= 23 and s,
        timeout=10,
        what="23 of 25 deliveries held by the limit",
    )
    assert stats.completed == 2
    [advice] = [a for a in stats.recommendations if a.rule == "rate_limit"]
    assert advice.startswith("Rate limit saturated (limited: 2 per 60000 ms): ")
    assert stats.saturated_limits == ("limited: 2 per 60000 ms",)
