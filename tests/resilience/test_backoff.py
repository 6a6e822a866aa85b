"""Backoff: jitter distributions, the cap, server hints, non-retryable errors, deferrals."""

from __future__ import annotations

import json
import random
import statistics
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, Retries

from dramatiq_turbo import install
from dramatiq_turbo.backoff import (
    FAILURE_OPTION,
    JITTER,
    Backoff,
    compute_delay,
    is_retryable,
    parse_retry_after,
    retry_hint,
)
from dramatiq_turbo.defer import defer, deferral_count
from dramatiq_turbo.options import OptionError
from tests.harness import unique

N = 20_000


def _samples(jitter, retries, *, base=1_000, cap=60_000, seed=7):
    rng = random.Random(seed)
    return [
        compute_delay(retries, min_backoff=base, max_backoff=cap, jitter=jitter, rng=rng) for _ in range(N)
    ]


def test_full_jitter_is_uniform_over_the_whole_exponential_window():
    samples = _samples("full", 3)  # window 8,000 ms
    assert min(samples) >= 0 and max(samples) <= 8_000
    assert statistics.mean(samples) == pytest.approx(4_000, rel=0.02)
    # Uniform: each tenth of the window holds ~10% of the samples.
    deciles = Counter(min(9, s * 10 // 8_000) for s in samples)
    assert all(abs(deciles[d] / N - 0.1) < 0.01 for d in range(10)), deciles
    assert statistics.pstdev(samples) == pytest.approx(8_000 / 12**0.5, rel=0.03)


def test_equal_jitter_keeps_at_least_half_of_the_window():
    samples = _samples("equal", 3)
    assert min(samples) >= 4_000 and max(samples) <= 8_000
    assert statistics.mean(samples) == pytest.approx(6_000, rel=0.01)
    deciles = Counter(min(4, (s - 4_000) * 5 // 4_000) for s in samples)
    assert all(abs(deciles[d] / N - 0.2) < 0.015 for d in range(5)), deciles


def test_decorrelated_jitter_grows_from_the_previous_delay_and_respects_the_cap():
    rng = random.Random(11)
    samples = [
        compute_delay(
            0, min_backoff=1_000, max_backoff=60_000, jitter="decorrelated", previous=5_000, rng=rng
        )
        for _ in range(N)
    ]
    # U(base, 3 * previous) = U(1000, 15000)
    assert min(samples) >= 1_000 and max(samples) <= 15_000
    assert statistics.mean(samples) == pytest.approx(8_000, rel=0.02)
    capped = [
        compute_delay(
            0, min_backoff=1_000, max_backoff=20_000, jitter="decorrelated", previous=50_000, rng=rng
        )
        for _ in range(2_000)
    ]
    assert max(capped) == 20_000 and min(capped) >= 1_000


def test_no_jitter_is_the_guides_formula_and_the_cap_is_the_cap():
    delays = [compute_delay(n, jitter=None) for n in range(12)]
    assert delays == [min(1_000 * 2**n, 60_000) for n in range(12)]
    assert compute_delay(10_000, jitter=None) == 60_000, "huge retry counts neither overflow nor pass the cap"
    for name in JITTER:
        assert max(_samples(name, 30, seed=3)[:2_000]) <= 60_000
    # Dramatiq's Retries waits max_backoff * U(0.5, 1) past the cap; full jitter spans the whole window.
    assert min(_samples("full", 30)) < 3_000


def test_unknown_jitter_is_refused_with_its_name():
    with pytest.raises(ValueError, match="jitter must be one of"):
        compute_delay(1, jitter="fully")
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter="fully")
    with pytest.raises(ValueError, match="min_backoff"):
        Backoff(min_backoff=0.5)  # type: ignore[arg-type]


def test_retry_after_parsing():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120_000
    assert parse_retry_after(" 0 ") == 0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30_000
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def _http_error(status, retry_after=None):
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    error = RuntimeError(f"HTTP {status}")
    error.response = SimpleNamespace(status_code=status, headers=headers)  # type: ignore[attr-defined]
    return error


def test_classification_of_exceptions():
    assert is_retryable(RuntimeError())[0] is True
    flagged = ValueError("bad input")
    flagged.retryable = False  # type: ignore[attr-defined]
    assert is_retryable(flagged) == (False, "ValueError is not retryable")
    for status, expected in (
        (400, False),
        (404, False),
        (422, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
    ):
        assert is_retryable(_http_error(status))[0] is expected, status
    assert retry_hint(_http_error(429, "7")) == 7_000
    assert retry_hint(_http_error(503, "2")) == 2_000
    assert retry_hint(_http_error(500, "2")) is None, "Retry-After only means something on 429/503"
    assert retry_hint(dramatiq.Retry(delay=1_234)) == 1_234
    hinted = RuntimeError()
    hinted.retry_after = 900  # type: ignore[attr-defined]
    assert retry_hint(hinted) == 900


class _Recorder(Middleware):
    """Remembers the delay of every enqueue that is a retry."""

    def __init__(self):
        self.delays = []

    def before_enqueue(self, broker, message, delay):
        if delay:
            self.delays.append(delay)


def _broker(backoff, **options):
    broker = StubBroker(**options)
    install(broker, backoff=backoff, cache=False, breaker=False, rate_limit=False, telemetry=False)
    recorder = _Recorder()
    broker.add_middleware(recorder)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    return broker, recorder


def _run(broker, fn, *args, timeout=10_000):
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        broker.join(fn.queue_name, timeout=timeout, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def test_install_replaces_retries_and_hints_set_a_floor_capped_by_max_backoff():
    broker, recorder = _broker(Backoff(min_backoff=10, max_backoff=5_000, jitter=None, max_retries=3))
    assert not any(type(m) is Retries for m in broker.middleware)
    hinted = RuntimeError("slow down")
    hinted.retry_after = 200  # type: ignore[attr-defined]
    errors = iter([dramatiq.Retry(delay=300), hinted, _http_error(503, "60")])

    @dramatiq.actor(queue_name=unique("bo"))
    def flaky():
        error = next(errors, None)
        if error is not None:
            raise error

    # Delays are real: make the stub's delay queue due at once, keep what was asked.
    flaky.send()
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        _wait_until(lambda: len(recorder.delays) == 3)
    finally:
        worker.stop()
    # max(hint, computed) then the cap: Retry(delay=300), retry_after=200, a 60 s Retry-After capped to 5 s.
    assert recorder.delays == [300, 200, 5_000]


def _wait_until(condition, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_min_backoff_zero_is_honoured_and_retries_count_up():
    broker, recorder = _broker(Backoff(min_backoff=0, max_backoff=0, max_retries=3))
    calls = []

    @dramatiq.actor(queue_name=unique("bo"))
    def always_fails():
        calls.append(dramatiq.middleware.CurrentMessage.get_current_message().options.get("retries", 0))
        raise RuntimeError("down")

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    always_fails.send()
    _run(broker, always_fails)
    assert calls == [0, 1, 2, 3], "max_retries=3 means 4 runs"
    assert recorder.delays == [], "0 ms stays 0 ms (Dramatiq's Retries would wait 15 s)"
    (dead,) = broker.dead_letters
    assert dead.options[FAILURE_OPTION]["reason"] == "retries exhausted"
    assert dead.options[FAILURE_OPTION]["error"] == "RuntimeError"


def test_non_retryable_errors_fail_at_once_with_the_reason_and_exhaustion_notifies():
    broker, _ = _broker(Backoff(min_backoff=0, max_backoff=0))
    queue = unique("bo")
    runs = Counter()
    exhausted = []

    @dramatiq.actor(queue_name=queue)
    def bad_input(kind):
        runs[kind] += 1
        if kind == "flag":
            error = ValueError("field 'x' is missing")
            error.retryable = False  # type: ignore[attr-defined]
            raise error
        if kind == "http":
            raise _http_error(404)
        if kind == "throws":
            raise KeyError("expected")
        raise RuntimeError("transient")

    @dramatiq.actor(queue_name=queue)
    def notify(message_data, retry_info):
        exhausted.append((message_data["args"], retry_info))

    bad_input.options["throws"] = (KeyError,)
    for kind in ("flag", "http", "throws"):
        bad_input.send(kind)
    bad_input.send_with_options(args=("transient",), max_retries=2, on_retry_exhausted="notify")
    _run(broker, bad_input)
    assert runs == Counter({"flag": 1, "http": 1, "throws": 1, "transient": 3})
    reasons = {m.args[0]: m.options[FAILURE_OPTION] for m in broker.dead_letters}
    assert reasons["flag"] == {
        "reason": "ValueError is not retryable",
        "error": "ValueError",
        "detail": "field 'x' is missing",
        "retries": 0,
    }
    assert reasons["http"]["reason"] == "HTTP 404 is a client error"
    assert reasons["throws"]["reason"] == "KeyError is in throws"
    assert reasons["transient"]["reason"] == "retries exhausted" and reasons["transient"]["retries"] == 2
    assert exhausted == [(["transient"], {"retries": 2, "max_retries": 2})]


def test_bad_actor_options_are_refused_at_declaration():
    _broker(Backoff())
    with pytest.raises(OptionError, match="jitter must be one of"):

        @dramatiq.actor(jitter="sometimes")
        def a():
            pass

    with pytest.raises(OptionError, match="min_backoff must be an int of milliseconds"):

        @dramatiq.actor(min_backoff=1.5)
        def b():
            pass


def test_per_actor_jitter_and_custom_backoff():
    broker, recorder = _broker(Backoff(max_retries=2))
    seen = []

    def linear(retries, exception):
        seen.append((retries, type(exception).__name__))
        return 7 * (retries + 1)

    @dramatiq.actor(queue_name=unique("bo"), backoff=linear)
    def custom():
        raise OSError("nope")

    custom.send()
    _run(broker, custom)
    assert seen == [(0, "OSError"), (1, "OSError")]
    assert recorder.delays == [7, 14]


class DeferFirstTwo(Middleware):
    def before_process_message(self, broker, message):
        if deferral_count(message) < 2:
            defer(broker, message, delay=1, reason="test")


def test_deferrals_never_count_as_retries():
    broker, _ = _broker(Backoff(min_backoff=0, max_backoff=0, max_retries=5))
    broker.add_middleware(DeferFirstTwo())
    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    seen = []
    lock = threading.Lock()

    @dramatiq.actor(queue_name=unique("bo"))
    def fails_once():
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        with lock:
            seen.append((message.options.get("retries", 0), deferral_count(message)))
        if message.options.get("retries", 0) == 0:
            raise RuntimeError("first run fails")

    fails_once.send()
    _run(broker, fails_once)
    assert seen == [(0, 2), (1, 2)], "two deferrals, one failure: retries counts only the failure"
    assert broker.dead_letters == []


@pytest.mark.integration
def test_redis_dead_letter_keeps_the_reason(make_broker, start_worker):
    broker = make_broker("redis")
    install(broker, backoff=Backoff(), cache=False, breaker=False, rate_limit=False, telemetry=False)
    queue = unique("bo")

    @dramatiq.actor(queue_name=queue, broker=broker)
    def rejected():
        raise _http_error(422)

    rejected.send()
    start_worker(broker)
    broker.join(queue, timeout=10_000)
    stored = broker.client.hvals(f"{broker.namespace}:{queue}.XQ.msgs")
    assert len(stored) == 1
    options = json.loads(stored[0])["options"]
    assert options[FAILURE_OPTION]["reason"] == "HTTP 422 is a client error"
    assert options.get("retries", 0) == 0


def test_a_dead_lettered_delivery_stores_its_failure_as_results_after_nack_would():
    """A message dead-lettered by hand is acked: ``after_ack`` stores what ``after_nack`` would have."""
    from dramatiq.broker import MessageProxy
    from dramatiq.results import Results

    from dramatiq_turbo.core.deadletter import _DEAD_LETTERED

    class Backend:
        def __init__(self):
            self.stored = []

        def store_exception(self, message, exception, ttl):
            self.stored.append((message.message_id, exception, ttl))

    backend = Backend()
    broker = StubBroker()
    backoff = Backoff()
    broker.add_middleware(Results(backend=backend, result_ttl=1_000))
    broker.add_middleware(backoff)
    queue = unique("bo")

    @dramatiq.actor(queue_name=queue, broker=broker, store_results=True, result_ttl=2_000)
    def stored():
        pass

    @dramatiq.actor(queue_name=queue, broker=broker)
    def not_stored():
        pass

    def acked(actor, **options):
        message = MessageProxy(actor.message_with_options(**options))
        error = RuntimeError(actor.actor_name)
        setattr(message, _DEAD_LETTERED, error)
        backoff.after_ack(broker, message)
        assert not hasattr(message, _DEAD_LETTERED), "the exception is not kept alive"
        return message.message_id, error

    plain = MessageProxy(stored.message())
    backoff.after_ack(broker, plain)  # an ordinary ack stores nothing
    first = acked(stored)  # actor option ttl beats the middleware's
    acked(not_stored)  # store_results defaults to the middleware's (False)
    second = acked(not_stored, store_results=True, result_ttl=3_000)  # message options beat both
    assert backend.stored == [(*first, 2_000), (*second, 3_000)]


def test_a_retry_that_cannot_be_scheduled_dead_letters_the_message_instead_of_losing_it():
    broker, _ = _broker(Backoff(min_backoff=0, max_backoff=0))
    queue = unique("bo")
    runs = Counter()

    # backoff() returns a float: no valid delay can be computed for the retry.
    @dramatiq.actor(queue_name=queue, max_retries=3, backoff=lambda retries, exception: 100 * 1.5**retries)
    def flaky(n):
        runs[n] += 1
        raise RuntimeError("transient")

    flaky.send(1)
    _run(broker, flaky)
    assert runs == Counter({1: 1})
    [dead] = broker.dead_letters
    failure = dead.options[FAILURE_OPTION]
    assert failure["reason"].startswith("retry failed: ValueError") and "backoff()" in failure["reason"]
    assert failure["error"] == "RuntimeError"
