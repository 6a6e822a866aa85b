"""Metrics of the Telemetry middleware and the suite's events as counters."""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import Middleware, SkipMessage

from dramatiq_turbo import events
from dramatiq_turbo.telemetry.semconv import ACTOR, DURATION_BUCKETS

from .conftest import Traced

QUEUE_ATTRS = {"messaging.system": "dramatiq", "messaging.operation.name": "process"}


def test_duration_histograms_and_message_counters(traced: Traced) -> None:
    @dramatiq.actor(queue_name="reports", max_retries=0)
    def report(fail: bool) -> None:
        time.sleep(0.02)
        if fail:
            raise ValueError("bad input")

    for fail in (False, False, False, True):
        report.send(fail)
    traced.worker(worker_threads=2)
    traced.broker.join("reports", fail_fast=False)

    otel = traced.otel
    points = otel.metrics()
    (sent,) = points["messaging.client.sent.messages"]
    assert sent.value == 4
    assert dict(sent.attributes) == {
        "messaging.system": "dramatiq",
        "messaging.destination.name": "reports",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }
    assert otel.total("messaging.client.operation.duration", **{"messaging.operation.name": "send"}) == 4
    assert otel.total("messaging.client.consumed.messages", **{"messaging.destination.name": "reports"}) == 4

    durations = points["messaging.process.duration"]
    ok = [p for p in durations if "error.type" not in p.attributes]
    failed = [p for p in durations if p.attributes.get("error.type") == "ValueError"]
    assert sum(p.count for p in ok) == 3 and sum(p.count for p in failed) == 1
    assert ok[0].attributes[ACTOR] == "report"
    # Seconds, with the semantic conventions' bucket advice.
    assert tuple(ok[0].explicit_bounds) == DURATION_BUCKETS
    assert 0.02 * 3 <= ok[0].sum < 5
    # Every attribute is low-cardinality: no message ids in metrics.
    for name, series in points.items():
        for point in series:
            assert "messaging.message.id" not in point.attributes, name


def test_queue_wait_counts_from_the_eta_of_a_delayed_message(traced: Traced) -> None:
    @dramatiq.actor
    def later() -> None:
        pass

    traced.worker(worker_threads=1)
    later.send_with_options(delay=300)
    traced.broker.join(later.queue_name)
    traced.broker.join(later.queue_name)
    waits = traced.otel.metrics()["turbo.queue.wait.duration"]
    (point,) = waits
    assert point.count == 1
    # Waited for its eta (300 ms), but that is not counted as queue wait.
    assert 0 <= point.sum < 0.25


