"""Fixtures of the telemetry tests: in-memory OpenTelemetry SDK providers and a traced broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dramatiq_turbo.telemetry import Telemetry


@dataclass
class Otel:
    """SDK providers whose spans and metrics the test reads back."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [
            span
            for span in self.exporter.get_finished_spans()
            if (name is None or span.name == name) and (kind is None or span.kind == kind)
        ]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        found: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found

    def total(self, name: str, **attributes: Any) -> float:
        """Sum of a counter's points (or a histogram's counts) whose attributes include ``attributes``."""
        points = self.metrics().get(name, [])
        total = 0.0
        for point in points:
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                total += point.count if hasattr(point, "count") else point.value
        return total


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(tracer_provider, meter_provider, exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@dataclass
class Traced:
    broker: StubBroker
    telemetry: Telemetry
    otel: Otel
    worker: Callable[..., Worker]


@pytest.fixture
def traced(otel: Otel) -> Iterator[Traced]:
    """A StubBroker with ``Telemetry`` first in its middleware, and a worker factory."""
    broker = StubBroker()
    telemetry = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    with_telemetry(broker, telemetry)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    workers: list[Worker] = []

    def start(**options: Any) -> Worker:
        options.setdefault("worker_timeout", 50)
        worker = Worker(broker, **options)
        worker.start()
        workers.append(worker)
        return worker

    yield Traced(broker, telemetry, otel, start)
    for worker in workers:
        worker.stop()
    broker.close()


def with_telemetry(broker: dramatiq.Broker, telemetry: Telemetry) -> dramatiq.Broker:
    """Put ``telemetry`` first on ``broker``, as ``install()`` does."""
    broker.add_middleware(telemetry)
    broker.middleware.remove(telemetry)
    broker.middleware.insert(0, telemetry)
    return broker
