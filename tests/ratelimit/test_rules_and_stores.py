"""Rules are validated up front; both stores run the same exact sliding-window log."""

from __future__ import annotations

import math
import re
import statistics
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramatiq_turbo.ratelimit import LocalLimitStore, RedisLimitStore, Rule, parse_rule
from dramatiq_turbo.redis import connect_redis
from tests.harness import unique
from tests.ratelimit.test_multiprocess import max_in_window


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_parse_rule_accepts_both_shapes() -> None:
    assert parse_rule((30, 1000)) == Rule(max=30, duration=1000, burst=30)
    rule = parse_rule(
        {"max": 10, "duration": 500, "burst": 2, "concurrency": 3, "lease": 5_000, "key": "queue"}
    )
    assert (rule.max, rule.duration, rule.burst, rule.concurrency, rule.lease, rule.key) == (
        10,
        500,
        2,
        3,
        5_000,
        "queue",
    )
    assert rule.burst_window == 100 and rule.interval == 50
    only_concurrency = parse_rule({"concurrency": 2})
    assert (only_concurrency.max, only_concurrency.concurrency) == (0, 2)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ((30, 1.5), "duration must be an int of milliseconds"),
        ((0, 1000), "max must be a positive int"),
        ((30,), "must be (max, duration)"),
        ("30/s", "must be (max, duration)"),
        ({"max": 5, "duration": 100, "burts": 2}, "unknown keys ['burts']"),
        ({"max": 5, "duration": 100, "burst": 6}, "burst'] must be between 1 and max"),
        ({"max": 5, "duration": 100, "key": "customer"}, "key'] must be 'actor', 'queue' or a function"),
        ({"concurrency": -1}, "concurrency'] must be a non-negative int"),
        ({"concurrency": 1, "lease": 0}, "lease'] must be > 0 milliseconds"),
    ],
)
def test_parse_rule_names_the_problem(value, complaint) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_rule(value)


def test_local_store_is_an_exact_sliding_window() -> None:
    clock = FakeClock()
    store = LocalLimitStore(clock=clock)
    rule = parse_rule((3, 1000))
    assert all(store.acquire("k", rule, f"t{i}").admitted for i in range(3))
    clock.now += 999
    refused = store.acquire("k", rule, "t3", max_wait=1000)
    assert not refused.admitted and refused.wait == 1 and refused.reason == "rate"
    clock.now += 1
    assert store.acquire("k", rule, "t4").admitted, "the first start left the window"


def test_deferred_turns_are_spaced_by_the_rate() -> None:
    clock = FakeClock()
    store = LocalLimitStore(clock=clock)
    rule = parse_rule((4, 1000))
    for i in range(4):
        store.acquire("k", rule, f"t{i}")
    waits = [store.acquire("k", rule, f"late{i}", max_wait=0).wait for i in range(4)]
    assert waits == [1000, 1250, 1500, 1750], "deferred messages come back one interval apart"
    # A caller that may wait in its thread is told the exact opening instead.
    assert store.acquire("k", rule, "waiter", max_wait=1000).wait == 1000


def test_burst_spaces_starts_out() -> None:
    clock = FakeClock()
    store = LocalLimitStore(clock=clock)
    rule = parse_rule({"max": 10, "duration": 1000, "burst": 2})
    assert store.acquire("k", rule, "a").admitted and store.acquire("k", rule, "b").admitted
    refused = store.acquire("k", rule, "c", max_wait=1000)
    assert not refused.admitted and refused.wait == 200, "at most 2 starts in any 200 ms"
    clock.now += 200
    assert store.acquire("k", rule, "c").admitted


def test_concurrency_leases_expire_and_renew() -> None:
    clock = FakeClock()
    store = LocalLimitStore(clock=clock)
    rule = parse_rule({"concurrency": 1, "lease": 1000})
    assert store.acquire("k", rule, "a").admitted
    busy = store.acquire("k", rule, "b")
    assert not busy.admitted and busy.reason == "concurrency"
    clock.now += 900
    assert store.renew("k", ["a"], 1000) == 1
    clock.now += 900
    assert not store.acquire("k", rule, "b").admitted, "a renewed lease keeps the slot"
    clock.now += 101
    assert store.acquire("k", rule, "b").admitted, "an expired lease frees the slot"
    store.release("k", "b", refund=False)
    assert store.acquire("k", rule, "c").admitted


