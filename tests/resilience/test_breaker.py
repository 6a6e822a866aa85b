"""The breaker's state machine, on the in-process store and on Redis (the same rules)."""

from __future__ import annotations

import threading
import time

import pybreaker
import pytest

from dramatiq_turbo import CircuitBreaker, CircuitOpenError, breaker, events
from dramatiq_turbo.breaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN
from dramatiq_turbo.breaker.store import RedisStore


def fail(b, n=1, error=RuntimeError):
    for _ in range(n):
        admission = b.acquire()
        b.record(admission, error("down"))


def succeed(b, n=1):
    for _ in range(n):
        b.record(b.acquire())


def test_trips_after_fail_max_consecutive_failures_only(make_breaker):
    b = make_breaker(fail_max=3, reset_timeout=10_000)
    fail(b, 2)
    succeed(b)  # a success resets the consecutive count
    fail(b, 2)
    assert b.state == STATE_CLOSED
    fail(b)
    assert b.state == STATE_OPEN
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire()
    assert 9_000 < caught.value.retry_after <= 10_001
    assert isinstance(caught.value, pybreaker.CircuitBreakerError)


def test_trips_on_failure_rate_once_the_window_has_enough_calls(make_breaker):
    b = make_breaker(fail_max=100, failure_rate=0.5, window=10_000, min_calls=10, reset_timeout=10_000)
    for _ in range(4):  # alternate: never 100 in a row, but half of the calls fail
        succeed(b)
        fail(b)
    assert b.state == STATE_CLOSED, "8 calls are fewer than min_calls"
    succeed(b)
    fail(b)
    assert b.state == STATE_OPEN, "10 calls, 5 failures: rate 0.5 reached"


def test_failure_rate_below_threshold_keeps_it_closed(make_breaker):
    b = make_breaker(fail_max=100, failure_rate=0.5, window=10_000, min_calls=4)
    for _ in range(10):
        succeed(b, 2)
        fail(b)
    assert b.state == STATE_CLOSED


def test_slow_calls_count_as_failures_and_excluded_errors_do_not_count(make_breaker):
    b = make_breaker(fail_max=2, slow_call=50, reset_timeout=10_000, exclude=(KeyError,))
    fail(b, 5, error=KeyError)
    assert b.state == STATE_CLOSED, "excluded errors count as nothing"
    for _ in range(2):
        admission = b.acquire()
        time.sleep(0.07)
        b.record(admission)  # succeeded, but too slowly
    assert b.state == STATE_OPEN


def test_half_open_admits_exactly_half_open_calls_then_closes_on_their_success(make_breaker):
    b = make_breaker(fail_max=1, reset_timeout=200, half_open_calls=2)
    fail(b)
    time.sleep(0.25)
    trials = [b.acquire(), b.acquire()]
    assert b.state == STATE_HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.acquire()
    b.record(trials[0])
    assert b.state == STATE_HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.acquire()  # one success + one in flight: both trial slots used
    b.record(trials[1])
    assert b.state == STATE_CLOSED
    succeed(b)


def test_a_failed_trial_opens_again_and_a_released_trial_frees_its_slot(make_breaker):
    b = make_breaker(fail_max=1, reset_timeout=150)
    fail(b)
    time.sleep(0.2)
    trial = b.acquire()
    b.release(trial)  # deferred before it ran: says nothing
    assert b.state == STATE_HALF_OPEN
    fail(b)  # the next trial fails
    assert b.state == STATE_OPEN
    with pytest.raises(CircuitOpenError):
        b.acquire()


def test_results_of_calls_from_an_earlier_generation_are_ignored(make_breaker):
    b = make_breaker(fail_max=2, reset_timeout=150)
    old = [b.acquire() for _ in range(3)]  # started while closed
    b.record(old[0], RuntimeError())
    b.record(old[1], RuntimeError())
    assert b.state == STATE_OPEN
    time.sleep(0.2)
    trial = b.acquire()
    b.record(old[2], RuntimeError())  # a slow call from before the trip fails now
    assert b.state == STATE_HALF_OPEN, "a stale failure must not re-open the breaker"
    b.record(trial)
    assert b.state == STATE_CLOSED
    b.record(old[2], RuntimeError())
    b.record(old[2], RuntimeError())
    assert b.state == STATE_CLOSED, "nor count against the new closed period"


