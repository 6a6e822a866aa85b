"""Telemetry on real brokers: retries through the Redis delay queue, and context on every broker kind."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pytest
from dramatiq import Worker
from opentelemetry.trace import StatusCode

from dramatiq_turbo.telemetry import Telemetry
from dramatiq_turbo.telemetry.semconv import RETRIES
from tests.harness import unique, wait_for

from .conftest import Otel, with_telemetry


@pytest.mark.integration
def test_retries_on_redis_stay_in_one_trace_and_count_one_send_each(
    otel: Otel, make_broker: Callable[..., dramatiq.Broker]
) -> None:
    broker = with_telemetry(
        make_broker("redis"),
        Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider),
    )
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=2, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise TimeoutError("slow upstream")

    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        message = flaky.send()
        broker.join(flaky.queue_name, timeout=20_000)
        worker.join()
    finally:
        worker.stop()

    processes = sorted(otel.spans(f"process {flaky.queue_name}"), key=lambda s: s.start_time or 0)
    sends = otel.spans(f"send {flaky.queue_name}")
    assert [dict(s.attributes or {})[RETRIES] for s in processes] == [0, 1, 2]
    assert [s.status.status_code for s in processes] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    assert len({s.context.trace_id for s in processes + sends}) == 1
    assert len(sends) == 3  # the delay queue's hand-over is not a send
    assert {dict(s.attributes or {})["messaging.message.id"] for s in sends} == {message.message_id}
    assert otel.total("messaging.client.sent.messages") == 3
    assert otel.total("messaging.client.consumed.messages") == 3


def test_every_broker_carries_the_context_from_send_to_process(
    otel: Otel, broker_kind: str, make_broker: Callable[..., dramatiq.Broker]
) -> None:
    broker = with_telemetry(
        make_broker(broker_kind),
        Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider),
    )
    queue = unique("tq")

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0)
    def maybe(fail: bool) -> None:
        if fail:
            raise LookupError("no such page")

    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        sent = {maybe.send(False).message_id: False, maybe.send(True).message_id: True}
        wait_for(lambda: len(otel.spans(f"process {queue}")) == 2, timeout=20, what="both deliveries")
    finally:
        worker.stop()

    sends = {dict(s.attributes or {})["messaging.message.id"]: s for s in otel.spans(f"send {queue}")}
    for span in otel.spans(f"process {queue}"):
        message_id = dict(span.attributes or {})["messaging.message.id"]
        assert span.parent is not None and span.parent.span_id == sends[message_id].context.span_id
        assert span.context.trace_id == sends[message_id].context.trace_id
        expected = StatusCode.ERROR if sent[message_id] else StatusCode.UNSET
        assert span.status.status_code == expected