def test_skipped_messages_are_consumed_but_not_processed(traced: Traced) -> None:
    class SkipAll(Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
            raise SkipMessage("no")

    traced.broker.add_middleware(SkipAll())

    @dramatiq.actor
    def skipped() -> None:
        pass

    skipped.send()
    traced.worker()
    traced.broker.join(skipped.queue_name)
    points = traced.otel.metrics()
    assert traced.otel.total("messaging.client.consumed.messages") == 1
    assert "messaging.process.duration" not in points


def test_suite_events_become_counters_with_low_cardinality_attributes(traced: Traced) -> None:
    class Events(Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
            events.record("cache.hit", level="l2")
            events.record("cache.miss")
            events.record("ratelimit.wait", wait_ms=250)
            events.record("breaker.state", breaker="pdf-api", state="open", previous="closed")
            events.record("retry", reason="TimeoutError", delay_ms=1234, retries=3)

    traced.broker.add_middleware(Events())

    @dramatiq.actor(queue_name="pdf")
    def convert() -> None:
        pass

    convert.send()
    convert.send()
    traced.worker(worker_threads=1)
    traced.broker.join("pdf")

    otel = traced.otel
    assert otel.total("turbo.cache.hits", level="l2", **{"messaging.destination.name": "pdf"}) == 2
    assert otel.total("turbo.cache.misses", **{ACTOR: "convert"}) == 2
    assert otel.total("turbo.breaker.transitions", breaker="pdf-api", state="open", previous="closed") == 2
    (retry,) = otel.metrics()["turbo.retries"]
    # delay_ms and retries are span-only: they would explode the series count.
    assert dict(retry.attributes) == {
        "reason": "TimeoutError",
        "messaging.destination.name": "pdf",
        ACTOR: "convert",
    }
    (wait,) = otel.metrics()["turbo.ratelimit.wait.duration"]
    assert wait.count == 2 and wait.sum == pytest.approx(0.5)
    # Outside a message, events are counted without message attributes.
    events.record("outage", component="cache", error_type="ConnectionError")
    (outage,) = otel.metrics()["turbo.outages"]
    assert dict(outage.attributes) == {"component": "cache", "error_type": "ConnectionError"}
    # And the events are on the process spans too (events.record does it).
    process = otel.spans("process pdf")[0]
    assert [e.name for e in process.events][:2] == ["turbo.cache.hit", "turbo.cache.miss"]


def test_one_collector_per_actor_logged_at_the_interval(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    traced.telemetry.log_interval = 1

    @dramatiq.actor(max_retries=0)
    def pdf_worker(fail: bool) -> None:
        if fail:
            raise RuntimeError("x")

    @dramatiq.actor
    def other() -> None:
        pass

    for fail in (False, False, True):
        pdf_worker.send(fail)
    other.send()
    caplog.set_level(logging.INFO, logger="dramatiq_turbo.telemetry")
    traced.worker(worker_threads=1)
    traced.broker.join(pdf_worker.queue_name, fail_fast=False)

    collectors = traced.telemetry.collectors
    assert set(collectors) == {"pdf_worker", "other"}
    snapshot = collectors["pdf_worker"].snapshot()
    assert (snapshot.processed, snapshot.failed) == (2, 1)
    assert collectors["other"].snapshot().processed == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[pdf_worker]")]
    assert lines, "collector lines were logged"
    assert lines[-1].startswith("[pdf_worker] Processed: 2, Failed: 1, Avg Time: ")


def test_collectors_are_not_logged_by_default(traced: Traced, caplog: pytest.LogCaptureFixture) -> None:
    @dramatiq.actor
    def quiet() -> None:
        pass

    caplog.set_level(logging.INFO, logger="dramatiq_turbo.telemetry")
    quiet.send()
    traced.worker()
    traced.broker.join(quiet.queue_name)
    assert traced.telemetry.collectors["quiet"].snapshot().processed == 1
    assert not [r for r in caplog.records if "Processed:" in r.getMessage()]


def test_local_counter_reports_equal_attribute_sets_once() -> None:
    from dramatiq_turbo.telemetry.instruments import LocalCounter

    counter = LocalCounter()
    first, twin = {"q": "a"}, {"q": "a"}
    other = {"q": "b"}
    for attributes in (first, twin, twin, other):
        counter.add(attributes)
    observed = {tuple(o.attributes.items()): o.value for o in counter.observe(None)}  # type: ignore[arg-type]
    assert observed == {(("q", "a"),): 3, (("q", "b"),): 1}


def test_a_forked_child_does_not_count_its_parents_messages_again(traced: Traced) -> None:
    import os

    from dramatiq.broker import MessageProxy

    telemetry, broker, otel = traced.telemetry, traced.broker, traced.otel

    def one_message() -> None:
        message = dramatiq.Message(queue_name="forked", actor_name="job", args=(), kwargs={}, options={})
        telemetry.before_enqueue(broker, message, None)
        telemetry.after_enqueue(broker, message, None)
        proxy = MessageProxy(message)
        telemetry.before_process_message(broker, proxy)
        telemetry.after_process_message(broker, proxy, result=None)

    for _ in range(3):
        one_message()
    assert otel.total("messaging.client.consumed.messages") == 3
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it would export, then leave at once
        try:
            telemetry.after_process_boot(broker)
            one_message()
            os.write(write, str(otel.total("messaging.client.consumed.messages")).encode())
        finally:
            os._exit(0)
    os.close(write)
    reported = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert float(reported) == 1
    assert otel.total("messaging.client.consumed.messages") == 3
