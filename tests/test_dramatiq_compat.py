"""The suite as a drop-in for an existing Dramatiq app: what Dramatiq users rely on keeps working."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import Middleware

from dramatiq_turbo import Backoff, install
from dramatiq_turbo.backoff import compute_delay
from tests.harness import unique, wait_for


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


class _Delays(Middleware):
    """Records the delay of every enqueue that is a retry."""

    def __init__(self) -> None:
        self.delays: list[int] = []

    def before_enqueue(self, broker, message, delay):
        if delay:
            self.delays.append(delay)


def _retrying_broker(make_broker, **backoff):
    broker = make_broker("stub")
    delays = _Delays()
    broker.add_middleware(delays)
    install(
        broker,
        cache=False,
        rate_limit=False,
        breaker=False,
        telemetry=False,
        monitor=False,
        backoff=Backoff(**backoff) if backoff else True,
    )
    return broker, delays


def test_min_backoff_stays_a_minimum_with_the_default_jitter():
    """Dramatiq's meaning: no retry sooner than ``min_backoff`` (an existing actor keeps it)."""
    samples = [
        compute_delay(retries, min_backoff=1_000, max_backoff=60_000)
        for retries in range(6)
        for _ in range(300)
    ]
    assert min(samples) >= 1_000, "the default jitter never goes below min_backoff"
    assert len(set(samples)) > 100, "and it still spreads retries out"
    assert max(compute_delay(3, min_backoff=1_000, jitter="bounded") for _ in range(300)) <= 8_000
    # A jitter chosen to go below it does: that is the user's choice.
    assert min(compute_delay(0, min_backoff=1_000, jitter="full") for _ in range(300)) < 1_000


def test_an_actor_with_min_backoff_is_not_retried_sooner(make_broker, start_worker):
    broker, delays = _retrying_broker(make_broker)
    queue = unique("compat")
    runs = []

    @dramatiq.actor(broker=broker, queue_name=queue, min_backoff=1_000, max_backoff=5_000, max_retries=8)
    def flaky():
        runs.append(1)
        if len(runs) <= 8:
            raise RuntimeError("again")

    for _ in range(8):
        flaky.send()
    start_worker(broker)
    wait_for(lambda: len(delays.delays) >= 8, timeout=10, what="eight retries")
    assert min(delays.delays) >= 1_000, delays.delays


def test_retry_with_a_delay_is_retried_after_that_delay(make_broker, start_worker):
    broker, delays = _retrying_broker(make_broker, min_backoff=1_000, max_backoff=60_000)
    queue = unique("compat")
    runs = []

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=5)
    def polling():
        runs.append(1)
        if len(runs) <= 3:
            raise dramatiq.Retry(delay=100)

    polling.send()
    start_worker(broker)
    wait_for(lambda: len(runs) >= 4, timeout=10, what="three polls and a success")
    assert delays.delays == [100, 100, 100], "the delay the actor asked for, not a backoff under it"
