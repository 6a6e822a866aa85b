"""Telemetry without an SDK: the no-op fast path, and the global providers set after the broker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NonRecordingSpan, NoOpTracerProvider, SpanContext, TraceFlags

from dramatiq_turbo.telemetry import CONTEXT_OPTION, Telemetry, current_steps, step
from tests.harness import ROOT

from .conftest import with_telemetry

UPSTREAM = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)


@pytest.fixture
def untraced() -> Iterator[tuple[StubBroker, Telemetry]]:
    """A StubBroker with Telemetry on OpenTelemetry's no-op providers."""
    broker = StubBroker()
    telemetry = Telemetry(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    with_telemetry(broker, telemetry)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker, telemetry
    broker.close()


def _run(broker: StubBroker, *queues: str) -> None:
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        for queue in queues:
            broker.join(queue)
    finally:
        worker.stop()


def test_no_op_providers_take_the_fast_path(untraced: tuple[StubBroker, Telemetry]) -> None:
    runtime = untraced[1]._runtime()
    assert (runtime.tracing, runtime.metering, runtime.waiting) == (False, False, False)


def test_without_an_sdk_a_trace_still_travels_through_the_worker(
    untraced: tuple[StubBroker, Telemetry],
) -> None:
    """As with OpenTelemetry's no-op tracer: an upstream context reaches the messages a job sends."""
    broker, _ = untraced
    seen: list[int] = []
    sent: list[dramatiq.Message[Any]] = []

    @dramatiq.actor(queue_name="leaf")
    def leaf() -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    @dramatiq.actor(queue_name="middle")
    def middle() -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        sent.append(leaf.send())

    with trace.use_span(NonRecordingSpan(UPSTREAM)):
        first = middle.send()
    assert f"{UPSTREAM.trace_id:032x}" in first.options[CONTEXT_OPTION]["traceparent"]
    _run(broker, "middle", "leaf")
    assert seen == [UPSTREAM.trace_id, UPSTREAM.trace_id]
    assert sent[0].options[CONTEXT_OPTION] == first.options[CONTEXT_OPTION]
    # A message without a context runs in none, and sends none.
    bare = middle.send()
    assert CONTEXT_OPTION not in bare.options
    _run(broker, "middle", "leaf")
    assert seen[2:] == [0, 0]


def test_without_an_sdk_collectors_and_steps_still_work(
    untraced: tuple[StubBroker, Telemetry], caplog: pytest.LogCaptureFixture
) -> None:
    broker, telemetry = untraced
    tables: list[object] = []

    @dramatiq.actor(max_retries=0)
    def job(fail: bool) -> None:
        tables.append(current_steps())
        with step("work"):
            pass
        if fail:
            raise ValueError("no")

    caplog.set_level(logging.INFO, logger="dramatiq_turbo.telemetry")
    job.send(False)
    job.send(True)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(job.queue_name, fail_fast=False)
    finally:
        worker.stop()
    snapshot = telemetry.collectors["job"].snapshot()
    assert (snapshot.processed, snapshot.failed) == (1, 1)
    assert len(tables) == 2 and all(table is not None for table in tables)
    assert len([r for r in caplog.records if r.getMessage().startswith("Steps of job")]) == 2
    assert current_steps() is None


def test_telemetry_made_before_the_global_providers_follows_them() -> None:
    """The global proxies are no-ops until a provider is set: from then on spans and metrics are real."""
    code = """
        import json
        import dramatiq
        from dramatiq import Worker
        from dramatiq.brokers.stub import StubBroker
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from dramatiq_turbo.telemetry import Telemetry

        telemetry = Telemetry()
        broker = StubBroker(middleware=[telemetry])

        @dramatiq.actor(broker=broker, queue_name="q")
        def job() -> None: ...

        def run() -> None:
            worker = Worker(broker, worker_threads=1, worker_timeout=50)
            worker.start()
            broker.join("q")
            worker.stop()

        job.send()
        run()
        before = telemetry._runtime()
        waiting = [before.tracing, before.metering, before.waiting]
        exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        job.send()
        run()
        after = telemetry._runtime()
        spans = {span.name: span for span in exporter.get_finished_spans()}
        names = [m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics]
        print(json.dumps({
            "waiting": waiting,
            "after": [after.tracing, after.metering, after.waiting],
            "same": after is before,
            "spans": sorted(spans),
            "child": spans["process q"].parent.span_id == spans["send q"].context.span_id,
            "metrics": sorted(names),
        }))
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["waiting"] == [False, False, True]
    assert found["after"] == [True, True, False]
    assert found["same"]  # the proxies' objects now record: nothing was rebuilt
    assert found["spans"] == ["process q", "send q"]
    assert found["child"]
    assert {
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
        "messaging.process.duration",
        "messaging.client.operation.duration",
        "turbo.queue.wait.duration",
    } <= set(found["metrics"])
