"""The suite as a drop-in for an existing Dramatiq app: what Dramatiq users rely on keeps working."""

from __future__ import annotations

import logging

import dramatiq

from dramatiq_turbo import install
from tests.harness import unique


def test_an_actor_with_throws_logs_dramatiqs_aborting_line_and_is_not_retried(
    make_broker, start_worker, caplog
):
    broker = make_broker("stub")
    install(broker, cache=False, rate_limit=False, breaker=False, telemetry=False, monitor=False)
    queue = unique("compat")
    runs = []

    class Expected(Exception):
        pass

    @dramatiq.actor(broker=broker, queue_name=queue, throws=(Expected,), max_retries=5)
    def expected_failure():
        runs.append(1)
        raise Expected("bad input")

    with caplog.at_level(logging.INFO):
        start_worker(broker)
        message = expected_failure.send()
        broker.join(queue, fail_fast=False)

    assert runs == [1], "not retried"
    aborting = [r for r in caplog.records if r.getMessage() == f"Aborting message {message.message_id!r}."]
    assert len(aborting) == 1 and aborting[0].levelno == logging.INFO, "Dramatiq's line, as Dramatiq logs it"
    assert not any(
        r.levelno >= logging.WARNING and "Retries exceeded" in r.getMessage() for r in caplog.records
    )
