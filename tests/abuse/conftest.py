"""Fixtures of the abuse tests: a fully installed stack on a StubBroker, and what became of each message.

``Fates`` is a middleware that records each delivery of each message: whether
the actor returned, whether the message was enqueued again (a retry or a
deferral), and whether it was acked or dead-lettered.  ``TracebackLog``
collects every log record, so a test can say that no exception escaped from
``dramatiq_turbo`` code unless a line says so on purpose.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dramatiq_turbo
from dramatiq_turbo import install
from dramatiq_turbo.redis import connect_redis
from dramatiq_turbo.telemetry import Telemetry
from tests import harness
from tests.harness import wait_for

#: Where the library's code lives: a traceback whose innermost frame is here came from it.
LIBRARY = str(Path(dramatiq_turbo.__file__).resolve().parent)


@dataclass
class Delivery:
    """One delivery of one message, as the worker handled it."""

    message_id: str
    returned: bool = False
    exception: BaseException | None = None
    skipped: bool = False
    enqueued_again: list[int | None] = field(default_factory=list)  # the delays
    acked: bool = False
    nacked: bool = False

    @property
    def over(self) -> bool:
        return self.acked or self.nacked

    @property
    def fate(self) -> str:
        """``completed``, ``requeued`` (retried or deferred), ``dead`` (dead-lettered) or ``lost``."""
        if self.nacked:
            return "dead"
        if self.enqueued_again:
            return "requeued"
        if self.acked and self.returned and not self.skipped:
            return "completed"
        return "lost"


class Fates(Middleware):
    """Records every delivery's outcome.

    Put it first: its ``before_process_message`` then runs before any gate
    can skip the message, and its ``after_*`` hooks last, once ``Backoff``
    has decided.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: dict[str, list[Delivery]] = {}
        self._current = threading.local()

    def _now(self) -> Delivery | None:
        return getattr(self._current, "delivery", None)

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        delivery = Delivery(message.message_id)
        self._current.delivery = delivery
        with self.lock:
            self.deliveries.setdefault(message.message_id, []).append(delivery)

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        delivery = self._now()
        if delivery is not None:
            delivery.exception = exception
            delivery.returned = exception is None and not message.failed

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        delivery = self._now()
        if delivery is not None:
            delivery.skipped = True

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        delivery = self._now()
        if delivery is not None and delivery.message_id == message.message_id and not delivery.over:
            delivery.enqueued_again.append(delay)

    def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        delivery = self._now()
        if delivery is not None:
            delivery.acked = True
            self._current.delivery = None

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        delivery = self._now()
        if delivery is not None:
            delivery.nacked = True
            self._current.delivery = None

    def first(self, message_id: str, *, timeout: float = 10) -> Delivery:
        """The first delivery of ``message_id``, once it is over."""

        def over() -> Delivery | None:
            with self.lock:
                found = self.deliveries.get(message_id)
            return found[0] if found and found[0].over else None

        found: Delivery = wait_for(over, timeout=timeout, what=f"the first delivery of {message_id}")
        return found


class TracebackLog(logging.Handler):
    """Every log record, from every logger, at every level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.records.append(record)

    def since(self, start: int) -> list[logging.LogRecord]:
        with self.lock_:
            return self.records[start:]

    def mark(self) -> int:
        with self.lock_:
            return len(self.records)

    @staticmethod
    def from_library(record: logging.LogRecord) -> bool:
        """Whether ``record`` carries an exception raised by ``dramatiq_turbo`` code itself."""
        if not record.exc_info or record.exc_info[1] is None:
            return False
        frames = traceback.extract_tb(record.exc_info[2])
        return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(LIBRARY)


@pytest.fixture
def log_records() -> Iterator[TracebackLog]:
    """All log records of the test, DEBUG and up, whatever the loggers' levels were."""
    handler = TracebackLog()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


@dataclass
class Stack:
    """``install()``'s whole pipeline on a StubBroker, with telemetry into memory."""

    broker: StubBroker
    fates: Fates
    worker: Worker
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def threads_alive(self) -> bool:
        return all(thread.is_alive() for thread in self.worker.workers)


@pytest.fixture
def otel_memory() -> Iterator[
    tuple[TracerProvider, MeterProvider, InMemorySpanExporter, InMemoryMetricReader]
]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield tracer_provider, meter_provider, exporter, reader
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def make_stack(otel_memory: Any) -> Iterator[Any]:
    """``make_stack(declare, **install_options)``: install() on a StubBroker, actors declared, worker started.

    ``declare()`` runs once the middleware is on the broker (so actor
    options are known) and before the worker starts.
    """
    tracer_provider, meter_provider, exporter, reader = otel_memory
    stacks: list[Stack] = []

    def factory(declare: Any, *, worker_threads: int = 2, **options: Any) -> Stack:
        broker = StubBroker()
        dramatiq.set_broker(broker)
        options.setdefault(
            "telemetry", Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
        )
        install(broker, **options)
        fates = Fates()
        broker.add_middleware(fates)
        broker.middleware.remove(fates)
        broker.middleware.insert(0, fates)
        broker.emit_after("process_boot")
        declare()
        worker = Worker(broker, worker_threads=worker_threads, worker_timeout=50)
        worker.start()
        stack = Stack(broker, fates, worker, exporter, reader)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.worker.stop(timeout=10_000)
        stack.broker.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test database (not flushed: other suites may use it at the same time)."""
    connection = connect_redis(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def namespace(client: redis.Redis) -> Iterator[str]:
    """A namespace of this test's own; every key under it is deleted afterwards."""
    name = harness.unique("turbo:abuse")
    yield name
    keys = list(client.scan_iter(f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
