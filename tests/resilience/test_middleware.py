"""The CircuitBreaker middleware on a worker: deferrals instead of failures, cache hits, options."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.middleware import CurrentMessage, Middleware
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from dramatiq_turbo import Backoff, CircuitBreaker, breaker, install
from dramatiq_turbo.defer import deferral_count
from dramatiq_turbo.marks import mark_cache_hit
from dramatiq_turbo.options import OptionError
from tests.harness import unique, wait_for


def _setup(make_broker, **breaker_options):
    broker = make_broker("stub")
    backend = StubBackend()
    broker.add_middleware(Results(backend=backend))
    broker.add_middleware(CurrentMessage())
    middleware = CircuitBreaker(**breaker_options)
    install(
        broker,
        breaker=middleware,
        backoff=Backoff(min_backoff=10, max_backoff=50),
        cache=False,
        rate_limit=False,
        telemetry=False,
    )
    return broker, backend, middleware


def test_uncaught_circuit_open_error_defers_without_failure_callbacks_or_retries(make_broker, start_worker):
    broker, backend, _ = _setup(make_broker, fail_max=1, reset_timeout=300, jitter=50)
    queue = unique("brk")
    lock = threading.Lock()
    runs, successes, failures = [], [], []

    @dramatiq.actor(queue_name=queue, store_results=True, max_retries=3)
    def summarize(x):
        message = CurrentMessage.get_current_message()
        with breaker("llm"):
            with lock:
                runs.append((x, message.options.get("retries", 0), deferral_count(message)))
            return x * 10

    @dramatiq.actor(queue_name=queue)
    def on_success(message_data, result):
        with lock:
            successes.append(result)

    @dramatiq.actor(queue_name=queue)
    def on_failure(message_data, exception_data):
        with lock:
            failures.append(exception_data)

    # Trip "llm" before any message runs.
    with pytest.raises(ConnectionError), breaker("llm"):
        raise ConnectionError("down")
    started = time.monotonic()
    messages = [
        summarize.send_with_options(args=(x,), on_success=on_success, on_failure=on_failure) for x in range(4)
    ]
    start_worker(broker)
    results = [m.get_result(backend=backend, block=True, timeout=10_000) for m in messages]
    broker.join(queue, timeout=10_000)

    assert results == [0, 10, 20, 30], "callers get the real results"
    assert time.monotonic() - started >= 0.25, "nothing ran before the breaker could try again"
    assert sorted(x for x, _, _ in runs) == [0, 1, 2, 3], "each message ran once"
    assert all(retries == 0 for _, retries, _ in runs), "a deferral is not a retry"
    assert all(deferrals >= 1 for _, _, deferrals in runs)
    assert failures == [], "on_failure never fired for a deferral"
    assert sorted(successes) == [0, 10, 20, 30]


def test_guarded_actor_defers_while_open_and_cache_hits_pass(make_broker, start_worker):
    broker, backend, middleware = _setup(make_broker, fail_max=2, reset_timeout=400, jitter=20)
    queue = unique("brk")
    calls = []
    lock = threading.Lock()

    class MarkHits(Middleware):
        def before_process_message(self, broker, message):
            if message.args and message.args[0] == "cached":
                mark_cache_hit(message)

    broker.add_middleware(MarkHits(), before=CircuitBreaker)

    @dramatiq.actor(queue_name=queue, breaker=True, store_results=True, max_retries=0)
    def fetch(what):
        with lock:
            calls.append((what, time.monotonic()))
        if what == "bad":
            raise ConnectionError("down")
        return what

    worker = start_worker(broker)
    for _ in range(2):
        fetch.send("bad")
    wait_for(lambda: middleware.get(fetch.actor_name).state == "open", timeout=5, what="the breaker to trip")
    tripped = time.monotonic()
    deferred = fetch.send("later")
    hit = fetch.send("cached")
    assert hit.get_result(backend=backend, block=True, timeout=5_000) == "cached"
    assert deferred.get_result(backend=backend, block=True, timeout=5_000) == "later"
    worker.stop()
    ran_at = dict(calls)
    assert ran_at["cached"] - tripped < 0.3, "a cache hit does not wait for the breaker"
    assert ran_at["later"] - tripped >= 0.35, "a guarded message waits out the open period"
    assert middleware.get(fetch.actor_name).state == "closed"


def test_breaker_option_is_validated_at_declaration(make_broker):
    _setup(make_broker)
    with pytest.raises(OptionError, match="breaker must be a dependency name or True"):

        @dramatiq.actor(breaker=3)
        def bad():
            pass
