"""Passwords in URLs never reach the suite's logs, span attributes and events, metrics or ``stats`` output.

Messages carry a database URL with a password in their arguments and
options; actors fail with that URL in their exception text (as connection
errors do); downloads use URL credentials.  Everything runs through
``install()`` with ``Telemetry`` exporting into memory, logs are captured
at DEBUG, and the password must appear nowhere.

Dramatiq itself logs every message with its arguments (``Received message
send_report('postgres://...')`` at DEBUG, and the exception text of every
failure at ERROR).  Those lines are clean because ``install()`` calls
``dramatiq_turbo.redact.protect_logs()``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker

from dramatiq_turbo import Backoff, download_file, install
from dramatiq_turbo.cli import main
from dramatiq_turbo.monitor import QueueStatsRecorder
from dramatiq_turbo.redact import protect_logs
from tests import harness
from tests.harness import free_port

from .conftest import Stack, TracebackLog

PASSWORD = "Tr0ub4dor-and-3"
DSN = f"postgres://app:{PASSWORD}@db.internal:5432/prod"
BROKER_PASSWORD = "Br0kerS3cret"


class Actors:
    def __init__(self) -> None:
        self.actors: dict[str, Any] = {}

    def declare(self) -> None:
        @dramatiq.actor(queue_name="secrets", max_retries=0)
        def connect(dsn: str, *, note: str = "") -> None:
            raise ConnectionError(f"could not connect to {dsn}: connection refused")

        @dramatiq.actor(queue_name="secrets", max_retries=0)
        def fetch(url: str) -> bytes:
            return download_file(url, timeout=2_000, max_retries=0)

        @dramatiq.actor(queue_name="secrets", cache=True)
        def odd(dsn: str) -> set[str]:
            return {dsn}  # not JSON: "not cached", with a warning

        @dramatiq.actor(queue_name="secrets")
        def fine(dsn: str) -> None:
            pass

        self.actors = {a.actor_name: a for a in (connect, fetch, odd, fine)}


def _run_everything(stack: Stack, actors: Actors) -> None:
    closed = f"http://reader:{PASSWORD}@127.0.0.1:{free_port()}/report.pdf?api_key={PASSWORD}"
    messages = [
        actors.actors["connect"].send_with_options(args=(DSN,), kwargs={"note": DSN}, note_option=DSN),
        actors.actors["fetch"].send(closed),
        actors.actors["odd"].send(DSN),
        actors.actors["fine"].send_with_options(
            args=(DSN,), cache_ttl=DSN, rate_limit=DSN, turbo_trace={"x": DSN}
        ),
    ]
    for message in messages:
        assert stack.fates.first(message.message_id).fate in ("completed", "dead")
    stack.worker.join()


def _span_texts(stack: Stack) -> Iterator[str]:
    for span in stack.spans.get_finished_spans():
        yield span.name
        yield repr(dict(span.attributes or {}))
        yield str(span.status.description)
        for event in span.events:
            yield event.name
            yield repr(dict(event.attributes or {}))


def _metric_texts(stack: Stack) -> Iterator[str]:
    data = stack.metrics.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                yield metric.name
                for point in metric.data.data_points:
                    yield repr(dict(point.attributes or {}))


def _log_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in records)


@pytest.fixture
def secrets_stack(make_stack, log_records) -> tuple[Stack, Actors, TracebackLog]:
    actors = Actors()
    stack = make_stack(actors.declare, backoff=Backoff(max_retries=0))
    return stack, actors, log_records


@pytest.fixture
def restore_record_factory() -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)


def test_the_suite_never_shows_a_password_in_its_logs_spans_or_metrics(secrets_stack) -> None:
    stack, actors, log = secrets_stack
    _run_everything(stack, actors)
    ours = [r for r in log.records if r.name.startswith("dramatiq_turbo")]
    assert ours, "the suite logged nothing: the test would prove nothing"
    text = _log_text(ours)
    assert PASSWORD not in text
    assert "could not connect to postgres://app:***@db.internal" in "\n".join(_span_texts(stack))
    for surface, texts in (("span", _span_texts(stack)), ("metric", _metric_texts(stack))):
        leaked = [t for t in texts if PASSWORD in t]
        assert not leaked, f"a {surface} shows the password: {leaked[0][:300]}"


def test_dead_letters_keep_the_reason_without_the_password_of_a_download(secrets_stack) -> None:
    stack, actors, _ = secrets_stack
    url = f"http://reader:{PASSWORD}@127.0.0.1:{free_port()}/x?token={PASSWORD}"
    message = actors.actors["fetch"].send(url)
    assert stack.fates.first(message.message_id).fate == "dead"
    (dead,) = [m for m in stack.broker.dead_letters if m.message_id == message.message_id]
    detail = dead.options["turbo_failure"]["detail"]
    assert "reader:***@127.0.0.1" in detail and PASSWORD not in detail


def test_with_protect_logs_no_log_line_shows_the_password(secrets_stack, restore_record_factory) -> None:
    """Dramatiq's worker logs each message with its arguments, and each failure with its text."""
    stack, actors, log = secrets_stack
    protect_logs()
    protect_logs()  # twice changes nothing
    _run_everything(stack, actors)
    text = _log_text(log.records)
    assert "Received message connect('postgres://app:***@db.internal:5432/prod'" in text
    assert PASSWORD not in text