def test_refund_gives_the_start_back() -> None:
    store = LocalLimitStore(clock=FakeClock())
    rule = parse_rule((1, 1000))
    assert store.acquire("k", rule, "a").admitted
    store.release("k", "a", refund=True)
    assert store.acquire("k", rule, "b").admitted, "a refunded start does not count"
    store.release("k", "b", refund=False)
    assert not store.acquire("k", rule, "c").admitted, "a start that happened still counts"


@settings(max_examples=60, deadline=None)
@given(
    max_=st.integers(1, 8),
    duration=st.integers(1, 500),
    burst=st.integers(1, 8),
    gaps=st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=150),
)
def test_local_store_never_admits_more_than_max_in_any_window(max_, duration, burst, gaps) -> None:
    clock = FakeClock()
    store = LocalLimitStore(clock=clock)
    rule = parse_rule({"max": max_, "duration": duration, "burst": min(burst, max_)})
    admitted = []
    for i, gap in enumerate(gaps):
        clock.now += gap
        if store.acquire("k", rule, f"t{i}", max_wait=i % 2 * duration).admitted:
            admitted.append(clock.now)
    assert max_in_window(admitted, duration) <= max_
    if rule.burst_window:
        assert max_in_window(admitted, rule.burst_window) <= rule.burst


@pytest.fixture
def redis_store(redis_client):
    store = RedisLimitStore(redis_client, namespace=unique("rl"))
    yield store
    for key in redis_client.scan_iter(f"{store.namespace}:*"):
        redis_client.delete(key)


@pytest.mark.integration
def test_redis_store_counts_by_redis_time(redis_store) -> None:
    rule = parse_rule((3, 1000))
    decisions = [redis_store.acquire("k", rule, f"t{i}", max_wait=1000) for i in range(4)]
    assert [d.admitted for d in decisions] == [True, True, True, False]
    assert 900 <= decisions[3].wait <= 1000
    seconds, micros = redis_store.client.time()
    assert abs(decisions[0].now - (seconds * 1000 + micros / 1000)) < 1000, "timed by Redis TIME"
    redis_store.release("k", "t0", refund=True)
    assert redis_store.acquire("k", rule, "t5").admitted, "refunded"


@pytest.mark.integration
def test_redis_store_concurrency_lease_release_and_renew(redis_store) -> None:
    rule = parse_rule({"concurrency": 2, "lease": 300})
    assert redis_store.acquire("k", rule, "a").admitted
    assert redis_store.acquire("k", rule, "b").admitted
    full = redis_store.acquire("k", rule, "c")
    assert not full.admitted and full.reason == "concurrency" and full.wait <= 300
    redis_store.release("k", "a", refund=False)
    assert redis_store.acquire("k", rule, "c").admitted
    time.sleep(0.2)
    assert redis_store.renew("k", ["b", "c", "gone"], 300) == 2, "only held leases are renewed"
    time.sleep(0.2)
    assert not redis_store.acquire("k", rule, "d").admitted, "renewed leases outlive their first term"
    time.sleep(0.35)
    assert redis_store.acquire("k", rule, "d").admitted, "unrenewed leases expired"


@pytest.mark.integration
def test_redis_store_is_exact_under_concurrent_callers(redis_url, redis_store) -> None:
    """Eight threads, each with its own connection, hammer one budget of 20 per 300 ms."""
    rule = parse_rule((20, 300))
    admitted: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 1.0

    def hammer(n: int) -> None:
        store = RedisLimitStore(connect_redis(redis_url), namespace=redis_store.namespace)
        i = 0
        while time.monotonic() < deadline:
            decision = store.acquire("k", rule, f"{n}-{i}")
            i += 1
            if decision.admitted:
                with lock:
                    admitted.append(decision.now)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max_in_window(admitted, 300) == 20, "the budget is used and never exceeded"
    assert len(admitted) >= 0.9 * 20 * 3, "at least 90% of the budget over three windows"


def _ceil_near(value: float) -> set[int]:
    """``ceil(value)``, allowing for the µs to which the store's reply rounds its times."""
    return {max(1, math.ceil(value - 0.001)), max(1, math.ceil(value + 0.001))}


