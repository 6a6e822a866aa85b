"""Per-message cost of the Telemetry middleware (a send span, a process span, their metrics).

Three set-ups, measured in the same run:

* ``none``: no Telemetry middleware (the baseline);
* ``no SDK``: Telemetry with OpenTelemetry's no-op providers (what a user
  gets before configuring anything);
* ``SDK``: Telemetry with the SDK's tracer provider, a ``BatchSpanProcessor``
  and a meter provider, whose exporters drop everything (so the figure is
  the instrumentation's, not a collector's).

Measured three ways: the four hooks of one message called directly (the
pure middleware cost), and end to end (enqueue N messages, then one worker
thread processes them) on ``StubBroker`` and ``RedisBroker``.  Each figure
is the best of several interleaved rounds.

    .venv/bin/python benchmarks/bench_telemetry_overhead.py

``TURBO_BENCH_REDIS_URL`` picks the Redis (default db 12); the namespace
is unique and deleted afterwards.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq import Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider, SpanKind

from dramatiq_turbo.telemetry import Telemetry

REDIS_URL = os.environ.get("TURBO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
GOAL_US = 50.0


class DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class DropMetrics(MetricExporter):
    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def make_sdk() -> tuple[TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    reader = PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=1_000)
    return tracer_provider, MeterProvider(metric_readers=[reader])


def make_telemetry(mode: str) -> Telemetry | None:
    if mode == "none":
        return None
    if mode == "no SDK":
        return Telemetry(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    tracer_provider, meter_provider = make_sdk()
    return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider, log_steps=False)


MODES = ("none", "no SDK", "SDK")


def hooks_run(mode: str, n: int) -> float:
    """Seconds for n messages through the four hooks (or none)."""
    broker = StubBroker()
    telemetry = make_telemetry(mode)
    messages = [
        dramatiq.Message(queue_name="bench", actor_name="job", args=(i,), kwargs={}, options={})
        for i in range(n)
    ]
    start = time.perf_counter()
    for message in messages:
        if telemetry is not None:
            telemetry.before_enqueue(broker, message, None)
            telemetry.after_enqueue(broker, message, None)
        proxy = MessageProxy(message)
        if telemetry is not None:
            telemetry.before_process_message(broker, proxy)
            telemetry.after_process_message(broker, proxy, result=None)
    elapsed = time.perf_counter() - start
    broker.close()
    return elapsed


def sdk_floor_run(n: int) -> float:
    """Seconds for what the SDK itself costs per message: the same two spans and three records.

    Same span names, kinds and attributes, same metric attributes, no
    context propagation and no middleware code: what any instrumentation
    producing these signals pays.
    """
    tracer_provider, meter_provider = make_sdk()
    tracer = tracer_provider.get_tracer("floor")
    meter = meter_provider.get_meter("floor")
    histograms = [meter.create_histogram(f"h{i}", unit="s") for i in range(3)]
    common = {
        "messaging.system": "dramatiq",
        "messaging.destination.name": "bench",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.dramatiq.actor": "job",
    }
    span_attributes = {**common, "messaging.message.id": "6f1c0b3e-8a8e-4c1e-9a51-3f0e2f6f9d10"}
    start = time.perf_counter()
    for _ in range(n):
        tracer.start_span("send bench", kind=SpanKind.PRODUCER, attributes=span_attributes).end()
        tracer.start_span(
            "process bench",
            kind=SpanKind.CONSUMER,
            attributes={**span_attributes, "messaging.dramatiq.retries": 0},
        ).end()
        for histogram in histograms:
            histogram.record(0.001, common)
    return time.perf_counter() - start


def end_to_end_run(kind: str, mode: str, n: int) -> float:
    """Seconds to enqueue n messages and have one worker thread process them."""
    if kind == "stub":
        broker: dramatiq.Broker = StubBroker()
    else:
        broker = RedisBroker(url=REDIS_URL, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    telemetry = make_telemetry(mode)
    if telemetry is not None:
        broker.add_middleware(telemetry)
        broker.middleware.remove(telemetry)
        broker.middleware.insert(0, telemetry)
    done = [0]

    def job(i: int) -> None:
        done[0] += 1

    actor = dramatiq.actor(job, broker=broker, queue_name="bench", max_retries=0)
    worker = Worker(broker, worker_threads=1, worker_timeout=10)
    try:
        start = time.perf_counter()
        for i in range(n):
            actor.send(i)
        worker.start()
        while done[0] < n:
            time.sleep(0.0005)
        elapsed = time.perf_counter() - start
    finally:
        worker.stop()
        if isinstance(broker, RedisBroker):
            keys = list(broker.client.scan_iter(f"{broker.namespace}:*"))
            if keys:
                broker.client.delete(*keys)
        broker.close()
    return elapsed


def best(run: Callable[[str], float], rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:  # interleaved, so drift hits every mode alike
            results[mode].append(run(mode))
    return {mode: min(times) for mode, times in results.items()}


def report(label: str, n: int, times: dict[str, float]) -> list[str]:
    base = times["none"]
    rows = []
    for mode in MODES:
        per = times[mode] / n * 1e6
        overhead = (times[mode] - base) / n * 1e6
        # The hooks alone have no work to compare with: a ratio would be noise.
        ratio = "-" if label == "hooks" else f"{base / times[mode]:.2f}"
        rows.append(f"{label:<7} {mode:<8} {per:>12.1f} {overhead:>12.1f} {ratio:>16}")
    return rows


def _calibrate() -> float:
    start = time.perf_counter()
    for _ in range(200):
        sum(range(1000))
    return (time.perf_counter() - start) / 200 * 1e6


def main() -> int:
    print("Telemetry overhead per message (one send span + one process span + metrics)")
    print(f"{'where':<7} {'mode':<8} {'us/message':>12} {'overhead us':>12} {'throughput ratio':>16}")
    results: dict[str, dict[str, float]] = {}
    plans: list[tuple[str, int, Callable[[str], float], int]] = [
        ("hooks", 5_000, lambda m: hooks_run(m, 5_000), 5),
        ("stub", 2_000, lambda m: end_to_end_run("stub", m, 2_000), 3),
        ("redis", 1_000, lambda m: end_to_end_run("redis", m, 1_000), 3),
    ]
    hooks_run("SDK", 2_000)  # warm up imports and caches
    for label, n, run, rounds in plans:
        results[label] = best(run, rounds)
        for row in report(label, n, results[label]):
            print(row, flush=True)
    hooks_n = plans[0][1]
    sdk = (results["hooks"]["SDK"] - results["hooks"]["none"]) / hooks_n * 1e6
    floor = min(sdk_floor_run(hooks_n) for _ in range(3)) / hooks_n * 1e6
    calibration = min(_calibrate() for _ in range(5))
    print(f"\nSDK floor (2 spans + 3 histogram records, no middleware): {floor:.1f} us/message")
    print(f"Telemetry with the SDK, hooks: {sdk:.1f} us/message = {sdk / floor:.2f} x the SDK floor")
    print(
        f"Machine speed: sum(range(1000)) took {calibration:.1f} us in this run (about 9 us on an idle core)"
    )
    verdict = "met" if sdk < GOAL_US else "NOT met"
    print(f"Goal: < {GOAL_US:.0f} us per message with the SDK (hooks): {sdk:.1f} us -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
