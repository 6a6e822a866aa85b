"""Options, events, outage tracking, marks and the command line."""

from __future__ import annotations

import logging
import subprocess
import sys

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dramatiq_turbo import events
from dramatiq_turbo.cli import main
from dramatiq_turbo.core.delivery import current_delivery, delivery_of, is_cache_hit
from dramatiq_turbo.options import get_option, require_ms
from dramatiq_turbo.outage import Outage


def test_message_option_overrides_actor_option_overrides_default():
    broker = StubBroker()
    broker.actor_options.add("cache_ttl")

    @dramatiq.actor(broker=broker, cache_ttl=5_000)
    def cached() -> None: ...

    @dramatiq.actor(broker=broker)
    def plain() -> None: ...

    assert get_option(broker, cached.message(), "cache_ttl", 1) == 5_000
    assert get_option(broker, cached.message_with_options(cache_ttl=7), "cache_ttl", 1) == 7
    assert get_option(broker, plain.message(), "cache_ttl", 1) == 1
    orphan = dramatiq.Message(queue_name="q", actor_name="gone", args=(), kwargs={}, options={})
    assert get_option(broker, orphan, "cache_ttl", 1) == 1


@pytest.mark.parametrize("value", [1.5, "100", True, -1])
def test_require_ms_names_the_option_and_value(value):
    with pytest.raises(ValueError, match=r"cache_ttl must be"):
        require_ms("cache_ttl", value)


def test_require_ms_accepts_whole_milliseconds():
    assert require_ms("x", 0) == 0
    with pytest.raises(ValueError, match="> 0"):
        require_ms("x", 0, allow_zero=False)


def test_events_reach_listeners_and_the_current_span():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    heard: list[tuple[str, dict]] = []

    def listener(name, attributes):
        heard.append((name, dict(attributes)))

    def broken(name, attributes):
        raise RuntimeError("listener bug")

    events.add_listener(listener)
    events.add_listener(broken)
    events.add_listener(listener)  # once only
    try:
        with provider.get_tracer("t").start_as_current_span("work"):
            events.record("cache.hit", level="l1")
    finally:
        events.remove_listener(listener)
        events.remove_listener(broken)
    events.record("cache.miss")

    assert heard == [("cache.hit", {"level": "l1"})]
    [span] = exporter.get_finished_spans()
    assert [(e.name, dict(e.attributes)) for e in span.events] == [("turbo.cache.hit", {"level": "l1"})]


def test_outage_logs_once_per_outage_and_counts(caplog):
    outage = Outage(component="cache")
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            outage.failed(ConnectionError("refused"))
        outage.succeeded()
        outage.succeeded()
        outage.failed(ConnectionError("again"))

    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "unreachable" in messages[0] and "reachable again" in messages[1] and "again" in messages[2]
    assert (outage.errors, outage.outages, outage.active) == (51, 2, True)


def test_cache_hit_mark_lives_on_the_delivery_only():
    broker = StubBroker()
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    proxy = dramatiq.broker.MessageProxy(message)
    assert not is_cache_hit(proxy) and current_delivery(proxy) is None
    delivery_of(broker, proxy).cache_hit = True
    assert is_cache_hit(proxy) and delivery_of(broker, proxy) is current_delivery(proxy)
    redelivered = dramatiq.broker.MessageProxy(message)
    assert message.options == {} and not is_cache_hit(redelivered), "a new delivery starts afresh"
    assert not vars(proxy).keys() - {"_message", "_exception", "failed"}, "nothing is set on the message"


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("dramatiq-turbo ")
    assert main([]) == 0
    assert "usage: dramatiq-turbo" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "dramatiq_turbo.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "dramatiq-turbo" in out.stdout


def test_every_public_name_resolves():
    import dramatiq_turbo

    missing = [name for name in dramatiq_turbo.__all__ if getattr(dramatiq_turbo, name, None) is None]
    assert missing == []
