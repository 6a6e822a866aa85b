"""The CircuitBreaker middleware on a worker: deferrals instead of failures, cache hits, options."""

from __future__ import annotations

import threading
import time

import dramatiq
import pybreaker
import pytest
from dramatiq.middleware import CurrentMessage, Middleware
from dramatiq.results import Results
from dramatiq.results.backends import StubBackend

from dramatiq_turbo import Backoff, CircuitBreaker, breaker, install
from dramatiq_turbo.core.delivery import delivery_of
from dramatiq_turbo.defer import deferral_count
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
                delivery_of(broker, message).cache_hit = True

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


def test_breaker_inside_an_actor_guarded_by_the_same_breaker_is_one_trial(make_broker, start_worker):
    broker, backend, middleware = _setup(make_broker, fail_max=1, reset_timeout=200, jitter=20)
    queue = unique("brk")

    @dramatiq.actor(queue_name=queue, breaker="llm", store_results=True, max_retries=0)
    def nested(x):
        with breaker("llm"):  # part of the actor's own guarded call
            return x + 1

    with pytest.raises(ConnectionError), breaker("llm"):
        raise ConnectionError("down")
    assert middleware.get("llm").state == "open"
    message = nested.send(1)
    start_worker(broker)
    # Half-open has one trial permit: a second admission for the inner block would defer it forever.
    assert message.get_result(backend=backend, block=True, timeout=5_000) == 2
    assert middleware.get("llm").state == "closed"


def test_one_breaker_object_shared_by_concurrent_asyncio_tasks():
    import asyncio

    outcomes_seen = []

    class Listener(pybreaker.CircuitBreakerListener):
        def success(self, cb):
            outcomes_seen.append("success")

        def failure(self, cb, exc):
            outcomes_seen.append(f"failure {exc}")

    middleware = CircuitBreaker(fail_max=100, listeners=[Listener()])
    guard = breaker("shared")

    async def call(i):
        with guard:
            await asyncio.sleep(0.01 * (5 - i))  # exits in the reverse order of entry
            if i % 2:
                raise ConnectionError(i)
        return i

    async def main():
        return await asyncio.gather(*(call(i) for i in range(5)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [o if isinstance(o, int) else "error" for o in outcomes] == [0, "error", 2, "error", 4]
    # Each task's exit reports its own call, in the order they ended.
    assert outcomes_seen == ["success", "failure 3", "success", "failure 1", "success"]
    assert middleware.get("shared").state == "closed"


def test_install_adds_the_breaker_and_backoff_in_their_slots(make_broker):
    from dramatiq.middleware import Retries

    broker = make_broker("stub")
    install(broker, cache=False, rate_limit=False, telemetry=False)
    kinds = [type(m) for m in broker.middleware]
    assert CircuitBreaker in kinds and Backoff in kinds and Retries not in kinds
    assert kinds.index(CircuitBreaker) == len(kinds) - 1, "the breaker is asked last, just before the actor"


def test_a_message_failed_before_the_actor_runs_does_not_use_a_trial(make_broker, start_worker):
    broker, _, middleware = _setup(make_broker, fail_max=1, reset_timeout=150, jitter=10)
    queue = unique("brk")
    ran = []

    class FailSome(Middleware):
        def before_process_message(self, broker, message):
            if message.args == ("expired",):
                message.fail()

    broker.add_middleware(FailSome(), before=CircuitBreaker)

    @dramatiq.actor(queue_name=queue, breaker="svc", max_retries=0)
    def work(what):
        ran.append(what)
        if what == "bad":
            raise ConnectionError("down")

    start_worker(broker)
    work.send("bad")
    wait_for(lambda: middleware.get("svc").state == "open", timeout=5, what="trip")
    time.sleep(0.2)  # the open period is over: the next admission is the trial
    work.send("expired")
    broker.join(queue, timeout=5_000, fail_fast=False)
    assert ran == ["bad"]
    assert middleware.get("svc").state != "closed", "a message that never ran must not close the breaker"
    assert middleware.get("svc").current_state == "half-open", "still waiting for its trial: it took none"
    # The trial is still there to take: the next good message runs as it, and closes the breaker.
    work.send("good")
    broker.join(queue, timeout=5_000, fail_fast=False)
    assert ran == ["bad", "good"], "the next good message ran, as the trial"
    assert middleware.get("svc").state == "closed"