def test_a_lost_trial_permit_expires_with_its_lease(make_breaker):
    b = make_breaker(fail_max=1, reset_timeout=100, slow_call=100)
    fail(b)
    time.sleep(0.15)
    b.acquire()  # this trial's process "dies": never recorded
    with pytest.raises(CircuitOpenError):
        b.acquire()
    time.sleep(0.15)
    succeed(b)
    assert b.state == STATE_CLOSED


def test_open_breaker_rejects_without_asking_the_store(make_breaker):
    b = make_breaker(fail_max=1, reset_timeout=5_000)
    fail(b)
    asked = []
    for store in (b.shared, b.local):
        if store is not None:
            original = store.acquire
            store.acquire = lambda *a, _o=original, **k: asked.append(1) or _o(*a, **k)
    for _ in range(1_000):
        with pytest.raises(CircuitOpenError):
            b.acquire()
    # How fast a refusal is, is benchmarks/bench_resilience_breaker.py's to show, not a timed test's.
    assert asked == [], "the open state is known locally: 1,000 refusals, no store asked"


def test_concurrent_calls_are_not_serialized(make_breaker):
    b = make_breaker()

    def call():
        admission = b.acquire()
        time.sleep(0.2)
        b.record(admission)

    threads = [threading.Thread(target=call) for _ in range(8)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - started < 0.6, "pybreaker's lock around the call would take 1.6 s"


def test_state_changes_reach_listeners_events_and_the_log(make_breaker, caplog):
    seen = []

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb, old_state, new_state):
            seen.append((cb.name, old_state.name, new_state.name))

    recorded = []

    def on_event(name, attributes):
        if name.startswith("breaker."):
            recorded.append((name, dict(attributes)))

    events.add_listener(on_event)
    try:
        b = make_breaker(fail_max=1, reset_timeout=100)
        b.listeners = (Listener(),)
        fail(b)
        with pytest.raises(CircuitOpenError):
            b.acquire()
        time.sleep(0.15)
        succeed(b)
    finally:
        events.remove_listener(on_event)
    assert seen == [
        (b.name, "closed", "open"),
        (b.name, "open", "half-open"),
        (b.name, "half-open", "closed"),
    ]
    assert ("breaker.reject", {"breaker": b.name}) in recorded
    assert ("breaker.state", {"breaker": b.name, "state": "open", "previous": "closed"}) in recorded
    assert b.counts["open"] == 1 and b.counts["rejected"] == 1
    assert f"Circuit '{b.name}': closed -> open." in caplog.text


@pytest.mark.integration
def test_two_processes_views_share_one_state(redis_url):
    from dramatiq_turbo.redis import connect_redis
    from tests.harness import unique

    namespace = unique("brk")
    client = connect_redis(redis_url)
    try:
        first = CircuitBreaker(redis=client, fail_max=2, reset_timeout=5_000, namespace=namespace)
        second = CircuitBreaker(redis=client, fail_max=2, reset_timeout=5_000, namespace=namespace)
        fail(first.get("db"))
        fail(second.get("db"))  # failures from two "processes" add up
        with pytest.raises(CircuitOpenError):
            first.get("db").acquire()
        with pytest.raises(CircuitOpenError):
            second.get("db").acquire()
    finally:
        keys = list(client.scan_iter(f"{namespace}:*"))
        if keys:
            client.delete(*keys)


def test_breaker_context_manager_and_decorator():
    CircuitBreaker(fail_max=2, reset_timeout=10_000)
    calls = []

    @breaker("svc")
    def call(ok):
        calls.append(ok)
        if not ok:
            raise ConnectionError("down")
        return "fine"

    assert call(True) == "fine"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(False)
    with pytest.raises(CircuitOpenError):
        call(True)
    with pytest.raises(CircuitOpenError), breaker("svc"):
        calls.append("never")
    assert calls == [True, False, False]
    with breaker("other") as other:
        assert other.name == "other"