def test_install_keeps_passwords_out_of_dramatiqs_own_log_lines(secrets_stack) -> None:
    stack, actors, log = secrets_stack
    _run_everything(stack, actors)
    assert PASSWORD not in _log_text(log.records)


# -- the stats command on a real broker ------------------------------------------------------------


@pytest.mark.integration
def test_stats_output_never_shows_a_password(redis_url, make_broker, capsys, restore_record_factory) -> None:
    namespace, monitor_namespace, queue = (
        harness.unique("dq"),
        harness.unique("turbo:abuse"),
        harness.unique("q"),
    )
    broker = make_broker("redis", namespace=namespace)
    install(
        broker,
        cache=False,
        rate_limit=False,
        breaker=False,
        telemetry=False,
        backoff=Backoff(max_retries=0),
        monitor=QueueStatsRecorder(namespace=monitor_namespace),
    )

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def connect(dsn: str) -> None:
        raise ConnectionError(f"could not connect to {dsn}")

    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        connect.send(DSN)
        xq = f"{namespace}:{queue}.XQ"
        harness.wait_for(lambda: broker.client.zcard(xq) == 1, timeout=10, what="the dead letter")
    finally:
        worker.stop()
    time.sleep(0.2)
    url = redis_url.replace("redis://", f"redis://:{BROKER_PASSWORD}@", 1)
    try:
        capsys.readouterr()
        for as_json in (True, False):
            argv = [
                "stats",
                "--broker",
                url,
                "--namespace",
                namespace,
                "--monitor-namespace",
                monitor_namespace,
            ]
            main([*argv, "--queue", queue, *(["--json"] if as_json else [])])
            out = capsys.readouterr()
            if as_json:
                json.loads(out.out)
            assert BROKER_PASSWORD not in out.out + out.err
            assert "could not connect" in out.out  # the dead letter's reason is shown...
            assert PASSWORD not in out.out + out.err  # ...without the password
    finally:
        keys = list(broker.client.scan_iter(f"{monitor_namespace}:*"))
        if keys:
            broker.client.delete(*keys)


def _open_a_breaker_named_by_a_message(stack: Stack, actors: Actors) -> None:
    """Five failures behind a breaker whose name a sender chose: a URL with a password."""
    for _ in range(6):
        message = actors.actors["connect"].send_with_options(args=("x",), breaker=DSN)
        stack.fates.first(message.message_id)


def test_a_breaker_named_with_a_password_never_shows_it_on_a_metric(secrets_stack) -> None:
    stack, actors, _ = secrets_stack
    _open_a_breaker_named_by_a_message(stack, actors)
    labels = [t for t in _metric_texts(stack) if "db.internal" in t]
    assert labels, "no breaker metric: the test would prove nothing"
    assert not [t for t in labels if PASSWORD in t]


def test_a_breaker_named_with_a_password_never_shows_it_in_a_log(secrets_stack) -> None:
    stack, actors, log = secrets_stack
    _open_a_breaker_named_by_a_message(stack, actors)
    assert PASSWORD not in _log_text([r for r in log.records if r.name.startswith("dramatiq_turbo")])
