"""Spans of the Telemetry middleware, read back from an in-memory exporter."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import AsyncIO, Middleware, MiddlewareError, SkipMessage
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from dramatiq_turbo.defer import defer
from dramatiq_turbo.telemetry import CONTEXT_OPTION, Telemetry, step
from dramatiq_turbo.telemetry.semconv import ACTOR, RETRIES, SKIPPED

from .conftest import Otel, Traced


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _only(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_send_and_process_spans_follow_the_messaging_conventions(traced: Traced) -> None:
    @dramatiq.actor(queue_name="emails")
    def notify(user: int) -> None:
        pass

    message = notify.send_with_options(args=(7,), custom={"nested": 1})
    traced.worker(worker_threads=1)
    traced.broker.join("emails")

    send = _only(traced.otel.spans("send emails"))
    process = _only(traced.otel.spans("process emails"))
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    for span, operation in ((send, "send"), (process, "process")):
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "dramatiq"
        assert attributes["messaging.destination.name"] == "emails"
        assert attributes["messaging.message.id"] == message.message_id
        assert attributes["messaging.operation.type"] == operation
        assert attributes["messaging.operation.name"] == operation
        assert attributes[ACTOR] == "notify"
        assert span.status.status_code == StatusCode.UNSET
    assert dict(process.attributes or {})[RETRIES] == 0
    # The consumer span is the producer span's child, in its trace.
    assert process.context.trace_id == send.context.trace_id
    assert _parent_id(process) == send.context.span_id
    # The context travels beside the user's options, which are untouched.
    assert message.options["custom"] == {"nested": 1}
    assert set(message.options[CONTEXT_OPTION]) >= {"traceparent"}


def test_a_send_inside_a_span_joins_its_trace(traced: Traced) -> None:
    @dramatiq.actor
    def job() -> None:
        pass

    tracer = traced.otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("web request") as request:
        job.send()
    traced.worker()
    traced.broker.join(job.queue_name)

    send = _only(traced.otel.spans(f"send {job.queue_name}"))
    process = _only(traced.otel.spans(f"process {job.queue_name}"))
    assert _parent_id(send) == request.get_span_context().span_id
    assert process.context.trace_id == request.get_span_context().trace_id


def test_a_failure_is_an_error_with_its_exception_event(traced: Traced) -> None:
    @dramatiq.actor(max_retries=0)
    def broken() -> None:
        raise KeyError("missing page")

    broken.send()
    traced.worker()
    traced.broker.join(broken.queue_name, fail_fast=False)

    process = _only(traced.otel.spans(f"process {broken.queue_name}"))
    assert process.status.status_code == StatusCode.ERROR
    assert "KeyError" in (process.status.description or "")
    assert dict(process.attributes or {})["error.type"] == "KeyError"
    (event,) = [e for e in process.events if e.name == "exception"]
    assert dict(event.attributes or {})["exception.type"] == "KeyError"
    # The producer's span is not touched by the consumer's failure.
    assert _only(traced.otel.spans(f"send {broken.queue_name}")).status.status_code == StatusCode.UNSET


def test_retries_stay_in_the_original_trace(traced: Traced) -> None:
    attempts: list[int] = []

    @dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")

    message = flaky.send()
    traced.worker(worker_threads=1)
    traced.broker.join(flaky.queue_name)
    traced.broker.join(flaky.queue_name)

    processes = sorted(traced.otel.spans(f"process {flaky.queue_name}"), key=lambda s: s.start_time or 0)
    sends = traced.otel.spans(f"send {flaky.queue_name}")
    assert len(processes) == 3
    # One original send and one per retry; the delay queue handing a due
    # message back to its queue is not another send.
    assert len(sends) == 3
    original = min(sends, key=lambda s: s.start_time or 0)
    assert {s.context.trace_id for s in processes + sends} == {original.context.trace_id}
    assert [dict(s.attributes or {})[RETRIES] for s in processes] == [0, 1, 2]
    assert [s.status.status_code for s in processes] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    assert {dict(s.attributes or {})["messaging.message.id"] for s in processes} == {message.message_id}
    # Each retry is sent from inside the failed attempt, and the next
    # attempt is that send's child: one unbroken chain.
    sends_by_id = {s.context.span_id: s for s in sends}
    for failed, next_attempt in itertools.pairwise(processes):
        retry_send = sends_by_id[_parent_id(next_attempt)]  # type: ignore[index]
        assert _parent_id(retry_send) == failed.context.span_id
    assert _parent_id(processes[0]) == original.context.span_id


def test_consecutive_messages_never_share_a_context(traced: Traced) -> None:
    seen: dict[str, tuple[int, int]] = {}

    @dramatiq.actor
    def record(label: str) -> None:
        context = trace.get_current_span().get_span_context()
        seen[label] = (context.trace_id, context.span_id)

    tracer = traced.otel.tracer_provider.get_tracer("test")
    broker = traced.broker
    with tracer.start_as_current_span("request"):
        record.send("traced")
    # Messages that carry no context at all (sent by a producer without the
    # middleware), put straight on the queue after the traced one.
    for index in range(3):
        bare = record.message(f"bare-{index}")
        broker.queues[record.queue_name].put(bare.encode())
    traced.worker(worker_threads=1)
    broker.join(record.queue_name)

    processes = {
        dict(s.attributes or {})["messaging.message.id"]: s for s in traced.otel.spans(kind=SpanKind.CONSUMER)
    }
    assert len(processes) == 4
    traced_trace = seen["traced"][0]
    for index in range(3):
        trace_id, span_id = seen[f"bare-{index}"]
        assert trace_id != traced_trace
        span = next(s for s in processes.values() if s.context.span_id == span_id)
        assert span.parent is None  # a new trace, not a child of the previous message
    assert len({seen[f"bare-{i}"][0] for i in range(3)}) == 3
    # And nothing is left attached on this (the producer's) thread either.
    assert not trace.get_current_span().get_span_context().is_valid


def test_links_mode_starts_a_new_trace_linked_to_the_producer(otel: Otel, traced: Traced) -> None:
    traced.telemetry.use_links = True

    @dramatiq.actor
    def fan_out() -> None:
        pass

    fan_out.send()
    traced.worker()
    traced.broker.join(fan_out.queue_name)

    send = _only(otel.spans(f"send {fan_out.queue_name}"))
    process = _only(otel.spans(f"process {fan_out.queue_name}"))
    assert process.parent is None
    assert process.context.trace_id != send.context.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in process.links] == [
        (send.context.trace_id, send.context.span_id)
    ]


def test_a_skipped_message_ends_its_span(traced: Traced) -> None:
    class SkipAll(Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
            raise SkipMessage("not today")

    traced.broker.add_middleware(SkipAll())
    ran: list[int] = []

    @dramatiq.actor
    def never() -> None:
        ran.append(1)

    never.send()
    traced.worker()
    traced.broker.join(never.queue_name)

    process = _only(traced.otel.spans(f"process {never.queue_name}"))
    assert dict(process.attributes or {})[SKIPPED] is True
    assert process.status.status_code == StatusCode.UNSET
    assert ran == []


def test_a_deferred_message_stays_in_its_trace(traced: Traced) -> None:
    class DeferOnce(Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
            if not message.options.get("turbo_deferrals"):
                defer(broker, message, delay=10, reason="rate_limit")

    traced.broker.add_middleware(DeferOnce())

    @dramatiq.actor
    def limited() -> None:
        pass

    limited.send()
    traced.worker(worker_threads=1)
    traced.broker.join(limited.queue_name)
    traced.broker.join(limited.queue_name)

    processes = sorted(traced.otel.spans(f"process {limited.queue_name}"), key=lambda s: s.start_time or 0)
    sends = traced.otel.spans(f"send {limited.queue_name}")
    assert len(processes) == 2
    assert len({s.context.trace_id for s in processes + sends}) == 1
    first, second = processes
    assert dict(first.attributes or {})[SKIPPED] is True
    assert [e.name for e in first.events] == ["turbo.defer"]
    assert dict(first.events[0].attributes or {})["reason"] == "rate_limit"
    assert dict(second.attributes or {})[RETRIES] == 0
    assert second.status.status_code == StatusCode.UNSET
    # The parent chain: the first send, its process span, the deferral's send inside it, the run.
    assert len(sends) == 2
    by_id = {s.context.span_id: s for s in processes + sends}
    chain = [second]
    while chain[-1].parent is not None and chain[-1].parent.span_id in by_id:
        chain.append(by_id[chain[-1].parent.span_id])
    assert [s.name.split()[0] for s in chain] == ["process", "send", "process", "send"], [
        s.name for s in chain
    ]
    assert chain[2] is first and chain[3].parent is None


def test_async_actors_run_inside_their_process_span(traced: Traced) -> None:
    traced.broker.add_middleware(AsyncIO())
    seen: list[int] = []

    @dramatiq.actor
    async def fetch() -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)
        with step("download"):
            await asyncio.sleep(0.01)

    fetch.send()
    traced.worker()
    traced.broker.join(fetch.queue_name)

    process = _only(traced.otel.spans(f"process {fetch.queue_name}"))
    download = _only(traced.otel.spans("download"))
    assert seen == [process.context.span_id]
    assert _parent_id(download) == process.context.span_id
    assert download.context.trace_id == process.context.trace_id


def test_a_failing_middleware_after_hook_does_not_leave_the_span_open(traced: Traced) -> None:
    class BrokenHooks(Middleware):
        def after_process_message(self, broker: dramatiq.Broker, message: Any, **kwargs: Any) -> None:
            raise RuntimeError("bug in another middleware")

    traced.broker.add_middleware(BrokenHooks())
    contexts: list[int] = []

    @dramatiq.actor
    def job() -> None:
        contexts.append(trace.get_current_span().get_span_context().trace_id)

    job.send()
    bare = job.message()
    traced.broker.queues[job.queue_name].put(bare.encode())
    traced.worker(worker_threads=1)
    traced.broker.join(job.queue_name)

    processes = traced.otel.spans(f"process {job.queue_name}")
    assert len(processes) == 2
    assert len(set(contexts)) == 2


def test_without_an_sdk_messages_flow_and_keep_their_context(traced: Traced, otel: Otel) -> None:
    """A worker without an SDK neither fails nor erases the context a retry carries."""
    broker = traced.broker
    traced.telemetry.tracer_provider = NoOpTracerProvider()
    traced.telemetry._runtime_cache = None
    carried_by_attempt: list[Any] = []

    class RecordContext(Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
            carried_by_attempt.append(message.options.get(CONTEXT_OPTION))

    broker.add_middleware(RecordContext())

    @dramatiq.actor(max_retries=1, min_backoff=10, max_backoff=10)
    def once_broken() -> None:
        if len(carried_by_attempt) == 1:
            raise ValueError("first time")

    carried = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    message = once_broken.message().copy(options={CONTEXT_OPTION: carried})
    broker.enqueue(message)
    traced.worker(worker_threads=1)
    broker.join(once_broken.queue_name, fail_fast=False)
    broker.join(once_broken.queue_name, fail_fast=False)
    assert carried_by_attempt == [carried, carried]
    assert otel.spans() == []


def test_concurrent_workers_keep_each_message_in_its_own_trace(traced: Traced) -> None:
    lock = threading.Lock()
    seen: dict[str, int] = {}

    @dramatiq.actor
    def tagged(tag: str) -> None:
        with lock:
            seen[tag] = trace.get_current_span().get_span_context().trace_id

    tracer = traced.otel.tracer_provider.get_tracer("test")
    expected = {}
    for index in range(20):
        with tracer.start_as_current_span(f"request {index}") as request:
            tagged.send(str(index))
            expected[str(index)] = request.get_span_context().trace_id
    traced.worker(worker_threads=4)
    traced.broker.join(tagged.queue_name)
    assert seen == expected


@pytest.mark.parametrize("use_links", [False, True])
def test_telemetry_accepts_only_keyword_arguments(use_links: bool) -> None:
    with pytest.raises(TypeError):
        Telemetry(None)  # type: ignore[misc]
    with pytest.raises(ValueError, match="log_interval"):
        Telemetry(log_interval=1.5, use_links=use_links)  # type: ignore[arg-type]


def test_an_enqueue_that_raises_ends_its_send_span_as_an_error(traced: Traced) -> None:
    class RefuseFirst(Middleware):
        refused = False

        def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
            if not self.refused:
                self.refused = True
                raise MiddlewareError("broker refused")

    traced.broker.add_middleware(RefuseFirst())

    @dramatiq.actor
    def job() -> None:
        pass

    with pytest.raises(MiddlewareError):
        job.send()
    job.send()
    sends = sorted(traced.otel.spans(f"send {job.queue_name}"), key=lambda s: s.start_time or 0)
    assert [s.status.status_code for s in sends] == [StatusCode.ERROR, StatusCode.UNSET]
    assert dict(sends[0].attributes or {})["error.type"] == "_OTHER"