@pytest.mark.integration
def test_redis_store_burst_spaces_starts_out(redis_store) -> None:
    """The in-process test above, on real Redis: the waits are read off the store's own clock."""
    rule = parse_rule({"max": 10, "duration": 1000, "burst": 2})
    first, second = (redis_store.acquire("k", rule, token) for token in ("a", "b"))
    assert first.admitted and second.admitted
    refused = redis_store.acquire("k", rule, "c", max_wait=1000)
    assert not refused.admitted and refused.reason == "rate", "at most 2 starts in any 200 ms"
    assert refused.wait in _ceil_near(first.now + 200 - refused.now), "told the exact opening"
    # Deferred callers (max_wait=0) get turns one rate interval (100 ms) apart after the opening.
    turns = [redis_store.acquire("k", rule, f"late{i}", max_wait=0) for i in range(2)]
    assert [d.admitted for d in turns] == [False, False]
    for i, turn in enumerate(turns):
        assert turn.wait in _ceil_near(first.now + 200 + 100 * i - turn.now), f"turn {i}: {turn}"
    time.sleep(refused.wait / 1000)
    third = redis_store.acquire("k", rule, "c")
    assert third.admitted and third.now - first.now >= 200, "admitted once the first start left"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("rule", "window"),
    [
        (parse_rule((1, 100)), 100),
        (parse_rule({"max": 10, "duration": 1000, "burst": 1}), 100),
    ],
    ids=["max", "burst"],
)
def test_redis_store_windows_are_exact_to_the_microsecond(redis_store, rule, window) -> None:
    """A start just inside the window still counts, one just outside does not, at today's epoch.

    Each attempt finds one earlier start placed so that it leaves the window
    within a few hundred µs of the attempt, on either side (the attempt runs
    a round trip after the test reads Redis ``TIME``; that delay is measured
    first).  Redis times in ms have 13 digits before the point, so a bound
    that goes through text with 14 significant digits keeps only 0.1 ms and
    misjudges starts up to 50 µs inside the window: about 10 of 300 here.
    """
    client = redis_store.client

    def redis_ms() -> float:
        seconds, micros = client.time()
        return seconds * 1000 + micros / 1000

    delays = []
    for i in range(20):
        before = redis_ms()
        delays.append(redis_store.acquire(f"probe{i}", rule, "x").now - before)
    delay = statistics.median(delays)
    wrong = []
    for i in range(900):
        key = f"edge{i}"
        # From 150 µs before the edge to 150 µs after it, 1 µs apart (three times over).
        earlier = redis_ms() - window + delay - 0.15 + (i % 300) * 0.001
        client.zadd(redis_store.keys(key)[0], {"earlier": earlier})
        decision = redis_store.acquire(key, rule, "now")
        age = decision.now - earlier
        # decision.now is rounded to the µs: allow 1 µs either way.
        if (decision.admitted and age < window - 0.001) or (not decision.admitted and age >= window + 0.001):
            wrong.append((round(age, 4), decision.admitted))
    assert not wrong, (
        f"{len(wrong)} of 900 attempts misjudged the window edge (age ms, admitted): {wrong[:5]}"
    )


@pytest.mark.integration
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_=st.integers(1, 8),
    duration=st.integers(2, 60),
    burst=st.integers(1, 8),
    gaps=st.lists(st.floats(0, 6, allow_nan=False), min_size=1, max_size=60),
)
def test_redis_store_never_admits_more_than_max_in_any_window(
    redis_store, max_, duration, burst, gaps
) -> None:
    """The property test of the in-process store, on real Redis and its clock.

    The gaps are real sleeps (ms), so windows are short; each example has a
    budget of its own.
    """
    key = unique("prop")
    rule = parse_rule({"max": max_, "duration": duration, "burst": min(burst, max_)})
    admitted = []
    for i, gap in enumerate(gaps):
        time.sleep(gap / 1000)
        decision = redis_store.acquire(key, rule, f"t{i}", max_wait=i % 2 * duration)
        if decision.admitted:
            admitted.append(decision.now)
    assert max_in_window(admitted, duration) <= max_
    if rule.burst_window:
        assert max_in_window(admitted, rule.burst_window) <= rule.burst
