"""The same guarantees on a real RedisBroker, whose delay queue re-enqueues due messages."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pytest
from dramatiq import Worker
from opentelemetry.trace import StatusCode

from dramatiq_turbo.telemetry import Telemetry
from dramatiq_turbo.telemetry.semconv import RETRIES

from .conftest import Otel, with_telemetry

pytestmark = pytest.mark.integration


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