def test_bad_settings_are_refused_with_their_names():
    with pytest.raises(ValueError, match="reset_timeout must be an int of milliseconds"):
        CircuitBreaker(reset_timeout=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fail_max must be an int >= 1"):
        CircuitBreaker(fail_max=0)
    with pytest.raises(ValueError, match="failure_rate"):
        CircuitBreaker(failure_rate=1.5)
    with pytest.raises(ValueError, match="unknown breaker setting"):
        CircuitBreaker(settings={"llm": {"fail_maxx": 3}})
    with pytest.raises(ValueError, match="exclude"):
        CircuitBreaker(exclude=("KeyError",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dependency name"):
        breaker("")


@pytest.mark.integration
def test_redis_outage_falls_back_to_a_local_breaker_with_a_warning(spare_redis, caplog):
    from dramatiq_turbo.redis import connect_redis

    client = connect_redis(spare_redis.url, socket_timeout=500, connect_timeout=500)
    middleware = CircuitBreaker(redis=client, fail_max=2, reset_timeout=10_000)
    b = middleware.get("api")
    assert isinstance(b.shared, RedisStore)
    succeed(b)
    spare_redis.stop()
    fail(b, 2)  # counted locally while Redis is away
    with pytest.raises(CircuitOpenError):
        b.acquire()
    assert middleware.outage.active and middleware.outage.outages == 1
    assert caplog.text.count("Redis is unreachable") == 1, "warned once per outage"
    spare_redis.start()
    b._open_until = 0.0  # forget the local open state: the next call asks Redis again
    succeed(b)
    assert not middleware.outage.active
    assert "Redis is reachable again" in caplog.text


def test_public_breaker_stays_breaker_name_after_its_package_is_imported():
    import importlib

    import dramatiq_turbo

    # The package and the public name share a name: the public one must stay breaker(name).
    package = importlib.import_module("dramatiq_turbo.breaker")
    public = dramatiq_turbo.breaker
    assert public is package.breaker
    CircuitBreaker(fail_max=1, reset_timeout=10_000)
    with pytest.raises(ConnectionError), public("pkg"):
        raise ConnectionError("down")
    with pytest.raises(CircuitOpenError), package.breaker("pkg"):
        pass


@pytest.mark.integration
def test_a_clean_closed_breaker_asks_redis_nothing_and_learns_a_trip_elsewhere_within_state_refresh(
    redis_url,
):
    """Two views of one breaker, as two processes: the healthy one admits and succeeds without
    a command, and still admits for at most ``state_refresh`` ms after the other one tripped it."""
    from tests.cache.counting import CountingConnection, counting_client
    from tests.harness import unique

    namespace = unique("brk")
    here_client = counting_client(redis_url)
    there_client = counting_client(redis_url)
    here = CircuitBreaker(
        redis=here_client, fail_max=1, reset_timeout=10_000, namespace=namespace, state_refresh=300
    )
    there = CircuitBreaker(redis=there_client, fail_max=1, reset_timeout=10_000, namespace=namespace)
    try:
        succeed(here.get("db"))  # learns: closed, no failures
        before = CountingConnection.snapshot()[0]
        succeed(here.get("db"), 20)
        assert CountingConnection.snapshot()[0] == before, "admitted and succeeded 20 times without a command"

        learnt = time.monotonic()
        fail(there.get("db"))  # trips it for everyone
        admitted_after_trip = []
        while True:
            try:
                admission = here.get("db").acquire()
            except CircuitOpenError:
                break
            admitted_after_trip.append(time.monotonic() - learnt)
            here.get("db").release(admission)
            time.sleep(0.01)
        refused_at = time.monotonic() - learnt
        assert refused_at <= 0.3 + 0.1, f"the trip was known {refused_at:.3f} s after the last reply"
        assert admitted_after_trip, "within state_refresh the old knowledge is trusted (the bound is real)"
    finally:
        keys = list(here_client.scan_iter(f"{namespace}:*"))
        if keys:
            here_client.delete(*keys)


def test_state_refresh_is_capped_by_a_quarter_of_reset_timeout():
    middleware = CircuitBreaker(reset_timeout=200, state_refresh=1_000)
    assert middleware.get("x").staleness == 0.05
    with pytest.raises(ValueError, match="state_refresh"):
        CircuitBreaker(state_refresh=-1)
