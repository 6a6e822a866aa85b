"""End to end: two real worker processes export over OTLP/HTTP to a receiver started here."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis

from dramatiq_turbo.telemetry import Telemetry
from tests.harness import WorkerProcesses, unique, wait_for

from .conftest import Otel, with_telemetry
from .otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

JOBS = 24
FAILING = 7
SPAN_KIND_CONSUMER = 5  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def test_every_span_and_metric_arrives_from_forked_workers(
    otel: Otel,
    receiver: OtlpReceiver,
    make_broker: Callable[..., dramatiq.Broker],
    redis_url: str,
    worker_processes: Callable[..., WorkerProcesses],
) -> None:
    namespace, queue = unique("tel"), unique("q")
    producer = with_telemetry(
        make_broker("redis", namespace=namespace),
        Telemetry(tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider),
    )
    store = redis.Redis.from_url(redis_url)
    workers = worker_processes(
        "tests.apps.telemetry_e2e",
        processes=2,
        threads=2,
        env={
            "TURBO_TEST_REDIS_URL": redis_url,
            "TURBO_TEST_NAMESPACE": namespace,
            "TURBO_TEST_QUEUE": queue,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            # Nothing is exported on a timer during the test: every span and
            # point must come from the flush in before/after_worker_shutdown.
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        },
    )
    workers.expected_tracebacks = ("failed on purpose",)
    try:
        workers.start(1)
        producer.declare_queue(queue)
        sent = {}
        for number in range(JOBS):
            message = dramatiq.Message(
                queue_name=queue,
                actor_name="traced_job",
                args=(number, number == FAILING),
                kwargs={},
                options={},
            )
            sent[message.message_id] = producer.enqueue(message)
        wait_for(lambda: store.llen(f"{namespace}:done") == JOBS, timeout=30, what="every job to run")
        assert receiver.spans == []  # the schedule delay really holds them back
        # A clean shutdown, as a deployment does it: SIGTERM to the main
        # process only, which forwards it once to its worker processes.
        (main,) = workers.popen
        main.send_signal(signal.SIGTERM)
        main.wait(timeout=30)
        assert all(proc.returncode == 0 for proc in workers.popen), workers.output()
    finally:
        store.delete(f"{namespace}:done")
        store.close()

    sends = {dict(s.attributes or {})["messaging.message.id"]: s for s in otel.spans(f"send {queue}")}
    assert set(sends) == set(sent)
    processes = [s for s in receiver.spans if s.name == f"process {queue}"]
    assert len(processes) == JOBS
    assert {s.kind for s in processes} == {SPAN_KIND_CONSUMER}
    for span in processes:
        producer_span = sends[span.attributes["messaging.message.id"]]
        # The parent is the producer's span, in another process.
        assert span.parent_span_id == f"{producer_span.context.span_id:016x}"
        assert span.trace_id == f"{producer_span.context.trace_id:032x}"
        failed = span.attributes["messaging.message.id"] == next(
            mid for mid, m in sent.items() if m.args[0] == FAILING
        )
        assert span.status_code == (STATUS_ERROR if failed else STATUS_UNSET)
        if failed:
            assert span.attributes["error.type"] == "RuntimeError"
            assert "exception" in span.events
        assert span.resource["service.name"] == "turbo-e2e"
    # Both worker processes exported, each with its own resource.
    assert len({s.resource["process.pid"] for s in processes}) == 2
    steps = [s for s in receiver.spans if s.name == "compute"]
    assert sorted(s.parent_span_id for s in steps) == sorted(s.span_id for s in processes)

    def total(metric: str, *, errors: bool = False) -> float:
        # Points are cumulative and each flush exports them again: the last
        # (largest) value of each series is its total.
        series: dict[tuple[object, ...], float] = {}
        for point in receiver.points:
            if point.metric == metric and (not errors or "error.type" in point.attributes):
                key = (point.resource["process.pid"], *sorted(point.attributes.items()))
                series[key] = max(series.get(key, 0.0), point.value)
        return sum(series.values())

    assert total("messaging.process.duration") == JOBS
    assert total("messaging.client.consumed.messages") == JOBS
    assert total("messaging.process.duration", errors=True) == 1
